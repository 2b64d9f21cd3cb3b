# Shared helpers for shell integration tests: source this file.
# requires TOOL...  skip (exit 77) when a tool is missing; fail under CI=true.
set -euo pipefail
THINSTACK=${THINSTACK:-${TS_BUILD_DIR:-build}/thinstack}

skip_or_fail() {
  if [ "${CI:-}" = true ]; then echo "FAIL: required under CI=true: $*" >&2; exit 1; fi
  echo "SKIP: $*" >&2; exit 77
}
requires() { for t in "$@"; do command -v "$t" >/dev/null 2>&1 || skip_or_fail "needs $t"; done; }
requires_root() { [ "$(id -u)" = 0 ] || skip_or_fail "needs root"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
# sanitizer_env LIB: the environment (NAME=VALUE words, for env) that a
# program without instrumentation (python3) needs to load LIB when LIB was
# built with a sanitizer: the runtime first, and libstdc++ right after it,
# since ASan looks up the real __cxa_throw when it starts and librados
# throws C++ exceptions. Nothing when LIB is not sanitized.
sanitizer_env() {
  local rt cxx
  rt=$(ldd "$1" | grep -o '/[^ ]*lib[at]san\.so[^ ]*' || true)
  [ -n "$rt" ] || return 0
  cxx=$(ldd "$1" | grep -o '/[^ ]*libstdc++\.so[^ ]*' || true)
  echo "LD_PRELOAD=$rt${cxx:+:$cxx} ASAN_OPTIONS=detect_leaks=0"
}
# assert_thin_check META WHEN: Debian's thin_check exits 0 on META and says
# nothing but its progress lines (as ts_test_assert_thin_check in C).
assert_thin_check() {
  local out
  out=$(thin_check "$1" 2>&1) || fail "thin_check $1 $2: exit $?: $out"
  out=$(printf '%s\n' "$out" | grep -v -e '^examining ' -e '^checking space map counts' \
        -e '^TRANSACTION_ID=' -e '^METADATA_FREE_BLOCKS=' -e '^$' || true)
  [ -z "$out" ] || fail "thin_check $1 $2 said: $out"
}
# write_pool_config FILE META_SIZE DATA_SIZE BLOCK_SIZE [PREFIX]: a config
# with an empty thin pool over two new files PREFIX.meta and PREFIX.data
# (PREFIX defaults to "pool", relative to the config) and no exports.
write_pool_config() {
  local prefix=${5:-pool}
  cat >"$1" <<JSON
{ "version": 1,
  "layers": {
    "meta": { "type": "file", "path": "$prefix.meta", "size": "$2", "create": true },
    "data": { "type": "file", "path": "$prefix.data", "size": "$3", "create": true },
    "pool": { "type": "thin-pool", "metadata": "meta", "data": "data", "block_size": "$4" } },
  "exports": [] }
JSON
}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/ts-it-XXXXXX")
cleanup_fns=()
cleanup() { for f in "${cleanup_fns[@]}"; do eval "$f" || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
