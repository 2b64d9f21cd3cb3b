/* snapshot-origin with two snapshots under concurrent load: origin writers,
 * snapshot writers (each in its own region), provisioners and readers. The
 * snapshots must only ever show their frozen contents (or their own writes),
 * each chunk is copied once per snapshot, and all of it survives a reopen. */
#include "testutil.h"

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define SIZE (1024 * 1024)
#define REGION (64 * 1024) /* snapshot writer i owns [i * REGION, (i + 1) * REGION) */

static const char *conf =
    "{\"version\":1,\"layers\":{"
    "\"base\":{\"type\":\"file\",\"path\":\"base.img\",\"size\":\"1M\",\"create\":true},"
    "\"cow1\":{\"type\":\"file\",\"path\":\"cow1.img\",\"size\":\"2M\",\"create\":true},"
    "\"cow2\":{\"type\":\"file\",\"path\":\"cow2.img\",\"size\":\"2M\",\"create\":true},"
    "\"origin\":{\"type\":\"snapshot-origin\",\"child\":\"base\"},"
    "\"snap1\":{\"type\":\"snapshot\",\"origin\":\"origin\",\"cow\":\"cow1\",\"chunk_size\":\"4K\","
    "\"create\":true},"
    "\"snap2\":{\"type\":\"snapshot\",\"origin\":\"origin\",\"cow\":\"cow2\",\"chunk_size\":\"16K\","
    "\"create\":true}}}";

struct shared {
  ts_stack *s;
  unsigned char *frozen;   /* what both snapshots showed when taken */
  unsigned char *snapview[2];
  _Atomic int stop;
  _Atomic int bad;
};

struct worker {
  struct shared *sh;
  int id;
};

static uint64_t next(uint64_t *x)
{
  *x = *x * 6364136223846793005ull + 1442695040888963407ull;
  return *x >> 20;
}

static void *origin_writer(void *arg)
{
  struct worker *w = arg;
  ts_dev *o = ts_stack_node(w->sh->s, "origin");
  unsigned char buf[40 * 1024];
  uint64_t x = (uint64_t)w->id + 1;
  for (int i = 0; i < 200; i++) {
    uint64_t len = (next(&x) % 80 + 1) * 512, off = next(&x) % ((SIZE - len) / 512 + 1) * 512;
    ts_test_pattern(buf, len, x);
    if (ts_pwrite(o, buf, len, off, 0))
      atomic_fetch_add(&w->sh->bad, 1);
  }
  return NULL;
}

/* Writes inside its own region of snapshot (id % 2), keeping the model. */
static void *snap_writer(void *arg)
{
  struct worker *w = arg;
  int k = w->id % 2;
  ts_dev *sn = ts_stack_node(w->sh->s, k ? "snap2" : "snap1");
  unsigned char buf[8 * 1024];
  uint64_t x = (uint64_t)w->id * 31 + 7, base = (uint64_t)w->id * REGION;
  for (int i = 0; i < 100; i++) {
    uint64_t len = (next(&x) % 16 + 1) * 512, off = base + next(&x) % ((REGION - len) / 512 + 1) * 512;
    ts_test_pattern(buf, len, x);
    if (ts_pwrite(sn, buf, len, off, 0))
      atomic_fetch_add(&w->sh->bad, 1);
    memcpy(w->sh->snapview[k] + off, buf, len);
  }
  return NULL;
}

/* Reads outside the snapshot writers' regions: always the frozen data. */
static void *reader(void *arg)
{
  struct worker *w = arg;
  unsigned char buf[32 * 1024];
  uint64_t x = (uint64_t)w->id * 977 + 5, lo = 4 * REGION;
  while (!atomic_load(&w->sh->stop)) {
    ts_dev *sn = ts_stack_node(w->sh->s, next(&x) & 1 ? "snap2" : "snap1");
    uint64_t len = (next(&x) % 64 + 1) * 512, off = lo + next(&x) % ((SIZE - lo - len) / 512 + 1) * 512;
    if (ts_pread(sn, buf, len, off) || memcmp(buf, w->sh->frozen + off, len) != 0)
      atomic_fetch_add(&w->sh->bad, 1);
  }
  return NULL;
}

