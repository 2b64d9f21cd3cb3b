# Crash consistency of the thin pool's metadata, checked by replay: a
# log-writes layer under the pool's metadata records a workload (writes,
# snapshots, discards, provisions, flushes) in dm-log-writes format;
# `thinstack replay-log` then rebuilds the metadata device as it was after
# every single entry of the log, and Debian's thin_check must pass on each
# one -- every point a crash could have stopped the device at. The whole log
# replayed gives the final device byte for byte; marks, --json and bad
# inputs behave.
source "$(dirname "$0")/../common/requires.sh"
requires thin_check python3
cd "$TMP"
cat > stack.json <<'JSON'
{ "version": 1, "layers": {
  "meta": { "type": "file", "path": "meta.img", "size": "8M", "create": true },
  "metalog": { "type": "file", "path": "metalog.img", "size": "256M", "create": true },
  "mlw": { "type": "log-writes", "child": "meta", "log": "metalog" },
  "data": { "type": "file", "path": "data.img", "size": "64M", "create": true },
  "pool": { "type": "thin-pool", "metadata": "mlw", "data": "data", "block_size": "64K",
            "commit_interval": 0, "create": true },
  "vol": { "type": "thin", "pool": "pool", "id": 1, "size": "32M", "create": true } },
  "exports": ["vol"] }
JSON
PYTHONPATH="$TS_SOURCE_DIR/bindings/python" python3 - <<'PY'
import random
import thinstack
random.seed(7)
K = 1024
with thinstack.open("stack.json") as st:
    v = st.device("vol")
    pool = st.node("pool")
    for step in range(40):
        for _ in range(20):
            v.write(random.randrange(512) * 64 * K, bytes([step]) * 4096)
        if step % 7 == 3:
            pool.create_snap(100 + step, 1)
        if step % 5 == 4:
            v.discard(random.randrange(500) * 64 * K, 4 * 64 * K)
        if step % 9 == 8:
            v.provision(random.randrange(480) * 64 * K, 16 * 64 * K)
        v.flush()
PY

"$THINSTACK" replay-log metalog.img --list --json > entries.json
python3 - <<'PY' > first_sb.txt
import json
e = json.load(open("entries.json"))
kinds = [x["flags"] for x in e]
assert kinds.count("flush") >= 40, kinds.count("flush")       # one per commit at least
assert e[-1]["flags"] == "mark" and e[-1]["mark"] == "dm-log-writes-end", e[-1]
# The pool formats by writing zeroes over the start of its reserved
# metadata and the superblock, flushing, writing the rest, flushing, then
# writing the superblock: checking starts after that write, the first to
# sector 0 after two flushes.
flushes, first = 0, None
for x in e:
    if x["flags"] == "flush":
        flushes += 1
    elif x["flags"] == "write" and x["sector"] == 0 and flushes >= 2:
        first = x["index"] + 1
        break
assert first is not None, e[:20]
print(first, len(e))
PY
read -r first total < first_sb.txt
[ "$total" -gt 100 ] || fail "only $total log entries"
for ((i = first; i <= total; i++)); do
  rm -f r.img
  truncate -s 8M r.img
  "$THINSTACK" replay-log metalog.img r.img --limit "$i" 2> /dev/null
  thin_check r.img > /dev/null 2> check.txt || fail "thin_check after entry $i of $total: $(cat check.txt)"
done
echo "thin_check clean after each of entries $first..$total"

# The whole log gives the device as it is now.
rm -f r.img; truncate -s 8M r.img
"$THINSTACK" replay-log metalog.img r.img --end-mark dm-log-writes-end
cmp r.img meta.img || fail "a full replay differs from the device"

# Bad inputs: a missing mark, a file that is no log, a missing target.
if "$THINSTACK" replay-log metalog.img r.img --end-mark nosuch 2> err.txt; then fail "missing mark accepted"; fi
grep -q 'no mark "nosuch"' err.txt || fail "$(cat err.txt)"
if "$THINSTACK" replay-log meta.img r.img 2> err.txt; then fail "a non-log accepted"; fi
grep -q 'not a dm-log-writes log' err.txt || fail "$(cat err.txt)"
if "$THINSTACK" replay-log metalog.img absent.img 2> err.txt; then fail "missing target accepted"; fi
grep -q 'cannot open absent.img' err.txt || fail "$(cat err.txt)"
echo ok
