# The largest thin volume (2^63 - 512 bytes) through both exports: SEEK_DATA
# and st_blocks through FUSE answer at once (block status walks the mapped
# keys, a hole of any length is one extent), and SIGTERM stops a busy export
# within a second, FUSE mid-walk and nbdkit mid-map, with the stack closed
# cleanly (thin_check passes).
. "$TS_SOURCE_DIR/tests/common/requires.sh"
. "$TS_SOURCE_DIR/tests/common/exports.sh"
requires_fuse
requires_nbdkit
requires python3 nbdinfo thin_check

SIZE=9223372036854775296   # 2^63 - 512: the largest size a thin volume takes
cat >"$TMP/stack.json" <<EOF
{ "version": 1,
  "layers": {
    "meta": { "type": "file", "path": "meta.img", "size": "16M", "create": true },
    "data": { "type": "file", "path": "data.img", "size": "64M", "create": true },
    "pool": { "type": "thin-pool", "metadata": "meta", "data": "data",
              "block_size": "64K", "create": true },
    "vm0":  { "type": "thin", "pool": "pool", "id": 0, "size": $SIZE, "create": true } },
  "exports": ["vm0"] }
EOF
MNT=$TMP/mnt

# Microseconds since the epoch.
now_us() { echo $(( $(date +%s%N) / 1000 )); }

# PID is running: not gone, and not a zombie waiting for a parent (a daemon's
# parent is init, which may reap it late) to collect it.
running() {
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}

# Send SIGTERM to PID and wait (up to 10 s) for it to end; echoes the time
# it took in milliseconds.
term_and_time() {
  local pid=$1 t0 i
  t0=$(now_us)
  kill -TERM "$pid"
  for i in $(seq 1000); do
    running "$pid" || break
    sleep 0.01
  done
  running "$pid" && { kill -KILL "$pid"; fail "pid $pid ignored SIGTERM for 10 s"; }
  echo $(( ($(now_us) - t0) / 1000 ))
}

# --- FUSE: SEEK_DATA, SEEK_HOLE and st_blocks on the 8E volume ---
fuse_mount "$TMP/stack.json" "$MNT"
FPID=${FUSE_PIDS[0]##*:}
timeout 20 python3 - "$MNT/vm0" "$SIZE" <<'EOF' || fail "seeking on the 8E volume failed or hung"
import os, sys, time
path, size = sys.argv[1], int(sys.argv[2])
blk = 65536
fd = os.open(path, os.O_RDWR)
assert os.fstat(fd).st_size == size, os.fstat(fd).st_size
os.pwrite(fd, b"a" * blk, 1 << 20)
os.pwrite(fd, b"z" * blk, size - 2 * blk - (size % blk))
os.fsync(fd)
t = time.monotonic()
d = os.lseek(fd, 2 << 20, os.SEEK_DATA)
assert d == size - 2 * blk - (size % blk), d
h = os.lseek(fd, 1 << 20, os.SEEK_HOLE)
assert h == (1 << 20) + blk, h
h = os.lseek(fd, d, os.SEEK_HOLE)
assert h == d + blk, h
try:
    os.lseek(fd, d + blk + 4096, os.SEEK_DATA)
    raise AssertionError("data after the last block")
except OSError as e:
    assert e.errno == 6, e  # ENXIO
blocks = os.fstat(fd).st_blocks
assert blocks * 512 == 2 * blk, blocks
took = time.monotonic() - t
print(f"seeks and stat on the 8E volume: {took * 1000:.1f} ms")
assert took < 2, took
EOF

# A busy mount: clients seek and stat the whole volume without pause. The
# walk used to take 2^33 calls; now SIGTERM must end the daemon within 1 s.
CLIENTS=()
for i in 1 2; do
  python3 - "$MNT/vm0" <<'EOF' >/dev/null 2>&1 &
import os, sys, random
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
while True:
    try:
        os.lseek(fd, random.randrange(2 << 20, size // 2) // 512 * 512, os.SEEK_DATA)
        os.stat(sys.argv[1])
    except OSError:
        if not os.path.exists(sys.argv[1]):
            break
EOF
  CLIENTS+=($!)
done
on_exit "kill ${CLIENTS[*]} 2>/dev/null || true"
sleep 0.5
MS=$(term_and_time "$FPID")
echo "thinstack-fuse exited $MS ms after SIGTERM while busy"
[ "$MS" -lt 1000 ] || fail "thinstack-fuse took $MS ms to exit after SIGTERM"
wait "$FPID" || fail "thinstack-fuse exited with status $? after SIGTERM"
kill "${CLIENTS[@]}" 2>/dev/null || true
mountpoint -q "$MNT" && fail "still mounted after SIGTERM"
thin_check "$TMP/meta.img" >/dev/null 2>&1 || fail "thin_check failed after the FUSE export stopped"

# --- nbdkit: a client maps the whole volume, SIGTERM mid-map ---
nbd_start config="$TMP/stack.json"
NPID=$(cat "$TMP/nbd.pid")
nbdinfo --map "$(nbd_uri vm0)" >"$TMP/map.txt" 2>/dev/null &
MAPPER=$!
on_exit "kill $MAPPER 2>/dev/null || true"
sleep 0.5
# 2^63 bytes in requests of at most 4 GiB: still mapping when the signal comes.
kill -0 "$MAPPER" 2>/dev/null || fail "nbdinfo --map ended early: $(head -3 "$TMP/map.txt")"
MS=$(term_and_time "$NPID")
echo "nbdkit exited $MS ms after SIGTERM while mapping"
[ "$MS" -lt 1000 ] || fail "nbdkit took $MS ms to exit after SIGTERM"
NBD_STARTED=
kill "$MAPPER" 2>/dev/null || true
thin_check "$TMP/meta.img" >/dev/null 2>&1 || fail "thin_check failed after nbdkit stopped"
echo "ok"
