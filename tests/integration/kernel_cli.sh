#!/usr/bin/env bash
# The CLI on a kernel layer over a loop device: info and status report the
# PROVISION ladder decided from sysfs, provision is refused with a clear error
# under "auto" on this kernel and reaches the sparse file under "emulate",
# dm-table prints the linear table, and the kernel benchmark runs.
source "$TS_SOURCE_DIR/tests/common/requires.sh"
requires_root
requires losetup python3
cd "$TMP"
truncate -s 64M disk.img
LOOP=$(losetup -f --show disk.img) || skip_or_fail "cannot attach a loop device"
cleanup_fns+=("losetup -d $LOOP")
q=/sys/dev/block/$(stat -c '%t:%T' "$LOOP" | python3 -c 'import sys; a,b=sys.stdin.read().strip().split(":"); print(f"{int(a,16)}:{int(b,16)}")')/queue
wzu=$(cat "$q/write_zeroes_unmap_max_bytes" 2>/dev/null || echo 0)
pmb=$(cat "$q/provision_max_bytes" 2>/dev/null || echo 0)

for pol in auto emulate; do
  cat > $pol.json <<JSON
{ "version": 1, "layers": { "k": { "type": "kernel", "path": "$LOOP", "provision": "$pol" } },
  "exports": ["k"] }
JSON
done

"$THINSTACK" info auto.json > info.txt
grep -q "^k .*kernel" info.txt || fail "info: $(cat info.txt)"
"$THINSTACK" status emulate.json k > status.json
python3 - "$wzu" "$pmb" <<'PY'
import json, sys
wzu, pmb = int(sys.argv[1]), int(sys.argv[2])
st = json.load(open("status.json"))[0]["layer"]
prov = st["ops"]["provision"]
want = "fallocate(0)" if pmb > 0 else "fallocate(WRITE_ZEROES)" if wzu > 0 else "ioctl(BLKZEROOUT)"
assert prov["path"] == want, prov
assert st["kind"] == "block device", st
assert "provision_decision" in st and "policy emulate" in st["provision_decision"], st
PY

if [ "$wzu" = 0 ] && [ "$pmb" = 0 ]; then
  "$THINSTACK" info auto.json --json | python3 -c '
import json, sys
k = json.load(sys.stdin)["nodes"][0]
assert k["limits"]["ops"]["provision"] == "none", k
'
  before=$(stat -c %b disk.img)
  if "$THINSTACK" provision auto.json k 0 1M 2> err.txt; then fail "provision under auto succeeded"; fi
  grep -qi "not supported" err.txt || fail "provision error: $(cat err.txt)"
  [ "$(stat -c %b disk.img)" = "$before" ] || fail "refused provision changed the file"
fi

# emulate reserves by zeroing, so it takes only a provision that allows it.
head -c 4096 /dev/urandom > data.bin
before=$(( $(stat -c %b disk.img) * 512 ))
"$THINSTACK" write emulate.json k 8M -i data.bin
if "$THINSTACK" provision emulate.json k 8M 16M 2> err.txt; then fail "zeroing provision without --may-zero"; fi
grep -q -- "--may-zero" err.txt || fail "no hint at --may-zero: $(cat err.txt)"
"$THINSTACK" read emulate.json k 8M 4K -o back.bin
cmp -s data.bin back.bin || fail "a refused provision changed the data"
"$THINSTACK" provision emulate.json k 8M 16M --may-zero
after=$(( $(stat -c %b disk.img) * 512 ))
[ $(( after - before )) -ge $((16 << 20)) ] || fail "emulated provision grew disk.img by $(( after - before ))"

"$THINSTACK" dm-table auto.json | grep -Eq "^dmsetup create k --table '0 131072 linear [0-9]+:[0-9]+ 0'$" || fail "dm-table"
"$THINSTACK" bench kernel --size 4M > bench.txt
grep "provision (\"emulate\")" bench.txt | grep -q "[0-9]x " || fail "bench: $(cat bench.txt)"
echo "kernel cli: ok"
