/* bench crypt: throughput of the crypt layer over a child device, next to
 * OpenSSL's own bulk AES-256-XTS over buffers of the request size, one IV
 * per whole buffer (what `openssl speed -evp aes-256-xts` measures), in the
 * same run on one thread. The ratio is then what the layer costs on top of
 * AES itself: its per-unit tweaks, the stack and the child.
 *
 * Columns: "OpenSSL 1T" is the baseline; "crypt 1T" is the layer with one
 * thread (ratio = crypt 1T / OpenSSL 1T); "crypt NT" is the layer with N
 * threads (scaling = crypt NT / crypt 1T): for 4K requests N client threads
 * submit concurrently (small requests run inline), for 1M requests one client
 * submits and the layer shares each request among N threads.
 *
 * The child is a `zero` layer by default (it drops writes and reads zeroes),
 * so the figures are the layer's own cost against AES; `--child memory`
 * adds the child's copy of every byte, as a RAM disk below would. Either
 * way the child's own work (a read's fill of the buffer) is part of what the
 * layer's column pays and the baseline does not, so "child" measures the
 * child alone in the same run, with the same requests, and "+child" is the
 * layer against OpenSSL and the child done one after the other (time per
 * byte added); "ratio" stays the raw one. */
#include "cli/cli.h"

#include <errno.h>
#include <libthinstack/layer.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct bench_opts {
  bool json;
  unsigned threads;
  double seconds;
  unsigned sector_size; /* 0 = both 512 and 4096 */
  uint64_t span;         /* child size */
  const char *child;     /* "zero" or "memory" */
  char key_hex[129];
  unsigned char key[64];
};

/* One measurement: bytes moved and seconds taken. */
struct tally {
  uint64_t bytes;
  double secs;
};

static double rate(const struct tally *t) { return t->secs > 0 ? (double)t->bytes / t->secs / 1e6 : 0; }

/* OpenSSL alone for `slice` seconds: one IV per `len`-byte buffer and one
 * EVP call per `unit` bytes of it. With unit == len that is one data unit
 * per buffer (the baseline); with the sector size it is what `openssl speed
 * -bytes SECTOR` measures: XTS's own cost per data unit, without the EVP
 * tweak setup, which bounds any per-sector XTS built on it. */
static int slice_evp(const struct bench_opts *o, bool enc, size_t len, size_t unit, double slice,
                     struct tally *t)
{
  unsigned char *in = malloc(len), *out = malloc(len);
  EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
  int r = -EIO;
  if (!in || !out || !ctx || !EVP_CipherInit_ex2(ctx, EVP_aes_256_xts(), o->key, NULL, enc, NULL))
    goto out;
  memset(in, 0x5a, len);
  uint64_t sector = 0;
  double t0 = ts_cli_now(), el;
  do {
    unsigned char iv[16] = { 0 };
    int n;
    for (int i = 0; i < 8; i++)
      iv[i] = (unsigned char)(sector >> (8 * i));
    if (!EVP_CipherInit_ex2(ctx, NULL, NULL, iv, -1, NULL))
      goto out;
    for (size_t p = 0; p < len; p += unit)
      if (!EVP_CipherUpdate(ctx, out + p, &n, in + p, (int)unit))
        goto out;
    sector += len / 512;
    t->bytes += len;
    el = ts_cli_now() - t0;
  } while (el < slice);
  t->secs += el;
  r = 0;
out:
  EVP_CIPHER_CTX_free(ctx);
  free(in);
  free(out);
  return r;
}

struct client {
  ts_dev *dev;
  bool write;
  size_t len;
  uint64_t base, span;
  double seconds;
  uint64_t bytes;
  double elapsed;
  int err;
};

static void *client_main(void *arg)
{
  struct client *c = arg;
  unsigned char *buf = malloc(c->len);
  if (!buf) {
    c->err = -ENOMEM;
    return NULL;
  }
  memset(buf, 0xa5, c->len);
  uint64_t off = 0;
  double t0 = ts_cli_now();
  do {
    c->err = c->write ? ts_pwrite(c->dev, buf, c->len, c->base + off, 0)
                      : ts_pread(c->dev, buf, c->len, c->base + off);
    off = (off + c->len) % c->span;
    c->bytes += c->len;
    c->elapsed = ts_cli_now() - t0;
  } while (!c->err && c->elapsed < c->seconds);
  free(buf);
  return NULL;
}

