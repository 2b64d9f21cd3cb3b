/* thinstack: the command-line tool. One table of commands; each command
 * parses its own options and prints one clear line on error. */
#include "cli/cli.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const struct ts_cli_command commands[] = {
  { "demo", ts_cli_demo, "[--dir DIR] [--size SIZE] [--keep]",
    "build a stack on sparse files in a temp dir and compare provision with writing zeroes" },
  { "validate", ts_cli_validate, "CONFIG [--json]",
    "check a stack configuration; what exists is opened read-only, nothing is created" },
  { "dump-config", ts_cli_dump_config, "CONFIG [--show-keys]",
    "print the configuration that re-opens the stack as it is now (absolute paths, grown sizes)" },
  { "info", ts_cli_info, "CONFIG [--json]", "open a stack and print each node's stacked limits" },
  { "status", ts_cli_status, "CONFIG [NODE] [--json]", "print counters and layer state as JSON" },
  { "types", ts_cli_types, "[--json]", "list the layer types and their parameters" },
  { "schema", ts_cli_schema, "[--layer TYPE]",
    "print a JSON Schema of the configuration (or of one layer type's object)" },
  { "replay-log", ts_cli_replay_log,
    "LOG TARGET [-p] [--limit N] [--end-mark NAME] | LOG --list [--json]",
    "rebuild a device from a dm-log-writes log (the log-writes layer's) up to an entry or mark" },
  { "dm-table", ts_cli_dm_table, "CONFIG [--device LAYER=PATH]... [--concise]",
    "print the dmsetup commands that activate the stack in the kernel" },
  { "check", ts_cli_check, "METADATA_FILE [-p] [--json]",
    "verify thin-pool metadata (structure, checksums, reference counts)" },
  { "dump", ts_cli_dump, "METADATA_FILE [-m|--metadata-snap] [-o FILE] [-p]",
    "print thin-pool metadata as thin_dump XML" },
  { "restore", ts_cli_restore, "XML METADATA_FILE [-p]",
    "write thin-pool metadata from thin_dump XML" },
  { "repair", ts_cli_repair, "CONFIG POOL [-o NEW_METADATA] [--json]",
    "rebuild thin-pool metadata from what can be read (thin_repair)" },
  { "read", ts_cli_read, "CONFIG DEV OFFSET LENGTH [-o FILE] [-p]",
    "read a range (to stdout or FILE)" },
  { "copy", ts_cli_copy, "SRC DST [-p]",
    "copy a volume (CONFIG:LAYER) or raw file, keeping holes" },
  { "write", ts_cli_write, "CONFIG DEV OFFSET -i FILE [--fua] [--no-sparse] [-p]",
    "write FILE's bytes at OFFSET" },
  { "provision", ts_cli_range, "CONFIG DEV OFFSET LENGTH [--may-zero] [--json]",
    "reserve space for a range without writing (--may-zero: zeroing it is fine)" },
  { "discard", ts_cli_range, "CONFIG DEV OFFSET LENGTH [--json]", "release a range" },
  { "zero", ts_cli_range, "CONFIG DEV OFFSET LENGTH [--may-unmap] [--no-fallback] [--json]",
    "make a range read as zeroes" },
  { "flush", ts_cli_flush, "CONFIG DEV", "make completed writes durable" },
  { "bench", ts_cli_bench, "NAME [ARGS]", "run a benchmark (thinstack bench --help lists them)" },
  { "map", ts_cli_map, "CONFIG DEV [OFFSET LENGTH] [--json]",
    "print block status (allocation map)" },
  { "pool", ts_cli_pool, "create|status|extend|extend-metadata CONFIG POOL ... [--json]",
    "format a thin pool, show its state, grow its data or metadata space" },
  { "thin", ts_cli_thin, "create|snap|delete|resize|list CONFIG ... [--json]",
    "create, snapshot, delete, resize and list thin volumes (pool and CONFIG together)" },
  { "message", ts_cli_message, "CONFIG NODE MESSAGE",
    "send a layer one of its verbs (log-writes: \"mark NAME\")" },
  { "serve", ts_cli_serve,
    "CONFIG [--control PATH | --no-control] [--vhost-user-blk SOCKET:DEVICE[,queues=N]]...",
    "hold a stack, serve its control socket (CONFIG.ctl) and exports until SIGTERM" },
  { "ctl", ts_cli_ctl, "CONFIG|SOCKET METHOD [PARAMS_JSON]",
    "send one request to a holder's control socket (docs/control.md lists the methods)" },
};

