/* crypt: transparent sector encryption of a child, compatible with dm-crypt's
 * aes-xts-plain64 in plain mode (no LUKS header).
 *
 *   { "type": "crypt", "child": "vm0", "cipher": "aes-xts-plain64",
 *     "key_file": "vm0.key" | "key": "<hex>", "sector_size": 512,
 *     "iv_offset": 0, "iv_large_sectors": false, "offset": 0, "size": "...",
 *     "allow_discards": false, "read_only": false, "threads": 0 }
 *
 * Each sector_size unit of this device is one IEEE 1619 XTS data unit, stored
 * at the same place (+ offset) in the child. Its tweak is the plain64 IV: the
 * unit's 512-byte sector number plus iv_offset, as a 16-byte little-endian
 * integer; with iv_large_sectors that sum is divided by sector_size / 512.
 * Kernel equivalent:
 *   <0> <size/512> crypt aes-xts-plain64 <key> <iv_offset> <child> <offset/512>
 *       [<#opts> allow_discards sector_size:<n> iv_large_sectors]
 *
 * READ reads ciphertext into the caller's buffer and decrypts it there; WRITE
 * encrypts into a bounce buffer (the caller's buffer is never changed);
 * WRITE_ZEROES writes encrypted zero sectors (zero ciphertext is not zero
 * plaintext); PROVISION passes down; DISCARD only with allow_discards.
 * Requests move to and from the child in windows of at most CRYPT_WINDOW
 * bytes. Requests of CRYPT_PARALLEL_MIN bytes or more are shared by a small
 * per-layer worker pool and the calling thread, each thread claiming the
 * next window and doing its child I/O and its transform alone, so one
 * thread's child I/O overlaps another's cipher work; smaller ones run
 * inline. Cipher contexts come from a lock-free per-layer cache, so the data
 * path takes no lock except the pool's queue for large requests.
 *
 * Each context's key schedule is set once; per data unit only the tweak is
 * set. OpenSSL 3.0's EVP_CipherInit_ex2 asks the provider for the IV length
 * through a parameter lookup on every call (more than the AES work of a
 * 512-byte unit costs), so when the provider hands out its XTS dispatch
 * table the layer calls the provider's init and cipher functions directly,
 * as EVP itself does after those checks; otherwise it goes through EVP.
 * Below 2048-byte sectors whole runs of sectors go through the provider's
 * AES-ECB instead, composed into XTS (xts_batch), which beats one XTS call
 * per sector.
 */
#include <libthinstack/layer.h>

#include <errno.h>
#include <fcntl.h>
#include <openssl/core_dispatch.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/provider.h>
#include <pthread.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CRYPT_MAX_SECTOR 4096u
#define CRYPT_MAX_KEY 64u
#define CRYPT_PARALLEL_MIN (256u * 1024)  /* smallest request split across threads */
#define CRYPT_PART_MIN (64u * 1024)       /* bytes of a request per helper, at least */
#define CRYPT_SLICE_MIN (16u * 1024)      /* smallest window of a shared request */
/* Most bytes per child request of a READ or WRITE: still in cache when
 * transformed, and large, as a thin child is much faster at 1 MiB than at
 * 256 KiB. */
#define CRYPT_WINDOW (1024u * 1024)
#define CRYPT_AUTO_THREADS 8              /* cap of the default thread count */
#define CRYPT_MAX_THREADS 64
#define CRYPT_CTX_SLOTS 32                /* idle cipher contexts kept per layer */
#define CRYPT_SPIN_NS 50000L              /* a worker polls this long before it sleeps */
#define CRYPT_BATCH (16u * 1024)          /* bytes per batched XTS step (see xts_batch) */
#define CRYPT_BATCH_BELOW 2048u           /* sector sizes that batch (see batched_init) */

static const char *const supported_ciphers = "aes-xts-plain64 (also written capi:xts(aes)-plain64)";

/* A provider's own functions for one cipher (see the top of the file); all
 * NULL when the layer goes through EVP. */
struct prov_cipher {
  const OSSL_PROVIDER *prov;
  const OSSL_ALGORITHM *algs; /* from OSSL_PROVIDER_query_operation, returned at close */
  void *provctx;
  OSSL_FUNC_cipher_newctx_fn *newctx;
  OSSL_FUNC_cipher_freectx_fn *freectx;
  OSSL_FUNC_cipher_encrypt_init_fn *einit;
  OSSL_FUNC_cipher_decrypt_init_fn *dinit;
  OSSL_FUNC_cipher_cipher_fn *cipher;
};

/* One direction of XTS with its key schedule: a provider context when the
 * layer calls the provider directly, else an EVP context. */
struct xts_key {
  void *algctx;
  EVP_CIPHER_CTX *evp;
  bool enc;
};

/* One thread's cipher state: XTS needs separate contexts per direction (the
 * AES decryption key schedule differs), plus the WRITE bounce buffer. */
struct crypt_ctx {
  struct xts_key enc, dec;
  void *ecb_k1e, *ecb_k1d, *ecb_k2e; /* batched XTS: AES-ECB of each key half (NULL: unused) */
  unsigned char *tweaks;             /* batched XTS: CRYPT_BATCH bytes of tweaks */
  unsigned char *bounce;
  size_t bounce_cap;
};

enum crypt_mode { MODE_ENCRYPT, MODE_ZERO, MODE_DECRYPT };

/* The data transform of one request or one window of it. */
struct crypt_job {
  enum crypt_mode mode;
  uint64_t offset;             /* device offset of byte 0 of the job */
  const struct iovec *iov;     /* plaintext in (ENCRYPT) or ciphertext in place (DECRYPT) */
  int iovcnt;
  size_t iov_skip;             /* iovec position of byte 0 of the job */
  unsigned char *out;          /* ENCRYPT, ZERO: ciphertext out */
};

/* A READ, WRITE or WRITE_ZEROES shared by threads (run_shared): each thread
 * claims the next window and does its child I/O and its transform alone, so
 * one thread's child I/O overlaps another's cipher work, and a helper that
 * wakes late takes fewer windows, never delays the request. */
struct crypt_req {
  const ts_io *io;
  enum crypt_mode mode;
  uint32_t flags;        /* of the child WRITEs */
  uint64_t window;       /* bytes per claim, a multiple of the block size */
  _Atomic uint64_t next; /* first byte not yet claimed */
  /* The first failed window as index << 32 | -errno; UINT64_MAX while none
   * has failed. The lowest index wins, and once set nobody claims more. */
  _Atomic uint64_t fail;
  int pending; /* helper tickets queued or running; under qlock */
};

/* A ticket for one helper to join a job. */
struct crypt_task {
  struct crypt_req *req;
  struct crypt_task *next;
};

struct crypt_layer {
  ts_layer *child;
  EVP_CIPHER *cipher; /* fetched once: no per-context lookup */
  EVP_CIPHER *ecb;    /* AES-ECB of one key half, for batched XTS */
  struct prov_cipher xts, ecb_fn;
  bool batched;                /* whole runs of sectors through AES-ECB (see xts_batch) */
  bool wide;                   /* batched tweaks with AVX-512 (tweak_spread_wide) */
  unsigned char *key;          /* one mlock'ed page, wiped on close */
  size_t key_len;
  size_t page;
  char *key_file;              /* path, for status (never the key) */
  uint64_t offset, size, iv_offset;
  uint32_t sector_size;
  unsigned iv_shift;           /* log2(sector_size / 512) with iv_large_sectors, else 0 */
  bool iv_large, allow_discards, read_only;
  bool undumpable;             /* holds the process non-dumpable (see hold_undumpable) */
  unsigned threads;            /* threads that share a large request, the caller included */
  uint32_t block;              /* logical block: sector_size or the child's, the larger */
  uint64_t window;             /* bytes per child request of a READ or WRITE */

  _Atomic(struct crypt_ctx *) slot[CRYPT_CTX_SLOTS];

  pthread_t *workers;
  unsigned nworkers;
  pthread_mutex_t qlock;
  pthread_cond_t qcond;
  /* Broadcast when a request's last helper leaves it. The waiter's request
   * lives on its stack, so the helper touches it only under qlock and then
   * signals this long-lived condition, never anything in the request. */
  pthread_cond_t qdone;
  struct crypt_task *head, *tail;
  atomic_uint queued; /* tickets on the queue, read without qlock by spinning workers */
  bool stop;

  _Atomic uint64_t nr_parallel, nr_ctx_created;
};

