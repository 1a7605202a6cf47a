//! `slicectl.toml` and the principal's identity: who acts (key and membership certificate),
//! whom to ask (a broker, or agents directly), whom to trust, where the state lives.
//!
//! ```toml
//! key_file = "principal.key"        # default ~/.config/planetmesh/principal.key
//! membership = "membership.cbor"    # the principal's certificate (fedctl certify --role principal)
//! brokers = ["/ip4/127.0.0.1/tcp/4201/p2p/12D3…"] # ask these brokers (healthiest first), and
//! agents = ["/ip4/127.0.0.1/tcp/4101/p2p/12D3…"] # when none answers, broker in-process with these
//! bootstrap = []                    # peers to join through (brokers announce themselves there)
//! state_dir = "state"               # default $PLANETMESH_STATE, $XDG_DATA_HOME/planetmesh, …
//! timeout_secs = 20                 # the longest one remote call may take
//! concurrency = 32                  # remote calls in flight at once
//! [[trust]]                         # needed with `agents`: the broker in-process checks ads
//! name = "plc"
//! authority = "ed25519/…"
//! ```
//!
//! `broker = "…"` (one broker) is read as a one-element `brokers` (both may be given: `broker`
//! comes first). With neither brokers nor agents, slicectl asks the overlay for the brokers
//! that announce themselves ([`crate::brokers`]). Paths are relative to the config file.
//! Command-line flags override the file (`--broker` and `--agent` replace its brokers and
//! agents together: [`crate::brokers::choose`]).

use std::path::{Path, PathBuf};

use capability_schema::{MembershipCert, PublicKey, SecretKey, Signed, codec};
pub use federation::daemon::TrustedFederation;
use serde::{Deserialize, Serialize};

/// Errors of the config or identity.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file is unreadable or wrong.
    #[error("config {path}: {detail}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The key could not be loaded.
    #[error("principal key {path}: {detail} (make one with `slicectl keygen`)")]
    Key {
        /// The key file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// The certificate is unusable.
    #[error("membership certificate {path}: {detail}")]
    Cert {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// Something else is missing or wrong.
    #[error("{0}")]
    Invalid(String),
}

/// The config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The principal's key file.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The principal's membership certificate (CBOR).
    #[serde(default)]
    pub membership: Option<PathBuf>,
    /// A broker's multiaddress with `/p2p/<peer id>` (the first of [`ClientConfig::brokers`]).
    #[serde(default)]
    pub broker: Option<String>,
    /// Brokers' multiaddresses with `/p2p/<peer id>`, tried in order of health.
    #[serde(default)]
    pub brokers: Vec<String>,
    /// Agents' multiaddresses with `/p2p/<peer id>` (integrated broker).
    #[serde(default)]
    pub agents: Vec<String>,
    /// Peers to join through.
    #[serde(default)]
    pub bootstrap: Vec<String>,
    /// Trusted federation authorities, as written (checked by
    /// [`check_trust`](crate::preflight::check_trust) against the principal's certificate).
    #[serde(default)]
    pub trust: Vec<crate::preflight::TrustEntry>,
    /// The state directory.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// The longest one remote call may take, in seconds (default 20).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Remote calls in flight at once (default 32).
    #[serde(default)]
    pub concurrency: Option<usize>,
}

