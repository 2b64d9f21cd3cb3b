#!/usr/bin/env bash
# The README's main job: `thinstack demo` runs end to end on sparse files,
# leaves clean metadata that Debian's thin_check accepts, and cleans up.
source "$TS_SOURCE_DIR/tests/common/requires.sh"
requires thin_check
cd "$TMP"
"$THINSTACK" demo --dir "$TMP" --size 64M --keep > out.txt 2>&1 || { cat out.txt; fail "demo failed"; }
cat out.txt
grep -q "PROVISION (vm0)" out.txt || fail "no provision row"
grep -q "thinstack check pool.meta: clean, 4 devices" out.txt || fail "metadata not clean"
dir=$(sed -n 's/^kept \([^ ]*\) .*/\1/p' out.txt)
[ -d "$dir" ] || fail "kept folder missing"
assert_thin_check "$dir/pool.meta" "after the demo"
"$THINSTACK" map "$dir/stack.json" vm0 --json | python3 -c '
import json, sys
m = json.load(sys.stdin)
assert m[0] == {"offset": 0, "length": 65536, "type": "data", "hole": False, "zero": False}, m[0]
assert m[1]["type"] == "zero" and m[-1]["type"] == "hole", m'
"$THINSTACK" demo --dir "$TMP/nothing-here" 2>err.txt && fail "demo in a missing folder succeeded"
grep -q "cannot create a folder" err.txt || fail "unclear error: $(cat err.txt)"
rm -rf "$dir"
"$THINSTACK" demo --dir "$TMP" --size 16M > /dev/null
[ -z "$(ls "$TMP" | grep thinstack-demo)" ] || fail "demo left its folder behind"
echo "demo: ok"
