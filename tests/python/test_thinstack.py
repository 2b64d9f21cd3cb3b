"""The Python bindings, call by call, with their error paths, on real files."""
import errno
import json
import os
import subprocess
import sys
import threading

import pytest

import thinstack
from thinstack import ThinstackError

from conftest import file_layer

K = 1024
M = 1024 * K


def pattern(n, seed):
    return bytes((i * 31 + seed * 7 + (i >> 9)) & 0xFF for i in range(n))


def raises_errno(code, fn, *args, **kw):
    with pytest.raises(ThinstackError) as ei:
        fn(*args, **kw)
    assert ei.value.errno == code, ei.value
    assert isinstance(ei.value, OSError)
    return ei.value


# ---------------------------------------------------------------- module level

def test_version_and_errno_helpers():
    v = thinstack.version()
    assert len(v.split(".")) == 3 and all(p.isdigit() for p in v.split("."))
    assert thinstack.err_name(-errno.ENOSPC) == "ENOSPC"
    assert thinstack.err_name(errno.EIO) == "EIO"
    assert thinstack.strerror(-errno.ENOENT) == os.strerror(errno.ENOENT)


def test_sizes():
    assert thinstack.parse_size("64K") == 64 * K
    assert thinstack.parse_size("1G") == 1 << 30
    assert thinstack.parse_size(512) == 512
    raises_errno(errno.EINVAL, thinstack.parse_size, "12Q")
    raises_errno(errno.EINVAL, thinstack.parse_size, "")
    assert thinstack.format_size(64 * K) == "64K"
    assert thinstack.format_size(12345) == "12345"
    raises_errno(errno.EINVAL, thinstack.format_size, -1)
    raises_errno(errno.EINVAL, thinstack.format_size, "1K")


def test_layer_types():
    names = dict(thinstack.layer_types())
    for t in ("file", "linear", "memory", "fault"):
        assert t in names and names[t]
    assert thinstack.has_layer_type("file")
    assert not thinstack.has_layer_type("no-such-type")


def test_error_type():
    e = ThinstackError(-errno.ENOSPC, "pool is full")
    assert isinstance(e, OSError)
    assert e.errno == errno.ENOSPC
    assert e.strerror == "pool is full"
    assert "ENOSPC" in str(e) and "pool is full" in str(e)
    assert ThinstackError(errno.EIO).strerror == os.strerror(errno.EIO)


def _import_with(env_lib):
    env = dict(os.environ)
    env["THINSTACK_LIB"] = env_lib
    bindings = os.path.dirname(os.path.dirname(thinstack.__file__))
    return subprocess.run([sys.executable, "-c", "import thinstack; print(thinstack.version())"],
                          env=dict(env, PYTHONPATH=bindings), capture_output=True, text=True)


def test_library_from_environment():
    lib = thinstack._lib._name
    ok = _import_with(lib)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == thinstack.version()
    bad = _import_with("/nonexistent/libthinstack.so")
    assert bad.returncode != 0
    assert "cannot load libthinstack" in bad.stderr and "/nonexistent/libthinstack.so" in bad.stderr


# ---------------------------------------------------------------- opening

def test_open_file_resolves_paths_against_the_config(tmp_path, config):
    sub = tmp_path / "sub"
    sub.mkdir()
    p = (sub / "stack.json")
    p.write_text(json.dumps({"version": 1, "layers": {"d": file_layer("d.img", "1M")},
                             "exports": ["d"]}))
    with thinstack.open(str(p)) as s:
        assert [d.name for d in s.devices] == ["d"]
        assert s.device("d").size == M
    assert (sub / "d.img").exists()
    assert s.closed


def test_open_errors(tmp_path, config):
    e = raises_errno(errno.ENOENT, thinstack.open, str(tmp_path / "missing.json"))
    assert "missing.json" in e.strerror
    p = config({"d": dict(file_layer("d.img"), colour="blue")}, ["d"])
    e = raises_errno(errno.EINVAL, thinstack.open, p)
    assert "layers.d" in e.strerror and "colour" in e.strerror
    p = config({"d": {"type": "file", "path": "absent.img"}}, ["d"])
    e = raises_errno(errno.ENOENT, thinstack.open, p)
    assert "absent.img" in e.strerror
    raises_errno(errno.EINVAL, thinstack.open_string, "{ not json", str(tmp_path))
    raises_errno(errno.EINVAL, thinstack.open_string, {"version": 1, "layers": {}, "exports": ["x"]},
                 str(tmp_path))


