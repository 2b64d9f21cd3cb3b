/* Whole stacks end to end: PROVISION, DISCARD, WRITE_ZEROES and
 * BLOCK_STATUS through crypt over thin over file, and thin over crypt over a
 * file or a loop device (kernel layer), checked against the stacked limits,
 * the backing files and Debian's thin_check. */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MiB (1ull << 20)

static void setup(void)
{
  ts_test_dir_setup();
  char *key = ts_test_file("vm.key");
  FILE *f = fopen(key, "wb");
  unsigned char k[64];
  ts_test_pattern(k, sizeof k, 99);
  ck_assert_uint_eq(fwrite(k, 1, sizeof k, f), sizeof k);
  fclose(f);
  chmod(key, 0600); /* a key file others can read is refused */
}

static void assert_thin_check(const char *meta)
{
  char *path = ts_test_path(ts_test_dir, meta);
  ts_test_assert_thin_check(path);
  free(path);
}

/* Sum of the lengths of extents with exactly `flags`. */
static uint64_t extent_bytes(ts_dev *d, uint64_t off, uint64_t len, uint32_t flags)
{
  ts_extent_list l = { 0 };
  ck_assert_int_eq(ts_block_status(d, off, len, &l), 0);
  uint64_t n = 0, pos = off;
  for (size_t i = 0; i < l.n; i++) {
    ck_assert_uint_eq(l.v[i].offset, pos);
    pos += l.v[i].length;
    if (l.v[i].flags == flags)
      n += l.v[i].length;
  }
  ck_assert_uint_eq(pos, off + len);
  ts_extent_list_free(&l);
  return n;
}

#define POOL_ON(data_child)                                                                     \
  "\"meta\": { \"type\": \"file\", \"path\": \"pool.meta\", \"size\": \"16M\", \"create\": true }," \
  "\"pool\": { \"type\": \"thin-pool\", \"metadata\": \"meta\", \"data\": \"" data_child "\","    \
  "  \"block_size\": \"64K\", \"create\": true },"                                               \
  "\"vm\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 0, \"size\": \"64M\", \"create\": true },"

START_TEST(crypt_over_thin_over_file)
{
  /* The stack as JSON, a layer a line. */
  // clang-format off
  ts_stack *s = ts_test_open(ts_test_dir, "{ \"version\": 1, \"layers\": {"
      "\"data\": { \"type\": \"file\", \"path\": \"pool.data\", \"size\": \"128M\", \"create\": true },"
      POOL_ON("data")
      "\"enc\": { \"type\": \"crypt\", \"child\": \"vm\", \"key_file\": \"vm.key\", \"allow_discards\": true } },"
      "\"exports\": [\"enc\"] }");
  // clang-format on
  ts_dev *enc = ts_stack_dev(s, "enc"), *vm = ts_stack_node(s, "vm");
  char *datafile = ts_test_path(ts_test_dir, "pool.data");

  /* Limits: provision passes through crypt 1:1, with thin's granularity. */
  const ts_limits *le = ts_dev_limits(enc), *lv = ts_dev_limits(vm);
  ck_assert_int_eq(ts_limits_cap(le, TS_OP_PROVISION), TS_CAP_NATIVE);
  ck_assert_uint_eq(le->provision_granularity, 64 << 10);
  ck_assert_uint_eq(le->max_provision_bytes, lv->max_provision_bytes);
  ck_assert(!le->discard_zeroes); /* discarded ciphertext does not decrypt to zeroes */

  /* PROVISION through crypt reserves thin blocks and file space, no data written. */
  uint64_t before = ts_test_allocated(datafile);
  ck_assert_int_eq(ts_provision(enc, 4 * MiB, 8 * MiB), 0);
  ck_assert_uint_ge(ts_test_allocated(datafile) - before, 8 * MiB);
  ck_assert_uint_eq(extent_bytes(vm, 0, 64 * MiB, TS_EXTENT_ZERO), 8 * MiB);
  /* Crypt never calls allocated ciphertext zero. */
  ck_assert_uint_eq(extent_bytes(enc, 0, 64 * MiB, TS_EXTENT_ZERO), 0);

  /* WRITE_ZEROES through crypt: plaintext zeroes, ciphertext below is not. */
  char *buf = malloc(MiB), *zero = calloc(1, MiB);
  ck_assert_int_eq(ts_write_zeroes(enc, 16 * MiB, MiB, 0), 0);
  ck_assert_int_eq(ts_pread(enc, buf, MiB, 16 * MiB), 0);
  ck_assert_mem_eq(buf, zero, MiB);
  ck_assert_int_eq(ts_pread(vm, buf, MiB, 16 * MiB), 0);
  ck_assert(memcmp(buf, zero, MiB) != 0);
  ck_assert_uint_eq(extent_bytes(vm, 16 * MiB, MiB, 0), MiB);

  /* Data round trip, then DISCARD (allow_discards) unmaps the thin blocks. */
  ts_test_pattern(buf, MiB, 5);
  ck_assert_int_eq(ts_pwrite(enc, buf, MiB, 32 * MiB, TS_IO_FUA), 0);
  char *back = malloc(MiB);
  ck_assert_int_eq(ts_pread(enc, back, MiB, 32 * MiB), 0);
  ck_assert_mem_eq(buf, back, MiB);
  ck_assert_int_eq(ts_discard(enc, 0, 64 * MiB), 0);
  ck_assert_uint_eq(extent_bytes(vm, 0, 64 * MiB, TS_EXTENT_HOLE | TS_EXTENT_ZERO), 64 * MiB);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  assert_thin_check("pool.meta");
  free(buf);
  free(back);
  free(zero);
  free(datafile);
}
END_TEST

