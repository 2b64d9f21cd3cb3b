#!/usr/bin/env bash
# Writes through the rbd layer reach librbd without a copy where librbd allows
# it (cache off), the data arrives intact, and an image's own
# conf_rbd_disable_zero_copy_writes metadata still turns the copy back on.
# librbd logs "disabling zero-copy writes" (debug rbd 5) when it copies.
source "$TS_SOURCE_DIR/tests/common/requires.sh"
requires rbd
[ -r "${CEPH_CONF:-}" ] || skip_or_fail "needs a Ceph cluster: \$CEPH_CONF (tests/ceph/start-ceph.sh)"
"$THINSTACK" types > "$TMP/types.txt"
grep -q "^rbd:" "$TMP/types.txt" || skip_or_fail "built without librbd"
cd "$TMP"
I=ts-zc-$$
cleanup_fns+=("rbd rm --no-progress rbd/$I >/dev/null 2>&1")
rbd create --size 16M rbd/$I
cat > s.json <<JSON
{ "version": 1, "layers": { "img": { "type": "rbd", "pool": "rbd", "image": "$I" } },
  "exports": ["img"] }
JSON
for mode in off writearound; do
  cp "$CEPH_CONF" $mode.conf
  case $mode in
    off) printf '[client]\nrbd cache = false\n' >> $mode.conf ;;
    writearound) printf '[client]\nrbd cache writethrough until flush = false\n' >> $mode.conf ;;
  esac
  printf 'debug rbd = 5\nlog file = %s/%s.log\n' "$TMP" $mode >> $mode.conf
done
head -c 3M /dev/urandom > data.bin

# write FILE CONF: write data.bin at 1 MiB and read it back, comparing.
write() {
  rm -f "${2%.conf}.log"
  CEPH_CONF=$2 "$THINSTACK" write s.json img 1M -i "$1" > /dev/null 2> err.txt ||
    fail "write ($2): $(cat err.txt)"
  CEPH_CONF=$2 "$THINSTACK" read s.json img 1M 3M > back.bin 2> err.txt ||
    fail "read ($2): $(cat err.txt)"
  cmp -s "$1" back.bin || fail "read back differs from what was written ($2)"
}
write data.bin off.conf
grep -q "librbd::io::ObjectDispatcher" off.log || fail "librbd logged nothing at debug rbd 5: the check is blind"
! grep -q "disabling zero-copy writes" off.log || fail "cache off: librbd copied the writes"

# The cache may acknowledge before the OSD has the data: librbd copies there.
head -c 3M /dev/urandom > data2.bin
write data2.bin writearound.conf

# An image that asks for copies gets them.
rbd image-meta set rbd/$I conf_rbd_disable_zero_copy_writes true
write data.bin off.conf
grep -q "disabling zero-copy writes" off.log || fail "the image's metadata did not turn the copy on"
echo "rbd zero_copy: ok"