static const ts_param crypt_params[] = {
  { "child", TS_PARAM_CHILD, TS_PARAM_REQUIRED, NULL, NULL, "the layer holding the ciphertext" },
  /* An enum, so `thinstack validate` already names what is supported. */
  { "cipher", TS_PARAM_ENUM, 0, "aes-xts-plain64|capi:xts(aes)-plain64", NULL,
    "cipher spec (default aes-xts-plain64)" },
  { "key_file", TS_PARAM_PATH, 0, NULL, NULL,
    "file holding the raw key: 32 bytes (AES-128-XTS) or 64 bytes (AES-256-XTS)" },
  { "key", TS_PARAM_STRING, TS_PARAM_SECRET, NULL, NULL, "the key as 64 or 128 hex digits (instead of key_file)" },
  { "key_file_shared", TS_PARAM_BOOL, 0, NULL, NULL,
    "accept a key_file that its group or others may access (refused by default)" },
  { "core_dumps", TS_PARAM_BOOL, 0, NULL, NULL,
    "keep the process dumpable while the key is loaded (OpenSSL's key schedule is then in a core)" },
  { "sector_size", TS_PARAM_SIZE, 0, NULL, NULL, "encryption unit: 512 (default), 1024, 2048 or 4096" },
  { "iv_offset", TS_PARAM_UINT, 0, NULL, NULL, "added to the 512-byte sector number of the IV" },
  { "iv_large_sectors", TS_PARAM_BOOL, 0, NULL, NULL,
    "IVs count sector_size units instead of 512-byte sectors" },
  { "offset", TS_PARAM_SIZE, 0, NULL, NULL, "where the ciphertext starts in the child (bytes)" },
  { "size", TS_PARAM_SIZE, 0, NULL, NULL, "device size (default: the rest of the child)" },
  { "allow_discards", TS_PARAM_BOOL, 0, NULL, NULL,
    "pass discards down (reveals which sectors are unused)" },
  { "read_only", TS_PARAM_BOOL, 0, NULL, NULL, "refuse writes" },
  { "threads", TS_PARAM_UINT, 0, NULL, NULL,
    "threads sharing a large request, the caller included (0 = CPUs, at most 8)" },
  { NULL, 0, 0, NULL, NULL, NULL },
};

/* ------------------------------------------------------------------------ */
/* Keys                                                                      */

/* The raw key lives in a page excluded from core dumps, but OpenSSL 3 keeps
 * the expanded XTS key schedule (both key halves, in the clear) inside the
 * cipher context, from its ordinary allocator: its secure heap serves
 * OPENSSL_secure_malloc only, and its allocator can be replaced only before
 * its first allocation. So while any key is loaded the process is marked
 * non-dumpable: no core is written and other users cannot ptrace it. The
 * previous state comes back when the last such key is unloaded. */
static pthread_mutex_t dump_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned dump_holders;
static int dump_saved;

static void hold_undumpable(struct crypt_layer *c)
{
  pthread_mutex_lock(&dump_lock);
  if (dump_holders++ == 0) {
    dump_saved = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
    (void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  }
  c->undumpable = true;
  pthread_mutex_unlock(&dump_lock);
}

static void release_undumpable(struct crypt_layer *c)
{
  if (!c->undumpable)
    return;
  pthread_mutex_lock(&dump_lock);
  if (--dump_holders == 0 && dump_saved > 0)
    (void)prctl(PR_SET_DUMPABLE, dump_saved, 0, 0, 0);
  c->undumpable = false;
  pthread_mutex_unlock(&dump_lock);
}

/* Replace a secret string of the stack's parsed configuration, wiping the
 * text first: the library keeps no copy of a key outside the locked page.
 * Jansson owns the buffer; it is writable, only typed const. */
#define KEY_LOADED "(loaded)"
static void wipe_json_string(json_t *v)
{
  if (!json_is_string(v))
    return;
  OPENSSL_cleanse((char *)json_string_value(v), json_string_length(v));
  (void)json_string_set(v, KEY_LOADED);
}

/* A page that is never swapped, dumped or inherited by a forked child. */
static unsigned char *key_page_alloc(size_t page, int *err)
{
  void *p = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    *err = -errno;
    return NULL;
  }
  if (mlock(p, page) != 0) {
    *err = -errno;
    munmap(p, page);
    return NULL;
  }
#ifdef MADV_DONTDUMP
  (void)madvise(p, page, MADV_DONTDUMP);
#endif
#ifdef MADV_WIPEONFORK
  (void)madvise(p, page, MADV_WIPEONFORK);
#endif
  return p;
}

static void key_page_free(unsigned char *p, size_t page)
{
  if (!p)
    return;
  OPENSSL_cleanse(p, page);
  munlock(p, page);
  munmap(p, page);
}

static int hex_digit(char ch)
{
  if (ch >= '0' && ch <= '9')
    return ch - '0';
  if (ch >= 'a' && ch <= 'f')
    return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F')
    return ch - 'A' + 10;
  return -1;
}

/* Decode the hex key into locked memory. Messages never quote the key. */
static int key_from_hex(ts_layer *l, struct crypt_layer *c, const char *hex, ts_error *err)
{
  size_t n = strlen(hex);
  for (size_t i = 0; i < n; i++)
    if (hex_digit(hex[i]) < 0)
      return ts_layer_error(l, err, -EINVAL, "key",
                            "character %zu is not a hex digit (the key is 64 or 128 hex digits)",
                            i + 1);
  if (n != 2 * 32 && n != 2 * 64)
    return ts_layer_error(l, err, -EINVAL, "key",
                          "has %zu hex digits; aes-xts-plain64 takes 64 (AES-128-XTS) or 128 "
                          "(AES-256-XTS)", n);
  for (size_t i = 0; i < n / 2; i++)
    c->key[i] = (unsigned char)(hex_digit(hex[2 * i]) << 4 | hex_digit(hex[2 * i + 1]));
  c->key_len = n / 2;
  return 0;
}

/* Read the raw key file into locked memory, without an intermediate copy. */
static int key_from_file(ts_layer *l, struct crypt_layer *c, const char *path, bool shared,
                         ts_error *err)
{
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    return ts_layer_error(l, err, -e, "key_file", "cannot open %s: %s", path, strerror(e));
  }
  /* As ssh does for private keys: a key others can read is not secret. */
  struct stat pst;
  if (!shared && fstat(fd, &pst) == 0 && S_ISREG(pst.st_mode) && (pst.st_mode & 077)) {
    close(fd);
    return ts_layer_error(l, err, -EACCES, "key_file",
                          "%s has mode %04o: its group or others may access it; make it private "
                          "(chmod 600) or set \"key_file_shared\": true",
                          path, (unsigned)(pst.st_mode & 07777));
  }
  /* Read one byte more than the largest key so an oversized file shows. */
  size_t got = 0;
  while (got < CRYPT_MAX_KEY + 1) {
    ssize_t k = read(fd, c->key + got, CRYPT_MAX_KEY + 1 - got);
    if (k < 0 && errno == EINTR)
      continue;
    if (k < 0) {
      int e = errno;
      close(fd);
      return ts_layer_error(l, err, -e, "key_file", "cannot read %s: %s", path, strerror(e));
    }
    if (k == 0)
      break;
    got += (size_t)k;
  }
  struct stat st;
  bool regular = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
  close(fd);
  if (got == 32 || got == 64) {
    c->key_len = got;
    return 0;
  }
  bool hexlike = got > 0;
  for (size_t i = 0; i < got; i++)
    hexlike &= hex_digit((char)c->key[i]) >= 0 || c->key[i] == '\n' || c->key[i] == '\r';
  OPENSSL_cleanse(c->key, CRYPT_MAX_KEY + 1);
  char held[48];
  if (got <= CRYPT_MAX_KEY || regular)
    snprintf(held, sizeof held, "%llu bytes",
             (unsigned long long)(got <= CRYPT_MAX_KEY ? got : (uint64_t)st.st_size));
  else
    snprintf(held, sizeof held, "more than %u bytes", CRYPT_MAX_KEY);
  return ts_layer_error(l, err, -EINVAL, "key_file",
                        "%s holds %s; aes-xts-plain64 takes exactly 32 (AES-128-XTS) or 64 "
                        "(AES-256-XTS) raw bytes%s", path, held,
                        hexlike ? " (it looks like hex text: put hex digits in \"key\", or write "
                                  "the raw bytes to the file)" : "");
}

