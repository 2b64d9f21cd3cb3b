/* thin_dump-compatible XML (thin-provisioning-tools 0.9.0 format): dump a
 * pool (or its held metadata snapshot) and restore a pool from such XML with
 * a small reader for that one well-defined format. */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "pdata/pdata-internal.h"
#include "pdata/thin-metadata.h"

/* ---- dump ---- */

struct dump_dev { uint64_t id; uint8_t details[24]; uint64_t root; bool have_root; };

struct dump_ctx {
  FILE *out;
  struct dump_dev *devs;
  size_t n, cap;
  uint64_t run_v, run_d, run_len;
  uint32_t run_t;
};

static int dump_details(void *arg, const uint8_t *n, uint32_t first, uint32_t cnt)
{
  struct dump_ctx *c = arg;
  if (pd_node_vsize(n) != 24)
    return -EILSEQ;
  for (uint32_t i = first; i < first + cnt; i++) {
    if (c->n == c->cap) {
      size_t m = c->cap ? c->cap * 2 : 64;
      struct dump_dev *v = realloc(c->devs, m * sizeof(*v));
      if (!v)
        return -ENOMEM;
      c->devs = v;
      c->cap = m;
    }
    struct dump_dev *d = &c->devs[c->n++];
    d->id = pd_node_key(n, i);
    memcpy(d->details, pd_node_cval(n, i), 24);
    d->have_root = false;
  }
  return 0;
}

static void flush_run(struct dump_ctx *c)
{
  if (!c->run_len)
    return;
  if (c->run_len == 1)
    fprintf(c->out, "    <single_mapping origin_block=\"%" PRIu64 "\" data_block=\"%" PRIu64 "\" time=\"%u\"/>\n",
            c->run_v, c->run_d, c->run_t);
  else
    fprintf(c->out, "    <range_mapping origin_begin=\"%" PRIu64 "\" data_begin=\"%" PRIu64 "\" length=\"%" PRIu64
            "\" time=\"%u\"/>\n", c->run_v, c->run_d, c->run_len, c->run_t);
  c->run_len = 0;
}

static int dump_leaf(void *arg, const uint8_t *n, uint32_t first, uint32_t cnt)
{
  struct dump_ctx *c = arg;
  if (pd_node_vsize(n) != 8)
    return -EILSEQ;
  for (uint32_t i = first; i < first + cnt; i++) {
    uint64_t k = pd_node_key(n, i), x = ts__le64(pd_node_cval(n, i));
    uint64_t d = x >> 24;
    uint32_t t = (uint32_t)(x & 0xFFFFFF);
    if (c->run_len && c->run_v + c->run_len == k && c->run_d + c->run_len == d && c->run_t == t) {
      c->run_len++;
      continue;
    }
    flush_run(c);
    c->run_v = k;
    c->run_d = d;
    c->run_t = t;
    c->run_len = 1;
  }
  return 0;
}

/* The block manager's reason for refusing a block, or the errno's text. */
static const char *refusal(struct pd_bm *bm, int r, char *buf, size_t len)
{
  buf[0] = 0;
  if (r == -EILSEQ)
    pd_bm_last_refusal(bm, buf, len);
  return buf[0] ? buf : r == -EILSEQ ? "invalid node" : strerror(-r);
}

