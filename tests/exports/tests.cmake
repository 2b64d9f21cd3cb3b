# The byte-range adapter's concurrency test also runs in the TSan build
# (which selects the "threads" label).
set_tests_properties(exports/test_bytedev PROPERTIES LABELS "exports;threads")
