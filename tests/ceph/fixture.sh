#!/usr/bin/env bash
# ctest fixture around start-ceph.sh / stop-ceph.sh: `fixture.sh start DIR`
# starts the cluster the rbd tests share, `fixture.sh stop DIR` stops it.
# Without the Ceph packages: skip (77) outside CI, fail under CI=true.
set -uo pipefail
here=$(dirname "$0")
export CEPH_DIR=$2
case $1 in
start)
  for t in ceph-mon ceph-osd ceph-mgr ceph rbd; do
    if ! command -v $t >/dev/null; then
      [ "${CI:-}" = true ] && { echo "FAIL: required under CI=true: needs $t" >&2; exit 1; }
      echo "SKIP: needs $t (ceph-mon ceph-osd ceph-mgr ceph-common)" >&2; exit 77
    fi
  done
  # A cluster left by an interrupted run of this build goes first.
  [ -d "$CEPH_DIR" ] && "$here/stop-ceph.sh"
  t0=$(date +%s%N)
  "$here/start-ceph.sh" || exit 1
  echo "ceph started in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
  ;;
stop)
  "$here/stop-ceph.sh"
  ;;
esac
