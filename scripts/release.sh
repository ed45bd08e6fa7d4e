#!/usr/bin/env bash
# `make release VERSION=X.Y.Z`: every release artifact, reproducibly, into DIST (default dist/):
#
#   kubectl-imagemap_linux_amd64.tar.gz, kubectl-imagemap_linux_arm64.tar.gz
#       the plugin, a static musl binary (paths remapped, symbols stripped), plus LICENSE
#   imagemap.yaml            the krew manifest (kubectl-imagemap/krew/imagemap.yaml, rendered)
#   imagemap-X.Y.Z.tgz       the chart, version and appVersion X.Y.Z, default image the released one
#   imagemap-webhook.spdx.json  SPDX 2.3 SBOM of the webhook, from `cargo metadata`'s resolve
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
#   CRANE, HELM, COSIGN  the tools (default: the bin folder of tests/controlplane/build.sh)
#
# Same source, toolchain, version and registry name give the same bytes in DIST (and the same
# image digest). Needs: rustup targets x86_64-unknown-linux-musl, aarch64-unknown-linux-musl,
# aarch64-unknown-linux-gnu; Debian gcc-aarch64-linux-gnu, libc6-dev-arm64-cross, musl-tools.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/build-env.sh
ROOT=$PWD

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

# What the cross builds need, installed when missing (rustup targets; Debian packages as root).
for target in x86_64-unknown-linux-musl aarch64-unknown-linux-musl aarch64-unknown-linux-gnu; do
  rustup target list --installed 2>/dev/null | grep -qx "$target" || rustup target add "$target" >&2
done
missing=()
for pkg in gcc-aarch64-linux-gnu libc6-dev-arm64-cross musl-tools; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "install ${missing[*]} (apt-get install ${missing[*]}) and run again"
  log "installing ${missing[*]}"
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

BIN=$(bash tests/controlplane/build.sh | tail -n1)
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
for tool in "$CRANE" "$HELM"; do [ -x "$tool" ] || die "$tool is missing: run tests/controlplane/build.sh"; done
if [ "$SIGN" = 1 ] && [ ! -x "$COSIGN" ]; then die "$COSIGN is missing: run tests/controlplane/build.sh (or SIGN=0)"; fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"; if [ -n "${TEMP_REGISTRY:-}" ]; then kill "$TEMP_REGISTRY" 2>/dev/null || true; fi' EXIT
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

