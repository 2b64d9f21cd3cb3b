/* thinstack schema: a JSON Schema (draft 2020-12) of the stack configuration,
 * made from the registered layer types' parameter tables, the same ones the
 * core checks a configuration against; so what an editor accepts is what
 * ts_stack_open accepts, as far as a schema can say (child names, cycles and
 * the layers' own checks are the open's). */
#include "cli/cli.h"

#include <jansson.h>
#include <libthinstack/layer.h>
#include <stdlib.h>
#include <string.h>

#define SCHEMA_DIALECT "https://json-schema.org/draft/2020-12/schema"

/* A size as ts_parse_size reads it: bytes, or a number with K/M/G/T/P (and
 * an optional B or iB), or a plain B. */
static json_t *size_schema(void)
{
  return json_pack(
      "{s:s, s:[{s:s, s:i}, {s:s, s:s}]}", "description",
      "bytes, or a number with K, M, G, T or P (powers of 1024): 4096, \"64K\", \"1G\"", "anyOf",
      "type", "integer", "minimum", 0, "type", "string", "pattern",
      "^[0-9]+([KkMmGgTtPp](iB|B)?|[Bb])?$");
}

static json_t *choices_json(const char *choices)
{
  json_t *c = json_array();
  for (const char *b = choices, *e; b && *b; b = *e ? e + 1 : e) {
    e = strchr(b, '|');
    if (!e)
      e = b + strlen(b);
    json_array_append_new(c, json_stringn(b, (size_t)(e - b)));
  }
  return c;
}

/* The "(default X)" a parameter's doc names, as a JSON value of the
 * parameter's type; NULL when it names none that fits. */
static json_t *default_of(const ts_param *p)
{
  const char *d = p->doc ? strstr(p->doc, "(default ") : NULL;
  if (!d)
    return NULL;
  d += strlen("(default ");
  size_t n = strcspn(d, ")");
  if (d[n] != ')' || n == 0 || n > 64)
    return NULL;
  char v[80];
  snprintf(v, sizeof v, "%.*s", (int)n, d);
  switch (p->kind) {
  case TS_PARAM_BOOL:
    if (strcmp(v, "true") == 0 || strcmp(v, "false") == 0)
      return json_boolean(v[0] == 't');
    return NULL;
  case TS_PARAM_ENUM: {
    json_t *c = choices_json(p->choices);
    size_t i;
    json_t *e;
    json_t *found = NULL;
    json_array_foreach(c, i, e)
      if (strcmp(json_string_value(e), v) == 0)
        found = json_string(v);
    json_decref(c);
    return found;
  }
  case TS_PARAM_UINT:
  case TS_PARAM_SIZE: {
    char *end;
    unsigned long long x = strtoull(v, &end, 10);
    if (*end == '\0' && v[0] >= '0' && v[0] <= '9')
      return json_integer((json_int_t)x);
    uint64_t sz;
    if (p->kind == TS_PARAM_SIZE && ts_parse_size(v, &sz) == 0)
      return json_string(v);
    return NULL;
  }
  default:
    return NULL;
  }
}

static json_t *object_schema(const ts_param *params, const char *type, const char *summary);

static json_t *param_schema(const ts_param *p)
{
  json_t *s;
  switch (p->kind) {
  case TS_PARAM_SIZE:
    s = json_pack("{s:s}", "$ref", "#/$defs/size");
    break;
  case TS_PARAM_UINT:
    s = json_pack("{s:s, s:i}", "type", "integer", "minimum", 0);
    break;
  case TS_PARAM_BOOL:
    s = json_pack("{s:s}", "type", "boolean");
    break;
  case TS_PARAM_ENUM:
    s = json_pack("{s:s, s:o}", "type", "string", "enum", choices_json(p->choices));
    break;
  case TS_PARAM_ARRAY:
    s = json_pack("{s:s, s:o}", "type", "array", "items", object_schema(p->fields, NULL, NULL));
    if (p->flags & TS_PARAM_REQUIRED)
      json_object_set_new(s, "minItems", json_integer(1));
    break;
  case TS_PARAM_OBJECT:
    s = object_schema(p->fields, NULL, NULL);
    break;
  case TS_PARAM_ANY:
    s = json_object();
    break;
  case TS_PARAM_CHILD:
  case TS_PARAM_PATH:
  case TS_PARAM_STRING:
  default:
    s = json_pack("{s:s}", "type", "string");
    break;
  }
  char doc[512];
  const char *what = p->kind == TS_PARAM_CHILD  ? "the name of a layer: "
                     : p->kind == TS_PARAM_PATH ? "a path, relative to the configuration's folder: "
                                                : "";
  snprintf(doc, sizeof doc, "%s%s", what, p->doc ? p->doc : "");
  if (doc[0])
    json_object_set_new(s, "description", json_string(doc));
  json_t *d = default_of(p);
  if (d)
    json_object_set_new(s, "default", d);
  return s;
}

/* The schema of an object checked against `params`; a layer's (`type`
 * set) also has "type" and "comment". */
static json_t *object_schema(const ts_param *params, const char *type, const char *summary)
{
  json_t *props = json_object();
  json_t *req = json_array();
  if (type) {
    json_object_set_new(props, "type", json_pack("{s:s}", "const", type));
    json_object_set_new(props, "comment", json_pack("{s:s}", "description", "ignored"));
    json_array_append_new(req, json_string("type"));
  }
  for (const ts_param *p = params; p && p->key; p++) {
    json_object_set_new(props, p->key, param_schema(p));
    if (p->flags & TS_PARAM_REQUIRED)
      json_array_append_new(req, json_string(p->key));
  }
  json_t *s = json_pack("{s:s, s:o, s:o, s:b}", "type", "object", "properties", props, "required",
                        req, "additionalProperties", 0);
  if (summary)
    json_object_set_new(s, "description", json_string(summary));
  return s;
}

