#!/usr/bin/env bash
# thinstack copy keeps holes in every direction: a half-allocated raw file
# copied into a volume, the volume out to a raw file, and volume to volume
# (one configuration and two) allocate only the data (st_blocks), and every
# copy has the same bytes (cmp).
source "$TS_SOURCE_DIR/tests/common/requires.sh"
cd "$TMP"
cat > stack.json <<'JSON'
{ "version": 1,
  "layers": { "vm0": { "type": "file", "path": "vm0.img", "size": "64M", "create": true },
              "vm1": { "type": "file", "path": "vm1.img", "size": "64M", "create": true } },
  "exports": ["vm0", "vm1"] }
JSON
cat > other.json <<'JSON'
{ "version": 1,
  "layers": { "vm2": { "type": "file", "path": "vm2.img", "size": "64M", "create": true } },
  "exports": ["vm2"] }
JSON
alloc() { echo $(( $(stat -c %b "$1") * 512 )); }
M=$((1 << 20))
# Random data in even MiBs, holes in odd ones, MiB 10 allocated zeroes.
truncate -s 64M src.img
for i in $(seq 0 2 62); do
  [ "$i" = 10 ] && continue
  dd if=/dev/urandom of=src.img bs=1M seek=$i count=1 conv=notrunc status=none
done
dd if=/dev/zero of=src.img bs=1M seek=10 count=1 conv=notrunc status=none
data=$((31 * M))
holes() {
  local a; a=$(alloc "$1")
  [ "$a" -ge "$data" ] && [ "$a" -le $((data + 256 * 1024)) ] || fail "$2 allocated $a, data is $data"
}
# Old data everywhere in the destinations: the copy must unmap it.
dd if=/dev/urandom of=full.img bs=1M count=64 status=none
"$THINSTACK" write stack.json vm0 0 -i full.img
"$THINSTACK" write stack.json vm1 0 -i full.img
"$THINSTACK" write other.json vm2 0 -i full.img

"$THINSTACK" copy src.img stack.json:vm0
holes vm0.img "raw file to volume"
"$THINSTACK" copy stack.json:vm0 out.img
cmp src.img out.img || fail "volume to raw file differs"
holes out.img "volume to raw file"
"$THINSTACK" copy stack.json:vm0 stack.json:vm1
holes vm1.img "volume to volume in one configuration"
"$THINSTACK" copy stack.json:vm1 other.json:vm2
holes vm2.img "volume to volume across configurations"
"$THINSTACK" copy other.json:vm2 out2.img
cmp src.img out2.img || fail "the copy of the copy differs"
holes out2.img "the copy of the copy"
# Raw to raw: the allocated zeroes of MiB 10 are left a hole.
"$THINSTACK" copy src.img raw.img
cmp src.img raw.img || fail "raw file to raw file differs"
holes raw.img "raw file to raw file"

# Too large a source is refused before anything is written.
truncate -s 65M big.img
if "$THINSTACK" copy big.img stack.json:vm0 2>err; then fail "a too large copy succeeded"; fi
grep -q "takes at most" err || fail "too large: $(cat err)"
echo ok
