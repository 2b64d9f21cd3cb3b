#!/usr/bin/env bash
# Bad requests on the control socket of a FUSE export while fio writes and
# verifies through it: each of the table's requests (not JSON, no method,
# unknown method, wrong types, a huge line, an id or name in use, a shrink
# below mapped blocks, a second subscribe, a peer of another uid, a client
# that goes mid-request...) gets its own error reply, or a refusal, with the
# errno expected; the server still answers afterwards on the same
# connection, fio keeps running and verifies, and nothing changed: the
# configuration file is byte for byte the same and the volume list too.
. "$TS_SOURCE_DIR/tests/common/requires.sh"
. "$TS_SOURCE_DIR/tests/common/exports.sh"
requires_fuse
requires fio python3 setpriv thin_check sha256sum

M=1048576
CONFIG=$(write_stack "$TMP" 64M)
MNT=$TMP/mnt
SOCK=$CONFIG.ctl
fuse_mount "$CONFIG" "$MNT"
[ -S "$SOCK" ] || fail "thinstack-fuse serves no socket at $SOCK"
[ "$(stat -c %a "$SOCK")" = 600 ] || fail "the socket's mode is $(stat -c %a "$SOCK"), not 600"

# Data in vm0 first, and a snapshot that shares it (a volume not open in
# the stack, which may shrink, but not below its mapped blocks).
head -c $((4 * M)) /dev/urandom | dd of="$MNT/vm0" bs=1M conv=notrunc status=none
"$THINSTACK" thin snap "$CONFIG" vm0 cold >/dev/null || fail "thin snap through the socket"

cat >"$TMP/load.fio" <<EOF
[load]
filename=$MNT/vm0
ioengine=psync
rw=randwrite
bs=4k
offset=16M
size=32M
verify=crc32c
verify_fatal=1
verify_backlog=256
time_based=1
runtime=8
EOF
fio --output="$TMP/fio.log" "$TMP/load.fio" &
FIO=$!
on_exit "kill $FIO 2>/dev/null; wait $FIO 2>/dev/null"
sleep 0.5

sha256sum "$CONFIG" >"$TMP/config.sum"
"$THINSTACK" ctl "$CONFIG" volume.list >"$TMP/list.before" || fail "volume.list"

python3 - "$SOCK" "$FIO" <<'EOF' || fail "the bad-request table"
import json, os, socket, subprocess, sys, time
path, fio = sys.argv[1], int(sys.argv[2])

def conn():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s, s.makefile("rb")

s, f = conn()
def send_raw(data):
    s.sendall(data)
    return json.loads(f.readline())

def req(method, params=None, rid=7):
    r = {"jsonrpc": "2.0", "id": rid, "method": method}
    if params is not None:
        r["params"] = params
    return (json.dumps(r) + "\n").encode()

M = 1 << 20
table = [
    ("not JSON", b"hello there\n", -32700, "EINVAL"),
    ("truncated JSON", b'{"jsonrpc": "2.0", "id": 1, \n', -32700, "EINVAL"),
    ("duplicate keys", b'{"jsonrpc":"2.0","id":1,"method":"stack.info","method":"x"}\n', -32700, "EINVAL"),
    ("not an object", b"[1, 2, 3]\n", -32600, "EINVAL"),
    ("no method", b'{"jsonrpc": "2.0", "id": 1}\n', -32600, "EINVAL"),
    ("method not a string", b'{"jsonrpc": "2.0", "id": 1, "method": 5}\n', -32600, "EINVAL"),
    ("wrong jsonrpc", b'{"jsonrpc": "1.0", "id": 1, "method": "stack.info"}\n', -32600, "EINVAL"),
    ("id an object", b'{"jsonrpc": "2.0", "id": {"a": 1}, "method": "stack.info"}\n', -32600, "EINVAL"),
    ("unknown method", req("volume.frobnicate"), -32601, "ENOSYS"),
    ("params an array", req("volume.list", [1]), -32602, "EINVAL"),
    ("unknown parameter", req("volume.create", {"name": "x", "sizee": "1M"}), -32602, "EINVAL"),
    ("size a bool", req("volume.create", {"name": "x", "size": True}), -32602, "EINVAL"),
    ("size negative", req("volume.create", {"name": "x", "size": -5}), -32602, "EINVAL"),
    ("size not a size", req("volume.create", {"name": "x", "size": "12Q"}), -32602, "EINVAL"),
    ("size too big", req("volume.create", {"name": "x", "size": "9000P"}), -32602, "ERANGE"),
    ("name a number", req("volume.create", {"name": 7, "size": "1M"}), -32602, "EINVAL"),
    ("name with NUL", req("volume.create", {"name": "a\u0000b", "size": "1M"}), -32700, "EINVAL"),
    ("id out of range", req("volume.create", {"name": "x", "size": "1M", "id": 1 << 24}), -32602, "EINVAL"),
    ("name in use", req("volume.create", {"name": "vm0", "size": "1M"}), -17, "EEXIST"),
    ("volume id in use", req("volume.create", {"name": "x", "size": "1M", "id": 0}), -17, "EEXIST"),
    ("resize below mapped blocks", req("volume.resize", {"name": "cold", "size": "1M"}), -39, "ENOTEMPTY"),
    ("shrink an open volume", req("volume.resize", {"name": "vm0", "size": "1M"}), -16, "EBUSY"),
    ("delete an open volume", req("volume.delete", {"name": "vm0"}), -16, "EBUSY"),
    ("delete a missing layer", req("volume.delete", {"name": "nope"}), -2, "ENOENT"),
    ("delete by name and id", req("volume.delete", {"name": "cold", "id": 1}), -32602, "EINVAL"),
    ("snapshot of a missing origin", req("volume.snapshot", {"origin": "nope", "name": "s"}), -2, "ENOENT"),
    ("no such device", req("io.provision", {"dev": "nope", "offset": 0, "length": 4096}), -32602, "ENOENT"),
    ("misaligned range", req("io.provision", {"dev": "vm0", "offset": 1, "length": 4096}), -22, "EINVAL"),
    ("range past the end", req("io.discard", {"dev": "vm0", "offset": 64 * M, "length": M}), -22, "EINVAL"),
    ("pool that is not a pool", req("pool.status", {"pool": "vm0"}), -32602, "EINVAL"),
    ("pool shrink", req("pool.extend", {"size": "1M"}), -22, "EINVAL"),
    ("release with none held", req("pool.release-metadata-snap"), -22, "EINVAL"),
    ("a verb the layer lacks", req("layer.message", {"node": "vm0", "message": "frob"}), None, None),
]
for name, line, code, errno in table:
    r = send_raw(line)
    assert "error" in r and "result" not in r, (name, r)
    e = r["error"]
    if code is not None:
        assert e["code"] == code, (name, code, r)
    if errno is not None:
        assert e["data"]["errno"] == errno, (name, errno, r)
    assert e["message"], (name, r)
    assert "path" in e["data"], (name, r)
    # A request that parsed has its id echoed; one that did not gets null.
    if line.startswith(b'{"jsonrpc": "2.0", "id": 7'):
        assert r["id"] == (None if e["code"] == -32700 else 7), (name, r)
    print("%-30s %6d %-9s %s" % (name, e["code"], e["data"]["errno"], e["message"][:70]))

