/* thinstack pool ... / thinstack thin ...: manage a thin pool and its volumes
 * through <libthinstack/thin.h>.
 *
 * Each command opens only the named pool and the layers below it (the rest
 * of CONFIG may name volumes that do not exist yet), does one thing, and
 * closes the stack, which commits. */
#include "cli/cli.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Opening the pool part of a configuration                                  */

/* Add to `keep` every layer named by a string anywhere in `v`, recursively. */
static void collect_refs(json_t *layers, json_t *v, json_t *keep)
{
  if (json_is_string(v)) {
    const char *name = json_string_value(v);
    json_t *l = json_object_get(layers, name);
    if (l && json_is_object(l) && !json_object_get(keep, name)) {
      json_object_set(keep, name, l);
      collect_refs(layers, l, keep);
    }
  } else if (json_is_object(v)) {
    const char *k;
    json_t *x;
    json_object_foreach(v, k, x) {
      if (strcmp(k, "type") != 0)
        collect_refs(layers, x, keep);
    }
  } else if (json_is_array(v)) {
    size_t i;
    json_t *x;
    json_array_foreach(v, i, x) collect_refs(layers, x, keep);
  }
}

static char *config_dir(const char *config)
{
  char *dup = strdup(config);
  char *slash = dup ? strrchr(dup, '/') : NULL;
  const char *dir = ".";
  if (slash) {
    *slash = '\0';
    dir = slash == dup ? "/" : dup;
  }
  char *abs = realpath(dir, NULL);
  free(dup);
  return abs;
}

/* Open the pool `pool` of CONFIG and the layers below it. With `create`, a
 * blank metadata device is formatted. Prints the error and returns NULL on
 * failure. */
static ts_stack *open_pool(const char *config, const char *pool, bool create, bool *is_new,
                           ts_dev **out)
{
  json_error_t je;
  json_t *root = json_load_file(config, JSON_REJECT_DUPLICATES, &je);
  if (!root) {
    ts_cli_err("%s:%d:%d: %s", config, je.line, je.column, je.text);
    return NULL;
  }
  json_t *layers = json_object_get(root, "layers");
  json_t *pl = layers ? json_object_get(layers, pool) : NULL;
  const char *type = pl ? json_string_value(json_object_get(pl, "type")) : NULL;
  if (!pl || !json_is_object(pl)) {
    ts_cli_err("%s: no layer named \"%s\" in \"layers\"", config, pool);
    json_decref(root);
    return NULL;
  }
  if (!type || strcmp(type, "thin-pool") != 0) {
    ts_cli_err("%s: layers.%s is a %s layer, not a thin-pool", config, pool, type ? type : "typeless");
    json_decref(root);
    return NULL;
  }
  json_t *keep = json_object();
  json_object_set(keep, pool, pl);
  collect_refs(layers, pl, keep);
  json_t *sub = json_pack("{s:O?,s:o,s:[]}", "version", json_object_get(root, "version"),
                          "layers", keep, "exports");
  json_t *pool_obj = json_deep_copy(pl);
  json_object_set_new(json_object_get(sub, "layers"), pool, pool_obj);
  char *dir = config_dir(config);
  ts_stack *s = NULL;
  ts_error err = { 0 };
  int r = -ENODATA;
  if (is_new)
    *is_new = false;
  /* First without create, to tell an existing pool from a blank device. */
  json_object_set_new(pool_obj, "create", json_false());
  char *text = json_dumps(sub, 0);
  r = ts_stack_open_string(text, dir, NULL, &s, &err);
  free(text);
  if (r == -ENODATA && create) {
    json_object_set_new(pool_obj, "create", json_true());
    text = json_dumps(sub, 0);
    ts_error_clear(&err);
    r = ts_stack_open_string(text, dir, NULL, &s, &err);
    free(text);
    if (!r && is_new)
      *is_new = true;
  }
  free(dir);
  json_decref(sub);
  json_decref(root);
  if (r) {
    ts_cli_err("%s: %s", config, err.msg[0] ? err.msg : ts_strerror(r));
    return NULL;
  }
  *out = ts_stack_node(s, pool);
  return s;
}

