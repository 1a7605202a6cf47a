//! The skeleton every daemon runs on: its tasks, its stop signal, its HTTP endpoint, its
//! protocol server, one typed error, and `init` / `key` for its key and config.
//!
//! A daemon's `start` builds its domain state, then hands the runtime its pieces:
//! [`Runtime::serve`] (the fair protocol loop of [`super::serve`]), [`Runtime::serve_http`],
//! [`Runtime::spawn`] for its own loops (each watching [`Runtime::stop_signal`]); and returns
//! [`Runtime::shutdown`] as its shutdown future, which stops every task within a deadline and
//! closes the overlay. Tests call `start` with a config built in code (no TOML needed), bind
//! port 0, and await the same shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use capability_schema::protocol::Reply;
use capability_schema::{KeyError, PublicKey, SecretKey};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::config::{ConfigError, DaemonKind};
use super::exporter::{self, Exporter};
use super::health::{self, Readiness};
use super::serve::{DRAIN_DEADLINE, Fairness, serve_protocol};
use crate::OverlayHandle;
use crate::overlay::{OverlayError, Protocol};

/// Why a daemon could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The config is unreadable or wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The key could not be loaded or written (the key error names the file; a missing one
    /// says how to make it).
    #[error("{source}{}", key_hint(program, source))]
    Key {
        /// The program.
        program: &'static str,
        /// The key file.
        path: PathBuf,
        /// Why.
        source: KeyError,
    },
    /// The membership certificate, trust anchors or peering agreements are wrong.
    #[error("trust: {0}")]
    Trust(String),
    /// A state file or directory could not be used.
    #[error("state {path}: {detail}")]
    State {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// The host cannot do what the daemon needs (its isolation engine, a program beside it).
    #[error("host: {0}")]
    Host(String),
    /// The overlay failed to start, or ended while the daemon ran.
    #[error("overlay: {0}")]
    Overlay(#[from] OverlayError),
    /// The HTTP endpoint could not bind.
    #[error("http {addr}: {source}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// `init` would overwrite something.
    #[error(
        "{path} exists already; not overwriting it: run `{program} run --config {config}` to \
         use what is there, or init into another --dir"
    )]
    Exists {
        /// The program.
        program: &'static str,
        /// What exists.
        path: PathBuf,
        /// The config in that directory.
        config: PathBuf,
    },
}

/// What to do about a key error: make the key when there is none.
fn key_hint(program: &str, error: &KeyError) -> String {
    match error {
        KeyError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            format!("; run `{program} init` first, or point to an existing key file")
        }
        _ => String::new(),
    }
}

/// The `protocol` label of a protocol's answer times.
fn protocol_label(kind: crate::overlay::ProtocolKind) -> &'static str {
    match kind {
        crate::overlay::ProtocolKind::Agent => "agent",
        crate::overlay::ProtocolKind::Node => "node",
        crate::overlay::ProtocolKind::Broker => "broker",
    }
}

/// A running daemon's tasks and stop signal.
#[derive(Debug)]
pub struct Runtime {
    overlay: OverlayHandle,
    stop_tx: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    readiness: Readiness,
    exporter: Arc<Exporter>,
}

impl Runtime {
    /// A runtime around a started overlay.
    pub fn new(overlay: OverlayHandle) -> Self {
        let (stop_tx, _) = watch::channel(false);
        Runtime {
            overlay: overlay.clone(),
            stop_tx,
            tasks: Vec::new(),
            readiness: Readiness::default(),
            exporter: Arc::new(Exporter::new(overlay.clone())),
        }
    }

    /// The daemon's readiness check for `/readyz` ([`super::health`]): set it when the daemon
    /// has something to wait for (the node: its first ad).
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// The overlay.
    pub fn overlay(&self) -> &OverlayHandle {
        &self.overlay
    }

