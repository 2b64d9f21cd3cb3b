#!/usr/bin/env bash
# The pool and thin commands on a pool over sparse files: format, create,
# snapshot, list, status (text and JSON), extend and extend-metadata (the
# files and the configuration grow), delete; every error is one line with a non-zero exit;
# Debian's thin_check agrees with the result.
source "$TS_SOURCE_DIR/tests/common/requires.sh"
requires thin_check python3
cd "$TMP"
write_pool_config stack.json 8M 256M 128K
one_line_error() { # status file
  [ "$1" -ne 0 ] || fail "expected a failure"
  [ "$(wc -l < "$2")" -eq 1 ] || fail "expected one line of error, got: $(cat "$2")"
  grep -q '^thinstack: ' "$2" || fail "error line: $(cat "$2")"
}

set +e
"$THINSTACK" pool status stack.json pool 2> err.txt; one_line_error $? err.txt
grep -Eq 'holds no pool|does not exist' err.txt || fail "blank metadata: $(cat err.txt)"
set -e
"$THINSTACK" pool create stack.json pool | grep -q 'pool pool created: 2048 data blocks of 128K'
set +e
"$THINSTACK" pool create stack.json pool 2> err.txt; one_line_error $? err.txt
grep -q 'already exists' err.txt || fail "second create: $(cat err.txt)"
set -e
"$THINSTACK" thin create stack.json vm0 --size 1G --export | grep -q 'volume vm0 (id 0, 1G) created'
"$THINSTACK" provision stack.json vm0 0 64M > /dev/null
"$THINSTACK" thin snap stack.json vm0 snap7 | grep -q 'volume snap7 (id 1) created .* snapshot of vm0'
set +e
"$THINSTACK" thin create stack.json vm0 --size 1G 2> err.txt; one_line_error $? err.txt
grep -q 'already exists' err.txt || fail "second vm0: $(cat err.txt)"
"$THINSTACK" thin create stack.json vm9 --size 1G --id 0 2> err.txt; one_line_error $? err.txt
"$THINSTACK" thin snap stack.json nosuch snap8 2> err.txt; one_line_error $? err.txt
"$THINSTACK" thin delete stack.json nosuch 2> err.txt; one_line_error $? err.txt
"$THINSTACK" thin delete stack.json --id 99 2> err.txt; one_line_error $? err.txt
"$THINSTACK" thin create stack.json vm9 --size 1G --id 16777216 2> err.txt; [ $? -eq 2 ] || fail "bad id"
"$THINSTACK" thin create stack.json vm9 --size 1G --pool nosuch 2> err.txt; one_line_error $? err.txt
"$THINSTACK" thin create stack.json vm9 --size 1G --pool data 2> err.txt; one_line_error $? err.txt
grep -q 'not a thin-pool' err.txt || fail "$(cat err.txt)"
"$THINSTACK" thin create stack.json vm9 2> err.txt; [ $? -eq 2 ] || fail "create without --size"
"$THINSTACK" pool extend stack.json pool 100M 2> err.txt; one_line_error $? err.txt
"$THINSTACK" thin frob stack.json 2> err.txt; [ $? -eq 2 ] || fail "unknown subcommand"
set -e
for sub in create snap delete resize list; do
  "$THINSTACK" thin $sub --help | grep -q "^  $sub CONFIG" || fail "thin $sub --help"
done
for sub in create status extend extend-metadata; do
  "$THINSTACK" pool $sub --help | grep -q "^  $sub CONFIG" || fail "pool $sub --help"
done

"$THINSTACK" thin list stack.json > list.txt
grep -Eq '^vm0 +pool +0 +1.0G +64.0M ' list.txt || fail "list: $(cat list.txt)"
grep -Eq '^snap7 +pool +1 +1.0G +64.0M .* vm0' list.txt || fail "list: $(cat list.txt)"
"$THINSTACK" thin list stack.json --pool pool --json | python3 -c '
import json,sys
v = json.load(sys.stdin)
assert [x["id"] for x in v] == [0, 1], v
assert all(x["mapped_bytes"] == 64 << 20 for x in v), v
assert v[1]["origin"] == "vm0" and v[0]["origin"] is None, v
'
"$THINSTACK" pool status stack.json pool | grep -q '512 of 2048 blocks used'
"$THINSTACK" pool extend stack.json pool 512M | grep -q 'data space is now 512M'
[ "$(stat -c %s pool.data)" -eq $((512 << 20)) ] || fail "data file not grown"
grep -q '"size": "512M"' stack.json || fail "configuration not updated"
"$THINSTACK" pool status stack.json pool --json | python3 -c '
import json,sys
s = json.load(sys.stdin)
assert s["block_size"] == 128 << 10 and s["data"]["blocks"] == 4096, s
assert s["data"]["used"] == 512 and s["mode"] == "rw", s
assert sorted(v["id"] for v in s["volumes"]) == [0, 1], s
'
"$THINSTACK" thin delete stack.json vm0 | grep -q 'volume vm0 deleted'
! grep -q '"vm0": {' stack.json || fail "vm0 still in the configuration: $(cat stack.json)"
"$THINSTACK" pool status stack.json pool --json | python3 -c '
import json,sys
s = json.load(sys.stdin)
assert s["data"]["used"] == 512, s   # the snapshot still holds them
'
thin_check pool.meta > /dev/null 2> check.err || fail "thin_check: $(cat check.err)"
set +e
"$THINSTACK" pool extend-metadata stack.json pool 4M 2> err.txt; one_line_error $? err.txt
set -e
"$THINSTACK" pool extend-metadata stack.json pool 16M | grep -q 'metadata space is now 16M'
[ "$(stat -c %s pool.meta)" -eq $((16 << 20)) ] || fail "metadata file not grown"
grep -q '"size": "16M"' stack.json || fail "configuration not updated for the metadata"
"$THINSTACK" pool status stack.json pool --json | python3 -c '
import json,sys
s = json.load(sys.stdin)
assert s["metadata"]["blocks"] == 4096 and s["metadata"]["out_of_space"] is False, s
'
thin_check pool.meta > /dev/null 2> check.err || fail "thin_check after growing the metadata: $(cat check.err)"
# status opens read-only but shows the mode writers get; "ro" when CONFIG
# makes the pool read-only.
python3 -c '
import json
c = json.load(open("stack.json")); c["layers"]["pool"]["read_only"] = True
json.dump(c, open("ro.json", "w"))'
"$THINSTACK" pool status ro.json pool --json | python3 -c '
import json,sys; s = json.load(sys.stdin); assert s["mode"] == "ro", s'
"$THINSTACK" pool status stack.json pool | grep -q 'mode rw' || fail "pool status mode"
echo "cli_thin: ok"
