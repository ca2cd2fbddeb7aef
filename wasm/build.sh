#!/usr/bin/env bash
# Builds tandem's browser package into wasm/pkg/: package.json, the JavaScript client (.js),
# its TypeScript types (.d.ts) and the WebAssembly module (.wasm). Prints the gzipped size.
#
# Usage: bash wasm/build.sh [--debug]
#
# Steps: scripts/build-wasm.sh (release, size-optimised: opt-level z, LTO, one codegen unit,
# std rebuilt with panic=immediate-abort and optimize_for_size) → wasm-opt -Oz --converge
# (binaryen) → wasm-bindgen (--target web, the version in Cargo.lock; installed by
# scripts/setup.sh --wasm-bindgen when missing) → the JavaScript minified by terser (npm ci in
# wasm/minify/ when missing) → package.json.
# The brief's budget: < 250 KB gzipped, wasm + JS (the performance issue's target: < 180 KB).
#
# Environment: WASM_TARGET_DIR (default <repo>/target/wasm-pkg; kept apart from the engine's
# wasm build so their profile settings do not rebuild each other).
set -euo pipefail

WASM_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$WASM_DIR/.." && pwd)"
PKG="$WASM_DIR/pkg"
BUDGET_BYTES=$((250 * 1024))

log() { printf '[wasm/build] %s\n' "$*" >&2; }
die() {
  printf '[wasm/build] ERROR: %s\n' "$*" >&2
  exit 1
}

release=(--release)
for arg in "$@"; do
  case "$arg" in
    --debug) release=() ;;
    -h | --help)
      sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *) die "unknown argument: $arg" ;;
  esac
done

export WASM_TARGET_DIR="${WASM_TARGET_DIR:-$REPO_ROOT/target/wasm-pkg}"
export CARGO_PROFILE_RELEASE_OPT_LEVEL=z CARGO_PROFILE_RELEASE_LTO=true \
  CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 CARGO_PROFILE_RELEASE_DEBUG=0
# With -Zbuild-std (Debian's rustc-web; see scripts/build-wasm.sh) std is rebuilt for the module:
# - panic=immediate-abort: a panic is the `unreachable` trap straight away, with no message
#   formatting, hook or location strings. JavaScript saw the same RuntimeError before (the
#   default hook writes to a stderr that wasm32-unknown-unknown does not have).
# - location-detail=none: no file/line/column strings for #[track_caller] sites.
# - std's optimize_for_size: small sort, formatting and collection code paths (the sorts alone
#   were 47 KB before wasm-opt). Only this browser module is built so; the server's engine is not.
if [ "${#release[@]}" -gt 0 ]; then
  export WASM_STD_RUSTFLAGS="-Zunstable-options -Cpanic=immediate-abort -Zlocation-detail=none"
  export WASM_STD_FEATURES=optimize_for_size
fi

log "building tandem-wasm for wasm32-unknown-unknown"
wasm="$(bash "$REPO_ROOT/scripts/build-wasm.sh" tandem-wasm "${release[@]}")"
[ -f "$wasm" ] || die "no .wasm produced"