## The plugin: static musl binaries, built as scripts/image.sh builds the webhook (flags set, not
## added to; paths remapped), with the release version compiled in.
build_plugin() { # ARCH
  local arch=$1 target
  case "$arch" in
    amd64) target=x86_64-unknown-linux-musl ;;
    arm64) target=aarch64-unknown-linux-musl ;;
  esac
  log "building kubectl-imagemap $VERSION for $target"
  (
    release_build_env -C strip=symbols
    export IMAGEMAP_VERSION=$VERSION
    if [ "$arch" = arm64 ]; then
      local cc=${AARCH64_CC:-aarch64-linux-gnu-gcc}
      command -v "$cc" >/dev/null || die "no $cc: apt-get install gcc-aarch64-linux-gnu"
      export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=$cc CC_aarch64_unknown_linux_musl=$cc
    fi
    "$CARGO" build --release --locked -p kubectl-imagemap --bin kubectl-imagemap --target "$target" >&2
  )
  local stage=$WORK/plugin-$arch
  mkdir -p "$stage"
  install -m 0755 "$TARGET_DIR/$target/release/kubectl-imagemap" "$stage/kubectl-imagemap"
  install -m 0644 LICENSE "$stage/LICENSE"
  touch -d "@$EPOCH" "$stage"/*
  det_tar "$DIST/kubectl-imagemap_linux_$arch.tar.gz" "$stage" LICENSE kubectl-imagemap
  log "kubectl-imagemap_linux_$arch.tar.gz: $(size "$DIST/kubectl-imagemap_linux_$arch.tar.gz") bytes (binary $(size "$stage/kubectl-imagemap"))"
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
  printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
  local joined
  joined=$(IFS=,; printf '%s' "${entries[*]}")
  printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":['"$joined"']}' \
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

## SPDX 2.3 from `cargo metadata`: imagemap-webhook and its normal dependencies (proc macros
## left out: they are not linked), as resolved for the image's targets.
write_sbom() {
  "$CARGO" metadata --format-version 1 --locked \
    --filter-platform x86_64-unknown-linux-gnu --filter-platform aarch64-unknown-linux-gnu >"$WORK/metadata.json"
  python3 - "$WORK/metadata.json" "$VERSION" "$EPOCH" "$INDEX_DIGEST" "$RELEASE_URL" \
    >"$DIST/imagemap-webhook.spdx.json" <<'PY'
import json, re, sys, time, tomllib
meta_path, version, epoch, digest, url = sys.argv[1:]
meta = json.load(open(meta_path))
lock = tomllib.load(open("Cargo.lock", "rb"))
checksums = {(p["name"], p["version"]): p.get("checksum") for p in lock.get("package", [])}
packages = {p["id"]: p for p in meta["packages"]}
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
root = next(p["id"] for p in meta["packages"] if p["name"] == "imagemap-webhook" and p["source"] is None)

def normal(dep):
    return any(k["kind"] is None for k in dep["dep_kinds"])

def proc_macro(pid):
    return any("proc-macro" in t["kind"] for t in packages[pid]["targets"])

seen, order, edges = set(), [], []
stack = [root]
while stack:
    pid = stack.pop()
    if pid in seen:
        continue
    seen.add(pid)
    order.append(pid)
    for d in nodes[pid]["deps"]:
        # Proc macros run in the compiler; neither they nor their dependencies are linked.
        if normal(d) and not proc_macro(d["pkg"]):
            edges.append((pid, d["pkg"]))
            stack.append(d["pkg"])

def spdx_id(pid):
    p = packages[pid]
    return "SPDXRef-Package-" + re.sub(r"[^A-Za-z0-9.-]", "-", f"{p['name']}-{p['version']}")

def license_of(p):
    lic = p.get("license")
    if not lic:
        return "NOASSERTION"
    return " OR ".join(x.strip() for x in lic.split("/")) if "/" in lic else lic

out = []
for pid in sorted(seen, key=lambda i: (packages[i]["name"], packages[i]["version"])):
    p = packages[pid]
    v = version if pid == root else p["version"]
    entry = {
        "SPDXID": spdx_id(pid),
        "name": p["name"],
        "versionInfo": v,
        "downloadLocation": (f"https://crates.io/api/v1/crates/{p['name']}/{p['version']}/download"
                             if (p["source"] or "").startswith("registry+") else "NOASSERTION"),
        "filesAnalyzed": False,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": license_of(p),
        "copyrightText": "NOASSERTION",
        "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                          "referenceLocator": f"pkg:cargo/{p['name']}@{v}"}],
    }
    if p.get("description"):
        entry["summary"] = " ".join(p["description"].split())
    c = checksums.get((p["name"], p["version"]))
    if c:
        entry["checksums"] = [{"algorithm": "SHA256", "checksumValue": c}]
    out.append(entry)
rels = [{"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": spdx_id(root)}]
rels += [{"spdxElementId": spdx_id(a), "relationshipType": "DEPENDS_ON", "relatedSpdxElement": spdx_id(b)}
         for a, b in sorted(set(edges), key=lambda e: (spdx_id(e[0]), spdx_id(e[1])))]
doc = {
    "spdxVersion": "SPDX-2.3",
    "dataLicense": "CC0-1.0",
    "SPDXID": "SPDXRef-DOCUMENT",
    "name": f"imagemap-webhook-{version}",
    "documentNamespace": f"{url}/imagemap-webhook.spdx.json#{digest}",
    "creationInfo": {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(epoch))),
        "creators": ["Tool: imagemap scripts/release.sh (cargo metadata)"],
        "comment": f"imagemap-webhook {version}, image index {digest} (linux/amd64, linux/arm64); "
                   "normal dependencies as resolved by cargo metadata for the image's targets",
    },
    "documentDescribes": [spdx_id(root)],
    "packages": out,
    "relationships": rels,
}
json.dump(doc, sys.stdout, indent=2, sort_keys=True)
sys.stdout.write("\n")
PY
  log "SBOM: $(jq '.packages | length' "$DIST/imagemap-webhook.spdx.json") packages"
}

## The SBOM as an OCI artifact whose subject is the image index: listed by the referrers API,
## or where the registry lacks it (crane's), in the OCI 1.1 fallback index tagged sha256-HEX.
push_sbom() {
  local layout=$WORK/sbom sbom=$DIST/imagemap-webhook.spdx.json created empty layer manifest
  mkdir -p "$layout/blobs/sha256"
  printf '%s' '{}' >"$WORK/empty"
  empty=$(sha256 "$WORK/empty")
  cp "$WORK/empty" "$layout/blobs/sha256/$empty"
  layer=$(sha256 "$sbom")
  cp "$sbom" "$layout/blobs/sha256/$layer"
  created=$(date -u -d "@$EPOCH" +%Y-%m-%dT%H:%M:%SZ)
  printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",' \
    '"artifactType":"application/spdx+json",' \
    '"config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:'"$empty"'","size":2},' \
    '"layers":[{"mediaType":"application/spdx+json","digest":"sha256:'"$layer"'","size":'"$(size "$sbom")"',' \
    '"annotations":{"org.opencontainers.image.title":"imagemap-webhook.spdx.json"}}],' \
    '"subject":{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"'"$INDEX_DIGEST"'","size":'"$INDEX_SIZE"'},' \
    '"annotations":{"org.opencontainers.image.created":"'"$created"'"}}' >"$WORK/sbom-manifest.json"
  manifest=$(sha256 "$WORK/sbom-manifest.json")
  cp "$WORK/sbom-manifest.json" "$layout/blobs/sha256/$manifest"
  printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
  printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[' \
    '{"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/spdx+json",' \
    '"digest":"sha256:'"$manifest"'","size":'"$(size "$WORK/sbom-manifest.json")"'}]}' >"$layout/index.json"
  # Tagged as cosign names attached SBOMs, for registries without the referrers API.
  "$CRANE" push "$layout" "$REGISTRY/$IMAGE:${INDEX_DIGEST/:/-}.sbom" >/dev/null
  log "SBOM pushed: $REGISTRY/$IMAGE@sha256:$manifest (subject $INDEX_DIGEST)"
}

## cosign: a key pair made for this run in a temporary folder; the public key goes to DIST.
sign_image() {
  local keys=$WORK/keys
  mkdir -p "$keys"
  (cd "$keys" && COSIGN_PASSWORD= "$COSIGN" generate-key-pair >/dev/null 2>&1) || die "cosign generate-key-pair failed"
  COSIGN_PASSWORD= "$COSIGN" sign --yes --key "$keys/cosign.key" --tlog-upload=false \
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

## The krew manifest from the template, with this release's URLs and sums.
render_krew() {
  sed -e "s|{{VERSION}}|$VERSION|g" -e "s|{{URL}}|$RELEASE_URL|g" \
    -e "s|{{SHA256_LINUX_AMD64}}|$(sha256 "$DIST/kubectl-imagemap_linux_amd64.tar.gz")|g" \
    -e "s|{{SHA256_LINUX_ARM64}}|$(sha256 "$DIST/kubectl-imagemap_linux_arm64.tar.gz")|g" \
    kubectl-imagemap/krew/imagemap.yaml | grep -v '^# ' >"$DIST/imagemap.yaml"
  if grep -q '{{' "$DIST/imagemap.yaml"; then die "unrendered placeholder in the krew manifest"; fi
}

[ -f LICENSE ] || die "no LICENSE"
build_plugin amd64
build_plugin arm64
build_image
write_sbom
push_sbom
if [ "$SIGN" = 1 ]; then sign_image; else log "not signed (SIGN=0)"; fi
package_chart
render_krew
(cd "$DIST" && find . -maxdepth 1 -type f ! -name SHA256SUMS ! -name cosign.pub -printf '%f\n' | LC_ALL=C sort |
  xargs sha256sum >SHA256SUMS)
touch -d "@$EPOCH" "$DIST"/*
log "done in $((SECONDS - started))s: $DIST"
cat "$DIST/SHA256SUMS"
printf '%s/%s:%s@%s\n' "$REGISTRY" "$IMAGE" "$VERSION" "$INDEX_DIGEST"
