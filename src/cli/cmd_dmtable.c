/* dm-table: the dmsetup commands that activate a stack in the kernel's
 * device-mapper, over the block devices the leaf layers are bound to. */
#include "cli/cli.h"

#include <jansson.h>
#include <libthinstack/layer.h>
#include <stdlib.h>
#include <string.h>

struct binding {
  const char *layer;
  const char *path;
};

struct dmt {
  ts_stack *s;
  struct binding *bind;
  size_t nbind;
  char **missing; /* referenced layers that have neither a dm twin nor a binding */
  size_t nmissing;
  const char **created; /* layers printed so far, children before parents */
  size_t ncreated;
};

static const char *bound_path(const struct dmt *t, const char *layer)
{
  for (size_t i = 0; i < t->nbind; i++)
    if (strcmp(t->bind[i].layer, layer) == 0)
      return t->bind[i].path;
  return NULL;
}

/* Only a layer that printed a table has a /dev/mapper device: a kernel
 * layer over a file, say, prints none although its type can. */
static bool created(const struct dmt *t, const char *layer)
{
  for (size_t i = 0; i < t->ncreated; i++)
    if (strcmp(t->created[i], layer) == 0)
      return true;
  return false;
}

static void note_missing(struct dmt *t, const char *name)
{
  for (size_t i = 0; i < t->nmissing; i++)
    if (strcmp(t->missing[i], name) == 0)
      return;
  char **m = realloc(t->missing, (t->nmissing + 1) * sizeof *m);
  if (!m)
    return;
  t->missing = m;
  t->missing[t->nmissing++] = strdup(name);
}

/* The layers print their children as <name>; a bound layer becomes its
 * path and a layer with a dm twin becomes /dev/mapper/<name>. */
static char *resolve(struct dmt *t, const char *line)
{
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  if (!f)
    return NULL;
  for (const char *p = line; *p;) {
    const char *end = *p == '<' ? strchr(p, '>') : NULL;
    if (!end) {
      fputc(*p++, f);
      continue;
    }
    char name[256];
    size_t n = (size_t)(end - p - 1);
    if (n >= sizeof name)
      n = sizeof name - 1;
    memcpy(name, p + 1, n);
    name[n] = 0;
    ts_dev *d = ts_stack_node(t->s, name);
    const char *path = bound_path(t, name);
    if (path)
      fputs(path, f);
    else if (d && created(t, name))
      fprintf(f, "/dev/mapper/%s", name);
    else
      note_missing(t, name);
    p = end + 1;
  }
  fclose(f);
  return buf;
}

/* dmsetup's --concise format separates fields with ',' and devices with ';'. */
static void put_concise_escaped(FILE *f, const char *s)
{
  for (; *s; s++) {
    if (*s == ',' || *s == ';' || *s == '\\')
      fputc('\\', f);
    fputc(*s, f);
  }
}

/* A crypt layer's table names the logon key thinstack:<layer>; say how to
 * load it without ever printing it. */
static void print_key_command(FILE *out, ts_dev *d)
{
  char *js = ts_dev_status_json(d);
  json_t *st = js ? json_loads(js, 0, NULL) : NULL;
  json_t *layer = st ? json_object_get(st, "layer") : NULL;
  const char *src = layer ? json_string_value(json_object_get(layer, "key_source")) : NULL;
  if (src && strcmp(src, "config") != 0)
    fprintf(out, "keyctl padd logon thinstack:%s @u < '%s'\n", ts_dev_name(d), src);
  else
    fprintf(out, "# load the key of %s (given in the configuration) as raw bytes:\n"
                 "# keyctl padd logon thinstack:%s @u < KEYFILE\n",
            ts_dev_name(d), ts_dev_name(d));
  json_decref(st);
  free(js);
}

