/* ts_log_replay (libthinstack/tools.h): read a dm-log-writes log and list
 * its entries or replay them onto a file or block device, up to an entry or
 * a mark: the device as it was at that point, for checking what a crash
 * there would have left. */
#include <libthinstack/layer.h>
#include <libthinstack/thinstack.h>

#include "backends/logwrites.h"
#include "core/internal.h"
#include "core/le.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Entry data is copied through a buffer of at most this many bytes. */
#define REPLAY_CHUNK (1u << 20)

struct replay {
  const char *log_path, *tgt_path;
  int lfd, tfd;
  uint64_t nr;         /* entries, as the superblock says */
  uint32_t ss;         /* sector size */
  uint64_t llen, tlen; /* bytes */
  unsigned char *block, *data;
  ts_error *err;
};

/* Size in bytes of a file or block device, or -errno. */
static int64_t fd_size(int fd)
{
  off_t end = lseek(fd, 0, SEEK_END);
  return end < 0 ? -errno : (int64_t)end;
}

static int open_log(struct replay *p)
{
  p->lfd = open(p->log_path, O_RDONLY | O_CLOEXEC);
  if (p->lfd < 0)
    return ts_error_set(p->err, -errno, "cannot open %s: %s", p->log_path, strerror(errno));
  unsigned char sb[512];
  int r = ts__fd_rw(p->lfd, false, sb, sizeof sb, 0);
  uint64_t ss = ts__le32(sb + LW_SUPER_SECTORSIZE);
  if (r || ts__le64(sb + LW_SUPER_MAGIC) != LW_MAGIC ||
      ts__le64(sb + LW_SUPER_VERSION) != LW_VERSION || ss < 512 || ss > 65536 || (ss & (ss - 1)))
    return ts_error_set(p->err, -EINVAL, "%s is not a dm-log-writes log (%s)", p->log_path,
                        r ? ts_strerror(r) : "bad magic, version or sector size");
  p->nr = ts__le64(sb + LW_SUPER_ENTRIES);
  p->ss = (uint32_t)ss;
  int64_t len = fd_size(p->lfd);
  if (len < 0)
    return ts_error_set(p->err, (int)len, "%s: cannot find its size: %s", p->log_path,
                        ts_strerror((int)len));
  p->llen = (uint64_t)len;
  return 0;
}

static int open_target(struct replay *p)
{
  struct stat ls, ts;
  if (fstat(p->lfd, &ls) == 0 && stat(p->tgt_path, &ts) == 0 && ls.st_dev == ts.st_dev &&
      ls.st_ino == ts.st_ino)
    return ts_error_set(p->err, -ELOOP,
                        "the target %s is the log %s itself; replaying would overwrite the log "
                        "being read", p->tgt_path, p->log_path);
  p->tfd = open(p->tgt_path, O_WRONLY | O_CLOEXEC);
  if (p->tfd < 0)
    return ts_error_set(p->err, -errno, "cannot open %s for writing: %s", p->tgt_path,
                        strerror(errno));
  int64_t len = fd_size(p->tfd);
  if (len < 0)
    return ts_error_set(p->err, (int)len, "%s: cannot find its size: %s", p->tgt_path,
                        ts_strerror((int)len));
  p->tlen = (uint64_t)len;
  return 0;
}

/* Read entry e->index at byte `at` into e and p->block, checking that it
 * and its data lie inside the log (and the target). Every position is
 * checked against the log's length before use, so each entry moves forward
 * by at least one sector and a crafted count can neither wrap nor outrun
 * the file. `mark` has room for 256 bytes. */
static int read_entry(struct replay *p, uint64_t at, ts_log_entry *e, char *mark)
{
  uint64_t i = e->index, ss = p->ss;
  if (at > p->llen || p->llen - at < ss)
    return ts_error_set(p->err, -EINVAL,
                        "%s: entry %llu would start at byte %llu, past the end of the log "
                        "(%llu bytes), but the log's superblock says it has %llu entries",
                        p->log_path, (unsigned long long)i, (unsigned long long)at,
                        (unsigned long long)p->llen, (unsigned long long)p->nr);
  int r = ts__fd_rw(p->lfd, false, p->block, ss, at);
  if (r)
    return ts_error_set(p->err, r, "%s: entry %llu at byte %llu: %s (the log says it has %llu)",
                        p->log_path, (unsigned long long)i, (unsigned long long)at,
                        ts_strerror(r), (unsigned long long)p->nr);
  uint64_t flags = ts__le64(p->block + LW_ENTRY_FLAGS), dlen = ts__le64(p->block + LW_ENTRY_DATA_LEN);
  e->offset = at;
  e->sector = ts__le64(p->block + LW_ENTRY_SECTOR);
  e->nr_sectors = ts__le64(p->block + LW_ENTRY_NR);
  e->flags = (uint32_t)flags;
  e->sector_size = p->ss;
  mark[0] = '\0';
  if (flags & LW_MARK) {
    size_t m = dlen < ss - LW_ENTRY_SIZE ? (size_t)dlen : (size_t)(ss - LW_ENTRY_SIZE);
    if (m >= 256)
      m = 255;
    memcpy(mark, p->block + LW_ENTRY_SIZE, m);
    mark[m] = '\0';
  }
  e->mark = mark;
  /* a write's data follows its entry: it must lie inside the log */
  uint64_t data_sectors = (flags & LW_DISCARD) ? 0 : e->nr_sectors;
  if (data_sectors > (p->llen - at - ss) / ss)
    return ts_error_set(p->err, -EINVAL,
                        "%s: entry %llu at byte %llu has %llu sectors of data, past the end of the "
                        "log (%llu bytes)", p->log_path, (unsigned long long)i,
                        (unsigned long long)at, (unsigned long long)e->nr_sectors,
                        (unsigned long long)p->llen);
  uint64_t tsec = p->tlen / ss, n = e->nr_sectors;
  if (p->tfd >= 0 && n && (e->sector > tsec || n > tsec - e->sector))
    return ts_error_set(p->err, -EINVAL,
                        "entry %llu (byte %llu of %s) %s %llu sectors at sector %llu (%llu bytes "
                        "each), past the end of %s (%llu bytes); the target must be as large as "
                        "the logged device", (unsigned long long)i, (unsigned long long)at,
                        p->log_path, (flags & LW_DISCARD) ? "discards" : "writes",
                        (unsigned long long)n, (unsigned long long)e->sector,
                        (unsigned long long)ss, p->tgt_path, (unsigned long long)p->tlen);
  return 0;
}

