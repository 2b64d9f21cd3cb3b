/* Commands about a whole stack: validate, dump-config, info, status, types
 * (dm-table is in cmd_dmtable.c). */
#include "cli/cli.h"

#include <errno.h>
#include <jansson.h>
#include <libthinstack/layer.h>
#include <stdlib.h>
#include <string.h>

/* Split argv into positionals and a known flag set; false on an unknown flag. */
static bool take_flag(int argc, char **argv, const char *flag)
{
  for (int i = 1; i < argc; i++)
    if (strcmp(argv[i], flag) == 0)
      return true;
  return false;
}

static int positionals(int argc, char **argv, char **pos, int max, const char *const *flags)
{
  int n = 0;
  for (int i = 1; i < argc; i++) {
    if (argv[i][0] == '-' && argv[i][1]) {
      bool known = false;
      for (const char *const *f = flags; f && *f; f++)
        known |= strcmp(*f, argv[i]) == 0;
      if (!known) {
        ts_cli_err("%s: unknown option %s", argv[0], argv[i]);
        return -1;
      }
      continue;
    }
    if (n == max) {
      ts_cli_err("%s: unexpected argument \"%s\"", argv[0], argv[i]);
      return -1;
    }
    pos[n++] = argv[i];
  }
  return n;
}

/* The one CONFIG argument of a command taking only `flags` besides it.
 * Returns NULL after printing help (*status 0) or usage (*status 2). */
static const char *config_arg(int argc, char **argv, const char *const *flags, int *status)
{
  char *pos[1];
  *status = 0;
  if (ts_cli_help(argc, argv))
    return NULL;
  if (positionals(argc, argv, pos, 1, flags) != 1) {
    ts_cli_usage(stderr, argv[0]);
    *status = 2;
    return NULL;
  }
  return pos[0];
}

/* validate --json: {"config": PATH, "valid": BOOL, "complete": BOOL,
 * "message": TEXT|null}; "complete" false when what does not exist yet
 * left checks unrun. */
static int validate_json(const char *config, bool valid, bool complete, const char *msg)
{
  json_t *o = json_pack("{s:s, s:b, s:b, s:o}", "config", config, "valid", valid, "complete",
                        complete, "message", msg && msg[0] ? json_string(msg) : json_null());
  char *txt = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
  printf("%s\n", txt ? txt : "null");
  free(txt);
  json_decref(o);
  return valid ? 0 : 1;
}

int ts_cli_validate(int argc, char **argv)
{
  static const char *const flags[] = { "--json", NULL };
  int status;
  const char *config = config_arg(argc, argv, flags, &status);
  if (!config)
    return status;
  bool json = take_flag(argc, argv, "--json");
  ts_error err = { 0 };
  ts_open_opts o = { .struct_size = sizeof o, .flags = TS_OPEN_VALIDATE_ONLY };
  ts_stack *st = NULL;
  int r = ts_stack_open_file(config, &o, &st, &err);
  if (r) {
    ts_cli_err("%s", err.msg[0] ? err.msg : ts_strerror(r));
    if (json)
      validate_json(config, false, true, err.msg[0] ? err.msg : ts_strerror(r));
    return 1;
  }
  /* What open checks beyond the schema (sizes against files and block
   * sizes, segments against children, keys), where the files exist: opened
   * read-only and unlocked, it creates and changes nothing and runs beside
   * a live stack. What does not exist yet is checked when it is made. */
  o.flags = TS_OPEN_READ_ONLY | TS_OPEN_FORCE_SHARE;
  ts_error_clear(&err);
  r = ts_stack_open_file(config, &o, &st, &err);
  if (r == 0) {
    ts_stack_close(st, NULL);
    if (json)
      return validate_json(config, true, true, NULL);
    printf("%s: valid\n", config);
    return 0;
  }
  if (r == -ENOENT || r == -ENODATA || r == -EROFS) {
    if (json)
      return validate_json(config, true, false, err.msg);
    printf("%s: valid (not all of it exists yet, so not every check ran: %s)\n", config, err.msg);
    return 0;
  }
  ts_cli_err("%s", err.msg[0] ? err.msg : ts_strerror(r));
  if (json)
    validate_json(config, false, true, err.msg[0] ? err.msg : ts_strerror(r));
  return 1;
}

