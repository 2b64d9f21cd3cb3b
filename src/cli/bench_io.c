/* bench io: request throughput through the async API, layer by layer, next
 * to plain pread/pwrite on a file measured in the same run.
 *
 * Cells: 4 KiB random writes and reads (IOPS) and 1 MiB sequential writes and
 * reads (MB/s, 10^6 bytes), each at queue depth 1 and 32, for `--seconds`
 * each. Columns:
 *   pread/pwrite  the baseline: the system calls on a file of
 *                 `--size` bytes, from 1 thread (depth 1) or 32 threads
 *                 (depth 32; the async context has 32 workers by default)
 *   file          a `file` layer on that same file, through ts_aio_submit
 *   thin          a `thin` volume of that size over a pool on files, every
 *                 block mapped first
 *   crypt/thin    a `crypt` layer (aes-xts-plain64, 4 KiB sectors) over
 *                 another such volume of the same pool
 * thin and crypt columns appear only when those layer types are registered.
 * Every cell runs the baseline and then each column back to back, and ratios
 * are against that baseline. Completions run on the async workers (--mode
 * worker, the default: a resubmitting callback keeps its worker, as a thread
 * calling pwrite in a loop does) or on a libuv loop (--mode loop: two thread
 * hand-offs per request, which small requests feel). By default every file is opened with
 * O_DIRECT and written in full first (so reads reach the disk rather than
 * unwritten extents): the disk as a VMM with cache=none sees it. --cached
 * goes through the page cache instead, which measures the software path (a
 * cached 4K pread costs about a microsecond, so thread hand-offs dominate)
 * and is at the mercy of writeback. After each write cell the target is
 * flushed, untimed, so dirty data does not spill into the next cell.
 */
#include "cli/cli.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libthinstack/layer.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#define DEPTH_MAX 32
#define NDEPTHS 2
#define NTESTS 4
#define NTARGETS 4

static const unsigned depths[NDEPTHS] = { 1, DEPTH_MAX };

struct test {
  const char *name, *label;
  bool random, write;
  uint32_t bs;
};

/* Writes first, so the reads find written data. */
static const struct test tests[NTESTS] = {
  { "seqwrite", "1M seq write  MB/s", false, true, 1u << 20 },
  { "randwrite", "4K rand write IOPS", true, true, 4096 },
  { "randread", "4K rand read  IOPS", true, false, 4096 },
  { "seqread", "1M seq read   MB/s", false, false, 1u << 20 },
};

enum { T_BASE, T_FILE, T_THIN, T_CRYPT };
static const char *const target_names[NTARGETS] = { "pread/pwrite", "file", "thin", "crypt/thin" };

struct result {
  uint64_t ops;
  double secs;
  bool done;
};

struct bench {
  const char *base;
  char dir[4096];
  uint64_t size;
  double seconds;
  uint32_t workers;
  uint32_t mode;   /* ts_aio_mode: where completions run */
  bool json;
  bool direct;
  const char *control; /* --control: serve the thin stack's socket here */
  bool have[NTARGETS];
  struct result res[NTARGETS][NTESTS][NDEPTHS];
};

static uint64_t rng_next(uint64_t *s)
{
  uint64_t x = *s;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return *s = x;
}

static uint64_t pick_offset(const struct test *t, uint64_t size, uint64_t *rng,
                            _Atomic uint64_t *cursor)
{
  uint64_t blocks = size / t->bs;
  if (t->random)
    return rng_next(rng) % blocks * t->bs;
  return atomic_fetch_add(cursor, 1) % blocks * t->bs;
}

static void *alloc_buf(size_t len)
{
  void *p = NULL;
  if (posix_memalign(&p, 4096, len))
    return NULL;
  memset(p, 0x6b, len);
  return p;
}

/* ------------------------------------------------------------------------ */
/* Baseline: pread/pwrite from `depth` threads                               */