static int load_key(ts_layer *l, struct crypt_layer *c, const json_t *params, ts_error *err)
{
  int r = 0;
  if (!ts_param_bool(params, "core_dumps", false))
    hold_undumpable(c);
  const char *hex = ts_param_string(params, "key", NULL);
  const char *file = ts_param_string(params, "key_file", NULL);
  if (hex && file)
    return ts_layer_error(l, err, -EINVAL, "key", "give either \"key\" or \"key_file\", not both");
  if (!hex && !file)
    return ts_layer_error(l, err, -EINVAL, NULL,
                          "needs a key: \"key_file\" (raw bytes) or \"key\" (hex digits)");
  c->key = key_page_alloc(c->page, &r);
  if (!c->key)
    return ts_layer_error(l, err, r, NULL,
                          "cannot lock memory for the key: %s (raise RLIMIT_MEMLOCK, ulimit -l)",
                          strerror(-r));
  if (hex) {
    r = key_from_hex(l, c, hex, err);
    wipe_json_string(json_object_get(params, "key"));
  } else {
    c->key_file = ts_layer_path(l, file);
    if (!c->key_file)
      return ts_layer_error(l, err, -ENOMEM, NULL, "out of memory");
    r = key_from_file(l, c, c->key_file, ts_param_bool(params, "key_file_shared", false), err);
  }
  if (r)
    return r;
  size_t half = c->key_len / 2;
  /* OpenSSL refuses XTS keys whose halves are equal (IEEE 1619 wants two
   * independent keys); say so here rather than fail on first use. */
  if (CRYPTO_memcmp(c->key, c->key + half, half) == 0)
    return ts_layer_error(l, err, -EINVAL, hex ? "key" : "key_file",
                          "the two halves of the XTS key are equal; XTS needs two different keys");
  c->cipher = EVP_CIPHER_fetch(NULL, c->key_len == 32 ? "AES-128-XTS" : "AES-256-XTS", NULL);
  if (!c->cipher)
    return ts_layer_error(l, err, -ENOTSUP, NULL, "OpenSSL offers no %s",
                          c->key_len == 32 ? "AES-128-XTS" : "AES-256-XTS");
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Cipher contexts                                                           */

/* Does `names` ("AES-256-XTS:1.3.111...") list `want`? */
static bool names_list(const char *names, const char *want)
{
  size_t n = strlen(want);
  for (const char *p = names; p && *p;) {
    const char *end = strchr(p, ':');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    if (len == n && strncasecmp(p, want, n) == 0)
      return true;
    p = end ? end + 1 : NULL;
  }
  return false;
}

/* Find the provider functions behind a fetched cipher. Any gap leaves that
 * cipher on EVP, which is slower but always right. */
static void prov_cipher_init(const EVP_CIPHER *cipher, struct prov_cipher *d)
{
  d->prov = EVP_CIPHER_get0_provider(cipher);
  int no_cache = 0;
  d->algs = d->prov ? OSSL_PROVIDER_query_operation(d->prov, OSSL_OP_CIPHER, &no_cache) : NULL;
  const OSSL_DISPATCH *f = NULL;
  for (const OSSL_ALGORITHM *a = d->algs; a && a->algorithm_names; a++)
    if (names_list(a->algorithm_names, EVP_CIPHER_get0_name(cipher))) {
      f = a->implementation;
      break;
    }
  for (; f && f->function_id; f++) {
    switch (f->function_id) {
    case OSSL_FUNC_CIPHER_NEWCTX:
      d->newctx = OSSL_FUNC_cipher_newctx(f);
      break;
    case OSSL_FUNC_CIPHER_FREECTX:
      d->freectx = OSSL_FUNC_cipher_freectx(f);
      break;
    case OSSL_FUNC_CIPHER_ENCRYPT_INIT:
      d->einit = OSSL_FUNC_cipher_encrypt_init(f);
      break;
    case OSSL_FUNC_CIPHER_DECRYPT_INIT:
      d->dinit = OSSL_FUNC_cipher_decrypt_init(f);
      break;
    case OSSL_FUNC_CIPHER_CIPHER:
      d->cipher = OSSL_FUNC_cipher_cipher(f);
      break;
    default:
      break;
    }
  }
  d->provctx = d->prov ? OSSL_PROVIDER_get0_provider_ctx(d->prov) : NULL;
  if (!d->newctx || !d->freectx || !d->einit || !d->dinit || !d->cipher || !d->provctx) {
    d->newctx = NULL;
    d->freectx = NULL;
    d->einit = NULL;
    d->dinit = NULL;
    d->cipher = NULL;
  }
}

static void prov_cipher_release(struct prov_cipher *d)
{
  if (d->algs)
    OSSL_PROVIDER_unquery_operation(d->prov, OSSL_OP_CIPHER, d->algs);
  memset(d, 0, sizeof *d);
}

/* Both free functions clear the key schedule before they free it. */
static void xts_key_free(const struct crypt_layer *c, struct xts_key *k)
{
  if (k->algctx)
    c->xts.freectx(k->algctx);
  EVP_CIPHER_CTX_free(k->evp);
  k->algctx = NULL;
  k->evp = NULL;
}

static bool xts_key_init(const struct crypt_layer *c, struct xts_key *k, int enc)
{
  k->enc = enc;
  if (c->xts.newctx) {
    k->algctx = c->xts.newctx(c->xts.provctx);
    return k->algctx &&
           (enc ? c->xts.einit : c->xts.dinit)(k->algctx, c->key, c->key_len, NULL, 0, NULL) == 1;
  }
  k->evp = EVP_CIPHER_CTX_new();
  return k->evp && EVP_CipherInit_ex2(k->evp, c->cipher, c->key, NULL, enc, NULL) == 1;
}

static void ctx_free(const struct crypt_layer *c, struct crypt_ctx *x)
{
  if (!x)
    return;
  xts_key_free(c, &x->enc);
  xts_key_free(c, &x->dec);
  void *ecb[] = { x->ecb_k1e, x->ecb_k1d, x->ecb_k2e };
  for (size_t i = 0; i < sizeof ecb / sizeof ecb[0]; i++)
    if (ecb[i])
      c->ecb_fn.freectx(ecb[i]);
  free(x->tweaks);
  free(x->bounce);
  free(x);
}

/* An AES-ECB context of one key half, for batched XTS. */
static void *ecb_key_new(const struct crypt_layer *c, const unsigned char *key, int enc)
{
  void *k = c->ecb_fn.newctx(c->ecb_fn.provctx);
  size_t half = c->key_len / 2;
  if (k && (enc ? c->ecb_fn.einit : c->ecb_fn.dinit)(k, key, half, NULL, 0, NULL) != 1) {
    c->ecb_fn.freectx(k);
    k = NULL;
  }
  return k;
}

static struct crypt_ctx *ctx_new(struct crypt_layer *c)
{
  struct crypt_ctx *x = calloc(1, sizeof *x);
  if (!x)
    return NULL;
  bool ok = xts_key_init(c, &x->enc, 1) && xts_key_init(c, &x->dec, 0);
  if (ok && c->batched) {
    /* XTS: key1 (the first half) enciphers the data, key2 the tweaks. */
    const unsigned char *key1 = c->key, *key2 = c->key + c->key_len / 2;
    x->ecb_k1e = ecb_key_new(c, key1, 1);
    x->ecb_k1d = ecb_key_new(c, key1, 0);
    x->ecb_k2e = ecb_key_new(c, key2, 1);
    ok = x->ecb_k1e && x->ecb_k1d && x->ecb_k2e &&
         posix_memalign((void **)&x->tweaks, 64, CRYPT_BATCH) == 0;
  }
  if (!ok) {
    ctx_free(c, x);
    return NULL;
  }
  atomic_fetch_add_explicit(&c->nr_ctx_created, 1, memory_order_relaxed);
  return x;
}

/* Where a thread starts scanning the slots, so threads rarely collide. */
static unsigned slot_hint(void)
{
  static _Thread_local unsigned hint = UINT32_MAX;
  if (hint == UINT32_MAX)
    hint = (unsigned)(((uintptr_t)&hint >> 12) % CRYPT_CTX_SLOTS);
  return hint;
}

static struct crypt_ctx *ctx_get(struct crypt_layer *c)
{
  unsigned h = slot_hint();
  for (unsigned i = 0; i < CRYPT_CTX_SLOTS; i++) {
    struct crypt_ctx *x = atomic_exchange_explicit(&c->slot[(h + i) % CRYPT_CTX_SLOTS], NULL,
                                                   memory_order_acquire);
    if (x)
      return x;
  }
  return ctx_new(c);
}

static void ctx_put(struct crypt_layer *c, struct crypt_ctx *x)
{
  unsigned h = slot_hint();
  for (unsigned i = 0; i < CRYPT_CTX_SLOTS; i++) {
    struct crypt_ctx *expect = NULL;
    if (atomic_compare_exchange_strong_explicit(&c->slot[(h + i) % CRYPT_CTX_SLOTS], &expect, x,
                                                memory_order_release, memory_order_relaxed))
      return;
  }
  ctx_free(c, x);
}

static int ctx_bounce(struct crypt_ctx *x, size_t need)
{
  if (x->bounce_cap >= need)
    return 0;
  size_t cap = need < 64 * 1024 ? 64 * 1024 : need;
  void *p;
  /* Page-aligned so an O_DIRECT child needs no second copy. */
  if (posix_memalign(&p, 4096, cap))
    return -ENOMEM;
  free(x->bounce);
  x->bounce = p;
  x->bounce_cap = cap;
  return 0;
}

/* ------------------------------------------------------------------------ */
/* The transform                                                             */

static uint64_t iv_sector(const struct crypt_layer *c, uint64_t dev_off)
{
  return (dev_off / 512 + c->iv_offset) >> c->iv_shift;
}

/* One XTS data unit. The context keeps its key schedule; only the tweak is
 * set. */
static int xts_unit(const struct crypt_layer *c, const struct xts_key *k, uint64_t sector,
                    const unsigned char *in, unsigned char *out, uint32_t len)
{
  unsigned char iv[16] = { 0 };
  for (int i = 0; i < 8; i++)
    iv[i] = (unsigned char)(sector >> (8 * i));
  if (k->algctx) {
    size_t n = 0;
    if ((k->enc ? c->xts.einit : c->xts.dinit)(k->algctx, NULL, 0, iv, sizeof iv, NULL) != 1 ||
        c->xts.cipher(k->algctx, out, &n, len, in, len) != 1 || n != len)
      return -EIO;
    return 0;
  }
  int n = 0;
  if (EVP_CipherInit_ex2(k->evp, NULL, NULL, iv, -1, NULL) != 1 ||
      EVP_CipherUpdate(k->evp, out, &n, in, (int)len) != 1 || n != (int)len)
    return -EIO;
  return 0;
}

/* The address of the next `n` bytes of an iovec if they are contiguous. */
struct iov_cursor {
  const struct iovec *iov;
  int cnt, i;
  size_t off;
};

static void cursor_seek(struct iov_cursor *k, const struct iovec *iov, int cnt, size_t skip)
{
  k->iov = iov;
  k->cnt = cnt;
  k->i = 0;
  while (k->i < cnt && skip >= iov[k->i].iov_len) {
    skip -= iov[k->i].iov_len;
    k->i++;
  }
  k->off = skip;
}

static unsigned char *cursor_span(const struct iov_cursor *k, size_t n)
{
  if (k->i < k->cnt && k->iov[k->i].iov_len - k->off >= n)
    return (unsigned char *)k->iov[k->i].iov_base + k->off;
  return NULL;
}

static void cursor_advance(struct iov_cursor *k, size_t n)
{
  while (k->i < k->cnt) {
    size_t left = k->iov[k->i].iov_len - k->off;
    if (n < left) {
      k->off += n;
      return;
    }
    n -= left;
    k->i++;
    k->off = 0;
    if (n == 0)
      break;
  }
  /* Land on the next non-empty element. */
  while (k->i < k->cnt && k->iov[k->i].iov_len == 0)
    k->i++;
}

/* Batched XTS (IEEE 1619) from AES-ECB, for a run of whole sectors: one
 * ECB call with key2 over every sector's IV gives each sector's first
 * tweak; each next block's tweak is the previous one times alpha in
 * GF(2^128), little-endian; the data is XORed with its tweaks, enciphered
 * with key1 in ONE ECB call, and XORed again. OpenSSL's XTS keeps 6 blocks
 * in flight and its ECB 8, and one call per run instead of per sector saves
 * the call's fixed cost, so this beats calling XTS per sector even with the
 * two extra passes over data that stays in L1. `in` may equal `out`. */
#if defined(__SSE2__)
#include <emmintrin.h>

/* t * alpha: a 1-bit left shift of the 128-bit value; the bit out of the low
 * half moves into the high half, the bit out of the top folds back as 0x87. */
static inline __m128i gf_double(__m128i t)
{
  const __m128i fold = _mm_set_epi32(0, 1, 0, 0x87);
  __m128i top = _mm_srai_epi32(_mm_shuffle_epi32(t, _MM_SHUFFLE(1, 1, 3, 3)), 31);
  return _mm_xor_si128(_mm_add_epi64(t, t), _mm_and_si128(top, fold));
}

/* One block of one sector: store its tweak, XOR it into the data, double it. */
#define SPREAD_ONE(t, pos)                                                                         \
  do {                                                                                             \
    _mm_store_si128((__m128i *)(tw + (pos)), t);                                                   \
    _mm_storeu_si128((__m128i *)(out + (pos)),                                                     \
                     _mm_xor_si128(_mm_loadu_si128((const __m128i *)(in + (pos))), t));            \
    t = gf_double(t);                                                                              \
  } while (0)

/* Four sectors at a time: a doubling's chain is 4 instructions long, so four
 * independent chains keep the vector units busy where two leave them waiting
 * (measured: 1.7 against 2.0 cycles per block for the doublings alone). */
static void tweak_spread(const unsigned char *t0, size_t nsec, uint32_t ss, const unsigned char *in,
                         unsigned char *out, unsigned char *tw)
{
  size_t s = 0;
  for (; s + 4 <= nsec; s += 4) {
    __m128i a = _mm_loadu_si128((const __m128i *)(t0 + 16 * s));
    __m128i b = _mm_loadu_si128((const __m128i *)(t0 + 16 * s + 16));
    __m128i c = _mm_loadu_si128((const __m128i *)(t0 + 16 * s + 32));
    __m128i d = _mm_loadu_si128((const __m128i *)(t0 + 16 * s + 48));
    size_t p = s * ss;
    for (uint32_t i = 0; i < ss; i += 16) {
      SPREAD_ONE(a, p + i);
      SPREAD_ONE(b, p + ss + i);
      SPREAD_ONE(c, p + 2 * ss + i);
      SPREAD_ONE(d, p + 3 * ss + i);
    }
  }
  for (; s < nsec; s++) {
    __m128i a = _mm_loadu_si128((const __m128i *)(t0 + 16 * s));
    for (uint32_t i = 0; i < ss; i += 16)
      SPREAD_ONE(a, s * ss + i);
  }
}
#undef SPREAD_ONE

static void tweak_unmask(unsigned char *out, const unsigned char *tw, size_t n)
{
  for (size_t i = 0; i < n; i += 16) {
    __m128i d = _mm_loadu_si128((const __m128i *)(out + i));
    _mm_storeu_si128((__m128i *)(out + i),
                     _mm_xor_si128(d, _mm_load_si128((const __m128i *)(tw + i))));
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define CRYPT_WIDE 1

/* With AVX-512 and VPCLMULQDQ one register holds 4 tweaks, and each step
 * multiplies by x^8 at once instead of doubling 8 times: shift every 64-bit
 * half left by 8, move the low half's top byte into the high half, and fold
 * the high half's top byte back into the low one as its carry-less product
 * with 0x87 (x^128 = x^7 + x^2 + x + 1). About 3 instructions per block
 * instead of 13, which is what lets ECB's lead over XTS show. The first 8
 * tweaks of a sector come the same way, with shifts of 0 to 7 per lane. */
#define WIDE_TARGET __attribute__((target("avx512f,avx512bw,vpclmulqdq")))

/* t * x^k for k < 57, k per 128-bit lane as shift counts (k, k) and (64 - k, 64 - k). */
WIDE_TARGET static inline __m512i gf_times_xk(__m512i t, __m512i k, __m512i rk)
{
  const __m512i fold = _mm512_set1_epi64(0x87);
  __m512i top = _mm512_srlv_epi64(t, rk);
  return _mm512_ternarylogic_epi64(_mm512_sllv_epi64(t, k), _mm512_bslli_epi128(top, 8),
                                   _mm512_clmulepi64_epi128(top, fold, 0x01), 0x96);
}

/* ss is a multiple of 128: two registers cover 8 blocks per step. */
WIDE_TARGET static void tweak_spread_wide(const unsigned char *t0, size_t nsec, uint32_t ss,
                                          const unsigned char *in, unsigned char *out,
                                          unsigned char *tw)
{
  const __m512i k03 = _mm512_set_epi64(3, 3, 2, 2, 1, 1, 0, 0);
  const __m512i k47 = _mm512_add_epi64(k03, _mm512_set1_epi64(4));
  const __m512i k8 = _mm512_set1_epi64(8), r8 = _mm512_set1_epi64(56), r64 = _mm512_set1_epi64(64);
  for (size_t s = 0; s < nsec; s++) {
    /* The sector's first 8 tweaks: T0 times x^0 .. x^7, one per lane. */
    __m512i first = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(t0 + 16 * s)));
    __m512i a = gf_times_xk(first, k03, _mm512_sub_epi64(r64, k03));
    __m512i b = gf_times_xk(first, k47, _mm512_sub_epi64(r64, k47));
    size_t base = s * ss;
    for (uint32_t i = 0; i < ss; i += 128) {
      size_t p = base + i;
      _mm512_store_si512((void *)(tw + p), a);
      _mm512_store_si512((void *)(tw + p + 64), b);
      _mm512_storeu_si512((void *)(out + p),
                          _mm512_xor_si512(_mm512_loadu_si512((const void *)(in + p)), a));
      _mm512_storeu_si512((void *)(out + p + 64),
                          _mm512_xor_si512(_mm512_loadu_si512((const void *)(in + p + 64)), b));
      a = gf_times_xk(a, k8, r8);
      b = gf_times_xk(b, k8, r8);
    }
  }
}

WIDE_TARGET static void tweak_unmask_wide(unsigned char *out, const unsigned char *tw, size_t n)
{
  for (size_t i = 0; i < n; i += 64)
    _mm512_storeu_si512((void *)(out + i),
                        _mm512_xor_si512(_mm512_loadu_si512((const void *)(out + i)),
                                         _mm512_load_si512((const void *)(tw + i))));
}

static bool wide_supported(void)
{
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("vpclmulqdq");
}
#endif
#else
static inline uint64_t le64_load(const unsigned char *p)
{
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--)
    v = v << 8 | p[i];
  return v;
}

