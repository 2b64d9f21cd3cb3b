/* bytedev, the byte-range adapter under the FUSE export and the nbdkit
 * plugin: unaligned reads and writes against a reference buffer, zeroing and
 * punching with partial edge blocks, and concurrent writers of different
 * bytes of the same blocks (which lose updates without the range lock).
 *
 * bytedev.c belongs to the exports, not to the library, so it is compiled
 * into this test directly. */
#include "testutil.h"

#include "../../examples/export-common/bytedev.c"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define DEV_SIZE (1u << 20)

static const char *stack_json(unsigned lbs)
{
  static char buf[512];
  snprintf(buf, sizeof buf,
           "{ \"version\": 1, \"layers\": {"
           " \"mem\": { \"type\": \"memory\", \"size\": %u },"
           " \"dev\": { \"type\": \"fault\", \"child\": \"mem\","
           "            \"limits\": { \"logical_block_size\": %u } } },"
           " \"exports\": [\"dev\"] }",
           DEV_SIZE, lbs);
  return buf;
}

static uint64_t rnd(uint64_t *s)
{
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

static void check_equal(bd_dev *b, const unsigned char *ref)
{
  unsigned char *got = malloc(DEV_SIZE);
  ck_assert_ptr_nonnull(got);
  ck_assert_int_eq(ts_pread(b->dev, got, DEV_SIZE, 0), 0);
  for (size_t i = 0; i < DEV_SIZE; i++)
    if (got[i] != ref[i])
      ck_abort_msg("byte %zu: device has %u, expected %u", i, got[i], ref[i]);
  free(got);
}

/* Random unaligned writes and reads, checked against a plain buffer. */
START_TEST(unaligned_rw)
{
  unsigned lbs = _i ? 4096 : 512;
  ts_stack *s = ts_test_open(NULL, stack_json(lbs));
  bd_dev b;
  ck_assert_int_eq(bd_init(&b, ts_stack_dev(s, "dev")), 0);
  ck_assert_uint_eq(b.lbs, lbs);
  unsigned char *ref = calloc(1, DEV_SIZE), *buf = malloc(3 * lbs + 100);
  uint64_t seed = 0x9e3779b97f4a7c15ull + lbs;
  for (int iter = 0; iter < 2000; iter++) {
    size_t len = 1 + rnd(&seed) % (3 * lbs + 99);
    uint64_t off = rnd(&seed) % (DEV_SIZE - len);
    if (iter % 3) {
      ts_test_pattern(buf, len, seed);
      ck_assert_int_eq(bd_write(&b, buf, len, off, (iter & 4) ? TS_IO_FUA : 0), 0);
      memcpy(ref + off, buf, len);
    } else {
      ck_assert_int_eq(bd_read(&b, buf, len, off), 0);
      ck_assert_msg(memcmp(buf, ref + off, len) == 0, "read %zu at %llu differs", len,
                    (unsigned long long)off);
    }
  }
  check_equal(&b, ref);
  /* Out of range requests are refused, empty ones do nothing. */
  ck_assert_int_eq(bd_write(&b, buf, 2, DEV_SIZE - 1, 0), -EINVAL);
  ck_assert_int_eq(bd_read(&b, buf, 0, DEV_SIZE), 0);
  bd_fini(&b);
  free(ref);
  free(buf);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
}
END_TEST

/* Zero and punch with partial edge blocks: exactly the range reads zeroes,
 * whole blocks inside a punched range are released. */
START_TEST(zero_and_punch)
{
  unsigned lbs = 4096;
  ts_stack *s = ts_test_open(NULL, stack_json(lbs));
  bd_dev b;
  ck_assert_int_eq(bd_init(&b, ts_stack_dev(s, "dev")), 0);
  unsigned char *ref = malloc(DEV_SIZE);
  ts_test_pattern(ref, DEV_SIZE, 7);
  ck_assert_int_eq(bd_write(&b, ref, DEV_SIZE, 0, 0), 0);

  struct { uint64_t off, len; int how; } cases[] = {
    { 100, 50, 0 },                 /* inside one block */
    { 4000, 200, 0 },               /* across one block edge */
    { 10000, 70000, 0 },            /* partial, whole blocks, partial */
    { 200000, 3 * 65536 + 5, 1 },   /* punch: discards whole chunks */
    { 600000, 10, 1 },              /* punch inside one block */
    { 700001, 8191, 2 },            /* zero with MAY_UNMAP */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    int r = cases[i].how == 1 ? bd_punch(&b, cases[i].off, cases[i].len)
                              : bd_zero(&b, cases[i].off, cases[i].len,
                                        cases[i].how == 2 ? TS_IO_MAY_UNMAP : 0);
    ck_assert_int_eq(r, 0);
    memset(ref + cases[i].off, 0, cases[i].len);
  }
  check_equal(&b, ref);

  /* The memory device frees whole 64K chunks: the punch above released the
   * two chunks wholly inside it. */
  ts_extent_list l = { 0 };
  ck_assert_int_eq(bd_extents(&b, 200000, 3 * 65536 + 5, &l), 0);
  ck_assert_uint_le(l.v[0].offset, 200000);
  uint64_t holes = 0;
  for (size_t i = 0; i < l.n; i++)
    if (l.v[i].flags & TS_EXTENT_HOLE)
      holes += l.v[i].length;
  ck_assert_uint_eq(holes, 2 * 65536);
  ts_extent_list_free(&l);

  /* Trim is advisory: it leaves partial blocks alone. */
  ck_assert_int_eq(bd_trim(&b, 4 * 65536 + 1, 65536), 0);
  ck_assert_int_eq(bd_trim(&b, 6 * 65536 + 100, 100), 0);
  check_equal(&b, ref);
  bd_fini(&b);
  free(ref);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
}
END_TEST

/* A layer with dm-thin's discard semantics: DISCARD releases the whole 64K
 * units inside the range and leaves partial units as they were, although
 * discarded units read back as zeroes (discard_zeroes). */
#define UNIT 65536u

static const ts_param granular_params[] = {
  { "child", TS_PARAM_CHILD, TS_PARAM_REQUIRED, NULL, NULL, "" },
  { NULL, 0, 0, NULL, NULL, NULL },
};

static int granular_open(ts_layer *l, const json_t *params, ts_error *err)
{
  ts_layer_set_priv(l, ts_layer_child(l, ts_param_string(params, "child", "")));
  return 0;
}

static int granular_limits(ts_layer *l, ts_limits *lim, ts_error *err)
{
  lim->size = ts_dev_size(ts_layer_priv(l));
  lim->discard_granularity = UNIT;
  lim->discard_zeroes = true;
  return 0;
}

static int granular_submit(ts_layer *l, const ts_io *io)
{
  ts_layer *child = ts_layer_priv(l);
  if (io->op != TS_OP_DISCARD)
    return ts_submit(child, io);
  uint64_t lo = (io->offset + UNIT - 1) / UNIT * UNIT, hi = (io->offset + io->length) / UNIT * UNIT;
  return lo < hi ? ts_discard(child, lo, hi - lo) : 0;
}

static int granular_block_status(ts_layer *l, uint64_t off, uint64_t len, ts_extent_list *out)
{
  return ts_block_status(ts_layer_priv(l), off, len, out);
}

static const ts_layer_type granular_type = {
  TS_LAYER_TYPE_INIT,
  .name = "test-granular-discard",
  .summary = "discards whole 64K units only",
  .params = granular_params,
  .open = granular_open,
  .limits = granular_limits,
  .submit = granular_submit,
  .block_status = granular_block_status,
};

/* Punching a range that is not made of whole discard units still leaves it
 * reading as zeroes, and the whole units inside are released. */
START_TEST(punch_partial_units)
{
  int r = ts_register_layer_type(&granular_type);
  ck_assert(r == 0 || r == -EEXIST);
  ts_stack *s = ts_test_open(NULL,
      "{ \"version\": 1, \"layers\": {"
      " \"mem\": { \"type\": \"memory\", \"size\": 1048576 },"
      " \"dev\": { \"type\": \"test-granular-discard\", \"child\": \"mem\" } },"
      " \"exports\": [\"dev\"] }");
  bd_dev b;
  ck_assert_int_eq(bd_init(&b, ts_stack_dev(s, "dev")), 0);
  unsigned char *ref = malloc(DEV_SIZE);
  ts_test_pattern(ref, DEV_SIZE, 11);
  ck_assert_int_eq(bd_write(&b, ref, DEV_SIZE, 0, 0), 0);
  struct { uint64_t off, len; } cases[] = {
    { 4096, 65536 },                  /* no whole unit: all zeroed */
    { 3 * UNIT - 1000, 2 * UNIT + 5000 }, /* partial, two units, partial */
    { 8 * UNIT, UNIT },               /* exactly one unit */
    { 10 * UNIT + 7, 100 },           /* inside one block */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    ck_assert_int_eq(bd_punch(&b, cases[i].off, cases[i].len), 0);
    memset(ref + cases[i].off, 0, cases[i].len);
  }
  check_equal(&b, ref);
  ts_extent_list l = { 0 };
  ck_assert_int_eq(bd_extents(&b, 3 * UNIT, 2 * UNIT, &l), 0);
  ck_assert_uint_eq(l.n, 1);
  ck_assert_uint_eq(l.v[0].flags, TS_EXTENT_HOLE | TS_EXTENT_ZERO);
  ts_extent_list_free(&l);
  bd_fini(&b);
  free(ref);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
}
END_TEST

/* Several threads write interleaved slices of the same blocks: thread t owns
 * the bytes whose (offset / SLICE) % NTHREADS == t. Every slice is an
 * unaligned write, so each one is a read-modify-write of shared blocks; the
 * final contents must hold every thread's last pattern. */
#define NTHREADS 4
#define SLICE 300
#define REGION DEV_SIZE

static pthread_barrier_t start;

struct writer {
  bd_dev *b;
  int t;
  int rounds;
  int err;
};

static unsigned char slice_byte(int t, int round, uint64_t off)
{
  return (unsigned char)(t * 61 + round * 17 + off * 13 + 1);
}

static void *writer_main(void *arg)
{
  struct writer *w = arg;
  unsigned char buf[SLICE];
  pthread_barrier_wait(&start);
  for (int round = 0; round < w->rounds && !w->err; round++)
    for (uint64_t off = (uint64_t)w->t * SLICE; off < REGION && !w->err;
         off += NTHREADS * SLICE) {
      size_t len = off + SLICE > REGION ? REGION - off : SLICE;
      for (size_t i = 0; i < len; i++)
        buf[i] = slice_byte(w->t, round, off + i);
      w->err = bd_write(w->b, buf, len, off, 0);
    }
  return NULL;
}

START_TEST(concurrent_rmw)
{
  ts_stack *s = ts_test_open(NULL, stack_json(4096));
  bd_dev b;
  ck_assert_int_eq(bd_init(&b, ts_stack_dev(s, "dev")), 0);
  pthread_t th[NTHREADS];
  struct writer w[NTHREADS];
  pthread_barrier_init(&start, NULL, NTHREADS);
  for (int t = 0; t < NTHREADS; t++) {
    w[t] = (struct writer){ .b = &b, .t = t, .rounds = 1 };
    ck_assert_int_eq(pthread_create(&th[t], NULL, writer_main, &w[t]), 0);
  }
  for (int t = 0; t < NTHREADS; t++) {
    pthread_join(th[t], NULL);
    ck_assert_int_eq(w[t].err, 0);
  }
  pthread_barrier_destroy(&start);
  unsigned char *got = malloc(REGION);
  ck_assert_int_eq(bd_read(&b, got, REGION, 0), 0);
  for (uint64_t off = 0; off < REGION; off++) {
    int t = (int)((off / SLICE) % NTHREADS);
    ck_assert_msg(got[off] == slice_byte(t, 0, off), "byte %llu lost thread %d's update",
                  (unsigned long long)off, t);
  }
  ck_assert_ptr_null(b.held);
  free(got);
  bd_fini(&b);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
}
END_TEST

static Suite *suite(void)
{
  Suite *s = suite_create("bytedev");
  TCase *tc = tcase_create("bytedev");
  tcase_add_loop_test(tc, unaligned_rw, 0, 2);
  tcase_add_test(tc, zero_and_punch);
  tcase_add_test(tc, punch_partial_units);
  tcase_add_test(tc, concurrent_rmw);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return ts_test_main(suite()); }
