#!/usr/bin/env bash
# The rbd layer and a thin volume over RBD next to `rbd bench`, QEMU's rbd
# driver (`qemu-img bench`) and fio's rbd engine on the same cluster, and
# what provisioning costs on RBD.
#   bench/rbd.sh [BUILD_DIR]     (default: build)
# Uses the cluster of $CEPH_CONF, or starts a throwaway one with
# tests/ceph/start-ceph.sh (and stops it). Env: SECONDS_PER_CELL (default 2),
# RUNS (interleaved runs per cell, default 3), CACHE_MODES (librbd cache
# modes to measure, both sides alike: "writearound off"),
# PROVISION_SIZE (default 8G; memstore keeps what is written in RAM, so the
# throwaway cluster is sized for it).
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$src/build}" && pwd)
T=$build/thinstack
secs=${SECONDS_PER_CELL:-2}
psize=${PROVISION_SIZE:-8G}
work=$(mktemp -d /tmp/ts-bench-rbd-XXXXXX)
started=
finish() {
  for i in bench-img bench-meta bench-data bench-imeta bench-idata bench-thick; do rbd rm --no-progress rbd/$i >/dev/null 2>&1 || true; done
  [ -n "$started" ] && CEPH_DIR=$work/ceph "$src/tests/ceph/stop-ceph.sh" >/dev/null
  rm -rf "$work"
}
trap finish EXIT
if [ -z "${CEPH_CONF:-}" ]; then
  bytes=$(( ($(numfmt --from=iec "$psize") + (4 << 30)) ))
  t0=$(date +%s%N)
  CEPH_DIR=$work/ceph CEPH_MEM_BYTES=$bytes "$src/tests/ceph/start-ceph.sh" >/dev/null
  started=1
  export CEPH_CONF=$work/ceph/ceph.conf
  echo "ceph started in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
fi
cd "$work"

# rbd bench: ops/s of one cell (4K: IOPS; 1M: MB/s, 10^6 bytes as bench io says).
rbdb() { # TYPE SIZE THREADS PATTERN TOTAL
  local out
  out=$(rbd bench --io-type "$1" --io-size "$2" --io-threads "$3" --io-pattern "$4" \
        --io-total "$5" rbd/bench-img 2>&1 | tail -1)
  local ops=$(sed -n 's/.*ops\/sec: *\([0-9.]*\).*/\1/p' <<<"$out")
  if [ "$2" = 1M ]; then python3 -c "print(round($ops * 1048576 / 1e6))"; else python3 -c "print(round($ops))"; fi
}

