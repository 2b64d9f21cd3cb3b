/* libthinstack: stacks, devices, limits and the synchronous request API.
 *
 * Include <libthinstack/thinstack.h> rather than this header.
 *
 * Conventions for every function here:
 *  - Return 0 (or a non-negative count) on success, a negative errno on failure:
 *      -EINVAL    the request is malformed: misaligned, zero length, offset+length
 *                 overflows or lies past the end of the device, unknown flags
 *      -EOPNOTSUPP the device does not support this operation (or these flags)
 *      -EROFS     a write-type request to a read-only device
 *      -ENOSPC    a thin pool (or a file system below) is out of space
 *      -EIO       an I/O error below, passed up unchanged
 *    A failed request changes nothing it was not documented to change: a request
 *    the core rejects (EINVAL, EOPNOTSUPP, EROFS) never reaches any layer.
 *  - Byte offsets and lengths; both must be multiples of the device's
 *    logical_block_size (512 unless a layer says more).
 *  - Data-path calls never allocate an error message; open and management calls
 *    also fill a caller-provided ts_error. A failed data-path call leaves its
 *    reason in a per-thread record, read with ts_last_error().
 *  - All data-path calls are thread-safe: any thread may call them at any time
 *    on an open stack.
 */
#ifndef LIBTHINSTACK_IO_H
#define LIBTHINSTACK_IO_H

#ifndef LIBTHINSTACK_THINSTACK_H
#error "include <libthinstack/thinstack.h>, not <libthinstack/io.h>"
#endif

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Errors                                                                    */

/* A control-path error: the negative errno also returned, and a message that
 * says where, what and why ("layers.pool.block_size: must be a multiple of 64K").
 * Fixed size so filling it never allocates. */
typedef struct ts_error {
  int code;        /* negative errno, 0 if no error was recorded */
  char msg[512];   /* NUL-terminated, empty if no error was recorded */
} ts_error;

/* Record an error (printf-style) and return `code`, so callers can write
 * `return ts_error_set(err, -EINVAL, "...")`. `err` may be NULL. */
TS_EXTERN int ts_error_set(ts_error *err, int code, const char *fmt, ...) TS_PRINTF(3, 4);
/* Clear an error record. */
TS_EXTERN void ts_error_clear(ts_error *err);
/* strerror() for a negative (or positive) errno; never NULL, thread-safe. */
TS_EXTERN const char *ts_strerror(int code);
/* The errno's symbolic name ("ENOSPC"), or "E?" if unknown. */
TS_EXTERN const char *ts_err_name(int code);
/* Inverse of ts_err_name: "ENOSPC" -> -ENOSPC; 0 if unknown. */
TS_EXTERN int ts_err_from_name(const char *name);

/* Why the last data-path call (ts_pread ... ts_submit, ts_block_status, and
 * the request checks of ts_aio submission) that failed on the calling thread
 * failed: "read at offset 0 + length 100 is not a multiple of the logical
 * block size 4096 of vm0", "read at offset 2G is past the end of vm0 (1 GiB)".
 * Set on every failure, never cleared by a success, so read it right after a
 * call returned a negative errno; NULL if nothing on this thread has failed.
 * The string is thread-local and owned by the library: valid until the next
 * failing data-path call on the same thread; copy it to keep it. */
TS_EXTERN const char *ts_last_error(void);
/* The negative errno that goes with ts_last_error(); 0 if none. Thread-local. */
TS_EXTERN int ts_last_errno(void);

/* ------------------------------------------------------------------------ */
/* Operations and flags                                                      */

/* The request types a device takes (ts_io.op). */
typedef enum ts_op {
  TS_OP_READ = 0,     /* read into the iovec */
  TS_OP_WRITE,        /* write the iovec */
  TS_OP_FLUSH,        /* make every completed write durable */
  TS_OP_DISCARD,      /* range no longer needed; may be freed */
  TS_OP_WRITE_ZEROES, /* range must read as zeroes afterwards */
  TS_OP_PROVISION,    /* reserve space in this layer and below, no data written */
  TS_OP_COUNT
} ts_op;

/* Name of an op ("read", "write", "flush", "discard", "write_zeroes",
 * "provision"); NULL for an out-of-range value. */
