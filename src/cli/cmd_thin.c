/* thinstack pool ... / thinstack thin ...: manage a thin pool and its volumes
 * through <libthinstack/thin.h>; the volume lifecycle (create, snap, delete,
 * resize, pool extend) is the library's ts_volume_* calls, which keep the
 * pool and CONFIG together.
 *
 * Each command opens only the pool and the layers below it (so a volume
 * layer that cannot open, as after an interrupted delete, does not stop the
 * command that mends it), does one thing, and closes the stack, which
 * commits. list and status open read-only. */
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
                           ts_dev **out, uint32_t flags, const char *unsized)
{
  ts_open_opts opts = ts_cli_open_opts(flags);
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
  /* Growing a space: its file layer opens at whatever size the file has, so
   * that an extend stopped between growing the file and renaming CONFIG is
   * finished by running it again (the pool takes the grown file in). */
  const char *uname = unsized ? json_string_value(json_object_get(pl, unsized)) : NULL;
  json_t *ul = uname ? json_object_get(layers, uname) : NULL;
  const char *utype = ul ? json_string_value(json_object_get(ul, "type")) : NULL;
  if (utype && !strcmp(utype, "file")) {
    json_t *copy = json_deep_copy(ul);
    json_object_del(copy, "size");
    json_object_set_new(json_object_get(sub, "layers"), uname, copy);
  }
  char *dir = config_dir(config);
  ts_stack *s = NULL;
  ts_error err = { 0 };
  int r = -ENODATA;
  if (is_new)
    *is_new = false;
  /* First without create, to tell an existing pool from a blank device. */
  json_object_set_new(pool_obj, "create", json_false());
  char *text = json_dumps(sub, 0);
  r = ts_stack_open_string(text, dir, &opts, &s, &err);
  free(text);
  if (r == -ENODATA && create) {
    json_object_set_new(pool_obj, "create", json_true());
    text = json_dumps(sub, 0);
    ts_error_clear(&err);
    r = ts_stack_open_string(text, dir, &opts, &s, &err);
    free(text);
    if (!r && is_new)
      *is_new = true;
  }
  free(dir);
  json_decref(sub);
  json_decref(root);
  if (!r)
    r = ts_stack_set_config_path(s, config, &err);
  if (r) {
    ts_cli_open_failed(config, flags, r, &err, pool);
    ts_stack_close(s, NULL);
    return NULL;
  }
  *out = ts_stack_node(s, pool);
  return s;
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
    "  create CONFIG POOL [--json]   format the pool's blank metadata device\n"
    "  status CONFIG POOL [--json]   data and metadata use, volumes, mode, transaction id\n"
    "  extend CONFIG POOL [+]SIZE [--json]\n"
    "                                grow the data space to SIZE (or by +SIZE); a file data\n"
    "                                layer grows and CONFIG says its new size, together\n"
    "  extend-metadata CONFIG POOL [+]SIZE [--json]\n"
    "                                grow the metadata space likewise\n";

/* The lines of `usage` for subcommand `sub` (those starting "  SUB "), with
 * the first line, on stdout: a subcommand's --help. */
static int sub_help(const char *usage, const char *sub)
{
  const char *nl = strchr(usage, '\n');
  fwrite(usage, 1, (size_t)(nl - usage + 1), stdout);
  size_t n = strlen(sub);
  bool in = false;
  for (const char *l = nl + 1; *l; l = strchr(l, '\n') + 1) {
    const char *e = strchr(l, '\n');
    if (l[0] == ' ' && l[1] == ' ' && l[2] != ' ')
      in = strncmp(l + 2, sub, n) == 0 && (l[2 + n] == ' ' || l[2 + n] == '\n');
    if (in)
      fwrite(l, 1, (size_t)(e - l + 1), stdout);
  }
  return 0;
}

static bool wants_help(int argc, char **argv)
{
  for (int i = 2; i < argc; i++)
    if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help"))
      return true;
  return false;
}

static void print_doc(json_t *root)
{
  char *txt = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
  printf("%s\n", txt ? txt : "null");
  free(txt);
  json_decref(root);
}

void ts_cli_pool_extended(bool json, const char *pool, const char *which, uint64_t size,
                          uint64_t blocks, bool grown)
{
  char a[32];
  ts_format_size(size, a, sizeof a);
  if (json)
    print_doc(json_pack("{s:{s:s, s:s, s:I, s:I, s:b}}", "extended", "pool", pool, "space", which,
                        "size", (json_int_t)size, "blocks", (json_int_t)blocks, "grown", grown));
  else if (grown)
    printf("pool %s: %s space is now %s (%llu blocks)\n", pool, which, a,
           (unsigned long long)blocks);
  else
    printf("pool %s: %s space is already %s\n", pool, which, a);
}

void ts_cli_thin_done(bool json, const char *verb, const char *name, uint32_t id, const char *pool,
                      uint64_t size, const char *origin)
{
  char a[32];
  ts_format_size(size, a, sizeof a);
  if (!json) {
    if (!strcmp(verb, "create"))
      printf("volume %s (id %u, %s) created in pool %s\n", name, id, a, pool);
    else if (!strcmp(verb, "snap"))
      printf("volume %s (id %u) created in pool %s as a snapshot of %s\n", name, id, pool, origin);
    else if (!strcmp(verb, "delete") && !name)
      printf("volume %u deleted from pool %s\n", id, pool);
    else if (!strcmp(verb, "delete"))
      printf("volume %s deleted from pool %s\n", name, pool);
    else
      printf("volume %s is now %s\n", name, a);
    return;
  }
  json_t *o = json_object();
  if (name)
    json_object_set_new(o, "name", json_string(name));
  if (strcmp(verb, "resize") && (strcmp(verb, "delete") || !name))
    json_object_set_new(o, "id", json_integer(id));
  if (pool)
    json_object_set_new(o, "pool", json_string(pool));
  if (!strcmp(verb, "create") || !strcmp(verb, "resize"))
    json_object_set_new(o, "size", json_integer((json_int_t)size));
  if (origin)
    json_object_set_new(o, "origin", json_string(origin));
  const char *key = !strcmp(verb, "delete")   ? "deleted"
                    : !strcmp(verb, "resize") ? "resized"
                                              : "created";
  print_doc(json_pack("{s:o}", key, o));
}

/* SIZE or +SIZE: *rel says which. */
static bool parse_rel_size(const char *what, const char *arg, uint64_t *size, bool *rel)
{
  *rel = arg[0] == '+';
  return ts_cli_size(what, arg + *rel, size);
}

void ts_cli_print_size(char *buf, size_t n, uint64_t bytes)
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

/* Whether CONFIG makes pool `name` read-only: its own "read_only", or that of
 * its metadata or data layer. */
static bool config_read_only(const char *config, const char *name)
{
  json_t *root = json_load_file(config, 0, NULL);
  json_t *layers = json_object_get(root, "layers"), *pl = json_object_get(layers, name);
  bool ro = json_is_true(json_object_get(pl, "read_only"));
  const char *which[] = { "metadata", "data" };
  for (int i = 0; i < 2; i++) {
    json_t *c = json_object_get(layers, json_string_value(json_object_get(pl, which[i])));
    ro = ro || json_is_true(json_object_get(c, "read_only"));
  }
  json_decref(root);
  return ro;
}

static int pool_status_cmd(const char *config, const char *name, bool json)
{
  ts_dev *pool;
  ts_stack *s = open_pool(config, name, false, NULL, &pool, TS_OPEN_READ_ONLY, NULL);
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
  /* status opens read-only; the mode to show is the one writers get. */
  bool ro = st.read_only && config_read_only(config, name);
  const char *mode = st.failed                  ? "failed"
                     : ro                       ? "ro"
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
    ts_cli_print_size(a, sizeof a, st.data_used_blocks * st.block_size);
    ts_cli_print_size(b, sizeof b, st.data_blocks * st.block_size);
    ts_cli_print_size(c, sizeof c, st.data_free_blocks * st.block_size);
    printf("  data      %llu of %llu blocks used (%s of %s, %.1f%%), %s free\n",
           (unsigned long long)st.data_used_blocks, (unsigned long long)st.data_blocks, a, b,
           st.data_blocks ? 100.0 * (double)st.data_used_blocks / (double)st.data_blocks : 0.0, c);
    printf("  metadata  %llu of %llu 4K blocks used (%.1f%%)\n", (unsigned long long)st.metadata_used_blocks,
           (unsigned long long)st.metadata_blocks,
           st.metadata_blocks ? 100.0 * (double)st.metadata_used_blocks / (double)st.metadata_blocks : 0.0);
    if (st.low_water_mark) {
      ts_cli_print_size(a, sizeof a, st.low_water_mark);
      printf("  low water mark %s: %s\n", a, st.low_water ? "REACHED" : "not reached");
    }
    printf("  out of space: %s; discard passdown: %s; zero new blocks: %s%s%s\n",
           st.queue_if_no_space ? "queue" : "error", st.discard_passdown ? "yes" : "no",
           st.zero_new_blocks ? "yes" : "no", st.needs_check ? "; NEEDS CHECK" : "",
           st.held_metadata_root ? "; metadata snapshot held" : "");
    printf("  %zu volume%s\n", n, n == 1 ? "" : "s");
    for (size_t i = 0; i < n; i++) {
      ts_cli_print_size(a, sizeof a, v[i].mapped_bytes);
      printf("  %8u  %llu blocks mapped (%s)\n", v[i].id, (unsigned long long)v[i].mapped_blocks, a);
    }
  }
  free(v);
  return finish(s, 0);
}

