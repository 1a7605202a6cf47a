//! Resources: the vector of what a sliver, a share or a node holds.
//!
//! [`Resources`] counts CPU in thousandths of a core, memory and disk in bytes and egress rate
//! in kbit/s. Arithmetic is checked (no silent wrap), and comparison is per component
//! ([`Resources::fits_within`]): a grant fits a share only if every component fits.
//!
//! People write resources in human units, in configs and on command lines:
//! `cpu=1500m,memory=512MiB,disk=1GiB,egress=10Mbit`; CPU also as `2 cores` or `0.5`, sizes in
//! `B`, `KiB`/`MiB`/`GiB`/`TiB` or `kB`/`MB`/`GB`/`TB`, rates in `kbit`/`Mbit`/`Gbit`. On the wire
//! (CBOR) the components are plain integers; [`human`] is the serde adapter for configs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An error parsing or computing resources.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourcesError {
    /// A quantity could not be parsed.
    #[error("cannot read {what} {text:?}: {hint}")]
    Parse {
        /// Which quantity (cpu, memory, …).
        what: &'static str,
        /// The text given.
        text: String,
        /// What would have been accepted.
        hint: &'static str,
    },
    /// An unknown key in a resources list.
    #[error("unknown resource {0:?}: expected cpu, memory, disk, egress or ports")]
    UnknownKey(String),
    /// A sum or product does not fit in 64 bits.
    #[error("resource arithmetic overflowed")]
    Overflow,
}

/// What a sliver, a share or a node holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    /// CPU in thousandths of a core (1000 = one core).
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Disk in bytes.
    pub disk_bytes: u64,
    /// Egress rate in kbit/s.
    pub egress_kbps: u64,
    /// Public ports: how many a sliver leases from its node's range (forwarded from the node's
    /// public address to the same ports inside it). Not a share of anything: shares and
    /// capacities leave it at zero, comparisons ([`Resources::fits_within`]) ignore it and
    /// arithmetic never fails on it; the node checks it against its range. Left out of the
    /// encoding when zero, so resources without ports encode as before.
    #[serde(default, skip_serializing_if = "is_zero_count")]
    pub ports: u32,
}

fn is_zero_count(n: &u32) -> bool {
    *n == 0
}

/// One component of [`Resources`], for messages that name which one is short.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    /// CPU.
    Cpu,
    /// Memory.
    Memory,
    /// Disk.
    Disk,
    /// Egress rate.
    Egress,
}

impl ResourceKind {
    /// Every kind, in display order.
    pub const ALL: [ResourceKind; 4] = [
        ResourceKind::Cpu,
        ResourceKind::Memory,
        ResourceKind::Disk,
        ResourceKind::Egress,
    ];

    /// Formats an amount of this kind in human units.
    pub fn format(self, amount: u64) -> String {
        match self {
            ResourceKind::Cpu => format_cpu(amount),
            ResourceKind::Memory | ResourceKind::Disk => format_bytes(amount),
            ResourceKind::Egress => format_rate(amount),
        }
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResourceKind::Cpu => "cpu",
            ResourceKind::Memory => "memory",
            ResourceKind::Disk => "disk",
            ResourceKind::Egress => "egress",
        })
    }
}

impl Resources {
    /// Nothing.
    pub const ZERO: Resources = Resources {
        cpu_millis: 0,
        memory_bytes: 0,
        disk_bytes: 0,
        egress_kbps: 0,
        ports: 0,
    };

    /// The amount of one component.
    pub fn get(&self, kind: ResourceKind) -> u64 {
        match kind {
            ResourceKind::Cpu => self.cpu_millis,
            ResourceKind::Memory => self.memory_bytes,
            ResourceKind::Disk => self.disk_bytes,
            ResourceKind::Egress => self.egress_kbps,
        }
    }

    fn zip(&self, other: &Self, f: impl Fn(u64, u64) -> Option<u64>) -> Option<Self> {
        Some(Resources {
            cpu_millis: f(self.cpu_millis, other.cpu_millis)?,
            memory_bytes: f(self.memory_bytes, other.memory_bytes)?,
            disk_bytes: f(self.disk_bytes, other.disk_bytes)?,
            egress_kbps: f(self.egress_kbps, other.egress_kbps)?,
            // A count the node leases from its own range: never the reason a sum fails.
            ports: f(u64::from(self.ports), u64::from(other.ports))
                .and_then(|p| u32::try_from(p).ok())
                .unwrap_or(0),
        })
    }

