/* Stack configuration: check a JSON document against each layer type's schema
 * and order its graph, before anything is opened or created.
 *
 * Every error names the JSON path of the offending value, so a user can find
 * it without reading code: "layers.pool.block_size: expected a size ...". */
#include "core/internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A reference from a parameter to another layer. */
struct childref {
  size_t from;       /* index of the referring node */
  size_t to;         /* index of the referred node */
  bool shared;
  char path[256];    /* JSON path of the reference */
};

struct cfg {
  struct ts_stack *s;
  ts_error *err;
  const char **names;   /* node names in JSON order */
  size_t n;
  struct childref *refs;
  size_t nrefs, caprefs;
};

static const char *json_kind(const json_t *v)
{
  switch (json_typeof(v)) {
  case JSON_OBJECT: return "an object";
  case JSON_ARRAY: return "an array";
  case JSON_STRING: return "a string";
  case JSON_INTEGER: return "an integer";
  case JSON_REAL: return "a number";
  case JSON_TRUE:
  case JSON_FALSE: return "a boolean";
  default: return "null";
  }
}

static long find_node(const struct cfg *c, const char *name)
{
  for (size_t i = 0; i < c->n; i++)
    if (strcmp(c->names[i], name) == 0)
      return (long)i;
  return -1;
}

static bool choice_ok(const char *choices, const char *v)
{
  size_t n = strlen(v);
  for (const char *p = choices; p && *p;) {
    const char *bar = strchr(p, '|');
    size_t len = bar ? (size_t)(bar - p) : strlen(p);
    if (len == n && strncmp(p, v, n) == 0)
      return true;
    p = bar ? bar + 1 : NULL;
  }
  return false;
}

static int check_object(struct cfg *c, size_t node, const char *path, const json_t *obj,
                        const ts_param *schema, bool is_layer);

static int check_value(struct cfg *c, size_t node, const char *path, const json_t *v,
                       const ts_param *p)
{
  ts_error *err = c->err;
  switch (p->kind) {
  case TS_PARAM_STRING:
  case TS_PARAM_PATH:
    if (!json_is_string(v))
      return ts_error_set(err, -EINVAL, "%s: expected a string, got %s", path, json_kind(v));
    if (p->kind == TS_PARAM_PATH && json_string_length(v) == 0)
      return ts_error_set(err, -EINVAL, "%s: the path is empty", path);
    return 0;
  case TS_PARAM_SIZE: {
    uint64_t sz;
    if (json_is_integer(v) && json_integer_value(v) >= 0)
      return 0;
    int pr = json_is_string(v) ? ts_parse_size(json_string_value(v), &sz) : -EINVAL;
    if (pr == 0)
      return 0;
    if (pr == -ERANGE)
      return ts_error_set(err, -ERANGE,
                          "%s: \"%s\" is too large: sizes stop below 2^63 bytes (8E), the most "
                          "a file offset or a kernel block device can address",
                          path, json_string_value(v));
    if (json_is_string(v))
      return ts_error_set(err, -EINVAL,
                          "%s: \"%s\" is not a size (bytes, or a number with K, M, G, T or P)",
                          path, json_string_value(v));
    return ts_error_set(err, -EINVAL, "%s: expected a size (an integer or a string like \"64K\"), got %s%s",
                        path, json_kind(v), json_is_integer(v) ? " below zero" : "");
  }
  case TS_PARAM_UINT:
    if (!json_is_integer(v) || json_integer_value(v) < 0)
      return ts_error_set(err, -EINVAL, "%s: expected a non-negative integer, got %s", path,
                          json_kind(v));
    return 0;
  case TS_PARAM_BOOL:
    if (!json_is_boolean(v))
      return ts_error_set(err, -EINVAL, "%s: expected true or false, got %s", path, json_kind(v));
    return 0;
  case TS_PARAM_ENUM:
    if (!json_is_string(v) || !choice_ok(p->choices, json_string_value(v)))
      return ts_error_set(err, -EINVAL, "%s: expected one of %s, got %s%s%s", path, p->choices,
                          json_is_string(v) ? "\"" : json_kind(v),
                          json_is_string(v) ? json_string_value(v) : "",
                          json_is_string(v) ? "\"" : "");
    return 0;
  case TS_PARAM_CHILD: {
    if (!json_is_string(v))
      return ts_error_set(err, -EINVAL, "%s: expected the name of a layer, got %s", path,
                          json_kind(v));
    const char *name = json_string_value(v);
    long to = find_node(c, name);
    if (to < 0)
      return ts_error_set(err, -ENOENT, "%s: no layer named \"%s\" in \"layers\"", path, name);
    if (c->nrefs == c->caprefs) {
      size_t cap = c->caprefs ? c->caprefs * 2 : 16;
      struct childref *r = realloc(c->refs, cap * sizeof *r);
      if (!r)
        return ts_error_set(err, -ENOMEM, "out of memory");
      c->refs = r;
      c->caprefs = cap;
    }
    struct childref *r = &c->refs[c->nrefs++];
    r->from = node;
    r->to = (size_t)to;
    r->shared = p->flags & TS_PARAM_SHARED;
    snprintf(r->path, sizeof r->path, "%s", path);
    return 0;
  }
  case TS_PARAM_ARRAY: {
    if (!json_is_array(v))
      return ts_error_set(err, -EINVAL, "%s: expected an array, got %s", path, json_kind(v));
    if (json_array_size(v) == 0 && (p->flags & TS_PARAM_REQUIRED))
      return ts_error_set(err, -EINVAL, "%s: the array is empty", path);
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e) {
      char sub[512];
      snprintf(sub, sizeof sub, "%s[%zu]", path, i);
      if (!json_is_object(e))
        return ts_error_set(err, -EINVAL, "%s: expected an object, got %s", sub, json_kind(e));
      int r = check_object(c, node, sub, e, p->fields, false);
      if (r)
        return r;
    }
    return 0;
  }
  case TS_PARAM_OBJECT:
    if (!json_is_object(v))
      return ts_error_set(err, -EINVAL, "%s: expected an object, got %s", path, json_kind(v));
    return check_object(c, node, path, v, p->fields, false);
  case TS_PARAM_ANY:
    return 0;
  }
  return ts_error_set(err, -EINVAL, "%s: the layer type declares an unknown parameter kind", path);
}

