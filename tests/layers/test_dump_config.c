/* ts_stack_config_json / thinstack dump-config: the dumped document re-opens
 * the same stack from anywhere, reflects what changed since open, dumps to
 * the same text again, and never shows a key unless asked.
 *
 * Method: a stack of every kind of parameter that can go stale or matter
 * (relative paths, a pool whose data file grows, a crypt layer with an inline
 * key, a linear layer whose segments are an array) is opened from a temporary
 * folder with relative paths, written, and grown; the dump is then opened
 * from another working directory and must show the same devices, sizes and
 * data. */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define KEY "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
#define MIB (1024 * 1024)

static const char *stack_json =
  "{ \"version\": 1, \"comment\": \"kept as written\", \"layers\": {"
  " \"meta\": { \"type\": \"file\", \"path\": \"m.img\", \"size\": \"8M\", \"create\": true },"
  " \"data\": { \"type\": \"file\", \"path\": \"d.img\", \"size\": \"64M\", \"create\": true },"
  " \"pool\": { \"type\": \"thin-pool\", \"metadata\": \"meta\", \"data\": \"data\", \"create\": true },"
  " \"vol\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 1, \"size\": \"32M\", \"create\": true },"
  " \"enc\": { \"type\": \"crypt\", \"child\": \"vol\", \"key\": \"" KEY "\" },"
  " \"x\": { \"type\": \"file\", \"path\": \"sub/../x.img\", \"size\": \"4M\", \"create\": true },"
  " \"lin\": { \"type\": \"linear\", \"segments\": [ { \"child\": \"x\", \"offset\": \"1M\" } ] } },"
  " \"exports\": [\"enc\", \"lin\"] }";

static json_t *layer(json_t *root, const char *name)
{
  return json_object_get(json_object_get(root, "layers"), name);
}

START_TEST(round_trip_from_anywhere)
{
  char *sub = ts_test_fmt("%s/sub", ts_test_dir);
  ck_assert_int_eq(mkdir(sub, 0700), 0);
  ts_stack *s = ts_test_open(ts_test_dir, stack_json);
  ts_dev *enc = ts_stack_dev(s, "enc"), *lin = ts_stack_dev(s, "lin");
  char buf[4096], back[4096];
  ts_test_pattern(buf, sizeof buf, 42);
  ck_assert_int_eq(ts_pwrite(enc, buf, sizeof buf, 5 * MIB, 0), 0);
  ck_assert_int_eq(ts_pwrite(lin, buf, sizeof buf, MIB, 0), 0);
  ts_error err = { 0 };
  ck_assert_int_eq(ts_pool_extend(ts_stack_node(s, "pool"), 128 * MIB, &err), 0);

  char *dump = ts_stack_config_json(s, TS_CONFIG_SECRETS);
  ck_assert_ptr_nonnull(dump);
  ck_assert_int_eq(ts_stack_close(s, &err), 0);

  json_error_t je;
  json_t *root = json_loads(dump, 0, &je);
  ck_assert_msg(root != NULL, "dump is not JSON: %s", je.text);
  /* What the user wrote stays as written... */
  ck_assert_str_eq(json_string_value(json_object_get(root, "comment")), "kept as written");
  ck_assert_str_eq(json_string_value(json_object_get(layer(root, "meta"), "size")), "8M");
  ck_assert_str_eq(json_string_value(json_object_get(layer(root, "vol"), "size")), "32M");
  ck_assert_str_eq(json_string_value(json_object_get(layer(root, "enc"), "key")), KEY);
  /* ...paths become absolute, and the grown data file has its new size. */
  char *want = ts_test_fmt("%s/d.img", ts_test_dir);
  ck_assert_str_eq(json_string_value(json_object_get(layer(root, "data"), "path")), want);
  free(want);
  want = ts_test_fmt("%s/sub/../x.img", ts_test_dir);
  ck_assert_str_eq(json_string_value(json_object_get(layer(root, "x"), "path")), want);
  free(want);
  ck_assert_int_eq(json_integer_value(json_object_get(layer(root, "data"), "size")), 128 * MIB);
  json_decref(root);

  /* Opened from elsewhere, it is the same stack with the same data. */
  char cwd[4096];
  ck_assert_ptr_nonnull(getcwd(cwd, sizeof cwd));
  ck_assert_int_eq(chdir("/"), 0);
  ts_stack *again = NULL;
  int r = ts_stack_open_string(dump, NULL, NULL, &again, &err);
  ck_assert_msg(r == 0, "re-opening the dump: %s", err.msg);
  ck_assert_int_eq(chdir(cwd), 0);
  enc = ts_stack_dev(again, "enc");
  lin = ts_stack_dev(again, "lin");
  ck_assert_uint_eq(ts_dev_size(enc), 32 * MIB);
  ck_assert_uint_eq(ts_dev_size(lin), 3 * MIB);
  ck_assert_uint_eq(ts_dev_size(ts_stack_node(again, "data")), 128 * MIB);
  ck_assert_int_eq(ts_pread(enc, back, sizeof back, 5 * MIB), 0);
  ck_assert_mem_eq(back, buf, sizeof buf);
  ck_assert_int_eq(ts_pread(lin, back, sizeof back, MIB), 0);
  ck_assert_mem_eq(back, buf, sizeof buf);

  /* And it dumps to the same text. */
  char *dump2 = ts_stack_config_json(again, TS_CONFIG_SECRETS);
  ck_assert_ptr_nonnull(dump2);
  ck_assert_str_eq(dump2, dump);
  ck_assert_int_eq(ts_stack_close(again, &err), 0);
  free(dump2);
  free(dump);
  free(sub);
}
END_TEST

START_TEST(keys_masked_unless_asked)
{
  char *sub = ts_test_fmt("%s/sub", ts_test_dir);
  ck_assert_int_eq(mkdir(sub, 0700), 0);
  free(sub);
  ts_stack *s = ts_test_open(ts_test_dir, stack_json);
  char *dump = ts_stack_config_json(s, 0);
  ck_assert_ptr_nonnull(dump);
  ck_assert_ptr_null(strstr(dump, KEY));
  ck_assert_ptr_null(strstr(dump, "0001020304"));
  json_t *root = json_loads(dump, 0, NULL);
  ck_assert_str_eq(json_string_value(json_object_get(layer(root, "enc"), "key")), "(hidden)");
  json_decref(root);
  ts_error err = { 0 };
  ck_assert_int_eq(ts_stack_close(s, &err), 0);
  /* A masked dump says what is wrong when opened. */
  ts_stack *again = NULL;
  ck_assert_int_eq(ts_stack_open_string(dump, NULL, NULL, &again, &err), -EINVAL);
  ck_assert_ptr_null(again);
  ck_assert_msg(strstr(err.msg, "layers.enc.key"), "%s", err.msg);
  free(dump);
  ck_assert_ptr_null(ts_stack_config_json(NULL, 0));
}
END_TEST

int main(void)
{
  Suite *s = suite_create("dump_config");
  TCase *tc = tcase_create("dump");
  tcase_add_checked_fixture(tc, ts_test_dir_setup, ts_test_dir_teardown);
  tcase_add_test(tc, round_trip_from_anywhere);
  tcase_add_test(tc, keys_masked_unless_asked);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
