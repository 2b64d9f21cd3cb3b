/* Crash harness: kill a workload with SIGKILL at random points, many times
 * over, and check after each kill that nothing it was promised is lost.
 *
 * crash_workload (workload.c) runs random writes, flushes, provisions,
 * discards, snapshots, volume creates and deletes and data-space extends on
 * a thin pool in files, through the public C API, and reports each op on a
 * pipe before it starts and after it returns. This program keeps a model of
 * what the pool may hold: per 4 KiB sector of volume 0 the value it had at
 * the last acknowledged commit point (a FLUSH, or any management call, which
 * commits the whole pool) plus every value written since, per block the
 * same for "mapped". After each kill both checkers (`thinstack check` and
 * Debian's `thin_check`) must pass on the metadata as the killed process left
 * it, and the reopened pool must match the model: every sector holds one of
 * its allowed values, intact; blocks whose every allowed state is mapped (or
 * unmapped) are so; every acknowledged snapshot exists with exactly the
 * content volume 0 had when it was taken; acknowledged deletes are gone;
 * acknowledged creates exist and are empty; the data space is at least the
 * last acknowledged extend. Then the model takes what was found, and the
 * next round resumes the same pool. */
#include "testutil.h"

#include "crash.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ITERATIONS 120
#define MAX_PEND 64
#define MAX_IDS 16

struct sect {
  uint64_t dur;               /* value at the last commit point (gen, 0 = zeroes) */
  uint64_t pend[MAX_PEND];    /* values since */
  int np;
};

struct blk {
  bool dur, last, pend_true, pend_false, has_pend;
};

struct vol {                  /* a snapshot or an empty volume */
  uint32_t id;
  bool required;              /* acknowledged: must exist */
  bool maybe;                 /* in flight: may exist */
  bool deleting;              /* delete in flight: may be gone */
  bool empty;                 /* a created (T) volume: no blocks */
  uint64_t *content;          /* snapshots: each sector's value */
};

static struct sect sect[CR_NSECT];
static struct blk blk[CR_NBLK];
static struct vol vols[MAX_IDS];
static size_t nvols;
static uint64_t data_required;
static char *dir;
static unsigned long acks_since_commit; /* this round's acks after its last commit point */

static struct {
  unsigned iterations, kills, clean_exits;
  unsigned long acks, durable_acks, lifecycle_acks, sectors_checked, snapshots_checked;
} count;

static uint64_t last_value(const struct sect *s) { return s->np ? s->pend[s->np - 1] : s->dur; }

static void sect_set(struct sect *s, uint64_t v)
{
  ck_assert_msg(s->np < MAX_PEND, "too many values since the last commit");
  s->pend[s->np++] = v;
}

static void blk_set(struct blk *b, bool mapped)
{
  b->has_pend = true;
  b->last = mapped;
  if (mapped)
    b->pend_true = true;
  else
    b->pend_false = true;
}

/* A commit point was acknowledged: what came before is durable. */
static void collapse(void)
{
  for (size_t i = 0; i < CR_NSECT; i++) {
    sect[i].dur = last_value(&sect[i]);
    sect[i].np = 0;
  }
  for (size_t i = 0; i < CR_NBLK; i++) {
    if (blk[i].has_pend)
      blk[i].dur = blk[i].last;
    blk[i].has_pend = blk[i].pend_true = blk[i].pend_false = false;
  }
}

static struct vol *find_vol(uint32_t id)
{
  for (size_t i = 0; i < nvols; i++)
    if (vols[i].id == id)
      return &vols[i];
  return NULL;
}

static struct vol *add_vol(uint32_t id)
{
  struct vol *v = find_vol(id);
  if (v)
    return v;
  ck_assert_uint_lt(nvols, MAX_IDS);
  v = &vols[nvols++];
  memset(v, 0, sizeof *v);
  v->id = id;
  return v;
}

static void drop_vol(struct vol *v)
{
  free(v->content);
  *v = vols[--nvols];
}

/* Ops since the last ack, by sequence number: what each intent said. */
struct op {
  char op;
  uint64_t a, b, c;
};

static struct op cur;

