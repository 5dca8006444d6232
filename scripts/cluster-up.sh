#!/usr/bin/env bash
# Builds raftkv (static binary + image) and starts the three-node Docker Compose cluster.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/cluster-up.sh [--tls] [--no-build] [--timeout SECONDS]

Builds the statically linked raftkv binary (target/static/…), builds the image raftkv:local
from it, starts node1-node3 with Docker Compose, and waits until all three containers are
healthy and agree on a leader. Then prints the endpoints (127.0.0.1:7001-7003).

With --tls it starts the TLS variant (docker-compose.yml + docker-compose.tls.yml): client TLS
with --client-cert-auth, mutual TLS between the nodes, and the HTTP gateway (no TLS in this
version) on each container's loopback only. On first use it writes a CA and certificates for
node1-3, 127.0.0.1 and localhost with `raftkv certs init` into certs/docker/
(RAFTKV_CERTS_DIR), then copies them into the nodes' `certs` volume. Clients on the host
connect with --cacert certs/docker/ca.pem --cert certs/docker/client.pem
--key certs/docker/client-key.pem.

Re-running is safe: an up-to-date cluster is left as it is, changed nodes are recreated (also
when switching between plaintext and --tls), and the data in the named volumes is kept
(scripts/cluster-down.sh --volumes wipes it).

Options:
  --tls              start the TLS variant (see above)
  --no-build         use the existing image (and binary) instead of building them
  --timeout SECONDS  how long to wait for a healthy cluster with a leader (default 90)
  -h, --help         show this help

Environment: COMPOSE_PROJECT_NAME (default raftkv), RAFTKV_IMAGE (default raftkv:local),
RAFTKV_PUBLISH_ADDR (host address the ports are published on, default 127.0.0.1),
RAFTKV_CERTS_DIR (certificates of --tls, default certs/docker).
EOF
}

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

build=1
timeout_s=90
tls=0
while (($#)); do
    case $1 in
    --tls) tls=1 ;;
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
variant=""
if ((tls)); then
    enable_tls
    variant=", TLS variant (${COMPOSE_FILES[*]##*/})"
fi
log "using compose: ${COMPOSE[*]}, project $COMPOSE_PROJECT_NAME$variant"

if ((build)); then
    build_binary
    build_image
elif ! docker image inspect "$RAFTKV_IMAGE" >/dev/null 2>&1; then
    die "--no-build given but image $RAFTKV_IMAGE does not exist"
fi

if ((tls)); then
    ensure_certs
    # Create the containers and their volumes first, so the certificates are in the `certs`
    # volume before any node starts (and reads them).
    compose up --no-start --no-build >/dev/null
    fill_certs_volume
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
# Paths as they work from the repository root.
shown() { printf '%s' "${1#"$RAFTKV_ROOT"/}"; }
bin=$(shown "$RAFTKV_BIN")
if ((tls)); then
    cli_tls=" --cacert $(shown "$RAFTKV_CACERT") --cert $(shown "$RAFTKV_CERT") --key $(shown "$RAFTKV_KEY")"
    grpcurl_tls="-cacert $(shown "$RAFTKV_CACERT") -cert $(shown "$RAFTKV_CERT") -key $(shown "$RAFTKV_KEY")"
    demo=" --tls"
else
    cli_tls=""
    grpcurl_tls="-plaintext"
    demo=""
fi
cat <<EOF

Try:
  $bin put hello world --endpoints $ALL_ENDPOINTS$cli_tls
  $bin status --endpoints 127.0.0.1:7001$cli_tls
  grpcurl $grpcurl_tls 127.0.0.1:7001 list
  scripts/grpcurl-demo.sh$demo
Stop:  scripts/cluster-down.sh            (keeps data)
       scripts/cluster-down.sh --volumes  (wipes data)
EOF
