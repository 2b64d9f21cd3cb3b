#!/usr/bin/env bash
# Read-only commands never create or change anything: on a config whose files
# do not exist yet (every layer says "create": true), each exits non-zero,
# names the command that creates what is missing, never suggests setting
# "create": true, and leaves the folder's listing as it was; validate opens
# nothing and succeeds. Once the pool exists they run, beside each other, and
# still change nothing.
. "$TS_SOURCE_DIR/tests/common/requires.sh"
. "$TS_SOURCE_DIR/tests/common/exports.sh"
requires thin_check numfmt

CONFIG=$(write_stack "$TMP" 64M)
OUT=$(mktemp -d "${TMPDIR:-/tmp}/ts-it-out-XXXXXX") # outside the folder we list
on_exit "rm -rf '$OUT'"
# `ls -la` without "..", whose times other tests change.
listing() { ls -la --time-style=full-iso "$TMP" | grep -v ' \.\.$'; }
CREATES="thinstack pool create $CONFIG pool"

# `thin list` and `pool status` open their pool through code of their own
# that still creates files (and removes them again) and does not name the
# creating command: while they are named here their failures are printed,
# not counted. Empty it when that code opens read-only.
PENDING=""

# NAME EXPECTED COMMAND...: COMMAND fails, its message names EXPECTED and
# does not suggest "create", and the folder is unchanged.
refuses() {
  local name=$1 expected=$2
  shift 2
  listing >"$OUT/before"
  if "$@" >"$OUT/out" 2>"$OUT/err"; then
    fail "$name succeeded on a stack that does not exist: $(cat "$OUT/out")"
  fi
  listing >"$OUT/after"
  case " $PENDING " in
  *" $name "*)
    diff -u "$OUT/before" "$OUT/after" >&2 || echo "pending: $name changed the folder" >&2
    echo "pending: $name: $(cat "$OUT/err")" >&2
    return 0
    ;;
  esac
  diff -u "$OUT/before" "$OUT/after" >&2 || fail "$name changed the folder"
  grep -qF -- "$expected" "$OUT/err" || fail "$name: the message does not name \"$expected\": $(cat "$OUT/err")"
  ! grep -qF 'set "create"' "$OUT/err" || fail "$name suggests setting create, already true: $(cat "$OUT/err")"
}

refuses info "$CREATES" "$THINSTACK" info "$CONFIG"
refuses info-json "$CREATES" "$THINSTACK" info "$CONFIG" --json
refuses map "$CREATES" "$THINSTACK" map "$CONFIG" vm0
refuses status "$CREATES" "$THINSTACK" status "$CONFIG"
refuses dump-config "$CREATES" "$THINSTACK" dump-config "$CONFIG"
refuses dm-table "$CREATES" "$THINSTACK" dm-table "$CONFIG"
refuses read "$CREATES" "$THINSTACK" read "$CONFIG" vm0 0 4096
refuses check "thinstack pool create" "$THINSTACK" check "$TMP/meta.img"
refuses dump "thinstack pool create" "$THINSTACK" dump "$TMP/meta.img"
refuses -U-info "$CREATES" "$THINSTACK" -U info "$CONFIG"
refuses thin-list "$CREATES" "$THINSTACK" thin list "$CONFIG" --pool pool
refuses pool-status "$CREATES" "$THINSTACK" pool status "$CONFIG" pool
listing >"$OUT/before"
"$THINSTACK" validate "$CONFIG" >/dev/null || fail "validate refused a valid config"
listing >"$OUT/after"
diff -u "$OUT/before" "$OUT/after" >&2 || fail "validate changed the folder"

# validate checks against what exists, opening it read-only: a file whose
# size disagrees and a segment past its child's end are caught, and nothing
# changes.
truncate -s 1M "$TMP/small.img"
cat >"$TMP/mismatch.json" <<'EOF'
{ "version": 1, "layers": { "d": { "type": "file", "path": "small.img", "size": "2M",
  "create": true } }, "exports": ["d"] }
EOF
cat >"$TMP/segment.json" <<'EOF'
{ "version": 1, "layers": { "d": { "type": "file", "path": "small.img" },
  "l": { "type": "linear", "segments": [ { "child": "d", "offset": "512K", "length": "1M" } ] } },
  "exports": ["l"] }
EOF
listing >"$OUT/before"
if "$THINSTACK" validate "$TMP/mismatch.json" 2>"$OUT/err"; then fail "validate passed a size mismatch"; fi
grep -q "layers.d.size: .*small.img is 1048576 bytes, the configuration says 2097152" "$OUT/err" ||
  fail "validate: $(cat "$OUT/err")"
if "$THINSTACK" validate "$TMP/segment.json" 2>"$OUT/err"; then fail "validate passed a segment past its child"; fi
grep -q "layers.l" "$OUT/err" || fail "validate: $(cat "$OUT/err")"
listing >"$OUT/after"
diff -u "$OUT/before" "$OUT/after" >&2 || fail "validate changed the folder"
rm "$TMP/small.img" "$TMP/mismatch.json" "$TMP/segment.json"

# A plain file layer: the creating step is a writing open.
cat >"$TMP/file.json" <<'EOF'
{ "version": 1, "layers": { "d": { "type": "file", "path": "plain.img", "size": "1M",
  "create": true } }, "exports": ["d"] }
EOF
refuses file-info "open the stack for writing" "$THINSTACK" info "$TMP/file.json"

# Files there, metadata blank: a read-only open formats nothing.
truncate -s 16M "$TMP/meta.img"
truncate -s $((72 * 1048576)) "$TMP/data.img"
refuses blank-pool "$CREATES" "$THINSTACK" info "$CONFIG"
[ "$(stat -c %b "$TMP/meta.img")" = 0 ] || fail "a read-only command wrote the blank metadata"

# Once the pool exists, readers run and change nothing, two at once too.
"$THINSTACK" pool create "$CONFIG" pool >/dev/null || fail "pool create failed"
"$THINSTACK" flush "$CONFIG" vm0 || fail "flush failed"
sum() { sha256sum "$TMP/meta.img" "$TMP/data.img"; }
sum >"$OUT/sum.before"
listing >"$OUT/before"
for c in "info $CONFIG" "map $CONFIG vm0" "status $CONFIG" "dump-config $CONFIG" \
  "dm-table $CONFIG --device meta=/dev/M --device data=/dev/D" "check $TMP/meta.img" "dump $TMP/meta.img" "read $CONFIG vm0 0 4096"; do
  # shellcheck disable=SC2086
  "$THINSTACK" $c >/dev/null 2>"$OUT/err" || fail "$c failed: $(cat "$OUT/err")"
done
# read -o creates its output for the caller alone, whatever the umask.
(umask 022 && "$THINSTACK" read "$CONFIG" vm0 0 4096 -o "$OUT/read.bin") || fail "read -o failed"
[ "$(stat -c %a "$OUT/read.bin")" = 600 ] || fail "read -o created $(stat -c %a "$OUT/read.bin"), not 600"
"$THINSTACK" info "$CONFIG" >/dev/null & first=$!
"$THINSTACK" map "$CONFIG" vm0 >/dev/null || fail "map beside info failed"
wait "$first" || fail "info beside map failed"
sum >"$OUT/sum.after"
listing >"$OUT/after"
diff -u "$OUT/sum.before" "$OUT/sum.after" || fail "a read-only command changed the pool's files"
diff -u "$OUT/before" "$OUT/after" || fail "a read-only command changed the folder"
thin_check "$TMP/meta.img" >"$OUT/tc" 2>&1 || { cat "$OUT/tc"; fail "thin_check"; }
echo "PASS"
