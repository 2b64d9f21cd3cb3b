/* snapshot/store.c: a snapshot's exception store.
 *
 * Persistent ("P") layout on the COW device, in chunks (all little-endian):
 *   chunk 0                     header: magic "SnAp", valid, version 1, chunk size in sectors
 *   chunk 1 + a * (E + 1)       metadata area a: E records {u64 old_chunk, u64 new_chunk}
 *   the E chunks after an area  data chunks for the exceptions that area records
 * with E = chunk bytes / 16. The first record whose new_chunk is 0 ends the
 * list. A record is written only after the data chunk it names is on stable
 * storage (FLUSH), and the area holding it is written with FUA, so a crash
 * never leaves a record pointing at data that was not written.
 *
 * Transient ("N"): data chunks from chunk 0, exceptions only in memory.
 */
#include "backends/snapshot/snap-internal.h"
#include "core/le.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------- */
/* The table                                                               */

static size_t slot_of(uint64_t key, size_t cap)
{
  /* Fibonacci hashing: consecutive chunks spread over the table. */
  return (size_t)((key * 0x9e3779b97f4a7c15ull) >> 17) & (cap - 1);
}

bool ts__snap_table_lookup(const struct ts__snap_table *t, uint64_t old, uint64_t *new_chunk)
{
  if (!t->cap)
    return false;
  for (size_t i = slot_of(old, t->cap);; i = (i + 1) & (t->cap - 1)) {
    if (t->val[i] == UINT64_MAX)
      return false;
    if (t->key[i] == old) {
      if (new_chunk)
        *new_chunk = t->val[i];
      return true;
    }
  }
}

static void put(uint64_t *key, uint64_t *val, size_t cap, uint64_t k, uint64_t v, bool *added)
{
  size_t i = slot_of(k, cap);
  while (val[i] != UINT64_MAX && key[i] != k)
    i = (i + 1) & (cap - 1);
  *added = val[i] == UINT64_MAX;
  key[i] = k;
  val[i] = v;
}

int ts__snap_table_insert(struct ts__snap_table *t, uint64_t old, uint64_t new_chunk)
{
  bool added;
  if ((t->n + 1) * 2 > t->cap) {
    size_t cap = t->cap ? t->cap * 2 : 1024;
    uint64_t *k = malloc(cap * sizeof *k), *v = malloc(cap * sizeof *v);
    if (!k || !v) {
      free(k);
      free(v);
      return -ENOMEM;
    }
    memset(v, 0xff, cap * sizeof *v);
    for (size_t i = 0; i < t->cap; i++)
      if (t->val[i] != UINT64_MAX)
        put(k, v, cap, t->key[i], t->val[i], &added);
    free(t->key);
    free(t->val);
    t->key = k;
    t->val = v;
    t->cap = cap;
  }
  put(t->key, t->val, t->cap, old, new_chunk, &added);
  if (added)
    t->n++;
  return 0;
}

void ts__snap_table_free(struct ts__snap_table *t)
{
  free(t->key);
  free(t->val);
  memset(t, 0, sizeof *t);
}

/* ---------------------------------------------------------------------- */
/* Layout helpers                                                          */

static uint64_t area_location(const struct ts__snap_store *st, uint64_t area)
{
  return 1 + ((uint64_t)st->per_area + 1) * area;
}

/* Chunk 0 is the header, and every 1 + k(E+1) is a metadata area. */
static bool is_metadata_chunk(const struct ts__snap_store *st, uint64_t c)
{
  return c == 0 || (c - 1) % ((uint64_t)st->per_area + 1) == 0;
}

static int write_chunk(struct ts__snap_store *st, const void *buf, uint64_t chunk, uint32_t flags)
{
  return ts_pwrite(st->cow, buf, st->chunk, chunk * st->chunk, flags);
}

static int write_header(struct ts__snap_store *st, bool valid)
{
  unsigned char *h = calloc(1, st->chunk);
  if (!h)
    return -ENOMEM;
  ts__put32(h, TS_SNAP_MAGIC);
  ts__put32(h + 4, valid ? 1 : 0);
  ts__put32(h + 8, TS_SNAP_VERSION);
  ts__put32(h + 12, st->chunk / 512);
  int r = write_chunk(st, h, 0, TS_IO_FUA);
  free(h);
  return r;
}

/* ---------------------------------------------------------------------- */
/* Loading                                                                 */