static int check_object(struct cfg *c, size_t node, const char *path, const json_t *obj,
                        const ts_param *schema, bool is_layer)
{
  const char *key;
  const json_t *v;
  char sub[512];
  json_object_foreach((json_t *)obj, key, v) {
    if (is_layer && (strcmp(key, "type") == 0 || strcmp(key, "comment") == 0))
      continue;
    const ts_param *p = schema;
    while (p && p->key && strcmp(p->key, key) != 0)
      p++;
    snprintf(sub, sizeof sub, "%s.%s", path, key);
    if (!p || !p->key) {
      char accepted[256] = "";
      size_t len = 0;
      for (const ts_param *q = schema; q && q->key && len < sizeof accepted - 1; q++)
        len += (size_t)snprintf(accepted + len, sizeof accepted - len, "%s%s", len ? ", " : "", q->key);
      return ts_error_set(c->err, -EINVAL, "%s: unknown key (accepted: %s)", sub,
                          len ? accepted : "none");
    }
    int r = check_value(c, node, sub, v, p);
    if (r)
      return r;
  }
  for (const ts_param *p = schema; p && p->key; p++)
    if ((p->flags & TS_PARAM_REQUIRED) && !json_object_get(obj, p->key))
      return ts_error_set(c->err, -EINVAL, "%s: missing required key \"%s\"", path, p->key);
  return 0;
}

/* Depth-first ordering; a node on the current path met again is a cycle. */
static int visit(struct cfg *c, size_t i, unsigned char *state, size_t *order, size_t *norder,
                 size_t *trail, size_t depth)
{
  if (state[i] == 2)
    return 0;
  trail[depth] = i;
  if (state[i] == 1) {
    char msg[400];
    size_t len = 0, start = 0;
    while (trail[start] != i)
      start++;
    for (size_t k = start; k <= depth && len < sizeof msg - 1; k++)
      len += (size_t)snprintf(msg + len, sizeof msg - len, "%s%s", k > start ? " -> " : "",
                              c->names[trail[k]]);
    return ts_error_set(c->err, -ELOOP, "layers: the layers form a cycle: %s", msg);
  }
  state[i] = 1;
  for (size_t k = 0; k < c->nrefs; k++) {
    if (c->refs[k].from != i)
      continue;
    int r = visit(c, c->refs[k].to, state, order, norder, trail, depth + 1);
    if (r)
      return r;
  }
  state[i] = 2;
  order[(*norder)++] = i;
  return 0;
}

static int load_plugins(struct ts_stack *s, const json_t *plugins, ts_error *err)
{
  if (!plugins)
    return 0;
  if (!json_is_array(plugins))
    return ts_error_set(err, -EINVAL, "plugins: expected an array of paths, got %s",
                        json_kind(plugins));
  size_t i;
  json_t *p;
  json_array_foreach(plugins, i, p) {
    if (!json_is_string(p))
      return ts_error_set(err, -EINVAL, "plugins[%zu]: expected a path, got %s", i, json_kind(p));
    char *path = ts__stack_path(s, json_string_value(p));
    if (!path)
      return ts_error_set(err, -ENOMEM, "plugins[%zu]: out of memory", i);
    ts_error e2;
    int r = ts_load_layer_module(path, &e2);
    free(path);
    if (r)
      return ts_error_set(err, r, "plugins[%zu]: %s", i, e2.msg);
  }
  return 0;
}

