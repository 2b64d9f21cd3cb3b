/* Crash consistency of the persistent store. A random workload runs against
 * an origin and a snapshot whose COW file sits under a fault layer that, from
 * its N-th write-type request on, reports success and persists nothing (a
 * device that lost power). The stack is closed and the COW file is checked
 * as it was left, then reopened without the fault layer:
 *  - every exception the snapshot had when the COW device last had persisted
 *    everything (its creating write had returned; ts_flush before a crash
 *    point is a special case) is on disk;
 *  - every exception on disk holds data the snapshot showed for that chunk
 *    at some moment from then on (never unwritten or foreign data);
 *  - the reopened snapshot reads exactly those exceptions.
 * Hundreds of crash points over ten workloads. */
#include "snaputil.h"

#include <unistd.h>

#define BSIZE (2 * MiB)
#define CH 4096u
#define NCH (BSIZE / CH)
#define OPS 30
#define WORKLOADS 10
#define POINTS 30
#define MAXCAND (OPS + 2)

static uint64_t hash(const unsigned char *p, size_t n)
{
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++)
    h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

struct model {
  unsigned char *orig, *snap;
  bool exc[NCH];           /* the snapshot has an exception for the chunk */
  bool durable[NCH];       /* ... and it must survive */
  uint64_t cur[NCH];       /* hash of the snapshot's view of the chunk */
  uint64_t cand[NCH][MAXCAND]; /* views since the last all-persisted point */
  unsigned ncand[NCH];
};

static uint64_t rnd(uint64_t *x)
{
  *x ^= *x << 13;
  *x ^= *x >> 7;
  *x ^= *x << 17;
  return *x;
}

static char *config(uint64_t after, bool fault)
{
  char *cow = fault ? ts_test_fmt("\"cowf\":{\"type\":\"file\",\"path\":\"cow.img\",\"size\":\"4M\","
                                  "\"create\":true},"
                                  "\"cow\":{\"type\":\"fault\",\"child\":\"cowf\",\"rules\":["
                                  "{\"op\":\"all\",\"action\":\"drop\",\"after\":%llu}]},",
                                  (unsigned long long)after)
                    : ts_test_fmt("\"cow\":{\"type\":\"file\",\"path\":\"cow.img\"},");
  char *j = ts_test_fmt("{\"version\":1,\"layers\":{"
                        "\"base\":{\"type\":\"file\",\"path\":\"base.img\"},%s"
                        "\"origin\":{\"type\":\"snapshot-origin\",\"child\":\"base\"},"
                        "\"snap\":{\"type\":\"snapshot\",\"origin\":\"origin\",\"cow\":\"cow\","
                        "\"chunk_size\":\"4K\",\"create\":true}}}",
                        cow);
  free(cow);
  return j;
}

/* The fault rule's counters: write-type COW requests seen and dropped. */
static void fault_counts(ts_stack *s, uint64_t *matched, uint64_t *fired)
{
  json_t *l = layer_status(s, "cow");
  json_t *r = json_array_get(json_object_get(l, "rules"), 0);
  *matched = (uint64_t)json_integer_value(json_object_get(r, "matched"));
  *fired = (uint64_t)json_integer_value(json_object_get(r, "fired"));
  json_decref(l);
}

static void mark_persisted(struct model *m)
{
  for (unsigned c = 0; c < NCH; c++) {
    m->durable[c] = m->exc[c];
    m->cand[c][0] = m->cur[c];
    m->ncand[c] = 1;
  }
}

/* Run workload `seed` with the drop rule after `after` requests; returns the
 * number of write-type requests the COW device saw. */
static uint64_t run(const char *dir, uint64_t seed, uint64_t after, struct model *m)
{
  memset(m->exc, 0, sizeof m->exc);
  ts_test_pattern(m->orig, BSIZE, 1);
  memcpy(m->snap, m->orig, BSIZE);
  for (unsigned c = 0; c < NCH; c++)
    m->cur[c] = hash(m->snap + (size_t)c * CH, CH);
  mark_persisted(m);

  char *json = config(after, true);
  ts_stack *s = snap_open(dir, json, NULL, NULL);
  free(json);
  ts_dev *o = node(s, "origin"), *sn = node(s, "snap");
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 12345, matched, fired;
  unsigned char *buf = malloc(256 * KiB);
  fault_counts(s, &matched, &fired);
  if (fired == 0)
    mark_persisted(m);
  for (int op = 0; op < OPS; op++) {
    unsigned kind = (unsigned)(rnd(&x) % 100);
    if (kind < 10) {
      ck_assert_int_eq(ts_flush(rnd(&x) & 1 ? o : sn), 0);
    } else {
      bool bulk = kind % 5 == 0;
      bool to_snap = kind >= 55;
      uint64_t len = bulk ? (rnd(&x) % 448 + 64) * 512 : (rnd(&x) % 24 + 1) * 512;
      uint64_t off = rnd(&x) % ((BSIZE - len) / 512 + 1) * 512;
      ts_test_pattern(buf, len, rnd(&x));
      ck_assert_int_eq(ts_pwrite(to_snap ? sn : o, buf, len, off, 0), 0);
      memcpy((to_snap ? m->snap : m->orig) + off, buf, len);
      for (uint64_t c = off / CH; c < (off + len + CH - 1) / CH; c++) {
        m->exc[c] = true;
        if (to_snap) {
          m->cur[c] = hash(m->snap + c * CH, CH);
          ck_assert_uint_lt(m->ncand[c], MAXCAND);
          m->cand[c][m->ncand[c]++] = m->cur[c];
        }
      }
    }
    fault_counts(s, &matched, &fired);
    if (fired == 0)
      mark_persisted(m);
  }
  fault_counts(s, &matched, &fired);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  free(buf);
  return matched;
}

