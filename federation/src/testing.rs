//! Fixtures for tests, benchmarks and simulations: federations with fixed keys, certified
//! nodes and their ads. Not for production use: the keys are public knowledge.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test fixtures: a failed step fails the test that uses it"
)]

use capability_schema::ad::MeasuredUse;
use capability_schema::identity::test_key;
use capability_schema::{MembershipCert, ResourceAd, Resources, Role, SecretKey, Signed};

use crate::trust::{Authority, TrustStore, Validity};

/// A fixed "now" for tests that do not run against the clock.
pub const NOW: u64 = 1_700_000_000;

/// Certificates made here are valid over this window (2001 to 2096), so they work both at
/// [`NOW`] and against the real clock.
pub const CERT_VALIDITY: Validity = Validity {
    not_before: 1_000_000_000,
    not_after: 4_000_000_000,
};

/// A federation whose authority has a fixed test key.
#[derive(Debug)]
pub struct TestFederation {
    /// The authority.
    pub authority: Authority,
}

impl TestFederation {
    /// Federation `name` with authority `test_key(seed)`.
    ///
    /// # Panics
    /// If `name` is not a valid federation name.
    pub fn new(name: &str, seed: u8) -> Self {
        Self::with_key(name, test_key(seed))
    }

    /// Federation `name` with authority `key`.
    ///
    /// # Panics
    /// If `name` is not a valid federation name.
    pub fn with_key(name: &str, key: SecretKey) -> Self {
        #[allow(clippy::expect_used)]
        let authority = Authority::with_key(name, key).expect("a valid test federation name");
        TestFederation { authority }
    }

    /// The federation's name.
    pub fn name(&self) -> &str {
        self.authority.name()
    }

    /// Anchors this federation in `store`.
    ///
    /// # Panics
    /// If `store` anchors this key under another name.
    pub fn trust(&self, store: &mut TrustStore) {
        #[allow(clippy::expect_used)]
        store
            .add_federation(self.authority.name(), self.authority.public())
            .expect("no conflicting anchor in a test store");
    }

    /// A node with key `test_key(seed)` certified at `site`.
    pub fn node(&mut self, seed: u8, site: &str) -> TestNode {
        self.node_with_key(test_key(seed), site)
    }

    /// A node with `key` certified at `site`.
    pub fn node_with_key(&mut self, key: SecretKey, site: &str) -> TestNode {
        let name = format!("node-{}", key.public().short());
        let cert = self
            .authority
            .certify(key.public(), Role::Node, site, &name, CERT_VALIDITY);
        TestNode {
            key,
            cert,
            federation: self.authority.name().to_owned(),
            site: site.to_owned(),
            name,
        }
    }

    /// A certificate of `role` for `key`.
    pub fn certify(&mut self, key: &SecretKey, role: Role) -> Signed<MembershipCert> {
        self.authority
            .certify(key.public(), role, "site", "member", CERT_VALIDITY)
    }
}

/// A certified node.
#[derive(Debug, Clone)]
pub struct TestNode {
    /// Its key.
    pub key: SecretKey,
    /// Its membership certificate.
    pub cert: Signed<MembershipCert>,
    /// Its federation.
    pub federation: String,
    /// Its site.
    pub site: String,
    /// Its name.
    pub name: String,
}

impl TestNode {
    /// The unsigned body of an ad with `seq`, issued at `issued_at` for `ttl_secs`.
    pub fn ad_body(&self, seq: u64, issued_at: u64, ttl_secs: u64) -> ResourceAd {
        let capacity = Resources {
            cpu_millis: 4000,
            memory_bytes: 8 << 30,
            disk_bytes: 100 << 30,
            egress_kbps: 100_000,
            ports: 0,
        };
        ResourceAd {
            node: self.key.public(),
            federation: self.federation.clone(),
            site: self.site.clone(),
            name: self.name.clone(),
            addresses: Vec::new(),
            capacity,
            committed: Resources::ZERO,
            shares: Vec::new(),
            delegations: Vec::new(),
            measured: MeasuredUse::default(),
            membership: self.cert.clone(),
            seq,
            issued_at,
            ttl_secs,
        }
    }

