//! An agent's policy: who may get which tickets (paper §4.2.2, made plural).
//!
//! Rules, checked in this order; every refusal names the rule that refused:
//! 1. `principal`: the principal is listed in the policy, or presents a membership certificate
//!    the trust store accepts (its own federation, or another under a peering agreement);
//! 2. `peering`: a principal of another federation needs an agreement in force (the trust store
//!    says which) and stays within its limits: slivers per principal, duration, and the total
//!    resources outstanding for all principals of that federation together (`max_total`; the
//!    refusal says how much of it is left);
//! 3. `slice-prefix`: the slice name starts with one of the principal's prefixes (by default
//!    the principal's site followed by `_`, as PlanetLab named slices);
//! 4. `admin-only`: admin slices, and their capabilities, only for admins;
//! 5. `duration`: tickets no longer than the policy's maximum;
//! 6. `quota`: the principal's outstanding slivers and resources stay within its quota.

use std::collections::BTreeMap;

use capability_schema::membership::PeeringLimits;
use capability_schema::resources::ResourceKind;
use capability_schema::{PublicKey, Rejection, Resources};
use serde::{Deserialize, Serialize};

/// What a principal is to this agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrincipalRole {
    /// May create regular slices under its prefixes.
    User,
    /// A principal investigator: like a user, with the site's quota.
    Pi,
    /// May create admin slices.
    Admin,
}

/// A quota: at most this much outstanding at once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Slivers (none: no limit).
    pub max_slivers: Option<u32>,
    /// Resources summed over slivers (none: no limit).
    #[serde(default, with = "optional_human")]
    pub max_total: Option<Resources>,
}

/// A principal the policy names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalEntry {
    /// Its key (`ed25519/<hex>`).
    pub key: PublicKey,
    /// Its role.
    pub role: PrincipalRole,
    /// Slice-name prefixes it may use (empty: its site's default prefix).
    #[serde(default)]
    pub slice_prefixes: Vec<String>,
    /// Its quota (none: the default quota).
    #[serde(default)]
    pub quota: Option<Quota>,
    /// Whether its slivers may hold raw sockets (`net_raw` in a request; default false; the
    /// admin role may always).
    #[serde(default)]
    pub net_raw: bool,
}

/// The policy file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Principals with explicit roles.
    #[serde(default)]
    pub principals: Vec<PrincipalEntry>,
    /// Whether certified principals not listed are served as users (default true).
    #[serde(default = "yes")]
    pub serve_certified_members: bool,
    /// The quota of principals without their own (default: 10 slivers).
    #[serde(default = "default_quota")]
    pub default_quota: Quota,
    /// The longest ticket, in seconds (default 14 days).
    #[serde(default = "default_max_duration")]
    pub max_duration_secs: u64,
}

fn yes() -> bool {
    true
}

fn default_quota() -> Quota {
    Quota {
        max_slivers: Some(10),
        max_total: None,
    }
}

fn default_max_duration() -> u64 {
    14 * 86_400
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            principals: Vec::new(),
            serve_certified_members: true,
            default_quota: default_quota(),
            max_duration_secs: default_max_duration(),
        }
    }
}

/// Who the trust store says the principal is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrincipalFacts {
    /// The principal.
    pub key: PublicKey,
    /// Its site, when certified.
    pub site: Option<String>,
    /// Its federation, when certified.
    pub federation: Option<String>,
    /// Its federation's authority key, when certified (peering totals count by it).
    pub authority: Option<PublicKey>,
    /// The peering limits it is served under (none: a member of this agent's federation, or
    /// not certified).
    pub peering: Option<PeeringLimits>,
}

/// What a principal has outstanding now (and, for the peering limit on the total, what all
/// principals of its federation have: [`Policy::check`]'s `federation_total`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Slivers.
    pub slivers: u32,
    /// Resources.
    pub total: Resources,
}

/// The ask being judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask<'a> {
    /// The slice name.
    pub slice: &'a str,
    /// Whether it is an admin slice.
    pub admin: bool,
    /// How many slivers.
    pub slivers: u32,
    /// Their resources summed.
    pub total: Resources,
    /// Seconds from now to the tickets' end.
    pub duration_secs: u64,
    /// Whether raw sockets are asked for.
    pub net_raw: bool,
}

/// The policy, indexed.
#[derive(Debug, Clone)]
pub struct Policy {
    config: PolicyConfig,
    by_key: BTreeMap<PublicKey, PrincipalEntry>,
}