struct base_run {
  int fd;
  const struct test *t;
  uint64_t size;
  double deadline;
  _Atomic uint64_t ops, cursor;
  _Atomic int err;
};

struct base_thread {
  struct base_run *run;
  uint64_t rng;
};

static void *base_main(void *arg)
{
  struct base_thread *bt = arg;
  struct base_run *run = bt->run;
  void *buf = alloc_buf(run->t->bs);
  if (!buf) {
    atomic_store(&run->err, -ENOMEM);
    return NULL;
  }
  uint64_t ops = 0;
  /* At least one op per thread, as every layer slot does one: a thread that
   * starts after a short deadline would otherwise count none. */
  do {
    uint64_t off = pick_offset(run->t, run->size, &bt->rng, &run->cursor);
    ssize_t n = run->t->write ? pwrite(run->fd, buf, run->t->bs, (off_t)off)
                              : pread(run->fd, buf, run->t->bs, (off_t)off);
    if (n != (ssize_t)run->t->bs) {
      atomic_store(&run->err, n < 0 ? -errno : -EIO);
      break;
    }
    ops++;
  } while (ts_cli_now() < run->deadline && !atomic_load(&run->err));
  atomic_fetch_add(&run->ops, ops);
  free(buf);
  return NULL;
}

static int base_cell(struct bench *b, int fd, const struct test *t, unsigned depth,
                     struct result *res)
{
  struct base_run run = { .fd = fd, .t = t, .size = b->size };
  struct base_thread bt[DEPTH_MAX];
  pthread_t th[DEPTH_MAX];
  double t0 = ts_cli_now();
  run.deadline = t0 + b->seconds;
  unsigned started = 0;
  for (unsigned i = 0; i < depth; i++) {
    bt[i].run = &run;
    bt[i].rng = 0x9E3779B97F4A7C15ull * (i + 1);
    if (pthread_create(&th[i], NULL, base_main, &bt[i]) != 0) {
      atomic_store(&run.err, -EAGAIN);
      break;
    }
    started++;
  }
  for (unsigned i = 0; i < started; i++)
    pthread_join(th[i], NULL);
  res->secs = ts_cli_now() - t0;
  res->ops = atomic_load(&run.ops);
  res->done = true;
  if (t->write && fdatasync(fd) != 0 && !atomic_load(&run.err))
    atomic_store(&run.err, -errno);
  return atomic_load(&run.err);
}

/* ------------------------------------------------------------------------ */
/* Layers: the async API, `depth` requests kept in flight on one loop        */

struct aio_run;

struct slot {
  ts_aio_req req;  /* first: the callback gets the slot back from it */
  struct iovec iov;
  struct aio_run *run;
  uint64_t rng, ops; /* per slot: WORKER-mode callbacks run concurrently */
};

struct aio_run {
  ts_aio_ctx *ctx;
  ts_dev *dev;
  const struct test *t;
  uint64_t size;
  double deadline;
  bool on_workers;          /* callbacks on workers: wait on `done` */
  uv_sem_t done;            /* posted when the last slot stops */
  _Atomic unsigned active;  /* slots still submitting */
  _Atomic uint64_t cursor;
  _Atomic int err;
  _Atomic bool stop;
};

static void slot_stopped(struct aio_run *run)
{
  if (atomic_fetch_sub(&run->active, 1) == 1 && run->on_workers)
    uv_sem_post(&run->done);
}

static void slot_submit(struct slot *s)
{
  struct aio_run *run = s->run;
  s->req.io = (ts_io){ .op = run->t->write ? TS_OP_WRITE : TS_OP_READ,
                       .offset = pick_offset(run->t, run->size, &s->rng, &run->cursor),
                       .length = run->t->bs, .iov = &s->iov, .iovcnt = 1 };
  int r = ts_aio_submit(run->ctx, run->dev, &s->req);
  if (r) {
    atomic_store(&run->err, r);
    atomic_store(&run->stop, true);
    slot_stopped(run);
  }
}