int pd_dump_xml(const struct pd_bdev *bdev, bool use_metadata_snap, FILE *out, ts_error *err)
{
  uint8_t *sb = malloc(PD_BLOCK_SIZE);
  if (!sb)
    return ts_error_set(err, -ENOMEM, "out of memory");
  char why[400];
  int r = bdev->nr_blocks ? pd_bdev_read(bdev, 0, 1, sb) : -EIO;
  if (r) {
    free(sb);
    return ts_error_set(err, r, "reading the superblock: %s", strerror(-r));
  }
  if ((r = pd_sb_check(sb, bdev->nr_blocks, false, why, sizeof(why)))) {
    free(sb);
    return ts_error_set(err, r, "%s", why);
  }
  struct pd_bm *bm;
  if ((r = pd_bm_create(&bm, bdev, ts__le64(sb + SB_META_NR_BLOCKS), 1024))) {
    free(sb);
    return ts_error_set(err, r, "out of memory");
  }
  struct pd_tm tm = {bm, NULL};
  if (use_metadata_snap) {
    uint64_t held = ts__le64(sb + SB_HELD_ROOT);
    struct pd_block *b;
    if (!held) {
      r = ts_error_set(err, -EINVAL, "no metadata snapshot is held");
      goto out;
    }
    if ((r = pd_bm_read(bm, held, PD_BT_SUPER, &b))) {
      ts_error_set(err, r, "metadata snapshot superblock %" PRIu64 ": %s", held,
           r == -EILSEQ ? "checksum or block number mismatch" : strerror(-r));
      goto out;
    }
    memcpy(sb, b->data, PD_BLOCK_SIZE);
    pd_bm_unlock(bm, b);
  }
  struct pd_btree top = {&tm, {8, NULL, NULL, NULL}}, det = {&tm, {24, NULL, NULL, NULL}};
  struct dump_ctx c = {.out = out};
  if ((r = pd_btree_walk(&det, ts__le64(sb + SB_DETAILS_ROOT), 0, UINT64_MAX, dump_details, &c))) {
    ts_error_set(err, r, "reading the device details tree: %s", refusal(bm, r, why, sizeof(why)));
    goto out_c;
  }
  fprintf(out, "<superblock uuid=\"\" time=\"%u\" transaction=\"%" PRIu64 "\" flags=\"%u\" version=\"%u\" "
          "data_block_size=\"%u\" nr_data_blocks=\"%" PRIu64 "\">\n",
          ts__le32(sb + SB_TIME), ts__le64(sb + SB_TRANS_ID), ts__le32(sb + SB_FLAGS), ts__le32(sb + SB_VERSION),
          ts__le32(sb + SB_DATA_BLOCK_SIZE), ts__le64(sb + SB_DATA_SM));
  for (size_t i = 0; i < c.n; i++) {
    struct dump_dev *d = &c.devs[i];
    uint8_t v[8];
    r = pd_btree_lookup(&top, ts__le64(sb + SB_MAPPING_ROOT), d->id, v);
    if (r == -ENODATA)
      continue; /* not in the mapping tree: skipped, as thin_dump does */
    if (r) {
      ts_error_set(err, r, "looking up device %" PRIu64 " in the mapping tree: %s", d->id,
                   refusal(bm, r, why, sizeof(why)));
      goto out_c;
    }
    fprintf(out, "  <device dev_id=\"%" PRIu64 "\" mapped_blocks=\"%" PRIu64 "\" transaction=\"%" PRIu64
            "\" creation_time=\"%u\" snap_time=\"%u\">\n", d->id, ts__le64(d->details), ts__le64(d->details + 8),
            ts__le32(d->details + 16), ts__le32(d->details + 20));
    c.run_len = 0;
    struct pd_btree map = {&tm, {8, NULL, NULL, NULL}};
    if ((r = pd_btree_walk(&map, ts__le64(v), 0, UINT64_MAX, dump_leaf, &c))) {
      ts_error_set(err, r, "reading the mappings of device %" PRIu64 ": %s", d->id,
                   refusal(bm, r, why, sizeof(why)));
      goto out_c;
    }
    flush_run(&c);
    fprintf(out, "  </device>\n");
  }
  fprintf(out, "</superblock>\n");
  r = ferror(out) ? ts_error_set(err, -EIO, "writing the XML failed") : 0;
out_c:
  free(c.devs);
out:
  pd_bm_destroy(bm);
  free(sb);
  return r;
}

/* ---- restore ---- */

struct attr { char name[32]; char value[64]; };

struct parser {
  FILE *in;
  int line;
  int peekc;
};

static int next_char(struct parser *p)
{
  int ch = p->peekc != EOF - 1 ? p->peekc : fgetc(p->in);
  p->peekc = EOF - 1;
  if (ch == '\n')
    p->line++;
  return ch;
}

/* Read the next tag: *name, attrs, *closing (</x>), *empty (<x/>). 1 = tag,
 * 0 = end of input, <0 = error (message in err). */
