#!/usr/bin/env bash
# -p/--progress on read, write, copy, check, dump, restore and replay-log:
# into a pipe each prints plain "    (NN.NN/100%)" lines on stderr, rising,
# from 0 to 100; at most ten a second; to --progress=FD when asked; not at
# all unless asked; and no 100% when the command fails.
source "$TS_SOURCE_DIR/tests/common/requires.sh"
requires python3 thin_check
cd "$TMP"

# LOG MIN WHAT: LOG holds only progress lines, rising from 0.00 to 100.00,
# at least MIN of them.
progress_ok() {
  python3 - "$1" "$2" "$3" <<'PY' || fail "$3: progress: $(head -c 600 "$1")"
import re, sys
log, least, what = sys.argv[1], int(sys.argv[2]), sys.argv[3]
lines = open(log).read().split("\n")
assert lines[-1] == "", "%s: the last line is not ended" % what
figs = []
for l in lines[:-1]:
    m = re.fullmatch(r"    \((\d+)\.(\d\d)/100%\)", l)
    assert m, "%s: not a progress line: %r" % (what, l)
    figs.append(int(m.group(1)) * 100 + int(m.group(2)))
assert len(figs) >= least, "%s: %d updates, wanted %d" % (what, len(figs), least)
assert figs[0] == 0 and figs[-1] == 10000, "%s: from %s to %s" % (what, figs[0], figs[-1])
assert all(a < b for a, b in zip(figs, figs[1:])), "%s: not rising: %s" % (what, figs)
assert 10000 not in figs[:-1], what
PY
}

cat >stack.json <<'J'
{ "version": 1,
  "layers": {
    "meta": { "type": "file", "path": "meta.img", "size": "64M", "create": true },
    "data": { "type": "file", "path": "data.img", "size": "512M", "create": true },
    "pool": { "type": "thin-pool", "metadata": "meta", "data": "data", "block_size": "64K",
              "create": true },
    "vm0": { "type": "thin", "pool": "pool", "id": 0, "size": "256M", "create": true },
    "disk": { "type": "file", "path": "disk.img", "size": "64M", "create": true },
    "log": { "type": "file", "path": "log.img", "size": "128M", "create": true },
    "lw": { "type": "log-writes", "child": "disk", "log": "log" }
  },
  "exports": ["vm0", "lw"] }
J
"$THINSTACK" pool create stack.json pool >/dev/null
# 64 MiB of data, and holes between its pieces.
python3 - <<'PY'
import os
with open("in.img", "wb") as f:
    for i in range(16):
        f.seek(i * 8 << 20)
        f.write(os.urandom(4 << 20))
    f.truncate(128 << 20)
PY
export TS_PROGRESS_INTERVAL=0   # every update, to see many of a short run

"$THINSTACK" write stack.json vm0 0 -i in.img -p >out.txt 2>prog.txt || fail "write -p: exit $?"
progress_ok prog.txt 10 "write"
"$THINSTACK" read stack.json vm0 0 128M -o back.img --progress 2>prog.txt || fail "read -p: exit $?"
progress_ok prog.txt 10 "read -o"
cmp back.img in.img || fail "read -p read something else"
# To a pipe (stdout is the data, the progress stays on stderr).
"$THINSTACK" read stack.json vm0 0 32M -p 2>prog.txt | cmp - <(head -c 32M in.img) ||
  fail "read -p to a pipe"
progress_ok prog.txt 4 "read to a pipe"
"$THINSTACK" copy stack.json:vm0 copy.img -p 2>prog.txt || fail "copy -p: exit $?"
progress_ok prog.txt 10 "copy"
cmp <(head -c 128M copy.img) in.img || fail "copy -p copied something else"
# --progress=FD as nbdcopy takes it: stderr stays quiet.
"$THINSTACK" copy in.img stack.json:vm0 --progress=3 3>prog.txt 2>err.txt || fail "copy --progress=3"
progress_ok prog.txt 10 "copy --progress=3"
[ ! -s err.txt ] || fail "copy --progress=3 wrote on stderr: $(cat err.txt)"
# Not asked, not shown.
"$THINSTACK" copy stack.json:vm0 copy2.img 2>err.txt || fail "copy: exit $?"
[ ! -s err.txt ] || fail "copy without -p printed: $(cat err.txt)"