TS_EXTERN const char *ts_op_name(ts_op op);
/* Inverse of ts_op_name; -1 if unknown. */
TS_EXTERN int ts_op_from_name(const char *name);

#define TS_IO_FUA        (1u << 0)  /* WRITE, WRITE_ZEROES: durable on return */
#define TS_IO_MAY_UNMAP  (1u << 1)  /* WRITE_ZEROES: the layer may free space */
#define TS_IO_NOFALLBACK (1u << 2)  /* WRITE_ZEROES: fail -EOPNOTSUPP rather than write zero buffers */
/* PROVISION: nothing in the range matters to the caller, so a layer may
 * reserve it by writing zeroes (a kernel device whose only way to reserve is
 * write-zeroes). Without it such a layer answers -EOPNOTSUPP: a PROVISION
 * never changes data the caller can read. A thin pool sets it for the blocks
 * it has just allocated. */
#define TS_IO_MAY_ZERO   (1u << 3)
/* Every TS_IO_* flag: others are refused with -EINVAL. */
#define TS_IO_ALL_FLAGS  (TS_IO_FUA | TS_IO_MAY_UNMAP | TS_IO_NOFALLBACK | TS_IO_MAY_ZERO)

/* ------------------------------------------------------------------------ */
/* Limits                                                                    */

/* What a device accepts, computed bottom-up when the stack is opened.
 * Each field names its stacking rule (how a passthrough layer combines its
 * children): see ts_limits_stack(). "0 = unsupported" fields use plain min so
 * that one child lacking the op turns it off; "0 = no limit" fields use
 * min-not-zero. */
typedef struct ts_limits {
  uint64_t size;                   /* device size in bytes (set by the layer) */
  uint32_t logical_block_size;     /* request alignment; power of two >= 512; max */
  uint32_t physical_block_size;    /* atomic write unit; max */
  uint32_t io_min;                 /* smallest efficient request; max */
  uint32_t io_opt;                 /* preferred request size, 0 = none; lcm */
  uint64_t max_io_bytes;           /* READ/WRITE split size; 0 = no limit; min-not-zero */
  uint64_t max_discard_bytes;      /* 0 = DISCARD unsupported; min */
  uint32_t discard_granularity;    /* unit a discard frees; lcm */
  uint64_t max_write_zeroes_bytes; /* 0 = no native WRITE_ZEROES (the core emulates it
                                      with zero writes unless NOFALLBACK); min */
  uint64_t max_provision_bytes;    /* 0 = PROVISION unsupported; min */
  uint32_t provision_granularity;  /* unit provisioning allocates; lcm */
  bool discard_zeroes;             /* discarded ranges read back as zeroes; and */
  bool write_zeroes_unmap;         /* WRITE_ZEROES+MAY_UNMAP frees space fast; and */
  bool fua;                        /* native FUA (else the core sends a FLUSH after); and */
  bool read_only;                  /* or */
} ts_limits;

/* How a device handles an op: derived from the limits. */
typedef enum ts_cap {
  TS_CAP_NONE = 0,     /* -EOPNOTSUPP */
  TS_CAP_EMULATE = 1,  /* the core emulates it (zero writes, FLUSH after a FUA write) */
  TS_CAP_NATIVE = 2,   /* the layer does it itself */
} ts_cap;

/* The capability of `op` (or of FUA writes, for op == TS_OP_COUNT) under `lim`. */
TS_EXTERN ts_cap ts_limits_cap(const ts_limits *lim, int op);

/* Fold a child's limits `bottom` into `top`, field by field, by the rules
 * above. Use this in a layer's limits hook when it maps onto several children;
 * the core already folds every child before calling the hook. size is kept. */
TS_EXTERN void ts_limits_stack(ts_limits *top, const ts_limits *bottom);

/* ------------------------------------------------------------------------ */
/* Block status                                                              */

#define TS_EXTENT_HOLE (1u << 0)  /* no space allocated (unmapped) */
#define TS_EXTENT_ZERO (1u << 1)  /* reads as zeroes */
/* flags 0 = allocated data; ZERO = allocated (provisioned) but reads zeroes;
 * HOLE|ZERO = unallocated, reads zeroes; HOLE = unallocated, contents undefined
 * (the same meaning as NBD's base:allocation context). */