    /// Component-wise sum, or `None` on overflow.
    pub fn checked_add(&self, other: &Self) -> Option<Self> {
        self.zip(other, u64::checked_add)
    }

    /// Component-wise difference, or `None` if any component of `other` is larger.
    pub fn checked_sub(&self, other: &Self) -> Option<Self> {
        self.zip(other, u64::checked_sub)
    }

    /// Component-wise difference, clamped at zero.
    pub fn saturating_sub(&self, other: &Self) -> Self {
        self.zip(other, |a, b| Some(a.saturating_sub(b)))
            .unwrap_or_default()
    }

    /// Component-wise multiplication by `n`, or `None` on overflow.
    pub fn checked_mul(&self, n: u64) -> Option<Self> {
        self.zip(self, |a, _| a.checked_mul(n))
    }

    /// Component-wise minimum.
    pub fn min(&self, other: &Self) -> Self {
        self.zip(other, |a, b| Some(a.min(b))).unwrap_or_default()
    }

    /// Whether every component is at most the same component of `limit`.
    pub fn fits_within(&self, limit: &Self) -> bool {
        self.first_excess(limit).is_none()
    }

    /// The first component (in [`ResourceKind::ALL`] order) that exceeds `limit`.
    pub fn first_excess(&self, limit: &Self) -> Option<ResourceKind> {
        ResourceKind::ALL
            .into_iter()
            .find(|k| self.get(*k) > limit.get(*k))
    }

    /// Whether every component is zero (ports aside: they are not a share of anything).
    pub fn is_zero(&self) -> bool {
        ResourceKind::ALL.into_iter().all(|k| self.get(k) == 0)
    }

    /// Sums an iterator of resources, or `None` on overflow.
    pub fn checked_sum<'a>(items: impl IntoIterator<Item = &'a Resources>) -> Option<Self> {
        items
            .into_iter()
            .try_fold(Self::ZERO, |acc, r| acc.checked_add(r))
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cpu={},memory={},disk={},egress={}",
            format_cpu(self.cpu_millis),
            format_bytes(self.memory_bytes),
            format_bytes(self.disk_bytes),
            format_rate(self.egress_kbps)
        )?;
        if self.ports > 0 {
            write!(f, ",ports={}", self.ports)?;
        }
        Ok(())
    }
}

impl FromStr for Resources {
    type Err = ResourcesError;

    /// Parses `cpu=1500m,memory=512MiB,disk=1GiB,egress=10Mbit`; missing keys are zero,
    /// entries may be separated by commas or spaces-after-commas.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut out = Resources::ZERO;
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').ok_or_else(|| ResourcesError::Parse {
                what: "resources",
                text: part.to_owned(),
                hint: "expected key=value, e.g. cpu=1500m,memory=512MiB,disk=1GiB,egress=10Mbit",
            })?;
            let value = value.trim();
            match key.trim() {
                "cpu" => out.cpu_millis = parse_cpu(value)?,
                "memory" | "mem" => out.memory_bytes = parse_bytes(value)?,
                "disk" => out.disk_bytes = parse_bytes(value)?,
                "egress" | "net" | "bw" => out.egress_kbps = parse_rate(value)?,
                "ports" => {
                    out.ports = value.parse().map_err(|_| ResourcesError::Parse {
                        what: "ports",
                        text: value.to_owned(),
                        hint: "a whole number of public ports, e.g. ports=2",
                    })?;
                }
                other => return Err(ResourcesError::UnknownKey(other.to_owned())),
            }
        }
        Ok(out)
    }
}

/// Splits `"1.5 GiB"` into (`1.5`, `"GiB"`).
fn split_number(text: &str) -> (&str, &str) {
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    (&text[..end], text[end..].trim())
}

/// Multiplies a decimal text (`"1.5"`) by `unit` exactly, in integers.
fn scale_decimal(number: &str, unit: u64) -> Option<u64> {
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if frac.len() > 18 {
        return None;
    }
    let int_value: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let frac_value: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    let frac_scale = 10u128.pow(frac.len() as u32);
    let total = u128::from(int_value).checked_mul(u128::from(unit))?
        + frac_value * u128::from(unit) / frac_scale;
    u64::try_from(total).ok()
}

