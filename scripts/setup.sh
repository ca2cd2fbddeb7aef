#!/usr/bin/env bash
# Installs what tandem's builds and tests need on a Debian bookworm machine
# (run as root), checking before installing, so a second run takes seconds.
#
# Usage: bash scripts/setup.sh [STEP...]
#   --apt            Debian packages (rustc-web toolchain for wasm32, lld, chromium, ...)
#   --services       start PostgreSQL and Redis if they do not answer, wait until both do
#   --wasm-bindgen   cargo install wasm-bindgen-cli at the wasm-bindgen version in Cargo.lock
#   --cargo-fuzz     cargo install cargo-fuzz
#   --tools          --wasm-bindgen and --cargo-fuzz
#   --all            every step above
# With no step given: --apt --services.
#
# Environment: SERVICES_WAIT_SECONDS (see services.sh), EXTRA_APT_PACKAGES (space separated).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
# shellcheck source=scripts/services.sh
. "$SCRIPT_DIR/services.sh"

APT_PACKAGES=(
  rustc-web     # Debian's Rust (1.96 on bookworm), used with -Zbuild-std for wasm32
  cargo-web     # its cargo (/usr/bin/cargo)
  rust-web-src  # std sources for -Zbuild-std
  lld           # wasm-ld
  chromium      # headless browser tests
  chromium-driver
  pkg-config
)

log() { printf '[setup] %s\n' "$*"; }
die() {
  printf '[setup] ERROR: %s\n' "$*" >&2
  exit 1
}

# Rustup's cargo (the native toolchain), never Debian's /usr/bin/cargo.
rustup_cargo() {
  if [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
    printf '%s\n' "${CARGO_HOME:-$HOME/.cargo}/bin/cargo"
  else
    command -v cargo || die "no cargo found on PATH"
  fi
}

pkg_installed() {
  [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

install_apt() {
  local missing=() pkg
  # shellcheck disable=SC2206
  local wanted=("${APT_PACKAGES[@]}" ${EXTRA_APT_PACKAGES:-})
  for pkg in "${wanted[@]}"; do
    pkg_installed "$pkg" || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    log "apt: all present (${wanted[*]})"
    return 0
  fi
  [ "$(id -u)" -eq 0 ] || die "apt: need root to install: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  log "apt: missing ${missing[*]}; running apt-get update"
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  log "apt: installing ${missing[*]}"
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}"
  for pkg in "${missing[@]}"; do
    pkg_installed "$pkg" || die "apt: $pkg is still not installed"
  done
  log "apt: installed ${missing[*]}"
}

# Prints the version of the wasm-bindgen crate recorded in Cargo.lock, or nothing.
lockfile_wasm_bindgen_version() {
  local lock="$REPO_ROOT/Cargo.lock"
  [ -f "$lock" ] || return 0
  awk '
    /^\[\[package\]\]/ { in_pkg = 0 }
    /^name = "wasm-bindgen"$/ { in_pkg = 1; next }
    in_pkg && /^version = / { gsub(/"/, "", $3); print $3; exit }
  ' "$lock"
}

install_wasm_bindgen() {
  local want have=""
  want="$(lockfile_wasm_bindgen_version)"
  if [ -z "$want" ]; then
    log "wasm-bindgen-cli: skipped, $REPO_ROOT/Cargo.lock has no wasm-bindgen crate yet"
    return 0
  fi
  if command -v wasm-bindgen >/dev/null 2>&1; then
    have="$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')"
  fi
  if [ "$have" = "$want" ]; then
    log "wasm-bindgen-cli: $want already installed"
    return 0
  fi
  log "wasm-bindgen-cli: installing $want (found: ${have:-none}) with cargo install --locked"
  # The crate's own lockfile may name a dependency version the registry no
  # longer offers (seen: webpki-roots 1.0.11 for 0.2.130); then resolve afresh.
  if ! env -u CARGO_TARGET_DIR -u RUSTC "$(rustup_cargo)" install --locked --force wasm-bindgen-cli --version "=$want"; then
    log "wasm-bindgen-cli: --locked install failed; retrying without --locked"
    env -u CARGO_TARGET_DIR -u RUSTC "$(rustup_cargo)" install --force wasm-bindgen-cli --version "=$want"
  fi
  have="$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')"
  [ "$have" = "$want" ] || die "wasm-bindgen-cli: expected $want, wasm-bindgen --version says '${have:-nothing}' (is ~/.cargo/bin on PATH?)"
  log "wasm-bindgen-cli: $want installed"
}

install_cargo_fuzz() {
  if command -v cargo-fuzz >/dev/null 2>&1; then
    log "cargo-fuzz: already installed ($(cargo-fuzz --version 2>/dev/null || echo '?'))"
    return 0
  fi
  log "cargo-fuzz: installing with cargo install --locked"
  env -u CARGO_TARGET_DIR -u RUSTC "$(rustup_cargo)" install --locked cargo-fuzz
  command -v cargo-fuzz >/dev/null 2>&1 || die "cargo-fuzz: installed but not on PATH (is ~/.cargo/bin on PATH?)"
  log "cargo-fuzz: installed ($(cargo-fuzz --version))"
}

main() {
  local do_apt=0 do_services=0 do_wb=0 do_fuzz=0 any=0 arg
  for arg in "$@"; do
    case "$arg" in
      --apt) do_apt=1 ;;
      --services) do_services=1 ;;
      --wasm-bindgen) do_wb=1 ;;
      --cargo-fuzz) do_fuzz=1 ;;
      --tools) do_wb=1 do_fuzz=1 ;;
      --all) do_apt=1 do_services=1 do_wb=1 do_fuzz=1 ;;
      -h | --help)
        sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        return 0
        ;;
      *) die "unknown argument: $arg (try --help)" ;;
    esac
    any=1
  done
  if [ "$any" -eq 0 ]; then
    do_apt=1 do_services=1
  fi

  local start=$SECONDS
  [ "$do_apt" -eq 0 ] || install_apt
  [ "$do_services" -eq 0 ] || ensure_services
  [ "$do_wb" -eq 0 ] || install_wasm_bindgen
  [ "$do_fuzz" -eq 0 ] || install_cargo_fuzz
  log "done in $((SECONDS - start))s"
}

main "$@"
