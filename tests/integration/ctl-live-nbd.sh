#!/usr/bin/env bash
# Live control of the nbdkit plugin's export, reached as a file through
# nbdfuse: the scenario of ctl-live-fuse.sh (tests/common/ctl_live.sh), with
# the control socket set by control=PATH.
. "$TS_SOURCE_DIR/tests/common/requires.sh"
. "$TS_SOURCE_DIR/tests/common/exports.sh"
. "$TS_SOURCE_DIR/tests/common/ctl_live.sh"
requires_nbdkit
requires_root
requires nbdfuse fusermount3 fio python3 thin_check

CONFIG=$(live_stack "$TMP")
"$THINSTACK" flush "$CONFIG" vm0 || fail "creating the stack failed"
# The socket is named: the CLI finds it beside CONFIG only at CONFIG.ctl,
# so a link there leads it to the one asked for.
nbd_start config="$CONFIG" control="$TMP/control.sock"
wait_for "[ -S '$TMP/control.sock' ]"
ln -s "$TMP/control.sock" "$CONFIG.ctl"
mkdir -p "$TMP/nbd"
nbdfuse "$TMP/nbd" "$(nbd_uri vm0)" &
NBDFUSE=$!
on_exit "mountpoint -q '$TMP/nbd' && fusermount3 -u '$TMP/nbd'; wait $NBDFUSE 2>/dev/null"
wait_for "[ -e '$TMP/nbd/nbd' ]"
live_scenario "$CONFIG" "$TMP/nbd/nbd"
fusermount3 -u "$TMP/nbd"
wait $NBDFUSE || true
nbd_stop
[ ! -e "$TMP/control.sock" ] || fail "the control socket outlived nbdkit"
rm -f "$CONFIG.ctl"
live_check "$CONFIG"
echo "PASS"
