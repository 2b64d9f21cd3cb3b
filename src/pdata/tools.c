/* The public offline metadata tools (libthinstack/tools.h) over pdata. */
#include <libthinstack/thinstack.h>

#include "pdata/thin-metadata.h"

#include <errno.h>
#include <string.h>

struct report_arg {
  ts_pool_check_fn fn;
  void *arg;
};

static void report_fn(void *arg, enum pd_check_level lvl, const char *msg)
{
  struct report_arg *a = arg;
  if (a->fn)
    a->fn(a->arg, lvl == PD_CHECK_ERROR, msg);
}

static int open_read(struct pd_bdev *b, const char *path, unsigned flags, bool *stale,
                     ts_error *err)
{
  bool st = false;
  int r = pd_bdev_open_path(b, path, true, flags & TS_POOL_FORCE_SHARE, &st, err);
  if (stale)
    *stale = st;
  return r;
}

int ts_pool_check(const char *metadata_path, unsigned flags, ts_pool_check_fn report, void *arg,
                  ts_pool_check_result *res, ts_error *err)
{
  struct pd_bdev b;
  memset(res, 0, sizeof *res);
  int r = open_read(&b, metadata_path, flags, &res->stale, err);
  if (r)
    return r;
  struct report_arg a = { report, arg };
  struct pd_check_result pr;
  r = pd_check(&b, report_fn, &a, &pr);
  pd_bdev_close(&b);
  if (r)
    return ts_error_set(err, r, "%s: %s", metadata_path, strerror(-r));
  res->errors = pr.errors;
  res->warnings = pr.warnings;
  res->nr_devices = pr.nr_devices;
  res->nr_mappings = pr.nr_mappings;
  res->metadata_blocks_used = pr.metadata_blocks_used;
  res->data_blocks_used = pr.data_blocks_used;
  res->transaction_id = pr.transaction_id;
  return 0;
}

int ts_pool_dump(const char *metadata_path, unsigned flags, FILE *out, bool *stale, ts_error *err)
{
  struct pd_bdev b;
  int r = open_read(&b, metadata_path, flags, stale, err);
  if (r)
    return r;
  r = pd_dump_xml(&b, flags & TS_POOL_METADATA_SNAP, out, err);
  pd_bdev_close(&b);
  return r;
}

int ts_pool_restore(FILE *in, const char *metadata_path, ts_error *err)
{
  struct pd_bdev b;
  int r = pd_bdev_open_file(&b, metadata_path, false, err);
  if (r)
    return r;
  r = pd_restore_xml(&b, in, err);
  pd_bdev_close(&b);
  return r;
}
