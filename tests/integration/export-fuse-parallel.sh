#!/usr/bin/env bash
# Parallel direct writes through the FUSE export: many writer threads on one
# file reach the daemon at once (the kernel keeps several WRITEs waiting on
# the connection; with -o serial_writes it keeps one), and the data stays
# right, including writes of 1000 bytes whose neighbours share a block with
# them, which the export completes by read-modify-write concurrently.
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

# Jobs a: 8 threads of 4K random writes, each on its own 4M; job b: 4
# threads writing 256 bytes of every 1024 in [36M,37M), thread k at offset
# 256k: all of them read-modify-write the same blocks at the same time.
cat >"$TMP/par.fio" <<EOF2
[global]
filename=$DEV
ioengine=psync
direct=1
rw=randwrite
verify=crc32c
verify_fatal=1
randrepeat=1
[a]
bs=4k
size=4M
numjobs=8
offset_increment=4M
[b]
rw=write
bs=256
offset=36M
size=1M
io_size=256K
zonemode=strided
zonesize=256
zoneskip=768
numjobs=4
offset_increment=256
EOF2

# The most WRITE requests waiting at once on the connection of MNT while
# 8 threads write 4K blocks to [48M,64M) for 2 s.
max_waiting() {
  local dev conn max=0 w
  dev=$(stat -c %d "$MNT")
  conn=$CONN/$dev
  [ -r "$conn/waiting" ] || fail "no $conn/waiting for $MNT"
  fio --name=w --filename="$DEV" --ioengine=psync --direct=1 --rw=randwrite --bs=4k \
      --offset=48M --size=16M --numjobs=8 --runtime=2 --time_based --output=/dev/null &
  local pid=$!
  while kill -0 $pid 2>/dev/null; do
    w=$(cat "$conn/waiting")
    [ "$w" -gt "$max" ] && max=$w
    sleep 0.01
  done
  wait $pid || fail "fio failed"
  echo "$max"
}

fuse_mount "$CONFIG" "$MNT"
fio --output="$TMP/fio.log" "$TMP/par.fio" || { cat "$TMP/fio.log"; fail "parallel write+verify failed"; }
par=$(max_waiting)
[ "$par" -ge 4 ] || fail "8 writer threads kept only $par requests waiting: writes run one at a time"
fuse_umount "$MNT"

# After a remount everything reads back.
fuse_mount "$CONFIG" "$MNT" -o serial_writes
fio --output="$TMP/verify.log" --verify_only "$TMP/par.fio" ||
  { cat "$TMP/verify.log"; fail "verify after a remount failed"; }
ser=$(max_waiting)
[ "$ser" -le 3 ] || fail "with -o serial_writes $ser requests waited at once"
fuse_umount "$MNT"
echo "parallel: $par waiting at most, serial_writes: $ser"
echo "PASS"
