# imagemap: build, test and run. `make test` is the one test command (CI runs it).
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: all build release release-test test lint fmt crd controlplane dev dev-down bench stress clean image

all: build

build:
	$(CARGO) build --workspace --bins

## Release artifacts into DIST (default dist/), reproducibly: the plugin's archives, the krew
## manifest, the chart, the SBOM, SHA256SUMS; pushes the signed multi-arch webhook image to
## REGISTRY (default localhost:5000). VERSION=X.Y.Z (default: the workspace version).
release:
	VERSION="$(VERSION)" DIST="$(or $(DIST),dist)" REGISTRY="$(or $(REGISTRY),localhost:5000)" bash scripts/release.sh

## The release tests (krew install, signature, SBOM, reproducibility, the binaries' formats, the
## Windows plugin under wine when Debian's wine64 installs, the chart): slow (a release build of
## every target), so a target of their own; CI (`.ci/run`) runs them after `make test`.
release-test: controlplane build
	bash scripts/deps.sh release wine
	IMAGEMAP_CONTROLPLANE_BIN="$$(bash scripts/tools.sh)" \
	  $(CARGO) test -p imagemap-e2e --test release -- --ignored --test-threads=1 --nocapture

## The control-plane binaries (etcd, kube-apiserver, kube-controller-manager, helm), cached
## outside the repository under ~/.cache/imagemap; first the Debian packages the node and the
## tests need (scripts/deps.sh node: installed as root, else it prints the apt-get command).
controlplane:
	bash scripts/deps.sh node
	bash tests/controlplane/build.sh

## Regenerate the CRD from the Rust types into the chart.
crd:
	$(CARGO) run -q -p imagemap-core --bin imagemap-crd > charts/imagemap/crds/imagemaps.tilt.dev.yaml

lint:
	bash scripts/deps.sh node
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	shellcheck tests/src/node/teardown.sh

fmt:
	$(CARGO) fmt --all

## Everything: format, lints, unit tests, and end-to-end tests against a real API server.
test: lint controlplane build
	IMAGEMAP_CONTROLPLANE_BIN="$$(bash scripts/tools.sh)" \
	  $(CARGO) test --workspace --all-targets

## A local cluster for trying things out: the tests' control plane, a node, the registry on
## localhost:5000 and the webhook. Returns with it running in the background. MODE=policy:
## no webhook is registered; the controller keeps MutatingAdmissionPolicies compiled from the maps.
dev: controlplane build
	$(CARGO) run -q -p imagemap-e2e --bin imagemap-dev -- up $(if $(MODE),--mode=$(MODE))

## Stops `make dev` and checks that nothing is left behind.
dev-down:
	$(CARGO) run -q -p imagemap-e2e --bin imagemap-dev -- down

## Longer load and abuse tests (not part of `make test`): the ignored tests.
stress: controlplane build
	IMAGEMAP_CONTROLPLANE_BIN="$$(bash scripts/tools.sh)" \
	  $(CARGO) test --workspace -- --ignored --test-threads=1

## Benchmarks (not part of `make test`).
bench:
	bash scripts/bench.sh

## The webhook's container image, built and pushed without a container engine:
## REGISTRY (default localhost:5000), IMAGE, TAG; see scripts/image.sh.
image:
	bash scripts/image.sh

clean:
	$(CARGO) clean
