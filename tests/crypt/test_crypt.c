/* The crypt layer: known-answer vectors through the layer, every op, bad
 * configurations, and concurrent requests.
 *
 * Method: stacks of a `memory` or `file` child under a `crypt` node. What the
 * layer wrote is read back from the child node directly (the ciphertext) and
 * compared with the IEEE 1619 vectors; the cross-check against an XTS
 * implementation we did not write (Python's cryptography) lives in
 * tests/crypt/xts_oracle.py, run by tests/integration/crypt_python.sh; the
 * worker pool and concurrent requests are in tests/threads/test_crypt_pool.c.
 */
#include "testutil.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* IEEE 1619-2007 test vectors with 512-byte data units; the plaintext of
 * each is the bytes 00..ff twice. Checked against the standard's values. */
static const struct kat {
  const char *name;
  const char *key;        /* key1 || key2, hex */
  uint64_t unit;          /* data unit sequence number = plain64 IV */
  const char *ct;         /* 512 bytes, hex */
} kats[] = {
  { "IEEE 1619-2007 vector 4 (XTS-AES-128, data unit 0)",
    "2718281828459045235360287471352631415926535897932384626433832795",
    0x0ull,
    "27a7479befa1d476489f308cd4cfa6e2a96e4bbe3208ff25287dd3819616e89c"
    "c78cf7f5e543445f8333d8fa7f56000005279fa5d8b5e4ad40e736ddb4d35412"
    "328063fd2aab53e5ea1e0a9f332500a5df9487d07a5c92cc512c8866c7e860ce"
    "93fdf166a24912b422976146ae20ce846bb7dc9ba94a767aaef20c0d61ad0265"
    "5ea92dc4c4e41a8952c651d33174be51a10c421110e6d81588ede82103a252d8"
    "a750e8768defffed9122810aaeb99f9172af82b604dc4b8e51bcb08235a6f434"
    "1332e4ca60482a4ba1a03b3e65008fc5da76b70bf1690db4eae29c5f1badd03c"
    "5ccf2a55d705ddcd86d449511ceb7ec30bf12b1fa35b913f9f747a8afd1b130e"
    "94bff94effd01a91735ca1726acd0b197c4e5b03393697e126826fb6bbde8ecc"
    "1e08298516e2c9ed03ff3c1b7860f6de76d4cecd94c8119855ef5297ca67e9f3"
    "e7ff72b1e99785ca0a7e7720c5b36dc6d72cac9574c8cbbc2f801e23e56fd344"
    "b07f22154beba0f08ce8891e643ed995c94d9a69c9f1b5f499027a78572aeebd"
    "74d20cc39881c213ee770b1010e4bea718846977ae119f7a023ab58cca0ad752"
    "afe656bb3c17256a9f6e9bf19fdd5a38fc82bbe872c5539edb609ef4f79c203e"
    "bb140f2e583cb2ad15b4aa5b655016a8449277dbd477ef2c8d6c017db738b18d"
    "eb4a427d1923ce3ff262735779a418f20a282df920147beabe421ee5319d0568" },
  { "IEEE 1619-2007 vector 10 (XTS-AES-256, data unit 0xff)",
    "2718281828459045235360287471352662497757247093699959574966967627" "3141592653589793238462643383279502884197169399375105820974944592",
    0xffull,
    "1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b"
    "5d31e276f8fe4a8d66b317f9ac683f44680a86ac35adfc3345befecb4bb188fd"
    "5776926c49a3095eb108fd1098baec70aaa66999a72a82f27d848b21d4a741b0"
    "c5cd4d5fff9dac89aeba122961d03a757123e9870f8acf1000020887891429ca"
    "2a3e7a7d7df7b10355165c8b9a6d0a7de8b062c4500dc4cd120c0f7418dae3d0"
    "b5781c34803fa75421c790dfe1de1834f280d7667b327f6c8cd7557e12ac3a0f"
    "93ec05c52e0493ef31a12d3d9260f79a289d6a379bc70c50841473d1a8cc81ec"
    "583e9645e07b8d9670655ba5bbcfecc6dc3966380ad8fecb17b6ba02469a020a"
    "84e18e8f84252070c13e9f1f289be54fbc481457778f616015e1327a02b140f1"
    "505eb309326d68378f8374595c849d84f4c333ec4423885143cb47bd71c5edae"
    "9be69a2ffeceb1bec9de244fbe15992b11b77c040f12bd8f6a975a44a0f90c29"
    "a9abc3d4d893927284c58754cce294529f8614dcd2aba991925fedc4ae74ffac"
    "6e333b93eb4aff0479da9a410e4450e0dd7ae4c6e2910900575da401fc07059f"
    "645e8b7e9bfdef33943054ff84011493c27b3429eaedb4ed5376441a77ed4385"
    "1ad77f16f541dfd269d50d6a5f14fb0aab1cbb4c1550be97f7ab4066193c4caa"
    "773dad38014bd2092fa755c824bb5e54c4f36ffda9fcea70b9c6e693e148c151" },
  { "IEEE 1619-2007 vector 19 (XTS-AES-128, data unit 0xa987654321)",
    "e0e1e2e3e4e5e6e7e8e9eaebecedeeefc0c1c2c3c4c5c6c7c8c9cacbcccdcecf",
    0xa987654321ull,
    "38b45812ef43a05bd957e545907e223b954ab4aaf088303ad910eadf14b42be6"
    "8b2461149d8c8ba85f992be970bc621f1b06573f63e867bf5875acafa04e42cc"
    "bd7bd3c2a0fb1fff791ec5ec36c66ae4ac1e806d81fbf709dbe29e471fad3854"
    "9c8e66f5345d7c1eb94f405d1ec785cc6f6a68f6254dd8339f9d84057e01a177"
    "41990482999516b5611a38f41bb6478e6f173f320805dd71b1932fc333cb9ee3"
    "9936beea9ad96fa10fb4112b901734ddad40bc1878995f8e11aee7d141a2f5d4"
    "8b7a4e1e7f0b2c04830e69a4fd1378411c2f287edf48c6c4e5c247a19680f7fe"
    "41cefbd49b582106e3616cbbe4dfb2344b2ae9519391f3e0fb4922254b1d6d2d"
    "19c6d4d537b3a26f3bcc51588b32f3eca0829b6a5ac72578fb814fb43cf80d64"
    "a233e3f997a3f02683342f2b33d25b492536b93becb2f5e1a8b82f5b88334272"
    "9e8ae09d16938841a21a97fb543eea3bbff59f13c1a18449e398701c1ad51648"
    "346cbc04c27bb2da3b93a1372ccae548fb53bee476f9e9c91773b1bb19828394"
    "d55d3e1a20ed69113a860b6829ffa847224604435070221b257e8dff783615d2"
    "cae4803a93aa4334ab482a0afac9c0aeda70b45a481df5dec5df8cc0f423c77a"
    "5fd46cd312021d4b438862419a791be03bb4d97c0e59578542531ba466a83baf"
    "92cefc151b5cc1611a167893819b63fb8a6b18e86de60290fa72b797b0ce59f3" },
};

