/* Pool metadata API: format/open, random workloads against a model with
 * commit/abort/reopen, bulk paths, snapshots, space exhaustion, metadata
 * snapshots, resize and concurrent lookups. */
#include <pthread.h>

#include "pdtest.h"

static char *meta;

static void setup(void)
{
  ts_test_dir_setup();
  meta = ts_test_file("meta");
}

static struct tmd *format(struct pd_bdev *b, uint64_t meta_bytes, uint64_t nr_data)
{
  pdt_make_file(meta, meta_bytes);
  pdt_open_bdev(b, meta);
  struct tmd *md = NULL;
  ts_error err = {0};
  int r = tmd_format(b, 128, nr_data, NULL, &md, &err);
  ck_assert_msg(r == 0, "format: %s", err.msg);
  return md;
}

START_TEST(test_format_open)
{
  struct pd_bdev b;
  struct tmd *md = format(&b, 4 << 20, 1000);
  tmd_close(md);
  md = pdt_open(&b);
  ck_assert_uint_eq(tmd_data_block_size(md), 128);
  ck_assert_uint_eq(tmd_data_nr_blocks(md), 1000);
  ck_assert_uint_eq(tmd_data_nr_free(md), 1000);
  ck_assert_uint_eq(tmd_metadata_nr_blocks(md), 1024);
  ck_assert_uint_eq(tmd_transaction_id(md), 0);
  ck_assert_uint_eq(tmd_time(md), 0);
  ck_assert_uint_eq(tmd_list_devices(md, NULL, 0), 0);
  ck_assert(!tmd_needs_check(md));
  ck_assert_uint_lt(tmd_metadata_nr_used(md), 16);
  ck_assert_int_eq(tmd_lookup(md, 1, 0, NULL, NULL), -ENODEV);
  tmd_close(md);
  pdt_check_clean(&b);
  /* bad format arguments */
  ts_error err = {0};
  ck_assert_int_eq(tmd_format(&b, 100, 10, NULL, &md, &err), -EINVAL);
  ck_assert_ptr_nonnull(strstr(err.msg, "data block size"));
  pd_bdev_close(&b);
}
END_TEST

/* Random operations with commits, aborts and reopens, compared with a model
 * after every step that ends a transaction. */
START_TEST(test_random_model)
{
  struct pd_bdev b;
  struct tmd *md = format(&b, 16 << 20, 60000);
  struct pdt_model m, committed = {0};
  pdt_model_init(&m, 48, 60000, 128);
  pdt_model_copy(&committed, &m);
  uint64_t rng = 0x1234567ull + (uint64_t)_i;
  for (int round = 0; round < 40; round++) {
    for (int i = 0; i < 60; i++)
      ck_assert_int_eq(pdt_random_op(md, &m, &rng), 0);
    unsigned what = (unsigned)(pdt_rand(&rng) % 4);
    if (what == 0) {
      /* abort: back to the last commit */
      ck_assert_int_eq(tmd_abort(md), 0);
      pdt_model_copy(&m, &committed);
    } else {
      ck_assert_int_eq(tmd_commit(md), 0);
      pdt_model_copy(&committed, &m);
      if (what == 1) {
        tmd_close(md);
        md = pdt_open(&b);
      }
    }
    pdt_check_data_refs(md, &m);
    if (round % 4 == 3 || what == 0) {
      char *want = pdt_model_xml(&committed), *got = pdt_dump(&b, false);
      ck_assert_str_eq(got, want);
      free(want);
      free(got);
      pdt_check_clean(&b);
    }
    /* point lookups agree with the model, including the shared hint */
    for (uint32_t id = 0; id < m.ndevs; id++) {
      if (!m.devs[id].exists)
        continue;
      for (uint32_t v = 0; v < PDT_MAXV; v += 17) {
        uint64_t db;
        bool sh;
        int r = tmd_lookup(md, id, v, &db, &sh);
        uint64_t x = m.devs[id].map[v] - 1;
        bool ok = !m.devs[id].map[v] ? r == -ENODATA
                                     : r == 0 && db == x >> 24 && sh == (m.devs[id].stime > (x & 0xFFFFFF));
        if (!ok)
          ck_abort_msg("lookup dev %u block %u: r=%d db=%llu shared=%d", id, v, r, (unsigned long long)db, sh);
      }
    }
  }
  tmd_close(md);
  pdt_model_free(&m);
  pdt_model_free(&committed);
  pd_bdev_close(&b);
}
END_TEST