/* One range of a block status answer. */
typedef struct ts_extent {
  uint64_t offset;  /* bytes from the start of the device */
  uint64_t length;  /* bytes */
  uint32_t flags;   /* TS_EXTENT_* */
} ts_extent;

/* A growable list of extents, sorted and contiguous. Zero-initialise it,
 * release with ts_extent_list_free(). */
typedef struct ts_extent_list {
  ts_extent *v;  /* the extents, in order */
  size_t n, cap; /* how many there are, and room for */
} ts_extent_list;

/* Append [offset, offset+length) with `flags`; merges with the last extent when
 * it is adjacent and has the same flags. Returns 0 or -ENOMEM. */
TS_EXTERN int ts_extent_list_add(ts_extent_list *l, uint64_t offset, uint64_t length,
                                 uint32_t flags);
/* Forget every extent, keep the storage. */
TS_EXTERN void ts_extent_list_reset(ts_extent_list *l);
/* Free the storage. */
TS_EXTERN void ts_extent_list_free(ts_extent_list *l);

/* ------------------------------------------------------------------------ */
/* Stacks and devices                                                        */

/* An open stack (opaque): its layers, its exports, its configuration. */
typedef struct ts_stack ts_stack;
/* Every node of a stack is a ts_dev: the exported ones are what users see,
 * every other node is reachable by name for management and tests. */
typedef struct ts_node ts_dev;

/* A callback for asynchronous events of a stack (a thin pool crossing its
 * low water mark, a snapshot invalidated, a metadata commit failing).
 * Called from whatever thread noticed the event: do little and return. */
typedef void (*ts_event_fn)(ts_stack *stack, const char *node, const char *event,
                            const char *detail, void *arg);

#define TS_OPEN_VALIDATE_ONLY (1u << 0)  /* check the config, open nothing */
#define TS_OPEN_READ_ONLY     (1u << 1)  /* open every layer read-only */
/* What the stack opens read-only is read without the shared lock, so it
 * opens beside a writer (qemu-img -U): what it reads may be stale or
 * inconsistent. When a writer holds a file at open, the layer raises the
 * event "force-share" naming it. Writable layers still lock. */
#define TS_OPEN_FORCE_SHARE   (1u << 2)

/* Options of ts_stack_open_file() and ts_stack_open_string(); NULL for
 * all defaults. */
typedef struct ts_open_opts {
  uint32_t struct_size;       /* sizeof(ts_open_opts), for compatibility */
  uint32_t flags;             /* TS_OPEN_* */
  const char *plugin_dir;     /* where external layer types are looked up;
                                 NULL: $TS_PLUGIN_DIR, then the installed default */
  ts_event_fn event;          /* may be NULL */
  void *event_arg;            /* passed to `event` */
} ts_open_opts;

/* Open the stack described by the JSON file `path` (DESIGN: a "layers" object
 * and an "exports" array). Relative paths in it resolve against the file's
 * folder. `opts` may be NULL. On error returns -errno, fills `err` with a
 * message naming the JSON path, and leaves every file as it was: anything it
 * created is removed again.
 *
 * Ownership: the stack owns what it opens until ts_stack_close (or the
 * process's end). Files and devices opened for writing are locked for
 * writing (F_OFD_SETLK; block devices also O_EXCL), read-only ones shared:
 * a second writer, in this process or another, or a reader beside a writer
 * fails with -EBUSY and a message naming the layer, the file and the holder
 * ("layers.meta: /p/pool.meta is in use by pid 4242 (thinstack-fuse)").
 * Two layers of one stack on the same file or device (through a symlink or
 * a hard link too) fail with -EBUSY naming both. With TS_OPEN_READ_ONLY
 * nothing is created or formatted: a missing file or a blank pool is an
 * error.
 *
 * Thread safety: any thread may open stacks at any time; stacks share
 * nothing but the layer type registry and the files' locks, which order
 * concurrent opens of the same files (one wins, the other gets -EBUSY). */
TS_EXTERN int ts_stack_open_file(const char *path, const ts_open_opts *opts,
                                 ts_stack **out, ts_error *err);