static void unhex(const char *hex, unsigned char *out, size_t n)
{
  ck_assert_uint_eq(strlen(hex), 2 * n);
  for (size_t i = 0; i < n; i++) {
    unsigned v;
    ck_assert_int_eq(sscanf(hex + 2 * i, "%2x", &v), 1);
    out[i] = (unsigned char)v;
  }
}

static bool all_zero(const unsigned char *p, size_t n)
{
  for (size_t i = 0; i < n; i++)
    if (p[i])
      return false;
  return true;
}

/* A stack "d" (memory, `size`) under "c" (crypt with the extra JSON members
 * `crypt`); returns it with *c and *d set. */
static ts_stack *open_mem(const char *size, const char *crypt, ts_dev **c, ts_dev **d)
{
  char *json = ts_test_fmt("{ \"version\": 1, \"layers\": {"
                           " \"d\": { \"type\": \"memory\", \"size\": \"%s\" },"
                           " \"c\": { \"type\": \"crypt\", \"child\": \"d\", %s } },"
                           " \"exports\": [\"c\"] }", size, crypt);
  ts_stack *s = ts_test_open(NULL, json);
  free(json);
  *c = ts_stack_dev(s, "c");
  *d = ts_stack_node(s, "d");
  ck_assert_ptr_nonnull(*c);
  ck_assert_ptr_nonnull(*d);
  return s;
}

/* The same over a file child `path` (created sparse, `size`). */
static ts_stack *open_file(const char *dir, const char *size, const char *crypt, ts_dev **c,
                           ts_dev **d)
{
  char *json = ts_test_fmt("{ \"version\": 1, \"layers\": {"
                           " \"d\": { \"type\": \"file\", \"path\": \"disk.img\", \"size\": \"%s\","
                           " \"create\": true },"
                           " \"c\": { \"type\": \"crypt\", \"child\": \"d\", %s } },"
                           " \"exports\": [\"c\"] }", size, crypt);
  ts_stack *s = ts_test_open(dir, json);
  free(json);
  *c = ts_stack_dev(s, "c");
  *d = ts_stack_node(s, "d");
  return s;
}

static void close_ok(ts_stack *s)
{
  ts_error err = { 0 };
  ck_assert_msg(ts_stack_close(s, &err) == 0, "close: %s", err.msg);
}

static const char *const KEY512 =
  "\"key\": \"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
  "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f\"";

/* ------------------------------------------------------------------------ */

/* Each vector's plaintext, written through the layer at a sector whose IV is
 * the vector's data unit number, leaves exactly the vector's ciphertext in
 * the child; reading through the layer returns the plaintext. The third
 * vector's unit (0xa987654321) is reached through iv_offset, the first one is
 * also placed behind an offset in the child (IVs count from the crypt
 * device's start, as dm-crypt's do). */
START_TEST(ieee1619_vectors)
{
  unsigned char pt[512], ct[512], got[512];
  for (int i = 0; i < 512; i++)
    pt[i] = (unsigned char)i;
  for (size_t v = 0; v < sizeof kats / sizeof kats[0]; v++) {
    for (int placed = 0; placed < 2; placed++) {
      const struct kat *k = &kats[v];
      uint64_t sector = k->unit < 2048 ? k->unit : 3;
      uint64_t iv_offset = k->unit - sector;
      uint64_t child_off = placed ? 65536 : 0;
      char *extra = ts_test_fmt("\"key\": \"%s\", \"iv_offset\": %llu, \"offset\": %llu", k->key,
                                (unsigned long long)iv_offset, (unsigned long long)child_off);
      ts_dev *c, *d;
      ts_stack *s = open_mem("2M", extra, &c, &d);
      free(extra);
      /* Both key sizes take the provider's XTS directly, not EVP's slower
       * per-call path (same answers, a third of the cost at 512 bytes). */
      char *st = ts_dev_status_json(c);
      ck_assert_msg(st && strstr(st, "\"cipher_calls\": \"provider\""), "%s: status %s", k->name,
                    st ? st : "(none)");
      free(st);
      unhex(k->ct, ct, sizeof ct);
      ck_assert_int_eq(ts_pwrite(c, pt, sizeof pt, sector * 512, 0), 0);
      ck_assert_int_eq(ts_pread(d, got, sizeof got, child_off + sector * 512), 0);
      ck_assert_msg(memcmp(got, ct, sizeof ct) == 0, "%s: ciphertext differs", k->name);
      memset(got, 0, sizeof got);
      ck_assert_int_eq(ts_pread(c, got, sizeof got, sector * 512), 0);
      ck_assert_msg(memcmp(got, pt, sizeof pt) == 0, "%s: plaintext differs", k->name);
      close_ok(s);
    }
  }
}
END_TEST

/* docs/formats/dm-crypt-plain.md 4.4: key 00..3f, zero plaintext, a 4096-byte
 * unit at 512-byte sector 8 has IV 8, or 1 with iv_large_sectors; a 512-byte
 * sector 5 with iv_offset 3 has IV 8 too. WRITE_ZEROES provides the zero
 * plaintext, so this also shows it writes real ciphertext. */
