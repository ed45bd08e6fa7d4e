#!/usr/bin/env bash
# Builds the real Kubernetes binaries used by the end-to-end tests and `make dev`, at pinned
# versions, from the Go module proxy, into a version-keyed cache folder outside the repository:
#
#   control plane  kube-apiserver, kube-controller-manager, kube-scheduler (k8s.io/kubernetes),
#                  etcd (the version that Kubernetes release pins)
#   node           kubelet (k8s.io/kubernetes), containerd + containerd-shim-runc-v2, runc (cgo,
#                  with seccomp: needs libseccomp-dev), CNI plugins in cni/
#   tools          kubectl (k8s.io/kubectl), helm (v3), helm4 (v4), crane (images and registry),
#                  krew (plugin manager) and cosign (signatures), for `make release` and its tests;
#                  promtool (Prometheus rule checks and unit tests of the chart's alerts)
#
# A binary already in the cache is reused (those whose version is not in the folder's name carry a
# `.NAME.version` stamp beside them; a different version is rebuilt). Prints the bin folder on
# stdout when done. `--skip-kubernetes` builds everything but the k8s.io/kubernetes binaries.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.37.2}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
HELM4_VERSION="${HELM4_VERSION:-v4.3.2}"
CONTAINERD_VERSION="${CONTAINERD_VERSION:-v2.4.2}"
RUNC_VERSION="${RUNC_VERSION:-v1.5.3}"
CNI_PLUGINS_VERSION="${CNI_PLUGINS_VERSION:-v1.10.0}"
CRANE_VERSION="${CRANE_VERSION:-v0.22.1}"
KREW_VERSION="${KREW_VERSION:-v0.4.3}"
COSIGN_VERSION="${COSIGN_VERSION:-v2.6.5}"
# Prometheus 3.16.0: its Go module tags v3.X.Y as v0.3XX.Y.
PROMTOOL_VERSION="${PROMTOOL_VERSION:-v0.316.0}"
# etcd: the version the Kubernetes release pins (read from its go.mod below).

skip_kubernetes=false
for arg in "$@"; do
  case "$arg" in
    --skip-kubernetes) skip_kubernetes=true ;;
    *) echo "usage: $0 [--skip-kubernetes]" >&2; exit 2 ;;
  esac
done

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

# One build at a time per cache (two test binaries may start this script at once).
exec 9>"$cache_root/.build.lock"
flock 9
# Scratch folders of an interrupted go_install.
rm -rf "$cache_root"/.install.*

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
  for b in kube-apiserver kube-controller-manager kube-scheduler kubelet; do
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
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
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

# `$bin/NAME` exists and its stamp says VERSION.
have() { # NAME VERSION
  [ -x "$bin/$1" ] && [ "$(cat "$(stamp_path "$1")" 2>/dev/null)" = "$2" ]
}
stamp_path() { echo "$(dirname "$bin/$1")/.$(basename "$1").version"; }

# `go install PACKAGE@VERSION...` (modules without replace directives) into a scratch folder,
# then each binary moved to `$bin/TARGET` and stamped. Extra `go install` flags after `--`.
go_install() { # VERSION TARGET=PACKAGE... [-- FLAGS...]
  local version=$1 pairs=() flags=() missing=() pair scratch
  shift
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do pairs+=("$1"); shift; done
  [ $# -gt 0 ] && shift && flags=("$@")
  for pair in "${pairs[@]}"; do
    have "${pair%%=*}" "$version" || missing+=("$pair")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "building ${missing[*]%%=*} $version"
  scratch=$(mktemp -d "$cache_root/.install.XXXXXX")
  local packages=()
  for pair in "${missing[@]}"; do packages+=("${pair#*=}@$version"); done
  # Outside any module (pkg@version mode); -mod is not allowed there.
  (cd "$scratch" && GOFLAGS= GOBIN="$scratch/bin" go install -trimpath "${flags[@]}" "${packages[@]}")
  for pair in "${missing[@]}"; do
    local target=${pair%%=*} package=${pair#*=}
    mkdir -p "$(dirname "$bin/$target")"
    mv "$scratch/bin/${package##*/}" "$bin/$target"
    echo "$version" > "$(stamp_path "$target")"
  done
  rm -rf "$scratch"
}

build_etcd() {
  build_in_wrapper etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION" go.etcd.io/etcd/server/v3 "-s -w"
}

# The Kubernetes version `helm template` assumes is set as Helm's own release build sets it (the
# client-go minor; otherwise 1.20, below the chart's kubeVersion). Stamped: rebuilt when it changes.
HELM_K8S_MINOR=37
build_helm() {
  have helm "$HELM_VERSION-k8s1.$HELM_K8S_MINOR" || rm -f "$bin/helm"
  build_in_wrapper helm helm.sh/helm/v3 "$HELM_VERSION" helm.sh/helm/v3/cmd/helm \
    "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} \
     -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$HELM_K8S_MINOR \
     -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$HELM_K8S_MINOR"
  echo "$HELM_VERSION-k8s1.$HELM_K8S_MINOR" > "$(stamp_path helm)"
}

build_helm4() {
  go_install "$HELM4_VERSION" helm4=helm.sh/helm/v4/cmd/helm \
    -- -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=${HELM4_VERSION}"
}

# kubectl from k8s.io/kubectl (its main is k8s.io/kubernetes/cmd/kubectl, which needs the whole
# k8s.io/kubernetes module): a wrapper module whose main does what that one does.
build_kubectl() {
  local dir="$src/wrap-kubectl"
  have kubectl "$K8S_VERSION" && return 0
  log "building kubectl $K8S_VERSION"
  rm -rf "$dir" && mkdir -p "$dir"
  cat > "$dir/main.go" <<'GO'
// kubectl, as k8s.io/kubernetes/cmd/kubectl/kubectl.go builds it.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"

	// Import to initialize client auth plugins.
	_ "k8s.io/client-go/plugin/pkg/client/auth"
)

func main() {
	logs.GlogSetter(cmd.GetLogVerbosity(os.Args)) // nolint:errcheck
	command := cmd.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		util.CheckErr(err)
	}
}
GO
  (cd "$dir"
   printf 'module imagemap.local/kubectl\n\ngo 1.26\n' > go.mod
   go get "k8s.io/kubectl@$staging_version" "k8s.io/component-base@$staging_version" \
     "k8s.io/client-go@$staging_version" >/dev/null 2>&1
   go mod tidy >/dev/null 2>&1
   go build -trimpath -ldflags "$(ldflags_for_k8s)" -o "$bin/kubectl.tmp" .
   mv "$bin/kubectl.tmp" "$bin/kubectl"
   echo "$K8S_VERSION" > "$(stamp_path kubectl)")
}

