/* Hostile metadata: nodes whose header disagrees with their tree, superblocks
 * whose claims the metadata device cannot back. Every path that reads a node
 * (lookup, walk, insert, delete, check, dump) refuses such a node before any
 * copy, and check refuses whatever open refuses. */
#include <time.h>

#include "pdtest.h"
#include "pdata/pdata-internal.h"

static char *dir;
static char *meta;

static void setup(void)
{
  dir = ts_test_mkdtemp();
  meta = ts_test_path(dir, "meta");
}

static void teardown(void)
{
  ts_test_rmdir(dir);
  free(dir);
  free(meta);
}

/* One committed device with 600 mappings, so its tree has internal nodes. */
static void build_pool_sized(uint64_t bytes)
{
  struct pd_bdev b;
  pdt_make_file(meta, bytes);
  pdt_open_bdev(&b, meta);
  struct tmd *md;
  ts_error err = {0};
  ck_assert_int_eq(tmd_format(&b, 128, 10000, NULL, &md, &err), 0);
  ck_assert_int_eq(tmd_create_thin(md, 1), 0);
  uint64_t db, got, done;
  ck_assert_int_eq(tmd_alloc_data_run(md, 600, &db, &got), 0);
  ck_assert_int_eq(tmd_insert_run(md, 1, 0, got, db, &done), 0);
  ck_assert_int_eq(tmd_commit(md), 0);
  tmd_close(md);
  pd_bdev_close(&b);
}

static void build_pool(void) { build_pool_sized(1 << 20); }

static void rw_block(uint64_t nr, uint8_t *buf, bool wr)
{
  struct pd_bdev b;
  pdt_open_bdev(&b, meta);
  ck_assert_int_eq(wr ? pd_bdev_write(&b, nr, 1, buf) : pd_bdev_read(&b, nr, 1, buf), 0);
  pd_bdev_close(&b);
}

static uint64_t sb_field64(unsigned off)
{
  uint8_t sb[PD_BLOCK_SIZE];
  rw_block(0, sb, false);
  return ts__le64(sb + off);
}

/* Device 1's mapping-tree root, from the top-level tree's only leaf. */
static uint64_t dev1_root(void)
{
  uint8_t n[PD_BLOCK_SIZE];
  rw_block(sb_field64(SB_MAPPING_ROOT), n, false);
  ck_assert(pd_node_is_leaf(n));
  ck_assert_uint_eq(pd_node_key(n, 0), 1);
  return ts__le64(pd_node_cval(n, 0));
}

/* Rewrite a node's header with a value size the block layer accepts (it
 * fits the block) but the tree does not, keeping its first entry's key. */
static void lie_vsize(uint64_t nr, uint32_t vsize, uint32_t maxe)
{
  uint8_t n[PD_BLOCK_SIZE];
  rw_block(nr, n, false);
  uint64_t key0 = pd_node_key(n, 0);
  uint32_t flags = ts__le32(n + NODE_FLAGS);
  memset(n + 16, 0, PD_BLOCK_SIZE - 16);
  ts__put32(n + NODE_FLAGS, flags);
  ts__put32(n + NODE_NR, 1);
  ts__put32(n + NODE_MAX, maxe);
  ts__put32(n + NODE_VSIZE, vsize);
  ts__put64(n + NODE_KEYS, key0);
  memset(n + NODE_KEYS + 8 * (size_t)maxe, 0x41, vsize); /* the "value" */
  pd_block_prepare(n, nr, PD_BT_NODE);
  rw_block(nr, n, true);
}

static uint64_t check_errors(char *first, size_t len);

struct first_msg { char *buf; size_t len; };

static void keep_first(void *arg, enum pd_check_level lvl, const char *msg)
{
  struct first_msg *f = arg;
  if (lvl == PD_CHECK_ERROR && !f->buf[0])
    snprintf(f->buf, f->len, "%s", msg);
}

static uint64_t check_errors(char *first, size_t len)
{
  struct pd_bdev b;
  pdt_open_bdev(&b, meta);
  struct pd_check_result res;
  first[0] = 0;
  struct first_msg f = {first, len};
  ck_assert_int_eq(pd_check(&b, keep_first, &f, &res), 0);
  pd_bdev_close(&b);
  return res.errors;
}

