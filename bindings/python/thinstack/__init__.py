"""Python bindings for libthinstack (ctypes; nothing to compile).

A stack of virtual block device layers is opened from a JSON configuration;
its exported devices answer read, write, flush, discard, write_zeroes and
provision requests and describe themselves (size, limits, block status,
status counters)::

    import thinstack
    with thinstack.open("stack.json") as stack:
        disk = stack.device("disk")
        disk.provision(0, 1 << 20)
        disk.write(0, b"x" * 4096)
        print(disk.block_status(0, 1 << 20))

A `thin-pool` node comes back as a Pool, which adds dm-thin's management
calls (create_thin, create_snap, delete_thin, thins, pool_status, extend,
set_transaction_id, metadata snapshots).

Every failure raises ThinstackError, an OSError whose ``errno`` is the
library's (positive) errno and whose message says what failed and why.

The shared library (libthinstack.so.0) is found, in order, at: the path in
$THINSTACK_LIBRARY ($THINSTACK_LIB, its older name, also works), which is
then the only one tried; the path recorded when the package was installed
(by pip from $THINSTACK_LIBRARY or pkg-config at build time, or by
`cmake --install` relative to the package); in the build folder of the
source tree these bindings sit in ($TS_BUILD_DIR, else <tree>/build);
pkg-config's libdir for thinstack (PKG_CONFIG_PATH is honoured); the
default loader's search (LD_LIBRARY_PATH, ldconfig's cache). When none
loads, the ImportError lists what was tried and what to set.
`library_path()` tells which one was loaded.
"""

import ctypes
import ctypes.util
import errno as _errno
import json as _json
import os
import socket as _socket
import threading
from dataclasses import dataclass
from typing import List, Optional

__all__ = [
    "ThinstackError", "Stack", "Device", "Limits", "Extent", "Pool", "ThinInfo", "PoolStatus",
    "open", "open_string", "version", "strerror", "err_name", "parse_size", "format_size",
    "layer_types", "has_layer_type", "pool_check", "pool_dump", "pool_restore", "log_replay",
    "Control", "control_path", "control_candidates", "library_path",
    "EXTENT_HOLE", "EXTENT_ZERO",
]

EXTENT_HOLE = 1 << 0   # no space allocated
EXTENT_ZERO = 1 << 1   # reads as zeroes

_IO_FUA = 1 << 0
_IO_MAY_UNMAP = 1 << 1
_IO_NOFALLBACK = 1 << 2
_IO_MAY_ZERO = 1 << 3
_OPEN_READ_ONLY = 1 << 1
_OPEN_FORCE_SHARE = 1 << 2
_OPS = ("read", "write", "flush", "discard", "write_zeroes", "provision")  # ts_op order
_OP_PROVISION = _OPS.index("provision")
_CAPS = ("none", "emulate", "native")


class ThinstackError(OSError):
    """An error from libthinstack: ``errno`` (positive), ``strerror``, and a
    message naming the operation, device or JSON path concerned."""

    def __init__(self, code, message=None):
        code = abs(int(code))
        super().__init__(code, message or os.strerror(code))

    def __str__(self):
        return "%s [%s]" % (self.strerror, _errno.errorcode.get(self.errno, self.errno))


# --------------------------------------------------------------------------
# Loading the library


_SONAME = "libthinstack.so.0"
_HINT = ("set THINSTACK_LIBRARY to the library's path (e.g. /usr/local/lib/%s), "
         "or PKG_CONFIG_PATH to the folder of an installed thinstack.pc, or "
         "LD_LIBRARY_PATH to the library's folder" % _SONAME)


def _recorded():
    """The path the installer recorded (thinstack/_libpath.py), if any."""
    try:
        from . import _libpath
    except ImportError:
        return None
    path = getattr(_libpath, "LIBRARY", None)
    if path and not os.path.isabs(path):
        # cmake --install records it relative to the package, so a moved
        # prefix keeps working.
        path = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), path))
    return path or None


def _pkg_config():
    import subprocess
    try:
        r = subprocess.run(["pkg-config", "--variable=libdir", "thinstack"],
                           capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    libdir = r.stdout.strip()
    return os.path.normpath(os.path.join(libdir, _SONAME)) if r.returncode == 0 and libdir else None


def _search():
    """(how, path) pairs in the order they are tried, each worked out only
    when the ones before it did not load (pkg-config is a subprocess)."""
    rec = _recorded()
    if rec:
        yield ("recorded at install", rec)
    tree = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))))
    if os.path.exists(os.path.join(tree, "include", "libthinstack", "thinstack.h")):
        build = os.environ.get("TS_BUILD_DIR") or os.path.join(tree, "build")
        yield ("source tree's build", os.path.join(build, "libthinstack.so"))
    pc = _pkg_config()
    if pc:
        yield ("pkg-config", pc)
    yield ("default loader", ctypes.util.find_library("thinstack") or _SONAME)


def _load():
    # A variable names the one library to use: a failure to load it is
    # reported, never papered over by another copy found elsewhere.
    for var in ("THINSTACK_LIBRARY", "THINSTACK_LIB"):
        env = os.environ.get(var)
        if env:
            try:
                return ctypes.CDLL(env)
            except OSError as e:
                raise ImportError("thinstack: cannot load libthinstack: tried $%s: %s (%s). "
                                  "To fix it, %s" % (var, env, e, _HINT)) from None
    tried = []
    for how, p in _search():
        if os.sep in p and not os.path.exists(p):
            tried.append("%s: %s (absent)" % (how, p))
            continue
        try:
            return ctypes.CDLL(p)
        except OSError as e:
            tried.append("%s: %s (%s)" % (how, p, e))
    raise ImportError("thinstack: cannot load libthinstack: tried " + "; ".join(tried) +
                      ". To fix it, " + _HINT)


_lib = _load()
# One handle on the C library, and its functions bound once with their
# types: a ctypes function without argtypes passes a Python int as a C int,
# so a pointer to free() would lose its upper 32 bits.
_libc = ctypes.CDLL(None, use_errno=True)
_free = _libc.free
_free.argtypes = [ctypes.c_void_p]
_free.restype = None


class _Error(ctypes.Structure):
    _fields_ = [("code", ctypes.c_int), ("msg", ctypes.c_char * 512)]


class _OpenOpts(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("plugin_dir", ctypes.c_char_p), ("event", ctypes.c_void_p),
                ("event_arg", ctypes.c_void_p)]


class _Limits(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint64),
                ("logical_block_size", ctypes.c_uint32),
                ("physical_block_size", ctypes.c_uint32),
                ("io_min", ctypes.c_uint32),
                ("io_opt", ctypes.c_uint32),
                ("max_io_bytes", ctypes.c_uint64),
                ("max_discard_bytes", ctypes.c_uint64),
                ("discard_granularity", ctypes.c_uint32),
                ("max_write_zeroes_bytes", ctypes.c_uint64),
                ("max_provision_bytes", ctypes.c_uint64),
                ("provision_granularity", ctypes.c_uint32),
                ("discard_zeroes", ctypes.c_bool),
                ("write_zeroes_unmap", ctypes.c_bool),
                ("fua", ctypes.c_bool),
                ("read_only", ctypes.c_bool)]


