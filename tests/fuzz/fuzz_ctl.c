/* Fuzz target: control-socket requests, one per line, answered by
 * ts_ctl_call (the server's request path without the socket) on a stack of
 * memory layers: a thin pool with an open volume vm0 and a log-writes layer
 * over a second memory device. Every line gets exactly one reply that is a
 * JSON-RPC 2.0 object with a result or an error, never both; whatever the
 * requests did, the stack still answers stack.status and closes cleanly.
 *
 * The sandbox: a request whose sizes or lengths exceed 64 MiB is skipped
 * (growing a memory layer to a fuzzed size tests the allocator, not the
 * request path). */
#include "fuzz.h"

#include <jansson.h>
#include <libthinstack/thinstack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LIMIT (64ull << 20)

static const char stack_json[] =
    "{ \"version\": 1, \"layers\": {"
    " \"meta\": { \"type\": \"memory\", \"size\": \"4M\" },"
    " \"data\": { \"type\": \"memory\", \"size\": \"16M\" },"
    " \"pool\": { \"type\": \"thin-pool\", \"metadata\": \"meta\", \"data\": \"data\","
    "             \"block_size\": \"64K\", \"low_water_mark\": \"8M\", \"create\": true },"
    " \"vm0\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 0, \"size\": \"8M\", \"create\": true },"
    " \"logdev\": { \"type\": \"memory\", \"size\": \"1M\" },"
    " \"plain\": { \"type\": \"memory\", \"size\": \"1M\" },"
    " \"lw\": { \"type\": \"log-writes\", \"child\": \"plain\", \"log\": \"logdev\" } },"
    " \"exports\": [\"vm0\", \"lw\"] }";

/* Any number or size string in params above the limit. */
static bool too_big(json_t *v, int depth)
{
  if (depth > 8)
    return true;
  if (json_is_integer(v))
    return json_integer_value(v) > (json_int_t)LIMIT;
  if (json_is_string(v)) {
    uint64_t n;
    return ts_parse_size(json_string_value(v), &n) == 0 && n > LIMIT;
  }
  const char *k;
  json_t *x;
  size_t i;
  if (json_is_object(v)) {
    json_object_foreach(v, k, x) if (too_big(x, depth + 1)) return true;
  } else if (json_is_array(v)) {
    json_array_foreach(v, i, x) if (too_big(x, depth + 1)) return true;
  }
  return false;
}

static void check_reply(const char *line, size_t len, char *reply)
{
  if (!reply) {
    fprintf(stderr, "no reply to: %.*s\n", (int)len, line);
    abort();
  }
  json_error_t je;
  json_t *r = json_loads(reply, JSON_REJECT_DUPLICATES, &je);
  json_t *res = json_object_get(r, "result"), *e = json_object_get(r, "error");
  const char *ver = json_string_value(json_object_get(r, "jsonrpc"));
  if (!r || !ver || strcmp(ver, "2.0") || !json_object_get(r, "id") || !res == !e ||
      strchr(reply, '\n') ||
      (e && (!json_is_integer(json_object_get(e, "code")) ||
             !json_is_string(json_object_get(e, "message")) ||
             !json_is_string(json_object_get(json_object_get(e, "data"), "errno"))))) {
    fprintf(stderr, "bad reply %s\nto: %.*s\n", reply, (int)len, line);
    abort();
  }
  json_decref(r);
  free(reply);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  ts_stack *s = NULL;
  ts_error err = { 0 };
  if (ts_stack_open_string(stack_json, NULL, NULL, &s, &err)) {
    fprintf(stderr, "the fuzz stack does not open: %s\n", err.msg);
    abort();
  }
  const char *p = (const char *)data, *end = p + size;
  while (p < end) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);
    json_t *req = json_loadb(p, len, 0, NULL);
    bool skip = req && too_big(json_object_get(req, "params"), 0);
    json_decref(req);
    if (skip)
      fuzz_note("skipped", "a size above the sandbox's limit");
    else
      check_reply(p, len, ts_ctl_call(s, p, len));
    p += len + 1;
  }
  static const char status[] = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"stack.status\"}";
  char *r = ts_ctl_call(s, status, sizeof status - 1);
  if (!r || !strstr(r, "\"result\"")) {
    fprintf(stderr, "the stack stopped answering: %s\n", r ? r : "(no reply)");
    abort();
  }
  free(r);
  ts_error_clear(&err);
  if (ts_stack_close(s, &err)) {
    fuzz_note("close", err.msg);
  }
  return 0;
}
