#!/usr/bin/env bash
# Fault injection against the Docker Compose cluster while a client keeps writing; fails if any
# acknowledged write is lost.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/failover-test.sh [--tls] [--no-build] [--keep] [--settle SECONDS]

Against the Docker Compose cluster (started here with scripts/cluster-up.sh if it is not
running), a background writer puts distinct keys through all three endpoints and records every
acknowledged write, while the script injects, one after another:
  1. docker kill of the leader          measures the time until writes succeed again
  2. docker start of that node          checks that it catches up
  3. docker pause of a follower         writes must go on; then unpause and catch up
  4. docker network disconnect of the   a new leader must take over; then reconnect (with its
     current leader                     DNS alias) and check that it catches up and forwards
  5. restart of the whole cluster       compose stop + start; time until writable again
Then it stops the writer, waits for every node to apply the whole log, and reads every
acknowledged key from every node (stale reads, i.e. each node's own copy). It fails if any is
missing or has another value, and prints a summary table. Throughout, `raftkv lease keepalive`
renews a 30 s lease holding one key: the test also fails if any fault expired it, or if the key
outlives the lease's revoke at the end.

With --tls the same test runs against the TLS variant (scripts/cluster-up.sh --tls: client
certificates required, mutual TLS between the nodes): every raftkv call carries the
certificates of certs/docker/ (RAFTKV_CACERT, RAFTKV_CERT, RAFTKV_KEY), and before the faults
it checks that a plaintext client and a TLS client without a certificate are refused, that
nothing they sent was written, that no node publishes its peer port, and (with curl) that the
HTTP gateway on 127.0.0.1:8001 answers only HTTPS with a client certificate.

Every wait is bounded. On exit (also on failure or Ctrl-C) the writer is stopped, paused or
disconnected nodes are restored, and a cluster this script started is removed with its volumes.

Options:
  --tls             test the TLS variant (a running cluster must be the TLS one)
  --no-build        do not build the binary and image when starting the cluster
  --keep            leave a cluster this script started running (and its data), and keep
                    the writer's records and leader samples
  --settle SECONDS  seconds of writing between faults (default 4)
  -h, --help        show this help
EOF
}

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

build=1
keep=0
settle=4
tls=0
while (($#)); do
    case $1 in
    --tls) tls=1 ;;
    --no-build) build=0 ;;
    --keep) keep=1 ;;
    --settle)
        [[ ${2:-} =~ ^[0-9]+$ ]] || die "--settle needs a number of seconds"
        settle=$2
        shift
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        printf 'unknown argument: %s\n\n' "$1" >&2
        usage >&2
        exit 2
        ;;
    esac
    shift
done

require_docker
transport=plaintext
if ((tls)); then
    enable_tls
    transport=tls
fi

# A running cluster is tested as it is, so it must be of the variant asked for (checked before
# anything is set up: a mismatch is a usage error, not a failed test).
all_running=1
for n in "${RAFTKV_NODES[@]}"; do
    [[ $(node_health "$n") =~ ^(healthy|starting|running)$ ]] || all_running=0
done
if ((all_running)); then
    running=$(cluster_transport)
    if [[ $running != "$transport" ]]; then
        hint="run without --tls"
        [[ $running == tls ]] && hint="run with --tls"
        die "the running cluster is the $running one: $hint, or stop it first (scripts/cluster-down.sh)"
    fi
fi

# --- state, cleanup -------------------------------------------------------------------------

work=$(mktemp -d "${TMPDIR:-/tmp}/raftkv-failover.XXXXXX")
acked=$work/acked     # "key value" of every acknowledged write
failed=$work/failed   # "key value" of every write that returned an error (outcome unknown)
stop_file=$work/stop  # tells the writer and the monitor to finish
leaders=$work/leaders # "ms leader term" samples
: >"$acked"
: >"$failed"
run_id=$(date +%s)-$$
started_cluster=0
writer_pid=""
monitor_pid=""
keepalive_pid=""
paused_node=""
disconnected_node=""
disconnected_network=""
passed=0

