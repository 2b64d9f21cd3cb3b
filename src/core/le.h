/* Little-endian integers, as every on-disk format here stores them
 * (dm-thin metadata, dm-snapshot's exception store, dm-log-writes). One
 * load or store on a little-endian host; swapped on a big-endian one. */
#ifndef TS_CORE_LE_H
#define TS_CORE_LE_H

#include <stdint.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define TS__LE32(v) __builtin_bswap32(v)
#define TS__LE64(v) __builtin_bswap64(v)
#else
#define TS__LE32(v) (v)
#define TS__LE64(v) (v)
#endif

static inline uint32_t ts__le32(const void *p)
{
  uint32_t v;
  memcpy(&v, p, 4);
  return TS__LE32(v);
}

static inline uint64_t ts__le64(const void *p)
{
  uint64_t v;
  memcpy(&v, p, 8);
  return TS__LE64(v);
}

static inline void ts__put32(void *p, uint32_t v)
{
  v = TS__LE32(v);
  memcpy(p, &v, 4);
}

static inline void ts__put64(void *p, uint64_t v)
{
  v = TS__LE64(v);
  memcpy(p, &v, 8);
}

#endif
