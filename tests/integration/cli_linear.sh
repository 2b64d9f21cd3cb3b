#!/usr/bin/env bash
# The CLI on a linear stack over two sparse files: provision allocates exactly
# the range in the backing files, discard gives it back, zero reads zeroes,
# map reports each state, and errors are one clear line with a non-zero exit.
source "$TS_SOURCE_DIR/tests/common/requires.sh"
cd "$TMP"
cat > stack.json <<'JSON'
{ "version": 1,
  "layers": {
    "a": { "type": "file", "path": "a.img", "size": "1G", "create": true },
    "b": { "type": "file", "path": "b.img", "size": "1G", "create": true },
    "disk": { "type": "linear", "segments": [ { "child": "a" }, { "child": "b" } ] } },
  "exports": ["disk"] }
JSON
alloc() { echo $(( $(stat -c %b a.img) * 512 + $(stat -c %b b.img) * 512 )); }

"$THINSTACK" validate stack.json | grep -q "valid" || fail "validate"
[ ! -e a.img ] || fail "validate created a file"
# info only reads: a writing command makes the files.
"$THINSTACK" flush stack.json disk
"$THINSTACK" info stack.json > info.txt
grep -q "^disk .*linear" info.txt || fail "info: $(cat info.txt)"
"$THINSTACK" info stack.json --json | python3 -c '
import json,sys
d = json.load(sys.stdin)
disk = [n for n in d["nodes"] if n["name"] == "disk"][0]
assert disk["exported"] and disk["limits"]["size"] == 2 << 30, disk
# info opens read-only, so write-type ops read "none"; the devices still
# say what they take.
assert disk["limits"]["read_only"] and disk["limits"]["ops"]["provision"] == "none", disk
assert disk["limits"]["max_provision_bytes"] != 0, disk
'

# Provision 1 GiB straddling the two files: st_blocks grows by ~1 GiB.
before=$(alloc)
"$THINSTACK" provision stack.json disk 512M 1G
after=$(alloc)
grown=$(( after - before ))
[ "$grown" -ge $((1 << 30)) ] && [ "$grown" -lt $(( (1 << 30) + (8 << 20) )) ] || fail "provision grew $grown bytes"
"$THINSTACK" map stack.json disk --json > map.json
python3 - <<'PY'
import json
m = json.load(open("map.json"))
prov = [e for e in m if e["type"] == "zero"]
assert sum(e["length"] for e in prov) == 1 << 30, m
assert prov[0]["offset"] == 512 << 20, m
assert all(e["type"] in ("zero", "hole") for e in m), m
PY

# Write data, read it back; zero reads back zeroes; discard gives space back.
head -c 1M /dev/urandom > data.bin
"$THINSTACK" write stack.json disk 1G -i data.bin --fua
"$THINSTACK" read stack.json disk 1G 1M -o back.bin
cmp data.bin back.bin || fail "read back differs"
"$THINSTACK" map stack.json disk 1G 1M | grep -q data || fail "written range not data in map"
"$THINSTACK" zero stack.json disk 1G 1M
"$THINSTACK" read stack.json disk 1G 1M -o back.bin
cmp back.bin <(head -c 1M /dev/zero) || fail "zero did not read back zeroes"
"$THINSTACK" zero stack.json disk 1G 1M --may-unmap --no-fallback
"$THINSTACK" discard stack.json disk 0 2G
[ "$(alloc)" -lt $((1 << 20)) ] || fail "discard left $(alloc) bytes allocated"
"$THINSTACK" map stack.json disk --json | python3 -c '
import json,sys
m = json.load(sys.stdin)
assert len(m) == 1 and m[0]["type"] == "hole" and m[0]["length"] == 2 << 30, m'
"$THINSTACK" flush stack.json disk

# Errors: one line on stderr, non-zero exit, nothing changed.
expect_err() {
  local want=$1; shift
  if "$THINSTACK" "$@" > out.txt 2> err.txt; then fail "$* succeeded"; fi
  [ "$(wc -l < err.txt)" -eq 1 ] || fail "$*: expected one error line: $(cat err.txt)"
  grep -q -- "$want" err.txt || fail "$*: error lacks '$want': $(cat err.txt)"
}
expect_err "Invalid argument" provision stack.json disk 2G 512
expect_err "Invalid argument" read stack.json disk 100 512
expect_err "not a size" provision stack.json disk 12Q 1M
expect_err 'no device or layer named "nope"' flush stack.json nope
expect_err "unknown command" frobnicate
expect_err "cannot read the configuration" info missing.json
echo '{ "version": 1, "layers": { "x": { "type": "file", "path": "x.img", "sise": 1 } } }' > bad.json
expect_err "layers.x.sise: unknown key" validate bad.json
"$THINSTACK" provision --help | grep -q "usage: thinstack provision" || fail "--help"
echo "cli_linear: ok"
