#!/usr/bin/env bash
# A/B benchmark of two `raftkv serve` configurations on this machine: starts a fresh three-node
# cluster with configuration A, runs `raftkv bench`, stops it, does the same with B, and repeats,
# alternating, so that both see the same noise. Prints one line per run and a median per side.
# Everything it starts is stopped on exit (by PID); it only listens on 127.0.0.1:7501-7503.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/bench-ab.sh --a "SERVE ARGS" --b "SERVE ARGS" [--rounds 3]
                           [--bench "put --clients 64 --duration 5s --warmup 1s"]
                           [--bench-b "BENCH ARGS"] [--binary target/release/raftkv]
                           [--binary-b PATH]

Example, the cost of fdatasync:
  scripts/bench-ab.sh --a "" --b "--unsafe-no-fsync" --bench "put --clients 1 --duration 5s"
--binary-b runs side B with another binary (for a before/after comparison of a change);
--bench-b gives side B its own bench arguments, e.g. the cost of idempotency keys:
  scripts/bench-ab.sh --a "" --b "" --bench "put --clients 64 --duration 5s" \
    --bench-b "put --clients 64 --duration 5s --idempotency"
USAGE
}

a_args=""
b_args=""
rounds=3
bench="put --clients 64 --duration 5s --warmup 1s"
bench_b=""
root="$(cd "$(dirname "$0")/.." && pwd)"
binary="$root/target/release/raftkv"
binary_b=""
while [ $# -gt 0 ]; do
  case "$1" in
    --a) a_args="$2"; shift 2 ;;
    --b) b_args="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --bench) bench="$2"; shift 2 ;;
    --bench-b) bench_b="$2"; shift 2 ;;
    --binary) binary="$2"; shift 2 ;;
    --binary-b) binary_b="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
binary_b="${binary_b:-$binary}"
bench_b="${bench_b:-$bench}"
[ -x "$binary" ] || { echo "error: $binary not built (cargo build --release)" >&2; exit 2; }
[ -x "$binary_b" ] || { echo "error: $binary_b not found" >&2; exit 2; }

workdir="$(mktemp -d)"
pids=()
stop_cluster() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}
trap 'stop_cluster; rm -rf "$workdir"' EXIT

endpoints="127.0.0.1:7501,127.0.0.1:7502,127.0.0.1:7503"
run_side() { # $1 = side name, $2 = binary, $3 = extra serve args, $4 = bench args
  # Peer ports (the client port + 2000); binaries from before the peer port need 75xx here.
  local cluster="1=127.0.0.1:9501,2=127.0.0.1:9502,3=127.0.0.1:9503"
  rm -rf "$workdir/data"
  for i in 1 2 3; do
    # shellcheck disable=SC2086  # the extra args are words on purpose
    "$2" serve --id "$i" --listen "127.0.0.1:750$i" --data-dir "$workdir/data/$i" \
      --initial-cluster "$cluster" $3 >"$workdir/node$i.log" 2>&1 &
    pids+=($!)
  done
  local deadline=$((SECONDS + 20))
  until "$2" health --endpoint 127.0.0.1:7501 --timeout 1s >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { echo "error: no leader in 20 s" >&2; exit 3; }
    sleep 0.2
  done
  # shellcheck disable=SC2086
  "$2" bench $4 --endpoints "$endpoints" --json >"$workdir/$1.json"
  stop_cluster
  python3 - "$1" "$workdir/$1.json" <<'PY'
import json, sys
side, path = sys.argv[1], sys.argv[2]
r = json.load(open(path))
ops, lat = r["ops_per_sec"], r["latency_ms"]
p50, p99, errors = lat["p50"], lat["p99"], sum(r["errors"].values())
print(f"{side}\t{ops}\t{p50}\t{p99}\t{errors}", flush=True)
PY
}

echo "# A: bench $bench, serve '$a_args' ($binary)"
echo "# B: bench $bench_b, serve '$b_args' ($binary_b); $rounds rounds"
echo -e "side\tops/s\tp50 ms\tp99 ms\terrors"
results="$workdir/results.tsv"
for _ in $(seq "$rounds"); do
  run_side A "$binary" "$a_args" "$bench" | tee -a "$results"
  run_side B "$binary_b" "$b_args" "$bench_b" | tee -a "$results"
done
python3 - "$results" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
for side in "AB":
    mine = [r for r in rows if r[0] == side]
    def med(i):
        vals = [float(r[i]) for r in mine if r[i] not in ("None", "")]
        return statistics.median(vals) if vals else float("nan")
    print(f"median {side}: {med(1):.0f} ops/s, p50 {med(2):.2f} ms, p99 {med(3):.2f} ms")
PY