static bool parse_id(const char *what, const char *s, uint32_t *id)
{
  char *end;
  errno = 0;
  unsigned long v = strtoul(s, &end, 10);
  if (!*s || *end || errno || v > TS_THIN_MAX_ID || s[0] == '-') {
    ts_cli_err("%s: \"%s\" is not a volume id (0..%u)", what, s, TS_THIN_MAX_ID);
    return false;
  }
  *id = (uint32_t)v;
  return true;
}

/* Positional arguments and flags; false (after a message) on anything else. */
static bool args(int argc, char **argv, int first, char **pos, int npos, bool *json)
{
  int n = 0;
  for (int i = first; i < argc; i++) {
    if (json && strcmp(argv[i], "--json") == 0) {
      *json = true;
      continue;
    }
    if (argv[i][0] == '-' && argv[i][1]) {
      ts_cli_err("%s %s: unknown option %s", argv[0], argv[first - 1], argv[i]);
      return false;
    }
    if (n == npos) {
      ts_cli_err("%s %s: unexpected argument \"%s\"", argv[0], argv[first - 1], argv[i]);
      return false;
    }
    pos[n++] = argv[i];
  }
  if (n != npos) {
    ts_cli_err("%s %s: missing arguments (thinstack %s --help)", argv[0], argv[first - 1], argv[0]);
    return false;
  }
  return true;
}

static int finish(ts_stack *s, int status)
{
  return ts_cli_close(s, status);
}

/* ------------------------------------------------------------------------ */
/* thinstack pool                                                            */

static const char pool_usage[] =
    "usage: thinstack pool SUBCOMMAND CONFIG POOL ...\n"
    "  create CONFIG POOL            format the pool's blank metadata device\n"
    "  status CONFIG POOL [--json]   data and metadata use, volumes, mode, transaction id\n"
    "  extend CONFIG POOL SIZE       grow the data space to SIZE (a file data layer grows;\n"
    "                                CONFIG's size of that file is updated)\n"
    "  extend-metadata CONFIG POOL SIZE\n"
    "                                grow the metadata space to SIZE, likewise\n";

static void print_size(char *buf, size_t n, uint64_t bytes)
{
  const char *u[] = { "B", "K", "M", "G", "T" };
  double v = (double)bytes;
  int i = 0;
  while (v >= 1024 && i < 4) {
    v /= 1024;
    i++;
  }
  snprintf(buf, n, i ? "%.1f%s" : "%.0f%s", v, u[i]);
}

