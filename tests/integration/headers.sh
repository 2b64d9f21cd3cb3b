#!/usr/bin/env bash
# Every public header compiles on its own, as C11 and as C++ (extern "C").
source "$TS_SOURCE_DIR/tests/common/requires.sh"
requires cc c++
inc="$TS_SOURCE_DIR/include"
for h in "$inc"/libthinstack/*.h; do
  name=libthinstack/$(basename "$h")
  printf '#include <libthinstack/thinstack.h>\n#include <%s>\n#include <%s>\n' "$name" "$name" > "$TMP/t.c"
  cc -std=c11 -Wall -Wextra -Werror -pedantic -fsyntax-only -I"$inc" $(pkg-config --cflags jansson libuv) "$TMP/t.c" || fail "$name as C11"
  cp "$TMP/t.c" "$TMP/t.cpp"
  c++ -std=c++17 -Wall -Werror -fsyntax-only -I"$inc" $(pkg-config --cflags jansson libuv) "$TMP/t.cpp" || fail "$name as C++"
done
# Every public call has its TS_HAVE_ macro (a call added without one fails here).
for h in "$inc"/libthinstack/*.h; do
  for f in $(grep -o 'TS_EXTERN[^;(]*\bts_[a-z0-9_]* *(' "$h" | grep -o 'ts_[a-z0-9_]* *(' | tr -d ' ('); do
    grep -q "^#define TS_HAVE_${f^^} 1$" "$h" || fail "$(basename "$h"): $f has no TS_HAVE_${f^^}"
  done
done
echo "headers: ok"
