#!/usr/bin/env bash
# The life of a pool with the CLI alone, no hand edits: create the pool, two
# volumes, write, snapshot, read the snapshot, grow, delete, extend the pool,
# list. After every step CONFIG opens, dump-config round-trips and
# thin_check is clean. A kill between the pool's commit and the rename of
# CONFIG (the TS_TEST_CRASH_AT hook) is reported by the next open and mended
# by the command the report names; a "size" shrunk by hand below the data is
# refused with the numbers; resize refuses to shrink over mapped blocks
# unless --discard-beyond.
source "$TS_SOURCE_DIR/tests/common/requires.sh"
requires thin_check python3 cmp
cd "$TMP"
cat > stack.json <<'JSON'
{ "version": 1,
  "comment": "the lifecycle test's stack",
  "layers": {
    "meta": { "type": "file", "path": "pool.meta", "size": "8M", "create": true },
    "data": { "type": "file", "path": "pool.data", "size": "256M", "create": true },
    "pool": { "type": "thin-pool", "metadata": "meta", "data": "data", "block_size": "64K" } },
  "exports": [] }
JSON

steps=0
# After each step: CONFIG opens, its dump opens and dumps the same, the
# pool is clean.
healthy() {
  steps=$((steps + 1))
  "$THINSTACK" info stack.json > info.txt 2> info.err || fail "$1: info: $(cat info.err)"
  [ ! -s info.err ] || fail "$1: info warned: $(cat info.err)"
  "$THINSTACK" dump-config stack.json > dump1.json || fail "$1: dump-config"
  "$THINSTACK" dump-config dump1.json > dump2.json || fail "$1: dump-config of the dump"
  cmp -s dump1.json dump2.json || fail "$1: dump-config does not round-trip: $(diff dump1.json dump2.json)"
  thin_check pool.meta > /dev/null 2> check.err || fail "$1: thin_check: $(cat check.err)"
  ls -a | grep -q '^\.stack\.json\.' && fail "$1: a temporary configuration was left: $(ls -a)"
  return 0
}
# The JSON of `thin list --json`, asserted on by the Python in $1.
list_is() {
  "$THINSTACK" thin list stack.json --json > list.json
  python3 -c "import json,sys; v = {x['name']: x for x in json.load(open('list.json'))}; $1" ||
    fail "thin list: $(cat list.json)"
}

"$THINSTACK" pool create stack.json pool > /dev/null
healthy "pool create"
"$THINSTACK" thin create stack.json vm0 --size 64M | grep -q 'volume vm0 (id 0, 64M) created in pool pool'
healthy "thin create vm0"
"$THINSTACK" thin create stack.json vm1 --size 32M --pool pool --export | grep -q 'volume vm1 (id 1, 32M)'
healthy "thin create vm1"
python3 - <<'EOF'
import json
c = json.load(open("stack.json"))
assert list(c) == ["version", "comment", "layers", "exports"], list(c)
assert list(c["layers"]) == ["meta", "data", "pool", "vm0", "vm1"], list(c["layers"])
assert list(c["layers"]["meta"]) == ["type", "path", "size", "create"], c["layers"]["meta"]
assert c["layers"]["vm0"] == {"type": "thin", "pool": "pool", "id": 0, "size": "64M"}, c
assert c["exports"] == ["vm1"], c
EOF

head -c 2M /dev/urandom > a.bin
"$THINSTACK" write stack.json vm0 1M -i a.bin > /dev/null
healthy "write vm0"
"$THINSTACK" thin snap stack.json vm0 vm0-snap | grep -q 'volume vm0-snap (id 2) created in pool pool as a snapshot of vm0'
healthy "thin snap"
head -c 1M /dev/zero | tr '\0' 'x' > b.bin
"$THINSTACK" write stack.json vm0 1M -i b.bin > /dev/null   # the snapshot keeps the old data
"$THINSTACK" read stack.json vm0-snap 1M 2M -o snap.bin > /dev/null
cmp -s a.bin snap.bin || fail "the snapshot does not read what vm0 held when it was taken"
list_is 'assert v["vm0-snap"]["origin"] == "vm0" and v["vm0-snap"]["size"] == 64 << 20, v'
healthy "read the snapshot"

"$THINSTACK" thin resize stack.json vm1 +32M | grep -q 'volume vm1 is now 64M'
healthy "thin resize (grow)"
list_is 'assert v["vm1"]["size"] == 64 << 20, v'

# Shrinking over mapped blocks: refused, then done with --discard-beyond.
set +e
"$THINSTACK" thin resize stack.json vm0 1M 2> err.txt
[ $? -eq 1 ] || fail "a shrink over mapped blocks was not refused"
set -e
grep -q 'mapped up to byte 3145728, past the new size 1048576' err.txt || fail "shrink refusal: $(cat err.txt)"
grep -q -- '--discard-beyond' err.txt || fail "the refusal does not name --discard-beyond: $(cat err.txt)"
list_is 'assert v["vm0"]["size"] == 64 << 20 and v["vm0"]["mapped_bytes"] == 2 << 20, v'
"$THINSTACK" thin resize stack.json vm0 2M --discard-beyond | grep -q 'volume vm0 is now 2M'
list_is 'assert v["vm0"]["size"] == 2 << 20 and v["vm0"]["mapped_bytes"] == 1 << 20, v'
healthy "thin resize --discard-beyond"
"$THINSTACK" read stack.json vm0 1M 1M -o head.bin > /dev/null
cmp -s head.bin b.bin || fail "the part of vm0 a shrink keeps lost its data"

