/* nbdkit-thinstack-plugin: serve the exported devices of a stack over NBD.
 *
 *   nbdkit ./nbdkit-thinstack-plugin.so [config=]stack.json [export=NAME] [readonly=true]
 *
 * Without export=, every export of the stack is offered (NBD_OPT_LIST shows
 * them) and clients choose one by name; the empty name means the first. With
 * export=NAME only that device is served, whatever name the client asks for.
 * NBD commands map onto requests: READ, WRITE (FUA), FLUSH, TRIM → DISCARD,
 * WRITE_ZEROES → WRITE_ZEROES (NO_HOLE clears MAY_UNMAP, so zeroing without
 * permission to punch provisions; FAST_ZERO → NOFALLBACK), BLOCK_STATUS
 * (base:allocation) → block status, whose HOLE and ZERO flags mean what NBD's
 * do. Block size constraints come from the stacked limits; requests that
 * ignore them are still served correctly by read-modify-write (bytedev.h).
 * One stack serves every connection, so a flush on any connection makes
 * every completed write durable and multi-conn is safe.
 */
#define NBDKIT_API_VERSION 2
#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
#include <nbdkit-plugin.h>

#include "bytedev.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define MAX_REQUEST (32u << 20)   /* the largest request NBD servers commonly take */

static char *config_path;
static char *export_name;
static bool open_read_only;
static char *control_path;        /* control=PATH; NULL: CONFIG.ctl */
static bool control_off;          /* control= (empty): none */
static ts_stack *stack;
static bd_dev *devs;              /* one per export of the stack, same order */
static size_t ndevs;

struct handle {
  bd_dev *bd;
  bool read_only;
};

static int tsp_config(const char *key, const char *value)
{
  if (strcmp(key, "config") == 0) {
    free(config_path);
    /* nbdkit changes to / when it forks into the background. */
    config_path = nbdkit_absolute_path(value);
    return config_path ? 0 : -1;
  }
  if (strcmp(key, "export") == 0) {
    free(export_name);
    export_name = strdup(value);
    if (!export_name) {
      nbdkit_error("strdup: %m");
      return -1;
    }
    return 0;
  }
  if (strcmp(key, "readonly") == 0) {
    int b = nbdkit_parse_bool(value);
    if (b < 0)
      return -1;
    open_read_only = b;
    return 0;
  }
  if (strcmp(key, "control") == 0) {
    free(control_path);
    control_path = NULL;
    control_off = !*value;
    if (control_off)
      return 0;
    control_path = nbdkit_absolute_path(value);
    return control_path ? 0 : -1;
  }
  nbdkit_error("unknown parameter '%s' (config=, export=, readonly=, control=)", key);
  return -1;
}

static int tsp_config_complete(void)
{
  if (!config_path) {
    nbdkit_error("config=STACK.json is required");
    return -1;
  }
  return 0;
}

/* Check the configuration while errors still reach the terminal; the stack
 * itself is opened after nbdkit has forked (after_fork), so that any thread
 * it starts lives in the serving process. */
static int tsp_get_ready(void)
{
  ts_error err = { 0 };
  ts_open_opts o = { .struct_size = sizeof o, .flags = TS_OPEN_VALIDATE_ONLY };
  ts_stack *s = NULL;
  int r = ts_stack_open_file(config_path, &o, &s, &err);
  if (r) {
    nbdkit_error("%s", err.msg[0] ? err.msg : ts_strerror(r));
    return -1;
  }
  ts_stack_close(s, NULL);
  return 0;
}

static int tsp_after_fork(void)
{
  ts_error err = { 0 };
  ts_open_opts o = { .struct_size = sizeof o, .flags = open_read_only ? TS_OPEN_READ_ONLY : 0 };
  int r = ts_stack_open_file(config_path, &o, &stack, &err);
  if (r) {
    nbdkit_error("%s", err.msg[0] ? err.msg : ts_strerror(r));
    return -1;
  }
  ndevs = ts_stack_ndevs(stack);
  if (ndevs == 0) {
    nbdkit_error("%s exports no device", config_path);
    return -1;
  }
  if (export_name && !ts_stack_dev(stack, export_name)) {
    nbdkit_error("%s has no export named \"%s\"", config_path, export_name);
    return -1;
  }
  devs = calloc(ndevs, sizeof *devs);
  if (!devs) {
    nbdkit_error("calloc: %m");
    return -1;
  }
  if (!control_off) {
    /* The default socket is a convenience (its folder may be read-only);
     * one asked for must work. */
    char def[108];
    const char *path = control_path;
    if (!path && ts_ctl_default_path(config_path, def, sizeof def) == 0)
      path = def;
    r = path ? ts_ctl_listen(stack, path, &err) : -ENAMETOOLONG;
    if (r && control_path) {
      nbdkit_error("%s", err.msg);
      return -1;
    }
    if (r)
      nbdkit_debug("no control socket: %s", err.msg[0] ? err.msg : ts_strerror(r));
  }
  for (size_t i = 0; i < ndevs; i++) {
    r = bd_init(&devs[i], ts_stack_dev_at(stack, i));
    if (r) {
      ndevs = i;
      nbdkit_error("cannot set up export %zu: %s", i, ts_strerror(r));
      return -1;
    }
  }
  return 0;
}

