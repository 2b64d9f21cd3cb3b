#!/usr/bin/env bash
# The log-writes layer writes the log the kernel's dm-log-writes writes: the
# same requests (plain and FUA writes, a discard, flushes, marks, one mark
# right after an unflushed write) go through the kernel's target, activated
# from dm-table --concise, and through the layer; both logs list the same
# entries up to the last mark, and replaying either to every mark gives the
# same sha256, as does each child. One boot.
source "$TS_SOURCE_DIR/tests/common/requires.sh"
source "$TS_SOURCE_DIR/tests/vm/lib.sh"
requires python3
cd "$TMP"
for f in A B C D E F; do head -c 8192 /dev/urandom > $f; done
mkdir -p k l
for d in k l; do truncate -s 1M $d/c.img; truncate -s 4M $d/l.img; done
cat > l/lw.json <<'JSON'
{ "version": 1, "layers": {
  "lwc": { "type": "file", "path": "c.img" },
  "lwl": { "type": "file", "path": "l.img" },
  "lw": { "type": "log-writes", "child": "lwc", "log": "lwl" } }, "exports": ["lw"] }
JSON
"$THINSTACK" dm-table l/lw.json --concise --device lwc=/dev/vda --device lwl=/dev/vdb > concise \
  || fail "dm-table"

# The sequence, once for each side: OP ARGS, offsets and lengths in bytes.
cat > seq <<'EOF'
write A 0 4096
write B 65536 8192
flush
mark m1
fua C 131072 4096
write D 0 4096
mark m2
discard 65536 65536
write E 262144 4096
flush
mark m3
write F 524288 4096
mark last
EOF
{
  echo 'set -eu'
  echo 'dmsetup create --concise "$(cat /test/concise)"'
  while read -r op a b c; do
    case $op in
      write) echo "dd if=/test/$a of=/dev/mapper/lw bs=$c count=1 seek=$((b / c)) oflag=direct conv=notrunc status=none" ;;
      fua) echo "dd if=/test/$a of=/dev/mapper/lw bs=$c count=1 seek=$((b / c)) oflag=direct,dsync conv=notrunc status=none" ;;
      flush) echo "dd if=/dev/null of=/dev/mapper/lw conv=fsync,notrunc status=none" ;;
      discard) echo "blkdiscard -o $a -l $b /dev/mapper/lw" ;;
      mark) echo "dmsetup message lw 0 mark $a" ;;
    esac
  done < seq
  echo 'dmsetup remove lw'
  echo 'echo done'
} > boot.sh
THINSTACK_LIB=$TS_BUILD_DIR/libthinstack.so PYTHONPATH=$TS_SOURCE_DIR/bindings/python python3 - <<'EOF' || fail "library side"
import thinstack
st = thinstack.open("l/lw.json")
d = st.device("lw")
for line in open("seq"):
    op, *a = line.split()
    if op in ("write", "fua"):
        d.write(int(a[1]), open(a[0], "rb").read()[: int(a[2])], fua=op == "fua")
        if op == "fua":
            d.flush()  # dd's O_DSYNC sends a flush after the FUA write
    elif op == "flush":
        d.flush()
    elif op == "discard":
        d.discard(int(a[0]), int(a[1]))
    elif op == "mark":
        d.message("mark " + a[0])
st.close()
EOF
vm_run -d k/c.img -d k/l.img -f concise -f A -f B -f C -f D -f E -f F boot.sh
grep -qx done "$TMP/vm.out" || fail "the guest did not finish"

# After the last mark the logs may differ: closing the stack flushes the
# child, which logs a flush before the end mark; removing the kernel's
# target sends none.
for d in k l; do
  "$THINSTACK" replay-log $d/l.img --list > $d/list || fail "list $d"
  sed -n '1,/mark last$/p' $d/list > $d/upto-last
done
echo "kernel's log:"; cat k/list
echo "library's log:"; cat l/list
diff k/upto-last l/upto-last || fail "the entry lists differ"
grep -q "mark last$" k/upto-last || fail "no mark last in the kernel's log"
# The mark after the unflushed write D comes before D, in both.
[ "$(grep -n 'mark m2$' k/list | cut -d: -f1)" -lt "$(grep -n 'write .*sector 0 .*nr 8 *$' k/list | tail -1 | cut -d: -f1)" ] \
  || fail "m2 is not before the write it follows"
for m in m1 m2 m3 last; do
  for d in k l; do
    truncate -s 0 $d/r.img; truncate -s 1M $d/r.img
    "$THINSTACK" replay-log $d/l.img $d/r.img --end-mark $m > /dev/null || fail "replay $d to $m"
  done
  same "$(msha k/r.img)" "$(msha l/r.img)" "replay to $m kernel/library"
done
same "$(msha k/c.img)" "$(msha l/c.img)" "child kernel/library"
echo "log-writes: ok"