static inline void le64_store(unsigned char *p, uint64_t v)
{
  for (int i = 0; i < 8; i++)
    p[i] = (unsigned char)(v >> (8 * i));
}

static void tweak_spread(const unsigned char *t0, size_t nsec, uint32_t ss, const unsigned char *in,
                         unsigned char *out, unsigned char *tw)
{
  for (size_t s = 0; s < nsec; s++) {
    uint64_t lo = le64_load(t0 + 16 * s), hi = le64_load(t0 + 16 * s + 8);
    for (size_t p = s * ss; p < (s + 1) * ss; p += 16) {
      le64_store(tw + p, lo);
      le64_store(tw + p + 8, hi);
      le64_store(out + p, le64_load(in + p) ^ lo);
      le64_store(out + p + 8, le64_load(in + p + 8) ^ hi);
      uint64_t carry = hi >> 63;
      hi = hi << 1 | lo >> 63;
      lo = lo << 1 ^ ((0 - carry) & 0x87);
    }
  }
}

static void tweak_unmask(unsigned char *out, const unsigned char *tw, size_t n)
{
  for (size_t i = 0; i < n; i++)
    out[i] ^= tw[i];
}
#endif

static int xts_batch(const struct crypt_layer *c, const struct crypt_ctx *x, bool enc,
                     uint64_t dev_off, const unsigned char *in, unsigned char *out, size_t n)
{
  const uint32_t ss = c->sector_size;
  const size_t nsec = n / ss;
  alignas(16) unsigned char t0[CRYPT_BATCH / 512 * 16];
  memset(t0, 0, nsec * 16);
  for (size_t s = 0; s < nsec; s++) {
    uint64_t sector = iv_sector(c, dev_off + s * ss);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(t0 + 16 * s, &sector, 8);
#else
    for (int i = 0; i < 8; i++)
      t0[16 * s + i] = (unsigned char)(sector >> (8 * i));
#endif
  }
  size_t got = 0;
  if (c->ecb_fn.cipher(x->ecb_k2e, t0, &got, nsec * 16, t0, nsec * 16) != 1 || got != nsec * 16)
    return -EIO;
#ifdef CRYPT_WIDE
  if (c->wide)
    tweak_spread_wide(t0, nsec, ss, in, out, x->tweaks);
  else
#endif
    tweak_spread(t0, nsec, ss, in, out, x->tweaks);
  if (c->ecb_fn.cipher(enc ? x->ecb_k1e : x->ecb_k1d, out, &got, n, out, n) != 1 || got != n)
    return -EIO;
#ifdef CRYPT_WIDE
  if (c->wide)
    tweak_unmask_wide(out, x->tweaks, n);
  else
#endif
    tweak_unmask(out, x->tweaks, n);
  return 0;
}

