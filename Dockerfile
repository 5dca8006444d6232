# raftkv node image: one statically linked binary built on the host, nothing else.
#
# Build the binary first (scripts/cluster-up.sh does both steps):
#
#   RUSTFLAGS='-C target-feature=+crt-static --cfg tokio_unstable' cargo build --release --locked \
#       --target x86_64-unknown-linux-gnu --target-dir target/static
#   docker build -t raftkv:local .
#
# The default base is `scratch`, which needs no registry. With a registry at hand, any base
# works, e.g. `--build-arg BASE=debian:bookworm-slim` for an image with a shell to debug in.
# The binary is static, so it needs nothing from the base image.
ARG BASE=scratch

# An empty /data owned by the runtime user. A named volume mounted there starts as a copy of
# this directory, ownership included, so the non-root node can write to a fresh volume.
# (scratch has no shell for `RUN mkdir`; WORKDIR creates the directory instead.)
FROM scratch AS datadir
WORKDIR /data

FROM ${BASE}
ARG BINARY=target/static/x86_64-unknown-linux-gnu/release/raftkv
COPY ${BINARY} /usr/local/bin/raftkv
COPY --from=datadir --chown=65532:65532 /data /data

# 65532 is the conventional "nonroot" uid/gid; scratch has no /etc/passwd, so it is numeric.
USER 65532:65532

ENV RAFTKV_LISTEN=0.0.0.0:7001 \
    RAFTKV_DATA_DIR=/data \
    RAFTKV_LOG=info

# gRPC for clients (KV, Cluster, health, reflection), the HTTP gateway (when RAFTKV_HTTP_LISTEN
# is set) and the peer port (Raft, forwarding; for the other nodes only).
EXPOSE 7001 8001 9001

# SERVING only when this node is in a cluster that has a leader. Exec form: there is no shell.
HEALTHCHECK --interval=5s --timeout=3s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/raftkv", "health", "--endpoint", "127.0.0.1:7001", "--timeout", "2s"]

# raftkv stops cleanly on SIGTERM, the default stop signal.
ENTRYPOINT ["/usr/local/bin/raftkv"]
CMD ["serve"]