    /// Turns true when the daemon stops; every loop a daemon spawns watches it.
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop_tx.subscribe()
    }

    /// Runs `task` until it ends; [`Runtime::shutdown`] waits for it (and abandons it past its
    /// deadline).
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.push((name, tokio::spawn(task)));
    }

    /// Serves `router`, with the `/healthz` and `/readyz` probes of [`super::health`] and
    /// the standard families of [`super::exporter`] appended to its `/metrics`, on `addr`
    /// (none: no endpoint) until the daemon stops; returns the bound address.
    pub async fn serve_http(
        &mut self,
        addr: Option<SocketAddr>,
        router: axum::Router,
    ) -> Result<Option<SocketAddr>, DaemonError> {
        let Some(addr) = addr else {
            return Ok(None);
        };
        let router = router
            .merge(health::routes(self.overlay.clone(), self.readiness.clone()))
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&self.exporter),
                exporter::append_standard,
            ));
        let http = |source| DaemonError::Http { addr, source };
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(http)?;
        let bound = listener.local_addr().map_err(http)?;
        let mut stop = self.stop_signal();
        self.spawn("http", async move {
            let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "http server");
            }
        });
        Ok(Some(bound))
    }

    /// Serves protocol `P` on the overlay with fair admission ([`serve_protocol`]); each
    /// answer's time goes to `planetmesh_request_duration_seconds{protocol}`.
    pub async fn serve<P, H, Fut>(
        &mut self,
        fairness: Fairness,
        lanes: usize,
        lane_of: fn(&P::Request) -> usize,
        handler: H,
    ) -> Result<(), DaemonError>
    where
        P: Protocol,
        H: Fn(PublicKey, P::Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply<P::Response>> + Send + 'static,
    {
        let requests = self.overlay.serve::<P>().await?;
        let latency = self.exporter.latency(protocol_label(P::KIND));
        let handler = Arc::new(handler);
        let handler = move |peer, request| {
            let started = std::time::Instant::now();
            let answer = handler(peer, request);
            let latency = Arc::clone(&latency);
            async move {
                let reply = answer.await;
                latency.observe(started.elapsed());
                reply
            }
        };
        let stop = self.stop_signal();
        self.spawn(
            "protocol",
            serve_protocol(
                requests,
                fairness,
                lanes,
                lane_of,
                handler,
                stop,
                DRAIN_DEADLINE,
            ),
        );
        Ok(())
    }

    /// Stops every task: the stop signal, then each task is awaited until `deadline` has
    /// passed (what is left then is aborted and named in the log), then the overlay closes.
    pub async fn shutdown(self, deadline: Duration) {
        let _ = self.stop_tx.send(true);
        let until = tokio::time::Instant::now() + deadline;
        for (name, mut task) in self.tasks {
            if tokio::time::timeout_at(until, &mut task).await.is_err() {
                tracing::warn!(
                    task = name,
                    "still running at the shutdown deadline: abandoned"
                );
                task.abort();
            }
        }
        self.overlay.shutdown().await;
    }
}

/// Hands each validated ad of `feed` to `take` until the daemon stops (`stop`) or the overlay
/// closes the feed. A feed that lagged is logged; nodes re-announce, so nothing is lost for
/// long.
pub async fn each_ad(
    mut feed: tokio::sync::broadcast::Receiver<crate::overlay::AdEvent>,
    mut stop: watch::Receiver<bool>,
    mut take: impl FnMut(crate::overlay::AdEvent),
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let event = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            event = feed.recv() => event,
        };
        match event {
            Ok(event) => take(event),
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(lost = n, "ad feed lagged; nodes re-announce");
            }
            Err(RecvError::Closed) => break,
        }
    }
}

/// How long a daemon's shutdown may take in all, the protocol drain included.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(15);

