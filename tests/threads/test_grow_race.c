/* Live grow against running I/O: a thin volume grows twice while threads
 * write, read and ask its size. Requests below the old size always succeed,
 * requests past the final size always fail, requests in between succeed once
 * the grow has returned, the size a thread sees only ever goes up through
 * the sizes set, and every acknowledged write reads back. Built for TSan as
 * well (label "threads"): the size is shared between ts_dev_grow and the
 * request checks. */
#include "testutil.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { WRITERS = 3, UNIT = 4096 };
#define SIZE0 (4ull << 20)
#define SIZE1 (8ull << 20)
#define SIZE2 (16ull << 20)
#define UNITS (SIZE2 / UNIT + 64) /* a little past the end, to be refused */

static _Atomic uint64_t grown;  /* the size the last ts_dev_grow returned from */
static _Atomic uint64_t target; /* the size being grown to (set before the call) */
static _Atomic bool stop;

struct writer {
  ts_dev *dev;
  unsigned id;
  uint64_t seed;
  uint64_t tag[UNITS]; /* what unit u holds (0 = never written) */
  unsigned ok, refused, failures;
  char why[160];
};

static uint64_t rng(uint64_t *s)
{
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

static void note_failure(struct writer *w, const char *what, uint64_t u, int r)
{
  if (!w->failures++)
    snprintf(w->why, sizeof w->why, "writer %u: %s at unit %llu: %d", w->id, what,
             (unsigned long long)u, r);
}

/* Writer `id` owns the units u with u % WRITERS == id. */
static void *writer_main(void *arg)
{
  struct writer *w = arg;
  unsigned char buf[UNIT], back[UNIT];
  for (uint64_t n = 1; !atomic_load(&stop); n++) {
    uint64_t u = rng(&w->seed) % (UNITS / WRITERS) * WRITERS + w->id;
    uint64_t before = atomic_load(&grown), off = u * UNIT;
    uint64_t tag = ((uint64_t)w->id << 48) | n;
    ts_test_pattern(buf, UNIT, tag);
    int r = ts_pwrite(w->dev, buf, UNIT, off, 0);
    uint64_t after = atomic_load(&target);
    if (r == 0) {
      w->ok++;
      w->tag[u] = tag;
      if (off + UNIT > after)
        note_failure(w, "write past the size accepted", u, r);
    } else if (r == -EINVAL) {
      w->refused++;
      if (off + UNIT <= before)
        note_failure(w, "write inside the size refused", u, r);
    } else {
      note_failure(w, "write failed", u, r);
    }
    if (w->tag[u] && off + UNIT <= before) {
      r = ts_pread(w->dev, back, UNIT, off);
      ts_test_pattern(buf, UNIT, w->tag[u]);
      if (r || memcmp(buf, back, UNIT))
        note_failure(w, "read back differs", u, r);
    }
  }
  return NULL;
}

struct watcher {
  ts_dev *dev;
  unsigned failures;
  uint64_t last;
};

/* What an export does: ask the size over and over. */
static void *watcher_main(void *arg)
{
  struct watcher *w = arg;
  while (!atomic_load(&stop)) {
    uint64_t s = ts_dev_size(w->dev);
    if (s < w->last || (s != SIZE0 && s != SIZE1 && s != SIZE2))
      w->failures++;
    w->last = s;
    ts_extent_list l = { 0 };
    if (ts_block_status(w->dev, 0, s, &l))
      w->failures++;
    ts_extent_list_free(&l);
  }
  return NULL;
}

START_TEST(grow_while_writing)
{
  char *dir = ts_test_mkdtemp();
  ts_stack *s = ts_test_open(
      dir, "{ \"version\": 1, \"layers\": {"
           " \"meta\": { \"type\": \"file\", \"path\": \"pool.meta\", \"size\": \"16M\", "
           "\"create\": true },"
           " \"data\": { \"type\": \"file\", \"path\": \"pool.data\", \"size\": \"64M\", "
           "\"create\": true },"
           " \"pool\": { \"type\": \"thin-pool\", \"metadata\": \"meta\", \"data\": \"data\","
           "   \"block_size\": \"64K\", \"create\": true },"
           " \"v0\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 0, \"size\": \"4M\", "
           "\"create\": true } },"
           " \"exports\": [\"v0\"] }");
  ts_dev *v = ts_stack_node(s, "v0");
  ck_assert_ptr_nonnull(v);
  atomic_store(&grown, SIZE0);
  atomic_store(&target, SIZE0);
  atomic_store(&stop, false);
  static struct writer w[WRITERS];
  pthread_t tid[WRITERS + 1];
  for (unsigned i = 0; i < WRITERS; i++) {
    memset(&w[i], 0, sizeof w[i]);
    w[i] = (struct writer){ .dev = v, .id = i, .seed = 0x9e3779b97f4a7c15ull * (i + 1) };
    ck_assert_int_eq(pthread_create(&tid[i], NULL, writer_main, &w[i]), 0);
  }
  struct watcher wa = { .dev = v };
  ck_assert_int_eq(pthread_create(&tid[WRITERS], NULL, watcher_main, &wa), 0);

  usleep(100 * 1000);
  const uint64_t sizes[] = { SIZE1, SIZE2 };
  for (int k = 0; k < 2; k++) {
    ts_error e = { 0 };
    atomic_store(&target, sizes[k]);
    ck_assert_msg(ts_dev_grow(v, sizes[k], &e) == 0, "grow: %s", e.msg);
    atomic_store(&grown, sizes[k]);
    usleep(150 * 1000);
  }
  atomic_store(&stop, true);
  for (unsigned i = 0; i < WRITERS + 1; i++)
    pthread_join(tid[i], NULL);

  unsigned ok = 0, refused = 0;
  for (unsigned i = 0; i < WRITERS; i++) {
    ck_assert_msg(w[i].failures == 0, "%u failures, first: %s", w[i].failures, w[i].why);
    ok += w[i].ok;
    refused += w[i].refused;
  }
  ck_assert_uint_eq(wa.failures, 0);
  ck_assert_uint_eq(ts_dev_size(v), SIZE2);
  /* Both sides of the race happened: writes landed and writes were refused. */
  ck_assert_uint_gt(ok, 0);
  ck_assert_uint_gt(refused, 0);
  /* Every acknowledged write reads back, the grown part included. */
  unsigned char want[UNIT], got[UNIT];
  for (uint64_t u = 0; u < SIZE2 / UNIT; u++) {
    uint64_t tag = w[u % WRITERS].tag[u];
    if (!tag)
      continue;
    ts_test_pattern(want, UNIT, tag);
    ck_assert_int_eq(ts_pread(v, got, UNIT, u * UNIT), 0);
    ck_assert_msg(memcmp(want, got, UNIT) == 0, "unit %llu differs", (unsigned long long)u);
  }
  ts_error e = { 0 };
  ck_assert_msg(ts_stack_close(s, &e) == 0, "close: %s", e.msg);
  ts_test_rmdir(dir);
  free(dir);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("grow_race");
  TCase *t = tcase_create("grow");
  tcase_set_timeout(t, 120);
  tcase_add_test(t, grow_while_writing);
  suite_add_tcase(s, t);
  return ts_test_main(s);
}
