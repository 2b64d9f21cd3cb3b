/* demo: the embedded default job. Builds a thin pool on sparse files in a
 * temporary folder and shows what provisioning a thin volume costs next to
 * writing zeroes through it and to the file system's own fallocate. */
#include "cli/cli.h"

#include <libthinstack/layer.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char demo_config[] =
  "{\n"
  "  \"version\": 1,\n"
  "  \"layers\": {\n"
  "    \"meta\": { \"type\": \"file\", \"path\": \"pool.meta\", \"size\": \"64M\", \"create\": true },\n"
  "    \"data\": { \"type\": \"file\", \"path\": \"pool.data\", \"size\": \"%s\", \"create\": true },\n"
  "    \"pool\": { \"type\": \"thin-pool\", \"metadata\": \"meta\", \"data\": \"data\",\n"
  "              \"block_size\": \"64K\", \"create\": true },\n"
  "    \"vm0\":  { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 0, \"size\": \"%s\", \"create\": true },\n"
  "    \"vm1\":  { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 1, \"size\": \"%s\", \"create\": true },\n"
  "    \"vm2\":  { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 2, \"size\": \"%s\", \"create\": true }\n"
  "  },\n"
  "  \"exports\": [\"vm0\", \"vm1\", \"vm2\"]\n"
  "}\n";

static const char *const demo_files[] = { "pool.meta", "pool.data", "plain.img", "stack.json" };

static uint64_t allocated(const char *dir, const char *name)
{
  char p[PATH_MAX];
  struct stat st;
  snprintf(p, sizeof p, "%s/%s", dir, name);
  return stat(p, &st) == 0 ? (uint64_t)st.st_blocks * 512 : 0;
}

static void rm_dir(const char *dir)
{
  for (size_t i = 0; i < sizeof demo_files / sizeof demo_files[0]; i++) {
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/%s", dir, demo_files[i]);
    unlink(p);
  }
  rmdir(dir);
}

/* The file system's own allocation of `size` bytes: the physical limit. */
static double time_fallocate(const char *dir, uint64_t size)
{
  char p[PATH_MAX];
  snprintf(p, sizeof p, "%s/plain.img", dir);
  int fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0644);
  if (fd < 0)
    return -1;
  double t0 = ts_cli_now();
  int r = posix_fallocate(fd, 0, (off_t)size);
  if (!r)
    r = fdatasync(fd);
  double t = ts_cli_now() - t0;
  close(fd);
  unlink(p);
  return r ? -1 : t;
}