class _Io(ctypes.Structure):
    _fields_ = [("op", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("offset", ctypes.c_uint64), ("length", ctypes.c_uint64),
                ("iov", ctypes.c_void_p), ("iovcnt", ctypes.c_int)]


class _Extent(ctypes.Structure):
    _fields_ = [("offset", ctypes.c_uint64), ("length", ctypes.c_uint64),
                ("flags", ctypes.c_uint32)]


class _ExtentList(ctypes.Structure):
    _fields_ = [("v", ctypes.POINTER(_Extent)), ("n", ctypes.c_size_t),
                ("cap", ctypes.c_size_t)]


class _LayerTypeHead(ctypes.Structure):
    # The leading, stable part of ts_layer_type.
    _fields_ = [("abi_version", ctypes.c_uint32), ("struct_size", ctypes.c_uint32),
                ("name", ctypes.c_char_p), ("summary", ctypes.c_char_p)]


_P = ctypes.c_void_p
_u64 = ctypes.c_uint64
_c_int = ctypes.c_int


def _fn(name, restype, *argtypes):
    f = getattr(_lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


_version = _fn("ts_version", ctypes.c_char_p)
_strerror = _fn("ts_strerror", ctypes.c_char_p, _c_int)
_err_name = _fn("ts_err_name", ctypes.c_char_p, _c_int)
_parse_size = _fn("ts_parse_size", _c_int, ctypes.c_char_p, ctypes.POINTER(_u64))
_format_size = _fn("ts_format_size", None, _u64, ctypes.c_char_p, ctypes.c_size_t)
_find_type = _fn("ts_find_layer_type", ctypes.POINTER(_LayerTypeHead), ctypes.c_char_p)
_type_at = _fn("ts_layer_type_at", ctypes.POINTER(_LayerTypeHead), ctypes.c_size_t)
_open_file = _fn("ts_stack_open_file", _c_int, ctypes.c_char_p, ctypes.POINTER(_OpenOpts),
                 ctypes.POINTER(_P), ctypes.POINTER(_Error))
_open_string = _fn("ts_stack_open_string", _c_int, ctypes.c_char_p, ctypes.c_char_p,
                   ctypes.POINTER(_OpenOpts), ctypes.POINTER(_P), ctypes.POINTER(_Error))
_stack_close = _fn("ts_stack_close", _c_int, _P, ctypes.POINTER(_Error))
_stack_dev = _fn("ts_stack_dev", _P, _P, ctypes.c_char_p)
_stack_node = _fn("ts_stack_node", _P, _P, ctypes.c_char_p)
_stack_ndevs = _fn("ts_stack_ndevs", ctypes.c_size_t, _P)
_stack_dev_at = _fn("ts_stack_dev_at", _P, _P, ctypes.c_size_t)
_stack_nnodes = _fn("ts_stack_nnodes", ctypes.c_size_t, _P)
_stack_node_at = _fn("ts_stack_node_at", _P, _P, ctypes.c_size_t)
_dev_name = _fn("ts_dev_name", ctypes.c_char_p, _P)
_dev_type = _fn("ts_dev_type", ctypes.c_char_p, _P)
_dev_size = _fn("ts_dev_size", _u64, _P)
_dev_limits = _fn("ts_dev_limits", ctypes.POINTER(_Limits), _P)
_dev_status_json = _fn("ts_dev_status_json", _P, _P)
_limits_cap = _fn("ts_limits_cap", _c_int, ctypes.POINTER(_Limits), _c_int)
_pread = _fn("ts_pread", _c_int, _P, _P, ctypes.c_size_t, _u64)
_pwrite = _fn("ts_pwrite", _c_int, _P, _P, ctypes.c_size_t, _u64, ctypes.c_uint32)
_flush = _fn("ts_flush", _c_int, _P)
_discard = _fn("ts_discard", _c_int, _P, _u64, _u64)
_write_zeroes = _fn("ts_write_zeroes", _c_int, _P, _u64, _u64, ctypes.c_uint32)
_submit = _fn("ts_submit", _c_int, _P, ctypes.POINTER(_Io))
_dev_message = _fn("ts_dev_message", _c_int, _P, ctypes.c_char_p, ctypes.POINTER(_Error))
_last_error = _fn("ts_last_error", ctypes.c_char_p)
_last_errno = _fn("ts_last_errno", _c_int)
_block_status = _fn("ts_block_status", _c_int, _P, _u64, _u64, ctypes.POINTER(_ExtentList))
_extent_list_free = _fn("ts_extent_list_free", None, ctypes.POINTER(_ExtentList))

# ts_event_fn: (stack, node, event, detail, arg)
_EVENT_FN = ctypes.CFUNCTYPE(None, _P, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, _P)


class _ThinInfo(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint32), ("mapped_blocks", ctypes.c_uint64),
                ("mapped_bytes", ctypes.c_uint64), ("transaction_id", ctypes.c_uint64),
                ("creation_time", ctypes.c_uint32), ("snapshotted_time", ctypes.c_uint32),
                ("open", ctypes.c_bool), ("size", ctypes.c_uint64)]


class _PoolStatus(ctypes.Structure):
    _fields_ = [(f, ctypes.c_uint64) for f in (
                    "block_size", "data_blocks", "data_used_blocks", "data_free_blocks",
                    "metadata_blocks", "metadata_used_blocks", "transaction_id",
                    "held_metadata_root", "low_water_mark")]
    _fields_ += [(f, ctypes.c_bool) for f in (
                    "low_water", "out_of_data_space", "queue_if_no_space", "discard_passdown",
                    "zero_new_blocks", "read_only", "needs_check", "failed")]
    _fields_ += [("nr_thins", ctypes.c_uint32), ("commits", ctypes.c_uint64),
                 ("out_of_metadata_space", ctypes.c_bool)]


# Pool management exists in libraries built with the thin layers.
_HAVE_THIN = hasattr(_lib, "ts_pool_create_thin")
if _HAVE_THIN:
    _ERRP = ctypes.POINTER(_Error)
    _pool_create_thin = _fn("ts_pool_create_thin", _c_int, _P, ctypes.c_uint32, _ERRP)
    _pool_create_snap = _fn("ts_pool_create_snap", _c_int, _P, ctypes.c_uint32, ctypes.c_uint32,
                            _ERRP)
    _pool_delete_thin = _fn("ts_pool_delete_thin", _c_int, _P, ctypes.c_uint32, _ERRP)
    _pool_list_thins = _fn("ts_pool_list_thins", _c_int, _P, ctypes.POINTER(_ThinInfo),
                           ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t), _ERRP)
    _pool_get_status = _fn("ts_pool_get_status", _c_int, _P, ctypes.POINTER(_PoolStatus), _ERRP)
    _pool_extend = _fn("ts_pool_extend", _c_int, _P, _u64, _ERRP)
    _pool_extend_metadata = _fn("ts_pool_extend_metadata", _c_int, _P, _u64, _ERRP)
    _pool_set_transaction_id = _fn("ts_pool_set_transaction_id", _c_int, _P, _u64, _u64, _ERRP)
    _pool_reserve_metadata_snap = _fn("ts_pool_reserve_metadata_snap", _c_int, _P, _ERRP)
    _pool_release_metadata_snap = _fn("ts_pool_release_metadata_snap", _c_int, _P, _ERRP)


