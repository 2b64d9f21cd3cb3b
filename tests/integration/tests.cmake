# The tests that install this build tree (cmake --install writes its
# manifest into it) run one at a time.
set_tests_properties(integration/man PROPERTIES RESOURCE_LOCK ts_build_install)
