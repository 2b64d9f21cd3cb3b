# Helpers for the ownership tests: a command refused because another process
# owns the stack. Source after requires.sh.

# expect_busy_msg PID COMM COMMAND...: COMMAND fails and its stderr names a
# file of the stack and the holder "pid PID (COMM)".
expect_busy_msg() {
  local pid=$1 comm=$2
  shift 2
  if "$@" >"$TMP/busy.out" 2>"$TMP/busy.err"; then
    fail "$* succeeded while pid $pid owns the stack"
  fi
  grep -Eq '(meta|data)\.img (is in use|is open for writing|is open read-only) by ' "$TMP/busy.err" ||
    fail "$*: the refusal names no file of the stack: $(cat "$TMP/busy.err")"
  grep -qF "pid $pid ($comm)" "$TMP/busy.err" ||
    fail "$*: the refusal does not name pid $pid ($comm): $(cat "$TMP/busy.err")"
}

# expect_busy PID COMM COMMAND...: the same, and the error is EBUSY.
expect_busy() {
  expect_busy_msg "$@"
  grep -q "EBUSY" "$TMP/busy.err" || fail "${*:3}: not EBUSY: $(cat "$TMP/busy.err")"
}
