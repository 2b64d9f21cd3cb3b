/* The volume lifecycle calls (ts_volume_*, ts_stack_pool_extend): the pool
 * and the configuration file change together; the file is replaced
 * atomically (a new inode, the user's key order and permission bits kept,
 * nothing left behind), untouched when the new text cannot be written (a
 * full tmpfs) or the pool's commit fails (a fault layer); a live stack grows
 * its open volume; two processes working on two pools of one file keep both
 * their changes. Real files; thin_check after each workload. */
#include "thin-helpers.h"

#include <dirent.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <sys/mount.h>
#include <sys/wait.h>

#define MIB (1024u * 1024)

/* A configuration in an order no writer would choose: "exports" before
 * "layers", "size" before "type", a comment. */
static const char CONFIG[] = "{\n"
                             "  \"exports\": [],\n"
                             "  \"comment\": \"hand written\",\n"
                             "  \"version\": 1,\n"
                             "  \"layers\": {\n"
                             "    \"meta\": { \"size\": \"16M\", \"type\": \"file\", \"path\": "
                             "\"pool.meta\", \"create\": true },\n"
                             "    \"data\": { \"path\": \"pool.data\", \"type\": \"file\", "
                             "\"size\": \"256M\", \"create\": true },\n"
                             "    \"pool\": { \"type\": \"thin-pool\", \"metadata\": \"meta\", "
                             "\"data\": \"data\", \"create\": true }\n"
                             "  }\n"
                             "}\n";

/* The pool part of CONFIG alone, as the CLI opens it. */
static const char POOL_PART[] =
    "{ \"version\": 1, \"layers\": {"
    " \"meta\": { \"type\": \"file\", \"path\": \"pool.meta\", \"size\": \"16M\" },"
    " \"data\": { \"type\": \"file\", \"path\": \"pool.data\" },"
    " \"pool\": { \"type\": \"thin-pool\", \"metadata\": \"meta\", \"data\": \"data\" } } }";

static void write_text(const char *path, const char *text, mode_t mode)
{
  FILE *f = fopen(path, "w");
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(fputs(text, f) >= 0, 1);
  ck_assert_int_eq(fclose(f), 0);
  ck_assert_int_eq(chmod(path, mode), 0);
}

static json_t *load(const char *path)
{
  json_error_t je;
  json_t *j = json_load_file(path, 0, &je);
  ck_assert_msg(j != NULL, "%s: %s", path, je.text);
  return j;
}

/* The keys of an object, comma-separated, in the file's order. */
static char *keys(json_t *o)
{
  char *out = strdup("");
  const char *k;
  json_t *v;
  json_object_foreach(o, k, v)
  {
    char *n = ts_test_fmt("%s%s%s", out, out[0] ? "," : "", k);
    free(out);
    out = n;
  }
  return out;
}

static void keys_are(json_t *o, const char *want)
{
  char *k = keys(o);
  ck_assert_str_eq(k, want);
  free(k);
}

static ino_t inode(const char *path)
{
  struct stat st;
  ck_assert_int_eq(stat(path, &st), 0);
  return st.st_ino;
}

/* No ".stack.json.XXXXXX" left beside the configuration. */
static void no_temporaries(const char *dir)
{
  DIR *d = opendir(dir);
  ck_assert_ptr_nonnull(d);
  for (struct dirent *e; (e = readdir(d));)
    ck_assert_msg(strncmp(e->d_name, ".stack.json.", 12) != 0, "left behind: %s", e->d_name);
  closedir(d);
}

static ts_stack *open_file(const char *path)
{
  ts_stack *s = NULL;
  ts_error e = { 0 };
  int r = ts_stack_open_file(path, NULL, &s, &e);
  ck_assert_msg(r == 0, "open %s: %s", path, e.msg);
  return s;
}

/* The pool part, told which file it stands for. */
static ts_stack *open_part(const char *dir, const char *json, const char *config)
{
  ts_stack *s = ts_test_open(dir, json);
  ts_error e = { 0 };
  ck_assert_int_eq(ts_stack_set_config_path(s, config, &e), 0);
  return s;
}

