#!/bin/busybox sh
# /init of the test VM: load the modules, wait for the disks, run
# /test/run.sh with its output on the second serial port, report its exit
# status on that port and power off.
export PATH=/bin
# There is no udev: libdevmapper then makes the /dev/mapper nodes itself.
export DM_DISABLE_UDEV=1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /dev/mapper /run/cryptsetup /run/lock
# The kernel console stays on ttyS0; what the script says goes to ttyS1.
exec >/dev/ttyS1 2>&1 </dev/null
while read -r m; do
  insmod "$m" 2>/dev/null || {
    n=$(basename "$m" .ko); n=$(echo "$n" | tr - _)
    grep -q "^$n " /proc/modules || echo "TSVM_WARN module $n did not load"
  }
done < /etc/modules
want=$(sed -n 's/.*tsvm.disks=\([0-9]*\).*/\1/p' /proc/cmdline)
i=0
while [ "$(ls /sys/block | grep -c '^vd')" -lt "${want:-0}" ] && [ $i -lt 200 ]; do
  sleep 0.05; i=$((i + 1))
done
mdev -s 2>/dev/null
echo "TSVM_BEGIN $(cut -d' ' -f1 /proc/uptime)"
cd /test && /bin/bash /test/run.sh
rc=$?
sync
echo "TSVM_EXIT $rc $(cut -d' ' -f1 /proc/uptime)"
poweroff -f