static const struct ts_cli_command *find(const char *name)
{
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    if (strcmp(commands[i].name, name) == 0)
      return &commands[i];
  return NULL;
}

void ts_cli_usage(FILE *f, const char *name)
{
  const struct ts_cli_command *c = find(name);
  if (c)
    fprintf(f, "usage: thinstack %s %s\n  %s\n", c->name, c->usage, c->summary);
}

static void usage(FILE *f)
{
  fprintf(f, "usage: thinstack [-U] COMMAND [ARGS]   (thinstack COMMAND --help for details)\n\n"
             "Sizes and offsets take K, M, G, T suffixes (powers of 1024).\n"
             "-U, --force-share: read-only commands read files another process is writing,\n"
             "without the shared lock (what they show may be stale).\n"
             "-p, --progress[=FD]: read, write, copy, check, dump, restore, replay-log and\n"
             "bench io show how far they are on stderr (or FD).\n\ncommands:\n");
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    fprintf(f, "  %-11s %s\n", commands[i].name, commands[i].summary);
}

void ts_cli_err(const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  fputs("thinstack: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

bool ts_cli_help(int argc, char **argv)
{
  for (int i = 1; i < argc; i++)
    if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
      ts_cli_usage(stdout, argv[0]);
      return true;
    }
  return false;
}

bool ts_cli_size(const char *what, const char *s, uint64_t *out)
{
  if (ts_parse_size(s, out) == 0)
    return true;
  ts_cli_err("%s: \"%s\" is not a size (bytes, or a number with K, M, G or T)", what, s);
  return false;
}

bool ts_cli_force_share;

static void cli_event(ts_stack *s, const char *node, const char *event, const char *detail,
                      void *arg)
{
  (void)s;
  (void)arg;
  /* What the user should know or mend: a look beside a writer, a file
   * system without locks, a volume that no layer names. Other events are
   * not the CLI's news. */
  if (strcmp(event, "force-share") == 0 || strcmp(event, "unlocked") == 0 ||
      strcmp(event, "volume-not-in-config") == 0)
    fprintf(stderr, "thinstack: warning: layers.%s: %s\n", node, detail);
}

/* The thin-pool whose metadata or data is layer `name` (or which is `name`),
 * from the config text: a read-only command on a pool not made yet names
 * the command that makes it. */
static const char *pool_of(json_t *layers, const char *msg)
{
  const char *key;
  json_t *v;
  json_object_foreach(layers, key, v) {
    const char *type = json_string_value(json_object_get(v, "type"));
    if (!type || strcmp(type, "thin-pool") != 0)
      continue;
    const char *names[] = { key, json_string_value(json_object_get(v, "metadata")),
                            json_string_value(json_object_get(v, "data")) };
    for (int i = 0; i < 3; i++) {
      char a[300], b[300];
      if (!names[i])
        continue;
      snprintf(a, sizeof a, "layers.%s:", names[i]);
      snprintf(b, sizeof b, "layers.%s.", names[i]);
      if (strstr(msg, a) || strstr(msg, b))
        return key;
    }
  }
  return NULL;
}

ts_open_opts ts_cli_open_opts(unsigned flags)
{
  if ((flags & TS_OPEN_READ_ONLY) && ts_cli_force_share)
    flags |= TS_OPEN_FORCE_SHARE;
  return (ts_open_opts){ .struct_size = sizeof(ts_open_opts), .flags = flags, .event = cli_event };
}

void ts_cli_open_failed(const char *config, unsigned flags, int r, const ts_error *err,
                        const char *pool)
{
  json_t *root = NULL;
  if (!pool && (flags & TS_OPEN_READ_ONLY) && (r == -ENOENT || r == -ENODATA) &&
      (root = json_load_file(config, 0, NULL)))
    pool = pool_of(json_object_get(root, "layers"), err->msg);
  if (pool && (flags & TS_OPEN_READ_ONLY) && (r == -ENOENT || r == -ENODATA))
    ts_cli_err("%s (the pool does not exist yet: thinstack pool create %s %s makes it)", err->msg,
               config, pool);
  else if (r == -EBUSY)
    ts_cli_err("%s (EBUSY)", err->msg); /* scripts tell "in use" from other failures */
  else
    ts_cli_err("%s", err->msg[0] ? err->msg : ts_strerror(r));
  json_decref(root);
}

ts_stack *ts_cli_open(const char *config, unsigned flags)
{
  ts_stack *s = NULL;
  ts_error err = { 0 };
  ts_open_opts o = ts_cli_open_opts(flags);
  int r = ts_stack_open_file(config, &o, &s, &err);
  if (r) {
    ts_cli_open_failed(config, flags, r, &err, NULL);
    return NULL;
  }
  return s;
}

ts_dev *ts_cli_open_dev(const char *config, const char *name, unsigned flags, ts_stack **stack)
{
  ts_stack *s = ts_cli_open(config, flags);
  if (!s)
    return NULL;
  ts_dev *d = ts_stack_dev(s, name);
  if (!d)
    d = ts_stack_node(s, name);
  if (!d) {
    ts_cli_err("%s: no device or layer named \"%s\"", config, name);
    ts_stack_close(s, NULL);
    return NULL;
  }
  *stack = s;
  return d;
}

int ts_cli_close(ts_stack *s, int status)
{
  ts_error err = { 0 };
  if (ts_stack_close(s, &err)) {
    ts_cli_err("%s", err.msg);
    return status ? status : 1;
  }
  return status;
}

double ts_cli_now(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
  if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  /* -U / --force-share, before the command or among its arguments (as
   * qemu-img takes it). */
  int n = 1;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "-U") == 0 || strcmp(argv[i], "--force-share") == 0)
      ts_cli_force_share = true;
    else
      argv[n++] = argv[i];
  }
  argv[n] = NULL;
  argc = n;
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  if (strcmp(argv[1], "--version") == 0) {
    if (argc > 2 && strcmp(argv[2], "--json") == 0)
      printf("{\"version\": \"%s\"}\n", ts_version());
    else
      printf("thinstack %s\n", ts_version());
    return 0;
  }
  const struct ts_cli_command *c = find(argv[1]);
  if (!c) {
    ts_cli_err("unknown command \"%s\" (thinstack --help lists them)", argv[1]);
    return 2;
  }
  /* -p / --progress[=FD] of the commands that can take long, anywhere
   * among their arguments. */
  static const char *const progress_cmds[] = { "read",    "write",      "copy",     "check", "dump",
                                               "restore", "replay-log", "bench io", NULL };
  for (int k = 0; progress_cmds[k]; k++) {
    const char *sub = strchr(progress_cmds[k], ' ');
    size_t len = sub ? (size_t)(sub - progress_cmds[k]) : strlen(progress_cmds[k]);
    if (strncmp(argv[1], progress_cmds[k], len) == 0 && argv[1][len] == '\0' &&
        (!sub || (argc > 2 && strcmp(argv[2], sub + 1) == 0))) {
      n = sub ? 3 : 2;
      for (int i = n; i < argc; i++)
        if (!ts_cli_progress_opt(argv[i]))
          argv[n++] = argv[i];
      argv[n] = NULL;
      argc = n;
    }
  }
  /* A stack some process holds is worked on through its control socket. */
  int status;
  if (ts_cli_ctl_route(argc - 1, argv + 1, &status))
    return status;
  return c->fn(argc - 1, argv + 1);
}
