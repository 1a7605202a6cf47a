//! `slicectl` documents itself as every PlanetMesh binary does: a long `--version`, shell
//! completions bash loads, and a man page per subcommand, with no config needed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

#[path = "../../federation/tests/common/cli.rs"]
mod cli;

#[test]
fn slicectl_has_completions_man_pages_and_a_long_version() {
    let tmp = tempfile::tempdir().unwrap();
    cli::manual(env!("CARGO_BIN_EXE_slicectl"), "slicectl", tmp.path());
}