static int bad_store(ts_layer *l, ts_error *err, const char *cow, uint64_t area, uint32_t idx,
                     const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static int bad_store(ts_layer *l, ts_error *err, const char *cow, uint64_t area, uint32_t idx,
                     const char *fmt, ...)
{
  char what[200];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  return ts_layer_error(l, err, -EUCLEAN, "cow",
                        "corrupt exception store on \"%s\": metadata area %llu, record %u: %s; "
                        "nothing was changed",
                        cow, (unsigned long long)area, idx, what);
}

/* Read every area until the first unused record, checking each record. */
static int read_exceptions(struct ts__snap_store *st, ts_layer *l, ts_error *err)
{
  const char *cow = ts_dev_name(st->cow);
  unsigned char *seen = calloc(1, (size_t)(st->cow_chunks + 7) / 8);
  if (!seen)
    return ts_layer_error(l, err, -ENOMEM, NULL, "out of memory");
  uint64_t next_free = 2;
  int r = 0;
  for (st->area = 0;; st->area++) {
    uint64_t loc = area_location(st, st->area);
    if (loc >= st->cow_chunks) {
      /* The previous area was full and no further area fits: the store is
       * exactly full. Allocation will refuse from here on. */
      st->committed = st->per_area;
      st->area--;
      break;
    }
    r = ts_pread(st->cow, st->area_buf, st->chunk, loc * st->chunk);
    if (r) {
      r = ts_layer_error(l, err, r, "cow", "cannot read metadata area %llu of \"%s\": %s",
                         (unsigned long long)st->area, cow, ts_strerror(r));
      goto out;
    }
    uint32_t i;
    for (i = 0; i < st->per_area; i++) {
      const unsigned char *rec = st->area_buf + (size_t)i * 16;
      uint64_t old = ts__le64(rec), nc = ts__le64(rec + 8);
      if (nc == 0)
        break;
      if (nc >= st->cow_chunks)
        r = bad_store(l, err, cow, st->area, i, "COW chunk %llu is past the device's end (%llu chunks)",
                      (unsigned long long)nc, (unsigned long long)st->cow_chunks);
      else if (is_metadata_chunk(st, nc))
        r = bad_store(l, err, cow, st->area, i, "COW chunk %llu is a header or metadata chunk",
                      (unsigned long long)nc);
      else if (old >= st->origin_chunks)
        r = bad_store(l, err, cow, st->area, i,
                      "origin chunk %llu is past the origin's end (%llu chunks)",
                      (unsigned long long)old, (unsigned long long)st->origin_chunks);
      else if (seen[nc / 8] & (1u << (nc % 8)))
        r = bad_store(l, err, cow, st->area, i, "COW chunk %llu is used twice",
                      (unsigned long long)nc);
      else if (ts__snap_table_lookup(&st->table, old, NULL))
        r = bad_store(l, err, cow, st->area, i, "origin chunk %llu has two exceptions",
                      (unsigned long long)old);
      if (r)
        goto out;
      seen[nc / 8] |= (unsigned char)(1u << (nc % 8));
      if (ts__snap_table_insert(&st->table, old, nc)) {
        r = ts_layer_error(l, err, -ENOMEM, NULL, "out of memory");
        goto out;
      }
      if (nc + 1 > next_free)
        next_free = nc + 1;
    }
    if (i < st->per_area) {
      st->committed = i;
      /* Records after the end of the list are not exceptions, but the next
       * commit would write them back beside the new ones and make them
       * live (a chunk would then read other data): zero them here, have that commit write them out zeroed, and
       * report them. */
      uint32_t first = UINT32_MAX;
      for (uint32_t j = i; j < st->per_area; j++) { /* the marker's own old_chunk too */
        unsigned char *rec = st->area_buf + (size_t)j * 16;
        if (ts__le64(rec) | ts__le64(rec + 8)) {
          if (first == UINT32_MAX)
            first = j;
          st->stray++;
          memset(rec, 0, 16);
        }
      }
      if (st->stray) {
        st->rewrite_tail = true;
        ts_layer_event(l, "stray-records",
                       "exception store on \"%s\": %u non-zero record%s after the end of the list in metadata "
                       "area %llu (first: record %u); ignored, and zeroed by the next commit",
                       cow, st->stray, st->stray == 1 ? "" : "s", (unsigned long long)st->area, first);
      }
      break;
    }
  }
  if (st->committed == st->per_area) {
    next_free = st->cow_chunks; /* exactly full */
  } else if (is_metadata_chunk(st, next_free)) {
    next_free++;
  }
  st->next_free = next_free;
out:
  free(seen);
  return r;
}

static int open_persistent(struct ts__snap_store *st, ts_layer *l,
                           const struct ts__snap_store_params *p, ts_error *err)
{
  const ts_limits *cl = ts_dev_limits(st->cow);
  const char *cow = ts_dev_name(st->cow);
  uint32_t lbs = cl->logical_block_size;
  unsigned char *h = malloc(lbs);
  if (!h)
    return ts_layer_error(l, err, -ENOMEM, NULL, "out of memory");
  int r = ts_pread(st->cow, h, lbs, 0);
  if (r) {
    free(h);
    return ts_layer_error(l, err, r, "cow", "cannot read the header of \"%s\": %s", cow,
                          ts_strerror(r));
  }
  uint32_t magic = ts__le32(h), valid = ts__le32(h + 4), version = ts__le32(h + 8);
  uint32_t sectors = ts__le32(h + 12);
  free(h);

  bool fresh = magic == 0;
  if (fresh && !p->create)
    return ts_layer_error(l, err, -ENOENT, "cow",
                          "\"%s\" holds no snapshot exception store (its first word is zero); "
                          "set \"create\": true to initialise one",
                          cow);
  if (fresh && p->read_only)
    return ts_layer_error(l, err, -EROFS, "cow",
                          "\"%s\" holds no snapshot exception store and is read-only, so none "
                          "can be created",
                          cow);
  if (!fresh) {
    if (magic != TS_SNAP_MAGIC)
      return ts_layer_error(l, err, -EUCLEAN, "cow",
                            "\"%s\" is not a dm-snapshot exception store (magic 0x%08x, expected "
                            "0x%08x \"SnAp\"); nothing was changed",
                            cow, magic, TS_SNAP_MAGIC);
    if (version != TS_SNAP_VERSION)
      return ts_layer_error(l, err, -EUCLEAN, "cow",
                            "the exception store on \"%s\" has version %u; only version %u is "
                            "understood",
                            cow, version, TS_SNAP_VERSION);
    uint64_t bytes = (uint64_t)sectors * 512;
    if (bytes < TS_SNAP_MIN_CHUNK || bytes > TS_SNAP_MAX_CHUNK || (bytes & (bytes - 1)))
      return ts_layer_error(l, err, -EUCLEAN, "cow",
                            "the exception store on \"%s\" has chunk size %u sectors; supported "
                            "are powers of two from 4K to 512K",
                            cow, sectors);
    if (p->chunk && p->chunk != bytes)
      return ts_layer_error(l, err, -EINVAL, "chunk_size",
                            "%u bytes does not match the chunk size of the exception store on "
                            "\"%s\" (%llu bytes); nothing was changed",
                            p->chunk, cow, (unsigned long long)bytes);
    if (bytes < p->min_chunk)
      return ts_layer_error(l, err, -EINVAL, "cow",
                            "the store's chunk size %llu is below the block size %u of the "
                            "origin or of \"%s\"",
                            (unsigned long long)bytes, p->min_chunk, cow);
    st->chunk = (uint32_t)bytes;
  } else {
    st->chunk = p->chunk ? p->chunk
                         : (TS_SNAP_DEFAULT_CHUNK > p->min_chunk ? TS_SNAP_DEFAULT_CHUNK : p->min_chunk);
  }
  st->per_area = st->chunk / 16;
  st->cow_chunks = cl->size / st->chunk;
  st->origin_chunks = (p->origin_size + st->chunk - 1) / st->chunk;
  if (st->cow_chunks < 3)
    return ts_layer_error(l, err, -ENOSPC, "cow",
                          "\"%s\" (%llu bytes) is too small: a persistent store needs at least "
                          "3 chunks of %u bytes (header, metadata, data)",
                          cow, (unsigned long long)cl->size, st->chunk);
  st->area_buf = calloc(1, st->chunk);
  if (!st->area_buf)
    return ts_layer_error(l, err, -ENOMEM, NULL, "out of memory");

  st->area = 0;
  st->committed = 0;
  st->next_free = 2;
  if (fresh) {
    /* Zero area 0 before the header says the store exists, so a crash
     * between the two leaves a blank device rather than a store with a
     * garbage area. */
    r = write_chunk(st, st->area_buf, 1, 0);
    if (!r)
      r = ts_flush(st->cow);
    if (!r)
      r = write_header(st, true);
    if (r)
      return ts_layer_error(l, err, r, "cow", "cannot initialise the exception store on \"%s\": %s",
                            cow, ts_strerror(r));
    st->valid = true;
    return 0;
  }
  st->valid = valid != 0;
  if (!st->valid)
    return 0; /* loads, but is unusable: the kernel does not read its exceptions either */
  return read_exceptions(st, l, err);
}

int ts__snap_store_open(struct ts__snap_store *st, ts_layer *l, ts_layer *cow,
                        const struct ts__snap_store_params *p, ts_error *err)
{
  memset(st, 0, sizeof *st);
  st->cow = cow;
  st->persistent = p->persistent;
  int r;
  if (p->persistent) {
    r = open_persistent(st, l, p, err);
  } else {
    const ts_limits *cl = ts_dev_limits(cow);
    st->chunk = p->chunk ? p->chunk
                         : (TS_SNAP_DEFAULT_CHUNK > p->min_chunk ? TS_SNAP_DEFAULT_CHUNK : p->min_chunk);
    st->cow_chunks = cl->size / st->chunk;
    st->origin_chunks = (p->origin_size + st->chunk - 1) / st->chunk;
    st->valid = true;
    r = st->cow_chunks ? 0
                       : ts_layer_error(l, err, -ENOSPC, "cow",
                                        "\"%s\" is smaller than one chunk (%u bytes)",
                                        ts_dev_name(cow), st->chunk);
  }
  if (r)
    ts__snap_store_close(st);
  return r;
}

void ts__snap_store_close(struct ts__snap_store *st)
{
  free(st->area_buf);
  st->area_buf = NULL;
  ts__snap_table_free(&st->table);
}

/* ---------------------------------------------------------------------- */
/* Allocation and commit                                                   */

int ts__snap_store_alloc(struct ts__snap_store *st, uint64_t *new_chunk)
{
  uint64_t c = st->next_free;
  if (c + 1 > st->cow_chunks)
    return -ENOSPC;
  if (!st->persistent) {
    *new_chunk = c;
    st->next_free = c + 1;
    return 0;
  }
  /* Committing the last data chunk of an area zeroes the next area; refuse
   * rather than leave a full area with no room for its successor (the kernel
   * could not load such a store). */
  if (is_metadata_chunk(st, c + 1) && c + 1 >= st->cow_chunks)
    return -ENOSPC;
  st->next_free = c + 1;
  if (is_metadata_chunk(st, st->next_free))
    st->next_free++;
  *new_chunk = c;
  return 0;
}

/* Write the blocks of the current area that hold records [from, to): the
 * kernel rewrites the whole area chunk, but the blocks before `from` hold
 * the same bytes on disk already, so the result is identical and a large
 * chunk does not cost a large write per commit. */
static int write_area_records(struct ts__snap_store *st, uint32_t from, uint32_t to)
{
  uint32_t lbs = ts_dev_limits(st->cow)->logical_block_size;
  uint64_t start = (uint64_t)from * 16 / lbs * lbs;
  uint64_t end = ((uint64_t)to * 16 + lbs - 1) / lbs * lbs;
  if (st->rewrite_tail)
    end = st->chunk; /* stray records on disk after `to`: overwrite them with the zeroes in area_buf */
  return ts_pwrite(st->cow, st->area_buf + start, end - start,
                   area_location(st, st->area) * st->chunk + start, TS_IO_FUA);
}

int ts__snap_store_commit(struct ts__snap_store *st, const struct ts__snap_exc *v, size_t n)
{
  if (!st->persistent || n == 0)
    return 0;
  if (!st->valid)
    return -EIO;
  /* Data first: nothing below may reorder it after the records. */
  int r = ts_flush(st->cow);
  size_t i = 0;
  while (!r && i < n) {
    uint32_t from = st->committed;
    for (; i < n && st->committed < st->per_area; i++) {
      unsigned char *rec = st->area_buf + (size_t)st->committed++ * 16;
      ts__put64(rec, v[i].old);
      ts__put64(rec + 8, v[i].new_chunk);
    }
    if (st->committed < st->per_area) {
      r = write_area_records(st, from, st->committed);
      if (!r)
        st->rewrite_tail = false;
      break;
    }
    /* Full: zero the next area first, so its first record ends the list
     * once this one is on disk. */
    r = write_chunk(st, ts_zero_buffer(), area_location(st, st->area + 1), 0);
    if (!r)
      r = ts_flush(st->cow);
    if (!r)
      r = write_area_records(st, from, st->committed);
    if (!r) {
      st->area++;
      st->committed = 0;
      st->rewrite_tail = false;
      memset(st->area_buf, 0, st->chunk);
    }
  }
  if (r)
    st->valid = false;
  return r;
}

int ts__snap_store_invalidate(struct ts__snap_store *st)
{
  st->valid = false;
  return st->persistent ? write_header(st, false) : 0;
}

uint64_t ts__snap_store_sectors_allocated(const struct ts__snap_store *st)
{
  return st->next_free * (st->chunk / 512);
}

uint64_t ts__snap_store_metadata_sectors(const struct ts__snap_store *st)
{
  return st->persistent ? (st->area + 2) * (st->chunk / 512) : 0;
}