struct runs {
  struct tmd_run v[64];
  int n;
};

static int collect_run(void *arg, const struct tmd_run *r)
{
  struct runs *c = arg;
  if (c->n < 64)
    c->v[c->n] = *r;
  c->n++;
  return 0;
}

struct freed {
  uint64_t total, calls, first;
};

static int collect_freed(void *arg, uint64_t b, uint64_t len)
{
  struct freed *f = arg;
  if (!f->calls)
    f->first = b;
  f->total += len;
  f->calls++;
  return 0;
}

START_TEST(test_bulk_and_ranges)
{
  struct pd_bdev b;
  struct tmd *md = format(&b, 16 << 20, 200000);
  ck_assert_int_eq(tmd_create_thin(md, 7), 0);
  uint64_t db, got, done;
  ck_assert_int_eq(tmd_alloc_data_run(md, 131072, &db, &got), 0);
  ck_assert_uint_eq(db, 0);
  ck_assert_uint_eq(got, 131072);
  ck_assert_uint_eq(tmd_data_nr_free(md), 200000 - 131072);
  ck_assert_int_eq(tmd_insert_run(md, 7, 1000, got, db, &done), 0);
  ck_assert_uint_eq(done, got);
  struct tmd_dev_info info;
  ck_assert_int_eq(tmd_dev_info(md, 7, &info), 0);
  ck_assert_uint_eq(info.mapped_blocks, 131072);
  uint64_t hi;
  ck_assert_int_eq(tmd_highest_mapped(md, 7, &hi), 0);
  ck_assert_uint_eq(hi, 1000 + 131071);
  /* one run for the whole range, clipped */
  struct runs rs = {.n = 0};
  ck_assert_int_eq(tmd_lookup_range(md, 7, 0, 1ull << 40, collect_run, &rs), 0);
  ck_assert_int_eq(rs.n, 1);
  ck_assert_uint_eq(rs.v[0].vbegin, 1000);
  ck_assert_uint_eq(rs.v[0].len, 131072);
  ck_assert(!rs.v[0].shared);
  ck_assert_int_eq(tmd_commit(md), 0);
  /* metadata for 131072 mappings: full leaves (about 32 bytes per mapping) */
  ck_assert_uint_lt(tmd_metadata_nr_used(md), 131072 * 40 / 4096);
  /* punch a hole in the middle: two runs with a gap */
  struct freed f = {0};
  uint64_t removed;
  ck_assert_int_eq(tmd_remove_range(md, 7, 2000, 3000, 0, collect_freed, &f, &removed), 0);
  ck_assert_uint_eq(removed, 1000);
  ck_assert_uint_eq(f.total, 1000);
  ck_assert_uint_eq(f.calls, 1); /* contiguous data: one coalesced run */
  ck_assert_uint_eq(f.first, 1000);
  rs.n = 0;
  ck_assert_int_eq(tmd_lookup_range(md, 7, 1500, 3500, collect_run, &rs), 0);
  ck_assert_int_eq(rs.n, 2);
  ck_assert_uint_eq(rs.v[0].vbegin, 1500);
  ck_assert_uint_eq(rs.v[0].len, 500);
  ck_assert_uint_eq(rs.v[0].dbegin, 500);
  ck_assert_uint_eq(rs.v[1].vbegin, 3000);
  ck_assert_uint_eq(rs.v[1].len, 500);
  /* freed blocks are not handed out again before the commit */
  uint64_t nb;
  ck_assert_int_eq(tmd_alloc_data(md, &nb), 0);
  ck_assert(nb < 1000 || nb >= 2000);
  ck_assert_int_eq(tmd_data_dec(md, nb), 0);
  /* HOLD keeps the last reference for discard passdown */
  f = (struct freed){0};
  ck_assert_int_eq(tmd_remove_range(md, 7, 5000, 5100, TMD_REMOVE_HOLD, collect_freed, &f, &removed), 0);
  ck_assert_uint_eq(f.total, 100);
  uint32_t cnt;
  ck_assert_int_eq(tmd_data_ref_count(md, 4000, &cnt), 0);
  ck_assert_uint_eq(cnt, 1);
  ck_assert_int_eq(tmd_data_dec_run(md, 4000, 100), 0);
  ck_assert_int_eq(tmd_data_ref_count(md, 4000, &cnt), 0);
  ck_assert_uint_eq(cnt, 0);
  ck_assert_int_eq(tmd_data_dec_run(md, 4000, 1), -EINVAL);
  /* remove everything: tree back to an empty root, counts all zero */
  ck_assert_int_eq(tmd_remove_range(md, 7, 0, UINT64_MAX, 0, NULL, NULL, &removed), 0);
  ck_assert_uint_eq(removed, 131072 - 1100);
  ck_assert_int_eq(tmd_highest_mapped(md, 7, &hi), -ENODATA);
  ck_assert_uint_eq(tmd_data_nr_free(md), 200000);
  ck_assert_int_eq(tmd_commit(md), 0);
  /* superblock, index, 13 data bitmaps, 5 tree roots, the device's empty leaf */
  ck_assert_uint_lt(tmd_metadata_nr_used(md), 24);
  tmd_close(md);
  pdt_check_clean(&b);
  pd_bdev_close(&b);
}
END_TEST

