/* demo: the embedded default job. Builds a stack on sparse files in a
 * temporary folder and shows what provisioning buys over writing zeroes. */
#include "cli/cli.h"

#include <libthinstack/layer.h>

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char demo_config[] =
  "{\n"
  "  \"version\": 1,\n"
  "  \"layers\": {\n"
  "    \"a\":    { \"type\": \"file\", \"path\": \"a.img\", \"size\": \"%s\", \"create\": true },\n"
  "    \"b\":    { \"type\": \"file\", \"path\": \"b.img\", \"size\": \"%s\", \"create\": true },\n"
  "    \"disk\": { \"type\": \"linear\", \"segments\": [ { \"child\": \"a\" }, { \"child\": \"b\" } ] }\n"
  "  },\n"
  "  \"exports\": [\"disk\"]\n"
  "}\n";

static uint64_t allocated(const char *dir)
{
  uint64_t total = 0;
  const char *names[] = { "a.img", "b.img" };
  for (int i = 0; i < 2; i++) {
    char p[PATH_MAX];
    struct stat st;
    snprintf(p, sizeof p, "%s/%s", dir, names[i]);
    if (stat(p, &st) == 0)
      total += (uint64_t)st.st_blocks * 512;
  }
  return total;
}

static void rm_dir(const char *dir)
{
  const char *names[] = { "a.img", "b.img", "stack.json" };
  for (int i = 0; i < 3; i++) {
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/%s", dir, names[i]);
    unlink(p);
  }
  rmdir(dir);
}

int ts_cli_demo(int argc, char **argv)
{
  const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  uint64_t size = 1ull << 30;
  bool keep = false;
  if (ts_cli_help(argc, argv))
    return 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc) base = argv[++i];
    else if (strcmp(argv[i], "--size") == 0 && i + 1 < argc) {
      if (!ts_cli_size("--size", argv[++i], &size)) return 2;
    } else if (strcmp(argv[i], "--keep") == 0) keep = true;
    else {
      ts_cli_err("demo: unknown argument %s", argv[i]);
      return 2;
    }
  }
  if (size < (2u << 20) || size % (2u << 20)) {
    ts_cli_err("demo: --size must be a multiple of 2M");
    return 2;
  }
  char dir[PATH_MAX];
  snprintf(dir, sizeof dir, "%s/thinstack-demo-XXXXXX", base);
  if (!mkdtemp(dir)) {
    ts_cli_err("demo: cannot create a folder in %s: %s", base, strerror(errno));
    return 1;
  }
  char half[32], cfgpath[PATH_MAX];
  ts_format_size(size / 2, half, sizeof half);
  snprintf(cfgpath, sizeof cfgpath, "%s/stack.json", dir);
  FILE *f = fopen(cfgpath, "w");
  if (!f) {
    ts_cli_err("demo: cannot write %s: %s", cfgpath, strerror(errno));
    rm_dir(dir);
    return 1;
  }
  fprintf(f, demo_config, half, half);
  fclose(f);
  printf("stack: %s (linear over two sparse files of %s each)\n\n", cfgpath, half);

  ts_stack *s = ts_cli_open(cfgpath, 0);
  if (!s) {
    rm_dir(dir);
    return 1;
  }
  ts_dev *d = ts_stack_dev(s, "disk");
  char sz[32];
  ts_format_size(size, sz, sizeof sz);
  double t0, t_prov, t_zero;
  int r;

  t0 = ts_cli_now();
  r = ts_provision(d, 0, size);
  if (!r) r = ts_flush(d);
  t_prov = ts_cli_now() - t0;
  uint64_t after_prov = allocated(dir);
  if (!r) r = ts_discard(d, 0, size);
  uint64_t after_discard = allocated(dir);
  t0 = ts_cli_now();
  for (uint64_t off = 0; !r && off < size; off += TS_ZERO_BUF_SIZE)
    r = ts_pwrite(d, ts_zero_buffer(), TS_ZERO_BUF_SIZE, off, 0);
  if (!r) r = ts_flush(d);
  t_zero = ts_cli_now() - t0;
  if (r) {
    ts_cli_err("demo: %s", ts_strerror(r));
    ts_stack_close(s, NULL);
    rm_dir(dir);
    return 1;
  }
  printf("%-36s %10s %12s %8s\n", "operation on the whole device", "seconds", "allocated", "ratio");
  printf("%-36s %10.4f %11lluM %8s\n", "provision (fallocate below)", t_prov,
         (unsigned long long)(after_prov >> 20), "1.0");
  printf("%-36s %10s %11lluM %8s\n", "discard (punch hole below)", "", (unsigned long long)(after_discard >> 20), "");
  printf("%-36s %10.4f %11lluM %7.1fx\n", "write zeroes (what users do today)", t_zero,
         (unsigned long long)(allocated(dir) >> 20), t_zero / (t_prov > 0 ? t_prov : 1e-9));

  ts_discard(d, 0, size);
  ts_provision(d, 0, size / 4);
  ts_pwrite(d, ts_zero_buffer(), 65536, size / 2, 0);
  ts_extent_list l = { 0 };
  if (ts_block_status(d, 0, size, &l) == 0) {
    printf("\nmap after provisioning the first quarter and writing 64K at the middle:\n");
    for (size_t i = 0; i < l.n; i++)
      printf("  %12llu +%-12llu %s\n", (unsigned long long)l.v[i].offset,
             (unsigned long long)l.v[i].length,
             l.v[i].flags == 0 ? "data" : l.v[i].flags == TS_EXTENT_ZERO ? "provisioned (reads zero)" : "hole");
  }
  ts_extent_list_free(&l);
  int status = ts_cli_close(s, 0);
  if (keep)
    printf("\nkept %s\n", dir);
  else
    rm_dir(dir);
  return status;
}
