/* Damaged and unacceptable metadata: our checker and thin_check both report
 * damage; bad superblocks are refused with a clear message and the file is
 * left byte-for-byte unchanged. */
#include "pdtest.h"
#include "pdata/pdata-internal.h"

static char *meta;

static void setup(void)
{
  pdt_require_tools();

  ts_test_dir_setup();
  meta = ts_test_file("meta");
}

/* A small committed pool: two devices, a snapshot, a few hundred mappings. */
static void build_pool(void)
{
  struct pd_bdev b;
  pdt_make_file(meta, 4 << 20);
  pdt_open_bdev(&b, meta);
  struct tmd *md;
  ts_error err = {0};
  ck_assert_int_eq(tmd_format(&b, 128, 10000, NULL, &md, &err), 0);
  ck_assert_int_eq(tmd_create_thin(md, 1), 0);
  uint64_t db, got, done;
  ck_assert_int_eq(tmd_alloc_data_run(md, 600, &db, &got), 0);
  ck_assert_int_eq(tmd_insert_run(md, 1, 0, got, db, &done), 0);
  ck_assert_int_eq(tmd_create_snap(md, 2, 1), 0);
  ck_assert_int_eq(tmd_alloc_data(md, &db), 0);
  ck_assert_int_eq(tmd_insert(md, 2, 3, db), 0);
  ck_assert_int_eq(tmd_commit(md), 0);
  tmd_close(md);
  pd_bdev_close(&b);
}

static void rw_block(uint64_t nr, uint8_t *buf, bool wr)
{
  struct pd_bdev b;
  pdt_open_bdev(&b, meta);
  ck_assert_int_eq(wr ? pd_bdev_write(&b, nr, 1, buf) : pd_bdev_read(&b, nr, 1, buf), 0);
  pd_bdev_close(&b);
}

static uint64_t our_errors(void)
{
  struct pd_bdev b;
  pdt_open_bdev(&b, meta);
  struct pd_check_result res;
  ck_assert_int_eq(pd_check(&b, NULL, NULL, &res), 0);
  pd_bdev_close(&b);
  return res.errors;
}

/* Find the first block whose checksum validates as `t`. */
static uint64_t find_block(enum pd_btype t, uint32_t leaf_vsize)
{
  uint8_t buf[4096];
  for (uint64_t nr = 1; nr < 1024; nr++) {
    rw_block(nr, buf, false);
    if (pd_block_validate(buf, nr, t, NULL, 0) == 0 &&
        (t != PD_BT_NODE || (pd_node_is_leaf(buf) && pd_node_vsize(buf) == leaf_vsize && pd_node_nr(buf) > 0)))
      return nr;
  }
  ck_abort_msg("no block of the wanted type");
  return 0;
}

START_TEST(test_clean_baseline)
{
  build_pool();
  ck_assert_uint_eq(our_errors(), 0);
  ts_test_assert_thin_check(meta);
}
END_TEST

START_TEST(test_flipped_byte_in_node)
{
  build_pool();
  uint64_t nr = find_block(PD_BT_NODE, 8);
  uint8_t buf[4096];
  rw_block(nr, buf, false);
  buf[100] ^= 0x40; /* a key: checksum now wrong */
  rw_block(nr, buf, true);
  ck_assert_uint_gt(our_errors(), 0);
  ck_assert_int_ne(pdt_thin_check(meta, NULL), 0);
}
END_TEST

START_TEST(test_wrong_refcount)
{
  build_pool();
  /* metadata space map: drop the superblock's count in the bitmap and fix
   * the checksum, so only the count is wrong */
  uint8_t buf[4096];
  rw_block(0, buf, false);
  rw_block(ts__le64(buf + SB_META_SM + 16), buf, false); /* index block */
  uint64_t nr = ts__le64(buf + 16);                       /* first bitmap */
  rw_block(nr, buf, false);
  uint64_t w;
  memcpy(&w, buf + 16, 8);
  ck_assert_uint_eq(w & 3, 2); /* block 0, the superblock: count 1 */
  w &= ~3ull;                   /* now claims count 0 */
  memcpy(buf + 16, &w, 8);
  pd_block_prepare(buf, nr, PD_BT_BITMAP);
  rw_block(nr, buf, true);
  ck_assert_uint_gt(our_errors(), 0);
  ck_assert_int_ne(pdt_thin_check(meta, NULL), 0);
}
END_TEST

