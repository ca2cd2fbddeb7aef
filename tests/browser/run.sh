#!/usr/bin/env bash
# tandem's browser client tests, in one command:
#   1. builds the browser package (wasm/build.sh) and the server (cargo build -p tandem-server);
#   2. installs the npm packages (npm ci: playwright-core, yjs, y-websocket, ws);
#   3. runs the demo page in headless Chromium (Debian's /usr/bin/chromium, driven by
#      playwright-core; no browser is downloaded) and the Node tests (the wasm client with a
#      stock y-websocket client, heartbeat and reconnect). Each test file starts its own
#      `tandem serve` on a free loopback port.
# Screenshots land in target/artifacts/browser/. Exits non-zero on any failure.
#
# Environment: TANDEM_BIN (a prebuilt tandem binary: skips the cargo build), CHROMIUM,
# SKIP_WASM_BUILD=1 (reuse wasm/pkg as it is).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$HERE/../.." && pwd)"
log() { printf '[browser-tests] %s\n' "$*"; }
die() {
  printf '[browser-tests] ERROR: %s\n' "$*" >&2
  exit 1
}

[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || die "chromium not found: run 'bash scripts/setup.sh --apt'"

if [ "${SKIP_WASM_BUILD:-0}" != 1 ] || [ ! -f "$REPO_ROOT/wasm/pkg/index.js" ]; then
  log "building the browser package"
  bash "$REPO_ROOT/wasm/build.sh"
fi

if [ -z "${TANDEM_BIN:-}" ]; then
  log "building the server"
  (cd "$REPO_ROOT" && cargo build -p tandem-server --bin tandem --locked)
  target_dir="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
  export TANDEM_BIN="$target_dir/debug/tandem"
fi
[ -x "$TANDEM_BIN" ] || die "no tandem binary at $TANDEM_BIN"

log "npm ci"
(cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error)

export TANDEM_ARTIFACTS="${TANDEM_ARTIFACTS:-$REPO_ROOT/target/artifacts/browser}"
mkdir -p "$TANDEM_ARTIFACTS"
log "running the tests (screenshots: $TANDEM_ARTIFACTS)"
cd "$HERE"
node --test --test-concurrency=1 --test-reporter=spec demo.test.mjs node-client.test.mjs inbox-client.test.mjs deflate.test.mjs