START_TEST(plain64_iv_numbering)
{
  static const struct {
    const char *extra;
    uint64_t off;
    const char *first16;
  } cases[] = {
    { "\"sector_size\": 512, \"cipher\": \"capi:xts(aes)-plain64\"", 5 * 512,
      "41047df5c636cd4fcb4cae528f91daa1" },
    { "\"sector_size\": 512, \"iv_offset\": 3", 5 * 512, "32557c9efcea00dfdf521bbc053d1a7b" },
    { "\"sector_size\": 4096", 4096, "32557c9efcea00dfdf521bbc053d1a7b" },
    { "\"sector_size\": 4096, \"iv_large_sectors\": true", 4096, "0c22ed7e2168a8500b30154c2ec00d26" },
    { "\"sector_size\": 4096, \"iv_large_sectors\": true, \"iv_offset\": 8", 0,
      "0c22ed7e2168a8500b30154c2ec00d26" },
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char *extra = ts_test_fmt("%s, %s", KEY512, cases[i].extra);
    ts_dev *c, *d;
    ts_stack *s = open_mem("1M", extra, &c, &d);
    free(extra);
    uint32_t ss = ts_dev_limits(c)->logical_block_size;
    unsigned char want[16], got[4096];
    unhex(cases[i].first16, want, sizeof want);
    ck_assert_int_eq(ts_write_zeroes(c, cases[i].off, ss, 0), 0);
    ck_assert_int_eq(ts_pread(d, got, ss, cases[i].off), 0);
    ck_assert_msg(memcmp(got, want, 16) == 0, "case %zu: wrong first ciphertext block", i);
    ck_assert_int_eq(ts_pread(c, got, ss, cases[i].off), 0);
    ck_assert(all_zero(got, ss));
    close_ok(s);
  }
}
END_TEST

/* The same key as hex and as a raw key file gives the same ciphertext. */
START_TEST(key_file_equals_hex)
{
  const char *dir = ts_test_dir;
  char *kf = ts_test_path(dir, "k.key");
  unsigned char key[64];
  for (int i = 0; i < 64; i++)
    key[i] = (unsigned char)i;
  FILE *f = fopen(kf, "wb");
  ck_assert_uint_eq(fwrite(key, 1, 64, f), 64);
  fclose(f);
  chmod(kf, 0600); /* a key file others can read is refused */
  unsigned char buf[8192], a[8192], b[8192];
  ts_test_pattern(buf, sizeof buf, 7);
  ts_dev *c, *d;
  ts_stack *s = open_mem("1M", KEY512, &c, &d);
  ck_assert_int_eq(ts_pwrite(c, buf, sizeof buf, 65536, 0), 0);
  ck_assert_int_eq(ts_pread(d, a, sizeof a, 65536), 0);
  close_ok(s);
  char *extra = ts_test_fmt("\"key_file\": \"%s\"", kf);
  s = open_mem("1M", extra, &c, &d);
  free(extra);
  ck_assert_int_eq(ts_pwrite(c, buf, sizeof buf, 65536, 0), 0);
  ck_assert_int_eq(ts_pread(d, b, sizeof b, 65536), 0);
  ck_assert(memcmp(a, b, sizeof a) == 0);
  ck_assert(memcmp(a, buf, sizeof a) != 0);
  close_ok(s);
  free(kf);
}
END_TEST

/* Writes never change the caller's buffer; sectors split across iovec
 * elements encrypt and decrypt like contiguous ones. */
START_TEST(iovec_and_caller_buffer)
{
  const size_t n = 3 * 4096;
  unsigned char *buf = malloc(n), *copy = malloc(n), *flat = malloc(n), *got = malloc(n);
  ts_test_pattern(buf, n, 11);
  memcpy(copy, buf, n);
  const char *variants[] = { "\"sector_size\": 512", "\"sector_size\": 4096" };
  for (size_t v = 0; v < 2; v++) {
    char *extra = ts_test_fmt("%s, %s", KEY512, variants[v]);
    ts_dev *c, *d;
    ts_stack *s = open_mem("1M", extra, &c, &d);
    free(extra);
    ck_assert_int_eq(ts_pwrite(c, buf, n, 0, 0), 0);
    ck_assert(memcmp(buf, copy, n) == 0);
    ck_assert_int_eq(ts_pread(d, flat, n, 0), 0);
    /* Odd pieces: 100, 3000, 1, 4095, then the rest. */
    size_t cuts[] = { 100, 3000, 1, 4095 };
    struct iovec iov[5];
    size_t at = 0;
    for (int i = 0; i < 4; i++) {
      iov[i] = (struct iovec){ buf + at, cuts[i] };
      at += cuts[i];
    }
    iov[4] = (struct iovec){ buf + at, n - at };
    ck_assert_int_eq(ts_pwritev(c, iov, 5, 65536, 0), 0);
    ck_assert(memcmp(buf, copy, n) == 0);
    ck_assert_int_eq(ts_pread(d, got, n, 65536), 0);
    /* Same plaintext, other IVs: the ciphertext must differ from the first copy. */
    ck_assert(memcmp(got, flat, n) != 0);
    memset(got, 0, n);
    at = 0;
    for (int i = 0; i < 4; i++) {
      iov[i] = (struct iovec){ got + at, cuts[i] };
      at += cuts[i];
    }
    iov[4] = (struct iovec){ got + at, n - at };
    ck_assert_int_eq(ts_preadv(c, iov, 5, 65536), 0);
    ck_assert(memcmp(got, copy, n) == 0);
    close_ok(s);
  }
  free(buf);
  free(copy);
  free(flat);
  free(got);
}
END_TEST

/* OpenSSL's XTS, one call per data unit, as the reference for every path of
 * the layer (batched runs, single sectors, the worker pool). */
static void xts_reference(const unsigned char *key, size_t key_len, int enc, uint64_t first_iv,
                          uint64_t iv_step, uint32_t ss, const unsigned char *in,
                          unsigned char *out, size_t n)
{
  EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
  const EVP_CIPHER *cipher = key_len == 32 ? EVP_aes_128_xts() : EVP_aes_256_xts();
  ck_assert(EVP_CipherInit_ex2(ctx, cipher, key, NULL, enc, NULL) == 1);
  for (size_t p = 0; p < n; p += ss) {
    unsigned char iv[16] = { 0 };
    uint64_t sector = first_iv + p / ss * iv_step;
    for (int i = 0; i < 8; i++)
      iv[i] = (unsigned char)(sector >> (8 * i));
    int got = 0;
    ck_assert(EVP_CipherInit_ex2(ctx, NULL, NULL, iv, -1, NULL) == 1);
    ck_assert(EVP_CipherUpdate(ctx, out + p, &got, in + p, (int)ss) == 1 && got == (int)ss);
  }
  EVP_CIPHER_CTX_free(ctx);
}

/* Cut [buf, buf+n) into iovecs: whole at `how` 0, at random byte points
 * (sectors straddle elements) at 1, at random sector multiples at 2. */
