#!/usr/bin/env bash
# Install into a temporary prefix, then build the installed examples against
# the installed library twice: with pkg-config and with
# find_package(thinstack). The installed CLI runs with a clean environment.
source "$TS_SOURCE_DIR/tests/common/requires.sh"
requires cc cmake pkg-config readelf
cmake --install "$TS_BUILD_DIR" --prefix "$TMP/first" > "$TMP/install.log" 2>&1 || { cat "$TMP/install.log"; fail "install"; }
# Moved after the install: what runs must find its library relative to
# itself, not through the path it was installed to.
mv "$TMP/first" "$TMP/prefix"
prefix="$TMP/prefix"
libdir=$(ls -d "$prefix"/lib*/ | head -n1)
libdir=${libdir%/}
test -f "$prefix/include/libthinstack/thinstack.h" || fail "headers not installed"
test -x "$prefix/bin/thinstack" || fail "CLI not installed"
rp=$(readelf -d "$prefix/bin/thinstack" | sed -n 's/.*(RUNPATH).*\[\(.*\)\]$/\1/p')
[[ "$rp" == '$ORIGIN/'* ]] || fail "the CLI's RUNPATH is '$rp': $(readelf -d "$prefix/bin/thinstack" | grep -i path)"
out=$(env -i PATH=/usr/bin:/bin "$prefix/bin/thinstack" --version 2>&1) || fail "installed CLI does not run in a clean environment: $out"
grep -q "^thinstack [0-9]" <<<"$out" || fail "installed CLI --version: $out"
loaded=$(env -i PATH=/usr/bin:/bin ldd "$prefix/bin/thinstack" | awk '$1 == "libthinstack.so.0" {print $3}')
loaded=$(realpath -s "$loaded")
[ "$loaded" = "$libdir/libthinstack.so.0" ] || fail "the installed CLI loads libthinstack from '$loaded', not $libdir"
docex="$prefix/share/doc/libthinstack/examples"
for ex in "$TS_SOURCE_DIR"/examples/ex-*.c; do
  cmp -s "$ex" "$docex/${ex##*/}" || fail "${ex##*/} is not installed in $docex"
done
export PKG_CONFIG_PATH="$libdir/pkgconfig" LD_LIBRARY_PATH="$libdir"
cc -std=c11 -Wall -Werror "$docex/ex-provision.c" -o "$TMP/ex-pc" \
   $(pkg-config --cflags --libs thinstack) || fail "pkg-config build"
"$TMP/ex-pc" | grep -q "after provisioning" || fail "pkg-config example did not run"

mkdir "$TMP/proj"
cat > "$TMP/proj/CMakeLists.txt" <<CM
cmake_minimum_required(VERSION 3.18)
project(uses_thinstack C)
find_package(thinstack REQUIRED)
add_executable(ex "$docex/ex-provision.c")
target_link_libraries(ex PRIVATE thinstack::thinstack)
CM
cmake -S "$TMP/proj" -B "$TMP/proj/build" -DCMAKE_PREFIX_PATH="$prefix" > "$TMP/cm.log" 2>&1 || { cat "$TMP/cm.log"; fail "find_package configure"; }
cmake --build "$TMP/proj/build" > "$TMP/cm.log" 2>&1 || { cat "$TMP/cm.log"; fail "find_package build"; }
"$TMP/proj/build/ex" | grep -q "after provisioning" || fail "find_package example did not run"
# Only the public API is exported from the shared library (besides the
# version node, an absolute symbol).
# (Outputs are read whole: under pipefail, grep -q ending early would make
# the writer die of SIGPIPE and the pipeline fail whatever grep found.)
extra=$(nm -D --defined-only "$libdir/libthinstack.so" | awk '$2 != "A" {print $3}' | grep -v '^ts_' || true)
[ -z "$extra" ] || { echo "$extra" | head; fail "non-ts_ symbols exported"; }
# And from the static library, only ts_ names are global: a program may
# define names the library uses inside (here pd_check, a metadata module's)
# and still link statically with it.
extra=$(nm -g --defined-only "$libdir/libthinstack.a" | awk 'NF==3{print $3}' | grep -v '^ts_[a-z]' || true)
[ -z "$extra" ] || { echo "$extra" | head; fail "non-ts_ symbols global in the static library"; }
cat > "$TMP/clash.c" <<'C'
#include <libthinstack/thinstack.h>
#include <stdio.h>
#include <string.h>
int pd_check(void);
int pd_check(void) { return 42; }
int main(void)
{
  ts_pool_check_result res;
  ts_error err = { 0 };
  int r = ts_pool_check("/nonexistent/pool.meta", 0, NULL, NULL, &res, &err);
  printf("%s %d %d\n", ts_version(), pd_check(), r);
  return 0;
}
C
cc -std=c11 -Wall -Werror $(pkg-config --cflags thinstack) "$TMP/clash.c" -o "$TMP/clash" \
   "$libdir/libthinstack.a" $(pkg-config --static --libs thinstack | sed 's/-lthinstack//') \
   > "$TMP/clash.log" 2>&1 || { cat "$TMP/clash.log"; fail "static link beside a program's own pd_check"; }
"$TMP/clash" | grep -q " 42 -2$" || fail "static program: $("$TMP/clash")"
dynsyms=$(objdump -T "$libdir/libthinstack.so")
grep -q "LIBTHINSTACK_0 *ts_version$" <<<"$dynsyms" || fail "ts_version is not in the LIBTHINSTACK_0 version node"
echo "install: ok"
