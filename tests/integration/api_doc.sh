#!/usr/bin/env bash
# The HTML API reference builds from the public headers with every Doxygen
# warning an error (an undocumented call, field or macro fails), and every
# exported function is in it.
source "$TS_SOURCE_DIR/tests/common/requires.sh"
requires doxygen python3
doxyfile="$TS_BUILD_DIR/docs/api/Doxyfile"
[ -f "$doxyfile" ] || fail "$doxyfile not configured"
# Into a temporary folder, so parallel runs do not share an output tree.
{ cat "$doxyfile"; echo "OUTPUT_DIRECTORY = $TMP/api"; } >"$TMP/Doxyfile"
rc=0
doxygen "$TMP/Doxyfile" >"$TMP/log" 2>&1 || rc=$?
[ $rc -eq 0 ] || { cat "$TMP/log"; fail "doxygen: exit $rc"; }
grep -q "warning:" "$TMP/log" && { cat "$TMP/log"; fail "doxygen warned"; }
grep -q '^WARN_AS_ERROR *= *YES' "$doxyfile" || fail "WARN_AS_ERROR is not YES"
[ -f "$TMP/api/html/index.html" ] || fail "no html/index.html"
# Each TS_EXTERN function has its entry, with its header comment as text.
funcs=$(sed -n 's/^TS_EXTERN [^(]*[ *]\(ts_[a-z0-9_]*\)(.*/\1/p' "$TS_SOURCE_DIR"/include/libthinstack/*.h | sort -u)
[ "$(wc -w <<<"$funcs")" -ge 100 ] || fail "found only $(wc -w <<<"$funcs") public functions"
cat "$TMP"/api/html/*.html >"$TMP/all.html"
for f in $funcs; do
  grep -qF ">$f</a>" "$TMP/all.html" || fail "$f is not in the API reference"
done
grep -q "is past the end of vm0" "$TMP/api/html/io_8h.html" || fail "io.h's comments are not in the reference"
echo ok