/* thin whose data layer is encrypted: the pool's provisioning must reach the
 * file below crypt, and thin's zero promise must hold though zero ciphertext
 * is not zero plaintext. */
static void thin_over_crypt(const char *data_layer_json, const char *backing_file)
{
  char *json = ts_test_fmt("{ \"version\": 1, \"layers\": { %s"
      "\"cdata\": { \"type\": \"crypt\", \"child\": \"raw\", \"key_file\": \"vm.key\", \"allow_discards\": true },"
      POOL_ON("cdata") "\"x\": { \"type\": \"zero\", \"size\": 512 } }, \"exports\": [\"vm\"] }",
      data_layer_json);
  ts_stack *s = ts_test_open(ts_test_dir, json);
  free(json);
  ts_dev *vm = ts_stack_dev(s, "vm");
  char *buf = malloc(MiB), *zero = calloc(1, MiB);

  /* Stale data first: write secrets, discard them, provision again. */
  ts_test_pattern(buf, MiB, 77);
  ck_assert_int_eq(ts_pwrite(vm, buf, MiB, 0, 0), 0);
  ck_assert_int_eq(ts_discard(vm, 0, MiB), 0);
  uint64_t before = backing_file ? ts_test_allocated(backing_file) : 0;
  ck_assert_int_eq(ts_provision(vm, 0, 16 * MiB), 0);
  if (backing_file)
    ck_assert_uint_ge(ts_test_allocated(backing_file) - before, 15 * MiB);
  ck_assert_int_eq(ts_pread(vm, buf, MiB, 0), 0);
  ck_assert_mem_eq(buf, zero, MiB); /* provisioned, never written: zeroes */
  ck_assert_int_eq(ts_pread(vm, buf, MiB, 8 * MiB), 0);
  ck_assert_mem_eq(buf, zero, MiB);

  /* WRITE_ZEROES without unmap keeps the blocks; with unmap frees them. */
  ck_assert_int_eq(ts_write_zeroes(vm, 20 * MiB, 2 * MiB, 0), 0);
  ck_assert_uint_eq(extent_bytes(vm, 20 * MiB, 2 * MiB, TS_EXTENT_HOLE | TS_EXTENT_ZERO), 0);
  ck_assert_int_eq(ts_pread(vm, buf, MiB, 21 * MiB), 0);
  ck_assert_mem_eq(buf, zero, MiB);
  ck_assert_int_eq(ts_write_zeroes(vm, 20 * MiB, 2 * MiB, TS_IO_MAY_UNMAP), 0);
  ck_assert_uint_eq(extent_bytes(vm, 20 * MiB, 2 * MiB, TS_EXTENT_HOLE | TS_EXTENT_ZERO), 2 * MiB);

  /* Data survives a reopen. */
  ts_test_pattern(buf, MiB, 78);
  ck_assert_int_eq(ts_pwrite(vm, buf, MiB, 40 * MiB, TS_IO_FUA), 0);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  assert_thin_check("pool.meta");
  json = ts_test_fmt("{ \"version\": 1, \"layers\": { %s"
      "\"cdata\": { \"type\": \"crypt\", \"child\": \"raw\", \"key_file\": \"vm.key\", \"allow_discards\": true },"
      POOL_ON("cdata") "\"x\": { \"type\": \"zero\", \"size\": 512 } }, \"exports\": [\"vm\"] }",
      data_layer_json);
  s = ts_test_open(ts_test_dir, json);
  free(json);
  vm = ts_stack_dev(s, "vm");
  char *back = malloc(MiB);
  ck_assert_int_eq(ts_pread(vm, back, MiB, 40 * MiB), 0);
  ck_assert_mem_eq(buf, back, MiB);
  ck_assert_uint_eq(extent_bytes(vm, 0, 16 * MiB, 0) + extent_bytes(vm, 0, 16 * MiB, TS_EXTENT_ZERO), 16 * MiB);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  free(buf);
  free(back);
  free(zero);
}