static void tsp_cleanup(void)
{
  for (size_t i = 0; i < ndevs; i++)
    bd_fini(&devs[i]);
  free(devs);
  devs = NULL;
  ndevs = 0;
  if (stack) {
    ts_error err = { 0 };
    int r = ts_stack_close(stack, &err);
    if (r)
      nbdkit_error("closing %s: %s", config_path, err.msg[0] ? err.msg : ts_strerror(r));
    stack = NULL;
  }
}

static void tsp_unload(void)
{
  free(config_path);
  free(control_path);
  free(export_name);
}

static int tsp_list_exports(int readonly, int is_tls, struct nbdkit_exports *exports)
{
  if (export_name)
    return nbdkit_add_export(exports, export_name, NULL);
  for (size_t i = 0; i < ndevs; i++)
    if (nbdkit_add_export(exports, ts_dev_name(devs[i].dev), NULL) != 0)
      return -1;
  return 0;
}

static const char *tsp_default_export(int readonly, int is_tls)
{
  if (export_name)
    return export_name;
  return ndevs ? ts_dev_name(devs[0].dev) : NULL;
}

static void *tsp_open(int readonly)
{
  const char *name = nbdkit_export_name();
  bd_dev *bd = NULL;
  if (export_name || !name || !*name) {
    bd = &devs[0];
    const char *want = export_name ? export_name : ts_dev_name(devs[0].dev);
    for (size_t i = 0; i < ndevs; i++)
      if (strcmp(ts_dev_name(devs[i].dev), want) == 0)
        bd = &devs[i];
  } else {
    for (size_t i = 0; i < ndevs && !bd; i++)
      if (strcmp(ts_dev_name(devs[i].dev), name) == 0)
        bd = &devs[i];
    if (!bd) {
      nbdkit_error("no export named \"%s\" in %s", name, config_path);
      nbdkit_set_error(ENOENT);
      return NULL;
    }
  }
  struct handle *h = malloc(sizeof *h);
  if (!h) {
    nbdkit_error("malloc: %m");
    return NULL;
  }
  h->bd = bd;
  h->read_only = readonly || ts_dev_limits(bd->dev)->read_only;
  return h;
}

static void tsp_close(void *handle)
{
  free(handle);
}

static const char *tsp_export_description(void *handle)
{
  struct handle *h = handle;
  return ts_dev_type(h->bd->dev);
}

static int64_t tsp_get_size(void *handle)
{
  struct handle *h = handle;
  return (int64_t)ts_dev_size(h->bd->dev); /* live: a volume may have grown since open */
}

static bool pow2(uint64_t x) { return x && !(x & (x - 1)); }

static int tsp_block_size(void *handle, uint32_t *minimum, uint32_t *preferred,
                          uint32_t *maximum)
{
  struct handle *h = handle;
  const ts_limits *lim = ts_dev_limits(h->bd->dev);
  uint32_t min = lim->logical_block_size;
  uint64_t max = lim->max_io_bytes ? lim->max_io_bytes : MAX_REQUEST;
  if (max > MAX_REQUEST)
    max = MAX_REQUEST;
  max -= max % min;
  uint32_t pref = pow2(lim->io_opt) ? lim->io_opt : 4096;
  if (pref < min)
    pref = min;
  if (pref > max)
    pref = (uint32_t)max;
  *minimum = min;
  *preferred = pref;
  *maximum = (uint32_t)max;
  return 0;
}

static int tsp_can_write(void *handle)
{
  struct handle *h = handle;
  return !h->read_only;
}

static int tsp_can_flush(void *handle) { return 1; }
static int tsp_is_rotational(void *handle) { return 0; }
static int tsp_can_multi_conn(void *handle) { return 1; }
static int tsp_can_extents(void *handle) { return 1; }
/* The library emulates what the device lacks (FUA as a flush, zeroes as
 * writes of zeroes), so both are native from nbdkit's point of view. */
static int tsp_can_fua(void *handle) { return NBDKIT_FUA_NATIVE; }
static int tsp_can_zero(void *handle) { return 1; }
/* Fast zero is answered honestly: ENOTSUP at once where zeroing would mean
 * writing zeroes. */
static int tsp_can_fast_zero(void *handle) { return 1; }

static int tsp_can_trim(void *handle)
{
  struct handle *h = handle;
  return ts_limits_cap(ts_dev_limits(h->bd->dev), TS_OP_DISCARD) != TS_CAP_NONE;
}

static int tsp_thread_model(void) { return NBDKIT_THREAD_MODEL_PARALLEL; }

/* Report a failed request: nbdkit sends the errno to the client. */
static int fail(struct handle *h, const char *what, uint64_t off, uint64_t len, int r)
{
  nbdkit_error("%s %s at %llu+%llu: %s", ts_dev_name(h->bd->dev), what, (unsigned long long)off,
               (unsigned long long)len, ts_strerror(r));
  nbdkit_set_error(-r);
  return -1;
}

