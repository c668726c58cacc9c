#!/usr/bin/env bash
# Sets up a fresh machine, builds vramtrace, records a workload on the simulated CUDA driver
# (a stand-in libcuda.so.1 built from tests/simcuda, for machines without a GPU) and prints
# the analysis. Recording needs root: it runs under sudo when you are not root.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release -p vramtrace -p simcuda -p workloads
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
LIB="$PWD/target/release/libsimcuda.so"
TRACE="${TRACE:-$PWD/target/demo.jsonl}"
SCENARIO="${1:-mixed}"
echo
echo "\$ sudo vramtrace record -o $TRACE --libcuda $LIB -- vramtrace-workload --lib $LIB $SCENARIO"
$SUDO ./target/release/vramtrace record -o "$TRACE" --libcuda "$LIB" -- \
  ./target/release/vramtrace-workload --lib "$LIB" "$SCENARIO" >/dev/null
echo
echo "\$ vramtrace analyze $TRACE"
./target/release/vramtrace analyze "$TRACE"
