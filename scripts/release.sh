#!/usr/bin/env bash
# `make release VERSION=X.Y.Z`: every release artifact, reproducibly, into DIST (default dist/):
#
#   kubectl-imagemap_OS_ARCH.tar.gz (linux and darwin, amd64 and arm64),
#   kubectl-imagemap_windows_amd64.zip
#       the plugin (a static musl binary on Linux, kubectl-imagemap.exe on Windows; paths
#       remapped, symbols stripped), LICENSE, and kubectl's plugin completion script
#       kubectl_complete-imagemap (.cmd on Windows)
#   imagemap.yaml            the krew manifest (kubectl-imagemap/krew/imagemap.yaml, rendered)
#   imagemap-X.Y.Z.tgz       the chart, version and appVersion X.Y.Z, default image the released one
#   imagemap-webhook.cdx.json  CycloneDX 1.5 SBOM of the webhook (cargo-cyclonedx)
#   imagemap-webhook.digest  the digest of the webhook's image index (linux/amd64 + linux/arm64)
#   SHA256SUMS               sums of all of the above
#   cosign.pub               the public key of this run's signing key (new every run, so not in
#                            SHA256SUMS); the private key lives in a temporary folder only
#
# and pushes REGISTRY/IMAGE:X.Y.Z (an OCI image index built by scripts/image.sh for each
# platform), the SBOM as an OCI artifact whose subject is that index (referrers API), and a
# cosign signature of the index (key-based, no transparency log).
# The SBOM is found through the referrers API, or the fallback tag sha256-<hex> where the
# registry has none (crane registry serve), or as the tag sha256-<hex>.sbom (cosign's name).
#
#   VERSION   X.Y.Z (default: the workspace version)
#   DIST      output folder (default dist); emptied first
#   REGISTRY  where to push (default localhost:5000); IMAGE (default imagemap-webhook)
#   CHART_IMAGE  the chart's default image repository (default REGISTRY/IMAGE)
#   RELEASE_URL  where the archives are downloaded from, for the krew manifest (default
#             https://github.com/imagemap/imagemap/releases/download/vX.Y.Z)
#   SOURCE_DATE_EPOCH  time stamp of every file, tar entry and image (default 0)
#   SIGN      1 (default): sign with cosign; 0: do not
#   CRANE, HELM, COSIGN  the tools (default: the folder scripts/tools.sh prints)
#   PLUGIN_PLATFORMS  the plugin's platforms (default "linux/amd64 linux/arm64 windows/amd64
#             darwin/amd64 darwin/arm64"); darwin links with zig (cargo-zigbuild) without an
#             Apple SDK, which works because the plugin links no Apple framework
#
# Same source, toolchain, version and registry name give the same bytes in DIST (and the same
# image digest). What the builds need (rustup targets, Debian cross compilers, MinGW, zip, jq;
# zig for darwin) is installed by scripts/deps.sh release when missing (as root; otherwise it
# prints the apt-get command).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/build-env.sh

