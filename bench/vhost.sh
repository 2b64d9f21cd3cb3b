#!/usr/bin/env bash
# The vhost-user-blk export against its peers, in one guest boot:
#
#   bench/vhost.sh [-b BUILD_DIR] [-r SECONDS] [-R ROUNDS] [-s SIZE_MIB]
#                  [-q QUEUES] [-w WORKERS] [-x OPTS] [-c CPUS] [-o RESULTS]
#
# The guest (tests/vm, Debian's kernel) gets four disks of SIZE_MIB
# (default 512), all backed by files on the same host file system, all
# opened O_DIRECT, each server with QUEUES queues (default 2):
#   vda  ours, thin: `thinstack serve --vhost-user-blk` on a thin volume
#        (64K blocks) of a pool whose data file is opened "direct", WORKERS
#        worker threads per queue (default: the server's), OPTS more
#        --vhost-user-blk options;
#   vdb  ours, file: the same server on a `file` layer ("direct") over a raw
#        file: the transport alone, the same stack kind as the peer's;
#   vdc  qemu-storage-daemon --export type=vhost-user-blk on a driver=file
#        node over a raw file (cache.direct=on, aio=threads) in an iothread
#        of its own: the direct peer;
#   vdd  QEMU's own virtio-blk: -drive file=raw.img,format=raw,cache=none,
#        aio=threads.
# Both servers run pinned (taskset) to the same CPUS (default: the last
# host CPU), so that each gets the same share of the host against the
# guest's vCPU threads; the thin and the file disk have a server process
# each. The host samples each server's CPU time (utime+stime) as each run
# starts and ends, which gives the server's CPU time per request: a figure
# of the server alone, which the emulated guest does not blur. The guest prints what it negotiated with each disk
# (the virtio feature bits, hardware queues, segments); the script fails if
# ours and qsd's differ in EVENT_IDX, INDIRECT_DESC, MQ, SEG_MAX or queue
# count.
#
# fio in the guest (libaio, direct=1) first writes every disk once,
# sequentially in 1M blocks (the same prefill everywhere, so reads hit
# written data and the thin volume's blocks are mapped before the random
# writes). Then ROUNDS rounds (default 3) of the cells 4K random write and
# read at QD1 and QD32 and 1M sequential read, each cell on the four disks
# back to back in an order that rotates from one cell to the next, each run
# a 1 s ramp and SECONDS (default 3) measured. It prints per cell and disk
# the median with min and max over the rounds, and the median (min-max) of
# each round's ratio ours/qsd and ours/QEMU, and writes the same as JSON
# to RESULTS (default vhost-bench.json).
#
# Under TCG (no usable KVM) the guest's CPU is emulated: every request costs
# the guest thousands of host instructions in its driver and fio, so the
# guest side dominates and a ratio compares servers under a slow client,
# not absolute server speed. With KVM the servers' own costs show. The
# target is ours >= 0.9x qemu-storage-daemon's export.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=$here/build runtime=3 rounds=3 size=512 queues=2 workers= extra= results=vhost-bench.json
cpus=$(($(nproc) - 1))
while getopts "b:r:R:s:q:w:x:c:o:" o; do
  case $o in
    b) build=$OPTARG ;;
    r) runtime=$OPTARG ;;
    R) rounds=$OPTARG ;;
    s) size=$OPTARG ;;
    q) queues=$OPTARG ;;
    w) workers=,workers=$OPTARG ;;
    x) extra=,$OPTARG ;;
    c) cpus=$OPTARG ;;
    o) results=$OPTARG ;;
    *) sed -n '2,46p' "$0" >&2; exit 2 ;;
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

cat > thin.json <<EOF
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
cat > file.json <<EOF
{ "version": 1,
  "layers": { "raw": { "type": "file", "path": "ours.img", "size": "${size}M", "create": true,
                       "direct": true, "block_size": 512 } },
  "exports": [ "raw" ] }
EOF
truncate -s "${size}M" qsd.img qemu.img
taskset -c "$cpus" "$thinstack" serve thin.json --no-control \
  --vhost-user-blk "$work/thin.sock:vm0,queues=$queues$workers$extra" 2> serve-thin.err &
