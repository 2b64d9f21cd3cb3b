/* The crash workload: opens (or creates) the pool stack in DIR and runs
 * random writes with flushes, provisions, discards, snapshots, volume
 * creates and deletes and data-space extends through the public C API,
 * reporting each step on fd 3 (see crash.h) until it is killed or has run
 * MAX_OPS ops.
 *
 *   crash_workload DIR SEED GEN_BASE
 */
#include <libthinstack/thinstack.h>

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <unistd.h>

#include "crash.h"

#define MAX_OPS 400

static unsigned seed;
static unsigned long seq;

static unsigned rnd(unsigned n) { return (unsigned)rand_r(&seed) % n; }

static void intent(char op, uint64_t a, uint64_t b, uint64_t c)
{
  dprintf(CR_REPORT_FD, "I %lu %c %llu %llu %llu\n", ++seq, op, (unsigned long long)a,
          (unsigned long long)b, (unsigned long long)c);
}

static void ack(int rc) { dprintf(CR_REPORT_FD, "A %lu %d\n", seq, rc); }

static void die(const char *what, const ts_error *e)
{
  fprintf(stderr, "crash_workload: %s: %s\n", what, e->msg);
  exit(2);
}

int main(int argc, char **argv)
{
  if (argc != 4) {
    fprintf(stderr, "usage: crash_workload DIR SEED GEN_BASE\n");
    return 2;
  }
  const char *dir = argv[1];
  seed = (unsigned)strtoul(argv[2], NULL, 10);
  uint64_t gen = strtoull(argv[3], NULL, 10);
  if (chdir(dir) != 0) {
    perror("crash_workload: chdir");
    return 2;
  }
  /* The harness creates the pool; alone, the workload creates it too. */
  bool create = access("pool.meta", F_OK) != 0;
  char *json = cr_stack_json(create, NULL);
  ts_stack *s = NULL;
  ts_error e = { 0 };
  if (ts_stack_open_string(json, dir, NULL, &s, &e))
    die("open", &e);
  free(json);
  ts_dev *v = ts_stack_dev(s, "v0"), *pool = ts_stack_node(s, "pool");
  ts_pool_status st;
  if (ts_pool_get_status(pool, &st, &e))
    die("status", &e);
  uint64_t data_size = st.data_blocks * st.block_size;
  /* Which volumes exist decides what can be created or deleted. */
  ts_thin_info info[64];
  size_t n = 0;
  if (ts_pool_list_thins(pool, info, 64, &n, &e) || n > 64)
    die("list", &e);
  uint32_t snaps[CR_MAX_SNAPS + 1], thins[CR_MAX_THINS + 1];
  size_t nsnaps = 0, nthins = 0;
  for (size_t i = 0; i < n; i++) {
    if (info[i].id == 0)
      continue;
    if (info[i].id >= CR_THIN_BASE && nthins < CR_MAX_THINS)
      thins[nthins++] = info[i].id;
    else if (info[i].id < CR_THIN_BASE && nsnaps < CR_MAX_SNAPS)
      snaps[nsnaps++] = info[i].id;
  }
  static unsigned char buf[4 * CR_BLOCK];
  for (int k = 0; k < MAX_OPS; k++) {
    unsigned r = rnd(100);
    int rc;
    if (r < 48) {
      unsigned nb = 1 + rnd(4), b = rnd(CR_NBLK - nb + 1);
      gen++;
      for (unsigned i = 0; i < nb * CR_SPB; i++)
        cr_fill_sector(buf + (size_t)i * CR_SECTOR, gen, (uint64_t)b * CR_SPB + i);
      intent('W', b, nb, gen);
      rc = ts_pwrite(v, buf, (size_t)nb * CR_BLOCK, (uint64_t)b * CR_BLOCK, 0);
    } else if (r < 60) {
      intent('F', 0, 0, 0);
      rc = ts_flush(v);
    } else if (r < 68) {
      unsigned nb = 1 + rnd(8), b = rnd(CR_NBLK - nb + 1);
      intent('P', b, nb, 0);
      rc = ts_provision(v, (uint64_t)b * CR_BLOCK, (uint64_t)nb * CR_BLOCK);
    } else if (r < 76) {
      unsigned nb = 1 + rnd(4), b = rnd(CR_NBLK - nb + 1);
      intent('D', b, nb, 0);
      rc = ts_discard(v, (uint64_t)b * CR_BLOCK, (uint64_t)nb * CR_BLOCK);
    } else if (r < 84 && nsnaps < CR_MAX_SNAPS) {
      uint32_t id = 1 + rnd(CR_THIN_BASE - 1);
      bool used = false;
      for (size_t i = 0; i < nsnaps; i++)
        used |= snaps[i] == id;
      if (used)
        continue;
      intent('S', id, 0, 0);
      rc = ts_pool_create_snap(pool, id, 0, &e);
      if (!rc)
        snaps[nsnaps++] = id;
    } else if (r < 90 && nsnaps) {
      size_t i = rnd((unsigned)nsnaps);
      intent('X', snaps[i], 0, 0);
      rc = ts_pool_delete_thin(pool, snaps[i], &e);
      if (!rc)
        snaps[i] = snaps[--nsnaps];
    } else if (r < 95) {
      if (nthins < CR_MAX_THINS) {
        uint32_t id = CR_THIN_BASE + rnd(1000);
        bool used = false;
        for (size_t i = 0; i < nthins; i++)
          used |= thins[i] == id;
        if (used)
          continue;
        intent('T', id, 0, 0);
        rc = ts_pool_create_thin(pool, id, &e);
        if (!rc)
          thins[nthins++] = id;
      } else {
        size_t i = rnd((unsigned)nthins);
        intent('X', thins[i], 0, 0);
        rc = ts_pool_delete_thin(pool, thins[i], &e);
        if (!rc)
          thins[i] = thins[--nthins];
      }
    } else if (data_size + (16u << 20) <= CR_DATA_MAX) {
      intent('E', data_size + (16u << 20), 0, 0);
      rc = ts_pool_extend(pool, data_size + (16u << 20), &e);
      if (!rc)
        data_size += 16u << 20;
    } else {
      intent('F', 0, 0, 0);
      rc = ts_flush(v);
    }
    ack(rc);
    if (rc) {
      fprintf(stderr, "crash_workload: op %lu failed: %s %s\n", seq, ts_strerror(rc), e.msg);
      return 1;
    }
  }
  if (ts_stack_close(s, &e))
    die("close", &e);
  return 0;
}
