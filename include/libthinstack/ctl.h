/* libthinstack: the live control socket of an open stack.
 *
 * Include <libthinstack/thinstack.h> rather than this header.
 *
 * Whoever holds a stack (an export, a VMM) can serve a JSON-RPC 2.0
 * protocol on a Unix socket, one request per line and one reply line per
 * request, so that volumes can be created, snapshotted, grown and deleted,
 * ranges provisioned and pool state read while the stack does I/O.
 * docs/control.md lists the methods. Each method runs the library call the
 * CLI runs (ts_volume_*, ts_stack_pool_extend, ts_provision...), under that
 * call's own locking, on the server's thread: commands and I/O interleave as
 * they would between two threads of the holder.
 */
#ifndef LIBTHINSTACK_CTL_H
#define LIBTHINSTACK_CTL_H

#ifndef LIBTHINSTACK_THINSTACK_H
#error "include <libthinstack/thinstack.h>, not <libthinstack/ctl.h>"
#endif

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The longest request line the server reads; a longer one is answered with
 * an error and skipped up to its newline. */
#define TS_CTL_MAX_REQUEST (64u * 1024)

/* Serve the control protocol of `stack` at `address` ("unix:PATH", or a
 * bare PATH) on a thread of its own (a libuv loop). The socket is created
 * with mode 0600 under a temporary name and renamed into place, and each
 * peer's credentials are checked (SO_PEERCRED): only this process's
 * effective uid and root are served; others get one error line and are
 * disconnected. A stale socket left at PATH (nobody answers) is replaced;
 * -EADDRINUSE when another server answers there, -EEXIST when PATH is not a
 * socket, -EBUSY when the stack already serves one. Events the stack raises
 * (low water, out of space, log full...) reach the clients that called
 * events.subscribe as notifications. The stack owns the server:
 * ts_ctl_stop or ts_stack_close stops it and removes the socket. Call it from
 * the thread that will close the stack. */
TS_EXTERN int ts_ctl_listen(ts_stack *stack, const char *address, ts_error *err);

/* Stop the stack's control server (its thread is joined, clients are
 * disconnected, the socket is removed). A request being served finishes
 * first. No-op when none runs. Not to be called from a method's thread. */
TS_EXTERN void ts_ctl_stop(ts_stack *stack);

/* The socket path the stack serves (absolute as given), or NULL. Lives until
 * ts_ctl_stop. */
TS_EXTERN const char *ts_ctl_path(const ts_stack *stack);

/* The socket path holders use when told none: CONFIG.ctl beside the
 * configuration file when that fits a socket address (108 bytes) and the
 * folder is writable (not read-only, not denied); otherwise
 * $XDG_RUNTIME_DIR/thinstack/NAME-HASH.ctl (ts_ctl_path_candidate 1), whose
 * folder this call creates with mode 0700 (refusing one that is not ours
 * alone). With no usable fallback it returns CONFIG.ctl if that fits, so
 * that binding it reports why. -ENAMETOOLONG nothing fits `n` bytes or a
 * socket address. Thread-safe; reads the environment. */
TS_EXTERN int ts_ctl_default_path(const char *config, char *buf, size_t n);

/* Place `i` where CONFIG's control socket may be, in the order holders pick
 * and clients look: 0 = CONFIG.ctl, 1 = $XDG_RUNTIME_DIR/thinstack/
 * NAME-HASH.ctl (NAME the file's name, shortened to fit; HASH 16 hex digits
 * of the FNV-1a hash of its resolved absolute path, so CONFIG must exist).
 * Creates nothing. 0, -ENAMETOOLONG it does not fit `n` bytes or a socket
 * address, -ENOENT no $XDG_RUNTIME_DIR (or not absolute) or CONFIG cannot be
 * resolved, -EINVAL `i` > 1. Thread-safe. */
TS_EXTERN int ts_ctl_path_candidate(const char *config, unsigned i, char *buf, size_t n);

/* Answer one request line as the server would, in the calling thread,
 * without a socket (events.subscribe is refused: it needs a connection).
 * Returns the reply line (without its newline) to free(), NULL when out of
 * memory. Thread-safe as the methods are. */
TS_EXTERN char *ts_ctl_call(ts_stack *stack, const char *request, size_t len);

/* One TS_HAVE_<CALL> per call above, for code that builds against
 * several versions of the library (#ifdef TS_HAVE_TS_POOL_CHECK). */
#define TS_HAVE_TS_CTL_LISTEN 1
#define TS_HAVE_TS_CTL_STOP 1
#define TS_HAVE_TS_CTL_PATH 1
#define TS_HAVE_TS_CTL_DEFAULT_PATH 1
#define TS_HAVE_TS_CTL_PATH_CANDIDATE 1
#define TS_HAVE_TS_CTL_CALL 1

#ifdef __cplusplus
}
#endif
#endif
