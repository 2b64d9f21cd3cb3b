# The rbd tests share one throwaway Ceph cluster (tests/ceph), started by a
# ctest fixture before the first of them and stopped after the last. Each
# test skips (fails under CI=true) when the cluster is not there.
set(TS_CEPH_DIR ${PROJECT_BINARY_DIR}/ceph)
add_test(NAME rbd/ceph-start COMMAND bash ${PROJECT_SOURCE_DIR}/tests/ceph/fixture.sh start ${TS_CEPH_DIR})
add_test(NAME rbd/ceph-stop COMMAND bash ${PROJECT_SOURCE_DIR}/tests/ceph/fixture.sh stop ${TS_CEPH_DIR})
set_tests_properties(rbd/ceph-start PROPERTIES FIXTURES_SETUP ceph SKIP_RETURN_CODE 77 LABELS rbd
  RESOURCE_LOCK ceph)
set_tests_properties(rbd/ceph-stop PROPERTIES FIXTURES_CLEANUP ceph LABELS rbd RESOURCE_LOCK ceph)

set(TS_RBD_TESTS)
if(TARGET rbd_test_rbd)
  if(TS_HAVE_RBD)
    target_compile_definitions(rbd_test_rbd PRIVATE TS_HAVE_RBD)
  endif()
  list(APPEND TS_RBD_TESTS rbd/test_rbd)
endif()
file(GLOB TS_RBD_SHELL CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/*.sh)
foreach(sh ${TS_RBD_SHELL})
  get_filename_component(name ${sh} NAME_WE)
  add_test(NAME rbd/${name} COMMAND bash ${sh})
  set_tests_properties(rbd/${name} PROPERTIES SKIP_RETURN_CODE 77 LABELS rbd
    ENVIRONMENT "TS_BUILD_DIR=${PROJECT_BINARY_DIR};TS_SOURCE_DIR=${PROJECT_SOURCE_DIR};THINSTACK=$<TARGET_FILE:thinstack_cli>")
  list(APPEND TS_RBD_TESTS rbd/${name})
endforeach()
foreach(t ${TS_RBD_TESTS})
  # Tests of one cluster run one at a time: two shared cores, and timings.
  set_tests_properties(${t} PROPERTIES FIXTURES_REQUIRED ceph RESOURCE_LOCK ceph-io)
  set_property(TEST ${t} APPEND PROPERTY ENVIRONMENT "CEPH_CONF=${TS_CEPH_DIR}/ceph.conf"
    "TSAN_OPTIONS=suppressions=${CMAKE_CURRENT_LIST_DIR}/tsan.supp")
endforeach()