static int random_iov(unsigned char *buf, size_t n, uint32_t ss, int how, struct iovec *iov,
                      int max)
{
  int cnt = 0;
  for (size_t at = 0; at < n; cnt++) {
    size_t left = n - at, len = left;
    if (how == 1 && cnt + 1 < max)
      len = 1 + (size_t)random() % (left < 3 * ss ? left : 3 * ss);
    if (how == 2 && cnt + 1 < max)
      len = ss * (1 + (size_t)random() % 40);
    if (len > left)
      len = left;
    iov[cnt] = (struct iovec){ buf + at, len };
    at += len;
  }
  return cnt;
}

/* Random data at random places, sector sizes 512 to 4096, both key sizes,
 * with and without iv_large_sectors and a large iv_offset, requests from one
 * sector to 1 MiB (past the batch size and into the worker pool), whole or
 * cut into iovecs: what the layer writes is what XTS per unit gives, and
 * what it reads from random ciphertext is XTS per unit's decryption. */
START_TEST(batched_matches_per_unit)
{
  srandom(20261202);
  const size_t max = 1u << 20, dev = 8u << 20;
  unsigned char *pt = malloc(max), *ct = malloc(max), *want = malloc(max), *got = malloc(max);
  static const uint32_t sizes[] = { 512, 4096, 1024, 2048 };
  int batched_seen = 0;
  for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
    for (int variant = 0; variant < 4; variant++) {
      const uint32_t ss = sizes[si];
      const size_t key_len = variant & 1 ? 32 : 64;
      const bool large = variant & 2;
      unsigned char key[64];
      char hex[129];
      do
        ts_test_pattern(key, key_len, (uint64_t)random());
      while (memcmp(key, key + key_len / 2, key_len / 2) == 0);
      for (size_t i = 0; i < key_len; i++)
        snprintf(hex + 2 * i, 3, "%02x", key[i]);
      /* A large iv_offset so the IV's upper bytes are not all zero. */
      uint64_t iv_offset = variant == 3 ? 0 : ((uint64_t)random() << 20) / 8 * 8;
      char *extra = ts_test_fmt("\"key\": \"%s\", \"sector_size\": %u, \"iv_large_sectors\": %s,"
                                " \"iv_offset\": %llu, \"threads\": 2",
                                hex, ss, large ? "true" : "false", (unsigned long long)iv_offset);
      ts_dev *c, *d;
      ts_stack *s = open_mem("8M", extra, &c, &d);
      free(extra);
      char *st = ts_dev_status_json(c);
      batched_seen += st && strstr(st, "\"xts\": \"batched") != NULL;
      free(st);
      for (int round = 0; round < 12; round++) {
        size_t n = ss * (1 + (size_t)random() % 8);
        if (round % 3 == 1)
          n = ss * (1 + (size_t)random() % (64 * 1024 / ss));
        if (round % 3 == 2)
          n = max - ss * ((size_t)random() % 4);
        uint64_t off = ss * ((uint64_t)random() % ((dev - n) / ss));
        uint64_t first_iv = ((off / 512 + iv_offset) >> (large ? __builtin_ctz(ss / 512) : 0));
        uint64_t step = large ? 1 : ss / 512;
        struct iovec iov[256];
        int how = round % 3;

        /* Encrypt: the child holds XTS per unit of the plaintext. */
        ts_test_pattern(pt, n, (uint64_t)random());
        int cnt = random_iov(pt, n, ss, how, iov, 256);
        ck_assert_int_eq(ts_pwritev(c, iov, cnt, off, 0), 0);
        ck_assert_int_eq(ts_pread(d, got, n, off), 0);
        xts_reference(key, key_len, 1, first_iv, step, ss, pt, want, n);
        ck_assert_msg(memcmp(got, want, n) == 0,
                      "encrypt: ss %u key %zu large %d: %zu bytes at %llu differ", ss, key_len * 8,
                      large, n, (unsigned long long)off);

        /* Decrypt: random ciphertext in the child reads as XTS per unit's
         * decryption of it. */
        ts_test_pattern(ct, n, (uint64_t)random());
        ck_assert_int_eq(ts_pwrite(d, ct, n, off, 0), 0);
        memset(got, 0, n);
        cnt = random_iov(got, n, ss, (how + 1) % 3, iov, 256);
        ck_assert_int_eq(ts_preadv(c, iov, cnt, off), 0);
        xts_reference(key, key_len, 0, first_iv, step, ss, ct, want, n);
        ck_assert_msg(memcmp(got, want, n) == 0,
                      "decrypt: ss %u key %zu large %d: %zu bytes at %llu differ", ss, key_len * 8,
                      large, n, (unsigned long long)off);
      }
      /* Zeroes: encrypted zero sectors, the same as XTS per unit of zeroes. */
      size_t n = 3 * ss + 64 * 1024;
      uint64_t off = ss * ((uint64_t)random() % ((dev - n) / ss));
      ck_assert_int_eq(ts_write_zeroes(c, off, n, 0), 0);
      ck_assert_int_eq(ts_pread(d, got, n, off), 0);
      memset(pt, 0, n);
      xts_reference(key, key_len, 1,
                    (off / 512 + iv_offset) >> (large ? __builtin_ctz(ss / 512) : 0),
                    large ? 1 : ss / 512, ss, pt, want, n);
      ck_assert_msg(memcmp(got, want, n) == 0, "zeroes: ss %u differ", ss);
      close_ok(s);
    }
  }
  /* The batched path must have been the one under test somewhere. */
  ck_assert_int_gt(batched_seen, 0);
  free(pt);
  free(ct);
  free(want);
  free(got);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Operations                                                                */

START_TEST(provision_passes_down)
{
  const char *dir = ts_test_dir;
  char *img = ts_test_path(dir, "disk.img");
  ts_dev *c, *d;
  ts_stack *s = open_file(dir, "8M", KEY512, &c, &d);
  ck_assert_uint_gt(ts_dev_limits(c)->max_provision_bytes, 0);
  uint64_t before = ts_test_allocated(img);
  ck_assert_int_eq(ts_provision(c, 1 << 20, 2 << 20), 0);
  ck_assert_uint_ge(ts_test_allocated(img), before + (2 << 20));
  /* Provisioned, never written: allocated, and not promised to read as
   * zeroes (zero ciphertext decrypts to noise), so not ZERO. */
  ts_extent_list l = { 0 };
  ck_assert_int_eq(ts_block_status(c, 1 << 20, 2 << 20, &l), 0);
  for (size_t i = 0; i < l.n; i++)
    ck_assert_uint_eq(l.v[i].flags, 0);
  ts_extent_list_free(&l);
  unsigned char sec[512];
  ck_assert_int_eq(ts_pread(c, sec, sizeof sec, 1 << 20), 0);
  ck_assert(!all_zero(sec, sizeof sec));
  close_ok(s);
  free(img);
}
END_TEST

