#!/usr/bin/env bash
# The Python bindings on an rbd stack: Device.status() on the main thread
# and from a thread (whose malloc arena lies above 4 GiB, so the string it
# frees must reach free() whole), with the rbd layer's own fields and the
# request counters a write leaves.
source "$TS_SOURCE_DIR/tests/common/requires.sh"
requires rbd python3
[ -r "${CEPH_CONF:-}" ] || skip_or_fail "needs a Ceph cluster: \$CEPH_CONF (tests/ceph/start-ceph.sh)"
"$THINSTACK" types > "$TMP/types.txt"
grep -q "^rbd:" "$TMP/types.txt" || skip_or_fail "built without librbd"
cd "$TMP"
I=ts-pystatus-$$
cleanup_fns+=("rbd rm --no-progress rbd/$I >/dev/null 2>&1")
rbd create --size 64M --object-size 1M rbd/$I
cat > s.json <<JSON
{ "version": 1, "layers": { "img": { "type": "rbd", "pool": "rbd", "image": "$I" } },
  "exports": ["img"] }
JSON
export THINSTACK_LIB="$TS_BUILD_DIR/libthinstack.so" PYTHONPATH="$TS_SOURCE_DIR/bindings/python"
export PYTHONDONTWRITEBYTECODE=1 IMAGE=$I
# shellcheck disable=SC2046 # words NAME=VALUE without spaces
env $(sanitizer_env "$THINSTACK_LIB") python3 - <<'PY' || fail "python status on rbd (exit $?)"
import os, threading
import thinstack

with thinstack.open("s.json") as s:
    d = s.device("img")
    st = d.status()
    assert st["name"] == "img" and st["type"] == "rbd" and st["size"] == 64 << 20, st
    lay = st["layer"]
    assert lay["image"] == "rbd/" + os.environ["IMAGE"] and lay["object_size"] == 1 << 20, st
    # A writable open holds the exclusive lock; the granularity is librbd's.
    assert lay["exclusive_lock"] is True, st
    g = lay["discard_granularity"]
    assert g > 0 and g & (g - 1) == 0, st
    d.write(0, b"\5" * 8192)
    out = []
    t = threading.Thread(target=lambda: out.append(d.status()))
    t.start()
    t.join()
    assert out, "status() from a thread raised"
    w = out[0]["requests"]["write"]
    assert w["requests"] == st["requests"]["write"]["requests"] + 1, out[0]
    assert w["bytes"] == st["requests"]["write"]["bytes"] + 8192, out[0]
    assert out[0]["layer"]["image"] == st["layer"]["image"], out[0]
PY
echo "rbd python_status: ok"
