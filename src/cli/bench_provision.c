/* bench provision: what PROVISION costs on a thin volume, against writing
 * zeroes through the volume and against the file system's own fallocate of
 * the same size (the physical limit), all measured in the same run on the
 * same file system.
 *
 * For each size, every measurement gets a fresh pool (metadata and data on
 * new sparse files in a temporary folder) and a fresh volume:
 *   write      ts_pwrite of real zero buffers (1 MiB each) over the volume
 *   provision  ts_provision over the volume
 *   wzeroes    ts_write_zeroes without MAY_UNMAP (provision + zero guarantee)
 *   fallocate  fallocate(mode 0) of a plain file
 * Each is timed alone ("op") and with the flush that makes it durable
 * ("op+flush": thin FLUSH = data file fdatasync + metadata commit; for
 * fallocate, fdatasync). Ratios use op+flush. Then, at the largest size,
 * the time to snapshot an empty volume and a fully mapped one. */
#include "cli/cli.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>



struct timing {
  double op, durable; /* seconds; durable includes the flush */
  double min, max;    /* of durable, over the runs */
};

struct bench {
  const char *dir;
  int seq;
  bool zero_data; /* --data zero: a zero layer holds the data, only metadata is timed */
  char meta[4096], data[4096];
};

/* The metadata file: 1 GiB per TiB of 64K blocks holds every mapping (about
 * 16.7 bytes each in full leaves) and the space maps, with room to spare. */
static uint64_t meta_size(uint64_t size)
{
  uint64_t m = size / 1024;
  return m < (256u << 20) ? (256u << 20) : (m + (1u << 20) - 1) & ~(uint64_t)((1u << 20) - 1);
}

static ts_stack *bench_pool(struct bench *b, uint64_t size, ts_dev **vol)
{
  b->seq++;
  snprintf(b->meta, sizeof b->meta, "%s/pool%d.meta", b->dir, b->seq);
  snprintf(b->data, sizeof b->data, "%s/pool%d.data", b->dir, b->seq);
  char sz[32], msz[32], data[4200];
  ts_format_size(size, sz, sizeof sz);
  ts_format_size(meta_size(size), msz, sizeof msz);
  if (b->zero_data)
    snprintf(data, sizeof data, "{ \"type\": \"zero\", \"size\": \"%s\" }", sz);
  else
    snprintf(data, sizeof data,
             "{ \"type\": \"file\", \"path\": \"%s\", \"size\": \"%s\", \"create\": true }",
             b->data, sz);
  char *json = NULL;
  if (asprintf(
          &json,
          "{ \"version\": 1, \"layers\": {"
          " \"meta\": { \"type\": \"file\", \"path\": \"%s\", \"size\": \"%s\", \"create\": true },"
          " \"data\": %s,"
          " \"pool\": { \"type\": \"thin-pool\", \"metadata\": \"meta\", \"data\": \"data\","
          "   \"block_size\": \"64K\", \"create\": true, \"commit_interval\": 0 },"
          " \"vol\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 1, \"size\": \"%s\", \"create\": true } },"
          " \"exports\": [\"vol\"] }",
          b->meta, msz, data, sz) < 0)
    return NULL;
  ts_stack *s = NULL;
  ts_error err = { 0 };
  int r = ts_stack_open_string(json, b->dir, NULL, &s, &err);
  free(json);
  if (r) {
    ts_cli_err("bench provision: %s", err.msg);
    return NULL;
  }
  ts_flush(ts_stack_dev(s, "vol")); /* the volume's creation is not part of any timing */
  *vol = ts_stack_dev(s, "vol");
  return s;
}

static void bench_drop(struct bench *b, ts_stack *s)
{
  ts_stack_close(s, NULL);
  unlink(b->meta);
  unlink(b->data);
}

enum what { W_WRITE, W_PROVISION, W_WZEROES };

static int measure_once(struct bench *b, uint64_t size, enum what w, struct timing *t)
{
  ts_dev *v;
  ts_stack *s = bench_pool(b, size, &v);
  if (!s)
    return -1;
  int r = 0;
  double t0 = ts_cli_now();
  if (w == W_WRITE) {
    size_t chunk = 1u << 20;
    void *zero = calloc(1, chunk);
    if (!zero)
      r = -ENOMEM;
    for (uint64_t off = 0; off < size && !r; off += chunk)
      r = ts_pwrite(v, zero, chunk, off, 0);
    free(zero);
  } else if (w == W_PROVISION) {
    r = ts_provision(v, 0, size);
  } else {
    r = ts_write_zeroes(v, 0, size, 0);
  }
  double t1 = ts_cli_now();
  if (!r)
    r = ts_flush(v);
  double t2 = ts_cli_now();
  t->op = t1 - t0;
  t->durable = t2 - t0;
  if (r)
    ts_cli_err("bench provision: %s of %llu bytes failed: %s",
               w == W_WRITE ? "writing zeroes" : w == W_PROVISION ? "provision" : "write_zeroes",
               (unsigned long long)size, ts_strerror(r));
  bench_drop(b, s);
  return r ? -1 : 0;
}