# A "size" shrunk by hand below the mapped blocks is refused at open.
cp stack.json good.json
python3 -c '
import json
c = json.load(open("stack.json")); c["layers"]["vm0-snap"]["size"] = "1M"
json.dump(c, open("stack.json", "w"), indent=2)'
set +e
"$THINSTACK" info stack.json > /dev/null 2> err.txt
[ $? -eq 1 ] || fail "a size below the mapped blocks opened"
set -e
grep -q 'layers.vm0-snap.size: 1M (1048576 bytes) is below the data of volume 2: block 47 is mapped, so bytes up to 3145728' err.txt ||
  fail "hand shrink: $(cat err.txt)"
cp good.json stack.json
healthy "size shrunk by hand, put back"

"$THINSTACK" thin delete stack.json vm1 | grep -q 'volume vm1 deleted from pool pool'
list_is 'assert sorted(v) == ["vm0", "vm0-snap"], v'
python3 -c 'import json; c = json.load(open("stack.json")); assert c["exports"] == [] and "vm1" not in c["layers"], c'
healthy "thin delete"

ino=$(stat -c %i stack.json)
"$THINSTACK" pool extend stack.json pool +1G | grep -q 'data space is now 1280M'
[ "$(stat -c %s pool.data)" -eq $((1280 << 20)) ] || fail "the data file did not grow"
grep -q '"size": "1280M"' stack.json || fail "CONFIG does not say the new size"
[ "$(stat -c %i stack.json)" != "$ino" ] || fail "CONFIG was rewritten in place, not replaced"
healthy "pool extend +1G"
"$THINSTACK" pool status stack.json pool --json | python3 -c '
import json,sys; s = json.load(sys.stdin); assert s["data"]["blocks"] == 20480, s'

# A kill between the pool's commit and the rename, during a create: the
# next open warns of the volume no layer names, with the mending command.
set +e
TS_TEST_CRASH_AT=config-rename "$THINSTACK" thin create stack.json vm2 --size 16M
[ $? -eq 99 ] || fail "the crash hook did not fire"
set -e
"$THINSTACK" info stack.json > /dev/null 2> warn.txt
grep -q "warning: layers.pool: volume 1 (0 bytes mapped) is in the pool but no layer of the configuration names it" warn.txt ||
  fail "no report of the volume without a layer: $(cat warn.txt)"
mend=$(grep -o '`thinstack thin delete [^`]*`' warn.txt | tr -d '`')
[ "$mend" = "thinstack thin delete $(realpath stack.json) --pool pool --id 1" ] || fail "mending command: $mend"
list_is 'assert v[None]["id"] == 1 and v[None]["in_config"] is False and v[None]["in_pool"], v'
"$THINSTACK" thin list stack.json | grep -Eq '^- +pool +1 .*\(not in config\)' || fail "list: $("$THINSTACK" thin list stack.json)"
"$THINSTACK" ${mend#thinstack } | grep -q 'volume 1 deleted from pool pool'
healthy "crash during create, mended"

# The same during a delete: the layer outlives its volume; the open fails
# with the layer, pool and id, and names the command that removes it.
set +e
TS_TEST_CRASH_AT=config-rename "$THINSTACK" thin delete stack.json vm0-snap
[ $? -eq 99 ] || fail "the crash hook did not fire"
"$THINSTACK" info stack.json > /dev/null 2> err.txt
[ $? -eq 1 ] || fail "a layer without its volume opened"
set -e
grep -q 'layers.vm0-snap.id: pool "pool" has no volume 2' err.txt || fail "missing volume: $(cat err.txt)"
mend=$(grep -o '`thinstack thin delete [^`]*`' err.txt | tr -d '`')
[ "$mend" = "thinstack thin delete $(realpath stack.json) vm0-snap" ] || fail "mending command: $mend"
list_is 'assert v["vm0-snap"]["in_pool"] is False, v'
"$THINSTACK" ${mend#thinstack } | grep -q 'volume vm0-snap deleted'
healthy "crash during delete, mended"
list_is 'assert sorted(v) == ["vm0"], v'

# A pool extend stopped between growing the data file and the rename: the
# open names both sizes; the same extend, run again, finishes it.
set +e
TS_TEST_CRASH_AT=config-rename "$THINSTACK" pool extend stack.json pool 1536M
[ $? -eq 99 ] || fail "the crash hook did not fire"
"$THINSTACK" info stack.json > /dev/null 2> err.txt
[ $? -eq 1 ] || fail "a data file bigger than CONFIG says opened"
set -e
grep -q 'layers.data.size: .*pool.data is 1610612736 bytes, the configuration says 1342177280' err.txt ||
  fail "interrupted extend: $(cat err.txt)"
"$THINSTACK" pool extend stack.json pool 1536M > /dev/null
grep -q '"size": "1536M"' stack.json || fail "CONFIG does not say the new size"
"$THINSTACK" pool status stack.json pool --json | python3 -c '
import json,sys; s = json.load(sys.stdin); assert s["data"]["blocks"] == 24576, s'
healthy "interrupted pool extend, finished"

# Another create and snapshot after all that reuse the freed ids.
"$THINSTACK" thin create stack.json vm3 --size 8M | grep -q '(id 1, 8M)'
"$THINSTACK" thin snap stack.json vm3 vm3-snap | grep -q '(id 2)'
healthy "create and snap after mending"
echo "cli_lifecycle: ok ($steps healthy checks)"