static int pool_status_cmd(const char *config, const char *name, bool json)
{
  ts_dev *pool;
  ts_stack *s = open_pool(config, name, false, NULL, &pool);
  if (!s)
    return 1;
  ts_pool_status st;
  ts_error err = { 0 };
  size_t n = 0;
  if (ts_pool_get_status(pool, &st, &err) || ts_pool_list_thins(pool, NULL, 0, &n, &err)) {
    ts_cli_err("%s", err.msg);
    return finish(s, 1);
  }
  ts_thin_info *v = calloc(n ? n : 1, sizeof *v);
  if (!v || ts_pool_list_thins(pool, v, n, &n, &err)) {
    ts_cli_err("%s", err.msg[0] ? err.msg : "out of memory");
    free(v);
    return finish(s, 1);
  }
  const char *mode = st.failed                  ? "failed"
                     : st.read_only             ? "ro"
                     : st.out_of_metadata_space ? "out_of_metadata_space"
                     : st.out_of_data_space     ? "out_of_data_space"
                                                : "rw";
  if (json) {
    json_t *o = json_pack("{s:s,s:I,s:I,s:{s:I,s:I,s:I},s:{s:I,s:I,s:b},s:s,s:I,s:b,s:s,s:b,s:b,s:b,s:I}",
                          "pool", name, "block_size", (json_int_t)st.block_size, "transaction_id",
                          (json_int_t)st.transaction_id, "data", "blocks", (json_int_t)st.data_blocks,
                          "used", (json_int_t)st.data_used_blocks, "free", (json_int_t)st.data_free_blocks,
                          "metadata", "blocks", (json_int_t)st.metadata_blocks, "used",
                          (json_int_t)st.metadata_used_blocks, "out_of_space", st.out_of_metadata_space,
                          "mode", mode, "low_water_mark",
                          (json_int_t)st.low_water_mark, "low_water", st.low_water, "out_of_space",
                          st.queue_if_no_space ? "queue" : "error", "discard_passdown", st.discard_passdown,
                          "zero_new_blocks", st.zero_new_blocks, "needs_check", st.needs_check,
                          "held_metadata_root", (json_int_t)st.held_metadata_root);
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
      json_array_append_new(a, json_pack("{s:i,s:I,s:I}", "id", (int)v[i].id, "mapped_blocks",
                                         (json_int_t)v[i].mapped_blocks, "mapped_bytes",
                                         (json_int_t)v[i].mapped_bytes));
    json_object_set_new(o, "volumes", a);
    char *txt = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    printf("%s\n", txt);
    free(txt);
    json_decref(o);
  } else {
    char a[32], b[32], c[32];
    ts_format_size(st.block_size, a, sizeof a);
    printf("pool %s: %s blocks, transaction id %llu, mode %s\n", name, a,
           (unsigned long long)st.transaction_id, mode);
    print_size(a, sizeof a, st.data_used_blocks * st.block_size);
    print_size(b, sizeof b, st.data_blocks * st.block_size);
    print_size(c, sizeof c, st.data_free_blocks * st.block_size);
    printf("  data      %llu of %llu blocks used (%s of %s, %.1f%%), %s free\n",
           (unsigned long long)st.data_used_blocks, (unsigned long long)st.data_blocks, a, b,
           st.data_blocks ? 100.0 * (double)st.data_used_blocks / (double)st.data_blocks : 0.0, c);
    printf("  metadata  %llu of %llu 4K blocks used (%.1f%%)\n", (unsigned long long)st.metadata_used_blocks,
           (unsigned long long)st.metadata_blocks,
           st.metadata_blocks ? 100.0 * (double)st.metadata_used_blocks / (double)st.metadata_blocks : 0.0);
    if (st.low_water_mark) {
      print_size(a, sizeof a, st.low_water_mark);
      printf("  low water mark %s: %s\n", a, st.low_water ? "REACHED" : "not reached");
    }
    printf("  out of space: %s; discard passdown: %s; zero new blocks: %s%s%s\n",
           st.queue_if_no_space ? "queue" : "error", st.discard_passdown ? "yes" : "no",
           st.zero_new_blocks ? "yes" : "no", st.needs_check ? "; NEEDS CHECK" : "",
           st.held_metadata_root ? "; metadata snapshot held" : "");
    printf("  %zu volume%s\n", n, n == 1 ? "" : "s");
    for (size_t i = 0; i < n; i++) {
      print_size(a, sizeof a, v[i].mapped_bytes);
      printf("  %8u  %llu blocks mapped (%s)\n", v[i].id, (unsigned long long)v[i].mapped_blocks, a);
    }
  }
  free(v);
  return finish(s, 0);
}

/* After growing a file data layer, make CONFIG say its new size. */
/* Write the new size of the pool's `which` ("data" or "metadata") file
 * layer into the configuration, so that it opens again. */