static int pool_extend_cmd(int argc, char **argv, bool meta)
{
  const char *which = meta ? "metadata" : "data";
  char *pos[3];
  uint64_t size;
  bool rel, json = false;
  if (!args(argc, argv, 2, pos, 3, &json))
    return 2;
  if (!parse_rel_size(meta ? "pool extend-metadata: SIZE" : "pool extend: SIZE", pos[2], &size,
                      &rel))
    return 2;
  ts_dev *pool;
  ts_stack *s = open_pool(pos[0], pos[1], false, NULL, &pool, 0, meta ? "metadata" : "data");
  if (!s)
    return 1;
  ts_pool_status st;
  ts_error err = { 0 };
  ts_pool_get_status(pool, &st, NULL);
  uint64_t unit = meta ? 4096 : st.block_size;
  uint64_t had = (meta ? st.metadata_blocks : st.data_blocks) * unit;
  if (rel)
    size += had;
  if (ts_stack_pool_extend(s, pos[1], size, meta ? TS_POOL_EXTEND_METADATA : 0, &err)) {
    ts_cli_err("%s", err.msg);
    return finish(s, 1);
  }
  int r = finish(s, 0);
  if (r == 0)
    ts_cli_pool_extended(json, pos[1], which, size, size / unit, size > had);
  return r;
}

