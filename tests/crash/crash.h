/* Shared by the crash workload and the harness that kills it: the stack,
 * the data pattern and the report protocol.
 *
 * The workload reports on fd 3, one line per event, each written after the
 * fact it states:
 *   I <seq> <op> <a> <b> <c>   about to run op seq
 *   A <seq> <rc>               op seq returned rc (0 or -errno)
 * Ops: W blk nblk gen (write whole blocks), F (flush), P blk nblk
 * (provision), D blk nblk (discard), S id (snapshot of volume 0), T id
 * (create an empty volume), X id (delete), E bytes (extend the data space). */
#ifndef TS_CRASH_H
#define TS_CRASH_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define CR_BLOCK (64u << 10)         /* pool block size */
#define CR_SECTOR 4096u              /* unit of the content model */
#define CR_VOL_SIZE (8u << 20)       /* every volume */
#define CR_NBLK (CR_VOL_SIZE / CR_BLOCK)
#define CR_SPB (CR_BLOCK / CR_SECTOR) /* sectors per block */
#define CR_NSECT (CR_VOL_SIZE / CR_SECTOR)
#define CR_DATA_START (96ull << 20)  /* data space when created */
#define CR_DATA_MAX (256ull << 20)   /* extends stop here */
#define CR_MAX_SNAPS 4
#define CR_MAX_THINS 3
#define CR_THIN_BASE 1000u           /* ids of empty volumes (T) */
#define CR_REPORT_FD 3

/* The stack in `dir`: create it, or open what is there. `extra` adds
 * layers (more volumes) when not NULL. */
static inline char *cr_stack_json(bool create, const char *extra)
{
  char *s = NULL;
  const char *c = create ? ", \"create\": true" : "";
  int n = asprintf(&s,
                   "{ \"version\": 1, \"layers\": {"
                   " \"meta\": { \"type\": \"file\", \"path\": \"pool.meta\"%s },"
                   " \"data\": { \"type\": \"file\", \"path\": \"pool.data\"%s },"
                   " \"pool\": { \"type\": \"thin-pool\", \"metadata\": \"meta\", \"data\": \"data\","
                   "   \"block_size\": \"64K\", \"commit_interval\": 0.05%s },"
                   " \"v0\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 0, \"size\": %u%s }%s%s },"
                   " \"exports\": [\"v0\"] }",
                   create ? ", \"size\": \"8M\", \"create\": true" : "",
                   create ? ", \"size\": 100663296, \"create\": true" : "", c, CR_VOL_SIZE, c,
                   extra ? ", " : "", extra ? extra : "");
  return n < 0 ? NULL : s;
}

/* Sector `idx` (of volume 0) as written by generation `gen`: a header that
 * names both, then a pattern derived from them. */
static inline void cr_fill_sector(unsigned char *p, uint64_t gen, uint64_t idx)
{
  memcpy(p, "TSCRASH", 8);
  memcpy(p + 8, &gen, 8);
  memcpy(p + 16, &idx, 8);
  uint64_t x = gen * 0x9E3779B97F4A7C15ull ^ (idx + 1) * 0xC2B2AE3D27D4EB4Full;
  for (size_t i = 24; i + 8 <= CR_SECTOR; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    memcpy(p + i, &x, 8);
  }
}

#endif
