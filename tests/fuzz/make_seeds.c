/* Writes the seed corpora of the fuzz targets, made with the library itself
 * (so they stay in step with its formats), into OUT/<target>/:
 *   pool/      metadata devices of 64 blocks: empty, devices with mappings and
 *              a snapshot, a held metadata snapshot (trailing zero blocks cut)
 *   restore/   the thin_dump XML of those pools
 *   snapstore/ COW devices of a snapshot after origin and snapshot writes
 *   replay/    dm-log-writes logs of writes, discards, flushes and a mark
 * Usage: fuzz_make_seeds OUT */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "pdata/pdata-internal.h"
#include "pdata/thin-metadata.h"

#include <errno.h>
#include <fcntl.h>
#include <libthinstack/thinstack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *out;

static void die(const char *what, const char *why)
{
  fprintf(stderr, "fuzz_make_seeds: %s: %s\n", what, why);
  exit(1);
}

static char *path(const char *target, const char *name)
{
  char *p;
  if (asprintf(&p, "%s/%s", out, target) < 0)
    die("asprintf", "out of memory");
  mkdir(p, 0755);
  free(p);
  if (asprintf(&p, "%s/%s/%s", out, target, name) < 0)
    die("asprintf", "out of memory");
  return p;
}

/* Write buf, cut after its last non-zero `unit`-byte block. */
static void put(const char *target, const char *name, const void *buf, size_t len, size_t unit)
{
  const unsigned char *b = buf;
  size_t keep = len;
  while (keep >= unit) {
    size_t i;
    for (i = keep - unit; i < keep && !b[i]; i++)
      ;
    if (i < keep)
      break;
    keep -= unit;
  }
  char *p = path(target, name);
  FILE *f = fopen(p, "wb");
  if (!f || fwrite(buf, 1, keep, f) != keep || fclose(f))
    die(p, strerror(errno));
  free(p);
}

static void *slurp(const char *p, size_t *len)
{
  FILE *f = fopen(p, "rb");
  if (!f)
    die(p, strerror(errno));
  fseek(f, 0, SEEK_END);
  *len = (size_t)ftell(f);
  rewind(f);
  void *b = malloc(*len ? *len : 1);
  if (!b || fread(b, 1, *len, f) != *len)
    die(p, "read failed");
  fclose(f);
  return b;
}

/* ---- pools ---- */

static void pool_seed(const char *name, int kind, const char *tmp)
{
  char *meta;
  if (asprintf(&meta, "%s/meta", tmp) < 0)
    die("asprintf", "out of memory");
  int fd = open(meta, O_RDWR | O_CREAT | O_TRUNC, 0600);
  if (fd < 0 || ftruncate(fd, 64 * 4096))
    die(meta, strerror(errno));
  close(fd);
  struct pd_bdev b;
  ts_error err = {0};
  struct tmd *md;
  if (pd_bdev_open_file(&b, meta, false, &err) || tmd_format(&b, 128, 20000, NULL, &md, &err))
    die(meta, err.msg);
  uint64_t db, got, done;
  if (kind >= 1) {
    tmd_create_thin(md, 1);
    tmd_alloc_data_run(md, 300, &db, &got);
    tmd_insert_run(md, 1, 0, got, db, &done);
    tmd_create_thin(md, 5);
    for (uint64_t v = 0; v < 40; v++)
      if (!tmd_alloc_data(md, &db))
        tmd_insert(md, 5, v * 7, db);
    tmd_create_snap(md, 2, 1);
    if (!tmd_alloc_data(md, &db))
      tmd_insert(md, 2, 3, db);
  }
  if (kind >= 2) {
    tmd_commit(md);
    tmd_reserve_metadata_snap(md);
    tmd_remove_range(md, 1, 100, 200, 0, NULL, NULL, NULL);
  }
  if (tmd_commit(md))
    die(name, "commit failed");
  tmd_close(md);
  char *xp = path("restore", name);
  FILE *x = fopen(xp, "w");
  if (!x || pd_dump_xml(&b, false, x, &err))
    die(name, err.msg);
  fclose(x);
  free(xp);
  pd_bdev_close(&b);
  size_t len;
  void *img = slurp(meta, &len);
  put("pool", name, img, len, 4096);
  free(img);
  unlink(meta);
  free(meta);
}

