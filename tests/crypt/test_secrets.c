/* Keys stay out of core dumps and key files must be private.
 *
 * A child process opens a stack with two crypt layers (an inline hex key and
 * a key file), does I/O, and aborts with RLIMIT_CORE unlimited. By default
 * the process is non-dumpable while a key is loaded, so no core is written;
 * with "core_dumps": true a core is written, and the hex text of the key is
 * not in it (the parsed configuration was wiped). */
#include "testutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static unsigned char hexkey[64], filekey[64];
static char saved_pattern[256];
static bool pattern_changed;

static void random_bytes(unsigned char *b, size_t n)
{
  int fd = open("/dev/urandom", O_RDONLY);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(read(fd, b, n), (ssize_t)n);
  close(fd);
}

static void to_hex(const unsigned char *k, size_t n, volatile char *out)
{
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[k[i] >> 4];
    out[2 * i + 1] = digits[k[i] & 15];
  }
  out[2 * n] = '\0';
}

/* Cores land in the dumping process's folder as "core" or "core.PID". */
static void core_pattern_setup(void)
{
  FILE *f = fopen("/proc/sys/kernel/core_pattern", "r");
  ck_assert_ptr_nonnull(f);
  ck_assert_ptr_nonnull(fgets(saved_pattern, sizeof saved_pattern, f));
  fclose(f);
  saved_pattern[strcspn(saved_pattern, "\n")] = '\0';
  if (strncmp(saved_pattern, "core", 4) == 0 && !strchr(saved_pattern, '/'))
    return;
  f = fopen("/proc/sys/kernel/core_pattern", "w");
  ck_assert_msg(f && fputs("core", f) >= 0 && fclose(f) == 0, "cannot set core_pattern");
  pattern_changed = true;
}

static void core_pattern_restore(void)
{
  if (!pattern_changed)
    return;
  FILE *f = fopen("/proc/sys/kernel/core_pattern", "w");
  if (f) {
    fputs(saved_pattern, f);
    fclose(f);
  }
  pattern_changed = false;
}

