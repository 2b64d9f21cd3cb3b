/* Volumes the pool and the configuration keep together (<libthinstack/thin.h>,
 * ts_volume_*): every change is "pool change + commit, then an atomic
 * rewrite of the configuration".
 *
 * One call is one transaction on the configuration:
 *   begin   take the stack's config mutex and an exclusive flock on the
 *           file (re-opened until the locked file is the one at the path, as
 *           a rename by another process may have replaced it), read it;
 *   edit    change the document read (the edits keep key order: jansson
 *           keeps insertion order, new keys go last);
 *   write   the new text to a temporary file in the same folder, fsync'd;
 *           a failure here changes nothing, so it comes before the pool;
 *   pool    the pool change, committed;
 *   rename  rename over the file, fsync the folder; then the same edit is
 *           made to the stack's own document (what ts_stack_config_json
 *           prints).
 * The temporary file has the configuration's permission bits. A crash
 * between the pool's commit and the rename is what the open-time reports
 * of pool.c (a layer without its volume) and ts__volumes_opened (a volume
 * without a layer) describe.
 */
#include "backends/thin/thin-internal.h"
#include "core/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

void ts__test_crash_point(const char *point)
{
  /* A test hook, documented as one: lets tests stop a command where a
   * crash would, without racing a kill against it. */
  const char *at = getenv("TS_TEST_CRASH_AT");
  if (at && strcmp(at, point) == 0)
    _exit(99);
}

/* ------------------------------------------------------------------------ */
/* The configuration transaction                                             */

struct tx {
  struct ts_stack *s;
  int fd; /* the locked configuration, -1 when the stack has no file */
  mode_t mode;
  json_t *root; /* the document being changed */
  char *tmp;    /* written, not yet renamed */
  const char *path;
};

static const char *cfg_name(const struct tx *t) { return t->path ? t->path : "the configuration"; }

/* Temporary files of `path` (".NAME.XXXXXX" beside it) left by a crash:
 * with the exclusive lock held nobody else is writing one. */
static void remove_stale(const char *path)
{
  const char *slash = strrchr(path, '/');
  char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
  const char *base = slash ? slash + 1 : path;
  DIR *d = dir ? opendir(dir) : NULL;
  size_t bl = strlen(base);
  for (struct dirent *e; d && (e = readdir(d));) {
    const char *n = e->d_name;
    if (n[0] == '.' && strncmp(n + 1, base, bl) == 0 && n[bl + 1] == '.' && strlen(n + bl + 2) == 6)
      unlinkat(dirfd(d), n, 0);
  }
  if (d)
    closedir(d);
  free(dir);
}

