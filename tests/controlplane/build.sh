#!/usr/bin/env bash
# Builds the real control-plane binaries used by the end-to-end tests and `make dev`:
# kube-apiserver and kube-controller-manager (k8s.io/kubernetes), etcd and helm, at pinned
# versions, from the Go module proxy, into a version-keyed cache folder outside the repository.
# A binary already in the cache is reused. Prints the bin folder on stdout when done.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.37.2}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
# etcd: the version the Kubernetes release pins (read from its go.mod below).

cache_root="${IMAGEMAP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/imagemap}"
log() { printf 'controlplane: %s\n' "$*" >&2; }

export GOFLAGS="-mod=mod"
export CGO_ENABLED=0
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"

# The staging modules are published as k8s.io/<name> v0.<minor>.<patch>.
staging_version="v0.${K8S_VERSION#v1.}"

moddir=$(go mod download -json "k8s.io/kubernetes@${K8S_VERSION}" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
[ -d "$moddir" ] || { log "could not download k8s.io/kubernetes@${K8S_VERSION}"; exit 1; }
ETCD_VERSION=$(awk '$1 == "go.etcd.io/etcd/server/v3" { print $2; exit }' "$moddir/go.mod")
[ -n "$ETCD_VERSION" ] || { log "no etcd version in k8s.io/kubernetes go.mod"; exit 1; }

bin="$cache_root/controlplane-k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}-helm-${HELM_VERSION}/bin"
src="$cache_root/src-k8s-${K8S_VERSION}"
mkdir -p "$bin" "$src"

ldflags_for_k8s() {
  local pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    printf -- '-X %s.gitVersion=%s -X %s.gitMajor=1 -X %s.gitMinor=%s -X %s.gitTreeState=clean ' \
      "$pkg" "$K8S_VERSION" "$pkg" "$pkg" "$(echo "$K8S_VERSION" | cut -d. -f2)" "$pkg"
  done
  printf -- '-s -w'
}

build_kubernetes() {
  local need=()
  for b in kube-apiserver kube-controller-manager; do
    [ -x "$bin/$b" ] || need+=("$b")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  log "building ${need[*]} ${K8S_VERSION} (several minutes on two cores)"
  # A wrapper module: require k8s.io/kubernetes and replace each staging module, listed from the
  # release's own go.mod, by its published version.
  {
    echo "module imagemap.local/controlplane"
    echo
    echo "go 1.26"
    echo
    echo "require k8s.io/kubernetes ${K8S_VERSION}"
    echo
    awk '$2 == "=>" && $3 ~ /^\.\/staging\// { print "replace " $1 " => " $1 " '"$staging_version"'" }' "$moddir/go.mod"
  } > "$src/go.mod"
  cat > "$src/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
GO
  (cd "$src" && go mod tidy -e >/dev/null 2>&1 || true
   for b in "${need[@]}"; do
     go build -trimpath -ldflags "$(ldflags_for_k8s)" -o "$bin/$b.tmp" "k8s.io/kubernetes/cmd/$b"
     mv "$bin/$b.tmp" "$bin/$b"
   done)
}

# Builds a main package from a throwaway wrapper module, so that replace directives in the
# package's own go.mod (etcd has them) do not apply: `go install pkg@version` refuses those.
build_in_wrapper() { # NAME MODULE VERSION PACKAGE LDFLAGS
  local name=$1 module=$2 version=$3 package=$4 ldflags=$5 dir="$src/wrap-$1"
  [ -x "$bin/$name" ] && return 0
  log "building $name $version"
  rm -rf "$dir" && mkdir -p "$dir"
  (cd "$dir"
   printf 'module imagemap.local/wrap\n\ngo 1.26\n' > go.mod
   go get "$module@$version" >/dev/null
   go build -trimpath -ldflags "$ldflags" -o "$bin/$name.tmp" "$package"
   mv "$bin/$name.tmp" "$bin/$name")
}

build_etcd() {
  build_in_wrapper etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION" go.etcd.io/etcd/server/v3 "-s -w"
}

build_helm() {
  build_in_wrapper helm helm.sh/helm/v3 "$HELM_VERSION" helm.sh/helm/v3/cmd/helm \
    "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
}

build_etcd
build_helm
build_kubernetes
echo "$bin"