static void setup(void)
{
  ts_test_dir_setup();
  random_bytes(hexkey, sizeof hexkey);
  random_bytes(filekey, sizeof filekey);
  char *kf = ts_test_file("disk.key");
  int fd = open(kf, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(write(fd, filekey, sizeof filekey), (ssize_t)sizeof filekey);
  close(fd);
}

static void teardown(void)
{
  core_pattern_restore();
  ts_test_dir_teardown();
}

/* In the child: open, use, report the dumpable flag on `fd`, abort. */
static void child(const char *cwd, bool core_dumps, bool from_file, int fd)
{
  if (chdir(cwd) != 0)
    _exit(3);
  struct rlimit rl = { RLIM_INFINITY, RLIM_INFINITY };
  if (setrlimit(RLIMIT_CORE, &rl) != 0)
    _exit(3);
  char hex[129];
  to_hex(hexkey, sizeof hexkey, hex);
  /* The only copy of the hex text the test itself keeps is this buffer,
   * (a static buffer: vasprintf would leave freed copies), wiped before
   * the abort: whatever remains is the library's. */
  static char json[2048];
  /* Pieces joined byte by byte: printf's work buffers would keep copies
   * of the text on the stack, and vector string functions leave it in
   * registers that the dynamic linker's lazy binding saves on the stack. */
  const char *parts[] = {
    "{ \"version\": 1, \"layers\": {"
    " \"m1\": { \"type\": \"memory\", \"size\": \"4M\" },"
    " \"m2\": { \"type\": \"memory\", \"size\": \"4M\" },"
    " \"c1\": { \"type\": \"crypt\", \"child\": \"m1\", \"key\": \"",
    hex, "\"", core_dumps ? ", \"core_dumps\": true" : "",
    " }, \"c2\": { \"type\": \"crypt\", \"child\": \"m2\", \"key_file\": \"../disk.key\"",
    core_dumps ? ", \"core_dumps\": true" : "", " } }, \"exports\": [\"c1\", \"c2\"] }",
  };
  size_t jlen = 0;
  volatile char *vj = json;
  for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
    for (const volatile char *q = parts[i]; *q; q++)
      vj[jlen++] = *q;
  vj[jlen] = '\0';
  explicit_bzero(hex, sizeof hex);
  explicit_bzero(hexkey, sizeof hexkey);
  explicit_bzero(filekey, sizeof filekey);
  ts_stack *s = NULL;
  ts_error e = { 0 };
  int r;
  if (from_file) {
    int cfd = open("stack.json", O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (cfd < 0 || write(cfd, json, jlen) != (ssize_t)jlen || close(cfd) != 0)
      _exit(3);
    explicit_bzero(json, sizeof json);
    r = ts_stack_open_file("stack.json", NULL, &s, &e);
  } else {
    r = ts_stack_open_string(json, cwd, NULL, &s, &e);
  }
  explicit_bzero(json, sizeof json);
  if (r) {
    dprintf(fd, "open: %s\n", e.msg);
    _exit(4);
  }
  static unsigned char buf[65536];
  memset(buf, 0x5a, sizeof buf);
  for (int i = 0; i < 2; i++) {
    ts_dev *d = ts_stack_dev_at(s, (size_t)i);
    if (ts_pwrite(d, buf, sizeof buf, 0, 0) || ts_pread(d, buf, sizeof buf, 0))
      _exit(5);
  }
  dprintf(fd, "dumpable=%d\n", prctl(PR_GET_DUMPABLE, 0, 0, 0, 0));
  close(fd);
  abort();
}

/* Run the child in ts_test_dir/SUB; returns its report; *core = path of the core or NULL. */
static char *run_child(const char *sub, bool core_dumps, bool from_file, char **core, int *status)
{
  char *cwd = ts_test_path(ts_test_dir, sub);
  ck_assert_int_eq(mkdir(cwd, 0700), 0);
  int p[2];
  ck_assert_int_eq(pipe(p), 0);
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    close(p[0]);
    child(cwd, core_dumps, from_file, p[1]);
  }
  close(p[1]);
  static char report[512];
  ssize_t n = read(p[0], report, sizeof report - 1);
  report[n > 0 ? n : 0] = '\0';
  close(p[0]);
  ck_assert_int_eq(waitpid(pid, status, 0), pid);
  *core = NULL;
  DIR *d = opendir(cwd);
  struct dirent *de;
  while ((de = readdir(d)))
    if (strncmp(de->d_name, "core", 4) == 0)
      *core = ts_test_fmt("%s/%s", cwd, de->d_name);
  closedir(d);
  free(cwd);
  return report;
}

static bool file_contains(const char *path, const void *needle, size_t n)
{
  void *data;
  size_t len;
  ck_assert(ts_test_read_file(path, &data, &len));
  bool found = memmem(data, len, needle, n) != NULL;
  free(data);
  return found;
}

START_TEST(no_core_while_a_key_is_loaded)
{
  ts_test_require_root();
  core_pattern_setup();
  char *core;
  int st;
  char *report = run_child("default", false, false, &core, &st);
  ck_assert_msg(strstr(report, "dumpable=0"), "child said: %s", report);
  ck_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
  ck_assert_msg(!WCOREDUMP(st) && !core, "a core was written: %s", core ? core : "(status)");
  /* The same child with core dumps kept does dump: the check above is real.
   * The hex text is nowhere in its core, whether the configuration came as
   * a string or from a file. */
  char *cores[2];
  for (int from_file = 0; from_file < 2; from_file++) {
    report = run_child(from_file ? "kept-file" : "kept-string", true, from_file, &cores[from_file], &st);
    ck_assert_msg(strstr(report, "dumpable=1"), "child said: %s", report);
    ck_assert_msg(cores[from_file], "no core with core_dumps: true (status %d)", st);
  }
  /* Only now: the children must not inherit the text from this process. */
  char hex[129], upper[129];
  to_hex(hexkey, sizeof hexkey, hex);
  for (int i = 0; i < 128; i++)
    upper[i] = (char)(hex[i] >= 'a' ? hex[i] - 32 : hex[i]);
  for (int k = 0; k < 2; k++) {
    ck_assert_msg(!file_contains(cores[k], hex, 128), "the hex key is in %s", cores[k]);
    for (int i = 0; i + 24 <= 128; i += 8) {
      ck_assert_msg(!file_contains(cores[k], hex + i, 24), "hex digits %d..%d of the key are in %s",
                    i, i + 24, cores[k]);
      ck_assert(!file_contains(cores[k], upper + i, 24));
    }
    free(cores[k]);
  }
}
END_TEST

START_TEST(dumpable_again_after_close)
{
  ck_assert_int_eq(prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), 1);
  ts_stack *s = ts_test_open(
      ts_test_dir,
      "{ \"version\": 1, \"layers\": {"
      " \"m\": { \"type\": \"memory\", \"size\": \"1M\" },"
      " \"c\": { \"type\": \"crypt\", \"child\": \"m\", \"key_file\": \"disk.key\" } },"
      " \"exports\": [\"c\"] }");
  ck_assert_int_eq(prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), 0);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  ck_assert_int_eq(prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), 1);
}
END_TEST