static int tx_begin(struct tx *t, struct ts_stack *s, bool shared, ts_error *err)
{
  memset(t, 0, sizeof *t);
  t->s = s;
  t->fd = -1;
  pthread_mutex_lock(&s->config_mu);
  t->path = s->config_path;
  if (!t->path) {
    t->root = json_deep_copy(s->config);
    return t->root ? 0 : ts_error_set(err, -ENOMEM, "out of memory");
  }
  for (int tries = 0;; tries++) {
    int fd = open(t->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
      return ts_error_set(err, -errno, "%s: cannot open the configuration: %s", t->path,
                          strerror(errno));
    if (flock(fd, shared ? LOCK_SH : LOCK_EX) != 0) {
      int e = errno;
      close(fd);
      return ts_error_set(err, -e, "%s: cannot lock the configuration: %s", t->path, strerror(e));
    }
    struct stat a, b;
    if (fstat(fd, &a) == 0 && stat(t->path, &b) == 0 && a.st_ino == b.st_ino &&
        a.st_dev == b.st_dev) {
      t->fd = fd;
      t->mode = a.st_mode & 07777;
      break;
    }
    close(fd); /* replaced while we waited: lock the new one */
    if (tries == 100)
      return ts_error_set(err, -EAGAIN, "%s: the configuration keeps being replaced", t->path);
  }
  if (!shared)
    remove_stale(t->path);
  json_error_t je;
  t->root = json_loadfd(t->fd, JSON_REJECT_DUPLICATES, &je);
  if (!t->root)
    return ts_error_set(err, -EINVAL, "%s:%d:%d: invalid JSON: %s", t->path, je.line, je.column,
                        je.text);
  if (!json_is_object(json_object_get(t->root, "layers")))
    return ts_error_set(err, -EINVAL, "%s: layers: missing or not an object", t->path);
  return 0;
}

static void tx_end(struct tx *t)
{
  if (t->tmp) {
    unlink(t->tmp);
    free(t->tmp);
  }
  if (t->fd >= 0)
    close(t->fd); /* drops the flock */
  json_decref(t->root);
  pthread_mutex_unlock(&t->s->config_mu);
}

static int write_all(int fd, const char *p, size_t n)
{
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0)
      return -errno;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* The new text in a temporary file beside the configuration, on disk. */
static int tx_write(struct tx *t, ts_error *err)
{
  if (!t->path)
    return 0;
  char *text = json_dumps(t->root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
  const char *slash = strrchr(t->path, '/');
  size_t dl = slash ? (size_t)(slash - t->path) + 1 : 0;
  if (!text || asprintf(&t->tmp, "%.*s.%s.XXXXXX", (int)dl, t->path, t->path + dl) < 0) {
    t->tmp = NULL;
    free(text);
    return ts_error_set(err, -ENOMEM, "out of memory");
  }
  int fd = mkostemp(t->tmp, O_CLOEXEC);
  int r = fd < 0 ? -errno : 0;
  if (fd < 0) {
    free(t->tmp);
    t->tmp = NULL;
  }
  if (!r && fchmod(fd, t->mode) != 0)
    r = -errno;
  if (!r)
    r = write_all(fd, text, strlen(text));
  if (!r)
    r = write_all(fd, "\n", 1);
  if (!r && fsync(fd) != 0)
    r = -errno;
  if (fd >= 0 && close(fd) != 0 && !r)
    r = -errno;
  free(text);
  if (r)
    return ts_error_set(
        err, r, "%s: cannot write the new configuration beside it: %s (%s); nothing was changed",
        t->path, ts_strerror(r), ts_err_name(r));
  return 0;
}

typedef int (*edit_fn)(json_t *root, const void *arg);

/* Rename the written file into place, then make the same edit to the
 * stack's document. */
static int tx_commit(struct tx *t, edit_fn edit, const void *arg, ts_error *err)
{
  if (t->path) {
    ts__test_crash_point("config-rename");
    if (rename(t->tmp, t->path) != 0)
      return ts_error_set(err, -errno, "%s: cannot rename the new configuration into place: %s",
                          t->path, strerror(errno));
    free(t->tmp);
    t->tmp = NULL;
    const char *slash = strrchr(t->path, '/');
    char *dir =
        slash ? strndup(t->path, slash == t->path ? 1 : (size_t)(slash - t->path)) : strdup(".");
    int dfd = dir ? open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    int r = dfd < 0 || fsync(dfd) != 0 ? -errno : 0;
    if (dfd >= 0)
      close(dfd);
    free(dir);
    if (r)
      return ts_error_set(err, r, "%s: renamed, but the folder could not be synced: %s", t->path,
                          ts_strerror(r));
  }
  /* The stack's document may hold only part of the file (a pool and what
   * lies below it): edits of layers it lacks are skipped. */
  if (json_is_object(json_object_get(t->s->config, "layers")))
    edit(t->s->config, arg);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Finding things in the document                                            */

static json_t *layers_of(json_t *root) { return json_object_get(root, "layers"); }

static const char *layer_type(json_t *l) { return json_string_value(json_object_get(l, "type")); }

static bool is_type(json_t *l, const char *type)
{
  const char *t = layer_type(l);
  return t && strcmp(t, type) == 0;
}

/* The pool layer `name` (NULL: the only one) of the document, which the
 * stack must hold. */
static int find_pool(struct tx *t, const char *name, const char **pname, struct tp_pool **pool,
                     ts_error *err)
{
  json_t *layers = layers_of(t->root);
  if (!name) {
    size_t n = 0;
    const char *k;
    json_t *v;
    json_object_foreach(layers, k, v)
    {
      if (is_type(v, "thin-pool")) {
        name = k;
        n++;
      }
    }
    if (n != 1)
      return ts_error_set(err, -EINVAL, "%s: %s thin-pool layers: name the pool", cfg_name(t),
                          n ? "several" : "no");
  }
  json_t *pl = json_object_get(layers, name);
  if (!pl)
    return ts_error_set(err, -ENOENT, "%s: layers.%s: no such layer", cfg_name(t), name);
  if (!is_type(pl, "thin-pool"))
    return ts_error_set(err, -EINVAL, "%s: layers.%s: a %s layer, not a thin-pool", cfg_name(t),
                        name, layer_type(pl) ? layer_type(pl) : "untyped");
  ts_dev *d = ts_stack_node(t->s, name);
  struct tp_pool *p = d ? tp_pool_of(d) : NULL;
  if (!p)
    return ts_error_set(err, -ENODEV, "layers.%s: the pool is not open in this stack", name);
  *pname = name;
  *pool = p;
  return 0;
}

/* The thin layer `name`: its pool name and id. */
static int find_thin(struct tx *t, const char *name, json_t **layer, const char **pool,
                     uint32_t *id, ts_error *err)
{
  json_t *l = name ? json_object_get(layers_of(t->root), name) : NULL;
  if (!l)
    return ts_error_set(err, -ENOENT, "%s: layers.%s: no such layer", cfg_name(t),
                        name ? name : "");
  if (!is_type(l, "thin"))
    return ts_error_set(err, -EINVAL, "%s: layers.%s: a %s layer, not a thin volume", cfg_name(t),
                        name, layer_type(l) ? layer_type(l) : "untyped");
  json_t *p = json_object_get(l, "pool"), *i = json_object_get(l, "id");
  if (!json_is_string(p) || !json_is_integer(i) || json_integer_value(i) < 0 ||
      json_integer_value(i) > TS_THIN_MAX_ID)
    return ts_error_set(err, -EINVAL, "%s: layers.%s: needs a \"pool\" name and an \"id\" (0..%u)",
                        cfg_name(t), name, TS_THIN_MAX_ID);
  *layer = l;
  *pool = json_string_value(p);
  *id = (uint32_t)json_integer_value(i);
  return 0;
}

/* The layer naming volume `id` of pool `pool`, or NULL. */
static const char *layer_for(json_t *root, const char *pool, uint32_t id)
{
  const char *k;
  json_t *v;
  json_object_foreach(layers_of(root), k, v)
  {
    const char *p = json_string_value(json_object_get(v, "pool"));
    json_t *i = json_object_get(v, "id");
    if (is_type(v, "thin") && p && strcmp(p, pool) == 0 && json_is_integer(i) &&
        json_integer_value(i) == (json_int_t)id)
      return k;
  }
  return NULL;
}

/* Whether `obj` (checked against `schema`) names layer `name` as a child. */
static bool refers_to(const ts_param *schema, json_t *obj, const char *name)
{
  for (const ts_param *p = schema; p && p->key; p++) {
    json_t *v = json_object_get(obj, p->key);
    if (!v)
      continue;
    if (p->kind == TS_PARAM_CHILD && json_is_string(v) && strcmp(json_string_value(v), name) == 0)
      return true;
    if (p->kind == TS_PARAM_OBJECT && json_is_object(v) && refers_to(p->fields, v, name))
      return true;
    if (p->kind == TS_PARAM_ARRAY && json_is_array(v)) {
      size_t i;
      json_t *e;
      json_array_foreach(v, i, e)
      {
        if (json_is_object(e) && refers_to(p->fields, e, name))
          return true;
      }
    }
  }
  return false;
}

static const char *user_of(json_t *root, const char *name)
{
  const char *k;
  json_t *v;
  json_object_foreach(layers_of(root), k, v)
  {
    const ts_layer_type *t = layer_type(v) ? ts_find_layer_type(layer_type(v)) : NULL;
    if (strcmp(k, name) != 0 && t && refers_to(t->params, v, name))
      return k;
  }
  return NULL;
}

static int check_name(struct tx *t, const char *name, ts_error *err)
{
  if (!name || !name[0] || strlen(name) >= 200)
    return ts_error_set(err, -EINVAL, "a layer name must have 1 to 199 characters");
  for (const char *c = name; *c; c++)
    if ((unsigned char)*c < 0x20)
      return ts_error_set(err, -EINVAL, "a layer name cannot hold control characters");
  if (json_object_get(layers_of(t->root), name))
    return ts_error_set(err, -EEXIST, "%s: layers.%s already exists", cfg_name(t), name);
  return 0;
}

static int check_size(uint64_t size, ts_error *err)
{
  if (size == 0 || size % 512 || size > (1ull << 63))
    return ts_error_set(err, -EINVAL,
                        "volume size %llu: must be a non-zero multiple of 512 bytes up to 8E",
                        (unsigned long long)size);
  return 0;
}

/* The lowest id neither the pool nor a layer of the document uses (a layer
 * whose volume is missing keeps its id: reusing it would hand that layer a
 * stranger's volume). */
static int lowest_free_id(struct tx *t, struct tp_pool *p, const char *pool, uint32_t *id,
                          ts_error *err)
{
  size_t n = 0;
  int r = ts_pool_list_thins(p->layer, NULL, 0, &n, err);
  ts_thin_info *v = r ? NULL : calloc(n + 1, sizeof *v);
  if (!r && !v)
    r = ts_error_set(err, -ENOMEM, "out of memory");
  if (!r)
    r = ts_pool_list_thins(p->layer, v, n, &n, err);
  uint32_t cand = 0;
  for (size_t i = 0; !r && i <= n;) {
    if (i < n && v[i].id < cand) {
      i++;
    } else if ((i < n && v[i].id == cand) || layer_for(t->root, pool, cand)) {
      if (cand++ == TS_THIN_MAX_ID)
        r = ts_error_set(err, -ENOSPC, "layers.%s: every volume id is in use", pool);
    } else {
      break;
    }
  }
  free(v);
  if (!r)
    *id = cand;
  return r;
}

/* ------------------------------------------------------------------------ */
/* Edits (made to the file's document, then to the stack's)                  */

struct add_edit {
  const char *name;
  json_t *layer; /* borrowed; copied into each document */
  bool export_it;
};

static int add_layer(json_t *root, const void *arg)
{
  const struct add_edit *a = arg;
  if (json_object_set_new(layers_of(root), a->name, json_deep_copy(a->layer)))
    return -ENOMEM;
  if (a->export_it) {
    json_t *ex = json_object_get(root, "exports");
    if (!ex && json_object_set_new(root, "exports", ex = json_array()))
      return -ENOMEM;
    if (json_is_array(ex) && json_array_append_new(ex, json_string(a->name)))
      return -ENOMEM;
  }
  return 0;
}

static int remove_layer(json_t *root, const void *arg)
{
  const char *name = arg;
  json_object_del(layers_of(root), name);
  json_t *ex = json_object_get(root, "exports");
  for (size_t i = json_array_size(ex); i-- > 0;)
    if (json_is_string(json_array_get(ex, i)) &&
        strcmp(json_string_value(json_array_get(ex, i)), name) == 0)
      json_array_remove(ex, i);
  return 0;
}

struct size_edit {
  const char *name;
  uint64_t size;
};

static int set_size(json_t *root, const void *arg)
{
  const struct size_edit *e = arg;
  json_t *l = json_object_get(layers_of(root), e->name);
  if (!json_is_object(l))
    return 0;
  char sz[32];
  ts_format_size(e->size, sz, sizeof sz);
  return json_object_set_new(l, "size", json_string(sz)) ? -ENOMEM : 0;
}

/* ------------------------------------------------------------------------ */
/* The calls                                                                 */

int ts_stack_set_config_path(ts_stack *s, const char *path, ts_error *err)
{
  char *abs = path ? realpath(path, NULL) : NULL; /* a rewrite replaces the file, not a link */
  if (path && !abs) {
    char cwd[PATH_MAX];
    if (path[0] != '/' && !getcwd(cwd, sizeof cwd))
      return ts_error_set(err, -errno, "cannot find the current folder: %s", strerror(errno));
    if (asprintf(&abs, "%s%s%s", path[0] == '/' ? "" : cwd, path[0] == '/' ? "" : "/", path) < 0)
      return ts_error_set(err, -ENOMEM, "out of memory");
  }
  pthread_mutex_lock(&s->config_mu);
  free(s->config_path);
  s->config_path = abs;
  pthread_mutex_unlock(&s->config_mu);
  return 0;
}

const char *ts_stack_config_path(const ts_stack *s) { return s->config_path; }

/* Create or snapshot: the id chosen, the layer written, the pool changed,
 * the file renamed. A failed rename deletes the new volume again. */
static int add_volume(struct tx *t, struct tp_pool *p, const char *pool, const char *name,
                      uint32_t id, int32_t origin_id, json_t *layer, uint32_t flags, ts_error *err)
{
  struct add_edit a = { name, layer, flags & TS_VOLUME_EXPORT };
  int r = add_layer(t->root, &a);
  if (r)
    return ts_error_set(err, r, "out of memory");
  if ((r = tx_write(t, err)))
    return r;
  r = origin_id < 0 ? ts_pool_create_thin(p->layer, id, err)
                    : ts_pool_create_snap(p->layer, id, (uint32_t)origin_id, err);
  if (r)
    return r;
  if ((r = tx_commit(t, add_layer, &a, err))) {
    ts_error e2 = { 0 };
    if (ts_pool_delete_thin(p->layer, id, &e2) == 0)
      return r;
    return ts_error_set(err, r, "%s; volume %u of pool %s stays without a layer: %s", err->msg, id,
                        pool, e2.msg);
  }
  return 0;
}

int ts_volume_create(ts_stack *s, const char *pool, const char *name, uint64_t size, uint32_t id,
                     uint32_t flags, uint32_t *id_out, ts_error *err)
{
  struct tx t;
  struct tp_pool *p = NULL;
  const char *pname;
  ts_error_clear(err);
  int r = tx_begin(&t, s, false, err);
  if (!r)
    r = find_pool(&t, pool, &pname, &p, err);
  if (!r)
    r = check_name(&t, name, err);
  if (!r)
    r = check_size(size, err);
  if (!r && id == TS_VOLUME_ANY_ID)
    r = lowest_free_id(&t, p, pname, &id, err);
  else if (!r && id > TS_THIN_MAX_ID)
    r = ts_error_set(err, -EINVAL, "volume id %u is out of range (0..%u)", id, TS_THIN_MAX_ID);
  else if (!r && layer_for(t.root, pname, id))
    r = ts_error_set(err, -EEXIST, "%s: layers.%s already names volume %u of pool %s", cfg_name(&t),
                     layer_for(t.root, pname, id), id, pname);
  if (!r) {
    char sz[32];
    ts_format_size(size, sz, sizeof sz);
    json_t *layer = json_pack("{s:s,s:s,s:I,s:s}", "type", "thin", "pool", pname, "id",
                              (json_int_t)id, "size", sz);
    r = layer ? add_volume(&t, p, pname, name, id, -1, layer, flags, err)
              : ts_error_set(err, -ENOMEM, "out of memory");
    json_decref(layer);
  }
  if (!r && id_out)
    *id_out = id;
  tx_end(&t);
  return r;
}

int ts_volume_snapshot(ts_stack *s, const char *origin, const char *name, uint32_t flags,
                       uint32_t *id_out, ts_error *err)
{
  struct tx t;
  struct tp_pool *p = NULL;
  json_t *ol = NULL;
  const char *pool = NULL, *pname;
  uint32_t oid = 0, id = 0;
  ts_error_clear(err);
  int r = tx_begin(&t, s, false, err);
  if (!r)
    r = find_thin(&t, origin, &ol, &pool, &oid, err);
  if (!r)
    r = find_pool(&t, pool, &pname, &p, err);
  if (!r)
    r = check_name(&t, name, err);
  if (!r)
    r = lowest_free_id(&t, p, pname, &id, err);
  if (!r) {
    json_t *layer =
        json_pack("{s:s,s:s,s:I,s:O,s:s}", "type", "thin", "pool", pname, "id", (json_int_t)id,
                  "size", json_object_get(ol, "size"), "origin", origin);
    r = layer ? add_volume(&t, p, pname, name, id, (int32_t)oid, layer, flags, err)
              : ts_error_set(err, -ENOMEM, "out of memory");
    json_decref(layer);
  }
  if (!r && id_out)
    *id_out = id;
  tx_end(&t);
  return r;
}

int ts_volume_delete(ts_stack *s, const char *name, ts_error *err)
{
  struct tx t;
  struct tp_pool *p = NULL;
  json_t *l;
  const char *pool = NULL, *pname, *user;
  uint32_t id = 0;
  ts_error_clear(err);
  int r = tx_begin(&t, s, false, err);
  if (!r)
    r = find_thin(&t, name, &l, &pool, &id, err);
  if (!r && (user = user_of(t.root, name)))
    r = ts_error_set(err, -EBUSY, "%s: layers.%s stacks on layers.%s: delete or change it first",
                     cfg_name(&t), user, name);
  if (!r && ts_stack_node(s, name))
    r = ts_error_set(err, -EBUSY, "layers.%s: the volume is open in this stack", name);
  if (!r)
    r = find_pool(&t, pool, &pname, &p, err);
  if (!r)
    r = remove_layer(t.root, name);
  if (!r)
    r = tx_write(&t, err);
  /* Without its volume (an interrupted delete), the layer goes alone. */
  if (!r && tp_has_volume(p, id))
    r = ts_pool_delete_thin(p->layer, id, err);
  if (!r && (r = tx_commit(&t, remove_layer, name, err)))
    ts_error_set(err, r,
                 "%s; volume %u is deleted from pool %s: run the delete again to remove the layer",
                 err->msg, id, pname);
  tx_end(&t);
  return r;
}

int ts_volume_delete_id(ts_stack *s, const char *pool, uint32_t id, ts_error *err)
{
  struct tx t;
  struct tp_pool *p = NULL;
  const char *pname, *user;
  ts_error_clear(err);
  int r = tx_begin(&t, s, false, err);
  if (!r)
    r = find_pool(&t, pool, &pname, &p, err);
  if (!r && (user = layer_for(t.root, pname, id)))
    r = ts_error_set(err, -EBUSY,
                     "%s: layers.%s names volume %u of pool %s: delete it by that name",
                     cfg_name(&t), user, id, pname);
  if (!r)
    r = ts_pool_delete_thin(p->layer, id, err);
  tx_end(&t);
  return r;
}

int ts_volume_resize(ts_stack *s, const char *name, uint64_t size, uint32_t flags, ts_error *err)
{
  struct tx t;
  struct tp_pool *p = NULL;
  json_t *l;
  const char *pool = NULL, *pname;
  uint32_t id = 0;
  ts_error_clear(err);
  int r = tx_begin(&t, s, false, err);
  if (!r)
    r = find_thin(&t, name, &l, &pool, &id, err);
  if (!r)
    r = check_size(size, err);
  if (!r)
    r = find_pool(&t, pool, &pname, &p, err);
  if (r) {
    tx_end(&t);
    return r;
  }
  ts_dev *node = ts_stack_node(s, name);
  uint64_t cur = node ? ts_dev_size(node) : ts_param_size(l, "size", 0);
  struct size_edit e = { name, size };
  if ((r = set_size(t.root, &e)) || (r = tx_write(&t, err))) {
    tx_end(&t);
    return r ? r : -ENOMEM;
  }
  if (size < cur) {
    uint64_t bs = tp_block_size(p), mapped, zero, end;
    uint64_t keep = (size + bs - 1) / bs; /* blocks that stay, the partial last one too */
    if (node)
      r = ts_error_set(err, -EBUSY, "layers.%s: the volume is open in this stack: it can only grow",
                       name);
    else if ((r = tp_vol_usage(p, id, &mapped, &zero, &end)))
      r = ts_error_set(err, r, "layers.%s: pool %s has no volume %u", name, pname, id);
    else if (end > keep * bs && !(flags & TS_VOLUME_DISCARD_BEYOND))
      r = ts_error_set(
          err, -ENOTEMPTY,
          "layers.%s: volume %u has blocks mapped up to byte %llu, past the new size %llu:"
          " refusing to drop them (--discard-beyond discards them)",
          name, id, (unsigned long long)end, (unsigned long long)size);
    else if (end > keep * bs)
      r = tp_unmap_from(p, id, keep, err);
  }
  if (!r)
    r = tx_commit(&t, set_size, &e, err);
  if (!r && node && size > cur)
    r = ts_dev_grow(node, size, err);
  tx_end(&t);
  return r;
}

int ts_stack_pool_extend(ts_stack *s, const char *pool, uint64_t new_size, uint32_t flags,
                         ts_error *err)
{
  bool meta = flags & TS_POOL_EXTEND_METADATA;
  const char *which = meta ? "metadata" : "data";
  struct tx t;
  struct tp_pool *p = NULL;
  const char *pname;
  ts_error_clear(err);
  int r = tx_begin(&t, s, false, err);
  if (!r)
    r = find_pool(&t, pool, &pname, &p, err);
  if (r) {
    tx_end(&t);
    return r;
  }
  ts_pool_status st;
  ts_pool_get_status(p->layer, &st, NULL);
  uint64_t unit = meta ? 4096 : st.block_size;
  uint64_t cur = (meta ? st.metadata_blocks : st.data_blocks) * unit;
  uint64_t max = meta ? TMD_MAX_METADATA_BLOCKS : TMD_MAX_DATA_BLOCKS;
  char u[32];
  ts_format_size(unit, u, sizeof u);
  if (new_size < cur || new_size % unit || new_size / unit > max)
    r = ts_error_set(
        err, -EINVAL,
        "layers.%s: new %s size %llu: must be a multiple of %s, at least the %llu bytes"
        " the pool has, and at most %llu blocks",
        pname, which, (unsigned long long)new_size, u, (unsigned long long)cur,
        (unsigned long long)max);
  if (r) {
    tx_end(&t);
    return r;
  }
  /* The file layer below whose configured size moves with it. */
  json_t *layers = layers_of(t.root);
  const char *cname = json_string_value(json_object_get(json_object_get(layers, pname), which));
  json_t *cl = cname ? json_object_get(layers, cname) : NULL;
  /* Also when the space already has the size but the file layer's "size"
   * lags (an extend stopped before its rename, finished now). */
  bool edit = cl && is_type(cl, "file") && json_object_get(cl, "size") &&
              ts_param_size(cl, "size", 0) != new_size;
  if (new_size == cur && !edit) {
    tx_end(&t);
    return 0;
  }
  ts_dev *child = cname ? ts_stack_node(s, cname) : NULL;
  struct size_edit e = { cname, new_size };
  if (edit && ((r = set_size(t.root, &e)) || (r = tx_write(&t, err)))) {
    tx_end(&t);
    return r ? r : -ENOMEM;
  }
  if (child && ts_dev_size(child) < new_size && (r = ts_dev_grow(child, new_size, err))) {
    char m[sizeof err->msg];
    snprintf(m, sizeof m, "%s", err && err->msg[0] ? err->msg : ts_strerror(r));
    ts_error_set(err, r, "layers.%s: cannot grow the %s layer: %s; nothing was changed", pname,
                 which, m);
    tx_end(&t);
    return r;
  }
  if (edit && (r = tx_commit(&t, set_size, &e, err))) {
    tx_end(&t);
    return r;
  }
  r = (meta ? ts_pool_extend_metadata : ts_pool_extend)(p->layer, new_size, err);
  if (r && edit) {
    char m[sizeof err->msg];
    snprintf(m, sizeof m, "%s", err->msg);
    ts_error_set(err, r,
                 "%s (layers.%s and its file are %llu bytes now: the pool takes the space when it"
                 " is opened again)",
                 m, cname, (unsigned long long)new_size);
  }
  tx_end(&t);
  return r;
}

static void fill_name(char *dst, size_t n, const char *src)
{
  snprintf(dst, n, "%s", src ? src : "");
}

int ts_volume_list(ts_stack *s, const char *pool, ts_volume_info *out, size_t max, size_t *count,
                   ts_error *err)
{
  struct tx t;
  ts_error_clear(err);
  int r = tx_begin(&t, s, true, err);
  size_t n = 0;
  for (size_t k = 0; !r && k < ts_stack_nnodes(s); k++) {
    ts_dev *d = ts_stack_node_at(s, k);
    struct tp_pool *p = tp_pool_of(d);
    if (!p || (pool && strcmp(pool, ts_dev_name(d)) != 0))
      continue;
    const char *pname = ts_dev_name(d);
    size_t nv = 0;
    ts_thin_info *v = NULL;
    if (!(r = ts_pool_list_thins(d, NULL, 0, &nv, err))) {
      v = calloc(nv + 1, sizeof *v);
      r = v ? ts_pool_list_thins(d, v, nv, &nv, err) : ts_error_set(err, -ENOMEM, "out of memory");
    }
    for (size_t i = 0; !r && i < nv; i++, n++) {
      if (n >= max)
        continue;
      ts_volume_info *o = &out[n];
      memset(o, 0, sizeof *o);
      const char *lname = layer_for(t.root, pname, v[i].id);
      json_t *l = lname ? json_object_get(layers_of(t.root), lname) : NULL;
      fill_name(o->name, sizeof o->name, lname);
      fill_name(o->pool, sizeof o->pool, pname);
      fill_name(o->origin, sizeof o->origin, json_string_value(json_object_get(l, "origin")));
      o->id = v[i].id;
      o->in_pool = true;
      o->open = v[i].open;
      o->size = v[i].open ? v[i].size : ts_param_size(l, "size", 0);
      tp_vol_usage(p, v[i].id, &o->mapped_bytes, &o->provisioned_bytes, &o->highest_mapped);
    }
    /* Layers naming a volume the pool lacks. */
    const char *key;
    json_t *l;
    json_object_foreach(layers_of(t.root), key, l)
    {
      const char *lp = json_string_value(json_object_get(l, "pool"));
      json_t *i = json_object_get(l, "id");
      if (r || !is_type(l, "thin") || !lp || strcmp(lp, pname) || !json_is_integer(i) ||
          json_integer_value(i) < 0 || json_integer_value(i) > TS_THIN_MAX_ID ||
          tp_has_volume(p, (uint32_t)json_integer_value(i)))
        continue;
      if (n < max) {
        ts_volume_info *o = &out[n];
        memset(o, 0, sizeof *o);
        fill_name(o->name, sizeof o->name, key);
        fill_name(o->pool, sizeof o->pool, pname);
        fill_name(o->origin, sizeof o->origin, json_string_value(json_object_get(l, "origin")));
        o->id = (uint32_t)json_integer_value(i);
        o->size = ts_param_size(l, "size", 0);
      }
      n++;
    }
    free(v);
  }
  if (!r && pool && !ts_stack_node(s, pool))
    r = ts_error_set(err, -ENOENT, "layers.%s: no such pool in this stack", pool);
  if (!r)
    *count = n;
  tx_end(&t);
  return r;
}

void ts__volumes_opened(struct ts_stack *s)
{
  const char *cfg = s->config_path ? s->config_path : "CONFIG";
  for (size_t k = 0; k < s->nnodes; k++) {
    ts_dev *d = s->nodes[k];
    if (!tp_pool_of(d))
      continue;
    size_t n = 0;
    if (ts_pool_list_thins(d, NULL, 0, &n, NULL) || !n)
      continue;
    ts_thin_info *v = calloc(n, sizeof *v);
    if (v && ts_pool_list_thins(d, v, n, &n, NULL) == 0)
      for (size_t i = 0; i < n; i++)
        if (!v[i].open)
          ts_layer_event(
              d, "volume-not-in-config",
              "volume %u (%llu bytes mapped) is in the pool but no layer of the configuration"
              " names it (as after a `thin create` or `thin snap` that did not finish):"
              " `thinstack thin delete %s --pool %s --id %u` deletes it",
              v[i].id, (unsigned long long)v[i].mapped_bytes, cfg, ts_dev_name(d), v[i].id);
    free(v);
  }
}
