#!/usr/bin/env bash
# The FUSE export's receive buffers (where the kernel copies a WRITE's
# data) and read buffers (whence it copies a READ's reply) lie in
# transparent huge pages when the kernel offers them: the kernel pins those
# buffers page by page for each copy, which on 4K pages cost the daemon
# about as much as the copy. 40 direct 1 MiB writes and reads go to the
# workers in turn; each one that served a write or a read holds one more
# 2 MiB huge page.
. "$TS_SOURCE_DIR/tests/common/requires.sh"
. "$TS_SOURCE_DIR/tests/common/exports.sh"
requires_fuse
requires dd cmp
thp=/sys/kernel/mm/transparent_hugepage/enabled
[ -r "$thp" ] && ! grep -q '\[never\]' "$thp" ||
  skip_or_fail "transparent huge pages are off ($thp)"

cat >"$TMP/stack.json" <<'EOF2'
{ "version": 1,
  "layers": { "raw": { "type": "file", "path": "raw.img", "size": "64M", "create": true,
                       "direct": true } },
  "exports": ["raw"] }
EOF2
MNT=$TMP/mnt
fuse_mount "$TMP/stack.json" "$MNT" -o nocontrol
pid=${FUSE_PIDS[0]##*:}
huge_kib() { awk '/^AnonHugePages:/ {print $2}' "/proc/$pid/smaps_rollup"; }

h0=$(huge_kib)
head -c 41943040 /dev/urandom >"$TMP/pattern"
dd if="$TMP/pattern" of="$MNT/raw" bs=1M count=40 oflag=direct conv=notrunc status=none
h1=$(huge_kib)
dd if="$MNT/raw" of="$TMP/back" bs=1M count=40 iflag=direct status=none
h2=$(huge_kib)
cmp "$TMP/back" "$TMP/pattern" || fail "40 MiB read back differ from what was written"
# At least 4 workers of 32 each time, whichever the kernel woke.
[ $((h1 - h0)) -ge 8192 ] ||
  fail "after 1 MiB writes the daemon's huge pages grew by $((h1 - h0)) KiB (want >= 8192)"
[ $((h2 - h1)) -ge 8192 ] ||
  fail "after 1 MiB reads the daemon's huge pages grew by $((h2 - h1)) KiB (want >= 8192)"
fuse_umount "$MNT"
echo "huge pages: $h0 KiB at mount, $h1 after writes, $h2 after reads"
echo "PASS"
