/* file layer: every op against a real sparse file, checked through the file
 * itself (st_blocks, contents) as well as through the library. */
#include "testutil.h"

#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char *img;

static void setup(void)
{
  ts_test_dir_setup();
  img = ts_test_file("disk.img");
}

#define FILE_STACK(extra)                                                                     \
  "{ \"version\": 1, \"layers\": { \"d\": { \"type\": \"file\", \"path\": \"disk.img\", "     \
  "\"size\": \"64M\", \"create\": true " extra " } }, \"exports\": [\"d\"] }"

START_TEST(create_and_reopen)
{
  ts_stack *s = ts_test_open(ts_test_dir, FILE_STACK(""));
  ts_dev *d = ts_stack_dev(s, "d");
  ck_assert_uint_eq(ts_dev_size(d), 64 << 20);
  ck_assert_uint_lt(ts_test_allocated(img), 1 << 20); /* created sparse */
  char buf[8192], back[8192];
  ts_test_pattern(buf, sizeof buf, 1);
  ck_assert_int_eq(ts_pwrite(d, buf, sizeof buf, 1 << 20, TS_IO_FUA), 0);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  /* Reopen: create:true opens what exists and checks the size. */
  s = ts_test_open(ts_test_dir, FILE_STACK(""));
  d = ts_stack_dev(s, "d");
  ck_assert_int_eq(ts_pread(d, back, sizeof back, 1 << 20), 0);
  ck_assert_mem_eq(buf, back, sizeof buf);
  ts_stack_close(s, NULL);
  /* And the bytes are in the file where they belong. */
  int fd = open(img, O_RDONLY);
  ck_assert_int_eq(pread(fd, back, sizeof back, 1 << 20), (ssize_t)sizeof back);
  close(fd);
  ck_assert_mem_eq(buf, back, sizeof buf);
}
END_TEST

START_TEST(provision_discard_zero)
{
  ts_stack *s = ts_test_open(ts_test_dir, FILE_STACK(""));
  ts_dev *d = ts_stack_dev(s, "d");
  const ts_limits *l = ts_dev_limits(d);
  ck_assert_int_eq(ts_limits_cap(l, TS_OP_PROVISION), TS_CAP_NATIVE);
  ck_assert(l->discard_zeroes);

  ck_assert_int_eq(ts_provision(d, 0, 32 << 20), 0);
  ck_assert_uint_ge(ts_test_allocated(img), 32 << 20);
  ck_assert_uint_lt(ts_test_allocated(img), (32 << 20) + (1 << 20));

  /* Provisioned and never written: allocated, reads zeroes. */
  ts_extent_list e = { 0 };
  ck_assert_int_eq(ts_block_status(d, 0, 64 << 20, &e), 0);
  ck_assert_uint_eq(e.n, 2);
  ck_assert_uint_eq(e.v[0].length, 32 << 20);
  ck_assert_uint_eq(e.v[0].flags, TS_EXTENT_ZERO);
  ck_assert_uint_eq(e.v[1].flags, TS_EXTENT_HOLE | TS_EXTENT_ZERO);
  ts_extent_list_free(&e);
  char *buf = malloc(1 << 20), *zero = calloc(1, 1 << 20);
  ck_assert_int_eq(ts_pread(d, buf, 1 << 20, 4 << 20), 0);
  ck_assert_mem_eq(buf, zero, 1 << 20);

  /* Written data, then zeroes without unmap (stays allocated) and with unmap. */
  ts_test_pattern(buf, 1 << 20, 3);
  ck_assert_int_eq(ts_pwrite(d, buf, 1 << 20, 40 << 20, 0), 0);
  ck_assert_int_eq(ts_write_zeroes(d, 40 << 20, 512 << 10, 0), 0);
  ck_assert_int_eq(ts_pread(d, buf, 512 << 10, 40 << 20), 0);
  ck_assert_mem_eq(buf, zero, 512 << 10);
  uint64_t before = ts_test_allocated(img);
  ck_assert_int_eq(ts_write_zeroes(d, 40 << 20, 1 << 20, TS_IO_MAY_UNMAP | TS_IO_NOFALLBACK), 0);
  ck_assert_uint_le(ts_test_allocated(img), before - (1 << 20));

  /* Discard gives the provisioned space back and reads zeroes. */
  ck_assert_int_eq(ts_discard(d, 0, 32 << 20), 0);
  ck_assert_uint_lt(ts_test_allocated(img), 1 << 20);
  ck_assert_int_eq(ts_pread(d, buf, 1 << 20, 0), 0);
  ck_assert_mem_eq(buf, zero, 1 << 20);
  ck_assert_int_eq(ts_flush(d), 0);
  free(buf);
  free(zero);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
}
END_TEST

