/* Space maps in memory: one 2-bit count per block, in the exact word layout
 * of the on-disk bitmap blocks, plus a hash table for counts of 3 and more
 * (the overflow tree's contents). Every bitmap remembers its last committed
 * words once it changes, so allocation can avoid blocks that the last commit
 * still uses and abort/commit need no log. */
#include <errno.h>
#include <stdlib.h>

#include "pdata/pdata-internal.h"

#define EPB PD_ENTRIES_PER_BITMAP

static size_t nr_bitmaps_for(uint64_t nr_blocks)
{
  return (size_t)((nr_blocks + EPB - 1) / EPB);
}

static uint32_t entries_in(const struct pd_sm *sm, size_t i)
{
  uint64_t start = (uint64_t)i * EPB;
  return (uint32_t)(sm->nr_blocks - start < EPB ? sm->nr_blocks - start : EPB);
}

static int add_bitmaps(struct pd_sm *sm, size_t n)
{
  struct pd_sm_bitmap *v = realloc(sm->bm, n * sizeof(*v));
  if (!v && n)
    return -ENOMEM;
  sm->bm = v;
  for (size_t i = sm->nr_bitmaps; i < n; i++) {
    memset(&v[i], 0, sizeof(v[i]));
    v[i].words = calloc(PD_BITMAP_WORDS, 8);
    if (!v[i].words) {
      sm->nr_bitmaps = i;
      return -ENOMEM;
    }
    v[i].dirty = true;
  }
  sm->nr_bitmaps = n;
  return 0;
}

int pd_sm_init(struct pd_sm *sm, bool is_meta, uint64_t nr_blocks)
{
  memset(sm, 0, sizeof(*sm));
  sm->is_meta = is_meta;
  sm->ov_mask = 63;
  sm->ov = calloc(64, sizeof(*sm->ov));
  if (!sm->ov)
    return -ENOMEM;
  return pd_sm_extend(sm, nr_blocks);
}

int pd_sm_extend(struct pd_sm *sm, uint64_t nr)
{
  if (nr < sm->nr_blocks)
    return -EINVAL;
  size_t old = sm->nr_bitmaps;
  int r = add_bitmaps(sm, nr_bitmaps_for(nr));
  if (r)
    return r;
  uint64_t old_nr = sm->nr_blocks;
  sm->nr_blocks = nr;
  pd_sm_recount(sm);
  if (old && nr != old_nr)
    sm->bm[old - 1].dirty = true;
  sm->gen++;
  return 0;
}

void pd_sm_free(struct pd_sm *sm)
{
  for (size_t i = 0; i < sm->nr_bitmaps; i++) {
    free(sm->bm[i].words);
    free(sm->bm[i].committed);
  }
  free(sm->bm);
  free(sm->ov);
  free(sm->ovd);
  memset(sm, 0, sizeof(*sm));
}

/* ---- overflow table ---- */
static size_t ov_slot(const struct pd_sm *sm, uint64_t key)
{
  return (size_t)((key * 0x9E3779B97F4A7C15ull) >> 17) & sm->ov_mask;
}

static struct pd_ov_entry *ov_find(const struct pd_sm *sm, uint64_t key)
{
  for (size_t i = ov_slot(sm, key);; i = (i + 1) & sm->ov_mask) {
    struct pd_ov_entry *e = &sm->ov[i];
    if (!e->used)
      return NULL;
    if (e->key == key)
      return e;
  }
}

static int ov_grow(struct pd_sm *sm)
{
  size_t n = (sm->ov_mask + 1) * 2;
  struct pd_ov_entry *old = sm->ov, *v = calloc(n, sizeof(*v));
  if (!v)
    return -ENOMEM;
  size_t om = sm->ov_mask;
  sm->ov = v;
  sm->ov_mask = n - 1;
  for (size_t i = 0; i <= om; i++) {
    if (!old[i].used)
      continue;
    size_t j = ov_slot(sm, old[i].key);
    while (v[j].used)
      j = (j + 1) & sm->ov_mask;
    v[j] = old[i];
  }
  free(old);
  return 0;
}

