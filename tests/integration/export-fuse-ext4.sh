# A real file system on the FUSE export: losetup over the exported file,
# mkfs.ext4, mount, copy a tree in and out, unmount, e2fsck -fn clean. Then
# fstrim: the loop device turns the file system's discards into punched holes
# on the exported file, and they reach the stack (the backing file's
# allocation and the device's mapped blocks drop).
. "$TS_SOURCE_DIR/tests/common/requires.sh"
. "$TS_SOURCE_DIR/tests/common/exports.sh"
requires_fuse
requires losetup mkfs.ext4 e2fsck fstrim mount umount python3 numfmt

M=1048576
CONFIG=$(write_stack "$TMP" 128M)
MNT=$TMP/mnt
FS=$TMP/fs

mapped() { # bytes of vm0 the stack reports as allocated (not holes)
  "$THINSTACK" map --json "$CONFIG" vm0 | norm_map thinstack |
    awk '$3 == "data" { n += $2 } END { print n + 0 }'
}

fuse_mount "$CONFIG" "$MNT"
LOOP=$(losetup --find --show "$MNT/vm0") || fail "losetup over the exported file failed"
# Detach at exit only while attached: the number may be reused afterwards.
on_exit 'if [ -n "$LOOP" ]; then losetup -d "$LOOP"; fi'
[ "$(cat /sys/block/"${LOOP#/dev/}"/queue/discard_max_bytes)" != 0 ] ||
  fail "the loop device offers no discard over the exported file"

mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$LOOP" || fail "mkfs.ext4 failed"
mkdir -p "$FS"
mount "$LOOP" "$FS" || fail "mounting the ext4 on $LOOP failed"
on_exit "mountpoint -q '$FS' && umount '$FS'"

# A tree of files of many sizes (some unaligned, some sparse, one large).
SRC=$TMP/src
mkdir -p "$SRC/a/b/c" "$SRC/d"
for i in $(seq 1 200); do head -c $((i * 997)) /dev/urandom >"$SRC/a/f$i"; done
for i in $(seq 1 50); do echo "file $i" >"$SRC/a/b/c/small$i"; done
truncate -s 5M "$SRC/d/sparse" && printf 'tail' >>"$SRC/d/sparse"
head -c $((24 * M)) /dev/urandom >"$SRC/d/big"
ln -s ../a/f1 "$SRC/d/link"
cp -a "$SRC" "$FS/tree" || fail "copying the tree in failed"
sync -f "$FS/tree"
diff -r "$SRC" "$FS/tree" || fail "the copied tree differs"

umount "$FS"
e2fsck -fn "$LOOP" >"$TMP/fsck.log" 2>&1 || { cat "$TMP/fsck.log"; fail "e2fsck -fn found problems"; }

# Remount, check the tree again, delete the large file and trim.
mount "$LOOP" "$FS"
diff -r "$SRC" "$FS/tree" || fail "the tree differs after a remount"
# st_blocks of the exported file is the device's allocated (not hole) bytes.
used_before=$(allocated "$TMP/data.img")
mapped_before=$(allocated "$MNT/vm0")
rm "$FS/tree/d/big"
sync -f "$FS"
fstrim -v "$FS" || fail "fstrim failed"
used_after=$(allocated "$TMP/data.img")
[ $((used_before - used_after)) -ge $((20 * M)) ] ||
  fail "fstrim freed only $((used_before - used_after)) bytes of the backing file (expected >= 20M)"
umount "$FS"
e2fsck -fn "$LOOP" >"$TMP/fsck.log" 2>&1 || { cat "$TMP/fsck.log"; fail "e2fsck -fn after fstrim found problems"; }
losetup -d "$LOOP"
LOOP=
mapped_after=$(allocated "$MNT/vm0")
[ $((mapped_before - mapped_after)) -ge $((20 * M)) ] ||
  fail "fstrim unmapped only $((mapped_before - mapped_after)) bytes of vm0 (expected >= 20M)"

# With the stack closed, the library's own map says the same, and the file
# system is still clean when opened again through a new mount.
fuse_umount "$MNT"
[ "$(mapped)" = "$mapped_after" ] ||
  fail "thinstack map reports $(mapped) allocated bytes, the mounted file said $mapped_after"
fuse_mount "$CONFIG" "$MNT"
e2fsck -fn "$MNT/vm0" >"$TMP/fsck.log" 2>&1 || { cat "$TMP/fsck.log"; fail "e2fsck on the exported file failed"; }
fuse_umount "$MNT"
echo "PASS"
