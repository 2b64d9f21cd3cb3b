/* The syncs of a thin pool's commit, seen from below: a logging layer over
 * the metadata file and one over the data file record every request in one
 * order, and the files' own status counts the fdatasyncs that reached the
 * kernel. A PROVISION + FLUSH must flush the data layer after its last
 * PROVISION and before the superblock is written, sync every metadata block
 * before the superblock and the superblock before the flush returns; and it
 * must not sync more than that order needs. */
#include "testutil.h"
#include "thin-helpers.h"

#include <libthinstack/layer.h>

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

enum { MAXLOG = 1 << 16 };

/* One request as the layer saw it: `done` marks the entry made when it
 * returned (the other is made before it goes down). */
struct entry {
  char tag; /* 'M' metadata, 'D' data */
  bool done;
  int r;
  uint32_t op;
  uint64_t off, len;
};

static struct {
  pthread_mutex_t m;
  size_t n;
  bool overflow;
  struct entry v[MAXLOG];
} lg = { .m = PTHREAD_MUTEX_INITIALIZER };

struct logl {
  ts_layer *child;
  char tag;
};

static void log_add(char tag, const ts_io *io, bool done, int r)
{
  pthread_mutex_lock(&lg.m);
  if (lg.n < MAXLOG)
    lg.v[lg.n++] = (struct entry){ tag, done, r, io->op, io->offset, io->length };
  else
    lg.overflow = true;
  pthread_mutex_unlock(&lg.m);
}

static void log_reset(void)
{
  pthread_mutex_lock(&lg.m);
  lg.n = 0;
  lg.overflow = false;
  pthread_mutex_unlock(&lg.m);
}

static const ts_param log_params[] = {
  { "child", TS_PARAM_CHILD, TS_PARAM_REQUIRED, NULL, NULL, "the device under the log" },
  { "tag", TS_PARAM_STRING, TS_PARAM_REQUIRED, NULL, NULL, "one letter naming it in the log" },
  { NULL, 0, 0, NULL, NULL, NULL },
};

static int log_open(ts_layer *l, const json_t *params, ts_error *err)
{
  ts_layer *child = ts_layer_child(l, ts_param_string(params, "child", ""));
  if (!child)
    return ts_layer_error(l, err, -EINVAL, "child", "no such layer");
  struct logl *g = calloc(1, sizeof *g);
  if (!g)
    return ts_layer_error(l, err, -ENOMEM, NULL, "out of memory");
  g->child = child;
  g->tag = ts_param_string(params, "tag", "?")[0];
  ts_layer_set_priv(l, g);
  return 0;
}

static void log_close(ts_layer *l) { free(ts_layer_priv(l)); }

static int log_limits(ts_layer *l, ts_limits *lim, ts_error *err)
{
  (void)err;
  lim->size = ts_dev_size(((struct logl *)ts_layer_priv(l))->child);
  return 0;
}

static int log_submit(ts_layer *l, const ts_io *io)
{
  struct logl *g = ts_layer_priv(l);
  log_add(g->tag, io, false, 0);
  int r = ts_submit(g->child, io);
  log_add(g->tag, io, true, r);
  return r;
}

static const ts_layer_type log_type = {
  TS_LAYER_TYPE_INIT,
  .name = "sync-log",
  .summary = "records every request in one log shared by all its nodes",
  .params = log_params,
  .thread_model = TS_THREAD_PARALLEL,
  .open = log_open,
  .close = log_close,
  .limits = log_limits,
  .submit = log_submit,
};

/* A pool whose metadata and data files sit under logging layers, and one
 * volume "v" of `size`, created and committed before the log starts. */
static ts_stack *open_logged(const char *size, ts_dev **v)
{
  int r = ts_register_layer_type(&log_type);
  ck_assert(r == 0 || r == -EEXIST);
  char *j = ts_test_fmt(
      "{ \"version\": 1, \"layers\": {"
      " \"mf\": { \"type\": \"file\", \"path\": \"pool.meta\", \"size\": \"64M\", \"create\": true },"
      " \"df\": { \"type\": \"file\", \"path\": \"pool.data\", \"size\": \"%s\", \"create\": true },"
      " \"meta\": { \"type\": \"sync-log\", \"child\": \"mf\", \"tag\": \"M\" },"
      " \"data\": { \"type\": \"sync-log\", \"child\": \"df\", \"tag\": \"D\" },"
      " \"pool\": { \"type\": \"thin-pool\", \"metadata\": \"meta\", \"data\": \"data\","
      "   \"block_size\": \"64K\", \"create\": true, \"commit_interval\": 0 },"
      " \"v\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 1, \"size\": \"%s\", \"create\": true } },"
      " \"exports\": [\"v\"] }",
      size, size);
  ts_stack *s = ts_test_open(ts_test_dir, j);
  free(j);
  *v = ts_stack_dev(s, "v");
  ck_assert_int_eq(ts_flush(*v), 0);
  log_reset();
  return s;
}

