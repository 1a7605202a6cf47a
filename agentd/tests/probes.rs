//! The agent's HTTP endpoint as a monitoring system sees it: `/healthz`, `/readyz`, and a
//! `/metrics` that promtool accepts, with the standard families (build, process, overlay)
//! after the agent's own.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

use agentd::daemon::config::AgentConfig;
use capability_schema::identity::test_key;
use capability_schema::{Role, codec};
use federation::testing::{TestFederation, check_daemon_http};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_answers_probes_and_metrics_promtool_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let mut plc = TestFederation::new("plc", 100);
    let key = test_key(21);
    key.save(&dir.path().join("agent.key")).unwrap();
    std::fs::write(
        dir.path().join("membership.cbor"),
        codec::encode(&plc.certify(&key, Role::Agent)),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("agent.toml"),
        format!(
            "federation = \"plc\"\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\nhttp = \"127.0.0.1:0\"\n\
             [[trust]]\nname = \"plc\"\nauthority = \"{}\"\n",
            plc.authority.public()
        ),
    )
    .unwrap();
    let config = AgentConfig::load(&dir.path().join("agent.toml")).unwrap();
    let (running, shutdown) = agentd::daemon::run::start(config).await.unwrap();
    let http = running.http.expect("an HTTP endpoint");

    check_daemon_http(http, "planetmesh_agent_").await;
    shutdown.await;
}
