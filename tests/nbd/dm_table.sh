#!/usr/bin/env bash
# dm-table over the nbd layer: NBD has no device-mapper target, so an nbd
# layer is a leaf to bind to the kernel's nbd device (nbd-client) with
# --device, and what is stacked on it prints over that device. Over nbds://
# too: nbdkit requires TLS with a pre-shared key the URI names.
source "$TS_SOURCE_DIR/tests/common/requires.sh"
requires nbdkit
"$THINSTACK" types > "$TMP/types.txt"
grep -q '^nbd:' "$TMP/types.txt" || skip_or_fail "built without libnbd"
cd "$TMP"

printf 'alice:%s\n' "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" > keys.psk
nbdkit -f -U "$TMP/tls.sock" --tls=require --tls-psk="$TMP/keys.psk" memory 64M & pid=$!
cleanup_fns+=("kill $pid 2>/dev/null; wait $pid 2>/dev/null")
for _ in $(seq 100); do [ -S tls.sock ] && break; sleep 0.05; done
[ -S tls.sock ] || fail "nbdkit did not start"
head -c 64 /dev/urandom > disk.key; chmod 600 disk.key

stack() { # NAME URI
  cat > "$1.json" <<JSON
{ "version": 1, "layers": {
    "remote": { "type": "nbd", "uri": "$2" },
    "sec": { "type": "crypt", "child": "remote", "key_file": "disk.key", "sector_size": 4096 } },
  "exports": ["sec"] }
JSON
}
stack tls "nbds+unix://alice@/?socket=$TMP/tls.sock&tls-psk-file=$TMP/keys.psk"
stack plain "nbd+unix:///?socket=$TMP/tls.sock"

# The server takes no client without TLS: the nbds:// stack below is really TLS.
! "$THINSTACK" dm-table plain.json >/dev/null 2>err.txt || fail "plain nbd to a TLS-only server"

! "$THINSTACK" dm-table tls.json > t.txt 2> err.txt || fail "nbd without --device printed $(cat t.txt)"
grep -q -- "--device LAYER=PATH: remote (nbd, 67108864 bytes)" err.txt || fail "unbound nbd: $(cat err.txt)"
"$THINSTACK" dm-table tls.json --device remote=/dev/nbd0 > t.txt 2> err.txt ||
  fail "dm-table over nbds: $(cat err.txt)"
grep -qx "dmsetup create sec --table '0 131072 crypt aes-xts-plain64 :64:logon:thinstack:sec 0 /dev/nbd0 0 1 sector_size:4096'" t.txt ||
  fail "crypt over nbds: $(cat t.txt)"
! grep -q "create remote" t.txt || fail "a table for the nbd layer itself: $(cat t.txt)"
echo "nbd dm_table: ok"
