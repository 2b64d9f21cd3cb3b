#!/usr/bin/env bash
# dm-table over the rbd layer: a linear line over the device `rbd map` makes
# for the image (udev's /dev/rbd/POOL/[NS/]IMAGE[@SNAP]), for a plain image,
# one in a namespace and a snapshot, and a crypt layer stacked over it.
source "$TS_SOURCE_DIR/tests/common/requires.sh"
requires rbd
[ -r "${CEPH_CONF:-}" ] || skip_or_fail "needs a Ceph cluster: \$CEPH_CONF (tests/ceph/start-ceph.sh)"
"$THINSTACK" types > "$TMP/types.txt"
grep -q "^rbd:" "$TMP/types.txt" || skip_or_fail "built without librbd"
cd "$TMP"
I=ts-dm-$$ N=ts-ns-$$
cleanup_fns+=("rbd snap purge --no-progress rbd/$I >/dev/null 2>&1; rbd rm --no-progress rbd/$I >/dev/null 2>&1"
              "rbd rm --no-progress rbd/$N/$I >/dev/null 2>&1; rbd namespace rm rbd/$N >/dev/null 2>&1")
rbd create --size 64M rbd/$I
rbd snap create --no-progress rbd/$I@s1
rbd namespace create rbd/$N
rbd create --size 32M rbd/$N/$I
head -c 64 /dev/urandom > disk.key; chmod 600 disk.key

cat > s.json <<JSON
{ "version": 1, "layers": {
    "img": { "type": "rbd", "pool": "rbd", "image": "$I" },
    "snap": { "type": "rbd", "pool": "rbd", "image": "$I", "snapshot": "s1" },
    "nsimg": { "type": "rbd", "pool": "rbd", "namespace": "$N", "image": "$I" },
    "sec": { "type": "crypt", "child": "nsimg", "key_file": "disk.key", "sector_size": 4096 } },
  "exports": ["img", "snap", "sec"] }
JSON
"$THINSTACK" dm-table s.json > t.txt 2> err.txt || fail "dm-table: $(cat err.txt)"
grep -qx "dmsetup create img --table '0 131072 linear /dev/rbd/rbd/$I 0'" t.txt || fail "image: $(cat t.txt)"
grep -qx "dmsetup create snap --table '0 131072 linear /dev/rbd/rbd/$I@s1 0'" t.txt ||
  fail "snapshot: $(cat t.txt)"
grep -qx "dmsetup create nsimg --table '0 65536 linear /dev/rbd/rbd/$N/$I 0'" t.txt ||
  fail "namespace: $(cat t.txt)"
grep -qx "dmsetup create sec --table '0 65536 crypt aes-xts-plain64 :64:logon:thinstack:sec 0 /dev/mapper/nsimg 0 1 sector_size:4096'" t.txt ||
  fail "crypt over rbd: $(cat t.txt)"
# Bound to the mapped device, the layer prints nothing of its own.
"$THINSTACK" dm-table s.json --device nsimg=/dev/rbd0 > b.txt || fail "dm-table --device"
! grep -q "create nsimg" b.txt && grep -q " /dev/rbd0 0 1 sector_size:4096'$" b.txt ||
  fail "bound: $(cat b.txt)"
echo "rbd dm_table: ok"
