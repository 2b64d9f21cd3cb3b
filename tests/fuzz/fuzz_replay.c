/* Fuzz target: dm-log-writes logs read by `thinstack replay-log`: listed as
 * text and as JSON, and replayed onto a 1 MiB target, up to a mark and in
 * full. The command itself (src/cli/cmd_replay.c) is linked in; the CLI's
 * message helpers are replaced here by silent ones. Logs of 512-byte and
 * 4 KiB sectors get through the header checks alike, so the sector size is
 * taken from the input as it is. */
#include "fuzz.h"
#include "cli/cli.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void ts_cli_err(const char *fmt, ...) { (void)fmt; }
bool ts_cli_help(int argc, char **argv) { (void)argc; (void)argv; return false; }
void ts_cli_usage(FILE *f, const char *name) { (void)f; (void)name; }

static int run(char *a0, char *a1, char *a2, char *a3, char *a4)
{
  char *argv[] = {a0, a1, a2, a3, a4, NULL};
  int argc = 0;
  while (argv[argc])
    argc++;
  return ts_cli_replay_log(argc, argv);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  static bool quiet;
  if (!quiet) {
    fuzz_quiet_stdout();
    quiet = true;
  }
  if (size > (1u << 20))
    return 0;
  fuzz_clean();
  fuzz_write_file("log", data, size, 0);
  fuzz_write_file("target", NULL, 0, 1u << 20);
  char *log = strdup(fuzz_path("log")), *tgt = strdup(fuzz_path("target"));
  run("replay-log", log, "--list", NULL, NULL);
  run("replay-log", log, "--list", "--json", NULL);
  run("replay-log", log, tgt, "--end-mark", "dm-log-writes-end");
  run("replay-log", log, tgt, NULL, NULL);
  free(log);
  free(tgt);
  return 0;
}
