#!/usr/bin/env bash
# Block status of a file with many unwritten extents is one forward walk:
# the map is exact (provisioned ranges read as allocated zeroes, holes as
# holes, data written into a provisioned range as data) and SEEK_DATA runs
# a bounded number of times, not once per extent (each call scans to the
# next data or the end of the file, which made large maps quadratic).
source "$TS_SOURCE_DIR/tests/common/requires.sh"
requires strace python3
cd "$TMP"
cat > s.json <<'JSON'
{ "version": 1, "layers": { "d": { "type": "file", "path": "d.img", "size": "512M", "create": true } },
  "exports": ["d"] }
JSON
"$THINSTACK" flush s.json d
# Every other MiB preallocated: 256 unwritten extents between 256 holes,
# more than one FIEMAP batch.
python3 - <<'PY'
import os
fd = os.open("d.img", os.O_RDWR)
for i in range(0, 512, 2):
    os.posix_fallocate(fd, i << 20, 1 << 20)
os.close(fd)
PY

check_map() { # EXPECTED-DATA-OFFSETS...
  "$THINSTACK" map s.json d --json > map.json
  python3 - "$@" <<'PY'
import json, sys
data = sorted(int(x) for x in sys.argv[1:])
m = json.load(open("map.json"))
ext = m["extents"] if isinstance(m, dict) else m
want = []
for i in range(512):
    s, e = i << 20, (i + 1) << 20
    kind = "hole" if i % 2 else "zero"
    pos = s
    for d in data:
        if s <= d < e:
            if d > pos:
                want.append((pos, d - pos, kind))
            want.append((d, 4096, "data"))
            pos = d + 4096
    want.append((pos, e - pos, kind))
# merge neighbours of one kind, as the map does
merged = []
for w in want:
    if merged and merged[-1][2] == w[2] and merged[-1][0] + merged[-1][1] == w[0]:
        merged[-1] = (merged[-1][0], merged[-1][1] + w[1], w[2])
    else:
        merged.append(w)
def kind(x):
    return "hole" if x.get("hole") else "zero" if x.get("zero") else "data"
got = [(x["offset"], x["length"], kind(x)) for x in ext]
assert got == merged, [g for g in got if g not in merged][:5] or (len(got), len(merged))
PY
}

# LeakSanitizer cannot run under ptrace: sanitizer builds skip it here.
seeks() {
  ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0 \
    strace -f -e trace=lseek -o trace.txt "$THINSTACK" map s.json d > /dev/null ||
    { echo "map under strace failed"; return; }
  grep -c SEEK_DATA trace.txt || true
}

check_map
n=$(seeks)
[[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -le 2 ] || fail "map of 256 unwritten extents called SEEK_DATA $n times"

# Data still in the page cache inside two unwritten extents: exact.
head -c 4096 /dev/urandom > w.bin
"$THINSTACK" write s.json d $((100 << 20)) -i w.bin
"$THINSTACK" write s.json d $((300 << 20)) -i w.bin
check_map $((100 << 20)) $((300 << 20))
n=$(seeks)
[[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -le 4 ] || fail "map with cached data called SEEK_DATA $n times"
echo "file status walk: ok"
