# One image with both binaries, pgtrail-processor and pgtrail-shipper.
#   docker build -t pgtrail:0.1.0 .
# Runs as the numeric user 65532 (the Helm chart's securityContext.runAsUser) with a read-only
# root: the binaries write only their state directory (shipper) and /tmp (object-store
# uploads), both volumes in the chart. No shell or package manager is used at run time.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
      libssl-dev libsasl2-dev libcurl4-openssl-dev pkg-config zlib1g-dev cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p processor -p shipper \
    && install -D -m 0755 target/release/pgtrail-processor /out/usr/bin/pgtrail-processor \
    && install -D -m 0755 target/release/pgtrail-shipper /out/usr/bin/pgtrail-shipper

FROM debian:bookworm-slim
# The shared libraries rdkafka links (OpenSSL, Cyrus SASL for GSSAPI, curl for OIDC) and the
# CA certificates for TLS to brokers, registries and object stores.
RUN apt-get update && apt-get install -y --no-install-recommends \
      ca-certificates libssl3 libsasl2-2 libsasl2-modules-gssapi-mit libcurl4 \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o 65532 -g 65532 -m 0750 /var/lib/pgtrail-shipper
COPY --from=build /out/ /
USER 65532:65532
ENTRYPOINT ["pgtrail-processor"]
CMD ["--help"]