def test_open_string_forms(tmp_path):
    cfg = {"version": 1, "layers": {"m": {"type": "memory", "size": "1M"}}, "exports": ["m"]}
    for form in (cfg, json.dumps(cfg), json.dumps(cfg).encode()):
        with thinstack.open_string(form) as s:
            assert s.device("m").type == "memory"
    with thinstack.open_string(cfg, plugin_dir=str(tmp_path)) as s:
        assert s.device("m").size == M


def test_read_only(tmp_path, config):
    p = config({"d": file_layer("d.img", "1M")}, ["d"])
    with thinstack.open(p) as s:
        s.device("d").write(0, b"\x11" * 4096)
    p = config({"d": {"type": "file", "path": "d.img"}}, ["d"], name="ro.json")
    with thinstack.open(p, read_only=True) as s:
        d = s.device("d")
        assert d.limits.read_only
        assert d.capability("write") == "none"
        assert d.read(0, 4096) == b"\x11" * 4096
        raises_errno(errno.EROFS, d.write, 0, b"\0" * 4096)
        raises_errno(errno.EROFS, d.discard, 0, 4096)
        raises_errno(errno.EROFS, d.provision, 0, 4096)
        raises_errno(errno.EROFS, d.write_zeroes, 0, 4096)


def test_ownership_and_force_share(tmp_path, config):
    p = config({"d": file_layer("d.img", "1M")}, ["d"])
    with thinstack.open(p) as w:
        w.device("d").write(0, b"\x33" * 4096, fua=True)
        e = raises_errno(errno.EBUSY, thinstack.open, p)
        assert "d.img is in use by pid %d (" % os.getpid() in str(e)
        raises_errno(errno.EBUSY, thinstack.open, p, read_only=True)
        seen = []
        with thinstack.open(p, read_only=True, force_share=True,
                            events=lambda n, ev, d: seen.append((n, ev, d))) as r:
            assert r.device("d").read(0, 4096) == b"\x33" * 4096
        assert [(n, ev) for n, ev, _ in seen] == [("d", "force-share")]
        assert "stale" in seen[0][2]
    with thinstack.open(p, read_only=True) as r1, thinstack.open(p, read_only=True) as r2:
        assert r1.device("d").read(0, 512) == r2.device("d").read(0, 512)


# ---------------------------------------------------------------- stacks

def test_stack_lifecycle(tmp_path, config):
    p = config({"a": file_layer("a.img", "1M"), "b": file_layer("b.img", "1M"),
                "cat": {"type": "linear", "segments": [{"child": "a"}, {"child": "b"}]}},
               ["cat", "a"])
    s = thinstack.open(p)
    assert not s.closed
    assert [d.name for d in s.devices] == ["cat", "a"]
    names = [n.name for n in s.nodes]
    assert set(names) == {"a", "b", "cat"} and names[-1] == "cat"  # children first
    assert s.node("b").name == "b"
    e = raises_errno(errno.ENOENT, s.device, "b")  # a node, but not exported
    assert "'b'" in e.strerror
    raises_errno(errno.ENOENT, s.node, "zzz")
    cat = s.device("cat")
    assert cat is s.device("cat")
    assert cat.size == 2 * M and cat.type == "linear"
    assert "cat" in repr(cat)
    s.close()
    assert s.closed
    s.close()  # again: nothing
    raises_errno(errno.EBADF, s.device, "cat")
    raises_errno(errno.EBADF, lambda: s.devices)
    raises_errno(errno.EBADF, lambda: s.nodes)
    raises_errno(errno.EBADF, cat.read, 0, 512)
    raises_errno(errno.EBADF, lambda: cat.size)
    assert "closed" in repr(cat)


def test_context_managers(tmp_path, config):
    p = config({"d": file_layer("d.img", "1M")}, ["d"])
    with thinstack.open(p) as s:
        with s.device("d") as d:
            d.write(0, b"\x22" * 512)
        assert d.status()["requests"]["flush"]["requests"] == 1  # leaving the block flushed
    assert s.closed
    with pytest.raises(RuntimeError):
        with thinstack.open(p) as s2:
            raise RuntimeError("inside")
    assert s2.closed
    with thinstack.open(p) as s:
        assert s.device("d").read(0, 512) == b"\x22" * 512


# ---------------------------------------------------------------- devices

