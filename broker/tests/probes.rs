//! The broker's HTTP endpoint as a monitoring system sees it: `/healthz`, `/readyz`, and a
//! `/metrics` that promtool accepts, with the standard families (build, process, overlay)
//! after the broker's own.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

use broker::daemon::config::{BrokerConfig, TrustedFederation};
use capability_schema::{Role, SecretKey, codec};
use federation::daemon::CommonConfig;
use federation::testing::{TestFederation, check_daemon_http};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_answers_probes_and_metrics_promtool_accepts() {
    let mut f1 = TestFederation::new("f1", 222);
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate();
    let key_file = dir.path().join("broker.key");
    key.save(&key_file).unwrap();
    std::fs::write(
        dir.path().join("membership.cbor"),
        codec::encode(&f1.certify(&key, Role::Broker)),
    )
    .unwrap();
    let mut common = CommonConfig::new("f1");
    common.key_file = key_file;
    common.membership = dir.path().join("membership.cbor");
    common.trust = vec![TrustedFederation {
        name: "f1".into(),
        authority: f1.authority.public(),
    }];
    common.listen = vec!["/memory/0".parse().unwrap()];
    common.http = Some("127.0.0.1:0".parse().unwrap());
    let config = BrokerConfig {
        common,
        follow: vec!["f1".into()],
        agents: Vec::new(),
        discover_agents: true,
        call_timeout_secs: 5,
        concurrency: 4,
        max_rounds: 2,
        acquire_deadline_secs: 0,
    };
    let (running, shutdown) = broker::daemon::run::start(config).await.unwrap();
    let http = running.http.expect("an HTTP endpoint");

    check_daemon_http(http, "planetmesh_broker_").await;
    shutdown.await;
}
