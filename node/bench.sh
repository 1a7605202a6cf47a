#!/usr/bin/env bash
# Benchmarks sliver creation and destruction (root): node/bench.sh [sliver-bench flags]
#
# Installs runc and busybox-static from Debian when missing, builds sliver-bench and
# sliver-init in release mode, prepares a busybox bundle for the runc reference, and runs:
# 200 create/destroy cycles (p50/p99), 500 idle slivers held at once (memory per sliver),
# the kernel floor (bare clone into the same namespaces) and `runc run` of the same container;
# then the cost of slice networking (`sliver-bench --network`): create p50/p99 with the node's
# firewall off and on, and a TCP transfer sliver to sliver across two nodes through the NATs
# against host to host on the same link.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "bench.sh: run as root" >&2
  exit 1
fi
need=()
command -v runc >/dev/null 2>&1 || need+=(runc)
[ -x /bin/busybox ] || need+=(busybox-static)
if [ "${#need[@]}" -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo build --release -q -p node --bin sliver-bench --bin sliver-init
target="${CARGO_TARGET_DIR:-target}"

bundle="$(mktemp -d /tmp/pmbench-runc.XXXXXX)"
trap 'rm -rf "$bundle"' EXIT
mkdir -p "$bundle/rootfs/bin" "$bundle/rootfs/proc" "$bundle/rootfs/dev" "$bundle/rootfs/sys" "$bundle/rootfs/tmp"
cp /bin/busybox "$bundle/rootfs/bin/busybox"
ln -s busybox "$bundle/rootfs/bin/sh"
chmod 755 "$bundle" "$bundle/rootfs"

"$target/release/sliver-bench" --runc-bundle "$bundle" "$@"
"$target/release/sliver-bench" --network
