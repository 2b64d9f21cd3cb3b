/* bench_metadata: thin-pool metadata figures.
 *
 *   bench_metadata [--mappings N] [--cache BLOCKS] [--lookups N] [--dir DIR]
 *
 * Inserts N mappings (default 16 Mi = 1 TiB of 64 KiB blocks) into one thin
 * device with the bulk path, reports metadata bytes per mapping, random
 * lookups per second with the cache bound, snapshot creation time of an empty
 * and of the fully mapped volume, peak memory, and the provisioning fast path
 * (131072 blocks = 8 GiB) next to fallocate() of 8 GiB on a plain file in the
 * same folder. Files are created in DIR (default /tmp) and removed. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "pdata/thin-metadata.h"

static double now(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, int r)
{
  fprintf(stderr, "bench_metadata: %s: %s\n", what, strerror(r < 0 ? -r : r));
  exit(1);
}

static struct tmd *make_pool(const char *path, uint64_t bytes, uint64_t nr_data, uint32_t cache, struct pd_bdev *b)
{
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
  if (fd < 0 || ftruncate(fd, (off_t)bytes))
    die(path, errno);
  close(fd);
  ts_error err = {0};
  if (pd_bdev_open_file(b, path, false, &err))
    die(err.msg, err.code);
  struct tmd_config cfg = {.cache_blocks = cache};
  struct tmd *md;
  int r = tmd_format(b, 128, nr_data, &cfg, &md, &err);
  if (r) {
    fprintf(stderr, "bench_metadata: format: %s\n", err.msg);
    exit(1);
  }
  return md;
}

/* Map [v, v+n) of dev to freshly allocated data blocks, in bulk runs. */
static void provision(struct tmd *md, uint32_t dev, uint64_t v, uint64_t n)
{
  while (n) {
    uint64_t db, got, done;
    int r = tmd_alloc_data_run(md, n, &db, &got);
    if (r)
      die("alloc", r);
    if ((r = tmd_insert_run(md, dev, v, got, db, &done)))
      die("insert_run", r);
    v += got;
    n -= got;
  }
}

