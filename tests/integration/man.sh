#!/usr/bin/env bash
# The manual pages install under share/man, format without a roff warning,
# and cover what the programs offer: a section per thinstack command with
# its --help usage, every option of thinstack-fuse and the nbdkit plugin,
# every layer type and parameter in thinstack-config(5).
source "$TS_SOURCE_DIR/tests/common/requires.sh"
source "$TS_SOURCE_DIR/tests/common/exports.sh"
requires man lexgrog groff cmake
prefix="$TMP/prefix"
cmake --install "$TS_BUILD_DIR" --prefix "$prefix" >"$TMP/install.log" 2>&1 ||
  { cat "$TMP/install.log"; fail "install"; }
export MANWIDTH=80 LC_ALL=C.UTF-8
# The bash completion goes where bash-completion looks for it.
cmp -s "$prefix/share/bash-completion/completions/thinstack" "$TS_SOURCE_DIR/tools/completion/thinstack" ||
  fail "bash completion not installed under share/bash-completion/completions"

pages="man1/thinstack.1 man1/thinstack-fuse.1 man1/nbdkit-thinstack-plugin.1
       man5/thinstack-config.5 man3/libthinstack.3"
for p in $pages; do
  f="$prefix/share/man/$p"
  [ -f "$f" ] || fail "$p not installed"
  # groff's own warnings (all of them) and man's, on stderr.
  groff -man -ww -z "$f" 2>"$TMP/warn" || fail "groff $p: exit $?"
  [ ! -s "$TMP/warn" ] || fail "groff warns on $p: $(cat "$TMP/warn")"
  man --warnings -l "$f" >"$TMP/page.txt" 2>"$TMP/warn" || fail "man -l $p: exit $?"
  [ ! -s "$TMP/warn" ] || fail "man warns on $p: $(cat "$TMP/warn")"
  # Markup the renderer did not take (a `code` span cut by a line end).
  ! grep -n '`' "$TMP/page.txt" >"$TMP/ticks" || fail "$p shows raw markup: $(head -3 "$TMP/ticks")"
  name=$(basename "$p" | sed 's/\.[0-9]$//')
  lexgrog "$f" >"$TMP/lex" 2>&1 || fail "lexgrog cannot parse $p's NAME: $(cat "$TMP/lex")"
  grep -q "\"$name - " "$TMP/lex" || fail "lexgrog $p: $(cat "$TMP/lex")"
  cp "$TMP/page.txt" "$TMP/$name.txt"
done

# thinstack(1): each command of `thinstack --help` has its own section,
# holding the usage its --help prints, line for line.
page="$TMP/thinstack.txt"
cmds=$("$THINSTACK" --help | sed -n '/^commands:/,$p' | awk 'NR > 1 { print $1 }')
[ "$(wc -w <<<"$cmds")" -ge 20 ] || fail "thinstack --help lists only: $cmds"
for c in $cmds; do
  grep -q "^   $c\$" "$page" || fail "thinstack(1) has no section for $c"
  # The section: from its heading to the next one.
  sed -n "/^   $c\$/,/^   [a-z][a-z-]*\$/p" "$page" >"$TMP/sect"
  "$THINSTACK" "$c" --help >"$TMP/help"
  while IFS= read -r line; do
    [ -n "$line" ] || continue
    grep -qF -- "$line" "$TMP/sect" || fail "thinstack(1), $c: missing the --help line \"$line\""
  done <"$TMP/help"
done
for s in EXIT\ STATUS OPTIONS; do grep -q "^$s" "$page" || fail "thinstack(1) has no $s"; done
grep -q "^       2" "$page" || fail "thinstack(1) does not document exit status 2"

# thinstack-fuse(1): every option of its --help.
if [ -x "$FUSE_BIN" ]; then
  "$FUSE_BIN" --help 2>&1 | sed -n '/^options:/,/^$/p' |
    awk '/^  -/ { print $1 ($1 == "-o" ? " " $2 : "") }' | sed 's/=.*/=/' >"$TMP/opts"
  [ "$(wc -l <"$TMP/opts")" -ge 6 ] || fail "thinstack-fuse --help options: $(cat "$TMP/opts")"
  while read -r o; do
    grep -qF -- "$o" "$TMP/thinstack-fuse.txt" || fail "thinstack-fuse(1) lacks $o"
  done <"$TMP/opts"
fi
# nbdkit-thinstack-plugin(1): every key= of the plugin's help.
if command -v nbdkit >/dev/null && [ -f "$NBD_PLUGIN" ]; then
  # A plugin built with a sanitizer needs its runtime loaded first.
  env=()
  rt=$(ldd "$NBD_PLUGIN" | awk '/lib(asan|tsan|ubsan)\.so/ {print $3; exit}')
  [ -z "$rt" ] || env=(env "LD_PRELOAD=$rt" "ASAN_OPTIONS=detect_leaks=0")
  "${env[@]}" nbdkit "$NBD_PLUGIN" --help >"$TMP/plugin-help" || fail "nbdkit plugin --help: exit $?"
  grep -o '^[a-z_]*=' "$TMP/plugin-help" >"$TMP/keys"
  [ "$(wc -l <"$TMP/keys")" -ge 3 ] || fail "plugin --help keys: $(cat "$TMP/keys")"
  while read -r k; do
    grep -qF -- "$k" "$TMP/nbdkit-thinstack-plugin.txt" || fail "nbdkit-thinstack-plugin(1) lacks $k"
  done <"$TMP/keys"
fi
# thinstack-config(5): every layer type and each of its parameters.
"$THINSTACK" types --json >"$TMP/types.json"
python3 - "$TMP/thinstack-config.txt" "$TMP/types.json" <<'PY' || fail "thinstack-config(5)"
import json, re, sys
page = open(sys.argv[1]).read()
types = json.load(open(sys.argv[2]))["types"]
assert len(types) >= 10, types
for t in types:
    m = re.search(r"^   %s\n(.*?)(?=^   \S|\Z)" % re.escape(t["name"]), page, re.M | re.S)
    assert m, "no section for layer type " + t["name"]
    for p in t["params"]:
        assert re.search(r"^       %s \(" % re.escape(p["key"]), m.group(1), re.M), \
            "%s: no parameter %s" % (t["name"], p["key"])
PY
echo ok
