/* The kernel layer on real loop devices over sparse files (root only).
 *
 * What this kernel does with each op is checked on the loop device and on the
 * sparse file behind it. The PROVISION ladder is checked three ways: against
 * the real sysfs (on Linux 6.18 a loop device has no provision_max_bytes and
 * write_zeroes_unmap_max_bytes = 0, so PROVISION is unsupported unless
 * provision is "emulate"), and against fake sysfs trees that claim a patched
 * kernel (provision_max_bytes > 0) or unmapping write-zeroes: the loop driver
 * then refuses fallocate(0) and fallocate(WRITE_ZEROES) with EOPNOTSUPP, and
 * the layer must drop that rung for the device and say so in its status.
 *
 * Every loop device is attached over a file in the test case's folder; the
 * folder's fixture runs in the parent process, so it detaches them all even
 * when a test fails or crashes.
 */
#include "kernel_test.h"

#include <pthread.h>
#include <sys/sysmacros.h>
#include <sys/utsname.h>

#define MIB (1024 * 1024)
#define DEV_SIZE (64 * MIB)

static void teardown(void)
{
  kt_loop_detach_all(ts_test_dir);
  ts_test_dir_teardown();
}

static struct kt_loop attach(const char *name, bool ro)
{
  return kt_loop_attach(ts_test_dir, name, DEV_SIZE, ro);
}

static void release(struct kt_loop *l) { kt_loop_release(l); }

/* A queue attribute of the real device; -1 when the kernel lacks it. */
static long long real_attr(const struct kt_loop *l, const char *name)
{
  char *p = ts_test_fmt("/sys/dev/block/%u:%u/queue/%s", l->maj, l->min, name);
  FILE *f = fopen(p, "r");
  free(p);
  long long v = -1;
  if (f) {
    if (fscanf(f, "%lld", &v) != 1)
      v = -1;
    fclose(f);
  }
  return v;
}

/* A fake sysfs root for `l`: the real queue attributes, then `overrides`
 * ("name=value" pairs, NULL-terminated) on top. Returns the root. */
static char *fake_sysfs(const struct kt_loop *l, const char *tag, const char *const *overrides)
{
  char *root = ts_test_path(ts_test_dir, tag);
  char *q = ts_test_fmt("%s/dev/block/%u:%u/queue", root, l->maj, l->min);
  char *o = NULL;
  ck_assert_int_eq(ts_test_run(&o, "mkdir -p %s && for f in /sys/dev/block/%u:%u/queue/*; do "
                                   "[ -f \"$f\" ] && [ -r \"$f\" ] && cat \"$f\" > %s/$(basename \"$f\") "
                                   "2>/dev/null; done; true", q, l->maj, l->min, q), 0);
  free(o);
  for (const char *const *ov = overrides; ov && *ov; ov++) {
    const char *eq = strchr(*ov, '=');
    char *name = strndup(*ov, (size_t)(eq - *ov));
    char *p = ts_test_fmt("%s/%s", q, name);
    FILE *f = fopen(p, "w");
    ck_assert_ptr_nonnull(f);
    fprintf(f, "%s\n", eq + 1);
    fclose(f);
    free(p);
    free(name);
  }
  free(q);
  return root;
}

static const char *expected_provision_path(const struct kt_loop *l, bool emulate)
{
  if (real_attr(l, "provision_max_bytes") > 0)
    return "fallocate(0)";
  if (real_attr(l, "write_zeroes_unmap_max_bytes") > 0)
    return "fallocate(WRITE_ZEROES)";
  return emulate ? "ioctl(BLKZEROOUT)" : "unsupported";
}

/* ------------------------------------------------------------------------ */

