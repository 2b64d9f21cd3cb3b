# The FUSE export under fio: random writes verified with crc32c (aligned and
# unaligned block sizes, several jobs at once), holes punched through fio's
# fallocate engine, verification again before and after a remount; then
# fallocate(1) on the exported file shows up as provisioned extents in
# `thinstack map` and as allocated space in the backing file.
. "$TS_SOURCE_DIR/tests/common/requires.sh"
. "$TS_SOURCE_DIR/tests/common/exports.sh"
requires_fuse
requires fio python3 numfmt

M=1048576
CONFIG=$(write_stack "$TMP" 64M)
MNT=$TMP/mnt
DEV=$MNT/vm0

fuse_mount "$CONFIG" "$MNT"
[ "$(stat -c %s "$DEV")" = $((64 * M)) ] || fail "vm0 is not 64M: $(stat -c %s "$DEV")"

# Jobs a and b: 4K random writes on [0,16M) and [16M,32M); job c: 1000-byte
# writes on [32M,40M), none of them aligned to the device's blocks.
cat >"$TMP/write.fio" <<EOF
[global]
filename=$DEV
ioengine=psync
rw=randwrite
verify=crc32c
verify_fatal=1
randrepeat=1
[a]
bs=4k
offset=0
size=16M
[b]
bs=4k
offset=16M
size=16M
[c]
bs=1000
offset=32M
size=8M
EOF
fio --output="$TMP/fio.log" "$TMP/write.fio" || { cat "$TMP/fio.log"; fail "fio write+verify failed"; }

# Punch [16M,32M) (job b's range) in 64K pieces: fio's falloc engine turns
# trims into fallocate(PUNCH_HOLE|KEEP_SIZE), which the export makes DISCARD.
fio --output="$TMP/trim.log" --name=trim --filename="$DEV" --ioengine=falloc --rw=trim \
    --bs=64k --offset=16M --size=16M || { cat "$TMP/trim.log"; fail "fio trim failed"; }
cmp -i $((16 * M)):0 -n $((16 * M)) "$DEV" /dev/zero || fail "the punched range does not read as zeroes"

verify_only() {
  fio --output="$TMP/verify.log" --verify_only --section=a --section=c "$TMP/write.fio" ||
    { cat "$TMP/verify.log"; fail "fio verify failed $1"; }
}
verify_only "after the punch"

# Remount: everything was flushed and the stack reopened.
fuse_umount "$MNT"
"$THINSTACK" map --json "$CONFIG" vm0 $((16 * M)) $((16 * M)) | norm_map thinstack >"$TMP/trimmed.map"
[ "$(cat "$TMP/trimmed.map")" = "$((16 * M)) $((16 * M)) hole zero" ] ||
  fail "the punched range is not a hole in the stack: $(cat "$TMP/trimmed.map")"
fuse_mount "$CONFIG" "$MNT"
verify_only "after a remount"

# fallocate(1) provisions: [48M,56M) was never written.
before=$(allocated "$TMP/data.img")
fallocate -o $((48 * M)) -l $((8 * M)) "$DEV"
after=$(allocated "$TMP/data.img")
[ $((after - before)) -ge $((8 * M)) ] ||
  fail "fallocate allocated $((after - before)) bytes in the backing file, expected >= 8M"
# The export reports allocation too: st_blocks, and SEEK_DATA finds the range.
blocks=$(stat -c %b "$DEV")
[ $((blocks * 512)) -ge $((8 * M + 24 * M)) ] || fail "st_blocks of vm0 is only $blocks"
python3 - "$DEV" $((48 * M)) <<'EOF' || fail "SEEK_DATA/SEEK_HOLE disagree with the provisioned range"
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
start = int(sys.argv[2])
assert os.lseek(fd, 40 << 20, os.SEEK_DATA) == start, os.lseek(fd, 40 << 20, os.SEEK_DATA)
assert os.lseek(fd, start, os.SEEK_HOLE) == start + (8 << 20)
assert os.lseek(fd, 17 << 20, os.SEEK_HOLE) == 17 << 20   # punched
assert os.lseek(fd, 17 << 20, os.SEEK_DATA) == 32 << 20   # job c's data
EOF
cmp -i $((48 * M)):0 -n $((8 * M)) "$DEV" /dev/zero || fail "the provisioned range does not read as zeroes"
fuse_umount "$MNT"

# The library's own map: the provisioned range is allocated and reads as
# zeroes ("zero"), with holes around it.
"$THINSTACK" map --json "$CONFIG" vm0 $((40 * M)) $((24 * M)) | norm_map thinstack >"$TMP/prov.map"
expected="$((40 * M)) $((8 * M)) hole zero
$((48 * M)) $((8 * M)) data zero
$((56 * M)) $((8 * M)) hole zero"
[ "$(cat "$TMP/prov.map")" = "$expected" ] || fail "map after fallocate:
$(cat "$TMP/prov.map")
expected:
$expected"
echo "PASS"
