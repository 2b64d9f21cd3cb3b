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
 *   fio           fio with ioengine=io_uring, direct=1 (or buffered with
 *                 --cached) at the cell's depth on another such file: the
 *                 peer a user would measure; only when fio is installed
 * thin and crypt columns appear only when those layer types are registered.
 * Every cell runs the baseline and then each column back to back, `--runs`
 * times over (default 3), and each figure is the median of those runs, with
 * the minimum and maximum beside it; ratios are of medians against the
 * baseline's. Every file and volume is prefilled the same way (1 MiB writes
 * through the same kind of descriptor: O_DIRECT unless --cached), since how
 * a file was written changes how fast it later takes random writes. Completions run on the async workers (--mode
 * worker, the default: a resubmitting callback keeps its worker, as a thread
 * calling pwrite in a loop does) or on a libuv loop (--mode loop: two thread
 * hand-offs per request, which small requests feel). By default every file is opened with
 * O_DIRECT and written in full first (so reads reach the disk rather than
 * unwritten extents): the disk as a VMM with cache=none sees it. --cached
 * goes through the page cache instead, which measures the software path (a
 * cached 4K pread costs about a microsecond, so thread hand-offs dominate)
 * and is at the mercy of writeback. After each write cell the target is
 * flushed, untimed, so dirty data does not spill into the next cell.
 *
 * --stack STACK.json [--dev NAME] runs the same cells on one device of any
 * stack instead (an rbd image, a thin volume over RBD, an nbd export): no
 * baseline and nothing prefilled, so the write cells come first and the
 * reads find what they wrote. The stack is the caller's: opened, measured,
 * flushed and closed, never created or removed here.
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
#define NTARGETS 5
#define RUNS_MAX 15

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

enum { T_BASE, T_FILE, T_THIN, T_CRYPT, T_FIO };
static const char *const target_names[NTARGETS] = { "pread/pwrite", "file", "thin", "crypt/thin",
                                                    "fio io_uring" };

/* One cell: every run's figure (IOPS or MB/s), and the ops and time of
 * the median run. */
struct result {
  uint64_t ops;
  double secs;
  bool done;
  int n;
  double v[RUNS_MAX];
};

struct bench {
  const char *base;
  char dir[4096];
  char stack_label[256];
  uint64_t size;
  double seconds;
  uint32_t workers;
  uint32_t mode;   /* ts_aio_mode: where completions run */
  bool json;
  bool direct;
  const char *control; /* --control: serve the thin stack's socket here */
  bool have[NTARGETS];
  int runs;
  struct result res[NTARGETS][NTESTS][NDEPTHS];
  const char *stack_path;   /* --stack: measure this stack's device alone */
  const char *stack_dev;    /* --dev: which device (default: the first export) */
  bool size_set;            /* --size given: caps the range used on a --stack device */
  bool skip[NTESTS];        /* --tests: the cells left out */
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
 * preallocated but unwritten extents never reach the disk. `fd` is of the
 * kind measured (O_DIRECT unless --cached), as the volumes' data file is:
 * a file laid out by buffered writes takes later O_DIRECT random writes at
 * a different speed. */
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

/* ------------------------------------------------------------------------ */
/* fio: the same cell through fio's io_uring engine on a file of its own    */

static int fio_cell(struct bench *b, const struct test *t, unsigned depth, struct result *res)
{
  char path[4200], cmd[8800];
  snprintf(path, sizeof path, "%s/fio.img", b->dir);
  const char *rw =
      t->random ? (t->write ? "randwrite" : "randread") : (t->write ? "write" : "read");
  long ms = (long)(b->seconds * 1000 + 0.5);
  snprintf(cmd, sizeof cmd,
           "fio --name=cell --filename='%s' --ioengine=io_uring --direct=%d --rw=%s --bs=%u"
           " --iodepth=%u --size=%llu --runtime=%ldms --time_based --norandommap --randrepeat=0"
           " --invalidate=0 --output-format=json 2>&1",
           path, b->direct ? 1 : 0, rw, t->bs, depth, (unsigned long long)b->size, ms > 0 ? ms : 1);
  FILE *f = popen(cmd, "r");
  if (!f)
    return -errno;
  size_t cap = 1 << 16, len = 0;
  char *out = malloc(cap);
  int r = out ? 0 : -ENOMEM;
  while (!r) {
    if (len + 4096 > cap) {
      char *n = realloc(out, cap *= 2);
      if (!n) {
        r = -ENOMEM;
        break;
      }
      out = n;
    }
    size_t k = fread(out + len, 1, cap - len - 1, f);
    if (!k)
      break;
    len += k;
  }
  int st = pclose(f);
  if (!r && st != 0)
    r = -EIO;
  json_t *j = NULL;
  if (!r) {
    out[len] = 0;
    const char *brace = strchr(out, '{'); /* fio may print notes first */
    j = brace ? json_loads(brace, JSON_DISABLE_EOF_CHECK, NULL) : NULL;
    json_t *job = json_array_get(json_object_get(j, "jobs"), 0);
    json_t *dir = json_object_get(job, t->write ? "write" : "read");
    json_t *ios = json_object_get(dir, "total_ios"), *rt = json_object_get(job, "job_runtime");
    if (!json_is_integer(ios) || !json_is_integer(rt) || json_integer_value(rt) <= 0)
      r = -EPROTO;
    else {
      res->ops = (uint64_t)json_integer_value(ios);
      res->secs = (double)json_integer_value(rt) / 1e3;
      res->done = true;
    }
  }
  if (r)
    ts_cli_err("bench io: fio %s at depth %u: %s%s%.300s", rw, depth,
               r == -EPROTO ? "no figures in its output" : ts_strerror(r), len ? ": " : "",
               out ? out : "");
  json_decref(j);
  free(out);
  if (!r && t->write) {
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd >= 0) {
      (void)fdatasync(fd);
      close(fd);
    }
  }
  return r;
}