/* ---- stacks ---- */

static ts_stack *open_stack(const char *tmp, const char *json)
{
  ts_stack *s = NULL;
  ts_error err = {0};
  if (ts_stack_open_string(json, tmp, NULL, &s, &err))
    die(json, err.msg);
  return s;
}

static void snap_seed(const char *name, const char *tmp, const char *chunk, int writes)
{
  char *json;
  if (asprintf(&json,
               "{\"version\":1,\"layers\":{\"base\":{\"type\":\"memory\",\"size\":\"256K\"},"
               "\"cow\":{\"type\":\"file\",\"path\":\"cow.img\",\"size\":\"64K\",\"create\":true},"
               "\"origin\":{\"type\":\"snapshot-origin\",\"child\":\"base\"},"
               "\"snap\":{\"type\":\"snapshot\",\"origin\":\"origin\",\"cow\":\"cow\",\"chunk_size\":\"%s\","
               "\"create\":true}}}", chunk) < 0)
    die("asprintf", "out of memory");
  ts_stack *s = open_stack(tmp, json);
  unsigned char buf[4096];
  memset(buf, 0x3c, sizeof buf);
  for (int i = 0; i < writes; i++)
    ts_pwrite(ts_stack_node(s, "origin"), buf, sizeof buf, (uint64_t)i * 12288, 0);
  ts_pwrite(ts_stack_node(s, "snap"), buf, sizeof buf, 8192, 0);
  ts_stack_close(s, NULL);
  char *cow;
  if (asprintf(&cow, "%s/cow.img", tmp) < 0)
    die("asprintf", "out of memory");
  size_t len;
  void *img = slurp(cow, &len);
  put("snapstore", name, img, len, 4096);
  free(img);
  unlink(cow);
  free(cow);
  free(json);
}

static void log_seed(const char *name, const char *tmp, int ops)
{
  ts_stack *s = open_stack(tmp, "{\"version\":1,\"layers\":{\"m\":{\"type\":\"memory\",\"size\":\"1M\"},"
                                "\"log\":{\"type\":\"file\",\"path\":\"log.img\",\"size\":\"1M\",\"create\":true},"
                                "\"lw\":{\"type\":\"log-writes\",\"child\":\"m\",\"log\":\"log\"}}}");
  ts_dev *d = ts_stack_node(s, "lw");
  unsigned char buf[8192];
  memset(buf, 0x77, sizeof buf);
  for (int i = 0; i < ops; i++) {
    ts_pwrite(d, buf, 512u * (1 + i % 16), (uint64_t)i * 4096, i % 3 ? 0 : TS_IO_FUA);
    if (i % 4 == 3)
      ts_flush(d);
    if (i % 5 == 4)
      ts_discard(d, (uint64_t)i * 2048, 4096);
  }
  ts_error err = {0};
  ts_dev_message(d, "mark seed", &err);
  ts_stack_close(s, NULL);
  char *log;
  if (asprintf(&log, "%s/log.img", tmp) < 0)
    die("asprintf", "out of memory");
  size_t len;
  void *img = slurp(log, &len);
  put("replay", name, img, len, 512);
  free(img);
  unlink(log);
  free(log);
}

int main(int argc, char **argv)
{
  if (argc != 2) {
    fprintf(stderr, "usage: fuzz_make_seeds OUT\n");
    return 2;
  }
  out = argv[1];
  mkdir(out, 0755);
  char tmp[] = "/tmp/ts-seeds-XXXXXX";
  if (!mkdtemp(tmp))
    die("mkdtemp", strerror(errno));
  pool_seed("empty", 0, tmp);
  pool_seed("devices", 1, tmp);
  pool_seed("held-snapshot", 2, tmp);
  snap_seed("4k-chunks", tmp, "4K", 3);
  snap_seed("8k-chunks", tmp, "8K", 6);
  log_seed("short", tmp, 6);
  log_seed("long", tmp, 40);
  rmdir(tmp);
  printf("seeds written to %s\n", out);
  return 0;
}
