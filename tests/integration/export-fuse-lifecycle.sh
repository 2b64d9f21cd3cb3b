# thinstack-fuse as a program: a bad configuration is reported before
# anything is mounted; the daemon (no -f) returns once the mount is ready and
# exits after fusermount3 -u; SIGTERM unmounts cleanly; -o ro opens the stack
# read-only; -o page_cache keeps the kernel's page cache coherent with punch
# and zero-range and allows shared mmap.
. "$TS_SOURCE_DIR/tests/common/requires.sh"
. "$TS_SOURCE_DIR/tests/common/exports.sh"
requires_fuse
requires python3 numfmt

M=1048576
CONFIG=$(write_stack "$TMP" 16M)
MNT=$TMP/mnt
mkdir -p "$MNT"

# --- errors before mounting ---
if "$FUSE_BIN" "$TMP/missing.json" "$MNT" 2>"$TMP/err.log"; then fail "a missing config mounted"; fi
grep -q "missing.json" "$TMP/err.log" || fail "no message naming the config: $(cat "$TMP/err.log")"
cat >"$TMP/bad.json" <<'EOF'
{ "version": 1, "layers": { "d": { "type": "file", "path": "x.img", "create": true } },
  "exports": ["d"] }
EOF
if "$FUSE_BIN" "$TMP/bad.json" "$MNT" 2>"$TMP/err.log"; then fail "a bad config mounted"; fi
grep -q "layers.d.size" "$TMP/err.log" || fail "the message does not name the JSON path: $(cat "$TMP/err.log")"
[ ! -e "$TMP/x.img" ] || fail "a failed open left x.img behind"
mountpoint -q "$MNT" && fail "something is mounted after the failures"
if "$FUSE_BIN" "$CONFIG" 2>/dev/null; then fail "a missing mount point was accepted"; fi

# --- daemon mode ---
"$FUSE_BIN" "$CONFIG" "$MNT" || fail "thinstack-fuse (daemon) failed"
on_exit "mountpoint -q '$MNT' && fusermount3 -u '$MNT'"
mountpoint -q "$MNT" || fail "the daemon returned before the mount was ready"
head -c $M /dev/urandom >"$TMP/chunk"
dd if="$TMP/chunk" of="$MNT/vm0" bs=64k seek=16 conv=notrunc status=none
# The daemon is not our child: wait until no process serves $MNT any more.
serving() {
  local c
  for c in /proc/[0-9]*/cmdline; do
    tr '\0' ' ' <"$c" 2>/dev/null | grep -qF -- "$FUSE_BIN $CONFIG $MNT" && return 0
  done
  return 1
}
serving || fail "no thinstack-fuse process found for $MNT"
fusermount3 -u "$MNT"
wait_for "! serving"
"$THINSTACK" read "$CONFIG" vm0 $M $M -o "$TMP/back" && cmp "$TMP/chunk" "$TMP/back" ||
  fail "data written through the daemon's mount is not in the stack"

# --- SIGTERM ---
"$FUSE_BIN" "$CONFIG" "$MNT" -f &
pid=$!
on_exit "kill -0 $pid 2>/dev/null && kill $pid"
wait_for "mountpoint -q '$MNT'"
dd if="$TMP/chunk" of="$MNT/vm0" bs=64k seek=64 conv=notrunc status=none
kill -TERM "$pid"
st=0
wait "$pid" || st=$?
[ "$st" = 0 ] || fail "thinstack-fuse exited with $st on SIGTERM"
mountpoint -q "$MNT" && fail "still mounted after SIGTERM"
"$THINSTACK" read "$CONFIG" vm0 $((4 * M)) $M -o "$TMP/back" && cmp "$TMP/chunk" "$TMP/back" ||
  fail "data written before SIGTERM is not in the stack"

# --- read-only: the existing stack, opened without creating anything ---
sed 's/, *"create": *true//' "$CONFIG" >"$TMP/ro.json"
fuse_mount "$TMP/ro.json" "$MNT" -o ro
[ "$(stat -c %a "$MNT/vm0")" = 444 ] || fail "vm0 is not read-only under -o ro"
cmp -i $M:0 -n $M "$MNT/vm0" "$TMP/chunk" || fail "reading under -o ro failed"
if dd if=/dev/zero of="$MNT/vm0" bs=4k count=1 conv=notrunc status=none 2>"$TMP/err.log"; then
  fail "wrote under -o ro"
fi
grep -q "Read-only file system" "$TMP/err.log" || fail "unexpected error under -o ro: $(cat "$TMP/err.log")"
fuse_umount "$MNT"

# --- page cache mode ---
fuse_mount "$CONFIG" "$MNT" -o page_cache
python3 - "$MNT/vm0" <<'EOF' || fail "page cache mode: cached data went stale or mmap failed"
import mmap, os, sys
M = 1 << 20
fd = os.open(sys.argv[1], os.O_RDWR)
os.pwrite(fd, b"\xab" * (2 * M), 8 * M)
assert os.pread(fd, 2 * M, 8 * M) == b"\xab" * (2 * M)      # now cached
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
KEEP, PUNCH, ZERO = 1, 2, 16
assert libc.fallocate(fd, PUNCH | KEEP, 8 * M + 4096, 65536) == 0, ctypes.get_errno()
assert libc.fallocate(fd, ZERO | KEEP, 9 * M + 100, 5000) == 0, ctypes.get_errno()
data = os.pread(fd, 2 * M, 8 * M)
want = bytearray(b"\xab" * (2 * M))
want[4096:4096 + 65536] = bytes(65536)
want[M + 100:M + 5100] = bytes(5000)
assert data == bytes(want), "stale page cache after punch/zero"
m = mmap.mmap(fd, 16 * M, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
m[12 * M:12 * M + 11] = b"hello mmap!"
m.flush()
m.close()
os.fsync(fd)
os.close(fd)
EOF
fuse_umount "$MNT"
"$THINSTACK" read "$CONFIG" vm0 $((12 * M)) 4096 | head -c 11 | grep -q "hello mmap!" ||
  fail "the mmap write did not reach the stack"
echo "PASS"
