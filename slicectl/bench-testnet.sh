#!/usr/bin/env bash
# End to end on real slivers (root): brings up a local testnet (2 federations, 20 nodes in
# their own network namespaces making real isolated slivers, 2 agents, 1 broker), then times
# `slicectl slice create` of a 20-sliver slice across both federations (all-or-nothing, so
# exit 0 means all 20 leases are held) RUNS times, deleting the slice between runs, and prints
# min / median / max against the 2 s target. The testnet is taken down on every exit path.
#
#   slicectl/bench-testnet.sh            # release build (default)
#   PROFILE=debug RUNS=3 slicectl/bench-testnet.sh
#
# The time is the whole `slicectl` process (start, overlay connect, broker, redeems, exit),
# as a user would see it. Heavy: 20 nodemgr processes and 20 slivers at once.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "bench-testnet.sh: run as root (real slivers and network namespaces need it)" >&2
  exit 1
fi
source scripts/prereqs.sh
ensure_prereqs

profile="${PROFILE:-release}"
runs="${RUNS:-5}"
slivers=20
target_secs=2
case "$profile" in
  release) cargo build --release --workspace --bins --quiet ;;
  debug) cargo build --workspace --bins --quiet ;;
  *) echo "bench-testnet.sh: PROFILE is release or debug, not $profile" >&2; exit 2 ;;
esac
bin="${CARGO_TARGET_DIR:-target}/$profile"
parent="$(mktemp -d /tmp/pm-bench-testnet.XXXXXX)"
# Sliver inits run as unprivileged (mapped) users and must traverse the path to their state.
chmod 755 "$parent"
dir="$parent/testnet"

down() {
  "$bin/testnet" --dir "$dir" down --purge >/dev/null 2>&1 || \
    echo "warning: taking the testnet in $dir down failed; run: $bin/testnet --dir $dir down --purge" >&2
  rmdir "$parent" 2>/dev/null || true
}
trap down EXIT
trap 'exit 130' INT TERM

load_before="$(cut -d' ' -f1 /proc/loadavg)"
echo "== bringing up 2 federations, $slivers nodes (real slivers), 2 agents, 1 broker in $dir"
"$bin/testnet" --dir "$dir" up --federations 2 --nodes "$slivers" --agents 2 --brokers 1 \
  --network namespaces --isolation linux --wait 180 >/dev/null

slicectl=("$bin/slicectl" --config "$dir/slicectl.toml" --json)
times=()
for run in $(seq 1 "$runs"); do
  name="fed0-site0_bench$run"
  start=$(date +%s.%N)
  if ! out=$("${slicectl[@]}" slice create --name "$name" --slivers "$slivers" \
      --resources "cpu=100m,memory=64MiB" --duration 1h --mode all-or-nothing \
      --federation fed0 --federation fed1); then
    echo "run $run: slice create failed: $out" >&2
    "${slicectl[@]}" slice delete "$name" >/dev/null 2>&1 || true
    exit 1
  fi
  end=$(date +%s.%N)
  secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }')
  times+=("$secs")
  printf 'run %d: %d slivers held in %.3f s\n' "$run" "$slivers" "$secs"
  "${slicectl[@]}" slice delete "$name" >/dev/null
done

sorted=$(printf '%s\n' "${times[@]}" | sort -g)
min=$(echo "$sorted" | head -n1)
max=$(echo "$sorted" | tail -n1)
median=$(echo "$sorted" | sed -n "$(( (runs + 1) / 2 ))p")
verdict=MISS
if awk -v m="$median" -v t="$target_secs" 'BEGIN { exit !(m <= t) }'; then verdict=PASS; fi
printf 'slice create, %d slivers, 2 federations, real slivers (%s build; load %s before, %s after):\n' \
  "$slivers" "$profile" "$load_before" "$(cut -d' ' -f1 /proc/loadavg)"
printf '  min %.3f s  median %.3f s  max %.3f s  (%d runs)  target <= %d s: %s\n' \
  "$min" "$median" "$max" "$runs" "$target_secs" "$verdict"