const CPU_HINT: &str = "expected e.g. `2 cores`, `1500m` or `0.5`";
const BYTES_HINT: &str = "expected e.g. `512MiB`, `1GiB`, `100MB` or `4096`";
const RATE_HINT: &str = "expected e.g. `10Mbit`, `500kbit` or `1Gbit`";

/// Parses CPU: `2 cores`, `1 core`, `1500m`, `0.5`.
pub fn parse_cpu(text: &str) -> Result<u64, ResourcesError> {
    let err = || ResourcesError::Parse {
        what: "cpu",
        text: text.to_owned(),
        hint: CPU_HINT,
    };
    let (number, unit) = split_number(text.trim());
    let per_unit = match unit {
        "m" | "millicores" => 1,
        "" | "core" | "cores" | "cpu" | "cpus" => 1000,
        _ => return Err(err()),
    };
    if per_unit == 1 && number.contains('.') {
        return Err(err());
    }
    scale_decimal(number, per_unit).ok_or_else(err)
}

/// Parses a size in bytes: `512MiB`, `1.5 GiB`, `100MB`, `4096`.
pub fn parse_bytes(text: &str) -> Result<u64, ResourcesError> {
    let err = || ResourcesError::Parse {
        what: "size",
        text: text.to_owned(),
        hint: BYTES_HINT,
    };
    let (number, unit) = split_number(text.trim());
    let per_unit: u64 = match unit {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "TiB" | "T" => 1 << 40,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return Err(err()),
    };
    scale_decimal(number, per_unit).ok_or_else(err)
}

/// Parses a rate in kbit/s: `10Mbit`, `500kbit`, `1Gbit` (also `Mbps`, `Mbit/s`).
pub fn parse_rate(text: &str) -> Result<u64, ResourcesError> {
    let err = || ResourcesError::Parse {
        what: "rate",
        text: text.to_owned(),
        hint: RATE_HINT,
    };
    let (number, unit) = split_number(text.trim());
    let unit = unit
        .trim_end_matches("/s")
        .trim_end_matches("ps")
        .trim_end_matches("it");
    let per_unit: u64 = match unit {
        "kb" | "Kb" | "k" => 1,
        "Mb" | "M" => 1_000,
        "Gb" | "G" => 1_000_000,
        _ => return Err(err()),
    };
    scale_decimal(number, per_unit).ok_or_else(err)
}

/// Formats thousandths of a core: `2 cores`, `1 core`, `1500m`.
pub fn format_cpu(millis: u64) -> String {
    match millis {
        1000 => "1 core".to_owned(),
        m if m.is_multiple_of(1000) => format!("{} cores", m / 1000),
        m => format!("{m}m"),
    }
}

/// Formats bytes in the largest binary unit that divides them exactly: `512MiB`, `1536KiB`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (name, size) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{name}", bytes / size);
        }
    }
    format!("{bytes}B")
}

/// Formats a rate in kbit/s in the largest unit that divides it exactly: `10Mbit`, `1500kbit`.
pub fn format_rate(kbps: u64) -> String {
    if kbps >= 1_000_000 && kbps.is_multiple_of(1_000_000) {
        format!("{}Gbit", kbps / 1_000_000)
    } else if kbps >= 1_000 && kbps.is_multiple_of(1_000) {
        format!("{}Mbit", kbps / 1_000)
    } else {
        format!("{kbps}kbit")
    }
}

/// Serde adapter writing [`Resources`] as its human text (for TOML configs and JSON output):
/// `#[serde(with = "capability_schema::resources::human")]`.
pub mod human {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Resources;

    /// Writes `cpu=…,memory=…,disk=…,egress=…`.
    pub fn serialize<S: Serializer>(value: &Resources, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }

    /// Reads the human text form.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Resources, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Bytes in binary units with one decimal (`1.5 MiB`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn parses_human_units() {
        assert_eq!(parse_cpu("2 cores").unwrap(), 2000);
        assert_eq!(parse_cpu("1 core").unwrap(), 1000);
        assert_eq!(parse_cpu("1500m").unwrap(), 1500);
        assert_eq!(parse_cpu("0.25").unwrap(), 250);
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1.5 GiB").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("100MB").unwrap(), 100_000_000);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert_eq!(parse_rate("10Mbit").unwrap(), 10_000);
        assert_eq!(parse_rate("500kbit").unwrap(), 500);
        assert_eq!(parse_rate("1Gbit/s").unwrap(), 1_000_000);
        assert_eq!(parse_rate("2.5Mbps").unwrap(), 2_500);
    }

    #[test]
    fn rejects_nonsense_with_a_hint() {
        for bad in ["", "cores", "1.5m", "-1", "2 parsecs", "1e9"] {
            let err = parse_cpu(bad).unwrap_err();
            assert!(err.to_string().contains("expected"), "{bad:?}: {err}");
        }
        assert!(parse_bytes("12 XB").is_err());
        assert!(parse_bytes("99999999999999999999").is_err());
        assert!(parse_rate("10").is_err());
        assert_eq!(
            "cpu=1,gpu=2".parse::<Resources>().unwrap_err(),
            ResourcesError::UnknownKey("gpu".into())
        );
    }

    #[test]
    fn formats_and_reads_back() {
        let r: Resources = "cpu=1500m, memory=512MiB, disk=1GiB, egress=10Mbit"
            .parse()
            .unwrap();
        assert_eq!(
            r.to_string(),
            "cpu=1500m,memory=512MiB,disk=1GiB,egress=10Mbit"
        );
        assert_eq!(format_cpu(2000), "2 cores");
        assert_eq!(format_bytes(1536), "1536B");
        assert_eq!(format_bytes(3 << 20), "3MiB");
        assert_eq!(format_rate(1500), "1500kbit");
    }

    #[test]
    fn checked_arithmetic_never_wraps() {
        let big = Resources {
            cpu_millis: u64::MAX,
            ..Resources::ZERO
        };
        let one = Resources {
            cpu_millis: 1,
            ..Resources::ZERO
        };
        assert_eq!(big.checked_add(&one), None);
        assert_eq!(Resources::ZERO.checked_sub(&one), None);
        assert_eq!(Resources::ZERO.saturating_sub(&one), Resources::ZERO);
        assert_eq!(one.first_excess(&Resources::ZERO), Some(ResourceKind::Cpu));
        assert!(Resources::ZERO.fits_within(&one));
    }

    fn any_resources() -> impl Strategy<Value = Resources> {
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(c, m, d, e)| {
            Resources {
                cpu_millis: c,
                memory_bytes: m,
                disk_bytes: d,
                egress_kbps: e,
                ports: 0,
            }
        })
    }

    proptest! {
        #[test]
        fn display_round_trips(r in any_resources()) {
            prop_assert_eq!(r.to_string().parse::<Resources>().unwrap(), r);
        }

        #[test]
        fn add_then_sub_is_identity(a in any_resources(), b in any_resources()) {
            if let Some(sum) = a.checked_add(&b) {
                prop_assert_eq!(sum.checked_sub(&b), Some(a));
                prop_assert!(a.fits_within(&sum));
            }
        }

        #[test]
        fn parsers_never_panic(s in ".{0,40}") {
            let _ = parse_cpu(&s);
            let _ = parse_bytes(&s);
            let _ = parse_rate(&s);
            let _ = s.parse::<Resources>();
        }
    }
}

#[cfg(test)]
mod port_tests {
    use super::*;

    #[test]
    fn ports_read_write_and_never_fail_arithmetic_or_comparisons() {
        let r: Resources = "cpu=500m,ports=2".parse().unwrap();
        assert_eq!((r.cpu_millis, r.ports), (500, 2));
        assert_eq!(
            r.to_string(),
            "cpu=500m,memory=0B,disk=0B,egress=0kbit,ports=2"
        );
        assert_eq!(
            "cpu=500m".parse::<Resources>().unwrap().to_string(),
            "cpu=500m,memory=0B,disk=0B,egress=0kbit"
        );
        assert!(matches!(
            "ports=many".parse::<Resources>(),
            Err(ResourcesError::Parse { what: "ports", .. })
        ));
        // A share without ports still holds a grant with some; sums and differences go on.
        let share: Resources = "cpu=1".parse().unwrap();
        assert!(r.fits_within(&share));
        assert_eq!(share.checked_sub(&r).map(|d| d.ports), Some(0));
        assert_eq!(r.checked_add(&r).map(|s| s.ports), Some(4));
        // Ports alone ask for nothing of a share.
        let only_ports = Resources {
            ports: 1,
            ..Resources::ZERO
        };
        assert!(only_ports.is_zero());
    }
}
