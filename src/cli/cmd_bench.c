/* bench: the benchmark programs. Each prints a table whose ratios compare
 * with a baseline measured in the same run. */
#include "cli/cli.h"

#include <string.h>

static const struct ts_cli_command benches[] = {
  /* { "NAME", ts_cli_bench_NAME, "ARGS", "summary" }, one line per benchmark */
  { "provision", ts_cli_bench_provision,
    "[--sizes 512M,1G,2G,4G,8G] [--dir DIR] [--runs N] [--json]",
    "thin PROVISION and WRITE_ZEROES vs writing zeroes vs fallocate; snapshot cost" },
  { "snapshot", ts_cli_bench_snapshot, "[--size SIZE] [--dir DIR]",
    "origin writes with and without a snapshot (copy-out cost)" },
  { "crypt", ts_cli_bench_crypt,
    "[--json] [--threads N] [--seconds S] [--sector-size N] [--span SIZE]",
    "crypt layer MB/s next to raw OpenSSL AES-XTS" },
  { "kernel", ts_cli_bench_kernel, "[--device DEV] [--size SIZE] [--dir DIR]",
    "kernel layer paths on a loop device against writing zeroes" },
  { "io", ts_cli_bench_io,
    "[--json] [--dir DIR] [--seconds S] [--size SIZE] [--cached] [--workers N] [-p]",
    "4K random / 1M sequential I/O at depth 1 and 32 through the async API, against pread/pwrite" },
  { NULL, NULL, NULL, NULL },
};

int ts_cli_bench(int argc, char **argv)
{
  if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
    FILE *f = argc < 2 ? stderr : stdout;
    fprintf(f, "usage: thinstack bench NAME [ARGS]\n\nbenchmarks:\n");
    for (const struct ts_cli_command *b = benches; b->name; b++)
      fprintf(f, "  %-10s %s %s\n             %s\n", b->name, b->name, b->usage, b->summary);
    return argc < 2 ? 2 : 0;
  }
  for (const struct ts_cli_command *b = benches; b->name; b++)
    if (strcmp(b->name, argv[1]) == 0)
      return b->fn(argc - 1, argv + 1);
  ts_cli_err("bench: unknown benchmark \"%s\" (thinstack bench --help lists them)", argv[1]);
  return 2;
}
