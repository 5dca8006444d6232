#!/usr/bin/env bash
# CI step: build the image and run the failover test (plaintext, then TLS), or skip plainly when
# there is no Docker.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/ci-docker.sh [--remove-image]

When a Docker engine is reachable (`docker info`) and Compose is installed: builds the static
binary and the image raftkv:local, then runs scripts/failover-test.sh twice, each time against
a fresh cluster that the test starts and removes, volumes included: first the plaintext one,
then the TLS variant (--tls: client certificates, mutual TLS between the nodes; certificates in
certs/docker/, written on first use). Any cluster left over from an earlier run of this project
is removed first, between the two runs, and again at the end.

When no engine is reachable, or Compose is missing, prints that the Docker step is skipped and
exits 0; set RAFTKV_REQUIRE_DOCKER=1 to make that an error instead.

Options:
  --remove-image  also delete the image raftkv:local at the end
  -h, --help      show this help
EOF
}

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

remove_image=0
while (($#)); do
    case $1 in
    --remove-image) remove_image=1 ;;
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

skip() {
    if [[ ${RAFTKV_REQUIRE_DOCKER:-0} == 1 ]]; then
        die "$1, and RAFTKV_REQUIRE_DOCKER=1"
    fi
    echo "SKIPPED: Docker step (image build + failover test): $1."
    exit 0
}

command -v docker >/dev/null 2>&1 || skip "docker is not installed"
docker info >/dev/null 2>&1 || skip "no Docker engine is reachable (docker info failed)"
detect_compose || skip "neither 'docker compose' nor 'docker-compose' is installed"
command -v cargo >/dev/null 2>&1 || die "cargo is not installed; it is needed to build the binary"

cleanup() {
    local status=$?
    set +e
    "$RAFTKV_ROOT/scripts/cluster-down.sh" --volumes >/dev/null 2>&1 ||
        warn "could not remove the cluster (project $COMPOSE_PROJECT_NAME)"
    if ((remove_image)); then
        docker image rm "$RAFTKV_IMAGE" >/dev/null 2>&1
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

started=$SECONDS
log "Docker step: engine $(docker version -f '{{.Server.Version}}' 2>/dev/null), compose: ${COMPOSE[*]}"
# A clean slate: the failover test must start (and then remove) its own cluster.
"$RAFTKV_ROOT/scripts/cluster-down.sh" --volumes >/dev/null 2>&1 || true
build_binary
build_image
log "failover test, plaintext"
t=$SECONDS
"$RAFTKV_ROOT/scripts/failover-test.sh" --no-build
plaintext_s=$((SECONDS - t))
"$RAFTKV_ROOT/scripts/cluster-down.sh" --volumes >/dev/null 2>&1 || true
log "failover test, TLS"
t=$SECONDS
"$RAFTKV_ROOT/scripts/failover-test.sh" --no-build --tls
tls_s=$((SECONDS - t))
log "Docker step passed in $((SECONDS - started))s (failover test: plaintext ${plaintext_s}s, TLS ${tls_s}s)"
