#!/usr/bin/env bash
# Install the Debian 12 packages libthinstack needs (only those missing), then
# configure and build. Idempotent. Environment:
#   BUILD_DIR    build folder (default: build)
#   TS_SANITIZE  e.g. address,undefined or thread (default: none)
#   CMAKE_ARGS   extra arguments for cmake
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential cmake pkg-config git
  libuv1-dev libjansson-dev libxxhash-dev libssl-dev check libfuse3-dev fuse3
  thin-provisioning-tools
  python3 python3-cryptography python3-pytest
  # pip install of the bindings into a venv, offline
  python3-venv python3-pip python3-setuptools python3-wheel
  # the Rust crates (cargo test --offline)
  cargo
  fio qemu-utils nbdkit nbdkit-plugin-dev libnbd-bin e2fsprogs util-linux kmod strace
  # integration/thin_reflink: a loop-mounted XFS with reflink
  xfsprogs
  clang libclang-rt-14-dev clang-format
  # tests/vm: a VM running Debian's kernel with the host's dm tools
  qemu-system-x86 busybox-static dmsetup cryptsetup-bin keyutils cpio xz-utils binutils
  # bench/vhost.sh: qemu-storage-daemon, the vhost-user-blk export to compare with
  qemu-system-common
  # rbd and nbd layers, and the throwaway Ceph cluster tests/ceph starts
  ceph-mon ceph-osd ceph-mgr ceph-common librbd-dev librados-dev libnbd-dev uuid-runtime iproute2
  qemu-block-extra  # bench/rbd.sh: QEMU's rbd driver, the peer qemu-img bench measures
  # the file layer's io_uring path
  liburing-dev
  # manual pages (checked with man -l), the API reference, the config schema's test
  man-db groff-base doxygen python3-jsonschema
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "installing: ${missing[*]}"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

build=${BUILD_DIR:-build}
remote=""
[ "${CI:-}" = true ] && remote="-DTS_REQUIRE_REMOTE=ON -DTS_REQUIRE_URING=ON"   # CI builds rbd, nbd, io_uring
cmake -S . -B "$build" -DTS_WERROR=ON $remote ${TS_SANITIZE:+-DTS_SANITIZE=$TS_SANITIZE} ${CMAKE_ARGS:-} >/dev/null
cmake --build "$build" -j"$(nproc)"
