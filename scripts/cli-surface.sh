#!/usr/bin/env bash
# Prints the CLI's user-facing surface: every command's --help and a set of error cases, each
# with its exit code. Run it with two binaries and diff the outputs to show that a change left
# the surface alone:
#
#   scripts/cli-surface.sh target/debug/raftkv > /tmp/after.txt
#   diff /tmp/before.txt /tmp/after.txt
#
# Talks only to 127.0.0.1:1 (nothing listens there), so client errors are "unavailable".
set -u
bin=$(realpath "${1:?usage: cli-surface.sh PATH/TO/raftkv}")
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

run() {
    echo "\$ raftkv $*" | sed "s#$scratch#SCRATCH#g"
    # Log lines lose their timestamps so that two runs compare equal.
    (cd "$scratch" && RAFTKV_ENDPOINTS=127.0.0.1:1 RAFTKV_TIMEOUT=300ms \
        timeout 10 "$bin" "$@" 2>&1) | sed -E 's/^[0-9T:.-]+Z +//; s#'"$scratch"'#SCRATCH#g'
    echo "[exit ${PIPESTATUS[0]}]"
    echo
}

run --help
run --version
for cmd in serve playground put get del scan cas metrics status health bench cluster; do
    run "$cmd" --help
done
for sub in status add-learner promote remove snapshot; do
    run cluster "$sub" --help
done

# Usage errors.
run frobnicate
run put
run get
run put k v --ttl soon
run get k --timeout forever
run scan --prefix a --from b
run cas k --expect-revision x new
run serve --id 0 --listen 127.0.0.1:0 --data-dir "$scratch/d0"
run serve --id 1 --listen nonsense --data-dir "$scratch/d1"
run serve --id 1 --listen 127.0.0.1:0 --data-dir "$scratch/d2" --initial-cluster 1=
run serve --id 1 --listen 127.0.0.1:0 --data-dir "$scratch/d3" --worker-threads 0
echo "not a directory" > "$scratch/file"
run serve --id 1 --listen 127.0.0.1:0 --data-dir "$scratch/file"
run bench --duration 0s

# Unreachable cluster.
run put k v
run get k
run del k
run metrics
run status
run health --endpoint 127.0.0.1:1
