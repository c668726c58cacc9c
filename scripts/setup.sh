#!/usr/bin/env bash
# Installs what building and testing vramtrace needs on a fresh Debian 12 machine:
# the pinned Rust toolchains, bpf-linker on LLVM 22, and NVIDIA's driver libraries
# (libcuda1, libnvidia-ml1) from Debian's non-free component for the integration tests, and
# Debian's prometheus (prometheus, promtool) for the service's tests.
# Idempotent: each step is skipped when its result is already there.
set -euo pipefail

STABLE=1.99.1
NIGHTLY=nightly-2026-07-20
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

need_apt=()
dpkg -s llvm-22-dev >/dev/null 2>&1 || need_apt+=(llvm-22-dev)
dpkg -s libcuda1 >/dev/null 2>&1 || need_apt+=(libcuda1)
dpkg -s libnvidia-ml1 >/dev/null 2>&1 || need_apt+=(libnvidia-ml1)
# prometheus (with promtool): the service's tests scrape `vramtrace serve` with the real one.
for p in build-essential pkg-config jq tmux python3 prometheus; do
  dpkg -s "$p" >/dev/null 2>&1 || need_apt+=("$p")
done

if [ ${#need_apt[@]} -gt 0 ]; then
  log "enabling Debian's non-free component (NVIDIA's driver libraries live there)"
  for f in /etc/apt/sources.list.d/debian.sources; do
    [ -f "$f" ] || continue
    if ! grep -q 'non-free' "$f"; then
      $SUDO sed -i -E 's/^(Components:.*\bmain\b)(.*)$/\1\2 contrib non-free non-free-firmware/' "$f"
    fi
  done
  if [ -f /etc/apt/sources.list ] && grep -qE '^deb .*debian' /etc/apt/sources.list && ! grep -q non-free /etc/apt/sources.list; then
    $SUDO sed -i -E '/^deb .*debian/ s/ main( |$)/ main contrib non-free non-free-firmware\1/' /etc/apt/sources.list
  fi
  log "apt-get install ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

if ! command -v rustup >/dev/null 2>&1; then
  echo "rustup is required: https://rustup.rs" >&2
  exit 1
fi
log "rust toolchains $STABLE and $NIGHTLY"
rustup toolchain list | grep -q "^$STABLE" || rustup toolchain install "$STABLE" --profile minimal -c rustfmt,clippy
rustup component list --toolchain "$STABLE" --installed | grep -q clippy || rustup component add --toolchain "$STABLE" rustfmt clippy
rustup toolchain list | grep -q "^$NIGHTLY" || rustup toolchain install "$NIGHTLY" --profile minimal -c rust-src,rustfmt,clippy
rustup component list --toolchain "$NIGHTLY" --installed | grep -q rust-src || rustup component add --toolchain "$NIGHTLY" rust-src

if ! bpf-linker --version 2>/dev/null | grep -q '^bpf-linker 0\.13'; then
  log "bpf-linker 0.13 on LLVM 22"
  PATH=/usr/lib/llvm-22/bin:$PATH cargo +"$STABLE" install bpf-linker --version '^0.13' --locked \
    --no-default-features --features llvm-22
fi

if ! mountpoint -q /sys/kernel/tracing 2>/dev/null; then
  $SUDO mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true
fi
log "setup complete"
