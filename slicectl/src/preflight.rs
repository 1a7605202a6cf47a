//! Checks `slicectl` makes on this machine before any network call, so that a mistake fails
//! once, at once, with what to do, instead of as the same refusal from every agent:
//!
//! - the slice name (the rule of `capability-schema`'s tickets, in the `<site>_<name>` form);
//! - the principal's membership certificate: valid now, and for the principal role;
//! - the config's `[[trust]]` entries: well-formed keys, and the entry for the principal's own
//!   federation naming the authority that signed the principal's certificate.

use std::path::{Path, PathBuf};

use capability_schema::ticket::MAX_NAME_LEN;
use capability_schema::{MembershipCert, PublicKey, Role};
use serde::{Deserialize, Serialize};

use crate::config::TrustedFederation;
use crate::human;

/// A check that failed on this machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocalCheckError {
    /// The slice name breaks the naming rule.
    #[error(
        "slice name {name:?} is not valid: {why}; name slices <site>_<name> with 1 to \
         {MAX_NAME_LEN} characters from A-Z, a-z, 0-9, '.', '_' and '-' (e.g. princeton_demo)"
    )]
    SliceName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        why: String,
    },
    /// The certificate's validity ended.
    #[error(
        "membership certificate {path} expired {ago} (at {at}); ask {federation}'s authority \
         for a new one (fedctl certify --role principal --subject {subject})"
    )]
    CertExpired {
        /// The file.
        path: PathBuf,
        /// How long ago, e.g. `3h ago`.
        ago: String,
        /// The local time it ended.
        at: String,
        /// Its federation.
        federation: String,
        /// The certified key, as text.
        subject: String,
    },
    /// The certificate's validity has not begun.
    #[error(
        "membership certificate {path} is not valid yet: it starts {when} (at {at}); check this \
         machine's clock, or wait"
    )]
    CertNotYetValid {
        /// The file.
        path: PathBuf,
        /// When, e.g. `in 2h`.
        when: String,
        /// The local time it begins.
        at: String,
    },
    /// The certificate is for another role.
    #[error(
        "membership certificate {path} certifies a {role}, not a principal; ask {federation}'s \
         authority for a principal's (fedctl certify --role principal --subject {subject})"
    )]
    CertRole {
        /// The file.
        path: PathBuf,
        /// The role it certifies.
        role: Role,
        /// Its federation.
        federation: String,
        /// The certified key, as text.
        subject: String,
    },
    /// A `[[trust]]` entry for the principal's own federation is malformed or names another
    /// authority than the one that signed the principal's certificate.
    #[error(
        "[[trust]] entry {index} ({name:?}) in the config: {why}; your certificate was signed \
         by {signer}: put that key in the entry"
    )]
    OwnTrust {
        /// 1-based position in the config.
        index: usize,
        /// The entry's federation name.
        name: String,
        /// What is wrong.
        why: String,
        /// The authority that signed the principal's certificate.
        signer: PublicKey,
    },
    /// A `[[trust]]` entry is malformed (and no certificate says which federation is own).
    #[error("[[trust]] entry {index} ({name:?}) in the config: {why}")]
    Trust {
        /// 1-based position in the config.
        index: usize,
        /// The entry's federation name.
        name: String,
        /// What is wrong.
        why: String,
    },
}

/// A `[[trust]]` entry as the config file writes it, checked by [`check_trust`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustEntry {
    /// The federation's name.
    pub name: String,
    /// Its authority key, `ed25519/<hex>`.
    pub authority: String,
}

/// Checks a slice name: `<site>_<name>`, at most [`MAX_NAME_LEN`] characters from
/// `[A-Za-z0-9._-]` (what tickets accept).
pub fn check_slice_name(name: &str) -> Result<(), LocalCheckError> {
    let fail = |why: String| {
        Err(LocalCheckError::SliceName {
            name: name.to_owned(),
            why,
        })
    };
    if name.is_empty() {
        return fail("it is empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return fail(format!("it has {} characters", name.len()));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._-".contains(*c)))
    {
        return fail(format!("{c:?} is not allowed"));
    }
    match name.split_once('_') {
        Some((site, rest)) if !site.is_empty() && !rest.is_empty() => Ok(()),
        _ => fail("it lacks the <site>_ prefix".into()),
    }
}

/// Checks that the principal's certificate (read from `path`) is valid at `now` and certifies
/// a principal.
pub fn check_certificate(
    path: &Path,
    cert: &MembershipCert,
    now: u64,
) -> Result<(), LocalCheckError> {
    if cert.role != Role::Principal {
        return Err(LocalCheckError::CertRole {
            path: path.to_owned(),
            role: cert.role,
            federation: cert.federation.clone(),
            subject: cert.subject.to_string(),
        });
    }
    if now < cert.issued_at {
        return Err(LocalCheckError::CertNotYetValid {
            path: path.to_owned(),
            when: human::relative(cert.issued_at, now),
            at: human::local_time(cert.issued_at),
        });
    }
    if now > cert.expires_at {
        return Err(LocalCheckError::CertExpired {
            path: path.to_owned(),
            ago: human::relative(cert.expires_at, now),
            at: human::local_time(cert.expires_at),
            federation: cert.federation.clone(),
            subject: cert.subject.to_string(),
        });
    }
    Ok(())
}

