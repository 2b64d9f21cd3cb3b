"""The offline tools through the bindings: pool metadata check, dump and
restore, and dm-log-writes replay, on real files."""
import errno
import shutil

import pytest

import thinstack
from thinstack import ThinstackError

from conftest import file_layer

M = 1 << 20


def make_pool(tmp_path):
    cfg = {"version": 1,
           "layers": {"meta": file_layer("pool.meta", "8M"),
                      "data": file_layer("pool.data", "8M"),
                      "pool": {"type": "thin-pool", "metadata": "meta", "data": "data",
                               "block_size": "64K", "create": True},
                      "vol": {"type": "thin", "pool": "pool", "id": 3, "size": "4M",
                              "create": True}},
           "exports": ["vol"]}
    with thinstack.open_string(cfg, base_dir=str(tmp_path)) as s:
        s.device("vol").write(0, b"\x5a" * (256 * 1024))
    return str(tmp_path / "pool.meta")


def test_check_dump_restore(tmp_path):
    meta = make_pool(tmp_path)
    res = thinstack.pool_check(meta)
    assert res["errors"] == 0 and res["nr_devices"] == 1 and res["nr_mappings"] == 4
    assert res["findings"] == [] and not res["stale"]

    xml = tmp_path / "pool.xml"
    thinstack.pool_dump(meta, str(xml))
    text = xml.read_text()
    assert '<device dev_id="3"' in text

    copy = tmp_path / "copy.meta"
    shutil.copyfile(meta, copy)
    with open(copy, "r+b") as f:  # wipe the superblock
        f.write(b"\0" * 4096)
    broken = thinstack.pool_check(str(copy))
    assert broken["errors"] > 0 and broken["findings"][0][0] == "error"
    thinstack.pool_restore(str(xml), str(copy))
    again = thinstack.pool_check(str(copy))
    assert again["errors"] == 0 and again["nr_mappings"] == 4

    bad = tmp_path / "bad.xml"
    bad.write_text(text.replace('dev_id="3"', 'dev_id="-1"'))
    with pytest.raises(ThinstackError) as e:
        thinstack.pool_restore(str(bad), str(copy))
    assert e.value.errno == errno.EINVAL and "line" in str(e.value)


def test_check_names_a_missing_file(tmp_path):
    with pytest.raises(ThinstackError) as e:
        thinstack.pool_check(str(tmp_path / "absent.meta"))
    assert e.value.errno == errno.ENOENT and "absent.meta" in str(e.value)


def test_log_replay(tmp_path):
    cfg = {"version": 1,
           "layers": {"disk": file_layer("disk.img", "1M"),
                      "log": file_layer("disk.log", "8M"),
                      "lw": {"type": "log-writes", "child": "disk", "log": "log"}},
           "exports": ["lw"]}
    with thinstack.open_string(cfg, base_dir=str(tmp_path)) as s:
        d = s.device("lw")
        d.write(0, b"\x11" * 4096)
        d.flush()
        d.write(8192, b"\x22" * 4096)
    entries = thinstack.log_replay(str(tmp_path / "disk.log"))
    writes = [e for e in entries if e["nr_sectors"]]
    assert [(e["sector"], e["nr_sectors"]) for e in writes[:2]] == [(0, 8), (16, 8)]

    target = tmp_path / "target.img"
    target.write_bytes(b"\0" * M)
    # Up to the first write only: the second is not there.
    thinstack.log_replay(str(tmp_path / "disk.log"), str(target), limit=entries.index(writes[0]) + 1)
    data = target.read_bytes()
    assert data[:4096] == b"\x11" * 4096 and data[8192:12288] == b"\0" * 4096
    thinstack.log_replay(str(tmp_path / "disk.log"), str(target))
    assert target.read_bytes()[8192:12288] == b"\x22" * 4096

    with pytest.raises(ThinstackError) as e:
        thinstack.log_replay(str(tmp_path / "disk.img"))
    assert e.value.errno == errno.EINVAL and "not a dm-log-writes log" in str(e.value)
    with pytest.raises(ThinstackError) as e:
        thinstack.log_replay(str(tmp_path / "disk.log"), str(target), end_mark="nosuch")
    assert e.value.errno == errno.ENOENT
