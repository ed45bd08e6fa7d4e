# syntax=docker/dockerfile:1
#
# The imagemap-webhook image, for those with a container engine:
#
#   docker build -t ghcr.io/imagemap/imagemap-webhook:0.1.0 .
#
# `make image` (scripts/image.sh) builds and pushes the same image without an engine, and is
# the reference build: its digest is reproducible. This file is not built by the project's
# tests or CI, which have no container engine; tests/tests/dockerfile.rs replays its COPY lines
# into a temporary folder and checks that the workspace resolves there and that the final
# stage has the user, port and entrypoint of the script's image.
#
# Both build the binary with `scripts/image.sh binary`: x86_64 glibc, statically linked
# (`-C target-feature=+crt-static`), the release profile (fat LTO), paths remapped to /src and
# /cargo. glibc's allocator is the one every benchmark measured; musl's was slower (see
# docs/decisions.md). The binary needs no file from the image: it goes into an empty image, at
# /usr/local/bin/imagemap-webhook, run as 65532:65532 (the chart's user), with no shell. rustls
# with ring does all TLS: no OpenSSL. The chart runs it with a read-only root file system; it
# writes nothing to disk. linux/amd64 only.
#
# The digest differs from the script's (the engine writes its own time stamps and config), and
# the binary's bytes match only with the same toolchain and the same Debian glibc.

# The toolchain the project is tested with (the workspace's rust-version is the minimum).
ARG RUST_VERSION=1.95

# Debian 12 (bookworm): its glibc (2.36) is what the binary is linked with where `make image` runs.
FROM --platform=linux/amd64 rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# Every workspace member (cargo resolves the whole workspace even to build one package), the
# lock file, and the script that holds the build flags. Not target/ or .git.
COPY Cargo.toml Cargo.lock ./
COPY webhook webhook
COPY kubectl-imagemap kubectl-imagemap
COPY certs certs
COPY tests tests
COPY bench bench
COPY scripts/image.sh scripts/build-env.sh scripts/
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    bash scripts/image.sh binary >/tmp/binary-path \
 && install -D -m 0755 "$(cat /tmp/binary-path)" /out/imagemap-webhook

FROM --platform=linux/amd64 scratch
COPY --from=build /out/imagemap-webhook /usr/local/bin/imagemap-webhook
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["/usr/local/bin/imagemap-webhook"]
