/* ts_stack_config_json: the document that re-opens a stack as it is now.
 *
 * It starts from the document the stack was opened with rather than from
 * defaults, so it says no more than the user did: a dump opened again and
 * dumped once more gives the same text. Three things change: relative paths
 * become absolute (the dump may be opened from anywhere), each layer's
 * `config` slot updates what has changed since open (a grown file), and
 * secrets are masked unless asked for.
 */
#include "core/internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define HIDDEN "(hidden)"

/* Make the PATH parameters of `obj` (checked against `schema`) absolute and
 * mask its secrets, descending into ARRAY and OBJECT fields. */
static int rewrite(struct ts_node *n, const ts_param *schema, json_t *obj, uint32_t flags)
{
  for (const ts_param *p = schema; p && p->key; p++) {
    json_t *v = json_object_get(obj, p->key);
    if (!v)
      continue;
    if ((p->flags & TS_PARAM_SECRET) && !(flags & TS_CONFIG_SECRETS)) {
      if (json_object_set_new(obj, p->key, json_string(HIDDEN)))
        return -ENOMEM;
    } else if (p->kind == TS_PARAM_PATH && json_is_string(v)) {
      char *abs = ts_layer_path(n, json_string_value(v));
      if (!abs || json_object_set_new(obj, p->key, json_string(abs))) {
        free(abs);
        return -ENOMEM;
      }
      free(abs);
    } else if (p->kind == TS_PARAM_OBJECT && json_is_object(v)) {
      int r = rewrite(n, p->fields, v, flags);
      if (r)
        return r;
    } else if (p->kind == TS_PARAM_ARRAY && json_is_array(v)) {
      size_t i;
      json_t *e;
      json_array_foreach(v, i, e) {
        int r = json_is_object(e) ? rewrite(n, p->fields, e, flags) : 0;
        if (r)
          return r;
      }
    }
  }
  return 0;
}

static int rewrite_plugins(struct ts_stack *s, json_t *root)
{
  json_t *plugins = json_object_get(root, "plugins");
  size_t i;
  json_t *p;
  json_array_foreach(plugins, i, p) {
    const char *rel = json_string_value(p);
    if (!rel)
      continue;
    char *abs = ts__stack_path(s, rel);
    if (!abs)
      return -ENOMEM;
    int r = json_array_set_new(plugins, i, json_string(abs));
    free(abs);
    if (r)
      return -ENOMEM;
  }
  return 0;
}

char *ts_stack_config_json(ts_stack *s, uint32_t flags)
{
  if (!s)
    return NULL;
  pthread_mutex_lock(&s->config_mu);
  json_t *root = json_deep_copy(s->config);
  pthread_mutex_unlock(&s->config_mu);
  if (!root)
    return NULL;
  json_t *layers = json_object_get(root, "layers");
  int r = rewrite_plugins(s, root);
  for (size_t i = 0; i < s->nnodes && !r; i++) {
    struct ts_node *n = s->nodes[i];
    json_t *obj = json_object_get(layers, n->name);
    if (!obj)
      continue;
    r = rewrite(n, n->type->params, obj, flags);
    /* Types built against an older header have no config slot. */
    const ts_layer_type *t = n->type;
    if (!r && TS__LAYER_OP(t, config))
      r = t->config(n, obj);
  }
  char *out = r ? NULL : json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
  json_decref(root);
  return out;
}