/* A discard on the replay target: a hole where it can, zeroes otherwise. */
static int discard_range(int fd, uint64_t off, uint64_t len)
{
  if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) == 0)
    return 0;
  if (errno != EOPNOTSUPP)
    return -errno;
  for (uint64_t done = 0; done < len;) {
    size_t n = len - done < TS_ZERO_BUF_SIZE ? (size_t)(len - done) : TS_ZERO_BUF_SIZE;
    int r = ts__fd_rw(fd, true, (void *)ts_zero_buffer(), n, off + done);
    if (r)
      return r;
    done += n;
  }
  return 0;
}

/* Copy len bytes from the log at `from` to the target at `to`, a bounded
 * chunk at a time. */
static int copy_data(struct replay *p, uint64_t from, uint64_t to, uint64_t len)
{
  for (uint64_t done = 0; done < len;) {
    size_t n = len - done < REPLAY_CHUNK ? (size_t)(len - done) : REPLAY_CHUNK;
    int r = ts__fd_rw(p->lfd, false, p->data, n, from + done);
    if (!r)
      r = ts__fd_rw(p->tfd, true, p->data, n, to + done);
    if (r)
      return r;
    done += n;
  }
  return 0;
}

static int apply_entry(struct replay *p, const ts_log_entry *e)
{
  uint64_t ss = p->ss, i = e->index;
  int r;
  if (e->flags & LW_DISCARD) {
    if ((r = discard_range(p->tfd, e->sector * ss, e->nr_sectors * ss)))
      return ts_error_set(p->err, r, "discard of entry %llu on %s: %s", (unsigned long long)i,
                          p->tgt_path, ts_strerror(r));
  } else if (e->nr_sectors) {
    if ((r = copy_data(p, e->offset + ss, e->sector * ss, e->nr_sectors * ss)))
      return ts_error_set(p->err, r, "data of entry %llu (byte %llu of %s onto byte %llu of %s): %s",
                          (unsigned long long)i, (unsigned long long)(e->offset + ss),
                          p->log_path, (unsigned long long)(e->sector * ss), p->tgt_path,
                          ts_strerror(r));
  }
  return 0;
}

static int run(struct replay *p, const char *end_mark, uint64_t limit, ts_log_entry_fn fn,
               void *arg, uint64_t *applied)
{
  char mark[256];
  uint64_t at = p->ss;
  bool found = false;
  for (uint64_t i = 0; i < p->nr && i < limit && !found; i++) {
    ts_log_entry e = { .index = i };
    int r = read_entry(p, at, &e, mark);
    if (!r && fn)
      r = fn(arg, &e);
    if (!r && p->tfd >= 0)
      r = apply_entry(p, &e);
    if (r)
      return r;
    (*applied)++;
    at += p->ss + ((e.flags & LW_DISCARD) ? 0 : e.nr_sectors * p->ss);
    found = end_mark && (e.flags & LW_MARK) && !strcmp(mark, end_mark);
  }
  if (end_mark && !found)
    return ts_error_set(p->err, -ENOENT, "no mark \"%s\" among the %llu entries read", end_mark,
                        (unsigned long long)*applied);
  /* EINVAL: a target that cannot be synced (a pipe, /dev/null) has nothing to sync. */
  if (p->tfd >= 0 && fsync(p->tfd) != 0 && errno != EINVAL)
    return ts_error_set(p->err, -errno, "%s: %s", p->tgt_path, strerror(errno));
  return 0;
}

int ts_log_replay(const char *log_path, const char *target_path, const char *end_mark,
                  uint64_t limit, ts_log_entry_fn fn, void *arg, uint64_t *nr_entries,
                  uint64_t *applied, ts_error *err)
{
  struct replay p = { .log_path = log_path, .tgt_path = target_path, .lfd = -1, .tfd = -1,
                      .err = err };
  uint64_t done = 0;
  int r = open_log(&p);
  if (!r && target_path)
    r = open_target(&p);
  if (!r) {
    p.block = malloc(p.ss);
    p.data = target_path ? malloc(REPLAY_CHUNK) : NULL;
    if (!p.block || (target_path && !p.data))
      r = ts_error_set(err, -ENOMEM, "out of memory");
  }
  if (!r)
    r = run(&p, end_mark, limit, fn, arg, &done);
  if (nr_entries)
    *nr_entries = p.nr;
  if (applied)
    *applied = done;
  free(p.block);
  free(p.data);
  if (p.tfd >= 0)
    close(p.tfd);
  if (p.lfd >= 0)
    close(p.lfd);
  return r;
}
