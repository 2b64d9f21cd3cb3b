/* Ownership: every file or device a layer opens is claimed here, so that one
 * stack owns what it writes. See claim.h for the rule and README "Ownership".
 *
 * The lock covers the whole file (l_start 0, l_len 0). Besides being the
 * simplest range, it conflicts with any byte-range lock another program
 * takes, QEMU's image locking (shared locks on bytes 100 and up) included:
 * QEMU cannot open an image (without -U) while a stack holds it, and a
 * writing stack refuses an image QEMU has open. */
#include "core/claim.h"
#include "core/internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysmacros.h>
#include <unistd.h>

enum { HOLD_READ = 1, HOLD_WRITE = 2 };

static bool same_inode(const struct stat *a, const struct stat *b)
{
  return a->st_dev == b->st_dev && a->st_ino == b->st_ino;
}

/* The locks /proc/PID/fdinfo/FD lists on the inode `st`: HOLD_* bits. The
 * kernel prints "lock:\t1: OFDLCK  ADVISORY  WRITE -1 08:02:1234 0 EOF",
 * the device as the superblock's major:minor in hex; where that is not what
 * stat reports (btrfs subvolumes, overlayfs), the fd itself is compared. */
static int fd_holds(const char *pid, const char *fd, const struct stat *st)
{
  char p[96], text[8192];
  snprintf(p, sizeof p, "/proc/%s/fdinfo/%s", pid, fd);
  int f = open(p, O_RDONLY | O_CLOEXEC);
  if (f < 0)
    return 0;
  ssize_t n = read(f, text, sizeof text - 1);
  close(f);
  if (n <= 0)
    return 0;
  text[n] = '\0';
  int held = 0;
  for (char *line = strstr(text, "lock:"); line; line = strstr(line + 1, "\nlock:")) {
    char *l = line[0] == '\n' ? line + 1 : line;
    char *eol = l + strcspn(l, "\n"), *arrow = strstr(l, "->");
    if (arrow && arrow < eol)
      continue; /* a waiter, not a holder */
    char cls[16], adv[16], mode[16];
    long lpid;
    unsigned maj, min;
    unsigned long long ino;
    if (sscanf(l, "lock: %*d: %15s %15s %15s %ld %x:%x:%llu", cls, adv, mode, &lpid, &maj, &min,
               &ino) != 7 ||
        ino != (unsigned long long)st->st_ino)
      continue;
    if (maj != major(st->st_dev) || min != minor(st->st_dev)) {
      struct stat fst;
      snprintf(p, sizeof p, "/proc/%s/fd/%s", pid, fd);
      if (stat(p, &fst) != 0 || !same_inode(&fst, st))
        continue;
    }
    held |= strcmp(mode, "WRITE") == 0 ? HOLD_WRITE : HOLD_READ;
  }
  return held;
}

static void comm_of(const char *pid, char *buf, size_t len)
{
  char p[64];
  snprintf(p, sizeof p, "/proc/%s/comm", pid);
  snprintf(buf, len, "?");
  int f = open(p, O_RDONLY | O_CLOEXEC);
  if (f < 0)
    return;
  ssize_t n = read(f, buf, len - 1);
  close(f);
  if (n <= 0) {
    snprintf(buf, len, "?");
    return;
  }
  buf[n] = '\0';
  buf[strcspn(buf, "\n")] = '\0';
}

void ts__lock_holders(const struct stat *st, char *buf, size_t len, bool *readers_only)
{
  enum { SHOW = 4 };
  size_t used = 0;
  int found = 0;
  bool writer = false;
  buf[0] = '\0';
  DIR *proc = opendir("/proc");
  for (struct dirent *de; proc && (de = readdir(proc));) {
    char *end;
    long pid = strtol(de->d_name, &end, 10);
    if (*end || pid <= 0)
      continue;
    char p[64];
    snprintf(p, sizeof p, "/proc/%s/fdinfo", de->d_name);
    DIR *fds = opendir(p);
    if (!fds)
      continue;
    int held = 0;
    for (struct dirent *fe; (fe = readdir(fds));)
      if (fe->d_name[0] != '.')
        held |= fd_holds(de->d_name, fe->d_name, st);
    closedir(fds);
    if (!held)
      continue;
    writer |= (held & HOLD_WRITE) != 0;
    if (found++ < SHOW && used < len) {
      char comm[32];
      comm_of(de->d_name, comm, sizeof comm);
      int w = snprintf(buf + used, len - used, "%spid %ld (%s)", found > 1 ? ", " : "", pid, comm);
      used += w > 0 ? (size_t)w : 0;
    }
  }
  if (proc)
    closedir(proc);
  if (found > SHOW && used < len)
    snprintf(buf + used, len - used, " and %d more", found - SHOW);
  if (!found)
    snprintf(buf, len, "another process");
  if (readers_only)
    *readers_only = found && !writer;
}