# QEMU's rbd driver (qemu-block-extra) through `qemu-img bench`: the C API
# as a VMM uses it, the same copies included. Cache mode: -t none makes the
# driver set rbd_cache=false, -t writeback rbd_cache=true (the conf then
# makes it writearound). qemu-img bench has no random pattern: its 4K cells
# step 4 MiB + 4 KiB per request, so each lands in another object and the
# run visits each 4K block of the image once, in no readahead's order.
qemub() { # TYPE SIZE DEPTH CACHE COUNT
  local step=$((4096 * 1025)) w= out
  [ "$2" = 1M ] && step=1048576
  [ "$1" = write ] && w=-w
  out=$(qemu-img bench -f raw -t "$4" $w -c "$5" -d "$3" -s "$2" -S "$step" \
        "rbd:rbd/bench-img:conf=$CEPH_CONF" 2>&1 | sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p')
  [ -n "$out" ] || { echo "bench/rbd.sh: qemu-img bench $* failed" >&2; exit 1; }
  local size=$([ "$2" = 1M ] && echo 1048576 || echo 4096)
  if [ "$2" = 1M ]; then python3 -c "print(round($5 * $size / $out / 1e6))"
  else python3 -c "print(round($5 / $out))"; fi
}

# fio's rbd engine (Debian's fio has it): the C API, with a buffer of its
# own for each of the depth's requests, as a guest's writes are, where
# `rbd bench` writes one unchanging buffer whose CRC librados has cached.
fiob() { # RW SIZE DEPTH
  local out
  out=$(fio --name=c --ioengine=rbd --clientname=admin --pool=rbd --rbdname=bench-img \
        --rw="$1" --bs="$2" --iodepth="$3" --size=1G --time_based --runtime="$secs" \
        --output-format=json 2>/dev/null) || { echo "bench/rbd.sh: fio $* failed" >&2; exit 1; }
  python3 -c 'import json, sys
j = json.loads(sys.argv[1])["jobs"][0]
d = j["read" if "read" in sys.argv[2] else "write"]
print(round(d["bw_bytes"] / 1e6) if sys.argv[3] == "1M" else round(d["iops"]))' "$out" "$1" "$2"
}

# librbd's cache must be in the same mode on both sides. By default it is
# writethrough until the first flush: `rbd bench` never flushes while it
# runs, while bench io flushes after each write cell, so its later cells ran
# in writearound mode (writes acknowledged before the OSD has them) against
# a writethrough rbd bench. Each mode gets a config both sides read.
cluster_conf=$CEPH_CONF
cat > img.json <<JSON
{ "version": 1, "layers": { "img": { "type": "rbd", "pool": "rbd", "image": "bench-img" } },
  "exports": ["img"] }
JSON
cat > thin.json <<JSON
{ "version": 1,
  "layers": {
    "meta": { "type": "rbd", "pool": "rbd", "image": "bench-meta", "create": true, "size": "64M" },
    "data": { "type": "rbd", "pool": "rbd", "image": "bench-data", "create": true, "size": "2G" },
    "pool": { "type": "thin-pool", "metadata": "meta", "data": "data", "block_size": "1M",
              "create": true },
    "vol": { "type": "thin", "pool": "pool", "id": 1, "size": "1G", "create": true } },
  "exports": ["vol"] }
JSON
rbd create --size 1G rbd/bench-img
rbd bench --io-type write --io-size 4M --io-threads 16 --io-total 1G rbd/bench-img >/dev/null
# The QEMU column needs qemu-img with its rbd driver (Debian: qemu-block-extra).
have_qemu=
if qemu-img info -f raw "rbd:rbd/bench-img:conf=$CEPH_CONF" >/dev/null 2>&1; then have_qemu=1
else echo "bench/rbd.sh: qemu-img cannot open rbd: images (qemu-block-extra?); no QEMU column" >&2; fi
have_fio=
if fio --enghelp 2>/dev/null | grep -qx '[[:space:]]*rbd'; then have_fio=1
else echo "bench/rbd.sh: fio has no rbd engine; no fio column" >&2; fi
# Map every block first, as bench io does for its own thin column.
head -c 1G /dev/zero | tr '\0' k > fill.bin
"$T" write thin.json vol 0 -i fill.bin >/dev/null
rm fill.bin
# A thin volume whose 64K blocks alternate on the data image with another
# volume's, written in turn (through the Python bindings, one process): a
# 1M request covers 16 runs of data blocks, which the thin layer starts on
# RBD together. Left out when the bindings cannot load the library.
cat > inter.json <<JSON
{ "version": 1,
  "layers": {
    "meta": { "type": "rbd", "pool": "rbd", "image": "bench-imeta", "create": true, "size": "64M" },
    "data": { "type": "rbd", "pool": "rbd", "image": "bench-idata", "create": true, "size": "1G" },
    "pool": { "type": "thin-pool", "metadata": "meta", "data": "data", "block_size": "64K",
              "create": true },
    "a": { "type": "thin", "pool": "pool", "id": 1, "size": "256M", "create": true },
    "b": { "type": "thin", "pool": "pool", "id": 2, "size": "256M", "create": true } },
  "exports": ["a", "b"] }
JSON
have_inter=
if THINSTACK_LIBRARY=$build/libthinstack.so.0 PYTHONPATH=$src/bindings/python python3 - <<'PY'
import thinstack
with thinstack.open("inter.json") as s:
    a, b = s.device("a"), s.device("b")
    buf = b"k" * 65536
    for off in range(0, a.size, 65536):
        a.write(off, buf)
        b.write(off, buf)
    a.flush()
PY
then have_inter=1
else echo "bench/rbd.sh: the Python bindings did not load; no interleaved thin column" >&2; fi

runs=${RUNS:-3}
# measure TARGET: one run of the 8 cells on TARGET ($mode, $run, $qcache).
measure() {
  local d n4 v
  case $1 in
    rbd)
      for d in 1 32; do
        # full-seq: request i at offset i MiB, the depth's requests on
        # consecutive offsets, as bench io's sequential cells (rbd bench's
        # "seq" gives each of its 32 slots a stream of its own 32 MiB apart).
        echo "$mode $run seqwrite $d $(rbdb write 1M $d full-seq 1G)" >> ref.txt
        echo "$mode $run randwrite $d $(rbdb write 4K $d rand $([ $d = 1 ] && echo 32M || echo 128M))" >> ref.txt
        echo "$mode $run randread $d $(rbdb read 4K $d rand $([ $d = 1 ] && echo 32M || echo 128M))" >> ref.txt
        echo "$mode $run seqread $d $(rbdb read 1M $d full-seq 1G)" >> ref.txt
      done ;;
    qemu)
      for d in 1 32; do
        n4=$([ $d = 1 ] && echo 8192 || echo 32768)
        v=$(qemub write 1M $d $qcache 1024); echo "$mode $run seqwrite $d $v" >> qemu.txt
        v=$(qemub write 4K $d $qcache $n4); echo "$mode $run randwrite $d $v" >> qemu.txt
        v=$(qemub read 4K $d $qcache $n4); echo "$mode $run randread $d $v" >> qemu.txt
        v=$(qemub read 1M $d $qcache 1024); echo "$mode $run seqread $d $v" >> qemu.txt
      done ;;
    fio)
      for d in 1 32; do
        echo "$mode $run seqwrite $d $(fiob write 1M $d)" >> fio.txt
        echo "$mode $run randwrite $d $(fiob randwrite 4K $d)" >> fio.txt
        echo "$mode $run randread $d $(fiob randread 4K $d)" >> fio.txt
        echo "$mode $run seqread $d $(fiob read 1M $d)" >> fio.txt
      done ;;
    img) "$T" bench io --stack img.json --seconds "$secs" --runs 1 --json > "img.$mode.$run.out" ;;
    # Completions on a libuv loop: the layer starts each request on librbd
    # from the loop's thread and librbd's callback ends it (submit_async).
    loop) "$T" bench io --stack img.json --seconds "$secs" --runs 1 --mode loop --json \
            > "loop.$mode.$run.out" ;;
    thin) "$T" bench io --stack thin.json --seconds "$secs" --runs 1 --json > "thin.$mode.$run.out" ;;
    inter) "$T" bench io --stack inter.json --dev a --seconds "$secs" --runs 1 --json \
             > "inter.$mode.$run.out" ;;
  esac
}
echo "load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
: > ref.txt
: > qemu.txt
: > fio.txt
for mode in ${CACHE_MODES:-writearound off}; do
  cp "$cluster_conf" "$mode.conf"
  case $mode in
    writearound) printf '[client]\nrbd cache writethrough until flush = false\n' >> "$mode.conf" ;;
    off) printf '[client]\nrbd cache = false\n' >> "$mode.conf" ;;
    *) echo "bench/rbd.sh: CACHE_MODES: \"$mode\" is not writearound or off" >&2; exit 2 ;;
  esac
  export CEPH_CONF=$PWD/$mode.conf
  qcache=$([ "$mode" = off ] && echo none || echo writeback)
  # Interleaved: each run measures rbd bench, QEMU, the layer (twice) and
  # the thin volume, one after another; a run takes minutes, in which the
  # shared machine's speed drifts, so each run starts one target later than
  # the last, and no target is always measured first or last.
  targets=(rbd)
  [ -n "$have_qemu" ] && targets+=(qemu)
  [ -n "$have_fio" ] && targets+=(fio)
  targets+=(img loop thin)
  [ -n "$have_inter" ] && targets+=(inter)
  for run in $(seq "$runs"); do
    for i in "${!targets[@]}"; do
      measure "${targets[$(( (i + run - 1) % ${#targets[@]} ))]}"
    done
  done
  export CEPH_CONF=$cluster_conf