static void slot_done(ts_aio_req *req)
{
  struct slot *s = (struct slot *)req;
  struct aio_run *run = s->run;
  if (req->result) {
    atomic_store(&run->err, req->result);
    atomic_store(&run->stop, true);
  } else {
    s->ops++;
  }
  if (!atomic_load_explicit(&run->stop, memory_order_relaxed) && ts_cli_now() >= run->deadline)
    atomic_store(&run->stop, true);
  if (atomic_load_explicit(&run->stop, memory_order_relaxed))
    slot_stopped(run);
  else
    slot_submit(s);
}

static int aio_cell(struct bench *b, uv_loop_t *loop, ts_aio_ctx *ctx, ts_dev *dev,
                    const struct test *t, unsigned depth, struct result *res)
{
  struct aio_run run = { .ctx = ctx, .dev = dev, .t = t, .size = b->size,
                         .on_workers = b->mode == TS_AIO_MODE_WORKER };
  struct slot slots[DEPTH_MAX];
  memset(slots, 0, sizeof slots);
  int r = 0;
  for (unsigned i = 0; i < depth; i++) {
    slots[i].iov.iov_base = alloc_buf(t->bs);
    slots[i].iov.iov_len = t->bs;
    slots[i].run = &run;
    slots[i].req.cb = slot_done;
    slots[i].rng = 0x2545F4914F6CDD1Dull * (i + 1);
    if (!slots[i].iov.iov_base)
      r = -ENOMEM;
  }
  if (!r && run.on_workers && uv_sem_init(&run.done, 0) != 0)
    r = -ENOMEM;
  double t0 = ts_cli_now();
  run.deadline = t0 + b->seconds;
  if (!r) {
    atomic_store(&run.active, depth);
    for (unsigned i = 0; i < depth; i++) {
      if (atomic_load(&run.stop))
        slot_stopped(&run); /* never submitted */
      else
        slot_submit(&slots[i]);
    }
    if (run.on_workers) {
      uv_sem_wait(&run.done);
      uv_sem_destroy(&run.done);
    } else {
      uv_run(loop, UV_RUN_DEFAULT); /* returns when the last request completed */
    }
  }
  res->secs = ts_cli_now() - t0;
  res->ops = 0;
  for (unsigned i = 0; i < depth; i++)
    res->ops += slots[i].ops;
  res->done = true;
  for (unsigned i = 0; i < depth; i++)
    free(slots[i].iov.iov_base);
  if (!r)
    r = atomic_load(&run.err);
  if (!r && t->write)
    r = ts_flush(dev);
  return r;
}

/* ------------------------------------------------------------------------ */
/* Targets                                                                    */

static ts_stack *open_json(struct bench *b, const char *json)
{
  ts_stack *s = NULL;
  ts_error err = { 0 };
  if (ts_stack_open_string(json, b->dir, NULL, &s, &err) != 0) {
    ts_cli_err("bench io: %s", err.msg);
    return NULL;
  }
  return s;
}

static void remove_file(struct bench *b, const char *name)
{
  char p[4200];
  snprintf(p, sizeof p, "%s/%s", b->dir, name);
  unlink(p);
}

/* Make every block of the file hold data: with O_DIRECT, reads of
 * preallocated but unwritten extents never reach the disk. */
static int prefill_fd(int fd, uint64_t size)
{
  size_t chunk = 1u << 20;
  void *buf = alloc_buf(chunk);
  if (!buf)
    return -ENOMEM;
  int r = 0;
  for (uint64_t off = 0; off < size && !r; off += chunk) {
    ssize_t n = pwrite(fd, buf, chunk, (off_t)off);
    if (n != (ssize_t)chunk)
      r = n < 0 ? -errno : -EIO;
  }
  free(buf);
  if (!r && fdatasync(fd) != 0)
    r = -errno;
  return r;
}

