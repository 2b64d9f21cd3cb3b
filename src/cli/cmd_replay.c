/* thinstack replay-log: read a dm-log-writes log (as the log-writes layer or
 * the kernel's target writes it) and list its entries or replay them onto a
 * file or block device, up to an entry or a mark: the device as it was at
 * that point, for checking what a crash there would have left. */
#include "cli/cli.h"
#include "backends/logwrites.h"
#include "core/internal.h"
#include "core/le.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libthinstack/layer.h>
#include <linux/falloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Entry data is copied through a buffer of at most this many bytes. */
#define REPLAY_CHUNK (1u << 20)


static void flag_names(uint64_t f, char *buf, size_t n)
{
  snprintf(buf, n, "%s%s%s%s%s", f & LW_FLUSH ? "flush " : "", f & LW_FUA ? "fua " : "",
           f & LW_DISCARD ? "discard " : "", f & LW_MARK ? "mark " : "",
           f & LW_METADATA ? "metadata " : "");
  size_t len = strlen(buf);
  if (len)
    buf[len - 1] = '\0';
  else
    snprintf(buf, n, "write");
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
static int copy_data(int lfd, int tfd, unsigned char *buf, size_t cap, uint64_t from, uint64_t to, uint64_t len)
{
  for (uint64_t done = 0; done < len;) {
    size_t n = len - done < cap ? (size_t)(len - done) : cap;
    int r = ts__fd_rw(lfd, false, buf, n, from + done);
    if (!r)
      r = ts__fd_rw(tfd, true, buf, n, to + done);
    if (r)
      return r;
    done += n;
  }
  return 0;
}

/* Size in bytes of a file or block device, or -errno. */
static int64_t fd_size(int fd)
{
  off_t end = lseek(fd, 0, SEEK_END);
  return end < 0 ? -errno : (int64_t)end;
}

int ts_cli_replay_log(int argc, char **argv)
{
  if (ts_cli_help(argc, argv))
    return 0;
  const char *pos[2] = { NULL, NULL };
  int npos = 0;
  bool list = false, json = false;
  const char *end_mark = NULL;
  uint64_t limit = UINT64_MAX;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--list"))
      list = true;
    else if (!strcmp(argv[i], "--json"))
      json = true;
    else if (!strcmp(argv[i], "--end-mark") && i + 1 < argc)
      end_mark = argv[++i];
    else if (!strcmp(argv[i], "--limit") && i + 1 < argc) {
      char *end;
      limit = strtoull(argv[++i], &end, 10);
      if (*end || argv[i][0] == '-') {
        ts_cli_err("replay-log: --limit: \"%s\" is not a number of entries", argv[i]);
        return 2;
      }
    } else if (argv[i][0] == '-' || npos == 2) {
      ts_cli_usage(stderr, argv[0]);
      return 2;
    } else {
      pos[npos++] = argv[i];
    }
  }
  if (npos != (list ? 1 : 2)) {
    ts_cli_usage(stderr, argv[0]);
    return 2;
  }
  int lfd = open(pos[0], O_RDONLY | O_CLOEXEC);
  if (lfd < 0) {
    ts_cli_err("replay-log: cannot open %s: %s", pos[0], strerror(errno));
    return 1;
  }
  struct stat ls, ts;
  if (!list && fstat(lfd, &ls) == 0 && stat(pos[1], &ts) == 0 && ls.st_dev == ts.st_dev && ls.st_ino == ts.st_ino) {
    ts_cli_err("replay-log: the target %s is the log %s itself; replaying would overwrite the log being read",
               pos[1], pos[0]);
    close(lfd);
    return 2;
  }
  int tfd = -1, status = 1;
  unsigned char *block = NULL, *data = NULL;
  json_t *arr = json ? json_array() : NULL;
  unsigned char sb[512];
  int r = ts__fd_rw(lfd, false, sb, sizeof sb, 0);
  uint64_t nr = ts__le64(sb + LW_SUPER_ENTRIES), ss = ts__le32(sb + LW_SUPER_SECTORSIZE);
  if (r || ts__le64(sb + LW_SUPER_MAGIC) != LW_MAGIC ||
      ts__le64(sb + LW_SUPER_VERSION) != LW_VERSION || ss < 512 || ss > 65536 ||
      (ss & (ss - 1))) {
    ts_cli_err("replay-log: %s is not a dm-log-writes log (%s)", pos[0],
               r ? ts_strerror(r) : "bad magic, version or sector size");
    goto out;
  }
  int64_t log_len = fd_size(lfd), tgt_len = 0;
  if (log_len < 0) {
    ts_cli_err("replay-log: %s: cannot find its size: %s", pos[0], ts_strerror((int)log_len));
    goto out;
  }
  if (!list) {
    tfd = open(pos[1], O_WRONLY | O_CLOEXEC);
    if (tfd < 0) {
      ts_cli_err("replay-log: cannot open %s for writing: %s", pos[1], strerror(errno));
      goto out;
    }
    if ((tgt_len = fd_size(tfd)) < 0) {
      ts_cli_err("replay-log: %s: cannot find its size: %s", pos[1], ts_strerror((int)tgt_len));
      goto out;
    }
  }
  block = malloc(ss);
  data = malloc(REPLAY_CHUNK);
  if (!block || !data) {
    ts_cli_err("replay-log: out of memory");
    goto out;
  }
  /* Every position below is checked against the log's length before it is
   * used, so each entry moves `at` forward by at least one sector and a
   * crafted count can neither wrap it nor outrun the file. */
  uint64_t at = ss, replayed = 0, llen = (uint64_t)log_len, tsec = (uint64_t)tgt_len / ss;
  bool found_mark = false;
  for (uint64_t i = 0; i < nr && i < limit && !found_mark; i++) {
    if (at > llen || llen - at < ss) {
      ts_cli_err("replay-log: %s: entry %llu would start at byte %llu, past the end of the log (%llu bytes), "
                 "but the log's superblock says it has %llu entries", pos[0], (unsigned long long)i,
                 (unsigned long long)at, (unsigned long long)llen, (unsigned long long)nr);
      goto out;
    }
    if ((r = ts__fd_rw(lfd, false, block, ss, at)) != 0) {
      ts_cli_err("replay-log: entry %llu at byte %llu: %s (the log says it has %llu)",
                 (unsigned long long)i, (unsigned long long)at, ts_strerror(r),
                 (unsigned long long)nr);
      goto out;
    }
    uint64_t sector = ts__le64(block + LW_ENTRY_SECTOR), n = ts__le64(block + LW_ENTRY_NR),
             flags = ts__le64(block + LW_ENTRY_FLAGS), dlen = ts__le64(block + LW_ENTRY_DATA_LEN);
    char mark[256] = "";
    if (flags & LW_MARK) {
      size_t m = dlen < ss - LW_ENTRY_SIZE ? (size_t)dlen : (size_t)(ss - LW_ENTRY_SIZE);
      if (m >= sizeof mark)
        m = sizeof mark - 1;
      memcpy(mark, block + LW_ENTRY_SIZE, m);
      mark[m] = '\0';
    }
    /* a write's data follows its entry: it must lie inside the log */
    uint64_t data_sectors = (flags & LW_DISCARD) ? 0 : n;
    if (data_sectors > (llen - at - ss) / ss) {
      ts_cli_err("replay-log: %s: entry %llu at byte %llu has %llu sectors of data, past the end of the log "
                 "(%llu bytes)", pos[0], (unsigned long long)i, (unsigned long long)at,
                 (unsigned long long)n, (unsigned long long)llen);
      goto out;
    }
    uint64_t bytes = data_sectors * ss;
    if (!list && n && (sector > tsec || n > tsec - sector)) {
      ts_cli_err("replay-log: entry %llu (byte %llu of %s) %s %llu sectors at sector %llu (%llu bytes each), "
                 "past the end of %s (%llu bytes); the target must be as large as the logged device",
                 (unsigned long long)i, (unsigned long long)at, pos[0],
                 (flags & LW_DISCARD) ? "discards" : "writes", (unsigned long long)n,
                 (unsigned long long)sector, (unsigned long long)ss, pos[1], (unsigned long long)tgt_len);
      goto out;
    }
    if (list) {
      char fl[64];
      flag_names(flags, fl, sizeof fl);
      if (json) {
        json_t *e = json_pack("{s:I,s:s,s:I,s:I}", "index", (json_int_t)i, "flags", fl, "sector",
                              (json_int_t)sector, "nr_sectors", (json_int_t)n);
        if (mark[0])
          json_object_set_new(e, "mark", json_string(mark));
        json_array_append_new(arr, e);
      } else {
        printf("%6llu %-14s sector %-10llu nr %-8llu%s%s\n", (unsigned long long)i, fl,
               (unsigned long long)sector, (unsigned long long)n, mark[0] ? " mark " : "", mark);
      }
    } else if (flags & LW_DISCARD) {
      if ((r = discard_range(tfd, sector * ss, n * ss)) != 0) {
        ts_cli_err("replay-log: discard of entry %llu on %s: %s", (unsigned long long)i, pos[1],
                   ts_strerror(r));
        goto out;
      }
    } else if (bytes) {
      if ((r = copy_data(lfd, tfd, data, REPLAY_CHUNK, at + ss, sector * ss, bytes)) != 0) {
        ts_cli_err("replay-log: data of entry %llu (byte %llu of %s onto byte %llu of %s): %s",
                   (unsigned long long)i, (unsigned long long)(at + ss), pos[0],
                   (unsigned long long)(sector * ss), pos[1], ts_strerror(r));
        goto out;
      }
    }
    replayed++;
    at += ss + bytes;
    found_mark = end_mark && (flags & LW_MARK) && !strcmp(mark, end_mark);
  }
  if (end_mark && !found_mark) {
    ts_cli_err("replay-log: no mark \"%s\" among the %llu entries read", end_mark,
               (unsigned long long)replayed);
    goto out;
  }
  if (tfd >= 0 && fsync(tfd) != 0 && errno != EINVAL) {
    ts_cli_err("replay-log: %s: %s", pos[1], strerror(errno));
    goto out;
  }
  if (json) {
    char *s = json_dumps(arr, JSON_INDENT(2));
    if (s)
      puts(s);
    free(s);
  } else if (!list) {
    fprintf(stderr, "replayed %llu of %llu entries onto %s\n", (unsigned long long)replayed,
            (unsigned long long)nr, pos[1]);
  }
  status = 0;
out:
  json_decref(arr);
  free(block);
  free(data);
  if (tfd >= 0)
    close(tfd);
  close(lfd);
  return status;
}