static ts_stack *open_bench_stack(const struct bench_opts *o, unsigned ss, unsigned threads,
                                  ts_dev **dev)
{
  char json[1024];
  snprintf(json, sizeof json,
           "{ \"version\": 1, \"layers\": {"
           " \"mem\": { \"type\": \"%s\", \"size\": %llu },"
           " \"c\": { \"type\": \"crypt\", \"child\": \"mem\", \"key\": \"%s\","
           " \"sector_size\": %u, \"threads\": %u } }, \"exports\": [\"c\"] }",
           o->child, (unsigned long long)o->span, o->key_hex, ss, threads);
  ts_stack *s = NULL;
  ts_error err = { 0 };
  if (ts_stack_open_string(json, NULL, NULL, &s, &err)) {
    ts_cli_err("bench crypt: %s", err.msg);
    return NULL;
  }
  *dev = ts_stack_dev(s, "c");
  /* Fill the child once so every measured read and write finds its memory. */
  if (ts_write_zeroes(*dev, 0, o->span, 0)) {
    ts_cli_err("bench crypt: cannot fill the child");
    ts_stack_close(s, NULL);
    return NULL;
  }
  return s;
}

/* The layer for `slice` seconds with `clients` concurrent submitters, each
 * walking its own part of the device. */
static int slice_layer(const struct bench_opts *o, ts_dev *dev, bool write, size_t len,
                       unsigned clients, double slice, struct tally *t)
{
  struct client c[64];
  pthread_t tid[64];
  uint64_t per = o->span / clients / len * len;
  double elapsed = 0;
  unsigned started = 0;
  if (per == 0)
    return -EINVAL;
  for (unsigned i = 0; i < clients; i++) {
    c[i] = (struct client){ dev, write, len, i * per, per, slice, 0, 0, 0 };
    if (pthread_create(&tid[i], NULL, client_main, &c[i]) != 0)
      break;
    started++;
  }
  int err = started == clients ? 0 : -EAGAIN;
  for (unsigned i = 0; i < started; i++) {
    pthread_join(tid[i], NULL);
    t->bytes += c[i].bytes;
    if (c[i].elapsed > elapsed)
      elapsed = c[i].elapsed;
    if (c[i].err && !err)
      err = c[i].err;
  }
  t->secs += elapsed;
  if (err)
    ts_cli_err("bench crypt: %s failed: %s", write ? "write" : "read", ts_strerror(err));
  return err;
}

static void usage(FILE *f)
{
  fprintf(f, "usage: thinstack bench crypt [--json] [--threads N] [--seconds S] "
             "[--sector-size 512|1024|2048|4096] [--span SIZE] [--child zero|memory]\n");
}

