#!/usr/bin/env bash
# Thin pools both ways between the library and the kernel's dm-thin, each
# device compared by sha256 as the library reads it, as the kernel reads it
# and as a model of the writes predicts:
#  a) library -> kernel -> library, at 64K and 1M blocks: snapshots of
#     snapshots, writes before and after them (partial writes into shared
#     blocks at head, middle, tail and across two), discards of shared and
#     unshared blocks, a provision, a partial last block, the largest id;
#     then the kernel writes, breaks sharing, creates a thin and a snapshot
#     and the library reads it all back;
#  b) kernel -> library -> kernel: set_transaction_id and a reserved
#     metadata snapshot;
#  c) a pool of 1,004 volumes activating in one `dmsetup create --concise`.
# thin_check runs before and after every activation (in the guest; after
# c, on the host, as the stopped VM left it). Two boots.
source "$TS_SOURCE_DIR/tests/common/requires.sh"
source "$TS_SOURCE_DIR/tests/vm/lib.sh"
requires python3
cd "$TMP"
VS=$((3584 * 1024 + 16384)) # not a whole number of blocks at either size

# cfg DIR NAME:ID... : the pool in DIR with these volumes.
cfg() {
  local d=$1 p=$2; shift 2
  {
    echo "{ \"version\": 1, \"layers\": {"
    echo " \"${p}meta\": { \"type\": \"file\", \"path\": \"meta.img\", \"size\": \"16M\", \"create\": true },"
    echo " \"${p}data\": { \"type\": \"file\", \"path\": \"data.img\", \"size\": \"64M\", \"create\": true },"
    printf ' "%spool": { "type": "thin-pool", "metadata": "%smeta", "data": "%sdata", "block_size": "%s" }' \
      "$p" "$p" "$p" "$BSNAME"
    for v in "$@"; do
      printf ',\n "%s%s": { "type": "thin", "pool": "%spool", "id": %s, "size": %s }' "$p" "${v%%:*}" "$p" "${v#*:}" "$VS"
    done
    echo " } }"
  } > "$d/s.json"
}
lib() { "$THINSTACK" "$@" > /dev/null || fail "thinstack $*"; }
# vol CFG POOL create ID | vol CFG POOL snap ID ORIGIN_ID, through the pool's API.
vol() {
  THINSTACK_LIB=$TS_BUILD_DIR/libthinstack.so PYTHONPATH=$TS_SOURCE_DIR/bindings/python \
    python3 - "$@" <<'PY' || fail "vol $*"
import sys
import thinstack
cfg, pool, op, *a = sys.argv[1:]
with thinstack.open(cfg) as s:
    p = s.node(pool)
    if op == "create":
        p.create_thin(int(a[0]))
    else:
        p.create_snap(int(a[0]), int(a[1]))
PY
}

# --- a) the library makes a pool at each block size
make_a() { # DIR PREFIX BLOCK_BYTES BLOCK_NAME
  local d=$1 p=$2 bs=$3
  BSNAME=$4
  mkdir -p "$d"
  head -c $VS /dev/urandom > "$d/w0"
  head -c 8192 /dev/urandom > "$d/w1"
  head -c "$bs" /dev/urandom > "$d/w2"
  head -c 4096 /dev/urandom > "$d/w3"
  head -c "$bs" /dev/urandom > "$d/kw"
  cfg "$d" "$p"
  lib pool create "$d/s.json" "${p}pool"
  vol "$d/s.json" "${p}pool" create 1
  cfg "$d" "$p" v1:1
  truncate -s $VS "$d/m1"
  lib write "$d/s.json" "${p}v1" 0 -i "$d/w0"; mwrite "$d/m1" 0 "$d/w0"
  vol "$d/s.json" "${p}pool" snap 2 1; cp "$d/m1" "$d/m2"
  cfg "$d" "$p" v1:1 v2:2
  lib write "$d/s.json" "${p}v1" $((2 * bs + 4096)) -i "$d/w1"; mwrite "$d/m1" $((2 * bs + 4096)) "$d/w1"
  # Partial writes into shared blocks at a block's head and tail, and one
  # across two shared blocks of the snapshot.
  lib write "$d/s.json" "${p}v1" $((3 * bs)) -i "$d/w1"; mwrite "$d/m1" $((3 * bs)) "$d/w1"
  lib write "$d/s.json" "${p}v1" $((bs - 4096)) -i "$d/w3"; mwrite "$d/m1" $((bs - 4096)) "$d/w3"
  lib write "$d/s.json" "${p}v2" $((2 * bs - 4096)) -i "$d/w1"; mwrite "$d/m2" $((2 * bs - 4096)) "$d/w1"
  lib write "$d/s.json" "${p}v2" 0 -i "$d/w2"; mwrite "$d/m2" 0 "$d/w2"
  vol "$d/s.json" "${p}pool" snap 3 2; cp "$d/m2" "$d/m3"
  cfg "$d" "$p" v1:1 v2:2 v3:3
  lib write "$d/s.json" "${p}v3" $((1 * bs)) -i "$d/w3"; mwrite "$d/m3" $((1 * bs)) "$d/w3"
  # Block 1 of v1 is shared with v2; block 1 of v3 is its own.
  lib discard "$d/s.json" "${p}v1" $((1 * bs)) "$bs"; mzero "$d/m1" $((1 * bs)) "$bs"
  lib discard "$d/s.json" "${p}v3" $((1 * bs)) "$bs"; mzero "$d/m3" $((1 * bs)) "$bs"
  vol "$d/s.json" "${p}pool" create 16777215
  cfg "$d" "$p" v1:1 v2:2 v3:3 vbig:16777215
  truncate -s $VS "$d/mbig"
  lib provision "$d/s.json" "${p}vbig" 0 $((2 * bs))
  lib write "$d/s.json" "${p}vbig" $((VS - 8192)) -i "$d/w1"; mwrite "$d/mbig" $((VS - 8192)) "$d/w1"
  for v in 1 2 3 big; do
    same "$(sha "$d/s.json" "${p}v$v" $VS)" "$(msha "$d/m$v")" "a $p v$v library/model"
  done
  "$THINSTACK" dm-table "$d/s.json" --concise --device "${p}meta=$5" --device "${p}data=$6" \
    > "$d/concise" || fail "dm-table $d"
}
make_a a64 k64 65536 64K /dev/vda /dev/vdb
make_a a1m k1m 1048576 1M /dev/vdc /dev/vdd
cp a64/kw kw64; cp a1m/kw kw1m

