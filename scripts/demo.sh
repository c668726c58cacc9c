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
# What the scenario needs of the simulated driver besides its defaults, and the caller's
# CUDA_VISIBLE_DEVICES, passed explicitly since sudo resets the environment.
ENV=()
case "$SCENARIO" in
  second-gpu-oom) ENV+=(SIMCUDA_DEVICES=2 SIMCUDA_CAPACITY=2G) ;;
esac
if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then ENV+=("CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"); fi
echo
echo "\$ sudo ${ENV[*]:+env ${ENV[*]} }vramtrace record --force -o $TRACE --libcuda $LIB -- vramtrace-workload --lib $LIB $SCENARIO"
# The OOM scenarios exit with status 1, which vramtrace record passes on: analyze anyway.
STATUS=0
$SUDO env "${ENV[@]}" ./target/release/vramtrace record --force -o "$TRACE" --libcuda "$LIB" -- \
  ./target/release/vramtrace-workload --lib "$LIB" "$SCENARIO" >/dev/null || STATUS=$?
if [ "$STATUS" -ne 0 ]; then echo "(the workload exited with status $STATUS)"; fi
echo
echo "\$ vramtrace analyze $TRACE"
./target/release/vramtrace analyze "$TRACE"
