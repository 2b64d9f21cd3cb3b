/* Fuzz target: JSON stack configurations, opened against memory, zero and
 * small file layers in a private temporary folder, then read, written,
 * flushed, dumped back to JSON and closed.
 *
 * The fuzzer may write any JSON, so the target first keeps it inside its
 * sandbox: only built-in layer types that touch nothing but their own files
 * (no kernel devices, no plugins), plain file names (no '/', no leading
 * '.'), no size or count above 64 MiB (the test is the parser and the
 * layers' checks, not how much memory a large device costs), and no request
 * queued to wait for space. Whatever passes is opened for real. */
#include "fuzz.h"

#include <ctype.h>
#include <jansson.h>
#include <libthinstack/thinstack.h>
#include <stdlib.h>
#include <string.h>

#define LIMIT (64ull << 20)

static const char *allowed_types[] = {"memory", "zero", "error", "file", "linear", "fault", "crypt",
                                      "snapshot-origin", "snapshot", "thin-pool", "thin", "log-writes"};

/* A string that reads as a size (a number, an optional K..E suffix, an
 * optional "B" or "iB") above the limit. Anything else is no size. */
static bool too_big(const char *s)
{
  char *end;
  double v = strtod(s, &end);
  if (end == s)
    return false;
  while (*end == ' ')
    end++;
  static const char suf[] = "KMGTPE";
  const char *p = *end ? strchr(suf, toupper((unsigned char)*end)) : NULL;
  if (p) {
    for (long i = 0; i <= p - suf; i++)
      v *= 1024;
    end++;
    if (*end == 'i' || *end == 'I')
      end++;
  }
  if (*end == 'B' || *end == 'b')
    end++;
  return !*end && (v < 0 || v > (double)LIMIT);
}

static bool sandboxed(json_t *v, const char *key, int depth)
{
  if (depth > 16)
    return false;
  switch (json_typeof(v)) {
  case JSON_OBJECT: {
    const char *k;
    json_t *x;
    json_object_foreach(v, k, x)
      if (strstr(k, "plugin") || !strcmp(k, "out_of_space") || !strcmp(k, "queue_timeout") ||
          !sandboxed(x, k, depth + 1))
        return false;
    json_t *type = json_object_get(v, "type");
    if (type) {
      if (!json_is_string(type))
        return false;
      bool ok = false;
      for (size_t i = 0; i < sizeof allowed_types / sizeof *allowed_types; i++)
        ok = ok || !strcmp(json_string_value(type), allowed_types[i]);
      return ok;
    }
    return true;
  }
  case JSON_ARRAY: {
    size_t i;
    json_t *x;
    json_array_foreach(v, i, x)
      if (!sandboxed(x, key, depth + 1))
        return false;
    return true;
  }
  case JSON_STRING: {
    const char *s = json_string_value(v);
    return !strchr(s, '/') && s[0] != '.' && strlen(s) < 200 && !too_big(s);
  }
  case JSON_INTEGER:
    return json_integer_value(v) >= -1 && (uint64_t)json_integer_value(v) <= LIMIT;
  case JSON_REAL:
    return json_real_value(v) >= -1 && json_real_value(v) <= (double)LIMIT;
  default:
    return true;
  }
}

static void exercise(ts_dev *d)
{
  static unsigned char buf[8192];
  uint64_t size = ts_dev_size(d);
  if (!size)
    return;
  size_t n = size < sizeof buf ? (size_t)size : sizeof buf;
  n &= ~(size_t)511;
  if (!n)
    return;
  ts_pread(d, buf, n, 0);
  ts_pread(d, buf, n, size - n);
  memset(buf, 0x5a, n);
  ts_pwrite(d, buf, n, 0, 0);
  ts_pwrite(d, buf, n, size / 2 & ~(uint64_t)4095, TS_IO_FUA);
  ts_flush(d);
  ts_extent_list l = {0};
  ts_block_status(d, 0, size, &l);
  ts_extent_list_free(&l);
  free(ts_dev_status_json(d));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  json_error_t je;
  json_t *root = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &je);
  if (!root) {
    fuzz_note("not JSON", je.text);
    return 0;
  }
  bool ok = sandboxed(root, "", 0);
  json_t *layers = json_object_get(root, "layers");
  if (!ok || !json_is_object(layers)) {
    fuzz_note("outside the sandbox", "skipped");
    json_decref(root);
    return 0;
  }
  fuzz_clean();
  ts_stack *s = NULL;
  ts_error err = {0};
  char *text = json_dumps(root, 0);
  if (text && ts_stack_open_string(text, fuzz_dir(), NULL, &s, &err) == 0) {
    const char *name;
    json_t *x;
    json_object_foreach(layers, name, x) {
      ts_dev *d = ts_stack_node(s, name);
      if (d)
        exercise(d);
    }
    free(ts_stack_config_json(s, 0));
    ts_stack_close(s, &err);
    fuzz_note("opened", "ok");
  } else {
    fuzz_note("refused", err.msg);
  }
  free(text);
  json_decref(root);
  return 0;
}
