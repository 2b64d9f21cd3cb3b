/* Working through a running holder's control socket: the commands that
 * change or read a held stack are sent there when its socket (CONFIG.ctl)
 * answers, and print what they print when they open the stack themselves;
 * `thinstack ctl` sends one raw request; `thinstack serve` holds a stack and
 * serves its socket. */
#include "cli/cli.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* The client                                                                */

struct ctl_conn {
  int fd;
  char buf[65536];
  size_t len;
};

/* The socket for CONFIG, to name in messages: CONFIG itself when it is a
 * socket, else the first place a holder may serve that fits. */
static bool socket_path(const char *config, char *out, size_t n)
{
  struct stat st;
  if (stat(config, &st) == 0 && S_ISSOCK(st.st_mode)) {
    if (strlen(config) >= n)
      return false;
    strcpy(out, config);
    return true;
  }
  return ts_ctl_path_candidate(config, 0, out, n) == 0 ||
         ts_ctl_path_candidate(config, 1, out, n) == 0;
}

static bool connect_at(const char *path, struct ctl_conn *c)
{
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  if (strlen(path) >= sizeof sa.sun_path)
    return false;
  strcpy(sa.sun_path, path);
  c->len = 0;
  c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (c->fd < 0)
    return false;
  if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
    close(c->fd);
    c->fd = -1;
    return false;
  }
  return true;
}

/* Connect to the control socket of CONFIG: CONFIG itself when it is a
 * socket, else the places a holder may serve, in the order it picks them
 * (ts_ctl_path_candidate); false when none answers. */
static bool ctl_connect(const char *config, struct ctl_conn *c)
{
  char path[108];
  struct stat st;
  if (stat(config, &st) == 0 && S_ISSOCK(st.st_mode))
    return connect_at(config, c);
  for (unsigned i = 0; i < 2; i++)
    if (ts_ctl_path_candidate(config, i, path, sizeof path) == 0 && connect_at(path, c))
      return true;
  return false;
}

