#!/usr/bin/env bash
# Breaking a thin snapshot's sharing on file systems with and without
# shared extents. A pool over files on XFS (reflink=1) and on ext4, each on
# a loop-mounted image: write two 64K blocks, snapshot, then write 4K of
# data into one block and zero 4K of the other through the origin. Both
# volumes must read back right on both file systems. With "break_clone":
# "always", the new XFS blocks must be extent clones of the old ones
# (FIEMAP: shared, but for the 4K changed) and ext4 falls back to reading
# and writing; with the default ("auto", which merges 64K blocks) nothing
# is cloned on either. The file
# layer's copy tests then run on each: FICLONERANGE must stay the method on
# XFS, and ext4 must end up with copy_file_range.
source "$TS_SOURCE_DIR/tests/common/requires.sh"
requires_root
requires mkfs.xfs mkfs.ext4 mount umount mountpoint python3
cd "$TMP"

# fiemap.py FILE START LEN: one line per extent, "logical length flags".
cat > fiemap.py <<'PY'
import fcntl, os, struct, sys
FS_IOC_FIEMAP, FIEMAP_FLAG_SYNC, N = 0xC020660B, 1, 256
path, start, length = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
buf = bytearray(struct.pack("=QQIIII", start, length, FIEMAP_FLAG_SYNC, 0, N, 0) + bytes(56 * N))
fd = os.open(path, os.O_RDONLY)
fcntl.ioctl(fd, FS_IOC_FIEMAP, buf)
for i in range(struct.unpack_from("=I", buf, 20)[0]):
    logical, _, ln, _, _, flags = struct.unpack_from("=QQQQQI", buf, 32 + 56 * i)
    print(logical, ln, flags)
PY

# data_block META DEV_ID VBLOCK: the data block the pool maps it to.
data_block() {
  "$THINSTACK" dump "$1" | python3 -c '
import sys, xml.etree.ElementTree as ET
dev, vb = sys.argv[1], int(sys.argv[2])
for d in ET.parse(sys.stdin).getroot().iter("device"):
    if d.get("dev_id") != dev:
        continue
    for m in d:
        o, n = int(m.get("origin_block", m.get("origin_begin", -1))), int(m.get("length", 1))
        if o <= vb < o + n:
            print(int(m.get("data_block", m.get("data_begin"))) + vb - o)
' "$2" "$3"
}

# shared_pages FILE OFFSET: the 4K pages of the 64K at OFFSET that FIEMAP
# marks FIEMAP_EXTENT_SHARED, as a string of 16 "s" and "-".
shared_pages() {
  python3 "$TMP/fiemap.py" "$1" "$2" 65536 | python3 -c '
import sys
base = int(sys.argv[1])
ext = [tuple(map(int, l.split())) for l in sys.stdin]
print("".join("s" if any(lo <= base + p * 4096 < lo + n and f & 0x2000 for lo, n, f in ext)
              else "-" for p in range(16)))
' "$2"
}

head -c 131072 /dev/urandom > old.bin
head -c 4096 /dev/urandom > new.bin
python3 - <<'PY'
old, new = open("old.bin", "rb").read(), open("new.bin", "rb").read()
want = bytearray(old)
want[8192:12288] = new
want[65536 + 16384:65536 + 20480] = bytes(4096)
open("want.bin", "wb").write(want)
PY

run_on() { # FSTYPE COPY_METHOD MKFS...
  local fs=$1 expect=$2
  shift 2
  truncate -s 512M "$fs.img"
  "$@" "$fs.img" > /dev/null || fail "$* $fs.img failed"
  mkdir "$fs"
  mount -o loop "$fs.img" "$fs" || fail "mounting the $fs image failed"
  cleanup_fns+=("mountpoint -q '$TMP/$fs' && umount '$TMP/$fs'")
  for mode in always auto; do (
    mkdir "$fs/$mode"
    cd "$fs/$mode"
    write_pool_config stack.json 8M 64M 64K
    [ "$mode" = auto ] || sed -i "s/\"block_size\": \"64K\"/&, \"break_clone\": \"$mode\"/" stack.json
    grep -q "\"break_clone\": \"$mode\"" stack.json || [ "$mode" = auto ] || fail "config: $(cat stack.json)"
    "$THINSTACK" pool create stack.json pool > /dev/null
    "$THINSTACK" thin create stack.json vm0 --size 16M > /dev/null
    "$THINSTACK" write stack.json vm0 0 -i ../../old.bin
    "$THINSTACK" thin snap stack.json vm0 snap > /dev/null
    "$THINSTACK" write stack.json vm0 8K -i ../../new.bin
    "$THINSTACK" zero stack.json vm0 80K 4K > /dev/null
    "$THINSTACK" read stack.json vm0 0 128K > vm0.bin
    "$THINSTACK" read stack.json snap 0 128K > snap.bin
    cmp vm0.bin ../../want.bin || fail "$fs/$mode: the origin reads back wrong after breaking the sharing"
    cmp snap.bin ../../old.bin || fail "$fs/$mode: the snapshot changed when the origin broke the sharing"
    [ "$(data_block pool.meta 1 0)" = 0 ] || fail "$fs/$mode: the snapshot no longer maps data block 0"
    b0=$(data_block pool.meta 0 0)
    b1=$(data_block pool.meta 0 1)
    [ -n "$b0" ] && [ "$b0" != 0 ] && [ -n "$b1" ] && [ "$b1" != 1 ] ||
      fail "$fs/$mode: the origin did not get new blocks ($b0, $b1)"
    s0=$(shared_pages pool.data $((b0 * 65536)))
    s1=$(shared_pages pool.data $((b1 * 65536)))
    echo "$fs, break_clone $mode: new blocks $b0 and $b1, shared pages $s0 $s1"
    if [ "$fs" = xfs ] && [ "$mode" = always ]; then
      [ "$s0" = "ss-sssssssssssss" ] ||
        fail "xfs/$mode: block $b0 is not a clone of block 0 but for the 4K written: $s0"
      [ "$s1" = "ssss-sssssssssss" ] ||
        fail "xfs/$mode: block $b1 is not a clone of block 1 but for the 4K zeroed: $s1"
    else
      [ "$s0$s1" = "--------------------------------" ] || fail "$fs/$mode: shared extents? $s0 $s1"
    fi
    "$THINSTACK" check pool.meta > /dev/null || fail "$fs/$mode: the metadata does not check"
  ) || exit 1; done
  # The file layer's own copy chain on this file system (test_copy_range).
  mkdir "$fs/unit"
  TMPDIR="$TMP/$fs/unit" TS_TEST_COPY_EXPECT=$expect \
    "$TS_BUILD_DIR/tests/layers_test_copy_range" > "$fs.unit.log" 2>&1 ||
    fail "$fs: test_copy_range: $(cat "$fs.unit.log")"
  umount "$fs"
}

run_on xfs FICLONERANGE mkfs.xfs -q -m reflink=1
run_on ext4 copy_file_range mkfs.ext4 -q -F
