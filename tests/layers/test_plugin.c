/* External layer types: loading a module named in a config and from a
 * plugin folder, and the errors for modules that are not usable. */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MODULE TS_TEST_BUILD_DIR "/examples/ts-layer-offset.so"

#define STACK_FMT \
  "{ \"version\": 1, %s \"layers\": {" \
  "  \"m\": { \"type\": \"memory\", \"size\": \"8M\" }," \
  "  \"part\": { \"type\": \"offset\", \"child\": \"m\", \"offset\": \"1M\", \"length\": \"4M\" } }," \
  "  \"exports\": [\"part\"] }"

static void check_offset_stack(ts_stack *s)
{
  ts_dev *part = ts_stack_dev(s, "part");
  ts_dev *m = ts_stack_node(s, "m");
  ck_assert_ptr_nonnull(part);
  ck_assert_uint_eq(ts_dev_size(part), 4 << 20);
  char buf[4096], back[4096];
  ts_test_pattern(buf, sizeof buf, 7);
  ck_assert_int_eq(ts_pwrite(part, buf, sizeof buf, 8192, 0), 0);
  ck_assert_int_eq(ts_pread(m, back, sizeof back, (1 << 20) + 8192), 0);
  ck_assert_mem_eq(buf, back, sizeof buf);
  /* Past the end of the range: rejected by the core before the layer. */
  ck_assert_int_eq(ts_pwrite(part, buf, sizeof buf, 4 << 20, 0), -EINVAL);
  /* Limits are the child's, folded by the core: provision works through it. */
  ck_assert_int_eq(ts_provision(part, 0, 65536), 0);
}

START_TEST(load_from_config)
{
  char *json = ts_test_fmt(STACK_FMT, "\"plugins\": [\"" MODULE "\"],");
  ts_stack *s = ts_test_open("/", json);
  check_offset_stack(s);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  ck_assert_ptr_nonnull(ts_find_layer_type("offset"));
  free(json);
}
END_TEST

START_TEST(load_from_plugin_dir)
{
  const char *dir = ts_test_dir;
  char *link = ts_test_path(dir, "offset.so");
  ck_assert_int_eq(symlink(MODULE, link), 0);
  char *json = ts_test_fmt(STACK_FMT, "");
  ts_open_opts o = { .struct_size = sizeof o, .plugin_dir = dir };
  ts_stack *s = NULL;
  ts_error err = { 0 };
  ck_assert_msg(ts_stack_open_string(json, "/", &o, &s, &err) == 0, "%s", err.msg);
  check_offset_stack(s);
  ts_stack_close(s, NULL);
  free(json);
  free(link);
}
END_TEST

START_TEST(bad_modules)
{
  ts_error err = { 0 };
  ck_assert_int_eq(ts_load_layer_module("/nonexistent/x.so", &err), -ENOENT);
  ck_assert_ptr_nonnull(strstr(err.msg, "/nonexistent/x.so"));
  /* A real shared object that is not a layer module. */
  ck_assert_int_eq(ts_load_layer_module("libjansson.so.4", &err), -EINVAL);
  ck_assert_ptr_nonnull(strstr(err.msg, "ts_layer_types"));
  char *json = ts_test_fmt(STACK_FMT, "\"plugins\": [\"missing.so\"],");
  ts_stack *s = NULL;
  ck_assert_int_eq(ts_stack_open_string(json, "/tmp", NULL, &s, &err), -ENOENT);
  ck_assert_msg(strncmp(err.msg, "plugins[0]: ", 12) == 0, "%s", err.msg);
  free(json);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("plugin");
  TCase *tc = tcase_create("dlopen");
  tcase_add_checked_fixture(tc, ts_test_dir_setup, ts_test_dir_teardown);
  tcase_add_test(tc, load_from_config);
  tcase_add_test(tc, load_from_plugin_dir);
  tcase_add_test(tc, bad_modules);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
