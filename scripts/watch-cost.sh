#!/usr/bin/env bash
# What watchers cost on one node: the memory of 10,000 idle watch streams, and the delivery and
# fan-out latency of writes to 1,000 watchers. Starts a one-node raftkv on 127.0.0.1:7601 (peer
# port 9601) with its data in a temporary directory and stops it (by PID) on exit.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/watch-cost.sh [--idle 10000] [--fanout 1000] [--writes 200]

Builds raftkv (release) unless RAFTKV points at a binary. Prints the node's resident memory
before and while --idle streams are open (and the difference per stream), then the report of
`raftkv bench watch --watchers FANOUT --ops WRITES`.
USAGE
}

idle=10000
fanout=1000
writes=200
while [ $# -gt 0 ]; do
  case "$1" in
    --idle) idle="$2"; shift 2 ;;
    --fanout) fanout="$2"; shift 2 ;;
    --writes) writes="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

root="$(cd "$(dirname "$0")/.." && pwd)"
if [ -z "${RAFTKV:-}" ]; then
  (cd "$root" && cargo build --release --locked >&2)
  RAFTKV="$root/target/release/raftkv"
fi
workdir="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$workdir"
}
trap cleanup EXIT

"$RAFTKV" serve --id 1 --listen 127.0.0.1:7601 --peer-listen 127.0.0.1:9601 \
  --initial-cluster 1=127.0.0.1:9601 --data-dir "$workdir/data" >"$workdir/node.log" 2>&1 &
node=$!
pids+=("$node")
deadline=$((SECONDS + 20))
until "$RAFTKV" health --endpoint 127.0.0.1:7601 --timeout 1s >/dev/null 2>&1; do
  [ $SECONDS -lt $deadline ] || { echo "error: the node did not start; see $workdir/node.log" >&2; exit 3; }
  sleep 0.2
done
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$node/status"; }

before=$(rss_kib)
"$RAFTKV" bench watch --endpoints 127.0.0.1:7601 --watchers "$idle" --hold 15s --ops 1 \
  >"$workdir/idle.out" 2>"$workdir/idle.err" &
bench=$!
pids+=("$bench")
deadline=$((SECONDS + 120))
until grep -q "streams open" "$workdir/idle.err" 2>/dev/null; do
  [ $SECONDS -lt $deadline ] || { echo "error: streams not open in 120 s" >&2; cat "$workdir/idle.err" >&2; exit 3; }
  kill -0 "$bench" 2>/dev/null || { echo "error: bench failed" >&2; cat "$workdir/idle.err" >&2; exit 3; }
  sleep 0.5
done
sleep 5
with=$(rss_kib)
wait "$bench"
echo "node RSS: $before KiB with no watcher, $with KiB with $idle idle watch streams" \
  "($(( (with - before) * 1024 / idle )) bytes per stream); $(cat "$workdir/idle.err")"

"$RAFTKV" bench watch --endpoints 127.0.0.1:7601 --watchers "$fanout" --ops "$writes"
