/* Slicing a caller's iovec: ts_iov_slice, the ts_iov_buf room that any
 * slice of a source fits in, and ts_layer_submit_slice into a real device. */
#include "testutil.h"

#include <errno.h>
#include <libthinstack/layer.h>
#include <stdlib.h>
#include <string.h>

#define NPIECES 40 /* more than TS_IOV_INLINE: the room is allocated */

static char data[NPIECES * 512];
static struct iovec src[NPIECES];

static void setup(void)
{
  ts_test_pattern(data, sizeof data, 3);
  /* Uneven pieces: 256 and 768 bytes alternating. */
  size_t off = 0;
  for (int i = 0; i < NPIECES; i++) {
    size_t n = i % 2 ? 768 : 256;
    src[i] = (struct iovec){ data + off, n };
    off += n;
  }
}

START_TEST(slice_pieces)
{
  struct iovec out[4];
  /* [200, 1200): the tail of piece 0, all of 1, the head of 2. */
  ck_assert_int_eq(ts_iov_slice(src, NPIECES, 200, 1000, out, 4), 3);
  ck_assert_ptr_eq(out[0].iov_base, data + 200);
  ck_assert_uint_eq(out[0].iov_len, 56);
  ck_assert_uint_eq(out[1].iov_len, 768);
  ck_assert_uint_eq(out[2].iov_len, 176);
  ck_assert_int_eq(ts_iov_slice(src, NPIECES, 0, sizeof data, out, 4), -ENOBUFS);
}
END_TEST

START_TEST(buf_fits_any_slice)
{
  ts_iov_buf b;
  ck_assert_int_eq(ts_iov_buf_init(&b, NPIECES), 0);
  ck_assert_int_ge(b.cap, NPIECES);
  int n = ts_iov_buf_slice(&b, src, NPIECES, 0, sizeof data);
  ck_assert_int_eq(n, NPIECES);
  char back[sizeof data];
  ts_iov_to_buf(b.v, n, 0, back, sizeof back);
  ck_assert_mem_eq(back, data, sizeof data);
  /* An empty slice or one past the end is a bookkeeping error: -EIO. */
  ck_assert_int_eq(ts_iov_buf_slice(&b, src, NPIECES, 100, 0), -EIO);
  ck_assert_int_eq(ts_iov_buf_slice(&b, src, NPIECES, sizeof data - 512, 1024), -EIO);
  ts_iov_buf_free(&b);
  /* A few pieces stay inline. */
  ck_assert_int_eq(ts_iov_buf_init(&b, 3), 0);
  ck_assert_ptr_eq(b.v, b.inl);
  ts_iov_buf_free(&b);
}
END_TEST

START_TEST(submit_slice_writes_the_bytes)
{
  char *dir = ts_test_mkdtemp();
  ts_stack *s = ts_test_open(dir, "{\"version\": 1, \"layers\": {\"m\": {\"type\": \"memory\", "
                                  "\"size\": \"1M\"}}, \"exports\": [\"m\"]}");
  ts_dev *d = ts_stack_dev(s, "m");
  ts_io io = { .op = TS_OP_WRITE, .iov = src, .iovcnt = NPIECES, .length = sizeof data };
  /* Bytes [1024, 1024+8192) of the caller's buffers at 64 KiB. */
  ck_assert_int_eq(ts_layer_submit_slice(d, TS_OP_WRITE, 0, 65536, &io, 1024, 8192), 0);
  char back[8192];
  ck_assert_int_eq(ts_pread(d, back, sizeof back, 65536), 0);
  ck_assert_mem_eq(back, data + 1024, sizeof back);
  ck_assert_int_eq(ts_layer_submit_slice(d, TS_OP_WRITE, 0, 0, &io, sizeof data, 512), -EIO);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  ts_test_rmdir(dir);
  free(dir);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("iov");
  TCase *tc = tcase_create("iov");
  tcase_add_checked_fixture(tc, setup, NULL);
  tcase_add_test(tc, slice_pieces);
  tcase_add_test(tc, buf_fits_any_slice);
  tcase_add_test(tc, submit_slice_writes_the_bytes);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
