#!/usr/bin/env bash
# tools/check-format judges only the lines a change touched: in a scratch
# repository with the tree's .clang-format, a commit after a merge that adds
# a well laid out function passes, one that adds a badly laid out one fails
# and shows it, and untouched badly laid out lines never count.
source "$TS_SOURCE_DIR/tests/common/requires.sh"
requires git git-clang-format
repo=$TMP/repo
mkdir -p "$repo/tools"
cp "$TS_SOURCE_DIR/.clang-format" "$repo/"
cp "$TS_SOURCE_DIR/tools/check-format" "$repo/tools/"
cd "$repo"
git init -q -b main .
git config user.email t@example.org
git config user.name t
printf 'int  old_style( int a ){return a;}\n' > a.c   # never touched again
git add -A && git commit -q -m base
git checkout -q -b work && printf '\n' >> README && git add README && git commit -q -m work
git checkout -q main && git merge -q --no-ff -m merge work
printf '\nint good(int a) { return a + 1; }\n' >> a.c
git commit -q -am good
tools/check-format > out.txt 2>&1 || fail "a formatted change refused: $(cat out.txt)"
printf '\nint  bad( int a ){return a;}\n' >> a.c
git commit -q -am bad
if tools/check-format > out.txt 2>&1; then fail "a badly formatted change accepted"; fi
grep -q "^-int  bad" out.txt || fail "the diff does not show the bad line: $(cat out.txt)"
grep -q "^-int  old_style" out.txt && fail "an untouched line was judged: $(cat out.txt)"
echo "check_format: ok"
