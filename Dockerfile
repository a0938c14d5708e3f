# syntax=docker/dockerfile:1
# The phxkv image: both binaries, phxkv (the server and its client commands)
# and phxkv-operator, on a distroless base, as an unprivileged user. The Helm
# chart runs the operator from it, and the operator runs every PaxosKV's pods
# from it.
#
#   docker build -t ghcr.io/phxkv/phxkv:dev .
#   docker run --rm ghcr.io/phxkv/phxkv:dev dev --ephemeral
#
# CI does not build it: its machines have no container engine. Keep it
# plain and standard.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the crate registry and the target directory between
# builds on the same builder; the binaries are copied out of the latter.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
        -p phxkv-server --bin phxkv \
        -p phxkv-operator --bin phxkv-operator \
 && mkdir -p /out/bin /out/data \
 && cp target/release/phxkv target/release/phxkv-operator /out/bin/

# glibc and libgcc, CA certificates, a nonroot user (65532), no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="phxkv" \
      org.opencontainers.image.description="A strongly consistent key-value store on Multi-Paxos, and its Kubernetes operator" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/bin/ /usr/local/bin/
# Created here, owned by the runtime user, so that a volume mounted on it
# starts out writable (in Kubernetes the pod's fsGroup sees to that).
COPY --from=build --chown=65532:65532 /out/data /var/lib/phxkv
ENV PHXKV_DATA_DIR=/var/lib/phxkv
USER 65532:65532
WORKDIR /var/lib/phxkv
VOLUME ["/var/lib/phxkv"]
# 8080: client API, /healthz, /readyz, /metrics; 8081: peers;
# 9090: the operator's /metrics, /healthz, /readyz.
EXPOSE 8080 8081 9090
ENTRYPOINT ["/usr/local/bin/phxkv"]
CMD ["--help"]
