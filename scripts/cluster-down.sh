#!/usr/bin/env bash
# Stops the Docker Compose cluster and removes its containers and network.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/cluster-down.sh [--volumes]

Stops node1-node3 (SIGTERM, so each node shuts down cleanly) and removes their containers and
the compose network. The data volumes are kept, so the next scripts/cluster-up.sh resumes with
the same data, unless --volumes is given.

Works for both variants: when the project has TLS containers or a certs volume (from
scripts/cluster-up.sh --tls), docker-compose.tls.yml is included, so that --volumes deletes the
certs volume too. The certificates on the host (certs/docker/) are never deleted.

Options:
  -v, --volumes  also delete the named volumes: data (all stored keys are lost) and certs
  -h, --help     show this help
EOF
}

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

args=(down --remove-orphans)
while (($#)); do
    case $1 in
    -v | --volumes) args+=(--volumes) ;;
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
variant=""
if tls_resources_exist; then
    enable_tls
    variant=" (TLS variant)"
fi
# A paused container cannot be stopped; unpause any first (the failover test pauses nodes).
for n in "${RAFTKV_NODES[@]}"; do
    if [[ $(node_health "$n") == paused ]]; then
        log "unpausing node$n"
        docker unpause "$(cid "$n")" >/dev/null || true
    fi
done
log "stopping the cluster (project $COMPOSE_PROJECT_NAME)$variant${args[2]:+, deleting its volumes}"
compose "${args[@]}"
log "cluster down"
