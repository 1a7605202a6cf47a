#!/usr/bin/env bash
# The main job: build PlanetMesh, bring up a local testnet (2 federations, 6 nodes, 3 agents,
# 1 broker), acquire a slice across both federations, run a command in every sliver, renew
# and delete it, printing each step and its time; then take the testnet down.
#
# As root every host runs in its own network namespace and nodes make real isolated slivers;
# without root the testnet runs on loopback without isolation. Extra arguments go to
# `testnet demo` (e.g. --keep to leave the testnet running, --dir DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prereqs.sh
ensure_prereqs
echo "== building (cargo build --workspace --bins)"
cargo build --workspace --bins --quiet
exec "${CARGO_TARGET_DIR:-target}/debug/testnet" --dir "${PLANETMESH_TESTNET:-.testnet}" demo "$@"
