//! A lease's network grants reach the sliver spec: raw sockets as CAP_NET_RAW for a regular
//! sliver (in its own network namespace), a hard egress cap as ceil = rate.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use capability_schema::identity::test_key;
use capability_schema::{Lease, NetGrant, Resources, SliceKind};
use node::daemon::engine::spec_for;
use node::sliver::spec::SliverKind;

fn lease(net: NetGrant) -> Lease {
    Lease {
        lease_id: "l1".into(),
        ticket_id: "t1".into(),
        node: test_key(1).public(),
        federation: "plc".into(),
        agent: test_key(2).public(),
        slice: "plc_probe".into(),
        kind: SliceKind::Regular,
        holder: test_key(3).public(),
        resources: Resources {
            cpu_millis: 500,
            memory_bytes: 128 << 20,
            disk_bytes: 0,
            egress_kbps: 4_000,
            ports: 1,
        },
        address: None,
        public: None,
        start: 0,
        end: 3600,
        net,
    }
}

#[test]
fn raw_sockets_and_a_hard_cap_reach_the_spec_of_a_regular_sliver() {
    let plain = spec_for("plc_probe", &lease(NetGrant::default()), "princeton").unwrap();
    assert_eq!(plain.kind, SliverKind::Regular);
    assert!(plain.capabilities.is_empty());
    assert_eq!(
        plain.egress_ceil_kbps, None,
        "by default it shares the node's excess"
    );
    let granted = spec_for(
        "plc_probe",
        &lease(NetGrant {
            raw: true,
            egress_cap: true,
        }),
        "princeton",
    )
    .unwrap();
    assert_eq!(granted.kind, SliverKind::Regular, "still a regular sliver");
    assert_eq!(granted.capabilities, ["CAP_NET_RAW"]);
    assert_eq!(granted.egress_ceil_kbps, Some(4_000), "capped at its rate");
    granted
        .validate()
        .expect("a regular sliver may hold CAP_NET_RAW");
}

#[test]
fn a_node_out_of_ports_or_slots_is_unavailable_not_broken() {
    use capability_schema::Rejection;
    use node::daemon::service::BackendError;
    let full = BackendError::Full("no public ports free: …; 0 free".into());
    assert!(matches!(
        Rejection::from(full),
        Rejection::Unavailable { detail } if detail.contains("0 free")
    ));
    assert!(matches!(
        Rejection::from(BackendError::Host("disk on fire".into())),
        Rejection::Internal { .. }
    ));
}