/* fdatasyncs the file node has made, from its status. */
static int64_t fdatasyncs(ts_stack *s, const char *name)
{
  char *text = ts_dev_status_json(ts_stack_node(s, name));
  json_t *st = text ? json_loads(text, 0, NULL) : NULL;
  free(text);
  json_t *n = json_object_get(json_object_get(st, "layer"), "fdatasyncs");
  ck_assert_msg(json_is_integer(n), "the status of %s counts no fdatasyncs", name);
  int64_t c = json_integer_value(n);
  json_decref(st);
  return c;
}

static size_t count(char tag, uint32_t op, bool done)
{
  size_t n = 0;
  for (size_t i = 0; i < lg.n; i++)
    n += lg.v[i].tag == tag && lg.v[i].op == op && lg.v[i].done == done;
  return n;
}

/* The order a commit after a PROVISION must keep, checked on the log. */
static void check_commit_order(void)
{
  ck_assert(!lg.overflow);
  size_t last_prov = SIZE_MAX, sb = SIZE_MAX;
  for (size_t i = 0; i < lg.n; i++) {
    const struct entry *e = &lg.v[i];
    ck_assert_msg(!e->done || e->r == 0, "request %zu (%c op %u) failed: %d", i, e->tag, e->op,
                  e->r);
    if (e->tag == 'D' && e->op == TS_OP_PROVISION && e->done)
      last_prov = i;
    if (e->tag == 'M' && e->op == TS_OP_WRITE && e->off == 0 && !e->done) {
      ck_assert_msg(sb == SIZE_MAX, "the superblock was written twice in one commit");
      sb = i;
    }
  }
  ck_assert_msg(last_prov != SIZE_MAX, "the data layer saw no PROVISION");
  ck_assert_msg(sb != SIZE_MAX, "no superblock write");
  ck_assert_msg(last_prov < sb, "a PROVISION of the data layer ended after the superblock write");

  /* A data FLUSH began after the last PROVISION returned and returned
   * before the superblock write began. */
  bool data_flushed = false;
  for (size_t i = last_prov + 1; i < sb && !data_flushed; i++) {
    if (lg.v[i].tag != 'D' || lg.v[i].op != TS_OP_FLUSH || lg.v[i].done)
      continue;
    for (size_t k = i + 1; k < sb; k++)
      if (lg.v[k].tag == 'D' && lg.v[k].op == TS_OP_FLUSH && lg.v[k].done)
        data_flushed = true;
  }
  ck_assert_msg(data_flushed,
                "the data layer was not flushed between its last PROVISION (log entry %zu) and "
                "the superblock write (entry %zu)",
                last_prov, sb);

  /* Every metadata block written before the superblock returned before a
   * metadata FLUSH that began after it and returned before the superblock
   * write: the last such write must be followed by a whole FLUSH. */
  size_t last_w = SIZE_MAX;
  for (size_t i = 0; i < sb; i++)
    if (lg.v[i].tag == 'M' && lg.v[i].op == TS_OP_WRITE && lg.v[i].done)
      last_w = i;
  ck_assert_msg(last_w != SIZE_MAX, "no metadata block was written before the superblock");
  bool meta_flushed = false;
  for (size_t i = last_w + 1; i < sb && !meta_flushed; i++)
    if (lg.v[i].tag == 'M' && lg.v[i].op == TS_OP_FLUSH && !lg.v[i].done)
      for (size_t k = i + 1; k < sb; k++)
        if (lg.v[k].tag == 'M' && lg.v[k].op == TS_OP_FLUSH && lg.v[k].done)
          meta_flushed = true;
  ck_assert_msg(meta_flushed, "metadata blocks were not flushed before the superblock write");

  /* The superblock's own write returned, then a metadata FLUSH began and
   * returned, all before ts_flush returned (the end of the log). */
  size_t sb_done = SIZE_MAX;
  for (size_t i = sb + 1; i < lg.n && sb_done == SIZE_MAX; i++)
    if (lg.v[i].tag == 'M' && lg.v[i].op == TS_OP_WRITE && lg.v[i].off == 0 && lg.v[i].done)
      sb_done = i;
  ck_assert(sb_done != SIZE_MAX);
  bool sb_flushed = false;
  for (size_t i = sb_done + 1; i < lg.n && !sb_flushed; i++)
    if (lg.v[i].tag == 'M' && lg.v[i].op == TS_OP_FLUSH && !lg.v[i].done)
      for (size_t k = i + 1; k < lg.n; k++)
        if (lg.v[k].tag == 'M' && lg.v[k].op == TS_OP_FLUSH && lg.v[k].done)
          sb_flushed = true;
  ck_assert_msg(sb_flushed, "the superblock was not flushed before the flush returned");
}

/* 1 GiB: two 512 MiB groups, so the data layer's fallocates run on the
 * filler thread beside the inserts, and the early write-back runs. */
