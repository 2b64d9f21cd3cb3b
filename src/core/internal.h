/* libthinstack core internals shared by the files of src/core. Not installed. */
#ifndef TS_CORE_INTERNAL_H
#define TS_CORE_INTERNAL_H

#include <libthinstack/thinstack.h>
#include <libthinstack/layer.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <sys/types.h>

struct ts_node {
  struct ts_stack *stack;
  char *name;
  const ts_layer_type *type;
  json_t *params;          /* borrowed reference into stack->config */
  void *priv;
  ts_limits limits;
  bool opened;
  bool exported;
  pthread_mutex_t serial;  /* held around calls when TS_THREAD_SERIALIZE */
  /* Children in the order the schema names them, for limits folding. */
  struct ts_node **children;
  size_t nchildren;
  /* Request counters by op: requests accepted and bytes. */
  _Atomic uint64_t nr_req[TS_OP_COUNT];
  _Atomic uint64_t nr_bytes[TS_OP_COUNT];
  _Atomic uint64_t nr_err[TS_OP_COUNT];
  _Atomic uint64_t nr_async; /* requests started through submit_async */
};

/* A node's size changes live (ts_dev_grow) while I/O threads check requests
 * against it and exports report it: read and written atomically. Acquire
 * pairs with the release in ts_dev_grow, so a request that sees the new size
 * also sees what the layer's grow set up for it. */
static inline uint64_t ts__node_size(const struct ts_node *n)
{
  return __atomic_load_n(&n->limits.size, __ATOMIC_ACQUIRE);
}

static inline void ts__node_set_size(struct ts_node *n, uint64_t size)
{
  __atomic_store_n(&n->limits.size, size, __ATOMIC_RELEASE);
}

/* A file or device a layer of the stack has claimed (claim.c). */
struct ts__claim {
  dev_t dev, rdev;
  ino_t ino;
  bool bdev;           /* compare rdev: any node of the device is the device */
  const char *layer;   /* the claiming node's name */
  char *path;
};

struct ts_stack {
  json_t *config;
  char *base_dir;
  ts_open_opts opts;
  struct ts_node **nodes;  /* bottom-up order */
  size_t nnodes;
  struct ts_node **exports;
  size_t nexports;
  char **created;          /* files created while opening */
  size_t ncreated;
  struct ts__claim *claims;  /* what the layers opened, for the one-user check */
  size_t nclaims;
  bool aborting;
  char *config_path;         /* absolute; the file lifecycle calls rewrite, or NULL */
  pthread_mutex_t config_mu; /* config and config_path, for lifecycle calls */
  struct ts__ctl *ctl;       /* control server (ctl.c), or NULL */
};

/* stack.c: the document ts_dev_status_json prints (the control server sends
 * it without a round trip through text). */
json_t *ts__dev_status(ts_dev *d);

/* ctl.c: hand an event to the stack's control server, if it serves one. */
void ts__ctl_event(struct ts_stack *s, const char *node, const char *event, const char *detail);

/* config.c: a checked configuration, as plain data borrowed from the JSON
 * document (which must outlive it). stack.c builds the nodes from it. */
struct ts__plan_layer {
  const char *name;
  const ts_layer_type *type;
  json_t *params;   /* the layer's object in the document */
  size_t *children; /* indices into plan->layers, as the params name them */
  size_t nchildren;
};
struct ts__plan {
  char **plugins; /* module paths, resolved against the base folder */
  size_t nplugins;
  struct ts__plan_layer *layers; /* dependency order: every child before its parents */
  size_t nlayers;
  size_t *exports; /* indices into layers, in document order */
  size_t nexports;
};

/* config.c: check the top level (keys, version, "plugins") and fill
 * plan->plugins. On a bad "plugins" entry, plan->plugins holds the entries
 * before it, which the caller loads first so that the first mistake in the
 * document is the one reported. Side-effect free; call ts__plan_free on
 * success and failure alike. */
int ts__config_check_header(const json_t *config, const char *base_dir, struct ts__plan *plan,
                            ts_error *err);
/* config.c: check "layers" against the registered types' schemas, order the
 * graph and check "exports", filling the rest of the plan. Reads the
 * registry, so the plugins must be loaded first. Side-effect free. */
int ts__config_check_layers(const json_t *config, struct ts__plan *plan, ts_error *err);
void ts__plan_free(struct ts__plan *plan);
/* config.c: `path` resolved against `base_dir` (absolute paths and a NULL
 * base_dir leave it as it is); malloc'd, NULL when out of memory. */
char *ts__config_path(const char *base_dir, const char *path);

/* claim.c: forget the claims (the locks go with the layers' fds). */
void ts__claims_free(struct ts_stack *s);

/* limits.c */
void ts__limits_leaf_default(ts_limits *lim);
void ts__limits_fold_start(ts_limits *lim);
json_t *ts__limits_to_json(const ts_limits *lim);

/* registry.c */
void ts__registry_init(void);
int ts__load_plugin_dir(const char *dir, ts_error *err);

/* util.c: all of [off, off+len) read or written with pread/pwrite, retried
 * on EINTR and short transfers: 0, -errno, or -EIO where the file ends. */
int ts__fd_rw(int fd, bool write, void *buf, size_t len, uint64_t off);
/* Parse a configuration so that no copy of its text outlives the parse:
 * jansson is made to clear what it frees, and a file is read into a buffer
 * that is cleared (stdio would leave its own copy in freed memory). */