static bool have_fio(void) { return system("fio --version >/dev/null 2>&1") == 0; }

/* Everything measured, open at once, so that each cell runs the baseline
 * and every target back to back: the disk's speed drifts over a run (host
 * caches, writeback), and ratios of neighbours are what stay comparable. */
struct targets {
  int fd;              /* the baseline's file */
  ts_stack *file, *thin;
  ts_dev *dev[NTARGETS];
};

/* A new file of --size at `path`, open as measured (O_DIRECT unless
 * --cached): written in full through that descriptor, or with --cached
 * preallocated. The fd, or -errno. */
static int open_prefilled(struct bench *b, const char *path)
{
  int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | (b->direct ? O_DIRECT : 0), 0600);
  if (fd < 0)
    return -errno;
  int r = b->direct ? prefill_fd(fd, b->size) : -posix_fallocate(fd, 0, (off_t)b->size);
  if (r) {
    close(fd);
    return r;
  }
  return fd;
}

/* The baseline's file and a `file` layer on it: written in full, or with
 * --cached preallocated. */
static int open_file_targets(struct bench *b, struct targets *tg)
{
  char path[4200];
  snprintf(path, sizeof path, "%s/raw.img", b->dir);
  int fd = open_prefilled(b, path);
  int r = fd < 0 ? fd : 0;
  if (r) {
    ts_cli_err("bench io: cannot prepare %s: %s%s", path, ts_strerror(r),
               r == -EINVAL && b->direct ? " (no O_DIRECT on this file system? try --cached)" : "");
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
  if (b->stack_path)
    return r;
  remove_file(b, "raw.img");
  remove_file(b, "fio.img");
  remove_file(b, "pool.meta");
  remove_file(b, "pool.data");
  return r;
}

/* --stack: the caller's device, in the T_FILE column. */
static int open_stack_target(struct bench *b, struct targets *tg)
{
  ts_error err = { 0 };
  int r = ts_stack_open_file(b->stack_path, NULL, &tg->file, &err);
  if (r) {
    ts_cli_err("bench io: %s", err.msg);
    return r;
  }
  ts_dev *d = b->stack_dev ? ts_stack_dev(tg->file, b->stack_dev)
                           : ts_stack_ndevs(tg->file) ? ts_stack_dev_at(tg->file, 0) : NULL;
  if (!d) {
    ts_cli_err("bench io: %s exports no device %s%s", b->stack_path,
               b->stack_dev ? "named " : "", b->stack_dev ? b->stack_dev : "at all");
    return -ENOENT;
  }
  const ts_limits *lim = ts_dev_limits(d);
  if (lim->read_only) {
    ts_cli_err("bench io: %s is read-only", ts_dev_name(d));
    return -EROFS;
  }
  uint64_t size = ts_dev_size(d) / (1u << 20) * (1u << 20);
  if (!b->size_set || b->size > size)
    b->size = size;
  if (b->size < (1u << 20)) {
    ts_cli_err("bench io: %s is smaller than 1M", ts_dev_name(d));
    return -EINVAL;
  }
  tg->dev[T_FILE] = d;
  snprintf(b->stack_label, sizeof b->stack_label, "%s", ts_dev_name(d));
  return 0;
}

static int run_cells(struct bench *b, uv_loop_t *loop, ts_aio_ctx *ctx)
{
  struct targets tg = { .fd = -1 };
  int r = b->stack_path ? open_stack_target(b, &tg) : open_file_targets(b, &tg);
  if (!r && b->have[T_THIN])
    r = open_thin_targets(b, &tg);
  if (!r && b->have[T_FIO]) {
    char path[4200];
    snprintf(path, sizeof path, "%s/fio.img", b->dir);
    int fd = open_prefilled(b, path);
    if (fd < 0) {
      r = fd;
      ts_cli_err("bench io: cannot prepare %s: %s", path, ts_strerror(r));
    } else {
      close(fd);
    }
  }
  if (!r && b->control) {
    /* A control client beside the data path: what its requests cost the
     * cells is what this measures. */
    ts_error err = { 0 };
    r = tg.thin ? ts_ctl_listen(tg.thin, b->control, &err)
                : ts_error_set(&err, -EOPNOTSUPP, "--control needs the thin layers");
    if (r)
      ts_cli_err("bench io: %s", err.msg);
  }
  uint64_t ncells = 0, ndone = 0;
  for (int k = 0; k < NTARGETS; k++)
    for (int ti = 0; ti < NTESTS; ti++)
      ncells += b->have[k] && !b->skip[ti] ? (uint64_t)NDEPTHS * (uint64_t)b->runs : 0;
  if (!r)
    ts_cli_progress_begin(ncells);
  /* Each cell's runs interleave the targets, so drift hits all alike. */
  for (int ti = 0; ti < NTESTS && !r; ti++)
    for (int di = 0; di < NDEPTHS && !r && !b->skip[ti]; di++)
      for (int run = 0; run < b->runs && !r; run++)
        for (int k = 0; k < NTARGETS && !r; k++) {
          if (!b->have[k])
            continue;
          struct result one = { 0 }, *res = &b->res[k][ti][di];
          const struct test *t = &tests[ti];
          r = k == T_BASE  ? base_cell(b, tg.fd, t, depths[di], &one)
              : k == T_FIO ? fio_cell(b, t, depths[di], &one)
                           : aio_cell(b, loop, ctx, tg.dev[k], t, depths[di], &one);
          if (r) {
            if (k != T_FIO)
              ts_cli_err("bench io: %s %s at depth %u: %s", target_names[k], t->name, depths[di],
                         ts_strerror(r));
            break;
          }
          res->ops += one.ops;
          res->secs += one.secs;
          res->done = true;
          res->v[res->n++] =
              one.secs > 0 ? (double)one.ops / one.secs * (t->bs == 4096 ? 1 : t->bs / 1e6) : 0;
          ts_cli_progress_set(++ndone);
        }
  ts_cli_progress_end(r == 0);
  int c = close_targets(b, &tg);
  return r ? r : c;
}

/* ------------------------------------------------------------------------ */
/* Report                                                                     */

static int cmp_double(const void *a, const void *b)
{
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* The median run's figure (IOPS or MB/s); *lo and *hi (may be NULL) the
 * smallest and largest. */
static double value_range(const struct result *r, double *lo, double *hi)
{
  double v[RUNS_MAX];
  if (!r->done || !r->n) {
    if (lo)
      *lo = 0;
    if (hi)
      *hi = 0;
    return 0;
  }
  memcpy(v, r->v, sizeof(double) * (size_t)r->n);
  qsort(v, (size_t)r->n, sizeof v[0], cmp_double);
  if (lo)
    *lo = v[0];
  if (hi)
    *hi = v[r->n - 1];
  return r->n % 2 ? v[r->n / 2] : (v[r->n / 2 - 1] + v[r->n / 2]) / 2;
}

static double value(const struct test *t, const struct result *r)
{
  (void)t;
  return value_range(r, NULL, NULL);
}

static void print_table(struct bench *b)
{
  char sz[32];
  ts_format_size(b->size, sz, sizeof sz);
  if (b->stack_path) {
    printf("bench io: %s of %s in %s, %.1f s per cell, %u async workers, completions on %s\n\n",
           sz, b->stack_label, b->stack_path, b->seconds, b->workers,
           b->mode == TS_AIO_MODE_WORKER ? "the workers" : "a libuv loop");
    printf("%-20s %5s %12s\n", "test", "depth", "value");
    for (int ti = 0; ti < NTESTS; ti++)
      for (int di = 0; di < NDEPTHS && !b->skip[ti]; di++)
        printf("%-20s %5u %12.0f\n", tests[ti].label, depths[di],
               value(&tests[ti], &b->res[T_FILE][ti][di]));
    return;
  }
  printf("bench io: %s files in %s (%s), %.1f s per cell, %u async workers, completions on %s;\n"
         "medians of %d runs, targets interleaved; ratios against the pread/pwrite median\n"
         "(depth 32 = %u threads), [min-max] of the runs against it\n\n",
         sz, b->base, b->direct ? "O_DIRECT" : "page cache", b->seconds, b->workers,
         b->mode == TS_AIO_MODE_WORKER ? "the workers" : "a libuv loop", b->runs, DEPTH_MAX);
  printf("%-20s %5s", "test", "depth");
  for (int k = 0; k < NTARGETS; k++)
    if (b->have[k])
      printf(k == T_BASE ? " %16s" : " %25s", target_names[k]);
  printf("\n");
  for (int ti = 0; ti < NTESTS; ti++)
    for (int di = 0; di < NDEPTHS && !b->skip[ti]; di++) {
      const struct test *t = &tests[ti];
      double blo, bhi, base = value_range(&b->res[T_BASE][ti][di], &blo, &bhi);
      char cell[64];
      snprintf(cell, sizeof cell, "%.0f [%.0f-%.0f]", base, blo, bhi);
      printf("%-20s %5u %16s", t->label, depths[di], cell);
      for (int k = T_FILE; k < NTARGETS; k++)
        if (b->have[k]) {
          double lo, hi, v = value_range(&b->res[k][ti][di], &lo, &hi);
          double q = base > 0 ? 1 / base : 0;
          snprintf(cell, sizeof cell, "%.0f %.2fx [%.2f-%.2f]", v, v * q, lo * q, hi * q);
          printf(" %25s", cell);
        }
      printf("\n");
    }
  const int peers[] = { T_BASE, T_FIO };
  for (int pi = 0; pi < 2 && b->have[T_THIN]; pi++) {
    if (!b->have[peers[pi]])
      continue;
    double worst = 1e9;
    const char *where = "";
    unsigned wd = 0;
    for (int ti = 0; ti < NTESTS; ti++)
      for (int di = 0; di < NDEPTHS && !b->skip[ti]; di++) {
        double base = value(&tests[ti], &b->res[peers[pi]][ti][di]);
        double v = value(&tests[ti], &b->res[T_THIN][ti][di]);
        if (base > 0 && v / base < worst) {
          worst = v / base;
          where = tests[ti].name;
          wd = depths[di];
        }
      }
    printf("%sthin (mapped blocks) against %s: worst ratio %.2fx (%s, depth %u)\n", pi ? "" : "\n",
           target_names[peers[pi]], worst, where, wd);
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
  json_object_set_new(o, "runs", json_integer(b->runs));
  if (b->stack_path)
    json_object_set_new(o, "stack", json_string(b->stack_path));
  else
    json_object_set_new(o, "baseline", json_string(target_names[T_BASE]));
  json_t *rows = json_array();
  for (int k = 0; k < NTARGETS; k++)
    for (int ti = 0; ti < NTESTS && b->have[k]; ti++)
      for (int di = 0; di < NDEPTHS && !b->skip[ti]; di++) {
        const struct test *t = &tests[ti];
        const struct result *r = &b->res[k][ti][di];
        double lo, hi, v = value_range(r, &lo, &hi), base = value(t, &b->res[T_BASE][ti][di]);
        json_t *row = json_object();
        json_object_set_new(row, "target", json_string(b->stack_path ? b->stack_label
                                                                     : target_names[k]));
        json_object_set_new(row, "test", json_string(t->name));
        json_object_set_new(row, "block_size", json_integer(t->bs));
        json_object_set_new(row, "depth", json_integer(depths[di]));
        json_object_set_new(row, "ops", json_integer((json_int_t)r->ops));
        json_object_set_new(row, "seconds", json_real(r->secs));
        json_object_set_new(row, t->bs == 4096 ? "iops" : "mb_per_s", json_real(v));
        json_object_set_new(row, "min", json_real(lo));
        json_object_set_new(row, "max", json_real(hi));
        if (!b->stack_path)
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

/* --tests: a comma-separated list of test names; the others are skipped
 * (the files and volumes are prefilled, so reads need no write cell). */
static bool parse_tests(struct bench *b, const char *list)
{
  for (int ti = 0; ti < NTESTS; ti++)
    b->skip[ti] = true;
  const char *p = list;
  while (*p) {
    size_t n = strcspn(p, ",");
    int ti = 0;
    while (ti < NTESTS && (strlen(tests[ti].name) != n || strncmp(tests[ti].name, p, n) != 0))
      ti++;
    if (ti == NTESTS) {
      ts_cli_err("bench io: --tests: \"%.*s\" is not seqwrite, randwrite, randread or seqread",
                 (int)n, p);
      return false;
    }
    b->skip[ti] = false;
    p += n + (p[n] == ',');
  }
  return true;
}

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
  b->runs = 3;
  bool no_fio = false;
  int status = 2;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
      printf(
          "usage: thinstack bench io [--json] [--dir DIR] [--seconds S] [--size SIZE] [--runs N]\n"
          "                          [--cached] [--workers N] [--mode worker|loop] [--no-fio]\n"
          "                          [--tests seqwrite,randwrite,randread,seqread]\n"
          "                          [--control PATH] [--stack STACK.json [--dev NAME]] [-p]\n"
          "  4K random and 1M sequential I/O at depths 1 and 32 through the async API on\n"
          "  file, thin and crypt-over-thin, against pread/pwrite on the same kind of file\n"
          "  and (when fio is installed, unless --no-fio) fio's io_uring engine on another.\n"
          "  --runs: runs per cell, targets interleaved, medians with min/max (default 3).\n"
          "  --tests: only these cells (default all; files and volumes are prefilled).\n"
          "  --stack: the same cells on one device of STACK.json (--dev, default the first\n"
          "  export), writes first; --size then caps the range used (default: all of it).\n"
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
    } else if (strcmp(argv[i], "--tests") == 0 && i + 1 < argc) {
      if (!parse_tests(b, argv[++i]))
        goto out;
    } else if (strcmp(argv[i], "--no-fio") == 0) {
      no_fio = true;
    } else if (strcmp(argv[i], "--runs") == 0 && i + 1 < argc) {
      char *end;
      unsigned long n = strtoul(argv[++i], &end, 10);
      if (*end || n < 1 || n > RUNS_MAX) {
        ts_cli_err("bench io: --runs: \"%s\" is not a count from 1 to %d", argv[i], RUNS_MAX);
        goto out;
      }
      b->runs = (int)n;
    } else if (strcmp(argv[i], "--workers") == 0 && i + 1 < argc) {
      char *end;
      unsigned long w = strtoul(argv[++i], &end, 10);
      if (*end || w < 1 || w > 1024) {
        ts_cli_err("bench io: --workers: \"%s\" is not a count from 1 to 1024", argv[i]);
        goto out;
      }
      b->workers = (uint32_t)w;
    } else if (strcmp(argv[i], "--stack") == 0 && i + 1 < argc) {
      b->stack_path = argv[++i];
    } else if (strcmp(argv[i], "--dev") == 0 && i + 1 < argc) {
      b->stack_dev = argv[++i];
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
      b->size_set = true;
      if (b->size < (4u << 20) || b->size % (1u << 20)) {
        ts_cli_err("bench io: --size must be a multiple of 1M, at least 4M");
        goto out;
      }
    } else {
      ts_cli_err("bench io: unknown argument \"%s\" (thinstack bench io --help)", argv[i]);
      goto out;
    }
  }
  if (b->stack_dev && !b->stack_path) {
    ts_cli_err("bench io: --dev needs --stack");
    goto out;
  }
  if (b->stack_path) {
    b->have[T_FILE] = true;
  } else {
    b->have[T_BASE] = b->have[T_FILE] = true;
    b->have[T_THIN] = ts_find_layer_type("thin") && ts_find_layer_type("thin-pool");
    b->have[T_CRYPT] = b->have[T_THIN] && ts_find_layer_type("crypt");
    b->have[T_FIO] = !no_fio && have_fio();
  }

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