static void closed_ok(ts_stack *s)
{
  ts_error e = { 0 };
  ck_assert_msg(ts_stack_close(s, &e) == 0, "close: %s", e.msg);
}

START_TEST(create_snapshot_delete_keep_the_file_in_order)
{
  const char *dir = ts_test_dir;
  char *cfg = ts_test_path(dir, "stack.json");
  write_text(cfg, CONFIG, 0640);
  ts_stack *s = open_file(cfg);
  ck_assert_str_eq(ts_stack_config_path(s), cfg);
  ts_error e = { 0 };
  uint32_t id = 77;
  ino_t before = inode(cfg);
  ck_assert_int_eq(
      ts_volume_create(s, NULL, "vm0", 64 * MIB, TS_VOLUME_ANY_ID, TS_VOLUME_EXPORT, &id, &e), 0);
  ck_assert_uint_eq(id, 0);
  ck_assert_msg(inode(cfg) != before, "the configuration was rewritten in place");
  struct stat st;
  ck_assert_int_eq(stat(cfg, &st), 0);
  ck_assert_uint_eq(st.st_mode & 07777, 0640);
  no_temporaries(dir);
  json_t *j = load(cfg);
  keys_are(j, "exports,comment,version,layers");
  keys_are(json_object_get(j, "layers"), "meta,data,pool,vm0");
  keys_are(json_object_get(json_object_get(j, "layers"), "meta"), "size,type,path,create");
  keys_are(json_object_get(json_object_get(j, "layers"), "vm0"), "type,pool,id,size");
  ck_assert_str_eq(json_string_value(json_array_get(json_object_get(j, "exports"), 0)), "vm0");
  json_decref(j);
  /* The stack's own document says so too. */
  char *dump = ts_stack_config_json(s, 0);
  ck_assert_ptr_nonnull(strstr(dump, "\"vm0\": {"));
  free(dump);
  /* Names and ids are checked against the file and the pool. */
  ck_assert_int_eq(ts_volume_create(s, NULL, "vm0", 64 * MIB, TS_VOLUME_ANY_ID, 0, NULL, &e),
                   -EEXIST);
  ck_assert_int_eq(ts_volume_create(s, NULL, "vm9", 64 * MIB, 0, 0, NULL, &e), -EEXIST);
  ck_assert_int_eq(ts_volume_create(s, NULL, "vm9", 1000, TS_VOLUME_ANY_ID, 0, NULL, &e), -EINVAL);
  ck_assert_int_eq(ts_volume_create(s, "data", "vm9", 64 * MIB, TS_VOLUME_ANY_ID, 0, NULL, &e),
                   -EINVAL);
  ck_assert_int_eq(ts_volume_create(s, NULL, "", 64 * MIB, TS_VOLUME_ANY_ID, 0, NULL, &e), -EINVAL);
  closed_ok(s);

  /* Reopened, the volume is a layer; write, snapshot it live. */
  s = open_file(cfg);
  ts_dev *vm0 = ts_stack_node(s, "vm0");
  ck_assert_ptr_nonnull(vm0);
  char *buf = malloc(MIB), *got = malloc(MIB);
  ts_test_pattern(buf, MIB, 5);
  ck_assert_int_eq(ts_pwrite(vm0, buf, MIB, 3 * MIB, 0), 0);
  ck_assert_int_eq(ts_volume_snapshot(s, "vm0", "snap", 0, &id, &e), 0);
  ck_assert_uint_eq(id, 1);
  j = load(cfg);
  json_t *snap = json_object_get(json_object_get(j, "layers"), "snap");
  ck_assert_str_eq(json_string_value(json_object_get(snap, "origin")), "vm0");
  ck_assert_str_eq(json_string_value(json_object_get(snap, "size")), "64M");
  ck_assert_uint_eq(json_array_size(json_object_get(j, "exports")), 1);
  json_decref(j);
  ck_assert_int_eq(ts_volume_snapshot(s, "nosuch", "snap2", 0, NULL, &e), -ENOENT);
  ck_assert_int_eq(ts_volume_snapshot(s, "pool", "snap2", 0, NULL, &e), -EINVAL);
  /* An open volume is not deleted under its users. */
  ck_assert_int_eq(ts_volume_delete(s, "vm0", &e), -EBUSY);
  closed_ok(s);

  /* The snapshot holds the data; delete the origin from the pool part. */
  s = open_file(cfg);
  ck_assert_int_eq(ts_pread(ts_stack_node(s, "snap"), got, MIB, 3 * MIB), 0);
  ck_assert_int_eq(memcmp(buf, got, MIB), 0);
  closed_ok(s);
  s = open_part(dir, POOL_PART, cfg);
  ck_assert_int_eq(ts_volume_delete(s, "vm0", &e), 0);
  ck_assert_int_eq(ts_volume_delete(s, "vm0", &e), -ENOENT);
  ck_assert_int_eq(ts_volume_delete(s, "pool", &e), -EINVAL);
  ts_volume_info vi[4];
  size_t n = 0;
  ck_assert_int_eq(ts_volume_list(s, NULL, vi, 4, &n, &e), 0);
  ck_assert_uint_eq(n, 1);
  ck_assert_str_eq(vi[0].name, "snap");
  ck_assert_str_eq(vi[0].origin, "vm0");
  ck_assert_uint_eq(vi[0].id, 1);
  ck_assert_uint_eq(vi[0].mapped_bytes, MIB);
  ck_assert_uint_eq(vi[0].highest_mapped, 4 * MIB);
  closed_ok(s);
  j = load(cfg);
  keys_are(json_object_get(j, "layers"), "meta,data,pool,snap");
  ck_assert_uint_eq(json_array_size(json_object_get(j, "exports")), 0);
  json_decref(j);
  no_temporaries(dir);
  s = open_file(cfg);
  closed_ok(s);
  thin_check_clean(dir);
  free(buf);
  free(got);
  free(cfg);
}
END_TEST

