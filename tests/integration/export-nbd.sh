# The nbdkit plugin seen by NBD clients we did not write: qemu-img map and
# nbdinfo --map report the allocation the library reports; qemu-img compare
# agrees with a raw image written with the same data; zeroing with and
# without permission to punch leaves holes and allocated zeroes; nbdcopy of
# a sparse image into the export keeps the export sparse.
. "$TS_SOURCE_DIR/tests/common/requires.sh"
. "$TS_SOURCE_DIR/tests/common/exports.sh"
requires_nbdkit
requires qemu-img qemu-io nbdinfo nbdcopy python3 numfmt

M=1048576
SIZE=$((64 * M))
# A second export, "slow", has no native WRITE_ZEROES (the library would
# write zero buffers), for fast zero.
CONFIG=$(write_stack "$TMP" 64M '
    "d2": { "type": "file", "path": "d2.img", "size": "4M", "create": true },
    "slow": { "type": "fault", "child": "d2", "limits": { "max_write_zeroes_bytes": 0 } }' '"slow"')
REF=$TMP/ref.raw
truncate -s $SIZE "$REF"
URI=$(nbd_uri vm0)

# Data at a few places, written through the library and into the reference.
put() { # OFFSET LENGTH
  head -c "$2" /dev/urandom >"$TMP/chunk"
  "$THINSTACK" write "$CONFIG" vm0 "$1" -i "$TMP/chunk" || fail "thinstack write at $1 failed"
  dd if="$TMP/chunk" of="$REF" bs=4096 seek=$(($1 / 4096)) conv=notrunc status=none
}
put $((1 * M)) $((256 * 1024))
put $((10 * M)) $((1 * M))
put $((33 * M)) 4096
"$THINSTACK" provision "$CONFIG" vm0 20M 8M || fail "thinstack provision failed"
"$THINSTACK" map --json "$CONFIG" vm0 | norm_map thinstack >"$TMP/lib.map"
map_has "$TMP/lib.map" $((20 * M)) $((8 * M)) "data zero" ||
  fail "the provisioned range is not in the library's map: $(cat "$TMP/lib.map")"

nbd_start config="$CONFIG"

nbdinfo --json "$URI" >"$TMP/info.json" || fail "nbdinfo failed"
# nbdkit holds the stack: -U reads its limits beside it.
"$THINSTACK" -U info --json "$CONFIG" >"$TMP/limits.json" || fail "thinstack info failed"
python3 - "$TMP/info.json" "$TMP/limits.json" <<'EOF' || fail "nbdinfo reports the wrong export: $(cat "$TMP/info.json")"
import json, sys
e = json.load(open(sys.argv[1]))["exports"][0]
lim = [n for n in json.load(open(sys.argv[2]))["nodes"] if n["name"] == "vm0"][0]["limits"]
assert e["export-size"] == lim["size"]
assert e["can_trim"] and e["can_zero"] and e["can_fast_zero"] and e["can_fua"] and e["can_flush"]
assert e["can_multi_conn"] and not e["is_read_only"]
# Block size constraints from the stacked limits.
opt = lim["io_opt"]
assert e["block_size_minimum"] == lim["logical_block_size"]
assert e["block_size_preferred"] == (opt if opt >= 512 and opt & (opt - 1) == 0 else 4096)
assert e["block_size_maximum"] == (lim["max_io_bytes"] or 32 << 20)
EOF

qemu-img map -f raw --output=json "$URI" | norm_map qemu >"$TMP/qemu.map"
diff -u "$TMP/lib.map" "$TMP/qemu.map" || fail "qemu-img map disagrees with the library"
nbdinfo --map --json "$URI" | norm_map nbdinfo >"$TMP/nbdinfo.map"
diff -u "$TMP/lib.map" "$TMP/nbdinfo.map" || fail "nbdinfo --map disagrees with the library"
qemu-img compare -f raw -F raw "$REF" "$URI" || fail "qemu-img compare: the export differs from the reference"

# Zeroing: without MAY_TRIM (NBD's NO_HOLE) space stays allocated, with it
# the range becomes a hole; an unaligned write goes through too.
qemu-io -f raw -c "write -z 40M 4M" -c "write -z -u 10M 1M" -c "write -P 0x5a 12345 1000" "$URI" \
  >"$TMP/qemu-io.log" || { cat "$TMP/qemu-io.log"; fail "qemu-io failed"; }
dd if=/dev/zero of="$REF" bs=1M seek=10 count=1 conv=notrunc status=none
printf '\x5a%.0s' $(seq 1000) | dd of="$REF" bs=1 seek=12345 conv=notrunc status=none
qemu-img compare -f raw -F raw "$REF" "$URI" || fail "the export differs from the reference after zeroing"
nbdinfo --map --json "$URI" | norm_map nbdinfo >"$TMP/nbdinfo.map"
map_has "$TMP/nbdinfo.map" $((40 * M)) $((4 * M)) "data zero" ||
  fail "zeroing without trim did not leave allocated zeroes: $(cat "$TMP/nbdinfo.map")"
map_has "$TMP/nbdinfo.map" $((10 * M)) $M "hole zero" ||
  fail "zeroing with trim did not leave a hole: $(cat "$TMP/nbdinfo.map")"

# Fast zero (NBD_CMD_FLAG_FAST_ZERO → NOFALLBACK): refused at once with
# ENOTSUP where zeroing would mean writing zeroes, leaving the data alone;
# done where the device zeroes natively. Without the flag both zero.
zero() { python3 "$TS_SOURCE_DIR/tests/common/nbd_zero.py" "$NBD_SOCK" "$@"; }
ok_io() { qemu-io -f raw -c "$2" "$(nbd_uri "$1")" >"$TMP/qemu-io.log" || { cat "$TMP/qemu-io.log"; fail "qemu-io $2 on $1"; }; }
ok_io slow "write -P 0x77 0 1M"
[ "$(zero slow 0 65536 fast)" = 95 ] || fail "fast zero on a device without native zeroing did not fail with ENOTSUP"
ok_io slow "read -P 0x77 0 1M"
[ "$(zero slow 0 65536)" = 0 ] || fail "zero (not fast) on the slow export failed"
ok_io slow "read -P 0 0 64k"
ok_io slow "read -P 0x77 64k 960k"
[ "$(zero vm0 $((12 * M)) $((2 * M)) fast)" = 0 ] || fail "fast zero on vm0 failed"
[ "$(zero vm0 $((14 * M)) $((2 * M)) fast nohole)" = 0 ] || fail "fast zero without holes on vm0 failed"
ok_io vm0 "read -P 0 12M 4M"
nbdinfo --map --json "$URI" | norm_map nbdinfo >"$TMP/nbdinfo.map"
map_has "$TMP/nbdinfo.map" $((12 * M)) $((2 * M)) "hole zero" ||
  fail "fast zero with trim did not leave a hole: $(cat "$TMP/nbdinfo.map")"
map_has "$TMP/nbdinfo.map" $((14 * M)) $((2 * M)) "data zero" ||
  fail "fast zero without trim did not leave allocated zeroes: $(cat "$TMP/nbdinfo.map")"

# Fill the whole export, then nbdcopy a sparse image over it: the holes of
# the image must become holes of the export again, not written zeroes.
qemu-io -f raw -c "write -P 0xa5 0 64M" "$URI" >/dev/null || fail "filling the export failed"
full=$(allocated "$TMP/data.img")
[ "$full" -ge $SIZE ] || fail "the filled export takes only $full bytes"
SPARSE=$TMP/sparse.raw
truncate -s $SIZE "$SPARSE"
head -c $M /dev/urandom | dd of="$SPARSE" bs=1M seek=5 conv=notrunc status=none
head -c 4096 /dev/urandom | dd of="$SPARSE" bs=4096 seek=$((50 * M / 4096)) conv=notrunc status=none
nbdcopy "$SPARSE" "$URI" || fail "nbdcopy into the export failed"
qemu-img compare -f raw -F raw "$SPARSE" "$URI" || fail "the export differs from the copied image"
sparse=$(allocated "$TMP/data.img")
[ "$sparse" -le $((2 * M)) ] || fail "after nbdcopy of a sparse image the export takes $sparse bytes"
nbd_stop

# The copied data is mapped, the rest of the device is a hole again (a thin
# volume maps whole blocks, so only the data's own ranges are checked as data).
"$THINSTACK" map --json "$CONFIG" vm0 | norm_map thinstack >"$TMP/final.map"
while read -r off len kind; do
  map_has "$TMP/final.map" "$off" "$len" "$kind" || fail "map after nbdcopy lacks $off $len $kind:
$(cat "$TMP/final.map")"
done <<EOF
$((5 * M)) $M data -
$((50 * M)) 4096 data -
0 $((5 * M)) hole zero
$((7 * M)) $((42 * M)) hole zero
$((51 * M)) $((13 * M)) hole zero
EOF
echo "PASS"
