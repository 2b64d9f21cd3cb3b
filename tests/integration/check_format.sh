#!/usr/bin/env bash
# tools/check-format judges only the lines a change touched, in a scratch
# repository with the tree's .clang-format: on a branch, everything since the
# merge base with origin/main (a bad line in an earlier commit of the branch
# still fails); on main (origin/main at HEAD, as in a fresh clone) the last
# commit, or for a merge all it brought in; a first commit whole. Untouched
# badly laid out lines never count, and a formatted change passes.
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

passes() { tools/check-format > out.txt 2>&1 || fail "$1: refused: $(cat out.txt)"; }
refuses() {
  if tools/check-format > out.txt 2>&1; then fail "$1: accepted: $(cat out.txt)"; fi
  grep -q "^-$2" out.txt || fail "$1: the diff does not show \"$2\": $(cat out.txt)"
}
untouched_ignored() {
  if grep -q "^-int  old_style" out.txt; then fail "$1: an untouched line was judged: $(cat out.txt)"; fi
}
add() { printf '\n%s\n' "$2" >> "$1"; git add "$1"; git commit -q -m "$3"; }
published() { git update-ref refs/remotes/origin/main "$(git rev-parse "${1:-HEAD}")"; }

# A first commit is judged whole.
printf 'int  old_style( int a ){return a;}\n' > a.c
git add -A && git commit -q -m base
refuses "first commit" "int  old_style"

# A fresh clone of main: only the last commit.
add README "text" readme
published
passes "main, last commit without C"
untouched_ignored "main"
add a.c "int good(int a) { return a + 1; }" good
published
passes "main, formatted last commit"
add a.c "int  bad_main( int a ){return a;}" bad-main
published
refuses "main, badly laid out last commit" "int  bad_main"
untouched_ignored "main, bad commit"
add a.c "int later(int a) { return a - 1; }" later
published
passes "main, an earlier commit is not judged"

# A branch: everything since the merge base with origin/main.
git checkout -q -b work
add b.c "int  bad_branch( int a ){return a;}" bad-branch
add b.c "int fine(int a) { return a; }" fine
refuses "branch, bad line in an earlier commit" "int  bad_branch"
if grep -q "^-int  bad_main" out.txt; then fail "branch: a line of main was judged: $(cat out.txt)"; fi
git checkout -q main
git checkout -q -b clean
add c.c "int clean(int a) { return a; }" clean
passes "branch, formatted"

# The merge on main is judged on all it brought in.
git checkout -q main
git merge -q --no-ff -m "merge clean" clean
published
passes "main, merge of a formatted branch"
git merge -q --no-ff -m "merge work" work
published
refuses "main, merge of a badly laid out branch" "int  bad_branch"
untouched_ignored "merge"
# A shallow clone does not pass for a first commit.
git clone -q --depth 1 "file://$repo" "$TMP/shallow"
cp tools/check-format "$TMP/shallow/tools/"
if (cd "$TMP/shallow" && tools/check-format > "$repo/out.txt" 2>&1); then
  fail "shallow clone: judged: $(cat out.txt)"
fi
grep -q "shallow clone" out.txt || fail "shallow clone: no reason given: $(cat out.txt)"
echo "check_format: ok"
