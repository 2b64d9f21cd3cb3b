# The randomized suite has the concurrent-writer tests: run it in the TSan
# build too (CI runs the "threads" label there).
set_tests_properties(thin/test_thin_random PROPERTIES LABELS "thin;threads")
# The lifecycle calls on a live stack from several threads: TSan too.
set_tests_properties(thin/test_lifecycle PROPERTIES LABELS "thin;threads")
