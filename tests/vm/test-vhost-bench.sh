#!/usr/bin/env bash
# bench/vhost.sh runs end to end in a short form (one round of 1 s per
# cell on 64 MiB disks): qemu-storage-daemon and our server (a thin volume
# and a file layer) attach, their negotiated features match, fio runs on all
# four disks, and the table and the JSON have a positive median, min and max
# for every cell and disk. What the figures are is not checked: they are a
# benchmark's.
source "$TS_SOURCE_DIR/tests/common/requires.sh"
source "$TS_SOURCE_DIR/tests/vm/lib.sh"
requires qemu-storage-daemon fio python3 taskset
cd "$TMP"
"$TS_SOURCE_DIR/bench/vhost.sh" -b "$TS_BUILD_DIR" -r 1 -R 1 -s 64 -o "$TMP/r.json" | tee out.txt
python3 - "$TMP/r.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
tests = [r["test"] for r in d["results"]]
want = ["fill", "randwrite-4k-qd1", "randwrite-4k-qd32", "randread-4k-qd1",
        "randread-4k-qd32", "read-1m"]
assert tests == want, tests
for r in d["results"]:
    for k in ("thin", "file", "qsd", "qemu"):
        assert 0 < r[k]["min"] <= r[k]["median"] <= r[k]["max"], r
    for k in ("thin_qsd", "file_qsd", "thin_qemu"):
        assert r[k]["median"] > 0, r
m = d["meta"]
assert m["mismatch"] == [], m["mismatch"]
for n in ("thin", "file", "qsd"):
    f = m["negotiated"][n]["features"]
    assert 28 in f and 29 in f and 12 in f, (n, f)  # INDIRECT_DESC, EVENT_IDX, MQ
print("bench json ok:", {k: v for k, v in m.items() if k != "negotiated"})
PY
grep -q "^randread-4k-qd32 " out.txt || fail "no table"
grep -q "^  qsd " out.txt || fail "no negotiated features"
echo "vhost-bench: ok"
