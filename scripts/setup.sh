#!/usr/bin/env bash
# Installs what building and testing vramtrace needs on a fresh Debian 12 machine:
# the pinned Rust toolchains, bpf-linker on LLVM 22, and NVIDIA's driver libraries
# (libcuda1, libnvidia-ml1) from Debian's non-free component for the integration tests,
# Debian's prometheus (prometheus, promtool) and nginx for the service's tests, Node.js (Debian's
# nodejs and npm where no Node 18 or later is installed) and Debian's chromium for the web
# page; then builds the page (web/: npm ci, npm run build into web/dist, which the vramtrace
# binary embeds).
# The newer driver generations Debian ships (550 from trixie, 555 from experimental) are
# fetched with `apt-get download` and unpacked into a side folder, never installed:
# $VRAMTRACE_NVIDIA_DIR (default /var/cache/vramtrace/nvidia)/<generation>/, where the
# tests look for them.
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
# chromium: the web page's end-to-end tests drive Debian's own (playwright-core, no download).
# nginx-light, openssl, curl, systemd (systemd-analyze): the deploy/ samples are checked with
# the tools that run them, and serve is proxied through the nginx sample (TLS, WebSocket).
for p in build-essential pkg-config jq tmux python3 prometheus chromium nginx-light openssl curl systemd; do
  dpkg -s "$p" >/dev/null 2>&1 || need_apt+=("$p")
done

# Node 18 or later builds the web page; Debian 12's nodejs is 18.
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$node_major" -lt 18 ] || ! command -v npm >/dev/null 2>&1; then
  need_apt+=(nodejs npm)
fi

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

# The newer generations: generation and the suite that ships it. The newest package of each
# generation that the suite has is fetched, by its exact version.
NVIDIA_DIR=${VRAMTRACE_NVIDIA_DIR:-/var/cache/vramtrace/nvidia}
SIDE_GENERATIONS=("550 trixie" "555 experimental")
LIBCUDA_IN_PACKAGE=usr/lib/x86_64-linux-gnu/nvidia/current/libcuda.so.1
side_missing=()
for g in "${SIDE_GENERATIONS[@]}"; do
  gen=${g%% *}
  [ -e "$NVIDIA_DIR/$gen/$LIBCUDA_IN_PACKAGE" ] || side_missing+=("$g")
done
if [ ${#side_missing[@]} -gt 0 ]; then
  sources=/etc/apt/sources.list.d/vramtrace-nvidia.sources
  prefs=/etc/apt/preferences.d/vramtrace-nvidia
  if [ ! -f "$sources" ] || [ ! -f "$prefs" ]; then
    log "adding trixie's and experimental's non-free component (pinned to -1: never installed)"
    $SUDO tee "$sources" >/dev/null <<'SOURCES'
# vramtrace: newer NVIDIA driver libraries (550 from trixie, 555 from experimental), fetched by
# scripts/setup.sh with `apt-get download` into a side folder for the tests. Never installed:
# /etc/apt/preferences.d/vramtrace-nvidia pins both suites to -1.
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie experimental
Components: non-free
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    $SUDO tee "$prefs" >/dev/null <<'PREFS'
# vramtrace: nothing from these suites is ever installed; scripts/setup.sh only downloads
# libcuda1 from them, by exact version, into a side folder.
Package: *
Pin: release n=trixie
Pin-Priority: -1

Package: *
Pin: release a=experimental
Pin-Priority: -1
PREFS
  fi
  $SUDO apt-get update -qq
  for g in "${side_missing[@]}"; do
    gen=${g%% *} suite=${g##* }
    version=$(apt-cache madison libcuda1 | awk -v gen="$gen." -v suite="$suite/" \
      'index($3, gen) == 1 && index($0, " " suite) { print $3; exit }')
    if [ -z "$version" ]; then
      echo "no libcuda1 $gen.* in $suite/non-free: apt-cache madison libcuda1 lists none" >&2
      exit 1
    fi
    log "libcuda1=$version ($suite) into $NVIDIA_DIR/$gen (downloaded, not installed)"
    tmp=$(mktemp -d)
    # apt drops root to _apt for the download, which needs to write here.
    chown _apt "$tmp" 2>/dev/null || chmod 777 "$tmp"
    (cd "$tmp" && $SUDO apt-get download -qq "libcuda1=$version")
    $SUDO mkdir -p "$NVIDIA_DIR"
    $SUDO rm -rf "$NVIDIA_DIR/$gen.partial"
    $SUDO dpkg-deb -x "$tmp"/libcuda1_*.deb "$NVIDIA_DIR/$gen.partial"
    echo "$version" | $SUDO tee "$NVIDIA_DIR/$gen.partial/VERSION" >/dev/null
    # Complete or absent: the tests never see half a library.
    $SUDO rm -rf "$NVIDIA_DIR/$gen"
    $SUDO mv "$NVIDIA_DIR/$gen.partial" "$NVIDIA_DIR/$gen"
    rm -rf "$tmp"
  done
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
# The web page: its packages exactly as package-lock.json has them (again only when the lock
# changed), then its build, unless web/dist is newer than every source of it.
WEB="$(cd "$(dirname "$0")/.." && pwd)/web"
lock_sum=$(sha256sum "$WEB/package-lock.json" | cut -d' ' -f1)
if [ "$(cat "$WEB/node_modules/.vramtrace-lock" 2>/dev/null)" != "$lock_sum" ]; then
  log "web: npm ci"
  (cd "$WEB" && npm ci --no-audit --no-fund)
  echo "$lock_sum" > "$WEB/node_modules/.vramtrace-lock"
fi
if [ ! -f "$WEB/dist/index.html" ] || [ -n "$(find "$WEB/src" "$WEB/public" "$WEB/index.html" "$WEB/package-lock.json" \
    "$WEB"/*.config.* "$WEB/tsconfig.json" -newer "$WEB/dist/index.html" -print -quit)" ]; then
  log "web: npm run build (web/dist, embedded in the vramtrace binary)"
  (cd "$WEB" && npm run build)
fi
log "setup complete"