pids+=($!) pid_thin=$!
taskset -c "$cpus" "$thinstack" serve file.json --no-control \
  --vhost-user-blk "$work/file.sock:raw,queues=$queues$workers$extra" 2> serve-file.err &
pids+=($!) pid_file=$!
taskset -c "$cpus" qemu-storage-daemon \
  --object iothread,id=io0 \
  --blockdev "driver=file,node-name=f0,filename=$work/qsd.img,cache.direct=on,aio=threads" \
  --export "type=vhost-user-blk,id=e0,node-name=f0,iothread=io0,addr.type=unix,addr.path=$work/qsd.sock,writable=on,num-queues=$queues" \
  2> qsd.err &
pids+=($!) pid_qsd=$!
for i in $(seq 100); do [ -S thin.sock ] && [ -S file.sock ] && [ -S qsd.sock ] && break; sleep 0.1; done
[ -S thin.sock ] || { cat serve-thin.err >&2; exit 1; }
[ -S file.sock ] || { cat serve-file.err >&2; exit 1; }
[ -S qsd.sock ] || { cat qsd.err >&2; exit 1; }

cat > guest.sh <<EOF
set -e
disks="vda vdb vdc vdd"
for d in \$disks; do
  s=/sys/block/\$d
  echo "feat \$d \$(cat \$s/device/features) \$(ls \$s/mq | wc -l) \$(cat \$s/queue/max_segments)" \
       "\$(cat \$s/queue/max_segment_size) \$(cat \$s/queue/max_hw_sectors_kb)" \
       "\$(cat \$s/queue/nr_requests)"
done
run() { # ROUND DISK NAME fio-args...
  local k=\$1 d=\$2 n=\$3; shift 3
  echo "beg \$k \$d \$n"
  fio --name=\$n --filename=/dev/\$d --ioengine=libaio --direct=1 --size=${size}M \
      --minimal "\$@" > /tmp/o 2>&1 || { cat /tmp/o; exit 1; }
  # terse v3: 7/8 read KiB/s and IOPS, 48/49 write KiB/s and IOPS
  echo "res \$k \$d \$n \$(awk -F';' '{printf "%.0f %.1f", \$8 + \$49, (\$7 + \$48) / 1024}' /tmp/o)"
}
# Each cell on the four disks back to back, the order rotating from one
# cell to the next, so that drift in the host's load spreads over all.
orders=("vda vdb vdc vdd" "vdb vdc vdd vda" "vdc vdd vda vdb" "vdd vda vdb vdc")
i=0
each() { # ROUND NAME fio-args...
  local k=\$1; shift
  for d in \${orders[\$((i % 4))]}; do run \$k \$d "\$@"; done
  i=\$((i + 1))
}
t="--time_based=1 --ramp_time=1 --runtime=$runtime"
each 0 fill --rw=write --bs=1M --iodepth=8
for k in \$(seq $rounds); do
  each \$k randwrite-4k-qd1 --rw=randwrite --bs=4k --iodepth=1 \$t
  each \$k randwrite-4k-qd32 --rw=randwrite --bs=4k --iodepth=32 \$t
  each \$k randread-4k-qd1 --rw=randread --bs=4k --iodepth=1 \$t
  each \$k randread-4k-qd32 --rw=randread --bs=4k --iodepth=32 \$t
  each \$k read-1m --rw=read --bs=1M --iodepth=8 \$t
done
EOF

