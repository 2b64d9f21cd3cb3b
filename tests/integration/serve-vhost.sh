#!/usr/bin/env bash
# thinstack serve --vhost-user-blk: bad specifications are refused before the
# stack opens (usage, exit 2) or name what is wrong (exit 1, nothing left
# behind); a good one listens on a 0600 socket beside the control socket,
# refuses a second server on the same socket, and SIGTERM removes both
# sockets and commits (thin_check clean). What a VMM sees through the socket
# is tests/vhost/test_vhost_blk.c and tests/vm/test-vhost.sh.
source "$TS_SOURCE_DIR/tests/common/requires.sh"
requires thin_check
cd "$TMP"
cat > s.json <<'EOF'
{ "version": 1,
  "layers": {
    "meta": { "type": "file", "path": "meta.img", "size": "8M", "create": true },
    "data": { "type": "file", "path": "data.img", "size": "64M", "create": true },
    "pool": { "type": "thin-pool", "metadata": "meta", "data": "data", "create": true },
    "vm0":  { "type": "thin", "pool": "pool", "id": 0, "size": "32M", "create": true }
  },
  "exports": [ "vm0" ] }
EOF
expect() { # STATUS PATTERN ARGS...
  local want=$1 pat=$2 st=0; shift 2
  timeout 20 "$THINSTACK" serve s.json "$@" > out.txt 2>&1 || st=$?
  [ "$st" = "$want" ] || { cat out.txt; fail "serve $*: exit $st, not $want"; }
  grep -q -- "$pat" out.txt || { cat out.txt; fail "serve $*: no \"$pat\""; }
  echo "refused ($st): serve $*"
}
expect 2 "usage" --vhost-user-blk
expect 2 "expected SOCKET:DEVICE" --vhost-user-blk nodevice
expect 2 "expected SOCKET:DEVICE" --vhost-user-blk "$TMP/a.sock:"
expect 2 "unknown option \"color=red\"" --vhost-user-blk "$TMP/a.sock:vm0,color=red"
expect 2 "unknown option \"queues=x\"" --vhost-user-blk "$TMP/a.sock:vm0,queues=x"
expect 1 "exports no device \"pool\"" --vhost-user-blk "$TMP/a.sock:pool"
expect 1 "queues=65: at most 64" --vhost-user-blk "$TMP/a.sock:vm0,queues=65"
expect 1 "serial \"abcdefghijklmnopqrstuvwxyz\": longer than 20" \
  --vhost-user-blk "$TMP/a.sock:vm0,serial=abcdefghijklmnopqrstuvwxyz"
touch plain
expect 1 "plain exists and is not a socket" --vhost-user-blk "$TMP/plain:vm0"
[ ! -e a.sock ] && [ ! -e s.json.ctl ] || fail "a refused serve left a socket"

"$THINSTACK" serve s.json --vhost-user-blk "$TMP/a.sock:vm0,queues=2,serial=disk0" 2> serve.err &
pid=$!
cleanup_fns=("kill $pid 2>/dev/null" "${cleanup_fns[@]}")
for i in $(seq 100); do [ -S a.sock ] && [ -S s.json.ctl ] && break; sleep 0.1; done
[ -S a.sock ] || { cat serve.err; fail "no vhost-user socket"; }
[ "$(stat -c %a a.sock)" = 600 ] || fail "socket mode $(stat -c %a a.sock)"
grep -q "vhost-user-blk vm0 on $TMP/a.sock" serve.err || fail "no start line"
# The stack is held: a second serve is refused by the lock, and a server
# answering on the socket is not replaced.
expect 1 "in use by pid $pid" --no-control --vhost-user-blk "$TMP/a.sock:vm0"
kill -TERM $pid
wait $pid || { cat serve.err; fail "serve exited with $?"; }
[ ! -e a.sock ] && [ ! -e s.json.ctl ] || fail "sockets left after SIGTERM"
assert_thin_check meta.img "after serve"
echo "serve-vhost: ok"