/* The limits and the ladder follow the device's sysfs queue. */
START_TEST(limits_follow_sysfs)
{
  struct kt_loop l = attach("a.img", false);
  ts_stack *s = kt_open(ts_test_dir, l.dev, "");
  ts_dev *d = ts_stack_dev(s, "k");
  const ts_limits *lim = ts_dev_limits(d);
  ck_assert_uint_eq(lim->size, DEV_SIZE);
  ck_assert_uint_eq(lim->logical_block_size, (uint64_t)real_attr(&l, "logical_block_size"));
  ck_assert_uint_eq(lim->physical_block_size, (uint64_t)real_attr(&l, "physical_block_size"));
  ck_assert_uint_eq(lim->max_discard_bytes, (uint64_t)real_attr(&l, "discard_max_bytes"));
  ck_assert_uint_eq(lim->max_write_zeroes_bytes, (uint64_t)real_attr(&l, "write_zeroes_max_bytes"));
  ck_assert_uint_eq(lim->max_io_bytes, (uint64_t)real_attr(&l, "max_sectors_kb") * 1024);
  ck_assert(!lim->read_only);
  ck_assert(lim->fua);
  ck_assert(!lim->discard_zeroes);
  ck_assert_int_eq(lim->write_zeroes_unmap, real_attr(&l, "write_zeroes_unmap_max_bytes") > 0);

  const char *want = expected_provision_path(&l, false);
  json_t *st = kt_status(d);
  ck_assert_str_eq(kt_ladder(st, "provision", "path"), want);
  ck_assert_str_eq(json_string_value(json_object_get(st, "kind")), "block device");
  char *mm = ts_test_fmt("%u:%u", l.maj, l.min);
  ck_assert_str_eq(json_string_value(json_object_get(st, "device")), mm);
  free(mm);
  json_decref(st);

  struct utsname u;
  int major_v = 0, minor_v = 0;
  ck_assert_int_eq(uname(&u), 0);
  sscanf(u.release, "%d.%d", &major_v, &minor_v);
  if (major_v == 6 && minor_v == 18) {
    /* The facts this layer's documentation states for Linux 6.18. */
    ck_assert_int_eq(real_attr(&l, "provision_max_bytes"), -1);
    ck_assert_int_eq(real_attr(&l, "write_zeroes_unmap_max_bytes"), 0);
    ck_assert_str_eq(want, "unsupported");
  }
  if (strcmp(want, "unsupported") == 0) {
    ck_assert_uint_eq(lim->max_provision_bytes, 0);
    uint64_t a = ts_test_allocated(l.img);
    ck_assert_int_eq(ts_provision(d, 0, MIB), -EOPNOTSUPP);
    ck_assert_uint_eq(ts_test_allocated(l.img), a);
  }
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  release(&l);
}
END_TEST