# --- b) zeroed disks for a pool the kernel makes
truncate -s 16M b-meta.img; truncate -s 64M b-data.img
head -c $((3 * 65536)) /dev/urandom > kb0
head -c 65536 /dev/urandom > kb1
head -c 65536 /dev/urandom > kb2

cat > boot1.sh <<'EOF'
set -eu
die() { echo "FAIL: $*"; exit 1; }
shas() { for v in "$@"; do echo "sha $v $(sha256sum < /dev/mapper/$v | cut -d' ' -f1)"; done; }
a_side() { # PREFIX META BS_SECTORS CONCISE KW
  local p=$1 meta=$2 bs=$3
  thin_check -q $meta || die "thin_check $p before"
  dmsetup create --concise "$(cat $4)" || die "dmsetup create $p"
  shas ${p}v1 ${p}v2 ${p}v3 ${p}vbig | sed 's/^sha /sha lib-/'
  # The kernel writes an unmapped (discarded) block of v1, breaks v2's
  # sharing with v3, creates a thin and a snapshot and writes both.
  dd if=$5 of=/dev/mapper/${p}v1 bs=$((bs * 512)) seek=1 count=1 oflag=direct conv=notrunc status=none
  dd if=$5 of=/dev/mapper/${p}v2 bs=$((bs * 512)) seek=2 count=1 oflag=direct conv=notrunc status=none
  dmsetup message ${p}pool 0 "create_thin 7"
  dmsetup create ${p}v7 --table "0 $(blockdev --getsz /dev/mapper/${p}v1) thin /dev/mapper/${p}pool 7"
  dd if=$5 of=/dev/mapper/${p}v7 bs=$((bs * 512)) seek=1 count=1 oflag=direct conv=notrunc status=none
  dmsetup suspend ${p}v1
  dmsetup message ${p}pool 0 "create_snap 8 1"
  dmsetup resume ${p}v1
  dmsetup create ${p}v8 --table "0 $(blockdev --getsz /dev/mapper/${p}v1) thin /dev/mapper/${p}pool 8"
  dd if=$5 of=/dev/mapper/${p}v1 bs=$((bs * 512)) seek=0 count=1 oflag=direct conv=notrunc status=none
  shas ${p}v1 ${p}v2 ${p}v3 ${p}vbig ${p}v7 ${p}v8 | sed 's/^sha /sha kern-/'
  for v in v8 v7 vbig v3 v2 v1 pool; do dmsetup remove ${p}$v; done
  thin_check -q $meta || die "thin_check $p after"
}
a_side k64 /dev/vda 128 /test/concise64 /test/kw64
a_side k1m /dev/vdc 2048 /test/concise1m /test/kw1m

