/* thinstack repair CONFIG POOL [-o NEW_METADATA]: rebuild a pool's metadata
 * from what can still be read of it (ts_pool_repair), as thin_repair does. */
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

#include <libthinstack/thinstack.h>

static const char repair_help[] =
    "  Rebuild the metadata of thin-pool POOL of CONFIG from what can still be read\n"
    "  of it, as thin_repair does: every readable node of the device and mapping\n"
    "  trees gives up its volumes and mappings, damaged ones are passed over (their\n"
    "  mappings are lost), and the space maps are recomputed. With -o the rebuilt\n"
    "  metadata goes to NEW_METADATA (created with the old file's size; point the\n"
    "  metadata layer at it afterwards) and the old file is only read; without it,\n"
    "  the file is rebuilt in place, the new pool written beside the old one and\n"
    "  its superblock last. The stack must not be open. A damaged superblock is\n"
    "  not repaired (nothing names the trees then). The metadata layer must be a\n"
    "  file layer.\n";

/* The path of POOL's metadata file, resolved against CONFIG's directory;
 * NULL after a message. */
static char *metadata_path(const char *config, const char *pool)
{
  json_error_t je;
  json_t *root = json_load_file(config, JSON_REJECT_DUPLICATES, &je);
  if (!root) {
    ts_cli_err("%s:%d:%d: %s", config, je.line, je.column, je.text);
    return NULL;
  }
  json_t *layers = json_object_get(root, "layers");
  json_t *pl = json_object_get(layers, pool);
  const char *type = json_string_value(json_object_get(pl, "type"));
  const char *meta = json_string_value(json_object_get(pl, "metadata"));
  json_t *ml = meta ? json_object_get(layers, meta) : NULL;
  const char *mtype = json_string_value(json_object_get(ml, "type"));
  const char *path = json_string_value(json_object_get(ml, "path"));
  char *out = NULL;
  if (!pl)
    ts_cli_err("%s: no layer named \"%s\" in \"layers\"", config, pool);
  else if (!type || strcmp(type, "thin-pool"))
    ts_cli_err("%s: layers.%s is a %s layer, not a thin-pool", config, pool,
               type ? type : "typeless");
  else if (!ml || !mtype || strcmp(mtype, "file") || !path)
    ts_cli_err("%s: layers.%s.metadata is not a file layer: repair works on a metadata file",
               config, pool);
  else if (path[0] == '/' || !strchr(config, '/'))
    out = strdup(path);
  else if (asprintf(&out, "%.*s/%s", (int)(strrchr(config, '/') - config), config, path) < 0)
    out = NULL;
  json_decref(root);
  return out;
}

int ts_cli_repair(int argc, char **argv)
{
  const char *pos[2], *output = NULL;
  int npos = 0;
  bool json = false;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
      printf("usage: thinstack repair CONFIG POOL [-o NEW_METADATA] [--json]\n%s", repair_help);
      return 0;
    }
  }
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--json")) {
      json = true;
    } else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
      if (i + 1 == argc) {
        ts_cli_err("repair: %s needs a file", a);
        return 2;
      }
      output = argv[++i];
    } else if (a[0] == '-' && a[1]) {
      ts_cli_err("repair: unknown option %s (thinstack repair --help)", a);
      return 2;
    } else if (npos == 2) {
      ts_cli_err("repair: unexpected argument \"%s\"", a);
      return 2;
    } else {
      pos[npos++] = a;
    }
  }
  if (npos != 2) {
    ts_cli_err("repair: missing arguments (thinstack repair --help)");
    return 2;
  }
  char *meta = metadata_path(pos[0], pos[1]);
  if (!meta)
    return 1;
  ts_pool_repair_result res;
  ts_error err = { 0 };
  int r = ts_pool_repair(meta, output, &res, &err);
  if (r) {
    ts_cli_err("repair: %s", err.msg[0] ? err.msg : ts_strerror(r));
    free(meta);
    return 1;
  }
  const char *dest = output ? output : meta;
  if (json) {
    json_t *doc =
        json_pack("{s:{s:s,s:s,s:s,s:I,s:I,s:I,s:I,s:I}}", "repaired", "pool", pos[1], "metadata",
                  meta, "output", dest, "volumes", (json_int_t)res.devices, "mappings",
                  (json_int_t)res.mappings, "damaged_nodes", (json_int_t)res.nodes_damaged,
                  "dropped_mappings", (json_int_t)res.mappings_dropped, "volumes_without_details",
                  (json_int_t)res.devices_without_details);
    char *txt = json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    printf("%s\n", txt ? txt : "null");
    free(txt);
    json_decref(doc);
  } else {
    printf("pool %s repaired into %s: %llu volumes, %llu mappings kept; %llu damaged nodes passed "
           "over, %llu mappings dropped, %llu volumes without details\n",
           pos[1], dest, (unsigned long long)res.devices, (unsigned long long)res.mappings,
           (unsigned long long)res.nodes_damaged, (unsigned long long)res.mappings_dropped,
           (unsigned long long)res.devices_without_details);
  }
  free(meta);
  return 0;
}