json_t *ts__json_loads(const char *text, size_t flags, json_error_t *je);
json_t *ts__json_load_file(const char *path, size_t flags, json_error_t *je);

/* stack.c: `path` resolved against the stack's (absolute) base folder;
 * malloc'd, NULL when out of memory. */
char *ts__stack_path(const struct ts_stack *s, const char *path);

/* volumes.c: after ts_stack_open_file, report pool volumes that no layer
 * names (events on the pool). */
void ts__volumes_opened(struct ts_stack *s);
/* volumes.c: the test hook TS_TEST_CRASH_AT: _exit(99) when it names `point`. */
void ts__test_crash_point(const char *point);

/* io.c */
int ts__node_flush_all(struct ts_node *n);
/* The checks ts_submit makes before a request reaches a layer (op, flags,
 * read-only, support, alignment, range, iovec total): 0 or -EINVAL, -EROFS,
 * -EOPNOTSUPP. Shared with the async API, which rejects at submit time. */
int ts__io_check(struct ts_node *n, const ts_io *io);
/* ts_submit() for a request ts__io_check() has passed (the async engine
 * checks at submit, so its workers need not check again). */
int ts__submit_checked(struct ts_node *n, const ts_io *io);
/* Start a checked request through the layer's submit_async hook: 0 when
 * started (`done` then runs once, on any thread, and has to count a failure
 * in nr_err itself with ts__count_error), or -EAGAIN when this request
 * must take the synchronous path instead (no hook, a split, an emulated
 * FUA, a serialized layer, an op the hook does not take, or the layer
 * declined it). */
int ts__submit_async(struct ts_node *n, const ts_io *io, ts_io_done_fn done, void *arg);
void ts__count_error(struct ts_node *n, uint32_t op);
/* Copy [src, src+len) of `n` to [dst, dst+len) through the layer's
 * copy_range hook (see layer.h): checked (alignment, range, overlap,
 * read-only) and never split. Without TS_IO_NOFALLBACK, what the layer
 * cannot copy natively is copied by reads and writes of the node; with it
 * the answer is then -EOPNOTSUPP. 0 or -errno, with ts_last_error() set on
 * a failure. Thread-safe as ts_submit() is. */
int ts__copy_range(struct ts_node *n, uint64_t src, uint64_t dst, uint64_t len, uint32_t flags);

/* Layer type t's optional hook `op`, or NULL where t was built against a
 * header older than that slot (its struct_size ends before it). */
#define TS__LAYER_OP(t, op)                                                                        \
  ((t)->struct_size >= offsetof(ts_layer_type, op) + sizeof(t)->op ? (t)->op : NULL)

/* async.c: where a request started through submit_async can complete on
 * the thread of the async context that started it (LOOP and EVENTFD modes),
 * with no thread of the layer's own in between. The context owns an eventfd
 * that it watches on its own thread (uv_poll in LOOP mode; the eventfd of
 * ts_aio_fd, drained by ts_aio_poll, in EVENTFD mode). While a request
 * starts, ts__aio_sink_current points at the context's sink; a layer that
 * can signal the eventfd (the file layer: an io_uring of the context's,
 * io_uring_register_eventfd), or whose own descriptor the context can watch
 * (the ring's fd, see `watch`), attaches a source to the sink once and
 * queues the request on it. The context reaps its sources when either fires,
 * so `done` runs on its thread, and it frees them at close, once nothing is
 * in flight. */
struct ts__aio_source {
  struct ts__aio_source *next; /* the sink's list; written once, under the sink's lock */
  /* Readable (POLLIN) while `reap` would find a completion, when the sink's
   * `watch` took it; -1 when the source signals the eventfd instead. */
  int fd;
  /* Run `done` of the requests that have completed, on the calling thread;
   * with `wait`, first wait for one if none has and some are in flight.
   * Returns how many ran. Serialized by the source itself. */
  int (*reap)(struct ts__aio_source *s, bool wait);
  /* Requests started and not yet reaped. */
  uint32_t (*inflight)(struct ts__aio_source *s);
  /* Free it; nothing is in flight. */
  void (*destroy)(struct ts__aio_source *s);
};

struct ts__aio_sink {
  int efd; /* the eventfd a source signals */
  /* Set by a context that can watch a source's own descriptor on its
   * thread (LOOP mode: a uv_poll on the loop), which saves signalling and
   * clearing the eventfd per wake-up; NULL otherwise. A source calls it
   * with its `fd` before it attaches, on the submitting thread, under the
   * sink's lock: 0 when the context watches that fd from then on, else a
   * negative errno, and the source signals `efd` instead. */
  int (*watch)(struct ts__aio_sink *sink, int fd);
  pthread_mutex_t lock;                   /* attaching a source */
  struct ts__aio_source *_Atomic sources; /* attached sources, newest first */
  _Atomic bool refused;                   /* the kernel refused a source: do not retry */
};

/* The sink of the context starting a request on this thread, for the
 * duration of its ts__submit_async(); NULL otherwise (WORKER mode, workers,
 * a layer's own threads). */
extern _Thread_local struct ts__aio_sink *ts__aio_sink_current;

/* Attach `s` to `sink`; the caller holds sink->lock. Readers walk the list
 * without it: the release publishes `s` whole. */
static inline void ts__aio_sink_attach(struct ts__aio_sink *sink, struct ts__aio_source *s)
{
  s->next = atomic_load_explicit(&sink->sources, memory_order_relaxed);
  atomic_store_explicit(&sink->sources, s, memory_order_release);
}

#endif
