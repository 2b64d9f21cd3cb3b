#!/usr/bin/env bash
# Every reporting command prints one JSON document with --json (numbers as
# numbers, "unlimited" as null), every command that changes something says
# with --json what it did, the control socket's answers are the same
# documents as the direct path's, and the exit status is 0 for success, 1
# for a failed operation and 2 for a usage error.
source "$TS_SOURCE_DIR/tests/common/requires.sh"
source "$TS_SOURCE_DIR/tests/common/exports.sh"
requires python3
cd "$TMP"
write_pool_config stack.json 8M 256M 128K
# parse FILE PYTHON: FILE is one JSON document `d`, and PYTHON's asserts hold.
parse() {
  python3 -c 'import json, sys
d = json.load(open(sys.argv[1]))
exec(sys.argv[2])' "$1" "${2:-}" || fail "$1 is not the JSON expected: $(cat "$1")"
}
js() { # OUT COMMAND...: run with --json into OUT, exit 0
  local out=$1
  shift
  "$THINSTACK" "$@" --json >"$out" 2>err.txt || fail "thinstack $* --json: exit $? ($(cat err.txt))"
}

js v.json --version
parse v.json 'assert d["version"], d'
js types.json types
parse types.json '
t = {x["name"]: x for x in d["types"]}
assert "thin-pool" in t and "file" in t, t.keys()
p = {x["key"]: x for x in t["file"]["params"]}
assert p["path"]["required"] is True and p["path"]["kind"] == "path", p["path"]
assert all(isinstance(x["required"], bool) for x in t["thin-pool"]["params"])
assert any(isinstance(x.get("choices"), list) for tt in d["types"] for x in tt["params"])'
js validate.json validate stack.json
parse validate.json 'assert d["valid"] is True and d["complete"] is False and d["message"], d'

js pc.json pool create stack.json pool
parse pc.json 'c = d["created"]; assert c["pool"] == "pool" and c["data_blocks"] == 2048 and c["block_size"] == 131072, d'
js validate.json validate stack.json
parse validate.json 'assert d["valid"] is True and d["complete"] is True and d["message"] is None, d'
js tc.json thin create stack.json vm0 --size 64M --export
parse tc.json 'c = d["created"]; assert c == {"name": "vm0", "id": 0, "pool": "pool", "size": 64 << 20}, d'
js info.json info stack.json
parse info.json '
n = {x["name"]: x for x in d["nodes"]}
l = n["vm0"]["limits"]
assert l["size"] == 64 << 20 and isinstance(l["logical_block_size"], int), l
assert -1 not in l.values(), l
assert any(v is None for x in d["nodes"] for v in x["limits"].values()), "no unlimited value is null"'
js status.json status stack.json
parse status.json 'assert isinstance(d, list) and len(d) >= 4, d'
js prov.json provision stack.json vm0 0 4M
parse prov.json 'p = d["provisioned"]; assert p["dev"] == "vm0" and p["offset"] == 0 and p["length"] == 4 << 20, d'
js zero.json zero stack.json vm0 4M 1M
parse zero.json 'assert d["zeroed"]["length"] == 1 << 20, d'
js disc.json discard stack.json vm0 0 1M
parse disc.json 'assert d["discarded"]["length"] == 1 << 20, d'
js map.json map stack.json vm0
parse map.json 'assert isinstance(d, list) and all(isinstance(e["offset"], int) for e in d), d'
js ps.json pool status stack.json pool
parse ps.json 'assert isinstance(d, dict), d'
js tl.json thin list stack.json
parse tl.json 'assert [v["name"] for v in d] == ["vm0"], d'
js snap.json thin snap stack.json vm0 s0
parse snap.json 'assert d == {"created": {"name": "s0", "id": 1, "pool": "pool", "origin": "vm0"}}, d'
js rs.json thin resize stack.json vm0 +16M
parse rs.json 'assert d == {"resized": {"name": "vm0", "size": 80 << 20}}, d'
js ext.json pool extend stack.json pool +64M
parse ext.json 'assert d["extended"] == {"pool": "pool", "space": "data", "size": 320 << 20, "blocks": 2560, "grown": True}, d'
js del.json thin delete stack.json s0
parse del.json 'assert d == {"deleted": {"name": "s0", "pool": "pool"}}, d'
js check.json check pool.meta
parse check.json 'assert isinstance(d, dict), d'

js info.json info stack.json
# Through a holder's control socket: the same documents (timings aside).
"$THINSTACK" serve stack.json 2>serve.err &
SERVE_PID=$!
on_exit "kill $SERVE_PID 2>/dev/null; wait $SERVE_PID 2>/dev/null"
wait_for "[ -S stack.json.ctl ]"
js r.tc.json thin create stack.json vm1 --size 16M
parse r.tc.json 'assert d == {"created": {"name": "vm1", "id": 1, "pool": "pool", "size": 16 << 20}}, d'
js r.snap.json thin snap stack.json vm1 s1
parse r.snap.json 'assert d == {"created": {"name": "s1", "id": 2, "pool": "pool", "origin": "vm1"}}, d'
js r.del.json thin delete stack.json s1
parse r.del.json 'assert d == {"deleted": {"name": "s1", "pool": "pool"}}, d'
js r.rs.json thin resize stack.json vm0 80M
parse r.rs.json 'assert d == {"resized": {"name": "vm0", "size": 80 << 20}}, d'
js r.ext.json pool extend stack.json pool 320M
parse r.ext.json 'assert d["extended"] == {"pool": "pool", "space": "data", "size": 320 << 20, "blocks": 2560, "grown": False}, d'
js r.prov.json provision stack.json vm0 0 4M
parse r.prov.json 'p = d["provisioned"]; assert p["dev"] == "vm0" and p["offset"] == 0 and p["length"] == 4 << 20, d'
js r.info.json info stack.json
js r.status.json status stack.json
python3 - <<'PY' || fail "info through the socket differs: $(diff info.json r.info.json)"
import json
a, b = json.load(open("info.json")), json.load(open("r.info.json"))
na = {n["name"]: n["limits"] for n in a["nodes"]}
nb = {n["name"]: n["limits"] for n in b["nodes"]}
# The holder opened the stack read-write, info alone read-only: the sizes
# and which limits are unlimited agree.
for k in ("meta", "data"):
    for key in ("size", "logical_block_size", "max_discard_bytes", "max_provision_bytes"):
        assert na[k][key] == nb[k][key], (k, key, na[k], nb[k])
assert all(v != -1 for l in nb.values() for v in l.values()), nb
PY
parse r.status.json 'assert isinstance(d, list), d'
kill $SERVE_PID
wait $SERVE_PID 2>/dev/null || true
set +e

# Exit codes: 0 ok, 1 the operation failed, 2 usage.
code() { # WANT COMMAND...
  local want=$1
  shift
  "$THINSTACK" "$@" >/dev/null 2>&1
  local got=$?
  [ "$got" -eq "$want" ] || fail "thinstack $*: exit $got, want $want"
}
code 0 info stack.json
code 1 info missing.json
code 1 thin create stack.json vm0 --size 1M
code 1 validate missing.json
code 2 info
code 2 info stack.json --nope
code 2 nope
code 2 thin create stack.json vmx
code 2 provision stack.json vm0 zero 1M
# A failed validate --json still prints its document.
"$THINSTACK" validate missing.json --json >bad.json 2>/dev/null
parse bad.json 'assert d["valid"] is False and d["message"], d'
echo ok
