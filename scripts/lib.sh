# shellcheck shell=bash
# Shared helpers for the Docker scripts in this directory. Source it; do not run it.
#
# Settings (environment):
#   COMPOSE_PROJECT_NAME  compose project of the cluster (default: raftkv)
#   RAFTKV_IMAGE          image tag built and run (default: raftkv:local)
#   RAFTKV_BIN            raftkv binary used as the client on the host
#                         (default: the static build, target/static/…/release/raftkv)
#   RAFTKV_CERTS_DIR      host directory of the TLS variant's certificates (default: certs/docker)

RAFTKV_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RAFTKV_TARGET=x86_64-unknown-linux-gnu
# The Dockerfile and .dockerignore expect the binary exactly here (relative to the repo root).
RAFTKV_STATIC_BIN_REL=target/static/$RAFTKV_TARGET/release/raftkv
RAFTKV_STATIC_BIN=$RAFTKV_ROOT/$RAFTKV_STATIC_BIN_REL
RAFTKV_BIN=${RAFTKV_BIN:-$RAFTKV_STATIC_BIN}
export RAFTKV_IMAGE=${RAFTKV_IMAGE:-raftkv:local}
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-raftkv}
# Node N is service nodeN, Raft id N, gRPC on host port 700N.
RAFTKV_NODES=(1 2 3)
# shellcheck disable=SC2034 # used by the scripts that source this file
ALL_ENDPOINTS=127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003

