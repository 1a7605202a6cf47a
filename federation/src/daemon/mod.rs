//! What every PlanetMesh daemon's `main` shares: logging set-up, waiting for SIGTERM or
//! ctrl-c, the trusted-federations section of configs, reading certificates, and serving a
//! protocol fairly ([`serve`]), and how a program ends on an error ([`cli`]).

use std::path::Path;

use capability_schema::{
    MembershipCert, PublicKey, RevocationList, Role, SecretKey, Signed, codec,
};
use serde::{Deserialize, Serialize};

use crate::TrustStore;

pub mod cli;
pub mod config;
pub mod exporter;
pub mod health;
pub mod join;
pub mod runtime;
pub mod serve;

pub use config::{CommonConfig, ConfigError, DaemonKind};
pub use runtime::{DaemonError, Runtime, SHUTDOWN_DEADLINE};
pub use serve::{DRAIN_DEADLINE, Fairness, serve_protocol};

/// A trusted federation authority, as configs list them (`[[trust]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedFederation {
    /// The federation's name.
    pub name: String,
    /// Its authority key.
    pub authority: PublicKey,
}

/// A trust store anchoring every federation of `trusted`.
pub fn trust_store(trusted: &[TrustedFederation]) -> anyhow::Result<TrustStore> {
    let mut store = TrustStore::new();
    for t in trusted {
        store
            .add_federation(&t.name, t.authority)
            .map_err(|e| anyhow::anyhow!("trusting federation {}: {e}", t.name))?;
    }
    Ok(store)
}

/// The federations a daemon's `follow` names, as the overlay is to resolve them: a bare name
/// equal to the daemon's own federation's means its own (`name@KEY` with its certificate's
/// authority), even when another trusted federation carries that name; every other entry is
/// kept as written (`name` or `name@KEY`).
pub fn follow_own(follow: &[String], own: &MembershipCert) -> Vec<String> {
    follow
        .iter()
        .map(|f| {
            if *f == own.federation {
                format!("{}@{}", own.federation, own.authority)
            } else {
                f.clone()
            }
        })
        .collect()
}

/// Reads the revocation lists a config names (`revocations = [...]`), checking each is a
/// signed revocation list; whether its authority is trusted is checked when the overlay
/// starts with them ([`crate::OverlayConfig::revocations`]).
pub fn read_revocations(
    paths: &[std::path::PathBuf],
) -> anyhow::Result<Vec<Signed<RevocationList>>> {
    paths
        .iter()
        .map(|path| {
            let signed = crate::trust::read_signed::<RevocationList>(path).map_err(|e| {
                anyhow::anyhow!(
                    "revocation list {}: {e} (make one with: fedctl revoke --authority DIR ...)",
                    path.display()
                )
            })?;
            signed
                .verify()
                .map_err(|e| anyhow::anyhow!("revocation list {}: {e}", path.display()))?;
            Ok(signed)
        })
        .collect()
}

/// Reads a membership certificate file and checks it certifies `key` as a `role` of
/// `federation` (the signature is checked; the trust store checks the authority later).
pub fn load_membership(
    path: &Path,
    key: &SecretKey,
    role: Role,
    federation: &str,
) -> anyhow::Result<(Signed<MembershipCert>, MembershipCert)> {
    let bytes = std::fs::read(path).map_err(|e| {
        anyhow::anyhow!(
            "reading the membership certificate {}: {e} (make one with: fedctl certify --role {role} \
             --subject {})",
            path.display(),
            key.public()
        )
    })?;
    let signed: Signed<MembershipCert> = codec::decode(&bytes)
        .map_err(|e| anyhow::anyhow!("{} is not a membership certificate: {e}", path.display()))?;
    let cert = signed
        .verify()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if cert.subject != key.public() || cert.role != role || cert.federation != federation {
        anyhow::bail!(
            "{} certifies {} as a {} of {}, not this daemon ({}) as a {role} of {federation}",
            path.display(),
            cert.subject,
            cert.role,
            cert.federation,
            key.public(),
        );
    }
    Ok((signed, cert))
}

/// Sets up `tracing`: `RUST_LOG` filters (default `info`), JSON lines when `json`, colour only
/// on a terminal.
pub fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for people: a file, a pipe or the journal gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Resolves when the process gets SIGTERM or ctrl-c.
pub async fn shutdown_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use capability_schema::identity::test_key;

    use super::*;
    use crate::trust::{Authority, Validity};

    #[test]
    fn a_bare_own_name_in_follow_means_the_own_federation_by_key() {
        let mut own = Authority::with_key("fed0", test_key(131)).unwrap();
        let signed = own.certify(
            test_key(1).public(),
            Role::Agent,
            "s",
            "a",
            Validity::days(1_700_000_000, 1),
        );
        let cert = signed.verify().unwrap();
        let follow = vec!["fed0".to_owned(), "fed1".to_owned(), "fed0@abcd".to_owned()];
        let resolved = follow_own(&follow, &cert);
        assert_eq!(resolved[0], format!("fed0@{}", own.public()));
        assert_eq!(resolved[1..], follow[1..]);
        // What it becomes names exactly the own authority among two fed0 anchors.
        let other = Authority::with_key("fed0", test_key(132)).unwrap();
        let mut store = TrustStore::new();
        store.add_federation("fed0", own.public()).unwrap();
        store.add_federation("fed0", other.public()).unwrap();
        assert_eq!(store.resolve(&resolved[0]), Ok(own.public()));
        assert!(store.resolve("fed0").is_err());
    }
}
