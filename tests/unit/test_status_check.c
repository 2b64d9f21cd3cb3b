/* The core checks a layer's block-status answer before passing it on: an
 * answer out of order, overlapping, leaving a gap or adding nothing is a
 * layer bug and becomes -EIO naming the layer; an answer that runs past the
 * range asked is cut to it. The "liar" type answers in the way its `mode`
 * says, so each check is met by a real walk. */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

#define K4 4096u

enum mode { GOOD, WIDE, TRAILING, GAP, OVERLAP, BACKWARDS, NONE, SHRINK };
static const char *const mode_names[] = { "good",    "wide",      "trailing", "gap",
                                          "overlap", "backwards", "none",     "shrink" };

static const ts_param liar_params[] = {
  { "mode", TS_PARAM_ENUM, TS_PARAM_REQUIRED,
    "good|wide|trailing|gap|overlap|backwards|none|shrink", NULL, "how to answer" },
  { NULL, 0, 0, NULL, NULL, NULL },
};

static int liar_open(ts_layer *l, const json_t *params, ts_error *err)
{
  (void)err;
  const char *m = ts_param_string(params, "mode", "good");
  enum mode *p = malloc(sizeof *p);
  ck_assert_ptr_nonnull(p);
  for (*p = GOOD; strcmp(mode_names[*p], m) != 0; (*p)++)
    ;
  ts_layer_set_priv(l, p);
  return 0;
}

static void liar_close(ts_layer *l) { free(ts_layer_priv(l)); }

static int liar_limits(ts_layer *l, ts_limits *lim, ts_error *err)
{
  (void)l;
  (void)err;
  lim->size = 1 << 20;
  lim->logical_block_size = lim->physical_block_size = K4;
  return 0;
}

static int liar_submit(ts_layer *l, const ts_io *io)
{
  (void)l;
  if (io->op == TS_OP_READ)
    ts_iov_zero(io->iov, io->iovcnt, 0, io->length);
  return 0;
}

/* Every answer but "none" and "shrink" starts with 4K of data at `off`. */
static int liar_status(ts_layer *l, uint64_t off, uint64_t len, ts_extent_list *out)
{
  const uint32_t H = TS_EXTENT_HOLE | TS_EXTENT_ZERO;
  switch (*(enum mode *)ts_layer_priv(l)) {
  case GOOD:
    ts_extent_list_add(out, off, K4, 0);
    return len > K4 ? ts_extent_list_add(out, off + K4, len - K4, H) : 0;
  case WIDE: /* one extent 64K past the end of the range */
    return ts_extent_list_add(out, off, len + 65536, 0);
  case TRAILING: /* the range, then extents after it */
    ts_extent_list_add(out, off, len, 0);
    ts_extent_list_add(out, off + len, K4, H);
    return ts_extent_list_add(out, off + len + K4, K4, 0);
  case GAP:
    ts_extent_list_add(out, off, K4, 0);
    return ts_extent_list_add(out, off + 2 * K4, len - 2 * K4, H);
  case OVERLAP:
    ts_extent_list_add(out, off, 2 * K4, 0);
    return ts_extent_list_add(out, off + K4, len - K4, H);
  case BACKWARDS:
    ts_extent_list_add(out, off + K4, len - K4, H);
    return ts_extent_list_add(out, off, K4, 0);
  case NONE:
    return 0;
  case SHRINK: /* rewrites the caller's last extent, then answers */
    if (out->n)
      out->v[out->n - 1].length += K4;
    return ts_extent_list_add(out, off, len, H);
  }
  return -EINVAL;
}

static const ts_layer_type liar_type = {
  TS_LAYER_TYPE_INIT,    .name = "liar",        .summary = "answers block status as told (tests)",
  .params = liar_params, .open = liar_open,     .close = liar_close,
  .limits = liar_limits, .submit = liar_submit, .block_status = liar_status,
};

static ts_stack *open_liar(const char *mode)
{
  char *json = ts_test_fmt("{ \"version\": 1, \"layers\": {"
                           "  \"liar\": { \"type\": \"liar\", \"mode\": \"%s\" },"
                           "  \"top\": { \"type\": \"linear\", \"segments\": [ { \"child\": "
                           "\"liar\", \"offset\": 0, \"length\": \"1M\" } ] } } }",
                           mode);
  ts_stack *s = ts_test_open("/", json);
  free(json);
  return s;
}

