#!/usr/bin/env bash
# Builds one workspace crate for wasm32-unknown-unknown and prints the path of
# the produced .wasm (or, for a crate that is not a cdylib, of its .rlib) on stdout.
#
# Usage: bash scripts/build-wasm.sh <crate> [--release]
#
# Toolchain: when the active rustup toolchain has the wasm32-unknown-unknown
# target installed, plain `cargo build --target wasm32-unknown-unknown` is used.
# Otherwise Debian's rustc-web (installed by scripts/setup.sh) builds std from
# source with -Zbuild-std and links with wasm-ld from the lld package.
#
# Environment: WASM_TARGET_DIR (default <repo>/target/wasm); WASM_STD_RUSTFLAGS and
# WASM_STD_FEATURES, used only with -Zbuild-std (std is rebuilt, so unstable flags apply):
# extra rustc flags for every crate of the build and -Zbuild-std-features (wasm/build.sh sets
# both to make the browser package small).
# Panics abort on wasm32 (the workspace's release profile says unwind, which the
# target's std is not built for): CARGO_PROFILE_*_PANIC=abort is set here.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
TARGET=wasm32-unknown-unknown

log() { printf '[build-wasm] %s\n' "$*" >&2; }
die() {
  printf '[build-wasm] ERROR: %s\n' "$*" >&2
  exit 1
}

crate=""
profile_flag=()
profile_dir=debug
for arg in "$@"; do
  case "$arg" in
    --release) profile_flag=(--release) profile_dir=release ;;
    -h | --help)
      sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    -*) die "unknown option: $arg" ;;
    *)
      [ -z "$crate" ] || die "only one crate may be given (got '$crate' and '$arg')"
      crate="$arg"
      ;;
  esac
done
[ -n "$crate" ] || die "usage: $0 <crate> [--release]"

target_dir="${WASM_TARGET_DIR:-$REPO_ROOT/target/wasm}"
messages="$(mktemp)"
trap 'rm -f "$messages"' EXIT

export CARGO_PROFILE_RELEASE_PANIC=abort CARGO_PROFILE_DEV_PANIC=abort
# Variables a parent cargo or rustup may have left behind; they would point the
# build at another toolchain or at native flags.
unset RUSTC_WRAPPER RUSTC_WORKSPACE_WRAPPER CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_TARGET

cd "$REPO_ROOT"

rustup_has_target() {
  command -v rustup >/dev/null 2>&1 || return 1
  rustup target list --installed 2>/dev/null | grep -qx "$TARGET"
}

if rustup_has_target; then
  log "using the rustup toolchain ($(rustc -V)) with its installed $TARGET target"
  [ -z "${WASM_STD_RUSTFLAGS:-}${WASM_STD_FEATURES:-}" ] ||
    log "WASM_STD_RUSTFLAGS and WASM_STD_FEATURES are ignored: this std is prebuilt (the module is larger)"
  unset RUSTC
  cargo build "${profile_flag[@]}" --target "$TARGET" --target-dir "$target_dir" -p "$crate" \
    --message-format=json-render-diagnostics >"$messages"
else
  if [ ! -x /usr/bin/cargo ] || [ ! -x /usr/bin/rustc ]; then
    die "Debian's rustc-web/cargo-web are not installed: run 'bash scripts/setup.sh --apt'"
  fi
  [ -d /usr/lib/rustlib/src/rust/library ] ||
    die "Debian's rust-web-src is not installed: run 'bash scripts/setup.sh --apt'"
  command -v wasm-ld >/dev/null 2>&1 || die "wasm-ld not found: run 'bash scripts/setup.sh --apt' (package lld)"
  # Keep rustup's proxies (~/.cargo/bin/rustc, cargo, rustdoc) out of this build.
  clean_path=""
  IFS=: read -r -a path_parts <<<"$PATH"
  for p in "${path_parts[@]}"; do
    case "$p" in
      "" | */.cargo/bin | */.rustup/*) ;;
      *) clean_path="${clean_path:+$clean_path:}$p" ;;
    esac
  done
  unset RUSTUP_TOOLCHAIN RUSTDOC CARGO
  std_features=()
  [ -z "${WASM_STD_FEATURES:-}" ] || std_features=("-Zbuild-std-features=$WASM_STD_FEATURES")
  log "using Debian's $(/usr/bin/rustc -V) with -Zbuild-std (rustup has no $TARGET target)"
  [ -z "${WASM_STD_RUSTFLAGS:-}${WASM_STD_FEATURES:-}" ] ||
    log "std features: ${WASM_STD_FEATURES:-default}; rustflags: ${WASM_STD_RUSTFLAGS:-none}"
  PATH="$clean_path" RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1 \
    CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=wasm-ld \
    CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="${WASM_STD_RUSTFLAGS:-}" \
    /usr/bin/cargo build "${profile_flag[@]}" --target "$TARGET" \
    -Zbuild-std=std,panic_abort ${std_features[@]+"${std_features[@]}"} \
    --target-dir "$target_dir" -p "$crate" \
    --message-format=json-render-diagnostics >"$messages"
fi

# The artifact lines of the requested crate name its files; take the .wasm, else the .rlib.
lib_name="${crate//-/_}"
wasm="$(grep '"reason":"compiler-artifact"' "$messages" | grep -o '"[^"]*/'"$lib_name"'\.wasm"' | tail -n 1 | tr -d '"' || true)"
if [ -n "$wasm" ] && [ -f "$wasm" ]; then
  printf '%s\n' "$wasm"
  exit 0
fi
rlib="$(grep '"reason":"compiler-artifact"' "$messages" | grep -oE '"[^"]*/lib'"$lib_name"'(-[^"/]*)?\.rlib"' | tail -n 1 | tr -d '"' || true)"
if [ -n "$rlib" ] && [ -f "$rlib" ]; then
  log "$crate is not a cdylib, so no .wasm was produced; its library for $TARGET is:"
  printf '%s\n' "$rlib"
  exit 0
fi
expected="$target_dir/$TARGET/$profile_dir/$lib_name.wasm"
if [ -f "$expected" ]; then
  printf '%s\n' "$expected"
  exit 0
fi
die "the build succeeded but no .wasm or .rlib for $crate was found in cargo's output"