def test_limits_and_capabilities(stack):
    disk = stack.device("disk")
    lim = disk.limits
    assert isinstance(lim, thinstack.Limits)
    assert lim.size == 4 * M == disk.size
    assert lim.logical_block_size == 512
    assert lim.max_discard_bytes > 0 and lim.max_provision_bytes > 0
    assert not lim.read_only
    for op in ("read", "write", "flush", "discard", "write_zeroes", "provision"):
        assert disk.capability(op) == "native"
    assert disk.capability("fua") in ("native", "emulate")
    nodisc = stack.device("nodisc")
    assert nodisc.limits.max_discard_bytes == 0
    assert nodisc.capability("discard") == "none"
    assert nodisc.capability("provision") == "none"
    assert nodisc.capability("write_zeroes") == "emulate"
    raises_errno(errno.EINVAL, disk.capability, "teleport")


def test_read_write_buffers(stack):
    d = stack.device("disk")
    data = pattern(64 * K, 1)
    assert d.write(0, data) == len(data)
    assert d.read(0, len(data)) == data
    d.write(64 * K, bytearray(data), fua=True)
    d.write(128 * K, memoryview(data))           # read-only memoryview: copied
    d.write(192 * K, memoryview(bytearray(data))[:4096])
    assert d.read(64 * K, len(data)) == data
    assert d.read(128 * K, len(data)) == data
    assert d.read(192 * K, 4096) == data[:4096]
    buf = bytearray(8192)
    assert d.readinto(0, buf) == 8192
    assert bytes(buf) == data[:8192]
    big = bytearray(3 * 4096)
    d.readinto(4096, memoryview(big)[4096:8192])
    assert bytes(big[4096:8192]) == data[4096:8192] and big[:4096] == bytearray(4096)
    raises_errno(errno.EINVAL, d.readinto, 0, b"\0" * 512)          # read-only target
    raises_errno(errno.EINVAL, d.readinto, 0, memoryview(bytearray(2048))[::2])
    raises_errno(errno.EINVAL, d.write, 0, memoryview(bytearray(2048))[::2])


def test_request_errors(stack):
    d = stack.device("disk")
    e = raises_errno(errno.EINVAL, d.read, 100, 512)        # misaligned
    assert "disk" in e.strerror and "read" in e.strerror
    raises_errno(errno.EINVAL, d.read, 0, 100)
    raises_errno(errno.EINVAL, d.read, 0, 0)                # empty
    raises_errno(errno.EINVAL, d.read, 4 * M, 512)          # past the end
    raises_errno(errno.EINVAL, d.write, 4 * M - 512, b"\0" * 1024)
    raises_errno(errno.EINVAL, d.read, -512, 512)
    raises_errno(errno.EINVAL, d.read, 1 << 64, 512)
    raises_errno(errno.EINVAL, d.read, "0", 512)
    raises_errno(errno.EINVAL, d.read, True, 512)
    raises_errno(errno.EINVAL, d.discard, 0, -1)
    raises_errno(errno.EINVAL, d.provision, 1, 512)
    raises_errno(errno.EINVAL, d.write_zeroes, 0, 0)
    raises_errno(errno.EINVAL, d.block_status, 4 * M, 512)
    st = d.status()["requests"]
    assert st["read"]["errors"] == 4   # the type and range checks above stay in Python


def test_injected_errors_carry_their_errno(stack):
    bad = stack.device("bad")
    bad.write(0, b"\1" * 4096)
    e = raises_errno(errno.EIO, bad.write, 64 * K, b"\1" * 4096)
    assert "bad" in e.strerror and "EIO" in str(e)
    raises_errno(errno.ENOSPC, bad.provision, 0, 64 * K)


def test_flush_and_status(stack):
    d = stack.device("disk")
    before = d.status()
    assert before["name"] == "disk" and before["type"] == "file" and before["size"] == 4 * M
    d.write(0, b"\3" * 4096)
    d.flush()
    after = d.status()["requests"]
    assert after["write"]["requests"] == before["requests"]["write"]["requests"] + 1
    assert after["write"]["bytes"] == before["requests"]["write"]["bytes"] + 4096
    assert after["flush"]["requests"] == before["requests"]["flush"]["requests"] + 1


def test_status_from_a_thread(stack):
    # A thread's malloc arena lies above 4 GiB: the string status() frees
    # there must reach free() with the whole pointer.
    d = stack.device("disk")
    out = []
    t = threading.Thread(target=lambda: out.append(d.status()))
    t.start()
    t.join()
    assert out and out[0]["name"] == "disk" and out[0]["size"] == 4 * M

