#!/usr/bin/env bash
# A thin pool whose metadata and data are two RBD images: create, volumes,
# a snapshot, writes, provision and discard; closed, exported with `rbd
# export`, dumped with `thinstack dump` and checked by Debian's thin_check.
# Then a writer killed with kill -9 mid-workload: the pool reopens at its
# last commit (once Ceph has dropped the dead client's lock), clean.
source "$TS_SOURCE_DIR/tests/common/requires.sh"
requires rbd thin_check thin_dump python3
[ -r "${CEPH_CONF:-}" ] || skip_or_fail "needs a Ceph cluster: \$CEPH_CONF (tests/ceph/start-ceph.sh)"
cd "$TMP"
M=1048576
P=ts-thin-$$
cleanup_fns+=("rbd rm rbd/$P-meta >/dev/null 2>&1; rbd rm rbd/$P-data >/dev/null 2>&1")
cat > pool.json <<JSON
{ "version": 1,
  "layers": {
    "meta": { "type": "rbd", "pool": "rbd", "image": "$P-meta", "create": true, "size": "16M" },
    "data": { "type": "rbd", "pool": "rbd", "image": "$P-data", "create": true, "size": "512M",
              "object_size": "1M" },
    "pool": { "type": "thin-pool", "metadata": "meta", "data": "data", "block_size": "1M",
              "create": true, "commit_interval": 1 } },
  "exports": [] }
JSON
"$THINSTACK" pool create pool.json pool
"$THINSTACK" thin create pool.json v1 --size 256M --export
head -c $((8 * M)) /dev/urandom > a.bin
"$THINSTACK" write pool.json v1 0 -i a.bin
"$THINSTACK" thin snap pool.json v1 s1 --export
head -c $((2 * M)) /dev/urandom > b.bin
"$THINSTACK" write pool.json v1 2M -i b.bin
"$THINSTACK" read pool.json s1 0 8M | cmp - a.bin || fail "snapshot changed"
"$THINSTACK" read pool.json v1 2M 2M | cmp - b.bin || fail "volume write lost"
"$THINSTACK" provision pool.json v1 64M 16M >/dev/null
"$THINSTACK" read pool.json v1 64M 16M | cmp - <(head -c $((16 * M)) /dev/zero) || fail "provisioned range"
"$THINSTACK" discard pool.json v1 4M 4M >/dev/null
"$THINSTACK" thin list pool.json --json > list.json
python3 - <<'PY' || fail "thin list: $(cat list.json)"
import json
vols = {v["name"]: v for v in json.load(open("list.json"))}
# v1: 0-4M mapped, 4-8M discarded, 16M provisioned
assert vols["v1"]["mapped_bytes"] == 20 << 20, vols["v1"]
assert vols["s1"]["mapped_bytes"] == 8 << 20, vols["s1"]
PY
# The data image holds what the pool mapped: objects exist for mapped blocks.
[ "$(rbd du rbd/$P-data 2>/dev/null | awk -v n=$P-data '$1 == n { print $4 }')" != 0 ] ||
  fail "data image empty"

rbd export --no-progress rbd/$P-meta meta.img
thin_check meta.img || fail "thin_check on the exported metadata"
"$THINSTACK" dump meta.img -o dump.xml
thin_dump meta.img > ref.xml
diff dump.xml ref.xml || fail "thinstack dump and thin_dump disagree"
grep -q '<device dev_id="1" mapped_blocks="8"' dump.xml || fail "dump: $(head -5 dump.xml)"

# kill -9 mid-workload: bench io writes v1's upper half for a while (the
# pool commits every second); killed after its first commits.
cat > half.json <<JSON
$(python3 -c '
import json
c = json.load(open("pool.json"))
c["layers"]["hi"] = {"type": "linear", "segments": [{"child": "v1", "offset": "128M", "length": "128M"}]}
c["exports"] = ["hi"]
print(json.dumps(c))')
JSON
"$THINSTACK" bench io --stack half.json --seconds 5 > bench.txt 2>&1 & w=$!
sleep 3
kill -0 $w 2>/dev/null || fail "the workload ended early: $(cat bench.txt)"
kill -9 $w
killed=$(date +%s)
wait $w 2>/dev/null || true
# The dead client still owns both images' locks until Ceph drops its watch.
ok=
for _ in $(seq 60); do
  if "$THINSTACK" flush pool.json pool 2>err.txt; then ok=1; break; fi
  grep -q EBUSY err.txt || fail "reopen after kill -9: $(cat err.txt)"
  sleep 0.5
done
[ -n "$ok" ] || fail "pool still locked after 30 s: $(cat err.txt)"
echo "reopened after kill -9 in $(( $(date +%s) - killed )) s"
# What the killed writer committed is there: blocks mapped in the upper half.
"$THINSTACK" thin list pool.json --json > list.json
python3 -c '
import json
v = {v["name"]: v for v in json.load(open("list.json"))}["v1"]
assert v["mapped_bytes"] > 20 << 20, v' || fail "no commit of the killed writer survived"
"$THINSTACK" read pool.json s1 0 8M | cmp - a.bin || fail "committed snapshot lost"
"$THINSTACK" read pool.json v1 2M 2M | cmp - b.bin || fail "committed write lost"
rbd export --no-progress rbd/$P-meta meta2.img
thin_check meta2.img || fail "thin_check after kill -9"
echo "thin over rbd: ok"