int ts__config_load(struct ts_stack *s, ts_error *err)
{
  json_t *root = s->config;
  if (!json_is_object(root))
    return ts_error_set(err, -EINVAL, "(top level): expected an object, got %s", json_kind(root));
  const char *key;
  json_t *v;
  json_object_foreach(root, key, v) {
    if (strcmp(key, "version") && strcmp(key, "layers") && strcmp(key, "exports") &&
        strcmp(key, "plugins") && strcmp(key, "comment"))
      return ts_error_set(err, -EINVAL,
                          "%s: unknown top-level key (accepted: version, layers, exports, plugins, comment)",
                          key);
  }
  json_t *ver = json_object_get(root, "version");
  if (!ver)
    return ts_error_set(err, -EINVAL, "version: missing; this format is \"version\": 1");
  if (!json_is_integer(ver) || json_integer_value(ver) != 1)
    return ts_error_set(err, -EINVAL, "version: unsupported configuration version (expected 1)");
  int r = load_plugins(s, json_object_get(root, "plugins"), err);
  if (r)
    return r;

  json_t *layers = json_object_get(root, "layers");
  if (!layers)
    return ts_error_set(err, -EINVAL, "layers: missing; a stack needs at least one layer");
  if (!json_is_object(layers))
    return ts_error_set(err, -EINVAL, "layers: expected an object, got %s", json_kind(layers));
  if (json_object_size(layers) == 0)
    return ts_error_set(err, -EINVAL, "layers: empty; a stack needs at least one layer");

  struct cfg c = { .s = s, .err = err };
  size_t n = json_object_size(layers);
  c.names = calloc(n, sizeof *c.names);
  size_t *order = calloc(n, sizeof *order);
  size_t *trail = calloc(n + 1, sizeof *trail);
  unsigned char *state = calloc(n, 1);
  if (!c.names || !order || !trail || !state) {
    r = ts_error_set(err, -ENOMEM, "out of memory");
    goto out;
  }
  json_object_foreach(layers, key, v) c.names[c.n++] = key;

  /* Schema of every layer first, so the first error reported is the first
   * mistake in the document, not a consequence of it. */
  for (size_t i = 0; i < c.n; i++) {
    char path[300];
    snprintf(path, sizeof path, "layers.%s", c.names[i]);
    json_t *obj = json_object_get(layers, c.names[i]);
    if (!json_is_object(obj)) {
      r = ts_error_set(err, -EINVAL, "%s: expected an object, got %s", path, json_kind(obj));
      goto out;
    }
    json_t *type = json_object_get(obj, "type");
    if (!type) {
      r = ts_error_set(err, -EINVAL, "%s: missing required key \"type\"", path);
      goto out;
    }
    if (!json_is_string(type)) {
      r = ts_error_set(err, -EINVAL, "%s.type: expected a string, got %s", path, json_kind(type));
      goto out;
    }
    const ts_layer_type *t = ts_find_layer_type(json_string_value(type));
    if (!t) {
      char known[300] = "";
      size_t len = 0;
      for (size_t k = 0; ts_layer_type_at(k) && len < sizeof known - 1; k++)
        len += (size_t)snprintf(known + len, sizeof known - len, "%s%s", k ? ", " : "",
                                ts_layer_type_at(k)->name);
      r = ts_error_set(err, -EINVAL, "%s.type: unknown layer type \"%s\" (known: %s)", path,
                       json_string_value(type), known);
      goto out;
    }
    r = check_object(&c, i, path, obj, t->params, true);
    if (r)
      goto out;
  }

  /* A child without TS_PARAM_SHARED belongs to one parent. */
  for (size_t a = 0; a < c.nrefs; a++) {
    if (c.refs[a].from == c.refs[a].to) {
      r = ts_error_set(err, -ELOOP, "%s: layer \"%s\" refers to itself", c.refs[a].path,
                       c.names[c.refs[a].from]);
      goto out;
    }
    for (size_t b = 0; b < a; b++) {
      /* One parent may name a child several times (linear segments). */
      if (c.refs[a].to != c.refs[b].to || c.refs[a].from == c.refs[b].from ||
          (c.refs[a].shared && c.refs[b].shared))
        continue;
      r = ts_error_set(err, -EBUSY,
                       "%s: layer \"%s\" is already used by %s; a layer of this kind has one parent",
                       c.refs[a].path, c.names[c.refs[a].to], c.refs[b].path);
      goto out;
    }
  }

  size_t norder = 0;
  for (size_t i = 0; i < c.n; i++) {
    r = visit(&c, i, state, order, &norder, trail, 0);
    if (r)
      goto out;
  }

  s->nodes = calloc(c.n, sizeof *s->nodes);
  if (!s->nodes) {
    r = ts_error_set(err, -ENOMEM, "out of memory");
    goto out;
  }
  size_t *pos = calloc(c.n, sizeof *pos);
  if (!pos) {
    r = ts_error_set(err, -ENOMEM, "out of memory");
    goto out;
  }
  for (size_t k = 0; k < norder; k++) {
    size_t i = order[k];
    struct ts_node *node = calloc(1, sizeof *node);
    if (!node || !(node->name = strdup(c.names[i]))) {
      free(node);
      free(pos);
      r = ts_error_set(err, -ENOMEM, "out of memory");
      goto out;
    }
    node->stack = s;
    node->params = json_object_get(layers, c.names[i]);
    node->type = ts_find_layer_type(json_string_value(json_object_get(node->params, "type")));
    pthread_mutex_init(&node->serial, NULL);
    pos[i] = s->nnodes;
    s->nodes[s->nnodes++] = node;
  }
  for (size_t k = 0; k < c.nrefs; k++) {
    struct ts_node *from = s->nodes[pos[c.refs[k].from]];
    struct ts_node **ch = realloc(from->children, (from->nchildren + 1) * sizeof *ch);
    if (!ch) {
      free(pos);
      r = ts_error_set(err, -ENOMEM, "out of memory");
      goto out;
    }
    from->children = ch;
    ch[from->nchildren++] = s->nodes[pos[c.refs[k].to]];
  }
  free(pos);

  json_t *exports = json_object_get(root, "exports");
  if (exports && !json_is_array(exports)) {
    r = ts_error_set(err, -EINVAL, "exports: expected an array of layer names, got %s",
                     json_kind(exports));
    goto out;
  }
  size_t nexp = exports ? json_array_size(exports) : 0;
  s->exports = calloc(nexp ? nexp : 1, sizeof *s->exports);
  if (!s->exports) {
    r = ts_error_set(err, -ENOMEM, "out of memory");
    goto out;
  }
  for (size_t i = 0; i < nexp; i++) {
    json_t *e = json_array_get(exports, i);
    if (!json_is_string(e)) {
      r = ts_error_set(err, -EINVAL, "exports[%zu]: expected a layer name, got %s", i, json_kind(e));
      goto out;
    }
    struct ts_node *node = NULL;
    for (size_t k = 0; k < s->nnodes; k++)
      if (strcmp(s->nodes[k]->name, json_string_value(e)) == 0)
        node = s->nodes[k];
    if (!node) {
      r = ts_error_set(err, -ENOENT, "exports[%zu]: no layer named \"%s\" in \"layers\"", i,
                       json_string_value(e));
      goto out;
    }
    if (node->exported) {
      r = ts_error_set(err, -EINVAL, "exports[%zu]: \"%s\" is exported twice", i, node->name);
      goto out;
    }
    node->exported = true;
    s->exports[s->nexports++] = node;
  }
  r = 0;
out:
  free(c.names);
  free(c.refs);
  free(order);
  free(trail);
  free(state);
  return r;
}

/* Typed getters for validated parameters. */

const char *ts_param_string(const json_t *params, const char *key, const char *dflt)
{
  const json_t *v = json_object_get(params, key);
  return json_is_string(v) ? json_string_value(v) : dflt;
}

uint64_t ts_param_size(const json_t *params, const char *key, uint64_t dflt)
{
  const json_t *v = json_object_get(params, key);
  uint64_t sz;
  if (json_is_integer(v) && json_integer_value(v) >= 0)
    return (uint64_t)json_integer_value(v);
  if (json_is_string(v) && ts_parse_size(json_string_value(v), &sz) == 0)
    return sz;
  return dflt;
}

uint64_t ts_param_uint(const json_t *params, const char *key, uint64_t dflt)
{
  const json_t *v = json_object_get(params, key);
  return json_is_integer(v) && json_integer_value(v) >= 0 ? (uint64_t)json_integer_value(v) : dflt;
}

bool ts_param_bool(const json_t *params, const char *key, bool dflt)
{
  const json_t *v = json_object_get(params, key);
  return json_is_boolean(v) ? json_is_true(v) : dflt;
}