def test_discard(stack):
    d = stack.device("disk")
    d.write(0, pattern(256 * K, 2))
    d.discard(64 * K, 128 * K)
    assert d.read(64 * K, 128 * K) == bytes(128 * K)
    ext = d.block_status(64 * K, 128 * K)
    assert all(x.hole for x in ext)
    assert d.read(0, 64 * K) == pattern(256 * K, 2)[:64 * K]
    raises_errno(errno.EOPNOTSUPP, stack.device("nodisc").discard, 0, 64 * K)


def test_write_zeroes(stack):
    d = stack.device("disk")
    d.write(0, pattern(256 * K, 3))
    d.write_zeroes(0, 64 * K)
    assert d.read(0, 64 * K) == bytes(64 * K)
    assert not any(x.hole for x in d.block_status(0, 64 * K))   # space kept
    d.write_zeroes(64 * K, 64 * K, may_unmap=True)
    assert d.read(64 * K, 64 * K) == bytes(64 * K)
    d.write_zeroes(128 * K, 64 * K, fua=True)
    assert d.read(128 * K, 64 * K) == bytes(64 * K)
    nd = stack.device("nodisc")
    nd.write(0, b"\7" * 8192)
    raises_errno(errno.EOPNOTSUPP, nd.write_zeroes, 0, 8192, no_fallback=True)
    assert nd.read(0, 8192) == b"\7" * 8192                    # untouched
    nd.write_zeroes(0, 8192)                                    # emulated
    assert nd.read(0, 8192) == bytes(8192)


def test_provision_and_block_status(stack):
    d = stack.device("disk")
    whole = d.block_status()
    assert sum(x.length for x in whole) == d.size
    assert whole[0].offset == 0 and whole[0].hole          # a new sparse file
    d.provision(1 * M, 256 * K)
    ext = d.block_status(1 * M, 256 * K)
    assert ext[0].offset == 1 * M
    assert sum(x.length for x in ext) == 256 * K
    assert all(not x.hole and x.zero for x in ext)          # allocated, reads zeroes
    assert d.read(1 * M, 256 * K) == bytes(256 * K)
    d.write(2 * M, b"\5" * 4096)
    data = d.block_status(2 * M, 4096)
    assert data == [thinstack.Extent(2 * M, 4096, 0)]
    assert not data[0].hole and not data[0].zero
    tail = d.block_status(3 * M)
    assert sum(x.length for x in tail) == 1 * M
    # may_zero only permits zeroing; a file reserves with fallocate and keeps data.
    d.provision(2 * M, 64 * K, may_zero=True)
    assert d.read(2 * M, 4096) == b"\5" * 4096
    raises_errno(errno.EOPNOTSUPP, stack.device("nodisc").provision, 0, 64 * K)
    raises_errno(errno.EOPNOTSUPP, stack.device("nodisc").provision, 0, 64 * K, may_zero=True)


def test_threads(stack):
    d = stack.device("disk")
    errors = []

    def run(i):
        try:
            for j in range(16):
                off = (i * 16 + j) * 8192
                d.write(off, pattern(8192, i * 16 + j))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    th = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    assert not errors
    for k in range(64):
        assert d.read(k * 8192, 8192) == pattern(8192, k)


def test_message(config):
    cfg = config({"d": file_layer("d.img", "1M"), "log": file_layer("log.img", "1M"),
                  "lw": {"type": "log-writes", "child": "d", "log": "log"}}, ["lw"])
    with thinstack.open(cfg) as s:
        lw = s.device("lw")
        lw.write(0, b"\1" * 4096)
        lw.message("mark written")
        e = raises_errno(errno.EINVAL, lw.message, "frob")
        assert "mark NAME" in str(e)
        raises_errno(errno.EOPNOTSUPP, s.node("d").message, "mark x")
    with open(os.path.join(os.path.dirname(cfg), "log.img"), "rb") as f:
        log = f.read()
    # super block, then the mark: it is logged at once, the unflushed write
    # only when the close flushes
    mark = log[512:1024]
    assert int.from_bytes(mark[16:24], "little") == 8            # MARK
    assert mark[32:32 + len(b"written")] == b"written"
    write = log[1024:1536]
    assert int.from_bytes(write[8:16], "little") == 8            # 8 sectors
    assert int.from_bytes(write[16:24], "little") == 0           # a plain write