static int ov_put(struct pd_sm *sm, uint64_t key, uint32_t count)
{
  struct pd_ov_entry *e = ov_find(sm, key);
  if (e) {
    e->count = count;
    return 0;
  }
  if ((sm->ov_used + 1) * 4 > (sm->ov_mask + 1) * 3) {
    int r = ov_grow(sm);
    if (r)
      return r;
  }
  size_t i = ov_slot(sm, key);
  while (sm->ov[i].used)
    i = (i + 1) & sm->ov_mask;
  sm->ov[i] = (struct pd_ov_entry){key, count, 1};
  sm->ov_used++;
  return 0;
}

static void ov_del(struct pd_sm *sm, uint64_t key)
{
  struct pd_ov_entry *e = ov_find(sm, key);
  if (!e)
    return;
  /* backward-shift deletion keeps probe chains intact without tombstones */
  size_t i = (size_t)(e - sm->ov);
  for (;;) {
    sm->ov[i].used = 0;
    size_t j = i;
    for (;;) {
      j = (j + 1) & sm->ov_mask;
      if (!sm->ov[j].used) {
        sm->ov_used--;
        return;
      }
      size_t k = ov_slot(sm, sm->ov[j].key);
      if ((j > i && (k <= i || k > j)) || (j < i && (k <= i && k > j)))
        break;
    }
    sm->ov[i] = sm->ov[j];
    i = j;
  }
}

static int ovd_add(struct pd_sm *sm, uint64_t key)
{
  if (sm->ovd_n == sm->ovd_cap) {
    size_t n = sm->ovd_cap ? sm->ovd_cap * 2 : 64;
    uint64_t *v = realloc(sm->ovd, n * sizeof(*v));
    if (!v)
      return -ENOMEM;
    sm->ovd = v;
    sm->ovd_cap = n;
  }
  sm->ovd[sm->ovd_n++] = key;
  return 0;
}

int pd_sm_load_overflow(struct pd_sm *sm, uint64_t b, uint32_t count)
{
  return ov_put(sm, b, count);
}

/* ---- counts ---- */
uint32_t pd_sm_get(const struct pd_sm *sm, uint64_t b)
{
  if (b >= sm->nr_blocks)
    return 0;
  uint32_t c = pd_bits_get(sm->bm[b / EPB].words, (uint32_t)(b % EPB));
  if (c == 3) {
    const struct pd_ov_entry *e = ov_find(sm, b);
    return e ? e->count : 3;
  }
  return c;
}

bool pd_sm_committed_free(const struct pd_sm *sm, uint64_t b)
{
  const struct pd_sm_bitmap *m = &sm->bm[b / EPB];
  const uint64_t *w = m->committed ? m->committed : m->words;
  return pd_bits_get(w, (uint32_t)(b % EPB)) == 0;
}

static void bits_set(uint64_t *w, uint32_t i, uint32_t v)
{
  unsigned sh = 2 * (i % 32);
  uint64_t enc = (uint64_t)(((v >> 1) & 1) | ((v & 1) << 1));
  w[i / 32] = (w[i / 32] & ~(3ull << sh)) | (enc << sh);
}

int pd_sm_set(struct pd_sm *sm, uint64_t b, uint32_t count)
{
  if (b >= sm->nr_blocks)
    return -EINVAL;
  struct pd_sm_bitmap *m = &sm->bm[b / EPB];
  uint32_t i = (uint32_t)(b % EPB);
  uint32_t oldbits = pd_bits_get(m->words, i);
  uint32_t old = oldbits == 3 ? pd_sm_get(sm, b) : oldbits;
  if (old == count)
    return 0;
  if (!m->committed) {
    m->committed = malloc(PD_BITMAP_WORDS * 8);
    if (!m->committed)
      return -ENOMEM;
    memcpy(m->committed, m->words, PD_BITMAP_WORDS * 8);
  }
  if (old >= 3 || count >= 3) {
    int r = count >= 3 ? ov_put(sm, b, count) : 0;
    if (!r)
      r = ovd_add(sm, b);
    if (r)
      return r;
    if (count < 3)
      ov_del(sm, b);
  }
  bits_set(m->words, i, count >= 3 ? 3 : count);
  if (old == 0) {
    m->nr_free--;
    sm->nr_allocated++;
  } else if (count == 0) {
    m->nr_free++;
    sm->nr_allocated--;
  }
  m->dirty = true;
  sm->gen++;
  return 0;
}

