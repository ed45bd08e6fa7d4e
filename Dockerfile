# syntax=docker/dockerfile:1
#
# The imagemap-webhook image: a static binary on distroless, running as the nonroot user.
#
#   docker build -t ghcr.io/imagemap/imagemap-webhook:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 -t ... --push .
#
# The binary is built on Alpine, whose Rust targets musl and links statically by default
# (crt-static), so no libc is needed at run time and host names resolve without NSS modules.
# rustls with ring does all TLS: no OpenSSL. The chart runs it as user 65532 with a read-only
# root file system; it writes nothing to disk.

# The toolchain the project is tested with (the workspace's rust-version is the minimum).
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-alpine AS build
# ring's C and assembly parts need a C toolchain and the musl headers.
RUN apk add --no-cache musl-dev
WORKDIR /src
# Only what the workspace needs to resolve and build (not target/ or .git).
COPY Cargo.toml Cargo.lock ./
COPY webhook webhook
COPY kubectl-imagemap kubectl-imagemap
COPY certs certs
COPY tests tests
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p imagemap-webhook --bin imagemap-webhook \
 && install -D -m 0755 target/release/imagemap-webhook /out/imagemap-webhook

FROM gcr.io/distroless/static:nonroot
COPY --from=build /out/imagemap-webhook /usr/local/bin/imagemap-webhook
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["/usr/local/bin/imagemap-webhook"]