/* Batched XTS needs the provider's AES-ECB of the key half's size. */
static void batched_init(struct crypt_layer *c)
{
  c->batched = false;
  if (!c->xts.newctx)
    return;
  c->ecb = EVP_CIPHER_fetch(NULL, c->key_len == 32 ? "AES-128-ECB" : "AES-256-ECB", NULL);
  if (!c->ecb)
    return;
  prov_cipher_init(c->ecb, &c->ecb_fn);
  /* Measured with `thinstack bench crypt`: at 512-byte sectors batching
   * runs 1.05-1.3x the per-sector XTS call; at 4096 the call's fixed cost
   * is spread over 8x the data and XTS per sector is the faster (batching
   * 0.8-0.95x of it), so from 2048 up the layer keeps the XTS call. */
  c->batched = c->ecb_fn.newctx != NULL && c->sector_size < CRYPT_BATCH_BELOW;
#ifdef CRYPT_WIDE
  c->wide = c->batched && wide_supported();
#endif
}

/* Contiguous bytes left in the cursor's element. */
static size_t cursor_run(const struct iov_cursor *k)
{
  return k->i < k->cnt ? k->iov[k->i].iov_len - k->off : 0;
}

/* Transform bytes [skip, skip+len) of a job: batched runs of whole sectors
 * where the buffer is contiguous, single sectors where one straddles iovec
 * elements (or batching is off). */
static int transform(const struct crypt_layer *c, struct crypt_ctx *x, const struct crypt_job *j,
                     uint64_t skip, uint64_t len)
{
  const uint32_t ss = c->sector_size;
  alignas(64) unsigned char tmp[CRYPT_MAX_SECTOR];
  const unsigned char *zero = ts_zero_buffer();
  bool used_tmp = false;
  struct iov_cursor k = { 0 };
  const bool enc = j->mode != MODE_DECRYPT;
  const struct xts_key *ctx = enc ? &x->enc : &x->dec;
  if (j->mode != MODE_ZERO)
    cursor_seek(&k, j->iov, j->iovcnt, j->iov_skip + skip);
  int r = 0;
  for (uint64_t p = skip, end = skip + len, n; !r && p < end; p += n) {
    n = end - p < CRYPT_BATCH ? end - p : CRYPT_BATCH;
    if (j->mode == MODE_ZERO) {
      if (c->batched)
        r = xts_batch(c, x, true, j->offset + p, zero, j->out + p, (size_t)n);
      else
        for (uint64_t q = 0; !r && q < n; q += ss)
          r = xts_unit(c, ctx, iv_sector(c, j->offset + p + q), zero, j->out + p + q, ss);
      continue;
    }
    uint64_t run = cursor_run(&k);
    n = c->batched && run >= ss ? (n < run ? n : run) / ss * ss : ss;
    unsigned char *span = cursor_span(&k, (size_t)n);
    unsigned char *dst = j->mode == MODE_ENCRYPT ? j->out + p : span;
    if (span && c->batched) {
      r = xts_batch(c, x, enc, j->offset + p, span, dst, (size_t)n);
    } else if (span) {
      r = xts_unit(c, ctx, iv_sector(c, j->offset + p), span, dst, ss);
    } else {
      /* A sector split across iovec elements: gather, transform, scatter. */
      size_t at = j->iov_skip + p;
      used_tmp = true;
      ts_iov_to_buf(j->iov, j->iovcnt, at, tmp, ss);
      r = xts_unit(c, ctx, iv_sector(c, j->offset + p), tmp, enc ? j->out + p : tmp, ss);
      if (!enc)
        ts_iov_from_buf(j->iov, j->iovcnt, at, tmp, ss);
    }
    cursor_advance(&k, (size_t)n);
  }
  if (used_tmp)
    OPENSSL_cleanse(tmp, sizeof tmp); /* it held plaintext */
  return r;
}