    /// An ad with `seq`, issued at `issued_at` for `ttl_secs`, signed by the node.
    pub fn ad(&self, seq: u64, issued_at: u64, ttl_secs: u64) -> Signed<ResourceAd> {
        Signed::sign(&self.key, &self.ad_body(seq, issued_at, ttl_secs))
    }
}

pub use crate::daemon::exporter::cpu_time;

/// Checks a daemon's `mdns` setting the same way for every daemon: its default config (with
/// the federation filled in) shows `# mdns = false` with its meaning and the QUIC listen hint;
/// loaded as written, mDNS is off; uncommented with `true`, on; a wrong type is refused naming
/// the key. `load` reads a config file and returns its `mdns` value or the error's text.
///
/// Panics (it is for tests) on the first expectation that fails.
pub fn check_mdns_setting(
    default_config: &str,
    load: impl Fn(&std::path::Path) -> Result<bool, String>,
) {
    let dir = tempfile_dir("mdns-check");
    let path = dir.0.join("daemon.toml");
    let line = default_config
        .lines()
        .find(|l| l.starts_with("# mdns = false"))
        .expect("the default config shows the mdns key");
    assert!(line.contains("multicast DNS"), "{line}");
    assert!(
        default_config.contains("turn on for a LAN testbed"),
        "{default_config}"
    );
    assert!(default_config.contains("quic-v1"), "{default_config}");
    std::fs::write(&path, default_config).expect("write config");
    assert!(!load(&path).expect("the default config loads"));
    std::fs::write(
        &path,
        default_config.replace("# mdns = false", "mdns = true"),
    )
    .expect("write config");
    assert!(load(&path).expect("mdns = true loads"));
    std::fs::write(&path, "federation = \"plc\"\nmdns = \"yes\"\n").expect("write config");
    let err = load(&path).expect_err("mdns = \"yes\" is refused");
    assert!(err.contains("mdns"), "{err}");
}

/// Checks that a commented config template puts every section (`# [name]`, `# [[name]]`)
/// after all its top-level settings, each section a block of its own lines ended by a blank
/// line: uncommenting any setting or whole section in place then keeps it where it belongs
/// (a top-level setting below a section header would become a field of that section).
pub fn check_sections_last(template: &str) {
    let mut in_sections = false;
    let mut in_block = false;
    for (n, line) in template.lines().enumerate() {
        let text = line.trim_start_matches('#').trim();
        if text.starts_with('[') {
            in_sections = true;
            in_block = true;
            continue;
        }
        if text.is_empty() && line.trim().is_empty() {
            in_block = false;
            continue;
        }
        let setting = text.split('#').next().unwrap_or("").contains(" = ");
        assert!(
            !(in_sections && !in_block && setting),
            "line {}: a setting after a section, where uncommenting it would put it in that \
             section: {line:?}\n{template}",
            n + 1
        );
    }
}