/* Every op through the layer, checked on the device and on its backing file. */
START_TEST(ops_on_loop)
{
  struct kt_loop l = attach("b.img", false);
  ts_stack *s = kt_open(ts_test_dir, l.dev, "");
  ts_dev *d = ts_stack_dev(s, "k");
  char *buf = malloc(4 * MIB), *back = malloc(4 * MIB);

  /* WRITE (FUA), READ, FLUSH; the bytes reach the backing file. */
  ts_test_pattern(buf, 4 * MIB, 11);
  ck_assert_int_eq(ts_pwrite(d, buf, 4 * MIB, 8 * MIB, TS_IO_FUA), 0);
  ck_assert_int_eq(ts_pread(d, back, 4 * MIB, 8 * MIB), 0);
  ck_assert_mem_eq(back, buf, 4 * MIB);
  ck_assert_int_eq(ts_flush(d), 0);
  kt_pread_file(l.img, back, 4 * MIB, 8 * MIB);
  ck_assert_mem_eq(back, buf, 4 * MIB);
  uint64_t full = ts_test_allocated(l.img);
  ck_assert_uint_ge(full, 4 * MIB);

  /* Scattered, unaligned iovecs. */
  struct iovec w[3] = { { buf + 1, 511 }, { buf + 600, 1 }, { buf + 7000, 8192 } };
  ck_assert_int_eq(ts_pwritev(d, w, 3, 20 * MIB, 0), 0);
  char r1[511], r2[1], r3[8192];
  struct iovec rv[3] = { { r1, 511 }, { r2, 1 }, { r3, 8192 } };
  ck_assert_int_eq(ts_preadv(d, rv, 3, 20 * MIB), 0);
  ck_assert_mem_eq(r1, buf + 1, 511);
  ck_assert_mem_eq(r2, buf + 600, 1);
  ck_assert_mem_eq(r3, buf + 7000, 8192);

  /* WRITE_ZEROES without MAY_UNMAP: BLKZEROOUT; loop turns it into
   * fallocate(ZERO_RANGE) on the backing file, which keeps the space. */
  ck_assert_int_eq(ts_write_zeroes(d, 8 * MIB, MIB, TS_IO_NOFALLBACK), 0);
  ck_assert_int_eq(ts_pread(d, back, MIB, 8 * MIB), 0);
  ck_assert(kt_is_zero(back, MIB));
  kt_pread_file(l.img, back, MIB, 8 * MIB);
  ck_assert(kt_is_zero(back, MIB));
  ck_assert_uint_ge(ts_test_allocated(l.img), full);

  /* With MAY_UNMAP: fallocate(PUNCH_HOLE) on the device, a write-zeroes that
   * may unmap; loop punches a hole in the backing file. */
  ck_assert_int_eq(ts_write_zeroes(d, 9 * MIB, MIB, TS_IO_MAY_UNMAP | TS_IO_NOFALLBACK), 0);
  ck_assert_int_eq(ts_pread(d, back, MIB, 9 * MIB), 0);
  ck_assert(kt_is_zero(back, MIB));
  ck_assert_uint_le(ts_test_allocated(l.img), full - MIB);

  /* DISCARD: BLKDISCARD; loop punches a hole too, so the range reads zeroes
   * here (the layer does not promise it: discard_zeroes is false). */
  uint64_t a = ts_test_allocated(l.img);
  ck_assert_int_eq(ts_discard(d, 10 * MIB, 2 * MIB), 0);
  ck_assert_uint_le(ts_test_allocated(l.img), a - 2 * MIB);
  ck_assert_int_eq(ts_pread(d, back, 2 * MIB, 10 * MIB), 0);
  ck_assert(kt_is_zero(back, 2 * MIB));
  kt_pread_file(l.img, back, 2 * MIB, 10 * MIB);
  ck_assert(kt_is_zero(back, 2 * MIB));

  /* Data around the zeroed ranges is untouched. */
  ck_assert_int_eq(ts_pwrite(d, buf, MIB, 12 * MIB, 0), 0);
  ck_assert_int_eq(ts_write_zeroes(d, 12 * MIB + 4096, 8192, 0), 0);
  ck_assert_int_eq(ts_pread(d, back, MIB, 12 * MIB), 0);
  ck_assert_mem_eq(back, buf, 4096);
  ck_assert(kt_is_zero(back + 4096, 8192));
  ck_assert_mem_eq(back + 12288, buf + 12288, MIB - 12288);

  /* A block device is reported as all data. */
  ts_extent_list ex = { 0 };
  ck_assert_int_eq(ts_block_status(d, 0, DEV_SIZE, &ex), 0);
  ck_assert_uint_eq(ex.n, 1);
  ck_assert_uint_eq(ex.v[0].length, DEV_SIZE);
  ck_assert_uint_eq(ex.v[0].flags, 0);
  ts_extent_list_free(&ex);

  json_t *st = kt_status(d);
  ck_assert_uint_eq(kt_calls(st, "ioctl(BLKZEROOUT)", "calls"), 2);
  ck_assert_uint_eq(kt_calls(st, "fallocate(PUNCH_HOLE|KEEP_SIZE)", "calls"), 1);
  ck_assert_uint_eq(kt_calls(st, "ioctl(BLKDISCARD)", "calls"), 1);
  ck_assert_uint_eq(kt_calls(st, "ioctl(BLKDISCARD)", "unsupported"), 0);
  json_decref(st);

  char *table = ts_test_fmt("0 %u linear %u:%u 0", DEV_SIZE / 512, l.maj, l.min);
  const ts_layer_type *t = ts_find_layer_type("kernel");
  char *got = t->dm_table(d);
  ck_assert_str_eq(got, table);
  free(got);
  free(table);
  free(buf);
  free(back);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  release(&l);
}
END_TEST

/* direct: O_DIRECT on the loop device, unaligned caller buffers bounced. */
START_TEST(direct_on_loop)
{
  struct kt_loop l = attach("c.img", false);
  ts_stack *s = kt_open(ts_test_dir, l.dev, "\"direct\": true");
  ts_dev *d = ts_stack_dev(s, "k");
  size_t len = 2 * MIB + 4096;
  char *raw = malloc(len + 1), *data = raw + 1, *back = malloc(len);
  ts_test_pattern(data, len, 5);
  ck_assert_int_eq(ts_pwrite(d, data, len, 3 * MIB, TS_IO_FUA), 0);
  kt_pread_file(l.img, back, len, 3 * MIB);
  ck_assert_mem_eq(back, data, len);
  memset(raw, 0, len + 1);
  ck_assert_int_eq(ts_pread(d, data, len, 3 * MIB), 0);
  ck_assert_mem_eq(data, back, len);
  json_t *st = kt_status(d);
  ck_assert(json_is_true(json_object_get(st, "direct")));
  json_decref(st);
  free(raw);
  free(back);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  release(&l);
}
END_TEST

