#include "testutil.h"

#include <errno.h>
#include <ftw.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The folder of the running suite, which holds every test's folder: a
 * failed assertion ends a forked test before its teardown runs, and this
 * folder goes when the suite ends, so no test leaves one behind. */
static char *run_dir;

char *ts_test_mkdtemp(void)
{
  const char *base = run_dir ? run_dir : getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  char *d = ts_test_fmt("%s/ts-test-XXXXXX", base);
  ck_assert_ptr_nonnull(mkdtemp(d));
  return d;
}

static int rm_fn(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
  return remove(p);
}

void ts_test_rmdir(const char *dir)
{
  if (dir)
    nftw(dir, rm_fn, 16, FTW_DEPTH | FTW_PHYS);
}

char *ts_test_path(const char *dir, const char *name) { return ts_test_fmt("%s/%s", dir, name); }

char *ts_test_dir;
static char **dir_files;
static size_t dir_nfiles;

void ts_test_dir_setup(void) { ts_test_dir = ts_test_mkdtemp(); }

void ts_test_dir_teardown(void)
{
  ts_test_rmdir(ts_test_dir);
  free(ts_test_dir);
  ts_test_dir = NULL;
  for (size_t i = 0; i < dir_nfiles; i++)
    free(dir_files[i]);
  free(dir_files);
  dir_files = NULL;
  dir_nfiles = 0;
}

char *ts_test_file(const char *name)
{
  ck_assert_ptr_nonnull(ts_test_dir);
  char **v = realloc(dir_files, (dir_nfiles + 1) * sizeof *v);
  ck_assert_ptr_nonnull(v);
  dir_files = v;
  return dir_files[dir_nfiles++] = ts_test_path(ts_test_dir, name);
}

char *ts_test_fmt(const char *fmt, ...)
{
  va_list ap;
  char *s = NULL;
  va_start(ap, fmt);
  /* No ck_assert here: this also runs outside tests (requirements in main). */
  if (vasprintf(&s, fmt, ap) < 0)
    abort();
  va_end(ap);
  return s;
}

int ts_test_try_open(const char *dir, const char *json, ts_stack **out, ts_error *err)
{
  return ts_stack_open_string(json, dir, NULL, out, err);
}

ts_stack *ts_test_open(const char *dir, const char *json)
{
  ts_stack *s = NULL;
  ts_error err = { 0 };
  int r = ts_stack_open_string(json, dir, NULL, &s, &err);
  ck_assert_msg(r == 0, "stack did not open: %s (%s)", err.msg, ts_strerror(r));
  return s;
}

bool ts_test_require(bool met, const char *reason)
{
  if (met)
    return true;
  const char *ci = getenv("CI");
  if (ci && strcmp(ci, "true") == 0) {
    fprintf(stderr, "FAIL: required under CI=true: %s\n", reason);
    exit(1);
  }
  fprintf(stderr, "SKIP: %s\n", reason);
  exit(77);
}

/* Plain snprintf, not ts_test_fmt: Check assertions (even passing ones)
 * abort when no test is running, and requirements are checked in main(). */
void ts_test_require_tool(const char *tool)
{
  char cmd[512], why[512];
  snprintf(cmd, sizeof cmd, "command -v '%s' >/dev/null 2>&1", tool);
  bool ok = system(cmd) == 0;
  snprintf(why, sizeof why, "needs the program %s on PATH", tool);
  ts_test_require(ok, why);
}

void ts_test_require_root(void) { ts_test_require(geteuid() == 0, "needs root"); }