/* The same, from a JSON document in memory; relative paths resolve against
 * `base_dir` (NULL: the current directory). */
TS_EXTERN int ts_stack_open_string(const char *json, const char *base_dir,
                                   const ts_open_opts *opts, ts_stack **out, ts_error *err);
/* ts_stack_config_json flags. */
#define TS_CONFIG_SECRETS (1u << 0)  /* include keys (crypt "key") instead of masking them */

/* The JSON document that re-opens this stack as it is now: the one it was
 * opened with, with every relative path made absolute and each layer's
 * parameters brought up to date (a file grown by ts_pool_extend or
 * ts_dev_grow has its new size). Parameters marked secret (crypt's inline
 * "key") read "(hidden)" unless `flags` has TS_CONFIG_SECRETS. Returns a
 * string to free(), or NULL when out of memory. Thread-safe, also beside
 * requests and ts_pool_extend. */
TS_EXTERN char *ts_stack_config_json(ts_stack *stack, uint32_t flags);

/* Flush every layer (committing thin metadata), close it and free the stack.
 * Returns the first error met while flushing; the stack is freed regardless.
 * NULL is a no-op. Not thread-safe with respect to the stack: the caller
 * makes sure no other thread still uses it or its devices (requests,
 * asynchronous requests in flight, status, pool calls); afterwards every
 * ts_dev of the stack is a dangling pointer. */
TS_EXTERN int ts_stack_close(ts_stack *stack, ts_error *err);

/* Look-ups below are thread-safe: a stack's nodes do not change after open.
 * The pointers they return live as long as the stack. */
/* An exported device by name, or NULL if the stack exports none by that name. */
TS_EXTERN ts_dev *ts_stack_dev(ts_stack *stack, const char *name);
/* Any node by name (exported or not), or NULL. */
TS_EXTERN ts_dev *ts_stack_node(ts_stack *stack, const char *name);
/* Number of exported devices, and the i-th (in "exports" order). */
TS_EXTERN size_t ts_stack_ndevs(const ts_stack *stack);
TS_EXTERN ts_dev *ts_stack_dev_at(ts_stack *stack, size_t i);
/* Number of nodes, and the i-th in bottom-up (children first) order. */
TS_EXTERN size_t ts_stack_nnodes(const ts_stack *stack);
TS_EXTERN ts_dev *ts_stack_node_at(ts_stack *stack, size_t i);

/* The device's node name, layer type name, size in bytes and stacked limits.
 * The pointers live as long as the stack. */
TS_EXTERN const char *ts_dev_name(const ts_dev *dev);
TS_EXTERN const char *ts_dev_type(const ts_dev *dev);
TS_EXTERN uint64_t ts_dev_size(const ts_dev *dev);
TS_EXTERN const ts_limits *ts_dev_limits(const ts_dev *dev);
/* The stack a device belongs to. */
TS_EXTERN ts_stack *ts_dev_stack(const ts_dev *dev);

/* Grow a device to `new_size` bytes, keeping its contents (a file layer
 * extends its file). Parents are not resized: this serves layers that manage
 * a child's size, such as a thin pool extending its data device
 * (ts_pool_extend). Equal size is a no-op. Errors (with a message in `err`):
 * -EINVAL smaller than now or not a multiple of the logical block size,
 * -EROFS read-only, -EOPNOTSUPP the layer cannot grow, or the layer's own
 * error (-ENOSPC, -EIO).
 * Thread safety: requests to `dev` may run meanwhile. The size is published
 * atomically after the layer has grown, so each request is checked against
 * the old size or the new one, never a torn value; ts_dev_size returns one
 * or the other. Calls that grow the same device must not overlap (the
 * volume and pool calls serialize them). */
TS_EXTERN int ts_dev_grow(ts_dev *dev, uint64_t new_size, ts_error *err);

/* Send a layer a message, as `dmsetup message` does a target: the layer's
 * own verbs, such as "mark NAME" for log-writes. -EOPNOTSUPP (with a
 * message) when the layer takes none, -EINVAL for one it does not know.
 * Thread-safe: messages may run beside requests. */
TS_EXTERN int ts_dev_message(ts_dev *dev, const char *message, ts_error *err);

