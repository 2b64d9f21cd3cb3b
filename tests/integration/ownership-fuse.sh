#!/usr/bin/env bash
# One owner per stack, with thinstack-fuse as the owner: while it serves an
# ext4 file system on a thin volume, a CLI provision, a thin create, a second
# thinstack-fuse on the same config, a reader, check and restore are each
# refused with EBUSY naming the file and the holder; -U reads beside it with
# a warning. The files written through the export stay intact and the pool
# is thin_check clean afterwards. Also: -o allow_other brings
# default_permissions, so another user cannot write a 0644 export. The
# export serves no control socket (-o nocontrol): with one, the CLI would
# work through it instead (ctl-*.sh).
. "$TS_SOURCE_DIR/tests/common/requires.sh"
. "$TS_SOURCE_DIR/tests/common/exports.sh"
. "$TS_SOURCE_DIR/tests/common/ownership.sh"
requires_fuse
requires losetup mkfs.ext4 e2fsck mount umount thin_check setpriv sha256sum numfmt

CONFIG=$(write_stack "$TMP" 128M)
MNT=$TMP/mnt
FS=$TMP/fs
"$THINSTACK" flush "$CONFIG" vm0 || fail "creating the stack failed"

fuse_mount "$CONFIG" "$MNT" -o nocontrol
HOLDER=${FUSE_PIDS[0]##*:}
LOOP=$(losetup --find --show "$MNT/vm0") || fail "losetup over the exported file failed"
on_exit 'if [ -n "$LOOP" ]; then losetup -d "$LOOP"; fi'
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$LOOP" || fail "mkfs.ext4 failed"
mkdir -p "$FS"
mount "$LOOP" "$FS" || fail "mounting the ext4 on $LOOP failed"
on_exit "mountpoint -q '$FS' && umount '$FS'"
for i in $(seq 1 40); do head -c $((i * 7919)) /dev/urandom >"$FS/f$i"; done
head -c $((15 * 1048576)) /dev/urandom >"$FS/big"
sync -f "$FS"
(cd "$FS" && sha256sum f* big) >"$TMP/sums"

# Every second user of the stack is refused, naming file and holder.
expect_busy "$HOLDER" thinstack-fuse "$THINSTACK" provision "$CONFIG" vm0 100M 10M
# thin create opens its pool its own way and prints the message without the
# errno's name.
expect_busy_msg "$HOLDER" thinstack-fuse "$THINSTACK" thin create "$CONFIG" vm5 --size 16M --pool pool
expect_busy "$HOLDER" thinstack-fuse "$THINSTACK" info "$CONFIG"
expect_busy "$HOLDER" thinstack-fuse "$THINSTACK" check "$TMP/meta.img"
"$THINSTACK" dump -U "$TMP/meta.img" -o "$TMP/pool.xml" 2>"$TMP/err" || fail "dump -U: $(cat "$TMP/err")"
expect_busy "$HOLDER" thinstack-fuse "$THINSTACK" restore "$TMP/pool.xml" "$TMP/meta.img"
mkdir -p "$TMP/mnt2"
expect_busy_msg "$HOLDER" thinstack-fuse timeout 20 "$FUSE_BIN" "$CONFIG" "$TMP/mnt2" -f
mountpoint -q "$TMP/mnt2" && fail "the second thinstack-fuse mounted"

# -U reads beside the writer and says what it sees may be stale.
"$THINSTACK" -U info "$CONFIG" >"$TMP/out" 2>"$TMP/err" || fail "-U info: $(cat "$TMP/err")"
grep -q "^vm0 " "$TMP/out" || fail "-U info printed: $(cat "$TMP/out")"
grep -q "warning: .*open for writing by pid $HOLDER (thinstack-fuse).*stale" "$TMP/err" ||
  fail "-U info gave no staleness warning: $(cat "$TMP/err")"

# More writes after the refusals, then everything is intact and clean.
for i in $(seq 41 60); do head -c $((i * 4099)) /dev/urandom >"$FS/f$i"; done
sync -f "$FS"
(cd "$FS" && sha256sum f* big) >"$TMP/sums"
umount "$FS"
losetup -d "$LOOP"
LOOP=
fuse_umount "$MNT"
assert_thin_check "$TMP/meta.img" "after the refusals"
fuse_mount "$CONFIG" "$MNT" -o ro,nocontrol
LOOP=$(losetup -r --find --show "$MNT/vm0") || fail "losetup -r failed"
e2fsck -fn "$LOOP" >"$TMP/fsck.log" 2>&1 || { cat "$TMP/fsck.log"; fail "e2fsck -fn found problems"; }
mount -o ro "$LOOP" "$FS" || fail "mounting read-only failed"
(cd "$FS" && sha256sum -c --quiet "$TMP/sums") || fail "files written through the export changed"
umount "$FS"
losetup -d "$LOOP"
LOOP=
# Two read-only users share the stack.
"$THINSTACK" info "$CONFIG" >/dev/null 2>"$TMP/err" || fail "a reader beside a reader: $(cat "$TMP/err")"
fuse_umount "$MNT"

# allow_other: the kernel checks permissions, so "nobody" cannot write the
# 0644 export that root serves.
chmod 755 "$TMP"
fuse_mount "$CONFIG" "$MNT" -o allow_other
grep -E " $MNT .* fuse[^ ]* " /proc/self/mountinfo | grep -q default_permissions ||
  fail "allow_other mounted without default_permissions: $(grep " $MNT " /proc/self/mountinfo)"
if setpriv --reuid=65534 --regid=65534 --clear-groups \
    dd if=/dev/zero of="$MNT/vm0" bs=4096 count=1 conv=notrunc status=none 2>/dev/null; then
  fail "another user wrote the root-owned 0644 export"
fi
setpriv --reuid=65534 --regid=65534 --clear-groups \
  dd if="$MNT/vm0" of=/dev/null bs=4096 count=1 status=none || fail "another user cannot read the 0644 export"
fuse_umount "$MNT"
assert_thin_check "$TMP/meta.img" "at the end"
echo "PASS"
