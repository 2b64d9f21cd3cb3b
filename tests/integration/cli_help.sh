#!/usr/bin/env bash
# Every command and subcommand answers --help and -h with its usage on
# stdout and exit 0, before opening anything (the config named does not
# exist); so do thinstack-fuse and the nbdkit plugin.
source "$TS_SOURCE_DIR/tests/common/requires.sh"
source "$TS_SOURCE_DIR/tests/common/exports.sh"
cd "$TMP"

helps() { # WORDS...: "$@ --help" and "$@ -h" print usage, exit 0
  local flag out
  for flag in --help -h; do
    out=$("$THINSTACK" "$@" "$flag" 2>err.txt) || fail "thinstack $* $flag: exit $? ($(cat err.txt))"
    [ -n "$out" ] || fail "thinstack $* $flag printed nothing on stdout"
    grep -qi "usage" <<<"$out" || fail "thinstack $* $flag: no usage: $out"
  done
  # After the positional arguments too, with a config that is not there
  # (the first argument of bench, pool and thin names what to run: their
  # own forms are tested below).
  [ $# -eq 1 ] && case $1 in bench | pool | thin) return ;; esac
  out=$("$THINSTACK" "$1" ${2:+$2} missing.json x --help 2>err.txt) ||
    fail "thinstack $1 ${2:-} missing.json x --help: exit $? ($(cat err.txt))"
  grep -qi "usage" <<<"$out" || fail "thinstack $1 ${2:-} ... --help: $out"
}

"$THINSTACK" --help | grep -q "^commands:" || fail "thinstack --help"
cmds=$("$THINSTACK" --help | sed -n '/^commands:/,$p' | awk 'NR > 1 { print $1 }')
[ "$(wc -w <<<"$cmds")" -ge 20 ] || fail "thinstack --help lists only: $cmds"
for c in $cmds; do
  helps "$c"
done
for s in create status extend extend-metadata; do helps pool "$s"; done
for s in create snap delete resize list; do helps thin "$s"; done
benches=$("$THINSTACK" bench --help | awk '/^benchmarks:/ { on = 1; next } on && /^  [a-z]/ { print $1 }')
[ "$(wc -w <<<"$benches")" -ge 4 ] || fail "bench --help lists only: $benches"
for b in $benches; do
  out=$("$THINSTACK" bench "$b" --help 2>err.txt) || fail "bench $b --help: exit $? ($(cat err.txt))"
  grep -q "usage: thinstack bench $b" <<<"$out" || fail "bench $b --help: $out"
done

# No arguments at all is a usage error (2), on stderr.
rc=0
"$THINSTACK" >out.txt 2>err.txt || rc=$?
[ $rc -eq 2 ] || fail "thinstack without arguments did not exit 2"
[ ! -s out.txt ] && [ -s err.txt ] || fail "thinstack without arguments: usage not on stderr"

if [ -x "$FUSE_BIN" ]; then
  "$FUSE_BIN" --help >out.txt 2>err.txt || fail "thinstack-fuse --help: exit $?"
  grep -qi usage out.txt || fail "thinstack-fuse --help: $(cat out.txt)"
fi
if command -v nbdkit >/dev/null && [ -f "$NBD_PLUGIN" ]; then
  nbdkit "$NBD_PLUGIN" --help >out.txt 2>err.txt || fail "nbdkit thinstack --help: exit $?"
  grep -q "config=<FILE>" out.txt || fail "nbdkit thinstack --help: $(cat out.txt)"
fi
echo ok
