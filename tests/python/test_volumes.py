"""The volume lifecycle through the Python bindings: the pool and the
configuration file change together (create_volume, snapshot, delete_volume,
resize_volume, extend_pool, volumes), on real files."""
import errno
import json
import os

import pytest

import thinstack

from conftest import file_layer
from test_thinstack import raises_errno, pattern

K = 1024
M = 1024 * K


@pytest.fixture
def cfgfile(tmp_path):
    """A configuration file with a pool and no volume, in a key order of its own."""
    p = tmp_path / "stack.json"
    p.write_text(json.dumps({
        "exports": [],
        "version": 1,
        "layers": {"meta": file_layer("pool.meta", "16M"),
                   "data": file_layer("pool.data", "64M"),
                   "pool": {"type": "thin-pool", "metadata": "meta", "data": "data",
                            "create": True}}}, indent=2))
    with thinstack.open(str(p)):
        pass   # formats the pool
    return str(p)


def load(path):
    with open(path) as f:
        return json.load(f)


def test_create_write_snapshot_delete(cfgfile):
    with thinstack.open(cfgfile) as s:
        assert s.config_path == cfgfile
        assert s.create_volume("vm0", 8 * M, export=True) == 0
        assert s.create_volume("vm1", 4 * M, pool="pool", id=7) == 7
        raises_errno(errno.EEXIST, s.create_volume, "vm0", 8 * M)
        raises_errno(errno.EEXIST, s.create_volume, "vm2", 8 * M, id=7)
        raises_errno(errno.EINVAL, s.create_volume, "vm2", 1000)
        raises_errno(errno.EINVAL, s.create_volume, "vm2", 8 * M, id=-1)
    c = load(cfgfile)
    assert list(c) == ["exports", "version", "layers"]
    assert list(c["layers"]) == ["meta", "data", "pool", "vm0", "vm1"]
    assert c["layers"]["vm1"] == {"type": "thin", "pool": "pool", "id": 7, "size": "4M"}
    assert c["exports"] == ["vm0"]

    with thinstack.open(cfgfile) as s:
        s.device("vm0").write(64 * K, pattern(128 * K, 3))
        assert s.snapshot("vm0", "snap") == 1
        s.device("vm0").write(64 * K, b"\7" * (128 * K))
        raises_errno(errno.ENOENT, s.snapshot, "nosuch", "snap2")
        raises_errno(errno.EBUSY, s.delete_volume, "vm0")        # open here
    assert load(cfgfile)["layers"]["snap"]["origin"] == "vm0"

    with thinstack.open(cfgfile) as s:
        assert s.node("snap").read(64 * K, 128 * K) == pattern(128 * K, 3)
        vols = {v.name: v for v in s.volumes()}
        assert sorted(vols) == ["snap", "vm0", "vm1"]
        assert vols["snap"].origin == "vm0" and vols["snap"].id == 1
        assert vols["vm0"].mapped_bytes == 128 * K and vols["vm0"].open
        assert vols["vm1"].mapped_bytes == 0 and vols["vm1"].size == 4 * M

    # The pool part alone, told which file it stands for, deletes.
    part = {"version": 1, "layers": {k: v for k, v in load(cfgfile)["layers"].items()
                                     if k in ("meta", "data", "pool")}}
    with thinstack.open_string(part, base_dir=os.path.dirname(cfgfile)) as s:
        assert s.config_path is None
        s.set_config_path(cfgfile)
        s.delete_volume("vm0")
        s.delete_volume("vm1")
        raises_errno(errno.ENOENT, s.delete_volume, "vm0")
        raises_errno(errno.EINVAL, s.delete_volume)
        assert [v.name for v in s.volumes("pool")] == ["snap"]
    c = load(cfgfile)
    assert list(c["layers"]) == ["meta", "data", "pool", "snap"] and c["exports"] == []


def test_resize_grow_live_and_shrink(cfgfile):
    with thinstack.open(cfgfile) as s:
        s.create_volume("vm0", 4 * M)
    with thinstack.open(cfgfile) as s:
        vm0 = s.node("vm0")
        s.resize_volume("vm0", 16 * M)
        assert vm0.size == 16 * M                      # grown live
        vm0.write(12 * M, b"\5" * (64 * K))
        raises_errno(errno.EBUSY, s.resize_volume, "vm0", 8 * M, discard_beyond=True)
    assert load(cfgfile)["layers"]["vm0"]["size"] == "16M"
    part = {"version": 1, "layers": {k: v for k, v in load(cfgfile)["layers"].items()
                                     if k in ("meta", "data", "pool")}}
    with thinstack.open_string(part, base_dir=os.path.dirname(cfgfile)) as s:
        s.set_config_path(cfgfile)
        e = raises_errno(errno.ENOTEMPTY, s.resize_volume, "vm0", 8 * M)
        assert "12648448" in e.strerror          # the end of the mapped blocks
        s.resize_volume("vm0", 8 * M, discard_beyond=True)
        (v,) = s.volumes()
        assert v.size == 8 * M and v.mapped_bytes == 0
    assert load(cfgfile)["layers"]["vm0"]["size"] == "8M"


def test_extend_pool_keeps_the_config(cfgfile):
    with thinstack.open(cfgfile) as s:
        raises_errno(errno.EINVAL, s.extend_pool, None, 32 * M)     # smaller
        s.extend_pool("pool", 128 * M)
        s.extend_pool(None, 32 * M, metadata=True)
        st = s.node("pool").pool_status()
        assert st.data_blocks * st.block_size == 128 * M
    c = load(cfgfile)["layers"]
    assert c["data"]["size"] == "128M" and c["meta"]["size"] == "32M"
    assert os.path.getsize(os.path.join(os.path.dirname(cfgfile), "pool.data")) == 128 * M
    with thinstack.open(cfgfile) as s:          # the file and the config agree
        assert s.node("pool").pool_status().data_blocks * 64 * K == 128 * M


def test_volume_no_layer_names(cfgfile):
    events = []
    with thinstack.open(cfgfile) as s:
        s.node("pool").create_thin(5)           # behind the configuration's back
    with thinstack.open(cfgfile, events=lambda *e: events.append(e)) as s:
        assert [(n, e) for n, e, _ in events] == [("pool", "volume-not-in-config")]
        assert "--id 5" in events[0][2]
        (v,) = s.volumes()
        assert v.name is None and v.id == 5 and v.in_pool
        raises_errno(errno.ENODEV, s.delete_volume, pool="pool", id=6)
        s.delete_volume(pool="pool", id=5)
        assert s.volumes() == []
