#!/usr/bin/env bash
# Two thin volumes over RBD whose 64K blocks alternate on the data image
# (written in turn), so a 1M request of one covers 16 runs of data blocks,
# which the thin layer starts on RBD together: reads and writes across the
# runs return and store the right bytes, and the other volume's blocks
# between them stay as they were.
source "$TS_SOURCE_DIR/tests/common/requires.sh"
requires rbd python3 cmp
[ -r "${CEPH_CONF:-}" ] || skip_or_fail "needs a Ceph cluster: \$CEPH_CONF (tests/ceph/start-ceph.sh)"
cd "$TMP"
K=65536
P=ts-inter-$$
cleanup_fns+=("rbd rm rbd/$P-meta >/dev/null 2>&1; rbd rm rbd/$P-data >/dev/null 2>&1")
cat > pool.json <<JSON
{ "version": 1,
  "layers": {
    "meta": { "type": "rbd", "pool": "rbd", "image": "$P-meta", "create": true, "size": "16M" },
    "data": { "type": "rbd", "pool": "rbd", "image": "$P-data", "create": true, "size": "64M" },
    "pool": { "type": "thin-pool", "metadata": "meta", "data": "data", "block_size": "64K",
              "create": true },
    "a": { "type": "thin", "pool": "pool", "id": 1, "size": "2M", "create": true },
    "b": { "type": "thin", "pool": "pool", "id": 2, "size": "2M", "create": true } },
  "exports": ["a", "b"] }
JSON
head -c $((16 * K)) /dev/urandom > a.bin
head -c $((16 * K)) /dev/urandom > b.bin
for i in $(seq 0 15); do
  dd if=a.bin bs=$K skip=$i count=1 status=none > blk
  "$THINSTACK" write pool.json a $((i * K)) -i blk >/dev/null
  dd if=b.bin bs=$K skip=$i count=1 status=none > blk
  "$THINSTACK" write pool.json b $((i * K)) -i blk >/dev/null
done
# The blocks alternate: a's block i is data block 2i (from the metadata).
rbd export --no-progress rbd/$P-meta meta.img
"$THINSTACK" dump meta.img -o dump.xml
grep -q '<single_mapping origin_block="3" data_block="6"' dump.xml ||
  fail "the volumes' blocks do not alternate: $(grep -m4 mapping dump.xml)"
# One request of 1M (the CLI's reads go in smaller pieces): through the
# bindings, a read of each volume across its 16 runs, one from 32K (a
# partial first and last run), and a write in place over a's 16 runs.
head -c $((16 * K)) /dev/urandom > a2.bin
# shellcheck disable=SC2046 # words NAME=VALUE without spaces
THINSTACK_LIB=$TS_BUILD_DIR/libthinstack.so PYTHONPATH=$TS_SOURCE_DIR/bindings/python \
  env $(sanitizer_env "$TS_BUILD_DIR/libthinstack.so") python3 - <<'PY' || fail "1M requests across the runs"
import thinstack
a_bin, b_bin, a2 = (open(n, "rb").read() for n in ("a.bin", "b.bin", "a2.bin"))
with thinstack.open("pool.json") as s:
    a, b = s.device("a"), s.device("b")
    assert a.read(0, 1 << 20) == a_bin, "1M read of a"
    assert b.read(0, 1 << 20) == b_bin, "1M read of b"
    assert a.read(32768, 983040) == a_bin[32768:32768 + 983040], "read of a from 32K"
    a.write(0, a2)
    assert a.read(0, 1 << 20) == a2, "1M write of a"
    assert b.read(0, 1 << 20) == b_bin, "b changed by a's write"
PY
"$THINSTACK" read pool.json a 0 1M | cmp - a2.bin || fail "a's write, read by another process"
rbd export --no-progress rbd/$P-meta meta2.img
"$THINSTACK" dump meta2.img -o dump2.xml
cmp -s dump.xml dump2.xml || fail "the write in place changed the mappings"
echo "thin interleaved over rbd: ok"
