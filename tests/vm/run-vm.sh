#!/usr/bin/env bash
# Boot the test VM (tests/vm/build-vm.sh) and run a script inside it.
#
#   tests/vm/run-vm.sh [-d IMG[:ro]]... [-V SOCKET[:QUEUES]]... [-f FILE]...
#                      [-q QEMU_ARG]... [-t SECONDS] SCRIPT
#
# Each -d attaches a raw image as a virtio disk, each -V a vhost-user-blk
# disk served on SOCKET (with QUEUES queues, default 1; the guest's memory
# is then a shared memfd the server maps): /dev/vda, /dev/vdb, ... in the
# order given. Each -f copies a file into the guest's /test; each -q passes
# one more argument to QEMU. SCRIPT runs there as
# root under bash with the dm modules loaded and DM_DISABLE_UDEV=1.
# What the script prints comes out on stdout; the kernel's console goes to
# $TS_VM_CONSOLE (default: a temporary file, shown on stderr when the VM dies).
# The exit status is the script's, 124 on timeout, 125 when the VM stopped
# without reporting one. A line "vm: boot ..s script ..s wall ..s accel X"
# goes to stderr.
#
# Environment: TS_VM_DIR (a built VM; default: build it or take it from the
# cache), TS_VM_ACCEL (kvm|tcg; default: kvm only with kvm_intel or kvm_amd
# loaded), TS_VM_MEM (MiB, default 1024), TS_VM_CPUS (default 2).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
disks=() files=() extra=() timeout=600 shared=
while getopts "d:V:f:q:t:" o; do
  case $o in
    d) disks+=("$OPTARG") ;;
    V) disks+=("vhost:$OPTARG") shared=1 ;;
    q) extra+=("$OPTARG") ;;
    f) files+=("$OPTARG") ;;
    t) timeout=$OPTARG ;;
    *) sed -n '2,23p' "$0" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ $# = 1 ] || { sed -n '2,23p' "$0" >&2; exit 2; }
script=$1
vm=${TS_VM_DIR:-$("$here/build-vm.sh")}
[ -f "$vm/ready" ] || { echo "run-vm: $vm is not a built VM" >&2; exit 2; }

# /dev/kvm alone is not enough: a nested PVM hypervisor (kvm_pvm) offers it
# but cannot run a stock kernel, so only the hardware modules count.
accel=${TS_VM_ACCEL:-}
if [ -z "$accel" ]; then
  accel=tcg
  if [ -w /dev/kvm ] && { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; }; then
    accel=kvm
  fi
fi
if [ "$accel" = kvm ]; then
  qaccel=(-accel kvm -cpu host)
else
  qaccel=(-accel tcg,thread=multi,tb-size=512 -cpu max)
fi
kernel=$vm/vmlinuz
[ -f "$vm/vmlinux" ] && kernel=$vm/vmlinux

work=$(mktemp -d "${TMPDIR:-/tmp}/thinstack-vm.XXXXXX")
trap 'rm -rf "$work"' EXIT
console=${TS_VM_CONSOLE:-$work/console.log}
# The script and its files ride in a second cpio appended to the initramfs;
# the kernel unpacks both into one root.
mkdir -p "$work/ov/test"
cp "$script" "$work/ov/test/run.sh"
for f in "${files[@]+"${files[@]}"}"; do cp "$f" "$work/ov/test/"; done
(cd "$work/ov" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 > "$work/ov.gz"
cat "$vm/initramfs.gz" "$work/ov.gz" > "$work/initrd"

q=(qemu-system-x86_64 -machine q35 "${qaccel[@]}" -m "${TS_VM_MEM:-1024}" -smp "${TS_VM_CPUS:-2}"
   -nodefaults -no-user-config -display none -monitor none -no-reboot
   -kernel "$kernel" -initrd "$work/initrd"
   -append "console=ttyS0 quiet loglevel=4 panic=-1 mitigations=off tsvm.disks=${#disks[@]}"
   -serial "file:$console" -serial "file:$work/out")
if [ -n "$shared" ]; then
  # vhost-user servers map the guest's memory: it must be a shareable fd.
  q+=(-object "memory-backend-memfd,id=mem,size=${TS_VM_MEM:-1024}M,share=on" -numa node,memdev=mem)
fi
i=0
for d in "${disks[@]+"${disks[@]}"}"; do
  if [ "${d#vhost:}" != "$d" ]; then
    d=${d#vhost:} sock=${d%:*} nq=1
    [ "$sock" = "$d" ] || nq=${d##*:}
    q+=(-chardev "socket,id=c$i,path=$sock" -device "vhost-user-blk-pci,chardev=c$i,num-queues=$nq")
    i=$((i + 1))
    continue
  fi
  f=${d%:ro} ro=
  [ "$f" = "$d" ] || ro=,readonly=on
  [ -f "$f" ] || { echo "run-vm: no disk image $f" >&2; exit 2; }
  q+=(-drive "file=$f,format=raw,if=none,id=d$i,cache=none,aio=threads,discard=unmap$ro"
      -device "virtio-blk-pci,drive=d$i,serial=ts$i")
  i=$((i + 1))
done

q+=("${extra[@]+"${extra[@]}"}")

t0=$(date +%s.%N)
set +e
timeout -k 5 "$timeout" "${q[@]}" </dev/null 2>"$work/qemu.err"
qrc=$?
set -e
t1=$(date +%s.%N)
tr -d '\r' < "$work/out" > "$work/out.txt"
sed -n '/^TSVM_BEGIN/,/^TSVM_EXIT/{/^TSVM_BEGIN/d;/^TSVM_EXIT/d;p}' "$work/out.txt"
grep '^TSVM_WARN' "$work/out.txt" >&2 || true
begin=$(sed -n 's/^TSVM_BEGIN //p' "$work/out.txt")
read -r rc end < <(sed -n 's/^TSVM_EXIT //p' "$work/out.txt") || true
echo "vm: boot ${begin:-?}s script $(awk "BEGIN {printf \"%.1f\", ${end:-0} - ${begin:-0}}")s wall $(awk "BEGIN {printf \"%.1f\", $t1 - $t0}")s accel $accel" >&2
if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
  echo "run-vm: timed out after ${timeout}s; console tail:" >&2
  tail -20 "$console" >&2
  exit 124
fi
if [ -z "${rc:-}" ]; then
  echo "run-vm: the VM stopped without an exit status (qemu status $qrc)" >&2
  cat "$work/qemu.err" >&2
  tail -40 "$console" >&2
  exit 125
fi
exit "$rc"
