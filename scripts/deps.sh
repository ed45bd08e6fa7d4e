#!/usr/bin/env bash
# Installs what a make target needs beyond Rust, Go and make (README "Set-up"), when missing:
#
#   scripts/deps.sh node      Debian libseccomp-dev (runc is built with seccomp), busybox-static
#                             (the images the tests and `make dev` build), jq (scripts/image.sh
#                             writes the image's JSON with it) and shellcheck (make lint): make
#                             lint, controlplane, dev, test, stress
#   scripts/deps.sh release   the cross toolchains of `make release`: rustup targets, Debian
#                             gcc-aarch64-linux-gnu, libc6-dev-arm64-cross, musl-tools,
#                             gcc-mingw-w64-x86-64, zip, unzip, jq; cargo-cyclonedx (the SBOM,
#                             crates.io); with darwin in PLUGIN_PLATFORMS, ziglang and
#                             cargo-zigbuild from PyPI
#   scripts/deps.sh wine      Debian wine64, for the release test's smoke run of the Windows
#                             plugin; optional: a failure is reported, not fatal
#
# Debian packages are installed with apt-get when run as root; otherwise the exact command is
# printed and the script fails. Off Debian (no dpkg) it only names the packages.
set -euo pipefail

log() { printf 'deps: %s\n' "$*" >&2; }

# The plugin platforms scripts/release.sh builds by default (it reads the same variable).
: "${PLUGIN_PLATFORMS:=linux/amd64 linux/arm64 windows/amd64 darwin/amd64 darwin/arm64}"
# PyPI versions known to link the Apple targets (pinned: the linker is part of the output).
ZIGLANG_VERSION=${ZIGLANG_VERSION:-0.17.1}
CARGO_ZIGBUILD_VERSION=${CARGO_ZIGBUILD_VERSION:-0.24.1}
# The SBOM generator of scripts/release.sh (crates.io).
CARGO_CYCLONEDX_VERSION=${CARGO_CYCLONEDX_VERSION:-0.5.9}

# apt_install OPTIONAL PACKAGE...: installs the missing ones (OPTIONAL=1: failures only logged).
apt_install() {
  local optional=$1 missing=() pkg
  shift
  if ! command -v dpkg >/dev/null 2>&1; then
    log "not a Debian system: make sure these are installed: $*"
    return 0
  fi
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  if [ "$(id -u)" != 0 ]; then
    log "missing Debian packages; as root run: apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
    [ "$optional" = 1 ] && return 0
    return 1
  fi
  log "installing ${missing[*]}"
  if ! { apt-get update -qq >/dev/null &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }; then
    log "apt-get install ${missing[*]} failed"
    [ "$optional" = 1 ] && return 0
    return 1
  fi
}

rustup_targets() {
  command -v rustup >/dev/null 2>&1 || { log "no rustup: make sure the std of $* is installed"; return 0; }
  local installed target
  installed=$(rustup target list --installed 2>/dev/null)
  for target in "$@"; do
    grep -qx "$target" <<<"$installed" || rustup target add "$target" >&2
  done
}

release() {
  local targets=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl aarch64-unknown-linux-gnu)
  local packages=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross musl-tools zip unzip jq)
  local zig=0 platform
  for platform in $PLUGIN_PLATFORMS; do
    case "$platform" in
      windows/amd64) targets+=(x86_64-pc-windows-gnu); packages+=(gcc-mingw-w64-x86-64) ;;
      darwin/amd64) targets+=(x86_64-apple-darwin); zig=1 ;;
      darwin/arm64) targets+=(aarch64-apple-darwin); zig=1 ;;
    esac
  done
  rustup_targets "${targets[@]}"
  apt_install 0 "${packages[@]}"
  if ! cargo cyclonedx --version 2>/dev/null | grep -qF "$CARGO_CYCLONEDX_VERSION"; then
    log "installing cargo-cyclonedx $CARGO_CYCLONEDX_VERSION (cargo install, about 2 minutes)"
    cargo install --locked --quiet cargo-cyclonedx --version "$CARGO_CYCLONEDX_VERSION" >&2
  fi
  if [ "$zig" = 1 ] && ! { command -v cargo-zigbuild >/dev/null 2>&1 &&
    cargo-zigbuild --version 2>/dev/null | grep -qF "$CARGO_ZIGBUILD_VERSION"; }; then
    local pip
    pip=$(command -v pip3 || command -v pip) || { log "no pip: pip install ziglang==$ZIGLANG_VERSION cargo-zigbuild==$CARGO_ZIGBUILD_VERSION"; return 1; }
    log "installing ziglang $ZIGLANG_VERSION and cargo-zigbuild $CARGO_ZIGBUILD_VERSION (pip)"
    "$pip" install -q "ziglang==$ZIGLANG_VERSION" "cargo-zigbuild==$CARGO_ZIGBUILD_VERSION" >&2
  fi
}

[ $# -gt 0 ] || { echo "usage: $0 node|release|wine..." >&2; exit 2; }
for group in "$@"; do
  case "$group" in
    node) apt_install 0 libseccomp-dev busybox-static jq shellcheck ;;
    release) release ;;
    wine) apt_install 1 wine64 ;;
    *) echo "usage: $0 node|release|wine..." >&2; exit 2 ;;
  esac
done
