/* libthinstack: the interface for writing a layer type.
 *
 * A layer type is one static `ts_layer_type` table with designated
 * initializers, built in or loaded from a shared object that exports
 * `ts_layer_types` (a NULL-terminated array of pointers to its types).
 *
 * What the core guarantees to a layer before calling `submit`:
 *  - the op is one the layer's limits declare (never TS_CAP_NONE; an emulated
 *    WRITE_ZEROES arrives as WRITEs of zero buffers, an emulated FUA as a
 *    WRITE followed by a FLUSH);
 *  - offset and length are multiples of logical_block_size, length > 0
 *    (except FLUSH, where both are 0), offset + length <= size;
 *  - length <= the op's max_*_bytes, and the request does not cross a
 *    boundary returned by `next_boundary`;
 *  - flags contain only the flags that make sense for the op, FUA only when
 *    limits.fua is set, and no write-type op reaches a read-only layer;
 *    WRITE_ZEROES keeps TS_IO_NOFALLBACK, so a layer that could only zero by
 *    writing data returns -EOPNOTSUPP for it (the core then fails the request
 *    rather than fall back).
 * Layers assert these; they never re-check them with error returns.
 */
#ifndef LIBTHINSTACK_LAYER_H
#define LIBTHINSTACK_LAYER_H

#include <libthinstack/thinstack.h>
#include <jansson.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A layer instance as its type's ops see it: a node of a stack (opaque). */
typedef struct ts_node ts_layer;

/* ------------------------------------------------------------------------ */
/* Parameter schema                                                          */

/* The JSON type of a parameter (ts_param.kind). */
typedef enum ts_param_kind {
  TS_PARAM_STRING = 1,  /* JSON string */
  TS_PARAM_PATH,        /* JSON string, a path relative to the config file */
  TS_PARAM_SIZE,        /* JSON integer or string with K/M/G/T suffix */
  TS_PARAM_UINT,        /* JSON non-negative integer */
  TS_PARAM_BOOL,        /* JSON true/false */
  TS_PARAM_ENUM,        /* JSON string, one of `choices` ("error|queue") */
  TS_PARAM_CHILD,       /* JSON string naming another layer of the stack */
  TS_PARAM_ARRAY,       /* JSON array of objects, each checked against `fields` */
  TS_PARAM_OBJECT,      /* JSON object checked against `fields` */
  TS_PARAM_ANY,         /* anything; the layer checks it in open */
} ts_param_kind;

#define TS_PARAM_REQUIRED (1u << 0)  /* the key must be present */
#define TS_PARAM_SHARED   (1u << 1)  /* CHILD: several parents may use the child
                                        (thin volumes share their pool); without
                                        it a child has one parent */
#define TS_PARAM_SECRET   (1u << 2)  /* a key: masked in dumped configurations
                                        unless the caller asks for secrets */

/* One accepted key of a layer's JSON object. Arrays of these end with an
 * entry whose key is NULL. The core checks every layer's object against its
 * schema before opening anything: unknown keys, wrong JSON types, bad sizes,
 * unknown enum values and missing required keys are reported with their JSON
 * path, and CHILD references are checked for existence, cycles and sharing. */
typedef struct ts_param {
  const char *key;                /* the JSON key; NULL ends a table */
  ts_param_kind kind;             /* what its value must be */
  uint32_t flags;                 /* TS_PARAM_* */
  const char *choices;            /* ENUM: '|'-separated values */
  const struct ts_param *fields;  /* ARRAY/OBJECT: schema of the elements */
  const char *doc;                /* one line, shown by `thinstack types` */
} ts_param;

/* Typed getters for validated parameters: return `dflt` when the key is
 * absent. Only for keys the schema declared with the matching kind. */
TS_EXTERN const char *ts_param_string(const json_t *params, const char *key, const char *dflt);
TS_EXTERN uint64_t ts_param_size(const json_t *params, const char *key, uint64_t dflt);
TS_EXTERN uint64_t ts_param_uint(const json_t *params, const char *key, uint64_t dflt);
TS_EXTERN bool ts_param_bool(const json_t *params, const char *key, bool dflt);