static int prefill_dev(ts_dev *dev, uint64_t size)
{
  size_t chunk = 1u << 20;
  void *buf = alloc_buf(chunk);
  if (!buf)
    return -ENOMEM;
  int r = 0;
  for (uint64_t off = 0; off < size && !r; off += chunk)
    r = ts_pwrite(dev, buf, chunk, off, 0);
  free(buf);
  return r ? r : ts_flush(dev);
}

/* Everything measured, open at once, so that each cell runs the baseline
 * and every target back to back: the disk's speed drifts over a run (host
 * caches, writeback), and ratios of neighbours are what stay comparable. */
struct targets {
  int fd;              /* the baseline's file */
  ts_stack *file, *thin;
  ts_dev *dev[NTARGETS];
};

/* The baseline's file and a `file` layer on it: written in full, or with
 * --cached preallocated. */
static int open_file_targets(struct bench *b, struct targets *tg)
{
  char path[4200];
  snprintf(path, sizeof path, "%s/raw.img", b->dir);
  int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    ts_cli_err("bench io: cannot create %s: %s", path, strerror(errno));
    return -errno;
  }
  int r = b->direct ? prefill_fd(fd, b->size) : -posix_fallocate(fd, 0, (off_t)b->size);
  if (!r && b->direct) {
    close(fd);
    fd = open(path, O_RDWR | O_DIRECT | O_CLOEXEC);
    if (fd < 0)
      r = -errno;
  }
  if (r) {
    ts_cli_err("bench io: cannot prepare %s: %s%s", path, ts_strerror(r),
               r == -EINVAL && b->direct ? " (no O_DIRECT on this file system? try --cached)" : "");
    if (fd >= 0)
      close(fd);
    return r;
  }
  tg->fd = fd;
  char *json = NULL;
  if (asprintf(&json, "{ \"version\": 1, \"layers\": { \"raw\": { \"type\": \"file\","
                      " \"path\": \"raw.img\", \"direct\": %s } }, \"exports\": [\"raw\"] }",
               b->direct ? "true" : "false") < 0)
    return -ENOMEM;
  tg->file = open_json(b, json);
  free(json);
  if (!tg->file)
    return -EINVAL;
  tg->dev[T_FILE] = ts_stack_dev(tg->file, "raw");
  return 0;
}

/* A pool with two fully mapped volumes (written in full, or with --cached
 * provisioned): one read and written as is, one under a crypt layer. */
static int open_thin_targets(struct bench *b, struct targets *tg)
{
  char sz[32], data_sz[32];
  ts_format_size(b->size, sz, sizeof sz);
  ts_format_size(b->have[T_CRYPT] ? 2 * b->size : b->size, data_sz, sizeof data_sz);
  char *json = NULL;
  int n = asprintf(
    &json,
    "{ \"version\": 1, \"layers\": {"
    " \"meta\": { \"type\": \"file\", \"path\": \"pool.meta\", \"size\": \"256M\", \"create\": true },"
    " \"data\": { \"type\": \"file\", \"path\": \"pool.data\", \"size\": \"%s\", \"create\": true,"
    "   \"direct\": %s },"
    " \"pool\": { \"type\": \"thin-pool\", \"metadata\": \"meta\", \"data\": \"data\","
    "   \"block_size\": \"64K\", \"create\": true },"
    " \"vol\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 1, \"size\": \"%s\", \"create\": true }"
    "%s%s%s },"
    " \"exports\": [\"vol\"%s] }",
    data_sz, b->direct ? "true" : "false", sz,
    b->have[T_CRYPT] ? ", \"vol2\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 2, \"size\": \"" : "",
    b->have[T_CRYPT] ? sz : "",
    b->have[T_CRYPT] ? "\", \"create\": true }, \"enc\": { \"type\": \"crypt\", \"child\": \"vol2\","
                       " \"sector_size\": 4096, \"key\": \"000102030405060708090a0b0c0d0e0f"
                       "101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f"
                       "303132333435363738393a3b3c3d3e3f\" }"
                     : "",
    b->have[T_CRYPT] ? ", \"enc\"" : "");
  if (n < 0)
    return -ENOMEM;
  tg->thin = open_json(b, json);
  free(json);
  if (!tg->thin)
    return -EINVAL;
  const char *vols[] = { "vol", "vol2" };
  for (int i = 0; i < (b->have[T_CRYPT] ? 2 : 1); i++) {
    ts_dev *v = ts_stack_node(tg->thin, vols[i]);
    int r = b->direct ? prefill_dev(v, b->size) : ts_provision(v, 0, b->size);
    if (!r)
      r = ts_flush(v);
    if (r) {
      ts_cli_err("bench io: provisioning thin volume %s: %s", vols[i], ts_strerror(r));
      return r;
    }
  }
  tg->dev[T_THIN] = ts_stack_dev(tg->thin, "vol");
  if (b->have[T_CRYPT])
    tg->dev[T_CRYPT] = ts_stack_dev(tg->thin, "enc");
  return 0;
}

