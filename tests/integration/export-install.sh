# Installing puts thinstack-fuse in bin and the nbdkit plugin in
# <libdir>/nbdkit/plugins under the prefix (nbdkit's own folder when the
# prefix is /usr). Both carry a RUNPATH relative to themselves ($ORIGIN), so
# they run against the installed library from any prefix, even one moved
# after the install, with nothing in the environment pointing at it.
. "$TS_SOURCE_DIR/tests/common/requires.sh"
. "$TS_SOURCE_DIR/tests/common/exports.sh"
requires cmake readelf nbdinfo
[ -x "$FUSE_BIN" ] || skip_or_fail "thinstack-fuse was not built (needs libfuse3-dev)"
requires_nbdkit

cmake --install "$TS_BUILD_DIR" --prefix "$TMP/first" >"$TMP/install.log" 2>&1 ||
  { cat "$TMP/install.log"; fail "cmake --install failed"; }
outside=$(grep -E "(Installing|Up-to-date): " "$TMP/install.log" | grep -v ": $TMP/first/" || true)
[ -z "$outside" ] || fail "installed outside the prefix: $outside"
# Moving the whole prefix proves the paths are relative, not the install's.
mv "$TMP/first" "$TMP/moved"
prefix=$TMP/moved
libdir=$(dirname "$(find "$prefix" -name 'libthinstack.so.0' | head -n1)")
[ "$libdir" != . ] || fail "libthinstack.so.0 was not installed"
plugin=$libdir/nbdkit/plugins/nbdkit-thinstack-plugin.so
fuse=$prefix/bin/thinstack-fuse
[ -x "$fuse" ] || fail "thinstack-fuse is not in $prefix/bin"
[ -f "$plugin" ] || fail "the nbdkit plugin is not in $libdir/nbdkit/plugins: $(find "$prefix" -name '*.so')"

# RUNPATH (not the older RPATH, which would outrank LD_LIBRARY_PATH) relative
# to each file's own folder.
runpath() { readelf -d "$1" | sed -n 's/.*(RUNPATH).*\[\(.*\)\]$/\1/p'; }
for f in "$prefix/bin/thinstack" "$fuse" "$plugin"; do
  rp=$(runpath "$f")
  case "$rp" in
    '$ORIGIN'*) ;;
    *) fail "$f has RUNPATH '$rp', not one relative to \$ORIGIN: $(readelf -d "$f" | grep -i path)" ;;
  esac
done

# A clean environment: no LD_LIBRARY_PATH, no variable naming the build.
# A sanitized build's plugin needs its runtime preloaded into nbdkit.
clean=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin)
asan=$(ldd "$plugin" | awk '/lib(asan|tsan|ubsan)\.so/ {print $3; exit}')
[ -n "$asan" ] && clean+=("LD_PRELOAD=$asan" "ASAN_OPTIONS=detect_leaks=0")
lib_of() { realpath -s "$("${clean[@]}" ldd "$1" | awk '$1 == "libthinstack.so.0" {print $3}')"; }
for f in "$prefix/bin/thinstack" "$fuse" "$plugin"; do
  [ "$(lib_of "$f")" = "$libdir/libthinstack.so.0" ] ||
    fail "$f loads libthinstack from '$(lib_of "$f")', not $libdir: $("${clean[@]}" ldd "$f")"
done
"${clean[@]}" "$fuse" --version >"$TMP/fuse.out" 2>&1 || fail "installed thinstack-fuse does not run: $(cat "$TMP/fuse.out")"
grep -q "libthinstack" "$TMP/fuse.out" || fail "thinstack-fuse --version: $(cat "$TMP/fuse.out")"
"${clean[@]}" nbdkit --dump-plugin "$plugin" >"$TMP/dump.log" 2>&1 || { cat "$TMP/dump.log"; fail "nbdkit cannot load the installed plugin"; }
grep -q "^name=thinstack$" "$TMP/dump.log" || fail "unexpected plugin dump: $(cat "$TMP/dump.log")"
grep -q "^thread_model=parallel$" "$TMP/dump.log" || fail "the plugin is not parallel: $(cat "$TMP/dump.log")"

# The installed plugin serves a real stack, named by its path as the README
# says: what the installed CLI wrote is what an NBD client reads.
mkdir "$TMP/s"
config=$(THINSTACK="$prefix/bin/thinstack" write_stack "$TMP/s" 8M)
printf 'installed plugin\n' >"$TMP/msg"
truncate -s 4096 "$TMP/msg"
"${clean[@]}" "$prefix/bin/thinstack" write "$config" vm0 65536 -i "$TMP/msg" >"$TMP/w.log" 2>&1 ||
  fail "installed thinstack write: $(cat "$TMP/w.log")"
"${clean[@]}" nbdkit -U - "$plugin" config="$config" control= \
  --run "nbdinfo --size \"\$uri\" && nbdcopy \"\$uri\" '$TMP/out.img'" >"$TMP/nbd.out" 2>"$TMP/nbd.err" ||
  fail "nbdkit with the installed plugin: $(cat "$TMP/nbd.err")"
[ "$(cat "$TMP/nbd.out")" = $((8 << 20)) ] || fail "nbdinfo --size: $(cat "$TMP/nbd.out")"
cmp -s -i 65536:0 -n 4096 "$TMP/out.img" "$TMP/msg" ||
  fail "the NBD export does not read back what was written at 64K"
echo "PASS"