int ts_cli_pool(int argc, char **argv)
{
  if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
    fputs(pool_usage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  if (wants_help(argc, argv))
    return sub_help(pool_usage, argv[1]);
  const char *sub = argv[1];
  char *pos[3];
  bool json = false;
  if (!strcmp(sub, "create")) {
    if (!args(argc, argv, 2, pos, 2, &json))
      return 2;
    bool is_new;
    ts_dev *pool;
    ts_stack *s = open_pool(pos[0], pos[1], true, &is_new, &pool, 0, NULL);
    if (!s)
      return 1;
    if (!is_new) {
      ts_cli_err("%s: pool \"%s\" already exists (its metadata is formatted)", pos[0], pos[1]);
      return finish(s, 1);
    }
    ts_pool_status st;
    ts_pool_get_status(pool, &st, NULL);
    if (json) {
      print_doc(json_pack("{s:{s:s, s:I, s:I, s:I}}", "created", "pool", pos[1], "data_blocks",
                          (json_int_t)st.data_blocks, "block_size", (json_int_t)st.block_size,
                          "metadata_blocks", (json_int_t)st.metadata_blocks));
      return finish(s, 0);
    }
    char a[32];
    ts_cli_print_size(a, sizeof a, st.data_blocks * st.block_size);
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
  if (meta || !strcmp(sub, "extend"))
    return pool_extend_cmd(argc, argv, meta);
  ts_cli_err("pool: unknown subcommand \"%s\" (thinstack pool --help lists them)", sub);
  return 2;
}

/* ------------------------------------------------------------------------ */
/* thinstack thin                                                            */

static const char thin_usage[] =
    "usage: thinstack thin SUBCOMMAND CONFIG ...   (the pool and CONFIG change together)\n"
    "  create CONFIG NAME --size SIZE [--pool POOL] [--id ID] [--export] [--json]\n"
    "                   create an empty volume and its layer NAME (POOL may be left out\n"
    "                   when CONFIG has one pool; ID defaults to the lowest free one)\n"
    "  snap CONFIG ORIGIN NAME [--export] [--json]\n"
    "                   snapshot layer ORIGIN's volume as a new layer NAME (\"origin\": ORIGIN)\n"
    "  delete CONFIG NAME [--json]\n"
    "                   delete layer NAME's volume and the layer (a layer whose volume is\n"
    "                   gone, as after an interrupted delete, is removed alone)\n"
    "  delete CONFIG --id ID [--pool POOL] [--json]\n"
    "                   delete a volume that no layer names (as after an interrupted create)\n"
    "  resize CONFIG NAME [+]SIZE [--discard-beyond] [--json]\n"
    "                   grow a volume; a shrink over mapped blocks needs --discard-beyond,\n"
    "                   which discards them\n"
    "  list CONFIG [--pool POOL] [--json]\n"
    "                   the volumes: name, id, size, mapped and provisioned bytes, use,\n"
    "                   exclusive and shared bytes, origin, and volumes the pool has but\n"
    "                   CONFIG does not name\n"
    "  delta CONFIG A B [--id] [--pool POOL] [--verbose] [--json]\n"
    "                   the ranges that differ between volumes A and B (layer names, or\n"
    "                   with --id volume ids), from the metadata alone as thin_delta:\n"
    "                   different, left_only (A only), right_only (B only); --verbose adds\n"
    "                   the same ranges and each side's pool blocks\n";

/* Options of the thin subcommands. */
struct thin_opts {
  char *pos[3];
  int npos;
  const char *pool, *size, *id;
  bool json, export_it, discard_beyond;
};

static bool thin_args(int argc, char **argv, struct thin_opts *o, const char *allowed)
{
  memset(o, 0, sizeof *o);
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i];
    const char **val = !strcmp(a, "--pool")   ? &o->pool
                       : !strcmp(a, "--size") ? &o->size
                       : !strcmp(a, "--id")   ? &o->id
                                              : NULL;
    bool *flag = !strcmp(a, "--json")             ? &o->json
                 : !strcmp(a, "--export")         ? &o->export_it
                 : !strcmp(a, "--discard-beyond") ? &o->discard_beyond
                                                  : NULL;
    if ((val || flag) && !strstr(allowed, a)) {
      ts_cli_err("thin %s: %s does not apply (thinstack thin %s --help)", argv[1], a, argv[1]);
      return false;
    }
    if (val) {
      if (i + 1 == argc) {
        ts_cli_err("thin %s: %s needs a value", argv[1], a);
        return false;
      }
      *val = argv[++i];
    } else if (flag) {
      *flag = true;
    } else if (a[0] == '-' && a[1]) {
      ts_cli_err("thin %s: unknown option %s (thinstack thin %s --help)", argv[1], a, argv[1]);
      return false;
    } else if (o->npos == 3) {
      ts_cli_err("thin %s: unexpected argument \"%s\"", argv[1], a);
      return false;
    } else {
      o->pos[o->npos++] = argv[i];
    }
  }
  return true;
}

