# Installing puts thinstack-fuse in bin and the nbdkit plugin in
# <libdir>/nbdkit/plugins under the prefix (nbdkit's own folder when the
# prefix is /usr); both run from there against the installed library.
. "$TS_SOURCE_DIR/tests/common/requires.sh"
. "$TS_SOURCE_DIR/tests/common/exports.sh"
requires cmake
[ -x "$FUSE_BIN" ] || skip_or_fail "thinstack-fuse was not built (needs libfuse3-dev)"
requires_nbdkit

prefix=$TMP/prefix
cmake --install "$TS_BUILD_DIR" --prefix "$prefix" >"$TMP/install.log" 2>&1 ||
  { cat "$TMP/install.log"; fail "cmake --install failed"; }
libdir=$(dirname "$(find "$prefix" -name 'libthinstack.so' | head -n1)")
[ -n "$libdir" ] || fail "libthinstack.so was not installed"
plugin=$libdir/nbdkit/plugins/nbdkit-thinstack-plugin.so
[ -x "$prefix/bin/thinstack-fuse" ] || fail "thinstack-fuse is not in $prefix/bin"
[ -f "$plugin" ] || fail "the nbdkit plugin is not in $libdir/nbdkit/plugins: $(find "$prefix" -name '*.so')"
outside=$(grep -E "(Installing|Up-to-date): " "$TMP/install.log" | grep -v ": $prefix/" || true)
[ -z "$outside" ] || fail "installed outside the prefix: $outside"

export LD_LIBRARY_PATH=$libdir
"$prefix/bin/thinstack-fuse" --version | grep -q "libthinstack" || fail "thinstack-fuse --version"
NBD_PLUGIN=$plugin
env=()
asan=$(ldd "$plugin" | awk '/lib(asan|tsan|ubsan)\.so/ {print $3; exit}')
[ -n "$asan" ] && env=(env "LD_PRELOAD=$asan" "ASAN_OPTIONS=detect_leaks=0")
"${env[@]}" nbdkit --dump-plugin "$plugin" >"$TMP/dump.log" 2>&1 || { cat "$TMP/dump.log"; fail "nbdkit cannot load the installed plugin"; }
grep -q "^name=thinstack$" "$TMP/dump.log" || fail "unexpected plugin dump: $(cat "$TMP/dump.log")"
grep -q "^thread_model=parallel$" "$TMP/dump.log" || fail "the plugin is not parallel: $(cat "$TMP/dump.log")"
echo "PASS"
