/* Fuzz target: thin-pool metadata bytes, opened and checked.
 *
 * The input is the start of a metadata device of POOL_BLOCKS 4 KiB blocks
 * (the rest reads as zeroes). Every input is checked, dumped (live and held
 * snapshot) and opened read-only; one that opens read-write is also changed
 * and committed. One rule is asserted: metadata the checker calls clean
 * must survive lookups, inserts, a snapshot, removals, a delete and a
 * commit, and still be clean afterwards. Metadata that opens is also opened
 * through the thin-pool layer (over a file, with a zero data layer of the
 * pool's size) with a thin volume read, written and flushed; when it was
 * clean it must still be clean after the stack closed.
 *
 * Built with TS_FUZZ_FIX_CSUM, a custom mutator re-stamps the checksum (and
 * block number) of every block that carried a valid one before mutation, so
 * mutations reach the code behind the checksum test. */
#include "fuzz.h"
#include "pdata/pdata-internal.h"
#include "pdata/thin-metadata.h"

#include <errno.h>
#include <inttypes.h>
#include <libthinstack/thinstack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define POOL_BLOCKS 64u

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

static uint64_t check_errors(const struct pd_bdev *b)
{
  struct pd_check_result res;
  int r = pd_check(b, NULL, NULL, &res);
  return r ? UINT64_MAX : res.errors;
}

static int count_run(void *arg, const struct tmd_run *run)
{
  (void)run;
  ++*(uint64_t *)arg;
  return 0;
}

/* Changes any valid pool must take. Errors are fine (damage met on the way,
 * no space); what is checked is the state a commit leaves. */
static void exercise(struct tmd *md)
{
  uint32_t ids[8];
  size_t n = tmd_list_devices(md, ids, 8);
  if (n > 8)
    n = 8;
  for (size_t i = 0; i < n; i++) {
    uint64_t d;
    bool shared;
    for (uint64_t v = 0; v < 64; v += 7)
      tmd_lookup(md, ids[i], v, &d, &shared);
    uint64_t runs = 0;
    tmd_lookup_range(md, ids[i], 0, UINT64_MAX, count_run, &runs);
  }
  uint32_t fresh = n ? ids[n - 1] + 1 : 1;
  if (fresh <= TMD_MAX_DEV_ID && tmd_create_thin(md, fresh) == 0) {
    uint64_t db;
    for (uint64_t v = 0; v < 40; v++)
      if (tmd_alloc_data(md, &db) == 0 && tmd_insert(md, fresh, v * 3, db) != 0)
        tmd_data_dec(md, db);
    if (fresh + 1 <= TMD_MAX_DEV_ID)
      tmd_create_snap(md, fresh + 1, fresh);
    tmd_remove_range(md, fresh, 10, 50, 0, NULL, NULL, NULL);
  }
  if (n) {
    tmd_remove_range(md, ids[0], 0, 16, 0, NULL, NULL, NULL);
    if (n > 1)
      tmd_delete(md, ids[1]);
  }
}