START_TEST(resize_live_and_shrink)
{
  const char *dir = ts_test_dir;
  char *cfg = ts_test_path(dir, "stack.json");
  write_text(cfg, CONFIG, 0600);
  ts_error e = { 0 };
  ts_stack *s = open_file(cfg);
  ck_assert_int_eq(ts_volume_create(s, "pool", "vm0", 64 * MIB, 3, 0, NULL, &e), 0);
  closed_ok(s);
  s = open_file(cfg);
  ts_dev *vm0 = ts_stack_node(s, "vm0");
  char *buf = malloc(MIB);
  ts_test_pattern(buf, MIB, 9);
  ck_assert_int_eq(ts_pwrite(vm0, buf, MIB, 100 * MIB, 0), -EINVAL); /* past the end */
  ck_assert_int_eq(ts_volume_resize(s, "vm0", 128 * MIB, 0, &e), 0);
  ck_assert_uint_eq(ts_dev_size(vm0), 128 * MIB); /* grown live */
  ck_assert_int_eq(ts_pwrite(vm0, buf, MIB, 100 * MIB, 0), 0);
  ck_assert_int_eq(ts_volume_resize(s, "vm0", 64 * MIB, TS_VOLUME_DISCARD_BEYOND, &e), -EBUSY);
  char *dump = ts_stack_config_json(s, 0);
  ck_assert_ptr_nonnull(strstr(dump, "\"size\": \"128M\""));
  free(dump);
  closed_ok(s);
  json_t *j = load(cfg);
  ck_assert_str_eq(json_string_value(json_object_get(
                       json_object_get(json_object_get(j, "layers"), "vm0"), "size")),
                   "128M");
  json_decref(j);

  s = open_part(dir, POOL_PART, cfg);
  ck_assert_int_eq(ts_volume_resize(s, "vm0", 64 * MIB, 0, &e), -ENOTEMPTY);
  ck_assert_ptr_nonnull(strstr(e.msg, "mapped up to byte 105906176, past the new size 67108864"));
  ck_assert_int_eq(ts_volume_resize(s, "vm0", 64 * MIB, TS_VOLUME_DISCARD_BEYOND, &e), 0);
  ts_volume_info vi[2];
  size_t n = 0;
  ck_assert_int_eq(ts_volume_list(s, "pool", vi, 2, &n, &e), 0);
  ck_assert_uint_eq(n, 1);
  ck_assert_uint_eq(vi[0].size, 64 * MIB);
  ck_assert_uint_eq(vi[0].mapped_bytes, 0);
  closed_ok(s);
  /* Growing again shows zeroes, not the dropped data. */
  s = open_part(dir, POOL_PART, cfg);
  ck_assert_int_eq(ts_volume_resize(s, "vm0", 128 * MIB, 0, &e), 0);
  closed_ok(s);
  s = open_file(cfg);
  char *got = malloc(MIB);
  ck_assert_int_eq(ts_pread(ts_stack_node(s, "vm0"), got, MIB, 100 * MIB), 0);
  ck_assert(is_zero(got, MIB));
  closed_ok(s);
  thin_check_clean(dir);
  free(got);
  free(buf);
  free(cfg);
}
END_TEST

