#!/usr/bin/env bash
# read -o and write -i keep holes: an all-hole volume reads into a file with
# no blocks, a half-allocated raw file written in allocates only its data
# (its holes and its runs of zeroes punch the volume), and reading it back
# gives the same bytes with the same allocation; --no-sparse allocates all.
source "$TS_SOURCE_DIR/tests/common/requires.sh"
cd "$TMP"
cat > stack.json <<'JSON'
{ "version": 1,
  "layers": { "vm0": { "type": "file", "path": "vm0.img", "size": "1G", "create": true } },
  "exports": ["vm0"] }
JSON
alloc() { echo $(( $(stat -c %b "$1") * 512 )); }
M=$((1 << 20))

"$THINSTACK" flush stack.json vm0
"$THINSTACK" read stack.json vm0 0 1G -o hole.img
[ "$(stat -c %s hole.img)" = $((1 << 30)) ] || fail "hole.img size $(stat -c %s hole.img)"
[ "$(alloc hole.img)" -le 65536 ] || fail "an all-hole read allocated $(alloc hole.img) bytes"

# 64 MiB: random data in even MiBs, holes in odd ones, and MiB 10 written as
# allocated zeroes.
truncate -s 64M src.img
for i in $(seq 0 2 62); do
  [ "$i" = 10 ] && continue
  dd if=/dev/urandom of=src.img bs=1M seek=$i count=1 conv=notrunc status=none
done
dd if=/dev/zero of=src.img bs=1M seek=10 count=1 conv=notrunc status=none
data=$((31 * M))
# Fill the volume first so the holes of the input must be punched.
dd if=/dev/urandom of=full.img bs=1M count=64 status=none
"$THINSTACK" write stack.json vm0 0 -i full.img
[ "$(alloc vm0.img)" -ge $((64 * M)) ] || fail "the fill allocated $(alloc vm0.img)"
"$THINSTACK" write stack.json vm0 0 -i src.img
a=$(alloc vm0.img)
[ "$a" -ge "$data" ] && [ "$a" -le $((data + 256 * 1024)) ] || fail "write -i allocated $a, data is $data"
"$THINSTACK" read stack.json vm0 0 64M -o back.img
cmp src.img back.img || fail "read back differs"
a=$(alloc back.img)
[ "$a" -ge "$data" ] && [ "$a" -le $((data + 256 * 1024)) ] || fail "read -o allocated $a, data is $data"
# A pipe gets every byte.
"$THINSTACK" read stack.json vm0 0 64M | cmp - src.img || fail "read to a pipe differs"
# Streamed input: zero blocks still do not allocate.
"$THINSTACK" discard stack.json vm0 0 1G
cat src.img | "$THINSTACK" write stack.json vm0 0 -i -
a=$(alloc vm0.img)
[ "$a" -ge "$data" ] && [ "$a" -le $((data + 256 * 1024)) ] || fail "write -i - allocated $a, data is $data"
"$THINSTACK" read stack.json vm0 0 64M -o back2.img
cmp src.img back2.img || fail "read back after a streamed write differs"
# --no-sparse writes every byte as data: the input's holes and zero blocks
# allocate too, and read back as zeroes.
"$THINSTACK" discard stack.json vm0 0 1G
"$THINSTACK" write stack.json vm0 0 -i src.img --no-sparse
a=$(alloc vm0.img)
[ "$a" -ge $((64 * M)) ] || fail "write --no-sparse allocated $a of 64M"
"$THINSTACK" read stack.json vm0 0 64M | cmp - src.img || fail "read back after --no-sparse differs"
cat src.img | "$THINSTACK" write stack.json vm0 64M -i - --no-sparse
a=$(alloc vm0.img)
[ "$a" -ge $((128 * M)) ] || fail "streamed write --no-sparse allocated $a of 128M"
"$THINSTACK" read stack.json vm0 0 64M --no-sparse 2>err.txt && fail "read took --no-sparse"
grep -q -- "--no-sparse goes with write" err.txt || fail "read --no-sparse: $(cat err.txt)"
echo ok
