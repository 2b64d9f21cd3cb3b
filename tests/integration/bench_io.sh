# thinstack bench io runs end to end (tiny and short: this checks that it
# works and reports every cell, not how fast anything is).
source "$(dirname "$0")/../common/requires.sh"
requires python3 fio strace

types=$("$THINSTACK" types | grep -Eo '^(thin|crypt):' | tr -d : | sort | tr '\n' ' ')
# Both completion modes: on the workers (the default) and on a libuv loop.
for mode in default loop; do
args=()
[ "$mode" = default ] || args=(--mode "$mode")
out=$("$THINSTACK" bench io --cached --seconds 0.05 --size 8M --workers 4 --runs 2 --dir "$TMP" --json "${args[@]}")
python3 - "$out" "$types" "$mode" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
registered = sys.argv[2].split()
assert r["direct"] is False and r["size"] == 8 << 20 and r["workers"] == 4
assert r["mode"] == {"default": "worker", "loop": "loop"}[sys.argv[3]], r["mode"]
rows = r["results"]
targets = {x["target"] for x in rows}
assert {"pread/pwrite", "file", "fio io_uring"} <= targets, targets
assert r["runs"] == 2, r
# thin and crypt columns appear exactly when those layer types exist
assert ("thin" in targets) == ("thin" in registered), (targets, registered)
assert ("crypt/thin" in targets) == ("crypt" in registered and "thin" in registered), targets
for t in targets:
    cells = {(x["test"], x["depth"]) for x in rows if x["target"] == t}
    assert cells == {(n, d) for n in ("seqwrite", "randwrite", "randread", "seqread") for d in (1, 32)}, (t, cells)
for x in rows:
    assert x["ops"] > 0 and x["seconds"] > 0, x
    assert ("iops" in x) == (x["block_size"] == 4096), x
    v = x["iops"] if "iops" in x else x["mb_per_s"]
    assert 0 < x["min"] <= v <= x["max"], x
    if x["target"] == "pread/pwrite":
        assert x["ratio"] == 1.0
print(sys.argv[3], "targets:", sorted(targets))
PY
done
# A deadline that passes before any thread starts still counts one op per
# thread, in the baseline as in the layers, so no ratio divides by zero.
"$THINSTACK" bench io --cached --seconds 0.000001 --size 8M --workers 4 --dir "$TMP" --json |
  python3 -c '
import json, sys
rows = json.load(sys.stdin)["results"]
zero = [(x["target"], x["test"], x["depth"]) for x in rows if x["ops"] == 0]
assert not zero, zero' || fail "a cell counted no op"
# The baseline's file is prefilled as the volumes' data file is, through an
# O_DIRECT descriptor (a file laid out by buffered writes takes O_DIRECT
# random writes at another speed); --no-fio leaves fio out.
# (LeakSanitizer cannot run under ptrace: sanitizer builds skip it here.)
ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0 \
  strace -f -e trace=openat -o open.txt "$THINSTACK" bench io --seconds 0.01 --size 4M --workers 2 --runs 1 \
  --no-fio --dir "$TMP" --json > direct.json
grep 'raw.img' open.txt | grep -q 'O_CREAT' || fail "no create of raw.img seen: $(grep raw.img open.txt)"
if grep 'raw.img' open.txt | grep -v O_DIRECT | grep -q .; then
  fail "raw.img opened without O_DIRECT: $(grep raw.img open.txt | grep -v O_DIRECT)"
fi
python3 -c '
import json
r = json.load(open("direct.json"))
assert r["direct"] and "fio io_uring" not in {x["target"] for x in r["results"]}, r'
rm -f open.txt direct.json
# Everything it created is gone again.
[ -z "$(ls -A "$TMP")" ] || fail "bench io left files behind: $(ls "$TMP")"
"$THINSTACK" bench io --seconds 0 && fail "--seconds 0 accepted"
"$THINSTACK" bench io --workers 0 && fail "--workers 0 accepted"
"$THINSTACK" bench io --mode eventfd && fail "--mode eventfd accepted"
"$THINSTACK" bench io --runs 0 && fail "--runs 0 accepted"
"$THINSTACK" bench io --help | grep -q -- --cached || fail "help does not mention --cached"
echo ok