static int close_targets(struct bench *b, struct targets *tg)
{
  int r = 0;
  if (tg->fd >= 0)
    close(tg->fd);
  ts_stack *stacks[] = { tg->file, tg->thin };
  for (int i = 0; i < 2; i++) {
    int c = stacks[i] ? ts_stack_close(stacks[i], NULL) : 0;
    if (!r)
      r = c;
  }
  remove_file(b, "raw.img");
  remove_file(b, "pool.meta");
  remove_file(b, "pool.data");
  return r;
}

static int run_cells(struct bench *b, uv_loop_t *loop, ts_aio_ctx *ctx)
{
  struct targets tg = { .fd = -1 };
  int r = open_file_targets(b, &tg);
  if (!r && b->have[T_THIN])
    r = open_thin_targets(b, &tg);
  if (!r && b->control) {
    /* A control client beside the data path: what its requests cost the
     * cells is what this measures. */
    ts_error err = { 0 };
    r = tg.thin ? ts_ctl_listen(tg.thin, b->control, &err)
                : ts_error_set(&err, -EOPNOTSUPP, "--control needs the thin layers");
    if (r)
      ts_cli_err("bench io: %s", err.msg);
  }
  for (int ti = 0; ti < NTESTS && !r; ti++)
    for (int di = 0; di < NDEPTHS && !r; di++)
      for (int k = 0; k < NTARGETS && !r; k++) {
        if (!b->have[k])
          continue;
        struct result *res = &b->res[k][ti][di];
        r = k == T_BASE ? base_cell(b, tg.fd, &tests[ti], depths[di], res)
                        : aio_cell(b, loop, ctx, tg.dev[k], &tests[ti], depths[di], res);
        if (r)
          ts_cli_err("bench io: %s %s at depth %u: %s", target_names[k], tests[ti].name,
                     depths[di], ts_strerror(r));
      }
  int c = close_targets(b, &tg);
  return r ? r : c;
}

/* ------------------------------------------------------------------------ */
/* Report                                                                     */

static double value(const struct test *t, const struct result *r)
{
  if (!r->done || r->secs <= 0)
    return 0;
  double per_sec = (double)r->ops / r->secs;
  return t->bs == 4096 ? per_sec : per_sec * t->bs / 1e6;
}

