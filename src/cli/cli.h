/* thinstack CLI: shared helpers and the command table. */
#ifndef TS_CLI_H
#define TS_CLI_H

#include <libthinstack/thinstack.h>
#include <stdbool.h>
#include <stdio.h>

/* A command: argv[0] is the command name. Returns the exit status:
 * 0 success, 1 the operation failed or found a problem, 2 usage error. */
typedef int (*ts_cli_fn)(int argc, char **argv);

struct ts_cli_command {
  const char *name;
  ts_cli_fn fn;
  const char *usage;    /* argument synopsis */
  const char *summary;  /* one line */
};

/* Print "thinstack: <message>" on stderr. */
void ts_cli_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* True when argv has -h or --help; prints the command's usage. */
bool ts_cli_help(int argc, char **argv);
/* Print the usage line of a command to `f`. */
void ts_cli_usage(FILE *f, const char *name);
/* Parse a size argument; on error prints which argument is wrong. */
bool ts_cli_size(const char *what, const char *s, uint64_t *out);
/* -U / --force-share: read-only commands read without the shared lock. */
extern bool ts_cli_force_share;
/* Open a stack from a config file, printing the error on failure; with
 * TS_OPEN_READ_ONLY the error names the command that creates what is
 * missing, and -U adds TS_OPEN_FORCE_SHARE. Ownership warnings (events
 * "force-share", "unlocked") go to stderr. */
ts_stack *ts_cli_open(const char *config, unsigned flags);
/* The open options every command uses: `flags`, force-share under -U for a
 * read-only open, and the events a user should see printed as warnings. */
ts_open_opts ts_cli_open_opts(unsigned flags);
/* Print why opening CONFIG failed (error `r`, `err`): EBUSY is named, and a
 * read-only open of a pool not made yet names the command that makes it
 * (`pool`: the pool when the caller knows it, else found from the message). */
void ts_cli_open_failed(const char *config, unsigned flags, int r, const ts_error *err,
                        const char *pool);
/* Open a stack (ts_cli_open `flags`) and find an exported device (or any
 * node) by name. */
ts_dev *ts_cli_open_dev(const char *config, const char *name, unsigned flags, ts_stack **stack);
/* Close a stack, printing any error; returns the exit status to use. */
int ts_cli_close(ts_stack *s, int status);
/* Monotonic seconds. */
double ts_cli_now(void);

/* Sizes as `thin list` and `pool status` print them ("1.5G"). */
void ts_cli_print_size(char *buf, size_t n, uint64_t bytes);
/* The `thin list` table of volume.list's JSON array. */
struct json_t;
void ts_cli_list_text(struct json_t *arr);
/* Add "exclusive_bytes" and "shared_bytes" (ts_pool_thin_usage) to the
 * volumes of `pool` among arr[first..]; -errno after a message. */
int ts_cli_add_usage(ts_dev *pool, struct json_t *arr, size_t first);

/* thin delta, shared by the local and the routed form (cmd_thin.c). */
struct ts_cli_delta {
  const char *config, *a, *b, *pool;
  bool json, verbose, by_id;
};
/* Parse argv (argv[1] = "delta"): 0, or 2 after a message (none when quiet). */
int ts_cli_delta_args(int argc, char **argv, struct ts_cli_delta *d, bool quiet);
/* The pool's name (malloc'ed), or NULL after a message. */
char *ts_cli_delta_pool(const struct ts_cli_delta *d);
/* The two volumes' ids and names among `vols` (thin list's objects);
 * false after a message. */
bool ts_cli_delta_ids(const struct ts_cli_delta *d, struct json_t *vols, const char *pool,
                      uint32_t ids[2], const char *names[2]);
/* Print the delta from its raw ranges, [kind, begin, length, left, right]. */
void ts_cli_delta_print(const struct ts_cli_delta *d, const char *pool, uint64_t bs,
                        const uint32_t ids[2], const char *names[2], struct json_t *raw,
                        uint64_t nodes);
/* What a thin subcommand did, as one line or (json) one document:
 * {"created": {...}}, {"deleted": {...}}, {"resized": {...}}. `verb` is
 * "create", "snap", "delete" or "resize"; `name` NULL for a delete by id,
 * `origin` only for snap. The direct and control-socket paths share it. */