static int next_tag(struct parser *p, char *name, size_t namelen, struct attr *attrs, int *nattrs, bool *closing,
                    bool *empty, ts_error *err)
{
  int ch;
  for (;;) {
    do
      ch = next_char(p);
    while (ch != EOF && ch != '<');
    if (ch == EOF)
      return 0;
    ch = next_char(p);
    if (ch == '?' || ch == '!') { /* declaration or comment: skip to '>' */
      while ((ch = next_char(p)) != EOF && ch != '>')
        ;
      continue;
    }
    break;
  }
  *closing = ch == '/';
  if (*closing)
    ch = next_char(p);
  size_t n = 0;
  while (ch != EOF && (isalnum(ch) || ch == '_' || ch == '-')) {
    if (n + 1 < namelen)
      name[n++] = (char)ch;
    ch = next_char(p);
  }
  name[n] = 0;
  *nattrs = 0;
  *empty = false;
  for (;;) {
    while (ch != EOF && isspace(ch))
      ch = next_char(p);
    if (ch == '>')
      return 1;
    if (ch == '/') {
      *empty = true;
      ch = next_char(p);
      if (ch != '>')
        return ts_error_set(err, -EINVAL, "line %d: expected '>' after '/'", p->line);
      return 1;
    }
    if (ch == EOF)
      return ts_error_set(err, -EINVAL, "line %d: unexpected end of input inside <%s>", p->line, name);
    if (*nattrs >= 16)
      return ts_error_set(err, -EINVAL, "line %d: too many attributes in <%s>", p->line, name);
    struct attr *a = &attrs[(*nattrs)++];
    n = 0;
    while (ch != EOF && ch != '=' && !isspace(ch)) {
      if (n + 1 < sizeof(a->name))
        a->name[n++] = (char)ch;
      ch = next_char(p);
    }
    a->name[n] = 0;
    while (ch != EOF && isspace(ch))
      ch = next_char(p);
    if (ch != '=')
      return ts_error_set(err, -EINVAL, "line %d: attribute %s of <%s> has no value", p->line, a->name, name);
    ch = next_char(p);
    while (ch != EOF && isspace(ch))
      ch = next_char(p);
    if (ch != '"' && ch != '\'')
      return ts_error_set(err, -EINVAL, "line %d: attribute %s of <%s> is not quoted", p->line, a->name, name);
    int q = ch;
    n = 0;
    while ((ch = next_char(p)) != EOF && ch != q) {
      if (n + 1 < sizeof(a->value))
        a->value[n++] = (char)ch;
    }
    a->value[n] = 0;
    if (ch == EOF)
      return ts_error_set(err, -EINVAL, "line %d: unterminated attribute value", p->line);
    ch = next_char(p);
  }
}

/* Unsigned attribute `key` into *out; required unless def != NULL. */
static int get_u64(struct parser *p, const char *tag, struct attr *a, int na, const char *key, const uint64_t *def,
                   uint64_t *out, ts_error *err)
{
  for (int i = 0; i < na; i++) {
    if (strcmp(a[i].name, key))
      continue;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(a[i].value, &end, 10);
    if (!a[i].value[0] || *end || errno || a[i].value[0] == '-')
      return ts_error_set(err, -EINVAL, "line %d: <%s %s=\"%s\">: not an unsigned number", p->line, tag, key, a[i].value);
    *out = v;
    return 0;
  }
  if (def) {
    *out = *def;
    return 0;
  }
  return ts_error_set(err, -EINVAL, "line %d: <%s> lacks the %s attribute", p->line, tag, key);
}

/* One pass over the XML. The first (md == NULL) applies every rule and
 * touches nothing; the second builds the pool in md and can then fail only
 * for want of space, memory or I/O. */
struct restore {
  struct tmd *md;
  uint64_t sb_time, sb_trans, sb_flags, dbs, ndb;
  uint8_t *ids; /* first pass: device ids seen, one bit each */
};

