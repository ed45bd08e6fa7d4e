# shellcheck shell=bash
# Sourced by scripts/image.sh and scripts/release.sh: the one environment their release builds
# run in, so `make image` and `make release` share every compiled unit.
#
#   release_build_env EXTRA_RUSTFLAG...   (call it in a subshell: it unsets and exports)
#
# Build scripts rerun when a variable they read changes, and a rerun rebuilds every crate above
# them (ring's and psm's, through cc, read CFLAGS; the host units are shared by the webhook and
# the plugin). So every build sets the same values here and clears what a caller may have set:
# the CARGO_* variables a calling `cargo test` exports, RUSTFLAGS (the flags are set, not added
# to: other flags would give other bytes). Host tools (build scripts, proc macros) do not get
# the rustflags, since the callers name a target.
release_build_env() {
  local root=$PWD cargo_home=${CARGO_HOME:-$HOME/.cargo}
  unset RUSTFLAGS CARGO_BUILD_RUSTFLAGS CARGO_MANIFEST_DIR CARGO_MANIFEST_PATH CARGO_MANIFEST_LINKS \
    CARGO_PKG_NAME CARGO_PKG_VERSION CARGO_PKG_VERSION_MAJOR CARGO_PKG_VERSION_MINOR \
    CARGO_PKG_VERSION_PATCH CARGO_PKG_VERSION_PRE OUT_DIR
  export SOURCE_DATE_EPOCH=${EPOCH:?EPOCH must be set before release_build_env}
  # C code (ring, psm) without the build's paths in it.
  export CFLAGS="-ffile-prefix-map=$root=/src -ffile-prefix-map=$cargo_home=/cargo"
  local flags=(-C target-feature=+crt-static "--remap-path-prefix=$root=/src"
    "--remap-path-prefix=$cargo_home=/cargo" "$@")
  local IFS=$'\x1f'
  export CARGO_ENCODED_RUSTFLAGS="${flags[*]}"
}
