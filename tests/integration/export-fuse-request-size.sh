#!/usr/bin/env bash
# How the kernel cuts direct I/O through the FUSE export into requests: a
# 1 MiB read or write is one request on the device by default, four with
# -o max_read=262144,max_write=262144, and the data is the same either way.
. "$TS_SOURCE_DIR/tests/common/requires.sh"
. "$TS_SOURCE_DIR/tests/common/exports.sh"
requires_fuse
requires python3 dd cmp

cat >"$TMP/stack.json" <<'EOF2'
{ "version": 1,
  "layers": { "raw": { "type": "file", "path": "raw.img", "size": "16M", "create": true,
                       "direct": true } },
  "exports": ["raw"] }
EOF2
MNT=$TMP/mnt
DEV=$MNT/raw
head -c 4194304 /dev/urandom >"$TMP/pattern"

# "R W": the READ and WRITE requests the device has seen.
counts() {
  "$THINSTACK" status "$TMP/stack.json" | python3 -c '
import json, sys
r = [n for n in json.load(sys.stdin) if n["name"] == "raw"][0]["requests"]
print(r["read"]["requests"], r["write"]["requests"])'
}

# One direct 1 MiB write and one direct 1 MiB read at OFFSET_MIB; prints
# how many requests each became on the device.
one_each() {
  local r0 w0 r1 w1
  read -r r0 w0 <<<"$(counts)"
  dd if="$TMP/pattern" of="$DEV" bs=1M skip="$1" seek="$1" count=1 oflag=direct \
     conv=notrunc status=none
  read -r r1 w1 <<<"$(counts)"
  dd if="$DEV" of="$TMP/back" bs=1M skip="$1" count=1 iflag=direct status=none
  read -r r2 _ <<<"$(counts)"
  cmp "$TMP/back" <(dd if="$TMP/pattern" bs=1M skip="$1" count=1 status=none) ||
    fail "1 MiB at $1 MiB reads back wrong"
  echo "$((r2 - r1)) $((w1 - w0))"
}

fuse_mount "$TMP/stack.json" "$MNT"
read -r nr nw <<<"$(one_each 1)"
[ "$nr $nw" = "1 1" ] || fail "a 1 MiB read became $nr requests, a write $nw (want one each)"
fuse_umount "$MNT"

fuse_mount "$TMP/stack.json" "$MNT" -o max_read=262144,max_write=262144
read -r sr sw <<<"$(one_each 2)"
[ "$sr $sw" = "4 4" ] || fail "with 256 KiB requests a 1 MiB read became $sr, a write $sw (want 4)"
# What the default mount wrote reads back through the small requests.
dd if="$DEV" of="$TMP/back" bs=1M skip=1 count=1 iflag=direct status=none
cmp "$TMP/back" <(dd if="$TMP/pattern" bs=1M skip=1 count=1 status=none) ||
  fail "1 MiB written in one request reads back wrong in four"
fuse_umount "$MNT"
echo "1 MiB: $nr read / $nw write request(s) by default, $sr / $sw with 256 KiB"
echo "PASS"
