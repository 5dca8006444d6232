#!/usr/bin/env bash
# Builds raftkv (static binary + image) and starts the three-node Docker Compose cluster.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/cluster-up.sh [--no-build] [--timeout SECONDS]

Builds the statically linked raftkv binary (target/static/…), builds the image raftkv:local
from it, starts node1-node3 with Docker Compose, and waits until all three containers are
healthy and agree on a leader. Then prints the endpoints (127.0.0.1:7001-7003).

Re-running is safe: an up-to-date cluster is left as it is, changed nodes are recreated, and
the data in the named volumes is kept (scripts/cluster-down.sh --volumes wipes it).

Options:
  --no-build         use the existing image (and binary) instead of building them
  --timeout SECONDS  how long to wait for a healthy cluster with a leader (default 90)
  -h, --help         show this help

Environment: COMPOSE_PROJECT_NAME (default raftkv), RAFTKV_IMAGE (default raftkv:local),
RAFTKV_PUBLISH_ADDR (host address the ports are published on, default 127.0.0.1).
EOF
}

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

build=1
timeout_s=90
while (($#)); do
    case $1 in
    --no-build) build=0 ;;
    --timeout)
        [[ ${2:-} =~ ^[0-9]+$ ]] || die "--timeout needs a number of seconds"
        timeout_s=$2
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
log "using compose: ${COMPOSE[*]}, project $COMPOSE_PROJECT_NAME"

if ((build)); then
    build_binary
    build_image
elif ! docker image inspect "$RAFTKV_IMAGE" >/dev/null 2>&1; then
    die "--no-build given but image $RAFTKV_IMAGE does not exist"
fi

log "starting node1, node2, node3"
compose up -d --no-build >/dev/null

log "waiting (up to ${timeout_s}s) for three healthy nodes and a leader"
started=$SECONDS
wait_cluster_ready "$timeout_s"
read -r leader term < <(cluster_leader 1s)
log "cluster ready after $((SECONDS - started))s: leader node$leader (term $term)"

echo
print_endpoints
RAFTKV_BIN_SHOWN=${RAFTKV_BIN#"$RAFTKV_ROOT"/}
cat <<EOF

Try:
  $RAFTKV_BIN_SHOWN put hello world --endpoints $ALL_ENDPOINTS
  $RAFTKV_BIN_SHOWN status --endpoints 127.0.0.1:7001
  grpcurl -plaintext 127.0.0.1:7001 list
Stop:  scripts/cluster-down.sh            (keeps data)
       scripts/cluster-down.sh --volumes  (wipes data)
EOF