/* The pool a command works on: the one given, the pool of layer `layer`, or
 * the only pool of CONFIG. NULL after a message. */
static char *config_pool(const char *config, const char *given, const char *layer)
{
  json_error_t je;
  json_t *root = json_load_file(config, JSON_REJECT_DUPLICATES, &je);
  if (!root) {
    ts_cli_err("%s:%d:%d: %s", config, je.line, je.column, je.text);
    return NULL;
  }
  json_t *layers = json_object_get(root, "layers");
  char *out = NULL;
  if (given) {
    out = strdup(given);
  } else if (layer) {
    json_t *l = json_object_get(layers, layer);
    const char *type = json_string_value(json_object_get(l, "type"));
    const char *p = json_string_value(json_object_get(l, "pool"));
    if (!l)
      ts_cli_err("%s: no layer named \"%s\" in \"layers\"", config, layer);
    else if (!type || strcmp(type, "thin") || !p)
      ts_cli_err("%s: layers.%s is a %s layer, not a thin volume", config, layer,
                 type ? type : "typeless");
    else
      out = strdup(p);
  } else {
    const char *k, *found = NULL;
    json_t *v;
    int n = 0;
    json_object_foreach(layers, k, v)
    {
      const char *type = json_string_value(json_object_get(v, "type"));
      if (type && !strcmp(type, "thin-pool")) {
        found = k;
        n++;
      }
    }
    if (n == 1)
      out = strdup(found);
    else
      ts_cli_err("%s: %s thin-pool layers: name one with --pool", config, n ? "several" : "no");
  }
  json_decref(root);
  return out;
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

/* ts_volume_list of one pool of an open stack; NULL after a message. */
static ts_volume_info *volumes(ts_stack *s, const char *pool, size_t *n)
{
  ts_error err = { 0 };
  ts_volume_info *vi = NULL;
  int r = ts_volume_list(s, pool, NULL, 0, n, &err);
  if (!r) {
    vi = calloc(*n + 1, sizeof *vi);
    r = vi ? ts_volume_list(s, pool, vi, *n, n, &err)
           : ts_error_set(&err, -ENOMEM, "out of memory");
  }
  if (r) {
    ts_cli_err("%s", err.msg);
    free(vi);
    return NULL;
  }
  return vi;
}

void ts_cli_list_text(json_t *arr)
{
  int w = 4;
  size_t i;
  json_t *v;
  json_array_foreach(arr, i, v)
  {
    const char *nm = json_string_value(json_object_get(v, "name"));
    if (nm && (int)strlen(nm) > w)
      w = (int)strlen(nm);
  }
  printf("%-*s %-8s %8s %9s %9s %11s %6s %9s %9s  %s\n", w, "NAME", "POOL", "ID", "SIZE", "MAPPED",
         "PROVISIONED", "DATA%", "EXCLUSIVE", "SHARED", "ORIGIN");
  json_array_foreach(arr, i, v)
  {
    char a[32] = "-", b[32], c[32], pct[16] = "-", ex[32], sh[32];
    uint64_t size = (uint64_t)json_integer_value(json_object_get(v, "size"));
    bool in_config = json_is_true(json_object_get(v, "in_config"));
    bool in_pool = json_is_true(json_object_get(v, "in_pool"));
    if (size) {
      ts_cli_print_size(a, sizeof a, size);
      snprintf(pct, sizeof pct, "%.2f", json_real_value(json_object_get(v, "data_percent")));
    }
    ts_cli_print_size(b, sizeof b, (uint64_t)json_integer_value(json_object_get(v, "mapped_bytes")));
    ts_cli_print_size(c, sizeof c, (uint64_t)json_integer_value(json_object_get(v, "provisioned_bytes")));
    ts_cli_print_size(ex, sizeof ex,
                      (uint64_t)json_integer_value(json_object_get(v, "exclusive_bytes")));
    ts_cli_print_size(sh, sizeof sh,
                      (uint64_t)json_integer_value(json_object_get(v, "shared_bytes")));
    const char *nm = json_string_value(json_object_get(v, "name"));
    const char *origin = json_string_value(json_object_get(v, "origin"));
    printf("%-*s %-8s %8d %9s %9s %11s %6s %9s %9s  %s%s\n", w, nm ? nm : "-",
           json_string_value(json_object_get(v, "pool")),
           (int)json_integer_value(json_object_get(v, "id")), a, in_pool ? b : "-",
           in_pool ? c : "-", pct, in_pool ? ex : "-", in_pool ? sh : "-", origin ? origin : "",
           !in_config ? "(not in config)"
           : !in_pool ? "(volume missing from the pool)"
                      : "");
  }
}

int ts_cli_add_usage(ts_dev *pool, json_t *arr, size_t first)
{
  ts_error err = { 0 };
  size_t n = 0;
  ts_pool_status st;
  int r = ts_pool_get_status(pool, &st, &err);
  if (!r)
    r = ts_pool_thin_usage(pool, NULL, 0, &n, &err);
  ts_thin_usage *u = r ? NULL : calloc(n + 1, sizeof *u);
  if (!r && !u)
    r = ts_error_set(&err, -ENOMEM, "out of memory");
  if (!r)
    r = ts_pool_thin_usage(pool, u, n, &n, &err);
  if (r) {
    ts_cli_err("%s", err.msg[0] ? err.msg : ts_strerror(r));
    free(u);
    return r;
  }
  for (size_t i = first; i < json_array_size(arr); i++) {
    json_t *v = json_array_get(arr, i);
    uint32_t id = (uint32_t)json_integer_value(json_object_get(v, "id"));
    uint64_t ex = 0, sh = 0;
    for (size_t j = 0; j < n; j++)
      if (u[j].id == id && json_is_true(json_object_get(v, "in_pool"))) {
        ex = u[j].exclusive_blocks * st.block_size;
        sh = u[j].shared_blocks * st.block_size;
      }
    json_object_set_new(v, "exclusive_bytes", json_integer((json_int_t)ex));
    json_object_set_new(v, "shared_bytes", json_integer((json_int_t)sh));
  }
  free(u);
  return 0;
}

static int thin_list_cmd(const char *config, const char *only, bool json)
{
  json_error_t je;
  json_t *root = json_load_file(config, JSON_REJECT_DUPLICATES, &je);
  if (!root) {
    ts_cli_err("%s:%d:%d: %s", config, je.line, je.column, je.text);
    return 1;
  }
  json_t *arr = json_array();
  const char *k;
  json_t *v;
  int status = 0;
  bool any = false;
  /* Every pool of CONFIG, or the one asked for. */
  json_object_foreach(json_object_get(root, "layers"), k, v)
  {
    const char *type = json_string_value(json_object_get(v, "type"));
    if (!type || strcmp(type, "thin-pool") || (only && strcmp(only, k)))
      continue;
    any = true;
    ts_dev *pool;
    ts_stack *s = open_pool(config, k, false, NULL, &pool, TS_OPEN_READ_ONLY, NULL);
    if (!s) {
      status = 1;
      continue;
    }
    size_t n = 0;
    ts_volume_info *vi = volumes(s, k, &n);
    if (!vi)
      status = 1;
    size_t first = json_array_size(arr);
    for (size_t i = 0; vi && i < n; i++)
      json_array_append_new(
          arr,
          json_pack("{s:s?,s:s,s:i,s:I,s:I,s:I,s:f,s:s?,s:b,s:b}", "name",
                    vi[i].name[0] ? vi[i].name : NULL, "pool", vi[i].pool, "id", (int)vi[i].id,
                    "size", (json_int_t)vi[i].size, "mapped_bytes", (json_int_t)vi[i].mapped_bytes,
                    "provisioned_bytes", (json_int_t)vi[i].provisioned_bytes, "data_percent",
                    vi[i].size ? 100.0 * (double)vi[i].mapped_bytes / (double)vi[i].size : 0.0,
                    "origin", vi[i].origin[0] ? vi[i].origin : NULL, "in_config",
                    vi[i].name[0] != 0, "in_pool", vi[i].in_pool));
    if (vi && ts_cli_add_usage(pool, arr, first) < 0)
      status = 1;
    free(vi);
    status = finish(s, status);
  }
  if (only && !any) {
    ts_cli_err("%s: no thin-pool layer named \"%s\"", config, only);
    status = 1;
  }
  if (status == 0 && json) {
    char *txt = json_dumps(arr, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    printf("%s\n", txt);
    free(txt);
  } else if (status == 0) {
    ts_cli_list_text(arr);
  }
  json_decref(arr);
  json_decref(root);
  return status;
}

/* ------------------------------------------------------------------------ */
/* thinstack thin delta                                                      */

static const char *const delta_kinds[] = { "same", "different", "left_only", "right_only" };

/* The document: without --verbose, ranges of one kind that touch are one
 * whatever pool blocks they map to, as thin_delta prints them. */
struct delta_doc {
  json_t *ranges;
  bool verbose;
  uint64_t bs;
  uint64_t blocks[4];
  ts_delta_range last;
};

static void delta_push(struct delta_doc *d, const ts_delta_range *r)
{
  json_t *o = json_pack("{s:s,s:I,s:I,s:I,s:I}", "kind", delta_kinds[r->kind], "begin",
                        (json_int_t)r->begin, "length", (json_int_t)r->length, "offset",
                        (json_int_t)(r->begin * d->bs), "bytes", (json_int_t)(r->length * d->bs));
  if (d->verbose && r->kind != TS_DELTA_RIGHT_ONLY)
    json_object_set_new(o, "left_data", json_integer((json_int_t)r->left_data));
  if (d->verbose && r->kind != TS_DELTA_LEFT_ONLY)
    json_object_set_new(o, "right_data", json_integer((json_int_t)r->right_data));
  json_array_append_new(d->ranges, o);
}

static void delta_add(struct delta_doc *d, const ts_delta_range *r)
{
  d->blocks[r->kind] += r->length;
  if (d->verbose) {
    delta_push(d, r);
  } else if (d->last.length && d->last.kind == r->kind &&
             d->last.begin + d->last.length == r->begin) {
    d->last.length += r->length;
  } else {
    if (d->last.length)
      delta_push(d, &d->last);
    d->last = *r;
  }
}

int ts_cli_delta_args(int argc, char **argv, struct ts_cli_delta *d, bool quiet)
{
  const char *pos[3];
  int npos = 0;
  memset(d, 0, sizeof *d);
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--json")) {
      d->json = true;
    } else if (!strcmp(a, "--verbose")) {
      d->verbose = true;
    } else if (!strcmp(a, "--id")) {
      d->by_id = true;
    } else if (!strcmp(a, "--pool") && i + 1 < argc) {
      d->pool = argv[++i];
    } else if (a[0] == '-' && a[1]) {
      if (!quiet)
        ts_cli_err("thin delta: unknown option %s (thinstack thin delta --help)", a);
      return 2;
    } else if (npos == 3) {
      if (!quiet)
        ts_cli_err("thin delta: unexpected argument \"%s\"", a);
      return 2;
    } else {
      pos[npos++] = a;
    }
  }
  if (npos != 3) {
    if (!quiet)
      ts_cli_err("thin delta: missing arguments (thinstack thin delta --help)");
    return 2;
  }
  if (d->pool && !d->by_id) {
    if (!quiet)
      ts_cli_err("thin delta: --pool goes with --id (a layer names its pool)");
    return 2;
  }
  d->config = pos[0];
  d->a = pos[1];
  d->b = pos[2];
  return 0;
}