int pd_sm_inc(struct pd_sm *sm, uint64_t b)
{
  uint32_t c = pd_sm_get(sm, b);
  if (c == UINT32_MAX)
    return -EOVERFLOW;
  return pd_sm_set(sm, b, c + 1);
}

int pd_sm_dec(struct pd_sm *sm, uint64_t b, uint32_t *now)
{
  uint32_t c = pd_sm_get(sm, b);
  if (!c || b >= sm->nr_blocks)
    return -EINVAL;
  int r = pd_sm_set(sm, b, c - 1);
  if (!r && now)
    *now = c - 1;
  return r;
}

/* Index of the first entry >= from in bitmap m that is free now and in the
 * last commit, or UINT32_MAX. */
static uint32_t find_free(const struct pd_sm_bitmap *m, uint32_t from, uint32_t limit)
{
  const uint64_t lo = 0x5555555555555555ull;
  for (uint32_t wi = from / 32; wi * 32 < limit; wi++) {
    uint64_t w = m->words[wi] | (m->committed ? m->committed[wi] : 0);
    uint64_t used = (w | (w >> 1)) & lo; /* one bit per entry that is non-zero */
    uint64_t freebits = ~used & lo;
    if (wi == from / 32)
      freebits &= ~0ull << (2 * (from % 32));
    if (freebits) {
      uint32_t i = wi * 32 + (uint32_t)__builtin_ctzll(freebits) / 2;
      return i < limit ? i : UINT32_MAX;
    }
  }
  return UINT32_MAX;
}

static bool entry_free(const struct pd_sm_bitmap *m, uint32_t i)
{
  return pd_bits_get(m->words, i) == 0 && (!m->committed || pd_bits_get(m->committed, i) == 0);
}

static int search(struct pd_sm *sm, uint64_t *found)
{
  if (!sm->nr_blocks)
    return -ENOSPC;
  uint64_t start = sm->alloc_hint < sm->nr_blocks ? sm->alloc_hint : 0;
  size_t first = (size_t)(start / EPB);
  for (size_t k = 0; k <= sm->nr_bitmaps; k++) {
    size_t i = (first + k) % sm->nr_bitmaps;
    struct pd_sm_bitmap *m = &sm->bm[i];
    uint32_t from = (k == 0) ? (uint32_t)(start % EPB) : 0;
    if (k == sm->nr_bitmaps && from == 0)
      break;
    if (!m->nr_free)
      continue;
    uint32_t lim = entries_in(sm, i);
    if (k == sm->nr_bitmaps)
      lim = (uint32_t)(start % EPB); /* wrapped around to the start bitmap */
    uint32_t e = find_free(m, k == sm->nr_bitmaps ? 0 : from, lim);
    if (e != UINT32_MAX) {
      *found = (uint64_t)i * EPB + e;
      return 0;
    }
  }
  return -ENOSPC;
}

int pd_sm_alloc(struct pd_sm *sm, uint64_t *b)
{
  uint64_t f;
  int r = search(sm, &f);
  if (r)
    return r;
  r = pd_sm_set(sm, f, 1);
  if (r)
    return r;
  sm->alloc_hint = f + 1;
  *b = f;
  return 0;
}