static bool is_candidate(const struct model *m, uint64_t c, uint64_t h)
{
  for (unsigned i = 0; i < m->ncand[c]; i++)
    if (m->cand[c][i] == h)
      return true;
  return false;
}

/* Check the COW file as the crash left it, then reopen through the layer. */
static void check(const char *dir, const struct model *m, uint64_t after)
{
  char *p = ts_test_path(dir, "cow.img");
  void *data;
  size_t len;
  ck_assert(ts_test_read_file(p, &data, &len));
  free(p);
  const unsigned char *cow = data;
  uint64_t ncow = len / CH, per_area = CH / 16;
  static uint64_t map[NCH];
  static bool has[NCH];
  memset(has, 0, sizeof has);
  size_t nexc = 0;
  bool any_durable = false;
  for (unsigned c = 0; c < NCH; c++)
    any_durable |= m->durable[c];
  uint32_t magic = le32_at(cow);
  if (magic == 0) {
    ck_assert_msg(!any_durable, "crash after %llu: the header is gone but exceptions were durable",
                  (unsigned long long)after);
  } else {
    ck_assert_uint_eq(magic, 0x70416e53u);
    ck_assert_uint_eq(le32_at(cow + 4), 1);
    for (uint64_t area = 0;; area++) {
      uint64_t loc = 1 + area * (per_area + 1);
      ck_assert_uint_lt(loc, ncow);
      unsigned i;
      for (i = 0; i < per_area; i++) {
        const unsigned char *r = cow + loc * CH + (size_t)i * 16;
        uint64_t old = le64_at(r), nc = le64_at(r + 8);
        if (nc == 0)
          break;
        ck_assert_uint_lt(old, NCH);
        ck_assert_uint_lt(nc, ncow);
        ck_assert_msg(!has[old], "crash after %llu: two exceptions for chunk %llu",
                      (unsigned long long)after, (unsigned long long)old);
        has[old] = true;
        map[old] = nc;
        nexc++;
        ck_assert_msg(is_candidate(m, old, hash(cow + nc * CH, CH)),
                      "crash after %llu: exception %llu -> %llu holds data the snapshot never "
                      "showed there",
                      (unsigned long long)after, (unsigned long long)old, (unsigned long long)nc);
      }
      if (i < per_area)
        break;
    }
  }
  for (unsigned c = 0; c < NCH; c++)
    ck_assert_msg(!m->durable[c] || has[c], "crash after %llu: durable exception for chunk %u lost",
                  (unsigned long long)after, c);

  char *json = config(0, false);
  ts_stack *s = snap_open(dir, json, NULL, NULL);
  free(json);
  ck_assert_int_eq(status_int(s, "snap", "valid"), 1);
  ck_assert_int_eq(status_int(s, "snap", "exceptions"), (long long)nexc);
  unsigned char *got = read_all(s, "snap");
  for (unsigned c = 0; c < NCH; c++)
    if (has[c])
      ck_assert_msg(memcmp(got + (size_t)c * CH, cow + map[c] * CH, CH) == 0,
                    "reopened snapshot does not read its exception for chunk %u", c);
  free(got);
  got = read_all(s, "origin");
  ck_assert_msg(memcmp(got, m->orig, BSIZE) == 0, "the origin lost writes");
  free(got);
  /* The reopened store keeps working: one more exception, then reopen again. */
  unsigned char b[CH];
  ts_test_pattern(b, CH, after + 7);
  ck_assert_int_eq(ts_pwrite(node(s, "snap"), b, CH, 0, 0), 0);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  free(data);
}

START_TEST(random_crash_points)
{
  struct model *m = calloc(1, sizeof *m);
  m->orig = malloc(BSIZE);
  m->snap = malloc(BSIZE);
  unsigned runs = 0;
  for (uint64_t w = 0; w < WORKLOADS; w++) {
    char *dir = ts_test_mkdtemp();
    char *base = ts_test_path(dir, "base.img"), *cowp = ts_test_path(dir, "cow.img");
    prefill(dir, "base.img", BSIZE, 1);
    char *saved = ts_test_fmt("%s/base.orig", dir);
    char *cp = ts_test_fmt("cp %s %s", base, saved), *restore = ts_test_fmt("cp %s %s", saved, base);
    ck_assert_int_eq(system(cp), 0);
    uint64_t total = run(dir, w, UINT64_MAX / 2, m);
    ck_assert_uint_gt(total, 10);
    uint64_t x = w + 99;
    for (unsigned k = 0; k < POINTS; k++) {
      uint64_t after = k * (total + 1) / POINTS + rnd(&x) % ((total + 1) / POINTS + 1);
      if (after > total)
        after = total;
      unlink(cowp);
      ck_assert_int_eq(system(restore), 0);
      uint64_t seen = run(dir, w, after, m);
      ck_assert_uint_eq(seen, total); /* the same workload up to the crash */
      check(dir, m, after);
      runs++;
    }
    free(cp);
    free(restore);
    free(saved);
    free(base);
    free(cowp);
    ts_test_rmdir(dir);
    free(dir);
  }
  ck_assert_uint_eq(runs, WORKLOADS * POINTS);
  free(m->orig);
  free(m->snap);
  free(m);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("snapshot-crash");
  TCase *tc = tcase_create("crash");
  tcase_set_timeout(tc, 600);
  tcase_add_test(tc, random_crash_points);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