int ts_test_run(char **output, const char *fmt, ...)
{
  va_list ap;
  char *cmd = NULL;
  va_start(ap, fmt);
  if (vasprintf(&cmd, fmt, ap) < 0)
    cmd = NULL;
  va_end(ap);
  if (!cmd)
    return -1;
  char *full = ts_test_fmt("(%s) 2>&1", cmd);
  free(cmd);
  FILE *p = popen(full, "r");
  free(full);
  if (!p)
    return -1;
  char *buf = NULL;
  size_t len = 0, cap = 0;
  char tmp[4096];
  size_t n;
  while ((n = fread(tmp, 1, sizeof tmp, p)) > 0) {
    if (len + n + 1 > cap) {
      cap = (len + n + 1) * 2;
      buf = realloc(buf, cap);
    }
    memcpy(buf + len, tmp, n);
    len += n;
  }
  if (buf)
    buf[len] = '\0';
  int st = pclose(p);
  if (output)
    *output = buf ? buf : strdup("");
  else
    free(buf);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

bool ts_test_read_file(const char *path, void **data, size_t *len)
{
  FILE *f = fopen(path, "rb");
  if (!f)
    return false;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  *data = malloc(n > 0 ? (size_t)n : 1);
  *len = fread(*data, 1, (size_t)n, f);
  fclose(f);
  return *len == (size_t)n;
}

bool ts_test_files_equal(const char *a, const char *b)
{
  void *da, *db;
  size_t la, lb;
  if (!ts_test_read_file(a, &da, &la))
    return false;
  if (!ts_test_read_file(b, &db, &lb)) {
    free(da);
    return false;
  }
  bool eq = la == lb && memcmp(da, db, la) == 0;
  free(da);
  free(db);
  return eq;
}

uint64_t ts_test_allocated(const char *path)
{
  struct stat st;
  return stat(path, &st) == 0 ? (uint64_t)st.st_blocks * 512 : 0;
}

void ts_test_pattern(void *buf, size_t len, uint64_t seed)
{
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  unsigned char *p = buf;
  for (size_t i = 0; i < len; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    p[i] = (unsigned char)x;
  }
}

int ts_test_run_suite(Suite *s, enum print_output mode)
{
  char *outer = run_dir;
  const char *base = outer ? outer : getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  char *mine = ts_test_fmt("%s/ts-run-XXXXXX", base);
  if (!mkdtemp(mine)) {
    fprintf(stderr, "%s: %s\n", mine, strerror(errno));
    abort();
  }
  run_dir = mine;
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, mode);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  ts_test_rmdir(mine);
  free(mine);
  run_dir = outer;
  return failed;
}

int ts_test_main(Suite *s) { return ts_test_run_suite(s, CK_NORMAL) ? EXIT_FAILURE : EXIT_SUCCESS; }

int ts_test_thin_check(const char *meta, char **complaints)
{
  static const char *const progress[] = { "examining ", "checking space map counts",
                                          "TRANSACTION_ID=", "METADATA_FREE_BLOCKS=" };
  char *out = NULL;
  int st = ts_test_run(&out, "thin_check '%s'", meta);
  char *rest = calloc(1, strlen(out ? out : "") + 1);
  char *save = NULL;
  for (char *line = out ? strtok_r(out, "\n", &save) : NULL; line; line = strtok_r(NULL, "\n", &save)) {
    bool skip = false;
    for (size_t i = 0; i < sizeof progress / sizeof progress[0]; i++)
      skip = skip || strncmp(line, progress[i], strlen(progress[i])) == 0;
    if (!skip) {
      strcat(rest, line);
      strcat(rest, "\n");
    }
  }
  free(out);
  if (complaints)
    *complaints = rest;
  else
    free(rest);
  return st;
}

void ts_test_assert_thin_check(const char *meta)
{
  char *complaints = NULL;
  int st = ts_test_thin_check(meta, &complaints);
  ck_assert_msg(st == 0 && complaints[0] == '\0', "thin_check %s: exit status %d, said:\n%s", meta,
                st, complaints);
  free(complaints);
}

int64_t ts_test_op_errors(ts_dev *d, const char *op)
{
  char *text = ts_dev_status_json(d);
  json_t *st = text ? json_loads(text, 0, NULL) : NULL;
  free(text);
  json_t *reqs = json_object_get(st, "requests");
  ck_assert_msg(json_is_object(reqs), "status has no \"requests\" object");
  int64_t n = 0;
  const char *name;
  json_t *c;
  json_object_foreach(reqs, name, c) {
    if (!op || strcmp(op, name) == 0)
      n += json_integer_value(json_object_get(c, "errors"));
  }
  if (op)
    ck_assert_msg(json_object_get(reqs, op), "status counts no op \"%s\"", op);
  json_decref(st);
  return n;
}
