#!/usr/bin/env bash
# The CLI through a holder's control socket: `thinstack serve` holds a
# stack; pool status, thin list and map print exactly what they print when
# the CLI opens the stack itself; thin create/snap/resize/delete, provision
# and pool extend work and say what they say locally; `thinstack ctl` sends
# raw requests. A holder without a socket (--no-control) gets the CLI's
# EBUSY naming it; a socket left by a killed holder is not answered, so the
# CLI opens the stack itself, and the next holder replaces it. SIGTERM stops
# serve with a final commit: thin_check is clean and the volumes are there.
. "$TS_SOURCE_DIR/tests/common/requires.sh"
. "$TS_SOURCE_DIR/tests/common/exports.sh"
requires python3 thin_check
cd "$TMP"
write_pool_config stack.json 8M 256M 64K
"$THINSTACK" pool create stack.json pool >/dev/null
"$THINSTACK" thin create stack.json vm0 --size 64M --export >/dev/null
"$THINSTACK" provision stack.json vm0 1M 3M 2>/dev/null
"$THINSTACK" thin snap stack.json vm0 old >/dev/null

# What the CLI prints when it opens the stack itself.
local_out() {
  "$THINSTACK" pool status stack.json pool >"$1.status"
  "$THINSTACK" pool status stack.json pool --json >"$1.status.json"
  "$THINSTACK" thin list stack.json >"$1.list"
  "$THINSTACK" thin list stack.json --json >"$1.list.json"
  "$THINSTACK" map stack.json vm0 >"$1.map"
  "$THINSTACK" map stack.json vm0 0 8M --json >"$1.map.json"
}
local_out here

SERVE_PID=
serve() {
  "$THINSTACK" serve stack.json "$@" 2>serve.err &
  SERVE_PID=$!
  on_exit "kill $SERVE_PID 2>/dev/null; wait $SERVE_PID 2>/dev/null"
}
serve
wait_for "[ -S stack.json.ctl ]"
[ "$(stat -c %a stack.json.ctl)" = 600 ] || fail "the socket's mode is $(stat -c %a stack.json.ctl)"
local_out routed
for f in status status.json list list.json map map.json; do
  cmp -s "here.$f" "routed.$f" || fail "$f differs through the socket:
$(diff "here.$f" "routed.$f")"
done

# Changes through the socket say what they say locally.
expect() { # expect TEXT COMMAND...
  local want=$1
  shift
  "$@" >out 2>&1 || fail "$*: $(cat out)"
  grep -qF "$want" out || fail "$* printed: $(cat out)"
}
expect "volume vm1 (id 2, 16M) created in pool pool" "$THINSTACK" thin create stack.json vm1 --size 16M
expect "volume s0 (id 3) created in pool pool as a snapshot of vm0" "$THINSTACK" thin snap stack.json vm0 s0
expect "volume vm0 is now 96M" "$THINSTACK" thin resize stack.json vm0 +32M
expect "volume vm1 is now 8M" "$THINSTACK" thin resize stack.json vm1 8M
# A volume the holder opened cannot go; one made since (not open) can.
if "$THINSTACK" thin delete stack.json old >out 2>&1; then fail "deleted the open volume old"; fi
grep -q "layers.old: the volume is open in this stack" out || fail "delete old said: $(cat out)"
expect "volume s0 deleted from pool pool" "$THINSTACK" thin delete stack.json s0
expect "volume s1 (id 3) created in pool pool as a snapshot of vm0" "$THINSTACK" thin snap stack.json vm0 s1
expect "provision 4M at 67108864 on vm0" "$THINSTACK" provision stack.json vm0 64M 4M
expect "pool pool: data space is now 320M (5120 blocks)" "$THINSTACK" pool extend stack.json pool +64M
expect "pool pool: data space is already 320M" "$THINSTACK" pool extend stack.json pool 320M
# The configuration followed every change.
python3 - <<'PY' || fail "the configuration: $(cat stack.json)"
import json
l = json.load(open("stack.json"))["layers"]
assert "s0" not in l and l["vm1"]["size"] in ("8M", 8 << 20), l
assert l["vm0"]["size"] in ("96M", 96 << 20) and l["s1"]["origin"] == "vm0", l
assert l["data"]["size"] in ("320M", 320 << 20), l["data"]
PY
# Raw requests.
"$THINSTACK" ctl stack.json rpc.methods >methods.json || fail "ctl rpc.methods"
python3 -c "import json; m = json.load(open('methods.json')); assert len(m) >= 20 and any(x['name'] == 'volume.create' and x['params']['size']['required'] for x in m), m" ||
  fail "rpc.methods: $(cat methods.json)"
