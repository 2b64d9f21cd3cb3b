/* Fuzz target: the snapshot layer's persistent exception store.
 *
 * The input is the COW device (padded with zeroes to 64 KiB and to a whole
 * number of 4 KiB blocks, at most 256 KiB) of a snapshot of a 256 KiB
 * memory origin. The store is opened, the snapshot read whole, origin and
 * snapshot written (new exceptions, commits, maybe a full store and its
 * invalidation), closed, and opened and read once more: what the first open
 * accepted and the commits wrote must open again. */
#include "fuzz.h"

#include <libthinstack/thinstack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_COW (256u << 10)

static const char *conf =
    "{\"version\":1,\"layers\":{"
    "\"base\":{\"type\":\"memory\",\"size\":\"256K\"},"
    "\"cow\":{\"type\":\"file\",\"path\":\"cow.img\"},"
    "\"origin\":{\"type\":\"snapshot-origin\",\"child\":\"base\"},"
    "\"snap\":{\"type\":\"snapshot\",\"origin\":\"origin\",\"cow\":\"cow\"}}}";

static int open_and_use(bool write, ts_error *err)
{
  static unsigned char buf[256 << 10];
  ts_stack *s = NULL;
  int r = ts_stack_open_string(conf, fuzz_dir(), NULL, &s, err);
  if (r)
    return r;
  ts_dev *snap = ts_stack_node(s, "snap"), *origin = ts_stack_node(s, "origin");
  ts_pread(snap, buf, sizeof buf, 0);
  if (write) {
    memset(buf, 0xa5, 4096);
    for (uint64_t off = 0; off < sizeof buf; off += 40960)
      ts_pwrite(origin, buf, 4096, off, 0);
    ts_pwrite(snap, buf, 4096, 12288, 0);
    ts_flush(snap);
    free(ts_dev_status_json(snap));
  }
  return ts_stack_close(s, err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  if (size > MAX_COW)
    return 0;
  size_t min = size < 65536 ? 65536 : (size + 4095) & ~(size_t)4095;
  fuzz_clean();
  fuzz_write_file("cow.img", data, size, min);
  ts_error err = {0};
  if (open_and_use(true, &err)) {
    fuzz_note("refused", err.msg);
    return 0;
  }
  fuzz_note("opened", "ok");
  memset(&err, 0, sizeof err);
  int r = open_and_use(false, &err);
  if (r) {
    fprintf(stderr, "a store that opened and committed does not open again: %s\n", err.msg);
    abort();
  }
  return 0;
}
