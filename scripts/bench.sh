#!/usr/bin/env bash
# `make bench`: every benchmark of issue 6, each against a baseline measured in the same run,
# then docs/benchmarks.md from the results. Not part of `make test`; no figure is asserted.
#
#   make bench                      # full run (about 25 minutes on two cores), rewrites docs/benchmarks.md
#   IMAGEMAP_BENCH_QUICK=1 make bench   # smoke run: short and small, report in target/bench-results/
#
# Installs its load generator (oha, from crates.io) and unpacks Debian's nginx (the reference
# fixed TLS answer) into ~/.cache/imagemap/tools when missing,
# and uses the control-plane binaries of tests/controlplane/build.sh. All traffic goes to
# 127.0.0.1; every load loop is bounded by a count and a time limit.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO=${CARGO:-cargo}
TOOLS=${IMAGEMAP_TOOLS:-$HOME/.cache/imagemap/tools}
OHA_VERSION=1.16.0
RESULTS=target/bench-results
WORK=target/bench-work
QUICK=${IMAGEMAP_BENCH_QUICK:-}

rm -rf "$RESULTS" "$WORK"
mkdir -p "$RESULTS" "$WORK"
COMMANDS=$RESULTS/commands.txt
: >"$COMMANDS"

# Runs a command and records it, as run, for the report.
run() {
  printf '%s\n' "$*" >>"$COMMANDS"
  echo "+ $*" >&2
  "$@"
}

for tool in taskset openssl; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is required" >&2; exit 1; }
done

# The load generator.
OHA=$TOOLS/bin/oha
if ! [ -x "$OHA" ] || ! "$OHA" --version | grep -q "$OHA_VERSION"; then
  echo "bench: installing oha $OHA_VERSION into $TOOLS (a few minutes on two cores)" >&2
  "$CARGO" install oha --version "$OHA_VERSION" --locked --root "$TOOLS"
fi

# The reference fixed TLS answer: Debian's nginx, unpacked (not installed: no service starts).
NGINX_DIR=$TOOLS/nginx-$(apt-cache policy nginx 2>/dev/null | sed -n 's/^ *Candidate: //p')
if ! [ -x "$NGINX_DIR/usr/sbin/nginx" ]; then
  command -v apt-get >/dev/null || { echo "bench: nginx comes from Debian's package (apt-get download nginx)" >&2; exit 1; }
  echo "bench: unpacking Debian's nginx into $NGINX_DIR" >&2
  rm -rf "$NGINX_DIR.tmp" && mkdir -p "$NGINX_DIR.tmp"
  (cd "$NGINX_DIR.tmp" && apt-get download -q nginx 2>/dev/null && dpkg -x nginx_*.deb root)
  mv "$NGINX_DIR.tmp/root" "$NGINX_DIR" && rm -rf "$NGINX_DIR.tmp"
fi
export IMAGEMAP_BENCH_NGINX=$NGINX_DIR/usr/sbin/nginx
"$IMAGEMAP_BENCH_NGINX" -v

# The control plane (cached after its first build).
IMAGEMAP_CONTROLPLANE_BIN="$(bash scripts/tools.sh)"
export IMAGEMAP_CONTROLPLANE_BIN

run "$CARGO" build --release -p imagemap-webhook -p imagemap-bench --bins
# The webhook measured (over TLS, end to end, memory) is the container image's binary: static
# glibc, built by scripts/image.sh with the image's flags (docs/decisions.md).
WEBHOOK=$(run bash scripts/image.sh binary)
case $WEBHOOK in /*) ;; *) WEBHOOK=$PWD/$WEBHOOK ;; esac
export IMAGEMAP_BENCH_WEBHOOK=$WEBHOOK
BENCH=target/release/imagemap-bench
run "$BENCH" machine

# 1, 2: in process (criterion), then ratios from its estimates.
if [ -n "$QUICK" ]; then
  CRITERION_ARGS=(--warm-up-time 0.5 --measurement-time 1 --sample-size 10)
else
  CRITERION_ARGS=(--warm-up-time 2 --measurement-time 5)
fi
run "$CARGO" bench -p imagemap-core --bench admission -- "${CRITERION_ARGS[@]}"
run "$BENCH" criterion --dir target/criterion
if command -v valgrind >/dev/null && command -v callgrind_annotate >/dev/null; then
  run "$BENCH" profile --iterations "$([ -n "$QUICK" ] && echo 30 || echo 300)"
else
  echo "bench: valgrind not installed; skipping the instruction profile" >&2
fi

# 3, 4: over TLS. This process (and oha, its child) on core 1; the servers pin themselves to core 0.
if [ -n "$QUICK" ]; then
  run taskset -c 1 "$BENCH" tls --oha "$OHA" --seconds 2 --rounds 1
  run taskset -c 1 "$BENCH" handshakes --count 300 --seconds 10
else
  run taskset -c 1 "$BENCH" tls --oha "$OHA" --seconds 10 --rounds 2
  run taskset -c 1 "$BENCH" handshakes --count 3000 --seconds 30
fi

# 5, 6: against a real API server (and Pod creates by admission mode: webhook, compiled and
# naive MutatingAdmissionPolicies, against an opted-out namespace).
if [ -n "$QUICK" ]; then
  run "$BENCH" e2e --rounds 1 --serial 30 --concurrent 100
  run "$BENCH" modes --rounds 1 --pods 60 --seconds 30
  run "$BENCH" memory --counts 1000,3000 --create-seconds 120
else
  run "$BENCH" e2e --rounds 2 --serial 300 --concurrent 1000 --seconds 60
  run "$BENCH" modes --rounds 3 --pods 400 --seconds 60
  run "$BENCH" memory --counts 10000,100000 --create-seconds 900
fi

OUT=docs/benchmarks.md
[ -n "$QUICK" ] && OUT=$RESULTS/benchmarks.md
"$BENCH" report --commands "$COMMANDS" --notes bench/notes.md --out "$OUT"
echo "bench: wrote $OUT" >&2
