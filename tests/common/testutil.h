/* Shared helpers for the Check test programs. */
#ifndef TS_TESTUTIL_H
#define TS_TESTUTIL_H

#include <check.h>
#include <errno.h>
#include <libthinstack/thinstack.h>
#include <libthinstack/layer.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

/* A fresh temporary folder for one test (removed by ts_test_rmdir). */
char *ts_test_mkdtemp(void);
/* Remove a folder and everything in it. */
void ts_test_rmdir(const char *dir);
/* Path of `name` inside `dir`; returns a static-per-call malloc'd string. */
char *ts_test_path(const char *dir, const char *name);

/* The temporary folder fixture every suite uses. Between ts_test_dir_setup
 * and ts_test_dir_teardown, ts_test_dir is a fresh folder; the teardown
 * removes it with everything in it and frees what ts_test_file returned.
 * Add both as a checked fixture (once per test, in the test's process):
 *   tcase_add_checked_fixture(tc, ts_test_dir_setup, ts_test_dir_teardown);
 * or call them first and last from a suite's own setup and teardown. A test
 * that fails (Check then exits before any teardown) leaves its folder until
 * its suite ends (ts_test_run_suite). */
extern char *ts_test_dir;
void ts_test_dir_setup(void);
void ts_test_dir_teardown(void);
/* The path of `name` in ts_test_dir, valid until the teardown. */
char *ts_test_file(const char *name);

/* Open a stack from JSON text whose paths are relative to `dir`; the test
 * fails with the library's message if it does not open. */
ts_stack *ts_test_open(const char *dir, const char *json);
/* Try to open; returns the errno and fills `err`. */
int ts_test_try_open(const char *dir, const char *json, ts_stack **out, ts_error *err);
/* printf into a malloc'd string. */
char *ts_test_fmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* A requirement for running a test: returns true if met. If not, outside CI
 * the whole test program exits 77 (skip) with the reason on stderr; with
 * CI=true a missing requirement is a failure (exit 1). */
bool ts_test_require(bool met, const char *reason);
/* Require a program on PATH. */
void ts_test_require_tool(const char *tool);
/* Require root. */
void ts_test_require_root(void);

/* Run a shell command, capturing stdout+stderr into *output (malloc'd, may
 * be NULL); returns the exit status (or -1). */
int ts_test_run(char **output, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Run Debian's thin_check on a metadata file. Returns its exit status;
 * *complaints (malloc'd, may be NULL) receives every output line that is not
 * one of its progress or summary lines ("examining ...", "checking space map
 * counts", "TRANSACTION_ID=", "METADATA_FREE_BLOCKS="), so "" means clean. */
int ts_test_thin_check(const char *meta, char **complaints);
/* The assertion every suite makes with it: thin_check exits 0 and says
 * nothing but progress lines. The failure names `meta` and what it said. */
void ts_test_assert_thin_check(const char *meta);

/* Whole-file helpers. */
bool ts_test_read_file(const char *path, void **data, size_t *len);
bool ts_test_files_equal(const char *a, const char *b);
uint64_t ts_test_allocated(const char *path);   /* st_blocks * 512 */
/* Fill `buf` with a deterministic pattern from `seed`. */
void ts_test_pattern(void *buf, size_t len, uint64_t seed);

/* The core's error count for op `op` ("write", ...) of a node, read from
 * ts_dev_status_json; op NULL: the sum over every op. */
int64_t ts_test_op_errors(ts_dev *d, const char *op);

/* Run a suite, returning the process exit status. */
int ts_test_main(Suite *s);
/* Run a suite, returning how many of its tests failed. The folders its
 * tests make (ts_test_mkdtemp, the fixture) are inside one folder that is
 * removed when the suite ends, failed tests' folders too. */
int ts_test_run_suite(Suite *s, enum print_output mode);

#endif