/* The device's status as a JSON object text: request counters, and whatever
 * the layer reports (usage, mode, which kernel path each op takes). The
 * caller frees the string with free(). NULL on allocation failure.
 * Thread-safe: may run beside requests on the device. */
TS_EXTERN char *ts_dev_status_json(ts_dev *dev);
/* The device's stacked limits as a JSON object text; caller frees.
 * Thread-safe. */
TS_EXTERN char *ts_dev_limits_json(const ts_dev *dev);

/* ------------------------------------------------------------------------ */
/* Synchronous requests                                                      */

/* Read `len` bytes at `offset` into `buf`. */
TS_EXTERN int ts_pread(ts_dev *dev, void *buf, size_t len, uint64_t offset);
/* Scatter read; the total of the iovec lengths is the request length. */
TS_EXTERN int ts_preadv(ts_dev *dev, const struct iovec *iov, int iovcnt, uint64_t offset);
/* Write `len` bytes at `offset`. flags: TS_IO_FUA. */
TS_EXTERN int ts_pwrite(ts_dev *dev, const void *buf, size_t len, uint64_t offset,
                        uint32_t flags);
/* Gather write. flags: TS_IO_FUA. */
TS_EXTERN int ts_pwritev(ts_dev *dev, const struct iovec *iov, int iovcnt, uint64_t offset,
                         uint32_t flags);
/* Make every write completed before the call durable (thin: commit metadata). */
TS_EXTERN int ts_flush(ts_dev *dev);
/* The range is no longer needed. Reads afterwards return zeroes where
 * limits.discard_zeroes, otherwise old data or zeroes. -EOPNOTSUPP when the
 * device does not take discards. Parts smaller than discard_granularity may be
 * left allocated. */
TS_EXTERN int ts_discard(ts_dev *dev, uint64_t offset, uint64_t len);
/* The range reads as zeroes afterwards. flags: TS_IO_MAY_UNMAP (space may be
 * freed), TS_IO_NOFALLBACK (-EOPNOTSUPP rather than writing zero buffers),
 * TS_IO_FUA. Without MAY_UNMAP, space stays (or becomes) allocated, as after
 * ts_provision. */
TS_EXTERN int ts_write_zeroes(ts_dev *dev, uint64_t offset, uint64_t len, uint32_t flags);
/* Reserve space for the range in this device and every layer below, without
 * writing data: afterwards a write to the range does not fail with -ENOSPC
 * (until the range is discarded or shared by a later thin snapshot), and
 * never-written parts read as zeroes; data already in the range stays.
 * Costs metadata work, not data writes. -EOPNOTSUPP when some layer cannot
 * provision without zeroing (see TS_IO_MAY_ZERO, which ts_submit takes);
 * -ENOSPC when space runs out, in which case part of the range may be
 * provisioned: ts_block_status says which. */
TS_EXTERN int ts_provision(ts_dev *dev, uint64_t offset, uint64_t len);
/* Describe [offset, offset+len) as extents (TS_EXTENT_*), appended to `out`
 * (which the caller zero-initialises and frees). The extents cover the whole
 * range on success. */
TS_EXTERN int ts_block_status(ts_dev *dev, uint64_t offset, uint64_t len, ts_extent_list *out);
/* Extents per ts_block_status_bounded call when the caller gives 0. */
#define TS_BLOCK_STATUS_BATCH 4096
/* The same, in bounded steps for ranges of any size (a whole 8E volume):
 * the extents appended cover [offset, X) for some X > offset, usually
 * offset+len, but the walk stops once `max_extents` extents were added
 * (0 = TS_BLOCK_STATUS_BATCH), so one call's time and memory stay
 * bounded; continue from X, the end of the last extent. A long unallocated
 * run is one extent whatever its length. Thread-safe like ts_block_status. */
TS_EXTERN int ts_block_status_bounded(ts_dev *dev, uint64_t offset, uint64_t len,
                                      size_t max_extents, ts_extent_list *out);

/* One generic request: the form every call above takes inside the library,
 * the form layers receive, and the form the async API submits. */
typedef struct ts_io {
  uint32_t op;               /* ts_op */
  uint32_t flags;            /* TS_IO_* */
  uint64_t offset;           /* bytes */
  uint64_t length;           /* bytes; for READ/WRITE the iovec total */
  const struct iovec *iov;   /* READ/WRITE only */
  int iovcnt;                /* entries of `iov` */
} ts_io;

