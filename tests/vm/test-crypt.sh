#!/usr/bin/env bash
# Crypt volumes both ways between the library and the kernel's dm-crypt:
# aes-xts-plain64 at 512- and 4096-byte sectors with iv_offset,
# iv_large_sectors and a start offset, activated with the lines dm-table
# prints (the key loaded with its keyctl command, as a logon key). The
# library writes, the kernel reads and writes, the library reads back; each
# device compared by sha256 with a model of the plaintext. One boot.
source "$TS_SOURCE_DIR/tests/common/requires.sh"
source "$TS_SOURCE_DIR/tests/vm/lib.sh"
cd "$TMP"
head -c 64 /dev/urandom > k.key && chmod 600 k.key
make() { # NAME SECTOR_SIZE OFFSET EXTRA_JSON
  local n=$1
  truncate -s 2M "$n.img"
  cat > "$n.json" <<JSON
{ "version": 1, "layers": {
  "${n}c": { "type": "file", "path": "$n.img" },
  "$n": { "type": "crypt", "child": "${n}c", "key_file": "k.key", "sector_size": $2,
          "offset": "$3" $4 } } }
JSON
  local size=$((2097152 - $3))
  echo "$size" > "$n.size"
  head -c "$size" /dev/urandom > "$n.p1"
  "$THINSTACK" write "$n.json" "$n" 0 -i "$n.p1" > /dev/null || fail "write $n"
  cp "$n.p1" "$n.model"
  same "$(sha "$n.json" "$n" "$size")" "$(msha "$n.model")" "$n library/model"
  head -c 65536 /dev/urandom > "$n.p2"
}
make e512 512 1048576 ', "iv_offset": 7'
make e4k 4096 65536 ', "iv_offset": 16, "iv_large_sectors": true'
# The plaintext does not show through on the disk.
! cmp -s <(tail -c +1048577 e512.img | head -c 65536) <(head -c 65536 e512.p1) || fail "e512 not encrypted"

for n in e512 e4k; do
  "$THINSTACK" dm-table "$n.json" --concise --device "${n}c=/dev/vd$([ $n = e512 ] && echo a || echo b)" \
    > "$n.concise" 2> "$n.key" || fail "dm-table $n: $(cat "$n.key")"
  # The key command names the key file on the host; the guest has it in /test.
  sed -i "s|'$TMP/k.key'|/test/k.key|" "$n.key"
  grep -qx "keyctl padd logon thinstack:$n @u < /test/k.key" "$n.key" || fail "key command: $(cat "$n.key")"
done
grep -q "iv_large_sectors" e4k.concise || fail "e4k table: $(cat e4k.concise)"
cat > boot.sh <<'EOF'
set -eu
for n in e512 e4k; do
  bash /test/$n.key > /dev/null
  dmsetup create --concise "$(cat /test/$n.concise)"
  echo "sha lib-$n $(sha256sum < /dev/mapper/$n | cut -d' ' -f1)"
  dd if=/test/$n.p2 of=/dev/mapper/$n bs=64K seek=3 oflag=direct conv=notrunc status=none
  echo "sha kern-$n $(sha256sum < /dev/mapper/$n | cut -d' ' -f1)"
  dmsetup table $n | sed "s/^/table $n /"
  dmsetup remove $n
done
echo done
EOF
vm_run -d e512.img -d e4k.img -f k.key -f e512.concise -f e4k.concise -f e512.key -f e4k.key \
  -f e512.p2 -f e4k.p2 boot.sh
grep -qx done "$TMP/vm.out" || fail "the guest did not finish"
grep -q '^table e4k .* 16 [0-9:]* 128 2 sector_size:4096 iv_large_sectors$' "$TMP/vm.out" \
  || fail "the kernel's e4k table: $(grep '^table e4k' "$TMP/vm.out")"
for n in e512 e4k; do
  size=$(cat "$n.size")
  same "$(vm_sha "lib-$n")" "$(msha "$n.model")" "$n kernel read/model"
  mwrite "$n.model" $((3 * 65536)) "$n.p2"
  same "$(vm_sha "kern-$n")" "$(msha "$n.model")" "$n kernel write/model"
  same "$(sha "$n.json" "$n" "$size")" "$(msha "$n.model")" "$n library read back/model"
done
echo "crypt: ok"