START_TEST(test_snapshot_sharing)
{
  struct pd_bdev b;
  struct tmd *md = format(&b, 16 << 20, 100000);
  ck_assert_int_eq(tmd_create_thin(md, 1), 0);
  uint64_t db, got, done;
  ck_assert_int_eq(tmd_alloc_data_run(md, 50000, &db, &got), 0);
  ck_assert_int_eq(tmd_insert_run(md, 1, 0, got, db, &done), 0);
  ck_assert_int_eq(tmd_commit(md), 0);
  uint64_t used = tmd_metadata_nr_used(md);
  ck_assert_int_eq(tmd_create_snap(md, 2, 1), 0);
  ck_assert_uint_eq(tmd_time(md), 1);
  ck_assert_int_eq(tmd_commit(md), 0);
  /* O(1): the snapshot adds no mapping nodes, only top-level changes */
  ck_assert_uint_le(tmd_metadata_nr_used(md), used + 4);
  struct tmd_dev_info i1, i2;
  tmd_dev_info(md, 1, &i1);
  tmd_dev_info(md, 2, &i2);
  ck_assert_uint_eq(i2.mapped_blocks, 50000);
  ck_assert_uint_eq(i1.snapshotted_time, 1);
  ck_assert_uint_eq(i2.creation_time, 1);
  bool sh;
  ck_assert_int_eq(tmd_lookup(md, 1, 10, &db, &sh), 0);
  ck_assert(sh);
  ck_assert_int_eq(tmd_lookup(md, 2, 10, &db, &sh), 0);
  ck_assert(sh);
  /* data counts are per distinct leaf: still 1 while the leaves are shared */
  uint32_t c;
  tmd_data_ref_count(md, 10, &c);
  ck_assert_uint_eq(c, 1);
  /* break sharing in the snapshot: its leaf is copied, every data block in
   * that leaf gains a reference, the remapped one loses it */
  uint64_t nb;
  ck_assert_int_eq(tmd_alloc_data(md, &nb), 0);
  ck_assert_int_eq(tmd_insert(md, 2, 10, nb), 0);
  ck_assert_int_eq(tmd_lookup(md, 2, 10, &db, &sh), 0);
  ck_assert_uint_eq(db, nb);
  ck_assert(!sh);
  tmd_data_ref_count(md, 10, &c);
  ck_assert_uint_eq(c, 1);
  tmd_data_ref_count(md, 11, &c);
  ck_assert_uint_eq(c, 2);
  ck_assert_int_eq(tmd_lookup(md, 1, 10, &db, &sh), 0);
  ck_assert_uint_eq(db, 10);
  /* deleting the origin leaves the snapshot whole */
  ck_assert_int_eq(tmd_delete(md, 1), 0);
  ck_assert_int_eq(tmd_commit(md), 0);
  tmd_data_ref_count(md, 10, &c);
  ck_assert_uint_eq(c, 0);
  tmd_data_ref_count(md, 11, &c);
  ck_assert_uint_eq(c, 1);
  ck_assert_int_eq(tmd_lookup(md, 2, 49999, &db, &sh), 0);
  ck_assert_uint_eq(db, 49999);
  ck_assert_int_eq(tmd_create_snap(md, 3, 99), -ENODEV);
  ck_assert_int_eq(tmd_create_snap(md, 2, 2), -EEXIST);
  ck_assert_int_eq(tmd_create_thin(md, TMD_MAX_DEV_ID + 1), -EINVAL);
  tmd_close(md);
  pdt_check_clean(&b);
  pd_bdev_close(&b);
}
END_TEST