# b) the kernel formats a pool, snapshots, sets the transaction id and
# reserves a metadata snapshot before its last write.
dmsetup create kbpool --table "0 $(blockdev --getsz /dev/vdf) thin-pool /dev/vde /dev/vdf 128 0 0"
dmsetup message kbpool 0 "create_thin 0"
dmsetup create kbv0 --table "0 7200 thin /dev/mapper/kbpool 0"
dd if=/test/kb0 of=/dev/mapper/kbv0 bs=64K oflag=direct status=none
dmsetup suspend kbv0; dmsetup message kbpool 0 "create_snap 1 0"; dmsetup resume kbv0
dmsetup create kbv1 --table "0 7200 thin /dev/mapper/kbpool 1"
dd if=/test/kb1 of=/dev/mapper/kbv0 bs=64K seek=1 oflag=direct conv=notrunc status=none
dmsetup message kbpool 0 "set_transaction_id 0 41"
dmsetup message kbpool 0 "reserve_metadata_snap"
dd if=/test/kb2 of=/dev/mapper/kbv1 bs=64K seek=2 oflag=direct conv=notrunc status=none
shas kbv0 kbv1
dmsetup status kbpool | sed 's/^/status /'
dmsetup remove kbv1; dmsetup remove kbv0; dmsetup remove kbpool
thin_check -q /dev/vde || die "thin_check b"
echo done
EOF
cp a64/concise concise64; cp a1m/concise concise1m
vm_run -d a64/meta.img -d a64/data.img -d a1m/meta.img -d a1m/data.img -d b-meta.img -d b-data.img \
  -f concise64 -f concise1m -f kw64 -f kw1m -f kb0 -f kb1 -f kb2 boot1.sh
grep -qx done "$TMP/vm.out" || fail "boot 1 did not finish"

# a) what the kernel read, then what it wrote, as the library reads it back.
check_a() { # DIR PREFIX BLOCK_BYTES BLOCK_NAME
  local d=$1 p=$2 bs=$3
  BSNAME=$4
  for v in 1 2 3 big; do
    same "$(vm_sha "lib-${p}v$v")" "$(msha "$d/m$v")" "a $p v$v kernel/model"
  done
  mwrite "$d/m1" $((1 * bs)) "$d/kw"
  mwrite "$d/m2" $((2 * bs)) "$d/kw"
  truncate -s $VS "$d/m7"; mwrite "$d/m7" "$bs" "$d/kw"
  cp "$d/m1" "$d/m8"
  mwrite "$d/m1" 0 "$d/kw"
  cfg "$d" "$p" v1:1 v2:2 v3:3 vbig:16777215 v7:7 v8:8
  for v in 1 2 3 big 7 8; do
    same "$(vm_sha "kern-${p}v$v")" "$(msha "$d/m$v")" "a $p v$v kernel write/model"
    same "$(sha "$d/s.json" "${p}v$v" $VS)" "$(msha "$d/m$v")" "a $p v$v library read back/model"
  done
  thin_check -q "$d/meta.img" || fail "host thin_check $d"
}
check_a a64 k64 65536 64K
check_a a1m k1m 1048576 1M

# b) the library opens the kernel's pool, checks and writes it.
mkdir -p b; mv b-meta.img b/meta.img; mv b-data.img b/data.img
BSNAME=64K VS=$((7200 * 512))
cfg b kb v0:0 v1:1
truncate -s $VS bm0; mwrite bm0 0 kb0; cp bm0 bm1; mwrite bm0 65536 kb1; mwrite bm1 131072 kb2
same "$(vm_sha kbv0)" "$(msha bm0)" "b v0 kernel/model"
same "$(vm_sha kbv1)" "$(msha bm1)" "b v1 kernel/model"
same "$(sha b/s.json kbv0 $VS)" "$(msha bm0)" "b v0 library/model"
same "$(sha b/s.json kbv1 $VS)" "$(msha bm1)" "b v1 library/model"
"$THINSTACK" pool status b/s.json kbpool > b/status.txt
grep -q "transaction id 41" b/status.txt || fail "transaction id: $(cat b/status.txt)"
grep -q "^status .* [0-9]*/[0-9]* [0-9]*/[0-9]* [0-9]* " "$TMP/vm.out" || fail "no pool status"
held=$(awk '$1 == "status" {print $8}' "$TMP/vm.out")
[ "$held" != - ] || fail "the kernel holds no metadata snapshot: $(grep ^status "$TMP/vm.out")"
"$THINSTACK" dump b/meta.img -m > b/snap.xml || fail "the library cannot read the held metadata snapshot"
grep -q 'dev_id="1"' b/snap.xml || fail "metadata snapshot: $(head -5 b/snap.xml)"
# The library discards a block v0 shares with v1 and writes a new volume.
lib discard b/s.json kbv0 0 65536; mzero bm0 0 65536
lib write b/s.json kbv1 0 -i kb2; mwrite bm1 0 kb2
vol b/s.json kbpool create 2
cfg b kb v0:0 v1:1 v2:2
truncate -s $VS bm2; lib write b/s.json kbv2 65536 -i kb1; mwrite bm2 65536 kb1
for v in 0 1 2; do same "$(sha b/s.json kbv$v $VS)" "$(msha bm$v)" "b v$v library write/model"; done
"$THINSTACK" dm-table b/s.json --concise --device kbmeta=/dev/vda --device kbdata=/dev/vdb > concise-b \
  || fail "dm-table b"

