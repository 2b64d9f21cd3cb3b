#!/usr/bin/env bash
# The vhost-user-blk export under a real QEMU and the guest's own virtio-blk
# driver: `thinstack serve --vhost-user-blk` serves two thin volumes with 4
# queues each to a guest with 4 vCPUs (so blk-mq uses all four). In the
# guest: mkfs.ext4 and files whose sha256 it records, fstrim after deleting
# a file (the host sees vm0's mapped bytes fall), fio verify=crc32c with 4
# jobs on the file system while the host takes live snapshots through the
# control socket, and on the second disk blkdiscard and then fallocate -z of
# 1 GiB (the host sees vm1 provisioned by 1 GiB and data.img grow; the
# zeroing takes no more than about twice the discard). After power-off the
# host reads the files out of the volume with debugfs (no loop device, no
# mount) and compares the hashes, e2fsck -fn finds the volume and every
# snapshot taken under fio clean after journal recovery, and thin_check is
# clean.
source "$TS_SOURCE_DIR/tests/common/requires.sh"
source "$TS_SOURCE_DIR/tests/vm/lib.sh"
requires python3 debugfs e2fsck thin_check
cd "$TMP"

cat > stack.json <<'EOF'
{ "version": 1,
  "layers": {
    "meta": { "type": "file", "path": "meta.img", "size": "64M", "create": true },
    "data": { "type": "file", "path": "data.img", "size": "2G", "create": true },
    "pool": { "type": "thin-pool", "metadata": "meta", "data": "data",
              "block_size": "64K", "create": true },
    "vm0":  { "type": "thin", "pool": "pool", "id": 0, "size": "384M", "create": true },
    "vm1":  { "type": "thin", "pool": "pool", "id": 1, "size": "1280M", "create": true }
  },
  "exports": [ "vm0", "vm1" ] }
EOF
"$THINSTACK" serve stack.json --vhost-user-blk "$TMP/vm0.sock:vm0,queues=4" \
  --vhost-user-blk "$TMP/vm1.sock:vm1,queues=4" 2> serve.err &
serve_pid=$!
cleanup_fns=("kill $serve_pid 2>/dev/null; wait $serve_pid 2>/dev/null" "${cleanup_fns[@]}")
for i in $(seq 100); do [ -S vm1.sock ] && [ -S stack.json.ctl ] && break; sleep 0.1; done
[ -S vm1.sock ] || { cat serve.err; fail "serve did not start"; }

vol() { "$THINSTACK" thin list stack.json --json |
        python3 -c "import json,sys; print([v for v in json.load(sys.stdin) if v['name']=='$1'][0]['$2'])"; }
writes() { "$THINSTACK" status stack.json vm0 |
           python3 -c "import json,sys; print(json.load(sys.stdin)[0]['requests']['write']['requests'])"; }
data_before=$(stat -c %b data.img)

cat > guest.sh <<'EOF'
set -e
ms() { echo $(( ${EPOCHREALTIME/./} / 1000 )); }
echo "queues vda $(ls /sys/block/vda/mq | wc -l) vdb $(ls /sys/block/vdb/mq | wc -l)"
echo "limits $(cat /sys/block/vdb/queue/discard_max_bytes) $(cat /sys/block/vdb/queue/write_zeroes_max_bytes)"
mkfs.ext4 -q -E nodiscard /dev/vda
mkdir -p /mnt && mount -t ext4 /dev/vda /mnt
mkdir /mnt/keep
for i in 1 2 3 4; do dd if=/dev/urandom of=/mnt/keep/f$i bs=1M count=4 status=none; done
dd if=/dev/urandom of=/mnt/junk bs=1M count=48 status=none
sync
for i in 1 2 3 4; do echo "sha f$i $(sha256sum < /mnt/keep/f$i | cut -d' ' -f1)"; done
echo "phase written"; sleep 3
rm /mnt/junk; sync
fstrim -v /mnt
echo "phase trimmed"; sleep 3
echo "phase fio"
fio --name=v --directory=/mnt --rw=randwrite --bs=4k --size=6M --numjobs=4 --iodepth=8 \
    --ioengine=libaio --direct=1 --verify=crc32c --verify_fatal=1 --group_reporting \
    --minimal > /tmp/fio.out 2>&1 || { cat /tmp/fio.out; exit 1; }
echo "fio ok error=$(cut -d';' -f5 /tmp/fio.out)"
sync
umount /mnt
t0=$(ms); blkdiscard -o 0 -l 1G /dev/vdb; t1=$(ms)
fallocate -z -o 0 -l 1G /dev/vdb; t2=$(ms)
echo "zeroing discard_ms $((t1 - t0)) zero_ms $((t2 - t1))"
dd if=/dev/vdb of=/tmp/z bs=1M count=4 skip=100 iflag=direct status=none
cmp -n 4194304 /tmp/z /dev/zero && echo "zeroed reads zero"
EOF

