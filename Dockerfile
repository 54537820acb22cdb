# syntax=docker/dockerfile:1
# Tandem's runtime image: the sidecar (also reachable as /daprd), `tandem injector` and
# `tandem operator`, in one small non-root image.
#
#   docker build -t ghcr.io/tandem-runtime/tandem:0.1.0 .

# --- build -------------------------------------------------------------------------------------
# The rust image carries gcc, make, perl, pkg-config, libssl-dev and zlib1g-dev, which the
# bundled librdkafka (pubsub.kafka) needs.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tandem \
 && mkdir -p /out \
 && cp target/release/tandem /out/tandem \
 && ln -s tandem /out/daprd

# --- runtime -----------------------------------------------------------------------------------
# Debian slim: glibc plus the shared libraries the binary links (libssl3, zlib); CA
# certificates for TLS to backends.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl3 zlib1g ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /
# A numeric non-root user, so Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 3500 50001 50002 9090
ENTRYPOINT ["/tandem"]
CMD ["sidecar"]