START_TEST(provision_flush_order)
{
  ts_dev *v;
  ts_stack *s = open_logged("1G", &v);
  int64_t d0 = fdatasyncs(s, "df");
  ck_assert_int_eq(ts_provision(v, 0, 1ull << 30), 0);
  int64_t d1 = fdatasyncs(s, "df");
  ck_assert_int_eq(ts_flush(v), 0);
  check_commit_order();
  /* The file below really synced after the PROVISION: a skipped fdatasync
   * would leave the fallocated extents out of the journal. */
  ck_assert_int_gt(fdatasyncs(s, "df"), d1);
  ck_assert_int_ge(d1, d0);
  close_and_check(s, ts_test_dir);
}
END_TEST

/* The same order when the pool has no change of its own but a volume
 * write (no PROVISION): the data flush still reaches the file. */
START_TEST(write_flush_syncs_data)
{
  ts_dev *v;
  ts_stack *s = open_logged("64M", &v);
  unsigned char buf[4096];
  ts_test_pattern(buf, sizeof buf, 7);
  ck_assert_int_eq(ts_provision(v, 0, 1u << 20), 0);
  ck_assert_int_eq(ts_flush(v), 0);
  /* An overwrite of a mapped block changes no metadata. */
  int64_t d0 = fdatasyncs(s, "df"), m0 = fdatasyncs(s, "mf");
  ck_assert_int_eq(ts_pwrite(v, buf, sizeof buf, 0, 0), 0);
  ck_assert_int_eq(ts_flush(v), 0);
  ck_assert_int_eq(fdatasyncs(s, "df"), d0 + 1);
  ck_assert_int_eq(fdatasyncs(s, "mf"), m0);
  close_and_check(s, ts_test_dir);
}
END_TEST

/* No more syncs than the order needs: a 1 GiB PROVISION + FLUSH (65
 * leaves, too few for an early flush) flushes the data layer once and the
 * metadata twice (its blocks, then the superblock), each one fdatasync;
 * a second FLUSH with nothing new reaches the files and syncs neither. */
START_TEST(provision_flush_sync_count)
{
  ts_dev *v;
  ts_stack *s = open_logged("1G", &v);
  int64_t d0 = fdatasyncs(s, "df"), m0 = fdatasyncs(s, "mf");
  ck_assert_int_eq(ts_provision(v, 0, 1ull << 30), 0);
  ck_assert_int_eq(ts_flush(v), 0);
  ck_assert_uint_eq(count('D', TS_OP_FLUSH, false), 1);
  ck_assert_uint_eq(count('M', TS_OP_FLUSH, false), 2);
  ck_assert_int_eq(fdatasyncs(s, "df") - d0, 1);
  ck_assert_int_eq(fdatasyncs(s, "mf") - m0, 2);

  log_reset();
  ck_assert_int_eq(ts_flush(v), 0);
  ck_assert_uint_eq(count('D', TS_OP_FLUSH, false), 1);
  ck_assert_int_eq(fdatasyncs(s, "df") - d0, 1);
  ck_assert_int_eq(fdatasyncs(s, "mf") - m0, 2);
  close_and_check(s, ts_test_dir);
}
END_TEST

/* A new pool's reserved metadata is written at the start (where its
 * blocks are allocated), so that its first commits convert no unwritten
 * extents there; past that it stays reserved, not written. */
START_TEST(new_pool_metadata_start_written)
{
  ts_dev *v;
  ts_stack *s = open_logged("64M", &v);
  ts_dev *mf = ts_stack_node(s, "mf");
  ts_extent_list l = { 0 };
  ck_assert_int_eq(ts_block_status(mf, 0, 64u << 20, &l), 0);
  uint64_t data = 0, reserved = 0;
  for (size_t i = 0; i < l.n; i++) {
    const ts_extent *e = &l.v[i];
    if (e->offset < (16u << 20))
      ck_assert_msg(e->flags == 0, "metadata [%llu, +%llu) has flags %u, not written data",
                    (unsigned long long)e->offset, (unsigned long long)e->length, e->flags);
    if (e->flags == 0)
      data += e->length;
    if (e->flags == TS_EXTENT_ZERO)
      reserved += e->length;
  }
  ts_extent_list_free(&l);
  ck_assert_uint_ge(data, 16u << 20);
  ck_assert_uint_ge(reserved, 40u << 20);
  close_and_check(s, ts_test_dir);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("commit_syncs");
  TCase *t = tcase_create("syncs");
  tcase_set_timeout(t, 120);
  tcase_add_checked_fixture(t, ts_test_dir_setup, ts_test_dir_teardown);
  tcase_add_test(t, provision_flush_order);
  tcase_add_test(t, write_flush_syncs_data);
  tcase_add_test(t, provision_flush_sync_count);
  tcase_add_test(t, new_pool_metadata_start_written);
  suite_add_tcase(s, t);
  return ts_test_main(s);
}