/// The template with every commented setting uncommented in place (`# key = value` lines,
/// section headers `# [name]` / `# [[name]]`), placeholders made real: `ed25519/...` becomes a
/// valid key and `12D3...` its peer id. Loading it checks that every line of the template
/// works where it stands, together.
pub fn uncomment_all(template: &str) -> String {
    let key = test_key(77).public();
    let peer = crate::overlay::peer_id(&key).to_string();
    template
        .lines()
        .map(|line| {
            let Some(rest) = line.strip_prefix("# ") else {
                return line.to_owned();
            };
            let name = rest.split(" = ").next().unwrap_or("");
            let setting = rest.contains(" = ")
                && !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if setting || rest.starts_with('[') {
                rest.replace("ed25519/...", &key.to_string())
                    .replace("12D3...", &peer)
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Loads `template` with every line uncommented in place ([`uncomment_all`]) through `load`,
/// and fails the test with the text when it does not load.
pub fn check_uncommented_template_loads<T, E: std::fmt::Display>(
    template: &str,
    load: impl Fn(&std::path::Path) -> Result<T, E>,
) {
    let dir = tempfile_dir("uncommented");
    let path = dir.0.join("daemon.toml");
    let text = uncomment_all(template);
    std::fs::write(&path, &text).expect("write config");
    if let Err(e) = load(&path) {
        panic!("{e}\n{text}");
    }
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir(what: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!(
        "planetmesh-{what}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    TempDir(dir)
}

/// Checks a `/metrics` text the way Prometheus reads it: `promtool check metrics` must accept
/// it without a complaint. Where promtool is missing the check is skipped with a note, except
/// under `CI=true`, where it fails (`scripts/prereqs.sh` installs it).
///
/// # Panics
/// If promtool refuses the text, or is missing under CI.
pub fn check_metrics_with_promtool(text: &str) {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("promtool cannot run under CI ({e}): scripts/prereqs.sh installs it")
        }
        Err(e) => {
            eprintln!("note: promtool not found ({e}); /metrics not checked by it");
            return;
        }
    };
    #[allow(clippy::expect_used)]
    {
        child
            .stdin
            .take()
            .expect("promtool's stdin")
            .write_all(text.as_bytes())
            .expect("writing to promtool");
        let out = child.wait_with_output().expect("promtool's verdict");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.trim().is_empty(),
            "promtool check metrics: {said}\n{text}"
        );
    }
}

/// A daemon's HTTP endpoint as a monitoring system sees it: `/healthz` answers `ok`,
/// `/readyz` 200, and `/metrics` holds the daemon's own families (named from `own`, e.g.
/// `planetmesh_agent_`) and the standard ones, and promtool accepts it
/// ([`check_metrics_with_promtool`]).
///
/// # Panics
/// If any of it is not so.
pub async fn check_daemon_http(http: std::net::SocketAddr, own: &str) {
    assert_eq!(http_get(http, "/healthz").await, (200, "ok\n".to_owned()));
    let (code, ready) = http_get(http, "/readyz").await;
    assert_eq!(code, 200, "{ready}");
    let (code, metrics) = http_get(http, "/metrics").await;
    assert_eq!(code, 200, "{metrics}");
    for family in [
        own,
        "planetmesh_build_info{",
        "process_cpu_seconds_total ",
        "planetmesh_overlay_peers ",
    ] {
        assert!(metrics.contains(family), "{family} missing:\n{metrics}");
    }
    check_metrics_with_promtool(&metrics);
}

/// `GET path` from a daemon's HTTP endpoint at `addr` (HTTP/1.1, connection closed after):
/// the status code and the body.
///
/// # Panics
/// If the endpoint cannot be reached or answers something that is not HTTP.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    #[allow(clippy::expect_used)]
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("the HTTP endpoint accepts");
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    #[allow(clippy::expect_used)]
    stream
        .write_all(request.as_bytes())
        .await
        .expect("the request is sent");
    let mut out = String::new();
    #[allow(clippy::expect_used)]
    stream
        .read_to_string(&mut out)
        .await
        .expect("the answer is read");
    #[allow(clippy::expect_used)]
    let code = out
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .expect("an HTTP status line");
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (code, body)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn cpu_time_grows_with_work() {
        let before = cpu_time();
        let started = std::time::Instant::now();
        let mut x = 0u64;
        // Busy for at least 100 ms of wall time (bounded), so a few ticks pass.
        while started.elapsed() < Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
        }
        let used = cpu_time().saturating_sub(before);
        assert!(
            used > Duration::ZERO,
            "no CPU time counted for 100 ms of work"
        );
    }
}
