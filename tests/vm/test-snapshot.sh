#!/usr/bin/env bash
# The dm-snapshot persistent store both ways: the library makes a snapshot
# (copy-outs from origin writes, direct writes to the snapshot), the kernel
# activates it from dm-table --concise with `dmsetup status` equal to the
# library's status line, reads and writes origin and snapshot; the library
# reads it all back, with its status line again equal to the kernel's. Each
# device compared by sha256 with a model of the writes. One boot.
source "$TS_SOURCE_DIR/tests/common/requires.sh"
source "$TS_SOURCE_DIR/tests/vm/lib.sh"
requires python3
cd "$TMP"
S=$((4 << 20))
head -c $S /dev/urandom > base.img
truncate -s 2M cow.img
cat > s.json <<'JSON'
{ "version": 1, "layers": {
  "sbase": { "type": "file", "path": "base.img" },
  "scow": { "type": "file", "path": "cow.img" },
  "sorigin": { "type": "snapshot-origin", "child": "sbase" },
  "ssnap": { "type": "snapshot", "origin": "sorigin", "cow": "scow", "chunk_size": "8K",
             "create": true } } }
JSON
dm_status() {
  "$THINSTACK" status s.json ssnap | python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["layer"]["dm_status"])'
}
cp base.img mo; cp base.img ms
for i in 1 2 3 4; do head -c 12288 /dev/urandom > w$i; done
# Writes of 12K over 8K chunks: each touches two chunks, one partly.
"$THINSTACK" write s.json sorigin 4096 -i w1 > /dev/null; mwrite mo 4096 w1
"$THINSTACK" write s.json ssnap 65536 -i w2 > /dev/null; mwrite ms 65536 w2
"$THINSTACK" write s.json sorigin 61440 -i w3 > /dev/null; mwrite mo 61440 w3
same "$(sha s.json sorigin $S)" "$(msha mo)" "origin library/model"
same "$(sha s.json ssnap $S)" "$(msha ms)" "snapshot library/model"
dm_status > lib-status
"$THINSTACK" dm-table s.json --concise --device sbase=/dev/vda --device scow=/dev/vdb > concise \
  || fail "dm-table"
cat > boot.sh <<'EOF'
set -eu
dmsetup create --concise "$(cat /test/concise)"
echo "status-lib $(dmsetup status ssnap | cut -d' ' -f4-)"
for d in sorigin ssnap; do echo "sha lib-$d $(sha256sum < /dev/mapper/$d | cut -d' ' -f1)"; done
dd if=/test/w4 of=/dev/mapper/sorigin bs=4096 seek=100 oflag=direct conv=notrunc status=none
dd if=/test/w4 of=/dev/mapper/ssnap bs=4096 seek=300 oflag=direct conv=notrunc status=none
for d in sorigin ssnap; do echo "sha kern-$d $(sha256sum < /dev/mapper/$d | cut -d' ' -f1)"; done
echo "status-kern $(dmsetup status ssnap | cut -d' ' -f4-)"
dmsetup remove ssnap; dmsetup remove sorigin
echo done
EOF
vm_run -d base.img -d cow.img -f concise -f w4 boot.sh
grep -qx done "$TMP/vm.out" || fail "the guest did not finish"
same "$(sed -n 's/^status-lib //p' "$TMP/vm.out")" "$(cat lib-status)" "status line library/kernel"
same "$(vm_sha lib-sorigin)" "$(msha mo)" "origin kernel read/model"
same "$(vm_sha lib-ssnap)" "$(msha ms)" "snapshot kernel read/model"
mwrite mo $((100 * 4096)) w4; mwrite ms $((300 * 4096)) w4
same "$(vm_sha kern-sorigin)" "$(msha mo)" "origin kernel write/model"
same "$(vm_sha kern-ssnap)" "$(msha ms)" "snapshot kernel write/model"
sed -i 's/"create": true/"create": false/' s.json
same "$(sha s.json sorigin $S)" "$(msha mo)" "origin library read back/model"
same "$(sha s.json ssnap $S)" "$(msha ms)" "snapshot library read back/model"
same "$(dm_status)" "$(sed -n 's/^status-kern //p' "$TMP/vm.out")" "status line after the kernel's writes"
echo "snapshot: ok"
