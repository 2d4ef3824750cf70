#!/usr/bin/env bash
# Installs what cross-building and emulated testing need on Debian 12 (bookworm), where rustup
# cannot add targets: Debian's Rust toolchain (rustc-web, cargo-web), its standard library for
# the target architecture, the cross C toolchain (linker, libc) and qemu-user, and registers
# qemu with binfmt_misc so that tests can spawn the target's binaries (the e2e tests and the
# CLI tests start `sparsewatch` as a child process). Run as root.
#
# Usage: deploy/cross/setup-debian.sh arm64|armhf
set -euo pipefail

arch=${1:?usage: setup-debian.sh arm64|armhf}
case "$arch" in
  arm64) gnu=aarch64-linux-gnu; qemu=aarch64 ;;
  armhf) gnu=arm-linux-gnueabihf; qemu=arm ;;
  *) echo "unknown architecture $arch (arm64 or armhf)" >&2; exit 2 ;;
esac
export DEBIAN_FRONTEND=noninteractive

if ! dpkg --print-foreign-architectures | grep -qx "$arch"; then
  dpkg --add-architecture "$arch"
fi
# A foreign index that fails to download makes apt drop the whole suite's new indexes (seen
# with bookworm-security/armhf: "File has unexpected size ... Mirror sync in progress?"), which
# leaves host and foreign packages at different versions. Fail here, with apt's message.
apt-get update -qq

# The compiler and the target's standard library must be the same release: take the version
# the target architecture has, and install the host toolchain at exactly that version.
v=$(apt-cache policy "libstd-rust-web-dev:$arch" | awk '/Candidate:/ { print $2 }')
if [ -z "$v" ] || [ "$v" = "(none)" ]; then
  echo "no libstd-rust-web-dev:$arch in the package index" >&2
  exit 1
fi
echo "Debian Rust toolchain $v for $arch"
apt-get install -y -qq \
  "rustc-web=$v" "cargo-web=$v" "libstd-rust-web-dev=$v" "libstd-rust-web-dev:$arch=$v" \
  "gcc-$gnu" "libc6-dev-$arch-cross" qemu-user qemu-user-binfmt >/dev/null

# binfmt_misc: without it an emulated test cannot exec another target binary (ENOEXEC).
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e "/proc/sys/fs/binfmt_misc/qemu-$qemu" ]; then
  /lib/systemd/systemd-binfmt "/usr/lib/binfmt.d/qemu-$qemu.conf"
fi
grep -qx enabled "/proc/sys/fs/binfmt_misc/qemu-$qemu"
/usr/bin/rustc --version
