# The crash harness (crash/test_harness) kills this workload mid-work.
add_executable(crash_workload ${CMAKE_CURRENT_LIST_DIR}/workload.c)
target_compile_definitions(crash_workload PRIVATE _GNU_SOURCE)
target_link_libraries(crash_workload PRIVATE thinstack_static)
add_dependencies(crash_test_harness crash_workload thinstack_cli)
set_tests_properties(crash/test_harness PROPERTIES TIMEOUT 300)
