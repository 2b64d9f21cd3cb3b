#!/usr/bin/env bash
# The FUSE export over a direct-I/O data file: reads land in page-aligned
# buffers of the export's own, so the data layer reads straight into them
# (its bounced_bytes status counter does not move), while every byte still
# arrives intact, aligned or not.
. "$TS_SOURCE_DIR/tests/common/requires.sh"
. "$TS_SOURCE_DIR/tests/common/exports.sh"
requires_fuse
requires python3 cmp dd

M=1048576
cat >"$TMP/stack.json" <<'EOF2'
{ "version": 1,
  "layers": {
    "meta": { "type": "file", "path": "meta.img", "size": "16M", "create": true },
    "data": { "type": "file", "path": "data.img", "size": "72M", "create": true, "direct": true },
    "pool": { "type": "thin-pool", "metadata": "meta", "data": "data", "block_size": "64K",
              "create": true },
    "vm0":  { "type": "thin", "pool": "pool", "id": 0, "size": "64M", "create": true } },
  "exports": ["vm0"] }
EOF2
"$THINSTACK" types | grep "^thin-pool:" >/dev/null || skip_or_fail "no thin layers in this build"
MNT=$TMP/mnt
DEV=$MNT/vm0
fuse_mount "$TMP/stack.json" "$MNT"

bounced() {
  "$THINSTACK" status "$TMP/stack.json" | python3 -c '
import json, sys
print([n for n in json.load(sys.stdin) if n["name"] == "data"][0]["layer"]["bounced_bytes"])'
}

head -c $((8 * M)) /dev/urandom >"$TMP/pattern"
dd if="$TMP/pattern" of="$DEV" bs=1M oflag=direct conv=notrunc status=none
before=$(bounced)
# 1M and 4K direct reads, and buffered ones at odd offsets and sizes.
dd if="$DEV" of="$TMP/back1m" bs=1M count=8 iflag=direct status=none
dd if="$DEV" of="$TMP/back4k" bs=4k count=2048 iflag=direct status=none
cmp "$TMP/pattern" "$TMP/back1m" || fail "1M direct reads differ"
cmp "$TMP/pattern" "$TMP/back4k" || fail "4K direct reads differ"
after=$(bounced)
[ "$after" = "$before" ] || fail "direct reads were copied through the bounce buffer: $before -> $after bytes"
python3 - "$DEV" "$TMP/pattern" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
want = open(sys.argv[2], "rb").read()
for off, n in ((1, 4095), (1000, 1000), (4096 * 3 + 17, 200000), (8 * 2**20 - 10, 10)):
    got = os.pread(fd, n, off)
    assert got == want[off:off + n], (off, n, len(got))
# Past the end: nothing.
assert os.pread(fd, 4096, 64 * 2**20) == b""
os.close(fd)
PY
fuse_umount "$MNT"
echo "export fuse direct: ok"
