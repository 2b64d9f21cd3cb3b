#!/usr/bin/env bash
# Stop the daemons tests/ceph/start-ceph.sh started, by the pids it recorded
# (only while each pid is still a ceph daemon), and remove CEPH_DIR.
#   CEPH_DIR   as for start-ceph.sh (default /tmp/ts-ceph)
#   CEPH_KEEP=1  keep the folder (logs)
set -uo pipefail
D=${CEPH_DIR:-/tmp/ts-ceph}
[ -d "$D/run" ] || { echo "stop-ceph: no cluster at $D"; exit 0; }
t0=$(date +%s%N)
# A daemon whose starting shell has gone is re-parented; once it exits it can
# linger as a zombie until its new parent reaps it: that counts as stopped.
alive() { grep -q '^State:[[:space:]]*[^Z[:space:]]' "/proc/$1/status" 2>/dev/null; }
for n in osd.0 mgr.x mon.a; do
  f=$D/run/started.$n.pid
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  if tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q "ceph-.* -i .* -f"; then
    # The data is thrown away: no need for memstore's save on a clean stop.
    kill -KILL "$pid" 2>/dev/null
    for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.1; done
    alive "$pid" && echo "stop-ceph: $n (pid $pid) still running" >&2
    wait "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
done
if [ "${CEPH_KEEP:-0}" = 1 ]; then echo "stop-ceph: kept $D"; else rm -rf "$D"; fi
echo "stop-ceph: stopped in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