static void setup(void)
{
  static bool registered;
  if (!registered)
    ck_assert_int_eq(ts_register_layer_type(&liar_type), 0);
  registered = true;
}

static void assert_extent(const ts_extent_list *l, size_t i, uint64_t off, uint64_t len,
                          uint32_t flags)
{
  ck_assert_uint_gt(l->n, i);
  ck_assert_uint_eq(l->v[i].offset, off);
  ck_assert_uint_eq(l->v[i].length, len);
  ck_assert_uint_eq(l->v[i].flags, flags);
}

START_TEST(good_answers_pass)
{
  ts_stack *s = open_liar("good");
  ts_dev *d = ts_stack_node(s, "liar");
  ts_extent_list l = { 0 };
  /* The list holds the caller's extent ending where the walk starts: the
   * layer's first extent merges into it. */
  ck_assert_int_eq(ts_extent_list_add(&l, 0, 8192, 0), 0);
  ck_assert_int_eq(ts_block_status(d, 8192, 65536, &l), 0);
  ck_assert_uint_eq(l.n, 2);
  assert_extent(&l, 0, 0, 8192 + K4, 0);
  assert_extent(&l, 1, 8192 + K4, 65536 - K4, TS_EXTENT_HOLE | TS_EXTENT_ZERO);
  ts_extent_list_free(&l);
  ts_stack_close(s, NULL);
}
END_TEST

START_TEST(answers_past_the_range_are_cut)
{
  static const char *const modes[] = { "wide", "trailing" };
  for (int m = 0; m < 2; m++) {
    ts_stack *s = open_liar(modes[m]);
    ts_extent_list l = { 0 };
    ck_assert_int_eq(ts_block_status(ts_stack_node(s, "liar"), 65536, 65536, &l), 0);
    ck_assert_uint_eq(l.n, 1);
    assert_extent(&l, 0, 65536, 65536, 0);
    ts_extent_list_free(&l);
    ts_stack_close(s, NULL);
  }
}
END_TEST

static void assert_refused(const char *mode, const char *why)
{
  ts_stack *s = open_liar(mode);
  /* Directly and through a linear layer above it (which asks with a list
   * of its own, so the caller's extent is out of reach there). */
  const char *names[] = { "liar", "top" };
  int ways = strcmp(mode, "shrink") == 0 ? 1 : 2;
  for (int i = 0; i < ways; i++) {
    ts_extent_list l = { 0 };
    if (strcmp(mode, "shrink") == 0)
      ck_assert_int_eq(ts_extent_list_add(&l, 0, K4, 0), 0);
    ck_assert_int_eq(ts_block_status(ts_stack_node(s, names[i]), 65536, 65536, &l), -EIO);
    const char *msg = ts_last_error();
    ck_assert_ptr_nonnull(msg);
    ck_assert_msg(strstr(msg, "block status on liar at offset 64K") &&
                      strstr(msg, "layer type liar") && strstr(msg, why),
                  "%s: %s", mode, msg);
    ts_extent_list_free(&l);
  }
  ts_stack_close(s, NULL);
}

START_TEST(bad_answers_are_io_errors)
{
  const char *order = "where one at offset";
  assert_refused("gap", "answered an extent at offset 72K + length 56K where one at offset 68K");
  assert_refused("overlap",
                 "answered an extent at offset 68K + length 60K where one at offset 72K");
  assert_refused("backwards", order);
  assert_refused("none", "added no extent");
  assert_refused("shrink", "changed the extent at offset 0 before its answer");
}
END_TEST

int main(void)
{
  Suite *s = suite_create("status_check");
  TCase *tc = tcase_create("status_check");
  tcase_add_checked_fixture(tc, setup, NULL);
  tcase_add_test(tc, good_answers_pass);
  tcase_add_test(tc, answers_past_the_range_are_cut);
  tcase_add_test(tc, bad_answers_are_io_errors);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
