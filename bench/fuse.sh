#!/usr/bin/env bash
# The FUSE export against fio on a raw file:
#
#   bench/fuse.sh [-b BUILD_DIR] [-r SECONDS] [-R ROUNDS] [-s SIZE_MIB]
#                 [-x OPTS] [-l LOCK] [-t]
#
# Files of SIZE_MIB (default 1024) on the same file system:
#   raw   raw.img, which fio opens itself (O_DIRECT): the baseline;
#   thin  vm0 of `thinstack-fuse` (OPTS are its -o options): a thin volume
#         (64K blocks) of a pool whose data file is opened "direct";
#   file  with -t, the export of a `file` layer ("direct") over file.img:
#         FUSE's own cost without the thin layer.
# Each file is first written once in 1M blocks, so reads hit written data
# and the thin volume's blocks are mapped. Then ROUNDS rounds (default 3),
# each under `flock LOCK` (default /tmp/bench.lock) so that no other
# benchmark shares the machine, of the cells below, every cell on every
# file back to back in an order that alternates from one round to the next:
#   fio --name=c --filename=F --ioengine=io_uring --direct=1 --rw=RW
#       --bs=BS --iodepth=QD --size=SIZE --runtime=SECONDS --time_based
# It prints per cell the median over the rounds of each file, and each
# export's median divided by the raw file's, with the lowest and highest
# ratio within one round in brackets; the load average at the start of
# each round goes to standard error.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=$here/build runtime=3 rounds=3 size=1024 opts= lock=/tmp/bench.lock transport=
while getopts "b:r:R:s:x:l:t" o; do
  case $o in
    b) build=$OPTARG ;;
    r) runtime=$OPTARG ;;
    R) rounds=$OPTARG ;;
    s) size=$OPTARG ;;
    x) opts=$OPTARG ;;
    l) lock=$OPTARG ;;
    t) transport=1 ;;
    *) sed -n '2,25p' "$0" >&2; exit 2 ;;
  esac
done
fuse=$build/examples/fuse-export/thinstack-fuse
[ -x "$fuse" ] || { echo "fuse.sh: no $fuse (build first)" >&2; exit 2; }
command -v fio >/dev/null || { echo "fuse.sh: needs fio" >&2; exit 2; }
work=$(mktemp -d "${TMPDIR:-/var/tmp}/thinstack-fuse-bench.XXXXXX")
pids=()
cleanup() {
  for m in "$work"/mnt-*; do mountpoint -q "$m" 2>/dev/null && fusermount3 -u "$m"; done
  for p in "${pids[@]+"${pids[@]}"}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"

cat >thin.json <<EOF
{ "version": 1,
  "layers": {
    "meta": { "type": "file", "path": "meta.img", "size": "64M", "create": true },
    "data": { "type": "file", "path": "data.img", "size": "$((size + 64))M", "create": true,
              "direct": true },
    "pool": { "type": "thin-pool", "metadata": "meta", "data": "data",
              "block_size": "64K", "create": true },
    "vm0":  { "type": "thin", "pool": "pool", "id": 0, "size": "${size}M", "create": true } },
  "exports": [ "vm0" ] }
EOF
cat >file.json <<EOF
{ "version": 1,
  "layers": { "raw": { "type": "file", "path": "file.img", "size": "${size}M", "create": true,
                       "direct": true } },
  "exports": [ "raw" ] }
EOF
truncate -s "${size}M" raw.img
mount_one() { # CONFIG MOUNTPOINT
  mkdir -p "$2"
  "$fuse" "$1" "$2" -f -o nocontrol${opts:+,$opts} 2>"$2.err" &
  pids+=($!)
  for _ in $(seq 100); do mountpoint -q "$2" && return; sleep 0.1; done
  cat "$2.err" >&2
  exit 1
}
mount_one thin.json mnt-thin
files=(raw "$work/raw.img" thin "$work/mnt-thin/vm0")
if [ -n "$transport" ]; then
  mount_one file.json mnt-file
  files+=(file "$work/mnt-file/raw")
fi

cells=("write 1m 1" "read 1m 1" "randwrite 4k 32" "randread 4k 32" "randwrite 4k 1"
       "randread 4k 1")
run() { # FILE RW BS QD: prints MB/s for 1m, IOPS otherwise
  fio --name=c --filename="$1" --ioengine=io_uring --direct=1 --rw="$2" --bs="$3" \
      --iodepth="$4" --size="${size}M" --runtime="$runtime" --time_based --minimal >o.txt ||
    { cat o.txt >&2; exit 1; }
  # terse v3: 7/8 read KiB/s and IOPS, 48/49 write KiB/s and IOPS
  if [ "$3" = 1m ]; then
    awk -F';' '{printf "%.0f\n", ($7 + $48) * 1024 / 1e6}' o.txt
  else
    awk -F';' '{printf "%.0f\n", $8 + $49}' o.txt
  fi
}
n=$((${#files[@]} / 2))
for ((i = 0; i < n; i++)); do
  flock "$lock" fio --name=fill --filename="${files[2 * i + 1]}" --ioengine=io_uring --direct=1 \
    --rw=write --bs=1m --iodepth=4 --size="${size}M" --output=/dev/null
done
round() { # ROUND: one line per cell and file
  echo "round $1: $(uptime)" >&2
  local c k j
  for c in "${!cells[@]}"; do
    for ((k = 0; k < n; k++)); do
      j=$(( (k + c + $1) % n ))
      # shellcheck disable=SC2086
      echo "${cells[$c]// /_} ${files[2 * j]} $(run "${files[2 * j + 1]}" ${cells[$c]})"
    done
  done
}
export -f round run
: >results.txt
for ((r = 0; r < rounds; r++)); do
  flock "$lock" bash -c "$(declare -p cells files n size runtime); round $r" >>results.txt
done

python3 - "${files[@]}" <<'EOF'
import sys, statistics
names = sys.argv[1::2]
vals = {}
for line in open("results.txt"):
    cell, name, v = line.split()
    vals.setdefault(cell, {}).setdefault(name, []).append(float(v))
head = "| workload | " + " | ".join(names) + " | " + " | ".join(f"{n}/raw" for n in names[1:]) + " |"
print(head)
print("|---" * (2 * len(names)) + "|")
for cell, per in vals.items():
    rw, bs, qd = cell.split("_")
    unit = "MB/s" if bs == "1m" else "IOPS"
    med = {n: statistics.median(per[n]) for n in names}
    row = [f"{rw} {bs} QD{qd} ({unit})"] + [f"{med[n]:.0f}" for n in names]
    # The ratio of the medians, and in brackets the lowest and highest
    # ratio within one round (the files of a round run back to back).
    for n in names[1:]:
        r = [a / b for a, b in zip(per[n], per["raw"])]
        row.append(f"{med[n] / med['raw']:.2f}x ({min(r):.2f}-{max(r):.2f})")
    print("| " + " | ".join(row) + " |")
EOF
