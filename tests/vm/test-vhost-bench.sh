#!/usr/bin/env bash
# bench/vhost.sh runs end to end in a short form (1 s per test on 64 MiB
# disks): qemu-storage-daemon and our server both attach, fio runs on all
# three disks, and the table and the JSON have a positive figure for every
# test and disk. What the figures are is not checked: they are a benchmark's.
source "$TS_SOURCE_DIR/tests/common/requires.sh"
source "$TS_SOURCE_DIR/tests/vm/lib.sh"
requires qemu-storage-daemon fio python3
cd "$TMP"
"$TS_SOURCE_DIR/bench/vhost.sh" -b "$TS_BUILD_DIR" -r 1 -s 64 -o "$TMP/r.json" | tee out.txt
python3 - "$TMP/r.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
tests = [r["test"] for r in d["results"]]
want = ["fill", "randwrite-4k-qd1", "randwrite-4k-qd32", "randread-4k-qd1",
        "randread-4k-qd32", "read-1m"]
assert tests == want, tests
for r in d["results"]:
    for k in ("ours", "qsd", "qemu"):
        assert r[k] > 0, r
    assert r["ours_qsd"] > 0 and r["ours_qemu"] > 0, r
print("bench json ok:", d["meta"])
PY
grep -q "^randread-4k-qd32 " out.txt || fail "no table"
echo "vhost-bench: ok"
