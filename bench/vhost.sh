#!/usr/bin/env bash
# The vhost-user-blk export against its peers, in one guest boot:
#
#   bench/vhost.sh [-b BUILD_DIR] [-r SECONDS] [-s SIZE_MIB] [-q QUEUES] [-w WORKERS]
#                  [-o RESULTS]
#
# The guest (tests/vm, Debian's kernel) gets three disks of SIZE_MIB
# (default 512), all backed by files on the same host file system, opened
# O_DIRECT:
#   vda  ours: `thinstack serve --vhost-user-blk` on a thin volume (64K
#        blocks) of a pool whose data file is opened with "direct": true,
#        with WORKERS worker threads per queue (default: the server's);
#   vdb  qemu-storage-daemon --export type=vhost-user-blk on a driver=file
#        node over a raw file (cache.direct=on, aio=threads): the same
#        transport, the direct peer;
#   vdc  QEMU's own virtio-blk: -drive file=raw.img,format=raw,cache=none,
#        aio=threads.
# fio in the guest (libaio, direct=1, RUNTIME seconds each) first writes
# each disk sequentially in 1M blocks (so every later read hits allocated
# data, and the thin volume's blocks are mapped before the random writes),
# then 4K random writes and reads at QD1 and QD32 and 1M sequential reads,
# each test on the three disks one after the other in a rotating order.
# It prints a table of IOPS and MiB/s per disk and the ratios of ours to
# each peer, and writes the same as JSON to RESULTS (default
# vhost-bench.json).
#
# Under TCG (no usable KVM) the guest's CPU is emulated: every request costs
# the guest thousands of host instructions in its driver and fio, so the
# guest side dominates and the ratios compare servers under a slow client,
# not absolute server speed. With KVM the servers' own costs show. The
# target is ours >= 0.9x qemu-storage-daemon's export.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=$here/build runtime=5 size=512 queues=2 workers= results=vhost-bench.json
while getopts "b:r:s:q:w:o:" o; do
  case $o in
    b) build=$OPTARG ;;
    r) runtime=$OPTARG ;;
    s) size=$OPTARG ;;
    q) queues=$OPTARG ;;
    w) workers=,workers=$OPTARG ;;
    o) results=$OPTARG ;;
    *) sed -n '2,31p' "$0" >&2; exit 2 ;;
  esac