/* The configuration on a full tmpfs: the new text cannot be written, so the
 * pool is not changed and the file stays byte for byte, with no partial
 * temporary file. */
START_TEST(full_folder_changes_nothing)
{
  ts_test_require_root();
  const char *dir = ts_test_dir;
  char *mnt = ts_test_path(dir, "cfg");
  ck_assert_int_eq(mkdir(mnt, 0700), 0);
  ck_assert_msg(mount("tmpfs", mnt, "tmpfs", 0, "size=64k") == 0, "mount tmpfs: %s",
                strerror(errno));
  char *cfg = ts_test_path(mnt, "stack.json");
  char *text = ts_test_fmt("{ \"version\": 1, \"layers\": {"
                           " \"meta\": { \"type\": \"file\", \"path\": \"%s/pool.meta\", \"size\": "
                           "\"16M\", \"create\": true },"
                           " \"data\": { \"type\": \"file\", \"path\": \"%s/pool.data\", \"size\": "
                           "\"64M\", \"create\": true },"
                           " \"pool\": { \"type\": \"thin-pool\", \"metadata\": \"meta\", "
                           "\"data\": \"data\", \"create\": true } } }\n",
                           dir, dir);
  write_text(cfg, text, 0600);
  /* Fill the folder's file system. */
  char *filler = ts_test_path(mnt, "filler");
  FILE *f = fopen(filler, "w");
  char page[4096] = { 1 };
  while (fwrite(page, 1, sizeof page, f) == sizeof page && fflush(f) == 0)
    ;
  fclose(f);
  ino_t before = inode(cfg);
  ts_stack *s = open_file(cfg);
  ts_error e = { 0 };
  int r = ts_volume_create(s, NULL, "vm0", 64 * MIB, TS_VOLUME_ANY_ID, 0, NULL, &e);
  ck_assert_msg(r == -ENOSPC, "create on a full folder: %d %s", r, e.msg);
  ck_assert_ptr_nonnull(strstr(e.msg, "nothing was changed"));
  size_t n = 9;
  ck_assert_int_eq(ts_pool_list_thins(ts_stack_node(s, "pool"), NULL, 0, &n, &e), 0);
  ck_assert_uint_eq(n, 0);
  char *dump = ts_stack_config_json(s, 0);
  ck_assert_ptr_null(strstr(dump, "vm0"));
  free(dump);
  closed_ok(s);
  void *data;
  size_t len;
  ck_assert(ts_test_read_file(cfg, &data, &len));
  ck_assert_uint_eq(len, strlen(text));
  ck_assert_int_eq(memcmp(data, text, len), 0);
  ck_assert_uint_eq(inode(cfg), before);
  free(data);
  no_temporaries(mnt);
  /* With room again it works. */
  unlink(filler);
  s = open_file(cfg);
  ck_assert_int_eq(ts_volume_create(s, NULL, "vm0", 64 * MIB, TS_VOLUME_ANY_ID, 0, NULL, &e), 0);
  closed_ok(s);
  ck_assert_int_eq(umount(mnt), 0);
  thin_check_clean(dir);
  free(filler);
  free(text);
  free(cfg);
  free(mnt);
}
END_TEST