START_TEST(discard_needs_allow_discards)
{
  const char *dir = ts_test_dir;
  char *img = ts_test_path(dir, "disk.img");
  unsigned char *buf = malloc(1 << 20), *got = malloc(1 << 20);
  ts_test_pattern(buf, 1 << 20, 5);

  ts_dev *c, *d;
  ts_stack *s = open_file(dir, "4M", KEY512, &c, &d);
  ck_assert_uint_eq(ts_dev_limits(c)->max_discard_bytes, 0);
  ck_assert_int_eq(ts_pwrite(c, buf, 1 << 20, 0, 0), 0);
  ck_assert_int_eq(ts_flush(c), 0);
  uint64_t used = ts_test_allocated(img);
  ck_assert_int_eq(ts_discard(c, 0, 1 << 20), -EOPNOTSUPP);
  ck_assert_uint_eq(ts_test_allocated(img), used);
  ck_assert_int_eq(ts_pread(c, got, 1 << 20, 0), 0);
  ck_assert(memcmp(got, buf, 1 << 20) == 0);
  close_ok(s);

  char *extra = ts_test_fmt("%s, \"allow_discards\": true", KEY512);
  char *json = ts_test_fmt("{ \"version\": 1, \"layers\": {"
                           " \"d\": { \"type\": \"file\", \"path\": \"disk.img\" },"
                           " \"c\": { \"type\": \"crypt\", \"child\": \"d\", %s } },"
                           " \"exports\": [\"c\"] }", extra);
  s = ts_test_open(dir, json);
  free(json);
  free(extra);
  c = ts_stack_dev(s, "c");
  ck_assert_uint_gt(ts_dev_limits(c)->max_discard_bytes, 0);
  ck_assert(!ts_dev_limits(c)->discard_zeroes);
  ck_assert_int_eq(ts_discard(c, 0, 1 << 20), 0);
  ck_assert_uint_lt(ts_test_allocated(img), used);
  /* A discarded range is a hole whose plaintext is undefined: never ZERO. */
  ts_extent_list l = { 0 };
  ck_assert_int_eq(ts_block_status(c, 0, 1 << 20, &l), 0);
  ck_assert_uint_eq(l.n, 1);
  ck_assert_uint_eq(l.v[0].flags, TS_EXTENT_HOLE);
  ts_extent_list_free(&l);
  ck_assert_int_eq(ts_pread(c, got, 4096, 0), 0);
  ck_assert(!all_zero(got, 4096));
  close_ok(s);
  free(buf);
  free(got);
  free(img);
}
END_TEST

START_TEST(write_zeroes_writes_ciphertext)
{
  const char *dir = ts_test_dir;
  char *img = ts_test_path(dir, "disk.img");
  const size_t n = 1 << 20;
  unsigned char *buf = malloc(n), *got = malloc(n);
  ts_test_pattern(buf, n, 9);
  char *extra = ts_test_fmt("%s, \"sector_size\": 4096", KEY512);
  ts_dev *c, *d;
  ts_stack *s = open_file(dir, "8M", extra, &c, &d);
  free(extra);
  ck_assert_int_eq(ts_limits_cap(ts_dev_limits(c), TS_OP_WRITE_ZEROES), TS_CAP_NATIVE);
  ck_assert(!ts_dev_limits(c)->write_zeroes_unmap);
  ck_assert_int_eq(ts_pwrite(c, buf, n, 0, 0), 0);

  /* No fallback: zeroing would cost a full write, so refuse and change nothing. */
  ck_assert_int_eq(ts_write_zeroes(c, 0, n, TS_IO_NOFALLBACK), -EOPNOTSUPP);
  ck_assert_int_eq(ts_pread(c, got, n, 0), 0);
  ck_assert(memcmp(got, buf, n) == 0);

  ck_assert_int_eq(ts_write_zeroes(c, 0, n / 2, 0), 0);
  ck_assert_int_eq(ts_write_zeroes(c, n / 2, n / 2, TS_IO_MAY_UNMAP | TS_IO_FUA), 0);
  ck_assert_int_eq(ts_pread(c, got, n, 0), 0);
  ck_assert(all_zero(got, n));
  ck_assert_int_eq(ts_pread(d, got, n, 0), 0);
  for (size_t off = 0; off < n; off += 4096)
    ck_assert_msg(!all_zero(got + off, 4096), "child block at %zu is zero", off);
  /* Zeroes of an unwritten range allocate it in the child, like a write. */
  uint64_t before = ts_test_allocated(img);
  ck_assert_int_eq(ts_write_zeroes(c, 4 << 20, n, 0), 0);
  ck_assert_int_eq(ts_flush(c), 0);
  ck_assert_uint_ge(ts_test_allocated(img), before + n);
  ts_extent_list l = { 0 };
  ck_assert_int_eq(ts_block_status(c, 4 << 20, n, &l), 0);
  for (size_t i = 0; i < l.n; i++)
    ck_assert_uint_eq(l.v[i].flags, 0);
  ts_extent_list_free(&l);
  close_ok(s);
  free(buf);
  free(got);
  free(img);
}
END_TEST

