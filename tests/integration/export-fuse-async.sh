#!/usr/bin/env bash
# Asynchronous direct I/O through the FUSE export: the connection's limit on
# "background" requests (the kernel's default is 12) is raised to the number
# of workers, so io_uring at depth 32 gets more than 12 requests to the
# daemon at once; -o max_background=N holds it to N, and the data written
# that way reads back.
. "$TS_SOURCE_DIR/tests/common/requires.sh"
. "$TS_SOURCE_DIR/tests/common/exports.sh"
requires_fuse
requires fio

CONFIG=$(write_stack "$TMP" 64M)
MNT=$TMP/mnt
DEV=$MNT/vm0
CONN=/sys/fs/fuse/connections
if ! mountpoint -q "$CONN"; then
  mount -t fusectl none "$CONN" || skip_or_fail "cannot mount fusectl on $CONN"
  on_exit "umount '$CONN'"
fi
fio --name=probe --ioengine=io_uring --filename="$TMP/probe" --size=4k --rw=read \
    --output=/dev/null 2>/dev/null || skip_or_fail "fio cannot use io_uring here"

# The fusectl directory of the connection of MNT.
conn_dir() {
  local conn
  conn=$CONN/$(stat -c %d "$MNT")
  [ -r "$conn/waiting" ] || fail "no $conn/waiting for $MNT"
  echo "$conn"
}

# The most requests waiting at once on the connection of MNT while fio
# reads 4K blocks through io_uring at depth 32 for 2 s. Sampling can miss
# the peak on a loaded machine, so a caller that needs a floor retries.
max_waiting() {
  local conn max=0 w
  conn=$(conn_dir)
  fio --name=r --filename="$DEV" --ioengine=io_uring --direct=1 --rw=randread --bs=4k \
      --iodepth=32 --size=64M --runtime=2 --time_based --output=/dev/null &
  local pid=$!
  while kill -0 $pid 2>/dev/null; do
    read -r w <"$conn/waiting"
    [ "$w" -gt "$max" ] && max=$w
    sleep 0.005
  done
  wait $pid || fail "fio failed"
  echo "$max"
}

fuse_mount "$CONFIG" "$MNT"
fio --name=w --filename="$DEV" --ioengine=io_uring --direct=1 --rw=randwrite --bs=4k \
    --iodepth=32 --size=16M --verify=crc32c --verify_fatal=1 --output="$TMP/fio.log" ||
  { cat "$TMP/fio.log"; fail "io_uring write+verify at depth 32 failed"; }
# What the daemon asked for is what the kernel holds to; then the effect:
# more requests at once than the kernel's default of 12.
read -r limit <"$(conn_dir)/max_background"
threads=$("$FUSE_BIN" --help 2>&1 | sed -n 's/.*-o threads=N.*(default \([0-9]*\)).*/\1/p')
[ -n "$threads" ] || fail "no default thread count in thinstack-fuse --help"
[ "$limit" -eq "$threads" ] || fail "max_background is $limit, not the $threads workers"
deep=0
for try in 1 2 3; do
  deep=$(max_waiting)
  [ "$deep" -gt 12 ] && break
  echo "try $try: only $deep requests waiting at once"
done
[ "$deep" -gt 12 ] || fail "io_uring at depth 32 kept only $deep requests waiting (limit $limit)"
fuse_umount "$MNT"

fuse_mount "$CONFIG" "$MNT" -o max_background=4
fio --name=w --filename="$DEV" --ioengine=io_uring --direct=1 --rw=randwrite --bs=4k \
    --iodepth=32 --size=16M --verify=crc32c --verify_only --output="$TMP/verify.log" ||
  { cat "$TMP/verify.log"; fail "verify after a remount failed"; }
read -r limit <"$(conn_dir)/max_background"
[ "$limit" -eq 4 ] || fail "with -o max_background=4 the connection's limit is $limit"
held=$(max_waiting)
# One more may slip past the limit while it is being reached.
[ "$held" -le 6 ] || fail "with -o max_background=4, $held requests waited at once"
fuse_umount "$MNT"

# Out of range is refused before anything is mounted.
if "$FUSE_BIN" "$CONFIG" "$MNT" -f -o max_background=65536 2>"$TMP/err"; then
  fail "max_background=65536 was accepted"
fi
grep -q "max_background=65536: must be at most 65535" "$TMP/err" || fail "message: $(cat "$TMP/err")"
echo "depth 32: $deep waiting at most, max_background=4: $held"
echo "PASS"