/* A snapshot whose commit fails (the metadata device answers ENOSPC, as a
 * sparse metadata file on a full disk does) says so with that errno, adds no
 * layer, and is not committed later either. */
START_TEST(failed_commit_names_its_errno)
{
  const char *dir = ts_test_dir;
  char *cfg = ts_test_path(dir, "stack.json");
  write_text(cfg, CONFIG, 0600);
  ts_error e = { 0 };
  ts_stack *s = open_file(cfg);
  ck_assert_int_eq(ts_volume_create(s, NULL, "vm0", 64 * MIB, TS_VOLUME_ANY_ID, 0, NULL, &e), 0);
  closed_ok(s);
  void *before;
  size_t blen;
  ck_assert(ts_test_read_file(cfg, &before, &blen));
  s = open_part(
      dir,
      "{ \"version\": 1, \"layers\": {"
      " \"metafile\": { \"type\": \"file\", \"path\": \"pool.meta\" },"
      " \"meta\": { \"type\": \"fault\", \"child\": \"metafile\","
      "   \"rules\": [ { \"op\": \"write\", \"action\": \"error\", \"errno\": \"ENOSPC\" } ] },"
      " \"data\": { \"type\": \"file\", \"path\": \"pool.data\" },"
      " \"pool\": { \"type\": \"thin-pool\", \"metadata\": \"meta\", \"data\": \"data\" } } }",
      cfg);
  int r = ts_volume_snapshot(s, "vm0", "snap", 0, NULL, &e);
  ck_assert_msg(r == -ENOSPC, "snapshot: %d %s", r, e.msg);
  ck_assert_msg(strstr(e.msg, "cannot snapshot volume 0 as 1: the metadata commit failed") &&
                    strstr(e.msg, "ENOSPC"),
                "%s", e.msg);
  ck_assert_msg(!strstr(e.msg, "created"), "%s", e.msg);
  /* Later commits say the same errno, not EIO. */
  ck_assert_int_eq(ts_stack_close(s, &e), -ENOSPC);
  void *after;
  size_t alen;
  ck_assert(ts_test_read_file(cfg, &after, &alen));
  ck_assert_uint_eq(alen, blen);
  ck_assert_int_eq(memcmp(before, after, alen), 0);
  no_temporaries(dir);
  s = open_part(dir, POOL_PART, cfg);
  size_t n = 0;
  ck_assert_int_eq(ts_pool_list_thins(ts_stack_node(s, "pool"), NULL, 0, &n, &e), 0);
  ck_assert_uint_eq(n, 1);
  closed_ok(s);
  thin_check_clean(dir);
  free(before);
  free(after);
  free(cfg);
}
END_TEST

/* Two processes, each creating volumes in its own pool of one file at the
 * same time: the file lock keeps every change. */
