"""A request the library rejects raises ThinstackError carrying the reason
the request path gave (alignment, past the end, read-only), not only strerror."""
import errno

import thinstack

from conftest import file_layer
from test_thinstack import raises_errno


def test_request_errors_say_why(config):
    p = config({"vm0": file_layer("vm0.img", "1G", block_size=4096)}, ["vm0"])
    with thinstack.open(p) as st:
        d = st.device("vm0")
        e = raises_errno(errno.EINVAL, d.read, 0, 100)
        assert "offset 0 + length 100 is not a multiple of the logical block size 4096 of vm0" \
            in str(e), str(e)
        e = raises_errno(errno.EINVAL, d.read, 2 << 30, 4096)
        assert "offset 2G is past the end of vm0 (1 GiB)" in str(e), str(e)
        e = raises_errno(errno.EINVAL, d.discard, 512, 4096)
        assert "not a multiple of the logical block size 4096" in str(e), str(e)
