# Errors reach the callers of both exports with the errno the stack chose:
# fault layers fail writes with EIO or ENOSPC, a flush with EIO and a
# provision with ENOSPC; a read-only device refuses writes with EROFS; the
# FUSE export refuses fallocate modes a device has no use for (EOPNOTSUPP)
# and writes past the end (EFBIG). Requests outside the faulty ranges work.
. "$TS_SOURCE_DIR/tests/common/requires.sh"
. "$TS_SOURCE_DIR/tests/common/exports.sh"
requires_fuse
requires_nbdkit
requires dd fallocate qemu-io nbdinfo python3 numfmt

M=1048576
truncate -s 4M "$TMP/ro.img"
LAYERS='
    "d1": { "type": "file", "path": "d1.img", "size": "4M", "create": true },
    "eio": { "type": "fault", "child": "d1", "rules": [
      { "op": "write", "errno": "EIO", "offset": "1M", "length": "1M" },
      { "op": "flush", "errno": "EIO", "count": 1 } ] },
    "d2": { "type": "file", "path": "d2.img", "size": "4M", "create": true },
    "enospc": { "type": "fault", "child": "d2", "rules": [
      { "op": "write", "errno": "ENOSPC", "offset": "1M", "length": "1M" },
      { "op": "write_zeroes", "errno": "ENOSPC", "offset": "1M", "length": "1M" },
      { "op": "provision", "errno": "ENOSPC" } ] },
    "ro": { "type": "file", "path": "ro.img", "read_only": true }'
EXPORTS='"eio", "enospc", "ro"'
# With the thin layers built, also a real out-of-space: a 16M thin volume
# "full" in a pool with 2M of data space.
THIN=
if "$THINSTACK" types | grep "^thin-pool:" >/dev/null; then
  THIN=1
  LAYERS+=',
    "smeta": { "type": "file", "path": "smeta.img", "size": "4M", "create": true },
    "sdata": { "type": "file", "path": "sdata.img", "size": "2M", "create": true },
    "spool": { "type": "thin-pool", "metadata": "smeta", "data": "sdata", "create": true,
               "out_of_space": "error" },
    "full": { "type": "thin", "pool": "spool", "id": 0, "size": "16M", "create": true }'
  EXPORTS+=', "full"'
fi
CONFIG=$(write_stack "$TMP" 16M "$LAYERS" "$EXPORTS")

# expect_error WHAT MESSAGE COMMAND...: the command fails and says MESSAGE.
expect_error() {
  local what=$1 msg=$2
  shift 2
  if "$@" >"$TMP/out.log" 2>&1; then fail "$what succeeded; expected \"$msg\""; fi
  grep -q "$msg" "$TMP/out.log" || fail "$what: expected \"$msg\", got: $(cat "$TMP/out.log")"
}
ok() { "$@" >"$TMP/out.log" 2>&1 || fail "$* failed: $(cat "$TMP/out.log")"; }

# --- FUSE ---
MNT=$TMP/mnt
fuse_mount "$CONFIG" "$MNT"
wr() { dd if=/dev/zero of="$MNT/$1" bs=4k seek="$2" count=1 conv=notrunc${3:+,$3} status=none; }
expect_error "write into the EIO range" "Input/output error" wr eio 256
ok wr eio 0
expect_error "fsync after a write" "Input/output error" wr eio 1 fsync
ok wr eio 2 fsync   # the flush rule fired once
expect_error "write into the ENOSPC range" "No space left on device" wr enospc 300
ok wr enospc 1000
expect_error "fallocate on a device out of space" "No space left on device" \
  fallocate -o 0 -l 1M "$MNT/enospc"
expect_error "write to a read-only device" "Read-only file system" wr ro 0
[ "$(stat -c %a "$MNT/ro")" = 444 ] || fail "the read-only device is mode $(stat -c %a "$MNT/ro")"
expect_error "collapse range" "Operation not supported" fallocate -c -o 0 -l 64K "$MNT/vm0"
expect_error "insert range" "Operation not supported" fallocate -i -o 0 -l 64K "$MNT/vm0"
expect_error "write past the end" "File too large" wr vm0 $((16 * M / 4096))
expect_error "growing the file" "File too large" fallocate -o $((15 * M)) -l 2M "$MNT/vm0"
expect_error "truncating the file" "Invalid argument" truncate -s 1M "$MNT/vm0"
if [ -n "$THIN" ]; then
  expect_error "filling a pool" "No space left on device" \
    dd if=/dev/urandom of="$MNT/full" bs=1M count=4 conv=notrunc,fsync status=none
fi
ok fallocate -n -o $((15 * M)) -l 2M "$MNT/vm0"   # KEEP_SIZE: the part inside is provisioned
fuse_umount "$MNT"

# --- NBD ---
nbd_start config="$CONFIG"
qio() { qemu-io -f raw -c "$2" "$(nbd_uri "$1")"; }
expect_error "NBD write into the EIO range" "write failed: Input/output error" qio eio "write 1M 4k"
expect_error "NBD write into the ENOSPC range" "write failed: No space left on device" \
  qio enospc "write 1536k 64k"
expect_error "NBD zero without trim on a device out of space" "write failed: No space left on device" \
  qio enospc "write -z 1M 4k"
ok qio eio "write -P 0x11 2M 4k"
ok qio eio "read -P 0x11 2M 4k"
nbdinfo --json "$(nbd_uri ro)" >"$TMP/ro.json" || fail "nbdinfo on the read-only export failed"
python3 -c 'import json,sys; assert json.load(open(sys.argv[1]))["exports"][0]["is_read_only"]' \
  "$TMP/ro.json" || fail "the read-only device is served writable"
if [ -n "$THIN" ]; then
  expect_error "NBD write to a full pool" "write failed: No space left on device" \
    qio full "write -P 0x22 8M 4M"
fi
expect_error "NBD open of an unknown export" "No such file or directory" nbdinfo "$(nbd_uri nosuch)"
nbd_stop
echo "PASS"