static void on_intent(char op, uint64_t a, uint64_t b, uint64_t c)
{
  cur = (struct op){ op, a, b, c };
  switch (op) {
  case 'W':
    for (uint64_t k = a; k < a + b; k++) {
      for (unsigned s = 0; s < CR_SPB; s++)
        sect_set(&sect[k * CR_SPB + s], c);
      blk_set(&blk[k], true);
    }
    break;
  case 'P':
    for (uint64_t k = a; k < a + b; k++)
      blk_set(&blk[k], true);
    break;
  case 'D':
    for (uint64_t k = a; k < a + b; k++) {
      for (unsigned s = 0; s < CR_SPB; s++)
        sect_set(&sect[k * CR_SPB + s], 0);
      blk_set(&blk[k], false);
    }
    break;
  case 'S': {
    struct vol *v = add_vol((uint32_t)a);
    ck_assert(!v->required);
    v->maybe = true;
    v->content = realloc(v->content, CR_NSECT * sizeof *v->content);
    for (size_t i = 0; i < CR_NSECT; i++)
      v->content[i] = last_value(&sect[i]);
    break;
  }
  case 'T': {
    struct vol *v = add_vol((uint32_t)a);
    v->maybe = true;
    v->empty = true;
    break;
  }
  case 'X': {
    struct vol *v = find_vol((uint32_t)a);
    ck_assert_msg(v && v->required, "the workload deletes unknown volume %llu", (unsigned long long)a);
    v->deleting = true;
    break;
  }
  default:
    break;
  }
}

static void on_ack(int rc)
{
  ck_assert_msg(rc == 0, "op %c failed with %s", cur.op, ts_err_name(rc));
  count.acks++;
  acks_since_commit++;
  struct vol *v;
  switch (cur.op) {
  case 'S':
  case 'T':
    v = find_vol((uint32_t)cur.a);
    v->required = true;
    v->maybe = false;
    break;
  case 'X':
    drop_vol(find_vol((uint32_t)cur.a));
    break;
  case 'E':
    data_required = cur.a;
    break;
  default:
    break;
  }
  if (strchr("FSTXE", cur.op)) {
    /* Everything acknowledged so far is now promised. */
    count.durable_acks += acks_since_commit;
    acks_since_commit = 0;
    if (cur.op != 'F')
      count.lifecycle_acks++;
    collapse();
  }
}

static char *workload_path(void)
{
  const char *b = getenv("TS_BUILD_DIR");
  return ts_test_fmt("%s/tests/crash_workload", b ? b : TS_TEST_BUILD_DIR);
}

/* One round: start the workload, kill it after `kill_after` acks and a
 * little more, reading its reports until the pipe closes. */
static void run_round(unsigned it, unsigned *rs)
{
  int p[2];
  ck_assert_int_eq(pipe(p), 0);
  char *wl = workload_path();
  char seed[32], genbase[32];
  snprintf(seed, sizeof seed, "%u", rand_r(rs));
  snprintf(genbase, sizeof genbase, "%llu", (unsigned long long)(it + 1) * 1000000ull);
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    dup2(p[1], CR_REPORT_FD);
    if (p[0] != CR_REPORT_FD)
      close(p[0]);
    if (p[1] != CR_REPORT_FD)
      close(p[1]);
    execl(wl, wl, dir, seed, genbase, (char *)NULL);
    _exit(127);
  }
  close(p[1]);
  free(wl);
  FILE *f = fdopen(p[0], "r");
  unsigned kill_after = 1 + (unsigned)rand_r(rs) % 40, acks = 0;
  bool killed = false;
  acks_since_commit = 0;
  char *line = NULL;
  size_t cap = 0;
  while (getline(&line, &cap, f) > 0) {
    unsigned long sq;
    char op;
    unsigned long long a, b, c;
    int rc;
    if (sscanf(line, "I %lu %c %llu %llu %llu", &sq, &op, &a, &b, &c) == 5) {
      on_intent(op, a, b, c);
    } else if (sscanf(line, "A %lu %d", &sq, &rc) == 2) {
      on_ack(rc);
      if (++acks == kill_after && !killed) {
        /* Somewhere in the next op, or between ops. */
        usleep((useconds_t)(rand_r(rs) % 3000));
        kill(pid, SIGKILL);
        killed = true;
      }
    } else {
      ck_abort_msg("unreadable report: %s", line);
    }
  }
  free(line);
  fclose(f);
  int st;
  ck_assert_int_eq(waitpid(pid, &st, 0), pid);
  if (WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) {
    count.kills++;
  } else {
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the workload failed (status %d)", st);
    count.clean_exits++;
  }
}