done

echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$runs" "$have_inter" ${CACHE_MODES:-writearound off} <<'PY'
import json, statistics, sys
runs, have_inter, modes = int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3:]
def peer(path):
    out = {}
    for line in open(path):
        m, run, t, d, v = line.split()
        out.setdefault((m, t, int(d)), []).append(float(v))
    return out
ref, qemu, fio = peer("ref.txt"), peer("qemu.txt"), peer("fio.txt")
def cells(kind, m):
    out = {}
    for run in range(1, runs + 1):
        for r in json.load(open("%s.%s.%d.out" % (kind, m, run)))["results"]:
            unit = "iops" if r["test"].startswith("rand") else "mb_per_s"
            out.setdefault((r["test"], r["depth"]), []).append(r[unit])
    return out
med = statistics.median
# A ratio is the median of the runs' own ratios (run k of the target against
# run k of rbd bench, measured within the same minute), so a slow minute of
# the machine moves both sides of a pair.
def ratio(v, ref):
    return med([a / b for a, b in zip(v, ref)])
for m in modes:
    img, loop, thin = cells("img", m), cells("loop", m), cells("thin", m)
    cols = (("img", img), ("loop", loop), ("thin", thin))
    if have_inter:
        cols += (("inter", cells("inter", m)),)
    if fio:
        cols = (("fio", {(t, d): v for (mm, t, d), v in fio.items() if mm == m}),) + cols
    if qemu:
        cols = (("qemu", {(t, d): v for (mm, t, d), v in qemu.items() if mm == m}),) + cols
    print("\nlibrbd cache: %s (both sides), %d interleaved runs" % (
        {"writearound": "rbd cache writethrough until flush = false",
         "off": "rbd cache = false"}[m], runs))
    names = {"qemu": "qemu-img rbd", "fio": "fio rbd", "img": "rbd layer", "loop": "rbd layer/loop",
             "thin": "thin/rbd", "inter": "thin/rbd 64K"}
    print("%-10s %5s %16s" % ("test", "depth", "rbd bench") +
          "".join(" %16s %6s" % (names[k], "ratio") for k, _ in cols))
    worst = {k: {1: 9, 32: 9} for k in ("qemu", "fio", "img", "loop", "thin", "inter")}
    span = lambda v: "%.0f [%.0f-%.0f]" % (med(v), min(v), max(v))
    for t in ("seqwrite", "randwrite", "randread", "seqread"):
        for d in (1, 32):
            rv = ref[(m, t, d)]
            row = "%-10s %5d %16s" % (t, d, span(rv))
            for k, col in cols:
                x = ratio(col[(t, d)], rv)
                worst[k][d] = min(worst[k][d], x)
                row += " %16s %5.2fx" % (span(col[(t, d)]), x)
            print(row)
    print("(4K: IOPS, 1M: MB/s; median [min-max]; ratio: median of the runs' ratios to rbd "
          "bench) worst ratio at depth 1 / 32: " + "; ".join(
              "%s %.2fx / %.2fx" % (names[k], worst[k][1], worst[k][32]) for k, _ in cols))