static int restore_pass(FILE *in, struct restore *R, ts_error *err)
{
  struct parser p = {in, 1, EOF - 1};
  char name[32];
  struct attr a[16];
  int na;
  bool closing, empty;
  uint64_t cur_dev = 0;
  bool in_sb = false, in_dev = false, done_sb = false;
  const uint64_t zero = 0;
  int r;
  while ((r = next_tag(&p, name, sizeof(name), a, &na, &closing, &empty, err)) == 1) {
    if (!strcmp(name, "superblock")) {
      if (closing) {
        if (!in_sb)
          return ts_error_set(err, -EINVAL, "line %d: </superblock> without <superblock>", p.line);
        if (in_dev)
          return ts_error_set(err, -EINVAL, "line %d: </superblock> inside <device>", p.line);
        done_sb = true;
        break;
      }
      if (in_sb)
        return ts_error_set(err, -EINVAL, "line %d: nested <superblock>", p.line);
      uint64_t version, two = 2;
      if ((r = get_u64(&p, name, a, na, "time", NULL, &R->sb_time, err)) ||
          (r = get_u64(&p, name, a, na, "transaction", NULL, &R->sb_trans, err)) ||
          (r = get_u64(&p, name, a, na, "flags", &zero, &R->sb_flags, err)) ||
          (r = get_u64(&p, name, a, na, "version", &two, &version, err)) ||
          (r = get_u64(&p, name, a, na, "data_block_size", NULL, &R->dbs, err)) ||
          (r = get_u64(&p, name, a, na, "nr_data_blocks", NULL, &R->ndb, err)))
        return r;
      if (version != 2 && version != 1)
        return ts_error_set(err, -EINVAL, "line %d: metadata version %" PRIu64 " is not supported", p.line, version);
      if (R->sb_time > 0xFFFFFF || R->sb_flags > UINT32_MAX)
        return ts_error_set(err, -EINVAL, "line %d: superblock time or flags out of range", p.line);
      if (R->dbs < TMD_MIN_DATA_BLOCK_SIZE || R->dbs > TMD_MAX_DATA_BLOCK_SIZE || R->dbs % 128)
        return ts_error_set(err, -EINVAL, "line %d: data_block_size %" PRIu64 " sectors: must be 128..2097152 and a "
                            "multiple of 128", p.line, R->dbs);
      if (R->ndb > TMD_MAX_DATA_BLOCKS)
        return ts_error_set(err, -EINVAL, "line %d: nr_data_blocks %" PRIu64 " is more than the format's 2^40",
                            p.line, R->ndb);
      in_sb = true;
      if (empty) {
        done_sb = true;
        break;
      }
    } else if (!strcmp(name, "device")) {
      if (!in_sb)
        return ts_error_set(err, -EINVAL, "line %d: <%sdevice> outside <superblock>", p.line, closing ? "/" : "");
      if (closing) {
        if (!in_dev)
          return ts_error_set(err, -EINVAL, "line %d: </device> without <device>", p.line);
        in_dev = false;
        continue;
      }
      if (in_dev)
        return ts_error_set(err, -EINVAL, "line %d: <device> inside <device>", p.line);
      uint64_t id, mapped, trans, ct, st;
      if ((r = get_u64(&p, name, a, na, "dev_id", NULL, &id, err)) ||
          (r = get_u64(&p, name, a, na, "mapped_blocks", NULL, &mapped, err)) ||
          (r = get_u64(&p, name, a, na, "transaction", NULL, &trans, err)) ||
          (r = get_u64(&p, name, a, na, "creation_time", NULL, &ct, err)) ||
          (r = get_u64(&p, name, a, na, "snap_time", NULL, &st, err)))
        return r;
      if (id > TMD_MAX_DEV_ID)
        return ts_error_set(err, -EINVAL, "line %d: device id %" PRIu64 " is more than %u", p.line, id,
                            TMD_MAX_DEV_ID);
      if (ct > UINT32_MAX)
        return ts_error_set(err, -EINVAL, "line %d: device %" PRIu64 ": creation_time out of range", p.line, id);
      /* check's rule: nothing is snapshotted after the pool's time */
      if (st > R->sb_time)
        return ts_error_set(err, -EINVAL, "line %d: device %" PRIu64 ": snap_time %" PRIu64
                            " is after the pool time %" PRIu64, p.line, id, st, R->sb_time);
      if (!R->md) {
        if (R->ids[id / 8] & (1u << (id % 8)))
          return ts_error_set(err, -EINVAL, "line %d: device %" PRIu64 " defined twice", p.line, id);
        R->ids[id / 8] |= (uint8_t)(1u << (id % 8));
      } else {
        if ((r = tmd_create_thin(R->md, (uint32_t)id)))
          return ts_error_set(err, r, "line %d: device %" PRIu64 ": %s", p.line, id, strerror(-r));
        struct tmd_dev_info info = {0, trans, (uint32_t)ct, (uint32_t)st};
        pd_tmd_set_details(R->md, (uint32_t)id, &info);
      }
      cur_dev = id;
      in_dev = !empty;
    } else if (!strcmp(name, "range_mapping") || !strcmp(name, "single_mapping")) {
      if (!in_dev)
        return ts_error_set(err, -EINVAL, "line %d: <%s> outside <device>", p.line, name);
      if (closing)
        continue;
      uint64_t ob, db, len = 1, t;
      bool range = name[0] == 'r';
      if ((r = get_u64(&p, name, a, na, range ? "origin_begin" : "origin_block", NULL, &ob, err)) ||
          (r = get_u64(&p, name, a, na, range ? "data_begin" : "data_block", NULL, &db, err)) ||
          (range && (r = get_u64(&p, name, a, na, "length", NULL, &len, err))) ||
          (r = get_u64(&p, name, a, na, "time", NULL, &t, err)))
        return r;
      if (!len)
        return ts_error_set(err, -EINVAL, "line %d: <%s> of length 0", p.line, name);
      if (db >= R->ndb || len > R->ndb - db)
        return ts_error_set(err, -EINVAL, "line %d: mapping beyond end of data device (%" PRIu64 "+%" PRIu64
                            " > %" PRIu64 ")", p.line, db, len, R->ndb);
      if (ob + len < ob)
        return ts_error_set(err, -EINVAL, "line %d: origin blocks %" PRIu64 "+%" PRIu64 " wrap around", p.line,
                            ob, len);
      /* check's rule: no mapping is newer than the pool */
      if (t > R->sb_time)
        return ts_error_set(err, -EINVAL, "line %d: mapping time %" PRIu64 " is after the pool time %" PRIu64,
                            p.line, t, R->sb_time);
      if (R->md) {
        /* each mapping holds one reference on its data block */
        if ((r = tmd_data_inc_run(R->md, db, len)))
          return ts_error_set(err, r, "line %d: %s", p.line, strerror(-r));
        uint64_t done = 0;
        if ((r = pd_tmd_insert_run_time(R->md, (uint32_t)cur_dev, ob, len, db, (uint32_t)t, &done)))
          return ts_error_set(err, r, "line %d: inserting mappings: %s", p.line, strerror(-r));
      }
    } else {
      return ts_error_set(err, -EINVAL, "line %d: unknown tag <%s%s>", p.line, closing ? "/" : "", name);
    }
  }
  if (r < 0)
    return r;
  if (ferror(in))
    return ts_error_set(err, -EIO, "reading the XML failed");
  if (!done_sb)
    return ts_error_set(err, -EINVAL, "line %d: %s", p.line, in_sb ? "missing </superblock>" : "no <superblock> found");
  return 0;
}