/* The same metadata as a file under a thin-pool layer and a thin volume. */
static void through_the_layer(uint8_t *img, uint64_t bs, uint64_t nr, const uint32_t *id, uint64_t errors)
{
  if (!bs || nr > (1ull << 50) / bs)
    return;
  fuzz_clean();
  fuzz_write_file("meta.img", img, (size_t)POOL_BLOCKS * PD_BLOCK_SIZE, 0);
  char vol[96] = "", json[512];
  if (id)
    snprintf(vol, sizeof vol, ",\"vol\":{\"type\":\"thin\",\"pool\":\"pool\",\"id\":%u,\"size\":\"1M\"}", *id);
  snprintf(json, sizeof json,
           "{\"version\":1,\"layers\":{\"meta\":{\"type\":\"file\",\"path\":\"meta.img\"},"
           "\"data\":{\"type\":\"zero\",\"size\":%" PRIu64 "},\"pool\":{\"type\":\"thin-pool\","
           "\"metadata\":\"meta\",\"data\":\"data\",\"block_size\":%" PRIu64 ",\"commit_interval\":0}%s}}",
           nr * bs, bs, vol);
  ts_stack *s = NULL;
  ts_error err = {0};
  if (ts_stack_open_string(json, fuzz_dir(), NULL, &s, &err)) {
    fuzz_note("the pool layer refused", err.msg);
    return;
  }
  ts_dev *v = id ? ts_stack_node(s, "vol") : NULL;
  if (v) {
    static uint8_t buf[1 << 20];
    ts_pread(v, buf, sizeof buf, 0);
    memset(buf, 0xc3, 65536);
    ts_pwrite(v, buf, 65536, 0, 0);
    ts_pwrite(v, buf, 4096, 700 * 1024, TS_IO_FUA);
    ts_discard(v, 0, 65536);
    ts_flush(v);
  }
  ts_stack_close(s, &err);
  if (errors)
    return;
  struct pd_bdev b;
  if (pd_bdev_open_file(&b, fuzz_path("meta.img"), true, &err))
    abort();
  uint64_t after = check_errors(&b);
  pd_bdev_close(&b);
  if (after) {
    fprintf(stderr, "clean metadata: %llu check errors after the pool layer used it\n", (unsigned long long)after);
    abort();
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  static uint8_t *img;
  if (!img && !(img = malloc((size_t)POOL_BLOCKS * PD_BLOCK_SIZE)))
    abort();
  size_t n = size < (size_t)POOL_BLOCKS * PD_BLOCK_SIZE ? size : (size_t)POOL_BLOCKS * PD_BLOCK_SIZE;
  memset(img, 0, (size_t)POOL_BLOCKS * PD_BLOCK_SIZE);
  memcpy(img, data, n);
  struct membdev m = {img};
  struct pd_bdev ro = {&mem_ops, &m, POOL_BLOCKS, true}, rw = {&mem_ops, &m, POOL_BLOCKS, false};

  uint64_t errors = check_errors(&ro);
  FILE *devnull = fopen("/dev/null", "w");
  if (!devnull)
    abort();
  ts_error err = {0};
  pd_dump_xml(&ro, false, devnull, &err);
  pd_dump_xml(&ro, true, devnull, &err);
  fclose(devnull);

  struct tmd *md;
  struct tmd_config cfg = {.read_only = true, .cache_blocks = 16};
  if (tmd_open(&ro, &cfg, &md, &err) == 0) {
    fuzz_note("opened", errors ? "with check errors" : "clean");
    uint64_t bs = (uint64_t)tmd_data_block_size(md) * 512, nr = tmd_data_nr_blocks(md);
    uint32_t id;
    bool have = tmd_list_devices(md, &id, 1) > 0;
    exercise(md); /* every change is refused: read-only */
    tmd_close(md);
    through_the_layer(img, bs, nr, have ? &id : NULL, errors);
    memcpy(img, data, n); /* the layer may have committed: start again from the input */
    memset(img + n, 0, (size_t)POOL_BLOCKS * PD_BLOCK_SIZE - n);
  } else if (fuzz_note("refused", err.msg), errors == 0) {
    fprintf(stderr, "check says clean, open refuses: %s\n", err.msg);
    abort();
  }
  cfg.read_only = false;
  if (tmd_open(&rw, &cfg, &md, &err) == 0) {
    exercise(md);
    int r = tmd_commit(md);
    tmd_close(md);
    if (errors == 0 && r != -ENOSPC) {
      uint64_t after = check_errors(&ro);
      if (r || after) {
        fprintf(stderr, "clean metadata: commit %d, then %llu check errors\n", r, (unsigned long long)after);
        abort();
      }
    }
  }
  return 0;
}

#ifdef TS_FUZZ_FIX_CSUM
size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size);
size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed);

static enum pd_btype block_type(const uint8_t *b, uint64_t nr)
{
  static const enum pd_btype types[] = {PD_BT_SUPER, PD_BT_NODE, PD_BT_BITMAP, PD_BT_INDEX};
  for (int i = 0; i < 4; i++)
    if (ts__le32(b) == pd_block_csum(b, pd_btype_salt(types[i])))
      return types[i];
  return nr == 0 ? PD_BT_SUPER : PD_BT_RAW;
}

size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed)
{
  (void)seed;
  enum pd_btype t[POOL_BLOCKS];
  size_t nb = size / PD_BLOCK_SIZE < POOL_BLOCKS ? size / PD_BLOCK_SIZE : POOL_BLOCKS;
  for (size_t i = 0; i < nb; i++)
    t[i] = block_type(data + i * PD_BLOCK_SIZE, i);
  size = LLVMFuzzerMutate(data, size, max_size);
  for (size_t i = 0; i < nb && (i + 1) * PD_BLOCK_SIZE <= size; i++)
    if (t[i] != PD_BT_RAW)
      pd_block_prepare(data + i * PD_BLOCK_SIZE, i, t[i]);
  return size;
}
#endif
