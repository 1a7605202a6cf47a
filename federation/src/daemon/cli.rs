//! How every PlanetMesh program ends on an error: one line on stderr, `<program>: <what
//! happened>: <its causes>; <what to do>`, and an exit code of the failure's class, the codes
//! `slicectl` uses (`slicectl --help` lists them).
//!
//! `nodemgr`, `agentd`, `broker` and `fedctl` run their command as a function answering
//! `Result<(), Failure>` and end with [`exit`]. `?` turns any error into a [`Failure`] and
//! classes it by the first error of its chain whose type says what went wrong ([`Class::of`]):
//! a config, key, certificate or state file that cannot be used is a setup failure, a command
//! line asking for what cannot be done (overwriting a key) a usage failure, what nobody
//! expected an internal one. Only an internal failure is printed with its backtrace, and only
//! when `RUST_BACKTRACE` asks for one: an ordinary error is not a bug, and its trace would
//! bury the sentence that says what to do.

use std::fmt;
use std::path::Path;
use std::process::ExitCode;

use capability_schema::KeyError;

use super::config::ConfigError;
use super::runtime::DaemonError;
use crate::overlay::OverlayError;
use crate::trust::{AuthorityError, FileError};

/// A failure class. Its exit code is `slicectl`'s for the same class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// An unexpected failure (a bug, the async runtime): exit 1.
    Internal,
    /// Bad flags, or a command line asking for what cannot be done: exit 2 (clap's code too).
    Usage,
    /// A config, key, certificate, state file or address that cannot be used: exit 3.
    Setup,
    /// A peer did not answer: exit 6.
    Unreachable,
}

impl Class {
    /// The process exit code, as `slicectl` numbers its classes.
    pub fn code(self) -> u8 {
        match self {
            Class::Internal => 1,
            Class::Usage => 2,
            Class::Setup => 3,
            Class::Unreachable => 6,
        }
    }

    /// The class of `error`: that of the first error of its chain whose type is known here;
    /// internal when none is.
    pub fn of(error: &anyhow::Error) -> Class {
        error
            .chain()
            .find_map(|e| {
                if let Some(e) = e.downcast_ref::<DaemonError>() {
                    Some(match e {
                        DaemonError::Exists { .. } => Class::Usage,
                        DaemonError::Overlay(e) => overlay_class(e),
                        _ => Class::Setup,
                    })
                } else if let Some(e) = e.downcast_ref::<OverlayError>() {
                    Some(overlay_class(e))
                } else if let Some(e) = e.downcast_ref::<KeyError>() {
                    Some(key_class(e))
                } else if let Some(e) = e.downcast_ref::<AuthorityError>() {
                    Some(match e {
                        AuthorityError::Exists(_) | AuthorityError::BadName(_) => Class::Usage,
                        AuthorityError::Key(e) => key_class(e),
                        _ => Class::Setup,
                    })
                } else if e.is::<super::join::JoinError>() {
                    Some(Class::Usage)
                } else if e.is::<ConfigError>() || e.is::<FileError>() || e.is::<std::io::Error>() {
                    Some(Class::Setup)
                } else {
                    e.downcast_ref::<Marked>().map(|m| m.0)
                }
            })
            .unwrap_or(Class::Internal)
    }
}

fn overlay_class(e: &OverlayError) -> Class {
    match e {
        OverlayError::Setup(_) | OverlayError::Listen { .. } => Class::Setup,
        OverlayError::Closed => Class::Internal,
        _ => Class::Unreachable,
    }
}

fn key_class(e: &KeyError) -> Class {
    match e {
        KeyError::Exists(_) | KeyError::BadPublicText(_) | KeyError::BadPublicBytes => Class::Usage,
        _ => Class::Setup,
    }
}

/// A message of a known class, for errors no type classes (see [`usage`]).
#[derive(Debug)]
struct Marked(Class, String);

impl fmt::Display for Marked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for Marked {}

/// A usage failure: the command line asks for what cannot be done.
pub fn usage(message: impl fmt::Display) -> anyhow::Error {
    anyhow::Error::new(Marked(Class::Usage, message.to_string()))
}

/// Why a command failed: the error, its class, and what to do about it.
#[derive(Debug)]
pub struct Failure {
    class: Class,
    error: anyhow::Error,
    hint: Option<String>,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Self {
        let error = error.into();
        Failure {
            class: Class::of(&error),
            hint: default_hint(&error),
            error,
        }
    }
}

/// What to do about an address a daemon cannot take, said once for every daemon.
fn default_hint(error: &anyhow::Error) -> Option<String> {
    error.chain().find_map(|e| {
        let overlay = e.downcast_ref::<OverlayError>().or(match e.downcast_ref() {
            Some(DaemonError::Overlay(o)) => Some(o),
            _ => None,
        });
        if let Some(OverlayError::Listen { .. }) = overlay {
            return Some(
                "change `listen` in the config, or stop the program that holds the address".into(),
            );
        }
        if let Some(DaemonError::Http { .. }) = e.downcast_ref() {
            return Some(
                "change `http` in the config (\"off\" for no endpoint), or stop the program \
                 that holds the address"
                    .into(),
            );
        }
        None
    })
}

