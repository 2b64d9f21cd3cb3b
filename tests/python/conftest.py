"""pytest set-up for the Python bindings: import them from the source tree and
build stacks on real files in a per-test temporary folder."""
import json
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
# THINSTACK_TEST_INSTALLED=1: test the package the interpreter has installed
# (integration/python-venv), not the source tree's.
if os.environ.get("THINSTACK_TEST_INSTALLED") != "1":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "bindings", "python"))

import thinstack  # noqa: E402


def pytest_sessionfinish(session, exitstatus):
    """Under CI=true a skipped test fails the run, as everywhere else in the
    project: ctest sees only pytest's exit status, never its skips."""
    if os.environ.get("CI") != "true":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped:
        for rep in skipped:
            print("skipped under CI=true: %s" % (rep.nodeid,), file=sys.stderr)
        session.exitstatus = 1


def file_layer(path, size="4M", **extra):
    d = {"type": "file", "path": path, "size": size, "create": True}
    d.update(extra)
    return d


@pytest.fixture
def config(tmp_path):
    """Write a JSON config into the test's folder; returns its path."""
    def write(layers, exports, name="stack.json"):
        p = tmp_path / name
        p.write_text(json.dumps({"version": 1, "layers": layers, "exports": exports}))
        return str(p)
    return write


@pytest.fixture
def stack(tmp_path):
    """A stack with a file device "disk" (4 MiB), a fault layer "nodisc" over
    a second file that takes no discard, provision or native write-zeroes,
    and a fault layer "bad" failing writes in [64K, 128K) with EIO and
    provisions with ENOSPC."""
    cfg = {
        "version": 1,
        "layers": {
            "disk": file_layer("disk.img"),
            "other": file_layer("other.img", "1M"),
            "nodisc": {"type": "fault", "child": "other",
                       "limits": {"max_discard_bytes": 0, "max_provision_bytes": 0,
                                  "max_write_zeroes_bytes": 0}},
            "third": file_layer("third.img", "1M"),
            "bad": {"type": "fault", "child": "third", "rules": [
                {"op": "write", "errno": "EIO", "offset": "64K", "length": "64K"},
                {"op": "provision", "errno": "ENOSPC"}]},
        },
        "exports": ["disk", "nodisc", "bad"],
    }
    s = thinstack.open_string(cfg, base_dir=str(tmp_path))
    yield s
    s.close()