fn refuse(rule: &str, detail: String) -> Rejection {
    Rejection::Policy {
        rule: rule.to_owned(),
        detail,
    }
}

impl Policy {
    /// The policy of a config.
    pub fn new(config: PolicyConfig) -> Policy {
        let by_key = config
            .principals
            .iter()
            .map(|p| (p.key, p.clone()))
            .collect();
        Policy { config, by_key }
    }

    /// The config.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// Judges an ask, or names the rule that refuses it. `usage` is what the principal has
    /// outstanding; `federation_total` what all principals of its federation have (only a
    /// peering agreement's `max_total` reads it).
    pub fn check(
        &self,
        who: &PrincipalFacts,
        usage: Usage,
        federation_total: Resources,
        ask: &Ask<'_>,
    ) -> Result<PrincipalRole, Rejection> {
        // 1. principal
        let listed = self.by_key.get(&who.key);
        let certified = who.site.is_some();
        let role = match (listed, certified) {
            (Some(entry), _) => entry.role,
            (None, true) if self.config.serve_certified_members => PrincipalRole::User,
            _ => return Err(Rejection::UnknownPrincipal { principal: who.key }),
        };
        // 2. peering
        if let Some(limits) = &who.peering {
            if let Some(max) = limits.max_slivers_per_principal
                && usage.slivers.saturating_add(ask.slivers) > max
            {
                return Err(refuse(
                    "peering",
                    format!(
                        "the peering agreement allows {max} slivers per principal of federation {}; \
                         {} held, {} asked",
                        who.federation.as_deref().unwrap_or("?"),
                        usage.slivers,
                        ask.slivers
                    ),
                ));
            }
            if let Some(max) = limits.max_duration_secs
                && ask.duration_secs > max
            {
                return Err(refuse(
                    "peering",
                    format!(
                        "the peering agreement allows leases of at most {max} s; {} s asked",
                        ask.duration_secs
                    ),
                ));
            }
            if let Some(max) = &limits.max_total
                && let Some(kind) = federation_total
                    .checked_add(&ask.total)
                    .map_or(Some(ResourceKind::Cpu), |after| after.first_excess(max))
            {
                let left = max.saturating_sub(&federation_total);
                return Err(refuse(
                    "peering",
                    format!(
                        "the peering agreement allows {} {kind} at once for all principals of \
                         federation {}: {} outstanding, {} asked, {} left (all that is left: {left}); \
                         ask for less or wait for tickets to end",
                        kind.format(max.get(kind)),
                        who.federation.as_deref().unwrap_or("?"),
                        kind.format(federation_total.get(kind)),
                        kind.format(ask.total.get(kind)),
                        kind.format(left.get(kind)),
                    ),
                ));
            }
        }
        // 3. slice-prefix
        let prefixes: Vec<String> = match listed {
            Some(entry) if !entry.slice_prefixes.is_empty() => entry.slice_prefixes.clone(),
            _ => who.site.iter().map(|site| format!("{site}_")).collect(),
        };
        if role != PrincipalRole::Admin
            && !prefixes.iter().any(|p| ask.slice.starts_with(p.as_str()))
        {
            return Err(refuse(
                "slice-prefix",
                format!(
                    "slice {:?} must start with one of {:?}",
                    ask.slice, prefixes
                ),
            ));
        }
        // 4. admin-only
        if ask.admin && role != PrincipalRole::Admin {
            return Err(refuse(
                "admin-only",
                "admin slices are only for principals with the admin role".into(),
            ));
        }
        // 4b. raw sockets: only for principals the policy names (or admins)
        if ask.net_raw && role != PrincipalRole::Admin && !listed.is_some_and(|e| e.net_raw) {
            return Err(refuse(
                "net-raw",
                "raw sockets are granted only to principals this agent's policy lists with \
                 net_raw = true"
                    .into(),
            ));
        }
        // 5. duration
        if ask.duration_secs > self.config.max_duration_secs {
            return Err(refuse(
                "duration",
                format!(
                    "tickets last at most {} s here; {} s asked",
                    self.config.max_duration_secs, ask.duration_secs
                ),
            ));
        }
        // 6. quota
        let quota = listed
            .and_then(|e| e.quota.as_ref())
            .unwrap_or(&self.config.default_quota);
        if let Some(max) = quota.max_slivers
            && usage.slivers.saturating_add(ask.slivers) > max
        {
            return Err(refuse(
                "quota",
                format!(
                    "quota of {max} slivers: {} outstanding, {} asked",
                    usage.slivers, ask.slivers
                ),
            ));
        }
        if let Some(max) = &quota.max_total {
            let after = usage.total.checked_add(&ask.total);
            if let Some(kind) = after.map_or(Some(ResourceKind::Cpu), |a| a.first_excess(max)) {
                return Err(refuse(
                    "quota",
                    format!(
                        "quota of {} {kind}: {} outstanding, {} asked",
                        kind.format(max.get(kind)),
                        kind.format(usage.total.get(kind)),
                        kind.format(ask.total.get(kind))
                    ),
                ));
            }
        }
        Ok(role)
    }
}