# The guest's output reaches run-vm.sh's folder as it is printed: at each
# run's "beg" and "res" line, note every server's CPU time (clock ticks).
mkdir vm
cpu() {
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
  s=${s##*) }
  set -- $s
  echo $((${12} + ${13}))
}
(
  out=
  for i in $(seq 1200); do
    out=$(ls vm/thinstack-vm.*/out 2>/dev/null || true)
    [ -n "$out" ] && break
    sleep 0.5
  done
  [ -n "$out" ] || exit 0
  # --pid: tail ends with this script, and so does the loop.
  tail -n +1 -s 0.1 -F --pid=$$ "$out" 2>/dev/null | while IFS= read -r line; do
    line=${line%$'\r'}
    case $line in
      beg\ * | res\ *) echo "$line cpu $(cpu $pid_thin) $(cpu $pid_file) $(cpu $pid_qsd)" >> cpu.log ;;
    esac
  done
) > /dev/null 2>&1 & # holds no pipe of the caller's open
pids+=($!)
load0=$(cut -d' ' -f1-3 /proc/loadavg)
TMPDIR=$work/vm TS_VM_MEM=${TS_VM_MEM:-1024} "$here/tests/vm/run-vm.sh" -t 3600 \
  -V "$work/thin.sock:$queues" -V "$work/file.sock:$queues" -V "$work/qsd.sock:$queues" \
  -d "$work/qemu.img" guest.sh > guest.out 2> vm.err || { cat guest.out vm.err >&2; exit 1; }
grep '^vm:' vm.err >&2 || true
accel=$(sed -n 's/.* accel \([a-z]*\)$/\1/p' vm.err)

sleep 0.5
touch cpu.log
python3 - guest.out "$results" "$accel" "$runtime" "$rounds" "$size" "$queues" "$(nproc)" \
  "$cpus" "$load0" "$(cut -d' ' -f1-3 /proc/loadavg)" "$(getconf CLK_TCK)" cpu.log <<'EOF'
import json, statistics, sys
(guest, out, accel, runtime, rounds, size, queues, ncpu, cpus, load0, load1, hz,
 cpulog) = sys.argv[1:]
names = {"vda": "thin", "vdb": "file", "vdc": "qsd", "vdd": "qemu"}
r, feat = {}, {}
for line in open(guest):
    f = line.split()
    if f and f[0] == "res":
        # res ROUND DISK TEST IOPS MIB_S
        r.setdefault(f[3], {}).setdefault(int(f[1]), {})[names[f[2]]] = (int(f[4]), float(f[5]))
    elif f and f[0] == "feat":
        bits = f[2]
        feat[names[f[1]]] = {
            "features": [i for i, b in enumerate(bits) if b == "1"],
            "hw_queues": int(f[3]), "max_segments": int(f[4]), "max_segment_size": int(f[5]),
            "max_hw_sectors_kb": int(f[6]), "nr_requests": int(f[7])}
# What must match for the comparison to be fair: ring features, queues, segments.
want = {1: "SIZE_MAX", 2: "SEG_MAX", 9: "FLUSH", 12: "MQ", 13: "DISCARD", 14: "WRITE_ZEROES",
        28: "INDIRECT_DESC", 29: "EVENT_IDX", 32: "VERSION_1"}
print("negotiated (guest's sysfs):")
for n in ("thin", "file", "qsd", "qemu"):
    v = feat.get(n)
    if not v:
        continue
    fs = ",".join(want[b] for b in sorted(want) if b in v["features"])
    print(f"  {n:5} {fs}; {v['hw_queues']} queues, {v['max_segments']} segments of"
          f" {v['max_segment_size']} B, max {v['max_hw_sectors_kb']} KiB, {v['nr_requests']} tags")
bad = []
for n in ("thin", "file"):
    a, b = feat.get(n), feat.get("qsd")
    if not a or not b:
        bad.append(f"{n}: no features read")
        continue
    for bit in (2, 12, 28, 29):
        if (bit in a["features"]) != (bit in b["features"]):
            bad.append(f"{n} and qsd differ in {want[bit]}")
    if a["hw_queues"] != b["hw_queues"]:
        bad.append(f"{n} has {a['hw_queues']} queues, qsd {b['hw_queues']}")
    if a["max_segments"] != b["max_segments"]:
        bad.append(f"{n} takes {a['max_segments']} segments, qsd {b['max_segments']}")

def med(xs):
    return statistics.median(xs) if xs else 0

