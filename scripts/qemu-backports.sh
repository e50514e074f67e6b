#!/usr/bin/env bash
# Unpacks QEMU from Debian 12's bookworm-backports into a folder of its own, beside the system's
# QEMU 7.2 and without installing it (RUNNER_QEMU_RAM_TEMPLATE needs QEMU 8.2 or later).
#   scripts/qemu-backports.sh [DIR]     default /var/cache/runner-codes/qemu-backports
# Prints the binary's path last. The backports suite is read from the mirror the system's own
# apt sources name, through a private apt state (the system's sources and lists are untouched).
set -euo pipefail
dest=${1:-/var/cache/runner-codes/qemu-backports}
packages=(qemu-system-x86 qemu-system-common qemu-system-data)
binary=$dest/root/usr/bin/qemu-system-x86_64

if [[ -x $binary ]] && "$binary" --version >/dev/null 2>&1; then
  echo "qemu-backports: $("$binary" --version | head -1) is in $dest" >&2
  echo "$binary"
  exit 0
fi

# The Debian archive's URI as the system's sources give it (deb822 or one-line format).
uri=$(
  { grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources || true
    grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list || true
  } | awk '{print $2}' | grep -v -- '-security' | head -1 || true
)
if [[ -z $uri ]]; then
  echo "qemu-backports: no Debian archive in /etc/apt/sources.list*, so no backports to read" >&2
  exit 1
fi

work=$dest/apt
rm -rf "$work" "$dest/root.partial"
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/debs" "$dest/root.partial"
echo "deb $uri bookworm-backports main" >"$work/sources.list"
apt_opts=(
  -o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
  -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o APT::Sandbox::User=root -q
)
echo "qemu-backports: reading bookworm-backports from the system's Debian archive" >&2
apt-get "${apt_opts[@]}" update >&2
(cd "$work/debs" && apt-get "${apt_opts[@]}" download "${packages[@]/%//bookworm-backports}" >&2)
for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$dest/root.partial"; done
# microvm's firmware is qboot, by the name 7.2's qemu-system-data links to it (the jail binds it).
data=$dest/root.partial/usr/share/qemu
[[ -e $data/bios-microvm.bin ]] || ln -s qboot.rom "$data/bios-microvm.bin"
rm -rf "$dest/root"
mv "$dest/root.partial" "$dest/root"
rm -rf "$work"
echo "qemu-backports: $("$binary" --version | head -1) unpacked into $dest" >&2
echo "$binary"