char *ts_cli_delta_pool(const struct ts_cli_delta *d)
{
  return config_pool(d->config, d->pool, d->by_id ? NULL : d->a);
}

/* Side i's volume among `vols` (thin list's objects). */
static bool delta_side(const struct ts_cli_delta *d, json_t *vols, const char *pool, int i,
                       uint32_t *id, const char **name)
{
  const char *what = i ? d->b : d->a;
  uint32_t want = 0;
  if (d->by_id && !parse_id("thin delta", what, &want))
    return false;
  size_t k;
  json_t *v;
  json_array_foreach(vols, k, v) {
    const char *nm = json_string_value(json_object_get(v, "name"));
    const char *vp = json_string_value(json_object_get(v, "pool"));
    uint32_t vid = (uint32_t)json_integer_value(json_object_get(v, "id"));
    if (!json_is_true(json_object_get(v, "in_pool")) ||
        (d->by_id ? vid != want : !nm || strcmp(nm, what)))
      continue;
    if (!vp || strcmp(vp, pool)) {
      ts_cli_err("thin delta: %s is a volume of pool \"%s\", not of \"%s\"", what, vp ? vp : "?",
                 pool);
      return false;
    }
    *id = vid;
    *name = nm;
    return true;
  }
  if (d->by_id)
    ts_cli_err("thin delta: pool \"%s\" has no volume %u", pool, want);
  else
    ts_cli_err("thin delta: no volume layer named \"%s\" in pool \"%s\"", what, pool);
  return false;
}