PY
rbd rm --no-progress rbd/bench-img
rbd rm --no-progress rbd/bench-meta; rbd rm --no-progress rbd/bench-data
rbd rm --no-progress rbd/bench-imeta >/dev/null 2>&1 || true
rbd rm --no-progress rbd/bench-idata >/dev/null 2>&1 || true

# Provisioning PROVISION_SIZE three ways. Each ends with the space stored.
secs_of() { python3 -c "import sys; print('%.1f' % ((int(sys.argv[2]) - int(sys.argv[1])) / 1e9))" "$@"; }
t0=$(date +%s%N); rbd create --thick-provision --size "$psize" rbd/bench-thick >/dev/null 2>&1
echo "rbd create --thick-provision $psize: $(secs_of $t0 $(date +%s%N)) s"
rbd rm --no-progress rbd/bench-thick
sed -e 's/"2G"/"'"$psize"'"/' -e 's/"size": "1G"/"size": "'"$psize"'"/' thin.json > prov.json
# provision reports what it did on stderr; keep that for when it fails.
t0=$(date +%s%N); "$T" provision prov.json vol 0 "$psize" >/dev/null 2>prov.err ||
  { cat prov.err >&2; exit 1; }
echo "thin volume over RBD, thinstack provision $psize: $(secs_of $t0 $(date +%s%N)) s"
rbd rm --no-progress rbd/bench-meta; rbd rm --no-progress rbd/bench-data
# --no-sparse: zero buffers written as data, every block allocated and
# stored; without it the CLI would turn them into WRITE_ZEROES that unmap.
truncate -s "$psize" zeroes.bin   # sparse: reading it costs nothing
t0=$(date +%s%N); "$T" write prov.json vol 0 -i zeroes.bin --no-sparse >/dev/null
echo "thin volume over RBD, writing $psize of zeroes: $(secs_of $t0 $(date +%s%N)) s"
rm zeroes.bin