# A huge line: refused with its own reply, skipped to its newline, and the
# connection goes on.
r = send_raw(b'{"x": "' + b"a" * (300 << 10) + b'"}\n')
assert r["error"]["data"]["errno"] == "E2BIG", r
print("%-30s %6d %-9s %s" % ("huge line", r["error"]["code"], "E2BIG", r["error"]["message"]))
r = send_raw(req("rpc.methods"))
assert "result" in r and len(r["result"]) >= 20, r

# A second subscribe on one connection.
assert "result" in send_raw(req("events.subscribe"))
r = send_raw(req("events.subscribe"))
assert r["error"]["data"]["errno"] == "EALREADY", r
print("%-30s %6d %-9s %s" % ("second subscribe", r["error"]["code"], "EALREADY", r["error"]["message"]))

# A client that goes mid-request: its half line is never run.
s2, _ = conn()
s2.sendall(req("volume.create", {"name": "half", "size": "1M"})[:-3])
s2.close()

# Another uid: the socket's mode keeps it out; with the mode opened, the
# server's own peer check refuses it.
# The server may refuse and close before the request is sent: a broken pipe
# on the send is part of being refused, and the reply still waits to be read.
OTHER_UID_CLIENT = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
try:
    s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"volume.delete","params":{"name":"cold"}}\n')
except BrokenPipeError:
    pass
print(s.makefile().readline().strip())
print('EOF' if not s.recv(1) else 'OPEN')
"""
nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
          OTHER_UID_CLIENT, path]
p = subprocess.run(nobody, capture_output=True, text=True)
assert p.returncode != 0 and "Permission denied" in p.stderr, p
print("%-30s %6s %-9s %s" % ("other uid, mode 0600", "-", "EACCES", "connect: Permission denied"))
d = os.path.dirname(path)
os.chmod(d, 0o755)
os.chmod(path, 0o666)
p = subprocess.run(nobody, capture_output=True, text=True)
os.chmod(path, 0o600)
os.chmod(d, 0o700)
lines = p.stdout.split("\n")
assert lines[0], ("no reply to the other uid", p)
r = json.loads(lines[0])
# Then disconnected: EOF, or a reset as its request was never read.
gone = lines[1] == "EOF" or "ConnectionResetError" in p.stderr
assert r["error"]["data"]["errno"] == "EACCES" and gone, p
print("%-30s %6d %-9s %s" % ("other uid, mode opened", r["error"]["code"], "EACCES", r["error"]["message"]))

# Still serving, on this connection and a new one, and fio still runs.
assert "result" in send_raw(req("stack.status", {"node": "vm0"}))
s3, f3 = conn()
s3.sendall(req("pool.status"))
assert "result" in json.loads(f3.readline())
os.kill(fio, 0)
print("fio still running; the server still answers")
EOF

"$THINSTACK" ctl "$CONFIG" volume.list >"$TMP/list.after" || fail "volume.list after"
python3 - "$TMP/list.before" "$TMP/list.after" <<'EOF' || fail "the volumes changed"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
strip = lambda v: [{k: x[k] for k in ("name", "id", "size", "origin")} for x in v]
assert strip(a) == strip(b), (a, b)
EOF
sha256sum -c --quiet "$TMP/config.sum" || fail "the configuration file changed"
kill -0 $FIO 2>/dev/null || fail "fio stopped during the bad requests: $(cat "$TMP/fio.log")"
# fio verified what it wrote as it went (verify_backlog) and ends by itself.
wait $FIO || { cat "$TMP/fio.log"; fail "fio's writes or verification failed"; }
fuse_umount "$MNT"
[ ! -e "$SOCK" ] || fail "the socket was left after the export stopped"
thin_check "$TMP/meta.img" >"$TMP/tc" 2>&1 || { cat "$TMP/tc"; fail "thin_check"; }
echo "PASS"
