# The Python bindings as a user installs them, offline on Debian 12:
#  1. pip into a fresh venv with the system's site packages (setuptools,
#     wheel and pytest from Debian), recording the library named by
#     THINSTACK_LIBRARY at build time; the package's version is the
#     library's, and the whole pytest suite passes against the installed
#     package with nothing in the environment naming the library;
#  2. with nothing recorded, the library is found through pkg-config, and
#     without pkg-config's help the ImportError says what to set; pip
#     records pkg-config's library when THINSTACK_LIBRARY is not set;
#  3. cmake --install --component python into a plain venv (no system site
#     packages): the package finds the library of the same prefix.
. "$TS_SOURCE_DIR/tests/common/requires.sh"
requires cmake pkg-config
py=/usr/bin/python3
[ -x "$py" ] || py=$(command -v python3) || skip_or_fail "needs python3"
"$py" -c "import venv, ensurepip, setuptools, wheel, pytest" 2>/dev/null ||
  skip_or_fail "needs python3-venv, python3-setuptools, python3-wheel and python3-pytest"
lib=$TS_BUILD_DIR/libthinstack.so.0
[ -f "$lib" ] || fail "no $lib"
# Nothing from the machine's pip configuration (indexes, find-links).
export PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL THINSTACK_LIB THINSTACK_LIBRARY PYTHONPATH PKG_CONFIG_PATH
# A sanitized library in an uninstrumented interpreter needs its runtime first.
pre=()
asan=$(ldd "$lib" | awk '/lib(asan|tsan)\.so/ {print $3; exit}')
[ -n "$asan" ] && pre=(env "LD_PRELOAD=$asan" "ASAN_OPTIONS=detect_leaks=0")
# pip builds in the folder it is given: a copy keeps the source tree clean.
cp -r "$TS_SOURCE_DIR/bindings/python" "$TMP/src"
rm -rf "$TMP/src/build" "$TMP/src/"*.egg-info "$TMP/src/thinstack/_libpath.py"
cd "$TMP"

# 1. pip, recording the library.
"$py" -m venv --system-site-packages "$TMP/venv" || fail "python3 -m venv --system-site-packages"
vpy=$TMP/venv/bin/python
THINSTACK_LIBRARY=$lib "$TMP/venv/bin/pip" install --no-build-isolation --no-index "$TMP/src" \
  >"$TMP/pip.log" 2>&1 || { cat "$TMP/pip.log"; fail "pip install --no-build-isolation --no-index"; }
grep -q "Successfully installed thinstack-" "$TMP/pip.log" || fail "pip: $(cat "$TMP/pip.log")"
"${pre[@]}" "$vpy" - "$lib" "$TMP/venv" >"$TMP/where.log" 2>&1 <<'EOF' || fail "installed package: $(cat "$TMP/where.log")"
import os, sys, importlib.metadata as md
import thinstack
lib, venv = sys.argv[1:]
assert thinstack.__file__.startswith(os.path.realpath(venv) + "/") or thinstack.__file__.startswith(venv + "/"), thinstack.__file__
assert thinstack.library_path() == lib, thinstack.library_path()
assert md.version("thinstack") == thinstack.version(), (md.version("thinstack"), thinstack.version())
EOF
# The suite, against the installed package (conftest leaves sys.path alone).
"${pre[@]}" env THINSTACK_TEST_INSTALLED=1 TS_BUILD_DIR="$TS_BUILD_DIR" \
  "$vpy" -m pytest -q -p no:cacheprovider "$TS_SOURCE_DIR/tests/python" >"$TMP/pytest.log" 2>&1 ||
  { tail -n 40 "$TMP/pytest.log"; fail "pytest from the venv"; }
tail -n 1 "$TMP/pytest.log"
grep -q " passed" "$TMP/pytest.log" || fail "pytest ran nothing: $(tail -n 3 "$TMP/pytest.log")"