static int tsp_pread(void *handle, void *buf, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct handle *h = handle;
  int r = bd_read(h->bd, buf, count, offset);
  return r ? fail(h, "read", offset, count, r) : 0;
}

static int tsp_pwrite(void *handle, const void *buf, uint32_t count, uint64_t offset,
                      uint32_t flags)
{
  struct handle *h = handle;
  int r = bd_write(h->bd, buf, count, offset, (flags & NBDKIT_FLAG_FUA) ? TS_IO_FUA : 0);
  return r ? fail(h, "write", offset, count, r) : 0;
}

static int tsp_flush(void *handle, uint32_t flags)
{
  struct handle *h = handle;
  int r = ts_flush(h->bd->dev);
  return r ? fail(h, "flush", 0, 0, r) : 0;
}

static int tsp_trim(void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct handle *h = handle;
  int r = bd_trim(h->bd, offset, count);
  if (!r && (flags & NBDKIT_FLAG_FUA))
    r = ts_flush(h->bd->dev);
  return r ? fail(h, "trim", offset, count, r) : 0;
}

static int tsp_zero(void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct handle *h = handle;
  uint32_t f = ((flags & NBDKIT_FLAG_MAY_TRIM) ? TS_IO_MAY_UNMAP : 0) |
               ((flags & NBDKIT_FLAG_FUA) ? TS_IO_FUA : 0) |
               ((flags & NBDKIT_FLAG_FAST_ZERO) ? TS_IO_NOFALLBACK : 0);
  int r = bd_zero(h->bd, offset, count, f);
  if (r == -EOPNOTSUPP && (flags & NBDKIT_FLAG_FAST_ZERO)) {
    /* Expected: the client falls back to writing; no need to log. */
    nbdkit_set_error(ENOTSUP);
    return -1;
  }
  return r ? fail(h, "zero", offset, count, r) : 0;
}

static int tsp_extents(void *handle, uint32_t count, uint64_t offset, uint32_t flags,
                       struct nbdkit_extents *out)
{
  struct handle *h = handle;
  ts_extent_list l = { 0 };
  int r = bd_extents(h->bd, offset, count, &l);
  if (r) {
    ts_extent_list_free(&l);
    return fail(h, "block status", offset, count, r);
  }
  /* TS_EXTENT_HOLE/ZERO have NBD's values; nbdkit drops what lies before
   * `offset` (the list starts at the block holding it). */
  int ret = 0;
  for (size_t i = 0; i < l.n && ret == 0; i++) {
    uint32_t type = ((l.v[i].flags & TS_EXTENT_HOLE) ? NBDKIT_EXTENT_HOLE : 0) |
                    ((l.v[i].flags & TS_EXTENT_ZERO) ? NBDKIT_EXTENT_ZERO : 0);
    ret = nbdkit_add_extent(out, l.v[i].offset, l.v[i].length, type);
    if (flags & NBDKIT_FLAG_REQ_ONE)
      break;
  }
  ts_extent_list_free(&l);
  return ret;
}

static struct nbdkit_plugin plugin = {
  .name = "thinstack",
  .longname = "libthinstack stacked block devices",
  .version = TS_VERSION_STRING,
  .description = "Serve the exported devices of a libthinstack stack (thin volumes, crypt, ...).",
  .config = tsp_config,
  .config_complete = tsp_config_complete,
  .config_help = "config=<FILE>     (required) the stack's JSON configuration\n"
                 "export=<NAME>     serve only this export (default: all, chosen by the client)\n"
                 "readonly=<BOOL>   open the whole stack read-only\n"
                 "control=<PATH>    serve the control socket at PATH (default CONFIG.ctl;\n"
                 "                  control= with no value serves none)",
  .magic_config_key = "config",
  .get_ready = tsp_get_ready,
  .after_fork = tsp_after_fork,
  .cleanup = tsp_cleanup,
  .unload = tsp_unload,
  .list_exports = tsp_list_exports,
  .default_export = tsp_default_export,
  .open = tsp_open,
  .close = tsp_close,
  .export_description = tsp_export_description,
  .get_size = tsp_get_size,
  .block_size = tsp_block_size,
  .can_write = tsp_can_write,
  .can_flush = tsp_can_flush,
  .is_rotational = tsp_is_rotational,
  .can_trim = tsp_can_trim,
  .can_zero = tsp_can_zero,
  .can_fast_zero = tsp_can_fast_zero,
  .can_fua = tsp_can_fua,
  .can_multi_conn = tsp_can_multi_conn,
  .can_extents = tsp_can_extents,
  .thread_model = tsp_thread_model,
  .pread = tsp_pread,
  .pwrite = tsp_pwrite,
  .flush = tsp_flush,
  .trim = tsp_trim,
  .zero = tsp_zero,
  .extents = tsp_extents,
  .errno_is_preserved = 0,
};

NBDKIT_REGISTER_PLUGIN(plugin)
