/* Stack configuration: check a JSON document against each layer type's schema
 * and order its graph into a plan (struct ts__plan), before anything is
 * opened or created. Nothing here allocates a node, loads a module or
 * touches a file: the stack (stack.c) builds and owns the nodes.
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

char *ts__config_path(const char *base_dir, const char *path)
{
  if (path[0] == '/' || !base_dir)
    return strdup(path);
  size_t n = strlen(base_dir) + strlen(path) + 2;
  char *p = malloc(n);
  if (p)
    snprintf(p, n, "%s/%s", base_dir, path);
  return p;
}

void ts__plan_free(struct ts__plan *plan)
{
  for (size_t i = 0; i < plan->nplugins; i++)
    free(plan->plugins[i]);
  free(plan->plugins);
  for (size_t i = 0; i < plan->nlayers; i++)
    free(plan->layers[i].children);
  free(plan->layers);
  free(plan->exports);
  memset(plan, 0, sizeof *plan);
}

static int check_plugins(struct ts__plan *plan, const json_t *plugins, const char *base_dir,
                         ts_error *err)
{
  if (!plugins)
    return 0;
  if (!json_is_array(plugins))
    return ts_error_set(err, -EINVAL, "plugins: expected an array of paths, got %s",
                        json_kind(plugins));
  plan->plugins = calloc(json_array_size(plugins) + 1, sizeof *plan->plugins);
  if (!plan->plugins)
    return ts_error_set(err, -ENOMEM, "out of memory");
  size_t i;
  json_t *p;
  json_array_foreach(plugins, i, p) {
    if (!json_is_string(p))
      return ts_error_set(err, -EINVAL, "plugins[%zu]: expected a path, got %s", i, json_kind(p));
    char *path = ts__config_path(base_dir, json_string_value(p));
    if (!path)
      return ts_error_set(err, -ENOMEM, "plugins[%zu]: out of memory", i);
    plan->plugins[plan->nplugins++] = path;
  }
  return 0;
}

int ts__config_check_header(const json_t *root, const char *base_dir, struct ts__plan *plan,
                            ts_error *err)
{
  memset(plan, 0, sizeof *plan);
  if (!json_is_object(root))
    return ts_error_set(err, -EINVAL, "(top level): expected an object, got %s", json_kind(root));
  const char *key;
  json_t *v;
  json_object_foreach((json_t *)root, key, v) {
    /* "$schema" names the schema an editor checks the file against. */
    if (strcmp(key, "version") && strcmp(key, "layers") && strcmp(key, "exports") &&
        strcmp(key, "plugins") && strcmp(key, "comment") && strcmp(key, "$schema"))
      return ts_error_set(err, -EINVAL,
                          "%s: unknown top-level key (accepted: version, layers, exports, plugins, "
                          "comment, $schema)",
                          key);
  }
  json_t *ver = json_object_get(root, "version");
  if (!ver)
    return ts_error_set(err, -EINVAL, "version: missing; this format is \"version\": 1");
  if (!json_is_integer(ver) || json_integer_value(ver) != 1)
    return ts_error_set(err, -EINVAL, "version: unsupported configuration version (expected 1)");
  return check_plugins(plan, json_object_get(root, "plugins"), base_dir, err);
}

/* Every layer's object against its type's schema, collecting the references
 * to children in c->refs. */
static int check_layers(struct cfg *c, const json_t *layers)
{
  ts_error *err = c->err;
  for (size_t i = 0; i < c->n; i++) {
    char path[300];
    snprintf(path, sizeof path, "layers.%s", c->names[i]);
    json_t *obj = json_object_get(layers, c->names[i]);
    if (!json_is_object(obj))
      return ts_error_set(err, -EINVAL, "%s: expected an object, got %s", path, json_kind(obj));
    json_t *type = json_object_get(obj, "type");
    if (!type)
      return ts_error_set(err, -EINVAL, "%s: missing required key \"type\"", path);
    if (!json_is_string(type))
      return ts_error_set(err, -EINVAL, "%s.type: expected a string, got %s", path,
                          json_kind(type));
    const ts_layer_type *t = ts_find_layer_type(json_string_value(type));
    if (!t) {
      char known[300] = "";
      size_t len = 0;
      for (size_t k = 0; ts_layer_type_at(k) && len < sizeof known - 1; k++)
        len += (size_t)snprintf(known + len, sizeof known - len, "%s%s", k ? ", " : "",
                                ts_layer_type_at(k)->name);
      return ts_error_set(err, -EINVAL, "%s.type: unknown layer type \"%s\" (known: %s)", path,
                          json_string_value(type), known);
    }
    int r = check_object(c, i, path, obj, t->params, true);
    if (r)
      return r;
  }
  return 0;
}

