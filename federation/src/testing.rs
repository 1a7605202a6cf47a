//! Fixtures for tests, benchmarks and simulations: federations with fixed keys, certified
//! nodes and their ads. Not for production use: the keys are public knowledge.

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
    /// If `store` anchors another key under the same name.
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

/// CPU time (user + system) this process has used, from `/proc` (zero where unavailable).
pub fn cpu_time() -> std::time::Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return std::time::Duration::ZERO;
    };
    // After the command name (which ends with ')'): utime and stime are the 12th and 13th
    // fields, in clock ticks (100 per second on Linux).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    std::time::Duration::from_millis((ticks(11) + ticks(12)) * 10)
}