class _VolumeInfo(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char * 256), ("pool", ctypes.c_char * 256),
                ("origin", ctypes.c_char * 256), ("id", ctypes.c_uint32),
                ("in_pool", ctypes.c_bool), ("open", ctypes.c_bool), ("size", ctypes.c_uint64),
                ("mapped_bytes", ctypes.c_uint64), ("provisioned_bytes", ctypes.c_uint64),
                ("highest_mapped", ctypes.c_uint64)]


# The volume lifecycle (pool and configuration together), where the library has it.
_HAVE_VOLUMES = _HAVE_THIN and hasattr(_lib, "ts_volume_create")
if _HAVE_VOLUMES:
    _U32P = ctypes.POINTER(ctypes.c_uint32)
    _set_config_path = _fn("ts_stack_set_config_path", _c_int, _P, ctypes.c_char_p, _ERRP)
    _config_path = _fn("ts_stack_config_path", ctypes.c_char_p, _P)
    _volume_create = _fn("ts_volume_create", _c_int, _P, ctypes.c_char_p, ctypes.c_char_p, _u64,
                         ctypes.c_uint32, ctypes.c_uint32, _U32P, _ERRP)
    _volume_snapshot = _fn("ts_volume_snapshot", _c_int, _P, ctypes.c_char_p, ctypes.c_char_p,
                           ctypes.c_uint32, _U32P, _ERRP)
    _volume_delete = _fn("ts_volume_delete", _c_int, _P, ctypes.c_char_p, _ERRP)
    _volume_delete_id = _fn("ts_volume_delete_id", _c_int, _P, ctypes.c_char_p, ctypes.c_uint32,
                            _ERRP)
    _volume_resize = _fn("ts_volume_resize", _c_int, _P, ctypes.c_char_p, _u64, ctypes.c_uint32,
                         _ERRP)
    _stack_pool_extend = _fn("ts_stack_pool_extend", _c_int, _P, ctypes.c_char_p, _u64,
                             ctypes.c_uint32, _ERRP)
    _volume_list = _fn("ts_volume_list", _c_int, _P, ctypes.c_char_p, ctypes.POINTER(_VolumeInfo),
                       ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t), _ERRP)
_VOLUME_ANY_ID = 0xFFFFFFFF
_VOLUME_EXPORT = 1
_VOLUME_DISCARD_BEYOND = 2
_POOL_EXTEND_METADATA = 1


class _CheckResult(ctypes.Structure):
    _fields_ = [(f, ctypes.c_uint64) for f in (
                    "errors", "warnings", "nr_devices", "nr_mappings", "metadata_blocks_used",
                    "data_blocks_used", "transaction_id")] + [("stale", ctypes.c_bool)]


