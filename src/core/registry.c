/* Layer type registry: built-in types plus types loaded from shared objects. */
#include "core/internal.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define X(id) extern const ts_layer_type ts__##id##_layer_type;
#include "core/builtin-layers.h"
#undef X

static const ts_layer_type *const builtins[] = {
#define X(id) &ts__##id##_layer_type,
#include "core/builtin-layers.h"
#undef X
};

#define MAX_TYPES 128
static const ts_layer_type *types[MAX_TYPES];
static size_t ntypes;
static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t reg_once = PTHREAD_ONCE_INIT;

static int validate_type(const ts_layer_type *t)
{
  if (!t || t->abi_version != TS_LAYER_ABI_VERSION || t->struct_size < offsetof(ts_layer_type, dm_table))
    return -EINVAL;
  if (!t->name || !*t->name || !t->open || !t->limits || !t->submit)
    return -EINVAL;
  return 0;
}

static int add_locked(const ts_layer_type *t)
{
  int r = validate_type(t);
  if (r)
    return r;
  for (size_t i = 0; i < ntypes; i++)
    if (strcmp(types[i]->name, t->name) == 0)
      return types[i] == t ? 0 : -EEXIST;
  if (ntypes == MAX_TYPES)
    return -ENOSPC;
  types[ntypes++] = t;
  return 0;
}

static void init_builtins(void)
{
  for (size_t i = 0; i < sizeof builtins / sizeof builtins[0]; i++)
    add_locked(builtins[i]);
}

void ts__registry_init(void) { pthread_once(&reg_once, init_builtins); }

int ts_register_layer_type(const ts_layer_type *type)
{
  ts__registry_init();
  pthread_mutex_lock(&reg_lock);
  int r = add_locked(type);
  pthread_mutex_unlock(&reg_lock);
  return r;
}

const ts_layer_type *ts_find_layer_type(const char *name)
{
  ts__registry_init();
  const ts_layer_type *t = NULL;
  pthread_mutex_lock(&reg_lock);
  for (size_t i = 0; i < ntypes && !t; i++)
    if (strcmp(types[i]->name, name) == 0)
      t = types[i];
  pthread_mutex_unlock(&reg_lock);
  return t;
}

const ts_layer_type *ts_layer_type_at(size_t i)
{
  ts__registry_init();
  pthread_mutex_lock(&reg_lock);
  const ts_layer_type *t = i < ntypes ? types[i] : NULL;
  pthread_mutex_unlock(&reg_lock);
  return t;
}

int ts_load_layer_module(const char *path, ts_error *err)
{
  ts__registry_init();
  /* Modules stay loaded for the life of the process: registered tables point
   * into them. */
  void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!h)
    return ts_error_set(err, -ENOENT, "%s: cannot load layer module: %s", path, dlerror());
  const ts_layer_type *const *list = dlsym(h, "ts_layer_types");
  if (!list) {
    dlclose(h);
    return ts_error_set(err, -EINVAL, "%s: not a layer module: no ts_layer_types symbol", path);
  }
  for (; *list; list++) {
    int r = validate_type(*list);
    if (r)
      return ts_error_set(err, r, "%s: layer type '%s' has an incompatible ops table (abi %u)",
                          path, (*list)->name ? (*list)->name : "?", (*list)->abi_version);
    r = ts_register_layer_type(*list);
    if (r == -EEXIST)
      return ts_error_set(err, r, "%s: layer type '%s' is already registered", path, (*list)->name);
    if (r)
      return ts_error_set(err, r, "%s: cannot register layer type '%s'", path, (*list)->name);
  }
  return 0;
}

/* Load every *.so in `dir`; a missing folder is not an error. */
int ts__load_plugin_dir(const char *dir, ts_error *err)
{
  DIR *d = opendir(dir);
  if (!d)
    return 0;
  struct dirent *e;
  int r = 0;
  while (!r && (e = readdir(d))) {
    size_t n = strlen(e->d_name);
    if (n < 4 || strcmp(e->d_name + n - 3, ".so") != 0)
      continue;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    r = ts_load_layer_module(path, err);
  }
  closedir(d);
  return r;
}