/* Opened read-only: dumping must not create or format anything. */
int ts_cli_dump_config(int argc, char **argv)
{
  static const char *const flags[] = { "--show-keys", NULL };
  int status;
  const char *config = config_arg(argc, argv, flags, &status);
  if (!config)
    return status;
  ts_stack *s = ts_cli_open(config, TS_OPEN_READ_ONLY);
  if (!s)
    return 1;
  char *json = ts_stack_config_json(s, take_flag(argc, argv, "--show-keys") ? TS_CONFIG_SECRETS : 0);
  if (!json) {
    ts_cli_err("dump-config: out of memory");
    status = 1;
  } else {
    printf("%s\n", json);
  }
  free(json);
  ts_error err = { 0 };
  if (ts_stack_close(s, &err) != 0) {
    ts_cli_err("%s", err.msg);
    status = 1;
  }
  return status;
}

/* Limits as JSON text: "unlimited" (UINT64_MAX, -1 as a json_int_t) is
 * null, so a reader never mistakes it for a size. */
char *ts_cli_limits_dumps(const struct json_t *limits)
{
  json_t *l = json_deep_copy(limits);
  const char *key;
  json_t *v;
  json_object_foreach(l, key, v) {
    if (json_is_integer(v) && json_integer_value(v) == -1)
      json_object_set_new(l, key, json_null());
  }
  char *txt = l ? json_dumps(l, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
  json_decref(l);
  return txt;
}

void ts_cli_limits_header(void)
{
  printf("%-12s %-16s %10s %6s %9s %9s %9s %9s %9s %s\n", "node", "type", "size", "lbs",
         "max_io", "discard", "w_zeroes", "provision", "prov_gran", "flags");
}

void ts_cli_limits_row(const char *name, const char *type, const ts_limits *l, bool exported)
{
  char sz[32], mio[32], disc[32], wz[32], prov[32], pg[32];
  ts_format_size(l->size, sz, sizeof sz);
  if (l->max_io_bytes) ts_format_size(l->max_io_bytes, mio, sizeof mio); else strcpy(mio, "-");
#define CAPSTR(buf, v, op)                                                                   \
  if (ts_limits_cap(l, op) == TS_CAP_NONE) strcpy(buf, "no");                                \
  else if (ts_limits_cap(l, op) == TS_CAP_EMULATE) strcpy(buf, "emulate");                   \
  else if ((v) == UINT64_MAX) strcpy(buf, "yes");                                            \
  else ts_format_size(v, buf, sizeof buf);
  CAPSTR(disc, l->max_discard_bytes, TS_OP_DISCARD)
  CAPSTR(wz, l->max_write_zeroes_bytes, TS_OP_WRITE_ZEROES)
  CAPSTR(prov, l->max_provision_bytes, TS_OP_PROVISION)
#undef CAPSTR
  ts_format_size(l->provision_granularity, pg, sizeof pg);
  printf("%-12s %-16s %10s %6u %9s %9s %9s %9s %9s %s%s%s%s%s\n", name, type, sz,
         l->logical_block_size, mio, disc, wz, prov, l->provision_granularity ? pg : "-",
         l->read_only ? "ro " : "", l->fua ? "fua " : "", l->discard_zeroes ? "discard_zeroes " : "",
         l->write_zeroes_unmap ? "unmap " : "", exported ? "exported" : "");
}

static void print_limits_table(ts_stack *s)
{
  ts_cli_limits_header();
  for (size_t i = 0; i < ts_stack_nnodes(s); i++) {
    ts_dev *d = ts_stack_node_at(s, i);
    ts_cli_limits_row(ts_dev_name(d), ts_dev_type(d), ts_dev_limits(d),
                      ts_stack_dev(s, ts_dev_name(d)) != NULL);
  }
}

int ts_cli_info(int argc, char **argv)
{
  static const char *const flags[] = { "--json", NULL };
  int status;
  const char *config = config_arg(argc, argv, flags, &status);
  if (!config)
    return status;
  ts_stack *s = ts_cli_open(config, TS_OPEN_READ_ONLY);
  if (!s)
    return 1;
  if (take_flag(argc, argv, "--json")) {
    printf("{\"nodes\": [");
    for (size_t i = 0; i < ts_stack_nnodes(s); i++) {
      ts_dev *d = ts_stack_node_at(s, i);
      char *raw = ts_dev_limits_json(d);
      json_t *l = raw ? json_loads(raw, 0, NULL) : NULL;
      char *lim = l ? ts_cli_limits_dumps(l) : NULL;
      json_decref(l);
      free(raw);
      printf("%s\n{\"name\": \"%s\", \"type\": \"%s\", \"exported\": %s, \"limits\": %s}",
             i ? "," : "", ts_dev_name(d), ts_dev_type(d),
             ts_stack_dev(s, ts_dev_name(d)) ? "true" : "false", lim ? lim : "null");
      free(lim);
    }
    printf("]}\n");
  } else {
    print_limits_table(s);
  }
  return ts_cli_close(s, 0);
}

int ts_cli_status(int argc, char **argv)
{
  char *pos[2];
  if (ts_cli_help(argc, argv))
    return 0;
  /* Status is JSON either way; --json is taken for scripts that say it. */
  static const char *const flags[] = { "--json", NULL };
  int n = positionals(argc, argv, pos, 2, flags);
  if (n < 1) {
    ts_cli_usage(stderr, argv[0]);
    return 2;
  }
  ts_stack *s = ts_cli_open(pos[0], TS_OPEN_READ_ONLY);
  if (!s)
    return 1;
  int status = 0;
  printf("[");
  for (size_t i = 0, k = 0; i < ts_stack_nnodes(s); i++) {
    ts_dev *d = ts_stack_node_at(s, i);
    if (n == 2 && strcmp(ts_dev_name(d), pos[1]) != 0)
      continue;
    char *j = ts_dev_status_json(d);
    printf("%s%s", k++ ? ",\n" : "\n", j ? j : "null");
    free(j);
  }
  printf("\n]\n");
  if (n == 2 && !ts_stack_node(s, pos[1])) {
    ts_cli_err("%s: no layer named \"%s\"", pos[0], pos[1]);
    status = 1;
  }
  return ts_cli_close(s, status);
}

static const char *kind_name(ts_param_kind k)
{
  switch (k) {
  case TS_PARAM_STRING: return "string";
  case TS_PARAM_PATH: return "path";
  case TS_PARAM_SIZE: return "size";
  case TS_PARAM_UINT: return "integer";
  case TS_PARAM_BOOL: return "bool";
  case TS_PARAM_ENUM: return "enum";
  case TS_PARAM_CHILD: return "layer";
  case TS_PARAM_ARRAY: return "array";
  case TS_PARAM_OBJECT: return "object";
  default: return "any";
  }
}

static void print_params(const ts_param *p, int indent)
{
  for (; p && p->key; p++) {
    printf("%*s%-22s %-8s%s %s%s%s\n", indent, "", p->key, kind_name(p->kind),
           (p->flags & TS_PARAM_REQUIRED) ? " (required)" : "", p->doc ? p->doc : "",
           p->choices ? ": " : "", p->choices ? p->choices : "");
    if (p->fields)
      print_params(p->fields, indent + 4);
  }
}

static json_t *params_json(const ts_param *p)
{
  json_t *a = json_array();
  for (; p && p->key; p++) {
    json_t *o = json_pack("{s:s, s:s, s:b}", "key", p->key, "kind", kind_name(p->kind), "required",
                          (p->flags & TS_PARAM_REQUIRED) != 0);
    json_object_set_new(o, "doc", p->doc ? json_string(p->doc) : json_null());
    if (p->choices) {
      json_t *c = json_array();
      for (const char *b = p->choices, *e; *b; b = *e ? e + 1 : e) {
        e = strchr(b, '|');
        if (!e)
          e = b + strlen(b);
        json_array_append_new(c, json_stringn(b, (size_t)(e - b)));
      }
      json_object_set_new(o, "choices", c);
    }
    if (p->fields)
      json_object_set_new(o, "fields", params_json(p->fields));
    json_array_append_new(a, o);
  }
  return a;
}

int ts_cli_types(int argc, char **argv)
{
  static const char *const flags[] = { "--json", NULL };
  char *pos[1];
  if (ts_cli_help(argc, argv))
    return 0;
  if (positionals(argc, argv, pos, 0, flags) != 0) {
    ts_cli_usage(stderr, argv[0]);
    return 2;
  }
  if (take_flag(argc, argv, "--json")) {
    json_t *arr = json_array();
    for (size_t i = 0; ts_layer_type_at(i); i++) {
      const ts_layer_type *t = ts_layer_type_at(i);
      json_t *o = json_pack("{s:s}", "name", t->name);
      json_object_set_new(o, "summary", t->summary ? json_string(t->summary) : json_null());
      json_object_set_new(o, "params", params_json(t->params));
      json_array_append_new(arr, o);
    }
    json_t *root = json_pack("{s:o}", "types", arr);
    char *txt = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    printf("%s\n", txt ? txt : "null");
    free(txt);
    json_decref(root);
    return txt ? 0 : 1;
  }
  for (size_t i = 0; ts_layer_type_at(i); i++) {
    const ts_layer_type *t = ts_layer_type_at(i);
    printf("%s: %s\n", t->name, t->summary ? t->summary : "");
    print_params(t->params, 4);
  }
  return 0;
}