bool ts_cli_delta_ids(const struct ts_cli_delta *d, json_t *vols, const char *pool, uint32_t ids[2],
                      const char *names[2])
{
  return delta_side(d, vols, pool, 0, &ids[0], &names[0]) &&
         delta_side(d, vols, pool, 1, &ids[1], &names[1]);
}

static void delta_text(json_t *doc, struct delta_doc *d)
{
  char a[32], b[32];
  json_t *l = json_object_get(doc, "left"), *r = json_object_get(doc, "right");
  const char *ln = json_string_value(json_object_get(l, "name"));
  const char *rn = json_string_value(json_object_get(r, "name"));
  ts_format_size(d->bs, a, sizeof a);
  printf("delta of %s (id %d) and %s (id %d) in pool %s, %s blocks\n", ln ? ln : "-",
         (int)json_integer_value(json_object_get(l, "id")), rn ? rn : "-",
         (int)json_integer_value(json_object_get(r, "id")),
         json_string_value(json_object_get(doc, "pool")), a);
  printf("  %-10s %12s %10s %12s %9s%s\n", "KIND", "BEGIN", "BLOCKS", "OFFSET", "BYTES",
         d->verbose ? "    LEFT_DATA   RIGHT_DATA" : "");
  size_t i;
  json_t *v;
  json_array_foreach(d->ranges, i, v) {
    ts_cli_print_size(a, sizeof a, (uint64_t)json_integer_value(json_object_get(v, "offset")));
    ts_cli_print_size(b, sizeof b, (uint64_t)json_integer_value(json_object_get(v, "bytes")));
    printf("  %-10s %12lld %10lld %12s %9s", json_string_value(json_object_get(v, "kind")),
           (long long)json_integer_value(json_object_get(v, "begin")),
           (long long)json_integer_value(json_object_get(v, "length")), a, b);
    for (int k = 0; d->verbose && k < 2; k++) {
      json_t *x = json_object_get(v, k ? "right_data" : "left_data");
      if (x)
        printf(" %12lld", (long long)json_integer_value(x));
      else
        printf(" %12s", "-");
    }
    printf("\n");
  }
  ts_cli_print_size(a, sizeof a,
                    (d->blocks[TS_DELTA_DIFFERENT] + d->blocks[TS_DELTA_RIGHT_ONLY]) * d->bs);
  printf("%llu blocks different, %llu left only, %llu right only", (unsigned long long)d->blocks[1],
         (unsigned long long)d->blocks[2], (unsigned long long)d->blocks[3]);
  if (d->verbose)
    printf(", %llu same", (unsigned long long)d->blocks[0]);
  printf(" (%s of the right one to copy)\n", a);
}