static int measure_fallocate_once(struct bench *b, uint64_t size, struct timing *t)
{
  char path[4096];
  snprintf(path, sizeof path, "%s/plain.img", b->dir);
  int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    ts_cli_err("bench provision: %s: %s", path, strerror(errno));
    return -1;
  }
  double t0 = ts_cli_now();
  int r = fallocate(fd, 0, 0, (off_t)size);
  double t1 = ts_cli_now();
  if (!r)
    r = fdatasync(fd);
  double t2 = ts_cli_now();
  if (r)
    ts_cli_err("bench provision: fallocate of %llu bytes: %s", (unsigned long long)size, strerror(errno));
  close(fd);
  unlink(path);
  t->op = t1 - t0;
  t->durable = t2 - t0;
  return r ? -1 : 0;
}

/* The file system's floor for a --data zero provision: write the bytes of
 * its mapping leaves (254 mappings per 4 KiB leaf) into a file reserved
 * with fallocate, as the metadata file is, then fdatasync. */
static int measure_floor_once(struct bench *b, uint64_t size, struct timing *t)
{
  uint64_t leaves = (size / 65536 + 253) / 254, bytes = leaves * 4096;
  size_t chunk = 1u << 20;
  char path[4096];
  snprintf(path, sizeof path, "%s/floor.img", b->dir);
  int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  void *zero = calloc(1, chunk);
  int r = fd < 0 || !zero ? -1 : fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, (off_t)bytes);
  if (!r)
    r = fdatasync(fd);
  double t0 = ts_cli_now();
  for (uint64_t off = 0; off < bytes && !r; off += chunk) {
    size_t n = bytes - off < chunk ? (size_t)(bytes - off) : chunk;
    r = pwrite(fd, zero, n, (off_t)off) == (ssize_t)n ? 0 : -1;
  }
  double t1 = ts_cli_now();
  if (!r)
    r = fdatasync(fd);
  double t2 = ts_cli_now();
  if (r)
    ts_cli_err("bench provision: writing %llu bytes to %s: %s", (unsigned long long)bytes, path,
               strerror(errno));
  free(zero);
  if (fd >= 0)
    close(fd);
  unlink(path);
  t->op = t1 - t0;
  t->durable = t2 - t0;
  return r ? -1 : 0;
}

