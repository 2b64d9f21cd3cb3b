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
/* The crc32 instruction takes 3 cycles and issues one per cycle, so one
 * dependent chain uses a third of it. Long buffers run three chains over
 * consecutive HW_STRIDE-byte pieces and join them: the register update is
 * linear, so crc(s, A B) = shift(crc(s, A)) ^ crc(0, B), where shift is the
 * effect of HW_STRIDE zero bytes, a fixed 32-bit linear map kept as four
 * byte tables. A 4 KiB metadata block is three strides and a short tail. */
#define HW_STRIDE 1360u
static uint32_t shift_table[4][256];

__attribute__((target("sse4.2"))) static uint32_t crc_hw_serial(uint32_t crc, const uint8_t *p,
                                                                size_t len)
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

static uint32_t hw_shift(uint32_t c)
{
  return shift_table[0][c & 0xff] ^ shift_table[1][(c >> 8) & 0xff] ^
         shift_table[2][(c >> 16) & 0xff] ^ shift_table[3][c >> 24];
}

__attribute__((target("sse4.2"))) static void crc_init_shift(void)
{
  static const uint8_t zeros[HW_STRIDE];
  uint32_t basis[32];
  for (int i = 0; i < 32; i++)
    basis[i] = crc_hw_serial(1u << i, zeros, HW_STRIDE);
  for (int k = 0; k < 4; k++)
    for (uint32_t b = 0; b < 256; b++) {
      uint32_t v = 0;
      for (int i = 0; i < 8; i++)
        if (b & (1u << i))
          v ^= basis[8 * k + i];
      shift_table[k][b] = v;
    }
}

__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t crc, const uint8_t *p, size_t len)
{
  uint64_t c = crc;
  while (len && ((uintptr_t)p & 7)) {
    c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
    len--;
  }
  while (len >= 3 * HW_STRIDE) {
    uint64_t a = c, b = 0, d = 0;
    for (size_t i = 0; i < HW_STRIDE; i += 8) {
      uint64_t x, y, z;
      memcpy(&x, p + i, 8);
      memcpy(&y, p + HW_STRIDE + i, 8);
      memcpy(&z, p + 2 * HW_STRIDE + i, 8);
      a = __builtin_ia32_crc32di(a, x);
      b = __builtin_ia32_crc32di(b, y);
      d = __builtin_ia32_crc32di(d, z);
    }
    c = hw_shift(hw_shift((uint32_t)a) ^ (uint32_t)b) ^ (uint32_t)d;
    p += 3 * HW_STRIDE;
    len -= 3 * HW_STRIDE;
  }
  return crc_hw_serial((uint32_t)c, p, len);
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
    crc_init_shift();
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
