#!/usr/bin/env bash
# thinstack schema: a JSON Schema (draft 2020-12) that python3-jsonschema
# takes, under which every example configuration of the tree that the
# loader accepts (docs' and the README's JSON blocks, the fuzz seeds, the
# JSON the shell tests write) is valid, and mistakes the loader rejects
# (unknown key or type, wrong JSON type, bad size or enum, missing key) are
# rejected too. --layer TYPE prints one layer's object.
source "$TS_SOURCE_DIR/tests/common/requires.sh"
requires python3
python3 -c "import jsonschema" 2>/dev/null || skip_or_fail "needs python3-jsonschema"
cd "$TMP"
"$THINSTACK" schema >schema.json || fail "thinstack schema: exit $?"
"$THINSTACK" schema --layer thin >thin.json || fail "thinstack schema --layer thin: exit $?"
rc=0
"$THINSTACK" schema --layer nope >/dev/null 2>err.txt || rc=$?
[ $rc -eq 2 ] && grep -q 'no layer type "nope"' err.txt || fail "schema --layer nope: exit $rc, $(cat err.txt)"
"$THINSTACK" types --json >types.json

python3 - "$TS_SOURCE_DIR" "$THINSTACK" <<'PY' || fail "schema checks"
import glob, json, os, re, subprocess, sys
import jsonschema

src, thinstack = sys.argv[1], sys.argv[2]
schema = json.load(open("schema.json"))
assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
jsonschema.Draft202012Validator.check_schema(schema)
V = jsonschema.Draft202012Validator(schema)
types = json.load(open("types.json"))["types"]
# Every layer type and parameter is described, with its doc.
for t in types:
    d = schema["$defs"]["layer-" + t["name"]]
    assert d["description"] == t["summary"], t["name"]
    for p in t["params"]:
        assert p["key"] in d["properties"], (t["name"], p["key"])
        assert (p["key"] in d["required"]) == p["required"], (t["name"], p["key"])
        if p.get("choices"):
            assert d["properties"][p["key"]]["enum"] == p["choices"], (t["name"], p["key"])
assert schema["$defs"]["layer-crypt"]["properties"]["cipher"]["default"] == "aes-xts-plain64"
one = json.load(open("thin.json"))
jsonschema.Draft202012Validator.check_schema(one)
assert one["properties"]["type"] == {"const": "thin"} and "pool" in one["required"]

def loader_valid(doc, folder):
    """What `thinstack validate` says of doc, written in folder."""
    path = os.path.join(folder, ".schema-candidate.json")
    with open(path, "w") as f:
        json.dump(doc, f)
    out = subprocess.run([thinstack, "validate", "--json", path], capture_output=True, text=True)
    os.unlink(path)
    return json.loads(out.stdout)["valid"], json.loads(out.stdout)["message"]

# The examples: JSON blocks of the docs, fuzz seeds, quoted heredocs of tests.
cands = []
for md in [os.path.join(src, "README.md")] + glob.glob(src + "/docs/**/*.md", recursive=True):
    for m in re.finditer(r"```json\n(.*?)```", open(md).read(), re.S):
        cands.append((md, m.group(1)))
for f in glob.glob(src + "/tests/fuzz/seeds/config/*.json"):
    cands.append((f, open(f).read()))
for sh in glob.glob(src + "/tests/**/*.sh", recursive=True):
    for m in re.finditer(r"<<'(\w+)'\n(.*?)\n\1\n", open(sh).read(), re.S):
        cands.append((sh, m.group(2)))
os.makedirs("ex", exist_ok=True)
checked = 0
for where, text in cands:
    try:
        doc = json.loads(text)
    except ValueError:
        continue  # a fragment, or with "..." in it
    if not isinstance(doc, dict) or "layers" not in doc:
        continue
    ok, msg = loader_valid(doc, "ex")
    errs = sorted(V.iter_errors(doc), key=lambda e: e.path)
    if ok and errs:
        sys.exit("%s: the loader accepts it but the schema says: %s\n%s"
                 % (where, errs[0].message, json.dumps(doc)[:400]))
    checked += ok
print("examples valid under the schema:", checked)
assert checked >= 15, checked

# Mistakes: each is refused by the loader and by the schema.
good = {"version": 1, "layers": {
    "a": {"type": "file", "path": "a.img", "size": "1M", "create": True},
    "m": {"type": "memory", "size": 1048576},
    "d": {"type": "linear", "segments": [{"child": "a"}, {"child": "m", "offset": "0"}]},
    "f": {"type": "fault", "child": "d", "rules": [{"op": "write", "after": 3}]}},
    "exports": ["f"]}
assert loader_valid(good, "ex")[0] and not list(V.iter_errors(good))
import copy
def bad(change):
    doc = copy.deepcopy(good)
    change(doc)
    return doc
mistakes = {
    "unknown key": bad(lambda d: d["layers"]["a"].update(sise="1M")),
    "unknown type": bad(lambda d: d["layers"]["m"].update(type="memroy")),
    "wrong JSON type": bad(lambda d: d["layers"]["a"].update(create="yes")),
    "bad size": bad(lambda d: d["layers"]["m"].update(size="12Q")),
    "negative size": bad(lambda d: d["layers"]["m"].update(size=-1)),
    "bad enum": bad(lambda d: d["layers"]["f"]["rules"][0].update(op="wirte")),
    "missing key": bad(lambda d: d["layers"]["m"].pop("size")),
    "missing nested key": bad(lambda d: d["layers"]["f"]["rules"][0].pop("op")),
    "unknown nested key": bad(lambda d: d["layers"]["d"]["segments"][0].update(chld="a")),
    "empty required array": bad(lambda d: d["layers"]["d"].update(segments=[])),
    "no version": bad(lambda d: d.pop("version")),
    "version 2": bad(lambda d: d.update(version=2)),
    "unknown top-level key": bad(lambda d: d.update(layer={})),
    "no layers": bad(lambda d: d.update(layers={})),
    "export twice": bad(lambda d: d.update(exports=["f", "f"])),
}
for what, doc in mistakes.items():
    ok, msg = loader_valid(doc, "ex")
    assert not ok, "the loader accepts the mistake %s" % what
    assert list(V.iter_errors(doc)), "the schema accepts the mistake %s (loader: %s)" % (what, msg)
# Sizes: the schema takes what the loader's size parser takes, and no more.
for size in [4096, "64K", "64k", "1KiB", "2MB", "3GiB", "1T", "1P", "512B", "512b", "0",
             "1.5G", "12Q", "K", "1 G", "1KB2", "1kib", -1, 1.5]:
    doc = bad(lambda d: d["layers"]["m"].update(size=size))
    ok = loader_valid(doc, "ex")[0]
    assert ok == (not list(V.iter_errors(doc))), "size %r: loader %s, schema %s" % (
        size, ok, not ok)
# "$schema" is where an editor looks: the loader takes it.
assert loader_valid(dict(good, **{"$schema": "file:///usr/share/thinstack/schema.json"}), "ex")[0]
# With plugins, a type the schema cannot know passes; without, it does not.
plug = bad(lambda d: d["layers"].update(o={"type": "offset", "child": "m"}))
assert list(V.iter_errors(plug))
plug["plugins"] = ["ts-layer-offset.so"]
assert not [e for e in V.iter_errors(plug)], list(V.iter_errors(plug))
print("ok")
PY
echo ok