static void update_config_size(const char *config, const char *poolname, const char *which,
                               uint64_t size)
{
  json_error_t je;
  json_t *root = json_load_file(config, JSON_REJECT_DUPLICATES | JSON_PRESERVE_ORDER, &je);
  json_t *layers = root ? json_object_get(root, "layers") : NULL;
  json_t *pl = layers ? json_object_get(layers, poolname) : NULL;
  const char *dname = pl ? json_string_value(json_object_get(pl, which)) : NULL;
  json_t *dl = dname ? json_object_get(layers, dname) : NULL;
  const char *type = dl ? json_string_value(json_object_get(dl, "type")) : NULL;
  if (type && strcmp(type, "file") == 0 && json_object_get(dl, "size")) {
    char sz[32];
    ts_format_size(size, sz, sizeof sz);
    json_object_set_new(dl, "size", json_string(sz));
    if (json_dump_file(root, config, JSON_INDENT(2) | JSON_PRESERVE_ORDER) == 0)
      printf("%s: layers.%s.size is now \"%s\"\n", config, dname, sz);
    else
      ts_cli_err("%s: could not update layers.%s.size to \"%s\": edit it before the next open", config,
                 dname, sz);
  }
  json_decref(root);
}

int ts_cli_pool(int argc, char **argv)
{
  if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
    fputs(pool_usage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const char *sub = argv[1];
  char *pos[3];
  bool json = false;
  ts_error err = { 0 };
  if (!strcmp(sub, "create")) {
    if (!args(argc, argv, 2, pos, 2, NULL))
      return 2;
    bool is_new;
    ts_dev *pool;
    ts_stack *s = open_pool(pos[0], pos[1], true, &is_new, &pool);
    if (!s)
      return 1;
    if (!is_new) {
      ts_cli_err("%s: pool \"%s\" already exists (its metadata is formatted)", pos[0], pos[1]);
      return finish(s, 1);
    }
    ts_pool_status st;
    ts_pool_get_status(pool, &st, NULL);
    char a[32];
    print_size(a, sizeof a, st.data_blocks * st.block_size);
    printf("pool %s created: %llu data blocks of %lluK (%s), %llu metadata blocks\n", pos[1],
           (unsigned long long)st.data_blocks, (unsigned long long)(st.block_size / 1024), a,
           (unsigned long long)st.metadata_blocks);
    return finish(s, 0);
  }
  if (!strcmp(sub, "status")) {
    if (!args(argc, argv, 2, pos, 2, &json))
      return 2;
    return pool_status_cmd(pos[0], pos[1], json);
  }
  bool meta = !strcmp(sub, "extend-metadata");
  if (meta || !strcmp(sub, "extend")) {
    const char *which = meta ? "metadata" : "data";
    uint64_t size;
    if (!args(argc, argv, 2, pos, 3, NULL))
      return 2;
    if (!ts_cli_size(meta ? "pool extend-metadata: SIZE" : "pool extend: SIZE", pos[2], &size))
      return 2;
    ts_dev *pool;
    ts_stack *s = open_pool(pos[0], pos[1], false, NULL, &pool);
    if (!s)
      return 1;
    ts_pool_status before;
    ts_pool_get_status(pool, &before, NULL);
    uint64_t unit = meta ? 4096 : before.block_size;
    uint64_t had = (meta ? before.metadata_blocks : before.data_blocks) * unit;
    if ((meta ? ts_pool_extend_metadata : ts_pool_extend)(pool, size, &err)) {
      ts_cli_err("%s", err.msg);
      return finish(s, 1);
    }
    int r = finish(s, 0);
    if (r == 0 && size > had) {
      char a[32];
      ts_format_size(size, a, sizeof a);
      printf("pool %s: %s space is now %s (%llu blocks)\n", pos[1], which, a,
             (unsigned long long)(size / unit));
      update_config_size(pos[0], pos[1], which, size);
    }
    return r;
  }
  ts_cli_err("pool: unknown subcommand \"%s\" (thinstack pool --help lists them)", sub);
  return 2;
}

/* ------------------------------------------------------------------------ */
/* thinstack thin                                                            */

static const char thin_usage[] =
    "usage: thinstack thin SUBCOMMAND CONFIG POOL ...\n"
    "  create CONFIG POOL ID             create an empty volume\n"
    "  snap   CONFIG POOL ID ORIGIN_ID   create volume ID as a snapshot of ORIGIN_ID\n"
    "  delete CONFIG POOL ID             delete a volume (it must not be open)\n"
    "  list   CONFIG POOL [--json]       list the volumes and their mapped space\n";

int ts_cli_thin(int argc, char **argv)
{
  if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
    fputs(thin_usage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const char *sub = argv[1];
  char *pos[4];
  bool json = false;
  uint32_t id = 0, origin = 0;
  int npos;
  if (!strcmp(sub, "create") || !strcmp(sub, "delete"))
    npos = 3;
  else if (!strcmp(sub, "snap"))
    npos = 4;
  else if (!strcmp(sub, "list"))
    npos = 2;
  else {
    ts_cli_err("thin: unknown subcommand \"%s\" (thinstack thin --help lists them)", sub);
    return 2;
  }
  if (!args(argc, argv, 2, pos, npos, !strcmp(sub, "list") ? &json : NULL))
    return 2;
  if (npos >= 3 && !parse_id("thin: ID", pos[2], &id))
    return 2;
  if (npos == 4 && !parse_id("thin: ORIGIN_ID", pos[3], &origin))
    return 2;
  ts_dev *pool;
  ts_stack *s = open_pool(pos[0], pos[1], false, NULL, &pool);
  if (!s)
    return 1;
  ts_error err = { 0 };
  int r = 0;
  if (!strcmp(sub, "create")) {
    if (!(r = ts_pool_create_thin(pool, id, &err)))
      printf("volume %u created in pool %s\n", id, pos[1]);
  } else if (!strcmp(sub, "snap")) {
    if (!(r = ts_pool_create_snap(pool, id, origin, &err)))
      printf("volume %u created in pool %s as a snapshot of volume %u\n", id, pos[1], origin);
  } else if (!strcmp(sub, "delete")) {
    if (!(r = ts_pool_delete_thin(pool, id, &err)))
      printf("volume %u deleted from pool %s\n", id, pos[1]);
  } else {
    size_t n = 0;
    ts_thin_info *v = NULL;
    if (!(r = ts_pool_list_thins(pool, NULL, 0, &n, &err))) {
      v = calloc(n ? n : 1, sizeof *v);
      r = v ? ts_pool_list_thins(pool, v, n, &n, &err) : ts_error_set(&err, -ENOMEM, "out of memory");
    }
    if (!r && json) {
      json_t *a = json_array();
      for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_pack("{s:i,s:I,s:I,s:I,s:i,s:i}", "id", (int)v[i].id, "mapped_blocks",
                                           (json_int_t)v[i].mapped_blocks, "mapped_bytes",
                                           (json_int_t)v[i].mapped_bytes, "transaction_id",
                                           (json_int_t)v[i].transaction_id, "creation_time",
                                           (int)v[i].creation_time, "snapshotted_time",
                                           (int)v[i].snapshotted_time));
      char *txt = json_dumps(a, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
      printf("%s\n", txt);
      free(txt);
      json_decref(a);
    } else if (!r) {
      printf("%8s %14s %12s %8s %12s\n", "id", "mapped_blocks", "mapped", "created", "snapshotted");
      for (size_t i = 0; i < n; i++) {
        char a[32];
        print_size(a, sizeof a, v[i].mapped_bytes);
        printf("%8u %14llu %12s %8u %12u\n", v[i].id, (unsigned long long)v[i].mapped_blocks, a,
               v[i].creation_time, v[i].snapshotted_time);
      }
    }
    free(v);
  }
  if (r)
    ts_cli_err("%s", err.msg[0] ? err.msg : ts_strerror(r));
  return finish(s, r ? 1 : 0);
}