START_TEST(test_out_of_space)
{
  struct pd_bdev b;
  /* data: 100 blocks */
  struct tmd *md = format(&b, 4 << 20, 100);
  ck_assert_int_eq(tmd_create_thin(md, 1), 0);
  uint64_t db, got, done;
  ck_assert_int_eq(tmd_alloc_data_run(md, 1000, &db, &got), 0);
  ck_assert_uint_eq(got, 100);
  ck_assert_int_eq(tmd_alloc_data(md, &db), -ENOSPC);
  ck_assert_int_eq(tmd_insert_run(md, 1, 0, 100, 0, &done), 0);
  ck_assert_int_eq(tmd_commit(md), 0);
  tmd_close(md);
  pd_bdev_close(&b);

  /* metadata: 64 blocks (256 KiB), sparse mappings until it runs out */
  md = format(&b, 256 << 10, 1 << 16);
  ck_assert_int_eq(tmd_create_thin(md, 1), 0);
  ck_assert_int_eq(tmd_commit(md), 0);
  int r = 0;
  uint64_t v;
  for (v = 0; v < 100000 && !r; v++) {
    uint64_t d;
    ck_assert_int_eq(tmd_alloc_data(md, &d), 0);
    r = tmd_insert(md, 1, v * 1000, d);
    if (r)
      tmd_data_dec(md, d);
  }
  ck_assert_int_eq(r, -ENOSPC);
  v--;
  /* every reported insert is visible, the failed one is not */
  struct tmd_dev_info info;
  tmd_dev_info(md, 1, &info);
  ck_assert_uint_eq(info.mapped_blocks, v);
  ck_assert_int_eq(tmd_lookup(md, 1, (v - 1) * 1000, NULL, NULL), 0);
  ck_assert_int_eq(tmd_lookup(md, 1, v * 1000, NULL, NULL), -ENODATA);
  /* the commit cannot fit either; abort gets back to the last commit */
  (void)tmd_commit(md);
  ck_assert_int_eq(tmd_abort(md), 0);
  ck_assert(tmd_is_writable(md));
  tmd_dev_info(md, 1, &info);
  ck_assert_uint_eq(info.mapped_blocks, 0);
  ck_assert_int_eq(tmd_insert(md, 1, 5, 5), 0);
  ck_assert_int_eq(tmd_data_inc_run(md, 5, 1), 0);
  ck_assert_int_eq(tmd_commit(md), 0);
  tmd_close(md);
  pdt_check_clean(&b);
  pd_bdev_close(&b);
}
END_TEST

START_TEST(test_ids_flags_metadata_snap_resize)
{
  struct pd_bdev b;
  struct tmd *md = format(&b, 16 << 20, 1000);
  ck_assert_int_eq(tmd_set_transaction_id(md, 1, 2), -EINVAL);
  ck_assert_int_eq(tmd_set_transaction_id(md, 0, 5), 0);
  ck_assert_uint_eq(tmd_transaction_id(md), 5);
  ck_assert_int_eq(tmd_create_thin(md, 3), 0);
  uint64_t db, got, done;
  ck_assert_int_eq(tmd_alloc_data_run(md, 300, &db, &got), 0);
  ck_assert_int_eq(tmd_insert_run(md, 3, 0, got, db, &done), 0);
  /* metadata snapshot: commits, then dumps stay at that state */
  ck_assert_int_eq(tmd_reserve_metadata_snap(md), 0);
  ck_assert_int_eq(tmd_reserve_metadata_snap(md), -EBUSY);
  ck_assert_uint_ne(tmd_metadata_snap(md), 0);
  char *at_snap = pdt_dump(&b, false);
  ck_assert_int_eq(tmd_remove_range(md, 3, 0, 100, 0, NULL, NULL, NULL), 0);
  ck_assert_int_eq(tmd_create_snap(md, 4, 3), 0);
  ck_assert_int_eq(tmd_commit(md), 0);
  pdt_check_clean(&b);
  char *snap = pdt_dump(&b, true);
  /* the held copy keeps no space-map roots (nr_data_blocks 0), like the kernel's */
  char *p = strstr(at_snap, "nr_data_blocks=\"1000\"");
  ck_assert_ptr_nonnull(p);
  memcpy(p, "nr_data_blocks=\"0\"   ", 21);
  char *q = strstr(snap, "nr_data_blocks=\"0\"");
  ck_assert_ptr_nonnull(q);
  ck_assert_int_eq(strncmp(strchr(snap, '\n'), strchr(at_snap, '\n'), strlen(strchr(at_snap, '\n'))), 0);
  free(at_snap);
  free(snap);
  ck_assert_int_eq(tmd_release_metadata_snap(md), 0);
  ck_assert_int_eq(tmd_release_metadata_snap(md), -EINVAL);
  ck_assert_int_eq(tmd_commit(md), 0);
  pdt_check_clean(&b);
  /* needs_check is written at once */
  ck_assert_int_eq(tmd_set_needs_check(md, true), 0);
  tmd_close(md);
  md = pdt_open(&b);
  ck_assert(tmd_needs_check(md));
  ck_assert_uint_eq(tmd_transaction_id(md), 5);
  ck_assert_int_eq(tmd_set_needs_check(md, false), 0);
  /* grow the data device across a bitmap boundary */
  ck_assert_int_eq(tmd_resize_data(md, 500), -EINVAL);
  ck_assert_int_eq(tmd_resize_data(md, 40000), 0);
  ck_assert_uint_eq(tmd_data_nr_blocks(md), 40000);
  /* allocation restarts at the lowest free run: the hole left by the discard */
  ck_assert_int_eq(tmd_alloc_data_run(md, 40000, &db, &got), 0);
  ck_assert_uint_eq(db, 0);
  ck_assert_uint_eq(got, 100);
  ck_assert_int_eq(tmd_alloc_data_run(md, 40000, &db, &got), 0);
  ck_assert_uint_eq(db, 300);
  ck_assert_uint_eq(got, 39700);
  ck_assert_uint_eq(tmd_data_nr_free(md), 0);
  ck_assert_int_eq(tmd_data_dec_run(md, 0, 100), 0);
  ck_assert_int_eq(tmd_insert_run(md, 3, 1000, got, db, &done), 0);
  ck_assert_int_eq(tmd_commit(md), 0);
  tmd_close(md);
  md = pdt_open(&b);
  ck_assert(!tmd_needs_check(md));
  ck_assert_uint_eq(tmd_data_nr_blocks(md), 40000);
  ck_assert_int_eq(tmd_lookup(md, 3, 1000 + 20000, &db, NULL), 0);
  ck_assert_uint_eq(db, 20300);
  tmd_close(md);
  pdt_check_clean(&b);
  pd_bdev_close(&b);
}
END_TEST