int ts__lock_fd(int fd, const char *path, bool write, bool force_share, bool *stale,
                bool *unlocked, char *why, size_t len)
{
  struct flock fl = { .l_type = write ? F_WRLCK : F_RDLCK, .l_whence = SEEK_SET };
  if (stale)
    *stale = false;
  if (unlocked)
    *unlocked = false;
  why[0] = '\0';
  if (!write && force_share) {
    /* F_OFD_GETLK answers with a lock that would conflict: a writer's. */
    if (stale && fcntl(fd, F_OFD_GETLK, &fl) == 0 && fl.l_type != F_UNLCK)
      *stale = true;
    return 0;
  }
  while (fcntl(fd, F_OFD_SETLK, &fl) != 0) {
    int e = errno;
    if (e == EINTR)
      continue;
    if (e == EAGAIN || e == EACCES) {
      struct stat st;
      char who[256] = "another process";
      bool readers = false;
      if (fstat(fd, &st) == 0)
        ts__lock_holders(&st, who, sizeof who, &readers);
      if (write)
        snprintf(why, len, "%s is %s by %s", path, readers ? "open read-only" : "in use", who);
      else
        snprintf(why, len, "%s is open for writing by %s", path, who);
      return -EBUSY;
    }
    /* File systems without byte-range locks (some FUSE and network ones). */
    if (e == ENOLCK || e == EOPNOTSUPP || e == EINVAL) {
      if (unlocked)
        *unlocked = true;
      return 0;
    }
    snprintf(why, len, "cannot lock %s: %s", path, strerror(e));
    return -e;
  }
  return 0;
}

static bool same_target(const struct ts__claim *c, const struct stat *st)
{
  if (S_ISBLK(st->st_mode))
    return c->bdev && c->rdev == st->st_rdev;
  return !c->bdev && c->dev == st->st_dev && c->ino == st->st_ino;
}

int ts__claim_dup(ts_layer *l, const struct stat *st, const char *path, ts_error *err)
{
  struct ts_stack *s = l->stack;
  for (size_t i = 0; i < s->nclaims; i++) {
    const struct ts__claim *c = &s->claims[i];
    if (!same_target(c, st))
      continue;
    if (strcmp(c->path, path) == 0)
      return ts_layer_error(l, err, -EBUSY, "path", "%s is already layer \"%s\"'s %s: two layers "
                            "of one stack cannot use the same one",
                            path, c->layer, c->bdev ? "device" : "file");
    return ts_layer_error(l, err, -EBUSY, "path", "%s is the same %s as %s, already layer \"%s\"'s: "
                          "two layers of one stack cannot use the same one",
                          path, c->bdev ? "device" : "file", c->path, c->layer);
  }
  return 0;
}

int ts_layer_claim_fd(ts_layer *l, int fd, const char *path, bool write, ts_error *err)
{
  struct stat st;
  if (fstat(fd, &st) != 0)
    return ts_layer_error(l, err, -errno, "path", "cannot stat %s: %s", path, strerror(errno));
  int r = ts__claim_dup(l, &st, path, err);
  if (r)
    return r;
  struct ts_stack *s = l->stack;
  bool force = s->opts.flags & TS_OPEN_FORCE_SHARE;
  bool stale, unlocked;
  char why[400];
  r = ts__lock_fd(fd, path, write, force, &stale, &unlocked, why, sizeof why);
  if (r == -EBUSY)
    return ts_layer_error(l, err, r, NULL, "%s%s", why,
                          write ? "; a file has one writer or any number of readers"
                                : "; open it with force-share (thinstack -U) to read it anyway");
  if (r)
    return ts_layer_error(l, err, r, NULL, "%s", why);
  if (stale) {
    char who[256];
    ts__lock_holders(&st, who, sizeof who, NULL);
    ts_layer_event(l, "force-share",
                   "%s is open for writing by %s: read without a lock, what this stack sees may "
                   "be stale or inconsistent", path, who);
  }
  if (unlocked)
    ts_layer_event(l, "unlocked", "%s: its file system takes no locks, so nothing keeps a second "
                   "writer out", path);
  struct ts__claim *v = realloc(s->claims, (s->nclaims + 1) * sizeof *v);
  char *dup = strdup(path);
  if (!v || !dup) {
    free(dup);
    if (v)
      s->claims = v;
    return ts_layer_error(l, err, -ENOMEM, NULL, "out of memory");
  }
  s->claims = v;
  v[s->nclaims++] = (struct ts__claim){ .dev = st.st_dev, .ino = st.st_ino, .rdev = st.st_rdev,
                                        .bdev = S_ISBLK(st.st_mode), .layer = l->name,
                                        .path = dup };
  return 0;
}

void ts__claims_free(struct ts_stack *s)
{
  for (size_t i = 0; i < s->nclaims; i++)
    free(s->claims[i].path);
  free(s->claims);
  s->claims = NULL;
  s->nclaims = 0;
}