int pd_sm_alloc_run(struct pd_sm *sm, uint64_t max, uint64_t *begin, uint64_t *len)
{
  uint64_t f;
  if (!max)
    return -EINVAL;
  int r = search(sm, &f);
  if (r)
    return r;
  uint64_t n = 0;
  while (n < max && f + n < sm->nr_blocks) {
    uint64_t b = f + n;
    struct pd_sm_bitmap *m = &sm->bm[b / EPB];
    uint32_t i = (uint32_t)(b % EPB);
    if (!entry_free(m, i))
      break;
    if (!m->committed) {
      m->committed = malloc(PD_BITMAP_WORDS * 8);
      if (!m->committed)
        break;
      memcpy(m->committed, m->words, PD_BITMAP_WORDS * 8);
    }
    m->dirty = true;
    /* a whole free word at a time when aligned */
    if (i % 32 == 0 && max - n >= 32 && entries_in(sm, b / EPB) - i >= 32 &&
        m->words[i / 32] == 0 && m->committed[i / 32] == 0) {
      m->words[i / 32] = 0xAAAAAAAAAAAAAAAAull; /* 32 entries of count 1 */
      m->nr_free -= 32;
      n += 32;
      continue;
    }
    bits_set(m->words, i, 1);
    m->nr_free--;
    n++;
  }
  if (!n)
    return -ENOMEM;
  sm->nr_allocated += n;
  sm->gen++;
  *begin = f;
  *len = n;
  sm->alloc_hint = f + n;
  return 0;
}

int pd_sm_keep_out(struct pd_sm *sm, const struct pd_sm *old)
{
  for (size_t i = 0; i < sm->nr_bitmaps && i < old->nr_bitmaps; i++) {
    struct pd_sm_bitmap *m = &sm->bm[i];
    if (!m->committed) {
      m->committed = malloc(PD_BITMAP_WORDS * 8);
      if (!m->committed)
        return -ENOMEM;
      memcpy(m->committed, m->words, PD_BITMAP_WORDS * 8);
    }
    /* only zero / non-zero matters to allocation, so OR-ing counts is enough */
    for (uint32_t wi = 0; wi < PD_BITMAP_WORDS; wi++)
      m->committed[wi] |= old->bm[i].words[wi];
  }
  return 0;
}

void pd_sm_committed(struct pd_sm *sm)
{
  for (size_t i = 0; i < sm->nr_bitmaps; i++) {
    free(sm->bm[i].committed);
    sm->bm[i].committed = NULL;
    sm->bm[i].dirty = false;
  }
  sm->ovd_n = 0;
}

void pd_sm_recount(struct pd_sm *sm)
{
  uint64_t alloc = 0;
  for (size_t i = 0; i < sm->nr_bitmaps; i++) {
    uint32_t n = entries_in(sm, i), fr = 0;
    const uint64_t *w = sm->bm[i].words;
    for (uint32_t wi = 0; wi * 32 < n; wi++) {
      uint64_t x = w[wi];
      uint64_t used = (x | (x >> 1)) & 0x5555555555555555ull;
      uint32_t in = n - wi * 32 >= 32 ? 32 : n - wi * 32;
      uint64_t mask = in == 32 ? 0x5555555555555555ull : (0x5555555555555555ull & ((1ull << (2 * in)) - 1));
      fr += in - (uint32_t)__builtin_popcountll(used & mask);
    }
    sm->bm[i].nr_free = fr;
    alloc += n - fr;
  }
  sm->nr_allocated = alloc;
}

uint32_t pd_sm_none_free_before(const struct pd_sm *sm, size_t i)
{
  const struct pd_sm_bitmap *m = &sm->bm[i];
  uint32_t lim = entries_in(sm, i);
  const uint64_t lo = 0x5555555555555555ull;
  for (uint32_t wi = 0; wi * 32 < lim; wi++) {
    uint64_t w = m->words[wi];
    uint64_t freebits = ~((w | (w >> 1)) & lo) & lo;
    if (freebits) {
      uint32_t e = wi * 32 + (uint32_t)__builtin_ctzll(freebits) / 2;
      return e < lim ? e : lim;
    }
  }
  return lim;
}
