//! A listen address that cannot be bound is reported with its cause, not an empty sentence.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

use capability_schema::SecretKey;
use federation::{Overlay, OverlayConfig};

#[tokio::test]
async fn a_busy_port_is_named_with_its_cause() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let config = OverlayConfig {
        listen: vec![format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()],
        ..OverlayConfig::default()
    };
    let err = Overlay::start(&SecretKey::generate(), config, Default::default())
        .await
        .expect_err("the port is taken");
    let text = err.to_string();
    assert!(!text.trim_end().ends_with(':'), "an empty cause: {text:?}");
    assert!(text.contains("in use"), "{text}");
    drop(busy);
}
