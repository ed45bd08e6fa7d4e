#!/usr/bin/env bash
# `make image`: the imagemap-webhook container image, built and pushed without a container engine.
#
#   scripts/image.sh                 # build the binary, assemble the image, push it
#   scripts/image.sh layout DIR      # the same image as an OCI layout in DIR, not pushed
#   scripts/image.sh binary          # only build the binary; prints its path (bench.sh, Dockerfile)
#
#   REGISTRY  where to push (default localhost:5000)
#   IMAGE     repository name (default imagemap-webhook)
#   TAG       tag (default: the workspace version in Cargo.toml)
#   CRANE     the crane binary (default: crane in the folder scripts/tools.sh prints,
#             else crane on PATH); CRANE_FLAGS: extra flags for `crane push`, e.g. --insecure
#   SOURCE_DATE_EPOCH  time stamp of the image and its files (default 0)
#   PLATFORM  amd64 (default) or arm64: the image's architecture; arm64 cross-builds a static
#             glibc aarch64-unknown-linux-gnu binary with aarch64-linux-gnu-gcc (Debian's
#             gcc-aarch64-linux-gnu and libc6-dev-arm64-cross; AARCH64_CC overrides the compiler)
#   IMAGEMAP_VERSION  the image's org.opencontainers.image.version (default: the workspace version)
#   IMAGEMAP_WEBHOOK_BINARY  package this binary instead of building one
#
# The image: one layer holding /usr/local/bin/imagemap-webhook (a statically linked glibc build,
# see docs/decisions.md), run as 65532:65532, entrypoint the binary, port 8443, linux/amd64 (or PLATFORM). No
# shell or other file. The same source and toolchain give the same digest: the binary is built
# with its paths remapped (/src, /cargo), the layer is a sorted tar with fixed times, owners and
# modes, gzip without a name or time, and the config and manifest are written here, byte for byte.
# crane pushes the OCI layout as is. Prints the image size, then REGISTRY/IMAGE:TAG@sha256:...
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/build-env.sh

CARGO=${CARGO:-cargo}
REGISTRY=${REGISTRY:-localhost:5000}
IMAGE=${IMAGE:-imagemap-webhook}
VERSION=$(sed -n '/^\[workspace\.package\]/,/^\[/ s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
TAG=${TAG:-$VERSION}
VERSION=${IMAGEMAP_VERSION:-$VERSION}
EPOCH=${SOURCE_DATE_EPOCH:-0}
# Static glibc: the allocator the benchmarks measured, and nothing to carry at run time.
PLATFORM=${PLATFORM:-amd64}
case "$PLATFORM" in
  amd64) TARGET=x86_64-unknown-linux-gnu ;;
  arm64) TARGET=aarch64-unknown-linux-gnu ;;
  *) printf 'image: PLATFORM must be amd64 or arm64, not %s\n' "$PLATFORM" >&2; exit 1 ;;
esac
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN_PATH=/usr/local/bin/imagemap-webhook

log() { printf 'image: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# Builds the release binary (Cargo.toml's profile: fat LTO, one codegen unit) and prints its path,
# in the environment scripts/build-env.sh sets (the plugin's release build uses the same).
build_binary() {
  (
    # shellcheck disable=SC2119 # no flags beyond the shared ones
    release_build_env
    if [ "$TARGET" = aarch64-unknown-linux-gnu ]; then
      local cc=${AARCH64_CC:-aarch64-linux-gnu-gcc}
      command -v "$cc" >/dev/null || die "no $cc: apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
      export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=$cc CC_aarch64_unknown_linux_gnu=$cc
    fi
    "$CARGO" build --release --locked -p imagemap-webhook --bin imagemap-webhook --target "$TARGET" >&2
  )
  printf '%s\n' "$TARGET_DIR/$TARGET/release/imagemap-webhook"
}

sha256() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