START_TEST(two_processes_two_pools)
{
  const char *dir = ts_test_dir;
  char *cfg = ts_test_path(dir, "stack.json");
#define PART(c)                                                                                    \
  "{ \"version\": 1, \"layers\": {"                                                                \
  " \"" c ".meta\": { \"type\": \"file\", \"path\": \"" c                                          \
  ".meta\", \"size\": \"8M\", \"create\": true },"                                                 \
  " \"" c ".data\": { \"type\": \"file\", \"path\": \"" c                                          \
  ".data\", \"size\": \"64M\", \"create\": true },"                                                \
  " \"" c "\": { \"type\": \"thin-pool\", \"metadata\": \"" c ".meta\", \"data\": \"" c ".data\"," \
  " \"create\": true } } }"
  const char *a = PART("a"), *b = PART("b");
  /* One file naming both pools. */
  json_t *ja = json_loads(a, 0, NULL), *jb = json_loads(b, 0, NULL);
  json_object_update(json_object_get(ja, "layers"), json_object_get(jb, "layers"));
  ck_assert_int_eq(json_dump_file(ja, cfg, JSON_INDENT(2)), 0);
  json_decref(ja);
  json_decref(jb);
  closed_ok(open_file(cfg)); /* formats both pools */
  enum { ROUNDS = 12 };
  pid_t kids[2];
  for (int k = 0; k < 2; k++) {
    if ((kids[k] = fork()) == 0) {
      ts_stack *s = NULL;
      ts_error e = { 0 };
      int bad = ts_stack_open_string(k ? b : a, dir, NULL, &s, &e) ||
                ts_stack_set_config_path(s, cfg, &e);
      for (int i = 0; i < ROUNDS && !bad; i++) {
        char name[32];
        snprintf(name, sizeof name, "%c-vol%d", k ? 'b' : 'a', i);
        bad = ts_volume_create(s, k ? "b" : "a", name, 8 * MIB, TS_VOLUME_ANY_ID, 0, NULL, &e) != 0;
      }
      if (bad)
        fprintf(stderr, "child %d: %s\n", k, e.msg);
      bad |= ts_stack_close(s, NULL) != 0;
      _exit(bad);
    }
  }
  for (int k = 0; k < 2; k++) {
    int st;
    ck_assert_int_eq(waitpid(kids[k], &st, 0), kids[k]);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child %d failed", k);
  }
  json_t *j = load(cfg);
  size_t have = json_object_size(json_object_get(j, "layers"));
  json_decref(j);
  ck_assert_msg(have == 6 + 2 * ROUNDS, "%zu layers: a change was lost", have);
  ts_stack *s = open_file(cfg);
  ts_volume_info vi[2 * ROUNDS];
  size_t n = 0;
  ts_error e = { 0 };
  ck_assert_int_eq(ts_volume_list(s, NULL, vi, 2 * ROUNDS, &n, &e), 0);
  ck_assert_uint_eq(n, 2 * ROUNDS);
  for (size_t i = 0; i < n; i++)
    ck_assert_msg(vi[i].name[0] && vi[i].in_pool && vi[i].open, "volume %u of %s", vi[i].id,
                  vi[i].pool);
  closed_ok(s);
  for (int k = 0; k < 2; k++) {
    char *meta = ts_test_path(dir, k ? "b.meta" : "a.meta");
    ts_test_assert_thin_check(meta);
    free(meta);
  }
  free(cfg);
}
END_TEST

/* Extending the pool moves the data file and the configuration together. */
START_TEST(pool_extend_keeps_the_config)
{
  const char *dir = ts_test_dir;
  char *cfg = ts_test_path(dir, "stack.json");
  write_text(cfg, CONFIG, 0600);
  ts_error e = { 0 };
  ts_stack *s = open_file(cfg);
  ck_assert_int_eq(ts_stack_pool_extend(s, NULL, 200 * MIB, 0, &e), -EINVAL); /* smaller */
  ck_assert_int_eq(ts_stack_pool_extend(s, NULL, 512 * MIB, 0, &e), 0);
  ck_assert_int_eq(ts_stack_pool_extend(s, NULL, 32 * MIB, TS_POOL_EXTEND_METADATA, &e), 0);
  closed_ok(s);
  json_t *j = load(cfg);
  json_t *layers = json_object_get(j, "layers");
  ck_assert_str_eq(json_string_value(json_object_get(json_object_get(layers, "data"), "size")),
                   "512M");
  ck_assert_str_eq(json_string_value(json_object_get(json_object_get(layers, "meta"), "size")),
                   "32M");
  keys_are(json_object_get(layers, "data"), "path,type,size,create");
  json_decref(j);
  s = open_file(cfg);
  ts_pool_status st;
  ck_assert_int_eq(ts_pool_get_status(ts_stack_node(s, "pool"), &st, &e), 0);
  ck_assert_uint_eq(st.data_blocks * st.block_size, 512 * MIB);
  ck_assert_uint_eq(st.metadata_blocks * 4096, 32 * MIB);
  closed_ok(s);
  thin_check_clean(dir);
  free(cfg);
}
END_TEST

/* A configuration reached through a symlink: the file is replaced, the
 * link stays a link. */