/* One line from the server (without its newline), NULL at EOF or error. */
static json_t *ctl_read(struct ctl_conn *c)
{
  for (;;) {
    char *nl = memchr(c->buf, '\n', c->len);
    if (nl) {
      json_t *j = json_loadb(c->buf, (size_t)(nl - c->buf), 0, NULL);
      size_t used = (size_t)(nl - c->buf) + 1;
      memmove(c->buf, nl + 1, c->len - used);
      c->len -= used;
      return j ? j : json_null();
    }
    if (c->len == sizeof c->buf)
      return NULL;
    ssize_t n = read(c->fd, c->buf + c->len, sizeof c->buf - c->len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return NULL;
    c->len += (size_t)n;
  }
}

static bool ctl_send(struct ctl_conn *c, const char *line)
{
  size_t n = strlen(line);
  for (size_t off = 0; off < n + 1;) {
    ssize_t w = off < n ? write(c->fd, line + off, n - off) : write(c->fd, "\n", 1);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return false;
    off += (size_t)w;
  }
  return true;
}

/* Send METHOD(params) and wait for its reply, skipping notifications.
 * Takes `params` (may be NULL). Returns the reply object or NULL after a
 * message. */
static json_t *ctl_call(struct ctl_conn *c, const char *method, json_t *params)
{
  static int next_id = 1;
  int id = next_id++;
  json_t *req = json_pack("{s:s,s:i,s:s}", "jsonrpc", "2.0", "id", id, "method", method);
  if (params)
    json_object_set_new(req, "params", params);
  char *txt = json_dumps(req, JSON_COMPACT);
  json_decref(req);
  bool ok = txt && ctl_send(c, txt);
  free(txt);
  if (!ok) {
    ts_cli_err("control socket: sending %s failed: %s", method, strerror(errno));
    return NULL;
  }
  for (;;) {
    json_t *rep = ctl_read(c);
    if (!rep) {
      ts_cli_err("control socket: the server closed the connection during %s", method);
      return NULL;
    }
    if (json_object_get(rep, "method")) { /* a notification */
      json_decref(rep);
      continue;
    }
    return rep;
  }
}

/* The error of a reply as the library would have printed it; its errno. */
static int reply_failed(json_t *rep)
{
  json_t *e = json_object_get(rep, "error");
  const char *msg = json_string_value(json_object_get(e, "message"));
  const char *name = json_string_value(json_object_get(json_object_get(e, "data"), "errno"));
  int code = name ? ts_err_from_name(name) : 0;
  ts_cli_err("%s", msg ? msg : "control socket: malformed reply");
  return code ? code : -EIO;
}

/* A method's result, or NULL after printing its error (*code: the errno). */
static json_t *result_of(struct ctl_conn *c, const char *method, json_t *params, int *code,
                         json_t **hold)
{
  json_t *rep = ctl_call(c, method, params);
  *hold = rep;
  *code = -EIO;
  if (!rep)
    return NULL;
  json_t *res = json_object_get(rep, "result");
  if (!res) {
    *code = reply_failed(rep);
    return NULL;
  }
  *code = 0;
  return res;
}

/* ------------------------------------------------------------------------ */
/* The commands, routed                                                      */

struct rargs {
  const char *pos[4];
  int npos;
  const char *pool, *size, *id;
  bool json, export_it, discard_beyond, may_zero, may_unmap, no_fallback;
};

/* The arguments of a routed command; false for anything unusual (help,
 * unknown flags, wrong counts): the command's own parser reports those. */
static bool rparse(int argc, char **argv, int first, struct rargs *a)
{
  memset(a, 0, sizeof *a);
  for (int i = first; i < argc; i++) {
    const char *s = argv[i];
    const char **val = !strcmp(s, "--pool") ? &a->pool : !strcmp(s, "--size") ? &a->size
                       : !strcmp(s, "--id") ? &a->id : NULL;
    bool *flag = !strcmp(s, "--json") ? &a->json : !strcmp(s, "--export") ? &a->export_it
                 : !strcmp(s, "--discard-beyond") ? &a->discard_beyond
                 : !strcmp(s, "--may-zero") ? &a->may_zero : !strcmp(s, "--may-unmap") ? &a->may_unmap
                 : !strcmp(s, "--no-fallback") ? &a->no_fallback : NULL;
    if (val && i + 1 < argc)
      *val = argv[++i];
    else if (flag)
      *flag = true;
    else if (s[0] == '-' || a->npos == 4)
      return false;
    else
      a->pos[a->npos++] = s;
  }
  return a->npos > 0;
}

static void print_size(char *buf, size_t n, uint64_t bytes)
{
  ts_cli_print_size(buf, n, bytes);
}

static uint64_t jint(json_t *o, const char *k)
{
  return (uint64_t)json_integer_value(json_object_get(o, k));
}

static int r_thin(struct ctl_conn *c, const char *sub, struct rargs *a)
{
  json_t *hold = NULL, *res;
  int code;
  uint64_t size = 0;
  if (!strcmp(sub, "list")) {
    if (a->npos != 1)
      return -1;
    res = result_of(c, "volume.list", a->pool ? json_pack("{s:s}", "pool", a->pool) : NULL, &code,
                    &hold);
    if (res && a->json) {
      /* The local form lacks "open": the same document either way. */
      size_t i;
      json_t *v;
      json_array_foreach(res, i, v) json_object_del(v, "open");
      char *txt = json_dumps(res, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
      printf("%s\n", txt);
      free(txt);
    } else if (res) {
      ts_cli_list_text(res);
    }
  } else if (!strcmp(sub, "create")) {
    uint32_t id = 0;
    if (a->npos != 2 || !a->size || ts_parse_size(a->size, &size))
      return -1;
    json_t *p = json_pack("{s:s,s:I,s:b}", "name", a->pos[1], "size", (json_int_t)size, "export",
                          a->export_it);
    if (a->pool)
      json_object_set_new(p, "pool", json_string(a->pool));
    if (a->id) {
      char *end;
      unsigned long v = strtoul(a->id, &end, 10);
      if (*end || !*a->id || v > TS_THIN_MAX_ID) {
        json_decref(p);
        return -1;
      }
      json_object_set_new(p, "id", json_integer((json_int_t)v));
    }
    if ((res = result_of(c, "volume.create", p, &code, &hold))) {
      id = (uint32_t)jint(res, "id");
      ts_cli_thin_done(a->json, "create", a->pos[1], id,
                       json_string_value(json_object_get(res, "pool")), size, NULL);
    }
  } else if (!strcmp(sub, "snap")) {
    if (a->npos != 3)
      return -1;
    json_t *p = json_pack("{s:s,s:s,s:b}", "origin", a->pos[1], "name", a->pos[2], "export",
                          a->export_it);
    if ((res = result_of(c, "volume.snapshot", p, &code, &hold)))
      ts_cli_thin_done(a->json, "snap", a->pos[2], (uint32_t)jint(res, "id"),
                       json_string_value(json_object_get(res, "pool")), 0, a->pos[1]);
  } else if (!strcmp(sub, "delete")) {
    json_t *p;
    if (a->id && a->npos == 1) {
      char *end;
      unsigned long v = strtoul(a->id, &end, 10);
      if (*end || !*a->id || v > TS_THIN_MAX_ID)
        return -1;
      p = json_pack("{s:i}", "id", (int)v);
      if (a->pool)
        json_object_set_new(p, "pool", json_string(a->pool));
    } else if (!a->id && !a->pool && a->npos == 2) {
      p = json_pack("{s:s}", "name", a->pos[1]);
    } else {
      return -1;
    }
    if ((res = result_of(c, "volume.delete", p, &code, &hold))) {
      const char *pool = json_string_value(json_object_get(res, "pool"));
      ts_cli_thin_done(a->json, "delete", a->id ? NULL : a->pos[1], (uint32_t)jint(res, "id"), pool,
                       0, NULL);
    }
  } else if (!strcmp(sub, "resize")) {
    if (a->npos != 3)
      return -1;
    bool rel = a->pos[2][0] == '+';
    if (ts_parse_size(a->pos[2] + rel, &size))
      return -1;
    if (rel) {
      /* +SIZE: relative to the layer's size now. */
      json_t *l = result_of(c, "volume.list", NULL, &code, &hold);
      size_t i;
      json_t *v;
      json_array_foreach(l, i, v)
      {
        const char *nm = json_string_value(json_object_get(v, "name"));
        if (nm && !strcmp(nm, a->pos[1]))
          size += jint(v, "size");
      }
      json_decref(hold);
      hold = NULL;
      if (code)
        return 1;
    }
    json_t *p = json_pack("{s:s,s:I,s:b}", "name", a->pos[1], "size", (json_int_t)size,
                          "discard_beyond", a->discard_beyond);
    if ((res = result_of(c, "volume.resize", p, &code, &hold)))
      ts_cli_thin_done(a->json, "resize", a->pos[1], 0, NULL, size, NULL);
  } else {
    return -1;
  }
  json_decref(hold);
  return code ? 1 : 0;
}

static void pool_status_text(json_t *o)
{
  char a[32], b[32], c[32];
  json_t *data = json_object_get(o, "data"), *meta = json_object_get(o, "metadata");
  uint64_t bs = jint(o, "block_size"), db = jint(data, "blocks"), du = jint(data, "used"),
           df = jint(data, "free"), mb = jint(meta, "blocks"), mu = jint(meta, "used");
  ts_format_size(bs, a, sizeof a);
  printf("pool %s: %s blocks, transaction id %llu, mode %s\n",
         json_string_value(json_object_get(o, "pool")), a,
         (unsigned long long)jint(o, "transaction_id"),
         json_string_value(json_object_get(o, "mode")));
  print_size(a, sizeof a, du * bs);
  print_size(b, sizeof b, db * bs);
  print_size(c, sizeof c, df * bs);
  printf("  data      %llu of %llu blocks used (%s of %s, %.1f%%), %s free\n",
         (unsigned long long)du, (unsigned long long)db, a, b,
         db ? 100.0 * (double)du / (double)db : 0.0, c);
  printf("  metadata  %llu of %llu 4K blocks used (%.1f%%)\n", (unsigned long long)mu,
         (unsigned long long)mb, mb ? 100.0 * (double)mu / (double)mb : 0.0);
  if (jint(o, "low_water_mark")) {
    print_size(a, sizeof a, jint(o, "low_water_mark"));
    printf("  low water mark %s: %s\n", a,
           json_is_true(json_object_get(o, "low_water")) ? "REACHED" : "not reached");
  }
  printf("  out of space: %s; discard passdown: %s; zero new blocks: %s%s%s\n",
         json_string_value(json_object_get(o, "out_of_space")),
         json_is_true(json_object_get(o, "discard_passdown")) ? "yes" : "no",
         json_is_true(json_object_get(o, "zero_new_blocks")) ? "yes" : "no",
         json_is_true(json_object_get(o, "needs_check")) ? "; NEEDS CHECK" : "",
         jint(o, "held_metadata_root") ? "; metadata snapshot held" : "");
  json_t *vols = json_object_get(o, "volumes");
  size_t n = json_array_size(vols), i;
  json_t *v;
  printf("  %zu volume%s\n", n, n == 1 ? "" : "s");
  json_array_foreach(vols, i, v)
  {
    print_size(a, sizeof a, jint(v, "mapped_bytes"));
    printf("  %8u  %llu blocks mapped (%s)\n", (unsigned)jint(v, "id"),
           (unsigned long long)jint(v, "mapped_blocks"), a);
  }
}

static int r_pool(struct ctl_conn *c, const char *sub, struct rargs *a)
{
  json_t *hold = NULL, *res;
  int code;
  if (a->npos < 2 || a->pool || a->size || a->id)
    return -1;
  if (!strcmp(sub, "status")) {
    if (a->npos != 2)
      return -1;
    if ((res = result_of(c, "pool.status", json_pack("{s:s}", "pool", a->pos[1]), &code, &hold))) {
      if (a->json) {
        char *txt = json_dumps(res, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        printf("%s\n", txt);
        free(txt);
      } else {
        pool_status_text(res);
      }
    }
    json_decref(hold);
    return code ? 1 : 0;
  }
  bool meta = !strcmp(sub, "extend-metadata");
  if ((!meta && strcmp(sub, "extend")) || a->npos != 3)
    return -1;
  uint64_t size;
  bool rel = a->pos[2][0] == '+';
  if (ts_parse_size(a->pos[2] + rel, &size))
    return -1;
  if ((res = result_of(c, "pool.status", json_pack("{s:s}", "pool", a->pos[1]), &code, &hold))) {
    uint64_t had = meta ? jint(json_object_get(res, "metadata"), "blocks") * 4096
                        : jint(json_object_get(res, "data"), "blocks") * jint(res, "block_size");
    if (rel)
      size += had;
  }
  json_decref(hold);
  if (code)
    return 1;
  const char *which = meta ? "metadata" : "data";
  if ((res = result_of(c, meta ? "pool.extend-metadata" : "pool.extend",
                       json_pack("{s:s,s:I}", "pool", a->pos[1], "size", (json_int_t)size), &code,
                       &hold))) {
    ts_cli_pool_extended(a->json, a->pos[1], which, size, jint(res, "blocks"),
                         json_is_true(json_object_get(res, "grown")));
  }
  json_decref(hold);
  return code ? 1 : 0;
}

static int r_range(struct ctl_conn *c, const char *cmd, struct rargs *a)
{
  uint64_t off, len;
  bool zero = !strcmp(cmd, "zero"), prov = !strcmp(cmd, "provision");
  if (a->npos != 4 || a->pool || a->size || a->id || ts_parse_size(a->pos[2], &off) ||
      ts_parse_size(a->pos[3], &len) || (!zero && (a->may_unmap || a->no_fallback)) ||
      (!prov && a->may_zero))
    return -1;
  json_t *p = json_pack("{s:s,s:I,s:I}", "dev", a->pos[1], "offset", (json_int_t)off, "length",
                        (json_int_t)len);
  if (a->may_zero)
    json_object_set_new(p, "may_zero", json_true());
  if (a->may_unmap)
    json_object_set_new(p, "may_unmap", json_true());
  if (a->no_fallback)
    json_object_set_new(p, "no_fallback", json_true());
  json_t *hold;
  int code;
  double t0 = ts_cli_now();
  json_t *res = result_of(c, prov ? "io.provision" : zero ? "io.write-zeroes" : "io.discard", p,
                          &code, &hold);
  if (res) {
    ts_cli_range_done(a->json, cmd, a->pos[1], off, len, ts_cli_now() - t0);
  } else if (prov && code == -EOPNOTSUPP && !a->may_zero) {
    fprintf(stderr, "thinstack: a layer may only be able to reserve this range by zeroing it;"
                    " --may-zero allows that (data in the range is lost)\n");
  }
  json_decref(hold);
  return code ? 1 : 0;
}

static const char *extent_kind(bool hole, bool zero)
{
  return hole && zero ? "hole" : hole ? "unmapped" : zero ? "zero" : "data";
}

static int r_map(struct ctl_conn *c, struct rargs *a)
{
  uint64_t off = 0, len = 0;
  if ((a->npos != 2 && a->npos != 4) || a->pool || a->size || a->id)
    return -1;
  if (a->npos == 4 && (ts_parse_size(a->pos[2], &off) || ts_parse_size(a->pos[3], &len)))
    return -1;
  json_t *all = json_array(), *hold;
  int code = 0;
  /* The server answers in bounded batches: continue from "next". */
  for (bool first = true;; first = false) {
    json_t *p = json_pack("{s:s,s:I}", "dev", a->pos[1], "offset", (json_int_t)off);
    if (a->npos == 4)
      json_object_set_new(p, "length", json_integer((json_int_t)len));
    json_t *res = result_of(c, "io.map", p, &code, &hold);
    if (!res)
      break;
    if (first && a->npos == 2)
      len = jint(res, "length");
    uint64_t end = jint(res, "offset") + jint(res, "length"), next = jint(res, "next");
    json_array_extend(all, json_object_get(res, "extents"));
    json_decref(hold);
    hold = NULL;
    if (next >= end || next <= off)
      break;
    len = end - next;
    off = next;
    a->npos = 4;
  }
  json_decref(hold);
  if (!code) {
    size_t i;
    json_t *e;
    if (a->json)
      printf("[");
    else
      printf("%16s %16s  %s\n", "offset", "length", "type");
    json_array_foreach(all, i, e)
    {
      bool hole = json_is_true(json_object_get(e, "hole")), zero = json_is_true(json_object_get(e, "zero"));
      if (a->json)
        printf("%s\n  {\"offset\": %llu, \"length\": %llu, \"type\": \"%s\", \"hole\": %s, \"zero\": %s}",
               i ? "," : "", (unsigned long long)jint(e, "offset"),
               (unsigned long long)jint(e, "length"), extent_kind(hole, zero),
               hole ? "true" : "false", zero ? "true" : "false");
      else
        printf("%16llu %16llu  %s\n", (unsigned long long)jint(e, "offset"),
               (unsigned long long)jint(e, "length"), extent_kind(hole, zero));
    }
    if (a->json)
      printf("\n]\n");
  }
  json_decref(all);
  return code ? 1 : 0;
}

static int r_status(struct ctl_conn *c, struct rargs *a)
{
  if (a->npos > 2 || a->pool || a->size || a->id)
    return -1;
  json_t *hold, *res;
  int code;
  /* The whole list: an unknown NODE prints "[ ]" and the error, as locally. */
  if (!(res = result_of(c, "stack.status", NULL, &code, &hold))) {
    json_decref(hold);
    return 1;
  }
  printf("[");
  size_t i, k = 0;
  json_t *o;
  bool found = false;
  json_array_foreach(res, i, o)
  {
    const char *nm = json_string_value(json_object_get(o, "name"));
    if (a->npos == 2 && (!nm || strcmp(nm, a->pos[1])))
      continue;
    found = true;
    char *txt = json_dumps(o, JSON_INDENT(2));
    printf("%s%s", k++ ? ",\n" : "\n", txt ? txt : "null");
    free(txt);
  }
  printf("\n]\n");
  json_decref(hold);
  if (a->npos == 2 && !found) {
    ts_cli_err("%s: no layer named \"%s\"", a->pos[0], a->pos[1]);
    return 1;
  }
  return 0;
}

static int r_info(struct ctl_conn *c, struct rargs *a)
{
  if (a->npos != 1 || a->pool || a->size || a->id)
    return -1;
  json_t *hold, *res;
  int code;
  if (!(res = result_of(c, "stack.info", NULL, &code, &hold))) {
    json_decref(hold);
    return 1;
  }
  json_t *nodes = json_object_get(res, "nodes"), *n;
  size_t i;
  if (a->json)
    printf("{\"nodes\": [");
  else
    ts_cli_limits_header();
  json_array_foreach(nodes, i, n)
  {
    const char *nm = json_string_value(json_object_get(n, "name"));
    const char *ty = json_string_value(json_object_get(n, "type"));
    bool exp = json_is_true(json_object_get(n, "exported"));
    json_t *l = json_object_get(n, "limits");
    if (a->json) {
      char *lim = ts_cli_limits_dumps(l);
      printf("%s\n{\"name\": \"%s\", \"type\": \"%s\", \"exported\": %s, \"limits\": %s}",
             i ? "," : "", nm, ty, exp ? "true" : "false", lim ? lim : "null");
      free(lim);
      continue;
    }
    ts_limits lim = {
      .size = jint(l, "size"),
      .logical_block_size = (uint32_t)jint(l, "logical_block_size"),
      .physical_block_size = (uint32_t)jint(l, "physical_block_size"),
      .io_min = (uint32_t)jint(l, "io_min"),
      .io_opt = (uint32_t)jint(l, "io_opt"),
      .max_io_bytes = jint(l, "max_io_bytes"),
      .max_discard_bytes = jint(l, "max_discard_bytes"),
      .discard_granularity = (uint32_t)jint(l, "discard_granularity"),
      .max_write_zeroes_bytes = jint(l, "max_write_zeroes_bytes"),
      .max_provision_bytes = jint(l, "max_provision_bytes"),
      .provision_granularity = (uint32_t)jint(l, "provision_granularity"),
      .discard_zeroes = json_is_true(json_object_get(l, "discard_zeroes")),
      .write_zeroes_unmap = json_is_true(json_object_get(l, "write_zeroes_unmap")),
      .fua = json_is_true(json_object_get(l, "fua")),
      .read_only = json_is_true(json_object_get(l, "read_only")),
    };
    ts_cli_limits_row(nm, ty, &lim, exp);
  }
  if (a->json)
    printf("]}\n");
  json_decref(hold);
  return 0;
}

static int r_message(struct ctl_conn *c, struct rargs *a)
{
  if (a->npos != 3 || a->pool || a->size || a->id || a->json)
    return -1;
  json_t *hold;
  int code;
  result_of(c, "layer.message",
            json_pack("{s:s,s:s}", "node", a->pos[1], "message", a->pos[2]), &code, &hold);
  json_decref(hold);
  return code ? 1 : 0;
}

bool ts_cli_ctl_route(int argc, char **argv, int *status)
{
  static const char *const routed[] = { "thin", "pool", "provision", "discard", "zero",
                                        "map", "status", "info", "message", NULL };
  bool known = false;
  for (const char *const *r = routed; *r; r++)
    known |= strcmp(*r, argv[0]) == 0;
  if (!known || argc < 2)
    return false;
  bool sub = !strcmp(argv[0], "thin") || !strcmp(argv[0], "pool");
  /* pool create formats a blank pool, which nobody can hold yet. */
  if (sub && (argc < 3 || (!strcmp(argv[0], "pool") && !strcmp(argv[1], "create"))))
    return false;
  struct rargs a;
  if (!rparse(argc, argv, sub ? 2 : 1, &a))
    return false;
  struct ctl_conn c;
  if (!ctl_connect(a.pos[0], &c))
    return false;
  int r = !strcmp(argv[0], "thin")   ? r_thin(&c, argv[1], &a)
          : !strcmp(argv[0], "pool") ? r_pool(&c, argv[1], &a)
          : !strcmp(argv[0], "map")  ? r_map(&c, &a)
          : !strcmp(argv[0], "status") ? r_status(&c, &a)
          : !strcmp(argv[0], "info")   ? r_info(&c, &a)
          : !strcmp(argv[0], "message") ? r_message(&c, &a)
                                        : r_range(&c, argv[0], &a);
  close(c.fd);
  if (r < 0)
    return false; /* not a form routed: the command's own parser speaks */
  *status = r;
  return true;
}

/* ------------------------------------------------------------------------ */
/* thinstack ctl                                                             */

static volatile sig_atomic_t stop_signal;

static void on_signal(int sig)
{
  stop_signal = sig;
}

int ts_cli_ctl(int argc, char **argv)
{
  if (ts_cli_help(argc, argv))
    return 0;
  if (argc < 3 || argc > 4) {
    ts_cli_usage(stderr, argv[0]);
    return 2;
  }
  json_t *params = NULL;
  if (argc == 4) {
    json_error_t je;
    params = json_loads(argv[3], JSON_DECODE_ANY, &je);
    if (!params) {
      ts_cli_err("ctl: PARAMS: not JSON at column %d: %s", je.column, je.text);
      return 2;
    }
  }
  struct ctl_conn c;
  if (!ctl_connect(argv[1], &c)) {
    char path[108] = "";
    socket_path(argv[1], path, sizeof path);
    ts_cli_err("ctl: %s: no control server answers (%s)", path[0] ? path : argv[1],
               strerror(errno));
    json_decref(params);
    return 1;
  }
  json_t *rep = ctl_call(&c, argv[2], params);
  int status = 1;
  if (rep) {
    json_t *res = json_object_get(rep, "result");
    if (res) {
      char *txt = json_dumps(res, JSON_INDENT(2) | JSON_ENCODE_ANY);
      printf("%s\n", txt);
      free(txt);
      status = 0;
    } else {
      char *txt = json_dumps(json_object_get(rep, "error"), JSON_COMPACT);
      fprintf(stderr, "thinstack: %s\n", txt ? txt : "malformed reply");
      free(txt);
    }
  }
  /* A subscription prints each event as a line until the server goes or a
   * signal comes. */
  if (status == 0 && !strcmp(argv[2], "events.subscribe")) {
    fflush(stdout);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    json_t *ev;
    while (!stop_signal && (ev = ctl_read(&c))) {
      char *txt = json_dumps(json_object_get(ev, "params"), JSON_COMPACT);
      printf("%s\n", txt ? txt : "null");
      fflush(stdout);
      free(txt);
      json_decref(ev);
    }
  }
  json_decref(rep);
  close(c.fd);
  return status;
}

/* ------------------------------------------------------------------------ */
/* thinstack serve                                                           */

/* The vhost-user-blk exports serve starts: SOCKET:DEVICE[,queues=N,...]. */
#define SERVE_MAX_VHOST 16
struct serve_vhost {
  char *socket;
  const char *device;
  ts_vhost_blk_opts opts;
  ts_vhost_blk *srv;
};

static int parse_vhost(char *arg, struct serve_vhost *v)
{
  char *opts = NULL, *colon = strrchr(arg, ':');
  if (colon && (opts = strchr(colon, ',')))
    *opts++ = 0;
  if (!colon || colon == arg || !colon[1]) {
    ts_cli_err("serve: --vhost-user-blk %s: expected SOCKET:DEVICE[,queues=N]", arg);
    return -1;
  }
  *colon = 0;
  v->socket = arg;
  v->device = colon + 1;
  v->opts = (ts_vhost_blk_opts){ .struct_size = sizeof v->opts };
  for (char *o = opts ? strtok(opts, ",") : NULL; o; o = strtok(NULL, ",")) {
    char *end = NULL;
    if (!strncmp(o, "queues=", 7))
      v->opts.queues = (uint32_t)strtoul(o + 7, &end, 10);
    else if (!strncmp(o, "workers=", 8))
      v->opts.workers = (uint32_t)strtoul(o + 8, &end, 10);
    else if (!strncmp(o, "serial=", 7))
      v->opts.serial = o + 7;
    else if (!strcmp(o, "readonly"))
      v->opts.flags |= TS_VHOST_READ_ONLY;
    if ((end && *end) || (!end && strncmp(o, "serial=", 7) && strcmp(o, "readonly"))) {
      ts_cli_err("serve: --vhost-user-blk: unknown option \"%s\" (queues=N, workers=N,"
                 " serial=ID, readonly)",
                 o);
      return -1;
    }
  }
  return 0;
}

static void stop_vhost(struct serve_vhost *v, int n)
{
  for (int i = 0; i < n; i++)
    ts_vhost_blk_stop(v[i].srv);
}

int ts_cli_serve(int argc, char **argv)
{
  const char *config = NULL, *control = NULL;
  bool no_control = false;
  struct serve_vhost vh[SERVE_MAX_VHOST];
  int nvh = 0;
  if (ts_cli_help(argc, argv))
    return 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--control") && i + 1 < argc)
      control = argv[++i];
    else if (!strcmp(argv[i], "--vhost-user-blk") && i + 1 < argc) {
      if (nvh == SERVE_MAX_VHOST) {
        ts_cli_err("serve: at most %d --vhost-user-blk exports", SERVE_MAX_VHOST);
        return 2;
      }
      if (parse_vhost(argv[++i], &vh[nvh++]))
        return 2;
    } else if (!strcmp(argv[i], "--no-control"))
      no_control = true;
    else if (argv[i][0] != '-' && !config)
      config = argv[i];
    else {
      ts_cli_usage(stderr, argv[0]);
      return 2;
    }
  }
  if (!config || (control && no_control)) {
    ts_cli_usage(stderr, argv[0]);
    return 2;
  }
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  /* Blocked before any thread starts, so only sigwait below sees them. */
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  ts_stack *s = ts_cli_open(config, 0);
  if (!s)
    return 1;
  char def[108];
  if (!no_control && !control) {
    if (ts_ctl_default_path(config, def, sizeof def)) {
      ts_cli_err("serve: %s.ctl is too long for a socket address and $XDG_RUNTIME_DIR "
                 "offers no other place: name one with --control",
                 config);
      return ts_cli_close(s, 1);
    }
    control = def;
  }
  ts_error err = { 0 };
  if (control && ts_ctl_listen(s, control, &err)) {
    ts_cli_err("%s", err.msg);
    return ts_cli_close(s, 1);
  }
  for (int i = 0; i < nvh; i++) {
    ts_dev *d = ts_stack_dev(s, vh[i].device);
    if (!d) {
      ts_cli_err("serve: --vhost-user-blk %s: the stack exports no device \"%s\"", vh[i].socket,
                 vh[i].device);
      stop_vhost(vh, i);
      return ts_cli_close(s, 1);
    }
    if (ts_vhost_blk_serve(d, vh[i].socket, &vh[i].opts, &vh[i].srv, &err)) {
      ts_cli_err("serve: %s", err.msg);
      stop_vhost(vh, i);
      return ts_cli_close(s, 1);
    }
    fprintf(stderr, "thinstack: vhost-user-blk %s on %s\n", vh[i].device, vh[i].socket);
  }
  fprintf(stderr, "thinstack: serving %s%s%s until SIGTERM\n", config,
          control ? ", control socket " : "", control ? control : "");
  int sig = 0;
  sigwait(&set, &sig);
  /* Guests' requests in flight finish before the stack closes. */
  stop_vhost(vh, nvh);
  /* The final commit: ts_stack_close stops the server, flushes and commits. */
  return ts_cli_close(s, 0);
}

/* ------------------------------------------------------------------------ */
/* thinstack message (opened here when no holder answers)                    */

int ts_cli_message(int argc, char **argv)
{
  if (ts_cli_help(argc, argv))
    return 0;
  if (argc != 4) {
    ts_cli_usage(stderr, argv[0]);
    return 2;
  }
  ts_stack *s;
  ts_dev *d = ts_cli_open_dev(argv[1], argv[2], 0, &s);
  if (!d)
    return 1;
  ts_error err = { 0 };
  int r = ts_dev_message(d, argv[3], &err);
  if (r)
    ts_cli_err("%s", err.msg[0] ? err.msg : ts_strerror(r));
  return ts_cli_close(s, r ? 1 : 0);
}
