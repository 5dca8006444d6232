#!/usr/bin/env bash
# Runs the same workloads against a three-member etcd and a three-node raftkv on loopback, one
# system at a time, each with its data on the same disk, and prints a markdown table with the
# ratio raftkv/etcd for every figure. Everything it starts is stopped on exit (by PID).
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/bench-vs-etcd.sh [--duration 5s] [--warmup 1s] [--clients "1 16 64 256"]
                                [--write BENCHMARKS.md] [--workdir DIR]

Installs Debian's etcd (3.4) and protoc if missing, builds `raftkv` with the `etcd` feature,
starts etcd on 127.0.0.1:2376-2378 (peers 2381-2383) and raftkv on 127.0.0.1:7401-7403, and
runs put, linearizable get, stale (etcd: serializable) get and 90/10 mixed with 256-byte values
for each client count against both. Prints the table; --write also puts it in a file together
with the machine and the exact command.
USAGE
}

duration=5s
warmup=1s
clients="1 16 64 256"
write=""
root="$(cd "$(dirname "$0")/.." && pwd)"
workdir="$root/target/bench-vs-etcd"
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration="$2"; shift 2 ;;
    --warmup) warmup="$2"; shift 2 ;;
    --clients) clients="$2"; shift 2 ;;
    --write) write="$2"; shift 2 ;;
    --workdir) workdir="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
command_line="scripts/bench-vs-etcd.sh --duration $duration --warmup $warmup --clients \"$clients\""

need_apt=()
command -v etcd >/dev/null || need_apt+=(etcd-server etcd-client)
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]} from Debian's packages" >&2
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

echo "building raftkv with the etcd feature" >&2
(cd "$root" && cargo build --release --locked --features etcd --target-dir target/bench >&2)
raftkv="$root/target/bench/release/raftkv"

for port in 2376 2377 2378 2381 2382 2383 7401 7402 7403; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "error: 127.0.0.1:$port is already in use; stop whatever listens there first" >&2
    exit 3
  fi
done
rm -rf "$workdir"
mkdir -p "$workdir"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

etcd_endpoints="127.0.0.1:2376,127.0.0.1:2377,127.0.0.1:2378"
raftkv_endpoints="127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403"

start_etcd() {
  local cluster="e1=http://127.0.0.1:2381,e2=http://127.0.0.1:2382,e3=http://127.0.0.1:2383"
  for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$workdir/etcd$i" \
      --listen-client-urls "http://127.0.0.1:237$((i + 5))" \
      --advertise-client-urls "http://127.0.0.1:237$((i + 5))" \
      --listen-peer-urls "http://127.0.0.1:238$i" \
      --initial-advertise-peer-urls "http://127.0.0.1:238$i" \
      --initial-cluster "$cluster" --initial-cluster-state new \
      --log-level error >"$workdir/etcd$i.log" 2>&1 &
    pids+=($!)
  done
  local deadline=$((SECONDS + 20))
  while [ $SECONDS -lt $deadline ]; do
    ETCDCTL_API=3 timeout 3 etcdctl --dial-timeout 1s --command-timeout 2s \
      --endpoints "$etcd_endpoints" endpoint health >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "error: etcd did not become healthy in 20 s; see $workdir/etcd*.log" >&2
  exit 3
}

start_raftkv() {
  local cluster="1=127.0.0.1:9401,2=127.0.0.1:9402,3=127.0.0.1:9403" # peer ports
  for i in 1 2 3; do
    "$raftkv" serve --id "$i" --listen "127.0.0.1:740$i" --data-dir "$workdir/raftkv$i" \
      --initial-cluster "$cluster" >"$workdir/raftkv$i.log" 2>&1 &
    pids+=($!)
  done
  local deadline=$((SECONDS + 20))
  while [ $SECONDS -lt $deadline ]; do
    "$raftkv" health --endpoint 127.0.0.1:7401 --timeout 1s >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "error: raftkv did not elect a leader in 20 s; see $workdir/raftkv*.log" >&2
  exit 3
}

stop_all() {
  cleanup
  pids=()
}

workloads=("put" "get" "get --stale" "mixed --read-ratio 0.9")
results="$workdir/results.jsonl"
: >"$results"

run_system() {
  local system="$1" endpoints="$2"
  for workload in "${workloads[@]}"; do
    for c in $clients; do
      local connections=$(( c < 8 ? (c < 3 ? 3 : c) : 8 ))
      echo "$system: $workload, $c clients" >&2
      # shellcheck disable=SC2086
      "$raftkv" bench $workload --target "$system" --endpoints "$endpoints" \
        --clients "$c" --connections "$connections" --value-size 256 \
        --duration "$duration" --warmup "$warmup" --json \
        | python3 -c 'import json,sys; r=json.load(sys.stdin); r["system"]=sys.argv[1]; r["label"]=sys.argv[2]; print(json.dumps(r))' \
          "$system" "$workload" >>"$results"
    done
  done
}

start_etcd
run_system etcd "$etcd_endpoints"
stop_all
start_raftkv
run_system raftkv "$raftkv_endpoints"
stop_all

table="$(python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
by = {(r["system"], r["label"], r["clients"]): r for r in rows}
keys = sorted({(r["label"], r["clients"]) for r in rows}, key=lambda k: (["put", "get", "get --stale", "mixed --read-ratio 0.9"].index(k[0]), k[1]))
names = {"put": "put", "get": "get (linearizable)", "get --stale": "get (stale / serializable)", "mixed --read-ratio 0.9": "mixed 90/10"}
print("| workload | clients | raftkv ops/s | etcd ops/s | ratio | raftkv p99 ms | etcd p99 ms | ratio | errors (raftkv / etcd) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
for label, c in keys:
    a, b = by.get(("raftkv", label, c)), by.get(("etcd", label, c))
    if not a or not b:
        continue
    tr = a["ops_per_sec"] / b["ops_per_sec"] if b["ops_per_sec"] else float("nan")
    lr = a["latency_ms"]["p99"] / b["latency_ms"]["p99"] if b["latency_ms"]["p99"] else float("nan")
    err = lambda r: sum(r["errors"].values())
    print(f'| {names[label]} | {c} | {a["ops_per_sec"]:.0f} | {b["ops_per_sec"]:.0f} | {tr:.2f}x | {a["latency_ms"]["p99"]:.2f} | {b["latency_ms"]["p99"]:.2f} | {lr:.2f}x | {err(a)} / {err(b)} |')
PY
)"
echo "$table"

if [ -n "$write" ]; then
  {
    echo "# Benchmarks: raftkv vs etcd"
    echo
    echo "Latest run of \`$command_line --write $write\` on $(date -u +%Y-%m-%d)."
    echo
    echo "Machine: $(nproc) cores, $(free -g | awk '/^Mem:/{print $2}') GiB, $(uname -sr); etcd $(etcd --version | awk 'NR==1{print $3}'); both three members on 127.0.0.1, data under $(df -h "$workdir" | awk 'NR==2{print $1}')."
    echo "Values of 256 bytes, 10,000 keys, one client process (\`raftkv bench\`) for both systems, requests spread over all three members. A ratio above 1 means raftkv is ahead for throughput, behind for latency."
    echo
    echo "$table"
  } >"$write"
  echo "wrote $write" >&2
fi