"$THINSTACK" ctl stack.json io.map '{"dev": "vm0", "offset": "64M", "length": "4M"}' >map.json
python3 -c "import json; m = json.load(open('map.json')); assert m['extents'][0]['zero'] and not m['extents'][0]['hole'], m" ||
  fail "io.map: $(cat map.json)"
if "$THINSTACK" ctl stack.json volume.nope >out 2>err; then fail "an unknown method succeeded"; fi
grep -q '"errno":"ENOSYS"' err || fail "ctl of an unknown method: $(cat err)"
"$THINSTACK" ctl stack.json.ctl stack.status '{"node": "vm0"}' >out || fail "ctl on the socket path"
grep -q '"name": "vm0"' out || fail "stack.status: $(cat out)"

# SIGTERM: a final commit, the socket goes, the stack opens with all of it.
kill -TERM $SERVE_PID
wait $SERVE_PID || fail "serve exited with $?: $(cat serve.err)"
[ ! -e stack.json.ctl ] || fail "serve left its socket"
thin_check pool.meta >tc 2>&1 || { cat tc; fail "thin_check after serve"; }
"$THINSTACK" thin list stack.json >list || fail "thin list after serve"
[ "$(grep -cE '^(vm0|vm1|old|s1) ' list)" = 4 ] || fail "thin list after serve: $(cat list)"

# A holder without a socket: the CLI opens the stack and is refused.
serve --no-control
wait_for "grep -q serving serve.err"
[ ! -e stack.json.ctl ] || fail "--no-control made a socket"
if "$THINSTACK" provision stack.json vm0 0 1M >out 2>&1; then fail "provision beside a holder without a socket"; fi
grep -q "in use by pid $SERVE_PID (thinstack).*EBUSY" out || fail "the refusal: $(cat out)"
kill -TERM $SERVE_PID
wait $SERVE_PID || fail "serve --no-control exited with $?"

# A holder killed: its socket stays, answers nobody, and the CLI works
# alone; the next holder takes the path over.
serve
wait_for "[ -S stack.json.ctl ]"
kill -KILL $SERVE_PID
wait $SERVE_PID 2>/dev/null || true
[ -S stack.json.ctl ] || fail "no socket left to test with"
"$THINSTACK" thin list stack.json >/dev/null || fail "thin list beside a stale socket"
serve --control "$TMP/other.sock"
wait_for "[ -S '$TMP/other.sock' ]"
if "$THINSTACK" ctl stack.json rpc.methods >/dev/null 2>err; then fail "the stale socket answered"; fi
"$THINSTACK" ctl "$TMP/other.sock" rpc.methods >/dev/null || fail "ctl on --control PATH"
kill -TERM $SERVE_PID
wait $SERVE_PID || fail "serve --control exited with $?"
serve
wait_for "! [ -e '$TMP/other.sock' ] && grep -q 'serving.*stack.json.ctl' serve.err"
"$THINSTACK" ctl stack.json stack.info >/dev/null || fail "the next holder did not replace the stale socket"
kill -TERM $SERVE_PID
wait $SERVE_PID || fail "serve exited with $?"
thin_check pool.meta >tc 2>&1 || { cat tc; fail "thin_check at the end"; }
echo "PASS"