START_TEST(block_status_never_zero)
{
  const char *dir = ts_test_dir;
  unsigned char buf[65536];
  ts_test_pattern(buf, sizeof buf, 1);
  ts_dev *c, *d;
  ts_stack *s = open_file(dir, "4M", KEY512, &c, &d);
  ck_assert_int_eq(ts_pwrite(c, buf, sizeof buf, 1 << 20, 0), 0);
  ck_assert_int_eq(ts_pwrite(c, buf, sizeof buf, 3 << 20, 0), 0);
  /* The child says allocated-but-zero (an unwritten extent) here. */
  ck_assert_int_eq(ts_provision(d, 2 << 20, 65536), 0);
  ts_extent_list l = { 0 };
  ck_assert_int_eq(ts_block_status(c, 0, 4 << 20, &l), 0);
  uint64_t data = 0, pos = 0;
  for (size_t i = 0; i < l.n; i++) {
    ck_assert_uint_eq(l.v[i].offset, pos);
    ck_assert_msg(!(l.v[i].flags & TS_EXTENT_ZERO), "extent %zu says zero", i);
    ck_assert_uint_eq(l.v[i].offset % 512, 0);
    ck_assert_uint_eq(l.v[i].length % 512, 0);
    if (!(l.v[i].flags & TS_EXTENT_HOLE))
      data += l.v[i].length;
    pos += l.v[i].length;
  }
  ck_assert_uint_eq(pos, 4 << 20);
  ck_assert_uint_ge(data, 3 * sizeof buf);
  ck_assert_uint_lt(data, 4 << 20);
  ck_assert_uint_eq(l.v[0].flags, TS_EXTENT_HOLE); /* nothing written at 0 */
  ts_extent_list_free(&l);
  close_ok(s);
}
END_TEST

START_TEST(limits_and_flush)
{
  char *extra = ts_test_fmt("%s, \"sector_size\": 2048", KEY512);
  ts_dev *c, *d;
  ts_stack *s = open_mem("1M", extra, &c, &d);
  free(extra);
  const ts_limits *lim = ts_dev_limits(c);
  ck_assert_uint_eq(lim->logical_block_size, 2048);
  ck_assert_uint_ge(lim->physical_block_size, 2048);
  ck_assert_uint_eq(lim->size, 1 << 20);
  ck_assert_uint_eq(lim->max_discard_bytes, 0);
  ck_assert(!lim->discard_zeroes);
  ck_assert_uint_eq(lim->provision_granularity % 2048, 0);
  unsigned char b[2048] = { 0 };
  ck_assert_int_eq(ts_pwrite(c, b, 1024, 0, 0), -EINVAL); /* below the sector size */
  ck_assert_int_eq(ts_pwrite(c, b, 2048, 1024, 0), -EINVAL);
  ck_assert_int_eq(ts_pwrite(c, b, 2048, 2048, TS_IO_FUA), 0);
  ck_assert_int_eq(ts_flush(c), 0);
  close_ok(s);

  /* A child with a larger block size wins. */
  char *json = ts_test_fmt("{ \"version\": 1, \"layers\": {"
                           " \"d\": { \"type\": \"memory\", \"size\": \"1M\" },"
                           " \"f\": { \"type\": \"fault\", \"child\": \"d\","
                           "          \"limits\": { \"logical_block_size\": 4096 } },"
                           " \"c\": { \"type\": \"crypt\", \"child\": \"f\", %s } },"
                           " \"exports\": [\"c\"] }", KEY512);
  s = ts_test_open(NULL, json);
  free(json);
  ck_assert_uint_eq(ts_dev_limits(ts_stack_dev(s, "c"))->logical_block_size, 4096);
  close_ok(s);
}
END_TEST

START_TEST(read_only)
{
  char *extra = ts_test_fmt("%s, \"read_only\": true", KEY512);
  ts_dev *c, *d;
  ts_stack *s = open_mem("1M", extra, &c, &d);
  free(extra);
  unsigned char b[512] = { 0 };
  ck_assert_int_eq(ts_pwrite(c, b, 512, 0, 0), -EROFS);
  ck_assert_int_eq(ts_write_zeroes(c, 0, 512, 0), -EROFS);
  ck_assert_int_eq(ts_provision(c, 0, 65536), -EROFS);
  ck_assert_int_eq(ts_pread(c, b, 512, 0), 0);
  close_ok(s);
}
END_TEST

/* Child errors come back unchanged, for inline and shared requests alike. */
START_TEST(child_errors_pass_up)
{
  char *json = ts_test_fmt("{ \"version\": 1, \"layers\": {"
                           " \"d\": { \"type\": \"memory\", \"size\": \"4M\" },"
                           " \"f\": { \"type\": \"fault\", \"child\": \"d\", \"rules\": ["
                           "   { \"op\": \"write\", \"errno\": \"ENOSPC\", \"offset\": \"2M\" },"
                           "   { \"op\": \"read\", \"errno\": \"EIO\", \"offset\": \"3M\" } ] },"
                           " \"c\": { \"type\": \"crypt\", \"child\": \"f\", \"threads\": 2, %s } },"
                           " \"exports\": [\"c\"] }", KEY512);
  ts_stack *s = ts_test_open(NULL, json);
  free(json);
  ts_dev *c = ts_stack_dev(s, "c");
  const size_t n = 1 << 20;
  unsigned char *buf = calloc(1, n);
  ck_assert_int_eq(ts_pwrite(c, buf, 4096, 0, 0), 0);
  ck_assert_int_eq(ts_pwrite(c, buf, 4096, 2 << 20, 0), -ENOSPC);
  ck_assert_int_eq(ts_pwrite(c, buf, n, (2 << 20) - 4096, 0), -ENOSPC);
  ck_assert_int_eq(ts_write_zeroes(c, 2 << 20, n, 0), -ENOSPC);
  ck_assert_int_eq(ts_pread(c, buf, 4096, 3 << 20), -EIO);
  ck_assert_int_eq(ts_pread(c, buf, n, (3 << 20) - n / 2), -EIO);
  ck_assert_int_eq(ts_pread(c, buf, n, 0), 0);
  free(buf);
  close_ok(s);
}
END_TEST

/* A stack "d" (memory) under "f" (fault with `rules` and `limits`) under "c"
 * (crypt, `threads`); the key is the bytes 00..3f. */
static ts_stack *open_fault(const char *rules, const char *limits, int threads, int ss, ts_dev **c,
                            ts_dev **d)
{
  char *json = ts_test_fmt("{ \"version\": 1, \"layers\": {"
                           " \"d\": { \"type\": \"memory\", \"size\": \"8M\" },"
                           " \"f\": { \"type\": \"fault\", \"child\": \"d\", \"rules\": [ %s ],"
                           "   \"limits\": { %s } },"
                           " \"c\": { \"type\": \"crypt\", \"child\": \"f\", \"threads\": %d,"
                           "   \"sector_size\": %d, %s } }, \"exports\": [\"c\"] }",
                           rules, limits, threads, ss, KEY512);
  ts_stack *s = ts_test_open(NULL, json);
  free(json);
  *c = ts_stack_dev(s, "c");
  *d = ts_stack_node(s, "d");
  ck_assert_ptr_nonnull(*c);
  ck_assert_ptr_nonnull(*d);
  return s;
}

