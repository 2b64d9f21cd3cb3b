# thinstack dump-config: the dump of an opened stack validates, opens from
# another folder with the same devices, dumps to the same text, and shows a
# key only with --show-keys.
source "$(dirname "$0")/../common/requires.sh"
cd "$TMP"
key=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
cat > stack.json <<JSON
{ "version": 1,
  "layers": {
    "meta": { "type": "file", "path": "m.img", "size": "8M", "create": true },
    "data": { "type": "file", "path": "d.img", "size": "64M", "create": true },
    "pool": { "type": "thin-pool", "metadata": "meta", "data": "data", "create": true },
    "vol":  { "type": "thin", "pool": "pool", "id": 1, "size": "32M", "create": true },
    "enc":  { "type": "crypt", "child": "vol", "key": "$key" } },
  "exports": ["enc"] }
JSON
"$THINSTACK" flush stack.json enc                   # creates the files (info only reads)
# dump-config opens read-only: a config naming files that do not exist yet
# is refused rather than created.
sed 's/"m.img"/"absent.img"/' stack.json > absent.json
if "$THINSTACK" dump-config absent.json 2> err.txt; then fail "dump-config created a file"; fi
[ ! -e absent.img ] || fail "dump-config created absent.img"

"$THINSTACK" dump-config stack.json > masked.json
grep -q '"(hidden)"' masked.json || fail "key not masked: $(cat masked.json)"
if grep -q "$key" masked.json; then fail "key shown without --show-keys"; fi
"$THINSTACK" dump-config stack.json --show-keys > full.json
grep -q "\"$TMP/d.img\"" full.json || fail "paths not absolute: $(cat full.json)"
mkdir elsewhere
mv full.json elsewhere/
cd elsewhere
"$THINSTACK" validate full.json
"$THINSTACK" dump-config full.json --show-keys > again.json
cmp full.json again.json || fail "a dump of the dump differs"
"$THINSTACK" info full.json | grep -Eq '^enc +crypt +32M' || fail "re-opened stack: $("$THINSTACK" info full.json)"
echo ok