static int run(const char *dir, ts_dev *vm0, ts_dev *vm1, ts_dev *vm2, ts_dev *pool, uint64_t size)
{
  char sz[32];
  int r;
  double t0, t_prov, t_wz, t_write;
  ts_format_size(size, sz, sizeof sz);

  t0 = ts_cli_now();
  r = ts_provision(vm0, 0, size);
  if (!r) r = ts_flush(vm0);
  t_prov = ts_cli_now() - t0;
  if (r) return r;
  uint64_t after_prov = allocated(dir, "pool.data");

  t0 = ts_cli_now();
  r = ts_write_zeroes(vm1, 0, size, 0);
  if (!r) r = ts_flush(vm1);
  t_wz = ts_cli_now() - t0;
  if (r) return r;

  t0 = ts_cli_now();
  for (uint64_t off = 0; !r && off < size; off += TS_ZERO_BUF_SIZE)
    r = ts_pwrite(vm2, ts_zero_buffer(), TS_ZERO_BUF_SIZE, off, 0);
  if (!r) r = ts_flush(vm2);
  t_write = ts_cli_now() - t0;
  if (r) return r;
  double t_falloc = time_fallocate(dir, size);

  printf("reserving %s on a thin volume (64K pool blocks, data on a sparse file):\n\n", sz);
  printf("  %-50s %10s %13s\n", "how", "seconds", "vs fallocate");
  printf("  %-50s %10.4f %12.1fx\n", "PROVISION (vm0)", t_prov, t_prov / t_falloc);
  printf("  %-50s %10.4f %12.1fx\n", "WRITE_ZEROES, no unmap (vm1)", t_wz, t_wz / t_falloc);
  printf("  %-50s %10.4f %12.1fx\n", "writing zero buffers, what users do today (vm2)", t_write,
         t_write / t_falloc);
  printf("  %-50s %10.4f %12.1fx\n", "fallocate of a plain file (the physical limit)", t_falloc, 1.0);
  printf("\n  writing zeroes took %.0fx as long as PROVISION; the pool data file grew by %llu MiB\n"
         "  for vm0's %s, so later writes to vm0 cannot run out of space.\n",
         t_write / t_prov, (unsigned long long)(after_prov >> 20), sz);

  /* What the volume looks like: written, provisioned-unwritten, and holes. */
  char block[65536];
  memset(block, 0x5a, sizeof block);
  if ((r = ts_discard(vm0, size / 2, size / 2)) || (r = ts_pwrite(vm0, block, sizeof block, 0, TS_IO_FUA)))
    return r;
  ts_extent_list l = { 0 };
  if ((r = ts_block_status(vm0, 0, size, &l)))
    return r;
  printf("\nvm0 after writing 64K at 0 and discarding its second half (thinstack map):\n");
  for (size_t i = 0; i < l.n; i++)
    printf("  %12llu +%-12llu %s\n", (unsigned long long)l.v[i].offset, (unsigned long long)l.v[i].length,
           l.v[i].flags == 0 ? "data" : l.v[i].flags == TS_EXTENT_ZERO ? "provisioned, reads zeroes" : "unmapped");
  ts_extent_list_free(&l);

  t0 = ts_cli_now();
  ts_error err = { 0 };
  if ((r = ts_pool_create_snap(pool, 3, 0, &err)))
    return r;
  printf("\nsnapshot of vm0 (id 3): %.4f s, sharing every block (O(1))\n", ts_cli_now() - t0);
  if ((r = ts_discard(vm1, 0, size)) || (r = ts_flush(vm1)))
    return r;
  ts_pool_status st;
  if ((r = ts_pool_get_status(pool, &st, &err)))
    return r;
  printf("pool after discarding vm1: %llu of %llu data blocks used, %llu of %llu metadata blocks\n",
         (unsigned long long)st.data_used_blocks, (unsigned long long)st.data_blocks,
         (unsigned long long)st.metadata_used_blocks, (unsigned long long)st.metadata_blocks);
  return 0;
}

/* Our own checker on the metadata the demo left (thin_check agrees: see tests). */
static void check(const char *dir)
{
  char p[PATH_MAX];
  snprintf(p, sizeof p, "%s/pool.meta", dir);
  ts_pool_check_result res;
  if (ts_pool_check(p, 0, NULL, NULL, &res, NULL) == 0)
    printf("thinstack check pool.meta: %s, %llu devices, %llu mappings\n",
           res.errors ? "DAMAGED" : "clean", (unsigned long long)res.nr_devices,
           (unsigned long long)res.nr_mappings);
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
  if (size < (1u << 20) || size % (1u << 20)) {
    ts_cli_err("demo: --size must be a multiple of 1M");
    return 2;
  }
  char dir[PATH_MAX];
  snprintf(dir, sizeof dir, "%s/thinstack-demo-XXXXXX", base);
  if (!mkdtemp(dir)) {
    ts_cli_err("demo: cannot create a folder in %s: %s", base, strerror(errno));
    return 1;
  }
  char vsz[32], dsz[32], cfgpath[PATH_MAX];
  ts_format_size(size, vsz, sizeof vsz);
  ts_format_size(size * 3 + (64u << 20), dsz, sizeof dsz);
  snprintf(cfgpath, sizeof cfgpath, "%s/stack.json", dir);
  FILE *f = fopen(cfgpath, "w");
  if (!f) {
    ts_cli_err("demo: cannot write %s: %s", cfgpath, strerror(errno));
    rm_dir(dir);
    return 1;
  }
  fprintf(f, demo_config, dsz, vsz, vsz, vsz);
  fclose(f);
  printf("stack: %s\n  a thin pool (metadata and data on sparse files) with three %s volumes\n\n",
         cfgpath, vsz);

  ts_stack *s = ts_cli_open(cfgpath, 0);
  if (!s) {
    rm_dir(dir);
    return 1;
  }
  int r = run(dir, ts_stack_dev(s, "vm0"), ts_stack_dev(s, "vm1"), ts_stack_dev(s, "vm2"),
              ts_stack_node(s, "pool"), size);
  if (r)
    ts_cli_err("demo: %s (%s)", ts_strerror(r), ts_err_name(r));
  int status = ts_cli_close(s, r ? 1 : 0);
  if (!status)
    check(dir);
  if (keep)
    printf("\nkept %s (thinstack map %s vm0)\n", dir, cfgpath);
  else
    rm_dir(dir);
  return status;
}