/* One window of a shared request: [at, at+n) of the device request. A
 * WRITE's ciphertext goes to this thread's own bounce buffer, never the
 * caller's; a READ fills the caller's buffer from the child and decrypts it
 * there. */
static int window_io(struct crypt_layer *c, struct crypt_ctx *x, const struct crypt_req *q,
                     ts_iov_buf *slice, uint64_t at, uint64_t n)
{
  const ts_io *io = q->io;
  struct crypt_job j = { .mode = q->mode,
                         .offset = io->offset + at,
                         .iov = io->iov,
                         .iovcnt = io->iovcnt,
                         .iov_skip = (size_t)at };
  if (q->mode == MODE_DECRYPT) {
    int cnt = ts_iov_buf_slice(slice, io->iov, io->iovcnt, (size_t)at, (size_t)n);
    if (cnt < 0)
      return cnt;
    ts_io sub = { .op = TS_OP_READ,
                  .offset = c->offset + io->offset + at,
                  .length = n,
                  .iov = slice->v,
                  .iovcnt = cnt };
    int r = ts_submit(c->child, &sub);
    return r ? r : transform(c, x, &j, 0, n);
  }
  int r = ctx_bounce(x, (size_t)q->window);
  if (r)
    return r;
  j.out = x->bounce;
  r = transform(c, x, &j, 0, n);
  if (r)
    return r;
  struct iovec v = { x->bounce, (size_t)n };
  ts_io w = { .op = TS_OP_WRITE,
              .flags = q->flags,
              .offset = c->offset + io->offset + at,
              .length = n,
              .iov = &v,
              .iovcnt = 1 };
  return ts_submit(c->child, &w);
}

static void req_fail(struct crypt_req *q, uint64_t index, int r)
{
  uint64_t mine = index << 32 | (uint32_t)-r;
  uint64_t seen = atomic_load_explicit(&q->fail, memory_order_relaxed);
  while (mine < seen && !atomic_compare_exchange_weak_explicit(
                            &q->fail, &seen, mine, memory_order_relaxed, memory_order_relaxed))
    ;
}

/* Claim windows of `q` and move them until none is left or one failed. */
static void req_work(struct crypt_layer *c, struct crypt_ctx *x, struct crypt_req *q)
{
  ts_iov_buf slice;
  int r = ts_iov_buf_init(&slice, q->io->iovcnt);
  while (atomic_load_explicit(&q->fail, memory_order_relaxed) == UINT64_MAX) {
    uint64_t at = atomic_fetch_add_explicit(&q->next, q->window, memory_order_relaxed);
    if (at >= q->io->length)
      break;
    uint64_t n = q->io->length - at < q->window ? q->io->length - at : q->window;
    if (!r)
      r = x ? window_io(c, x, q, &slice, at, n) : -ENOMEM;
    if (r)
      req_fail(q, at / q->window, r);
  }
  ts_iov_buf_free(&slice);
}

static void task_run(struct crypt_layer *c, struct crypt_ctx *x, struct crypt_task *t)
{
  struct crypt_req *q = t->req;
  req_work(c, x, q);
  pthread_mutex_lock(&c->qlock);
  if (--q->pending == 0)
    pthread_cond_broadcast(&c->qdone);
  pthread_mutex_unlock(&c->qlock);
}

static struct crypt_task *queue_pop(struct crypt_layer *c)
{
  struct crypt_task *t = c->head;
  if (t) {
    atomic_fetch_sub_explicit(&c->queued, 1, memory_order_relaxed);
    c->head = t->next;
    if (!c->head)
      c->tail = NULL;
  }
  return t;
}

/* Take the request's tickets no helper has popped off the queue; under qlock. */
static int queue_withdraw(struct crypt_layer *c, const struct crypt_req *q)
{
  int n = 0;
  struct crypt_task *prev = NULL;
  for (struct crypt_task *t = c->head; t;) {
    struct crypt_task *next = t->next;
    if (t->req == q) {
      if (prev)
        prev->next = next;
      else
        c->head = next;
      if (c->tail == t)
        c->tail = prev;
      atomic_fetch_sub_explicit(&c->queued, 1, memory_order_relaxed);
      n++;
    } else {
      prev = t;
    }
    t = next;
  }
  return n;
}

/* A worker that just finished a job polls for the next one a little while
 * before it sleeps: large requests often come back to back, and
 * a sleeping worker's wake-up (a futex, on a VM an IPI to a halted vCPU)
 * took as long as its share of a window. */
static void worker_spin(struct crypt_layer *c)
{
  struct timespec t0, t;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (unsigned i = 1;; i++) {
    if (atomic_load_explicit(&c->queued, memory_order_acquire))
      return;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
    if (i % 64 == 0) {
      clock_gettime(CLOCK_MONOTONIC, &t);
      if ((t.tv_sec - t0.tv_sec) * 1000000000L + (t.tv_nsec - t0.tv_nsec) > CRYPT_SPIN_NS)
        return;
    }
  }
}

static void *worker_main(void *arg)
{
  struct crypt_layer *c = arg;
  struct crypt_ctx *x = NULL;
  pthread_mutex_lock(&c->qlock);
  for (;;) {
    if (!c->head && !c->stop) {
      pthread_mutex_unlock(&c->qlock);
      worker_spin(c);
      pthread_mutex_lock(&c->qlock);
    }
    while (!c->head && !c->stop)
      pthread_cond_wait(&c->qcond, &c->qlock);
    if (c->stop && !c->head)
      break;
    struct crypt_task *t = queue_pop(c);
    pthread_mutex_unlock(&c->qlock);
    if (!x)
      x = ctx_get(c);
    task_run(c, x, t);
    pthread_mutex_lock(&c->qlock);
  }
  pthread_mutex_unlock(&c->qlock);
  if (x)
    ctx_put(c, x);
  return NULL;
}

/* Helpers that would share a request of `len` bytes: none below
 * CRYPT_PARALLEL_MIN, and at least CRYPT_PART_MIN bytes each. */
static unsigned req_helpers(const struct crypt_layer *c, uint64_t len)
{
  unsigned helpers = c->nworkers < c->threads - 1 ? c->nworkers : c->threads - 1;
  if (len < CRYPT_PARALLEL_MIN)
    return 0;
  if (helpers > len / CRYPT_PART_MIN)
    helpers = (unsigned)(len / CRYPT_PART_MIN);
  return helpers;
}

/* Run a request on `helpers` workers and the calling thread: queue a ticket
 * per helper, claim windows, then withdraw the tickets no helper took and
 * wait only for helpers already inside the request. Returns only when every
 * window is done, so nothing is acknowledged early. With no helpers the
 * calling thread moves the windows in order. */
static int run_shared(struct crypt_layer *c, struct crypt_ctx *x, const ts_io *io,
                      enum crypt_mode mode, uint32_t flags, unsigned helpers)
{
  uint64_t window = c->window;
  /* Two windows per thread: the faster thread can take the larger share,
   * and child requests stay large. */
  if (helpers && io->length / ((uint64_t)(helpers + 1) * 2) < window)
    window = io->length / ((uint64_t)(helpers + 1) * 2);
  if (window < CRYPT_SLICE_MIN)
    window = CRYPT_SLICE_MIN;
  window = window < c->block ? c->block : window / c->block * c->block;
  struct crypt_req q = { .io = io, .mode = mode, .flags = flags, .window = window };
  atomic_init(&q.next, 0);
  atomic_init(&q.fail, UINT64_MAX);
  if (!helpers) {
    req_work(c, x, &q);
    goto out;
  }
  struct crypt_task task[CRYPT_MAX_THREADS];
  q.pending = (int)helpers;
  atomic_fetch_add_explicit(&c->nr_parallel, 1, memory_order_relaxed);
  pthread_mutex_lock(&c->qlock);
  for (unsigned i = 0; i < helpers; i++) {
    task[i] = (struct crypt_task){ &q, NULL };
    if (c->tail)
      c->tail->next = &task[i];
    else
      c->head = &task[i];
    c->tail = &task[i];
  }
  atomic_fetch_add_explicit(&c->queued, helpers, memory_order_release);
  pthread_cond_broadcast(&c->qcond);
  pthread_mutex_unlock(&c->qlock);

