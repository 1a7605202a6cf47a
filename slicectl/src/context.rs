//! Where `slicectl` finds its settings without `--config`, and named contexts (as kubectl
//! has them): each context names a `slicectl.toml`; one of them is current.
//!
//! The config file used is, first found:
//! 1. `--config FILE` (or `PLANETMESH_CONFIG`): always wins;
//! 2. `--context NAME`, else the current context of the contexts file;
//! 3. `slicectl.toml` in the config directory, if it exists.
//!
//! The config directory is `$XDG_CONFIG_HOME/planetmesh`, else `~/.config/planetmesh`; the
//! contexts file is `contexts.toml` there:
//!
//! ```toml
//! current = "testbed-a"
//! [contexts.testbed-a]
//! config = "/home/alice/testbed-a/slicectl.toml"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The contexts file's name in the config directory.
pub const CONTEXTS_FILE: &str = "contexts.toml";

/// The default config file's name in the config directory.
pub const CONFIG_FILE: &str = "slicectl.toml";

/// Errors of contexts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    /// No home or `XDG_CONFIG_HOME` to keep contexts in.
    #[error(
        "no config directory: set XDG_CONFIG_HOME or HOME (or give --config FILE to every command)"
    )]
    NoConfigDir,
    /// The contexts file cannot be read or written.
    #[error("contexts file {path}: {detail}; fix or remove it")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// No context has this name.
    #[error(
        "no context {name:?}; known: {known} (add one with `slicectl context add NAME --config FILE`)"
    )]
    Unknown {
        /// The name given.
        name: String,
        /// The names known, comma-separated (or "none").
        known: String,
    },
    /// A context's name is not usable.
    #[error("context name {0:?} is not valid: use letters, digits, '.', '_' and '-'")]
    BadName(String),
    /// The config a context would name is unusable.
    #[error("{path}: {detail}; give --config an existing slicectl.toml")]
    BadConfig {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
}

/// One context: the config file it uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// The `slicectl.toml` (absolute).
    pub config: PathBuf,
}

/// The contexts file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contexts {
    /// The context used when no `--config` or `--context` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// By name.
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// The config directory: `$XDG_CONFIG_HOME/planetmesh`, else `~/.config/planetmesh`.
pub fn config_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("planetmesh"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| PathBuf::from(home).join(".config/planetmesh"))
}

/// Whether `name` can name a context.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

impl Contexts {
    /// Reads the contexts file in `dir` (empty when there is none).
    pub fn load(dir: &Path) -> Result<Contexts, ContextError> {
        let path = dir.join(CONTEXTS_FILE);
        let fail = |detail: String| ContextError::File {
            path: path.clone(),
            detail,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| fail(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Contexts::default()),
            Err(e) => Err(fail(e.to_string())),
        }
    }

