/* Bad input changes nothing: every malformed request and every mistaken
 * configuration gets its specific errno (and, for configurations, a message
 * naming the JSON path), and the backing files stay byte-for-byte the same
 * with no file left behind. */
#include "testutil.h"

#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* a.img and b.img hold a pattern; their copies are the reference. */
static void setup(void)
{
  ts_test_dir_setup();
  const char *names[] = { "a.img", "b.img" };
  for (int i = 0; i < 2; i++) {
    size_t len = 1 << 20;
    char *buf = malloc(len);
    ts_test_pattern(buf, len, (uint64_t)i + 1);
    for (int copy = 0; copy < 2; copy++) {
      char *p = ts_test_fmt("%s/%s%s", ts_test_dir, names[i], copy ? ".orig" : "");
      FILE *f = fopen(p, "wb");
      ck_assert_ptr_nonnull(f);
      ck_assert_uint_eq(fwrite(buf, 1, len, f), len);
      fclose(f);
      free(p);
    }
    free(buf);
  }
  char *sub = ts_test_file("subdir");
  mkdir(sub, 0755);
  /* A file its owner cannot write: mode 0444 stops everyone but root, the
   * immutable attribute stops root too. */
  char *locked = ts_test_file("locked.img");
  FILE *f = fopen(locked, "wb");
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(ftruncate(fileno(f), 1 << 20), 0);
  fclose(f);
  chmod(locked, 0444);
  if (geteuid() == 0)
    ck_assert_int_eq(ts_test_run(NULL, "chattr +i '%s'", locked), 0);
}

static void teardown(void)
{
  if (geteuid() == 0)
    ts_test_run(NULL, "chattr -i '%s/locked.img'", ts_test_dir);
  ts_test_dir_teardown();
}