# The host's side while the guest runs: vm0's mapped bytes every half
# second; once they have fallen by the trimmed file (the guest is at fio), a
# snapshot of vm0 every 2 s, each with vm0's write count just before and
# just after it.
( n=0 last=0 peak=0 trimmed=
  while kill -0 $serve_pid 2>/dev/null && [ ! -e guest.done ]; do
    m=$(vol vm0 mapped_bytes)
    echo "mapped $m" >> samples.txt
    [ "$m" -gt "$peak" ] && peak=$m
    [ -z "$trimmed" ] && [ "$m" -le $((peak - (40 << 20))) ] && trimmed=1
    now=$(date +%s)
    if [ -n "$trimmed" ] && [ $n -lt 6 ] && [ $((now - last)) -ge 2 ]; then
      w0=$(writes)
      if "$THINSTACK" thin snap stack.json vm0 "snap$n" >/dev/null 2>>snap.err; then
        w1=$(writes); echo "snap snap$n $w0 $w1" >> samples.txt; n=$((n + 1))
      fi
      last=$now
    fi
    sleep 0.5
  done ) &
sampler=$!
t0=$(date +%s)
TS_VM_CPUS=4 vm_run -V "$TMP/vm0.sock:4" -V "$TMP/vm1.sock:4" -t 600 guest.sh
echo "guest run: $(( $(date +%s) - t0 ))s"
touch guest.done
wait $sampler

grep -qx "queues vda 4 vdb 4" "$TMP/vm.out" || fail "the guest does not use 4 queues per disk"
grep -qx "fio ok error=0" "$TMP/vm.out" || fail "fio verify"
grep -qx "zeroed reads zero" "$TMP/vm.out" || fail "fallocate -z range does not read zero"

# fstrim: vm0's mapped bytes fell by most of the 48M file after the trim.
peak=$(awk '$1 == "mapped" {print $2}' samples.txt | sort -n | tail -1)
after_trim=$(python3 - <<'EOF'
m = [int(l.split()[1]) for l in open("samples.txt") if l.startswith("mapped")]
peak_i = max(range(len(m)), key=lambda i: m[i])
print(min(m[peak_i:]))
EOF
)
echo "vm0 mapped: peak $peak, lowest after it $after_trim"
[ $((peak - after_trim)) -ge $((40 << 20)) ] || fail "fstrim freed only $((peak - after_trim)) bytes"

# fallocate -z: 1 GiB provisioned on vm1 and in data.img, in about the time
# of a discard of the same range.
prov=$(vol vm1 provisioned_bytes)
echo "vm1 provisioned $prov"
[ "$prov" -ge $((1 << 30)) ] || fail "vm1 provisioned $prov bytes, not 1 GiB"
data_after=$(stat -c %b data.img)
echo "data.img grew $(( (data_after - data_before) * 512 )) bytes"
[ $(( (data_after - data_before) * 512 )) -ge $((1 << 30)) ] || fail "data.img did not grow by 1 GiB"
read -r dms zms < <(awk '$1 == "zeroing" {print $3, $5}' "$TMP/vm.out")
echo "blkdiscard ${dms} ms, fallocate -z ${zms} ms"
# Twice the discard, with 300 ms of slack for TCG's timer noise at small values.
[ "$zms" -le $((2 * dms + 300)) ] || fail "zeroing took ${zms} ms, discard ${dms} ms"

kill -TERM $serve_pid
wait $serve_pid || { cat serve.err; fail "serve did not exit cleanly"; }
cat serve.err

# The files, read by the host from the volume itself.
"$THINSTACK" read stack.json vm0 0 384M -o vm0.img
for i in 1 2 3 4; do
  debugfs -R "dump /keep/f$i f$i.out" vm0.img 2>/dev/null
  same "$(sha256sum < f$i.out | cut -d' ' -f1)" "$(vm_sha f$i)" "file f$i"
done
e2fsck -fn vm0.img || fail "e2fsck on vm0"

# Live snapshots taken while fio wrote (writes moved across the snapshot).
cat samples.txt | grep '^snap' || true
busy=0
while read -r _ name w0 w1; do
  "$THINSTACK" read stack.json "$name" 0 384M -o s.img
  e2fsck -E journal_only -y s.img >/dev/null 2>&1 || true
  e2fsck -fn s.img > fsck.out 2>&1 || { cat fsck.out; fail "snapshot $name: e2fsck found errors"; }
  [ "$w1" -gt "$w0" ] && busy=$((busy + 1))
  echo "snapshot $name clean (writes $w0 -> $w1)"
done < <(grep '^snap ' samples.txt)
[ $busy -ge 1 ] || fail "no snapshot was taken while the guest wrote"
assert_thin_check meta.img "after the guest test"
echo "vhost: ok"
