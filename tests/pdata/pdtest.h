/* Helpers for the thin metadata tests: temp files, a reference model of a
 * pool's devices and mappings, and its expected thin_dump XML. */
#ifndef PDTEST_H
#define PDTEST_H

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"
#include "pdata/pdata-internal.h"
#include "pdata/thin-metadata.h"

/* A metadata file of `size` bytes (zeroed), opened as a bdev. */
static inline void pdt_make_file(const char *path, uint64_t size)
{
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(ftruncate(fd, (off_t)size), 0);
  close(fd);
}

static inline void pdt_open_bdev(struct pd_bdev *b, const char *path)
{
  ts_error err = {0};
  int r = pd_bdev_open_file(b, path, false, &err);
  ck_assert_msg(r == 0, "open %s: %s", path, err.msg);
}

/* Blocks 0..n-1 of bm's device, each filled with its own number's low
 * byte, written back and dropped from the cache, so the next get reads. */
static inline void pdt_bm_fill_numbered(struct pd_bm *bm, uint64_t n)
{
  for (uint64_t i = 0; i < n; i++) {
    struct pd_block *b;
    ck_assert_int_eq(pd_bm_write_zero(bm, i, PD_BT_RAW, &b), 0);
    memset(b->data, (int)i, PD_BLOCK_SIZE);
    pd_bm_unlock(bm, b);
  }
  ck_assert_int_eq(pd_bm_flush_dirty(bm, UINT64_MAX), 0);
  pd_bm_drop_all(bm);
}

static inline struct tmd *pdt_open(const struct pd_bdev *b)
{
  struct tmd *md = NULL;
  ts_error err = {0};
  int r = tmd_open(b, NULL, &md, &err);
  ck_assert_msg(r == 0, "tmd_open: %d %s", r, err.msg);
  return md;
}

/* ---- reference model ---- */
#define PDT_MAXV 512u

struct pdt_dev {
  bool exists;
  uint64_t map[PDT_MAXV]; /* (data << 24 | time) + 1, 0 = unmapped */
  uint64_t trans;
  uint32_t ctime, stime;
};

struct pdt_model {
  struct pdt_dev *devs;
  uint32_t ndevs; /* ids 0 .. ndevs-1 */
  uint32_t time;
  uint64_t trans;
  uint64_t nr_data;
  uint32_t dbs;
};

/* Everything written to f (a tmpfile), as a malloc'd string; closes f. */
static inline char *pdt_slurp(FILE *f)
{
  long n = ftell(f);
  ck_assert_int_ge(n, 0);
  char *s = malloc((size_t)n + 1);
  rewind(f);
  ck_assert_uint_eq(fread(s, 1, (size_t)n, f), (size_t)n);
  s[n] = 0;
  fclose(f);
  return s;
}

static inline void pdt_model_init(struct pdt_model *m, uint32_t ndevs, uint64_t nr_data, uint32_t dbs)
{
  memset(m, 0, sizeof(*m));
  m->devs = calloc(ndevs, sizeof(*m->devs));
  ck_assert_ptr_nonnull(m->devs);
  m->ndevs = ndevs;
  m->nr_data = nr_data;
  m->dbs = dbs;
}

static inline void pdt_model_copy(struct pdt_model *dst, const struct pdt_model *src)
{
  if (dst->devs && dst->ndevs != src->ndevs) {
    free(dst->devs);
    dst->devs = NULL;
  }
  if (!dst->devs)
    dst->devs = malloc(src->ndevs * sizeof(*src->devs));
  ck_assert_ptr_nonnull(dst->devs);
  struct pdt_dev *keep = dst->devs;
  *dst = *src;
  dst->devs = keep;
  memcpy(dst->devs, src->devs, src->ndevs * sizeof(*src->devs));
}

static inline void pdt_model_free(struct pdt_model *m)
{
  free(m->devs);
  m->devs = NULL;
}

static inline uint64_t pdt_mapped(const struct pdt_dev *d)
{
  uint64_t n = 0;
  for (uint32_t v = 0; v < PDT_MAXV; v++)
    n += d->map[v] != 0;
  return n;
}