# --- messages -------------------------------------------------------------------------------

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
warn() { printf '[%s] WARNING: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    printf '[%s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2
    exit 1
}

# Milliseconds since the epoch.
now_ms() { date +%s%3N; }

# Seconds with one decimal, from milliseconds: fmt_ms 1234 -> 1.2s
fmt_ms() {
    local ms=$1
    printf '%d.%ds' $((ms / 1000)) $(((ms % 1000) / 100))
}

# --- docker and compose ---------------------------------------------------------------------

# True when a Docker engine answers.
docker_reachable() {
    command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1
}

# Sets COMPOSE to `docker compose` (v2) or `docker-compose` (v1), whichever exists.
COMPOSE=()
detect_compose() {
    if ((${#COMPOSE[@]})); then
        return 0
    fi
    if docker compose version >/dev/null 2>&1; then
        COMPOSE=(docker compose)
    elif command -v docker-compose >/dev/null 2>&1; then
        COMPOSE=(docker-compose)
    else
        return 1
    fi
}

# The compose files: docker-compose.yml, plus docker-compose.tls.yml once enable_tls ran.
COMPOSE_FILES=("$RAFTKV_ROOT/docker-compose.yml")

# Runs compose on this repository's compose files and project.
compose() {
    detect_compose || die "neither 'docker compose' nor 'docker-compose' is installed"
    local file args=()
    for file in "${COMPOSE_FILES[@]}"; do
        args+=(-f "$file")
    done
    "${COMPOSE[@]}" -p "$COMPOSE_PROJECT_NAME" "${args[@]}" "$@"
}

require_docker() {
    command -v docker >/dev/null 2>&1 || die "docker is not installed"
    docker info >/dev/null 2>&1 || die "cannot reach the Docker engine (is it running? may this user use it?)"
    detect_compose || die "neither 'docker compose' nor 'docker-compose' is installed"
}

# Container id of service nodeN, also when it is stopped (empty when it does not exist).
# --all: Compose v2 lists only running containers without it.
cid() { compose ps --all -q "node$1" 2>/dev/null | awk "NR == 1"; }

# Host endpoint of node N.
endpoint() { printf '127.0.0.1:%d' $((7000 + $1)); }

# Docker health of node N: healthy, unhealthy, starting, or the container state when it has no
# health (e.g. exited, paused), or "missing".
node_health() {
    local id
    id=$(cid "$1")
    [[ -n $id ]] || {
        echo missing
        return
    }
    docker inspect -f '{{if .State.Paused}}paused{{else if .State.Running}}{{if .State.Health}}{{.State.Health.Status}}{{else}}running{{end}}{{else}}{{.State.Status}}{{end}}' "$id" 2>/dev/null || echo missing
}

# The compose network node N is attached to (first one).
node_network() {
    docker inspect -f '{{range $name, $_ := .NetworkSettings.Networks}}{{$name}}{{"\n"}}{{end}}' "$(cid "$1")" | head -n1
}

# --- TLS (the docker-compose.tls.yml variant) -----------------------------------------------

# Where cluster-up.sh --tls writes the certificates (once) and where the host's client reads its
# own from. git-ignored.
RAFTKV_CERTS_DIR=${RAFTKV_CERTS_DIR:-$RAFTKV_ROOT/certs/docker}
[[ $RAFTKV_CERTS_DIR == /* ]] || RAFTKV_CERTS_DIR=$PWD/$RAFTKV_CERTS_DIR
# What goes into the nodes' `certs` volume: everything but the CA's key.
RAFTKV_NODE_CERT_FILES=(ca.pem node1.pem node1-key.pem node2.pem node2-key.pem node3.pem
    node3-key.pem client.pem client-key.pem)
RAFTKV_TLS=0

# Switches this script to the TLS variant: compose also reads docker-compose.tls.yml, and every
# raftkv client call (through RAFTKV_CACERT/RAFTKV_CERT/RAFTKV_KEY) verifies the nodes against
# the CA and presents the client certificate.
enable_tls() {
    RAFTKV_TLS=1
    COMPOSE_FILES=("$RAFTKV_ROOT/docker-compose.yml" "$RAFTKV_ROOT/docker-compose.tls.yml")
    export RAFTKV_CACERT=$RAFTKV_CERTS_DIR/ca.pem
    export RAFTKV_CERT=$RAFTKV_CERTS_DIR/client.pem
    export RAFTKV_KEY=$RAFTKV_CERTS_DIR/client-key.pem
    certs_id
}

# Exports RAFTKV_CERTS_ID, a digest of ca.pem that docker-compose.tls.yml puts in a label, so
# that new certificates make `compose up` recreate the nodes.
certs_id() {
    if [[ -f $RAFTKV_CERTS_DIR/ca.pem ]]; then
        RAFTKV_CERTS_ID=$(sha256sum "$RAFTKV_CERTS_DIR/ca.pem" | cut -c1-16)
        export RAFTKV_CERTS_ID
    fi
}

# Writes the certificates with `raftkv certs init` unless they are there already.
ensure_certs() {
    local dir=$RAFTKV_CERTS_DIR file missing=()
    if [[ ! -e $dir/ca.pem ]]; then
        log "writing certificates to $dir (raftkv certs init; kept for later runs)"
        raftkv certs init "$dir" --nodes 3 --hosts 127.0.0.1,localhost,node1,node2,node3 >/dev/null ||
            die "raftkv certs init $dir failed"
    fi
    for file in "${RAFTKV_NODE_CERT_FILES[@]}"; do
        [[ -f $dir/$file ]] || missing+=("$file")
    done
    ((${#missing[@]} == 0)) ||
        die "$dir has ca.pem but lacks ${missing[*]}; delete the directory to have it written anew"
    certs_id
}

# Copies the node and client certificates into the `certs` volume of the created (not
# necessarily started) node containers, owned by the node's uid/gid 65532 with their modes
# (keys 0600): a tar stream whose entries name that owner, unpacked by `docker cp -` into a
# container that mounts the volume read-write and is never started (scratch has no cp or tar).
# Works as any user and under rootless Docker; see docker-compose.tls.yml for why.
fill_certs_volume() {
    local volume helper status=0
    volume=$(docker inspect -f '{{range .Mounts}}{{if eq .Destination "/certs"}}{{.Name}}{{end}}{{end}}' "$(cid 1)")
    [[ -n $volume ]] || die "node1 has no volume on /certs; was the cluster created with docker-compose.tls.yml?"
    helper=$(docker create -v "$volume:/certs" "$RAFTKV_IMAGE") || die "cannot create a container to fill volume $volume"
    tar -C "$RAFTKV_CERTS_DIR" --owner=65532 --group=65532 --numeric-owner -cf - \
        "${RAFTKV_NODE_CERT_FILES[@]}" | docker cp - "$helper:/certs" || status=$?
    docker rm "$helper" >/dev/null || warn "could not remove the helper container $helper"
    ((status == 0)) || die "could not copy the certificates into volume $volume"
    log "copied the certificates into volume $volume (owner 65532)"
}

# "tls" or "plaintext": how the existing node1 container was created; "none" without one.
cluster_transport() {
    local id
    id=$(cid 1)
    if [[ -z $id ]]; then
        echo none
    elif [[ $(docker inspect -f '{{index .Config.Labels "io.raftkv.tls"}}' "$id" 2>/dev/null) == true ]]; then
        echo tls
    else
        echo plaintext
    fi
}

# True when this project has TLS containers or a certs volume (which only the TLS variant has).
tls_resources_exist() {
    [[ $(cluster_transport) == tls ]] ||
        [[ -n $(docker volume ls -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" \
            --filter "label=com.docker.compose.volume=certs") ]]
}

# --- building -------------------------------------------------------------------------------

# Builds the statically linked raftkv the image is made of (and the scripts use as client).
build_binary() {
    command -v cargo >/dev/null 2>&1 || die "cargo is not installed; it is needed to build the binary"
    log "building the static binary ($RAFTKV_STATIC_BIN_REL)"
    (
        cd "$RAFTKV_ROOT"
        RUSTFLAGS='-C target-feature=+crt-static --cfg tokio_unstable' nice -n 10 cargo build --release --locked \
            --target "$RAFTKV_TARGET" --target-dir target/static
    ) || die "cargo build of the static binary failed"
    if command -v ldd >/dev/null 2>&1 && ldd "$RAFTKV_STATIC_BIN" >/dev/null 2>&1; then
        # ldd succeeds on a dynamically linked program (and on static-pie: "statically linked").
        ldd "$RAFTKV_STATIC_BIN" 2>&1 | grep -q 'statically linked' ||
            die "$RAFTKV_STATIC_BIN is dynamically linked; it would not run in a scratch image"
    fi
}

# Builds the image from the static binary.
build_image() {
    [[ -x $RAFTKV_STATIC_BIN ]] || die "$RAFTKV_STATIC_BIN is missing; build the binary first"
    log "building image $RAFTKV_IMAGE"
    docker build --quiet -t "$RAFTKV_IMAGE" "$RAFTKV_ROOT" >/dev/null ||
        die "docker build of $RAFTKV_IMAGE failed"
}

# --- talking to the cluster -----------------------------------------------------------------

raftkv() {
    [[ -x $RAFTKV_BIN ]] || die "$RAFTKV_BIN is missing; run scripts/cluster-up.sh (it builds it) or set RAFTKV_BIN"
    "$RAFTKV_BIN" "$@"
}

# One node's view, as "leader term commit applied role" (leader 0 = none known).
# Fails when the node does not answer within the timeout (default 1s).
node_summary() {
    local out
    out=$(raftkv status --endpoints "$(endpoint "$1")" --timeout "${2:-1s}" 2>/dev/null) || return 1
    awk '
        /^leader:/        { leader = ($2 == "none") ? 0 : $2 }
        /^term:/          { term = $2 }
        /^commit index:/  { commit = $3 }
        /^applied index:/ { applied = $3 }
        /^role:/          { role = $2 }
        END { print leader + 0, term + 0, commit + 0, applied + 0, role }' <<<"$out"
}

# The leader as "leader term": what the answering node with the highest term reports, asking
# all nodes at once (a paused or cut-off node only costs its timeout). "0 0" when none knows.
cluster_leader() {
    local dir n best_term=-1 best_leader=0 leader term _ pids=()
    dir=$(mktemp -d)
    for n in "${RAFTKV_NODES[@]}"; do
        node_summary "$n" "${1:-1s}" >"$dir/$n" 2>/dev/null &
        pids+=($!)
    done
    # Only these jobs: a caller may have other background jobs running.
    wait "${pids[@]}" || true
    for n in "${RAFTKV_NODES[@]}"; do
        read -r leader term _ <"$dir/$n" 2>/dev/null || continue
        if ((leader != 0 && term > best_term)); then
            best_term=$term
            best_leader=$leader
        fi
    done
    rm -rf "$dir"
    if ((best_leader == 0)); then
        echo "0 0"
    else
        echo "$best_leader $best_term"
    fi
}

# Polls `"$@"` every 0.2–1s until it succeeds or `timeout_s` have passed. Returns 1 on timeout.
wait_for() {
    local timeout_s=$1
    shift
    local deadline=$((SECONDS + timeout_s)) pause=0.2
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep "$pause"
        pause=$([[ $pause == 0.2 ]] && echo 0.5 || echo 1)
    done
}

# True when every node is a healthy container and all answering nodes agree on one leader.
cluster_ready() {
    local n leader first=""
    for n in "${RAFTKV_NODES[@]}"; do
        [[ $(node_health "$n") == healthy ]] || return 1
    done
    for n in "${RAFTKV_NODES[@]}"; do
        read -r leader _ < <(node_summary "$n") || return 1
        ((leader != 0)) || return 1
        [[ -z $first || $first == "$leader" ]] || return 1
        first=$leader
    done
}

# Waits (bounded) for cluster_ready; dies with the nodes' states when it does not happen.
wait_cluster_ready() {
    local timeout_s=${1:-90} n
    if ! wait_for "$timeout_s" cluster_ready; then
        for n in "${RAFTKV_NODES[@]}"; do
            warn "node$n: container $(node_health "$n"), status: $(node_summary "$n" || echo 'no answer')"
        done
        die "the cluster was not ready (3 healthy nodes agreeing on a leader) within ${timeout_s}s"
    fi
}

print_endpoints() {
    local n
    if ((RAFTKV_TLS)); then
        echo "gRPC endpoints (TLS; a client certificate signed by ${RAFTKV_CACERT#"$RAFTKV_ROOT"/} is required):"
    else
        echo "gRPC endpoints (plaintext):"
    fi
    for n in "${RAFTKV_NODES[@]}"; do
        printf '  node%d  %s\n' "$n" "$(endpoint "$n")"
    done
}