void ts_cli_delta_print(const struct ts_cli_delta *dl, const char *pool, uint64_t bs,
                        const uint32_t ids[2], const char *names[2], json_t *raw, uint64_t nodes)
{
  struct delta_doc d = { json_array(), dl->verbose, bs, { 0 }, { 0 } };
  size_t i;
  json_t *v;
  json_array_foreach(raw, i, v) {
    ts_delta_range r = { (ts_delta_kind)json_integer_value(json_array_get(v, 0)),
                         (uint64_t)json_integer_value(json_array_get(v, 1)),
                         (uint64_t)json_integer_value(json_array_get(v, 2)),
                         (uint64_t)json_integer_value(json_array_get(v, 3)),
                         (uint64_t)json_integer_value(json_array_get(v, 4)) };
    if ((unsigned)r.kind <= TS_DELTA_RIGHT_ONLY)
      delta_add(&d, &r);
  }
  if (d.last.length)
    delta_push(&d, &d.last);
  json_t *doc =
      json_pack("{s:s,s:I,s:{s:s?,s:i},s:{s:s?,s:i},s:O,s:{s:I,s:I,s:I},s:I}", "pool", pool,
                "block_size", (json_int_t)bs, "left", "name", names[0], "id", (int)ids[0], "right",
                "name", names[1], "id", (int)ids[1], "ranges", d.ranges, "blocks", "different",
                (json_int_t)d.blocks[1], "left_only", (json_int_t)d.blocks[2], "right_only",
                (json_int_t)d.blocks[3], "metadata_nodes_read", (json_int_t)nodes);
  if (dl->verbose)
    json_object_set_new(json_object_get(doc, "blocks"), "same",
                        json_integer((json_int_t)d.blocks[0]));
  if (dl->json) {
    print_doc(doc);
  } else {
    delta_text(doc, &d);
    json_decref(doc);
  }
  json_decref(d.ranges);
}

static int delta_raw(void *arg, const ts_delta_range *r)
{
  return json_array_append_new(arg, json_pack("[i,I,I,I,I]", (int)r->kind, (json_int_t)r->begin,
                                              (json_int_t)r->length, (json_int_t)r->left_data,
                                              (json_int_t)r->right_data))
             ? -ENOMEM
             : 0;
}

static int thin_delta_cmd(int argc, char **argv)
{
  struct ts_cli_delta dl;
  if (ts_cli_delta_args(argc, argv, &dl, false))
    return 2;
  char *pname = ts_cli_delta_pool(&dl);
  if (!pname)
    return 1;
  ts_dev *pool;
  ts_stack *s = open_pool(dl.config, pname, false, NULL, &pool, TS_OPEN_READ_ONLY, NULL);
  if (!s) {
    free(pname);
    return 1;
  }
  size_t n = 0;
  ts_volume_info *vi = volumes(s, pname, &n);
  json_t *vols = json_array(), *raw = json_array();
  for (size_t i = 0; vi && i < n; i++)
    json_array_append_new(vols, json_pack("{s:s?,s:s,s:i,s:b}", "name",
                                          vi[i].name[0] ? vi[i].name : NULL, "pool", vi[i].pool,
                                          "id", (int)vi[i].id, "in_pool", vi[i].in_pool));
  uint32_t ids[2];
  const char *names[2];
  ts_pool_status st;
  ts_error err = { 0 };
  uint64_t nodes = 0;
  int status = 1;
  if (vi && ts_cli_delta_ids(&dl, vols, pname, ids, names)) {
    int r = ts_pool_get_status(pool, &st, &err);
    if (!r)
      r = ts_pool_delta(pool, ids[0], ids[1], dl.verbose ? TS_DELTA_WITH_SAME : 0, delta_raw, raw,
                        &nodes, &err);
    if (r) {
      ts_cli_err("%s", err.msg[0] ? err.msg : ts_strerror(r));
    } else {
      ts_cli_delta_print(&dl, pname, st.block_size, ids, names, raw, nodes);
      status = 0;
    }
  }
  json_decref(raw);
  json_decref(vols);
  free(vi);
  free(pname);
  return finish(s, status);
}