# 2. Nothing recorded: pkg-config of an installed library, then the hint.
rm "$TMP/venv/lib/"python3*/site-packages/thinstack/_libpath.py
cmake --install "$TS_BUILD_DIR" --prefix "$TMP/prefix" >"$TMP/install.log" 2>&1 ||
  { cat "$TMP/install.log"; fail "cmake --install"; }
pc=$(dirname "$(find "$TMP/prefix" -name thinstack.pc | head -n1)")
got=$(PKG_CONFIG_PATH=$pc "${pre[@]}" "$vpy" -c "import thinstack; print(thinstack.library_path())" 2>&1) ||
  fail "import through pkg-config: $got"
[ "$(realpath "$got")" = "$(realpath "$(dirname "$pc")/libthinstack.so.0")" ] || fail "pkg-config gave $got"
if ! ldconfig -p | grep -q libthinstack.so.0; then
  out=$("${pre[@]}" "$vpy" -c "import thinstack" 2>&1) && fail "imported with no library anywhere: $out"
  grep -q "cannot load libthinstack" <<<"$out" && grep -q "set THINSTACK_LIBRARY" <<<"$out" ||
    fail "the ImportError does not say what to set: $out"
fi
# pip records pkg-config's library when THINSTACK_LIBRARY is not set.
rm -rf "$TMP/src/build" "$TMP/src/"*.egg-info
PKG_CONFIG_PATH=$pc "$TMP/venv/bin/pip" install --force-reinstall --no-deps --no-build-isolation --no-index "$TMP/src" \
  >"$TMP/pip.log" 2>&1 || { cat "$TMP/pip.log"; fail "pip install with pkg-config"; }
got=$("${pre[@]}" "$vpy" -c "import thinstack; print(thinstack.library_path())" 2>&1) ||
  fail "import of the package pip built with pkg-config: $got"
[ "$got" = "$(realpath -s "$(dirname "$pc")/libthinstack.so.0")" ] || fail "pip recorded $got, not pkg-config's library"
out=$(THINSTACK_LIBRARY=/nonexistent/libthinstack.so.0 "${pre[@]}" "$vpy" -c "import thinstack" 2>&1) &&
  fail "a wrong THINSTACK_LIBRARY was not reported"
grep -q "THINSTACK_LIBRARY: /nonexistent/libthinstack.so.0" <<<"$out" || fail "wrong THINSTACK_LIBRARY: $out"

# 3. cmake --install into a plain venv.
"$py" -m venv "$TMP/plain" || fail "python3 -m venv"
ppy=$TMP/plain/bin/python
site=$("$ppy" -c "import sysconfig; print(sysconfig.get_path('purelib'))")
cmake --install "$TS_BUILD_DIR" --prefix "$TMP/plain" >"$TMP/install.log" 2>&1 ||
  { cat "$TMP/install.log"; fail "cmake --install into the venv"; }
cmake --install "$TS_BUILD_DIR" --prefix "$TMP/plain" --component python >"$TMP/install.log" 2>&1 ||
  { cat "$TMP/install.log"; fail "cmake --install --component python"; }
[ -f "$site/thinstack/__init__.py" ] || fail "the package is not in $site: $(cat "$TMP/install.log")"
mkdir "$TMP/s"
"${pre[@]}" "$ppy" - "$TMP/plain" "$TMP/s" >"$TMP/plain.log" 2>&1 <<'EOF' || fail "package installed by cmake: $(cat "$TMP/plain.log")"
import os, sys
import thinstack
venv, d = sys.argv[1:]
lib = thinstack.library_path()
assert os.path.realpath(lib).startswith(os.path.realpath(venv) + "/"), lib
cfg = {"version": 1, "layers": {"d": {"type": "file", "path": "d.img", "size": "1M", "create": True}},
       "exports": ["d"]}
with thinstack.open_string(cfg, base_dir=d) as s:
    s.device("d").write(4096, b"v" * 4096)
with thinstack.open_string(cfg, base_dir=d) as s:
    assert s.device("d").read(4096, 4096) == b"v" * 4096
EOF
echo "PASS"
