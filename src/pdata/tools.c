/* The public offline metadata tools (libthinstack/tools.h) over pdata. */
#include <libthinstack/thinstack.h>

#include "pdata/thin-metadata.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

/* Put the file's name before the message. */
static void name_file(ts_error *err, int r, const char *path)
{
  if (!err)
    return;
  char m[sizeof err->msg];
  snprintf(m, sizeof m, "%s", err->msg);
  ts_error_set(err, r, "%s: %s", path, m);
}

int ts_pool_repair(const char *metadata_path, const char *output_path, ts_pool_repair_result *res,
                   ts_error *err)
{
  memset(res, 0, sizeof *res);
  struct stat a, b;
  bool in_place = !output_path || (stat(output_path, &b) == 0 && stat(metadata_path, &a) == 0 &&
                                   a.st_dev == b.st_dev && a.st_ino == b.st_ino);
  struct pd_bdev in, out;
  /* In place the file is held exclusively from the read to the rebuild. */
  int r = in_place ? pd_bdev_open_file(&in, metadata_path, false, err)
                   : open_read(&in, metadata_path, 0, NULL, err);
  if (r)
    return r;
  FILE *xml = tmpfile();
  if (!xml) {
    r = -errno;
    pd_bdev_close(&in);
    return ts_error_set(err, r, "repair: a temporary file: %s", strerror(-r));
  }
  struct pd_repair_result pr;
  r = pd_repair_xml(&in, xml, &pr, err);
  if (r) {
    name_file(err, r, metadata_path);
    goto out;
  }
  res->devices = pr.devices;
  res->mappings = pr.mappings;
  res->nodes_damaged = pr.nodes_damaged;
  res->mappings_dropped = pr.mappings_dropped;
  res->devices_without_details = pr.devices_without_details;
  if (fflush(xml) || fseek(xml, 0, SEEK_SET)) {
    r = ts_error_set(err, -EIO, "repair: the temporary XML: %s", strerror(errno));
    goto out;
  }
  if (in_place) {
    r = pd_restore_xml(&in, xml, err);
    goto out;
  }
  /* A new file gets the old one's size (the metadata size). */
  if (stat(output_path, &b) != 0 || (uint64_t)b.st_size < in.nr_blocks * 4096ull) {
    FILE *f = fopen(output_path, "a");
    if (!f || truncate(output_path, (off_t)(in.nr_blocks * 4096ull))) {
      r = -errno;
      if (f)
        fclose(f);
      ts_error_set(err, r, "%s: %s", output_path, strerror(-r));
      goto out;
    }
    fclose(f);
  }
  if ((r = pd_bdev_open_file(&out, output_path, false, err)))
    goto out;
  r = pd_restore_xml(&out, xml, err);
  pd_bdev_close(&out);
  if (r)
    name_file(err, r, output_path);
out:
  fclose(xml);
  pd_bdev_close(&in);
  return r;
}
