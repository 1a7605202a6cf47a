//! A node tells the agents when tickets end early: a holder releases its leases at the nodes
//! directly (never telling the agents), and the agents stop counting those tickets against
//! the nodes' shares within a few report periods, because each node reports them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

mod testnet;

use std::time::{Duration, Instant};

use capability_schema::AcquireMode;
use capability_schema::protocol::{NodeRequest, NodeResponse};
use slicectl::exit::ExitClass;
use slicectl::spec::SliceSpec;
use testnet::{Testnet, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_stop_counting_tickets_whose_leases_the_holder_released_at_the_node() {
    let net = Testnet::start(1).await;
    let state = tempfile::tempdir().unwrap();
    let m = net.manager(state.path(), false).await;

    let mut spec = SliceSpec::named("plc-site0_early");
    spec.slivers = Some(2);
    spec.resources = "cpu=250m,memory=128MiB".into();
    spec.duration = "1h".into();
    spec.lease = Some("10m".into());
    spec.mode = AcquireMode::AllOrNothing;
    spec.constraints.min_sites = 2;
    let created = within(m.create(&spec)).await.unwrap();
    assert_eq!(created.class, ExitClass::Ok, "{:#?}", created.lines);
    let leases = m.state.leases("plc-site0_early").unwrap();
    assert_eq!(leases.len(), 2);

    let outstanding = |net: &Testnet| -> usize {
        net.agents
            .iter()
            .map(|a| {
                a.running
                    .state
                    .agent
                    .ledger()
                    .outstanding(federation::unix_now())
                    .unwrap()
                    .by_principal
                    .values()
                    .map(|usage| usage.slivers as usize)
                    .sum::<usize>()
            })
            .sum()
    };
    assert_eq!(outstanding(&net), 2, "one ticket per sliver is counted");

    // Release at the nodes only: slicectl's delete would tell the agents itself.
    for l in &leases {
        let answer = within(m.session.node_call(
            l.lease.node,
            &[],
            NodeRequest::Release {
                lease_id: l.lease.lease_id.clone(),
            },
        ))
        .await
        .unwrap();
        assert!(
            matches!(answer, NodeResponse::Released { .. }),
            "{answer:?}"
        );
    }
    assert!(net.all_leases().is_empty());

    // The nodes report every REPORT_PERIOD; allow several periods.
    let deadline =
        Instant::now() + node::daemon::release_report::REPORT_PERIOD * 10 + Duration::from_secs(5);
    while outstanding(&net) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        outstanding(&net),
        0,
        "the nodes reported the released tickets to their agents"
    );

    m.session.shutdown().await;
    net.stop().await;
}