START_TEST(shared_key_file_refused)
{
  char *kf = ts_test_path(ts_test_dir, "disk.key");
  ck_assert_int_eq(chmod(kf, 0644), 0);
#define CFG "{ \"version\": 1, \"layers\": {"                                                \
            " \"m\": { \"type\": \"memory\", \"size\": \"1M\" },"                           \
            " \"c\": { \"type\": \"crypt\", \"child\": \"m\", \"key_file\": \"disk.key\"%s } }," \
            " \"exports\": [\"c\"] }"
  char *j = ts_test_fmt(CFG, "");
  ts_stack *s = NULL;
  ts_error e = { 0 };
  ck_assert_int_eq(ts_test_try_open(ts_test_dir, j, &s, &e), -EACCES);
  ck_assert_msg(strstr(e.msg, "layers.c.key_file") && strstr(e.msg, "mode 0644") &&
                    strstr(e.msg, "chmod 600"),
                "%s", e.msg);
  free(j);
  ck_assert_int_eq(chmod(kf, 0640), 0);
  j = ts_test_fmt(CFG, "");
  ck_assert_int_eq(ts_test_try_open(ts_test_dir, j, &s, &e), -EACCES);
  free(j);
  /* Said explicitly, it is accepted. */
  j = ts_test_fmt(CFG, ", \"key_file_shared\": true");
  s = ts_test_open(ts_test_dir, j);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  free(j);
  free(kf);
}
END_TEST

START_TEST(secret_dump_still_has_the_key)
{
  char hex[129];
  to_hex(hexkey, sizeof hexkey, hex);
  char *j = ts_test_fmt("{ \"version\": 1, \"layers\": {"
                        " \"m\": { \"type\": \"memory\", \"size\": \"1M\" },"
                        " \"c\": { \"type\": \"crypt\", \"child\": \"m\", \"key\": \"%s\" } },"
                        " \"exports\": [\"c\"] }", hex);
  ts_stack *s = ts_test_open(ts_test_dir, j);
  char *masked = ts_stack_config_json(s, 0), *full = ts_stack_config_json(s, TS_CONFIG_SECRETS);
  ck_assert_ptr_null(strstr(masked, hex));
  ck_assert_ptr_nonnull(strstr(masked, "(hidden)"));
  ck_assert_msg(strstr(full, hex), "%s", full);
  free(masked);
  free(full);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  free(j);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("secrets");
  TCase *tc = tcase_create("secrets");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, no_core_while_a_key_is_loaded);
  tcase_add_test(tc, dumpable_again_after_close);
  tcase_add_test(tc, shared_key_file_refused);
  tcase_add_test(tc, secret_dump_still_has_the_key);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