/* provision "emulate" on loop: BLKZEROOUT, which loop turns into
 * fallocate(ZERO_RANGE|KEEP_SIZE) on the backing file. So the space is
 * reserved in the sparse file (its st_blocks grow by the range, as unwritten
 * extents) and the range reads zeroes -- also where data was (the price of
 * emulating with zeroes), which is why only a PROVISION flagged
 * TS_IO_MAY_ZERO takes that path: any other is refused and changes nothing. */
START_TEST(provision_emulate_reaches_backing_file)
{
  struct kt_loop l = attach("d.img", false);
  ts_stack *s = kt_open(ts_test_dir, l.dev, "\"provision\": \"emulate\"");
  ts_dev *d = ts_stack_dev(s, "k");
  ck_assert_str_eq(expected_provision_path(&l, true), "ioctl(BLKZEROOUT)");
  ck_assert_uint_eq(ts_dev_limits(d)->max_provision_bytes, UINT64_MAX);

  uint64_t a = ts_test_allocated(l.img);
  ck_assert_int_eq(ts_provision(d, 16 * MIB, 8 * MIB), -EOPNOTSUPP);
  ck_assert_uint_eq(ts_test_allocated(l.img), a);
  ck_assert_uint_eq(kt_refused(d), 1);
  ck_assert_int_eq(kt_provision_may_zero(d, 16 * MIB, 8 * MIB), 0);
  ck_assert_uint_ge(ts_test_allocated(l.img), a + 8 * MIB);
  char *back = malloc(8 * MIB);
  memset(back, 0xee, 8 * MIB);
  ck_assert_int_eq(ts_pread(d, back, 8 * MIB, 16 * MIB), 0);
  ck_assert(kt_is_zero(back, 8 * MIB));

  char *buf = malloc(MIB);
  ts_test_pattern(buf, MIB, 3);
  ck_assert_int_eq(ts_pwrite(d, buf, MIB, 30 * MIB, 0), 0);
  /* The data stays under a plain PROVISION, and goes under MAY_ZERO. */
  ck_assert_int_eq(ts_provision(d, 30 * MIB, MIB), -EOPNOTSUPP);
  ck_assert_int_eq(ts_pread(d, back, MIB, 30 * MIB), 0);
  ck_assert_mem_eq(back, buf, MIB);
  ck_assert_int_eq(kt_provision_may_zero(d, 30 * MIB, MIB), 0);
  ck_assert_int_eq(ts_pread(d, back, MIB, 30 * MIB), 0);
  ck_assert(kt_is_zero(back, MIB));

  json_t *st = kt_status(d);
  ck_assert_str_eq(kt_ladder(st, "provision", "path"), "ioctl(BLKZEROOUT)");
  ck_assert_uint_eq(kt_calls(st, "ioctl(BLKZEROOUT)", "calls"), 2);
  json_decref(st);
  ck_assert_uint_eq(kt_refused(d), 2);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);

  /* With the default policy the same device cannot provision, and the
   * backing file is left alone. */
  s = kt_open(ts_test_dir, l.dev, "");
  d = ts_stack_dev(s, "k");
  a = ts_test_allocated(l.img);
  ck_assert_int_eq(ts_provision(d, 40 * MIB, MIB), -EOPNOTSUPP);
  ck_assert_uint_eq(ts_test_allocated(l.img), a);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  free(buf);
  free(back);
  release(&l);
}
END_TEST

/* A fake sysfs claiming a patched kernel: the ladder starts at fallocate(0)
 * on the block device; this kernel's blkdev_fallocate() answers EOPNOTSUPP,
 * the rung is dropped once and the status shows it. */