done
thinstack=$build/thinstack
[ -x "$thinstack" ] || { echo "vhost.sh: no $thinstack (build first)" >&2; exit 2; }
command -v qemu-storage-daemon >/dev/null || { echo "vhost.sh: needs qemu-storage-daemon (qemu-system-common)" >&2; exit 2; }
results=$(realpath -m "$results")
work=$(mktemp -d "${TMPDIR:-/var/tmp}/thinstack-vhost-bench.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]+"${pids[@]}"}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"

cat > stack.json <<EOF
{ "version": 1,
  "layers": {
    "meta": { "type": "file", "path": "meta.img", "size": "64M", "create": true },
    "data": { "type": "file", "path": "data.img", "size": "$((size + 64))M", "create": true,
              "direct": true, "block_size": 512 },
    "pool": { "type": "thin-pool", "metadata": "meta", "data": "data",
              "block_size": "64K", "create": true },
    "vm0":  { "type": "thin", "pool": "pool", "id": 0, "size": "${size}M", "create": true }
  },
  "exports": [ "vm0" ] }
EOF
truncate -s "${size}M" qsd.img qemu.img
"$thinstack" serve stack.json --no-control --vhost-user-blk "$work/ours.sock:vm0,queues=$queues$workers" \
  2> serve.err &
pids+=($!)
qemu-storage-daemon \
  --blockdev "driver=file,node-name=f0,filename=$work/qsd.img,cache.direct=on,aio=threads" \
  --export "type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path=$work/qsd.sock,writable=on,num-queues=$queues" \
  2> qsd.err &
pids+=($!)
for i in $(seq 100); do [ -S ours.sock ] && [ -S qsd.sock ] && break; sleep 0.1; done
[ -S ours.sock ] || { cat serve.err >&2; exit 1; }
[ -S qsd.sock ] || { cat qsd.err >&2; exit 1; }

cat > guest.sh <<EOF
set -e
run() { # DISK NAME fio-args...
  local d=\$1 n=\$2; shift 2
  fio --name=\$n --filename=/dev/\$d --ioengine=libaio --direct=1 --size=${size}M \
      --time_based=0 --runtime=$runtime --minimal "\$@" > /tmp/o 2>&1 || { cat /tmp/o; exit 1; }
  # terse v3: 7/8 read KiB/s and IOPS, 48/49 write KiB/s and IOPS
  echo "res \$d \$n \$(awk -F';' '{printf "%.0f %.1f", \$8 + \$49, (\$7 + \$48) / 1024}' /tmp/o)"
}
# Each test on the three disks in turn, the order rotating from one test
# to the next, so that drift in the host's load spreads over all three.
orders=("vda vdb vdc" "vdb vdc vda" "vdc vda vdb")
i=0
each() {
  for d in \${orders[\$((i % 3))]}; do run \$d "\$@"; done
  i=\$((i + 1))
}
each fill --rw=write --bs=1M --iodepth=8 --time_based=0 --runtime=600
each randwrite-4k-qd1 --rw=randwrite --bs=4k --iodepth=1 --time_based=1
each randwrite-4k-qd32 --rw=randwrite --bs=4k --iodepth=32 --time_based=1
each randread-4k-qd1 --rw=randread --bs=4k --iodepth=1 --time_based=1
each randread-4k-qd32 --rw=randread --bs=4k --iodepth=32 --time_based=1
each read-1m --rw=read --bs=1M --iodepth=8 --time_based=1
EOF

TS_VM_MEM=${TS_VM_MEM:-1024} "$here/tests/vm/run-vm.sh" -t 3600 \
  -V "$work/ours.sock:$queues" -V "$work/qsd.sock:$queues" -d "$work/qemu.img" guest.sh \
  > guest.out 2> vm.err || { cat guest.out vm.err >&2; exit 1; }
grep '^vm:' vm.err >&2 || true
accel=$(sed -n 's/.* accel \([a-z]*\)$/\1/p' vm.err)

python3 - guest.out "$results" "$accel" "$runtime" "$size" "$queues" "$(nproc)" \
  "$(cut -d' ' -f1-3 /proc/loadavg)" <<'EOF'
import json, sys
guest, out, accel, runtime, size, queues, ncpu, load = sys.argv[1:]
r = {}
for line in open(guest):
    f = line.split()
    if f and f[0] == "res":
        r.setdefault(f[2], {})[f[1]] = {"iops": int(f[3]), "mib_s": float(f[4])}
names = {"vda": "ours", "vdb": "qsd", "vdc": "qemu"}
rows = []
print(f"{'test':20} {'ours':>16} {'qsd':>16} {'qemu':>16} {'ours/qsd':>9} {'ours/qemu':>9}")
for t, d in r.items():
    v = {names[k]: d[k] for k in d}
    key = "mib_s" if t in ("fill", "read-1m") else "iops"
    unit = "MiB/s" if key == "mib_s" else "IOPS"
    row = {"test": t, "unit": unit}
    for n in ("ours", "qsd", "qemu"):
        row[n] = v[n][key]
    row["ours_qsd"] = round(row["ours"] / row["qsd"], 3) if row["qsd"] else None
    row["ours_qemu"] = round(row["ours"] / row["qemu"], 3) if row["qemu"] else None
    rows.append(row)
    cell = lambda x: f"{x:.1f} {unit}" if key == "mib_s" else f"{x} {unit}"
    print(f"{t:20} {cell(row['ours']):>16} {cell(row['qsd']):>16} {cell(row['qemu']):>16}"
          f" {row['ours_qsd'] or 0:9.3f} {row['ours_qemu'] or 0:9.3f}")
meta = {"accel": accel, "runtime_s": int(runtime), "size_mib": int(size), "queues": int(queues),
        "host_cpus": int(ncpu), "loadavg_before_report": load}
print(f"accel {accel}, {runtime} s per test, {queues} queues, host load {load} on {ncpu} CPUs")
json.dump({"meta": meta, "results": rows}, open(out, "w"), indent=1)
EOF