    /// Writes it to `dir` (whole, through a temporary file).
    pub fn save(&self, dir: &Path) -> Result<(), ContextError> {
        let path = dir.join(CONTEXTS_FILE);
        let fail = |detail: String| ContextError::File {
            path: path.clone(),
            detail,
        };
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        let text = toml::to_string(self).map_err(|e| fail(e.to_string()))?;
        let tmp = dir.join(format!("{CONTEXTS_FILE}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, text).map_err(|e| fail(e.to_string()))?;
        std::fs::rename(&tmp, &path).map_err(|e| fail(e.to_string()))
    }

    /// The context `name`.
    pub fn get(&self, name: &str) -> Result<&Context, ContextError> {
        self.contexts
            .get(name)
            .ok_or_else(|| ContextError::Unknown {
                name: name.to_owned(),
                known: if self.contexts.is_empty() {
                    "none".to_owned()
                } else {
                    self.contexts.keys().cloned().collect::<Vec<_>>().join(", ")
                },
            })
    }

    /// Adds (or replaces) context `name` for `config`, which must be a loadable
    /// `slicectl.toml`; answers whether it replaced one.
    pub fn add(&mut self, name: &str, config: &Path) -> Result<bool, ContextError> {
        if !valid_name(name) {
            return Err(ContextError::BadName(name.to_owned()));
        }
        let bad = |detail: String| ContextError::BadConfig {
            path: config.to_owned(),
            detail,
        };
        let config = std::path::absolute(config).map_err(|e| bad(e.to_string()))?;
        crate::config::ClientConfig::load(&config).map_err(|e| bad(e.to_string()))?;
        Ok(self
            .contexts
            .insert(name.to_owned(), Context { config })
            .is_some())
    }

    /// Makes `name` current.
    pub fn use_context(&mut self, name: &str) -> Result<(), ContextError> {
        self.get(name)?;
        self.current = Some(name.to_owned());
        Ok(())
    }
}

/// The context name for a testnet in `dir`: its directory's name without leading dots, other
/// characters than letters, digits, `.`, `_` and `-` made `-` (`.testnet` → `testnet`).
pub fn testnet_name(dir: &Path) -> String {
    let base = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name: String = base
        .trim_start_matches('.')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if name.is_empty() {
        "testnet".to_owned()
    } else {
        name
    }
}

/// Adds (or replaces) the context of the testnet in `dir`, for its `slicectl.toml` (`testnet
/// up` does); answers its name. The current context is left as it is.
pub fn add_testnet(dir: &Path) -> Result<String, ContextError> {
    let home = config_dir().ok_or(ContextError::NoConfigDir)?;
    let mut contexts = Contexts::load(&home)?;
    let name = testnet_name(dir);
    contexts.add(&name, &dir.join(CONFIG_FILE))?;
    contexts.save(&home)?;
    Ok(name)
}

/// The context naming the testnet in `dir`'s `slicectl.toml`, if there is one.
pub fn testnet_context(dir: &Path) -> Option<String> {
    let config = std::path::absolute(dir.join(CONFIG_FILE)).ok()?;
    let contexts = Contexts::load(&config_dir()?).ok()?;
    contexts
        .contexts
        .iter()
        .find(|(_, c)| c.config == config)
        .map(|(name, _)| name.clone())
}

/// Removes the contexts naming the testnet in `dir` (`testnet down` does); answers their
/// names. A removed current context leaves no context current.
pub fn remove_testnet(dir: &Path) -> Result<Vec<String>, ContextError> {
    let Some(home) = config_dir() else {
        return Ok(Vec::new());
    };
    let mut contexts = Contexts::load(&home)?;
    let config = std::path::absolute(dir.join(CONFIG_FILE)).map_err(|e| ContextError::File {
        path: dir.join(CONFIG_FILE),
        detail: e.to_string(),
    })?;
    let gone: Vec<String> = contexts
        .contexts
        .iter()
        .filter(|(_, c)| c.config == config)
        .map(|(name, _)| name.clone())
        .collect();
    if gone.is_empty() {
        return Ok(gone);
    }
    for name in &gone {
        contexts.contexts.remove(name);
    }
    if contexts.current.as_ref().is_some_and(|c| gone.contains(c)) {
        contexts.current = None;
    }
    contexts.save(&home)?;
    Ok(gone)
}

/// Where the config came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `--config` or `PLANETMESH_CONFIG`.
    Flag,
    /// A context (named by `--context` or current).
    Context(String),
    /// `slicectl.toml` in the config directory.
    Default,
}

/// The config file to use, and where it came from: `flag` (`--config`), else the context
/// `context` (or the current one), else the config directory's `slicectl.toml` if it exists;
/// `None` when there is none.
pub fn find_config(
    flag: Option<&Path>,
    context: Option<&str>,
) -> Result<Option<(PathBuf, Source)>, ContextError> {
    if let Some(path) = flag {
        return Ok(Some((path.to_owned(), Source::Flag)));
    }
    let Some(dir) = config_dir() else {
        return match context {
            Some(_) => Err(ContextError::NoConfigDir),
            None => Ok(None),
        };
    };
    let contexts = Contexts::load(&dir)?;
    if let Some(name) = context.map(str::to_owned).or(contexts.current.clone()) {
        let chosen = contexts.get(&name)?;
        return Ok(Some((chosen.config.clone(), Source::Context(name))));
    }
    let default = dir.join(CONFIG_FILE);
    Ok(default.exists().then_some((default, Source::Default)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_are_added_used_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("a.toml");
        std::fs::write(&config, "timeout_secs = 5\n").unwrap();
        let mut c = Contexts::default();
        assert!(!c.add("testbed-a", &config).unwrap());
        assert!(matches!(
            c.add("bad name", &config),
            Err(ContextError::BadName(_))
        ));
        assert!(matches!(
            c.add("b", &dir.path().join("missing.toml")),
            Err(ContextError::BadConfig { .. })
        ));
        let e = c.use_context("nope").unwrap_err();
        assert!(e.to_string().contains("known: testbed-a"), "{e}");
        c.use_context("testbed-a").unwrap();
        c.save(dir.path()).unwrap();
        let again = Contexts::load(dir.path()).unwrap();
        assert_eq!(again, c);
        assert_eq!(again.get("testbed-a").unwrap().config, config);
        assert_eq!(testnet_name(Path::new("/x/.testnet")), "testnet");
        assert_eq!(testnet_name(Path::new("/x/my net")), "my-net");
    }
}