# Writes the OCI layout of the image for binary $1 into folder $2; prints the manifest digest.
assemble() {
  local binary=$1 layout=$2 stage=$WORK/stage
  [ -f "$binary" ] || die "no binary at $binary"
  rm -rf "$stage"
  install -d -m 0755 "$stage/root${BIN_PATH%/*}"
  install -m 0755 "$binary" "$stage/root$BIN_PATH"
  tar --create --file "$stage/layer.tar" --directory "$stage/root" --format=gnu --sort=name \
    --mtime="@$EPOCH" --owner=0 --group=0 --numeric-owner --mode='u=rwX,go=rX' usr
  gzip -9 -n -c "$stage/layer.tar" >"$stage/layer.tar.gz"

  local created diff_id layer layer_size config config_size manifest manifest_size
  created=$(date -u -d "@$EPOCH" +%Y-%m-%dT%H:%M:%SZ)
  diff_id=$(sha256 "$stage/layer.tar")
  layer=$(sha256 "$stage/layer.tar.gz")
  layer_size=$(size "$stage/layer.tar.gz")
  jq -cnj --arg arch "$PLATFORM" --arg created "$created" --arg bin "$BIN_PATH" --arg version "$VERSION" \
    --arg diff_id "sha256:$diff_id" '{
      architecture: $arch, os: "linux", created: $created,
      config: {User: "65532:65532", ExposedPorts: {"8443/tcp": {}}, Entrypoint: [$bin], WorkingDir: "/",
               Labels: {"org.opencontainers.image.title": "imagemap-webhook", "org.opencontainers.image.version": $version}},
      rootfs: {type: "layers", diff_ids: [$diff_id]},
      history: [{created: $created, created_by: "scripts/image.sh"}]}' >"$stage/config.json"
  config=$(sha256 "$stage/config.json")
  config_size=$(size "$stage/config.json")
  jq -cnj --arg config "sha256:$config" --argjson config_size "$config_size" --arg layer "sha256:$layer" \
    --argjson layer_size "$layer_size" '{
      schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
      config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $config, size: $config_size},
      layers: [{mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: $layer, size: $layer_size}]}' \
    >"$stage/manifest.json"
  manifest=$(sha256 "$stage/manifest.json")
  manifest_size=$(size "$stage/manifest.json")

  rm -rf "$layout"
  mkdir -p "$layout/blobs/sha256"
  mv "$stage/layer.tar.gz" "$layout/blobs/sha256/$layer"
  mv "$stage/config.json" "$layout/blobs/sha256/$config"
  mv "$stage/manifest.json" "$layout/blobs/sha256/$manifest"
  jq -cnj '{imageLayoutVersion: "1.0.0"}' >"$layout/oci-layout"
  jq -cnj --arg digest "sha256:$manifest" --argjson size "$manifest_size" --arg arch "$PLATFORM" '{
      schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json",
      manifests: [{mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $digest, size: $size,
                   platform: {architecture: $arch, os: "linux"}}]}' >"$layout/index.json"

  awk -v c="$layer_size" -v u="$(size "$stage/layer.tar")" -v b="$(size "$binary")" 'BEGIN {
    printf "size: %.1f MiB compressed (%d bytes), %.1f MiB uncompressed; binary %d bytes\n", c / 1048576, c, u / 1048576, b }'
  rm -rf "$stage"
  printf 'sha256:%s\n' "$manifest"
}

# crane: $CRANE, else the control-plane bin folder, else PATH.
find_crane() {
  if [ -n "${CRANE:-}" ]; then
    [ -x "$CRANE" ] || die "CRANE=$CRANE is not executable"
    printf '%s\n' "$CRANE"
    return
  fi
  local dir
  dir=$(bash scripts/tools.sh) || dir=
  if [ -n "$dir" ] && [ -x "$dir/crane" ]; then
    printf '%s\n' "$dir/crane"
  elif command -v crane >/dev/null; then
    command -v crane
  else
    die "crane not found: set CRANE, or: GOBIN=/tmp/crane-bin go install github.com/google/go-containerregistry/cmd/crane@v0.22.1"
  fi
}

binary() {
  if [ -n "${IMAGEMAP_WEBHOOK_BINARY:-}" ]; then
    printf '%s\n' "$IMAGEMAP_WEBHOOK_BINARY"
  else
    build_binary
  fi
}

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

case "${1:-push}" in
  binary)
    build_binary
    ;;
  layout)
    [ $# -eq 2 ] || die "usage: $0 layout DIR"
    bin=$(binary)
    assemble "$bin" "$2"
    ;;
  push)
    crane=$(find_crane)
    bin=$(binary)
    assemble "$bin" "$WORK/layout" >"$WORK/out"
    digest=$(tail -n1 "$WORK/out")
    ref="$REGISTRY/$IMAGE:$TAG"
    log "pushing $ref with $crane"
    # shellcheck disable=SC2086
    pushed=$("$crane" push ${CRANE_FLAGS:-} "$WORK/layout" "$ref")
    [ "${pushed##*@}" = "$digest" ] || die "the registry has $pushed, not the digest $digest"
    head -n -1 "$WORK/out"
    printf '%s@%s\n' "$ref" "$digest"
    ;;
  *)
    die "usage: $0 [push | layout DIR | binary]"
    ;;
esac
