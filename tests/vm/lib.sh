# Shared by the tests/vm/test-*.sh: source after tests/common/requires.sh.
# vm_run ARGS...   tests/vm/run-vm.sh with ARGS; its output is also kept in
#                  $TMP/vm.out for the checks.
# sha CFG DEV SIZE sha256 of a device as the library reads it
# mwrite/mzero/msha  the model: apply a write or a discard, hash it
# same A B WHAT    fail unless A and B are equal
VM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
requires_root
requires qemu-system-x86_64 busybox
vm_run() {
  local rc=0
  "$VM_DIR/run-vm.sh" "$@" > "$TMP/vm.out" || rc=$?
  cat "$TMP/vm.out"
  [ $rc = 0 ] || fail "the VM script failed with status $rc"
}
# The line "sha NAME HASH" the guest printed for NAME.
vm_sha() { awk -v n="$1" '$1 == "sha" && $2 == n {print $3}' "$TMP/vm.out" | tail -1; }
sha() { "$THINSTACK" read "$1" "$2" 0 "$3" | sha256sum | cut -d' ' -f1; }
# A model of the writes: a plain file per device, written as the device is.
mwrite() { dd if="$3" of="$1" bs=64K seek="$2" oflag=seek_bytes conv=notrunc status=none; }
mzero() { dd if=/dev/zero of="$1" bs=64K seek="$2" count="$3" oflag=seek_bytes iflag=count_bytes conv=notrunc status=none; }
msha() { sha256sum < "$1" | cut -d' ' -f1; }
same() { [ "$1" = "$2" ] || fail "$3: $1 != $2"; echo "same $3"; }