impl ClientConfig {
    /// Reads `path`; relative paths are resolved against its directory.
    pub fn load(path: &Path) -> Result<ClientConfig, ConfigError> {
        let fail = |detail: String| ConfigError::File {
            path: path.to_owned(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let mut config: ClientConfig = toml::from_str(&text).map_err(|e| fail(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut config.key_file,
            &mut config.membership,
            &mut config.state_dir,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(config)
    }
}

impl ClientConfig {
    /// Every broker the file names: `broker`, then `brokers`, each once.
    pub fn broker_list(&self) -> Vec<String> {
        let mut list: Vec<String> = Vec::new();
        for b in self.broker.iter().chain(&self.brokers) {
            if !list.contains(b) {
                list.push(b.clone());
            }
        }
        list
    }
}

/// The default key file: `~/.config/planetmesh/principal.key` (or under `$XDG_CONFIG_HOME`).
pub fn default_key_file() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("planetmesh/principal.key"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| PathBuf::from(home).join(".config/planetmesh/principal.key"))
}

/// Parses `name=ed25519/<hex>` (the `--trust` flag).
pub fn parse_trust(text: &str) -> Result<TrustedFederation, ConfigError> {
    let (name, key) = text.split_once('=').ok_or_else(|| {
        ConfigError::Invalid(format!("--trust {text:?}: expected name=ed25519/<hex>"))
    })?;
    let authority: PublicKey = key
        .trim()
        .parse()
        .map_err(|e| ConfigError::Invalid(format!("--trust {text:?}: {e}")))?;
    Ok(TrustedFederation {
        name: name.trim().to_owned(),
        authority,
    })
}

/// The principal: its key and, when it has one, its membership certificate.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The key.
    pub key: SecretKey,
    /// The certificate.
    pub cert: Option<Signed<MembershipCert>>,
    /// The certificate's body.
    pub member: Option<MembershipCert>,
}

impl Identity {
    /// Loads the key and, if `cert` is given, the certificate (which must certify this key).
    pub fn load(key_file: &Path, cert: Option<&Path>) -> Result<Identity, ConfigError> {
        let key = SecretKey::load(key_file).map_err(|e| ConfigError::Key {
            path: key_file.to_owned(),
            detail: e.to_string(),
        })?;
        let (cert, member) = match cert {
            None => (None, None),
            Some(path) => {
                let fail = |detail: String| ConfigError::Cert {
                    path: path.to_owned(),
                    detail,
                };
                let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
                let signed: Signed<MembershipCert> =
                    codec::decode(&bytes).map_err(|e| fail(e.to_string()))?;
                let member = signed.verify().map_err(|e| fail(e.to_string()))?;
                if member.subject != key.public() {
                    return Err(fail(format!(
                        "it certifies {}, not this key {}",
                        member.subject,
                        key.public()
                    )));
                }
                (Some(signed), Some(member))
            }
        };
        Ok(Identity { key, cert, member })
    }

    /// The principal's federation (from the certificate; empty without one).
    pub fn federation(&self) -> String {
        self.member
            .as_ref()
            .map(|m| m.federation.clone())
            .unwrap_or_default()
    }

    /// The principal's site (from the certificate).
    pub fn site(&self) -> Option<&str> {
        self.member.as_ref().map(|m| m.site.as_str())
    }
}

#[cfg(test)]
mod tests {
    use capability_schema::Role;
    use capability_schema::identity::test_key;
    use federation::testing::TestFederation;

    use super::*;

    #[test]
    fn config_paths_resolve_and_identity_checks_the_cert() {
        let dir = tempfile::tempdir().unwrap();
        let key = test_key(50);
        key.save(&dir.path().join("p.key")).unwrap();
        let mut plc = TestFederation::new("plc", 100);
        std::fs::write(
            dir.path().join("m.cbor"),
            codec::encode(&plc.certify(&key, Role::Principal)),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("other.cbor"),
            codec::encode(&plc.certify(&test_key(51), Role::Principal)),
        )
        .unwrap();
        let path = dir.path().join("slicectl.toml");
        std::fs::write(
            &path,
            format!(
                "key_file = \"p.key\"\nmembership = \"m.cbor\"\nagents = []\n[[trust]]\nname = \"plc\"\nauthority = \"{}\"\n",
                plc.authority.public()
            ),
        )
        .unwrap();
        let config = ClientConfig::load(&path).unwrap();
        let id = Identity::load(
            config.key_file.as_deref().unwrap(),
            config.membership.as_deref(),
        )
        .unwrap();
        assert_eq!(id.federation(), "plc");
        let err = Identity::load(
            &dir.path().join("p.key"),
            Some(&dir.path().join("other.cbor")),
        )
        .unwrap_err();
        assert!(err.to_string().contains("not this key"), "{err}");
        assert!(parse_trust("plc=ed25519/zz").is_err());
        assert_eq!(
            parse_trust(&format!("plc={}", plc.authority.public()))
                .unwrap()
                .name,
            "plc"
        );
    }
}
