"""thinstack.Control against a stack this process serves (Stack.serve_control):
every kind of method, its errors as ControlError with errno and path, events
after subscribe, and the CLI's view of the same socket."""
import errno
import os
import subprocess

import pytest

import thinstack
from conftest import file_layer


@pytest.fixture
def served(config, tmp_path):
    if not thinstack.has_layer_type("thin-pool"):
        pytest.skip("needs the thin layers")
    path = config({
        "meta": file_layer("meta.img", "8M"),
        "data": file_layer("data.img", "64M"),
        "pool": {"type": "thin-pool", "metadata": "meta", "data": "data", "block_size": "64K",
                 "low_water_mark": "60M", "create": True},
        "vm0": {"type": "thin", "pool": "pool", "id": 0, "size": "16M", "create": True},
    }, ["vm0"])
    stack = thinstack.open(path)
    sock = stack.serve_control()
    assert sock == str(tmp_path / "stack.json.ctl")
    assert oct(os.stat(sock).st_mode & 0o777) == "0o600"
    yield path, stack
    stack.close()
    assert not os.path.exists(sock)


def test_methods_and_lifecycle(served):
    path, stack = served
    with thinstack.Control(path) as c:
        names = {m["name"] for m in c.methods()}
        assert {"volume.create", "io.map", "events.subscribe", "pool.extend"} <= names
        assert [n["name"] for n in c.info()["nodes"]] == ["meta", "data", "pool", "vm0"]
        assert c.create_volume("vm1", "4M")["id"] == 1
        assert c.snapshot("vm0", "s0")["pool"] == "pool"
        assert {v["name"] for v in c.volumes()} == {"vm0", "vm1", "s0"}
        c.resize_volume("vm1", 8 << 20)
        c.delete_volume("s0")
        assert c.provision("vm0", 0, "1M")["length"] == 1 << 20
        ext = c.map("vm0", 0, 2 << 20)["extents"]
        assert ext[0] == {"offset": 0, "length": 1 << 20, "flags": thinstack.EXTENT_ZERO,
                          "hole": False, "zero": True}
        c.write_zeroes("vm0", 0, 65536, may_unmap=True)
        c.discard("vm0", 0, 1 << 20)
        st = c.pool_status()
        assert st["pool"] == "pool" and st["mode"] == "rw"
        c.reserve_metadata_snap()
        assert c.pool_status()["held_metadata_root"] > 0
        c.release_metadata_snap()
        assert c.pool_extend("96M")["grown"] is True
        assert [s["name"] for s in c.status("vm0")] == ["vm0"]
        assert "vm1" in c.dump_config()["layers"]
    # The configuration file followed (the holder's lifecycle calls).
    import json
    layers = json.load(open(path))["layers"]
    assert "vm1" in layers and "s0" not in layers


def test_errors(served):
    path, _ = served
    with thinstack.Control(path) as c:
        with pytest.raises(thinstack.ControlError) as e:
            c.create_volume("vm0", "1M")
        assert e.value.errno == errno.EEXIST and "vm0" in str(e.value)
        with pytest.raises(thinstack.ControlError) as e:
            c.call("volume.create", name="x", size=True)
        assert e.value.errno == errno.EINVAL and e.value.path == "params.size"
        assert e.value.code == -32602
        with pytest.raises(thinstack.ControlError) as e:
            c.call("no.such")
        assert e.value.errno == errno.ENOSYS and e.value.code == -32601
        with pytest.raises(thinstack.ControlError) as e:
            c.delete_volume("vm0")
        assert e.value.errno == errno.EBUSY
        c.subscribe()
        with pytest.raises(thinstack.ControlError) as e:
            c.subscribe()
        assert e.value.errno == errno.EALREADY
        # Still serving after all of it.
        assert c.pool_status()["pool"] == "pool"


def test_events(served):
    path, stack = served
    with thinstack.Control(path) as c:
        c.subscribe()
        # Below the low water mark (60M of 64M free).
        stack.device("vm0").provision(0, 8 << 20)
        ev = next(c.events(timeout=10))
        assert ev["node"] == "pool" and ev["event"] == "low-water-mark", ev


def test_cli_through_the_socket(served):
    path, _ = served
    cli = os.path.join(os.environ.get("TS_BUILD_DIR", "build"), "thinstack")
    if not os.access(cli, os.X_OK):
        pytest.skip("no thinstack CLI in this build")
    out = subprocess.run([cli, "thin", "create", path, "vm2", "--size", "2M"],
                         capture_output=True, text=True, check=True).stdout
    assert out == "volume vm2 (id 1, 2M) created in pool pool\n"
    with thinstack.Control(path) as c:
        assert "vm2" in {v["name"] for v in c.volumes()}


def test_no_server(tmp_path):
    with pytest.raises(thinstack.ThinstackError) as e:
        thinstack.Control(str(tmp_path / "none.json"))
    assert e.value.errno in (errno.ENOENT, errno.ECONNREFUSED)


def test_runtime_dir_fallback(config, monkeypatch, tmp_path):
    # CONFIG.ctl does not fit a socket address (108 bytes): the holder and
    # the client both move to $XDG_RUNTIME_DIR/thinstack, as the CLI does.
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    name = "s" * max(1, 110 - len(str(tmp_path))) + ".json"
    path = config({"disk": file_layer("disk.img", "1M")}, ["disk"], name=name)
    assert len(path + ".ctl") > 107
    assert thinstack.control_candidates(path) == [thinstack.control_path(path)]
    with thinstack.open(path) as stack:
        sock = stack.serve_control()
        assert os.path.dirname(sock) == str(run / "thinstack")
        assert sock == thinstack.control_path(path)
        with thinstack.Control(path) as c:
            assert c.path == sock
            assert [n["name"] for n in c.info()["nodes"]] == ["disk"]
        cli = os.path.join(os.environ.get("TS_BUILD_DIR", "build"), "thinstack")
        if os.access(cli, os.X_OK):
            out = subprocess.run([cli, "status", path], capture_output=True, text=True)
            assert out.returncode == 0 and "disk" in out.stdout, out.stderr
