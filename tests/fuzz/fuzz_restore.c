/* Fuzz target: thin_dump XML restored onto a 1 MiB metadata device.
 *
 * Asserted: a restore that succeeds leaves metadata the checker calls clean
 * (restore applies check's rules before writing), and a second restore of
 * the same XML, built beside the first pool, either succeeds with clean
 * metadata again or fails and leaves the first pool exactly as it was. */
#include "fuzz.h"
#include "pdata/pdata-internal.h"
#include "pdata/thin-metadata.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define META_BLOCKS 256u
#define META_BYTES ((size_t)META_BLOCKS * PD_BLOCK_SIZE)

struct membdev { uint8_t *buf; };

static int m_read(void *ctx, uint64_t block, uint32_t count, void *buf)
{
  struct membdev *m = ctx;
  memcpy(buf, m->buf + block * PD_BLOCK_SIZE, (size_t)count * PD_BLOCK_SIZE);
  return 0;
}

static int m_write(void *ctx, uint64_t block, uint32_t count, const void *buf)
{
  struct membdev *m = ctx;
  memcpy(m->buf + block * PD_BLOCK_SIZE, buf, (size_t)count * PD_BLOCK_SIZE);
  return 0;
}

static int m_flush(void *ctx) { (void)ctx; return 0; }

static const struct pd_bdev_ops mem_ops = { m_read, m_write, m_flush, NULL, NULL };

static void report(void *arg, enum pd_check_level lvl, const char *msg)
{
  (void)arg;
  if (lvl == PD_CHECK_ERROR)
    fprintf(stderr, "check: %s\n", msg);
}

static void assert_clean(const struct pd_bdev *b, const char *when)
{
  struct pd_check_result res;
  int r = pd_check(b, report, NULL, &res);
  if (r || res.errors) {
    fprintf(stderr, "%s: check %d, %llu errors\n", when, r, (unsigned long long)res.errors);
    abort();
  }
}

static int restore(const struct pd_bdev *b, const uint8_t *data, size_t size, ts_error *err)
{
  /* fmemopen of 0 bytes fails: an empty file is what it means */
  FILE *in = size ? fmemopen((void *)data, size, "r") : fopen("/dev/null", "r");
  if (!in)
    abort();
  int r = pd_restore_xml(b, in, err);
  fclose(in);
  return r;
}

static char *dump(const struct pd_bdev *b)
{
  char *text = NULL;
  size_t len = 0;
  FILE *out = open_memstream(&text, &len);
  ts_error err = {0};
  if (!out || pd_dump_xml(b, false, out, &err)) {
    fprintf(stderr, "dump of restored metadata: %s\n", err.msg);
    abort();
  }
  fclose(out);
  return text;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  static uint8_t *img;
  if (!img && !(img = malloc(META_BYTES)))
    abort();
  memset(img, 0, META_BYTES);
  struct membdev m = {img};
  struct pd_bdev b = {&mem_ops, &m, META_BLOCKS, false};
  ts_error err = {0};
  if (restore(&b, data, size, &err)) {
    fuzz_note("refused", err.msg);
    return 0;
  }
  fuzz_note("restored", "ok");
  assert_clean(&b, "after a restore");
  char *first = dump(&b);
  if (restore(&b, data, size, &err) == 0) {
    assert_clean(&b, "after a second restore");
  } else {
    /* built beside the first pool, which must read as before */
    assert_clean(&b, "after a failed second restore");
    char *now = dump(&b);
    if (strcmp(first, now)) {
      fprintf(stderr, "a failed restore (%s) changed the pool\n", err.msg);
      abort();
    }
    free(now);
  }
  free(first);
  return 0;
}
