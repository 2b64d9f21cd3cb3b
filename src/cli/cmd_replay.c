/* thinstack replay-log: list a dm-log-writes log's entries or replay them
 * onto a file or block device, up to an entry or a mark (ts_log_replay). */
#include "cli/cli.h"

#include <errno.h>
#include <jansson.h>
#include <libthinstack/thinstack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void flag_names(uint32_t f, char *buf, size_t n)
{
  snprintf(buf, n, "%s%s%s%s%s", f & TS_LOG_FLUSH ? "flush " : "", f & TS_LOG_FUA ? "fua " : "",
           f & TS_LOG_DISCARD ? "discard " : "", f & TS_LOG_MARK ? "mark " : "",
           f & TS_LOG_METADATA ? "metadata " : "");
  size_t len = strlen(buf);
  if (len)
    buf[len - 1] = '\0';
  else
    snprintf(buf, n, "write");
}

/* --list: one line, or one JSON object in `arg`, per entry. */
static int list_entry(void *arg, const ts_log_entry *e)
{
  json_t *arr = arg;
  char fl[64];
  flag_names(e->flags, fl, sizeof fl);
  if (arr) {
    json_t *o = json_pack("{s:I,s:s,s:I,s:I}", "index", (json_int_t)e->index, "flags", fl,
                          "sector", (json_int_t)e->sector, "nr_sectors", (json_int_t)e->nr_sectors);
    if (e->mark[0])
      json_object_set_new(o, "mark", json_string(e->mark));
    json_array_append_new(arr, o);
  } else {
    printf("%6llu %-14s sector %-10llu nr %-8llu%s%s\n", (unsigned long long)e->index, fl,
           (unsigned long long)e->sector, (unsigned long long)e->nr_sectors,
           e->mark[0] ? " mark " : "", e->mark);
  }
  return 0;
}

/* -p: how far into the log the replay is. */
static int replay_progress(void *arg, const ts_log_entry *e)
{
  (void)arg;
  ts_cli_progress_set(e->offset);
  return 0;
}

struct replay_args {
  const char *log, *target; /* target is NULL with --list */
  bool list, json;
  const char *end_mark;
  uint64_t limit;
};

/* 0, or the exit status for a bad command line (the usage printed). */
static int parse_args(int argc, char **argv, struct replay_args *a)
{
  const char *pos[2] = { NULL, NULL };
  int npos = 0;
  *a = (struct replay_args){ .limit = UINT64_MAX };
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--list"))
      a->list = true;
    else if (!strcmp(argv[i], "--json"))
      a->json = true;
    else if (!strcmp(argv[i], "--end-mark") && i + 1 < argc)
      a->end_mark = argv[++i];
    else if (!strcmp(argv[i], "--limit") && i + 1 < argc) {
      char *end;
      a->limit = strtoull(argv[++i], &end, 10);
      if (*end || argv[i][0] == '-') {
        ts_cli_err("replay-log: --limit: \"%s\" is not a number of entries", argv[i]);
        return 2;
      }
    } else if (argv[i][0] == '-' || npos == 2) {
      ts_cli_usage(stderr, argv[0]);
      return 2;
    } else {
      pos[npos++] = argv[i];
    }
  }
  if (npos != (a->list ? 1 : 2)) {
    ts_cli_usage(stderr, argv[0]);
    return 2;
  }
  a->log = pos[0];
  a->target = a->list ? NULL : pos[1];
  return 0;
}

int ts_cli_replay_log(int argc, char **argv)
{
  if (ts_cli_help(argc, argv))
    return 0;
  struct replay_args a;
  int rc = parse_args(argc, argv, &a);
  if (rc)
    return rc;
  json_t *arr = a.json ? json_array() : NULL;
  ts_error err = { 0 };
  uint64_t nr = 0, replayed = 0;
  bool progress = !a.list && ts_cli_progress_on();
  struct stat st;
  if (progress)
    ts_cli_progress_begin(stat(a.log, &st) == 0 ? (uint64_t)st.st_size : 0);
  int r = ts_log_replay(a.log, a.target, a.end_mark, a.limit,
                        a.list     ? list_entry
                        : progress ? replay_progress
                                   : NULL,
                        arr, &nr, &replayed, &err);
  if (progress)
    ts_cli_progress_end(r == 0);
  if (r) {
    ts_cli_err("replay-log: %s", err.msg);
    json_decref(arr);
    return r == -ELOOP ? 2 : 1;
  }
  if (arr) {
    char *s = json_dumps(arr, JSON_INDENT(2));
    if (s)
      puts(s);
    free(s);
  } else if (!a.list) {
    fprintf(stderr, "replayed %llu of %llu entries onto %s\n", (unsigned long long)replayed,
            (unsigned long long)nr, a.target);
  }
  json_decref(arr);
  return 0;
}
