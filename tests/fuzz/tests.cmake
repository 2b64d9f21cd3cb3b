# Fuzz targets (tests/fuzz/fuzz_<target>.c), in two builds:
#  - always: fuzz_<target>_run, the target with driver.c, run by ctest as
#    fuzz/<target> over regress/<target>/ (every input that ever failed),
#    seeds/<target>/ (small seeds kept in the tree) and the seeds that
#    fuzz_make_seeds writes into this build (test fuzz/seeds, run first);
#  - with -DTS_FUZZ=ON (clang): fuzz_<target>, a libFuzzer binary; .ci/run
#    runs each for a bounded time.
set(TS_FUZZ_TARGETS config pool restore snapstore replay ctl)
set(TS_FUZZ_DIR ${CMAKE_CURRENT_SOURCE_DIR}/fuzz)
set(TS_FUZZ_SEEDS ${PROJECT_BINARY_DIR}/fuzz-seeds)

add_executable(fuzz_make_seeds ${TS_FUZZ_DIR}/make_seeds.c)
target_link_libraries(fuzz_make_seeds PRIVATE ts_testutil)
add_test(NAME fuzz/seeds COMMAND fuzz_make_seeds ${TS_FUZZ_SEEDS})
set_tests_properties(fuzz/seeds PROPERTIES LABELS fuzz FIXTURES_SETUP ts_fuzz_seeds)

foreach(t ${TS_FUZZ_TARGETS})
  set(extra "")
  if(t STREQUAL "replay")
    set(extra ${PROJECT_SOURCE_DIR}/src/cli/cmd_replay.c ${PROJECT_SOURCE_DIR}/src/cli/progress.c)
  endif()
  add_executable(fuzz_${t}_run ${TS_FUZZ_DIR}/driver.c ${TS_FUZZ_DIR}/fuzz_util.c ${TS_FUZZ_DIR}/fuzz_${t}.c ${extra})
  target_link_libraries(fuzz_${t}_run PRIVATE ts_testutil)
  add_test(NAME fuzz/${t} COMMAND fuzz_${t}_run ${TS_FUZZ_DIR}/regress/${t} ${TS_FUZZ_DIR}/seeds/${t}
           ${TS_FUZZ_SEEDS}/${t})
  set_tests_properties(fuzz/${t} PROPERTIES LABELS fuzz FIXTURES_REQUIRED ts_fuzz_seeds TIMEOUT 600)
  if(TS_FUZZ)
    add_executable(fuzz_${t} ${TS_FUZZ_DIR}/fuzz_util.c ${TS_FUZZ_DIR}/fuzz_${t}.c ${extra})
    target_link_libraries(fuzz_${t} PRIVATE ts_testutil)
    target_compile_options(fuzz_${t} PRIVATE -fsanitize=fuzzer)
    target_link_options(fuzz_${t} PRIVATE -fsanitize=fuzzer)
    if(TS_FUZZ_FIX_CSUM)
      target_compile_definitions(fuzz_${t} PRIVATE TS_FUZZ_FIX_CSUM)
    endif()
  endif()
endforeach()
