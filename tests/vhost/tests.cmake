# The vhost-user-blk server runs a thread per queue beside the test's own
# driver thread: the suite also runs in the TSan build ("threads" label).
set_tests_properties(vhost/test_vhost_blk PROPERTIES LABELS "vhost;threads")