# Server CPU time per request: the server's ticks between a run's "beg" and
# "res" lines over the requests of the run (its rate times ramp + runtime).
col = {"thin": 0, "file": 1, "qsd": 2}
beg, cpu_us = {}, {}
for line in open(cpulog):
    f = line.split()
    if len(f) < 8 or f[-4] != "cpu" or f[3] == "fill":
        continue
    k, n, t = int(f[1]), names.get(f[2]), f[3]
    ticks = [int(x) for x in f[-3:]]
    if n not in col:
        continue
    if f[0] == "beg":
        beg[(k, n, t)] = ticks[col[n]]
    elif (k, n, t) in beg:
        iops = int(f[4])
        reqs = iops * (float(runtime) + 1) if t != "read-1m" else float(f[5]) * (float(runtime) + 1)
        d = ticks[col[n]] - beg[(k, n, t)]
        if reqs > 0:
            cpu_us.setdefault(t, {}).setdefault(n, []).append(d / float(hz) * 1e6 / reqs)
rows = []
hdr = (f"{'test':18} {'thin':>22} {'file':>22} {'qsd':>22} {'qemu':>22}"
       f" {'thin/qsd':>17} {'file/qsd':>17} {'thin/qemu':>17}")
print(hdr)
for t, byround in r.items():
    key = 1 if t in ("fill", "read-1m") else 0
    unit = "MiB/s" if key else "IOPS"
    row = {"test": t, "unit": unit, "rounds": len(byround)}
    for n in ("thin", "file", "qsd", "qemu"):
        xs = [d[n][key] for d in byround.values() if n in d]
        row[n] = {"median": med(xs), "min": min(xs, default=0), "max": max(xs, default=0)}
    for a, b in (("thin", "qsd"), ("file", "qsd"), ("thin", "qemu"), ("file", "qemu")):
        xs = [d[a][key] / d[b][key] for d in byround.values() if a in d and b in d and d[b][key]]
        row[f"{a}_{b}"] = {"median": round(med(xs), 3), "min": round(min(xs, default=0), 3),
                           "max": round(max(xs, default=0), 3)}
    cu = cpu_us.get(t, {})
    row["cpu_us_per_req"] = {n: round(med(cu[n]), 1) for n in cu}
    rows.append(row)
    fmt = lambda x: f"{x:.0f}"
    cell = lambda v: f"{fmt(v['median'])} ({fmt(v['min'])}-{fmt(v['max'])})"
    rat = lambda v: f"{v['median']:.2f} ({v['min']:.2f}-{v['max']:.2f})"
    print(f"{t:18} {cell(row['thin']):>22} {cell(row['file']):>22} {cell(row['qsd']):>22}"
          f" {cell(row['qemu']):>22} {rat(row['thin_qsd']):>17} {rat(row['file_qsd']):>17}"
          f" {rat(row['thin_qemu']):>17}")
print("server CPU time per request, µs (median over rounds; read-1m per MiB):")
print(f"{'test':18} {'thin':>8} {'file':>8} {'qsd':>8} {'thin/qsd':>9} {'file/qsd':>9}")
for row in rows:
    c = row.get("cpu_us_per_req", {})
    if not c:
        continue
    q = c.get("qsd") or 0
    rt = lambda n: f"{c.get(n, 0) / q:9.2f}" if q else f"{'-':>9}"
    print(f"{row['test']:18} {c.get('thin', 0):8.1f} {c.get('file', 0):8.1f} {c.get('qsd', 0):8.1f}"
          f" {rt('thin')} {rt('file')}")
meta = {"accel": accel, "runtime_s": int(runtime), "ramp_s": 1, "rounds": int(rounds),
        "size_mib": int(size), "queues": int(queues), "host_cpus": int(ncpu),
        "server_cpus": cpus, "loadavg_before": load0, "loadavg_after": load1,
        "negotiated": feat, "mismatch": bad}
print(f"accel {accel}, {rounds} rounds of 1+{runtime} s per cell, {queues} queues,"
      f" servers on CPU {cpus}, host load {load0} before, {load1} after, {ncpu} CPUs;"
      f" medians (min-max) over rounds, ratios per round")
json.dump({"meta": meta, "results": rows}, open(out, "w"), indent=1)
for b in bad:
    print("vhost.sh: not comparable:", b, file=sys.stderr)
sys.exit(1 if bad else 0)
EOF