class _LogEntry(ctypes.Structure):
    _fields_ = [("index", ctypes.c_uint64), ("offset", ctypes.c_uint64),
                ("sector", ctypes.c_uint64), ("nr_sectors", ctypes.c_uint64),
                ("sector_size", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("mark", ctypes.c_char_p)]


_CHECK_FN = ctypes.CFUNCTYPE(None, _P, ctypes.c_bool, ctypes.c_char_p)
_ENTRY_FN = ctypes.CFUNCTYPE(_c_int, _P, ctypes.POINTER(_LogEntry))
_POOL_FORCE_SHARE = 1 << 0
_POOL_METADATA_SNAP = 1 << 1
_LOG_FLAGS = ("flush", "fua", "discard", "mark", "metadata")
_pool_check = _fn("ts_pool_check", _c_int, ctypes.c_char_p, ctypes.c_uint, _CHECK_FN, _P,
                  ctypes.POINTER(_CheckResult), ctypes.POINTER(_Error))
_pool_dump = _fn("ts_pool_dump", _c_int, ctypes.c_char_p, ctypes.c_uint, _P,
                 ctypes.POINTER(ctypes.c_bool), ctypes.POINTER(_Error))
_pool_restore = _fn("ts_pool_restore", _c_int, _P, ctypes.c_char_p, ctypes.POINTER(_Error))
_log_replay = _fn("ts_log_replay", _c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                  _u64, _ENTRY_FN, _P, ctypes.POINTER(_u64), ctypes.POINTER(_u64),
                  ctypes.POINTER(_Error))
_fopen = _libc.fopen
_fopen.restype = _P
_fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
_fclose = _libc.fclose
_fclose.argtypes = [_P]


def _raise(r, err):
    raise ThinstackError(r, err.msg.decode(errors="replace") or strerror(r))


def _cfile(path, mode):
    f = _fopen(os.fsencode(path), mode)
    if not f:
        e = ctypes.get_errno()
        raise ThinstackError(e, "cannot open %s: %s" % (path, os.strerror(e)))
    return f


def pool_check(metadata_path, force_share: bool = False) -> dict:
    """Check dm-thin pool metadata on a file or block device no stack has
    open (as thin_check). Returns the counts ("errors", "warnings",
    "nr_devices", ...), "stale", and "findings": (level, message) pairs."""
    findings = []
    cb = _CHECK_FN(lambda arg, error, msg: findings.append(
        ("error" if error else "warning", msg.decode(errors="replace"))))
    res, err = _CheckResult(), _Error()
    r = _pool_check(os.fsencode(metadata_path), _POOL_FORCE_SHARE if force_share else 0, cb,
                    None, ctypes.byref(res), ctypes.byref(err))
    if r:
        _raise(r, err)
    out = {f: getattr(res, f) for f, _ in _CheckResult._fields_}
    out["findings"] = findings
    return out


def pool_dump(metadata_path, out_path, metadata_snap: bool = False,
              force_share: bool = False) -> None:
    """Write the pool's metadata (or its held metadata snapshot) to out_path
    as thin_dump XML."""
    flags = (_POOL_METADATA_SNAP if metadata_snap else 0) | (_POOL_FORCE_SHARE if force_share else 0)
    f = _cfile(out_path, b"w")
    err = _Error()
    r = _pool_dump(os.fsencode(metadata_path), flags, f, None, ctypes.byref(err))
    _fclose(f)
    if r:
        _raise(r, err)


def pool_restore(xml_path, metadata_path) -> None:
    """Build fresh pool metadata on metadata_path from thin_dump XML; the
    old pool stays if the XML is refused or the build fails."""
    f = _cfile(xml_path, b"r")
    err = _Error()
    r = _pool_restore(f, os.fsencode(metadata_path), ctypes.byref(err))
    _fclose(f)
    if r:
        _raise(r, err)


def log_replay(log_path, target_path=None, end_mark: Optional[str] = None,
               limit: Optional[int] = None) -> List[dict]:
    """Read a dm-log-writes log; with target_path, replay it there (up to
    `limit` entries or the mark `end_mark`). Returns the entries read, as
    dicts with index, sector, nr_sectors, flags (names) and mark."""
    entries = []

    def each(arg, e):
        e = e.contents
        entries.append({"index": e.index, "sector": e.sector, "nr_sectors": e.nr_sectors,
                        "flags": [n for i, n in enumerate(_LOG_FLAGS) if e.flags & (1 << i)],
                        "mark": e.mark.decode(errors="replace")})
        return 0
    cb = _ENTRY_FN(each)
    if limit is not None:
        _check_uint("limit", limit)
    err = _Error()
    r = _log_replay(os.fsencode(log_path), os.fsencode(target_path) if target_path else None,
                    end_mark.encode() if end_mark is not None else None,
                    (1 << 64) - 1 if limit is None else limit, cb, None, None, None,
                    ctypes.byref(err))
    if r:
        _raise(r, err)
    return entries


# --------------------------------------------------------------------------
# Small helpers


def library_path() -> str:
    """The file name the shared library was loaded from."""
    return _lib._name


def version() -> str:
    """The library's version, "MAJOR.MINOR.PATCH"."""
    return _version().decode()


def strerror(code: int) -> str:
    """The message for an errno (either sign)."""
    return _strerror(int(code)).decode()


def err_name(code: int) -> str:
    """The symbolic name of an errno (either sign), e.g. "ENOSPC"."""
    return _err_name(int(code)).decode()


def parse_size(text: str) -> int:
    """Parse "64K", "1G", "512" (powers of 1024) into bytes."""
    v = _u64()
    r = _parse_size(str(text).encode(), ctypes.byref(v))
    if r:
        raise ThinstackError(r, "%r is not a size (bytes, or a number with K, M, G or T)" % text)
    return v.value


def format_size(n: int) -> str:
    """Format bytes as the largest exact unit ("64K", "1G", "12345")."""
    _check_uint("size", n)
    buf = ctypes.create_string_buffer(32)
    _format_size(n, buf, len(buf))
    return buf.value.decode()


def layer_types() -> List[tuple]:
    """The registered layer types as (name, summary) pairs."""
    out = []
    i = 0
    while True:
        t = _type_at(i)
        if not t:
            return out
        out.append((t.contents.name.decode(), (t.contents.summary or b"").decode()))
        i += 1


def has_layer_type(name: str) -> bool:
    """True if a layer type of that name is registered ("thin", "crypt", ...)."""
    return bool(_find_type(name.encode()))


def _check_uint(what, v):
    if isinstance(v, bool) or not isinstance(v, int):
        raise ThinstackError(_errno.EINVAL, "%s must be an integer, not %s" % (what, type(v).__name__))
    if v < 0 or v >= 1 << 64:
        raise ThinstackError(_errno.EINVAL, "%s %d is out of range" % (what, v))


def _opts(read_only, plugin_dir, events, force_share=False):
    """The open options, and the C callback that must live as long as the stack."""
    o = _OpenOpts()
    o.struct_size = ctypes.sizeof(_OpenOpts)
    o.flags = (_OPEN_READ_ONLY if read_only else 0) | (_OPEN_FORCE_SHARE if force_share else 0)
    o.plugin_dir = os.fsencode(plugin_dir) if plugin_dir is not None else None
    cb = None
    if events is not None:
        if not callable(events):
            raise ThinstackError(_errno.EINVAL, "events must be callable(node, event, detail)")

        def trampoline(stack, node, event, detail, arg):
            events((node or b"").decode(errors="replace"), (event or b"").decode(errors="replace"),
                   (detail or b"").decode(errors="replace"))
        cb = _EVENT_FN(trampoline)
        o.event = ctypes.cast(cb, _P)
    return o, cb


# --------------------------------------------------------------------------
# Stacks


def open(path, read_only: bool = False, plugin_dir=None, events=None,  # noqa: A001
         force_share: bool = False) -> "Stack":
    """Open the stack described by the JSON file at `path` (relative paths in
    it resolve against its folder). read_only opens every layer read-only
    and creates nothing; plugin_dir is where external layer types are looked
    up; events, if given, is called as events(node, event, detail) for the
    stack's asynchronous events (a thin pool crossing its low water mark,
    ...), from whichever thread noticed them: do little and return.

    The stack owns its files until closed: a second writer, or a reader
    beside a writer, raises ThinstackError with errno EBUSY naming the holder.
    force_share (with read_only) reads without the shared lock, beside a
    writer: what it reads may be stale; a "force-share" event says so when a
    writer holds a file."""
    opts, cb = _opts(read_only, plugin_dir, events, force_share)
    err = _Error()
    h = _P()
    r = _open_file(os.fsencode(path), ctypes.byref(opts), ctypes.byref(h), ctypes.byref(err))
    if r:
        raise ThinstackError(r, err.msg.decode(errors="replace") or strerror(r))
    return Stack(h, cb)


def open_string(config, base_dir=None, read_only: bool = False, plugin_dir=None,
                events=None, force_share: bool = False) -> "Stack":
    """Open a stack from JSON text, or from a dict that is serialised to JSON;
    relative paths resolve against base_dir (default: the current folder).
    The other arguments are open()'s."""
    if not isinstance(config, (str, bytes)):
        config = _json.dumps(config)
    if isinstance(config, str):
        config = config.encode()
    opts, cb = _opts(read_only, plugin_dir, events, force_share)
    err = _Error()
    h = _P()
    r = _open_string(config, os.fsencode(base_dir) if base_dir is not None else None,
                     ctypes.byref(opts), ctypes.byref(h), ctypes.byref(err))
    if r:
        raise ThinstackError(r, err.msg.decode(errors="replace") or strerror(r))
    return Stack(h, cb)


class Stack:
    """An open stack. Use it as a context manager, or call close(); devices
    obtained from it raise EBADF once it is closed. Requests may come from
    several threads, but none may still be running when close() is called."""

    def __init__(self, handle, event_cb=None):
        self._h = handle
        self._event_cb = event_cb  # the C callback must outlive the stack
        self._lock = threading.Lock()
        self._devs = {}

    def _handle(self):
        h = self._h
        if h is None:
            raise ThinstackError(_errno.EBADF, "the stack is closed")
        return h

    @property
    def closed(self) -> bool:
        return self._h is None

    def close(self) -> None:
        """Flush every layer (committing thin metadata) and close the stack.
        Raises ThinstackError if a flush failed; the stack is closed anyway.
        Closing a closed stack does nothing."""
        with self._lock:
            h, self._h = self._h, None
        if h is None:
            return
        err = _Error()
        r = _stack_close(h, ctypes.byref(err))
        if r:
            raise ThinstackError(r, err.msg.decode(errors="replace") or strerror(r))

    def serve_control(self, path: Optional[str] = None) -> str:
        """Serve this stack's control socket (ts_ctl_listen) at `path`, by
        default control_path() of the file the stack was opened from
        (CONFIG.ctl, else under $XDG_RUNTIME_DIR); returns the path. The
        socket goes when the stack closes or stop_control()."""
        if path is None:
            cfg = self.config_path
            if not cfg:
                raise ThinstackError(_errno.EINVAL, "no configuration file to put CONFIG.ctl beside")
            path = control_path(cfg)
        err = _Error()
        r = _ctl_listen(self._handle(), os.fsencode(path), ctypes.byref(err))
        if r:
            raise ThinstackError(r, err.msg.decode(errors="replace") or strerror(r))
        return _ctl_path(self._handle()).decode()

    def stop_control(self) -> None:
        """Stop the control server (ts_ctl_stop); no-op without one."""
        _ctl_stop(self._handle())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _wrap(self, dh):
        d = self._devs.get(dh)
        if d is None:
            cls = Pool if _HAVE_THIN and _dev_type(dh) == b"thin-pool" else Device
            d = self._devs[dh] = cls(self, dh)
        return d

    def device(self, name: str) -> "Device":
        """The exported device `name`; ThinstackError(ENOENT) if none."""
        dh = _stack_dev(self._handle(), name.encode())
        if not dh:
            raise ThinstackError(_errno.ENOENT, "the stack exports no device named %r" % name)
        return self._wrap(dh)

    def node(self, name: str) -> "Device":
        """Any node of the stack by name (exported or not); ENOENT if none."""
        dh = _stack_node(self._handle(), name.encode())
        if not dh:
            raise ThinstackError(_errno.ENOENT, "the stack has no node named %r" % name)
        return self._wrap(dh)

    @property
    def devices(self) -> List["Device"]:
        """The exported devices, in "exports" order."""
        h = self._handle()
        return [self._wrap(_stack_dev_at(h, i)) for i in range(_stack_ndevs(h))]

    @property
    def nodes(self) -> List["Device"]:
        """Every node, children before parents."""
        h = self._handle()
        return [self._wrap(_stack_node_at(h, i)) for i in range(_stack_nnodes(h))]

    # The volume lifecycle: the pool changes (committed), then the
    # configuration file is rewritten atomically (ts_volume_* in thin.h).

    def _vcall(self, fn, *args):
        if not _HAVE_VOLUMES:
            raise ThinstackError(_errno.EOPNOTSUPP, "the library has no volume lifecycle calls")
        err = _Error()
        r = fn(self._handle(), *args, ctypes.byref(err))
        if r:
            raise ThinstackError(r, err.msg.decode(errors="replace") or strerror(r))

    @property
    def config_path(self) -> Optional[str]:
        """The configuration file the lifecycle calls rewrite (the file the
        stack was opened from, or the one set), or None."""
        if not _HAVE_VOLUMES:
            return None
        p = _config_path(self._handle())
        return p.decode() if p else None

    def set_config_path(self, path: Optional[str]) -> None:
        """Name the file a stack opened from a string stands for; None forgets it."""
        self._vcall(_set_config_path, os.fsencode(path) if path is not None else None)

    def create_volume(self, name: str, size: int, pool: Optional[str] = None,
                      id: Optional[int] = None, export: bool = False) -> int:
        """Create an empty volume in `pool` (None: the only pool) and its
        `thin` layer `name`; returns the id (the lowest free one unless
        given). EEXIST name or id taken, EINVAL bad size or id."""
        _check_uint("size", size)
        if id is not None:
            _check_uint("id", id)
            if id >= 1 << 32:
                raise ThinstackError(_errno.EINVAL, "id %d is out of range" % id)
        out = ctypes.c_uint32(0)
        self._vcall(_volume_create, pool.encode() if pool else None, name.encode(), size,
                    _VOLUME_ANY_ID if id is None else id, _VOLUME_EXPORT if export else 0,
                    ctypes.byref(out))
        return out.value

    def snapshot(self, origin: str, name: str, export: bool = False) -> int:
        """Snapshot layer `origin`'s volume as a new layer `name` (recording
        "origin"); returns the new id. ENOENT no such layer."""
        out = ctypes.c_uint32(0)
        self._vcall(_volume_snapshot, origin.encode(), name.encode(),
                    _VOLUME_EXPORT if export else 0, ctypes.byref(out))
        return out.value

    def delete_volume(self, name: Optional[str] = None, pool: Optional[str] = None,
                      id: Optional[int] = None) -> None:
        """Delete layer `name`'s volume and the layer; or, with `id`, a
        volume of `pool` that no layer names. EBUSY open or in use."""
        if (name is None) == (id is None):
            raise ThinstackError(_errno.EINVAL, "give a layer name or a volume id")
        if name is not None:
            self._vcall(_volume_delete, name.encode())
        else:
            _check_uint("id", id)
            if id >= 1 << 32:
                raise ThinstackError(_errno.EINVAL, "id %d is out of range" % id)
            self._vcall(_volume_delete_id, pool.encode() if pool else None, id)

    def resize_volume(self, name: str, size: int, discard_beyond: bool = False) -> None:
        """Set layer `name`'s volume size: grow (live when open), or shrink,
        which ENOTEMPTY refuses over mapped blocks unless discard_beyond."""
        _check_uint("size", size)
        self._vcall(_volume_resize, name.encode(), size,
                    _VOLUME_DISCARD_BEYOND if discard_beyond else 0)

    def extend_pool(self, pool: Optional[str], size: int, metadata: bool = False) -> None:
        """Grow `pool`'s data (or metadata) space to `size` bytes, its file
        and the configuration's size of it together."""
        _check_uint("size", size)
        self._vcall(_stack_pool_extend, pool.encode() if pool else None, size,
                    _POOL_EXTEND_METADATA if metadata else 0)

    def volumes(self, pool: Optional[str] = None) -> List["VolumeInfo"]:
        """The volumes of `pool` (None: every pool), pool and configuration
        side by side: a volume no layer names has name None; a layer whose
        volume is missing has in_pool False."""
        count = ctypes.c_size_t(0)
        while True:
            cap = count.value
            arr = (_VolumeInfo * max(cap, 1))()
            self._vcall(_volume_list, pool.encode() if pool else None, arr, cap, ctypes.byref(count))
            if count.value <= cap:
                return [VolumeInfo(v.name.decode() or None, v.pool.decode(), v.origin.decode() or None,
                                   v.id, v.in_pool, v.open, v.size, v.mapped_bytes,
                                   v.provisioned_bytes, v.highest_mapped)
                        for v in arr[:count.value]]


# --------------------------------------------------------------------------
# Devices


@dataclass(frozen=True)
class Limits:
    """What a device accepts (see ts_limits in io.h); 0 maxima mean the op is
    unsupported (discard, provision) or not native (write_zeroes)."""
    size: int
    logical_block_size: int
    physical_block_size: int
    io_min: int
    io_opt: int
    max_io_bytes: int
    max_discard_bytes: int
    discard_granularity: int
    max_write_zeroes_bytes: int
    max_provision_bytes: int
    provision_granularity: int
    discard_zeroes: bool
    write_zeroes_unmap: bool
    fua: bool
    read_only: bool


@dataclass(frozen=True)
class Extent:
    """A range of block status: flags 0 = allocated data; ZERO = allocated,
    reads zeroes; HOLE|ZERO = unallocated, reads zeroes; HOLE = unallocated."""
    offset: int
    length: int
    flags: int

    @property
    def hole(self) -> bool:
        return bool(self.flags & EXTENT_HOLE)

    @property
    def zero(self) -> bool:
        return bool(self.flags & EXTENT_ZERO)


def _buffer(data, writable):
    """A ctypes pointer to a bytes-like object's memory, plus what keeps it alive."""
    if not writable and isinstance(data, bytes):
        return ctypes.cast(ctypes.c_char_p(data), _P), data, len(data)
    mv = memoryview(data)
    if not mv.contiguous:
        raise ThinstackError(_errno.EINVAL, "buffer must be contiguous")
    mv = mv.cast("B")
    n = mv.nbytes
    if mv.readonly:
        if writable:
            raise ThinstackError(_errno.EINVAL, "buffer is read-only")
        b = bytes(mv)
        return ctypes.cast(ctypes.c_char_p(b), _P), b, n
    if n == 0:
        return None, None, 0
    arr = (ctypes.c_char * n).from_buffer(mv)
    return ctypes.cast(arr, _P), arr, n


class Device:
    """A node of an open stack. Offsets and lengths are bytes, multiples of
    limits.logical_block_size. Methods release the GIL while the library
    works, so threads may use a device concurrently."""

    def __init__(self, stack: Stack, handle):
        self._stack = stack
        self._dh = handle

    def _h(self):
        self._stack._handle()
        return self._dh

    def _fail(self, r, what):
        if r:
            # The library's per-thread reason, read on the thread that failed.
            why = _last_error() if _last_errno() == r else None
            why = why.decode(errors="replace") if why else strerror(r)
            raise ThinstackError(r, "%s on %s: %s" % (what, self.name, why))

    def __repr__(self):
        if self._stack.closed:
            return "<thinstack.Device (stack closed)>"
        return "<thinstack.Device %s type=%s size=%d>" % (self.name, self.type, self.size)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        """Leaving a `with device:` block flushes the device."""
        if not self._stack.closed:
            self.flush()
        return False

    @property
    def name(self) -> str:
        return _dev_name(self._h()).decode()

    @property
    def type(self) -> str:
        """The layer type ("file", "thin", ...)."""
        return _dev_type(self._h()).decode()

    @property
    def size(self) -> int:
        return _dev_size(self._h())

    @property
    def limits(self) -> Limits:
        lim = _dev_limits(self._h()).contents
        return Limits(**{f: getattr(lim, f) for f, _ in _Limits._fields_})

    def capability(self, op: str) -> str:
        """How the device handles `op` ("read", ..., "provision", or "fua"):
        "none", "emulate" (the library emulates it) or "native"."""
        if op == "fua":
            idx = len(_OPS)
        elif op in _OPS:
            idx = _OPS.index(op)
        else:
            raise ThinstackError(_errno.EINVAL, "unknown operation %r" % (op,))
        return _CAPS[_limits_cap(_dev_limits(self._h()), idx)]

    def status(self) -> dict:
        """Request counters and the layer's own state."""
        p = _dev_status_json(self._h())
        if not p:
            raise ThinstackError(_errno.ENOMEM, "status of %s: out of memory" % self.name)
        try:
            return _json.loads(ctypes.string_at(p).decode())
        finally:
            _free(p)

    def read(self, offset: int, length: int) -> bytes:
        """Read `length` bytes at `offset`."""
        _check_uint("offset", offset)
        _check_uint("length", length)
        buf = bytearray(length)
        self.readinto(offset, buf)
        return bytes(buf)

    def readinto(self, offset: int, buffer) -> int:
        """Read len(buffer) bytes at `offset` into a writable buffer; returns
        the number of bytes read (all of them)."""
        _check_uint("offset", offset)
        ptr, keep, n = _buffer(buffer, True)
        self._fail(_pread(self._h(), ptr, n, offset), "read %d bytes at %d" % (n, offset))
        del keep
        return n

    def write(self, offset: int, data, fua: bool = False) -> int:
        """Write a bytes-like object at `offset`; fua makes it durable on
        return. Returns the number of bytes written."""
        _check_uint("offset", offset)
        ptr, keep, n = _buffer(data, False)
        self._fail(_pwrite(self._h(), ptr, n, offset, _IO_FUA if fua else 0),
                   "write %d bytes at %d" % (n, offset))
        del keep
        return n

    def flush(self) -> None:
        """Make every completed write durable (thin: commit metadata)."""
        self._fail(_flush(self._h()), "flush")

    def message(self, text: str) -> None:
        """Send the layer one of its own verbs, as `dmsetup message` does
        (log-writes: "mark NAME"). EOPNOTSUPP for a layer that takes none."""
        err = _Error()
        r = _dev_message(self._h(), text.encode(), ctypes.byref(err))
        if r:
            raise ThinstackError(r, err.msg.decode(errors="replace") or strerror(r))

    def discard(self, offset: int, length: int) -> None:
        """Release a range; it reads as zeroes afterwards where
        limits.discard_zeroes. EOPNOTSUPP where discards are not taken."""
        _check_uint("offset", offset)
        _check_uint("length", length)
        self._fail(_discard(self._h(), offset, length), "discard %d at %d" % (length, offset))

    def write_zeroes(self, offset: int, length: int, may_unmap: bool = False,
                     no_fallback: bool = False, fua: bool = False) -> None:
        """Make a range read as zeroes. may_unmap lets the device free space;
        no_fallback fails with EOPNOTSUPP rather than writing zero buffers."""
        _check_uint("offset", offset)
        _check_uint("length", length)
        flags = ((_IO_MAY_UNMAP if may_unmap else 0) | (_IO_NOFALLBACK if no_fallback else 0)
                 | (_IO_FUA if fua else 0))
        self._fail(_write_zeroes(self._h(), offset, length, flags),
                   "write_zeroes %d at %d" % (length, offset))

    def provision(self, offset: int, length: int, may_zero: bool = False) -> None:
        """Reserve space for a range in this device and every layer below,
        without writing data; never-written parts read as zeroes and data
        already there stays. may_zero says nothing in the range matters, so
        a layer that can reserve only by zeroing (a kernel device on its
        write-zeroes or "emulate" rung) may; without it such a layer fails
        with EOPNOTSUPP."""
        _check_uint("offset", offset)
        _check_uint("length", length)
        io = _Io(_OP_PROVISION, _IO_MAY_ZERO if may_zero else 0, offset, length, None, 0)
        self._fail(_submit(self._h(), ctypes.byref(io)), "provision %d at %d" % (length, offset))

    def block_status(self, offset: int = 0, length: Optional[int] = None) -> List[Extent]:
        """Extents describing [offset, offset+length) (default: to the end)."""
        _check_uint("offset", offset)
        if length is None:
            length = max(self.size - offset, 0)
        _check_uint("length", length)
        lst = _ExtentList()
        try:
            self._fail(_block_status(self._h(), offset, length, ctypes.byref(lst)),
                       "block_status %d at %d" % (length, offset))
            return [Extent(lst.v[i].offset, lst.v[i].length, lst.v[i].flags)
                    for i in range(lst.n)]
        finally:
            _extent_list_free(ctypes.byref(lst))


# --------------------------------------------------------------------------
# Thin pools


@dataclass(frozen=True)
class ThinInfo:
    """One volume of a pool (ts_thin_info)."""
    id: int
    mapped_blocks: int
    mapped_bytes: int
    transaction_id: int
    creation_time: int
    snapshotted_time: int
    open: bool
    size: int


@dataclass(frozen=True)
class VolumeInfo:
    """One volume as the pool and the configuration see it (ts_volume_info)."""
    name: Optional[str]
    pool: str
    origin: Optional[str]
    id: int
    in_pool: bool
    open: bool
    size: int
    mapped_bytes: int
    provisioned_bytes: int
    highest_mapped: int


@dataclass(frozen=True)
class PoolStatus:
    """A pool's state, as dm-thin's status line reports it (ts_pool_status)."""
    block_size: int
    data_blocks: int
    data_used_blocks: int
    data_free_blocks: int
    metadata_blocks: int
    metadata_used_blocks: int
    transaction_id: int
    held_metadata_root: int
    low_water_mark: int
    low_water: bool
    out_of_data_space: bool
    queue_if_no_space: bool
    discard_passdown: bool
    zero_new_blocks: bool
    read_only: bool
    needs_check: bool
    failed: bool
    nr_thins: int
    commits: int
    out_of_metadata_space: bool


class Pool(Device):
    """A `thin-pool` node: dm-thin's pool messages. Every call commits before
    it returns; a failed call changes nothing. Volume ids are 0..2**24-1."""

    def _call(self, fn, *args):
        err = _Error()
        r = fn(self._h(), *args, ctypes.byref(err))
        if r:
            raise ThinstackError(r, err.msg.decode(errors="replace") or
                                 "%s: %s" % (self.name, strerror(r)))

    def create_thin(self, id: int) -> None:
        """Create an empty volume. EEXIST id in use, EINVAL id out of range,
        ENOSPC metadata full, EROFS read-only pool."""
        _check_uint("id", id)
        if id >= 1 << 32:
            raise ThinstackError(_errno.EINVAL, "id %d is out of range" % id)
        self._call(_pool_create_thin, id)

    def create_snap(self, id: int, origin_id: int) -> None:
        """Create volume `id` as a snapshot of `origin_id` (O(1), shares every
        block). ENODEV no origin, EEXIST id in use."""
        _check_uint("id", id)
        _check_uint("origin_id", origin_id)
        if id >= 1 << 32 or origin_id >= 1 << 32:
            raise ThinstackError(_errno.EINVAL, "id out of range")
        self._call(_pool_create_snap, id, origin_id)

    def delete_thin(self, id: int) -> None:
        """Delete a volume, freeing the blocks it does not share. ENODEV no
        such volume, EBUSY it is open in this stack."""
        _check_uint("id", id)
        if id >= 1 << 32:
            raise ThinstackError(_errno.EINVAL, "id %d is out of range" % id)
        self._call(_pool_delete_thin, id)

    def thins(self) -> List[ThinInfo]:
        """The pool's volumes in ascending id order."""
        count = ctypes.c_size_t(0)
        while True:
            cap = count.value
            arr = (_ThinInfo * max(cap, 1))()
            self._call(_pool_list_thins, arr, cap, ctypes.byref(count))
            if count.value <= cap:
                return [ThinInfo(**{f: getattr(arr[i], f) for f, _ in _ThinInfo._fields_})
                        for i in range(count.value)]

    def pool_status(self) -> PoolStatus:
        """Space, transaction id, mode flags and commit count."""
        st = _PoolStatus()
        self._call(_pool_get_status, ctypes.byref(st))
        return PoolStatus(**{f: getattr(st, f) for f, _ in _PoolStatus._fields_})

    def extend(self, new_data_size: int) -> None:
        """Grow the data space to new_data_size bytes (a multiple of the block
        size), growing a `file` data layer's file first. EINVAL smaller or
        misaligned. A config that states the data file's size must be updated
        before the stack is opened again."""
        _check_uint("new_data_size", new_data_size)
        self._call(_pool_extend, new_data_size)

    def extend_metadata(self, new_metadata_size: int) -> None:
        """Grow the metadata space to new_metadata_size bytes (a multiple of
        4 KiB), growing a `file` metadata layer's file first; ends
        out-of-metadata-space mode. EINVAL smaller, misaligned or too large."""
        _check_uint("new_metadata_size", new_metadata_size)
        self._call(_pool_extend_metadata, new_metadata_size)

    def set_transaction_id(self, current_id: int, new_id: int) -> None:
        """Compare-and-swap the pool's transaction id (EINVAL when the stored
        id is not current_id)."""
        _check_uint("current_id", current_id)
        _check_uint("new_id", new_id)
        self._call(_pool_set_transaction_id, current_id, new_id)

    def reserve_metadata_snap(self) -> None:
        """Keep a read-only copy of the metadata (for thin_dump -m). EBUSY one
        is already held."""
        self._call(_pool_reserve_metadata_snap)

    def release_metadata_snap(self) -> None:
        """Drop the held metadata copy. EINVAL none is held."""
        self._call(_pool_release_metadata_snap)


# --------------------------------------------------------------------------
# The control socket (docs/control.md): a holder's stack, from any process

_ctl_listen = _fn("ts_ctl_listen", _c_int, _P, ctypes.c_char_p, ctypes.POINTER(_Error))
_ctl_stop = _fn("ts_ctl_stop", None, _P)
_ctl_path = _fn("ts_ctl_path", ctypes.c_char_p, _P)


_ctl_default_path = _fn("ts_ctl_default_path", _c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t)
_ctl_path_candidate = _fn("ts_ctl_path_candidate", _c_int, ctypes.c_char_p, ctypes.c_uint,
                          ctypes.c_char_p, ctypes.c_size_t)


def control_path(config: str) -> str:
    """The socket a holder of CONFIG serves when told none
    (ts_ctl_default_path): CONFIG.ctl when that fits a socket address and
    its folder is writable, else $XDG_RUNTIME_DIR/thinstack/NAME-HASH.ctl."""
    buf = ctypes.create_string_buffer(4096)
    r = _ctl_default_path(os.fsencode(config), buf, len(buf))
    if r:
        raise ThinstackError(r, "%s: no control socket path fits (%s)" % (config, strerror(r)))
    return os.fsdecode(buf.value)


def control_candidates(config: str) -> List[str]:
    """Where CONFIG's control socket may be, in the order clients look
    (ts_ctl_path_candidate): CONFIG.ctl, then the $XDG_RUNTIME_DIR place."""
    out = []
    for i in range(2):
        buf = ctypes.create_string_buffer(4096)
        if _ctl_path_candidate(os.fsencode(config), i, buf, len(buf)) == 0:
            out.append(os.fsdecode(buf.value))
    return out


class ControlError(ThinstackError):
    """A method's error reply: ``errno``, the message, and ``path`` (the JSON
    path or file it concerns) and ``code`` (the JSON-RPC code)."""

    def __init__(self, error):
        data = error.get("data") or {}
        name = data.get("errno", "")
        code = getattr(_errno, name, _errno.EIO) if name.startswith("E") else _errno.EIO
        super().__init__(code, error.get("message"))
        self.path = data.get("path", "")
        self.code = error.get("code")


class Control:
    """A client of a holder's control socket: ``Control("stack.json")`` (the
    holder's CONFIG.ctl) or ``Control("/path/to/socket")``. call() sends any
    method; the named calls mirror the methods. Failures raise ControlError.
    Not thread-safe: one request at a time per Control."""

    def __init__(self, path: str, timeout: Optional[float] = 30.0):
        import stat
        p = os.fspath(path)
        try:
            places = [p] if stat.S_ISSOCK(os.stat(p).st_mode) else control_candidates(p)
        except OSError:
            places = control_candidates(p)
        if not places:
            raise ThinstackError(_errno.ENAMETOOLONG, "%s: no control socket path fits" % p)
        why = []
        for place in places:
            sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(place)
            except OSError as e:
                sock.close()
                why.append((place, e))
                continue
            self.path, self._sock = place, sock
            break
        else:
            tried = "; ".join("%s (%s)" % (w, x.strerror) for w, x in why)
            raise ThinstackError(why[0][1].errno or _errno.EIO,
                                 "no control server answers at %s" % tried) from None
        self._f = self._sock.makefile("rb")
        self._id = 0
        self._events = []

    def close(self) -> None:
        self._f.close()
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _line(self):
        line = self._f.readline()
        if not line:
            raise ThinstackError(_errno.ECONNRESET, "%s: the server closed the connection" % self.path)
        return _json.loads(line)

    def call(self, method: str, **params):
        """Send one request and return its result (notifications that arrive
        meanwhile are kept for events())."""
        self._id += 1
        req = {"jsonrpc": "2.0", "id": self._id, "method": method}
        if params:
            req["params"] = {k: v for k, v in params.items() if v is not None}
        self._sock.sendall((_json.dumps(req) + "\n").encode())
        while True:
            r = self._line()
            if "method" in r:
                self._events.append(r.get("params"))
                continue
            if "error" in r:
                raise ControlError(r["error"])
            return r.get("result")

    def events(self, timeout: Optional[float] = None):
        """Yield the events (dicts: node, event, detail, time) after
        subscribe(), waiting up to `timeout` seconds for each (None: forever);
        ends when the wait runs out or the server goes."""
        self._sock.settimeout(timeout)
        try:
            while True:
                while self._events:
                    yield self._events.pop(0)
                try:
                    r = self._line()
                except (_socket.timeout, ThinstackError):
                    return
                if "method" in r:
                    self._events.append(r.get("params"))
        finally:
            self._sock.settimeout(30.0)

    def methods(self):
        return self.call("rpc.methods")

    def info(self):
        return self.call("stack.info")

    def status(self, node: Optional[str] = None):
        return self.call("stack.status", node=node)

    def dump_config(self, secrets: bool = False):
        return self.call("dump-config", secrets=secrets or None)

    def volumes(self, pool: Optional[str] = None):
        return self.call("volume.list", pool=pool)

    def create_volume(self, name, size, pool=None, id=None, export=False):
        return self.call("volume.create", name=name, size=size, pool=pool, id=id,
                         export=export or None)

    def snapshot(self, origin, name, export=False):
        return self.call("volume.snapshot", origin=origin, name=name, export=export or None)

    def delete_volume(self, name=None, id=None, pool=None):
        return self.call("volume.delete", name=name, id=id, pool=pool)

    def resize_volume(self, name, size, discard_beyond=False):
        return self.call("volume.resize", name=name, size=size,
                         discard_beyond=discard_beyond or None)

    def provision(self, dev, offset, length, may_zero=False):
        return self.call("io.provision", dev=dev, offset=offset, length=length,
                         may_zero=may_zero or None)

    def discard(self, dev, offset, length):
        return self.call("io.discard", dev=dev, offset=offset, length=length)

    def write_zeroes(self, dev, offset, length, may_unmap=False, no_fallback=False):
        return self.call("io.write-zeroes", dev=dev, offset=offset, length=length,
                         may_unmap=may_unmap or None, no_fallback=no_fallback or None)

    def map(self, dev, offset=None, length=None):
        return self.call("io.map", dev=dev, offset=offset, length=length)

    def pool_status(self, pool=None):
        return self.call("pool.status", pool=pool)

    def pool_extend(self, size, pool=None):
        return self.call("pool.extend", size=size, pool=pool)

    def pool_extend_metadata(self, size, pool=None):
        return self.call("pool.extend-metadata", size=size, pool=pool)

    def reserve_metadata_snap(self, pool=None):
        return self.call("pool.reserve-metadata-snap", pool=pool)

    def release_metadata_snap(self, pool=None):
        return self.call("pool.release-metadata-snap", pool=pool)

    def message(self, node, message):
        return self.call("layer.message", node=node, message=message)

    def subscribe(self):
        return self.call("events.subscribe")
