# The live-control scenario the ctl-live-* tests run against a holder
# (thinstack-fuse, or nbdkit through nbdfuse): source after exports.sh.
#
# live_stack DIR: a 64M thin volume vm0 in a 1G pool whose low water mark
# (900M free: the copies fio makes of shared blocks cross it) the scenario crosses. Echoes the configuration's path.
live_stack() {
  cat >"$1/stack.json" <<'EOF'
{ "version": 1,
  "layers": {
    "meta": { "type": "file", "path": "meta.img", "size": "16M", "create": true },
    "data": { "type": "file", "path": "data.img", "size": "1G", "create": true },
    "pool": { "type": "thin-pool", "metadata": "meta", "data": "data", "block_size": "64K",
              "low_water_mark": "900M", "create": true },
    "vm0":  { "type": "thin", "pool": "pool", "id": 0, "size": "64M", "create": true } },
  "exports": ["vm0"] }
EOF
  echo "$1/stack.json"
}

# live_scenario CONFIG DEVFILE: while fio writes [8M,40M) of DEVFILE with
# verify=crc32c and a tracked writer stamps [0,256K), the CLI alone (through
# the holder's socket) creates a volume, takes 10 snapshots of vm0, grows it,
# provisions a range, reads pool status and sees a low-water event arrive on
# a subscription. Leaves $TMP/acks (the writer's log) and $TMP/snaps (each
# snapshot's start and end time) for live_check.
live_scenario() {
  local config=$1 dev=$2 M=1048576
  "$THINSTACK" ctl "$config" events.subscribe >"$TMP/events" 2>"$TMP/events.err" &
  local sub=$!
  on_exit "kill $sub 2>/dev/null"
  wait_for "grep -q subscribed '$TMP/events'"

  cat >"$TMP/live.fio" <<EOF
[live]
filename=$dev
ioengine=psync
rw=randwrite
bs=4k
offset=8M
size=32M
verify=crc32c
verify_fatal=1
verify_backlog=512
time_based=1
runtime=12
EOF
  fio --output="$TMP/fio.log" "$TMP/live.fio" &
  local fio=$!
  on_exit "kill $fio 2>/dev/null; wait $fio 2>/dev/null"

  # The tracked writer: 4K block k % 64 of [0,256K) gets stamp k, each write
  # acknowledged (fdatasync) before the next; logs "k time" after each ack.
  rm -f "$TMP/stop"
  python3 - "$dev" "$TMP/acks" "$TMP/stop" <<'PY' &
import os, struct, sys, time
dev, log, stop = sys.argv[1:]
fd = os.open(dev, os.O_WRONLY)
out = []
k = 0
while not os.path.exists(stop):
    k += 1
    os.pwrite(fd, struct.pack("<Q", k) * 512, (k % 64) * 4096)
    os.fdatasync(fd)
    out.append("%d %.6f\n" % (k, time.time()))
os.close(fd)
open(log, "w").writelines(out)
PY
  local writer=$!
  on_exit "touch '$TMP/stop'; wait $writer 2>/dev/null"
  sleep 1

  "$THINSTACK" thin create "$config" spare --size 16M >"$TMP/out" || fail "thin create: $(cat "$TMP/out")"
  grep -q "volume spare (id 1, 16M) created in pool pool" "$TMP/out" || fail "thin create printed: $(cat "$TMP/out")"
  : >"$TMP/snaps"
  local i t0 t1
  for i in $(seq 1 10); do
    t0=$(date +%s.%N)
    "$THINSTACK" thin snap "$config" vm0 "s$i" >"$TMP/out" || fail "thin snap s$i: $(cat "$TMP/out")"
    t1=$(date +%s.%N)
    grep -q "volume s$i (id [0-9]*) created in pool pool as a snapshot of vm0" "$TMP/out" ||
      fail "thin snap printed: $(cat "$TMP/out")"
    echo "s$i $t0 $t1" >>"$TMP/snaps"
    sleep 0.2
  done
  "$THINSTACK" thin resize "$config" vm0 +64M >"$TMP/out" || fail "thin resize: $(cat "$TMP/out")"
  grep -q "volume vm0 is now 128M" "$TMP/out" || fail "thin resize printed: $(cat "$TMP/out")"
  # The whole volume, so the used space passes the low-water mark whatever
  # fio has written by now (provisioning breaks the sharing with the snapshots).
  "$THINSTACK" provision "$config" vm0 0 $((128 * M)) 2>"$TMP/out" || fail "provision: $(cat "$TMP/out")"
  "$THINSTACK" pool status "$config" pool >"$TMP/status" || fail "pool status"
  grep -q "low water mark 900.0M: REACHED" "$TMP/status" || fail "pool status: $(cat "$TMP/status")"
  grep -q "^  12 volumes" "$TMP/status" || fail "pool status does not count 12 volumes: $(cat "$TMP/status")"
  wait_for "grep -q '\"event\":\"low-water-mark\"' '$TMP/events'"
  grep -q '"node":"pool"' "$TMP/events" || fail "the event names no pool: $(cat "$TMP/events")"
  kill -0 $fio 2>/dev/null || fail "fio ended before the commands did: $(cat "$TMP/fio.log")"

  touch "$TMP/stop"
  wait $writer || fail "the tracked writer failed"
  wait $fio || { cat "$TMP/fio.log"; fail "fio's verify failed"; }
  kill $sub 2>/dev/null || true
}