/* Data written into a provisioned range, not yet written back: ext4 keeps
 * the extent unwritten until writeback, yet the bytes are data. */
START_TEST(written_into_provisioned)
{
  ts_stack *s = ts_test_open(ts_test_dir, FILE_STACK(""));
  ts_dev *d = ts_stack_dev(s, "d");
  ck_assert_int_eq(ts_provision(d, 0, 1 << 20), 0);
  char *buf = malloc(64 << 10);
  ts_test_pattern(buf, 64 << 10, 9);
  ck_assert_int_eq(ts_pwrite(d, buf, 64 << 10, 0, 0), 0);
  ts_extent_list e = { 0 };
  ck_assert_int_eq(ts_block_status(d, 0, 1 << 20, &e), 0);
  ck_assert_uint_ge(e.n, 2);
  ck_assert_uint_eq(e.v[0].offset, 0);
  ck_assert_uint_eq(e.v[0].length, 64 << 10);
  ck_assert_uint_eq(e.v[0].flags, 0);
  ck_assert_uint_eq(e.v[1].offset, 64 << 10);
  ck_assert_uint_eq(e.v[1].flags, TS_EXTENT_ZERO);
  ts_extent_list_free(&e);
  free(buf);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
}
END_TEST

START_TEST(direct_io_unaligned_buffers)
{
  ts_stack *s = ts_test_open(ts_test_dir, FILE_STACK(", \"direct\": true"));
  ts_dev *d = ts_stack_dev(s, "d");
  ck_assert_uint_eq(ts_dev_limits(d)->logical_block_size, 4096);
  /* Deliberately misaligned memory: the layer must bounce it. */
  char *raw = malloc(3 * 4096 + 1), *buf = raw + 1;
  char back[8192];
  ts_test_pattern(buf, 8192, 9);
  ck_assert_int_eq(ts_pwrite(d, buf, 8192, 4096, 0), 0);
  ck_assert_int_eq(ts_pread(d, back, 8192, 4096), 0);
  ck_assert_mem_eq(buf, back, 8192);
  ck_assert_int_eq(ts_pwrite(d, buf, 512, 0, 0), -EINVAL); /* below the block size */
  free(raw);
  ts_stack_close(s, NULL);
}
END_TEST

static uint64_t bounced(ts_dev *d)
{
  char *st = ts_dev_status_json(d);
  json_t *j = json_loads(st, 0, NULL);
  free(st);
  ck_assert_ptr_nonnull(j);
  json_t *b = json_object_get(json_object_get(j, "layer"), "bounced_bytes");
  ck_assert_ptr_nonnull(b);
  uint64_t n = (uint64_t)json_integer_value(b);
  json_decref(j);
  return n;
}

/* With O_DIRECT only the unaligned pieces of an iovec are copied: aligned
 * requests and aligned pieces reach the file as they are. */