static void print_table(struct bench *b)
{
  char sz[32];
  ts_format_size(b->size, sz, sizeof sz);
  printf("bench io: %s files in %s (%s), %.1f s per cell, %u async workers, completions on %s;\n"
         "ratios against pread/pwrite run just before (depth 32 = %u threads)\n\n",
         sz, b->base, b->direct ? "O_DIRECT" : "page cache", b->seconds, b->workers,
         b->mode == TS_AIO_MODE_WORKER ? "the workers" : "a libuv loop", DEPTH_MAX);
  printf("%-20s %5s", "test", "depth");
  for (int k = 0; k < NTARGETS; k++)
    if (b->have[k])
      printf(k == T_BASE ? " %12s" : " %18s", target_names[k]);
  printf("\n");
  for (int ti = 0; ti < NTESTS; ti++)
    for (int di = 0; di < NDEPTHS; di++) {
      const struct test *t = &tests[ti];
      double base = value(t, &b->res[T_BASE][ti][di]);
      printf("%-20s %5u %12.0f", t->label, depths[di], base);
      for (int k = T_FILE; k < NTARGETS; k++)
        if (b->have[k]) {
          double v = value(t, &b->res[k][ti][di]);
          printf(" %11.0f %5.2fx", v, base > 0 ? v / base : 0);
        }
      printf("\n");
    }
  if (b->have[T_THIN]) {
    double worst = 1e9;
    for (int ti = 0; ti < NTESTS; ti++) {
      double base = value(&tests[ti], &b->res[T_BASE][ti][1]);
      double v = value(&tests[ti], &b->res[T_THIN][ti][1]);
      if (base > 0 && v / base < worst)
        worst = v / base;
    }
    printf("\nthin (mapped blocks) at depth 32: worst ratio %.2fx (target 0.90x)\n", worst);
  }
}

static void print_json(struct bench *b)
{
  json_t *o = json_object();
  json_object_set_new(o, "size", json_integer((json_int_t)b->size));
  json_object_set_new(o, "seconds_per_cell", json_real(b->seconds));
  json_object_set_new(o, "workers", json_integer(b->workers));
  json_object_set_new(o, "direct", json_boolean(b->direct));
  json_object_set_new(o, "mode", json_string(b->mode == TS_AIO_MODE_WORKER ? "worker" : "loop"));
  json_object_set_new(o, "baseline", json_string(target_names[T_BASE]));
  json_t *rows = json_array();
  for (int k = 0; k < NTARGETS; k++)
    for (int ti = 0; ti < NTESTS && b->have[k]; ti++)
      for (int di = 0; di < NDEPTHS; di++) {
        const struct test *t = &tests[ti];
        const struct result *r = &b->res[k][ti][di];
        double v = value(t, r), base = value(t, &b->res[T_BASE][ti][di]);
        json_t *row = json_object();
        json_object_set_new(row, "target", json_string(target_names[k]));
        json_object_set_new(row, "test", json_string(t->name));
        json_object_set_new(row, "block_size", json_integer(t->bs));
        json_object_set_new(row, "depth", json_integer(depths[di]));
        json_object_set_new(row, "ops", json_integer((json_int_t)r->ops));
        json_object_set_new(row, "seconds", json_real(r->secs));
        json_object_set_new(row, t->bs == 4096 ? "iops" : "mb_per_s", json_real(v));
        json_object_set_new(row, "ratio", json_real(base > 0 ? v / base : 0));
        json_array_append_new(rows, row);
      }
  json_object_set_new(o, "results", rows);
  char *s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
  if (s)
    puts(s);
  free(s);
  json_decref(o);
}

/* ------------------------------------------------------------------------ */