START_TEST(symlinked_config_stays_a_link)
{
  const char *dir = ts_test_dir;
  char *real = ts_test_path(dir, "stack.json"), *link = ts_test_path(dir, "link.json");
  write_text(real, CONFIG, 0600);
  ck_assert_int_eq(symlink("stack.json", link), 0);
  ts_stack *s = open_file(link);
  ck_assert_str_eq(ts_stack_config_path(s), real);
  ts_error e = { 0 };
  ck_assert_int_eq(ts_volume_create(s, NULL, "vm0", 8 * MIB, TS_VOLUME_ANY_ID, 0, NULL, &e), 0);
  closed_ok(s);
  struct stat st;
  ck_assert_int_eq(lstat(link, &st), 0);
  ck_assert(S_ISLNK(st.st_mode));
  json_t *j = load(link);
  ck_assert_ptr_nonnull(json_object_get(json_object_get(j, "layers"), "vm0"));
  json_decref(j);
  free(real);
  free(link);
}
END_TEST

/* A volume another layer stacks on (a linear segment's child) is not
 * deleted under it. */
START_TEST(delete_refuses_a_volume_in_use)
{
  const char *dir = ts_test_dir;
  char *cfg = ts_test_path(dir, "stack.json");
  write_text(cfg, CONFIG, 0600);
  ts_error e = { 0 };
  ts_stack *s = open_file(cfg);
  ck_assert_int_eq(ts_volume_create(s, NULL, "vm0", 8 * MIB, TS_VOLUME_ANY_ID, 0, NULL, &e), 0);
  closed_ok(s);
  json_t *j = load(cfg);
  json_object_set_new(json_object_get(j, "layers"), "lin",
                      json_pack("{s:s,s:[{s:s}]}", "type", "linear", "segments", "child", "vm0"));
  ck_assert_int_eq(json_dump_file(j, cfg, JSON_INDENT(2)), 0);
  json_decref(j);
  s = open_part(dir, POOL_PART, cfg);
  ck_assert_int_eq(ts_volume_delete(s, "vm0", &e), -EBUSY);
  ck_assert_msg(strstr(e.msg, "layers.lin stacks on layers.vm0"), "%s", e.msg);
  size_t n = 0;
  ck_assert_int_eq(ts_pool_list_thins(ts_stack_node(s, "pool"), NULL, 0, &n, &e), 0);
  ck_assert_uint_eq(n, 1);
  closed_ok(s);
  j = load(cfg);
  ck_assert_ptr_nonnull(json_object_get(json_object_get(j, "layers"), "vm0"));
  json_decref(j);
  free(cfg);
}
END_TEST

struct io_arg {
  ts_dev *dev;
  ts_stack *s;
  _Atomic bool stop;
  int err;
  _Atomic unsigned rounds;
};

static void *writer(void *arg)
{
  struct io_arg *a = arg;
  char *buf = malloc(64 * 1024);
  for (unsigned i = 0; !atomic_load(&a->stop) && !a->err; i++) {
    memset(buf, (int)(i & 0xff), 64 * 1024);
    a->err = ts_pwrite(a->dev, buf, 64 * 1024, (uint64_t)(i % 256) * 64 * 1024, 0);
    if (!a->err && i % 16 == 15)
      a->err = ts_flush(a->dev);
    a->rounds++;
  }
  free(buf);
  return NULL;
}

/* Dumps alone (a lister would order it after each edit through the
 * stack's lock, hiding a race on the document from TSan). */
static void *dumper(void *arg)
{
  struct io_arg *a = arg;
  while (!atomic_load(&a->stop) && !a->err) {
    char *j = ts_stack_config_json(a->s, 0);
    if (!j)
      a->err = -ENOMEM;
    free(j);
    a->rounds++;
  }
  return NULL;
}

static void *lister(void *arg)
{
  struct io_arg *a = arg;
  while (!atomic_load(&a->stop) && !a->err) {
    ts_volume_info vi[32];
    size_t n = 0;
    a->err = ts_volume_list(a->s, NULL, vi, 32, &n, NULL);
    a->rounds++;
  }
  return NULL;
}

