#!/usr/bin/env bash
# run-vm.sh returns what the guest script prints and its exit status, attaches
# disks in order (read-only ones refuse writes) and copies files into /test.
source "$TS_SOURCE_DIR/tests/common/requires.sh"
source "$TS_SOURCE_DIR/tests/vm/lib.sh"
cd "$TMP"
printf 'disk one' > a.img; truncate -s 1M a.img
printf 'disk two' > b.img; truncate -s 1M b.img
echo payload > f.txt
cat > s.sh <<'EOF2'
echo "a: $(head -c 8 /dev/vda)"
echo "b: $(head -c 8 /dev/vdb)"
echo "f: $(cat /test/f.txt)"
echo "to stderr" >&2
echo x | dd of=/dev/vdb oflag=direct status=none 2>/dev/null && echo "b writable"
lsmod | grep -q '^dm_thin_pool' && echo "dm-thin loaded"
exit 42
EOF2
set +e
"$VM_DIR/run-vm.sh" -d a.img -d b.img:ro -f f.txt s.sh > out.txt 2> err.txt
st=$?
set -e
cat out.txt err.txt
[ $st = 42 ] || fail "exit status $st, not 42"
grep -qx "a: disk one" out.txt || fail "first disk"
grep -qx "b: disk two" out.txt || fail "second disk"
grep -qx "f: payload" out.txt || fail "file"
grep -qx "to stderr" out.txt || fail "the script's stderr"
! grep -q "b writable" out.txt || fail "a read-only disk took a write"
grep -qx "dm-thin loaded" out.txt || fail "modules"
grep -q "^vm: boot .* accel \(tcg\|kvm\)$" err.txt || fail "timing line"
! grep -q "Linux version" out.txt || fail "the kernel's console mixed into the output"
echo "harness: ok"
