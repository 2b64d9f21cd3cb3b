#!/usr/bin/env bash
# Where a holder serves its control socket when told none: CONFIG.ctl beside
# the file; under $XDG_RUNTIME_DIR/thinstack/ (a 0700 folder) when CONFIG.ctl
# is too long for a socket address or the config's folder is read-only. The
# CLI finds the holder in both places (routing works while `serve` holds the
# stack, which it could not open itself), and with no place at all `serve`
# says so.
. "$TS_SOURCE_DIR/tests/common/requires.sh"
. "$TS_SOURCE_DIR/tests/common/exports.sh"
requires_root
requires python3
cd "$TMP"
mkdir -p files run
chmod 700 run
export XDG_RUNTIME_DIR=$TMP/run

# A stack whose pool files live in $TMP/files, whatever folder the config is in.
make_stack() { # DIR
  mkdir -p "$1"
  write_pool_config "$1/stack.json" 8M 64M 64K "$TMP/files/$2"
  "$THINSTACK" pool create "$1/stack.json" pool >/dev/null || fail "pool create in $1"
}

SERVE_PID=
serve() { # CONFIG
  "$THINSTACK" serve "$1" 2>serve.err &
  SERVE_PID=$!
  on_exit "kill $SERVE_PID 2>/dev/null; wait $SERVE_PID 2>/dev/null"
}
stop_serve() {
  kill -TERM "$SERVE_PID"
  wait "$SERVE_PID" || fail "serve exited with $?: $(cat serve.err)"
}
# The socket serve announced on stderr.
served() { sed -n 's/.*control socket \(.*\) until SIGTERM/\1/p' serve.err; }

check_routed() { # CONFIG SOCKET
  [ -S "$2" ] || fail "no socket at $2"
  [ "$(stat -c %a "$2")" = 600 ] || fail "$2 has mode $(stat -c %a "$2")"
  [ "$(stat -c %a "$(dirname "$2")")" = 700 ] || fail "$(dirname "$2") has mode $(stat -c %a "$(dirname "$2")")"
  "$THINSTACK" pool status "$1" pool >out 2>&1 || fail "pool status through $2: $(cat out)"
  grep -q "pool" out || fail "pool status printed: $(cat out)"
  "$THINSTACK" ctl "$1" pool.status >out 2>&1 || fail "ctl pool.status through $2: $(cat out)"
}

# 1. An ordinary folder: CONFIG.ctl, as before.
make_stack plain p
serve plain/stack.json
wait_for "[ -S plain/stack.json.ctl ]"
[ -z "$(ls run/thinstack 2>/dev/null)" ] || fail "a socket under XDG_RUNTIME_DIR too: $(ls run/thinstack)"
"$THINSTACK" pool status plain/stack.json pool >/dev/null 2>&1 || fail "pool status through CONFIG.ctl"
stop_serve

# 2. A path too long for sun_path (108 bytes).
long=$TMP/$(printf 'd%.0s' {1..60})/$(printf 'e%.0s' {1..60})
make_stack "$long" l
serve "$long/stack.json"
wait_for "[ -n \"\$(served)\" ]"
sock=$(served)
case "$sock" in
  "$XDG_RUNTIME_DIR"/thinstack/stack.json-*.ctl) ;;
  *) fail "serve chose $sock for a long path" ;;
esac
[ ! -e "$long/stack.json.ctl" ] || fail "a socket beside the long path"
check_routed "$long/stack.json" "$sock"
"$THINSTACK" thin create "$long/stack.json" vm0 --size 16M >out 2>&1 || fail "thin create through $sock: $(cat out)"
"$THINSTACK" ctl "$long/stack.json" volume.list >out 2>&1 || fail "ctl volume.list: $(cat out)"
grep -q '"vm0"' out || fail "volume.list printed: $(cat out)"
# Another spelling of the same file finds the same socket.
(cd "$long/.." && "$THINSTACK" pool status "./$(basename "$long")/stack.json" pool >/dev/null 2>&1) ||
  fail "a relative spelling of the long path does not reach the holder"
stop_serve
[ ! -e "$sock" ] || fail "$sock outlived serve"

# 3. A read-only folder (a read-only bind mount: root writes through modes).
make_stack ro r
mount --bind ro ro || fail "bind mount"
on_exit "umount '$TMP/ro'"
mount -o remount,bind,ro ro || fail "read-only remount"
serve ro/stack.json
wait_for "[ -n \"\$(served)\" ]"
sock=$(served)
case "$sock" in
  "$XDG_RUNTIME_DIR"/thinstack/stack.json-*.ctl) ;;
  *) fail "serve chose $sock for a read-only folder" ;;
esac
check_routed ro/stack.json "$sock"
stop_serve

# 4. Two configs of one name in different folders get different sockets.
serve "$long/stack.json"
wait_for "[ -n \"\$(served)\" ]"
s1=$(served)
"$THINSTACK" serve ro/stack.json 2>serve2.err &
pid2=$!
on_exit "kill $pid2 2>/dev/null; wait $pid2 2>/dev/null"
wait_for "grep -q 'until SIGTERM' serve2.err"
s2=$(sed -n 's/.*control socket \(.*\) until SIGTERM/\1/p' serve2.err)
[ "$s1" != "$s2" ] || fail "both holders serve $s1"
kill -TERM $pid2; wait $pid2 || fail "second serve: $(cat serve2.err)"
stop_serve

# 5. No place at all: a long path and no XDG_RUNTIME_DIR.
if XDG_RUNTIME_DIR= "$THINSTACK" serve "$long/stack.json" 2>err; then
  fail "serve ran without a control socket"
fi
grep -q "too long for a socket address and \$XDG_RUNTIME_DIR offers no other place" err ||
  fail "serve said: $(cat err)"
echo ok
