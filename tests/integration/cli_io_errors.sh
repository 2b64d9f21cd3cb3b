#!/usr/bin/env bash
# A rejected request prints the reason the request path gave, and the
# control socket's io.* replies carry the same reason.
source "$TS_SOURCE_DIR/tests/common/requires.sh"
source "$TS_SOURCE_DIR/tests/common/exports.sh"
cd "$TMP"
cat > stack.json <<'JSON'
{ "version": 1,
  "layers": { "vm0": { "type": "file", "path": "vm0.img", "size": "1G", "create": true,
                       "block_size": 4096 } },
  "exports": ["vm0"] }
JSON
"$THINSTACK" flush stack.json vm0

set +e
"$THINSTACK" read stack.json vm0 0 100 > out 2> err; rc=$?
set -e
[ "$rc" = 1 ] || fail "unaligned read: exit $rc"
grep -q "offset 0 + length 100 is not a multiple of the logical block size 4096 of vm0: Invalid argument (EINVAL)" err \
  || fail "unaligned read: $(cat err)"
set +e
"$THINSTACK" read stack.json vm0 2G 4K > out 2> err; rc=$?
set -e
[ "$rc" = 1 ] || fail "read past the end: exit $rc"
grep -q "offset 2G is past the end of vm0 (1 GiB)" err || fail "read past the end: $(cat err)"
set +e
"$THINSTACK" discard stack.json vm0 512 4K > out 2> err; rc=$?
set -e
[ "$rc" = 1 ] || fail "unaligned discard: exit $rc"
grep -q "discard at offset 512 + length 4K is not a multiple of the logical block size 4096" err \
  || fail "unaligned discard: $(cat err)"

# Held by serve: the io.* replies say why too.
"$THINSTACK" serve stack.json 2>serve.err &
SERVE_PID=$!
on_exit "kill $SERVE_PID 2>/dev/null; wait $SERVE_PID 2>/dev/null"
wait_for "[ -S stack.json.ctl ]"
if "$THINSTACK" ctl stack.json io.discard '{"dev": "vm0", "offset": 512, "length": 4096}' \
    >out 2>err; then fail "an unaligned io.discard succeeded"; fi
grep -q "not a multiple of the logical block size 4096 of vm0" err || fail "io.discard: $(cat err)"
if "$THINSTACK" ctl stack.json io.map '{"dev": "vm0", "offset": "2G", "length": 4096}' \
    >out 2>err; then fail "io.map past the end succeeded"; fi
grep -q "offset 2G is past the end of vm0 (1 GiB)" err || fail "io.map: $(cat err)"
kill -TERM $SERVE_PID
wait $SERVE_PID || fail "serve exited with $?: $(cat serve.err)"
echo ok
