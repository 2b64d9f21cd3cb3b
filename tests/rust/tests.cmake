# The Rust crates of bindings/rust: `cargo test --offline` against the
# shared library of this build, then the VMM-style example (run.sh).
add_test(NAME rust/cargo-test COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/run.sh)
set_tests_properties(rust/cargo-test PROPERTIES LABELS rust SKIP_RETURN_CODE 77
  ENVIRONMENT "TS_BUILD_DIR=${PROJECT_BINARY_DIR};TS_SOURCE_DIR=${PROJECT_SOURCE_DIR};TS_C_COMPILER=${CMAKE_C_COMPILER}")
