#!/usr/bin/env bash
# The nbd layer against real servers: nbdkit's memory and file plugins and
# qemu-nbd, each on a Unix socket this test starts and stops. Every op
# through the CLI, requests the core refuses, multi-conn, block status from
# base:allocation, FAST_ZERO for --no-fallback, and what a PROVISION reserves
# on each server (the backing file's blocks). Then crypt over nbd over nbdkit.
source "$TS_SOURCE_DIR/tests/common/requires.sh"
requires nbdkit qemu-nbd python3
"$THINSTACK" types > "$TMP/types.txt"
grep -q '^nbd:' "$TMP/types.txt" || skip_or_fail "built without libnbd"
cd "$TMP"
M=1048576

pids=()
stop_servers() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; }
cleanup_fns+=(stop_servers)
wait_sock() { for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.05; done; fail "no socket $1"; }

nbdkit -f -U "$TMP/mem.sock" memory 64M & pids+=($!)
truncate -s 64M file.img
nbdkit -f -U "$TMP/file.sock" file file.img & pids+=($!)
truncate -s 64M q.img
qemu-nbd -t -f raw --discard=unmap -k "$TMP/q.sock" q.img & pids+=($!)
for s in mem file q; do wait_sock "$TMP/$s.sock"; done

stack() { # NAME SOCKET [EXTRA]
  cat > "$1.json" <<JSON
{ "version": 1, "layers": { "d": { "type": "nbd", "uri": "nbd+unix:///?socket=$TMP/$2.sock"${3:-} } },
  "exports": ["d"] }
JSON
}
map_at() { # CONFIG OFFSET -> "hole" / "data" / "zero"
  "$THINSTACK" map "$1" d --json | python3 -c '
import json, sys
off = int(sys.argv[1][:-1]) << 20  # "5M"
for e in json.load(sys.stdin):
    if e["offset"] <= off < e["offset"] + e["length"]:
        print(e["type"]); break' "$2"
}
blocks() { echo $(( $(stat -c %b "$1") * 512 )); }

head -c $((4 * M)) /dev/urandom > w.bin
for s in mem file q; do
  stack $s $s
  c=$s.json
  "$THINSTACK" write $c d 4M -i w.bin
  "$THINSTACK" read $c d 4M 4M | cmp - w.bin || fail "$s: read back"
  "$THINSTACK" flush $c d
  # Misaligned and past-the-end requests never reach the server.
  ! "$THINSTACK" write $c d 100 -i w.bin 2>err.txt || fail "$s: misaligned write"
  grep -q EINVAL err.txt || fail "$s: $(cat err.txt)"
  ! "$THINSTACK" read $c d 63M 2M >/dev/null 2>&1 || fail "$s: read past the end"
  [ "$(map_at $c 5M)" = data ] || fail "$s: written range is $(map_at $c 5M)"
  [ "$(map_at $c 40M)" = hole ] || fail "$s: unwritten range is $(map_at $c 40M)"
  # Zeroing: reads zeroes both ways.
  "$THINSTACK" zero $c d 4M 1M >/dev/null
  "$THINSTACK" zero $c d 5M 1M --may-unmap >/dev/null
  "$THINSTACK" read $c d 4M 2M | cmp - <(head -c $((2 * M)) /dev/zero) || fail "$s: zero"
  "$THINSTACK" read $c d 6M 2M | cmp - <(tail -c $((2 * M)) w.bin) || fail "$s: zero went too far"
  "$THINSTACK" discard $c d 6M 1M >/dev/null
done

# Multi-conn: nbdkit advertises it (4 connections by default), qemu-nbd
# serving one client does not (one connection, requests take turns).
"$THINSTACK" status mem.json d | grep -q '"connections": 4' || fail "mem: not multi-conn"
"$THINSTACK" status q.json d | grep -q '"connections": 1' || fail "qemu-nbd: more than one connection"
stack mem2 mem ', "connections": 2'
"$THINSTACK" status mem2.json d | grep -q '"connections": 2' || fail "connections ignored"

# FAST_ZERO: nbdkit memory and qemu-nbd zero fast; nbdkit file does not say
# so, and --no-fallback then fails rather than write zeroes.
"$THINSTACK" zero mem.json d 8M 1M --no-fallback >/dev/null || fail "mem: fast zero"
"$THINSTACK" zero q.json d 8M 1M --no-fallback >/dev/null || fail "qemu-nbd: fast zero"
! "$THINSTACK" zero file.json d 8M 1M --no-fallback 2>err.txt || fail "file: fast zero accepted"
grep -q EOPNOTSUPP err.txt || fail "file: $(cat err.txt)"

# PROVISION needs --may-zero (NBD has no reserve command: it is a NO_HOLE zero).
! "$THINSTACK" provision file.json d 16M 8M 2>/dev/null || fail "provision without --may-zero"
# File-backed servers reserve the range in their file: the blocks are there
# (on ext4 as unwritten extents, which both then report as hole+zero).
for s in file q; do
  img=file.img; [ $s = q ] && img=q.img
  before=$(blocks $img)
  "$THINSTACK" provision --may-zero $s.json d 16M 8M >/dev/null
  grown=$(( $(blocks $img) - before ))
  [ $grown -ge $((8 * M)) ] || fail "$s: provision allocated only $grown bytes"
  "$THINSTACK" read $s.json d 16M 8M | cmp - <(head -c $((8 * M)) /dev/zero) || fail "$s: provisioned range"
  # and DISCARD gives them back (qemu-nbd --discard=unmap, nbdkit file punches)
  "$THINSTACK" discard $s.json d 16M 8M >/dev/null
  [ $(( $(blocks $img) - before )) -lt $M ] || fail "$s: discard kept the blocks"
done
# nbdkit memory keeps nothing for a zeroed range: a PROVISION reserves nothing.
"$THINSTACK" provision --may-zero mem.json d 16M 8M >/dev/null
[ "$(map_at mem.json 20M)" = hole ] || fail "mem: provisioned range is $(map_at mem.json 20M)"

# crypt over nbd over nbdkit: what reaches the server is ciphertext, and the
# data reads back through a second open.
head -c 64 /dev/urandom > disk.key; chmod 600 disk.key
cat > crypt.json <<JSON
{ "version": 1,
  "layers": {
    "remote": { "type": "nbd", "uri": "nbd+unix:///?socket=$TMP/mem.sock" },
    "sec": { "type": "crypt", "child": "remote", "key_file": "disk.key", "sector_size": 4096 } },
  "exports": ["sec"] }
JSON
head -c $((2 * M)) /dev/urandom > p.bin
"$THINSTACK" write crypt.json sec 32M -i p.bin
"$THINSTACK" read crypt.json sec 32M 2M | cmp - p.bin || fail "crypt over nbd: read back"
"$THINSTACK" read mem.json d 32M 2M > raw.bin
! cmp -s raw.bin p.bin || fail "crypt over nbd: plaintext reached the server"
python3 -c 'import sys; d=open(sys.argv[1],"rb").read(); assert d.count(0) < len(d)//100' raw.bin ||
  fail "crypt over nbd: server holds zeroes"
echo "nbd servers: ok"
