/* Commands about a whole stack: validate, dump-config, info, status, types
 * (dm-table is in cmd_dmtable.c). */
#include "cli/cli.h"

#include <errno.h>
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

int ts_cli_validate(int argc, char **argv)
{
  int status;
  const char *config = config_arg(argc, argv, NULL, &status);
  if (!config)
    return status;
  ts_error err = { 0 };
  ts_open_opts o = { .struct_size = sizeof o, .flags = TS_OPEN_VALIDATE_ONLY };
  ts_stack *st = NULL;
  int r = ts_stack_open_file(config, &o, &st, &err);
  if (r) {
    ts_cli_err("%s", err.msg[0] ? err.msg : ts_strerror(r));
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
    printf("%s: valid\n", config);
    return 0;
  }
  if (r == -ENOENT || r == -ENODATA || r == -EROFS) {
    printf("%s: valid (not all of it exists yet, so not every check ran: %s)\n", config, err.msg);
    return 0;
  }
  ts_cli_err("%s", err.msg[0] ? err.msg : ts_strerror(r));
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
      char *lim = ts_dev_limits_json(d);
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
  int n = positionals(argc, argv, pos, 2, NULL);
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

int ts_cli_types(int argc, char **argv)
{
  if (ts_cli_help(argc, argv))
    return 0;
  for (size_t i = 0; ts_layer_type_at(i); i++) {
    const ts_layer_type *t = ts_layer_type_at(i);
    printf("%s: %s\n", t->name, t->summary ? t->summary : "");
    print_params(t->params, 4);
  }
  return 0;
}
