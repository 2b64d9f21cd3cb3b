#!/usr/bin/env bash
# Live control of a FUSE export: while fio writes and verifies through it
# and a tracked writer stamps blocks, the CLI alone creates a volume, takes
# 10 snapshots of the busy volume, grows it, provisions a range, reads pool
# status and sees a low-water event on a subscription (tests/common/ctl_live.sh).
# fio verifies; each snapshot, read after the export stopped, holds exactly
# the writes acknowledged around its command; thin_check is clean.
. "$TS_SOURCE_DIR/tests/common/requires.sh"
. "$TS_SOURCE_DIR/tests/common/exports.sh"
. "$TS_SOURCE_DIR/tests/common/ctl_live.sh"
requires_fuse
requires fio python3 thin_check

CONFIG=$(live_stack "$TMP")
fuse_mount "$CONFIG" "$TMP/mnt"
live_scenario "$CONFIG" "$TMP/mnt/vm0"
fuse_umount "$TMP/mnt"
[ ! -e "$CONFIG.ctl" ] || fail "the control socket outlived the export"
live_check "$CONFIG"
echo "PASS"