/* The XML thin_dump prints for the model. Caller frees. */
static inline char *pdt_model_xml(const struct pdt_model *m)
{
  FILE *f = tmpfile();
  ck_assert_ptr_nonnull(f);
  fprintf(f, "<superblock uuid=\"\" time=\"%u\" transaction=\"%llu\" flags=\"0\" version=\"2\" data_block_size=\"%u\" "
             "nr_data_blocks=\"%llu\">\n", m->time, (unsigned long long)m->trans, m->dbs, (unsigned long long)m->nr_data);
  for (uint32_t id = 0; id < m->ndevs; id++) {
    const struct pdt_dev *d = &m->devs[id];
    if (!d->exists)
      continue;
    fprintf(f, "  <device dev_id=\"%u\" mapped_blocks=\"%llu\" transaction=\"%llu\" creation_time=\"%u\" snap_time=\"%u\">\n",
            id, (unsigned long long)pdt_mapped(d), (unsigned long long)d->trans, d->ctime, d->stime);
    uint32_t v = 0;
    while (v < PDT_MAXV) {
      if (!d->map[v]) {
        v++;
        continue;
      }
      uint64_t x = d->map[v] - 1, db = x >> 24, t = x & 0xFFFFFF;
      uint32_t n = 1;
      while (v + n < PDT_MAXV && d->map[v + n] && (d->map[v + n] - 1) >> 24 == db + n && ((d->map[v + n] - 1) & 0xFFFFFF) == t)
        n++;
      if (n == 1)
        fprintf(f, "    <single_mapping origin_block=\"%u\" data_block=\"%llu\" time=\"%llu\"/>\n", v,
                (unsigned long long)db, (unsigned long long)t);
      else
        fprintf(f, "    <range_mapping origin_begin=\"%u\" data_begin=\"%llu\" length=\"%u\" time=\"%llu\"/>\n", v,
                (unsigned long long)db, n, (unsigned long long)t);
      v += n;
    }
    fprintf(f, "  </device>\n");
  }
  fprintf(f, "</superblock>\n");
  return pdt_slurp(f);
}

/* Our own dump of a metadata file. Caller frees. */
static inline char *pdt_dump(const struct pd_bdev *b, bool snap)
{
  FILE *f = tmpfile();
  ck_assert_ptr_nonnull(f);
  ts_error err = {0};
  int r = pd_dump_xml(b, snap, f, &err);
  ck_assert_msg(r == 0, "pd_dump_xml: %s", err.msg);
  return pdt_slurp(f);
}

static void pdt_report_print(void *arg, enum pd_check_level lvl, const char *msg)
{
  (void)arg;
  fprintf(stderr, "  check %s: %s\n", lvl == PD_CHECK_ERROR ? "ERROR" : "warning", msg);
}

/* Our checker must find the metadata clean. */
static inline void pdt_check_clean(const struct pd_bdev *b)
{
  struct pd_check_result res;
  ck_assert_int_eq(pd_check(b, pdt_report_print, NULL, &res), 0);
  ck_assert_msg(res.errors == 0 && res.warnings == 0, "pd_check: %llu errors, %llu warnings",
                (unsigned long long)res.errors, (unsigned long long)res.warnings);
}

/* thin-provisioning-tools live in /usr/sbin, often not on a user's PATH. */
static inline void pdt_require_tools(void)
{
  const char *p = getenv("PATH");
  char *np = ts_test_fmt("/usr/sbin:/sbin:%s", p ? p : "/usr/bin:/bin");
  setenv("PATH", np, 1);
  free(np);
  ts_test_require_tool("thin_check");
  ts_test_require_tool("thin_dump");
  ts_test_require_tool("thin_restore");
}

/* Run thin_check; returns its exit status. *noise (may be NULL) receives the
 * output lines other than its progress and summary lines (malloc'd). */
static inline int pdt_thin_check(const char *path, char **noise)
{
  return ts_test_thin_check(path, noise);
}