CARGO=${CARGO:-cargo}
WORKSPACE_VERSION=$(sed -n '/^\[workspace\.package\]/,/^\[/ s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
VERSION=${VERSION:-$WORKSPACE_VERSION}
VERSION=${VERSION#v}
DIST=${DIST:-dist}
REGISTRY=${REGISTRY:-localhost:5000}
IMAGE=${IMAGE:-imagemap-webhook}
CHART_IMAGE=${CHART_IMAGE:-$REGISTRY/$IMAGE}
RELEASE_URL=${RELEASE_URL:-https://github.com/imagemap/imagemap/releases/download/v$VERSION}
EPOCH=${SOURCE_DATE_EPOCH:-0}
SIGN=${SIGN:-1}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
export SOURCE_DATE_EPOCH=$EPOCH

log() { printf 'release: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
sha256() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

[[ $VERSION =~ ^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$ ]] || die "VERSION must be X.Y.Z, not $VERSION"

PLUGIN_PLATFORMS=${PLUGIN_PLATFORMS:-linux/amd64 linux/arm64 windows/amd64 darwin/amd64 darwin/arm64}
export PLUGIN_PLATFORMS
bash scripts/deps.sh release || die "scripts/deps.sh release failed (see above)"

BIN=$(bash scripts/tools.sh)
CRANE=${CRANE:-$BIN/crane}

# No registry at a localhost REGISTRY (no `make dev` running): serve one for this run, so the
# image, its SBOM and signature are still made and checked; they are gone when it ends.
if [[ $REGISTRY == localhost:* ]] && ! curl -fsS -o /dev/null "http://$REGISTRY/v2/" 2>/dev/null; then
  log "no registry at $REGISTRY: serving one for this run (crane registry serve)"
  "$CRANE" registry serve --address "127.0.0.1:${REGISTRY#localhost:}" >/dev/null 2>&1 &
  TEMP_REGISTRY=$!
  trap 'kill "$TEMP_REGISTRY" 2>/dev/null || true' EXIT
  for _ in $(seq 1 100); do curl -fsS -o /dev/null "http://$REGISTRY/v2/" 2>/dev/null && break; sleep 0.1; done
fi
HELM=${HELM:-$BIN/helm4}
COSIGN=${COSIGN:-$BIN/cosign}
for tool in "$CRANE" "$HELM"; do [ -x "$tool" ] || die "$tool is missing: run scripts/tools.sh"; done
if [ "$SIGN" = 1 ] && [ ! -x "$COSIGN" ]; then die "$COSIGN is missing: run scripts/tools.sh (or SIGN=0)"; fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"; remove_sbom_files; if [ -n "${TEMP_REGISTRY:-}" ]; then kill "$TEMP_REGISTRY" 2>/dev/null || true; fi' EXIT
rm -rf "$DIST"
mkdir -p "$DIST"
DIST=$(cd "$DIST" && pwd)
started=$SECONDS

# Deterministic tar.gz of the entries $3... of folder $2 into $1 (entries given in byte order:
# --sort=name orders folder contents, not the names given).
det_tar() {
  local out=$1 dir=$2
  shift 2
  tar --create --directory "$dir" --format=gnu --sort=name --mtime="@$EPOCH" --owner=0 --group=0 \
    --numeric-owner --mode='u+rwX,go=rX' "$@" | gzip -9 -n >"$out"
}

# Deterministic zip of the files $3... of folder $2 into $1, in the order given: no extra fields
# (-X: no unix times, owners), no folder entries, times in UTC (zip stores local DOS times, from
# 1980: an earlier SOURCE_DATE_EPOCH shows as 1980-01-01).
det_zip() {
  local out=$1 dir=$2
  shift 2
  rm -f "$out"
  (cd "$dir" && TZ=UTC zip -X -D -9 -q "$out" "$@")
}

## The plugin, built as scripts/image.sh builds the webhook (flags set, not added to; paths
## remapped; symbols stripped), with the release version compiled in: static musl binaries for
## Linux, a MinGW-linked PE32+ for Windows (no link time stamp), Mach-O through zig for macOS.
## Archives: the binary, LICENSE and kubectl's completion script for plugins
## (kubectl_complete-imagemap, calling the plugin's `__complete`), in fixed order, owners and times.
build_plugin() { # OS/ARCH
  local platform=$1 target exe=kubectl-imagemap complete=kubectl_complete-imagemap build=build
  local os=${platform%/*} arch=${platform#*/} step_start=$SECONDS
  case "$platform" in
    linux/amd64) target=x86_64-unknown-linux-musl ;;
    linux/arm64) target=aarch64-unknown-linux-musl ;;
    windows/amd64) target=x86_64-pc-windows-gnu exe=kubectl-imagemap.exe complete=kubectl_complete-imagemap.cmd ;;
    darwin/amd64) target=x86_64-apple-darwin build=zigbuild ;;
    darwin/arm64) target=aarch64-apple-darwin build=zigbuild ;;
    *) die "unknown plugin platform $platform (linux/amd64, linux/arm64, windows/amd64, darwin/amd64, darwin/arm64)" ;;
  esac
  log "building kubectl-imagemap $VERSION for $target"
  (
    case "$target" in
      x86_64-pc-windows-gnu)
        # GNU ld stamps PE files with the link time unless told not to.
        release_build_env -C strip=symbols -C link-arg=-Wl,--no-insert-timestamp
        export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=${MINGW_CC:-x86_64-w64-mingw32-gcc}
        ;;
      *) release_build_env -C strip=symbols ;;
    esac
    export IMAGEMAP_VERSION=$VERSION
    if [ "$target" = aarch64-unknown-linux-musl ]; then
      local cc=${AARCH64_CC:-aarch64-linux-gnu-gcc}
      command -v "$cc" >/dev/null || die "no $cc: apt-get install gcc-aarch64-linux-gnu"
      export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=$cc CC_aarch64_unknown_linux_musl=$cc
    fi
    "$CARGO" "$build" --profile release-plugin --locked -p kubectl-imagemap --bin kubectl-imagemap --target "$target" >&2
  )
  local stage=$WORK/plugin-$os-$arch archive
  mkdir -p "$stage"
  install -m 0755 "$TARGET_DIR/$target/release-plugin/$exe" "$stage/$exe"
  install -m 0644 LICENSE "$stage/LICENSE"
  install -m 0755 "scripts/$complete" "$stage/$complete"
  touch -d "@$EPOCH" "$stage"/*
  if [ "$os" = windows ]; then
    archive=kubectl-imagemap_${os}_$arch.zip
    det_zip "$DIST/$archive" "$stage" LICENSE "$exe" "$complete"
  else
    archive=kubectl-imagemap_${os}_$arch.tar.gz
    det_tar "$DIST/$archive" "$stage" LICENSE "$exe" "$complete"
  fi
  log "$archive: $(size "$DIST/$archive") bytes (binary $(size "$stage/$exe")) in $((SECONDS - step_start))s"
}

## The webhook image: scripts/image.sh per platform, then one index over both.
build_image() {
  local layout=$WORK/image p out
  mkdir -p "$layout/blobs/sha256"
  local entries=()
  for p in amd64 arm64; do
    log "building the webhook image for linux/$p"
    out=$(PLATFORM=$p IMAGEMAP_VERSION=$VERSION bash scripts/image.sh layout "$WORK/image-$p")
    log "linux/$p $(head -n1 <<<"$out")"
    cp "$WORK/image-$p/blobs/sha256/"* "$layout/blobs/sha256/"
    entries+=("$(jq -c '.manifests[0]' "$WORK/image-$p/index.json")")
  done
  jq -cnj '{imageLayoutVersion: "1.0.0"}' >"$layout/oci-layout"
  printf '%s\n' "${entries[@]}" |
    jq -cnj '{schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json", manifests: [inputs]}' \
      >"$layout/index.json"
  INDEX_DIGEST=sha256:$(sha256 "$layout/index.json")
  INDEX_SIZE=$(size "$layout/index.json")
  local ref=$REGISTRY/$IMAGE:$VERSION pushed
  log "pushing $ref"
  pushed=$("$CRANE" push --index "$layout" "$ref")
  [ "${pushed##*@}" = "$INDEX_DIGEST" ] || die "the registry has $pushed, not $INDEX_DIGEST"
  printf '%s\n' "$INDEX_DIGEST" >"$DIST/imagemap-webhook.digest"
  log "image $ref@$INDEX_DIGEST"
}

## CycloneDX 1.5 of the webhook by cargo-cyclonedx (scripts/deps.sh installs it): its
## dependencies as resolved for the image's target, build-time dependencies left out, crates.io
## sums from Cargo.lock, time stamp SOURCE_DATE_EPOCH; the described component's version is the
## release's (compiled in as IMAGEMAP_VERSION). cargo-cyclonedx writes a file beside every
## workspace member's Cargo.toml: the webhook's is kept, the others are removed.
write_sbom() {
  local name=.release-sbom-$$
  SBOM_NAME=$name
  "$CARGO" cyclonedx --manifest-path webhook/Cargo.toml --format json --spec-version 1.5 \
    --target x86_64-unknown-linux-gnu --no-build-deps --override-filename "$name" -q >&2
  # The workspace's own crates are named by path (bom-ref path+file:///...): /src, as the
  # binaries' remapped paths, so the checkout's folder does not change the bytes.
  jq --arg version "$VERSION" --arg digest "$INDEX_DIGEST" --arg root "$PWD" '
    (.. | strings) |= (split($root) | join("/src"))
    | .metadata.component.version = $version
    | .metadata.component.purl = "pkg:cargo/imagemap-webhook@" + $version
    | .metadata.properties = [{name: "imagemap:image-index", value: $digest},
                              {name: "imagemap:platforms", value: "linux/amd64 linux/arm64"}]' \
    "webhook/$name.json" >"$DIST/imagemap-webhook.cdx.json"
  remove_sbom_files
  log "SBOM: $(jq '.components | length' "$DIST/imagemap-webhook.cdx.json") components"
}
remove_sbom_files() {
  [ -n "${SBOM_NAME:-}" ] || return 0
  find . -path ./target -prune -o -name "$SBOM_NAME.json" -type f -exec rm -f {} +
}

## The SBOM as an OCI artifact whose subject is the image index: listed by the referrers API,
## or where the registry lacks it (crane's), in the OCI 1.1 fallback index tagged sha256-HEX.
push_sbom() {
  local layout=$WORK/sbom sbom=$DIST/imagemap-webhook.cdx.json created empty layer manifest
  mkdir -p "$layout/blobs/sha256"
  jq -cnj '{}' >"$WORK/empty"
  empty=$(sha256 "$WORK/empty")
  cp "$WORK/empty" "$layout/blobs/sha256/$empty"
  layer=$(sha256 "$sbom")
  cp "$sbom" "$layout/blobs/sha256/$layer"
  created=$(date -u -d "@$EPOCH" +%Y-%m-%dT%H:%M:%SZ)
  jq -cnj --arg config "sha256:$empty" --arg layer "sha256:$layer" --argjson size "$(size "$sbom")" \
    --arg subject "$INDEX_DIGEST" --argjson subject_size "$INDEX_SIZE" --arg created "$created" '{
      schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
      artifactType: "application/vnd.cyclonedx+json",
      config: {mediaType: "application/vnd.oci.empty.v1+json", digest: $config, size: 2},
      layers: [{mediaType: "application/vnd.cyclonedx+json", digest: $layer, size: $size,
                annotations: {"org.opencontainers.image.title": "imagemap-webhook.cdx.json"}}],
      subject: {mediaType: "application/vnd.oci.image.index.v1+json", digest: $subject, size: $subject_size},
      annotations: {"org.opencontainers.image.created": $created}}' >"$WORK/sbom-manifest.json"
  manifest=$(sha256 "$WORK/sbom-manifest.json")
  cp "$WORK/sbom-manifest.json" "$layout/blobs/sha256/$manifest"
  jq -cnj '{imageLayoutVersion: "1.0.0"}' >"$layout/oci-layout"
  jq -cnj --arg digest "sha256:$manifest" --argjson size "$(size "$WORK/sbom-manifest.json")" '{
      schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json",
      manifests: [{mediaType: "application/vnd.oci.image.manifest.v1+json", artifactType: "application/vnd.cyclonedx+json",
                   digest: $digest, size: $size}]}' >"$layout/index.json"
  # Tagged as cosign names attached SBOMs, for registries without the referrers API.
  "$CRANE" push "$layout" "$REGISTRY/$IMAGE:${INDEX_DIGEST/:/-}.sbom" >/dev/null
  log "SBOM pushed: $REGISTRY/$IMAGE@sha256:$manifest (subject $INDEX_DIGEST)"
}

## cosign: a key pair made for this run in a temporary folder; the public key goes to DIST.
sign_image() {
  local keys=$WORK/keys
  mkdir -p "$keys"
  (cd "$keys" && COSIGN_PASSWORD='' "$COSIGN" generate-key-pair >/dev/null 2>&1) || die "cosign generate-key-pair failed"
  COSIGN_PASSWORD='' "$COSIGN" sign --yes --key "$keys/cosign.key" --tlog-upload=false \
    "$REGISTRY/$IMAGE@$INDEX_DIGEST" >"$WORK/sign.log" 2>&1 || { cat "$WORK/sign.log" >&2; die "cosign sign failed"; }
  cp "$keys/cosign.pub" "$DIST/cosign.pub"
  rm -rf "$keys"
  log "signed $REGISTRY/$IMAGE@$INDEX_DIGEST (public key $DIST/cosign.pub)"
}

## The chart, version/appVersion X.Y.Z, default image the released index; repacked
## deterministically (sorted, fixed times and owners, gzip without name or time).
package_chart() {
  local copy=$WORK/chart/imagemap
  mkdir -p "$WORK/chart" "$WORK/chart-pkg" "$WORK/chart-x"
  cp -r charts/imagemap "$copy"
  sed -i -e "s/^version:.*/version: $VERSION/" -e "s/^appVersion:.*/appVersion: \"$VERSION\"/" "$copy/Chart.yaml"
  awk -v repo="$CHART_IMAGE" -v tag="$VERSION" -v digest="$INDEX_DIGEST" '
    /^[^ #]/ { in_image = ($0 ~ /^image:/) }
    in_image && /^  repository:/ { print "  repository: " repo; next }
    in_image && /^  tag:/ { print "  tag: \"" tag "\""; next }
    in_image && /^  digest:/ { print "  digest: \"" digest "\""; next }
    { print }' "$copy/values.yaml" >"$copy/values.yaml.new"
  mv "$copy/values.yaml.new" "$copy/values.yaml"
  HELM_CACHE_HOME=$WORK/helm HELM_CONFIG_HOME=$WORK/helm HELM_DATA_HOME=$WORK/helm \
    "$HELM" package "$copy" --destination "$WORK/chart-pkg" >/dev/null
  tar -xzf "$WORK/chart-pkg/imagemap-$VERSION.tgz" -C "$WORK/chart-x"
  find "$WORK/chart-x" -exec touch -h -d "@$EPOCH" {} +
  det_tar "$DIST/imagemap-$VERSION.tgz" "$WORK/chart-x" imagemap
  log "imagemap-$VERSION.tgz: $(size "$DIST/imagemap-$VERSION.tgz") bytes, image $CHART_IMAGE:$VERSION@$INDEX_DIGEST"
}

