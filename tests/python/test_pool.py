"""Thin pool management through the Python bindings, on real files."""
import errno

import pytest

import thinstack
from thinstack import ThinstackError

from conftest import file_layer
from test_thinstack import raises_errno, pattern

K = 1024
M = 1024 * K


def pool_config(out_of_space="error"):
    return {"version": 1,
            "layers": {"meta": file_layer("pool.meta", "64M"),
                       "data": file_layer("pool.data", "4M"),
                       "pool": {"type": "thin-pool", "metadata": "meta", "data": "data",
                                "block_size": "64K", "low_water_mark": "1M",
                                "out_of_space": out_of_space, "create": True},
                       "vol": {"type": "thin", "pool": "pool", "id": 1, "size": "8M",
                               "create": True}},
            "exports": ["vol"]}


@pytest.fixture
def events():
    return []


@pytest.fixture
def pstack(tmp_path, events):
    s = thinstack.open_string(pool_config(), base_dir=str(tmp_path),
                              events=lambda *e: events.append(e))
    yield s
    s.close()


def test_pool_object_and_status(pstack):
    pool = pstack.node("pool")
    assert isinstance(pool, thinstack.Pool) and pool.type == "thin-pool"
    assert not isinstance(pstack.device("vol"), thinstack.Pool)
    st = pool.pool_status()
    assert st.block_size == 64 * K
    assert st.data_blocks == 64
    assert st.data_used_blocks == 0 and st.data_free_blocks == 64
    assert st.nr_thins == 1
    assert st.low_water_mark == 1 * M and not st.low_water
    assert not st.out_of_data_space and not st.queue_if_no_space
    assert not st.read_only and not st.failed and not st.needs_check
    assert st.metadata_blocks > 0 and st.metadata_used_blocks > 0
    assert st.held_metadata_root == 0


def test_create_list_delete(pstack):
    pool = pstack.node("pool")
    vol = pstack.device("vol")
    vol.write(0, pattern(128 * K, 1))
    pool.create_thin(2)
    info = {t.id: t for t in pool.thins()}
    assert sorted(info) == [1, 2]
    assert info[1].open and info[1].size == 8 * M and info[1].mapped_blocks == 2
    assert info[1].mapped_bytes == 128 * K
    assert not info[2].open and info[2].size == 0 and info[2].mapped_blocks == 0
    e = raises_errno(errno.EEXIST, pool.create_thin, 2)
    assert "pool" in e.strerror
    raises_errno(errno.EINVAL, pool.create_thin, 1 << 24)
    raises_errno(errno.EINVAL, pool.create_thin, -1)
    pool.create_snap(3, 1)
    snap = {t.id: t for t in pool.thins()}[3]
    assert snap.mapped_blocks == 2            # shares the origin's blocks
    assert pool.pool_status().data_used_blocks == 2
    raises_errno(errno.ENODEV, pool.create_snap, 4, 99)
    raises_errno(errno.EEXIST, pool.create_snap, 3, 1)
    pool.delete_thin(2)
    pool.delete_thin(3)
    assert [t.id for t in pool.thins()] == [1]
    raises_errno(errno.EBUSY, pool.delete_thin, 1)   # open as "vol"
    raises_errno(errno.ENODEV, pool.delete_thin, 77)
    assert pool.pool_status().nr_thins == 1


def test_snapshot_keeps_old_data(tmp_path):
    cfg = pool_config()
    with thinstack.open_string(cfg, base_dir=str(tmp_path)) as s:
        s.device("vol").write(0, b"\1" * 64 * K)
        s.node("pool").create_snap(5, 1)
        s.device("vol").write(0, b"\2" * 64 * K)   # breaks sharing
    cfg["layers"]["snap"] = {"type": "thin", "pool": "pool", "id": 5, "size": "8M"}
    cfg["layers"]["pool"]["create"] = False
    cfg["exports"] = ["vol", "snap"]
    with thinstack.open_string(cfg, base_dir=str(tmp_path)) as s:
        assert s.device("snap").read(0, 64 * K) == b"\1" * 64 * K
        assert s.device("vol").read(0, 64 * K) == b"\2" * 64 * K


def test_transaction_id_and_metadata_snap(pstack):
    pool = pstack.node("pool")
    assert pool.pool_status().transaction_id == 0
    pool.set_transaction_id(0, 5)
    assert pool.pool_status().transaction_id == 5
    raises_errno(errno.EINVAL, pool.set_transaction_id, 0, 6)
    assert pool.pool_status().transaction_id == 5
    pool.reserve_metadata_snap()
    assert pool.pool_status().held_metadata_root != 0
    raises_errno(errno.EBUSY, pool.reserve_metadata_snap)
    pool.release_metadata_snap()
    assert pool.pool_status().held_metadata_root == 0
    raises_errno(errno.EINVAL, pool.release_metadata_snap)


def test_out_of_space_extend_and_events(pstack, events):
    pool = pstack.node("pool")
    vol = pstack.device("vol")
    vol.write(0, pattern(3 * M + 512 * K, 2))      # 56 of 64 blocks: below the mark
    assert pool.pool_status().low_water
    assert ("pool", "low-water-mark") in [(n, e) for n, e, _ in events]
    vol.write(3 * M + 512 * K, b"\4" * (512 * K))   # the last 8 blocks
    assert pool.pool_status().data_free_blocks == 0
    # One block more than there is (a single block, so that nothing is
    # allocated in part before the request fails).
    raises_errno(errno.ENOSPC, vol.write, 4 * M, b"\3" * (64 * K))
    assert pool.pool_status().out_of_data_space
    assert "out-of-data-space" in [e for _, e, _ in events]
    raises_errno(errno.EINVAL, pool.extend, 2 * M)          # smaller
    raises_errno(errno.EINVAL, pool.extend, 8 * M + 4 * K)  # not whole blocks
    pool.extend(8 * M)
    st = pool.pool_status()
    assert st.data_blocks == 128 and not st.out_of_data_space
    vol.write(4 * M, b"\3" * (1 * M))
    assert vol.read(4 * M, 1 * M) == b"\3" * (1 * M)
    assert vol.read(0, 64 * K) == pattern(3 * M + 512 * K, 2)[:64 * K]
    assert vol.read(3 * M + 512 * K, 512 * K) == b"\4" * (512 * K)


def test_extend_metadata(pstack):
    pool = pstack.node("pool")
    st = pool.pool_status()
    assert st.metadata_blocks == 64 * M // (4 * K) and not st.out_of_metadata_space
    raises_errno(errno.EINVAL, pool.extend_metadata, 32 * M)          # smaller
    raises_errno(errno.EINVAL, pool.extend_metadata, 80 * M + 512)    # not whole 4K blocks
    pool.extend_metadata(80 * M)
    assert pool.pool_status().metadata_blocks == 80 * M // (4 * K)
    pool.extend_metadata(80 * M)                                      # equal: nothing to do
    pstack.device("vol").write(0, b"\5" * (64 * K))


def test_pool_calls_after_close(tmp_path):
    s = thinstack.open_string(pool_config(), base_dir=str(tmp_path))
    pool = s.node("pool")
    s.close()
    raises_errno(errno.EBADF, pool.create_thin, 9)
    raises_errno(errno.EBADF, pool.thins)


def test_events_must_be_callable(tmp_path):
    raises_errno(errno.EINVAL, thinstack.open_string, pool_config(), str(tmp_path), events=42)
