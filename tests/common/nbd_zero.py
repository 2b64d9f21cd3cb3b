"""Send one NBD_CMD_WRITE_ZEROES with chosen flags and print the server's errno.

    python3 nbd_zero.py SOCKET EXPORT OFFSET LENGTH [fast] [nohole]

A minimal NBD client (fixed newstyle handshake, NBD_OPT_GO, simple replies)
for the one request the other clients at hand never send: a write-zeroes
with NBD_CMD_FLAG_FAST_ZERO. Prints the reply's error number (0 on success,
95 = NBD_ENOTSUP) and exits 0 when the exchange itself worked.
"""
import socket
import struct
import sys

IHAVEOPT = 0x49484156454F5054
OPT_REPLY = 0x3E889045565A9
NBD_OPT_GO = 7
NBD_REP_ACK = 1
NBD_REP_INFO = 3
NBD_INFO_EXPORT = 0
NBD_FLAG_SEND_FAST_ZERO = 1 << 11
REQUEST = 0x25609513
SIMPLE_REPLY = 0x67446698
CMD_DISC, CMD_WRITE_ZEROES = 2, 6
FLAG_NO_HOLE, FLAG_FAST_ZERO = 1 << 1, 1 << 4


def recv(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError("server closed the connection")
        b += c
    return b


def main():
    sock, name, off, length = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3]), int(sys.argv[4])
    flags = (FLAG_FAST_ZERO if "fast" in sys.argv[5:] else 0) | \
            (FLAG_NO_HOLE if "nohole" in sys.argv[5:] else 0)
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    assert recv(s, 8) == b"NBDMAGIC" and struct.unpack(">Q", recv(s, 8))[0] == IHAVEOPT
    recv(s, 2)                                   # handshake flags
    s.sendall(struct.pack(">I", 3))              # FIXED_NEWSTYLE | NO_ZEROES
    data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
    s.sendall(struct.pack(">QII", IHAVEOPT, NBD_OPT_GO, len(data)) + data)
    tflags = None
    while True:
        magic, _, rtype, rlen = struct.unpack(">QIII", recv(s, 20))
        assert magic == OPT_REPLY
        body = recv(s, rlen)
        if rtype == NBD_REP_INFO and struct.unpack(">H", body[:2])[0] == NBD_INFO_EXPORT:
            tflags = struct.unpack(">QH", body[2:12])[1]
        elif rtype == NBD_REP_ACK:
            break
        elif rtype & (1 << 31):
            sys.exit("NBD_OPT_GO failed: reply type %#x %r" % (rtype, body))
    if flags & FLAG_FAST_ZERO and not (tflags & NBD_FLAG_SEND_FAST_ZERO):
        sys.exit("the server does not offer fast zero")
    s.sendall(struct.pack(">IHHQQI", REQUEST, flags, CMD_WRITE_ZEROES, 1, off, length))
    magic, err, handle = struct.unpack(">IIQ", recv(s, 16))
    assert magic == SIMPLE_REPLY and handle == 1
    s.sendall(struct.pack(">IHHQQI", REQUEST, 0, CMD_DISC, 2, 0, 0))
    s.close()
    print(err)


main()
