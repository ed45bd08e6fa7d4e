#!/usr/bin/env bash
# Prints the folder holding the control-plane binaries and tools (kube-apiserver, kubectl, crane,
# helm, helm4, cosign, krew, ...), building whatever is missing first with
# tests/controlplane/build.sh (its progress goes to stderr).
#
#   scripts/tools.sh [--skip-kubernetes]
#
# IMAGEMAP_CONTROLPLANE_BIN, when it names a folder, is printed as is (the tests and `make` set it).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${IMAGEMAP_CONTROLPLANE_BIN:-}" ] && [ -d "$IMAGEMAP_CONTROLPLANE_BIN" ]; then
  printf '%s\n' "$IMAGEMAP_CONTROLPLANE_BIN"
  exit 0
fi
out=$(bash tests/controlplane/build.sh "$@")
dir=${out##*$'\n'}
[ -d "$dir" ] || { printf 'tools: tests/controlplane/build.sh printed no folder (%s)\n' "$dir" >&2; exit 1; }
printf '%s\n' "$dir"
