#!/usr/bin/env bash
# Runs cargo for another architecture with Debian's toolchain (see setup-debian.sh) and runs
# test binaries under qemu-user. Separate target dir: Debian's rustc differs from rustup's.
#
# Usage: deploy/cross/cargo.sh aarch64|armv7 CARGO-ARGS...
#   deploy/cross/cargo.sh aarch64 test --workspace
#   deploy/cross/cargo.sh aarch64 build --release -p sparsewatch
# CARGO_TARGET_DIR defaults to target/cross (under the workspace).
set -euo pipefail

arch=${1:?usage: cargo.sh aarch64|armv7 CARGO-ARGS...}
shift
case "$arch" in
  aarch64) triple=aarch64-unknown-linux-gnu; gcc=aarch64-linux-gnu-gcc; qemu=qemu-aarch64 ;;
  armv7) triple=armv7-unknown-linux-gnueabihf; gcc=arm-linux-gnueabihf-gcc; qemu=qemu-arm ;;
  *) echo "unknown architecture $arch (aarch64 or armv7)" >&2; exit 2 ;;
esac
root=$(cd "$(dirname "$0")/../.." && pwd)
tvar=$(echo "$triple" | tr 'a-z-' 'A-Z_')

# Debian's cargo and rustc first: they have the target's standard library.
export PATH="/usr/bin:$PATH"
unset RUSTUP_TOOLCHAIN RUSTC RUSTDOC
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/cross}"
export "CARGO_TARGET_${tvar}_LINKER=$gcc"
# `-L /`: the target's libraries are installed multiarch under /usr/lib/<triple> (the
# libstd-rust and libc6-cross packages), and with `-L /usr/<gnu triple>` threads hang.
export "CARGO_TARGET_${tvar}_RUNNER=$qemu -L /"
# Children the tests spawn go through binfmt_misc (setup-debian.sh); same prefix for them.
export QEMU_LD_PREFIX=/
cd "$root"
sub=$1
shift
exec /usr/bin/cargo "$sub" --target "$triple" "$@"
