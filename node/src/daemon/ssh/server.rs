//! The SSH endpoint's listener: binds `[ssh] listen`, tells the service its endpoint (host
//! key, port) for `Status`, and accepts connections within [`super::limits`], each with an
//! authentication deadline, until the daemon stops.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use capability_schema::SecretKey;
use capability_schema::protocol::SshEndpoint;
use federation::daemon::{DaemonError, Runtime};
use russh::server::Config;
use russh::{Disconnect, MethodKind, MethodSet, SshId};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::SshConfig;
use super::hostkey;
use super::limits::{Admitted, ConnectionLimits};
use super::session::Connection;
use crate::daemon::service::NodeService;

/// The SSH server's settings for the node whose identity key is `key`.
pub fn server_config(key: &SecretKey) -> Config {
    Config {
        server_id: SshId::Standard(
            format!("SSH-2.0-PlanetMesh_{}", env!("CARGO_PKG_VERSION")).into(),
        ),
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        // Every refusal takes as long, whatever its reason.
        auth_rejection_time: Duration::from_secs(1),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![hostkey::host_key(key)],
        max_auth_attempts: 6,
        // Idle shells stay; dead peers go after three unanswered keepalives.
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 3,
        nodelay: true,
        ..Config::default()
    }
}

/// Starts the endpoint of `ssh` (nothing when it has no `listen`) for the node of `key` and
/// `service` on `runtime`; returns the bound address.
pub async fn start(
    ssh: &SshConfig,
    key: &SecretKey,
    service: &Arc<NodeService>,
    runtime: &mut Runtime,
) -> Result<Option<SocketAddr>, DaemonError> {
    let Some(listen) = ssh.listen else {
        return Ok(None);
    };
    let bind_error = |e: std::io::Error| {
        DaemonError::Host(format!(
            "ssh listen {listen}: {e}: free the port or change [ssh] listen in node.toml"
        ))
    };
    let listener = TcpListener::bind(listen).await.map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    let config = Arc::new(server_config(key));
    let host_key = &config.keys[0];
    service.set_ssh_endpoint(Some(SshEndpoint {
        address: (!bound.ip().is_unspecified()).then(|| bound.ip().to_string()),
        port: bound.port(),
        host_key: hostkey::public_line(host_key),
    }));
    tracing::info!(
        address = %bound,
        host_key = %hostkey::fingerprint(host_key),
        "ssh endpoint into slivers listening"
    );
    let task = serve(
        listener,
        config,
        ssh.clone(),
        Arc::clone(service),
        runtime.stop_signal(),
    );
    runtime.spawn("ssh", task);
    Ok(Some(bound))
}

/// Accepts connections until `stop`.
pub async fn serve(
    listener: TcpListener,
    config: Arc<Config>,
    ssh: SshConfig,
    service: Arc<NodeService>,
    mut stop: watch::Receiver<bool>,
) {
    let limits = ConnectionLimits::new(ssh.max_connections, ssh.max_per_source);
    loop {
        if *stop.borrow() {
            return;
        }
        let (stream, peer) = tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, most likely: wait rather than spin.
                    tracing::warn!(error = %e, "ssh: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let admitted = match limits.admit(peer.ip()) {
            Ok(admitted) => admitted,
            Err(why) => {
                tracing::debug!(%peer, reason = %why, "ssh: connection refused");
                drop(stream);
                continue;
            }
        };
        tokio::spawn(connection(
            stream,
            peer,
            admitted,
            Arc::clone(&config),
            Arc::clone(&service),
            ssh.clone(),
        ));
    }
}

/// One connection, closed if it has not authenticated within the deadline.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    admitted: Admitted,
    config: Arc<Config>,
    service: Arc<NodeService>,
    ssh: SshConfig,
) {
    let _admitted = admitted;
    let deadline = Duration::from_secs(ssh.auth_timeout_secs);
    let authenticated = Arc::new(AtomicBool::new(false));
    let handler = Connection::new(
        service,
        Some(peer),
        ssh.max_channels,
        Arc::clone(&authenticated),
    );
    let running =
        match tokio::time::timeout(deadline, russh::server::run_stream(config, stream, handler))
            .await
        {
            Ok(Ok(running)) => running,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "ssh: handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "ssh: no identification before the deadline");
                return;
            }
        };
    let handle = running.handle();
    let guard = tokio::spawn(async move {
        tokio::time::sleep(deadline).await;
        if !authenticated.load(Ordering::Acquire) {
            tracing::debug!(%peer, "ssh: authentication timed out");
            let _ = handle
                .disconnect(
                    Disconnect::ByApplication,
                    "authentication timed out".into(),
                    "en".into(),
                )
                .await;
        }
    });
    if let Err(e) = running.await {
        tracing::debug!(%peer, error = %e, "ssh: connection ended");
    }
    guard.abort();
}
