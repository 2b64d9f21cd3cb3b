/* CRC-32C vectors and the block checksum rule of dm persistent-data. */
#include "testutil.h"
#include "pdata/pdata-internal.h"

START_TEST(test_vectors)
{
  /* RFC 3720 B.4 and the common check value */
  ck_assert_uint_eq(pd_crc32c("123456789", 9), 0xE3069283u);
  uint8_t buf[32];
  memset(buf, 0, sizeof buf);
  ck_assert_uint_eq(pd_crc32c(buf, 32), 0x8A9136AAu);
  memset(buf, 0xFF, sizeof buf);
  ck_assert_uint_eq(pd_crc32c(buf, 32), 0x62A8AB43u);
  for (int i = 0; i < 32; i++)
    buf[i] = (uint8_t)i;
  ck_assert_uint_eq(pd_crc32c(buf, 32), 0x46DD794Eu);
  ck_assert_uint_eq(pd_crc32c("", 0), 0);
}
END_TEST

START_TEST(test_hw_matches_table)
{
  uint8_t buf[5000];
  uint64_t s = 88172645463325252ull;
  for (size_t i = 0; i < sizeof buf; i++) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    buf[i] = (uint8_t)s;
  }
  /* every alignment and length mix, so both paths' head/body/tail code runs */
  for (size_t off = 0; off < 9; off++)
    for (size_t len = 0; len < 300; len += 7)
      ck_assert_uint_eq(pd_crc32c_update(~0u, buf + off, len), pd_crc32c_sw(~0u, buf + off, len));
  ck_assert_uint_eq(pd_crc32c_update(~0u, buf, 4096), pd_crc32c_sw(~0u, buf, 4096));
  /* Around the length where the instruction path runs three chains at once
   * (a block's checksummed 4092 bytes and every split of head and tail). */
  for (size_t off = 0; off < 9; off++)
    for (size_t len = 4060; len < 4100; len++)
      ck_assert_uint_eq(pd_crc32c_update(~0u, buf + off, len), pd_crc32c_sw(~0u, buf + off, len));
  ck_assert_uint_eq(pd_crc32c_update(0x12345678u, buf + 3, 4990),
                    pd_crc32c_sw(0x12345678u, buf + 3, 4990));
  /* Both paths against values from a bit-at-a-time CRC-32C written apart
   * (polynomial 0x82F63B78), so a CPU without SSE4.2, where both calls take
   * the table path, still checks the table. */
  static const struct { size_t off, len; uint32_t crc; } known[] = {
    { 0, 4096, 0x6dcfcc5au }, { 1, 4095, 0x755e07feu }, { 3, 1000, 0xa718972du },
    { 7, 259, 0x2937cd21u },  { 5, 17, 0x8bc59b63u },   { 2, 4997, 0xb05874f6u },
  };
  for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
    ck_assert_uint_eq(pd_crc32c_sw(~0u, buf + known[i].off, known[i].len), known[i].crc);
    ck_assert_uint_eq(pd_crc32c_update(~0u, buf + known[i].off, known[i].len), known[i].crc);
  }
}
END_TEST

/* Several three-chain rounds in one call, and a chained update. */
START_TEST(test_hw_long_buffers)
{
  size_t n = 64 << 10;
  uint8_t *buf = malloc(n + 8);
  for (size_t i = 0; i < n + 8; i++)
    buf[i] = (uint8_t)(i * 131 + (i >> 9));
  for (size_t off = 0; off < 8; off += 3) {
    ck_assert_uint_eq(pd_crc32c_update(~0u, buf + off, n), pd_crc32c_sw(~0u, buf + off, n));
    uint32_t c = pd_crc32c_update(~0u, buf + off, 10000);
    ck_assert_uint_eq(pd_crc32c_update(c, buf + off + 10000, n - 10000),
                      pd_crc32c_sw(~0u, buf + off, n));
  }
  free(buf);
}
END_TEST

START_TEST(test_block_checksum_rule)
{
  uint8_t blk[4096];
  memset(blk, 0, sizeof blk);
  blk[100] = 7;
  /* csum = crc32c(block + 4, 4092) ^ 0xFFFFFFFF ^ salt */
  uint32_t want = pd_crc32c(blk + 4, 4092) ^ 0xFFFFFFFFu ^ PD_SALT_NODE;
  ck_assert_uint_eq(pd_block_csum(blk, PD_SALT_NODE), want);
  pd_block_prepare(blk, 42, PD_BT_NODE);
  ck_assert_uint_eq(ts__le64(blk + 8), 42);
  /* a node header is also checked: make it a valid empty leaf first */
  ts__put32(blk + NODE_FLAGS, PD_NODE_LEAF);
  ts__put32(blk + NODE_MAX, 252);
  ts__put32(blk + NODE_VSIZE, 8);
  pd_block_prepare(blk, 42, PD_BT_NODE);
  ck_assert_int_eq(pd_block_validate(blk, 42, PD_BT_NODE, NULL, 0), 0);
  ck_assert_int_eq(pd_block_validate(blk, 43, PD_BT_NODE, NULL, 0), -EILSEQ);
  ck_assert_int_eq(pd_block_validate(blk, 42, PD_BT_BITMAP, NULL, 0), -EILSEQ);
  blk[2000] ^= 1;
  ck_assert_int_eq(pd_block_validate(blk, 42, PD_BT_NODE, NULL, 0), -EILSEQ);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("crc32c");
  TCase *tc = tcase_create("crc32c");
  tcase_add_test(tc, test_vectors);
  tcase_add_test(tc, test_hw_matches_table);
  tcase_add_test(tc, test_hw_long_buffers);
  tcase_add_test(tc, test_block_checksum_rule);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