static json_t *layer_def_name(const char *type)
{
  char ref[300];
  snprintf(ref, sizeof ref, "#/$defs/layer-%s", type);
  return json_string(ref);
}

/* The whole configuration: the top level, and each layer object checked
 * against its type's schema (chosen by "type"). Without "plugins" the type
 * must be one of the known ones; a plugin's types are not known here, so
 * with "plugins" other types pass unchecked. */
static json_t *config_schema(void)
{
  json_t *defs = json_pack("{s:o}", "size", size_schema());
  json_t *names = json_array();
  json_t *branches = json_array();
  for (size_t i = 0; ts_layer_type_at(i); i++) {
    const ts_layer_type *t = ts_layer_type_at(i);
    char key[300];
    snprintf(key, sizeof key, "layer-%s", t->name);
    json_object_set_new(defs, key, object_schema(t->params, t->name, t->summary));
    json_array_append_new(names, json_string(t->name));
    json_array_append_new(branches, json_pack("{s:{s:{s:{s:s}}, s:[s]}, s:{s:o}}", "if",
                                              "properties", "type", "const", t->name, "required",
                                              "type", "then", "$ref", layer_def_name(t->name)));
  }
  json_object_set_new(defs, "layer",
                      json_pack("{s:s, s:s, s:{s:{s:s, s:s}}, s:[s], s:o}", "description",
                                "a layer: \"type\" and that type's parameters", "type", "object",
                                "properties", "type", "type", "string", "description",
                                "a layer type (thinstack types lists them)", "required", "type",
                                "allOf", branches));
  json_t *props = json_object();
  json_object_set_new(props, "$schema",
                      json_pack("{s:s, s:s}", "type", "string", "description",
                                "the schema an editor checks this file against"));
  json_object_set_new(
      props, "version",
      json_pack("{s:i, s:s}", "const", 1, "description", "the format's version: always 1"));
  json_object_set_new(props, "layers",
                      json_pack("{s:s, s:i, s:s, s:{s:s}}", "type", "object", "minProperties", 1,
                                "description", "layer name to layer object", "additionalProperties",
                                "$ref", "#/$defs/layer"));
  json_object_set_new(props, "exports",
                      json_pack("{s:s, s:b, s:s, s:{s:s}}", "type", "array", "uniqueItems", 1,
                                "description",
                                "the layers users see as devices (FUSE files, NBD exports, the "
                                "CLI's DEV)",
                                "items", "type", "string"));
  json_object_set_new(props, "plugins",
                      json_pack("{s:s, s:s, s:{s:s}}", "type", "array", "description",
                                "shared objects with external layer types, loaded before the "
                                "layers are checked",
                                "items", "type", "string"));
  json_object_set_new(props, "comment", json_pack("{s:s}", "description", "ignored"));

  json_t *root = json_object();
  json_object_set_new(root, "$schema", json_string(SCHEMA_DIALECT));
  json_object_set_new(root, "title", json_string("libthinstack stack configuration"));
  json_object_set_new(root, "description",
                      json_string("named layers wired together by naming children, and the "
                                  "layers exported as devices (thinstack-config(5))"));
  json_object_set_new(root, "type", json_string("object"));
  json_object_set_new(root, "required", json_pack("[s, s]", "version", "layers"));
  json_object_set_new(root, "additionalProperties", json_false());
  json_object_set_new(root, "properties", props);
  json_object_set_new(root, "if", json_pack("{s:{s:[s]}}", "not", "required", "plugins"));
  json_object_set_new(root, "then",
                      json_pack("{s:{s:{s:{s:{s:{s:o}}}}}}", "properties", "layers",
                                "additionalProperties", "properties", "type", "enum", names));
  json_object_set_new(root, "$defs", defs);
  return root;
}

/* One layer type's object alone, with the definitions it refers to. */
static json_t *layer_schema(const ts_layer_type *t)
{
  json_t *s = json_pack("{s:s, s:s}", "$schema", SCHEMA_DIALECT, "title", t->name);
  json_t *o = object_schema(t->params, t->name, t->summary);
  json_object_update(s, o);
  json_decref(o);
  json_object_set_new(s, "$defs", json_pack("{s:o}", "size", size_schema()));
  return s;
}

int ts_cli_schema(int argc, char **argv)
{
  if (ts_cli_help(argc, argv))
    return 0;
  const char *layer = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--layer") == 0 && i + 1 < argc) {
      layer = argv[++i];
    } else if (strncmp(argv[i], "--layer=", 8) == 0) {
      layer = argv[i] + 8;
    } else {
      ts_cli_err("schema: unexpected argument \"%s\"", argv[i]);
      ts_cli_usage(stderr, argv[0]);
      return 2;
    }
  }
  json_t *root;
  if (layer) {
    const ts_layer_type *t = ts_find_layer_type(layer);
    if (!t) {
      ts_cli_err("schema: no layer type \"%s\" (thinstack types lists them)", layer);
      return 2;
    }
    root = layer_schema(t);
  } else {
    root = config_schema();
  }
  char *txt = root ? json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
  json_decref(root);
  if (!txt) {
    ts_cli_err("schema: out of memory");
    return 1;
  }
  printf("%s\n", txt);
  free(txt);
  return 0;
}
