# Shell tests of the nbd layer: each starts the NBD servers it needs.
file(GLOB TS_NBD_SHELL CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/*.sh)
foreach(sh ${TS_NBD_SHELL})
  get_filename_component(name ${sh} NAME_WE)
  add_test(NAME nbd/${name} COMMAND bash ${sh})
  set_tests_properties(nbd/${name} PROPERTIES SKIP_RETURN_CODE 77 LABELS nbd
    ENVIRONMENT "TS_BUILD_DIR=${PROJECT_BINARY_DIR};TS_SOURCE_DIR=${PROJECT_SOURCE_DIR};THINSTACK=$<TARGET_FILE:thinstack_cli>")
endforeach()