START_TEST(thin_over_crypt_over_file)
{
  char *f = ts_test_path(ts_test_dir, "raw.img");
  thin_over_crypt("\"raw\": { \"type\": \"file\", \"path\": \"raw.img\", \"size\": \"128M\", \"create\": true },", f);
  free(f);
}
END_TEST

/* Attached by main() in the parent process, so it is detached even when the
 * test (in its forked child) fails. */
static char loopdev[64];
static char loopimg[256];

START_TEST(thin_over_crypt_over_loop)
{
  char *layer = ts_test_fmt("\"raw\": { \"type\": \"kernel\", \"path\": \"%s\", \"provision\": \"emulate\" },", loopdev);
  /* Loop on this kernel takes no REQ_OP_PROVISION: the kernel layer emulates
   * it with BLKZEROOUT, which loop turns into fallocate on its backing file. */
  thin_over_crypt(layer, loopimg);
  free(layer);
}
END_TEST

static bool attach_loop(void)
{
  snprintf(loopimg, sizeof loopimg, "%s/ts-stacks-loop-%d.img", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp",
           (int)getpid());
  char *out = NULL;
  if (ts_test_run(NULL, "truncate -s 128M '%s'", loopimg) != 0 ||
      ts_test_run(&out, "losetup -f --show '%s'", loopimg) != 0) {
    fprintf(stderr, "losetup failed: %s\n", out ? out : "");
    free(out);
    unlink(loopimg);
    return false;
  }
  out[strcspn(out, "\n")] = '\0';
  snprintf(loopdev, sizeof loopdev, "%s", out);
  free(out);
  return true;
}

int main(void)
{
  ts_test_require_tool("thin_check");
  Suite *s = suite_create("stacks");
  TCase *tc = tcase_create("stacks");
  tcase_set_timeout(tc, 300);
  tcase_add_checked_fixture(tc, setup, ts_test_dir_teardown);
  tcase_add_test(tc, crypt_over_thin_over_file);
  tcase_add_test(tc, thin_over_crypt_over_file);
  /* The loop-device stack needs root; the rest runs anywhere. */
  bool loop_ok = geteuid() == 0 && ts_find_layer_type("kernel") && attach_loop();
  if (loop_ok)
    tcase_add_test(tc, thin_over_crypt_over_loop);
  suite_add_tcase(s, tc);
  int r = ts_test_main(s);
  if (loop_ok) {
    ts_test_run(NULL, "losetup -d '%s'", loopdev);
    unlink(loopimg);
  }
  if (r == 0 && !loop_ok)
    ts_test_require(false, "thin over crypt over a loop device needs root and the kernel layer");
  return r;
}
