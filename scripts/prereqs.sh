# Sourced by the project's scripts: checks the tools and kernel features PlanetMesh needs and,
# when running as root on Debian, installs missing packages. Prints what to do otherwise.

need_pkg() { # need_pkg COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing $2 (for $1)"
    if [ -z "${PLANETMESH_APT_UPDATED:-}" ]; then
      apt-get update -qq >/dev/null || true
      export PLANETMESH_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
  else
    echo "missing: $1 (Debian package $2); install it with: sudo apt-get install $2" >&2
    return 1
  fi
}

need_promtool() { # promtool alone, out of Debian's prometheus package (no server installed)
  command -v promtool >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing promtool (from the prometheus package, without its server)"
    if [ -z "${PLANETMESH_APT_UPDATED:-}" ]; then
      apt-get update -qq >/dev/null || true
      export PLANETMESH_APT_UPDATED=1
    fi
    local tmp
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download -qq prometheus >/dev/null &&
      dpkg-deb -x prometheus_*.deb "$tmp/root" &&
      install -m 0755 "$tmp/root/usr/bin/promtool" /usr/local/bin/promtool)
    rm -rf "$tmp"
    command -v promtool >/dev/null 2>&1
  else
    echo "missing: promtool; install it with: sudo apt-get install prometheus" >&2
    return 1
  fi
}

ensure_prereqs() {
  command -v cargo >/dev/null || {
    echo "cargo not found: install Rust with rustup (the toolchain is pinned in rust-toolchain.toml)" >&2
    exit 1
  }
  # iproute2: tests inspect namespaces, links and qdiscs from outside (the daemons use netlink).
  need_pkg ip iproute2
  need_pkg tc iproute2
  need_pkg nsenter util-linux
  # nftables: each node keeps one firewall table (slivers' egress NAT and fence), applied
  # with nft; the sliver-create hot path never runs it.
  need_pkg nft nftables
  # btrfs-progs: the quota disk backing makes a btrfs image for the node's slivers.
  need_pkg mkfs.btrfs btrfs-progs
  # Headless Chromium: the testnet dashboard test loads the page in a real browser.
  need_pkg chromium chromium
  # promtool: the daemons' /metrics are checked the way Prometheus reads them.
  need_promtool
  # The package and guide test (testnet/tests/deploy_root.rs): packs with dpkg-deb, checks
  # units with systemd-analyze, and runs docs/DEPLOY.md, whose commands use curl.
  need_pkg dpkg-deb dpkg
  # The SSH endpoint's tests drive the OpenSSH client (ssh, scp) against nodes; scp and sftp
  # run the sliver's own sftp-server (from the host's /usr, which slivers see read-only).
  need_pkg ssh openssh-client
  need_pkg /usr/lib/openssh/sftp-server openssh-sftp-server
  need_pkg systemd-analyze systemd
  need_pkg curl curl
  if [ "$(id -u)" = 0 ]; then
    for feature in /proc/self/ns/user /proc/self/ns/net /proc/self/ns/cgroup; do
      [ -e "$feature" ] || echo "warning: kernel lacks $feature; sliver tests will fail" >&2
    done
    grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || \
      echo "warning: overlayfs unavailable (modprobe overlay); sliver tests will fail" >&2
    modprobe veth 2>/dev/null || true
    modprobe sch_htb 2>/dev/null || true
  else
    echo "note: not root: tests that need root are skipped (they run under CI=true as root)" >&2
  fi
}