impl Failure {
    /// Says what to do (after the message, following "; ").
    #[must_use]
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Its class.
    pub fn class(&self) -> Class {
        self.class
    }

    /// The one line printed after `<program>: `: the message and its causes joined by ": "
    /// (a cause whose text the line holds already is left out, and so is the `(os error N)`
    /// of system errors), then the hint.
    pub fn message(&self) -> String {
        let mut line = String::new();
        for cause in self.error.chain() {
            let text = strip_os_error(cause.to_string().trim());
            let text = text.trim_end_matches([':', ' ']);
            if text.is_empty() || line.contains(text) {
                continue;
            }
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(text);
        }
        if line.is_empty() {
            line.push_str("failed without a reason (a bug: please report it)");
        }
        if let Some(hint) = &self.hint {
            line.push_str("; ");
            line.push_str(hint);
        }
        line
    }
}

/// `text` without the ` (os error N)` that `std::io::Error` appends to its sentence.
fn strip_os_error(text: &str) -> String {
    let mut out = text.to_owned();
    while let Some(at) = out.find(" (os error ") {
        let Some(len) = out[at..].find(')') else {
            break;
        };
        let digits = &out[at + " (os error ".len()..at + len];
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            break;
        }
        out.replace_range(at..=at + len, "");
    }
    out
}

/// Ends `program`: nothing on success; on failure its one line on stderr (and, for an internal
/// failure when `RUST_BACKTRACE` is set, the backtrace), then the class's exit code.
pub fn exit(program: &str, result: Result<(), Failure>) -> ExitCode {
    let Err(failure) = result else {
        return ExitCode::SUCCESS;
    };
    eprintln!("{program}: {}", failure.message());
    if failure.class == Class::Internal {
        let trace = failure.error.backtrace();
        if trace.status() == std::backtrace::BacktraceStatus::Captured {
            eprintln!("{trace}");
        }
    }
    ExitCode::from(failure.class.code())
}

/// Reads a daemon's config with `load`; a config file that is not there says how to make one,
/// one that does not parse where every setting is shown.
pub fn load_config<T, E: Into<anyhow::Error>>(
    program: &str,
    path: &Path,
    load: impl FnOnce(&Path) -> Result<T, E>,
) -> Result<T, Failure> {
    load(path).map_err(|e| {
        let error: anyhow::Error = e.into();
        let hint = error
            .chain()
            .find_map(|e| match e.downcast_ref::<ConfigError>()? {
                ConfigError::Read { path: p, source }
                    if p == path && source.kind() == std::io::ErrorKind::NotFound =>
                {
                    Some(format!(
                        "run `{program} init` to write one, or pass --config with its path"
                    ))
                }
                ConfigError::Parse { .. } | ConfigError::Invalid { .. } => Some(format!(
                    "`{program} init --dir <new dir>` writes a config that shows every setting"
                )),
                _ => None,
            });
        let failure = Failure::from(error);
        match hint {
            Some(hint) => failure.hint(hint),
            None => failure,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_one_line_with_each_cause_once_and_no_empty_cause() {
        let io = std::io::Error::from_raw_os_error(2);
        let config = ConfigError::Read {
            path: "node.toml".into(),
            source: io,
        };
        let failure = Failure::from(config).hint("run `nodemgr init` first");
        assert_eq!(failure.class(), Class::Setup);
        let line = failure.message();
        assert_eq!(
            line,
            "config node.toml: No such file or directory; run `nodemgr init` first"
        );

        let listen = DaemonError::Overlay(OverlayError::Listen {
            addr: "/ip4/127.0.0.1/tcp/1".into(),
            detail: String::new(),
        });
        let failure = Failure::from(listen);
        assert_eq!(failure.class(), Class::Setup);
        assert_eq!(
            failure.message(),
            "overlay: cannot listen on /ip4/127.0.0.1/tcp/1; change `listen` in the config, or \
             stop the program that holds the address"
        );

        let failure = Failure::from(usage("a federation does not peer with itself"));
        assert_eq!(failure.class(), Class::Usage);
        assert_eq!(failure.class().code(), 2);
        let failure = Failure::from(anyhow::anyhow!("surprise"));
        assert_eq!(failure.class(), Class::Internal);
        assert_eq!(failure.class().code(), 1);
    }

    #[test]
    fn the_os_error_number_is_left_out_and_other_parentheses_kept() {
        assert_eq!(strip_os_error("gone (os error 2) (run x)"), "gone (run x)");
        assert_eq!(strip_os_error("kept (os error x)"), "kept (os error x)");
    }
}