START_TEST(patched_kernel_path_downgrades)
{
  struct kt_loop l = attach("e.img", false);
  static const char *const ov[] = { "provision_max_bytes=1073741824",
                                    "write_zeroes_unmap_max_bytes=0", NULL };
  char *root = fake_sysfs(&l, "sys-patched", ov);
  char *extra = ts_test_fmt("\"sysfs_root\": \"%s\"", root);
  ts_stack *s = kt_open(ts_test_dir, l.dev, extra);
  ts_dev *d = ts_stack_dev(s, "k");
  ck_assert_uint_eq(ts_dev_limits(d)->max_provision_bytes, 1073741824);
  json_t *st = kt_status(d);
  ck_assert_str_eq(kt_ladder(st, "provision", "path"), "fallocate(0)");
  ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(st, "queue")), root));
  json_decref(st);

  uint64_t a = ts_test_allocated(l.img);
  ck_assert_int_eq(ts_provision(d, 0, MIB), -EOPNOTSUPP);
  st = kt_status(d);
  ck_assert_str_eq(kt_ladder(st, "provision", "initial"), "fallocate(0)");
  ck_assert_str_eq(kt_ladder(st, "provision", "path"), "unsupported");
  ck_assert_uint_eq(kt_downgrades(st, "provision"), 1);
  json_t *dg = json_array_get(json_object_get(json_object_get(json_object_get(st, "ops"),
                                                              "provision"), "downgrades"), 0);
  ck_assert_str_eq(json_string_value(json_object_get(dg, "from")), "fallocate(0)");
  ck_assert_str_eq(json_string_value(json_object_get(dg, "to")), "unsupported");
  ck_assert_str_eq(json_string_value(json_object_get(dg, "error")), "EOPNOTSUPP");
  ck_assert_uint_eq(kt_calls(st, "fallocate(0)", "calls"), 1);
  ck_assert_uint_eq(kt_calls(st, "fallocate(0)", "unsupported"), 1);
  json_decref(st);

  /* Later requests fail at once, without asking the kernel again. */
  ck_assert_int_eq(ts_provision(d, MIB, MIB), -EOPNOTSUPP);
  st = kt_status(d);
  ck_assert_uint_eq(kt_calls(st, "fallocate(0)", "calls"), 1);
  json_decref(st);
  ck_assert_uint_eq(ts_test_allocated(l.img), a);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);

  /* With emulate, the same request carries on down the ladder. */
  free(extra);
  extra = ts_test_fmt("\"sysfs_root\": \"%s\", \"provision\": \"emulate\"", root);
  s = kt_open(ts_test_dir, l.dev, extra);
  d = ts_stack_dev(s, "k");
  ck_assert_int_eq(kt_provision_may_zero(d, 0, MIB), 0);
  ck_assert_uint_ge(ts_test_allocated(l.img), a + MIB);
  st = kt_status(d);
  ck_assert_str_eq(kt_ladder(st, "provision", "path"), "ioctl(BLKZEROOUT)");
  ck_assert_uint_eq(kt_calls(st, "fallocate(0)", "unsupported"), 1);
  ck_assert_uint_eq(kt_calls(st, "ioctl(BLKZEROOUT)", "calls"), 1);
  json_decref(st);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  free(extra);
  free(root);
  release(&l);
}
END_TEST

/* A fake sysfs with write_zeroes_unmap_max_bytes > 0 on Linux >= 6.17: the
 * ladder starts at fallocate(FALLOC_FL_WRITE_ZEROES). The loop device itself
 * has no unmapping write-zeroes, so blkdev_fallocate() refuses it. */
