#!/usr/bin/env bash
# The control plane does not slow the data path: `thinstack bench io` on a
# thin volume with a client polling stack.status 100 times a second over
# its control socket stays within 3% of the same run without one. Runs
# alternate (without, with, ...) and each side keeps its best, so a busy
# neighbour on the machine costs both sides alike. The figure compared is
# the thin column's 4K random IOPS against the pread/pwrite baseline the
# bench runs back to back with it in each cell (so load that comes and goes
# on the machine cancels out), averaged over the four 4K cells.
. "$TS_SOURCE_DIR/tests/common/requires.sh"
requires python3
types=$("$THINSTACK" types) # whole: grep -q ending early would SIGPIPE it
grep -q '^thin-pool:' <<<"$types" || skip_or_fail "needs the thin layers"
cd "$TMP"
RUNS=${TS_BENCH_CTL_RUNS:-3}
bench() { "$THINSTACK" bench io --cached --seconds 0.3 --size 64M --workers 4 --runs 1 --no-fio --dir "$TMP" --json "$@"; }

for i in $(seq "$RUNS"); do
  bench >"plain$i.json" || fail "bench io"
  rm -f ctl.sock polls
  python3 - "$TMP/ctl.sock" "$TMP/polls" <<'PY' &
import json, os, signal, socket, sys, time
path, out = sys.argv[1:]
stop = False
def on_term(*a):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
while not os.path.exists(path) and not stop:
    time.sleep(0.005)
s = socket.socket(socket.AF_UNIX)
s.connect(path)
f = s.makefile("rb")
# The server's thread ("ts-ctl") in the peer's process: its CPU time is
# what the polling costs the machine.
import struct
pid = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
task = [t for t in os.listdir("/proc/%d/task" % pid)
        if open("/proc/%d/task/%s/comm" % (pid, t)).read().strip() == "ts-ctl"][0]
def cpu():
    try:
        st = open("/proc/%d/task/%s/stat" % (pid, task)).read().rsplit(")", 1)[1].split()
        return (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return None
cpu0 = cpu()
cpu_last = cpu0
n, t, nxt = 0, time.monotonic(), time.monotonic()
while not stop:
    try:
        s.sendall(b'{"jsonrpc":"2.0","id":%d,"method":"stack.status"}\n' % n)
        line = f.readline()
    except (BrokenPipeError, ConnectionResetError):
        break
    if not line:
        break  # the bench ended and closed its stack
    r = json.loads(line)
    assert "result" in r and any(x["name"] == "vol" for x in r["result"]), r
    n += 1
    c = cpu()
    cpu_last = c if c is not None else cpu_last
    nxt += 0.01
    time.sleep(max(0, nxt - time.monotonic()))
open(out, "w").write("%d %.3f %.3f\n" % (n, time.monotonic() - t, cpu_last - cpu0))
PY
  poller=$!
  bench --control "$TMP/ctl.sock" >"ctl$i.json" || fail "bench io --control"
  kill -TERM $poller 2>/dev/null || true
  wait $poller || fail "the polling client failed"
  read -r n secs cpu <polls
  python3 -c "import sys; n, s = int(sys.argv[1]), float(sys.argv[2]); assert n >= 50 * s, (n, s)" "$n" "$secs" ||
    fail "the client polled only $n times in $secs s"
  # What the server thread spent per answer: 3% of one CPU at 100 polls a
  # second is 300 us; an idle holder takes about 70 us, a loaded machine
  # stretches it to about 250 us. The test fails past 750 us a request,
  # which a millisecond of extra work per request crosses on any machine.
  python3 -c "import sys; n, c = int(sys.argv[1]), float(sys.argv[2]); assert c <= 0.00075 * n, (n, c)" "$n" "$cpu" ||
    fail "the control thread used $cpu s of CPU for $n requests"
  echo "run $i: $n stack.status polls in $secs s; the control thread used $cpu s of CPU" >&2
done
python3 - "$RUNS" <<'PY' || fail "the polled runs are more than 3% slower"
import json, sys
runs = int(sys.argv[1])
def iops(name):
    d = json.load(open(name))
    r = [x["ratio"] for x in d["results"] if x["target"] == "thin" and x["block_size"] == 4096]
    return sum(r) / len(r)
plain = [iops("plain%d.json" % i) for i in range(1, runs + 1)]
ctl = [iops("ctl%d.json" % i) for i in range(1, runs + 1)]
ratio = max(ctl) / max(plain)
print("thin 4K IOPS / pread-pwrite IOPS (mean of 4 cells, best of %d): without a control "
      "client %.3f, polled at 100/s %.3f: %.3fx" % (runs, max(plain), max(ctl), ratio))
print("runs without:", " ".join("%.3f" % x for x in plain), "with:", " ".join("%.3f" % x for x in ctl))
# Runs without the client that disagree among themselves by more than 3%
# say the machine is too busy to judge a 3% difference: then only the
# control thread's CPU budget (checked per run above) is judged.
spread = (max(plain) - min(plain)) / max(plain)
if spread > 0.03:
    print("the runs without a client differ by %.0f%%: the machine is too busy to judge 3%%; "
          "judged by the control thread's CPU time alone" % (100 * spread))
else:
    assert ratio >= 0.97, ratio
PY
echo "PASS"