/* A live stack: snapshots of a volume being written, creates, listings
 * and dumps from other threads at the same time (TSan runs this too). */
START_TEST(live_stack_from_several_threads)
{
  const char *dir = ts_test_dir;
  char *cfg = ts_test_path(dir, "stack.json");
  write_text(cfg, CONFIG, 0600);
  ts_error e = { 0 };
  ts_stack *s = open_file(cfg);
  ck_assert_int_eq(ts_volume_create(s, NULL, "vm0", 16 * MIB, TS_VOLUME_ANY_ID, 0, NULL, &e), 0);
  closed_ok(s);
  s = open_file(cfg);
  struct io_arg w = { .dev = ts_stack_node(s, "vm0"), .s = s }, r = { .s = s }, l = { .s = s };
  pthread_t tw, tr, tl;
  ck_assert_int_eq(pthread_create(&tw, NULL, writer, &w), 0);
  ck_assert_int_eq(pthread_create(&tr, NULL, dumper, &r), 0);
  ck_assert_int_eq(pthread_create(&tl, NULL, lister, &l), 0);
  /* The edits below must overlap the other threads' work, even on a loaded
   * machine where a new thread may not run before the edits are done. */
  while (!atomic_load(&w.rounds) || !atomic_load(&r.rounds) || !atomic_load(&l.rounds))
    sched_yield(); /* each thread counts its first round, failed or not */
  enum { N = 8 };
  for (int i = 0; i < N; i++) {
    char name[32];
    snprintf(name, sizeof name, "snap%d", i);
    ck_assert_msg(ts_volume_snapshot(s, "vm0", name, 0, NULL, &e) == 0, "%s", e.msg);
    snprintf(name, sizeof name, "vol%d", i);
    ck_assert_msg(ts_volume_create(s, NULL, name, 8 * MIB, TS_VOLUME_ANY_ID, 0, NULL, &e) == 0,
                  "%s", e.msg);
  }
  atomic_store(&w.stop, true);
  atomic_store(&r.stop, true);
  atomic_store(&l.stop, true);
  pthread_join(tw, NULL);
  pthread_join(tr, NULL);
  pthread_join(tl, NULL);
  ck_assert_int_eq(w.err, 0);
  ck_assert_int_eq(r.err, 0);
  ck_assert_int_eq(l.err, 0);
  ck_assert_uint_gt(w.rounds, 0);
  ck_assert_uint_gt(r.rounds, 0);
  closed_ok(s);
  json_t *j = load(cfg);
  ck_assert_uint_eq(json_object_size(json_object_get(j, "layers")), 4 + 2 * N);
  json_decref(j);
  s = open_file(cfg); /* every layer opens: each has its volume */
  ts_volume_info vi[2 * N + 1];
  size_t n = 0;
  ck_assert_int_eq(ts_volume_list(s, NULL, vi, 2 * N + 1, &n, &e), 0);
  ck_assert_uint_eq(n, 2 * N + 1);
  closed_ok(s);
  thin_check_clean(dir);
  free(cfg);
}
END_TEST

int main(void)
{
  require_thin_tools();
  Suite *s = suite_create("thin_lifecycle");
  TCase *t = tcase_create("lifecycle");
  tcase_add_checked_fixture(t, ts_test_dir_setup, ts_test_dir_teardown);
  tcase_set_timeout(t, 120);
  tcase_add_test(t, create_snapshot_delete_keep_the_file_in_order);
  tcase_add_test(t, resize_live_and_shrink);
  tcase_add_test(t, full_folder_changes_nothing);
  tcase_add_test(t, failed_commit_names_its_errno);
  tcase_add_test(t, two_processes_two_pools);
  tcase_add_test(t, pool_extend_keeps_the_config);
  tcase_add_test(t, live_stack_from_several_threads);
  tcase_add_test(t, symlinked_config_stays_a_link);
  tcase_add_test(t, delete_refuses_a_volume_in_use);
  suite_add_tcase(s, t);
  return ts_test_main(s);
}
