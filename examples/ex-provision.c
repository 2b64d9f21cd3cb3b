/* ex-provision: open a JSON stack, provision a range of an exported device,
 * and print its block status before and after.
 *
 *   ex-provision CONFIG DEVICE OFFSET LENGTH
 *   ex-provision            (no arguments: a linear stack over two sparse
 *                            files in a temporary folder)
 *
 * Build against an installed library:
 *   cc ex-provision.c $(pkg-config --cflags --libs thinstack)
 */
#define _POSIX_C_SOURCE 200809L
#include <libthinstack/thinstack.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char default_stack[] =
  "{ \"version\": 1, \"layers\": {"
  "  \"a\": { \"type\": \"file\", \"path\": \"a.img\", \"size\": \"64M\", \"create\": true },"
  "  \"b\": { \"type\": \"file\", \"path\": \"b.img\", \"size\": \"64M\", \"create\": true },"
  "  \"disk\": { \"type\": \"linear\", \"segments\": [ { \"child\": \"a\" }, { \"child\": \"b\" } ] } },"
  "  \"exports\": [ \"disk\" ] }";

static void show(ts_dev *dev, const char *when)
{
  ts_extent_list l = { 0 };
  int r = ts_block_status(dev, 0, ts_dev_size(dev), &l);
  printf("%s:\n", when);
  if (r)
    printf("  block status failed: %s\n", ts_strerror(r));
  for (size_t i = 0; i < l.n; i++)
    printf("  %12llu +%-12llu %s\n", (unsigned long long)l.v[i].offset,
           (unsigned long long)l.v[i].length,
           l.v[i].flags == 0 ? "data"
           : l.v[i].flags == TS_EXTENT_ZERO ? "allocated, reads zeroes"
           : "hole");
  ts_extent_list_free(&l);
}

int main(int argc, char **argv)
{
  ts_stack *stack = NULL;
  ts_error err = { 0 };
  const char *devname = "disk";
  uint64_t off = 4 << 20, len = 32 << 20;
  char dir[] = "/tmp/ex-provision-XXXXXX";
  bool temp = argc < 2;
  int r;

  if (temp) {
    if (!mkdtemp(dir))
      return perror("mkdtemp"), 1;
    r = ts_stack_open_string(default_stack, dir, NULL, &stack, &err);
  } else if (argc == 5) {
    devname = argv[2];
    if (ts_parse_size(argv[3], &off) || ts_parse_size(argv[4], &len)) {
      fprintf(stderr, "ex-provision: OFFSET and LENGTH are sizes (e.g. 4M)\n");
      return 2;
    }
    r = ts_stack_open_file(argv[1], NULL, &stack, &err);
  } else {
    fprintf(stderr, "usage: ex-provision [CONFIG DEVICE OFFSET LENGTH]\n");
    return 2;
  }
  if (r) {
    fprintf(stderr, "ex-provision: %s\n", err.msg);
    return 1;
  }
  ts_dev *dev = ts_stack_dev(stack, devname);
  if (!dev) {
    fprintf(stderr, "ex-provision: no exported device \"%s\"\n", devname);
    ts_stack_close(stack, NULL);
    return 1;
  }
  show(dev, "before");
  r = ts_provision(dev, off, len);
  if (r)
    fprintf(stderr, "ex-provision: provision failed: %s\n", ts_strerror(r));
  else
    show(dev, "after provisioning");
  int rc = ts_stack_close(stack, &err) || r ? 1 : 0;
  if (temp) {
    char p[64];
    snprintf(p, sizeof p, "%s/a.img", dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/b.img", dir);
    unlink(p);
    rmdir(dir);
  }
  return rc;
}