/* A large request moves in windows, shared by the worker pool: an error in
 * a middle window fails the whole request with the error of the first
 * failing window, on one thread or several, for every op that writes or
 * reads ciphertext; a clean request after it still works. */
START_TEST(middle_window_errors)
{
  const size_t n = 1u << 20;
  unsigned char *buf = malloc(n), *copy = malloc(n);
  ts_test_pattern(buf, n, 5);
  memcpy(copy, buf, n);
  for (int threads = 1; threads <= 3; threads++) {
    ts_dev *c, *d;
    /* Two failing ranges inside the request at 1M: the lower one decides. */
    ts_stack *s = open_fault("{ \"op\": \"write\", \"errno\": \"ENOSPC\", \"offset\": \"1400K\","
                             "   \"length\": \"4K\" },"
                             "{ \"op\": \"write\", \"errno\": \"EIO\", \"offset\": \"1800K\","
                             "   \"length\": \"4K\" },"
                             "{ \"op\": \"read\", \"errno\": \"ENODATA\", \"offset\": \"1500K\","
                             "   \"length\": \"4K\" },"
                             "{ \"op\": \"read\", \"errno\": \"EIO\", \"offset\": \"1900K\","
                             "   \"length\": \"4K\" }",
                             "", threads, 512, &c, &d);
    ck_assert_int_eq(ts_pwrite(c, buf, n, 1u << 20, 0), -ENOSPC);
    ck_assert(memcmp(buf, copy, n) == 0);
    ck_assert_int_eq(ts_write_zeroes(c, 1u << 20, n, 0), -ENOSPC);
    ck_assert_int_eq(ts_pread(c, buf, n, 1u << 20), -ENODATA);
    /* Clear of the failing ranges, the same requests succeed. */
    memcpy(buf, copy, n);
    ck_assert_int_eq(ts_pwrite(c, buf, n, 3u << 20, 0), 0);
    ck_assert(memcmp(buf, copy, n) == 0);
    memset(buf, 0, n);
    ck_assert_int_eq(ts_pread(c, buf, n, 3u << 20), 0);
    ck_assert(memcmp(buf, copy, n) == 0);
    close_ok(s);
  }
  free(buf);
  free(copy);
}
END_TEST

/* Windows of a large request over children of several shapes (a 4 KiB
 * block under 512-byte sectors, so windows round to it; a max_io_bytes that
 * is not a power of two, so requests reach the layer cut short) and iovecs
 * cut anywhere: the ciphertext is XTS per unit of the plaintext, every byte
 * of it, on one thread and shared, and reads return the plaintext. */
START_TEST(windows_short_child_io_and_iovecs)
{
  srandom(7);
  const size_t n = (1u << 20) + 3 * 4096;
  unsigned char *pt = malloc(n), *want = malloc(n), *got = malloc(n);
  unsigned char key[64];
  for (int i = 0; i < 64; i++)
    key[i] = (unsigned char)i;
  static const char *const limits[] = { "", "\"logical_block_size\": 4096",
                                        "\"max_io_bytes\": \"12K\"" };
  for (int threads = 1; threads <= 2; threads++)
    for (int li = 0; li < 3; li++)
      for (int ss = 512; ss <= 4096; ss *= 8)
        for (int how = 0; how < 3; how++) {
          ts_dev *c, *d;
          ts_stack *s = open_fault("", limits[li], threads, ss, &c, &d);
          uint64_t off = 4096 * (1 + (uint64_t)random() % 256);
          struct iovec iov[256];
          ts_test_pattern(pt, n, (uint64_t)random());
          int cnt = random_iov(pt, n, (uint32_t)ss, how, iov, 256);
          ck_assert_int_eq(ts_pwritev(c, iov, cnt, off, 0), 0);
          ck_assert_int_eq(ts_pread(d, got, n, off), 0);
          xts_reference(key, 64, 1, off / 512, (uint64_t)ss / 512, (uint32_t)ss, pt, want, n);
          ck_assert_msg(memcmp(got, want, n) == 0, "write: threads %d limits %d ss %d how %d",
                        threads, li, ss, how);
          memset(got, 0, n);
          cnt = random_iov(got, n, (uint32_t)ss, (how + 1) % 3, iov, 256);
          ck_assert_int_eq(ts_preadv(c, iov, cnt, off), 0);
          ck_assert_msg(memcmp(got, pt, n) == 0, "read: threads %d limits %d ss %d how %d", threads,
                        li, ss, how);
          /* Whole requests reached the layer and were shared. */
          char *st = ts_dev_status_json(c);
          ck_assert_ptr_nonnull(st);
          ck_assert_msg((strstr(st, "\"parallel_requests\": 0") == NULL) == (threads > 1 && li < 2),
                        "%s", st);
          free(st);
          close_ok(s);
        }
  free(pt);
  free(want);
  free(got);
}
END_TEST

/* Neither status nor the dm table ever shows the key. */
START_TEST(key_never_shown)
{
  char *extra = ts_test_fmt("%s, \"allow_discards\": true, \"sector_size\": 4096, "
                            "\"iv_large_sectors\": true, \"iv_offset\": 16, \"offset\": 8192",
                            KEY512);
  ts_dev *c, *d;
  ts_stack *s = open_mem("1M", extra, &c, &d);
  free(extra);
  char *st = ts_dev_status_json(c);
  ck_assert_ptr_nonnull(st);
  ck_assert_ptr_null(strstr(st, "0001020304"));
  ck_assert_ptr_nonnull(strstr(st, "\"key_bits\": 512"));
  free(st);
  const ts_layer_type *t = ts_find_layer_type("crypt");
  char *table = t->dm_table(c);
  ck_assert_ptr_nonnull(table);
  ck_assert_str_eq(table, "0 2032 crypt aes-xts-plain64 :64:logon:thinstack:c 16 <d> 16 "
                          "3 allow_discards sector_size:4096 iv_large_sectors");
  free(table);
  close_ok(s);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Bad configurations: a specific message naming the JSON path, and nothing   */
/* changed (an existing child untouched, a child the open would create gone). */

static uint64_t file_sum(const char *path)
{
  void *data;
  size_t len;
  ck_assert(ts_test_read_file(path, &data, &len));
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < len; i++)
    h = (h ^ ((unsigned char *)data)[i]) * 1099511628211ull;
  free(data);
  return h;
}