static int count_entries(void)
{
  DIR *d = opendir(ts_test_dir);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

static void assert_unchanged(const char *what)
{
  const char *names[] = { "a.img", "b.img" };
  for (int i = 0; i < 2; i++) {
    char *p = ts_test_path(ts_test_dir, names[i]);
    char *o = ts_test_fmt("%s.orig", p);
    ck_assert_msg(ts_test_files_equal(p, o), "%s: %s changed", what, names[i]);
    free(p);
    free(o);
  }
  ck_assert_msg(count_entries() == 6, "%s: a file was created or removed", what);
}

/* ------------------------------------------------------------------ */
/* Requests                                                            */

#define STACK                                                                                   \
  "{ \"version\": 1, \"layers\": {"                                                             \
  "  \"a\": { \"type\": \"file\", \"path\": \"a.img\" },"                                       \
  "  \"b\": { \"type\": \"file\", \"path\": \"b.img\", \"read_only\": true },"                  \
  "  \"bare\": { \"type\": \"fault\", \"child\": \"a\", \"limits\": {"                          \
  "       \"max_provision_bytes\": 0, \"max_discard_bytes\": 0, \"max_write_zeroes_bytes\": 0 } }," \
  "  \"ro\": { \"type\": \"linear\", \"segments\": [ { \"child\": \"b\" } ] } },"              \
  "  \"exports\": [\"bare\", \"ro\"] }"

enum { SZ = 1 << 20 };

static const struct req_case {
  const char *name;
  const char *dev;
  uint32_t op, flags;
  uint64_t off, len;
  int expect;
} req_cases[] = {
  { "read past the end", "bare", TS_OP_READ, 0, SZ - 512, 1024, -EINVAL },
  { "write past the end", "bare", TS_OP_WRITE, 0, SZ, 512, -EINVAL },
  { "misaligned offset", "bare", TS_OP_WRITE, 0, 100, 512, -EINVAL },
  { "misaligned length", "bare", TS_OP_WRITE, 0, 0, 100, -EINVAL },
  { "zero-length read", "bare", TS_OP_READ, 0, 0, 0, -EINVAL },
  { "zero-length write_zeroes", "bare", TS_OP_WRITE_ZEROES, 0, 4096, 0, -EINVAL },
  { "offset+length overflows", "bare", TS_OP_WRITE, 0, UINT64_MAX - 511, 1024, -EINVAL },
  { "offset far past the end", "bare", TS_OP_READ, 0, 1ull << 40, 512, -EINVAL },
  { "unknown flag", "bare", TS_OP_WRITE, 1u << 10, 0, 512, -EINVAL },
  { "MAY_UNMAP on a write", "bare", TS_OP_WRITE, TS_IO_MAY_UNMAP, 0, 512, -EINVAL },
  { "FUA on a read", "bare", TS_OP_READ, TS_IO_FUA, 0, 512, -EINVAL },
  { "MAY_ZERO on write_zeroes", "bare", TS_OP_WRITE_ZEROES, TS_IO_MAY_ZERO, 0, 4096, -EINVAL },
  { "MAY_ZERO on a read-only provision", "ro", TS_OP_PROVISION, TS_IO_MAY_ZERO, 0, 4096, -EROFS },
  { "flags on provision", "ro", TS_OP_PROVISION, TS_IO_NOFALLBACK, 0, 512, -EINVAL },
  { "unknown op", "bare", 99, 0, 0, 512, -EINVAL },
  { "write to a read-only device", "ro", TS_OP_WRITE, 0, 0, 512, -EROFS },
  { "discard on a read-only device", "ro", TS_OP_DISCARD, 0, 0, 4096, -EROFS },
  { "provision on a read-only device", "ro", TS_OP_PROVISION, 0, 0, 4096, -EROFS },
  { "write_zeroes on a read-only device", "ro", TS_OP_WRITE_ZEROES, 0, 0, 4096, -EROFS },
  { "provision unsupported", "bare", TS_OP_PROVISION, 0, 0, 4096, -EOPNOTSUPP },
  { "discard unsupported", "bare", TS_OP_DISCARD, 0, 0, 4096, -EOPNOTSUPP },
  { "write_zeroes without fallback", "bare", TS_OP_WRITE_ZEROES, TS_IO_NOFALLBACK, 0, 4096, -EOPNOTSUPP },
};

START_TEST(bad_request)
{
  const struct req_case *c = &req_cases[_i];
  ts_stack *s = ts_test_open(ts_test_dir, STACK);
  ts_dev *d = ts_stack_dev(s, c->dev);
  ck_assert_ptr_nonnull(d);
  /* Every data case is at most 1K long, so one buffer serves all. */
  static char buf[1024];
  struct iovec v = { buf, (size_t)c->len };
  ts_io io = { .op = c->op, .flags = c->flags, .offset = c->off, .length = c->len };
  if (c->op == TS_OP_READ || c->op == TS_OP_WRITE) {
    ck_assert_uint_le(c->len, sizeof buf);
    io.iov = &v;
    io.iovcnt = 1;
  }
  int r = ts_submit(d, &io);
  ck_assert_msg(r == c->expect, "%s: got %d (%s), want %d (%s)", c->name, r, ts_err_name(r),
                c->expect, ts_err_name(c->expect));
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  assert_unchanged(c->name);
}
END_TEST

START_TEST(bad_request_shapes)
{
  ts_stack *s = ts_test_open(ts_test_dir, STACK);
  ts_dev *d = ts_stack_dev(s, "bare");
  char buf[1024];
  struct iovec v[2] = { { buf, 512 }, { buf + 512, 512 } };
  /* iovec total differs from the declared length. */
  ts_io io = { .op = TS_OP_WRITE, .offset = 0, .length = 512, .iov = v, .iovcnt = 2 };
  ck_assert_int_eq(ts_submit(d, &io), -EINVAL);
  /* A write without any buffer. */
  io.iov = NULL;
  io.iovcnt = 0;
  ck_assert_int_eq(ts_submit(d, &io), -EINVAL);
  ts_extent_list l = { 0 };
  ck_assert_int_eq(ts_block_status(d, 0, 0, &l), -EINVAL);
  ck_assert_int_eq(ts_block_status(d, SZ - 512, 1024, &l), -EINVAL);
  ck_assert_int_eq(ts_block_status(d, 1, 512, &l), -EINVAL);
  ck_assert_uint_eq(l.n, 0);
  ts_stack_close(s, NULL);
  assert_unchanged("request shapes");
}
END_TEST

/* ------------------------------------------------------------------ */
/* Configurations                                                      */

#define HEAD "{ \"version\": 1, \"layers\": {"

/* One case a line or two, as a table: kept out of clang-format's hands. */
// clang-format off
static const struct cfg_case {
  const char *name;
  const char *json;
  int expect;
  const char *msg; /* must appear in the message */
} cfg_cases[] = {
  { "invalid JSON", "{ \"version\": 1, ", -EINVAL, "invalid JSON" },
  { "duplicate key", "{ \"version\": 1, \"version\": 1 }", -EINVAL, "duplicate" },
  { "top level not an object", "[1]", -EINVAL, "(top level): expected an object" },
  { "missing version", "{ \"layers\": { \"m\": { \"type\": \"memory\", \"size\": 512 } } }", -EINVAL,
    "version: missing" },
  { "unsupported version", "{ \"version\": 2, \"layers\": {} }", -EINVAL, "version: unsupported" },
  { "unknown top-level key", "{ \"version\": 1, \"layer\": {} }", -EINVAL, "layer: unknown top-level key" },
  { "plugins not an array", "{ \"version\": 1, \"plugins\": \"x.so\", \"layers\": { \"x\": 5 } }", -EINVAL,
    "plugins: expected an array of paths, got a string" },
  { "plugin not a path", "{ \"version\": 1, \"plugins\": [5], \"layers\": { \"x\": 5 } }", -EINVAL,
    "plugins[0]: expected a path, got an integer" },
  /* Entries load in order: a missing module is met before a later bad entry. */
  { "missing plugin before a bad entry", "{ \"version\": 1, \"plugins\": [\"missing.so\", 5], \"layers\": {} }",
    -ENOENT, "plugins[0]: " },
  { "layers not an object", "{ \"version\": 1, \"layers\": [] }", -EINVAL, "layers: expected an object" },
  { "no layers", "{ \"version\": 1, \"layers\": {} }", -EINVAL, "layers: empty" },
  { "layer not an object", HEAD "\"x\": 5 } }", -EINVAL, "layers.x: expected an object, got an integer" },
  { "missing type", HEAD "\"x\": { \"size\": 512 } } }", -EINVAL, "layers.x: missing required key \"type\"" },
  { "type not a string", HEAD "\"x\": { \"type\": 3 } } }", -EINVAL, "layers.x.type: expected a string" },
  { "unknown type", HEAD "\"x\": { \"type\": \"thinn\" } } }", -EINVAL,
    "layers.x.type: unknown layer type \"thinn\"" },
  { "unknown key", HEAD "\"a\": { \"type\": \"file\", \"path\": \"a.img\", \"sise\": 5 } } }", -EINVAL,
    "layers.a.sise: unknown key (accepted: path, size" },
  { "wrong JSON type", HEAD "\"a\": { \"type\": \"file\", \"path\": \"a.img\", \"size\": true } } }",
    -EINVAL, "layers.a.size: expected a size" },
  { "bad size", HEAD "\"a\": { \"type\": \"file\", \"path\": \"a.img\", \"size\": \"12Q\" } } }",
    -EINVAL, "layers.a.size: \"12Q\" is not a size" },
  { "negative size", HEAD "\"m\": { \"type\": \"memory\", \"size\": -5 } } }", -EINVAL,
    "layers.m.size: expected a size" },
  { "missing required key", HEAD "\"m\": { \"type\": \"memory\" } } }", -EINVAL,
    "layers.m: missing required key \"size\"" },
  { "bad enum value", HEAD "\"a\": { \"type\": \"file\", \"path\": \"a.img\" },"
    "\"f\": { \"type\": \"fault\", \"child\": \"a\", \"rules\": [ { \"op\": \"reed\" } ] } } }",
    -EINVAL, "layers.f.rules[0].op: expected one of read|write" },
  { "unknown errno", HEAD "\"a\": { \"type\": \"file\", \"path\": \"a.img\" },"
    "\"f\": { \"type\": \"fault\", \"child\": \"a\", \"rules\": [ { \"op\": \"read\", \"errno\": \"EWHAT\" } ] } } }",
    -EINVAL, "layers.f.rules[0].errno: unknown errno name \"EWHAT\"" },
  { "missing child", HEAD "\"d\": { \"type\": \"linear\", \"segments\": [ { \"child\": \"nope\" } ] } } }",
    -ENOENT, "layers.d.segments[0].child: no layer named \"nope\"" },
  { "cycle", HEAD "\"x\": { \"type\": \"fault\", \"child\": \"y\" }, \"y\": { \"type\": \"fault\", \"child\": \"x\" } } }",
    -ELOOP, "cycle: x -> y -> x" },
  { "self reference", HEAD "\"x\": { \"type\": \"fault\", \"child\": \"x\" } } }", -ELOOP,
    "layers.x.child: layer \"x\" refers to itself" },
  { "child with two parents", HEAD "\"a\": { \"type\": \"file\", \"path\": \"a.img\" },"
    "\"f\": { \"type\": \"fault\", \"child\": \"a\" }, \"g\": { \"type\": \"fault\", \"child\": \"a\" } } }",
    -EBUSY, "layers.g.child: layer \"a\" is already used by layers.f.child" },
  { "exports not an array", HEAD "\"m\": { \"type\": \"memory\", \"size\": 512 } }, \"exports\": \"m\" }",
    -EINVAL, "exports: expected an array" },
  { "duplicate export", HEAD "\"m\": { \"type\": \"memory\", \"size\": 512 } }, \"exports\": [\"m\", \"m\"] }",
    -EINVAL, "exports[1]: \"m\" is exported twice" },
  { "unknown export", HEAD "\"m\": { \"type\": \"memory\", \"size\": 512 } }, \"exports\": [\"n\"] }",
    -ENOENT, "exports[0]: no layer named \"n\"" },
  { "file missing", HEAD "\"a\": { \"type\": \"file\", \"path\": \"missing.img\" } } }", -ENOENT,
    "layers.a.path: " },
  { "file not writable", HEAD "\"a\": { \"type\": \"file\", \"path\": \"locked.img\" } } }", 0,
    "locked.img for writing: " },
  { "not a regular file", HEAD "\"a\": { \"type\": \"file\", \"path\": \"subdir\", \"read_only\": true } } }",
    -EINVAL, "is not a regular file" },
  { "size mismatch", HEAD "\"a\": { \"type\": \"file\", \"path\": \"a.img\", \"size\": \"2M\" } } }", -EINVAL,
    "layers.a.size: " },
  { "create without size", HEAD "\"n\": { \"type\": \"file\", \"path\": \"new.img\", \"create\": true } } }",
    -EINVAL, "layers.n.size: required to create" },
  { "create read-only", HEAD "\"n\": { \"type\": \"file\", \"path\": \"new.img\", \"size\": \"1M\", \"create\": true, \"read_only\": true } } }",
    -EINVAL, "layers.n.create: cannot create a read-only file" },
  { "segment past the child's end", HEAD "\"a\": { \"type\": \"file\", \"path\": \"a.img\" },"
    "\"d\": { \"type\": \"linear\", \"segments\": [ { \"child\": \"a\", \"offset\": \"512K\", \"length\": \"1M\" } ] } } }",
    -EINVAL, "layers.d.segments[0]: offset 524288 + length 1048576 does not fit in \"a\"" },
  /* A later layer fails after an earlier one created its file: the file goes again. */
  { "created file removed on failure", HEAD "\"n\": { \"type\": \"file\", \"path\": \"new.img\", \"size\": \"1M\", \"create\": true },"
    "\"d\": { \"type\": \"linear\", \"segments\": [ { \"child\": \"n\", \"offset\": \"2M\" } ] } } }",
    -EINVAL, "layers.d.segments[0]" },
  { "bad block size", HEAD "\"a\": { \"type\": \"file\", \"path\": \"a.img\", \"block_size\": 1000 } } }",
    -EINVAL, "layers.a.block_size: must be a power of two" },
};
// clang-format on

START_TEST(bad_config)
{
  const struct cfg_case *c = &cfg_cases[_i];
  ts_stack *s = NULL;
  ts_error err = { 0 };
  int r = ts_test_try_open(ts_test_dir, c->json, &s, &err);
  /* An unwritable file is EACCES or EPERM depending on what stops the write. */
  ck_assert_msg(r == c->expect || (c->expect == 0 && (r == -EACCES || r == -EPERM)), "%s: got %d (%s), want %s; message: %s", c->name, r,
                ts_err_name(r), ts_err_name(c->expect), err.msg);
  ck_assert_ptr_null(s);
  ck_assert_int_eq(err.code, r);
  ck_assert_msg(strstr(err.msg, c->msg), "%s: message \"%s\" lacks \"%s\"", c->name, err.msg, c->msg);
  assert_unchanged(c->name);
}
END_TEST

/* Validation alone opens nothing, even for a config that would create files. */
START_TEST(validate_only_creates_nothing)
{
  ts_open_opts o = { .struct_size = sizeof o, .flags = TS_OPEN_VALIDATE_ONLY };
  ts_stack *s = NULL;
  ts_error err = { 0 };
  const char *json = HEAD
      "\"n\": { \"type\": \"file\", \"path\": \"new.img\", \"size\": \"1M\", \"create\": true } } }";
  ck_assert_int_eq(ts_stack_open_string(json, ts_test_dir, &o, &s, &err), 0);
  ck_assert_ptr_null(s);
  assert_unchanged("validate only");
}
END_TEST

START_TEST(config_file_errors_name_the_file)
{
  char *p = ts_test_path(ts_test_dir, "bad.json");
  FILE *f = fopen(p, "w");
  fputs("{ \"version\": 1,\n  \"layers\": { \"m\": { \"type\": \"memory\" } } }\n", f);
  fclose(f);
  ts_stack *s = NULL;
  ts_error err = { 0 };
  ck_assert_int_eq(ts_stack_open_file(p, NULL, &s, &err), -EINVAL);
  ck_assert_msg(strstr(err.msg, "bad.json: layers.m: missing required key \"size\""), "%s", err.msg);
  unlink(p);
  ck_assert_int_eq(ts_stack_open_file(p, NULL, &s, &err), -ENOENT);
  ck_assert_msg(strstr(err.msg, "cannot read the configuration"), "%s", err.msg);
  free(p);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("bad_input");
  TCase *tc = tcase_create("requests");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_loop_test(tc, bad_request, 0, (int)(sizeof req_cases / sizeof req_cases[0]));
  tcase_add_test(tc, bad_request_shapes);
  suite_add_tcase(s, tc);
  tc = tcase_create("configs");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_loop_test(tc, bad_config, 0, (int)(sizeof cfg_cases / sizeof cfg_cases[0]));
  tcase_add_test(tc, validate_only_creates_nothing);
  tcase_add_test(tc, config_file_errors_name_the_file);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
