#!/usr/bin/env bash
# Every benchmark runs end to end on a tiny configuration and prints what it
# promises (so none of them rots); figures are not judged here.
source "$TS_SOURCE_DIR/tests/common/requires.sh"
cd "$TMP"
"$THINSTACK" bench provision --sizes 16M,32M --runs 1 --dir "$TMP" --json > prov.json
python3 - <<'PY'
import json
d = json.load(open("prov.json"))
assert [s["size"] for s in d["sizes"]] == ["16M", "32M"], d
for s in d["sizes"]:
    for k in ("write_zero_buffers", "provision", "write_zeroes", "fallocate"):
        assert s[k]["flush_s"] >= s[k]["op_s"] > 0, (k, s)
assert d["snapshot"]["empty_s"] > 0, d
PY
# The metadata alone: a zero data layer, sizes no file system would hold,
# and the metadata file sized for them; --no-write leaves its column out.
"$THINSTACK" bench provision --data zero --sizes 64G,256G --runs 3 --dir "$TMP" --json > zero.json
python3 - <<'PY'
import json
d = json.load(open("zero.json"))
assert [s["size"] for s in d["sizes"]] == ["64G", "256G"], d
for s in d["sizes"]:
    p = s["provision"]
    assert s["data"] == "zero" and p["flush_max_s"] >= p["flush_s"] >= p["flush_min_s"] > 0, s
    assert abs(s["ms_per_gib"] - p["flush_s"] * 1e3 / (s["bytes"] / 2**30)) < 1e-6, s
    f = s["floor"]  # the file system writing the same leaves, in the same run
    assert f["flush_max_s"] >= f["flush_s"] >= f["flush_min_s"] > 0, s
PY
"$THINSTACK" bench provision --sizes 16M --runs 1 --no-write --dir "$TMP" > nowrite.txt
grep -Eq '^ +16M \| +- +- \|' nowrite.txt || fail "--no-write: $(cat nowrite.txt)"
"$THINSTACK" bench provision --data disk 2> err.txt && fail "--data disk accepted"
grep -q 'takes file or zero' err.txt || fail "unclear --data error: $(cat err.txt)"
"$THINSTACK" bench crypt --seconds 0.05 --sector-size 4096 --json > crypt.json
python3 -c '
import json
d = json.load(open("crypt.json"))
assert d["child"] == "zero" and len(d["rows"]) == 4, d
assert all(r["openssl_mbps"] > 0 and r["crypt_1t_mbps"] > 0 for r in d["rows"]), d
# The child alone is timed too, and "+child" sets the layer against OpenSSL
# and the child one after the other: their times per byte add.
for r in d["rows"]:
    assert r["child_mbps"] > 0, r
    both = r["crypt_1t_mbps"] * (1 / r["openssl_mbps"] + 1 / r["child_mbps"])
    assert abs(r["ratio_with_child"] - both) < 1e-6 * both, r
    assert r["ratio_with_child"] >= r["ratio"], r'
# A deadline that passes before any thread has started: every thread and
# every timed loop still does one round, so no figure is 0 (a loop that
# checks its deadline first would fail here every time, not 1 run in 3).
"$THINSTACK" bench crypt --seconds 0.000000001 --sector-size 4096 --json > crypt-short.json
python3 -c '
import json
d = json.load(open("crypt-short.json"))
assert len(d["rows"]) == 4, d
assert all(r[k] > 0 for r in d["rows"] for k in ("openssl_mbps", "child_mbps", "crypt_1t_mbps", "crypt_nt_mbps")), d'
"$THINSTACK" bench crypt --seconds 0.05 --sector-size 512 --child memory > crypt.txt
grep -q "memory child" crypt.txt || fail "bench crypt --child memory"
"$THINSTACK" bench snapshot --size 4M --dir "$TMP" > snap.txt || fail "bench snapshot"
grep -q "1.00x" snap.txt || fail "bench snapshot: no baseline row: $(cat snap.txt)"
"$THINSTACK" bench nope 2> err.txt && fail "unknown benchmark accepted"
grep -q 'unknown benchmark "nope"' err.txt || fail "unclear error: $(cat err.txt)"
[ -z "$(ls "$TMP" | grep -E 'thinstack-bench|ts-bench')" ] || fail "a benchmark left files behind: $(ls "$TMP")"
echo "benches: ok"
