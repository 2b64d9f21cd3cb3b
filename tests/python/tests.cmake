# The Python bindings' pytest suite, run against the shared library of this
# build. Needs an interpreter with pytest (Debian: python3-pytest); the first
# of the configured Python and the system's python3 that has it is used.
find_package(Python3 COMPONENTS Interpreter QUIET)
set(TS_PYTEST_PYTHON "")
foreach(py ${Python3_EXECUTABLE} /usr/bin/python3)
  if(NOT TS_PYTEST_PYTHON AND EXISTS "${py}")
    execute_process(COMMAND "${py}" -c "import pytest" RESULT_VARIABLE rc OUTPUT_QUIET ERROR_QUIET)
    if(rc EQUAL 0)
      set(TS_PYTEST_PYTHON "${py}")
    endif()
  endif()
endforeach()

set(TS_PYTEST_ENV
  "THINSTACK_LIB=$<TARGET_FILE:thinstack>"
  "TS_BUILD_DIR=${PROJECT_BINARY_DIR}"
  "PYTHONPATH=${PROJECT_SOURCE_DIR}/bindings/python"
  "PYTHONDONTWRITEBYTECODE=1")
# A sanitized library loaded into an uninstrumented interpreter needs the
# sanitizer's runtime loaded first; the interpreter's own allocations are
# not ours to report.
if(TS_SANITIZE MATCHES "address")
  execute_process(COMMAND ${CMAKE_C_COMPILER} -print-file-name=libasan.so
                  OUTPUT_VARIABLE ts_asan_rt OUTPUT_STRIP_TRAILING_WHITESPACE)
  list(APPEND TS_PYTEST_ENV "LD_PRELOAD=${ts_asan_rt}" "ASAN_OPTIONS=detect_leaks=0")
elseif(TS_SANITIZE MATCHES "thread")
  execute_process(COMMAND ${CMAKE_C_COMPILER} -print-file-name=libtsan.so
                  OUTPUT_VARIABLE ts_tsan_rt OUTPUT_STRIP_TRAILING_WHITESPACE)
  list(APPEND TS_PYTEST_ENV "LD_PRELOAD=${ts_tsan_rt}")
endif()

if(TS_PYTEST_PYTHON)
  # -p no:cacheprovider: write nothing into the source tree.
  add_test(NAME python/pytest
           COMMAND ${TS_PYTEST_PYTHON} -m pytest -q -p no:cacheprovider ${CMAKE_CURRENT_LIST_DIR})
else()
  # Skip (77) with the reason, or fail under CI=true, like every other test.
  add_test(NAME python/pytest
           COMMAND sh -c "echo 'needs python3 with pytest (python3-pytest)' >&2; [ \"$CI\" = true ] && exit 1; exit 77")
endif()
set_tests_properties(python/pytest PROPERTIES LABELS python SKIP_RETURN_CODE 77
                     ENVIRONMENT "${TS_PYTEST_ENV}")