# Waits up to $2 seconds for process $1 to exit, then kills it.
stop_process() {
    local pid=$1 deadline=$((SECONDS + $2))
    [[ -n $pid ]] || return 0
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$?
    set +e
    touch "$stop_file"
    stop_process "$writer_pid" 5
    stop_process "$monitor_pid" 5
    if [[ -n $keepalive_pid ]]; then
        kill "$keepalive_pid" 2>/dev/null
        wait "$keepalive_pid" 2>/dev/null
    fi
    if [[ -n $paused_node ]]; then
        log "cleanup: unpausing node$paused_node"
        docker unpause "$(cid "$paused_node")" >/dev/null 2>&1
    fi
    if [[ -n $disconnected_node ]]; then
        log "cleanup: reconnecting node$disconnected_node"
        docker network connect --alias "node$disconnected_node" "$disconnected_network" \
            "$(cid "$disconnected_node")" >/dev/null 2>&1
    fi
    if ((!passed && status != 130)); then
        warn "failed; last lines of each node's log:"
        compose logs --no-color --tail 25 >&2 2>/dev/null
        warn "writer errors and samples are kept in $work"
    fi
    if ((started_cluster && !keep)); then
        log "cleanup: removing the cluster this test started (with its volumes)"
        "$RAFTKV_ROOT/scripts/cluster-down.sh" --volumes >/dev/null 2>&1 ||
            warn "scripts/cluster-down.sh --volumes failed"
    elif ((!passed)); then
        # Leave a cluster that is kept as complete as it was found: start any node this test
        # killed or stopped and did not get to start again.
        compose start >/dev/null 2>&1 || warn "could not start the cluster's stopped nodes"
    fi
    if ((passed && !keep)); then
        rm -rf "$work"
    else
        log "the writer's records and leader samples are in $work"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- background writer and leader monitor ---------------------------------------------------

endpoints_from() { # endpoints list starting at node $1: 2 -> 127.0.0.1:7002,…7003,…7001
    local first=$1 i list=""
    for i in 0 1 2; do
        list+="${list:+,}$(endpoint $(((first - 1 + i) % 3 + 1)))"
    done
    echo "$list"
}

# Puts fo/<run>/<i> = v<i>-<random> forever, rotating which node it tries first, so a node that
# hangs (paused) delays only some writes. Every write is recorded as acknowledged or failed.
writer() {
    local i=0 key value
    while [[ ! -e $stop_file ]]; do
        i=$((i + 1))
        key=fo/$run_id/$i
        value=v$i-$RANDOM$RANDOM
        if raftkv put "$key" "$value" --endpoints "$(endpoints_from $((i % 3 + 1)))" \
            --timeout 2s >/dev/null 2>>"$work/writer.err"; then
            printf '%s %s\n' "$key" "$value" >>"$acked"
        else
            printf '%s %s\n' "$key" "$value" >>"$failed"
        fi
    done
}

monitor() {
    local leader term
    while [[ ! -e $stop_file ]]; do
        read -r leader term < <(cluster_leader 1s)
        printf '%s %s %s\n' "$(now_ms)" "$leader" "$term" >>"$leaders"
        sleep 0.3
    done
}

# --- fault helpers --------------------------------------------------------------------------

faults=()   # rows of the per-fault table
max_failover_ms=0

current_leader() {
    local leader _
    read -r leader _ < <(cluster_leader 1s)
    echo "$leader"
}

# Waits for a known leader; prints it.
wait_leader() {
    local deadline=$((SECONDS + $1)) leader
    while ((SECONDS < deadline)); do
        leader=$(current_leader)
        if ((leader != 0)); then
            echo "$leader"
            return 0
        fi
        sleep 0.2
    done
    die "no leader within $1s"
}

# Puts a probe key through the given endpoints until one write succeeds; prints the elapsed ms
# since $2 (ms). Bounded by $3 seconds. The probe counts as an acknowledged write.
wait_writable() {
    local endpoints=$1 since=$2 timeout_s=$3 deadline key value
    deadline=$((SECONDS + timeout_s))
    key=probe/$run_id/$(now_ms)
    value=probe-$RANDOM
    until raftkv put "$key" "$value" --endpoints "$endpoints" --timeout 1s >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "no write succeeded through $endpoints within ${timeout_s}s"
        sleep 0.05
    done
    printf '%s %s\n' "$key" "$value" >>"$acked"
    echo $(($(now_ms) - since))
}

# Endpoints of every node but $1.
endpoints_except() {
    local n list=""
    for n in "${RAFTKV_NODES[@]}"; do
        ((n == $1)) || list+="${list:+,}$(endpoint "$n")"
    done
    echo "$list"
}

# Applied index of node $1 (empty when it does not answer).
applied_of() {
    local _l _t _c applied
    read -r _l _t _c applied _ < <(node_summary "$1") || return 0
    echo "$applied"
}

# Commit index of the leader.
leader_commit() {
    local leader commit
    leader=$(current_leader)
    ((leader != 0)) || return 1
    read -r _ _ commit _ < <(node_summary "$leader") || return 1
    echo "$commit"
}

# Node $1 caught up: its applied index reached the leader's commit index as of the start of the
# wait, and it serves (stale, from its own copy) the latest acknowledged write of that moment.
# Prints the ms it took; dies after $2 seconds.
wait_caught_up() {
    local n=$1 timeout_s=$2 start target applied last_key last_value got deadline
    start=$(now_ms)
    deadline=$((SECONDS + timeout_s))
    until target=$(leader_commit); do
        ((SECONDS < deadline)) || die "node$n: no leader commit index within ${timeout_s}s"
        sleep 0.2
    done
    read -r last_key last_value < <(tail -n1 "$acked")
    while :; do
        applied=$(applied_of "$n")
        if [[ -n $applied ]] && ((applied >= target)); then
            got=$(raftkv get "$last_key" --stale --endpoints "$(endpoint "$n")" --timeout 1s 2>/dev/null) || got=""
            [[ $got == "$last_value" ]] && break
        fi
        ((SECONDS < deadline)) ||
            die "node$n did not catch up within ${timeout_s}s (applied ${applied:-?}, leader commit $target, $last_key = '${got:-}')"
        sleep 0.2
    done
    echo $(($(now_ms) - start))
}

acked_count() { wc -l <"$acked"; }

# Appends a row to the per-fault table.
record() { faults+=("$(printf '%-31s %-7s %-7s %-7s %-9s %s' "$@")"); }

# The highest term any node reports with a leader.
term_now() {
    local _ term
    read -r _ term < <(cluster_leader 1s)
    echo "$term"
}

# A failover slower than this many ms gets the nodes' election log lines printed after it, so a
# slow run (seen at 7-8 s now and then) leaves evidence of where the time went.
explain_over_ms=${RAFTKV_FAILOVER_EXPLAIN_MS:-6000}

# Prints openraft's election lines logged by every node since $1 (epoch ms) when $2 (ms) is
# above the threshold. The nodes log at info by default (RAFTKV_LOG), which includes them.
explain_slow_failover() {
    local since_ms=$1 took_ms=$2 n since
    ((took_ms > explain_over_ms)) || return 0
    since=$(awk -v ms="$since_ms" 'BEGIN { printf "%.3f", ms / 1000 }')
    warn "failover took $(fmt_ms "$took_ms"); election log lines of every node since the fault:"
    for n in "${RAFTKV_NODES[@]}"; do
        docker logs --since "$since" "$(cid "$n")" 2>&1 |
            grep -E "trigger election|become leader|quorum granted|reject vote|seen a greater log|vote is changing" |
            cut -c1-200 | sed "s/^/  node$n: /" >&2 || true
    done
    # openraft 0.9 remembers a vote refused by a node with a longer log until this node next
    # campaigns, and adds smaller_log_timeout (2x the maximum election timeout) to that next
    # election however much later it comes: such lines from before the fault explain a slow one.
    warn "refusals by a node with a longer log, since the cluster started (each delays that node's next campaign by 4s):"
    for n in "${RAFTKV_NODES[@]}"; do
        docker logs "$(cid "$n")" 2>&1 | grep -E "seen a greater log|do trigger election" |
            cut -c1-200 | sed "s/^/  node$n: /" >&2 || true
    done
}

# --- the run --------------------------------------------------------------------------------

test_start=$SECONDS
if ((all_running)); then
    log "using the running $transport cluster (project $COMPOSE_PROJECT_NAME); it is left running afterwards"
else
    log "starting a $transport cluster for this test"
    started_cluster=1
    up_args=()
    ((build)) || up_args+=(--no-build)
    ((!tls)) || up_args+=(--tls)
    "$RAFTKV_ROOT/scripts/cluster-up.sh" "${up_args[@]}" >/dev/null
fi
wait_cluster_ready 90
[[ -x $RAFTKV_BIN ]] || die "$RAFTKV_BIN is missing (the host client); run scripts/cluster-up.sh first"
read -r first_leader first_term < <(cluster_leader 1s)
log "cluster ready: leader node$first_leader, term $first_term"

# Only clients with a certificate from the CA get in: a plaintext client and a TLS client
# without a certificate are refused and write nothing; the peer port is not published; the HTTP
# gateway answers only HTTPS with a client certificate.
tls_checks=""
check_tls() {
    local key=tls-check/$run_id n code kind err
    for n in "${RAFTKV_NODES[@]}"; do
        ! docker port "$(cid "$n")" 9001/tcp >/dev/null 2>&1 || die "node$n publishes its peer port 9001"
    done
    # Each put must fail; its error (on stderr) is shown.
    for kind in plaintext no-client-cert; do
        local unset=(-u RAFTKV_CERT -u RAFTKV_KEY)
        [[ $kind == plaintext ]] && unset+=(-u RAFTKV_CACERT)
        if env "${unset[@]}" "$RAFTKV_BIN" put "$key/$kind" x --endpoints "$ALL_ENDPOINTS" \
            --timeout 2s >/dev/null 2>"$work/tls-$kind.err"; then
            die "a $kind client wrote to the TLS cluster"
        fi
        err=$(head -n1 "$work/tls-$kind.err" | cut -c1-140)
        log "  $kind client refused: $err"
    done
    for kind in plaintext no-client-cert; do
        code=0
        raftkv get "$key/$kind" --endpoints "$ALL_ENDPOINTS" --timeout 3s >/dev/null 2>&1 || code=$?
        ((code == 1)) || die "$key/$kind: exit $code from a get with the client certificate, expected 1 (not found)"
    done
    if command -v curl >/dev/null 2>&1; then
        # The gateway speaks only HTTPS and wants a client certificate too.
        if curl -sS -m 2 -o /dev/null http://127.0.0.1:8001/health 2>/dev/null; then
            die "the HTTP gateway answers plain HTTP on 127.0.0.1:8001 in the TLS variant"
        fi
        if curl -sS -m 2 -o /dev/null --cacert "$RAFTKV_CACERT" https://127.0.0.1:8001/health 2>/dev/null; then
            die "the HTTP gateway answers a client without a certificate in the TLS variant"
        fi
        curl -sS -m 5 -o /dev/null --cacert "$RAFTKV_CACERT" --cert "$RAFTKV_CERT" --key "$RAFTKV_KEY" \
            https://127.0.0.1:8001/health || die "the HTTPS gateway refused the client certificate"
    fi
    tls_checks="plaintext client and client without certificate refused, nothing written; peer port unpublished; gateway HTTPS with client certificates only"
}
if ((tls)); then
    log "TLS checks"
    check_tls
    log "  ok: $tls_checks"
fi

writer &
writer_pid=$!
monitor &
monitor_pid=$!
log "writer started (keys fo/$run_id/N); letting it run ${settle}s"

# A lease renewed by `raftkv lease keepalive` through every fault: no failover, pause, partition
# or restart may expire it, so the key attached to it must outlive them all.
lease_key=lease-check/$run_id
lease_id=$(raftkv lease grant 30s --json --endpoints "$ALL_ENDPOINTS" --timeout 10s |
    grep -o '"id": *[0-9]*' | grep -o '[0-9]*$') || die "raftkv lease grant 30s failed"
raftkv put "$lease_key" held --lease "$lease_id" --endpoints "$ALL_ENDPOINTS" --timeout 10s \
    >/dev/null || die "the put of $lease_key with lease $lease_id failed"
raftkv lease keepalive "$lease_id" --endpoints "$ALL_ENDPOINTS" >"$work/keepalive.out" \
    2>"$work/keepalive.err" &
keepalive_pid=$!
log "lease $lease_id (ttl 30s) holds $lease_key, renewed in the background"
sleep "$settle"

# 1. Kill the leader.
read -r leader term_before < <(cluster_leader 1s)
((leader != 0)) || leader=$(wait_leader 10)
before=$(acked_count)
log "fault 1: docker kill node$leader (the leader)"
t_command=$(now_ms)
docker kill "$(cid "$leader")" >/dev/null
t0=$(now_ms)
command_ms=$((t0 - t_command))
ms=$(wait_writable "$(endpoints_except "$leader")" "$t0" 30)
new_leader=$(wait_leader 10)
log "  writes succeed again after $(fmt_ms "$ms"); new leader node$new_leader"
explain_slow_failover "$t_command" "$ms"
if ((ms > max_failover_ms)); then max_failover_ms=$ms; fi
((new_leader != leader)) || die "node$leader was killed but is still reported as the leader"
sleep "$settle"
# The restart policy (unless-stopped) must not have brought it back: a kill is a manual stop.
state=$(node_health "$leader")
[[ $state == exited ]] || warn "node$leader is '$state' after docker kill, expected 'exited'"
record "kill leader" "node$leader" "node$new_leader" "$term_before->$(term_now)" "$(fmt_ms "$ms")" \
    "$(($(acked_count) - before)) writes acked while node$leader was down; docker kill took $(fmt_ms "$command_ms")"

# 2. Restart it.
killed=$leader
term_before=$(term_now)
log "fault 1 repaired: docker start node$killed"
docker start "$(cid "$killed")" >/dev/null
ms=$(wait_caught_up "$killed" 60)
log "  node$killed caught up after $(fmt_ms "$ms") (applied index reached the leader's commit index)"
sleep "$settle"
record "restart killed node" "node$killed" "node$(current_leader)" "$term_before->$(term_now)" "-" \
    "caught up in $(fmt_ms "$ms")"

# 3. Pause a follower.
read -r leader term_before < <(cluster_leader 1s)
((leader != 0)) || leader=$(wait_leader 10)
follower=$((leader % 3 + 1))
before=$(acked_count)
log "fault 2: docker pause node$follower (a follower) for ${settle}s"
docker pause "$(cid "$follower")" >/dev/null
paused_node=$follower
sleep "$settle"
during=$(($(acked_count) - before))
docker unpause "$(cid "$follower")" >/dev/null
paused_node=""
((during > 0)) || die "no write was acknowledged while follower node$follower was paused"
ms=$(wait_caught_up "$follower" 60)
log "  $during writes acknowledged during the pause; node$follower caught up $(fmt_ms "$ms") after unpause"
sleep "$settle"
read -r after_leader term_after < <(cluster_leader 1s)
note="$during writes acked while paused; caught up in $(fmt_ms "$ms")"
if ((term_after != term_before)); then
    # Raft without pre-vote: the resumed follower's election timer has long expired, it
    # campaigns at a higher term, and the leader steps down when it sees that term.
    note+="; its election after unpause deposed the leader"
fi
record "pause follower" "node$follower" "node$after_leader" "$term_before->$term_after" "-" "$note"

# 4. Cut the leader off the network.
read -r leader term_before < <(cluster_leader 1s)
((leader != 0)) || leader=$(wait_leader 10)
network=$(node_network "$leader")
[[ -n $network ]] || die "cannot find node$leader's network"
before=$(acked_count)
log "fault 3: docker network disconnect $network node$leader (the leader)"
t_command=$(now_ms)
docker network disconnect "$network" "$(cid "$leader")"
t0=$(now_ms)
command_ms=$((t0 - t_command))
disconnected_node=$leader
disconnected_network=$network
ms=$(wait_writable "$(endpoints_except "$leader")" "$t0" 30)
new_leader=$(wait_leader 10)
log "  writes succeed again after $(fmt_ms "$ms"); new leader node$new_leader"
explain_slow_failover "$t_command" "$ms"
if ((ms > max_failover_ms)); then max_failover_ms=$ms; fi
sleep "$settle"
during=$(($(acked_count) - before))
record "disconnect leader from network" "node$leader" "node$new_leader" "$term_before->$(term_now)" \
    "$(fmt_ms "$ms")" "$during writes acked while cut off; docker network disconnect took $(fmt_ms "$command_ms")"

term_before=$(term_now)
log "fault 3 repaired: docker network connect --alias node$leader $network node$leader"
docker network connect --alias "node$leader" "$network" "$(cid "$leader")"
disconnected_node=""
ms=$(wait_caught_up "$leader" 60)
# A write sent only to the reconnected node: it must find the leader by its DNS name and
# forward (or lead again); this proves name resolution works both ways after the reconnect.
wait_writable "$(endpoint "$leader")" "$(now_ms)" 30 >/dev/null
log "  node$leader caught up $(fmt_ms "$ms") after reconnecting, and accepts writes again"
sleep "$settle"
record "reconnect node" "node$leader" "node$(current_leader)" "$term_before->$(term_now)" "-" \
    "caught up in $(fmt_ms "$ms"); forwards writes"

# 5. Restart the whole cluster.
term_before=$(term_now)
log "fault 4: restarting the whole cluster (compose stop, then start)"
t_stop=$(now_ms)
compose stop >/dev/null 2>&1
t0=$(now_ms)
compose start >/dev/null 2>&1
ms=$(wait_writable "$ALL_ENDPOINTS" "$t0" 60)
new_leader=$(wait_leader 10)
log "  writes succeed again $(fmt_ms "$ms") after start; leader node$new_leader"
wait_cluster_ready 60
record "restart whole cluster" "all" "node$new_leader" "$term_before->$(term_now)" "$(fmt_ms "$ms")" \
    "from compose start; writes were down $(fmt_ms $((ms + t0 - t_stop))) in all"
sleep "$settle"

# --- verification ---------------------------------------------------------------------------

log "stopping the writer"
touch "$stop_file"
stop_process "$writer_pid" 10
writer_pid=""
stop_process "$monitor_pid" 10
monitor_pid=""

kill -0 "$keepalive_pid" 2>/dev/null ||
    die "raftkv lease keepalive $lease_id ended during the faults: $(tail -n 1 "$work/keepalive.err")"
raftkv get "$lease_key" --endpoints "$ALL_ENDPOINTS" --timeout 10s >/dev/null ||
    die "the key of lease $lease_id, renewed throughout, did not outlive the faults"
kill "$keepalive_pid" 2>/dev/null
wait "$keepalive_pid" 2>/dev/null || true
keepalive_pid=""
renewals=$(grep -c 'kept alive' "$work/keepalive.out" || true)
raftkv lease revoke "$lease_id" --endpoints "$ALL_ENDPOINTS" --timeout 10s >/dev/null ||
    die "raftkv lease revoke $lease_id failed"
code=0
raftkv get "$lease_key" --endpoints "$ALL_ENDPOINTS" --timeout 10s >/dev/null 2>&1 || code=$?
((code == 1)) || die "$lease_key: exit $code after its lease was revoked, expected 1 (not found)"
lease_result="lease $lease_id kept through every fault ($renewals renewals); its key went with the revoke"
log "  $lease_result"

wait_cluster_ready 60
target=""
until target=$(leader_commit); do sleep 0.2; done
applied_at_least() {
    local applied
    applied=$(applied_of "$1")
    [[ -n $applied ]] && ((applied >= $2))
}
for n in "${RAFTKV_NODES[@]}"; do
    wait_for 60 applied_at_least "$n" "$target" ||
        die "node$n did not apply up to the leader's commit index $target within 60s"
done
n_acked=$(acked_count)
n_failed=$(wc -l <"$failed")
log "every node applied the log up to index $target; reading all $n_acked acknowledged keys from each node"

# Reads every "key value" line of file $2 from node $1; writes a line per problem to $3.
verify_chunk() {
    local n=$1 key value got code
    while read -r key value; do
        code=0
        got=$(raftkv get "$key" --stale --endpoints "$(endpoint "$n")" --timeout 3s 2>/dev/null) || code=$?
        if ((code == 1)); then
            echo "node$n $key missing (expected $value)"
        elif ((code != 0)); then
            echo "node$n $key unreadable (exit $code)"
        elif [[ $got != "$value" ]]; then
            echo "node$n $key has '$got', expected '$value'"
        fi
    done <"$2" >"$3"
}

verify_start=$SECONDS
split -n l/4 -d "$acked" "$work/chunk."
pids=()
for n in "${RAFTKV_NODES[@]}"; do
    for chunk in "$work"/chunk.*; do
        verify_chunk "$n" "$chunk" "$work/problems.$n.${chunk##*.}" &
        pids+=($!)
    done
done
wait "${pids[@]}"
cat "$work"/problems.* >"$work/problems"
lost=$(grep -c -v unreadable "$work/problems" || true)
unreadable=$(grep -c unreadable "$work/problems" || true)
log "read $((n_acked * 3)) values in $((SECONDS - verify_start))s"

# From the monitor's samples: how often the leader moved to another node, and how many new
# terms got a leader (an election won; after a full restart the same node may win again).
leader_changes=$(awk '$2 != 0 { if (prev != "" && $2 != prev) changes++; prev = $2 } END { print changes + 0 }' "$leaders")
elections=$(awk '$2 != 0 { terms[$3] = 1 } END { n = 0; for (t in terms) n++; print (n > 0 ? n - 1 : 0) }' "$leaders")
read -r _ final_term < <(cluster_leader 1s)

echo
echo "Faults (leader = leader afterwards; term = before->after; writable = time from the fault"
echo "(once the docker command returned) until a write through the surviving nodes succeeds)"
printf '%-31s %-7s %-7s %-7s %-9s %s\n' "fault" "target" "leader" "term" "writable" "notes"
printf '%s\n' "${faults[@]}"
echo
printf 'Summary\n'
if ((tls)); then
    printf '  %-42s %s\n' "transport" "TLS: client certificates (--client-cert-auth), mutual TLS between nodes"
    printf '  %-42s %s\n' "TLS checks" "$tls_checks"
else
    printf '  %-42s %s\n' "transport" "plaintext"
fi
printf '  %-42s %s\n' "faults injected" "4 (kill leader, pause follower, disconnect leader, restart cluster)"
printf '  %-42s %s\n' "leader changes observed" "$leader_changes to another node; $elections elections won (term $first_term -> $final_term)"
printf '  %-42s %s\n' "time to a new leader serving writes (max)" "$(fmt_ms "$max_failover_ms")"
printf '  %-42s %s\n' "writes acknowledged" "$n_acked"
printf '  %-42s %s\n' "writes failed (outcome unknown)" "$n_failed"
printf '  %-42s %s\n' "acknowledged writes lost" "$lost"
printf '  %-42s %s\n' "acknowledged writes unreadable" "$unreadable"
printf '  %-42s %s\n' "lease (ttl 30s) renewed throughout" "$lease_result"
printf '  %-42s %s\n' "total time" "$((SECONDS - test_start))s"
echo

if ((lost > 0 || unreadable > 0)); then
    head -n 20 "$work/problems" >&2
    die "FAILED: $lost acknowledged writes lost or changed, $unreadable unreadable (details in $work/problems)"
fi
passed=1
log "PASSED: every acknowledged write is on every node"
