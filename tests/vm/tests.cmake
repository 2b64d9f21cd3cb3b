# Tests against the real kernel's device-mapper in a VM (tests/vm/run-vm.sh):
# every tests/vm/test-*.sh, label vm. Under TCG a boot takes seconds and the
# checks minutes, so they get a generous timeout and run one at a time (each
# VM already uses both vCPUs).
file(GLOB TS_VM_TESTS CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/test-*.sh)
foreach(sh ${TS_VM_TESTS})
  get_filename_component(name ${sh} NAME_WE)
  string(REGEX REPLACE "^test-" "" name ${name})
  add_test(NAME vm/${name} COMMAND bash ${sh})
  set_tests_properties(vm/${name} PROPERTIES SKIP_RETURN_CODE 77 LABELS vm TIMEOUT 900
    RESOURCE_LOCK vm
    ENVIRONMENT "TS_BUILD_DIR=${PROJECT_BINARY_DIR};TS_SOURCE_DIR=${PROJECT_SOURCE_DIR};THINSTACK=$<TARGET_FILE:thinstack_cli>")
endforeach()