/* ------------------------------------------------------------------------ */
/* The ops table                                                             */

/* The version of ts_layer_type a layer is built against (abi_version). */
#define TS_LAYER_ABI_VERSION 1

/* Whether the core may call a layer's data-path ops concurrently. */
typedef enum ts_thread_model {
  TS_THREAD_PARALLEL = 0,   /* submit/block_status may run concurrently */
  TS_THREAD_SERIALIZE = 1,  /* the core holds a per-node lock around each call */
} ts_thread_model;

/* How a layer reports the end of a request started by `submit_async`:
 * `result` is 0 or -errno, as `submit` would have returned. */
typedef void (*ts_io_done_fn)(void *arg, int result);

/* A layer type: its name, parameter schema and ops. A type registered with
 * ts_register_layer_type() (or loaded from a plugin) must outlive every
 * stack that uses it. */
typedef struct ts_layer_type {
  /* Filled by TS_LAYER_TYPE_INIT: lets the core load types built against an
   * older header. New slots are only ever added at the end. */
  uint32_t abi_version;
  uint32_t struct_size; /* sizeof(ts_layer_type) the layer was built with */

  const char *name;                /* "thin", "crypt", ...: the JSON "type" */
  const char *summary;             /* one line for `thinstack types` */
  const ts_param *params;          /* schema of the JSON object; NULL = no keys */
  ts_thread_model thread_model;    /* whether ops may run concurrently */

  /* Open the layer. Children named by CHILD parameters are already open
   * (ts_layer_child). Validate semantics the schema cannot express and report
   * them with ts_layer_error(), before creating or changing anything.
   * Required. */
  int (*open)(ts_layer *l, const json_t *params, ts_error *err);

  /* Release everything. On a normal close the core has already sent FLUSH;
   * when ts_layer_aborting() is true (the stack failed to open) the layer
   * must not commit anything. Optional. */
  void (*close)(ts_layer *l);

  /* Describe the layer: `lim` arrives holding the children's limits folded
   * with ts_limits_stack() (or the defaults of a leaf: 512-byte blocks, no
   * op supported), and the layer sets `size` and adjusts what it implements.
   * Called once after open. Required. */
  int (*limits)(ts_layer *l, ts_limits *lim, ts_error *err);

  /* Run one request (see the guarantees above). Returns 0 or -errno.
   * Required. */
  int (*submit)(ts_layer *l, const ts_io *io);

  /* Append extents describing [offset, offset+len) to `out`: at least one
   * extent, starting at `offset`, each starting where the one before ends;
   * the core asks again for whatever is left. The core checks the answer:
   * what runs past the range is cut off, and an answer out of order, with a
   * gap or an overlap, or adding nothing fails the request with -EIO naming
   * the layer. Optional: absent means "all allocated data". */
  int (*block_status)(ts_layer *l, uint64_t offset, uint64_t len, ts_extent_list *out);

  /* Add the layer's own counters and state to the JSON object `out`. Never
   * secrets. Optional. */
  int (*status)(ts_layer *l, json_t *out);

  /* The first split boundary after `offset` (exclusive), or UINT64_MAX: the
   * core never sends a request that crosses one (linear segment edges).
   * Optional. */
  uint64_t (*next_boundary)(ts_layer *l, uint64_t offset);

  /* The equivalent dmsetup table line(s) of this layer, malloc'd, for
   * `thinstack dm-table`; NULL when the layer has no kernel twin. Optional. */
  char *(*dm_table)(ts_layer *l);

  /* Grow the device to `new_size` bytes (larger than now, a multiple of
   * logical_block_size), keeping its contents. Called by ts_dev_grow(),
   * which guarantees that no request to this node runs meanwhile and then
   * records the new size. Optional: absent means the layer cannot grow. */
  int (*grow)(ts_layer *l, uint64_t new_size, ts_error *err);

  /* Bring `params`, a copy of the object this layer was opened with, up to
   * date with what has changed since (a size that grew), so that it
   * re-creates the layer as it is now; for ts_stack_config_json(). Paths are
   * already absolute. Returns 0 or -ENOMEM. Optional: absent means the
   * parameters never go stale. */
  int (*config)(ts_layer *l, json_t *params);

  /* A message from ts_dev_message(): the layer's own verbs (log-writes:
   * "mark NAME"). May run concurrently with requests. Returns 0 or -errno
   * with a message in `err`. Optional: absent means no messages. */
  int (*message)(ts_layer *l, const char *message, ts_error *err);

  /* Start one request and return at once (the async API's path around its
   * worker threads). The request meets the same guarantees as for `submit`;
   * `io` and its iovec array stay valid, and the buffers untouched, until
   * `done(arg, result)` runs. Returns 0 when the request was started: `done`
   * then runs exactly once, on any thread (possibly before this returns),
   * and must not block. Any negative return means it was not started and
   * `done` never runs; the core then sends the same request through `submit`
   * on a worker (so a layer declines what it cannot start cheaply: say,
   * unaligned O_DIRECT pieces). Only READ, WRITE and FLUSH arrive here, never
   * split and never for TS_THREAD_SERIALIZE types. May run concurrently with
   * itself and with `submit`. Optional; the core reads it only from tables
   * whose struct_size covers it. */
  int (*submit_async)(ts_layer *l, const ts_io *io, ts_io_done_fn done, void *arg);

  /* Copy `len` bytes of this device from `src` to `dst`, with the result a
   * READ of the source and a WRITE of it at `dst` would have (durable after
   * the next FLUSH, like a write), but without the data passing through the
   * caller: an extent clone of a file system that shares extents (XFS with
   * reflink, btrfs), an in-kernel copy. The core guarantees: src, dst and
   * len are multiples of logical_block_size, len > 0, both ranges lie
   * within the device and do not overlap, the device is writable; the
   * request is never split. `flags` is 0 or TS_IO_NOFALLBACK: with it, the
   * layer copies only by sharing storage (a clone, which costs metadata and
   * no data I/O) and answers -EOPNOTSUPP otherwise, so that a caller with a
   * cheaper way of its own (a thin pool merging a write into the copy) can
   * take it. -EOPNOTSUPP also means "not here" without the flag: the core
   * then copies by reading and writing. A layer whose data is not a 1:1 image of
   * its child's (crypt: the ciphertext depends on the position) must not pass
   * copies down. May run concurrently with `submit` and with itself (the
   * core holds the node lock for TS_THREAD_SERIALIZE types); the caller
   * orders it against requests to either range. Returns 0 or -errno.
   * Optional: absent means -EOPNOTSUPP; the core reads it only from tables
   * whose struct_size covers it. */
  int (*copy_range)(ts_layer *l, uint64_t src, uint64_t dst, uint64_t len, uint32_t flags);
} ts_layer_type;