## The chart as an OCI artifact: oci://REGISTRY/charts/imagemap:X.Y.Z, the same deterministic
## archive as DIST/imagemap-X.Y.Z.tgz (plain HTTP only for a registry on loopback).
push_chart() {
  local out plain=()
  [[ $REGISTRY == localhost:* || $REGISTRY == 127.0.0.1:* ]] && plain=(--plain-http)
  out=$(HELM_CACHE_HOME=$WORK/helm HELM_CONFIG_HOME=$WORK/helm HELM_DATA_HOME=$WORK/helm \
    "$HELM" push "$DIST/imagemap-$VERSION.tgz" "oci://$REGISTRY/charts" "${plain[@]}" 2>&1) ||
    { printf '%s\n' "$out" >&2; die "helm push of the chart to oci://$REGISTRY/charts failed"; }
  log "chart pushed: oci://$REGISTRY/charts/imagemap:$VERSION@$(printf '%s\n' "$out" | sed -n 's/^Digest: //p')"
}

## The krew manifest from the template, with one platform entry per archive built.
render_krew() {
  local platform os arch archive bin complete platforms=$WORK/krew-platforms
  : >"$platforms"
  for platform in $PLUGIN_PLATFORMS; do
    os=${platform%/*} arch=${platform#*/} bin=kubectl-imagemap complete=kubectl_complete-imagemap
    archive=kubectl-imagemap_${os}_$arch.tar.gz
    if [ "$os" = windows ]; then
      archive=kubectl-imagemap_${os}_$arch.zip bin=kubectl-imagemap.exe complete=kubectl_complete-imagemap.cmd
    fi
    cat >>"$platforms" <<EOF
  - selector:
      matchLabels: {os: $os, arch: $arch}
    uri: $RELEASE_URL/$archive
    sha256: "$(sha256 "$DIST/$archive")"
    bin: $bin
    files:
    - {from: $bin, to: .}
    - {from: $complete, to: .}
    - {from: LICENSE, to: .}
EOF
  done
  sed -e "s|{{VERSION}}|$VERSION|g" -e "s|{{URL}}|$RELEASE_URL|g" kubectl-imagemap/krew/imagemap.yaml |
    awk -v f="$platforms" '$0 == "{{PLATFORMS}}" { while ((getline l < f) > 0) print l; next } { print }' |
    grep -v '^# ' >"$DIST/imagemap.yaml"
  if grep -q '{{' "$DIST/imagemap.yaml"; then die "unrendered placeholder in the krew manifest"; fi
}

[ -f LICENSE ] || die "no LICENSE"
for platform in $PLUGIN_PLATFORMS; do build_plugin "$platform"; done
build_image
write_sbom
push_sbom
if [ "$SIGN" = 1 ]; then sign_image; else log "not signed (SIGN=0)"; fi
package_chart
push_chart
render_krew
(cd "$DIST" && find . -maxdepth 1 -type f ! -name SHA256SUMS ! -name cosign.pub -printf '%f\n' | LC_ALL=C sort |
  xargs sha256sum >"$WORK/SHA256SUMS")
mv "$WORK/SHA256SUMS" "$DIST/SHA256SUMS"
touch -d "@$EPOCH" "$DIST"/*
log "done in $((SECONDS - started))s: $DIST"
cat "$DIST/SHA256SUMS"
printf '%s/%s:%s@%s\n' "$REGISTRY" "$IMAGE" "$VERSION" "$INDEX_DIGEST"