# live_check CONFIG: after the holder stopped, each snapshot holds exactly
# the state after some write N of the tracked writer, where N is at least
# the last write acknowledged before its snapshot command started and at
# most the last acknowledged before the command returned (the writer's next
# write was not acknowledged, so not in flight once the reply came... but it
# may have been in flight: one write past is allowed); pool and config agree
# and thin_check is clean.
live_check() {
  local config=$1 i
  for i in $(seq 1 10); do
    "$THINSTACK" read "$config" "s$i" 0 262144 -o "$TMP/s$i.img" || fail "reading snapshot s$i"
  done
  python3 - "$TMP" <<'PY' || fail "a snapshot does not hold the acknowledged writes"
import struct, sys
tmp = sys.argv[1]
acks = [line.split() for line in open(tmp + "/acks")]
acked = [(int(k), float(t)) for k, t in acks]
for line in open(tmp + "/snaps"):
    name, t0, t1 = line.split()
    t0, t1 = float(t0), float(t1)
    img = open("%s/%s.img" % (tmp, name), "rb").read()
    stamps = [struct.unpack_from("<Q", img, b * 4096)[0] for b in range(64)]
    for b in range(64):
        assert img[b * 4096:(b + 1) * 4096] == struct.pack("<Q", stamps[b]) * 512, (name, b)
    n = max(stamps)
    # A prefix state: every block holds the last stamp <= n of its own.
    for b in range(64):
        want = n - ((n - b) % 64)
        want = want if want > 0 else 0
        assert stamps[b] == want, (name, b, stamps[b], want, n)
    lo = max([k for k, t in acked if t < t0] or [0])
    hi = max([k for k, t in acked if t <= t1] or [0]) + 1
    assert lo <= n <= hi, (name, "holds write", n, "acked before the command", lo, "by its end", hi)
    print("%s: holds writes 1..%d (acknowledged before the command: %d, by its reply: %d)"
          % (name, n, lo, hi - 1))
PY
  "$THINSTACK" thin list "$config" >"$TMP/list" || fail "thin list after the holder stopped"
  [ "$(grep -c ' vm0$' "$TMP/list")" = 10 ] || fail "not 10 snapshots of vm0: $(cat "$TMP/list")"
  grep -q "^vm0 .* 128.0M" "$TMP/list" || fail "vm0 did not stay grown: $(cat "$TMP/list")"
  thin_check "$TMP/meta.img" >"$TMP/tc" 2>&1 || { cat "$TMP/tc"; fail "thin_check"; }
}