want="$(awk '/^\[\[package\]\]/ { p = 0 } /^name = "wasm-bindgen"$/ { p = 1; next }
  p && /^version = / { gsub(/"/, "", $3); print $3; exit }' "$REPO_ROOT/Cargo.lock")"
[ -n "$want" ] || die "Cargo.lock names no wasm-bindgen version"
PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
have="$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)"
if [ "$have" != "$want" ]; then
  log "wasm-bindgen-cli $want is needed (found: ${have:-none}); installing"
  bash "$REPO_ROOT/scripts/setup.sh" --wasm-bindgen
fi
command -v wasm-opt >/dev/null 2>&1 || die "wasm-opt not found: run 'bash scripts/setup.sh --apt' (package binaryen)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
rm -rf "$PKG"
mkdir -p "$PKG"
# wasm-opt runs on rustc's output, before wasm-bindgen: Debian's binaryen (108) rewrites the
# externref table wasm-bindgen adds into a funcref table, which breaks instantiation.
input="$wasm"
if [ "${#release[@]}" -gt 0 ]; then
  log "wasm-opt -Oz --converge"
  wasm-opt -Oz --converge --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
    --enable-nontrapping-float-to-int --enable-reference-types --enable-multivalue \
    "$wasm" -o "$work/optimized.wasm"
  input="$work/optimized.wasm"
fi
log "wasm-bindgen $want"
wasm-bindgen --target web --remove-name-section --remove-producers-section \
  --out-dir "$work" --out-name tandem_wasm "$input"
cp "$work/tandem_wasm_bg.wasm" "$PKG/"
cp "$work/tandem_wasm.d.ts" "$WASM_DIR"/js/*.d.ts "$PKG/"
# The JavaScript ships minified (release builds) by terser, pinned in wasm/minify/package-lock.json
# and installed there with npm ci when missing (pure JavaScript: nothing platform-specific is
# downloaded). The documentation lives in the .d.ts files and in wasm/js/. ES modules: top-level
# names are mangled, exported names and property names are not; class names are kept (the glue
# names them in its errors).
minify_js() {
  "$terser" "$1" --module --ecma 2020 --compress --mangle --keep-classnames --comments false \
    --output "$2"
}
if [ "${#release[@]}" -gt 0 ]; then
  minify="$WASM_DIR/minify"
  terser="$minify/node_modules/.bin/terser"
  want_terser="$(awk -F'"' '/"terser":/ { print $4; exit }' "$minify/package.json")"
  have_terser="$(node -p "require('$minify/node_modules/terser/package.json').version" 2>/dev/null || true)"
  if [ ! -x "$terser" ] || [ "$have_terser" != "$want_terser" ]; then
    command -v npm >/dev/null 2>&1 || die "npm not found: run 'bash scripts/setup.sh --apt' (package npm)"
    log "npm ci in wasm/minify (terser $want_terser)"
    (cd "$minify" && npm ci --no-audit --no-fund --loglevel=error) >&2 || die "npm ci failed in $minify"
  fi
fi
for f in "$work/tandem_wasm.js" "$WASM_DIR"/js/*.js; do
  if [ "${#release[@]}" -gt 0 ]; then
    minify_js "$f" "$PKG/$(basename "$f")" || die "cannot minify $f"
  else
    cp "$f" "$PKG/"
  fi
done

version="$(awk -F'"' '/^version = / { print $2; exit }' "$REPO_ROOT/Cargo.toml")"
cat >"$PKG/package.json" <<JSON
{
  "name": "tandem-client",
  "version": "$version",
  "description": "tandem's browser client: co-edited text fields, registers, per-user undo, presence, offline edits and cross-tab sync over WebAssembly",
  "license": "MIT",
  "type": "module",
  "main": "index.js",
  "module": "index.js",
  "types": "index.d.ts",
  "exports": {
    ".": { "types": "./index.d.ts", "default": "./index.js" },
    "./tandem_wasm_bg.wasm": "./tandem_wasm_bg.wasm"
  },
  "files": [$(cd "$PKG" && ls | sed 's/.*/"&"/' | paste -sd, -)],
  "sideEffects": false
}
JSON

# Size report: what a browser downloads (wasm + JS, each gzipped as a server would send it).
total=0
while IFS= read -r f; do
  raw=$(stat -c %s "$PKG/$f")
  gz=$(gzip -9 -c "$PKG/$f" | wc -c)
  total=$((total + gz))
  printf '[wasm/build]   %-24s %8d bytes, %7d gzipped\n' "$f" "$raw" "$gz" >&2
done < <(cd "$PKG" && ls | grep -E '\.(js|wasm)$')
log "bundle (wasm + JS) gzipped: $total bytes ($((total / 1024)) KB; budget $((BUDGET_BYTES / 1024)) KB)"
log "package: $PKG"
if [ "$total" -ge "$BUDGET_BYTES" ] && [ "${#release[@]}" -gt 0 ]; then
  die "the bundle is over the budget"
fi