/* A child without TS_PARAM_SHARED belongs to one parent. */
static int check_parents(const struct cfg *c)
{
  for (size_t a = 0; a < c->nrefs; a++) {
    const struct childref *ra = &c->refs[a];
    if (ra->from == ra->to)
      return ts_error_set(c->err, -ELOOP, "%s: layer \"%s\" refers to itself", ra->path,
                          c->names[ra->from]);
    for (size_t b = 0; b < a; b++) {
      const struct childref *rb = &c->refs[b];
      /* One parent may name a child several times (linear segments). */
      if (ra->to != rb->to || ra->from == rb->from || (ra->shared && rb->shared))
        continue;
      return ts_error_set(
          c->err, -EBUSY,
          "%s: layer \"%s\" is already used by %s; a layer of this kind has one parent", ra->path,
          c->names[ra->to], rb->path);
    }
  }
  return 0;
}

/* plan->layers in dependency order (`order`, indices into c->names), each
 * with its children in the order the document names them. */
static int fill_layers(const struct cfg *c, const json_t *layers, const size_t *order,
                       struct ts__plan *plan)
{
  size_t *pos = calloc(c->n, sizeof *pos);
  plan->layers = calloc(c->n, sizeof *plan->layers);
  if (!pos || !plan->layers) {
    free(pos);
    return ts_error_set(c->err, -ENOMEM, "out of memory");
  }
  for (size_t k = 0; k < c->n; k++) {
    size_t i = order[k];
    struct ts__plan_layer *pl = &plan->layers[k];
    pl->name = c->names[i];
    pl->params = json_object_get(layers, c->names[i]);
    pl->type = ts_find_layer_type(json_string_value(json_object_get(pl->params, "type")));
    pos[i] = k;
  }
  plan->nlayers = c->n;
  for (size_t k = 0; k < c->nrefs; k++) {
    struct ts__plan_layer *from = &plan->layers[pos[c->refs[k].from]];
    size_t *ch = realloc(from->children, (from->nchildren + 1) * sizeof *ch);
    if (!ch) {
      free(pos);
      return ts_error_set(c->err, -ENOMEM, "out of memory");
    }
    from->children = ch;
    ch[from->nchildren++] = pos[c->refs[k].to];
  }
  free(pos);
  return 0;
}

static int check_exports(const json_t *exports, struct ts__plan *plan, ts_error *err)
{
  if (exports && !json_is_array(exports))
    return ts_error_set(err, -EINVAL, "exports: expected an array of layer names, got %s",
                        json_kind(exports));
  size_t nexp = exports ? json_array_size(exports) : 0;
  plan->exports = calloc(nexp ? nexp : 1, sizeof *plan->exports);
  if (!plan->exports)
    return ts_error_set(err, -ENOMEM, "out of memory");
  for (size_t i = 0; i < nexp; i++) {
    json_t *e = json_array_get(exports, i);
    if (!json_is_string(e))
      return ts_error_set(err, -EINVAL, "exports[%zu]: expected a layer name, got %s", i,
                          json_kind(e));
    size_t k = plan->nlayers;
    for (size_t j = 0; j < plan->nlayers; j++)
      if (strcmp(plan->layers[j].name, json_string_value(e)) == 0)
        k = j;
    if (k == plan->nlayers)
      return ts_error_set(err, -ENOENT, "exports[%zu]: no layer named \"%s\" in \"layers\"", i,
                          json_string_value(e));
    for (size_t j = 0; j < plan->nexports; j++)
      if (plan->exports[j] == k)
        return ts_error_set(err, -EINVAL, "exports[%zu]: \"%s\" is exported twice", i,
                            plan->layers[k].name);
    plan->exports[plan->nexports++] = k;
  }
  return 0;
}

int ts__config_check_layers(const json_t *root, struct ts__plan *plan, ts_error *err)
{
  json_t *layers = json_object_get(root, "layers");
  if (!layers)
    return ts_error_set(err, -EINVAL, "layers: missing; a stack needs at least one layer");
  if (!json_is_object(layers))
    return ts_error_set(err, -EINVAL, "layers: expected an object, got %s", json_kind(layers));
  if (json_object_size(layers) == 0)
    return ts_error_set(err, -EINVAL, "layers: empty; a stack needs at least one layer");

  struct cfg c = { .err = err };
  size_t n = json_object_size(layers);
  c.names = calloc(n, sizeof *c.names);
  size_t *order = calloc(n, sizeof *order);
  size_t *trail = calloc(n + 1, sizeof *trail);
  unsigned char *state = calloc(n, 1);
  int r = 0;
  if (!c.names || !order || !trail || !state) {
    r = ts_error_set(err, -ENOMEM, "out of memory");
    goto out;
  }
  const char *key;
  json_t *v;
  json_object_foreach(layers, key, v)
    c.names[c.n++] = key;

  /* Schema of every layer first, so the first error reported is the first
   * mistake in the document, not a consequence of it. */
  r = check_layers(&c, layers);
  if (!r)
    r = check_parents(&c);
  size_t norder = 0;
  for (size_t i = 0; i < c.n && !r; i++)
    r = visit(&c, i, state, order, &norder, trail, 0);
  if (!r)
    r = fill_layers(&c, layers, order, plan);
  if (!r)
    r = check_exports(json_object_get(root, "exports"), plan, err);
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