/* Submit `io` to `dev` synchronously: the core checks it, splits it to the
 * device's limits and emulates what the device lacks, then runs it. */
TS_EXTERN int ts_submit(ts_dev *dev, const ts_io *io);

/* The largest size or offset the library accepts, 2^63 - 1 bytes: files take
 * off_t offsets and the kernel sizes block devices in loff_t bytes. */
#define TS_SIZE_MAX ((uint64_t)INT64_MAX)

/* Parse a size: a plain integer of bytes or one with a K, M, G, T or P
 * suffix (powers of 1024; "KiB" style accepted). Returns 0, -EINVAL (bad
 * syntax) or -ERANGE (above TS_SIZE_MAX). */
TS_EXTERN int ts_parse_size(const char *s, uint64_t *out);
/* Format `bytes` as the largest exact unit ("64K", "1G", "12345"). */
TS_EXTERN void ts_format_size(uint64_t bytes, char *buf, size_t buflen);

/* One TS_HAVE_<CALL> per call above, for code that builds against
 * several versions of the library (#ifdef TS_HAVE_TS_POOL_CHECK). */
#define TS_HAVE_TS_ERROR_SET 1
#define TS_HAVE_TS_ERROR_CLEAR 1
#define TS_HAVE_TS_STRERROR 1
#define TS_HAVE_TS_ERR_NAME 1
#define TS_HAVE_TS_ERR_FROM_NAME 1
#define TS_HAVE_TS_LAST_ERROR 1
#define TS_HAVE_TS_LAST_ERRNO 1
#define TS_HAVE_TS_OP_NAME 1
#define TS_HAVE_TS_OP_FROM_NAME 1
#define TS_HAVE_TS_LIMITS_CAP 1
#define TS_HAVE_TS_LIMITS_STACK 1
#define TS_HAVE_TS_EXTENT_LIST_ADD 1
#define TS_HAVE_TS_EXTENT_LIST_RESET 1
#define TS_HAVE_TS_EXTENT_LIST_FREE 1
#define TS_HAVE_TS_STACK_OPEN_FILE 1
#define TS_HAVE_TS_STACK_OPEN_STRING 1
#define TS_HAVE_TS_STACK_CONFIG_JSON 1
#define TS_HAVE_TS_STACK_CLOSE 1
#define TS_HAVE_TS_STACK_DEV 1
#define TS_HAVE_TS_STACK_NODE 1
#define TS_HAVE_TS_STACK_NDEVS 1
#define TS_HAVE_TS_STACK_DEV_AT 1
#define TS_HAVE_TS_STACK_NNODES 1
#define TS_HAVE_TS_STACK_NODE_AT 1
#define TS_HAVE_TS_DEV_NAME 1
#define TS_HAVE_TS_DEV_TYPE 1
#define TS_HAVE_TS_DEV_SIZE 1
#define TS_HAVE_TS_DEV_LIMITS 1
#define TS_HAVE_TS_DEV_STACK 1
#define TS_HAVE_TS_DEV_GROW 1
#define TS_HAVE_TS_DEV_MESSAGE 1
#define TS_HAVE_TS_DEV_STATUS_JSON 1
#define TS_HAVE_TS_DEV_LIMITS_JSON 1
#define TS_HAVE_TS_PREAD 1
#define TS_HAVE_TS_PREADV 1
#define TS_HAVE_TS_PWRITE 1
#define TS_HAVE_TS_PWRITEV 1
#define TS_HAVE_TS_FLUSH 1
#define TS_HAVE_TS_DISCARD 1
#define TS_HAVE_TS_WRITE_ZEROES 1
#define TS_HAVE_TS_PROVISION 1
#define TS_HAVE_TS_BLOCK_STATUS 1
#define TS_HAVE_TS_BLOCK_STATUS_BOUNDED 1
#define TS_HAVE_TS_SUBMIT 1
#define TS_HAVE_TS_PARSE_SIZE 1
#define TS_HAVE_TS_FORMAT_SIZE 1

#ifdef __cplusplus
}
#endif
#endif