/* A top-level leaf claiming 2000-byte values: dump used to copy 2000 bytes
 * into an 8-byte stack buffer. */
START_TEST(test_top_leaf_value_size_lie)
{
  build_pool();
  uint64_t top = sb_field64(SB_MAPPING_ROOT);
  lie_vsize(top, 2000, 1);
  struct pd_bdev b;
  pdt_open_bdev(&b, meta);
  struct tmd *md = NULL;
  ts_error err = {0};
  ck_assert_int_eq(tmd_open(&b, NULL, &md, &err), -EILSEQ);
  char *want = ts_test_fmt("btree node %llu:", (unsigned long long)top);
  ck_assert_msg(strstr(err.msg, want), "open: %s", err.msg);
  FILE *f = tmpfile();
  memset(&err, 0, sizeof(err));
  ck_assert_int_eq(pd_dump_xml(&b, false, f, &err), -EILSEQ);
  ck_assert_msg(strstr(err.msg, want) && strstr(err.msg, "value size 2000"), "dump: %s", err.msg);
  fclose(f);
  pd_bdev_close(&b);
  char first[512];
  ck_assert_uint_gt(check_errors(first, sizeof(first)), 0);
  ck_assert_msg(strstr(first, "value size 2000"), "check: %s", first);
  free(want);
}
END_TEST

/* A mapping-tree node of the wrong value size below a device root: open
 * succeeds (it reads only the top-level trees), and then every operation
 * that meets the node refuses it. */
START_TEST(test_mapping_node_lie_every_path)
{
  build_pool();
  uint64_t root = dev1_root();
  uint8_t n[PD_BLOCK_SIZE];
  rw_block(root, n, false);
  ck_assert(!pd_node_is_leaf(n)); /* 600 mappings: an internal root */
  uint64_t leaf = ts__le64(pd_node_cval(n, 0));
  lie_vsize(leaf, 100, pd_node_max_entries(100));

  struct pd_bdev b;
  pdt_open_bdev(&b, meta);
  struct tmd *md = pdt_open(&b);
  uint64_t d;
  ck_assert_int_eq(tmd_lookup(md, 1, 0, &d, NULL), -EILSEQ);          /* lookup */
  ck_assert_int_eq(tmd_lookup(md, 1, 599, &d, NULL), 0);              /* other leaves still read */
  ck_assert_int_eq(tmd_lookup_range(md, 1, 0, 600, NULL, NULL), -EILSEQ); /* walk */
  uint64_t db;
  ck_assert_int_eq(tmd_alloc_data(md, &db), 0);
  ck_assert_int_eq(tmd_insert(md, 1, 1, db), -EILSEQ);               /* insert */
  ck_assert_int_eq(tmd_abort(md), 0);
  ck_assert_int_eq(tmd_remove_range(md, 1, 0, 10, 0, NULL, NULL, NULL), -EILSEQ); /* remove */
  ck_assert_int_eq(tmd_abort(md), 0);
  ck_assert_int_eq(tmd_delete(md, 1), -EILSEQ);                       /* delete */
  tmd_close(md);
  pd_bdev_close(&b);
  char first[512];
  ck_assert_uint_gt(check_errors(first, sizeof(first)), 0);
  ck_assert_msg(strstr(first, "value size 100"), "check: %s", first);
}
END_TEST

/* Flags that are neither leaf nor internal, and an entry count above the
 * node's maximum, are refused the same way. */
START_TEST(test_bad_flags_and_counts)
{
  build_pool();
  uint64_t root = dev1_root();
  uint8_t n[PD_BLOCK_SIZE];
  rw_block(root, n, false);
  ts__put32(n + NODE_FLAGS, PD_NODE_LEAF | PD_NODE_INTERNAL);
  pd_block_prepare(n, root, PD_BT_NODE);
  rw_block(root, n, true);
  struct pd_bdev b;
  pdt_open_bdev(&b, meta);
  struct tmd *md = pdt_open(&b);
  ck_assert_int_eq(tmd_lookup(md, 1, 0, NULL, NULL), -EILSEQ);
  tmd_close(md);
  pd_bdev_close(&b);
  char first[512];
  ck_assert_uint_gt(check_errors(first, sizeof(first)), 0);
  ck_assert_msg(strstr(first, "flags 3"), "check: %s", first);
}
END_TEST