START_TEST(direct_io_bounces_only_unaligned)
{
  ts_stack *s = ts_test_open(ts_test_dir, FILE_STACK(", \"direct\": true"));
  ts_dev *d = ts_stack_dev(s, "d");
  char *mem, *back;
  ck_assert_int_eq(posix_memalign((void **)&mem, 4096, 64 << 10), 0);
  ck_assert_int_eq(posix_memalign((void **)&back, 4096, 64 << 10), 0);
  ts_test_pattern(mem, 64 << 10, 11);

  /* Wholly aligned: nothing copied. */
  ck_assert_int_eq(ts_pwrite(d, mem, 16 << 10, 0, 0), 0);
  ck_assert_int_eq(ts_pread(d, back, 16 << 10, 0), 0);
  ck_assert_mem_eq(mem, back, 16 << 10);
  ck_assert_uint_eq(bounced(d), 0);

  /* Aligned 8K, a misaligned 4K, aligned 8K: only the middle 4K bounces. */
  char *odd = malloc((4 << 10) + 1);
  memcpy(odd + 1, mem + (8 << 10), 4 << 10);
  struct iovec w[3] = { { mem, 8 << 10 }, { odd + 1, 4 << 10 }, { mem + (12 << 10), 8 << 10 } };
  ck_assert_int_eq(ts_pwritev(d, w, 3, 1 << 20, 0), 0);
  ck_assert_uint_eq(bounced(d), 4 << 10);
  memset(odd, 0, (4 << 10) + 1);
  struct iovec rv[3] = { { back, 8 << 10 }, { odd + 1, 4 << 10 }, { back + (12 << 10), 8 << 10 } };
  ck_assert_int_eq(ts_preadv(d, rv, 3, 1 << 20), 0);
  ck_assert_uint_eq(bounced(d), 8 << 10);
  memcpy(back + (8 << 10), odd + 1, 4 << 10);
  ck_assert_mem_eq(mem, back, 20 << 10);
  /* Bytes are where they belong in the file, read around the library. */
  int fd = open(img, O_RDONLY);
  ck_assert_int_eq(pread(fd, back, 20 << 10, 1 << 20), 20 << 10);
  close(fd);
  ck_assert_mem_eq(mem, back, 20 << 10);

  /* Aligned memory, lengths off the block: 6K + 2K. The first block goes
   * directly, the 2K tail and the next 2K share one bounced block. */
  struct iovec t[2] = { { mem, 6 << 10 }, { mem + (32 << 10), 2 << 10 } };
  ck_assert_int_eq(ts_pwritev(d, t, 2, 2 << 20, 0), 0);
  ck_assert_uint_eq(bounced(d), 12 << 10);
  ck_assert_int_eq(ts_pread(d, back, 8 << 10, 2 << 20), 0);
  ck_assert_mem_eq(back, mem, 6 << 10);
  ck_assert_mem_eq(back + (6 << 10), mem + (32 << 10), 2 << 10);

  /* A misaligned request larger than the bounce cap goes in steps. */
  char *big = malloc((3 << 20) + 1), *bigback = malloc(3 << 20);
  ts_test_pattern(big + 1, 3 << 20, 12);
  ck_assert_int_eq(ts_pwrite(d, big + 1, 3 << 20, 8 << 20, 0), 0);
  ck_assert_int_eq(ts_pread(d, bigback, 3 << 20, 8 << 20), 0);
  ck_assert_mem_eq(big + 1, bigback, 3 << 20);
  free(big);
  free(bigback);
  free(odd);
  free(mem);
  free(back);
  ts_stack_close(s, NULL);
}
END_TEST

START_TEST(read_only_open)
{
  ts_stack_close(ts_test_open(ts_test_dir, FILE_STACK("")), NULL);
  ts_stack *s =
      ts_test_open(ts_test_dir, "{ \"version\": 1, \"layers\": { \"d\": { \"type\": \"file\", "
                                "\"path\": \"disk.img\", \"read_only\": true } } }");
  ts_dev *d = ts_stack_node(s, "d");
  char buf[512] = { 0 };
  ck_assert(ts_dev_limits(d)->read_only);
  ck_assert_int_eq(ts_pread(d, buf, 512, 0), 0);
  ck_assert_int_eq(ts_pwrite(d, buf, 512, 0, 0), -EROFS);
  ck_assert_int_eq(ts_provision(d, 0, 4096), -EROFS);
  ts_stack_close(s, NULL);
}
END_TEST

START_TEST(iovec_requests)
{
  ts_stack *s = ts_test_open(ts_test_dir, FILE_STACK(""));
  ts_dev *d = ts_stack_dev(s, "d");
  char a[512], b[1536], back[2048];
  ts_test_pattern(a, sizeof a, 4);
  ts_test_pattern(b, sizeof b, 5);
  struct iovec v[2] = { { a, sizeof a }, { b, sizeof b } };
  ck_assert_int_eq(ts_pwritev(d, v, 2, 8192, 0), 0);
  ck_assert_int_eq(ts_pread(d, back, sizeof back, 8192), 0);
  ck_assert_mem_eq(back, a, sizeof a);
  ck_assert_mem_eq(back + 512, b, sizeof b);
  char r1[1024], r2[1024];
  struct iovec rv[2] = { { r1, sizeof r1 }, { r2, sizeof r2 } };
  ck_assert_int_eq(ts_preadv(d, rv, 2, 8192), 0);
  ck_assert_mem_eq(r1, back, 1024);
  ck_assert_mem_eq(r2, back + 1024, 1024);
  char *st = ts_dev_status_json(d);
  ck_assert_ptr_nonnull(strstr(st, "\"allocated_bytes\""));
  free(st);
  ts_stack_close(s, NULL);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("file");
  TCase *tc = tcase_create("file");
  tcase_add_checked_fixture(tc, setup, ts_test_dir_teardown);
  tcase_add_test(tc, create_and_reopen);
  tcase_add_test(tc, provision_discard_zero);
  tcase_add_test(tc, written_into_provisioned);
  tcase_add_test(tc, direct_io_unaligned_buffers);
  tcase_add_test(tc, direct_io_bounces_only_unaligned);
  tcase_add_test(tc, read_only_open);
  tcase_add_test(tc, iovec_requests);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