START_TEST(test_wrong_mapped_count)
{
  build_pool();
  /* details leaf: bump device 1's mapped_blocks (thin_check 0.9.0 does not
   * look at it; ours does) */
  uint64_t nr = find_block(PD_BT_NODE, 24);
  uint8_t buf[4096];
  rw_block(nr, buf, false);
  uint8_t *v = pd_node_val(buf, 0);
  ts__put64(v, ts__le64(v) + 1);
  pd_block_prepare(buf, nr, PD_BT_NODE);
  rw_block(nr, buf, true);
  ck_assert_uint_gt(our_errors(), 0);
}
END_TEST

/* Each broken superblock is refused by tmd_open (read-write!) with a
 * message naming the problem, and nothing is written. */
START_TEST(test_refuse_bad_superblocks)
{
  static const struct { int off, size; uint64_t val; bool fix_csum; const char *msg; } cases[] = {
    {32, 8, 12345, true, "magic"},
    {0, 4, 0xdeadbeef, false, "checksum"},
    {40, 4, 1, true, "version 1"},
    {40, 4, 3, true, "version 3"},
    {360, 4, 1, true, "incompatible feature"},
    {356, 4, 2, true, "read-only-compatible"},
    {344, 8, 5000, true, "truncated"},
    {336, 4, 100, true, "data block size"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    build_pool();
    uint8_t sb[4096];
    rw_block(0, sb, false);
    memcpy(sb + cases[i].off, &cases[i].val, (size_t)cases[i].size);
    if (cases[i].fix_csum)
      ts__put32(sb, pd_block_csum(sb, PD_SALT_SUPER));
    rw_block(0, sb, true);
    void *before, *after;
    size_t lb, la;
    ck_assert(ts_test_read_file(meta, &before, &lb));
    struct pd_bdev b;
    pdt_open_bdev(&b, meta);
    struct tmd *md = NULL;
    ts_error err = {0};
    int r = tmd_open(&b, NULL, &md, &err);
    ck_assert_msg(r < 0, "case %zu opened", i);
    ck_assert_msg(strstr(err.msg, cases[i].msg), "case %zu: message '%s'", i, err.msg);
    struct pd_check_result res;
    ck_assert_int_eq(pd_check(&b, NULL, NULL, &res), 0);
    /* a read-only-compatible feature is fine for a read-only checker */
    if (cases[i].off != 356)
      ck_assert_uint_gt(res.errors, 0);
    pd_bdev_close(&b);
    ck_assert(ts_test_read_file(meta, &after, &la));
    ck_assert(lb == la && memcmp(before, after, lb) == 0);
    free(before);
    free(after);
  }
  /* a truncated file */
  build_pool();
  ck_assert_int_eq(truncate(meta, 64 * 4096), 0);
  struct pd_bdev b;
  pdt_open_bdev(&b, meta);
  struct tmd *md;
  ts_error err = {0};
  ck_assert_int_lt(tmd_open(&b, NULL, &md, &err), 0);
  ck_assert_ptr_nonnull(strstr(err.msg, "truncated"));
  pd_bdev_close(&b);
  /* an all-zero device is "unformatted" */
  pdt_make_file(meta, 1 << 20);
  pdt_open_bdev(&b, meta);
  ck_assert_int_eq(tmd_open(&b, NULL, &md, &err), -ENODATA);
  pd_bdev_close(&b);
}
END_TEST

START_TEST(test_lookup_on_damaged_node_reports_eilseq)
{
  build_pool();
  uint64_t nr = find_block(PD_BT_NODE, 8);
  uint8_t buf[4096];
  rw_block(nr, buf, false);
  buf[3000] ^= 1;
  rw_block(nr, buf, true);
  struct pd_bdev b;
  pdt_open_bdev(&b, meta);
  struct tmd *md = NULL;
  ts_error err = {0};
  int r = tmd_open(&b, NULL, &md, &err);
  if (r == 0) {
    /* the damage is below a device root: lookups fail cleanly */
    int bad = 0;
    for (uint32_t dev = 1; dev <= 2; dev++)
      for (uint64_t v = 0; v < 600; v += 50)
        bad += tmd_lookup(md, dev, v, NULL, NULL) == -EILSEQ;
    ck_assert_int_gt(bad, 0);
    tmd_close(md);
  } else {
    ck_assert_int_eq(r, -EILSEQ);
  }
  pd_bdev_close(&b);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("damage");
  TCase *tc = tcase_create("damage");
  tcase_add_checked_fixture(tc, setup, ts_test_dir_teardown);
  tcase_add_test(tc, test_clean_baseline);
  tcase_add_test(tc, test_flipped_byte_in_node);
  tcase_add_test(tc, test_wrong_refcount);
  tcase_add_test(tc, test_wrong_mapped_count);
  tcase_add_test(tc, test_refuse_bad_superblocks);
  tcase_add_test(tc, test_lookup_on_damaged_node_reports_eilseq);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
