#!/usr/bin/env bash
# `thin delta` against Debian's thin_delta, and `thin list`'s exclusive and
# shared counts against thin_ls, on one pool with hundreds of changed ranges
# between two snapshots: writes, discards, overwrites after a snapshot and a
# grown volume; also a volume against itself, unrelated volumes and an empty
# one. The delta of a fresh snapshot reads a handful of metadata nodes, and
# a served stack answers thin delta with what the closed pool gives.
source "$TS_SOURCE_DIR/tests/common/requires.sh"
source "$TS_SOURCE_DIR/tests/common/exports.sh"
requires thin_delta thin_ls thin_check python3
cd "$TMP"
write_pool_config stack.json 16M 1G 64K
T=$THINSTACK
$T pool create stack.json pool >/dev/null
$T thin create stack.json vm0 --size 128M --export >/dev/null
$T thin create stack.json vm1 --size 64M --export >/dev/null
$T thin create stack.json empty --size 64M >/dev/null
head -c 65536 /dev/urandom > blk
# The base: 64 scattered runs of 1..8 blocks, and a long run.
$T provision stack.json vm0 64M 16M >/dev/null 2>&1
for i in $(seq 0 63); do
  $T write stack.json vm0 $(( (i * 13 % 64) * 1024 * 1024 )) -i blk >/dev/null 2>&1
  $T provision stack.json vm0 $(( i * 1024 * 1024 + 256 * 1024 )) $(( (i % 8 + 1) * 64 * 1024 )) >/dev/null 2>&1
done
$T provision stack.json vm1 0 8M >/dev/null 2>&1
$T thin snap stack.json vm0 s1 >/dev/null
# After the snapshot: overwrites (different), new blocks (right only),
# discards (left only), then the volume grows and is written past its old end.
for i in $(seq 0 39); do
  $T write stack.json vm0 $(( (i * 7 % 64) * 1024 * 1024 + 256 * 1024 )) -i blk >/dev/null 2>&1
  $T provision stack.json vm0 $(( i * 1024 * 1024 + 640 * 1024 )) 128K >/dev/null 2>&1
  $T discard stack.json vm0 $(( 64 * 1024 * 1024 + i * 384 * 1024 )) 128K >/dev/null 2>&1
done
$T thin resize stack.json vm0 192M >/dev/null
for i in $(seq 0 19); do
  $T provision stack.json vm0 $(( 128 * 1024 * 1024 + i * 2 * 1024 * 1024 )) 64K >/dev/null 2>&1
done
$T thin snap stack.json vm0 s2 >/dev/null
$T write stack.json vm0 0 -i blk >/dev/null 2>&1
assert_thin_check pool.meta "after the writes"