/* Starts every ts_layer_type initializer: the ABI version and size. */
#define TS_LAYER_TYPE_INIT .abi_version = TS_LAYER_ABI_VERSION, .struct_size = sizeof(ts_layer_type)

/* Register a layer type process-wide (built-ins are registered already).
 * -EEXIST if a type of that name exists, -EINVAL if the table is unusable. */
TS_EXTERN int ts_register_layer_type(const ts_layer_type *type);
/* Look a type up by name; NULL if none. */
TS_EXTERN const ts_layer_type *ts_find_layer_type(const char *name);
/* Load the shared object at `path` and register every type in its
 * `ts_layer_types` array. */
TS_EXTERN int ts_load_layer_module(const char *path, ts_error *err);
/* Iterate registered types: the i-th, or NULL past the end. */
TS_EXTERN const ts_layer_type *ts_layer_type_at(size_t i);

/* ------------------------------------------------------------------------ */
/* Services for layer code                                                   */

/* The node's private state, set in open. */
TS_EXTERN void ts_layer_set_priv(ts_layer *l, void *priv);
TS_EXTERN void *ts_layer_priv(const ts_layer *l);

/* An already-open child by its layer name (as written in the parameters);
 * NULL if the stack has no such node. */
TS_EXTERN ts_layer *ts_layer_child(ts_layer *l, const char *name);

