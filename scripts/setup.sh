#!/usr/bin/env bash
# Installs the system packages and npm dependencies the project needs on Debian (as root).
#   scripts/setup.sh          what running jobs needs
#   scripts/setup.sh --test   that, plus the toolchains the host-side tests use
set -euo pipefail
cd "$(dirname "$0")/.."

# gcc and libc6-dev build the guest's static exec helper (src/agent/native/runner-exec.c); nftables
# holds the egress policy of networked VMs and iproute2 (ip, tc) their links (docs/network.md).
# qemu-user-static runs a layer's `{guest-cpu}` prepare commands under the guest's CPU model
# (the typescript layer's startup snapshot of tsc; docs/languages.md).
packages=(qemu-system-x86 qemu-user-static debootstrap e2fsprogs cpio lz4 zstd util-linux gcc libc6-dev nftables iproute2)
if [[ "${1:-}" == "--test" ]]; then
  # chromium: the playground's browser test (tests/integration/playground), driven by playwright-core.
  packages+=(python3 bash socat redis-server chromium)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: missing Debian packages: ${missing[*]} (run as root to install them)" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# QEMU runs as this unprivileged user when the service runs as root (RUNNER_QEMU_USER).
if [[ $(id -u) -eq 0 ]] && ! id runner-vmm >/dev/null 2>&1; then
  echo "setup: creating the system user runner-vmm (QEMU runs as it)"
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin runner-vmm
fi

# A clean clone on a warm machine restores node_modules from the copy kept after the last npm ci
# of the same lock file, Node.js and machine (npm ci takes two minutes here, most of it building
# better-sqlite3 from source). RUNNER_NODE_MODULES_CACHE=off always runs npm ci.
nm_cache=${RUNNER_NODE_MODULES_CACHE:-/var/cache/runner-codes/node-modules}
nm_key=$( { sha256sum package-lock.json; node -p 'process.version + " " + process.arch + " " + process.versions.modules'; uname -m; } | sha256sum | cut -c1-16)
nm_archive=$nm_cache/node_modules-$nm_key.tar.zst
if [[ ! -d node_modules && $nm_cache != off && -f $nm_archive ]]; then
  echo "setup: node_modules from $nm_archive (the same lock file, Node.js and machine)"
  rm -rf node_modules.partial
  if mkdir node_modules.partial && tar -x --zstd -f "$nm_archive" -C node_modules.partial; then
    mv node_modules.partial/node_modules node_modules
    rmdir node_modules.partial
    # Newer than the clone's package-lock.json, so the check below sees it current.
    touch node_modules/.package-lock.json
  else
    echo "setup: that archive could not be read; npm ci instead" >&2
    rm -rf node_modules.partial "$nm_archive"
  fi
fi
if [[ ! -d node_modules ]] || [[ package-lock.json -nt node_modules/.package-lock.json ]]; then
  echo "setup: npm ci"
  # --prefer-offline: packages already in npm's cache (a warm machine) are not fetched again; the
  # lock file pins every version and its integrity hash either way.
  npm ci --prefer-offline --no-audit --no-fund
  if [[ $nm_cache != off ]] && mkdir -p "$nm_cache" 2>/dev/null && [[ -w $nm_cache ]]; then
    echo "setup: keeping node_modules in $nm_archive"
    tmp=$nm_archive.partial-$$
    if tar -c --zstd -f "$tmp" node_modules && mv "$tmp" "$nm_archive"; then
      # Only the newest copy of each kind is kept: older lock files' archives go.
      find "$nm_cache" -maxdepth 1 -name 'node_modules-*.tar.zst' ! -name "${nm_archive##*/}" -delete
    else
      rm -f "$tmp"
    fi
  fi
fi

# QEMU 10 from bookworm-backports, beside the system's 7.2: unpacked, not installed, into
# /var/cache/runner-codes/qemu-backports (seconds, 85 MB). RUNNER_QEMU_RAM_TEMPLATE needs it, and
# the RAM template's tests run it (docs/qemu.md, "The RAM template").
# Not fatal: only that setting and that test need it (the test then says why it is skipped).
if [[ $(id -u) -eq 0 ]]; then
  bash scripts/qemu-backports.sh >/dev/null ||
    echo "setup: QEMU 10 from bookworm-backports could not be unpacked (above); RUNNER_QEMU_RAM_TEMPLATE needs it, nothing else does" >&2
fi