# --- c) 1,004 volumes created in one open, a few written
mkdir -p c
{
  echo '{ "version": 1, "layers": {'
  echo ' "cmeta": { "type": "file", "path": "meta.img", "size": "64M", "create": true },'
  echo ' "cdata": { "type": "file", "path": "data.img", "size": "256M", "create": true },'
  printf ' "cpool": { "type": "thin-pool", "metadata": "cmeta", "data": "cdata", "create": true }'
  for i in $(seq 0 1003); do
    printf ',\n "c%d": { "type": "thin", "pool": "cpool", "id": %d, "size": "64K", "create": true }' $i $((i * 997))
  done
  # All of them end to end, to read them with one process on either side.
  printf ',\n "call": { "type": "linear", "segments": [ { "child": "c0" }'
  for i in $(seq 1 1003); do printf ', { "child": "c%d" }' $i; done
  echo ' ] } } }'
} > c/s.json
head -c 4096 /dev/urandom > cw
for i in 0 1 500 1003; do lib write c/s.json c$i $((i % 16 * 4096)) -i cw; done
"$THINSTACK" dm-table c/s.json --concise --device cmeta=/dev/vdc --device cdata=/dev/vdd > concise-c \
  || fail "dm-table c"
[ "$(wc -l < concise-c)" = 1 ] || fail "concise c is not one line"

cat > boot2.sh <<'EOF'
set -eu
die() { echo "FAIL: $*"; exit 1; }
thin_check -q /dev/vda || die "thin_check b before"
dmsetup create --concise "$(cat /test/concise-b)" || die "dmsetup create b"
for v in kbv0 kbv1 kbv2; do echo "sha $v $(sha256sum < /dev/mapper/$v | cut -d' ' -f1)"; done
dmsetup message kbpool 0 "release_metadata_snap"
dmsetup status kbpool | sed 's/^/status /'
dmsetup remove kbv2; dmsetup remove kbv1; dmsetup remove kbv0; dmsetup remove kbpool
thin_check -q /dev/vda || die "thin_check b after"
thin_check -q /dev/vdc || die "thin_check c"
t0=$(cut -d' ' -f1 /proc/uptime)
dmsetup create --concise "$(cat /test/concise-c)" || die "dmsetup create c"
echo "c: $(ls /dev/mapper | grep -c '^c[0-9]') volumes active after $(awk "BEGIN {print $(cut -d' ' -f1 /proc/uptime) - $t0}")s"
# One process per volume costs seconds each under TCG: read them all
# through the linear device that concatenates them.
echo "sha call $(sha256sum < /dev/mapper/call | cut -d' ' -f1)"
echo "c: read at $(cut -d' ' -f1 /proc/uptime)s"
# Removing 1,005 devices takes over a minute under TCG; the VM just stops
# and the host checks the metadata as the kernel left it.
echo done
EOF
vm_run -d b/meta.img -d b/data.img -d c/meta.img -d c/data.img -f concise-b -f concise-c boot2.sh > /dev/null
grep -qx done "$TMP/vm.out" || { cat "$TMP/vm.out"; fail "boot 2 did not finish"; }
for v in 0 1 2; do same "$(vm_sha kbv$v)" "$(msha bm$v)" "b v$v kernel read back/model"; done
awk '$1 == "status" {print $8}' "$TMP/vm.out" | grep -qx -- - || fail "metadata snapshot not released"
grep -q '^c: 1004 volumes active' "$TMP/vm.out" || fail "c: $(grep '^c:' "$TMP/vm.out")"
grep -q ";call,,,rw,0 128 linear /dev/mapper/c0 0,128 128 linear /dev/mapper/c1 0," concise-c \
  || fail "concise c: $(head -c 300 concise-c)"
grep '^c:' "$TMP/vm.out"
thin_check -q c/meta.img || fail "c: thin_check after the kernel"
truncate -s $((1004 * 65536)) call
for i in 0 1 500 1003; do
  truncate -s 0 cm; truncate -s 65536 cm; mwrite cm $((i % 16 * 4096)) cw
  same "$(sha c/s.json c$i 65536)" "$(msha cm)" "c c$i library/model"
  mwrite call $((i * 65536 + i % 16 * 4096)) cw
done
same "$(vm_sha call)" "$(msha call)" "c all 1004 volumes kernel/model"
same "$(sha c/s.json call $((1004 * 65536)))" "$(msha call)" "c all 1004 volumes library/model"
echo "thin: ok"