static void checkers(unsigned it)
{
  char *meta = ts_test_path(dir, "pool.meta"), *complaints = NULL, *out = NULL;
  int st = ts_test_thin_check(meta, &complaints);
  ck_assert_msg(st == 0 && complaints[0] == '\0', "round %u: thin_check (%d): %s", it, st, complaints);
  free(complaints);
  const char *b = getenv("TS_BUILD_DIR");
  st = ts_test_run(&out, "'%s/thinstack' check '%s'", b ? b : TS_TEST_BUILD_DIR, meta);
  ck_assert_msg(st == 0, "round %u: thinstack check (%d): %s", it, st, out);
  free(out);
  free(meta);
}

static uint64_t sector_value(const unsigned char *p, uint64_t idx, unsigned it)
{
  static const unsigned char zero[CR_SECTOR];
  if (memcmp(p, zero, CR_SECTOR) == 0)
    return 0;
  uint64_t gen, at;
  memcpy(&gen, p + 8, 8);
  memcpy(&at, p + 16, 8);
  ck_assert_msg(memcmp(p, "TSCRASH", 8) == 0 && at == idx,
                "round %u: sector %llu holds neither zeroes nor a sector of ours", it,
                (unsigned long long)idx);
  static unsigned char want[CR_SECTOR];
  cr_fill_sector(want, gen, idx);
  ck_assert_msg(memcmp(p, want, CR_SECTOR) == 0, "round %u: sector %llu of generation %llu is torn",
                it, (unsigned long long)idx, (unsigned long long)gen);
  return gen;
}

static void verify(unsigned it)
{
  ts_stack *s = NULL;
  ts_error e = { 0 };
  char *json = cr_stack_json(false, NULL);
  int r = ts_stack_open_string(json, dir, NULL, &s, &e);
  ck_assert_msg(r == 0, "round %u: reopen: %s", it, e.msg);
  free(json);
  ts_dev *pool = ts_stack_node(s, "pool");
  ts_thin_info info[64];
  size_t n = 0;
  ck_assert_int_eq(ts_pool_list_thins(pool, info, 64, &n, &e), 0);
  ck_assert_uint_le(n, 64);
  ts_pool_status pst;
  ck_assert_int_eq(ts_pool_get_status(pool, &pst, &e), 0);
  ck_assert_msg(pst.data_blocks * pst.block_size >= data_required,
                "round %u: data space %llu after an extend to %llu was acknowledged", it,
                (unsigned long long)(pst.data_blocks * pst.block_size),
                (unsigned long long)data_required);
  data_required = pst.data_blocks * pst.block_size;
  /* Volumes: acknowledged ones exist, deleted ones are gone. */
  bool seen0 = false;
  for (size_t i = 0; i < n; i++) {
    if (info[i].id == 0) {
      seen0 = true;
      continue;
    }
    struct vol *v = find_vol(info[i].id);
    ck_assert_msg(v && (v->required || v->maybe), "round %u: volume %u exists but was never created",
                  it, info[i].id);
    if (v->empty)
      ck_assert_msg(info[i].mapped_blocks == 0, "round %u: empty volume %u maps blocks", it, info[i].id);
  }
  ck_assert(seen0);
  for (size_t i = 0; i < nvols;) {
    bool found = false;
    for (size_t k = 0; k < n; k++)
      found |= info[k].id == vols[i].id;
    ck_assert_msg(found || !vols[i].required || vols[i].deleting,
                  "round %u: volume %u was acknowledged but is gone", it, vols[i].id);
    if (!found) {
      drop_vol(&vols[i]);
      continue;
    }
    vols[i].required = true;
    vols[i].maybe = vols[i].deleting = false;
    i++;
  }
  /* Reopen with the snapshots as layers to read them. */
  char extra[4096] = "";
  size_t len = 0;
  for (size_t i = 0; i < nvols; i++)
    if (!vols[i].empty)
      len += (size_t)snprintf(extra + len, sizeof extra - len,
                              "%s\"s%u\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": %u, \"size\": %u }",
                              len ? ", " : "", vols[i].id, vols[i].id, CR_VOL_SIZE);
  ck_assert_int_eq(ts_stack_close(s, &e), 0);
  json = cr_stack_json(false, len ? extra : NULL);
  ck_assert_msg(ts_stack_open_string(json, dir, NULL, &s, &e) == 0, "round %u: reopen: %s", it, e.msg);
  free(json);

  unsigned char *buf = malloc(CR_VOL_SIZE);
  ts_dev *v0 = ts_stack_dev(s, "v0");
  ck_assert_int_eq(ts_pread(v0, buf, CR_VOL_SIZE, 0), 0);
  for (size_t i = 0; i < CR_NSECT; i++) {
    uint64_t g = sector_value(buf + i * CR_SECTOR, i, it);
    bool ok = g == sect[i].dur;
    for (int k = 0; k < sect[i].np && !ok; k++)
      ok = g == sect[i].pend[k];
    ck_assert_msg(ok, "round %u: sector %zu holds generation %llu; the last commit point had %llu "
                      "and %d values came after",
                  it, i, (unsigned long long)g, (unsigned long long)sect[i].dur, sect[i].np);
    sect[i].dur = g;
    sect[i].np = 0;
    count.sectors_checked++;
  }
  ts_extent_list l = { 0 };
  ck_assert_int_eq(ts_block_status(v0, 0, CR_VOL_SIZE, &l), 0);
  for (size_t x = 0; x < l.n; x++)
    for (uint64_t o = l.v[x].offset; o < l.v[x].offset + l.v[x].length; o += CR_BLOCK) {
      struct blk *b = &blk[o / CR_BLOCK];
      bool mapped = !(l.v[x].flags & TS_EXTENT_HOLE);
      bool may_true = b->dur || b->pend_true, may_false = !b->dur || b->pend_false;
      ck_assert_msg(mapped ? may_true : may_false, "round %u: block %llu is %smapped", it,
                    (unsigned long long)(o / CR_BLOCK), mapped ? "" : "not ");
      b->dur = mapped;
      b->has_pend = b->pend_true = b->pend_false = false;
    }
  ts_extent_list_free(&l);
  for (size_t i = 0; i < nvols; i++) {
    if (vols[i].empty)
      continue;
    char name[32];
    snprintf(name, sizeof name, "s%u", vols[i].id);
    ck_assert_int_eq(ts_pread(ts_stack_node(s, name), buf, CR_VOL_SIZE, 0), 0);
    for (size_t k = 0; k < CR_NSECT; k++) {
      uint64_t g = sector_value(buf + k * CR_SECTOR, k, it);
      ck_assert_msg(g == vols[i].content[k],
                    "round %u: snapshot %u sector %zu holds generation %llu, not %llu", it,
                    vols[i].id, k, (unsigned long long)g, (unsigned long long)vols[i].content[k]);
    }
    count.snapshots_checked++;
  }
  free(buf);
  ck_assert_msg(ts_stack_close(s, &e) == 0, "round %u: close: %s", it, e.msg);
}