/* A path parameter resolved against the config file's folder; malloc'd. */
TS_EXTERN char *ts_layer_path(ts_layer *l, const char *path);

/* Record an error about parameter `key` of this layer (NULL: the layer as a
 * whole): the message reads "layers.<name>.<key>: <text>". Returns `code`. */
TS_EXTERN int ts_layer_error(ts_layer *l, ts_error *err, int code, const char *key,
                             const char *fmt, ...) TS_PRINTF(5, 6);

/* Note a file this open created, so a failed stack open removes it again. */
TS_EXTERN void ts_layer_note_created(ts_layer *l, const char *path);
/* True while the stack is being torn down after a failed open. */
TS_EXTERN bool ts_layer_aborting(const ts_layer *l);
/* True when the stack was opened with TS_OPEN_READ_ONLY. */
TS_EXTERN bool ts_layer_force_read_only(const ts_layer *l);

/* Claim `fd`, which the layer opened on `path` (the name used in messages),
 * for the life of the stack: every layer that opens a file or device must
 * call this right after open(2), before reading or changing anything.
 * `write`: the layer may write it. Takes an open file description lock on
 * the whole file, for writing or shared (TS_OPEN_FORCE_SHARE: none for a
 * reader); the lock lives in the fd, so it goes when the layer closes the fd
 * in its close hook (and with the process); open the fd O_CLOEXEC, so that
 * an exec'd child does not keep it. Block devices opened for writing must
 * also be opened O_EXCL. Returns 0, or -EBUSY with a message naming the
 * holder (another process, another stack of this process) or the other
 * layer of this stack on the same file or device; the fd stays open and the
 * layer's to close either way. Call only from the open hook (not
 * thread-safe against other calls on the same stack). */
TS_EXTERN int ts_layer_claim_fd(ts_layer *l, int fd, const char *path, bool write, ts_error *err);

/* Raise an event through the stack's ts_event_fn (if any). */
TS_EXTERN void ts_layer_event(ts_layer *l, const char *event, const char *fmt, ...)
    TS_PRINTF(3, 4);

/* Convenience requests to a child (through the core: checked and split). */
TS_EXTERN int ts_layer_io(ts_layer *child, uint32_t op, uint32_t flags, uint64_t offset,
                          uint64_t len);

/* A zero-filled, read-only buffer of TS_ZERO_BUF_SIZE bytes, for writing zeroes. */
#define TS_ZERO_BUF_SIZE (1u << 20)
/* That buffer, shared by the process; never written. */
TS_EXTERN const void *ts_zero_buffer(void);

/* Copy `len` bytes starting `skip` bytes into the iovec to/from a flat buffer. */
TS_EXTERN void ts_iov_to_buf(const struct iovec *iov, int iovcnt, size_t skip, void *buf,
                             size_t len);
TS_EXTERN void ts_iov_from_buf(const struct iovec *iov, int iovcnt, size_t skip,
                               const void *buf, size_t len);
/* Fill `len` bytes of the iovec from `skip` with zeroes. */
TS_EXTERN void ts_iov_zero(const struct iovec *iov, int iovcnt, size_t skip, size_t len);
/* Describe bytes [skip, skip+len) of an iovec as a new iovec in `out`
 * (capacity `outmax`); returns the count or -ENOBUFS if it needs more. */
TS_EXTERN int ts_iov_slice(const struct iovec *iov, int iovcnt, size_t skip, size_t len,
                           struct iovec *out, int outmax);

