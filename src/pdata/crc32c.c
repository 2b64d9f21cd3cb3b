/* CRC-32C (Castagnoli), used by every dm persistent-data block checksum.
 * Uses the SSE4.2 crc32 instruction when the CPU has it, a slicing-by-8
 * table otherwise. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "pdata/pdata-internal.h"

static uint32_t crc_table[8][256];
static int crc_impl; /* 0 = not chosen yet, 1 = table, 2 = sse4.2 */

static void crc_init_table(void)
{
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++)
      c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    crc_table[0][i] = c;
  }
  for (uint32_t i = 0; i < 256; i++)
    for (int t = 1; t < 8; t++)
      crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
}

static uint32_t crc_sw(uint32_t crc, const uint8_t *p, size_t len)
{
  while (len && ((uintptr_t)p & 7)) {
    crc = crc_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    len--;
  }
  while (len >= 8) {
    uint64_t w;
    memcpy(&w, p, 8);
    w ^= crc; /* little-endian hosts only: checked at build time below */
    crc = crc_table[7][w & 0xff] ^ crc_table[6][(w >> 8) & 0xff] ^
          crc_table[5][(w >> 16) & 0xff] ^ crc_table[4][(w >> 24) & 0xff] ^
          crc_table[3][(w >> 32) & 0xff] ^ crc_table[2][(w >> 40) & 0xff] ^
          crc_table[1][(w >> 48) & 0xff] ^ crc_table[0][w >> 56];
    p += 8;
    len -= 8;
  }
  while (len--)
    crc = crc_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
  return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t crc, const uint8_t *p, size_t len)
{
  uint64_t c = crc;
  while (len && ((uintptr_t)p & 7)) {
    c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
    len--;
  }
  while (len >= 8) {
    uint64_t w;
    memcpy(&w, p, 8);
    c = __builtin_ia32_crc32di(c, w);
    p += 8;
    len -= 8;
  }
  while (len--)
    c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
  return (uint32_t)c;
}
#endif

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the table CRC path assumes a little-endian host"
#endif

static void crc_choose(void)
{
  /* Racing initialisers compute identical tables and the same choice. */
  crc_init_table();
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("sse4.2")) {
    __atomic_store_n(&crc_impl, 2, __ATOMIC_RELEASE);
    return;
  }
#endif
  __atomic_store_n(&crc_impl, 1, __ATOMIC_RELEASE);
}

uint32_t pd_crc32c_update(uint32_t crc, const void *buf, size_t len)
{
  int impl = __atomic_load_n(&crc_impl, __ATOMIC_ACQUIRE);
  if (!impl) {
    crc_choose();
    impl = crc_impl;
  }
#if defined(__x86_64__)
  if (impl == 2)
    return crc_hw(crc, buf, len);
#endif
  return crc_sw(crc, buf, len);
}

uint32_t pd_crc32c_sw(uint32_t crc, const void *buf, size_t len)
{
  if (!__atomic_load_n(&crc_impl, __ATOMIC_ACQUIRE))
    crc_choose();
  return crc_sw(crc, buf, len);
}

uint32_t pd_crc32c(const void *buf, size_t len)
{
  return pd_crc32c_update(0xFFFFFFFFu, buf, len) ^ 0xFFFFFFFFu;
}

uint32_t pd_block_csum(const void *block, uint32_t salt)
{
  /* dm_bm_checksum: CRC without the final inversion, xor the block type salt. */
  return pd_crc32c_update(0xFFFFFFFFu, (const uint8_t *)block + 4, PD_BLOCK_SIZE - 4) ^ salt;
}