build_containerd() {
  go_install "$CONTAINERD_VERSION" \
    containerd=github.com/containerd/containerd/v2/cmd/containerd \
    containerd-shim-runc-v2=github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
    -- -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=${CONTAINERD_VERSION}"
}

# runc needs cgo for seccomp (libseccomp-dev); Debian's own runc is too old for containerd 2.4.
build_runc() {
  have runc "$RUNC_VERSION" && return 0
  if ! pkg-config --exists libseccomp 2>/dev/null && [ ! -e /usr/include/seccomp.h ]; then
    log "runc needs libseccomp-dev (apt-get install libseccomp-dev)"
    return 1
  fi
  CGO_ENABLED=1 go_install "$RUNC_VERSION" runc=github.com/opencontainers/runc -- -tags seccomp -ldflags "-s -w"
}

build_cni_plugins() {
  go_install "$CNI_PLUGINS_VERSION" \
    cni/bridge=github.com/containernetworking/plugins/plugins/main/bridge \
    cni/loopback=github.com/containernetworking/plugins/plugins/main/loopback \
    cni/host-local=github.com/containernetworking/plugins/plugins/ipam/host-local \
    cni/portmap=github.com/containernetworking/plugins/plugins/meta/portmap \
    -- -ldflags "-s -w"
}

build_crane() {
  go_install "$CRANE_VERSION" crane=github.com/google/go-containerregistry/cmd/crane \
    -- -ldflags "-s -w -X github.com/google/go-containerregistry/cmd/crane/cmd.Version=${CRANE_VERSION}"
}

build_krew() {
  go_install "$KREW_VERSION" krew=sigs.k8s.io/krew/cmd/krew \
    -- -ldflags "-s -w -X sigs.k8s.io/krew/internal/version.gitTag=${KREW_VERSION}"
}

# cosign v2 (a large module graph: a few minutes on two cores, once).
build_cosign() {
  go_install "$COSIGN_VERSION" cosign=github.com/sigstore/cosign/v2/cmd/cosign \
    -- -ldflags "-s -w -X sigs.k8s.io/release-utils/version.gitVersion=${COSIGN_VERSION}"
}

# promtool (Prometheus 3.x; `promtool --version` prints the 3.x version).
build_promtool() {
  local minor=${PROMTOOL_VERSION#v0.}
  minor=${minor%%.*}
  local release="3.$((10#${minor#3})).${PROMTOOL_VERSION##*.}" # v0.316.0: 3.16.0
  go_install "$PROMTOOL_VERSION" promtool=github.com/prometheus/prometheus/cmd/promtool \
    -- -ldflags "-s -w -X github.com/prometheus/common/version.Version=${release}"
}

build_etcd
build_helm
build_crane
build_cni_plugins
build_runc
build_containerd
build_kubectl
build_helm4
build_krew
# kubectl finds krew as a plugin under this name: `kubectl krew install ...`.
[ -e "$bin/kubectl-krew" ] || ln -s krew "$bin/kubectl-krew"
build_cosign
build_promtool
$skip_kubernetes || build_kubernetes
echo "$bin"
