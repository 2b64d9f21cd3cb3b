#!/usr/bin/env bash
# `thinstack dm-table` prints dmsetup commands that run as printed: leaves
# bound with --device, dm devices named after their layers, --concise as one
# line for `dmsetup create --concise` with the keyctl command on stderr, the
# pool's no-space policy from the config, never the key; unbound leaves are
# named instead of printing placeholders. (tests/vm/ activates them.)
source "$TS_SOURCE_DIR/tests/common/requires.sh"
cd "$TMP"
head -c 64 /dev/urandom > k.key && chmod 600 k.key
cat > s.json <<'JSON'
{ "version": 1, "layers": {
  "meta": { "type": "file", "path": "m.img", "size": "16M", "create": true },
  "data": { "type": "file", "path": "d.img", "size": "256M", "create": true },
  "pool": { "type": "thin-pool", "metadata": "meta", "data": "data", "block_size": "128K", "create": true },
  "vm0": { "type": "thin", "pool": "pool", "id": 7, "size": "128M", "create": true },
  "enc": { "type": "crypt", "child": "vm0", "key_file": "k.key", "allow_discards": true },
  "base": { "type": "file", "path": "b.img", "size": "32M", "create": true },
  "cow": { "type": "file", "path": "c.img", "size": "16M", "create": true },
  "origin": { "type": "snapshot-origin", "child": "base" },
  "snap": { "type": "snapshot", "origin": "origin", "cow": "cow", "chunk_size": "8K", "create": true },
  "extra": { "type": "file", "path": "e.img", "size": "32M", "create": true },
  "lin": { "type": "linear", "segments": [ { "child": "enc", "offset": "1M" }, { "child": "extra" } ] } },
  "exports": ["lin", "snap", "origin"] }
JSON
# dm-table only reads: a writing command makes the files, the pool and the volume.
"$THINSTACK" flush s.json lin > /dev/null || fail "create the stack"
set +e
"$THINSTACK" dm-table s.json > t.txt 2> err.txt; st=$?
set -e
[ $st = 1 ] || fail "unbound leaves: status $st"
[ ! -s t.txt ] || fail "printed without bindings: $(cat t.txt)"
for l in meta data base cow extra; do grep -q "$l (file, " err.txt || fail "leaf $l not named: $(cat err.txt)"; done
! grep -q '<' err.txt || fail "placeholder: $(cat err.txt)"
set +e
"$THINSTACK" dm-table s.json --device nosuch=/dev/x > /dev/null 2> err.txt; st=$?
set -e
[ $st = 2 ] && grep -q 'no layer named "nosuch"' err.txt || fail "unknown layer bound: $st $(cat err.txt)"
B=(--device meta=/dev/M --device data=/dev/D --device base=/dev/B --device=cow=/dev/C --device extra=/dev/E)
"$THINSTACK" dm-table s.json "${B[@]}" > t.txt || fail "dm-table"
cat t.txt
expect() { grep -qE -- "$1" t.txt || fail "missing line: $1"; }
expect "^keyctl padd logon thinstack:enc @u < '$TMP/k.key'\$"
expect "^dmsetup create pool --table '0 524288 thin-pool /dev/M /dev/D 256 [0-9]+ 1 error_if_no_space'\$"
expect "^dmsetup create vm0 --table '0 262144 thin /dev/mapper/pool 7'\$"
expect "^dmsetup create enc --table '0 262144 crypt aes-xts-plain64 :64:logon:thinstack:enc 0 /dev/mapper/vm0 0 1 allow_discards'\$"
expect "^dmsetup create origin --table '0 65536 snapshot-origin /dev/B'\$"
expect "^dmsetup create snap --table '0 65536 snapshot /dev/B /dev/C P 16'\$"
expect "^printf '%s\\\\n' '0 260096 linear /dev/mapper/enc 2048' '260096 65536 linear /dev/E 0' \| dmsetup create lin\$"
! grep -v '^keyctl' t.txt | grep -q '<' || fail "placeholder left"
# The layers come children first, as dmsetup must create them.
[ "$(grep -o 'create [a-z0-9]*' t.txt | cut -d' ' -f2 | tr '\n' ' ')" = "pool vm0 enc origin snap lin " ] || fail "order"
"$THINSTACK" dm-table s.json "${B[@]}" --concise > c.txt 2> ck.txt || fail "concise"
[ "$(wc -l < c.txt)" = 1 ] || fail "concise is not one line: $(cat c.txt)"
grep -qx "pool,,,rw,0 524288 thin-pool /dev/M /dev/D 256 [0-9]* 1 error_if_no_space;vm0,,,rw,0 262144 thin /dev/mapper/pool 7;.*;lin,,,rw,0 260096 linear /dev/mapper/enc 2048,260096 65536 linear /dev/E 0" c.txt || fail "concise: $(cat c.txt)"
grep -qx "keyctl padd logon thinstack:enc @u < '$TMP/k.key'" ck.txt || fail "concise key command: $(cat ck.txt)"
# out_of_space: queue is the kernel's default, so the pool line has no feature for it.
sed -i 's/"block_size": "128K", "create": true/"block_size": "128K", "out_of_space": "queue"/' s.json
"$THINSTACK" dm-table s.json "${B[@]}" | grep -q "thin-pool /dev/M /dev/D 256 [0-9]* 0'$" || fail "queue policy"
# A kernel layer over a plain file has no dm device of its own: it is a
# leaf to bind, not /dev/mapper/kf.
truncate -s 8M kf.img
cat > kf.json <<'JSON'
{ "version": 1, "layers": {
  "kf": { "type": "kernel", "path": "kf.img" },
  "kl": { "type": "linear", "segments": [ { "child": "kf" } ] } } }
JSON
set +e
"$THINSTACK" dm-table kf.json > /dev/null 2> err.txt; st=$?
set -e
[ $st = 1 ] && grep -q 'kf (kernel, 8388608 bytes)' err.txt || fail "kernel over a file: $st $(cat err.txt)"
"$THINSTACK" dm-table kf.json --device kf=/dev/loop9 | grep -qx "dmsetup create kl --table '0 16384 linear /dev/loop9 0'" \
  || fail "kernel over a file, bound"
key=$(xxd -p -c 128 k.key 2>/dev/null || od -An -tx1 -v k.key | tr -d ' \n')
! grep -qi "${key:0:16}" t.txt c.txt ck.txt || fail "the key appears in dm-table output"
echo "dm_table: ok"