/// Serde adapter for an optional [`Resources`] in human form.
mod optional_human {
    use capability_schema::Resources;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        value: &Option<Resources>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(r) => s.collect_str(r),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Resources>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| text.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use capability_schema::identity::test_key;

    use super::*;

    fn member(n: u8) -> PrincipalFacts {
        PrincipalFacts {
            key: test_key(n).public(),
            site: Some("princeton".into()),
            federation: Some("plc".into()),
            authority: Some(test_key(100).public()),
            peering: None,
        }
    }

    fn ask(slice: &str, slivers: u32) -> Ask<'_> {
        Ask {
            slice,
            admin: false,
            slivers,
            total: Resources::ZERO,
            duration_secs: 3600,
            net_raw: false,
        }
    }

    fn rule_of(r: Result<PrincipalRole, Rejection>) -> String {
        match r {
            Err(Rejection::Policy { rule, .. }) => rule,
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn certified_member_gets_its_site_prefix() {
        let p = Policy::new(PolicyConfig::default());
        assert_eq!(
            p.check(
                &member(1),
                Usage::default(),
                Resources::ZERO,
                &ask("princeton_codeen", 2)
            )
            .unwrap(),
            PrincipalRole::User
        );
        assert_eq!(
            rule_of(p.check(
                &member(1),
                Usage::default(),
                Resources::ZERO,
                &ask("mit_x", 2)
            )),
            "slice-prefix"
        );
    }

    #[test]
    fn unknown_principal_is_refused() {
        let p = Policy::new(PolicyConfig::default());
        let stranger = PrincipalFacts {
            key: test_key(9).public(),
            site: None,
            federation: None,
            authority: None,
            peering: None,
        };
        assert!(matches!(
            p.check(&stranger, Usage::default(), Resources::ZERO, &ask("x_y", 1)),
            Err(Rejection::UnknownPrincipal { .. })
        ));
    }

    #[test]
    fn admin_slices_only_for_admins() {
        let mut config = PolicyConfig::default();
        config.principals.push(PrincipalEntry {
            key: test_key(2).public(),
            role: PrincipalRole::Admin,
            slice_prefixes: vec![],
            quota: None,
            net_raw: false,
        });
        let p = Policy::new(config);
        let mut admin_ask = ask("princeton_admin", 1);
        admin_ask.admin = true;
        assert_eq!(
            rule_of(p.check(&member(1), Usage::default(), Resources::ZERO, &admin_ask)),
            "admin-only"
        );
        assert_eq!(
            p.check(&member(2), Usage::default(), Resources::ZERO, &admin_ask)
                .unwrap(),
            PrincipalRole::Admin
        );
    }

    #[test]
    fn quota_and_peering_limits_name_their_rule() {
        let p = Policy::new(PolicyConfig::default());
        let used = Usage {
            slivers: 9,
            total: Resources::ZERO,
        };
        assert_eq!(
            rule_of(p.check(&member(1), used, Resources::ZERO, &ask("princeton_a", 2))),
            "quota"
        );
        let mut foreign = member(3);
        foreign.federation = Some("ple".into());
        foreign.peering = Some(PeeringLimits {
            max_slivers_per_principal: Some(1),
            ..Default::default()
        });
        assert_eq!(
            rule_of(p.check(
                &foreign,
                Usage::default(),
                Resources::ZERO,
                &ask("princeton_a", 2)
            )),
            "peering"
        );
        let mut long = ask("princeton_a", 1);
        long.duration_secs = 30 * 86_400;
        assert_eq!(
            rule_of(p.check(&member(1), Usage::default(), Resources::ZERO, &long)),
            "duration"
        );
    }

    #[test]
    fn peering_total_counts_the_whole_federation_and_says_what_is_left() {
        let p = Policy::new(PolicyConfig::default());
        let max: Resources = "cpu=2 cores,memory=2GiB,disk=10GiB,egress=10Mbit"
            .parse()
            .unwrap();
        let mut foreign = member(5);
        foreign.federation = Some("ple".into());
        foreign.peering = Some(PeeringLimits {
            max_total: Some(max),
            ..Default::default()
        });
        let asking = |total: &str| Ask {
            total: total.parse().unwrap(),
            ..ask("princeton_a", 1)
        };
        let held: Resources = "cpu=1 core,memory=1GiB".parse().unwrap();
        // Up to the limit exactly is served; the principal's own usage is not what counts.
        assert_eq!(
            p.check(
                &foreign,
                Usage::default(),
                held,
                &asking("cpu=1 core,memory=1GiB,disk=10GiB,egress=10Mbit")
            ),
            Ok(PrincipalRole::User)
        );
        // One millicore more is refused, by the peering rule, with what is left.
        let refused = p.check(
            &foreign,
            Usage::default(),
            held,
            &asking("cpu=1001m,memory=1GiB"),
        );
        let Err(Rejection::Policy { rule, detail }) = refused else {
            panic!("not a policy refusal: {refused:?}");
        };
        assert_eq!(rule, "peering");
        for needle in [
            "federation ple",
            "2 cores cpu",
            "1 core outstanding",
            "1001m asked",
            "1 core left",
            "all that is left: cpu=1 core,memory=1GiB,disk=10GiB,egress=10Mbit",
        ] {
            assert!(detail.contains(needle), "{needle:?} not in {detail:?}");
        }
        // A component the limit leaves out is a limit of zero there.
        let mut cpu_only = foreign.clone();
        cpu_only.peering = Some(PeeringLimits {
            max_total: Some("cpu=4 cores".parse().unwrap()),
            ..Default::default()
        });
        let refused = p.check(
            &cpu_only,
            Usage::default(),
            Resources::ZERO,
            &asking("cpu=1 core,memory=1MiB"),
        );
        assert!(
            matches!(&refused, Err(Rejection::Policy { rule, detail }) if rule == "peering" && detail.contains("memory")),
            "{refused:?}"
        );
        // An outstanding total that would overflow is refused, not wrapped.
        let huge = Resources {
            cpu_millis: u64::MAX,
            ..Resources::ZERO
        };
        assert_eq!(
            rule_of(p.check(&foreign, Usage::default(), huge, &asking("cpu=1m"))),
            "peering"
        );
        // Members of the agent's own federation are not under a peering limit.
        assert_eq!(
            p.check(&member(5), Usage::default(), huge, &asking("cpu=1 core")),
            Ok(PrincipalRole::User)
        );
    }

    #[test]
    fn policy_file_parses_with_defaults() {
        let text = format!(
            "[[principals]]\nkey = \"{}\"\nrole = \"pi\"\nslice_prefixes = [\"mit_\"]\nquota = {{ max_slivers = 3, max_total = \"cpu=2 cores\" }}\n",
            test_key(4).public()
        );
        let config: PolicyConfig = toml::from_str(&text).unwrap();
        assert!(config.serve_certified_members);
        assert_eq!(
            config.principals[0]
                .quota
                .as_ref()
                .unwrap()
                .max_total
                .unwrap()
                .cpu_millis,
            2000
        );
    }

    #[test]
    fn raw_sockets_only_for_principals_the_policy_names_or_admins() {
        let mut config = PolicyConfig::default();
        for (n, role, net_raw) in [
            (2, PrincipalRole::User, true),
            (3, PrincipalRole::User, false),
            (4, PrincipalRole::Admin, false),
        ] {
            config.principals.push(PrincipalEntry {
                key: test_key(n).public(),
                role,
                slice_prefixes: vec!["plc_".into()],
                quota: None,
                net_raw,
            });
        }
        let policy = Policy::new(config);
        let mut raw = ask("plc_probe", 1);
        raw.net_raw = true;
        let judge = |n: u8| {
            let mut who = member(n);
            who.key = test_key(n).public();
            policy.check(&who, Usage::default(), Resources::ZERO, &raw)
        };
        assert!(judge(2).is_ok());
        assert!(judge(4).is_ok());
        let refused = judge(3).unwrap_err();
        assert!(
            matches!(&refused, Rejection::Policy { rule, .. } if rule == "net-raw"),
            "{refused:?}"
        );
        // Without raw sockets asked, the same principal is served.
        let mut who = member(3);
        who.key = test_key(3).public();
        assert!(
            policy
                .check(
                    &who,
                    Usage::default(),
                    Resources::ZERO,
                    &ask("plc_probe", 1)
                )
                .is_ok()
        );
    }
}