int ts_cli_bench_crypt(int argc, char **argv)
{
  struct bench_opts o = { .threads = 2, .seconds = 1, .span = 4 << 20, .child = "zero" };
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    char *end;
    if (strcmp(a, "--json") == 0) {
      o.json = true;
    } else if (strcmp(a, "--threads") == 0 && i + 1 < argc) {
      long v = strtol(argv[++i], &end, 10);
      if (*end || v < 1 || v > 64) {
        ts_cli_err("bench crypt: --threads takes 1 to 64");
        return 2;
      }
      o.threads = (unsigned)v;
    } else if (strcmp(a, "--seconds") == 0 && i + 1 < argc) {
      o.seconds = strtod(argv[++i], &end);
      if (*end || !(o.seconds > 0 && o.seconds <= 60)) {
        ts_cli_err("bench crypt: --seconds takes a number above 0, at most 60");
        return 2;
      }
    } else if (strcmp(a, "--sector-size") == 0 && i + 1 < argc) {
      long v = strtol(argv[++i], &end, 10);
      if (*end || (v != 512 && v != 1024 && v != 2048 && v != 4096)) {
        ts_cli_err("bench crypt: --sector-size takes 512, 1024, 2048 or 4096");
        return 2;
      }
      o.sector_size = (unsigned)v;
    } else if (strcmp(a, "--span") == 0 && i + 1 < argc) {
      if (!ts_cli_size("--span", argv[++i], &o.span))
        return 2;
      if (o.span < (2u << 20) || o.span > (1ull << 32) || o.span % (1u << 20)) {
        ts_cli_err("bench crypt: --span takes a multiple of 1M from 2M to 4G");
        return 2;
      }
    } else if (strcmp(a, "--child") == 0 && i + 1 < argc) {
      o.child = argv[++i];
      if (strcmp(o.child, "zero") != 0 && strcmp(o.child, "memory") != 0) {
        ts_cli_err("bench crypt: --child takes zero or memory");
        return 2;
      }
    } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      usage(stdout);
      return 0;
    } else {
      ts_cli_err("bench crypt: unexpected argument \"%s\"", a);
      usage(stderr);
      return 2;
    }
  }
  /* A fresh random key; XTS wants its two halves to differ. */
  do {
    if (RAND_bytes(o.key, sizeof o.key) != 1) {
      ts_cli_err("bench crypt: no random key");
      return 1;
    }
  } while (memcmp(o.key, o.key + 32, 32) == 0);
  for (int i = 0; i < 64; i++)
    snprintf(o.key_hex + 2 * i, 3, "%02x", o.key[i]);

  unsigned sizes[4] = { 512, 4096 };
  unsigned nsizes = 2;
  if (o.sector_size) {
    sizes[0] = o.sector_size;
    nsizes = 1;
  }
  static const size_t reqs[] = { 4096, 1 << 20 };
  json_t *rows = json_array();
  if (!o.json) {
    printf("crypt: aes-xts-plain64, 512-bit key, %s child of %llu KiB, %.2f s per cell\n",
           o.child, (unsigned long long)(o.span >> 10), o.seconds);
    printf("OpenSSL 1T: bulk AES-256-XTS over one request-sized buffer, one IV per buffer\n");
    printf("per unit: OpenSSL's XTS called once per sector-sized unit (openssl speed -bytes "
           "SECTOR), the floor of any per-sector XTS\n");
    printf("child: the child alone, same requests; +child: crypt 1T against OpenSSL 1T and the "
           "child one after the other\n");
    printf("crypt %uT: 4K = %u client threads; 1M = one client, each request shared by %u "
           "threads\n\n", o.threads, o.threads, o.threads);
    printf("%6s  %-5s  %7s  %13s  %13s  %13s  %6s  %7s  %13s  %6s  %13s  %7s\n", "sector", "op",
           "request", "OpenSSL 1T", "child", "crypt 1T", "ratio", "+child", "per unit", "ratio",
           "crypt NT", "scaling");
  }
  int status = 0;
  for (unsigned si = 0; si < nsizes && !status; si++) {
    unsigned ss = sizes[si];
    ts_dev *one_dev = NULL, *many_dev = NULL;
    ts_stack *one = open_bench_stack(&o, ss, 1, &one_dev);
    ts_stack *many = one ? open_bench_stack(&o, ss, o.threads, &many_dev) : NULL;
    ts_dev *child_dev = one ? ts_stack_node(one, "mem") : NULL;
    if (!many || !child_dev)
      status = 1;
    if (many && !child_dev)
      ts_cli_err("bench crypt: the stack has no child layer \"mem\"");
    for (int w = 1; w >= 0 && !status; w--) {
      for (size_t ri = 0; ri < sizeof reqs / sizeof reqs[0] && !status; ri++) {
        size_t len = reqs[ri];
        unsigned clients = len >= (1u << 20) ? 1 : o.threads;
        struct tally evp = { 0 }, unit = { 0 }, child = { 0 }, t1 = { 0 }, tn = { 0 };
        /* Short alternating slices, so all of them see the same machine load. */
        unsigned rounds = (unsigned)(o.seconds / 0.1) + 1;
        double slice = o.seconds / rounds;
        for (unsigned k = 0; k < rounds && !status; k++)
          status = slice_evp(&o, w, len, len, slice, &evp) ||
                   slice_evp(&o, w, len, ss, slice, &unit) ||
                   slice_layer(&o, child_dev, w, len, 1, slice, &child) ||
                   slice_layer(&o, one_dev, w, len, 1, slice, &t1) ||
                   slice_layer(&o, many_dev, w, len, clients, slice, &tn);
        if (status) {
          status = 1;
          break;
        }
        double re = rate(&evp), ru = rate(&unit), rc = rate(&child), r1 = rate(&t1), rn = rate(&tn);
        /* OpenSSL then the child: their times per byte add up. */
        double rec = re > 0 && rc > 0 ? 1 / (1 / re + 1 / rc) : 0;
        if (o.json) {
          json_array_append_new(
              rows,
              json_pack("{s:i, s:s, s:I, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f}",
                        "sector_size", (int)ss, "op", w ? "write" : "read", "request",
                        (json_int_t)len, "openssl_mbps", re, "child_mbps", rc, "crypt_1t_mbps", r1,
                        "ratio", r1 / re, "ratio_with_child", r1 / rec, "openssl_per_unit_mbps", ru,
                        "ratio_per_unit", r1 / ru, "crypt_nt_mbps", rn, "scaling", rn / r1));
        } else {
          printf("%6u  %-5s  %7s  %8.0f MB/s  %8.0f MB/s  %8.0f MB/s  %5.2fx  %6.2fx  %8.0f MB/s"
                 "  %5.2fx  %8.0f MB/s  %6.2fx\n",
                 ss, w ? "write" : "read", len >= (1u << 20) ? "1M" : "4K", re, rc, r1, r1 / re,
                 r1 / rec, ru, r1 / ru, rn, rn / r1);
          fflush(stdout);
        }
      }
    }
    ts_stack_close(many, NULL);
    ts_stack_close(one, NULL);
  }

  if (o.json && !status) {
    json_t *doc = json_pack("{s:s, s:s, s:i, s:i, s:f, s:I, s:s, s:o}", "bench", "crypt", "cipher",
                            "aes-xts-plain64", "key_bits", 512, "threads", (int)o.threads,
                            "seconds", o.seconds, "span_bytes", (json_int_t)o.span, "child", o.child, "rows", rows);
    char *text = json_dumps(doc, JSON_INDENT(2));
    if (text)
      puts(text);
    free(text);
    json_decref(doc);
  } else {
    json_decref(rows);
  }
  OPENSSL_cleanse(o.key, sizeof o.key);
  OPENSSL_cleanse(o.key_hex, sizeof o.key_hex);
  return status;
}
