#!/usr/bin/env python3
"""Cross-check the crypt layer against an XTS implementation we did not write.

Usage: xts_oracle.py THINSTACK WORKDIR

For each configuration (sector sizes 512/1024/4096, AES-128/256-XTS keys,
non-zero iv_offset, iv_large_sectors, an offset into the child):
  1. sectors written through the layer (with the `thinstack` CLI) decrypt,
     with Python's `cryptography`, to what was written, and what the layer's
     write-zeroes leaves decrypts to zeroes;
  2. a volume Python encrypts reads back through the layer as its plaintext.
The tweak of every data unit is dm-crypt's plain64 IV: the 512-byte sector
number within the crypt device plus iv_offset (divided by sector_size/512 with
iv_large_sectors), as a 16-byte little-endian integer.
"""
import json
import os
import subprocess
import sys

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

CASES = [
    dict(name="512-byte sectors, AES-128-XTS, iv_offset 7", ss=512, keylen=32, iv_offset=7),
    dict(name="4096-byte sectors, AES-256-XTS (hex key), iv_offset 24", ss=4096, keylen=64,
         iv_offset=24, hexkey=True),
    dict(name="4096-byte sectors, AES-128-XTS, iv_large_sectors, iv_offset 16, offset 64K",
         ss=4096, keylen=32, iv_offset=16, large=True, offset=65536),
    dict(name="512-byte sectors, AES-256-XTS, iv_offset 2^40+3, offset 1M", ss=512, keylen=64,
         iv_offset=(1 << 40) + 3, offset=1 << 20),
    dict(name="1024-byte sectors, AES-256-XTS, iv_offset 2, threads 1", ss=1024, keylen=64,
         iv_offset=2, threads=1),
]
VOLUME = 2 << 20


def xts(key, iv, data, encrypt):
    cipher = Cipher(algorithms.AES(key), modes.XTS(iv.to_bytes(16, "little")))
    ctx = cipher.encryptor() if encrypt else cipher.decryptor()
    return ctx.update(data) + ctx.finalize()


def iv_of(case, dev_off):
    sector = dev_off // 512 + case.get("iv_offset", 0)
    return sector // (case["ss"] // 512) if case.get("large") else sector


def run(*args, stdin=None):
    p = subprocess.run([str(a) for a in args], input=stdin, capture_output=True)
    if p.returncode != 0:
        sys.exit("FAIL: %s: exit %d: %s" % (" ".join(map(str, args)), p.returncode,
                                           p.stderr.decode(errors="replace")))
    return p.stdout


def make_key(n):
    while True:
        k = os.urandom(n)
        if k[: n // 2] != k[n // 2:]:
            return k


def config(work, case, key, image):
    crypt = {"type": "crypt", "child": "d", "cipher": "aes-xts-plain64",
             "sector_size": case["ss"], "iv_offset": case.get("iv_offset", 0),
             "iv_large_sectors": case.get("large", False), "offset": case.get("offset", 0),
             "size": VOLUME}
    if "threads" in case:
        crypt["threads"] = case["threads"]
    if case.get("hexkey"):
        crypt["key"] = key.hex()
    else:
        kf = os.path.join(work, "volume.key")
        with open(os.open(kf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(key)
        crypt["key_file"] = "volume.key"
    cfg = {"version": 1, "layers": {"d": {"type": "file", "path": image}, "c": crypt},
           "exports": ["c"]}
    path = os.path.join(work, "stack.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    return path


def check_ours_to_python(thinstack, work, case):
    """Sectors written through the layer decrypt with cryptography."""
    ss, off0 = case["ss"], case.get("offset", 0)
    key = make_key(case["keylen"])
    image = os.path.join(work, "ours.img")
    with open(image, "wb") as f:
        f.truncate(off0 + VOLUME)
    cfg = config(work, case, key, "ours.img")
    writes = [(3 * ss, os.urandom(5 * ss)),          # small: inline
              (1 << 20, os.urandom(512 * 1024))]     # large: shared by the worker pool
    for at, data in writes:
        pfile = os.path.join(work, "plain.bin")
        with open(pfile, "wb") as f:
            f.write(data)
        run(thinstack, "write", cfg, "c", at, "-i", pfile)
    zero_at, zero_len = 16 * ss, 4 * ss
    run(thinstack, "zero", cfg, "c", zero_at, zero_len)
    with open(image, "rb") as f:
        disk = f.read()
    for at, data in writes + [(zero_at, bytes(zero_len))]:
        for u in range(0, len(data), ss):
            ct = disk[off0 + at + u: off0 + at + u + ss]
            if ct == data[u: u + ss]:
                sys.exit("FAIL: %s: unit at %d was stored in the clear" % (case["name"], at + u))
            pt = xts(key, iv_of(case, at + u), ct, False)
            if pt != data[u: u + ss]:
                sys.exit("FAIL: %s: unit at %d (IV %d) does not decrypt to what was written"
                         % (case["name"], at + u, iv_of(case, at + u)))
    if any(disk[:off0]):
        sys.exit("FAIL: %s: the layer wrote before its offset" % case["name"])


def check_python_to_ours(thinstack, work, case):
    """A volume encrypted by cryptography reads back through the layer."""
    ss, off0 = case["ss"], case.get("offset", 0)
    key = make_key(case["keylen"])
    plain = os.urandom(VOLUME)
    image = os.path.join(work, "theirs.img")
    with open(image, "wb") as f:
        f.write(os.urandom(off0))  # whatever precedes the ciphertext is not ours
        for u in range(0, VOLUME, ss):
            f.write(xts(key, iv_of(case, u), plain[u: u + ss], True))
    cfg = config(work, case, key, "theirs.img")
    out = os.path.join(work, "read.bin")
    run(thinstack, "read", cfg, "c", 0, VOLUME, "-o", out)
    with open(out, "rb") as f:
        got = f.read()
    if got != plain:
        bad = next(i for i in range(VOLUME) if got[i] != plain[i])
        sys.exit("FAIL: %s: read differs from the plaintext at byte %d (unit IV %d)"
                 % (case["name"], bad, iv_of(case, bad - bad % ss)))


def main():
    thinstack, work = sys.argv[1], sys.argv[2]
    for case in CASES:
        check_ours_to_python(thinstack, work, case)
        check_python_to_ours(thinstack, work, case)
        print("ok: " + case["name"])


if __name__ == "__main__":
    main()