START_TEST(bad_configs)
{
  const char *dir = ts_test_dir;
  char *img = ts_test_path(dir, "disk.img");
  char *made = ts_test_path(dir, "new.img");
  const char *hex64 = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
  /* An existing volume with data in it. */
  ts_dev *c, *d;
  ts_stack *s = open_file(dir, "1M", KEY512, &c, &d);
  unsigned char buf[4096];
  ts_test_pattern(buf, sizeof buf, 2);
  ck_assert_int_eq(ts_pwrite(c, buf, sizeof buf, 0, 0), 0);
  close_ok(s);
  uint64_t sum = file_sum(img);

  char *k33 = ts_test_path(dir, "k33.key"), *khex = ts_test_path(dir, "hex.key");
  FILE *f = fopen(k33, "wb");
  ck_assert_uint_eq(fwrite(buf, 1, 33, f), 33);
  fclose(f);
  f = fopen(khex, "w");
  fprintf(f, "%s%s\n", hex64, hex64);
  fclose(f);
  chmod(k33, 0600);
  chmod(khex, 0600);
  char *same = ts_test_fmt("\"key\": \"%s%s\"", hex64, hex64);

  const struct {
    const char *crypt;  /* members of "c" */
    const char *want;   /* in the message */
  } cases[] = {
    { "\"key\": \"0001\"", "layers.c.key: has 4 hex digits; aes-xts-plain64 takes 64" },
    { "\"key\": \"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1g\"",
      "layers.c.key: character 64 is not a hex digit" },
    { "\"key\": \"00\", \"key_file\": \"k33.key\"", "layers.c.key: give either \"key\" or \"key_file\"" },
    { "\"sector_size\": 512", "layers.c: needs a key" },
    { "\"key_file\": \"missing.key\"", "layers.c.key_file: cannot open" },
    { "\"key_file\": \"k33.key\"", "layers.c.key_file:" },
    { "\"key_file\": \"hex.key\"", "it looks like hex text" },
    { same, "layers.c.key: the two halves of the XTS key are equal" },
    { "\"cipher\": \"aes-cbc-essiv:sha256\", \"key\": \"00\"",
      "layers.c.cipher: expected one of aes-xts-plain64|capi:xts(aes)-plain64, got \"aes-cbc-essiv:sha256\"" },
    { "\"sector_size\": 8192, \"key_file\": \"k33.key\"", "layers.c.sector_size: 8192 is not a valid sector size" },
    { "\"sector_size\": 1000, \"key_file\": \"k33.key\"", "layers.c.sector_size:" },
    { "\"sector_size\": 4096, \"iv_offset\": 3, \"key_file\": \"k33.key\"",
      "layers.c.iv_offset: 3 must be a multiple of 8" },
    { "\"offset\": 100, \"key_file\": \"k33.key\"", "layers.c.offset:" },
    { "\"size\": \"2M\", \"key_file\": \"k33.key\"", "layers.c.size:" },
    { "\"threads\": 1000, \"key_file\": \"k33.key\"", "layers.c.threads:" },
    { "\"key\": 7", "layers.c.key" },
    { "\"chld\": \"d\"", "layers.c" },
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char *json = ts_test_fmt(
      "{ \"version\": 1, \"layers\": {"
      " \"d\": { \"type\": \"file\", \"path\": \"disk.img\" },"
      " \"n\": { \"type\": \"file\", \"path\": \"new.img\", \"size\": \"1M\", \"create\": true },"
      " \"x\": { \"type\": \"crypt\", \"child\": \"n\", %s },"
      " \"c\": { \"type\": \"crypt\", \"child\": \"d\", %s } },"
      " \"exports\": [\"c\", \"x\"] }", KEY512, cases[i].crypt);
    ts_error err = { 0 };
    ts_stack *bad = NULL;
    int r = ts_test_try_open(dir, json, &bad, &err);
    free(json);
    ck_assert_msg(r < 0, "case %zu opened", i);
    ck_assert_ptr_null(bad);
    ck_assert_msg(strstr(err.msg, cases[i].want) != NULL, "case %zu: message \"%s\" lacks \"%s\"",
                  i, err.msg, cases[i].want);
    ck_assert_msg(strstr(err.msg, "0001020304") == NULL, "case %zu: message shows key material", i);
    ck_assert_uint_eq(file_sum(img), sum);
    ck_assert_msg(access(made, F_OK) != 0, "case %zu left new.img behind", i);
  }
  /* And the volume still opens and reads the same. */
  s = open_file(dir, "1M", KEY512, &c, &d);
  unsigned char got[4096];
  ck_assert_int_eq(ts_pread(c, got, sizeof got, 0), 0);
  ck_assert(memcmp(got, buf, sizeof got) == 0);
  close_ok(s);
  free(same);
  free(k33);
  free(khex);
  free(made);
  free(img);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("crypt");
  TCase *kat = tcase_create("vectors");
  tcase_add_checked_fixture(kat, ts_test_dir_setup, ts_test_dir_teardown);
  tcase_add_test(kat, ieee1619_vectors);
  tcase_add_test(kat, plain64_iv_numbering);
  tcase_add_test(kat, key_file_equals_hex);
  tcase_add_test(kat, iovec_and_caller_buffer);
  tcase_add_test(kat, batched_matches_per_unit);
  suite_add_tcase(s, kat);
  TCase *ops = tcase_create("ops");
  tcase_add_checked_fixture(ops, ts_test_dir_setup, ts_test_dir_teardown);
  tcase_add_test(ops, provision_passes_down);
  tcase_add_test(ops, discard_needs_allow_discards);
  tcase_add_test(ops, write_zeroes_writes_ciphertext);
  tcase_add_test(ops, block_status_never_zero);
  tcase_add_test(ops, limits_and_flush);
  tcase_add_test(ops, read_only);
  tcase_add_test(ops, child_errors_pass_up);
  tcase_add_test(ops, middle_window_errors);
  tcase_add_test(ops, windows_short_child_io_and_iovecs);
  tcase_add_test(ops, key_never_shown);
  suite_add_tcase(s, ops);
  TCase *cfg = tcase_create("config");
  tcase_add_checked_fixture(cfg, ts_test_dir_setup, ts_test_dir_teardown);
  tcase_add_test(cfg, bad_configs);
  suite_add_tcase(s, cfg);
  return ts_test_main(s);
}