int pd_restore_xml(const struct pd_bdev *bdev, FILE *in, ts_error *err)
{
  /* Two passes need the input twice: a pipe is kept in a temporary file. */
  FILE *src = in, *spool = NULL;
  long start = ftell(in);
  if (start < 0) {
    if (!(spool = tmpfile()))
      return ts_error_set(err, -errno, "a temporary copy of the XML: %s", strerror(errno));
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
      if (fwrite(buf, 1, n, spool) != n)
        break;
    if (ferror(in) || ferror(spool) || fflush(spool)) {
      fclose(spool);
      return ts_error_set(err, -EIO, "copying the XML to a temporary file failed");
    }
    rewind(spool);
    src = spool;
    start = 0;
  }
  struct restore R = {0};
  R.ids = calloc((TMD_MAX_DEV_ID + 1) / 8, 1);
  int r = R.ids ? restore_pass(src, &R, err) : ts_error_set(err, -ENOMEM, "out of memory");
  free(R.ids);
  R.ids = NULL;
  bool kept = false;
  if (!r && fseek(src, start, SEEK_SET))
    r = ts_error_set(err, -errno, "rereading the XML: %s", strerror(errno));
  if (!r)
    r = pd_tmd_format_beside(bdev, (uint32_t)R.dbs, R.ndb, &R.md, &kept, err);
  if (!r)
    r = restore_pass(src, &R, err);
  if (!r) {
    /* mapped_blocks are recomputed from the mappings, the rest as given */
    pd_tmd_set_sb_fields(R.md, (uint32_t)R.sb_time, R.sb_trans, (uint32_t)R.sb_flags);
    if ((r = tmd_commit(R.md)))
      ts_error_set(err, r, "writing the metadata: %s", strerror(-r));
  }
  if (r && R.md && kept && err) {
    /* the new pool was built beside the old one, whose superblock stands */
    char msg[sizeof(err->msg)];
    snprintf(msg, sizeof(msg), "%s", err->msg);
    ts_error_set(err, r, "%s%s", msg, r == -ENOSPC ? " (the existing pool on the metadata device is unchanged; "
                 "there was no room to build the new one beside it)" : " (the existing pool is unchanged)");
  }
  tmd_close(R.md);
  if (spool)
    fclose(spool);
  return r;
}