  req_work(c, x, &q);
  pthread_mutex_lock(&c->qlock);
  q.pending -= queue_withdraw(c, &q);
  while (q.pending)
    pthread_cond_wait(&c->qdone, &c->qlock);
  pthread_mutex_unlock(&c->qlock);
out:;
  uint64_t fail = atomic_load(&q.fail);
  return fail == UINT64_MAX ? 0 : -(int)(uint32_t)fail;
}

/* ------------------------------------------------------------------------ */
/* Layer callbacks                                                           */

static void crypt_close(ts_layer *l);

static int crypt_open(ts_layer *l, const json_t *params, ts_error *err)
{
  const char *cipher = ts_param_string(params, "cipher", "aes-xts-plain64");
  if (strcmp(cipher, "aes-xts-plain64") != 0 && strcmp(cipher, "capi:xts(aes)-plain64") != 0)
    return ts_layer_error(l, err, -EINVAL, "cipher", "\"%s\" is not supported; supported: %s",
                          cipher, supported_ciphers);

  ts_layer *child = ts_layer_child(l, ts_param_string(params, "child", ""));
  const ts_limits *cl = ts_dev_limits(child);
  uint64_t ss = ts_param_size(params, "sector_size", 512);
  if (ss != 512 && ss != 1024 && ss != 2048 && ss != 4096)
    return ts_layer_error(l, err, -EINVAL, "sector_size",
                          "%llu is not a valid sector size: use 512, 1024, 2048 or 4096",
                          (unsigned long long)ss);
  uint64_t iv_offset = ts_param_uint(params, "iv_offset", 0);
  if (iv_offset % (ss / 512))
    return ts_layer_error(l, err, -EINVAL, "iv_offset",
                          "%llu must be a multiple of %llu (sector_size %llu in 512-byte sectors), "
                          "as dm-crypt requires", (unsigned long long)iv_offset,
                          (unsigned long long)(ss / 512), (unsigned long long)ss);
  uint64_t offset = ts_param_size(params, "offset", 0);
  uint64_t align = cl->logical_block_size > 512 ? cl->logical_block_size : 512;
  if (offset % align || offset >= cl->size)
    return ts_layer_error(l, err, -EINVAL, "offset",
                          "%llu must be a multiple of %llu (the block size of \"%s\") below its "
                          "size %llu", (unsigned long long)offset, (unsigned long long)align,
                          ts_dev_name(child), (unsigned long long)cl->size);
  /* Whole blocks of this device: sector_size or the child's block, the larger. */
  uint64_t unit = ss > cl->logical_block_size ? ss : cl->logical_block_size;
  uint64_t size = ts_param_size(params, "size", (cl->size - offset) / unit * unit);
  if (size == 0 || size % unit || size > cl->size - offset)
    return ts_layer_error(l, err, -EINVAL, "size",
                          "%llu must be a non-zero multiple of %llu (the block size) that fits in "
                          "\"%s\" after offset %llu (%llu bytes left)", (unsigned long long)size,
                          (unsigned long long)unit, ts_dev_name(child), (unsigned long long)offset,
                          (unsigned long long)(cl->size - offset));
  uint64_t threads = ts_param_uint(params, "threads", 0);
  if (threads > CRYPT_MAX_THREADS)
    return ts_layer_error(l, err, -EINVAL, "threads", "%llu is more than %u",
                          (unsigned long long)threads, CRYPT_MAX_THREADS);
  if (threads == 0) {
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    threads = cpus < 1 ? 1 : cpus > CRYPT_AUTO_THREADS ? CRYPT_AUTO_THREADS : (uint64_t)cpus;
  }

  struct crypt_layer *c = calloc(1, sizeof *c);
  if (!c)
    return ts_layer_error(l, err, -ENOMEM, NULL, "out of memory");
  c->child = child;
  c->page = (size_t)sysconf(_SC_PAGESIZE);
  c->offset = offset;
  c->size = size;
  c->iv_offset = iv_offset;
  c->sector_size = (uint32_t)ss;
  c->iv_large = ts_param_bool(params, "iv_large_sectors", false);
  for (uint64_t u = ss / 512; c->iv_large && u > 1; u >>= 1)
    c->iv_shift++;
  c->allow_discards = ts_param_bool(params, "allow_discards", false);
  c->read_only = ts_param_bool(params, "read_only", false) || ts_layer_force_read_only(l);
  c->threads = (unsigned)threads;
  c->block = (uint32_t)unit;
  c->window = CRYPT_WINDOW;
  pthread_mutex_init(&c->qlock, NULL);
  pthread_cond_init(&c->qcond, NULL);
  pthread_cond_init(&c->qdone, NULL);
  ts_layer_set_priv(l, c);

  int r = load_key(l, c, params, err);
  if (r)
    goto fail;
  prov_cipher_init(c->cipher, &c->xts);
  batched_init(c);
  /* Prove the key works now, so the data path never meets a setup error. */
  struct crypt_ctx *x = ctx_new(c);
  if (!x) {
    r = ts_layer_error(l, err, -EIO, NULL, "OpenSSL refused the %zu-bit AES-XTS key",
                       c->key_len * 8);
    goto fail;
  }
  ctx_put(c, x);
  if (c->threads > 1) {
    c->workers = calloc(c->threads - 1, sizeof *c->workers);
    if (!c->workers) {
      r = ts_layer_error(l, err, -ENOMEM, NULL, "out of memory");
      goto fail;
    }
    for (unsigned i = 0; i + 1 < c->threads; i++) {
      int e = pthread_create(&c->workers[i], NULL, worker_main, c);
      if (e) {
        r = ts_layer_error(l, err, -e, "threads", "cannot start worker thread: %s", strerror(e));
        goto fail;
      }
      c->nworkers++;
    }
  }
  return 0;
fail:
  crypt_close(l);
  ts_layer_set_priv(l, NULL);
  return r;
}

static void crypt_close(ts_layer *l)
{
  struct crypt_layer *c = ts_layer_priv(l);
  if (!c)
    return;
  pthread_mutex_lock(&c->qlock);
  c->stop = true;
  pthread_cond_broadcast(&c->qcond);
  pthread_mutex_unlock(&c->qlock);
  for (unsigned i = 0; i < c->nworkers; i++)
    pthread_join(c->workers[i], NULL);
  free(c->workers);
  for (unsigned i = 0; i < CRYPT_CTX_SLOTS; i++)
    ctx_free(c, atomic_exchange(&c->slot[i], NULL));
  prov_cipher_release(&c->xts);
  prov_cipher_release(&c->ecb_fn);
  EVP_CIPHER_free(c->cipher);
  EVP_CIPHER_free(c->ecb);
  key_page_free(c->key, c->page);
  release_undumpable(c);
  pthread_mutex_destroy(&c->qlock);
  pthread_cond_destroy(&c->qcond);
  pthread_cond_destroy(&c->qdone);
  free(c->key_file);
  free(c);
}

static uint64_t lcm64(uint64_t a, uint64_t b)
{
  if (!a || !b)
    return a ? a : b;
  uint64_t x = a, y = b;
  while (y) {
    uint64_t t = x % y;
    x = y;
    y = t;
  }
  return a / x * b;
}

static int crypt_limits(ts_layer *l, ts_limits *lim, ts_error *err)
{
  struct crypt_layer *c = ts_layer_priv(l);
  uint32_t lbs = lim->logical_block_size > c->sector_size ? lim->logical_block_size : c->sector_size;
  lim->size = c->size;
  lim->logical_block_size = lbs;
  if (lim->physical_block_size < lbs)
    lim->physical_block_size = lbs;
  if (lim->io_min < lbs)
    lim->io_min = lbs;
  if (c->allow_discards) {
    lim->discard_granularity = (uint32_t)lcm64(lim->discard_granularity, lbs);
  } else {
    lim->max_discard_bytes = 0;
    lim->discard_granularity = 0;
  }
  /* Discarded ciphertext decrypts to noise, never to zeroes. */
  lim->discard_zeroes = false;
  lim->max_write_zeroes_bytes = UINT64_MAX;
  lim->write_zeroes_unmap = false;
  if (lim->max_provision_bytes)
    lim->provision_granularity = (uint32_t)lcm64(lim->provision_granularity, lbs);
  lim->read_only = lim->read_only || c->read_only;
  return 0;
}