/// The `[[trust]]` entries that can be used, and warnings for those that cannot.
///
/// An entry for the principal's own federation (`own`: the certificate's body) that is
/// malformed or names another authority than the certificate's signer is an error: nothing of
/// that federation would verify. A malformed entry for another federation is left out with a
/// warning naming it; without a certificate every malformed entry is an error.
pub fn check_trust(
    entries: &[TrustEntry],
    own: Option<&MembershipCert>,
) -> Result<(Vec<TrustedFederation>, Vec<String>), LocalCheckError> {
    let mut trusted = Vec::new();
    let mut warnings = Vec::new();
    // A federation is its authority's key: once one entry anchors the certificate's signer,
    // other entries of the same name are other federations (a peered testbed's `fed0`).
    let own_anchored = own.is_some_and(|cert| {
        entries.iter().any(|e| {
            e.name == cert.federation
                && e.authority.trim().parse::<PublicKey>().ok() == Some(cert.authority)
        })
    });
    for (i, entry) in entries.iter().enumerate() {
        let index = i + 1;
        let mine = own.filter(|c| c.federation == entry.name);
        let parsed = entry.authority.trim().parse::<PublicKey>();
        match (parsed, mine) {
            (Ok(key), Some(cert)) if key != cert.authority && !own_anchored => {
                return Err(LocalCheckError::OwnTrust {
                    index,
                    name: entry.name.clone(),
                    why: format!("it names authority {key}, not your federation's"),
                    signer: cert.authority,
                });
            }
            (Ok(authority), _) => trusted.push(TrustedFederation {
                name: entry.name.clone(),
                authority,
            }),
            (Err(e), Some(cert)) => {
                return Err(LocalCheckError::OwnTrust {
                    index,
                    name: entry.name.clone(),
                    why: format!("authority {:?} is not a key ({e})", entry.authority),
                    signer: cert.authority,
                });
            }
            (Err(e), None) if own.is_none() => {
                return Err(LocalCheckError::Trust {
                    index,
                    name: entry.name.clone(),
                    why: format!(
                        "authority {:?} is not a key ({e}); write it as ed25519/<hex>",
                        entry.authority
                    ),
                });
            }
            (Err(e), None) => warnings.push(format!(
                "[[trust]] entry {index} ({:?}) in the config is left out: authority {:?} is \
                 not a key ({e}); write it as ed25519/<hex>",
                entry.name, entry.authority
            )),
        }
    }
    Ok((trusted, warnings))
}

#[cfg(test)]
mod tests {
    use capability_schema::identity::test_key;
    use federation::testing::TestFederation;

    use super::*;

    #[test]
    fn slice_names_follow_the_ticket_rule() {
        assert!(check_slice_name("princeton_demo").is_ok());
        assert!(check_slice_name("plc-site0_a.b-c").is_ok());
        for bad in [
            "",
            "demo",
            "_demo",
            "site_",
            "my slice_x",
            "a_b/c",
            &"a_".repeat(40),
        ] {
            let e = check_slice_name(bad).unwrap_err();
            assert!(e.to_string().contains("<site>_<name>"), "{e}");
        }
    }

    #[test]
    fn certificates_are_checked_for_time_and_role() {
        let mut plc = TestFederation::new("plc", 100);
        let key = test_key(60);
        let signed = plc.certify(&key, Role::Principal);
        let cert = signed.verify().unwrap();
        let path = Path::new("m.cbor");
        check_certificate(path, &cert, cert.issued_at).unwrap();
        let e = check_certificate(path, &cert, cert.expires_at + 3 * 3600).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("expired 3h ago"), "{text}");
        assert!(!text.contains(&cert.expires_at.to_string()), "{text}");
        let e = check_certificate(path, &cert, cert.issued_at - 7200).unwrap_err();
        assert!(
            e.to_string().contains("not valid yet: it starts in 2h"),
            "{e}"
        );
        let node = plc.certify(&test_key(61), Role::Node).verify().unwrap();
        let e = check_certificate(path, &node, node.issued_at).unwrap_err();
        assert!(e.to_string().contains("certifies a node"), "{e}");
    }

    #[test]
    fn trust_entries_are_checked_against_the_own_certificate() {
        let mut plc = TestFederation::new("plc", 100);
        let ple = TestFederation::new("ple", 200);
        let cert = plc
            .certify(&test_key(62), Role::Principal)
            .verify()
            .unwrap();
        let entry = |name: &str, authority: String| TrustEntry {
            name: name.into(),
            authority,
        };
        let good = [
            entry("plc", plc.authority.public().to_string()),
            entry("ple", ple.authority.public().to_string()),
        ];
        let (trusted, warnings) = check_trust(&good, Some(&cert)).unwrap();
        assert_eq!(trusted.len(), 2);
        assert!(warnings.is_empty());
        // Own federation, another authority's key: an error naming the signer.
        let wrong = [entry("plc", ple.authority.public().to_string())];
        let e = check_trust(&wrong, Some(&cert)).unwrap_err();
        assert!(
            e.to_string().contains(&plc.authority.public().to_string()),
            "{e}"
        );
        // Beside the own anchor, another federation of the same name (a peered testbed's
        // `plc`, another key) is trusted too.
        let peered = [
            entry("plc", plc.authority.public().to_string()),
            entry("plc", ple.authority.public().to_string()),
        ];
        let (trusted, warnings) = check_trust(&peered, Some(&cert)).unwrap();
        assert_eq!(trusted.len(), 2);
        assert!(warnings.is_empty());
        // Own federation, malformed: an error.
        let bad = [entry("plc", "ed25519/zz".into())];
        assert!(check_trust(&bad, Some(&cert)).is_err());
        // Another federation, malformed: left out with a warning naming it.
        let other = [
            entry("plc", plc.authority.public().to_string()),
            entry("ple", "ed25519/zz".into()),
        ];
        let (trusted, warnings) = check_trust(&other, Some(&cert)).unwrap();
        assert_eq!(trusted.len(), 1);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("\"ple\""), "{warnings:?}");
        // No certificate: a malformed entry is an error.
        assert!(check_trust(&other, None).is_err());
    }
}