# Metadata: a pool with many mappings, restored from XML, checked, dumped.
python3 - <<'PY'
n = 120000
with open("big.xml", "w") as f:
    f.write('<superblock uuid="" time="1" transaction="2" flags="0" version="2" '
            'data_block_size="128" nr_data_blocks="%d">\n' % (2 * n))
    for dev in range(2):
        f.write('  <device dev_id="%d" mapped_blocks="%d" transaction="0" creation_time="0" '
                'snap_time="1">\n' % (dev, n // 2))
        for i in range(n // 2):
            # every other block, so no two mappings merge into a range
            f.write('    <single_mapping origin_block="%d" data_block="%d" time="0"/>\n'
                    % (2 * i, dev * n + i))
        f.write('  </device>\n')
    f.write('</superblock>\n')
PY
truncate -s 64M big.meta
"$THINSTACK" restore big.xml big.meta -p 2>prog.txt || fail "restore -p: exit $?"
progress_ok prog.txt 2 "restore"
assert_thin_check big.meta "after restore -p"
"$THINSTACK" check big.meta -p >out.txt 2>prog.txt || fail "check -p: exit $?"
progress_ok prog.txt 2 "check"
grep -q "clean" out.txt || fail "check -p: $(cat out.txt)"
"$THINSTACK" dump big.meta -o big2.xml -p 2>prog.txt || fail "dump -p: exit $?"
progress_ok prog.txt 2 "dump"
[ "$(grep -c single_mapping big2.xml)" -eq 120000 ] || fail "dump -p lost mappings"

# replay-log: through the log-writes layer, then replayed onto a copy.
"$THINSTACK" write stack.json lw 0 -i <(head -c 64M in.img) 2>/dev/null || fail "write to lw"
truncate -s 64M target.img
"$THINSTACK" replay-log log.img target.img -p 2>err.txt || fail "replay-log -p: exit $?"
grep -q "^replayed" err.txt || fail "replay-log -p: $(cat err.txt)"
grep -v "^replayed" err.txt >prog.txt
progress_ok prog.txt 4 "replay-log"
cmp target.img disk.img || fail "replay-log -p replayed something else"

# bench io: one update per cell.
"$THINSTACK" bench io --cached --seconds 0.01 --size 4M --workers 2 --runs 1 --no-fio --dir "$TMP" \
  --json -p >bench.json 2>prog.txt || fail "bench io -p: exit $?"
python3 -c "import json; json.load(open('bench.json'))" || fail "bench io -p: stdout is not JSON"
progress_ok prog.txt 8 "bench io"

# A failure ends without 100%.
"$THINSTACK" read stack.json vm0 250M 64M -o fail.img -p 2>prog.txt && fail "read past the end worked"
grep -q "past the end" prog.txt || fail "read past the end: $(cat prog.txt)"
! grep -q "100.00/100" prog.txt || fail "a failed read said 100%"
# Unknown --progress values are refused as options.
"$THINSTACK" copy in.img x.img --progress=x 2>err.txt && fail "--progress=x accepted"

# At most ten updates a second without the test hook.
unset TS_PROGRESS_INTERVAL
t0=$(date +%s.%N)
"$THINSTACK" read stack.json vm0 0 128M -o back.img -p 2>prog.txt || fail "read -p: exit $?"
t1=$(date +%s.%N)
progress_ok prog.txt 2 "read at the default rate"
python3 -c "
import sys
n = sum(1 for _ in open('prog.txt'))
s = $t1 - $t0
# the first and last lines come on top of the rate's
assert n <= s * 10 + 3, '%d lines in %.2f s' % (n, s)
" || fail "more than 10 updates a second: $(wc -l <prog.txt) lines"
echo ok