/// `init`: writes a new key and the commented config `config_text` into `dir` as
/// `config_name`, refusing to overwrite either; returns the key.
pub fn init<K: DaemonKind>(
    dir: &Path,
    config_name: &str,
    config_text: &str,
) -> Result<SecretKey, DaemonError> {
    let state = |path: &Path, e: std::io::Error| DaemonError::State {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(|e| state(dir, e))?;
    let (config, key_file) = (dir.join(config_name), dir.join(K::KEY_FILE));
    for path in [&config, &key_file] {
        if path.exists() {
            return Err(DaemonError::Exists {
                program: K::PROGRAM,
                path: path.clone(),
                config: config.clone(),
            });
        }
    }
    let key = SecretKey::generate();
    key.save(&key_file).map_err(|source| DaemonError::Key {
        program: K::PROGRAM,
        path: key_file.clone(),
        source,
    })?;
    std::fs::write(&config, config_text).map_err(|e| state(&config, e))?;
    Ok(key)
}

/// Loads a daemon's key, with an error that says how to make one.
pub fn load_key<K: DaemonKind>(path: &Path) -> Result<SecretKey, DaemonError> {
    SecretKey::load(path).map_err(|source| DaemonError::Key {
        program: K::PROGRAM,
        path: path.to_path_buf(),
        source,
    })
}

/// What `init` and `key` print: the public key (for `fedctl certify --subject`), and the peer
/// id others put in their bootstrap addresses (`/ip4/…/tcp/…/p2p/<peer id>`).
pub fn describe_key<K: DaemonKind>(key: &PublicKey) -> String {
    format!(
        "{} key: {key}\npeer id: {}",
        K::ROLE,
        crate::overlay::peer_id(key)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::config::CommonConfig;
    use capability_schema::Role;

    struct TestKind;
    impl DaemonKind for TestKind {
        const PROGRAM: &'static str = "testd";
        const ROLE: Role = Role::Broker;
        const KEY_FILE: &'static str = "test.key";
        const PORT: u16 = 4999;
        const HTTP_PORT: u16 = 9199;
        const MAX_IN_FLIGHT: usize = 8;
    }

    #[test]
    fn init_writes_a_private_key_and_the_config_once() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let text = CommonConfig::<TestKind>::template("plc");
        let key = init::<TestKind>(dir.path(), "test.toml", &text).unwrap();
        let mode = std::fs::metadata(dir.path().join("test.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the key is readable by others: {mode:o}");
        assert_eq!(
            load_key::<TestKind>(&dir.path().join("test.key"))
                .unwrap()
                .public(),
            key.public()
        );
        let again = init::<TestKind>(dir.path(), "test.toml", &text).unwrap_err();
        assert!(matches!(again, DaemonError::Exists { .. }), "{again}");
        let missing = load_key::<TestKind>(&dir.path().join("nope.key")).unwrap_err();
        assert!(
            missing.to_string().contains("run `testd init` first"),
            "{missing}"
        );
    }

    #[test]
    fn a_key_is_described_with_its_peer_id() {
        let key = SecretKey::generate().public();
        let text = describe_key::<TestKind>(&key);
        assert!(text.starts_with("broker key: "), "{text}");
        assert!(text.contains(&key.to_string()));
        assert!(text.contains(&crate::overlay::peer_id(&key).to_string()));
    }

    #[tokio::test]
    async fn shutdown_keeps_its_deadline_and_stops_http() {
        let overlay = crate::Overlay::start(
            &SecretKey::generate(),
            crate::OverlayConfig::memory(),
            Default::default(),
        )
        .await
        .unwrap();
        let mut runtime = Runtime::new(overlay);
        let addr = runtime
            .serve_http(Some("127.0.0.1:0".parse().unwrap()), axum::Router::new())
            .await
            .unwrap()
            .unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_ok());
        let mut stop = runtime.stop_signal();
        runtime.spawn("polite", async move {
            let _ = stop.wait_for(|s| *s).await;
        });
        runtime.spawn("stubborn", std::future::pending());
        let t = std::time::Instant::now();
        runtime.shutdown(Duration::from_millis(300)).await;
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