static int cmp_double(const void *a, const void *b)
{
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* The median of `runs` measurements (each on a fresh pool), op and +flush
 * taken separately. W_FALLOCATE: the plain file. */
#define W_FALLOCATE 99
#define W_FLOOR 98
static int measure(struct bench *b, uint64_t size, int w, int runs, struct timing *t)
{
  double op[16], du[16];
  for (int i = 0; i < runs; i++) {
    struct timing x;
    int r = w == W_FALLOCATE ? measure_fallocate_once(b, size, &x)
            : w == W_FLOOR   ? measure_floor_once(b, size, &x)
                             : measure_once(b, size, (enum what)w, &x);
    if (r)
      return r;
    op[i] = x.op;
    du[i] = x.durable;
  }
  qsort(op, (size_t)runs, sizeof op[0], cmp_double);
  qsort(du, (size_t)runs, sizeof du[0], cmp_double);
  t->op = op[runs / 2];
  t->durable = du[runs / 2];
  t->min = du[0];
  t->max = du[runs - 1];
  return 0;
}

/* Snapshot time of an empty and of a fully provisioned volume. */
static int measure_snapshots(struct bench *b, uint64_t size, double *empty, double *full)
{
  ts_dev *v;
  ts_stack *s = bench_pool(b, size, &v);
  if (!s)
    return -1;
  ts_dev *pool = ts_stack_node(s, "pool");
  ts_error err = { 0 };
  double t0 = ts_cli_now();
  int r = ts_pool_create_snap(pool, 2, 1, &err);
  *empty = ts_cli_now() - t0;
  if (!r)
    r = ts_pool_delete_thin(pool, 2, &err);
  if (!r && (r = ts_provision(v, 0, size)) == 0)
    r = ts_flush(v);
  if (!r) {
    t0 = ts_cli_now();
    r = ts_pool_create_snap(pool, 3, 1, &err);
    *full = ts_cli_now() - t0;
  }
  if (r)
    ts_cli_err("bench provision: snapshot: %s", err.msg[0] ? err.msg : ts_strerror(r));
  bench_drop(b, s);
  return r ? -1 : 0;
}

static void ms(char *buf, size_t n, double s)
{
  if (s < 10)
    snprintf(buf, n, "%.1f ms", s * 1e3);
  else
    snprintf(buf, n, "%.2f s", s);
}

int ts_cli_bench_provision(int argc, char **argv)
{
  const char *sizes = "512M,1G,2G,4G,8G", *dir = NULL;
  bool json = false, no_write = false, zero_data = false;
  int runs = 3;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--runs") && i + 1 < argc) {
      runs = atoi(argv[++i]);
      if (runs < 1 || runs > 15) {
        ts_cli_err("bench provision: --runs takes 1 to 15");
        return 2;
      }
    } else if (!strcmp(argv[i], "--sizes") && i + 1 < argc)
      sizes = argv[++i];
    else if (!strcmp(argv[i], "--dir") && i + 1 < argc)
      dir = argv[++i];
    else if (!strcmp(argv[i], "--json"))
      json = true;
    else if (!strcmp(argv[i], "--no-write"))
      no_write = true;
    else if (!strcmp(argv[i], "--data") && i + 1 < argc) {
      const char *d = argv[++i];
      if (!strcmp(d, "zero"))
        zero_data = true;
      else if (strcmp(d, "file")) {
        ts_cli_err("bench provision: --data takes file or zero, not \"%s\"", d);
        return 2;
      }
    } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
      printf("usage: thinstack bench provision [--sizes 512M,1G,2G,4G,8G] [--dir DIR] [--runs N]\n"
             "                                 [--data file|zero] [--no-write] [--json]\n"
             "  Times writing zeroes, PROVISION and WRITE_ZEROES through a thin volume on a\n"
             "  pool over sparse files in a temporary folder under DIR (default $TMPDIR or\n"
             "  /tmp), against fallocate of a plain file of the same size. Each figure is the\n"
             "  median of N runs (default 3) on fresh files; writing zeroes runs once\n"
             "  (--no-write skips it). --data zero puts the pool's data on a zero layer, so\n"
             "  PROVISION+flush is the metadata's own cost (mappings, space map, commit).\n");
      return 0;
    } else {
      ts_cli_err("bench provision: unexpected argument \"%s\"", argv[i]);
      return 2;
    }
  }
  uint64_t sz[32];
  int nsz = 0;
  char *list = strdup(sizes);
  for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
    if (nsz == 32 || !ts_cli_size("bench provision: --sizes", tok, &sz[nsz])) {
      free(list);
      return 2;
    }
    if (sz[nsz] == 0 || sz[nsz] % 65536) {
      ts_cli_err("bench provision: --sizes: %s is not a non-zero multiple of 64K", tok);
      free(list);
      return 2;
    }
    nsz++;
  }
  free(list);
  if (!nsz) {
    ts_cli_err("bench provision: --sizes is empty");
    return 2;
  }
  const char *base = dir ? dir : getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s/thinstack-bench-XXXXXX", base);
  if (!mkdtemp(tmp)) {
    ts_cli_err("bench provision: cannot make a folder under %s: %s", base, strerror(errno));
    return 1;
  }
  struct bench b = { .dir = tmp, .zero_data = zero_data };
  json_t *rows = json_array();
  int status = 0;
  if (!json && zero_data)
    printf(
        "thin volume on a zero data layer (metadata on a file under %s); 64K pool blocks.\n"
        "PROVISION of the whole volume: op = the request alone; +flush = with the metadata commit.\n"
        "Medians of %d runs, [min, max] of +flush. floor = the file system writing the same\n"
        "mapping leaves (4 KiB per 254 blocks) into a fallocated file, + fdatasync.\n\n"
        "%6s | %10s %10s %21s | %10s | %10s %21s | %8s\n",
        base, runs, "size", "op", "+flush", "[min, max]", "ms/GiB", "floor", "[min, max]",
        "/floor");
  else if (!json)
    printf("thin volume over sparse files on the file system of %s; 64K pool blocks.\n"
           "op = the request alone; +flush = until durable (thin: data fdatasync + metadata commit).\n"
           "Medians of %d runs (writing zeroes: 1). Ratios use +flush times.\n\n"
           "%6s | %-21s | %-21s | %-21s | %-21s | %8s %8s %8s\n"
           "%6s | %10s %10s | %10s %10s | %10s %10s | %10s %10s | %8s %8s %8s\n",
           base, runs, "size", "write zeroes", "PROVISION", "WRITE_ZEROES", "fallocate (file)", "prov/", "wz/",
           "write/", "", "op", "+flush", "op", "+flush", "op", "+flush", "op", "+flush", "falloc", "prov",
           "prov");
  for (int i = 0; i < nsz && !status; i++) {
    struct timing tw = { 0, 0, 0, 0 }, tp, tz, tf;
    char s[32];
    ts_format_size(sz[i], s, sizeof s);
    double gib = (double)sz[i] / (1u << 30);
    if (zero_data) {
      struct timing tl;
      if (measure(&b, sz[i], W_PROVISION, runs, &tp) || measure(&b, sz[i], W_FLOOR, runs, &tl)) {
        status = 1;
        break;
      }
      if (json) {
        json_array_append_new(
            rows, json_pack("{s:s,s:I,s:s,s:{s:f,s:f,s:f,s:f},s:f,s:{s:f,s:f,s:f}}", "size", s,
                            "bytes", (json_int_t)sz[i], "data", "zero", "provision", "op_s", tp.op,
                            "flush_s", tp.durable, "flush_min_s", tp.min, "flush_max_s", tp.max,
                            "ms_per_gib", tp.durable * 1e3 / gib, "floor", "flush_s", tl.durable,
                            "flush_min_s", tl.min, "flush_max_s", tl.max));
      } else {
        char c[7][32], mm[48], fm[48];
        ms(c[0], 32, tp.op), ms(c[1], 32, tp.durable), ms(c[2], 32, tp.min), ms(c[3], 32, tp.max);
        ms(c[4], 32, tl.durable), ms(c[5], 32, tl.min), ms(c[6], 32, tl.max);
        snprintf(mm, sizeof mm, "[%s, %s]", c[2], c[3]);
        snprintf(fm, sizeof fm, "[%s, %s]", c[5], c[6]);
        printf("%6s | %10s %10s %21s | %10.3f | %10s %21s | %7.2fx\n", s, c[0], c[1], mm,
               tp.durable * 1e3 / gib, c[4], fm, tp.durable / tl.durable);
        fflush(stdout);
      }
      continue;
    }
    if ((!no_write && measure(&b, sz[i], W_WRITE, 1, &tw)) ||
        measure(&b, sz[i], W_PROVISION, runs, &tp) || measure(&b, sz[i], W_WZEROES, runs, &tz) ||
        measure(&b, sz[i], W_FALLOCATE, runs, &tf)) {
      status = 1;
      break;
    }
    if (json) {
      json_t *row =
          json_pack("{s:s,s:I,s:s,s:{s:f,s:f,s:f,s:f},s:{s:f,s:f},s:{s:f,s:f,s:f,s:f}}", "size", s,
                    "bytes", (json_int_t)sz[i], "data", "file", "provision", "op_s", tp.op,
                    "flush_s", tp.durable, "flush_min_s", tp.min, "flush_max_s", tp.max,
                    "write_zeroes", "op_s", tz.op, "flush_s", tz.durable, "fallocate", "op_s",
                    tf.op, "flush_s", tf.durable, "flush_min_s", tf.min, "flush_max_s", tf.max);
      if (!no_write)
        json_object_set_new(row, "write_zero_buffers",
                            json_pack("{s:f,s:f}", "op_s", tw.op, "flush_s", tw.durable));
      json_array_append_new(rows, row);
    } else {
      char c[8][32], wr[16] = "-";
      ms(c[0], 32, tw.op), ms(c[1], 32, tw.durable), ms(c[2], 32, tp.op), ms(c[3], 32, tp.durable);
      ms(c[4], 32, tz.op), ms(c[5], 32, tz.durable), ms(c[6], 32, tf.op), ms(c[7], 32, tf.durable);
      if (no_write)
        strcpy(c[0], "-"), strcpy(c[1], "-");
      else
        snprintf(wr, sizeof wr, "%7.0fx", tw.durable / tp.durable);
      printf("%6s | %10s %10s | %10s %10s | %10s %10s | %10s %10s | %7.2fx %7.2fx %8s\n", s, c[0],
             c[1], c[2], c[3], c[4], c[5], c[6], c[7], tp.durable / tf.durable,
             tz.durable / tp.durable, wr);
      fflush(stdout);
    }
  }
  double se = 0, sf = 0;
  if (!status && measure_snapshots(&b, sz[nsz - 1], &se, &sf) == 0) {
    char s[32], a[32], c[32];
    ts_format_size(sz[nsz - 1], s, sizeof s);
    if (json) {
      json_t *o = json_pack("{s:o,s:{s:s,s:f,s:f}}", "sizes", rows, "snapshot", "size", s, "empty_s", se,
                            "fully_mapped_s", sf);
      rows = NULL;
      char *txt = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
      printf("%s\n", txt);
      free(txt);
      json_decref(o);
    } else {
      ms(a, sizeof a, se);
      ms(c, sizeof c, sf);
      printf("\nsnapshot of a %s volume (includes the commit): empty %s, fully mapped %s (%.2fx)\n", s, a, c,
             sf / se);
    }
  } else {
    status = 1;
  }
  json_decref(rows);
  rmdir(tmp);
  return status;
}
