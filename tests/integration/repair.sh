#!/usr/bin/env bash
# `thinstack repair` on a pool whose metadata lost a mapping leaf: the
# rebuilt metadata passes Debian's thin_check, keeps every mapping but the
# lost leaf's, and matches what thin_repair rebuilds from the same damage;
# in place too, after which the pool opens. A damaged superblock is refused
# and the file left as it was.
source "$TS_SOURCE_DIR/tests/common/requires.sh"
requires thin_check thin_repair thin_dump python3
cd "$TMP"
write_pool_config stack.json 8M 512M 64K
T=$THINSTACK
$T pool create stack.json pool >/dev/null
$T thin create stack.json vm0 --size 256M --export >/dev/null
$T thin create stack.json vm1 --size 64M --export >/dev/null
head -c 65536 /dev/urandom > blk
# Over a thousand mappings, so that the mapping tree has many leaves.
$T provision stack.json vm0 0 64M >/dev/null 2>&1
for i in $(seq 0 49); do
  $T write stack.json vm0 $(( 64 * 1024 * 1024 + i * 1024 * 1024 )) -i blk >/dev/null 2>&1
done
$T provision stack.json vm1 0 4M >/dev/null 2>&1
$T thin snap stack.json vm0 s1 >/dev/null
for i in $(seq 0 9); do
  $T write stack.json vm0 $(( i * 6 * 1024 * 1024 + 512 * 1024 )) -i blk >/dev/null 2>&1
done
assert_thin_check pool.meta "before the damage"
thin_dump pool.meta > orig.xml

# Damage one leaf of vm0's mapping tree (a leaf of 8-byte values whose keys
# are virtual blocks, not device ids) and remember what it mapped.
python3 - <<'PY' > lost.txt
import struct
data = open("pool.meta", "rb").read()
best = None
for b in range(1, len(data) // 4096):
    blk = data[b * 4096:(b + 1) * 4096]
    flags, blocknr, nr, maxe, vsize = struct.unpack_from("<IQIII", blk, 4)
    if blocknr != b or flags != 2 or vsize != 8 or not 20 <= nr <= maxe:
        continue
    keys = struct.unpack_from("<%dQ" % nr, blk, 32)
    if keys[0] < 64:  # the top-level tree or the start of a volume: keep those
        continue
    vals = struct.unpack_from("<%dQ" % nr, blk, 32 + 8 * maxe)
    best = (b, list(zip(keys, (v >> 24 for v in vals))))
    break
b, pairs = best
with open("pool.meta", "r+b") as f:
    f.seek(b * 4096 + 200)
    f.write(b"\xde\xad" * 64)
print(b)
for k, d in pairs:
    print(k, d)
PY
[ "$(wc -l < lost.txt)" -gt 20 ] || fail "no leaf to damage: $(cat lost.txt)"
cp pool.meta damaged.meta
set +e
thin_check damaged.meta >/dev/null 2>&1 && fail "thin_check passes the damaged metadata"
set -e

mappings() { # XML: "dev vblock dblock" per mapped block, sorted
  python3 - "$1" <<'PY'
import sys
import xml.etree.ElementTree as ET
out = []
for dev in ET.parse(sys.argv[1]).getroot().iter("device"):
    i = int(dev.get("dev_id"))
    for m in dev:
        if m.tag == "single_mapping":
            out.append((i, int(m.get("origin_block")), int(m.get("data_block"))))
        else:
            o, d = int(m.get("origin_begin")), int(m.get("data_begin"))
            out += [(i, o + k, d + k) for k in range(int(m.get("length")))]
for t in sorted(out):
    print(*t)
PY
}
mappings orig.xml > orig.map

$T repair stack.json pool -o repaired.meta --json > repair.json || fail "repair: $(cat repair.json)"
cmp -s pool.meta damaged.meta || fail "repair -o changed its input"
assert_thin_check repaired.meta "after repair -o"
thin_dump repaired.meta > repaired.xml
mappings repaired.xml > repaired.map
python3 - <<'PY' || fail "repair kept the wrong mappings"
import json
orig = set(tuple(map(int, l.split())) for l in open("orig.map"))
rep = set(tuple(map(int, l.split())) for l in open("repaired.map"))
lines = open("lost.txt").read().split("\n")
lost = set(tuple(map(int, l.split())) for l in lines[1:] if l)
assert rep <= orig, sorted(rep - orig)[:5]
gone = orig - rep
assert gone, "nothing was lost"
assert all((v, d) in lost for _, v, d in gone), sorted(gone)[:5]
assert len(rep) >= len(orig) - 2 * len(lost), (len(rep), len(orig))
r = json.load(open("repair.json"))["repaired"]
assert r["mappings"] == len(rep) and r["volumes"] == 3 and r["damaged_nodes"] >= 1, r
print("kept", len(rep), "of", len(orig), "mappings; lost", len(gone))
PY

# thin_repair on the same damage keeps the same mappings.
truncate -s 8M tr.meta
thin_repair -i damaged.meta -o tr.meta 2>tr.err || fail "thin_repair: $(cat tr.err)"
thin_dump tr.meta > tr.xml
mappings tr.xml > tr.map
cmp -s repaired.map tr.map || fail "thin_repair kept other mappings: $(diff repaired.map tr.map | head)"

# In place: the pool opens again, with what repair -o kept.
$T repair stack.json pool > repair.txt || fail "repair in place: $(cat repair.txt)"
grep -q '^pool pool repaired into .*pool.meta: 3 volumes, ' repair.txt || fail "$(cat repair.txt)"
assert_thin_check pool.meta "after repair in place"
thin_dump pool.meta > inplace.xml
mappings inplace.xml > inplace.map
cmp -s repaired.map inplace.map || fail "in place differs from -o"
$T thin list stack.json | grep -Eq '^vm0 +pool +0 ' || fail "the repaired pool does not open"

# A damaged superblock: refused, one line, the file as it was.
cp damaged.meta nosb.meta
printf 'garbage' | dd of=nosb.meta bs=1 seek=100 conv=notrunc status=none
cp nosb.meta pool.meta
set +e
$T repair stack.json pool 2> err.txt; st=$?
set -e
[ $st -eq 1 ] || fail "damaged superblock: exit $st"
[ "$(wc -l < err.txt)" -eq 1 ] && grep -q 'superblock' err.txt || fail "$(cat err.txt)"
cmp -s pool.meta nosb.meta || fail "a refused repair changed the file"
$T repair --help | grep -q '^usage: thinstack repair CONFIG POOL' || fail "repair --help"
