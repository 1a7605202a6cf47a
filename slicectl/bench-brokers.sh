#!/usr/bin/env bash
# No single broker, measured (issue 16, item 5): brings up a local testnet of 2 federations,
# 20 nodes, 2 agents and 2 brokers (slicectl's config lists both, broker0 first), then times
# `slicectl slice create` of a 20-sliver slice across both federations (all-or-nothing: exit 0
# means all 20 leases are held) RUNS times with both brokers up, kills broker0 (SIGKILL, as a
# crash) and times RUNS more creates, which find broker0 down and complete through broker1.
# Each create starts from a fresh state directory, so it knows nothing of earlier outcomes and
# asks broker0 first, as a user's first command after the crash would. Prints min / median /
# max of both against the targets (<= 2 s up, <= 3 s with the first broker down). The
# testnet is taken down on every exit path.
#
#   slicectl/bench-brokers.sh                       # release build, namespaces and real slivers as root
#   PROFILE=debug RUNS=3 NETWORK=loopback ISOLATION=memory slicectl/bench-brokers.sh
#   PROFILE=debug BUILD=0 slicectl/bench-brokers.sh   # the debug binaries as they are
#
# The time is the whole `slicectl` process (start, overlay connect, brokers, redeems, exit).
set -euo pipefail
cd "$(dirname "$0")/.."

profile="${PROFILE:-release}"
runs="${RUNS:-5}"
slivers=20
if [ "$(id -u)" = 0 ]; then
  network="${NETWORK:-namespaces}"; isolation="${ISOLATION:-linux}"
else
  network="${NETWORK:-loopback}"; isolation="${ISOLATION:-memory}"
fi
case "$profile" in
  release) build=(cargo build --release --workspace --bins --quiet) ;;
  debug) build=(cargo build --workspace --bins --quiet) ;;
  *) echo "bench-brokers.sh: PROFILE is release or debug, not $profile" >&2; exit 2 ;;
esac
# BUILD=0 uses the binaries already built.
if [ "${BUILD:-1}" != 0 ]; then "${build[@]}"; fi
bin="${CARGO_TARGET_DIR:-target}/$profile"
parent="$(mktemp -d /tmp/pm-bench-brokers.XXXXXX)"
# Sliver inits run as unprivileged (mapped) users and must traverse the path to their state.
chmod 755 "$parent"
dir="$parent/testnet"

down() {
  "$bin/testnet" --dir "$dir" down --purge >/dev/null 2>&1 || \
    echo "warning: taking the testnet in $dir down failed; run: $bin/testnet --dir $dir down --purge" >&2
  rm -rf "$parent" 2>/dev/null || true
}
trap down EXIT
trap 'exit 130' INT TERM

echo "== bringing up 2 federations, $slivers nodes ($network, $isolation), 2 agents, 2 brokers in $dir"
"$bin/testnet" --dir "$dir" up --federations 2 --nodes "$slivers" --agents 2 --brokers 2 \
  --network "$network" --isolation "$isolation" --wait 180 >/dev/null

# Times RUNS creates (each from a fresh state directory); prints each, sets `times`.
measure() {
  local label=$1
  times=()
  for run in $(seq 1 "$runs"); do
    local name="fed0-site0_${label}$run" state="$parent/state-$label-$run"
    local slicectl=("$bin/slicectl" --config "$dir/slicectl.toml" --state-dir "$state" --json)
    local start end secs out
    start=$(date +%s.%N)
    if ! out=$("${slicectl[@]}" slice create --name "$name" --slivers "$slivers" \
        --resources "cpu=100m,memory=64MiB" --duration 1h --mode all-or-nothing \
        --federation fed0 --federation fed1 2>"$parent/stderr"); then
      echo "$label run $run: slice create failed: $out $(cat "$parent/stderr")" >&2
      "${slicectl[@]}" slice delete "$name" >/dev/null 2>&1 || true
      exit 1
    fi
    end=$(date +%s.%N)
    secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }')
    times+=("$secs")
    printf '%s run %d: %d slivers held in %.3f s %s\n' "$label" "$run" "$slivers" "$secs" \
      "$(grep -o 'leaving broker [^ ]*: [^;]*' "$parent/stderr" | head -1 | sed 's/^/(/;s/$/)/')"
    "${slicectl[@]}" slice delete "$name" >/dev/null
  done
}

summary() {
  local label=$1 target=$2 sorted min max median verdict=MISS
  sorted=$(printf '%s\n' "${times[@]}" | sort -g)
  min=$(echo "$sorted" | head -n1)
  max=$(echo "$sorted" | tail -n1)
  median=$(echo "$sorted" | sed -n "$(( (runs + 1) / 2 ))p")
  if awk -v m="$median" -v t="$target" 'BEGIN { exit !(m <= t) }'; then verdict=PASS; fi
  printf '  %-22s min %.3f s  median %.3f s  max %.3f s  (%d runs)  target <= %d s: %s\n' \
    "$label" "$min" "$median" "$max" "$runs" "$target" "$verdict"
}

measure up
up_times=("${times[@]}")
"$bin/testnet" --dir "$dir" kill broker0 >/dev/null
measure down
down_times=("${times[@]}")

printf 'slice create, %d slivers, 2 federations, %s build, %s network, %s slivers:\n' \
  "$slivers" "$profile" "$network" "$isolation"
times=("${up_times[@]}"); summary "both brokers up" 2
times=("${down_times[@]}"); summary "first broker down" 3