int ts_cli_thin(int argc, char **argv)
{
  if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
    fputs(thin_usage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const char *sub = argv[1];
  if (strcmp(sub, "create") && strcmp(sub, "snap") && strcmp(sub, "delete") &&
      strcmp(sub, "resize") && strcmp(sub, "list") && strcmp(sub, "delta")) {
    ts_cli_err("thin: unknown subcommand \"%s\" (thinstack thin --help lists them)", sub);
    return 2;
  }
  if (wants_help(argc, argv))
    return sub_help(thin_usage, sub);
  if (!strcmp(sub, "delta"))
    return thin_delta_cmd(argc, argv);
  struct thin_opts o;
  const char *allowed = !strcmp(sub, "create")   ? "--pool --size --id --export --json"
                        : !strcmp(sub, "snap")   ? "--export --json"
                        : !strcmp(sub, "delete") ? "--pool --id --json"
                        : !strcmp(sub, "resize") ? "--discard-beyond --json"
                                                 : "--pool --json";
  if (!thin_args(argc, argv, &o, allowed))
    return 2;
  int want = !strcmp(sub, "list")                             ? 1
             : !strcmp(sub, "snap") || !strcmp(sub, "resize") ? 3
             : !strcmp(sub, "delete") && o.id                 ? 1
                                                              : 2;
  if (o.npos != want) {
    ts_cli_err("thin %s: %s arguments (thinstack thin %s --help)", sub,
               o.npos < want ? "missing" : "too many", sub);
    return 2;
  }
  const char *config = o.pos[0];
  if (!strcmp(sub, "list"))
    return thin_list_cmd(config, o.pool, o.json);
  if (o.pool && !strcmp(sub, "delete") && !o.id) {
    ts_cli_err("thin delete: --pool goes with --id (a layer names its pool)");
    return 2;
  }

  uint64_t size = 0;
  uint32_t id = TS_VOLUME_ANY_ID;
  bool rel = false;
  if (!strcmp(sub, "create")) {
    if (!o.size) {
      ts_cli_err("thin create: --size SIZE is required");
      return 2;
    }
    if (!ts_cli_size("thin create: --size", o.size, &size))
      return 2;
  }
  if (o.id && !parse_id("thin: --id", o.id, &id))
    return 2;
  if (!strcmp(sub, "resize") && !parse_rel_size("thin resize: SIZE", o.pos[2], &size, &rel))
    return 2;
  /* The layer whose pool to open: snap's origin, delete's and resize's NAME. */
  const char *layer = !strcmp(sub, "create") || (!strcmp(sub, "delete") && o.id) ? NULL : o.pos[1];
  char *pname = config_pool(config, o.pool, layer);
  if (!pname)
    return 1;
  ts_dev *pool;
  ts_stack *s = open_pool(config, pname, false, NULL, &pool, 0, NULL);
  if (!s) {
    free(pname);
    return 1;
  }
  ts_error err = { 0 };
  uint32_t flags = o.export_it ? TS_VOLUME_EXPORT : 0;
  int r = 0;
  if (!strcmp(sub, "create")) {
    r = ts_volume_create(s, pname, o.pos[1], size, id, flags, &id, &err);
    if (!r)
      ts_cli_thin_done(o.json, "create", o.pos[1], id, pname, size, NULL);
  } else if (!strcmp(sub, "snap")) {
    r = ts_volume_snapshot(s, o.pos[1], o.pos[2], flags, &id, &err);
    if (!r)
      ts_cli_thin_done(o.json, "snap", o.pos[2], id, pname, 0, o.pos[1]);
  } else if (!strcmp(sub, "delete") && o.id) {
    r = ts_volume_delete_id(s, pname, id, &err);
    if (!r)
      ts_cli_thin_done(o.json, "delete", NULL, id, pname, 0, NULL);
  } else if (!strcmp(sub, "delete")) {
    r = ts_volume_delete(s, o.pos[1], &err);
    if (!r)
      ts_cli_thin_done(o.json, "delete", o.pos[1], 0, pname, 0, NULL);
  } else {
    if (rel) {
      /* +SIZE: relative to the layer's size now. */
      size_t n = 0;
      ts_volume_info *vi = volumes(s, pname, &n);
      if (!vi) {
        free(pname);
        return finish(s, 1);
      }
      for (size_t i = 0; i < n; i++)
        if (!strcmp(vi[i].name, o.pos[1]))
          size += vi[i].size;
      free(vi);
    }
    r = ts_volume_resize(s, o.pos[1], size, o.discard_beyond ? TS_VOLUME_DISCARD_BEYOND : 0, &err);
    if (!r)
      ts_cli_thin_done(o.json, "resize", o.pos[1], 0, NULL, size, NULL);
  }
  if (r)
    ts_cli_err("%s", err.msg[0] ? err.msg : ts_strerror(r));
  free(pname);
  return finish(s, r ? 1 : 0);
}