int main(int argc, char **argv)
{
  uint64_t nmap = 16ull << 20, nlook = 2000000;
  uint32_t cache = TMD_DEFAULT_CACHE_BLOCKS;
  const char *dir = "/tmp";
  static const struct option opts[] = {{"mappings", required_argument, NULL, 'n'},
                                       {"cache", required_argument, NULL, 'c'},
                                       {"lookups", required_argument, NULL, 'l'},
                                       {"dir", required_argument, NULL, 'd'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
  int ch;
  while ((ch = getopt_long(argc, argv, "n:c:l:d:h", opts, NULL)) != -1) {
    switch (ch) {
    case 'n': nmap = strtoull(optarg, NULL, 0); break;
    case 'c': cache = (uint32_t)strtoul(optarg, NULL, 0); break;
    case 'l': nlook = strtoull(optarg, NULL, 0); break;
    case 'd': dir = optarg; break;
    default:
      printf("usage: bench_metadata [--mappings N] [--cache BLOCKS] [--lookups N] [--dir DIR]\n");
      return ch == 'h' ? 0 : 2;
    }
  }
  if (nmap < 1000)
    nmap = 1000;
  char path[4096], path2[4096], fpath[4096];
  snprintf(path, sizeof path, "%s/bench-meta-%d", dir, (int)getpid());
  snprintf(path2, sizeof path2, "%s/bench-meta2-%d", dir, (int)getpid());
  snprintf(fpath, sizeof fpath, "%s/bench-falloc-%d", dir, (int)getpid());

  /* 1. bulk insert of nmap mappings (about 33 bytes each, plus slack) */
  struct pd_bdev b;
  uint64_t mbytes = nmap * 48 + (64ull << 20);
  if (mbytes > TMD_MAX_METADATA_BLOCKS * 4096)
    mbytes = TMD_MAX_METADATA_BLOCKS * 4096;
  struct tmd *md = make_pool(path, mbytes, nmap + nmap / 16 + 200000, cache, &b);
  int r;
  if ((r = tmd_create_thin(md, 1)) || (r = tmd_create_thin(md, 2)))
    die("create_thin", r);
  double t0 = now();
  for (uint64_t v = 0; v < nmap; v += 131072)
    provision(md, 1, v, nmap - v < 131072 ? nmap - v : 131072);
  double t_ins = now() - t0;
  t0 = now();
  if ((r = tmd_commit(md)))
    die("commit", r);
  double t_commit = now() - t0;
  uint64_t used = tmd_metadata_nr_used(md);

  /* 2. single-block inserts (the write-fault path), 1/16 of the size */
  uint64_t nsingle = nmap / 16;
  t0 = now();
  for (uint64_t v = 0; v < nsingle; v++) {
    uint64_t db;
    if ((r = tmd_alloc_data(md, &db)) || (r = tmd_insert(md, 2, v, db)))
      die("insert", r);
  }
  double t_single = now() - t0;
  if ((r = tmd_commit(md)))
    die("commit", r);

  /* 3. random lookups over the big device, cache bounded */
  uint64_t s = 0x9E3779B97F4A7C15ull, sum = 0;
  t0 = now();
  for (uint64_t i = 0; i < nlook; i++) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    uint64_t db;
    if ((r = tmd_lookup(md, 1, s % nmap, &db, NULL)))
      die("lookup", r);
    sum += db;
  }
  double t_look = now() - t0;

  /* 4. snapshots: empty vs fully mapped origin */
  if ((r = tmd_create_thin(md, 3)) || (r = tmd_commit(md)))
    die("create", r);
  t0 = now();
  if ((r = tmd_create_snap(md, 4, 3)))
    die("snap", r);
  double t_snap_empty = now() - t0;
  if ((r = tmd_commit(md)))
    die("commit", r);
  double t_snap_empty_c = now() - t0;
  t0 = now();
  if ((r = tmd_create_snap(md, 5, 1)))
    die("snap", r);
  double t_snap_full = now() - t0;
  if ((r = tmd_commit(md)))
    die("commit", r);
  double t_snap_full_c = now() - t0;
  tmd_close(md);
  pd_bdev_close(&b);
  unlink(path);

  /* 5. provisioning 131072 blocks (8 GiB at 64 KiB) vs fallocate 8 GiB */
  md = make_pool(path2, 64ull << 20, 262144, cache, &b);
  if ((r = tmd_create_thin(md, 1)) || (r = tmd_commit(md)))
    die("create", r);
  t0 = now();
  provision(md, 1, 0, 131072);
  double t_prov = now() - t0;
  if ((r = tmd_commit(md)))
    die("commit", r);
  double t_prov_commit = now() - t0;
  tmd_close(md);
  pd_bdev_close(&b);
  unlink(path2);
  int fd = open(fpath, O_RDWR | O_CREAT | O_TRUNC, 0600);
  if (fd < 0)
    die(fpath, errno);
  t0 = now();
  int fr = fallocate(fd, 0, 0, 8ll << 30);
  double t_fall = now() - t0;
  close(fd);
  unlink(fpath);

  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  printf("thin metadata benchmark (%s, cache %u blocks = %u MiB)\n", dir, cache, cache / 256);
  printf("  %-48s %14s\n", "measure", "value");
  printf("  %-48s %14llu\n", "mappings inserted (bulk, one device)", (unsigned long long)nmap);
  printf("  %-48s %11.3f s  (%.1f M/s)\n", "bulk insert time", t_ins, (double)nmap / t_ins / 1e6);
  printf("  %-48s %11.3f s\n", "commit after bulk insert", t_commit);
  printf("  %-48s %11.1f MiB\n", "metadata used", (double)used * 4096 / 1048576);
  printf("  %-48s %11.1f B  (dm-thin rule of thumb: 48-64)\n", "metadata per mapping", (double)used * 4096 / (double)nmap);
  printf("  %-48s %11.3f s  (%.2f M/s)\n", "single-block inserts (alloc+insert)", t_single,
         (double)nsingle / t_single / 1e6);
  printf("  %-48s %11.0f /s  (%llu lookups)\n", "random lookups", (double)nlook / t_look, (unsigned long long)nlook);
  printf("  %-48s %11.3f us\n", "snapshot of an empty volume", t_snap_empty * 1e6);
  printf("  %-48s %11.3f us\n", "snapshot of the fully mapped volume", t_snap_full * 1e6);
  printf("  %-48s %11.2f\n", "snapshot time ratio full/empty", t_snap_full / t_snap_empty);
  printf("  %-48s %11.3f ms\n", "  same, each with its commit: empty", t_snap_empty_c * 1e3);
  printf("  %-48s %11.3f ms\n", "  same, each with its commit: fully mapped", t_snap_full_c * 1e3);
  printf("  %-48s %11.3f ms\n", "provision 131072 blocks (alloc+insert)", t_prov * 1e3);
  printf("  %-48s %11.3f ms\n", "provision 131072 blocks incl. commit", t_prov_commit * 1e3);
  if (fr == 0) {
    printf("  %-48s %11.3f ms\n", "fallocate 8 GiB on a plain file", t_fall * 1e3);
    printf("  %-48s %11.2f\n", "ratio provision (no commit) / fallocate", t_prov / t_fall);
    printf("  %-48s %11.2f\n", "ratio provision (with commit) / fallocate", t_prov_commit / t_fall);
  } else {
    printf("  %-48s %14s\n", "fallocate 8 GiB on a plain file", strerror(errno));
  }
  printf("  %-48s %11.1f MiB\n", "peak RSS", (double)ru.ru_maxrss / 1024);
  if (sum == 42)
    printf("\n"); /* keeps the lookups from being optimised away */
  return 0;
}