/* Encrypt (or encrypt zeroes) into a bounce buffer and write, a window at
 * a time; large requests are shared by the worker pool. */
static int write_encrypted(struct crypt_layer *c, const ts_io *io, enum crypt_mode mode,
                           uint32_t flags)
{
  struct crypt_ctx *x = ctx_get(c);
  if (!x)
    return -ENOMEM;
  int r = run_shared(c, x, io, mode, flags, req_helpers(c, io->length));
  ctx_put(c, x);
  return r;
}

/* Read ciphertext into the caller's buffer and decrypt it there, a window at
 * a time; large requests are shared by the worker pool. */
static int read_decrypted(struct crypt_layer *c, const ts_io *io)
{
  unsigned helpers = req_helpers(c, io->length);
  if (!helpers && io->length <= c->window) {
    ts_io sub = *io;
    sub.offset += c->offset;
    int r = ts_submit(c->child, &sub);
    struct crypt_ctx *x = r ? NULL : ctx_get(c);
    if (!r && !x)
      r = -ENOMEM;
    if (!r) {
      struct crypt_job j = { .mode = MODE_DECRYPT, .offset = io->offset, .iov = io->iov,
                             .iovcnt = io->iovcnt };
      r = transform(c, x, &j, 0, io->length);
      ctx_put(c, x);
    }
    return r;
  }
  struct crypt_ctx *x = ctx_get(c);
  if (!x)
    return -ENOMEM;
  int r = run_shared(c, x, io, MODE_DECRYPT, 0, helpers);
  ctx_put(c, x);
  return r;
}

static int crypt_submit(ts_layer *l, const ts_io *io)
{
  struct crypt_layer *c = ts_layer_priv(l);
  switch (io->op) {
  case TS_OP_READ:
    return read_decrypted(c, io);
  case TS_OP_WRITE:
    return write_encrypted(c, io, MODE_ENCRYPT, io->flags & TS_IO_FUA);
  case TS_OP_WRITE_ZEROES:
    /* Zeroing costs a full encrypted write here: a caller that asked for no
     * fallback wanted something cheaper than that. */
    if (io->flags & TS_IO_NOFALLBACK)
      return -EOPNOTSUPP;
    return write_encrypted(c, io, MODE_ZERO, io->flags & TS_IO_FUA);
  case TS_OP_FLUSH:
    return ts_flush(c->child);
  case TS_OP_DISCARD:
  case TS_OP_PROVISION:
    /* Zeroes below read as noise here, but a caller that holds nothing in
     * the range does not mind. */
    return ts_layer_io(c->child, io->op, io->flags & TS_IO_MAY_ZERO, c->offset + io->offset,
                       io->length);
  default:
    return -EOPNOTSUPP;
  }
}

/* The child's map, in this device's blocks. ZERO never survives: allocated
 * ciphertext decrypts to data, and an unallocated range that reads as zero
 * ciphertext decrypts to noise, so it is a HOLE whose contents are undefined.
 * Edges inside one of our blocks round so that the block counts as data. */
static int crypt_block_status(ts_layer *l, uint64_t off, uint64_t len, ts_extent_list *out)
{
  struct crypt_layer *c = ts_layer_priv(l);
  const uint64_t bs = ts_dev_limits(l)->logical_block_size, end = off + len;
  ts_extent_list child = { 0 };
  /* A prefix is enough: the core asks again for the rest. */
  int r = ts_block_status_bounded(c->child, c->offset + off, len, 0, &child);
  uint64_t pos = off;
  for (size_t i = 0; !r && i < child.n && pos < end; i++) {
    uint64_t e = child.v[i].offset + child.v[i].length - c->offset;
    bool data = !(child.v[i].flags & TS_EXTENT_HOLE);
    e = data ? (e + bs - 1) / bs * bs : e / bs * bs;
    if (e > end)
      e = end;
    if (e > pos) {
      r = ts_extent_list_add(out, pos, e - pos, data ? 0 : TS_EXTENT_HOLE);
      pos = e;
    }
  }
  ts_extent_list_free(&child);
  if (!r && pos == off)
    r = ts_extent_list_add(out, off, bs, 0);
  return r;
}

static int crypt_status(ts_layer *l, json_t *out)
{
  struct crypt_layer *c = ts_layer_priv(l);
  json_object_set_new(out, "cipher", json_string("aes-xts-plain64"));
  json_object_set_new(out, "key_bits", json_integer((json_int_t)c->key_len * 8));
  json_object_set_new(out, "key_source", json_string(c->key_file ? c->key_file : "config"));
  json_object_set_new(out, "key_locked", json_true());
  json_object_set_new(out, "sector_size", json_integer(c->sector_size));
  json_object_set_new(out, "iv_offset", json_integer((json_int_t)c->iv_offset));
  json_object_set_new(out, "iv_large_sectors", json_boolean(c->iv_large));
  json_object_set_new(out, "offset", json_integer((json_int_t)c->offset));
  json_object_set_new(out, "allow_discards", json_boolean(c->allow_discards));
  json_object_set_new(out, "threads", json_integer(c->threads));
  json_object_set_new(out, "parallel_requests",
                      json_integer((json_int_t)atomic_load(&c->nr_parallel)));
  json_object_set_new(out, "cipher_contexts",
                      json_integer((json_int_t)atomic_load(&c->nr_ctx_created)));
  json_object_set_new(out, "cipher_calls", json_string(c->xts.newctx ? "provider" : "evp"));
  json_object_set_new(out, "xts",
                      json_string(!c->batched ? "per sector"
                                  : c->wide   ? "batched ECB, AVX-512 tweaks"
                                              : "batched ECB"));
  json_object_set_new(out, "write_zeroes", json_string("encrypted zero sectors"));
  json_object_set_new(out, "discard", json_string(c->allow_discards ? "passed down" : "refused"));
  return 0;
}

/* The key is never printed: the table names a kernel keyring key instead
 * (load it with `keyctl padd logon thinstack:<name> @u < KEYFILE`). */
static char *crypt_dm_table(ts_layer *l)
{
  struct crypt_layer *c = ts_layer_priv(l);
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  if (!f)
    return NULL;
  int nopt = c->allow_discards + (c->sector_size != 512) + c->iv_large;
  fprintf(f, "0 %llu crypt aes-xts-plain64 :%zu:logon:thinstack:%s %llu <%s> %llu",
          (unsigned long long)(c->size / 512), c->key_len, ts_dev_name(l),
          (unsigned long long)c->iv_offset, ts_dev_name(c->child),
          (unsigned long long)(c->offset / 512));
  if (nopt) {
    fprintf(f, " %d", nopt);
    if (c->allow_discards)
      fprintf(f, " allow_discards");
    if (c->sector_size != 512)
      fprintf(f, " sector_size:%u", c->sector_size);
    if (c->iv_large)
      fprintf(f, " iv_large_sectors");
  }
  fclose(f);
  return buf;
}

/* The parsed configuration no longer holds the key text (wipe_json_string):
 * a dump that asked for secrets gets it back from the locked page. */
static int crypt_config(ts_layer *l, json_t *params)
{
  struct crypt_layer *c = ts_layer_priv(l);
  json_t *v = json_object_get(params, "key");
  if (!c || !json_is_string(v) || strcmp(json_string_value(v), KEY_LOADED) != 0)
    return 0;
  char hex[2 * CRYPT_MAX_KEY + 1];
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < c->key_len; i++) {
    hex[2 * i] = digits[c->key[i] >> 4];
    hex[2 * i + 1] = digits[c->key[i] & 15];
  }
  hex[2 * c->key_len] = '\0';
  int r = json_object_set_new(params, "key", json_string(hex)) ? -ENOMEM : 0;
  OPENSSL_cleanse(hex, sizeof hex);
  return r;
}

const ts_layer_type ts__crypt_layer_type = {
  TS_LAYER_TYPE_INIT,
  .name = "crypt",
  .summary = "sector encryption, dm-crypt aes-xts-plain64 compatible (OpenSSL)",
  .params = crypt_params,
  .thread_model = TS_THREAD_PARALLEL,
  .open = crypt_open,
  .close = crypt_close,
  .limits = crypt_limits,
  .submit = crypt_submit,
  .block_status = crypt_block_status,
  .status = crypt_status,
  .dm_table = crypt_dm_table,
  .config = crypt_config,
};