static void *provisioner(void *arg)
{
  struct worker *w = arg;
  uint64_t x = (uint64_t)w->id * 13 + 1, lo = 4 * REGION;
  for (int i = 0; i < 50; i++) {
    ts_dev *sn = ts_stack_node(w->sh->s, next(&x) & 1 ? "snap2" : "snap1");
    uint64_t len = (next(&x) % 8 + 1) * 4096, off = lo + next(&x) % ((SIZE - lo - len) / 4096 + 1) * 4096;
    if (ts_provision(sn, off, len))
      atomic_fetch_add(&w->sh->bad, 1);
  }
  return NULL;
}

static long long layer_int(ts_stack *s, const char *name, const char *key)
{
  char *txt = ts_dev_status_json(ts_stack_node(s, name));
  json_t *o = json_loads(txt, 0, NULL);
  json_t *j = json_object_get(json_object_get(o, "layer"), key);
  long long v = json_is_boolean(j) ? json_is_true(j) : json_integer_value(j);
  json_decref(o);
  free(txt);
  return v;
}

START_TEST(snapshot_load)
{
  const char *dir = ts_test_dir;
  struct shared sh = { 0 };
  sh.frozen = malloc(SIZE);
  ts_test_pattern(sh.frozen, SIZE, 1);
  sh.snapview[0] = malloc(SIZE);
  sh.snapview[1] = malloc(SIZE);
  memcpy(sh.snapview[0], sh.frozen, SIZE);
  memcpy(sh.snapview[1], sh.frozen, SIZE);
  /* Fill the base before the snapshots exist. */
  {
    char *j = ts_test_fmt("{\"version\":1,\"layers\":{\"base\":{\"type\":\"file\",\"path\":"
                          "\"base.img\",\"size\":\"1M\",\"create\":true}}}");
    ts_stack *b = ts_test_open(dir, j);
    ck_assert_int_eq(ts_pwrite(ts_stack_node(b, "base"), sh.frozen, SIZE, 0, 0), 0);
    ck_assert_int_eq(ts_stack_close(b, NULL), 0);
    free(j);
  }
  sh.s = ts_test_open(dir, conf);
  struct worker w[12];
  pthread_t t[12];
  void *(*fn[12])(void *) = { origin_writer, origin_writer, origin_writer, snap_writer,
                              snap_writer,   snap_writer,   snap_writer,   reader,
                              reader,        reader,        provisioner,   provisioner };
  for (int i = 0; i < 12; i++) {
    /* snapshot writers get ids 0..3 (their regions), the rest ids 10.. */
    w[i] = (struct worker){ &sh, fn[i] == snap_writer ? i - 3 : 10 + i };
    pthread_create(&t[i], NULL, fn[i], &w[i]);
  }
  for (int i = 0; i < 12; i++)
    if (fn[i] != reader)
      pthread_join(t[i], NULL);
  atomic_store(&sh.stop, 1);
  for (int i = 0; i < 12; i++)
    if (fn[i] == reader)
      pthread_join(t[i], NULL);
  ck_assert_int_eq(atomic_load(&sh.bad), 0);

  for (int pass = 0; pass < 2; pass++) {
    for (int k = 0; k < 2; k++) {
      const char *name = k ? "snap2" : "snap1";
      unsigned char *got = malloc(SIZE);
      ck_assert_int_eq(ts_pread(ts_stack_node(sh.s, name), got, SIZE, 0), 0);
      ck_assert_msg(memcmp(got, sh.snapview[k], SIZE) == 0, "%s differs (pass %d)", name, pass);
      free(got);
      ck_assert_int_eq(layer_int(sh.s, name, "valid"), 1);
    }
    ck_assert_int_eq(ts_stack_close(sh.s, NULL), 0);
    if (pass == 0)
      sh.s = ts_test_open(dir, conf);
  }
  free(sh.frozen);
  free(sh.snapview[0]);
  free(sh.snapview[1]);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("snapshot-threads");
  TCase *tc = tcase_create("threads");
  tcase_add_checked_fixture(tc, ts_test_dir_setup, ts_test_dir_teardown);
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, snapshot_load);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
