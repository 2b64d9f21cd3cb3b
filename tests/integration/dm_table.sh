#!/usr/bin/env bash
# `thinstack dm-table` prints the dmsetup line of every node with a kernel
# twin (thin-pool, thin, crypt, snapshot-origin, snapshot, linear) in sectors,
# never the key.
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
"$THINSTACK" flush s.json lin || fail "flush"
"$THINSTACK" dm-table s.json > t.txt || fail "dm-table"
cat t.txt
expect() { grep -qE -- "$1" t.txt || fail "missing line: $1"; }
expect '^pool: 0 524288 thin-pool <meta> <data> 256 [0-9]+'
expect '^vm0: 0 262144 thin <pool> 7$'
expect '^enc: 0 262144 crypt aes-xts-plain64 :64:logon:[^ ]+ 0 <vm0> 0( [0-9]+ .*allow_discards.*)?$'
expect '^origin: 0 65536 snapshot-origin <base>$'
expect '^snap: 0 65536 snapshot <base> <cow> P 16$'
expect '^lin: 0 260096 linear <enc> 2048$'
expect '^260096 65536 linear <extra> 0$'
expect '^# meta \(file\): no kernel device-mapper equivalent'
key=$(xxd -p -c 128 k.key 2>/dev/null || od -An -tx1 -v k.key | tr -d ' \n')
! grep -qi "${key:0:16}" t.txt || fail "the key appears in dm-table output"
echo "dm_table: ok"
