#!/usr/bin/env bash
# tandem's whole test suite: the one command CI runs (.ci/run) and the README shows.
#
#   ./scripts/test.sh
#
# 1. installs what is missing (Debian packages, PostgreSQL/Redis running, npm packages,
#    wasm-bindgen-cli, cargo-fuzz) — see scripts/setup.sh;
# 2. cargo test for the whole workspace (unit, property, end-to-end with the real binary and
#    stock Yjs clients);
# 3. builds the engine for wasm32-unknown-unknown;
# 4. the browser client: wasm package build, headless Chromium and Node tests (tests/browser);
# 5. each fuzz target for a bounded time (scripts/fuzz-smoke.sh);
# 6. smoke runs: the engine benchmark and the load generator in quick mode (bench/run.sh).
# Every step that fails makes the command fail; nothing is skipped silently.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

step() { printf '\n=== %s ===\n' "$*"; }
t0=$SECONDS

step "setup"
bash scripts/setup.sh --apt --services --tools

step "schemathesis (API conformance tests)"
command -v schemathesis >/dev/null 2>&1 || python3 -m pip install --quiet schemathesis
schemathesis --version

step "npm packages for end-to-end clients"
(cd tests/node && { [ -d node_modules/y-websocket ] || npm ci --no-audit --no-fund; })

step "build"
cargo build --workspace --all-targets --locked

step "cargo test (workspace)"
mkdir -p target
cargo test --workspace --locked --no-fail-fast 2>&1 | tee target/cargo-test.log

step "engine for wasm32-unknown-unknown"
bash scripts/build-wasm.sh tandem-engine --release

step "browser client: wasm package, headless Chromium and Node tests"
bash tests/browser/run.sh

step "fuzz targets, ${FUZZ_SECONDS:-30} s each"
bash scripts/fuzz-smoke.sh

step "engine benchmark (prints numbers)"
cargo bench -p tandem-engine --bench engine --locked

step "load generator, quick mode against tandem, Hocuspocus and the y-websocket server"
bash bench/run.sh --quick

passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' target/cargo-test.log | awk '{s += $4} END {print s + 0}')
failed=$(grep -Eo '[0-9]+ failed;' target/cargo-test.log | awk '{s += $1} END {print s + 0}')
printf '\nall steps passed in %ss\n' "$((SECONDS - t0))"
printf 'tests: %s passed, %s failed\n' "$passed" "$failed"
