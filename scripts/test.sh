#!/usr/bin/env bash
# The project's test command: checks (and, as root, installs) what the tests need, then runs
# every test of the workspace. Tests that need root run for real as root; without root they
# are skipped unless CI is set, in which case they fail.
#
# Usage: scripts/test.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prereqs.sh
ensure_prereqs
echo "== cargo build --workspace --bins (the end-to-end tests run the daemons as processes)"
cargo build --workspace --bins --locked
echo "== cargo test --workspace"
cargo test --workspace --locked "$@"
