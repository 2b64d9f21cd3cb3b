# cargo test --offline of bindings/rust against this build's libthinstack,
# with everything cargo writes inside the build folder; the C compiler's
# struct sizes are handed to thinstack-sys's layout test; then the
# VMM-style worker example runs and verifies its requests.
. "$TS_SOURCE_DIR/tests/common/requires.sh"
requires cargo
cargo=$(command -v cargo)
# The rustc and rustdoc beside this cargo, not others found first on PATH.
for t in rustc rustdoc; do
  [ -x "$(dirname "$cargo")/$t" ] && export "${t^^}=$(dirname "$cargo")/$t"
done
export CARGO_TARGET_DIR=$TS_BUILD_DIR/cargo CARGO_HOME=$TS_BUILD_DIR/cargo-home
export THINSTACK_LIB_DIR=$TS_BUILD_DIR CARGO_TERM_COLOR=never
lib=$TS_BUILD_DIR/libthinstack.so
[ -f "$lib" ] || fail "no $lib"
# A sanitized library needs its runtime loaded first into the test programs.
asan=$(ldd "$lib" | awk '/lib(asan|tsan)\.so/ {print $3; exit}')
if [ -n "$asan" ]; then
  export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="env LD_PRELOAD=$asan ASAN_OPTIONS=detect_leaks=0"
fi

cat >"$TMP/layout.c" <<'C'
#include <libthinstack/thinstack.h>
#include <stdio.h>
#define S(t) printf("%s=%zu,", #t, sizeof(t))
int main(void)
{
  S(ts_error); S(ts_limits); S(ts_extent); S(ts_extent_list); S(ts_io); S(ts_open_opts);
  S(ts_thin_info); S(ts_pool_status); S(ts_volume_info);
  return 0;
}
C
"${TS_C_COMPILER:-cc}" -std=c11 -I"$TS_SOURCE_DIR/include" "$TMP/layout.c" -o "$TMP/layout" ||
  fail "cannot build the layout probe"
export TS_C_LAYOUT=$("$TMP/layout")
echo "C layout: $TS_C_LAYOUT"

cd "$TS_SOURCE_DIR/bindings/rust"
# --locked: Cargo.lock is committed and must not change.
cargo test --offline --locked 2>&1 | tee "$TMP/test.log" || fail "cargo test --offline"
grep -q "test tests::struct_sizes_match_the_c_headers ... ok" "$TMP/test.log" || fail "the layout test did not run"
passed=$(awk '/^test result: ok\./ {n += $4} END {print n + 0}' "$TMP/test.log")
[ "$passed" -ge 13 ] || fail "only $passed tests passed"
TMPDIR=$TMP cargo run --offline --locked --example vmm_worker >"$TMP/ex.log" 2>&1 ||
  { cat "$TMP/ex.log"; fail "the vmm_worker example failed"; }
cat "$TMP/ex.log"
grep -q "^516 requests completed and verified$" "$TMP/ex.log" || fail "vmm_worker: $(tail -n 3 "$TMP/ex.log")"
for d in bindings/rust/target bindings/rust/thinstack/target bindings/rust/thinstack-sys/target; do
  [ ! -e "$TS_SOURCE_DIR/$d" ] || fail "cargo wrote $d into the source tree"
done
echo "PASS"