int ts_cli_dm_table(int argc, char **argv)
{
  if (ts_cli_help(argc, argv))
    return 0;
  struct dmt t = { 0 };
  const char *config = NULL;
  bool concise = false;
  int status = 0;
  t.bind = calloc((size_t)argc, sizeof *t.bind);
  if (!t.bind)
    return 1;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--concise") == 0) {
      concise = true;
    } else if (strcmp(argv[i], "--device") == 0 || strncmp(argv[i], "--device=", 9) == 0) {
      const char *v = argv[i][8] == '=' ? argv[i] + 9 : (i + 1 < argc ? argv[++i] : NULL);
      const char *eq = v ? strchr(v, '=') : NULL;
      if (!eq || eq == v || !eq[1]) {
        ts_cli_err("%s: --device takes LAYER=PATH, got \"%s\"", argv[0], v ? v : "");
        free(t.bind);
        return 2;
      }
      char *layer = strndup(v, (size_t)(eq - v));
      if (!layer) {
        ts_cli_err("%s: out of memory", argv[0]);
        status = 1;
        break;
      }
      t.bind[t.nbind].layer = layer;
      t.bind[t.nbind++].path = eq + 1;
    } else if (argv[i][0] == '-' && argv[i][1]) {
      ts_cli_err("%s: unknown option %s", argv[0], argv[i]);
      status = 2;
    } else if (config) {
      ts_cli_err("%s: unexpected argument \"%s\"", argv[0], argv[i]);
      status = 2;
    } else {
      config = argv[i];
    }
  }
  if (!config && !status) {
    ts_cli_usage(stderr, argv[0]);
    status = 2;
  }
  ts_stack *s = status ? NULL : ts_cli_open(config, TS_OPEN_READ_ONLY);
  if (!s && !status)
    status = 1;
  t.s = s;
  for (size_t i = 0; s && i < t.nbind; i++)
    if (!ts_stack_node(s, t.bind[i].layer)) {
      ts_cli_err("%s: --device %s=%s: no layer named \"%s\" in %s", argv[0], t.bind[i].layer,
                 t.bind[i].path, t.bind[i].layer, config);
      status = 2;
    }

  /* Nodes come children first, the order dmsetup must create them in. */
  char *text = NULL, *keys = NULL;
  size_t tlen = 0, klen = 0;
  FILE *tf = open_memstream(&text, &tlen), *kf = open_memstream(&keys, &klen);
  size_t ndm = 0;
  for (size_t i = 0; !status && tf && kf && i < ts_stack_nnodes(s); i++) {
    ts_dev *d = ts_stack_node_at(s, i);
    const ts_layer_type *lt = ts_find_layer_type(ts_dev_type(d));
    if (!lt || !lt->dm_table || bound_path(&t, ts_dev_name(d)))
      continue;
    char *raw = lt->dm_table(d);
    if (!raw)
      continue;
    char *line = resolve(&t, raw);
    free(raw);
    const char **c = line ? realloc(t.created, (t.ncreated + 1) * sizeof *c) : NULL;
    if (c) {
      t.created = c;
      t.created[t.ncreated++] = ts_dev_name(d);
    }
    if (!c) {
      free(line);
      ts_cli_err("%s: out of memory", argv[0]);
      status = 1;
      break;
    }
    if (strcmp(ts_dev_type(d), "crypt") == 0)
      print_key_command(kf, d);
    if (concise) {
      fprintf(tf, "%s", ndm ? ";" : "");
      put_concise_escaped(tf, ts_dev_name(d));
      fprintf(tf, ",,,rw");
      for (char *l = strtok(line, "\n"); l; l = strtok(NULL, "\n")) {
        fputc(',', tf);
        put_concise_escaped(tf, l);
      }
    } else if (strchr(line, '\n')) {
      fprintf(tf, "printf '%%s\\n'");
      for (char *l = strtok(line, "\n"); l; l = strtok(NULL, "\n"))
        fprintf(tf, " '%s'", l);
      fprintf(tf, " | dmsetup create %s\n", ts_dev_name(d));
    } else {
      fprintf(tf, "dmsetup create %s --table '%s'\n", ts_dev_name(d), line);
    }
    ndm++;
    free(line);
  }
  if (tf)
    fclose(tf);
  if (kf)
    fclose(kf);
  if (!status && t.nmissing) {
    char *list = NULL;
    size_t llen = 0;
    FILE *lf = open_memstream(&list, &llen);
    for (size_t i = 0; lf && i < t.nmissing; i++) {
      ts_dev *d = ts_stack_node(s, t.missing[i]);
      fprintf(lf, "%s%s (%s, %llu bytes)", i ? ", " : "", t.missing[i], d ? ts_dev_type(d) : "?",
              d ? (unsigned long long)ts_dev_size(d) : 0ULL);
    }
    if (lf)
      fclose(lf);
    ts_cli_err("%s: %s: bind these layers to block devices with --device LAYER=PATH: %s",
               argv[0], config, list ? list : "?");
    free(list);
    status = 1;
  } else if (!status && !ndm) {
    ts_cli_err("%s: %s: no layer has a kernel device-mapper equivalent", argv[0], config);
    status = 1;
  } else if (!status) {
    /* With --concise stdout is the one line `dmsetup create --concise`
     * takes; the key commands that must run first go to stderr. */
    fputs(keys ? keys : "", concise ? stderr : stdout);
    fputs(text ? text : "", stdout);
    if (concise)
      fputc('\n', stdout);
  }
  free(text);
  free(keys);
  for (size_t i = 0; i < t.nmissing; i++)
    free(t.missing[i]);
  free(t.missing);
  free(t.created);
  for (size_t i = 0; i < t.nbind; i++)
    free((char *)t.bind[i].layer);
  free(t.bind);
  return s ? ts_cli_close(s, status) : status;
}