struct lk {
  struct tmd *md;
  int errors;
};

static void *lookup_thread(void *arg)
{
  struct lk *l = arg;
  uint64_t s = (uint64_t)(uintptr_t)arg | 1;
  for (int i = 0; i < 4000; i++) {
    uint64_t v = pdt_rand(&s) % 100000, db;
    uint32_t dev = (uint32_t)(pdt_rand(&s) % 4);
    if (tmd_lookup(l->md, dev, v, &db, NULL) || db != v + dev * 100000)
      l->errors++;
  }
  return NULL;
}

START_TEST(test_concurrent_lookups)
{
  struct pd_bdev b;
  struct tmd *md = format(&b, 16 << 20, 400000);
  for (uint32_t d = 0; d < 4; d++) {
    uint64_t db, got, done;
    ck_assert_int_eq(tmd_create_thin(md, d), 0);
    ck_assert_int_eq(tmd_alloc_data_run(md, 100000, &db, &got), 0);
    ck_assert_int_eq(tmd_insert_run(md, d, 0, got, db, &done), 0);
  }
  ck_assert_int_eq(tmd_commit(md), 0);
  tmd_close(md);
  /* a tiny cache forces evictions while readers run */
  struct tmd_config cfg = {.cache_blocks = 32};
  ts_error err;
  ck_assert_int_eq(tmd_open(&b, &cfg, &md, &err), 0);
  pthread_t th[4];
  struct lk l[4];
  for (int i = 0; i < 4; i++) {
    l[i] = (struct lk){md, 0};
    pthread_create(&th[i], NULL, lookup_thread, &l[i]);
  }
  for (int i = 0; i < 4; i++) {
    pthread_join(th[i], NULL);
    ck_assert_int_eq(l[i].errors, 0);
  }
  tmd_close(md);
  pd_bdev_close(&b);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("thin-metadata");
  TCase *tc = tcase_create("api");
  tcase_add_checked_fixture(tc, setup, ts_test_dir_teardown);
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, test_format_open);
  tcase_add_loop_test(tc, test_random_model, 0, 3);
  tcase_add_test(tc, test_bulk_and_ranges);
  tcase_add_test(tc, test_snapshot_sharing);
  tcase_add_test(tc, test_out_of_space);
  tcase_add_test(tc, test_ids_flags_metadata_snap_resize);
  tcase_add_test(tc, test_concurrent_lookups);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