/* Room for slices of one caller's iovec: a slice never has more pieces
 * than its source, so `ts_iov_buf_init(b, iovcnt)` sizes it once (inline up
 * to TS_IOV_INLINE pieces, else one allocation) and any number of
 * ts_iov_buf_slice() calls then fit. The caller owns `b` and frees it with
 * ts_iov_buf_free(); one ts_iov_buf serves one thread at a time. */
#define TS_IOV_INLINE 16
/* See above: room for the slices of one iovec. */
typedef struct ts_iov_buf {
  struct iovec *v;                 /* the room: `inl` or an allocation */
  int cap;                         /* entries of `v` */
  struct iovec inl[TS_IOV_INLINE]; /* inline room for small iovecs */
} ts_iov_buf;
/* 0, or -ENOMEM; ts_iov_buf_free() is safe either way. */
TS_EXTERN int ts_iov_buf_init(ts_iov_buf *b, int iovcnt);
TS_EXTERN void ts_iov_buf_free(ts_iov_buf *b);
/* Bytes [skip, skip+len) of `iov` as b->v[0..n); returns n > 0, or -EIO when
 * the range is empty or beyond the iovec (a caller's bookkeeping error). */
TS_EXTERN int ts_iov_buf_slice(ts_iov_buf *b, const struct iovec *iov, int iovcnt, size_t skip,
                               size_t len);

/* Bytes [skip, skip+len) of `io`'s buffers as one request `op` (TS_OP_READ
 * or TS_OP_WRITE) with `flags` at `offset` of `child`, through ts_submit().
 * Returns ts_submit()'s answer, -ENOMEM, or -EIO for an empty or
 * out-of-range slice. Thread-safe as ts_submit() is. */
TS_EXTERN int ts_layer_submit_slice(ts_layer *child, uint32_t op, uint32_t flags, uint64_t offset,
                                    const ts_io *io, uint64_t skip, uint64_t len);

/* One TS_HAVE_<CALL> per call above, for code that builds against
 * several versions of the library (#ifdef TS_HAVE_TS_POOL_CHECK). */
#define TS_HAVE_TS_PARAM_STRING 1
#define TS_HAVE_TS_PARAM_SIZE 1
#define TS_HAVE_TS_PARAM_UINT 1
#define TS_HAVE_TS_PARAM_BOOL 1
#define TS_HAVE_TS_REGISTER_LAYER_TYPE 1
#define TS_HAVE_TS_FIND_LAYER_TYPE 1
#define TS_HAVE_TS_LOAD_LAYER_MODULE 1
#define TS_HAVE_TS_LAYER_TYPE_AT 1
#define TS_HAVE_TS_LAYER_SET_PRIV 1
#define TS_HAVE_TS_LAYER_PRIV 1
#define TS_HAVE_TS_LAYER_CHILD 1
#define TS_HAVE_TS_LAYER_PATH 1
#define TS_HAVE_TS_LAYER_ERROR 1
#define TS_HAVE_TS_LAYER_NOTE_CREATED 1
#define TS_HAVE_TS_LAYER_ABORTING 1
#define TS_HAVE_TS_LAYER_FORCE_READ_ONLY 1
#define TS_HAVE_TS_LAYER_CLAIM_FD 1
#define TS_HAVE_TS_LAYER_EVENT 1
#define TS_HAVE_TS_LAYER_IO 1
#define TS_HAVE_TS_ZERO_BUFFER 1
#define TS_HAVE_TS_IOV_TO_BUF 1
#define TS_HAVE_TS_IOV_FROM_BUF 1
#define TS_HAVE_TS_IOV_ZERO 1
#define TS_HAVE_TS_IOV_SLICE 1
#define TS_HAVE_TS_IOV_BUF_INIT 1
#define TS_HAVE_TS_IOV_BUF_FREE 1
#define TS_HAVE_TS_IOV_BUF_SLICE 1
#define TS_HAVE_TS_LAYER_SUBMIT_SLICE 1

#ifdef __cplusplus
}
#endif
#endif