static void set_data_blocks(uint64_t nr)
{
  uint8_t sb[PD_BLOCK_SIZE];
  rw_block(0, sb, false);
  ts__put64(sb + SB_DATA_SM, nr);
  pd_block_prepare(sb, 0, PD_BT_SUPER);
  rw_block(0, sb, true);
}

/* A superblock claiming 2^26 data blocks with the one bitmap of 10000: open
 * refuses it (bitmaps missing), so check must not call it clean. The
 * metadata device (32 MiB) is large enough to hold the 4113 bitmaps. */
START_TEST(test_check_refuses_missing_bitmaps)
{
  build_pool_sized(32 << 20);
  set_data_blocks(1ull << 26);
  struct pd_bdev b;
  pdt_open_bdev(&b, meta);
  struct tmd *md = NULL;
  ts_error err = {0};
  ck_assert_int_ne(tmd_open(&b, NULL, &md, &err), 0);
  pd_bdev_close(&b);
  char first[512];
  ck_assert_uint_gt(check_errors(first, sizeof(first)), 0);
  ck_assert_msg(strstr(first, "bitmap 1 missing"), "check: %s", first);
}
END_TEST

/* 2^33 and 2^40 claimed data blocks: check answers at once with a finding,
 * in memory bounded by the 256-block metadata device, not ENOMEM. */
START_TEST(test_check_bounded_by_metadata_size)
{
  build_pool();
  uint64_t claims[] = {1ull << 33, 1ull << 40};
  for (int i = 0; i < 2; i++) {
    set_data_blocks(claims[i]);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    char first[512];
    ck_assert_uint_gt(check_errors(first, sizeof(first)), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    ck_assert_msg(strstr(first, "more than the 256 blocks of the metadata device"), "check: %s", first);
    ck_assert_int_lt(t1.tv_sec - t0.tv_sec, 2);
  }
}
END_TEST

static void set_leaf_key0(uint64_t nr, uint64_t key)
{
  uint8_t n[PD_BLOCK_SIZE];
  rw_block(nr, n, false);
  ck_assert(pd_node_is_leaf(n));
  ts__put64(n + NODE_KEYS, key);
  pd_block_prepare(n, nr, PD_BT_NODE);
  rw_block(nr, n, true);
}

/* A device id of 2^24 (past the kernel's 24 bits) in both top-level trees:
 * the trees are consistent, but open refuses the id, so check does too. */
START_TEST(test_check_refuses_what_open_refuses)
{
  build_pool();
  set_leaf_key0(sb_field64(SB_MAPPING_ROOT), 1u << 24);
  set_leaf_key0(sb_field64(SB_DETAILS_ROOT), 1u << 24);
  struct pd_bdev b;
  pdt_open_bdev(&b, meta);
  struct tmd *md = NULL;
  ts_error err = {0};
  ck_assert_int_eq(tmd_open(&b, NULL, &md, &err), -EINVAL);
  pd_bdev_close(&b);
  char first[512];
  ck_assert_uint_gt(check_errors(first, sizeof(first)), 0);
  ck_assert_msg(strstr(first, "opening the pool is refused") && strstr(first, "16777216"), "check: %s", first);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("hostile");
  TCase *tc = tcase_create("hostile");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, test_top_leaf_value_size_lie);
  tcase_add_test(tc, test_mapping_node_lie_every_path);
  tcase_add_test(tc, test_bad_flags_and_counts);
  tcase_add_test(tc, test_check_refuses_missing_bitmaps);
  tcase_add_test(tc, test_check_bounded_by_metadata_size);
  tcase_add_test(tc, test_check_refuses_what_open_refuses);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
