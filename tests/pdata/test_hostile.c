/* Hostile metadata: nodes whose header disagrees with their tree, superblocks
 * whose claims the metadata device cannot back. Every path that reads a node
 * (lookup, walk, insert, delete, check, dump) refuses such a node before any
 * copy, and check refuses whatever open refuses. */
#include <time.h>

#include "pdtest.h"
#include "pdata/pdata-internal.h"

static char *meta;

static void setup(void)
{
  ts_test_dir_setup();
  meta = ts_test_file("meta");
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

/* ---- restore and dump ---- */

static char *slurp_file(const char *path, size_t *len)
{
  void *d = NULL;
  ck_assert(ts_test_read_file(path, &d, len));
  return d;
}

static int restore_string(const char *xml, ts_error *err)
{
  FILE *f = fmemopen((void *)xml, strlen(xml), "r");
  ck_assert_ptr_nonnull(f);
  struct pd_bdev b;
  pdt_open_bdev(&b, meta);
  int r = pd_restore_xml(&b, f, err);
  pd_bdev_close(&b);
  fclose(f);
  return r;
}

/* The 14-byte file "</superblock>" used to crash restore (no pool yet). */
START_TEST(test_restore_closing_superblock_only)
{
  pdt_make_file(meta, 1 << 20);
  ts_error err = {0};
  ck_assert_int_eq(restore_string("</superblock>", &err), -EINVAL);
  ck_assert_msg(strstr(err.msg, "line 1: </superblock> without <superblock>"), "%s", err.msg);
  char *xml = ts_test_path(ts_test_dir, "x.xml");
  FILE *f = fopen(xml, "w");
  fputs("</superblock>", f);
  fclose(f);
  char *out = NULL;
  int st = ts_test_run(&out, "%s/thinstack restore '%s' '%s'", TS_TEST_BUILD_DIR, xml, meta);
  ck_assert_msg(st == 1 && strstr(out, "without <superblock>"), "%d: %s", st, out);
  free(out);
  free(xml);
}
END_TEST

static const char *bad_xml[] = {
  /* line 3 fails after a good device: nothing may be written */
  "<superblock uuid=\"\" time=\"1\" transaction=\"1\" data_block_size=\"128\" nr_data_blocks=\"100\">\n"
  "  <device dev_id=\"7\" mapped_blocks=\"1\" transaction=\"0\" creation_time=\"0\" snap_time=\"0\">\n"
  "    <single_mapping origin_block=\"0\" data_block=\"100\" time=\"0\"/>\n"
  "  </device>\n</superblock>\n",
  /* a mapping newer than the pool: check would call it damaged */
  "<superblock uuid=\"\" time=\"1\" transaction=\"1\" data_block_size=\"128\" nr_data_blocks=\"100\">\n"
  "  <device dev_id=\"7\" mapped_blocks=\"1\" transaction=\"0\" creation_time=\"0\" snap_time=\"0\">\n"
  "    <single_mapping origin_block=\"0\" data_block=\"1\" time=\"2\"/>\n"
  "  </device>\n</superblock>\n",
  /* a snapshot newer than the pool */
  "<superblock uuid=\"\" time=\"1\" transaction=\"1\" data_block_size=\"128\" nr_data_blocks=\"100\">\n"
  "  <device dev_id=\"7\" mapped_blocks=\"0\" transaction=\"0\" creation_time=\"0\" snap_time=\"5\">\n"
  "  </device>\n</superblock>\n",
  /* a device twice, the second time after many mappings */
  "<superblock uuid=\"\" time=\"1\" transaction=\"1\" data_block_size=\"128\" nr_data_blocks=\"100\">\n"
  "  <device dev_id=\"7\" mapped_blocks=\"0\" transaction=\"0\" creation_time=\"0\" snap_time=\"0\">\n"
  "    <range_mapping origin_begin=\"0\" data_begin=\"0\" length=\"100\" time=\"0\"/>\n"
  "  </device>\n"
  "  <device dev_id=\"7\" mapped_blocks=\"0\" transaction=\"0\" creation_time=\"0\" snap_time=\"0\"/>\n"
  "</superblock>\n",
  /* cut short */
  "<superblock uuid=\"\" time=\"1\" transaction=\"1\" data_block_size=\"128\" nr_data_blocks=\"100\">\n"
  "  <device dev_id=\"7\" mapped_blocks=\"0\" transaction=\"0\" creation_time=\"0\" snap_time=\"0\">\n",
};
static const char *bad_why[] = {"line 3: mapping beyond end", "line 3: mapping time 2 is after the pool time 1",
                                "line 2: device 7: snap_time 5 is after the pool time 1",
                                "line 5: device 7 defined twice", "missing </superblock>"};

/* Every refusal comes before the device is touched: the file is unchanged. */
START_TEST(test_restore_validates_before_writing)
{
  build_pool();
  size_t len0, len1;
  char *before = slurp_file(meta, &len0);
  for (size_t i = 0; i < sizeof(bad_xml) / sizeof(bad_xml[0]); i++) {
    ts_error err = {0};
    ck_assert_int_eq(restore_string(bad_xml[i], &err), -EINVAL);
    ck_assert_msg(strstr(err.msg, bad_why[i]), "case %zu: %s", i, err.msg);
    char *after = slurp_file(meta, &len1);
    ck_assert_msg(len0 == len1 && !memcmp(before, after, len0), "case %zu changed the file", i);
    free(after);
  }
  free(before);
}
END_TEST

/* A metadata device whose superblock write fails: everything else of the
 * new pool is written, and the old pool must still open and dump as before. */
struct failsb { struct pd_bdev inner; int sb_writes; };

static int fs_read(void *ctx, uint64_t block, uint32_t count, void *buf)
{
  struct failsb *f = ctx;
  return f->inner.ops->read(f->inner.ctx, block, count, buf);
}

static int fs_write(void *ctx, uint64_t block, uint32_t count, const void *buf)
{
  struct failsb *f = ctx;
  if (block == 0) {
    f->sb_writes++;
    return -EIO;
  }
  return f->inner.ops->write(f->inner.ctx, block, count, buf);
}

static int fs_flush(void *ctx)
{
  struct failsb *f = ctx;
  return f->inner.ops->flush(f->inner.ctx);
}

static const struct pd_bdev_ops failsb_ops = { fs_read, fs_write, fs_flush, NULL, NULL };

START_TEST(test_restore_builds_beside_the_old_pool)
{
  build_pool();
  struct pd_bdev b;
  pdt_open_bdev(&b, meta);
  char *old_xml = pdt_dump(&b, false);
  pd_bdev_close(&b);
  /* a different pool: three devices with their own mappings */
  struct pdt_model m;
  pdt_model_init(&m, 3, 5000, 128);
  uint64_t rng = 42;
  for (uint32_t d = 0; d < 3; d++) {
    m.devs[d].exists = true;
    for (uint32_t v = 0; v < 300; v++)
      if (pdt_rand(&rng) % 2)
        m.devs[d].map[v] = (((uint64_t)d * 1000 + v) << 24) + 1;
  }
  char *new_xml = pdt_model_xml(&m);
  struct failsb f = {.sb_writes = 0};
  pdt_open_bdev(&f.inner, meta);
  struct pd_bdev wrap = {&failsb_ops, &f, f.inner.nr_blocks, false};
  FILE *in = fmemopen(new_xml, strlen(new_xml), "r");
  ts_error err = {0};
  ck_assert_int_eq(pd_restore_xml(&wrap, in, &err), -EIO);
  fclose(in);
  ck_assert_int_eq(f.sb_writes, 1);
  ck_assert_msg(strstr(err.msg, "the existing pool is unchanged"), "%s", err.msg);
  pd_bdev_close(&f.inner);
  pdt_open_bdev(&b, meta);
  char *now = pdt_dump(&b, false);
  ck_assert_str_eq(now, old_xml);
  pdt_check_clean(&b);
  free(now);
  /* the same restore without the failure replaces the pool */
  in = fmemopen(new_xml, strlen(new_xml), "r");
  ck_assert_int_eq(pd_restore_xml(&b, in, &err), 0);
  fclose(in);
  now = pdt_dump(&b, false);
  ck_assert_str_eq(now, new_xml);
  pdt_check_clean(&b);
  pd_bdev_close(&b);
  free(now);
  free(old_xml);
  free(new_xml);
  pdt_model_free(&m);
}
END_TEST

/* A pipe cannot be read twice: restore copies it aside first. */
START_TEST(test_restore_from_pipe)
{
  build_pool();
  struct pd_bdev b;
  pdt_open_bdev(&b, meta);
  char *xml = pdt_dump(&b, false);
  pd_bdev_close(&b);
  char *xp = ts_test_path(ts_test_dir, "pool.xml");
  FILE *f = fopen(xp, "w");
  fputs(xml, f);
  fclose(f);
  pdt_make_file(meta, 1 << 20);
  char *out = NULL;
  int st = ts_test_run(&out, "cat '%s' | %s/thinstack restore /dev/stdin '%s'", xp, TS_TEST_BUILD_DIR, meta);
  ck_assert_msg(st == 0, "%d: %s", st, out);
  pdt_open_bdev(&b, meta);
  char *now = pdt_dump(&b, false);
  ck_assert_str_eq(now, xml);
  pd_bdev_close(&b);
  free(out);
  free(now);
  free(xml);
  free(xp);
}
END_TEST

/* dump -o onto its own input (by name, hard link or symlink) and restore
 * from the file it writes are refused, and the metadata is untouched. */
START_TEST(test_no_output_over_input)
{
  build_pool();
  size_t len0, len1;
  char *before = slurp_file(meta, &len0);
  char *hard = ts_test_path(ts_test_dir, "hard"), *sym = ts_test_path(ts_test_dir, "sym");
  ck_assert_int_eq(link(meta, hard), 0);
  ck_assert_int_eq(symlink(meta, sym), 0);
  const char *outs[] = {meta, hard, sym};
  for (int i = 0; i < 3; i++) {
    char *out = NULL;
    int st = ts_test_run(&out, "%s/thinstack dump '%s' -o '%s'", TS_TEST_BUILD_DIR, meta, outs[i]);
    ck_assert_msg(st == 2 && strstr(out, "is the metadata file"), "%d: %s", st, out);
    free(out);
    st = ts_test_run(&out, "%s/thinstack restore '%s' '%s'", TS_TEST_BUILD_DIR, outs[i], meta);
    ck_assert_msg(st == 2 && strstr(out, "are one file"), "%d: %s", st, out);
    free(out);
    char *after = slurp_file(meta, &len1);
    ck_assert_msg(len0 == len1 && !memcmp(before, after, len0), "case %d changed the file", i);
    free(after);
  }
  free(before);
  free(hard);
  free(sym);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("hostile");
  TCase *tc = tcase_create("hostile");
  tcase_add_checked_fixture(tc, setup, ts_test_dir_teardown);
  tcase_add_test(tc, test_top_leaf_value_size_lie);
  tcase_add_test(tc, test_mapping_node_lie_every_path);
  tcase_add_test(tc, test_bad_flags_and_counts);
  tcase_add_test(tc, test_check_refuses_missing_bitmaps);
  tcase_add_test(tc, test_check_bounded_by_metadata_size);
  tcase_add_test(tc, test_check_refuses_what_open_refuses);
  tcase_add_test(tc, test_restore_closing_superblock_only);
  tcase_add_test(tc, test_restore_validates_before_writing);
  tcase_add_test(tc, test_restore_builds_beside_the_old_pool);
  tcase_add_test(tc, test_restore_from_pipe);
  tcase_add_test(tc, test_no_output_over_input);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