START_TEST(write_zeroes_path_chosen)
{
  struct kt_loop l = attach("f.img", false);
  static const char *const ov[] = { "write_zeroes_unmap_max_bytes=268435456", NULL };
  char *root = fake_sysfs(&l, "sys-617", ov);
  char *extra = ts_test_fmt("\"sysfs_root\": \"%s\"", root);
  ts_stack *s = kt_open(ts_test_dir, l.dev, extra);
  ts_dev *d = ts_stack_dev(s, "k");
  ck_assert_uint_eq(ts_dev_limits(d)->max_provision_bytes, 268435456);
  ck_assert(ts_dev_limits(d)->write_zeroes_unmap);
  json_t *st = kt_status(d);
  ck_assert_str_eq(kt_ladder(st, "provision", "path"), "fallocate(WRITE_ZEROES)");
  ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(st, "provision_decision")),
                               "write_zeroes_unmap_max_bytes = 268435456"));
  json_decref(st);
  /* Rung 3 zeroes, so a plain PROVISION is refused without a call. */
  ck_assert_int_eq(ts_provision(d, 0, MIB), -EOPNOTSUPP);
  ck_assert_uint_eq(kt_refused(d), 1);
  int r = kt_provision_may_zero(d, 0, MIB);
  st = kt_status(d);
  ck_assert_uint_eq(kt_calls(st, "fallocate(WRITE_ZEROES)", "calls"), 1);
  if (real_attr(&l, "write_zeroes_unmap_max_bytes") > 0) {
    ck_assert_int_eq(r, 0); /* a kernel whose loop driver has it */
  } else {
    ck_assert_int_eq(r, -EOPNOTSUPP);
    ck_assert_str_eq(kt_ladder(st, "provision", "path"), "unsupported");
    ck_assert_uint_eq(kt_downgrades(st, "provision"), 1);
  }
  json_decref(st);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  free(extra);
  free(root);
  release(&l);
}
END_TEST

/* NOFALLBACK without MAY_UNMAP: BLKZEROOUT would write zero pages if the
 * queue lost its write-zeroes after open, so the layer looks again and
 * refuses; without NOFALLBACK the kernel's fallback is allowed. The fake
 * tree stands in for a queue whose limit an admin set to 0. */
START_TEST(nofallback_rechecks_queue)
{
  struct kt_loop l = attach("j.img", false);
  ck_assert_int_gt(real_attr(&l, "write_zeroes_max_bytes"), 0);
  char *root = fake_sysfs(&l, "sys-nowz", NULL);
  char *extra = ts_test_fmt("\"sysfs_root\": \"%s\"", root);
  ts_stack *s = kt_open(ts_test_dir, l.dev, extra);
  ts_dev *d = ts_stack_dev(s, "k");
  ck_assert_int_eq(ts_write_zeroes(d, 0, MIB, TS_IO_NOFALLBACK), 0);

  char *p = ts_test_fmt("%s/dev/block/%u:%u/queue/write_zeroes_max_bytes", root, l.maj, l.min);
  FILE *f = fopen(p, "w");
  ck_assert_ptr_nonnull(f);
  fputs("0\n", f);
  fclose(f);
  free(p);
  ck_assert_int_eq(ts_write_zeroes(d, 0, MIB, TS_IO_NOFALLBACK), -EOPNOTSUPP);
  json_t *st = kt_status(d);
  ck_assert_uint_eq(kt_calls(st, "ioctl(BLKZEROOUT)", "calls"), 1);
  json_decref(st);
  ck_assert_int_eq(ts_write_zeroes(d, 0, MIB, 0), 0);
  st = kt_status(d);
  ck_assert_uint_eq(kt_calls(st, "ioctl(BLKZEROOUT)", "calls"), 2);
  json_decref(st);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  free(extra);
  free(root);
  release(&l);
}
END_TEST

struct racer {
  ts_dev *d;
  int bad;
};

static void *race(void *arg)
{
  struct racer *r = arg;
  for (int i = 0; i < 16; i++)
    if (ts_provision(r->d, (uint64_t)i * MIB, MIB) != -EOPNOTSUPP)
      r->bad++;
  return NULL;
}

/* Many threads hitting the failing rung at once: every request answers
 * -EOPNOTSUPP, the ladder moves exactly one step. */
START_TEST(downgrade_is_thread_safe)
{
  struct kt_loop l = attach("g.img", false);
  static const char *const ov[] = { "provision_max_bytes=1048576", NULL };
  char *root = fake_sysfs(&l, "sys-race", ov);
  char *extra = ts_test_fmt("\"sysfs_root\": \"%s\"", root);
  ts_stack *s = kt_open(ts_test_dir, l.dev, extra);
  ts_dev *d = ts_stack_dev(s, "k");
  enum { T = 6 };
  pthread_t th[T];
  struct racer rc[T];
  for (int i = 0; i < T; i++) {
    rc[i] = (struct racer){ d, 0 };
    ck_assert_int_eq(pthread_create(&th[i], NULL, race, &rc[i]), 0);
  }
  for (int i = 0; i < T; i++) {
    pthread_join(th[i], NULL);
    ck_assert_int_eq(rc[i].bad, 0);
  }
  json_t *st = kt_status(d);
  ck_assert_uint_eq(kt_downgrades(st, "provision"), 1);
  uint64_t calls = kt_calls(st, "fallocate(0)", "calls");
  ck_assert_uint_ge(calls, 1);
  ck_assert_uint_le(calls, T);
  ck_assert_uint_eq(kt_calls(st, "fallocate(0)", "unsupported"), calls);
  json_decref(st);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  free(extra);
  free(root);
  release(&l);
}
END_TEST

