//! What every PlanetMesh binary says about itself: shell completions, man pages, and a long
//! `--version` naming the build.
//!
//! Each binary flattens [`ManualCommand`] into its subcommands (`completions SHELL`,
//! `man --dir DIR`) and sets `long_version = long_version()`, so the six binaries document
//! themselves the same way. Completions and pages are generated from the binary's own clap
//! definition (`clap_complete`, `clap_mangen`), so they never drift from `--help`.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use clap::{Command, CommandFactory, Subcommand};

/// The commit the binary was built from, when the build recorded it (`PLANETMESH_COMMIT` in
/// the build's environment: the packaging script sets it; a working-tree build does not, so
/// that a commit never forces the whole workspace to rebuild).
pub const COMMIT: Option<&str> = option_env!("PLANETMESH_COMMIT");

/// `--version`'s long form: version, commit, build profile and what the overlay speaks
/// (`#[command(long_version = federation::manual::long_version())]`).
pub fn long_version() -> &'static str {
    static LONG: LazyLock<String> = LazyLock::new(|| {
        format!(
            "{}\ncommit: {}\nbuild: {}\nfeatures: tcp, quic, mdns, noise, yamux, gossipsub, kademlia",
            env!("CARGO_PKG_VERSION"),
            COMMIT.unwrap_or("not recorded (a working-tree build; packages record it)"),
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
        )
    });
    &LONG
}

/// The subcommands every binary has for documenting itself.
#[derive(Debug, Clone, Subcommand)]
pub enum ManualCommand {
    /// Print a completion script for a shell: bash, zsh, fish, elvish or powershell. Load it
    /// with e.g. `source <(PROGRAM completions bash)`, or install it in your shell's
    /// completion directory.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write man pages into a directory: the program's own and one per subcommand
    /// (`PROGRAM-SUB.1`). Read one with `man -l DIR/PROGRAM.1`.
    Man {
        /// Where to write them (created if missing).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

impl ManualCommand {
    /// Runs the command for the binary whose clap definition is `C`: completions go to
    /// stdout, pages to their directory (their paths are printed).
    pub fn run<C: CommandFactory>(&self) -> std::io::Result<()> {
        let mut command = C::command();
        match self {
            ManualCommand::Completions { shell } => {
                let name = command.get_name().to_owned();
                clap_complete::generate(*shell, &mut command, name, &mut std::io::stdout());
                Ok(())
            }
            ManualCommand::Man { dir } => {
                for page in write_man_pages(command, dir)? {
                    println!("{}", page.display());
                }
                Ok(())
            }
        }
    }
}

/// Writes the man pages of `command` and of each of its subcommands (recursively, hidden ones
/// and `help` left out) into `dir`; returns their paths.
pub fn write_man_pages(command: Command, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut command = command;
    command.build();
    let mut written = Vec::new();
    write_page(&command, command.get_name(), dir, &mut written)?;
    Ok(written)
}

fn write_page(
    command: &Command,
    name: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    let path = dir.join(format!("{name}.1"));
    let mut bytes = Vec::new();
    clap_mangen::Man::new(command.clone())
        .title(name.to_uppercase())
        .render(&mut bytes)?;
    std::fs::write(&path, bytes)?;
    written.push(path);
    for sub in command.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        write_page(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// A program shaped like ours: subcommands, nested ones, and the manual flattened in.
    #[derive(Debug, Parser)]
    #[command(name = "demo", version, long_version = long_version())]
    struct Demo {
        #[command(subcommand)]
        command: DemoCommand,
    }

    #[derive(Debug, Subcommand)]
    enum DemoCommand {
        /// Do a thing.
        Thing {
            #[command(subcommand)]
            what: Inner,
        },
        #[command(flatten)]
        Manual(ManualCommand),
    }

    #[derive(Debug, Subcommand)]
    enum Inner {
        /// The first.
        First,
    }

    #[test]
    fn pages_cover_every_subcommand_and_read_as_roff() {
        let dir = tempfile::tempdir().unwrap();
        let pages = write_man_pages(Demo::command(), dir.path()).unwrap();
        let names: Vec<String> = pages
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for expected in [
            "demo.1",
            "demo-thing.1",
            "demo-thing-first.1",
            "demo-completions.1",
            "demo-man.1",
        ] {
            assert!(names.contains(&expected.to_owned()), "{names:?}");
        }
        let page = std::fs::read_to_string(dir.path().join("demo-thing.1")).unwrap();
        assert!(page.starts_with(".ie") || page.contains(".TH"), "{page}");
        assert!(page.contains("Do a thing"), "{page}");
    }

    #[test]
    fn the_long_version_names_commit_and_build() {
        let long = Demo::command().render_long_version();
        assert!(long.contains(env!("CARGO_PKG_VERSION")), "{long}");
        assert!(long.contains("commit: "), "{long}");
        assert!(long.contains("build: "), "{long}");
        let parsed = Demo::try_parse_from(["demo", "completions", "bash"]).unwrap();
        assert!(matches!(
            parsed.command,
            DemoCommand::Manual(ManualCommand::Completions { .. })
        ));
    }
}
