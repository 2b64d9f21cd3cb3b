#!/usr/bin/env bash
# The rbd layer and a thin volume over RBD next to `rbd bench` on the same
# cluster, and what provisioning costs on RBD.
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
  for i in bench-img bench-meta bench-data bench-thick; do rbd rm --no-progress rbd/$i >/dev/null 2>&1 || true; done
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
# Map every block first, as bench io does for its own thin column.
head -c 1G /dev/zero | tr '\0' k > fill.bin
"$T" write thin.json vol 0 -i fill.bin >/dev/null
rm fill.bin

runs=${RUNS:-3}
echo "load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
: > ref.txt
for mode in ${CACHE_MODES:-writearound off}; do
  cp "$cluster_conf" "$mode.conf"
  case $mode in
    writearound) printf '[client]\nrbd cache writethrough until flush = false\n' >> "$mode.conf" ;;
    off) printf '[client]\nrbd cache = false\n' >> "$mode.conf" ;;
    *) echo "bench/rbd.sh: CACHE_MODES: \"$mode\" is not writearound or off" >&2; exit 2 ;;
  esac
  export CEPH_CONF=$PWD/$mode.conf
  # Interleaved: each run measures rbd bench, the layer and the thin volume.
  for run in $(seq "$runs"); do
    for d in 1 32; do
      # full-seq: request i at offset i MiB, the depth's requests on
      # consecutive offsets, as bench io's sequential cells (rbd bench's
      # "seq" gives each of its 32 slots a stream of its own 32 MiB apart).
      echo "$mode $run seqwrite $d $(rbdb write 1M $d full-seq 1G)" >> ref.txt
      echo "$mode $run randwrite $d $(rbdb write 4K $d rand $([ $d = 1 ] && echo 32M || echo 128M))" >> ref.txt
      echo "$mode $run randread $d $(rbdb read 4K $d rand $([ $d = 1 ] && echo 32M || echo 128M))" >> ref.txt
      echo "$mode $run seqread $d $(rbdb read 1M $d full-seq 1G)" >> ref.txt
    done
    "$T" bench io --stack img.json --seconds "$secs" --runs 1 --json > "img.$mode.$run.out"
    # Completions on a libuv loop: the layer starts each request on librbd
    # from the loop's thread and librbd's callback ends it (submit_async).
    "$T" bench io --stack img.json --seconds "$secs" --runs 1 --mode loop --json \
      > "loop.$mode.$run.out"
    "$T" bench io --stack thin.json --seconds "$secs" --runs 1 --json > "thin.$mode.$run.out"
  done
  export CEPH_CONF=$cluster_conf
done

echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$runs" ${CACHE_MODES:-writearound off} <<'PY'
import json, statistics, sys
runs, modes = int(sys.argv[1]), sys.argv[2:]
ref = {}
for line in open("ref.txt"):
    m, run, t, d, v = line.split()
    ref.setdefault((m, t, int(d)), []).append(float(v))
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
    print("\nlibrbd cache: %s (both sides), %d interleaved runs" % (
        {"writearound": "rbd cache writethrough until flush = false",
         "off": "rbd cache = false"}[m], runs))
    print("%-10s %5s %16s %16s %6s %16s %6s %16s %6s" % (
        "test", "depth", "rbd bench", "rbd layer", "ratio", "rbd layer/loop", "ratio",
        "thin/rbd", "ratio"))
    worst = {k: {1: 9, 32: 9} for k in ("img", "loop", "thin")}
    span = lambda v: "%.0f [%.0f-%.0f]" % (med(v), min(v), max(v))
    for t in ("seqwrite", "randwrite", "randread", "seqread"):
        for d in (1, 32):
            rv = ref[(m, t, d)]
            row = "%-10s %5d %16s" % (t, d, span(rv))
            for k, col in (("img", img), ("loop", loop), ("thin", thin)):
                x = ratio(col[(t, d)], rv)
                worst[k][d] = min(worst[k][d], x)
                row += " %16s %5.2fx" % (span(col[(t, d)]), x)
            print(row)
    print("(4K: IOPS, 1M: MB/s; median [min-max]; ratio: median of the runs' ratios) worst ratio at depth 1 / 32: rbd layer "
          "%.2fx / %.2fx, on a loop %.2fx / %.2fx; thin over rbd %.2fx / %.2fx" % (
              worst["img"][1], worst["img"][32], worst["loop"][1], worst["loop"][32],
              worst["thin"][1], worst["thin"][32]))
PY
rbd rm --no-progress rbd/bench-img
rbd rm --no-progress rbd/bench-meta; rbd rm --no-progress rbd/bench-data

# Provisioning PROVISION_SIZE three ways. Each ends with the space stored.
secs_of() { python3 -c "import sys; print('%.1f' % ((int(sys.argv[2]) - int(sys.argv[1])) / 1e9))" "$@"; }
t0=$(date +%s%N); rbd create --thick-provision --size "$psize" rbd/bench-thick >/dev/null 2>&1
echo "rbd create --thick-provision $psize: $(secs_of $t0 $(date +%s%N)) s"
rbd rm --no-progress rbd/bench-thick
sed -e 's/"2G"/"'"$psize"'"/' -e 's/"size": "1G"/"size": "'"$psize"'"/' thin.json > prov.json
t0=$(date +%s%N); "$T" provision prov.json vol 0 "$psize" >/dev/null
echo "thin volume over RBD, thinstack provision $psize: $(secs_of $t0 $(date +%s%N)) s"
rbd rm --no-progress rbd/bench-meta; rbd rm --no-progress rbd/bench-data
# --no-sparse: zero buffers written as data, every block allocated and
# stored; without it the CLI would turn them into WRITE_ZEROES that unmap.
truncate -s "$psize" zeroes.bin   # sparse: reading it costs nothing
t0=$(date +%s%N); "$T" write prov.json vol 0 -i zeroes.bin --no-sparse >/dev/null
echo "thin volume over RBD, writing $psize of zeroes: $(secs_of $t0 $(date +%s%N)) s"
rm zeroes.bin
