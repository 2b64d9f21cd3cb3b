#!/usr/bin/env bash
# Build (or find in the cache) a small VM that runs Debian's stock kernel with
# the device-mapper targets, for checking our formats against the real kernel.
#
#   tests/vm/build-vm.sh            prints the VM folder on stdout
#
# Everything comes from Debian packages: the kernel package is fetched with
# `apt-get download` and unpacked with `dpkg -x`, never installed on the host.
# The initramfs holds busybox, the dm modules and the host's dmsetup,
# pdata_tools, cryptsetup, keyctl, e2fsprogs, fio and util-linux's fallocate
# and fstrim with the libraries they load.
#
# The result is cached in $TS_VM_CACHE (default
# ${XDG_CACHE_HOME:-$HOME/.cache}/thinstack-vm), in a folder named after the
# versions of every package that goes into it and a hash of this script, so a
# CI run builds it once and a package upgrade builds a new one.
set -euo pipefail
log() { echo "build-vm: $*" >&2; }
here=$(cd "$(dirname "$0")" && pwd)
cache=${TS_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/thinstack-vm}

host_pkgs=(qemu-system-x86 busybox-static dmsetup thin-provisioning-tools cryptsetup-bin
           keyutils e2fsprogs util-linux coreutils kmod cpio gzip xz-utils binutils fio)
missing=()
for p in "${host_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# The kernel is whatever linux-image-amd64 depends on in the configured suite.
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$kpkg" ]; then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
fi
[ -n "$kpkg" ] || { log "cannot tell which kernel package linux-image-amd64 depends on"; exit 1; }
kver=$(apt-cache policy "$kpkg" | awk '/Candidate:/ {print $2}')

key=$( { echo "$kpkg $kver"
         for p in "${host_pkgs[@]}"; do dpkg-query -W -f='${Package} ${Version}\n' "$p"; done
         sha256sum "$here/build-vm.sh" "$here/init.sh" | cut -d' ' -f1; } | sha256sum | cut -c1-16)
out=$cache/$kpkg-$key
if [ -f "$out/ready" ]; then
  echo "$out"
  exit 0
fi

log "building $out ($kpkg $kver)"
mkdir -p "$cache"
work=$(mktemp -d "$cache/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download "$kpkg" >&2) || {
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  (cd "$work" && apt-get download "$kpkg" >&2)
}
deb=$(ls "$work"/"$kpkg"_*.deb)
dpkg -x "$deb" "$work/k"
kv=$(ls "$work/k/lib/modules")
depmod -b "$work/k" "$kv"

# Under TCG the bzImage's XZ decompressor runs emulated; QEMU can boot the
# uncompressed ELF through its PVH note instead, so take it out of the bzImage.
cp "$work/k/boot/vmlinuz-$kv" "$work/vmlinuz"
xzoff=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$work/vmlinuz" | head -1 | cut -d: -f1 || true)
if [ -n "$xzoff" ]; then
  # xz stops after the first stream and tail may then die of SIGPIPE.
  tail -c +$((xzoff + 1)) "$work/vmlinuz" | xz -dc --single-stream > "$work/vmlinux" 2>/dev/null || true
fi
if [ -s "$work/vmlinux" ] && readelf -n "$work/vmlinux" 2>/dev/null | grep -q 'note type: (0x00000012)\|Xen.*0x00000012'; then
  log "uncompressed vmlinux with a PVH entry extracted"
else
  rm -f "$work/vmlinux"
  log "no PVH vmlinux; the bzImage will be booted"
fi

r=$work/root
mkdir -p "$r"/{bin,dev,proc,sys,run,tmp,out,test,etc,lib/modules/"$kv"}
ln -s lib "$r/lib64"
mkdir -p "$r/usr"
# Libraries keep the absolute paths ldd prints, with the usr-merged layout.
ln -s ../bin "$r/usr/bin"; ln -s ../bin "$r/usr/sbin"; ln -s bin "$r/sbin"; ln -s ../lib "$r/usr/lib"
cp /bin/busybox "$r/bin/busybox"
for a in $("$r/bin/busybox" --list); do
  [ -e "$r/bin/$a" ] || ln -s busybox "$r/bin/$a"
done

modules=(virtio_pci virtio_blk loop dm-mod dm-thin-pool dm-snapshot dm-crypt dm-log-writes
         dm-zero dm-flakey crc32c_generic crc32c-intel aesni_intel xts ecb cbc sha256_ssse3
         algif_skcipher ext4)
: > "$r/etc/modules"
for m in "${modules[@]}"; do
  found=0
  while read -r kind path _; do
    [ "$kind" = insmod ] || continue
    found=1
    rel=${path#"$work/k"}
    grep -qxF "$rel" "$r/etc/modules" || echo "$rel" >> "$r/etc/modules"
  done < <(modprobe -d "$work/k" -S "$kv" --show-depends "$m" 2>/dev/null)
  # Built into the kernel is fine too; only a module missing everywhere is an error.
  [ $found = 1 ] || grep -qw "${m//-/_}" "$work/k/lib/modules/$kv/modules.builtin" 2>/dev/null \
    || grep -qw "$m" "$work/k/lib/modules/$kv/modules.builtin" 2>/dev/null \
    || log "module $m: neither a module nor built in"
done
while read -r rel; do
  mkdir -p "$r$(dirname "$rel")"
  cp "$work/k$rel" "$r$rel"
done < "$r/etc/modules"

bins=(/usr/sbin/dmsetup /usr/sbin/pdata_tools /usr/sbin/cryptsetup /usr/bin/keyctl
      /usr/sbin/blkdiscard /usr/sbin/blockdev /usr/sbin/losetup /usr/bin/dd /usr/bin/sha256sum
      /usr/bin/cmp /bin/bash /usr/sbin/mkfs.ext4 /usr/sbin/e2fsck /usr/bin/truncate /usr/bin/stat
      /usr/bin/fio /usr/bin/fallocate /usr/sbin/fstrim /usr/sbin/debugfs)
for b in "${bins[@]}"; do
  [ -e "$b" ] || { log "$b is missing on the host"; exit 1; }
  rm -f "$r/bin/$(basename "$b")"
  cp "$(readlink -f "$b")" "$r/bin/$(basename "$b")"
  ldd "$b" | awk '/=> \// {print $3} /^\t\/.*ld-linux/ {print $1}' | while read -r lib; do
    [ -e "$r$lib" ] || { mkdir -p "$r$(dirname "$lib")"; cp -L "$lib" "$r$lib"; }
  done
done
for t in thin_check thin_dump thin_restore thin_ls thin_delta thin_metadata_size; do
  ln -sf pdata_tools "$r/bin/$t"
done
install -m 755 "$here/init.sh" "$r/init"

(cd "$r" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 > "$work/initramfs.gz"
{
  echo "kernel $kpkg $kver ($kv)"
  for p in "${host_pkgs[@]}"; do dpkg-query -W -f='${Package} ${Version}\n' "$p"; done
  echo "modules:"; sed 's/^/  /' "$r/etc/modules"
} > "$work/manifest"
mkdir -p "$out"
for f in vmlinuz vmlinux initramfs.gz manifest; do
  [ -e "$work/$f" ] && mv "$work/$f" "$out/"
done
touch "$out/ready"
log "ready: $out ($(du -sh "$out" | cut -f1))"
echo "$out"
