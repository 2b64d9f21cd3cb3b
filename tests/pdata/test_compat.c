/* Compatibility with Debian's thin-provisioning-tools 0.9.0 in both
 * directions: pools built here pass thin_check and thin_dump prints exactly
 * our view; pools thin_restore writes open here with identical contents. */
#include "pdtest.h"

static char *meta;

static void setup(void)
{
  pdt_require_tools();
  ts_test_dir_setup();
  meta = ts_test_file("meta");
}

static char *thin_dump(const char *path, bool snap)
{
  char *out = NULL;
  int st = ts_test_run(&out, "thin_dump %s '%s'", snap ? "-m" : "", path);
  ck_assert_msg(st == 0, "thin_dump exit %d: %s", st, out);
  return out;
}

/* Thousands of devices and snapshots with random churn and deletes, checked
 * by thin_check and compared mapping for mapping through thin_dump. */
START_TEST(test_our_pools_pass_thin_tools)
{
  struct pd_bdev b;
  pdt_make_file(meta, 64 << 20);
  pdt_open_bdev(&b, meta);
  struct tmd *md;
  ts_error err = {0};
  ck_assert_int_eq(tmd_format(&b, 128, 2000000, NULL, &md, &err), 0);
  struct pdt_model m;
  pdt_model_init(&m, 4000, 2000000, 128);
  uint64_t rng = 0xC0FFEE;
  /* a base of thin volumes, then snapshots of them (and of snapshots) */
  for (uint32_t id = 0; id < 400; id++) {
    ck_assert_int_eq(tmd_create_thin(md, id), 0);
    m.devs[id].exists = true;
    uint32_t v = (uint32_t)(pdt_rand(&rng) % 256), len = 1 + (uint32_t)(pdt_rand(&rng) % 256);
    uint64_t db, got, done;
    ck_assert_int_eq(tmd_alloc_data_run(md, len, &db, &got), 0);
    ck_assert_int_eq(tmd_insert_run(md, id, v, got, db, &done), 0);
    for (uint64_t i = 0; i < got; i++)
      m.devs[id].map[v + i] = ((db + i) << 24) + 1;
  }
  ck_assert_int_eq(tmd_commit(md), 0);
  for (uint32_t id = 400; id < 3000; id++) {
    uint32_t o = (uint32_t)(pdt_rand(&rng) % id);
    if (!m.devs[o].exists)
      continue;
    ck_assert_int_eq(tmd_create_snap(md, id, o), 0);
    m.time++;
    m.devs[id] = m.devs[o];
    m.devs[id].ctime = m.devs[id].stime = m.time;
    m.devs[o].stime = m.time;
    if (id % 500 == 0)
      ck_assert_int_eq(tmd_commit(md), 0);
  }
  /* churn: writes into snapshots break sharing, discards, deletes */
  for (int i = 0; i < 20000; i++)
    ck_assert_int_eq(pdt_random_op(md, &m, &rng), 0);
  ck_assert_int_eq(tmd_commit(md), 0);
  pdt_check_data_refs(md, &m);
  size_t ndev = tmd_list_devices(md, NULL, 0);
  ck_assert_uint_gt(ndev, 2000);
  /* hold a metadata snapshot, change more, and check both views */
  ck_assert_int_eq(tmd_reserve_metadata_snap(md), 0);
  char *at_snap = pdt_model_xml(&m);
  for (int i = 0; i < 3000; i++)
    ck_assert_int_eq(pdt_random_op(md, &m, &rng), 0);
  ck_assert_int_eq(tmd_commit(md), 0);
  tmd_close(md);

  ts_test_assert_thin_check(meta);
  pdt_check_clean(&b);
  char *want = pdt_model_xml(&m), *theirs = thin_dump(meta, false), *ours = pdt_dump(&b, false);
  ck_assert_str_eq(theirs, want);
  ck_assert_str_eq(ours, want);
  free(theirs);
  free(ours);
  /* thin_dump -m: the state at reservation (its copy has no data space map) */
  theirs = thin_dump(meta, true);
  ours = pdt_dump(&b, true);
  ck_assert_str_eq(theirs, ours);
  ck_assert_str_eq(strchr(theirs, '\n'), strchr(at_snap, '\n'));
  free(theirs);
  free(ours);
  free(at_snap);
  free(want);

  /* release the snapshot: still clean */
  md = pdt_open(&b);
  ck_assert_int_eq(tmd_release_metadata_snap(md), 0);
  ck_assert_int_eq(tmd_commit(md), 0);
  tmd_close(md);
  ts_test_assert_thin_check(meta);
  pdt_check_clean(&b);
  pdt_model_free(&m);
  pd_bdev_close(&b);
}
END_TEST

/* Generated XML -> thin_restore -> our library reads identical mappings and
 * details; and our restore of the same XML satisfies thin_check/thin_dump. */