int ts_cli_bench_io(int argc, char **argv)
{
  struct bench *b = calloc(1, sizeof *b);
  if (!b)
    return 1;
  b->base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  b->size = 1ull << 30;
  b->seconds = 1.2;
  b->workers = DEPTH_MAX;
  b->direct = true;
  b->mode = TS_AIO_MODE_WORKER;
  int status = 2;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
      printf("usage: thinstack bench io [--json] [--dir DIR] [--seconds S] [--size SIZE]\n"
             "                          [--cached] [--workers N] [--mode worker|loop]\n"
             "                          [--control PATH]\n"
             "  4K random and 1M sequential I/O at depths 1 and 32 through the async API on\n"
             "  file, thin and crypt-over-thin, against pread/pwrite on the same kind of file.\n"
             "  --seconds: per cell (default 1.2); --size: file and volume size (default 1G);\n"
             "  --cached: through the page cache instead of O_DIRECT (measures the software\n"
             "  path); --workers: async worker threads (default 32, the baseline's);\n"
             "  --mode: completions on the workers (default) or on a libuv loop;\n"
             "  --control PATH: the thin stack serves its control socket at PATH meanwhile\n");
      free(b);
      return 0;
    } else if (strcmp(argv[i], "--json") == 0) {
      b->json = true;
    } else if (strcmp(argv[i], "--mode") == 0 && i + 1 < argc) {
      i++;
      if (strcmp(argv[i], "loop") == 0)
        b->mode = TS_AIO_MODE_LOOP;
      else if (strcmp(argv[i], "worker") == 0)
        b->mode = TS_AIO_MODE_WORKER;
      else {
        ts_cli_err("bench io: --mode: \"%s\" is not loop or worker", argv[i]);
        goto out;
      }
    } else if (strcmp(argv[i], "--control") == 0 && i + 1 < argc) {
      b->control = argv[++i];
    } else if (strcmp(argv[i], "--cached") == 0) {
      b->direct = false;
    } else if (strcmp(argv[i], "--workers") == 0 && i + 1 < argc) {
      char *end;
      unsigned long w = strtoul(argv[++i], &end, 10);
      if (*end || w < 1 || w > 1024) {
        ts_cli_err("bench io: --workers: \"%s\" is not a count from 1 to 1024", argv[i]);
        goto out;
      }
      b->workers = (uint32_t)w;
    } else if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc) {
      b->base = argv[++i];
    } else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc) {
      char *end;
      b->seconds = strtod(argv[++i], &end);
      if (*end || !(b->seconds > 0 && b->seconds <= 3600)) {
        ts_cli_err("bench io: --seconds: \"%s\" is not a number of seconds in (0, 3600]", argv[i]);
        goto out;
      }
    } else if (strcmp(argv[i], "--size") == 0 && i + 1 < argc) {
      if (!ts_cli_size("--size", argv[++i], &b->size))
        goto out;
      if (b->size < (4u << 20) || b->size % (1u << 20)) {
        ts_cli_err("bench io: --size must be a multiple of 1M, at least 4M");
        goto out;
      }
    } else {
      ts_cli_err("bench io: unknown argument \"%s\" (thinstack bench io --help)", argv[i]);
      goto out;
    }
  }
  b->have[T_BASE] = b->have[T_FILE] = true;
  b->have[T_THIN] = ts_find_layer_type("thin") && ts_find_layer_type("thin-pool");
  b->have[T_CRYPT] = b->have[T_THIN] && ts_find_layer_type("crypt");

  snprintf(b->dir, sizeof b->dir, "%s/ts-bench-io-XXXXXX", b->base);
  if (!mkdtemp(b->dir)) {
    ts_cli_err("bench io: cannot create a folder in %s: %s", b->base, strerror(errno));
    status = 1;
    goto out;
  }
  status = 1;
  uv_loop_t loop;
  if (uv_loop_init(&loop) != 0) {
    rmdir(b->dir);
    goto out;
  }
  /* Blocking: in WORKER mode a slot comes back only once its callback has
   * returned, which may be just after the cell saw its last completion. */
  ts_aio_opts opts = { .struct_size = sizeof opts, .mode = b->mode, .flags = TS_AIO_BLOCK,
                       .loop = b->mode == TS_AIO_MODE_LOOP ? &loop : NULL,
                       .workers = b->workers, .depth = DEPTH_MAX };
  ts_aio_ctx *ctx = NULL;
  ts_error err = { 0 };
  int r = ts_aio_ctx_create(&opts, &ctx, &err);
  if (r)
    ts_cli_err("bench io: %s", err.msg);
  if (!r)
    r = run_cells(b, &loop, ctx);
  ts_aio_ctx_close(ctx);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  rmdir(b->dir);
  if (!r) {
    if (b->json)
      print_json(b);
    else
      print_table(b);
    status = 0;
  }
out:
  free(b);
  return status;
}
