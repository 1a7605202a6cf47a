//! Exit codes: one per failure class, so programs can call `slicectl` (paper §4.2.4: "return
//! either 0 or a positive error code").
//!
//! | code | class | meaning |
//! |---|---|---|
//! | 0 | ok | everything asked was done |
//! | 1 | internal | an unexpected failure (a bug, storage) |
//! | 2 | usage | bad flags, spec or request |
//! | 3 | setup | identity, certificate, config or local state unusable |
//! | 4 | unsatisfiable | no placement fits; the message names the binding constraint |
//! | 5 | refused | an agent, broker or node refused (policy, peering, quota, ticket) |
//! | 6 | unreachable | a broker, agent or node did not answer |
//! | 7 | partial | done in part: slivers missing or unredeemed; `slicectl slice sync` finishes |
//! | 8 | not found | no such slice in the local state |
//! | 9 | command failed | `exec`: the command exited non-zero on at least one sliver |
//! | 10 | not run | `exec`: a node ran nothing (it has no isolation, `isolation = "memory"`) |

use capability_schema::Rejection;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A failure class and its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitClass {
    /// Success.
    Ok,
    /// Unexpected failure.
    Internal,
    /// Bad flags, spec or request.
    Usage,
    /// Identity, certificate, config or state unusable.
    Setup,
    /// No placement fits.
    Unsatisfiable,
    /// Refused by policy, peering, quota or ticket checks.
    Refused,
    /// A party did not answer.
    Unreachable,
    /// Done in part.
    Partial,
    /// No such slice.
    NotFound,
    /// A remote command failed.
    CommandFailed,
    /// A node ran nothing: it has no isolation (`isolation = "memory"`).
    NotRun,
}

impl ExitClass {
    /// Every class, in exit-code order.
    pub const ALL: [ExitClass; 11] = [
        ExitClass::Ok,
        ExitClass::Internal,
        ExitClass::Usage,
        ExitClass::Setup,
        ExitClass::Unsatisfiable,
        ExitClass::Refused,
        ExitClass::Unreachable,
        ExitClass::Partial,
        ExitClass::NotFound,
        ExitClass::CommandFailed,
        ExitClass::NotRun,
    ];

    /// The class of a `slicectl` exit code.
    pub fn of_code(code: i32) -> Option<ExitClass> {
        ExitClass::ALL.into_iter().find(|c| c.code() == code)
    }

    /// Its name, as `--json` output and scenario files spell it.
    pub fn name(self) -> &'static str {
        match self {
            ExitClass::Ok => "ok",
            ExitClass::Internal => "internal",
            ExitClass::Usage => "usage",
            ExitClass::Setup => "setup",
            ExitClass::Unsatisfiable => "unsatisfiable",
            ExitClass::Refused => "refused",
            ExitClass::Unreachable => "unreachable",
            ExitClass::Partial => "partial",
            ExitClass::NotFound => "not_found",
            ExitClass::CommandFailed => "command_failed",
            ExitClass::NotRun => "not_run",
        }
    }

    /// The process exit code.
    pub fn code(self) -> i32 {
        match self {
            ExitClass::Ok => 0,
            ExitClass::Internal => 1,
            ExitClass::Usage => 2,
            ExitClass::Setup => 3,
            ExitClass::Unsatisfiable => 4,
            ExitClass::Refused => 5,
            ExitClass::Unreachable => 6,
            ExitClass::Partial => 7,
            ExitClass::NotFound => 8,
            ExitClass::CommandFailed => 9,
            ExitClass::NotRun => 10,
        }
    }

    /// The class of a refusal received from a broker, agent or node.
    pub fn of_rejection(reason: &Rejection) -> ExitClass {
        match reason {
            Rejection::Unsatisfiable { .. } => ExitClass::Unsatisfiable,
            Rejection::Unreachable { .. } | Rejection::Unavailable { .. } => ExitClass::Unreachable,
            Rejection::Malformed { .. } => ExitClass::Usage,
            Rejection::Internal { .. } => ExitClass::Internal,
            Rejection::Ticket { .. }
            | Rejection::OverCapacity { .. }
            | Rejection::OverShare { .. }
            | Rejection::AlreadySpent { .. }
            | Rejection::UnknownLease { .. }
            | Rejection::NotHolder { .. }
            | Rejection::RenewPastTicket { .. }
            | Rejection::UnknownPrincipal { .. }
            | Rejection::Policy { .. }
            | Rejection::NoPeering { .. } => ExitClass::Refused,
        }
    }

    /// The worse of two classes (the one a command should exit with).
    pub fn worst(self, other: ExitClass) -> ExitClass {
        if other.severity() > self.severity() {
            other
        } else {
            self
        }
    }

    fn severity(self) -> u8 {
        match self {
            ExitClass::Ok => 0,
            ExitClass::Partial => 1,
            ExitClass::CommandFailed => 2,
            ExitClass::NotRun => 3,
            ExitClass::Unreachable => 4,
            ExitClass::Refused => 5,
            ExitClass::Unsatisfiable => 6,
            ExitClass::NotFound => 7,
            ExitClass::Usage => 8,
            ExitClass::Setup => 9,
            ExitClass::Internal => 10,
        }
    }
}

impl fmt::Display for ExitClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The table of exit codes, for `--help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  ok              everything asked was done
  1  internal        an unexpected failure
  2  usage           bad flags, spec or request
  3  setup           identity, certificate, config or local state unusable
  4  unsatisfiable   no placement fits; the message names the binding constraint
  5  refused         an agent, broker or node refused (policy, peering, quota, ticket)
  6  unreachable     a broker, agent or node did not answer
  7  partial         done in part; `slicectl slice sync` finishes it
  8  not found       no such slice in the local state
  9  command failed  exec: the command exited non-zero on at least one sliver
  10 not run         exec: a node ran nothing, as it has no isolation (isolation = \"memory\",
                     as on a testnet without root); its answer says so";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_documented() {
        let all = ExitClass::ALL;
        let codes: std::collections::BTreeSet<i32> = all.iter().map(|c| c.code()).collect();
        assert_eq!(codes.len(), all.len());
        for c in all {
            assert!(EXIT_CODES_HELP.contains(&format!("  {:<2} ", c.code())));
            assert_eq!(ExitClass::of_code(c.code()), Some(c));
            // The name is the serialized form, both ways.
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.name()));
            assert_eq!(serde_json::from_str::<ExitClass>(&json).unwrap(), c);
        }
        assert_eq!(ExitClass::of_code(42), None);
        assert_eq!(
            ExitClass::Partial.worst(ExitClass::Unreachable),
            ExitClass::Unreachable
        );
        assert_eq!(
            ExitClass::of_rejection(&Rejection::Unsatisfiable { detail: "x".into() }).code(),
            4
        );
    }
}
