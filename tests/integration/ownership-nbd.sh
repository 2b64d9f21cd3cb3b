#!/usr/bin/env bash
# One owner per stack, with the nbdkit plugin as the owner: while nbdkit
# serves a thin volume, a CLI provision, a thin create and a thinstack-fuse
# on the same config are refused with EBUSY naming the file and nbdkit's pid;
# what NBD clients wrote survives and the pool is thin_check clean. nbdkit
# serves no control socket here (control=): with one, the CLI would work
# through it instead (ctl-*.sh).
. "$TS_SOURCE_DIR/tests/common/requires.sh"
. "$TS_SOURCE_DIR/tests/common/exports.sh"
. "$TS_SOURCE_DIR/tests/common/ownership.sh"
requires_nbdkit
requires_fuse
requires qemu-io thin_check cmp numfmt

M=1048576
CONFIG=$(write_stack "$TMP" 64M)
URI=$(nbd_uri vm0)
"$THINSTACK" flush "$CONFIG" vm0 || fail "creating the stack failed"
head -c $((3 * M)) /dev/urandom >"$TMP/chunk"

nbd_start config="$CONFIG" control=
HOLDER=$(cat "$TMP/nbd.pid")
qemu-io -f raw -c "write -P 0x5a 0 4M" "$URI" >/dev/null || fail "qemu-io write failed"

expect_busy "$HOLDER" nbdkit "$THINSTACK" provision "$CONFIG" vm0 32M 8M
# thin create opens its pool its own way and prints the message without the
# errno's name.
expect_busy_msg "$HOLDER" nbdkit "$THINSTACK" thin create "$CONFIG" vm5 --size 16M --pool pool
expect_busy "$HOLDER" nbdkit "$THINSTACK" write "$CONFIG" vm0 8M -i "$TMP/chunk"
mkdir -p "$TMP/mnt"
expect_busy_msg "$HOLDER" nbdkit timeout 20 "$FUSE_BIN" "$CONFIG" "$TMP/mnt" -f
mountpoint -q "$TMP/mnt" && fail "thinstack-fuse mounted a stack nbdkit owns"

qemu-io -f raw -c "write -P 0xa5 4M 1M" "$URI" >/dev/null || fail "qemu-io write after the refusals failed"
nbd_stop

# The holder is gone: the same commands now work at once.
"$THINSTACK" write "$CONFIG" vm0 8M -i "$TMP/chunk" || fail "write after nbdkit stopped"
"$THINSTACK" read "$CONFIG" vm0 8M 3M -o "$TMP/back" && cmp "$TMP/chunk" "$TMP/back" ||
  fail "the CLI's write did not land"
"$THINSTACK" read "$CONFIG" vm0 0 4M -o "$TMP/back" || fail "read failed"
head -c $((4 * M)) /dev/zero | tr '\0' '\132' >"$TMP/expect"
cmp "$TMP/expect" "$TMP/back" || fail "the NBD client's first write changed"
"$THINSTACK" read "$CONFIG" vm0 4M 1M -o "$TMP/back" || fail "read failed"
head -c $M /dev/zero | tr '\0' '\245' >"$TMP/expect"
cmp "$TMP/expect" "$TMP/back" || fail "the NBD client's second write is missing"
thin_check "$TMP/meta.img" >"$TMP/tc" 2>&1 || { cat "$TMP/tc"; fail "thin_check"; }
echo "PASS"