START_TEST(test_thin_restore_pools_open_here)
{
  struct pdt_model m;
  pdt_model_init(&m, 300, 100000, 256);
  uint64_t rng = 0xBEEF + (uint64_t)_i;
  m.time = 7;
  m.trans = 42;
  uint64_t next = 0;
  for (uint32_t id = 0; id < m.ndevs; id += 1 + (uint32_t)(pdt_rand(&rng) % 3)) {
    struct pdt_dev *d = &m.devs[id];
    d->exists = true;
    d->trans = pdt_rand(&rng) % 40;
    d->ctime = (uint32_t)(pdt_rand(&rng) % 8);
    d->stime = d->ctime;
    for (uint32_t v = 0; v < PDT_MAXV; v++) {
      unsigned k = (unsigned)(pdt_rand(&rng) % 10);
      if (k < 5) {
        /* runs of consecutive data blocks, and some blocks shared by devices */
        uint64_t db = k == 0 && next > 100 ? pdt_rand(&rng) % next : next++ % m.nr_data;
        d->map[v] = ((db << 24) | (pdt_rand(&rng) % 8 == 0 ? 3u : 0u)) + 1;
      }
    }
  }
  char *xml = pdt_model_xml(&m), *xpath = ts_test_path(ts_test_dir, "in.xml");
  FILE *f = fopen(xpath, "w");
  fputs(xml, f);
  fclose(f);
  pdt_make_file(meta, 16 << 20);
  char *out = NULL;
  int st = ts_test_run(&out, "thin_restore -i '%s' -o '%s'", xpath, meta);
  ck_assert_msg(st == 0, "thin_restore: %s", out);
  free(out);
  ts_test_assert_thin_check(meta);

  struct pd_bdev b;
  pdt_open_bdev(&b, meta);
  struct tmd *md = pdt_open(&b);
  ck_assert_uint_eq(tmd_time(md), 7);
  ck_assert_uint_eq(tmd_transaction_id(md), 42);
  ck_assert_uint_eq(tmd_data_block_size(md), 256);
  for (uint32_t id = 0; id < m.ndevs; id++) {
    ck_assert_int_eq(tmd_dev_exists(md, id), m.devs[id].exists);
    if (!m.devs[id].exists)
      continue;
    struct tmd_dev_info info;
    ck_assert_int_eq(tmd_dev_info(md, id, &info), 0);
    ck_assert_uint_eq(info.mapped_blocks, pdt_mapped(&m.devs[id]));
    ck_assert_uint_eq(info.transaction_id, m.devs[id].trans);
    ck_assert_uint_eq(info.creation_time, m.devs[id].ctime);
    for (uint32_t v = 0; v < PDT_MAXV; v++) {
      uint64_t db = 0;
      int r = tmd_lookup(md, id, v, &db, NULL);
      bool ok = m.devs[id].map[v] ? r == 0 && db == (m.devs[id].map[v] - 1) >> 24 : r == -ENODATA;
      if (!ok)
        ck_abort_msg("dev %u block %u: r=%d db=%llu", id, v, r, (unsigned long long)db);
    }
  }
  /* data counts = devices referencing each block (restore builds separate trees) */
  pdt_check_data_refs(md, &m);
  tmd_close(md);
  /* our checker on thin_restore output: no errors (its nr_allocated may be off) */
  struct pd_check_result res;
  ck_assert_int_eq(pd_check(&b, pdt_report_print, NULL, &res), 0);
  ck_assert_uint_eq(res.errors, 0);
  char *ours = pdt_dump(&b, false);
  ck_assert_str_eq(ours, xml);
  free(ours);

  /* the other way: our restore, checked by the tools */
  f = fopen(xpath, "r");
  ts_error err = {0};
  ck_assert_msg(pd_restore_xml(&b, f, &err) == 0, "restore: %s", err.msg);
  fclose(f);
  ts_test_assert_thin_check(meta);
  pdt_check_clean(&b);
  char *theirs = thin_dump(meta, false);
  ck_assert_str_eq(theirs, xml);
  free(theirs);
  pd_bdev_close(&b);
  free(xml);
  free(xpath);
  pdt_model_free(&m);
}
END_TEST

START_TEST(test_restore_rejects_bad_xml)
{
  struct pd_bdev b;
  pdt_make_file(meta, 4 << 20);
  pdt_open_bdev(&b, meta);
  static const struct { const char *xml, *msg; } cases[] = {
    {"<superblock uuid=\"\" time=\"0\" transaction=\"0\" data_block_size=\"128\" nr_data_blocks=\"10\">\n"
     "<device dev_id=\"1\" mapped_blocks=\"1\" transaction=\"0\" creation_time=\"0\" snap_time=\"0\">\n"
     "<single_mapping origin_block=\"0\" data_block=\"70\" time=\"0\"/></device></superblock>", "beyond end"},
    {"<superblock uuid=\"\" time=\"0\" transaction=\"0\" data_block_size=\"128\" nr_data_blocks=\"10\">\n"
     "<bogus/></superblock>", "unknown tag"},
    {"<superblock uuid=\"\" transaction=\"0\" data_block_size=\"128\" nr_data_blocks=\"10\"></superblock>", "time"},
    {"<superblock uuid=\"\" time=\"0\" transaction=\"0\" data_block_size=\"128\" nr_data_blocks=\"10\">", "missing"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    FILE *f = tmpfile();
    fputs(cases[i].xml, f);
    rewind(f);
    ts_error err = {0};
    ck_assert_int_eq(pd_restore_xml(&b, f, &err), -EINVAL);
    ck_assert_msg(strstr(err.msg, cases[i].msg), "case %zu: message '%s'", i, err.msg);
    fclose(f);
  }
  pd_bdev_close(&b);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("thin-tools-compat");
  TCase *tc = tcase_create("compat");
  tcase_add_checked_fixture(tc, setup, ts_test_dir_teardown);
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, test_our_pools_pass_thin_tools);
  tcase_add_loop_test(tc, test_thin_restore_pools_open_here, 0, 2);
  tcase_add_test(tc, test_restore_rejects_bad_xml);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