START_TEST(kill_nine_loses_nothing_promised)
{
  dir = ts_test_mkdtemp();
  unsigned rs = (unsigned)time(NULL);
  if (getenv("TS_CRASH_SEED"))
    rs = (unsigned)strtoul(getenv("TS_CRASH_SEED"), NULL, 10);
  printf("crash harness: seed %u (TS_CRASH_SEED repeats it)\n", rs);
  /* The pool and volume 0 are created and committed before the first
   * round: creating them at open is committed only later, so a kill before
   * that rightly leaves no volume, which is no promise broken. */
  char *json = cr_stack_json(true, NULL);
  ts_stack *s = ts_test_open(dir, json);
  free(json);
  ts_pool_status pst;
  ck_assert_int_eq(ts_pool_get_status(ts_stack_node(s, "pool"), &pst, NULL), 0);
  data_required = pst.data_blocks * pst.block_size;
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  time_t t0 = time(NULL);
  for (unsigned it = 0; it < ITERATIONS; it++) {
    run_round(it, &rs);
    checkers(it);
    verify(it);
    count.iterations++;
  }
  printf("crash harness: %u iterations, %u SIGKILLs mid-work, %u clean exits, %lu acknowledged ops "
         "(%lu covered by an acknowledged commit point, %lu lifecycle steps), %lu sectors and %lu "
         "snapshots verified, both checkers clean every time, %ld s\n",
         count.iterations, count.kills, count.clean_exits, count.acks, count.durable_acks,
         count.lifecycle_acks, count.sectors_checked, count.snapshots_checked,
         (long)(time(NULL) - t0));
  fflush(stdout);
  ck_assert_uint_ge(count.kills, 100);
  for (size_t i = 0; i < nvols; i++)
    free(vols[i].content);
  ts_test_rmdir(dir);
  free(dir);
}
END_TEST

int main(void)
{
  bool ok = system("command -v thin_check >/dev/null 2>&1") == 0;
  ts_test_require(ok, "needs thin_check (package thin-provisioning-tools)");
  Suite *s = suite_create("crash");
  TCase *tc = tcase_create("harness");
  tcase_set_timeout(tc, 280);
  tcase_add_test(tc, kill_nine_loses_nothing_promised);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