/* What pool extend / extend-metadata did: a line, or with json
 * {"extended": {"pool", "space", "size", "blocks", "grown"}}. */
void ts_cli_pool_extended(bool json, const char *pool, const char *which, uint64_t size,
                          uint64_t blocks, bool grown);
void ts_cli_thin_done(bool json, const char *verb, const char *name, uint32_t id, const char *pool,
                      uint64_t size, const char *origin);
/* The `info` table: its header, and one node's row. */
void ts_cli_limits_header(void);
/* A limits object as `info --json` prints it ("unlimited" as null); free(). */
char *ts_cli_limits_dumps(const struct json_t *limits);
void ts_cli_limits_row(const char *name, const char *type, const ts_limits *l, bool exported);
/* When argv is a command a holder's control socket serves and that socket
 * answers, run it there, store the exit status and return true; false: the
 * command opens the stack itself. */
bool ts_cli_ctl_route(int argc, char **argv, int *status);

/* What provision, discard or zero (`cmd`) did on `dev`: the timing line on
 * stderr, and with json {"provisioned"|"discarded"|"zeroed": {"dev",
 * "offset", "length", "seconds"}} on stdout. */
void ts_cli_range_done(bool json, const char *cmd, const char *dev, uint64_t off, uint64_t len,
                       double seconds);

/* -p/--progress (src/cli/progress.c). main() takes the option out of the
 * arguments of the commands that show progress; they say how much there
 * is to do and how much is done. Lines go to stderr (or --progress=FD):
 * "    (12.34/100%)", in place on a terminal and one per update otherwise,
 * at most one per 0.1 s (TS_PROGRESS_INTERVAL), never backwards, and
 * 100% only from _end(true). Not thread-safe: one thread updates. */
/* True when `arg` is -p, --progress or --progress=FD (then recorded). */
bool ts_cli_progress_opt(const char *arg);
/* True when progress was asked for. */
bool ts_cli_progress_on(void);
/* Start: `total` units to do (bytes, entries); prints 0%. */
void ts_cli_progress_begin(uint64_t total);
/* `done` of the total units are done (rate-limited). */
void ts_cli_progress_set(uint64_t done);
/* Finished: 100% when `ok`; a failure leaves the last figure. */
void ts_cli_progress_end(bool ok);
/* For a library call that reports no progress: a thread counts the bytes
 * the process reads (/proc/self/io) against `expected` until _sample_end,
 * which stops it and ends as _end does. */
void ts_cli_progress_sample_reads(uint64_t expected);
void ts_cli_progress_sample_end(bool ok);

/* Commands implemented in src/cli/cmd_*.c */
int ts_cli_ctl(int argc, char **argv);
int ts_cli_serve(int argc, char **argv);
int ts_cli_message(int argc, char **argv);
int ts_cli_validate(int argc, char **argv);
int ts_cli_dump_config(int argc, char **argv);
int ts_cli_replay_log(int argc, char **argv);
int ts_cli_info(int argc, char **argv);
int ts_cli_types(int argc, char **argv);
int ts_cli_schema(int argc, char **argv);
int ts_cli_status(int argc, char **argv);
int ts_cli_read(int argc, char **argv);
int ts_cli_copy(int argc, char **argv);
int ts_cli_write(int argc, char **argv);
int ts_cli_range(int argc, char **argv); /* provision, discard, zero */
int ts_cli_flush(int argc, char **argv);
int ts_cli_map(int argc, char **argv);
int ts_cli_demo(int argc, char **argv);
int ts_cli_dm_table(int argc, char **argv);
int ts_cli_bench(int argc, char **argv);
int ts_cli_pool(int argc, char **argv); /* pool create|status|extend */
int ts_cli_thin(int argc, char **argv); /* thin create|snap|delete|resize|list */
int ts_cli_bench_provision(int argc, char **argv); /* bench provision */
int ts_cli_check(int argc, char **argv);
int ts_cli_dump(int argc, char **argv);
int ts_cli_restore(int argc, char **argv);
int ts_cli_repair(int argc, char **argv);
int ts_cli_bench_snapshot(int argc, char **argv);
int ts_cli_bench_crypt(int argc, char **argv);
int ts_cli_bench_kernel(int argc, char **argv);
int ts_cli_bench_io(int argc, char **argv);

#endif
