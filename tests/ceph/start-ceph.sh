#!/usr/bin/env bash
# Start a throwaway single-node Ceph cluster on 127.0.0.1: one mon, one mgr,
# one memstore OSD and a size-1 pool "rbd" initialised for RBD. Everything
# lives under CEPH_DIR; tests/ceph/stop-ceph.sh stops exactly the daemons
# recorded here and removes it.
#   CEPH_DIR        state folder (default /tmp/ts-ceph); must not exist yet
#   CEPH_MEM_BYTES  memstore capacity (default 4 GiB; RAM is used as data lands)
#   CEPH_PORT_BASE  the mon listens on BASE (msgr2) and BASE+1 (v1) (default: the
#                   first free pair from 3300)
#   CEPH_TIMEOUT    seconds to wait for HEALTH_OK (default 120)
# Prints "export CEPH_CONF=..." on success.
set -euo pipefail

D=${CEPH_DIR:-/tmp/ts-ceph}
BYTES=${CEPH_MEM_BYTES:-4294967296}
P2=${CEPH_PORT_BASE:-}
if [ -z "$P2" ]; then  # the first free pair from 3300, so another cluster does not collide
  P2=3300
  while ss -Hltn "( sport = :$P2 or sport = :$((P2 + 1)) )" 2>/dev/null | grep -q .; do
    P2=$((P2 + 2))
  done
fi
P1=$((P2 + 1))
TIMEOUT=${CEPH_TIMEOUT:-120}
# Only the manager modules a cluster cannot run without stay enabled: the
# rest cost seconds of start-up and memory.
MGR_OFF="alerts influx insights iostat localpool mirroring nfs osd_perf_query osd_support
prometheus restful selftest snap_schedule stats telegraf test_orchestrator zabbix
diskprediction_local dashboard cephadm rook k8sevents"

t0=$(date +%s%N)
say() { printf '[start-ceph %5.1fs] %s\n' "$(( ($(date +%s%N) - t0) / 1000000 ))e-3" "$*"; }
die() { echo "start-ceph: $*" >&2; tail -n 20 "$D"/log/*.log >&2 2>/dev/null || true; exit 1; }
for t in ceph-mon ceph-osd ceph-mgr ceph ceph-authtool monmaptool rbd uuidgen; do
  command -v "$t" >/dev/null || die "needs $t (apt-get install ceph-mon ceph-osd ceph-mgr ceph-common)"
done
[ -e "$D" ] && die "$D already exists: stop that cluster first (tests/ceph/stop-ceph.sh)"
mkdir -p "$D"/{run,log,mon/a,mgr/x,osd/0}
FSID=$(uuidgen)
CONF=$D/ceph.conf
export CEPH_CONF=$CONF

cat > "$CONF" <<CONF
[global]
fsid = $FSID
mon host = [v2:127.0.0.1:$P2,v1:127.0.0.1:$P1]
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
keyring = $D/ceph.client.admin.keyring
run dir = $D/run
admin socket = $D/run/\$name.\$pid.asok
pid file = $D/run/\$name.pid
log file = $D/log/\$name.log
crash dir = $D/crash
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 2
mon data avail crit = 1
# A client killed with its image locked holds the lock until the OSD drops
# its watch: 5 s rather than 30, so that tests of crashes wait less.
osd client watch timeout = 5
[mon.a]
mon data = $D/mon/a
[mgr]
mgr disabled modules = $(echo $MGR_OFF)
[mgr.x]
mgr data = $D/mgr/x
keyring = $D/mgr/x/keyring
[osd.0]
osd data = $D/osd/0
keyring = $D/osd/0/keyring
osd objectstore = memstore
memstore device bytes = $BYTES
CONF

ceph-authtool --create-keyring "$D/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
ceph-authtool --create-keyring "$D/ceph.client.admin.keyring" --gen-key -n client.admin \
  --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >/dev/null
ceph-authtool "$D/mon.keyring" --import-keyring "$D/ceph.client.admin.keyring" >/dev/null
monmaptool --create --fsid "$FSID" --addv a "[v2:127.0.0.1:$P2,v1:127.0.0.1:$P1]" "$D/monmap" >/dev/null
ceph-mon --mkfs -i a --monmap "$D/monmap" --keyring "$D/mon.keyring" >>"$D/log/mkfs.out" 2>&1 ||
  die "mon mkfs failed"

# Daemons run in the foreground (-f) so that $! is the daemon itself: the pid
# file is what stop-ceph.sh signals, and nothing else.
start_daemon() {
  local n=$1; shift
  "$@" -f >>"$D/log/$n.out" 2>&1 &
  echo $! > "$D/run/started.$n.pid"
}
start_daemon mon.a ceph-mon -i a
timeout 60 bash -c 'until ceph --connect-timeout 5 mon stat >/dev/null 2>&1; do sleep 0.2; done' ||
  die "mon did not answer"
say "mon up"
ceph auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' mds 'allow *' > "$D/mgr/x/keyring"
start_daemon mgr.x ceph-mgr -i x

OSD_UUID=$(uuidgen)
OSD_KEY=$(ceph-authtool --gen-print-key)
OSD_ID=$(echo "{\"cephx_secret\": \"$OSD_KEY\"}" | ceph osd new "$OSD_UUID" -i -)
[ "$OSD_ID" = 0 ] || die "unexpected osd id $OSD_ID"
ceph-authtool --create-keyring "$D/osd/0/keyring" -n osd.0 --add-key "$OSD_KEY" >/dev/null
ceph-osd -i 0 --mkfs --osd-uuid "$OSD_UUID" >>"$D/log/mkfs.out" 2>&1 || die "osd mkfs failed"
start_daemon osd.0 ceph-osd -i 0
timeout 60 bash -c 'until ceph osd dump 2>/dev/null | grep -q "^osd.0 up"; do sleep 0.3; done' ||
  die "osd.0 not up"
say "osd up"

ceph osd pool create rbd 8 8 replicated >>"$D/log/setup.out" 2>&1 || die "pool create failed"
ceph osd pool set rbd size 1 --yes-i-really-mean-it >>"$D/log/setup.out" 2>&1 || true
timeout 60 rbd pool init rbd || die "rbd pool init failed"

end=$(( $(date +%s) + TIMEOUT ))
while :; do
  h=$(ceph health 2>/dev/null || true)
  if [[ $h == HEALTH_OK* ]] && ceph pg stat 2>/dev/null | grep -Eq '^([0-9]+) pgs: \1 active\+clean;'; then
    break
  fi
  [ "$(date +%s)" -lt "$end" ] || { ceph -s >&2 || true; die "no HEALTH_OK after ${TIMEOUT}s (last: $h)"; }
  sleep 0.5
done
say "cluster healthy"
echo "export CEPH_CONF=$CONF"
