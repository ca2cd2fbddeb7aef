#!/usr/bin/env bash
# Builds tandem's browser package into wasm/pkg/: package.json, the JavaScript client (.js),
# its TypeScript types (.d.ts) and the WebAssembly module (.wasm). Prints the gzipped size.
#
# Usage: bash wasm/build.sh [--debug]
#
# Steps: scripts/build-wasm.sh (release, size-optimised: opt-level z, LTO, one codegen unit,
# std rebuilt with panic=immediate-abort and optimize_for_size) → wasm-opt -Os --converge
# (binaryen from npm) → wasm-bindgen (--target web, the version in Cargo.lock; installed by
# scripts/setup.sh --wasm-bindgen when missing) → wasm-opt again → wasm/js/ joined into one
# module → the JavaScript minified by terser → package.json. npm ci runs in wasm/tools/ when
# its tools are missing.
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
      sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
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
# Tools from npm, pinned in wasm/tools/package-lock.json and installed there with npm ci when
# missing or of another version (wasm/tools/package.json says what each is for). They run under
# Node: JavaScript, and binaryen compiled to WebAssembly; nothing platform-specific is downloaded.
tools="$WASM_DIR/tools"
installed() { node -p "require('$tools/node_modules/$1/package.json').version" 2>/dev/null || true; }
pinned() { awk -F'"' '/"'"$1"'":/ { print $4; exit }' "$tools/package.json"; }
for tool in acorn binaryen terser; do
  [ "$(installed "$tool")" = "$(pinned "$tool")" ] && continue
  command -v npm >/dev/null 2>&1 || die "npm not found: Node.js with npm builds the browser package"
  log "npm ci in wasm/tools ($tool $(pinned "$tool") is missing)"
  (cd "$tools" && npm ci --no-audit --no-fund --loglevel=error) >&2 || die "npm ci failed in $tools"
  break
done
# binaryen's wasm-opt, before wasm-bindgen (on rustc's output) and again after it (on the glue
# it adds); Debian's binaryen (108) is older, gives a larger module and cannot read what
# wasm-bindgen writes. -Os: on this module 0.3 KB smaller than -Oz once gzipped (4 KB larger
# uncompressed; what a browser downloads is the gzipped size). The assumptions it may make:
# - --ignore-implicit-traps: the code is Rust's, which never loads or stores out of bounds and
#   checks its divisions, so those instructions never trap (explicit traps, a panic's
#   `unreachable`, stay);
# - --low-memory-unused: the first 1 KB of memory is the far end of the 1 MB stack (the linker
#   puts the stack first), reached only by a stack overflow;
# - --zero-filled-memory: the module's own memory starts zeroed, as every new WebAssembly memory.
wasm_opt() {
  node "$tools/node_modules/binaryen/bin/wasm-opt" -Os --converge --ignore-implicit-traps \
    --low-memory-unused --zero-filled-memory --enable-bulk-memory --enable-sign-ext \
    --enable-mutable-globals --enable-nontrapping-float-to-int --enable-reference-types \
    --enable-multivalue "$1" -o "$2"
}

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
rm -rf "$PKG"
mkdir -p "$PKG"
input="$wasm"
if [ "${#release[@]}" -gt 0 ]; then
  log "wasm-opt -Os --converge (binaryen $(installed binaryen))"
  wasm_opt "$wasm" "$work/optimized.wasm"
  input="$work/optimized.wasm"
fi
log "wasm-bindgen $want"
wasm-bindgen --target web --remove-name-section --remove-producers-section \
  --out-dir "$work" --out-name tandem_wasm "$input"
if [ "${#release[@]}" -gt 0 ]; then
  log "wasm-opt -Os --converge, after wasm-bindgen"
  wasm_opt "$work/tandem_wasm_bg.wasm" "$PKG/tandem_wasm_bg.wasm"
else
  cp "$work/tandem_wasm_bg.wasm" "$PKG/"
fi
cp "$work/tandem_wasm.d.ts" "$WASM_DIR"/js/*.d.ts "$PKG/"
# The client's modules (wasm/js/) ship joined into one, index.js (wasm/tools/bundle.mjs says
# what it preserves and what stops the build), next to the wasm-bindgen glue it imports. Release
# builds minify both with terser; the documentation lives in the .d.ts files and in wasm/js/. ES
# modules: top-level names are mangled, exported names and property names are not; class names
# are kept (the glue names them in its errors).
node "$tools/bundle.mjs" "$WASM_DIR/js" index.js tandem_wasm.js "$work/index.js" ||
  die "cannot join the modules of $WASM_DIR/js"
for f in "$work/tandem_wasm.js" "$work/index.js"; do
  if [ "${#release[@]}" -gt 0 ]; then
    node "$tools/node_modules/terser/bin/terser" "$f" --module --ecma 2020 --compress --mangle \
      --keep-classnames --comments false --output "$PKG/$(basename "$f")" || die "cannot minify $f"
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