START_TEST(read_only_device)
{
  struct kt_loop l = attach("h.img", true);
  ts_stack *s = kt_open(ts_test_dir, l.dev, "");
  ts_dev *d = ts_stack_dev(s, "k");
  ck_assert(ts_dev_limits(d)->read_only);
  char buf[4096];
  ck_assert_int_eq(ts_pread(d, buf, sizeof buf, 0), 0);
  ck_assert(kt_is_zero(buf, sizeof buf));
  ck_assert_int_eq(ts_pwrite(d, buf, sizeof buf, 0, 0), -EROFS);
  ck_assert_int_eq(ts_discard(d, 0, 4096), -EROFS);
  json_t *st = kt_status(d);
  ck_assert(json_is_true(json_object_get(st, "read_only")));
  ck_assert_ptr_nonnull(json_string_value(json_object_get(st, "read_only_reason")));
  json_decref(st);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  release(&l);
}
END_TEST

START_TEST(bad_inputs)
{
  struct kt_loop l = attach("i.img", false);
  ts_stack *s = NULL, *s2 = NULL;
  ts_error err = { 0 };

  ck_assert_int_eq(kt_try_open(ts_test_dir, "/dev/null", "", &s, &err), -ENOTBLK);
  ck_assert_ptr_nonnull(strstr(err.msg, "layers.k.path"));

  /* A sysfs root without this device's queue. */
  char *empty = ts_test_path(ts_test_dir, "nosys");
  ck_assert_int_eq(mkdir(empty, 0755), 0);
  char *extra = ts_test_fmt("\"sysfs_root\": \"%s\"", empty);
  ck_assert_int_eq(kt_try_open(ts_test_dir, l.dev, extra, &s, &err), -ENOENT);
  ck_assert_ptr_nonnull(strstr(err.msg, "layers.k.sysfs_root"));
  ck_assert_ptr_nonnull(strstr(err.msg, "does not exist"));
  free(extra);

  /* A sysfs tree that belongs to another device (wrong block size). */
  static const char *const ov[] = { "logical_block_size=4096", NULL };
  char *root = fake_sysfs(&l, "sys-wrong", ov);
  extra = ts_test_fmt("\"sysfs_root\": \"%s\"", root);
  ck_assert_int_eq(kt_try_open(ts_test_dir, l.dev, extra, &s, &err), -EINVAL);
  ck_assert_ptr_nonnull(strstr(err.msg, "says a logical block size of 4096"));
  free(extra);
  free(root);

  /* A block device we write is ours alone while the stack is open. */
  ck_assert_int_eq(kt_try_open(ts_test_dir, l.dev, "", &s, &err), 0);
  ck_assert_int_eq(kt_try_open(ts_test_dir, l.dev, "", &s2, &err), -EBUSY);
  ck_assert_ptr_nonnull(strstr(err.msg, "in use"));
  ts_stack_close(s, NULL);

  free(empty);
  release(&l);
}
END_TEST

static Suite *suite(void)
{
  Suite *s = suite_create("kernel_loop");
  TCase *tc = tcase_create("loop");
  tcase_add_unchecked_fixture(tc, ts_test_dir_setup, teardown);
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, limits_follow_sysfs);
  tcase_add_test(tc, ops_on_loop);
  tcase_add_test(tc, direct_on_loop);
  tcase_add_test(tc, provision_emulate_reaches_backing_file);
  tcase_add_test(tc, patched_kernel_path_downgrades);
  tcase_add_test(tc, write_zeroes_path_chosen);
  tcase_add_test(tc, downgrade_is_thread_safe);
  tcase_add_test(tc, nofallback_rechecks_queue);
  tcase_add_test(tc, read_only_device);
  tcase_add_test(tc, bad_inputs);
  suite_add_tcase(s, tc);
  return s;
}

int main(void)
{
  kt_loop_require();
  return ts_test_main(suite());
}