/* xorshift PRNG */
static inline uint64_t pdt_rand(uint64_t *s)
{
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

/* Data blocks referenced by the model must be exactly those with a non-zero
 * count in the pool (no leak, no early free). */
static inline void pdt_check_data_refs(struct tmd *md, const struct pdt_model *m)
{
  uint8_t *ref = calloc(m->nr_data, 1);
  for (uint32_t id = 0; id < m->ndevs; id++)
    if (m->devs[id].exists)
      for (uint32_t v = 0; v < PDT_MAXV; v++)
        if (m->devs[id].map[v])
          ref[(m->devs[id].map[v] - 1) >> 24] = 1;
  for (uint64_t b = 0; b < m->nr_data; b++) {
    uint32_t c = 0;
    /* plain ifs: a Check assertion per block costs a syscall */
    if (tmd_data_ref_count(md, b, &c) || (c != 0) != (ref[b] != 0))
      ck_abort_msg("data block %llu: count %u, referenced %d", (unsigned long long)b, c, ref[b]);
  }
  free(ref);
}

static inline uint32_t pdt_pick_dev(const struct pdt_model *m, uint64_t *rng, bool exists)
{
  for (int tries = 0; tries < 1000; tries++) {
    uint32_t id = (uint32_t)(pdt_rand(rng) % m->ndevs);
    if (m->devs[id].exists == exists)
      return id;
  }
  return UINT32_MAX;
}

/* One random pool operation applied to both md and the model. Returns 0 or
 * the error of the API call (the model is updated only on success). */
static inline int pdt_random_op(struct tmd *md, struct pdt_model *m, uint64_t *rng)
{
  unsigned op = (unsigned)(pdt_rand(rng) % 100);
  int r = 0;
  if (op < 6) { /* create thin */
    uint32_t id = pdt_pick_dev(m, rng, false);
    if (id == UINT32_MAX)
      return 0;
    if ((r = tmd_create_thin(md, id)))
      return r;
    struct pdt_dev *d = &m->devs[id];
    memset(d, 0, sizeof(*d));
    d->exists = true;
    d->trans = m->trans;
    d->ctime = d->stime = m->time;
  } else if (op < 12) { /* snapshot */
    uint32_t id = pdt_pick_dev(m, rng, false), o = pdt_pick_dev(m, rng, true);
    if (id == UINT32_MAX || o == UINT32_MAX)
      return 0;
    if ((r = tmd_create_snap(md, id, o)))
      return r;
    m->time++;
    m->devs[id] = m->devs[o];
    m->devs[id].trans = m->trans;
    m->devs[id].ctime = m->devs[id].stime = m->time;
    m->devs[o].stime = m->time;
  } else if (op < 15) { /* delete */
    uint32_t id = pdt_pick_dev(m, rng, true);
    if (id == UINT32_MAX)
      return 0;
    if ((r = tmd_delete(md, id)))
      return r;
    m->devs[id].exists = false;
  } else if (op < 55) { /* single inserts */
    uint32_t id = pdt_pick_dev(m, rng, true);
    if (id == UINT32_MAX)
      return 0;
    uint64_t db;
    if ((r = tmd_alloc_data(md, &db)))
      return r;
    uint32_t v = (uint32_t)(pdt_rand(rng) % PDT_MAXV);
    if ((r = tmd_insert(md, id, v, db))) {
      tmd_data_dec(md, db);
      return r;
    }
    m->devs[id].map[v] = ((db << 24) | m->time) + 1;
  } else if (op < 80) { /* bulk run */
    uint32_t id = pdt_pick_dev(m, rng, true);
    if (id == UINT32_MAX)
      return 0;
    uint32_t v = (uint32_t)(pdt_rand(rng) % PDT_MAXV);
    uint32_t len = 1 + (uint32_t)(pdt_rand(rng) % 200);
    if (v + len > PDT_MAXV)
      len = PDT_MAXV - v;
    while (len) {
      uint64_t db, got, done = 0;
      if ((r = tmd_alloc_data_run(md, len, &db, &got)))
        return r;
      r = tmd_insert_run(md, id, v, got, db, &done);
      for (uint64_t i = 0; i < done; i++)
        m->devs[id].map[v + i] = (((db + i) << 24) | m->time) + 1;
      if (r) {
        tmd_data_dec_run(md, db + done, got - done);
        return r;
      }
      v += (uint32_t)got;
      len -= (uint32_t)got;
    }
  } else if (op < 97) { /* discard a range */
    uint32_t id = pdt_pick_dev(m, rng, true);
    if (id == UINT32_MAX)
      return 0;
    uint32_t a = (uint32_t)(pdt_rand(rng) % PDT_MAXV), b = a + (uint32_t)(pdt_rand(rng) % 300);
    if (b > PDT_MAXV)
      b = PDT_MAXV;
    uint64_t removed = 0;
    if ((r = tmd_remove_range(md, id, a, b, 0, NULL, NULL, &removed)))
      return r;
    uint64_t want = 0;
    for (uint32_t v = a; v < b; v++) {
      want += m->devs[id].map[v] != 0;
      m->devs[id].map[v] = 0;
    }
    ck_assert_uint_eq(removed, want);
  } else { /* transaction id */
    if ((r = tmd_set_transaction_id(md, m->trans, m->trans + 1)))
      return r;
    m->trans++;
  }
  return 0;
}

#endif