ids() { $T thin list stack.json --json | python3 -c '
import json, sys
vols = json.load(sys.stdin)
print(" ".join(str(v["id"]) for n in sys.argv[1:] for v in vols if v["name"] == n))' "$@"; }

# compare A B: ours (plain and --verbose) against thin_delta's (plain and --verbose)
compare() {
  local a=$1 b=$2 ia ib
  read -r ia ib <<<"$(ids "$a" "$b")"
  $T thin delta stack.json "$a" "$b" --json > ours.json || fail "thin delta $a $b"
  $T thin delta stack.json "$a" "$b" --json --verbose > ours-v.json || fail "thin delta $a $b --verbose"
  $T thin delta stack.json --id "$ia" "$ib" --json > ours-id.json || fail "thin delta --id $ia $ib"
  cmp -s ours.json ours-id.json || fail "names and ids differ: $(diff ours.json ours-id.json)"
  thin_delta --snap1 "$ia" --snap2 "$ib" pool.meta > theirs.xml || fail "thin_delta $ia $ib"
  thin_delta --snap1 "$ia" --snap2 "$ib" --verbose pool.meta > theirs-v.xml || fail "thin_delta -v"
  python3 - "$3" <<'PY' || fail "delta $a $b differs from thin_delta"
import json, sys
import xml.etree.ElementTree as ET
want_min = int(sys.argv[1])
ours, ours_v = json.load(open("ours.json")), json.load(open("ours-v.json"))
def fail(msg):
    sys.exit(msg)
# thin_delta, plain: ranges of one kind that touch are one.
plain = [(e.tag, int(e.get("begin")), int(e.get("length")))
         for e in ET.parse("theirs.xml").getroot().find("diff")]
# thin_delta --verbose: each range with its data blocks.
verbose = []
for group in ET.parse("theirs-v.xml").getroot().find("diff"):
    for r in group:
        if group.tag == "different":
            l, rt = int(r.get("left_data_begin")), int(r.get("right_data_begin"))
        else:
            d = int(r.get("data_begin"))
            l = d if group.tag != "right_only" else None
            rt = d if group.tag != "left_only" else None
        verbose.append((group.tag, int(r.get("begin")), int(r.get("length")), l, rt))
mine_v = [(r["kind"], r["begin"], r["length"], r.get("left_data"), r.get("right_data"))
          for r in ours_v["ranges"]]
if mine_v != verbose:
    fail("--verbose: ours %d ranges, thin_delta %d; first difference: %s" % (
        len(mine_v), len(verbose),
        next(((m, t) for m, t in zip(mine_v, verbose) if m != t), "lengths")))
mine = [(r["kind"], r["begin"], r["length"]) for r in ours["ranges"]]
if mine != [p for p in plain if p[0] != "same"]:
    fail("plain ranges differ from thin_delta's without same: %s / %s" % (mine[:5], plain[:5]))
bs = ours["block_size"]
for r in ours["ranges"]:
    if r["offset"] != r["begin"] * bs or r["bytes"] != r["length"] * bs:
        fail("bytes of %s" % r)
for k in ("different", "left_only", "right_only"):
    if ours["blocks"][k] != sum(p[2] for p in plain if p[0] == k):
        fail("blocks.%s" % k)
if ours_v["blocks"]["same"] != sum(p[2] for p in plain if p[0] == "same"):
    fail("blocks.same")
if len(mine) < want_min:
    fail("only %d changed ranges, wanted >= %d" % (len(mine), want_min))
print(len(mine), "changed ranges,", len(verbose), "verbose ranges")
PY
}
compare s1 s2 100
compare s2 s1 100
compare s1 vm0 100
compare vm0 vm1 1
compare vm1 s1 1
compare vm1 vm1 0
compare vm0 s2 1
compare empty vm1 1
compare vm0 empty 1
compare empty empty 0
# The empty volume on its own terms too: everything on the other side, once.
$T thin delta stack.json empty vm1 --json | python3 -c '
import json, sys
d = json.load(sys.stdin)
assert d["ranges"] == [{"kind": "right_only", "begin": 0, "length": 128, "offset": 0, "bytes": 8388608}], d
assert d["blocks"] == {"different": 0, "left_only": 0, "right_only": 128}, d' || fail "empty vm1"
$T thin delta stack.json empty empty --json --verbose | python3 -c '
import json, sys
d = json.load(sys.stdin)
assert d["ranges"] == [] and d["blocks"]["same"] == 0, d' || fail "empty empty"

# The same volume and a fresh snapshot: no ranges, only the roots read.
$T thin snap stack.json s2 s3 >/dev/null
for pair in "s2 s2" "s2 s3"; do
  $T thin delta stack.json $pair --json | python3 -c '
import json, sys
d = json.load(sys.stdin)
assert d["ranges"] == [], d
assert d["metadata_nodes_read"] <= 8, d["metadata_nodes_read"]' || fail "delta $pair read too much"
done
$T thin delta stack.json s2 s3 --json --verbose | python3 -c '
import json, sys
d = json.load(sys.stdin)
assert all(r["kind"] == "same" for r in d["ranges"]) and d["blocks"]["same"] > 500, d["blocks"]
assert d["metadata_nodes_read"] > 8, d["metadata_nodes_read"]' || fail "verbose s2 s3"

# Text: the header and the summary say what JSON says.
$T thin delta stack.json s1 s2 > delta.txt
grep -q '^delta of s1 (id 3) and s2 (id 4) in pool pool, 64K blocks$' delta.txt || fail "$(head -1 delta.txt)"
grep -Eq '^  (different|left_only|right_only) ' delta.txt || fail "no ranges: $(cat delta.txt)"
want=$($T thin delta stack.json s1 s2 --json | python3 -c '
import json, sys
b = json.load(sys.stdin)["blocks"]
print("%d blocks different, %d left only, %d right only" % (b["different"], b["left_only"], b["right_only"]))')
grep -q "^$want (" delta.txt || fail "summary: $(tail -1 delta.txt), wanted $want"

# Errors: one line, exit 1 or 2.
set +e
$T thin delta stack.json s1 nosuch 2> err.txt; [ $? -eq 1 ] || fail "unknown volume"
grep -q 'no volume layer named "nosuch"' err.txt || fail "$(cat err.txt)"
$T thin delta stack.json --id 0 99 2> err.txt; [ $? -eq 1 ] || fail "unknown id"
grep -q 'has no volume 99' err.txt || fail "$(cat err.txt)"
$T thin delta stack.json s1 2> err.txt; [ $? -eq 2 ] || fail "missing argument"
$T thin delta stack.json s1 s2 --frob 2> err.txt; [ $? -eq 2 ] || fail "unknown option"
set -e
$T thin delta --help | grep -q '^  delta CONFIG A B' || fail "thin delta --help"

# thin list's exclusive and shared blocks are thin_ls's.
thin_ls --no-headers --format "DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS" pool.meta > ls.txt
$T thin list stack.json --json > list.json
python3 - <<'PY' || fail "thin list counts differ from thin_ls: $(cat ls.txt)"
import json
bs = 65536
theirs = {}
for line in open("ls.txt"):
    dev, mapped, ex, sh = map(int, line.split())
    theirs[dev] = (mapped, ex, sh)
ours = {v["id"]: (v["mapped_bytes"] // bs, v["exclusive_bytes"] // bs, v["shared_bytes"] // bs)
        for v in json.load(open("list.json"))}
assert ours == theirs, (ours, theirs)
assert any(t[1] and t[2] for t in theirs.values()), theirs
PY
$T thin list stack.json > list.txt
head -1 list.txt | grep -q ' EXCLUSIVE    SHARED  ORIGIN$' || fail "list header: $(head -1 list.txt)"
assert_thin_check pool.meta "at the end"

# Through a serving stack's control socket: the same output.
forms=("s1 s2" "s1 s2 --verbose" "--id 3 4 --json" "s2 vm0 --json --verbose")
for i in "${!forms[@]}"; do $T thin delta stack.json ${forms[$i]} > "here.$i"; done
$T serve stack.json 2>serve.err &
SERVE_PID=$!
on_exit "kill $SERVE_PID 2>/dev/null; wait $SERVE_PID 2>/dev/null"
wait_for "[ -S stack.json.ctl ]"
for i in "${!forms[@]}"; do
  $T thin delta stack.json ${forms[$i]} > "routed.$i" || fail "routed thin delta ${forms[$i]}"
  cmp -s "here.$i" "routed.$i" || fail "thin delta ${forms[$i]} differs when served:
$(diff "here.$i" "routed.$i" | head)"
done
set +e
$T thin delta stack.json s1 nosuch 2> err.txt; [ $? -eq 1 ] || fail "routed unknown volume"
grep -q 'no volume layer named "nosuch"' err.txt || fail "$(cat err.txt)"
set -e
