#!/usr/bin/env bash
# Sets up a fresh machine (scripts/setup.sh) and runs every test: unit and property tests,
# the trace reader's tests, and the eBPF integration tests that load the real programs and
# trace the simulated driver and NVIDIA's own libcuda.so.1; then the web page's component
# tests (vitest) and its end-to-end tests in Debian's Chromium against a real
# `vramtrace serve` (screenshots in target/web-artifacts/). The eBPF tests need root: when
# not run as root, the test binaries (and the end-to-end run) run under sudo.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
if [ "$(id -u)" -ne 0 ]; then
  export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="sudo -E"
fi
cargo build --workspace --exclude vramtrace-ebpf --all-targets
cargo test --workspace --exclude vramtrace-ebpf "$@"
( cd web && npm test --silent )
if [ "$(id -u)" -ne 0 ]; then
  sudo -E node web/e2e/run.mjs
else
  node web/e2e/run.mjs
fi
