/* thinstack check / dump / restore: offline tools for dm-thin pool metadata
 * (the format thin_check, thin_dump and thin_restore use).
 * Exit status: 0 clean, 1 damaged metadata, 2 usage or I/O error. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"

#include <libthinstack/thinstack.h>


static bool want_help(int argc, char **argv, const char *usage, const char *text)
{
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
      printf("usage: thinstack %s %s\n%s", argv[0], usage, text);
      return true;
    }
  return false;
}

/* Whether two paths name one file (through links, symlinks or other
 * spellings): a command must not write its output over its own input. */
static bool same_file(const char *a, const char *b)
{
  struct stat sa, sb;
  return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

struct check_out {
  json_t *msgs; /* --json: collected findings */
  unsigned shown;
};

static void check_report(void *arg, bool error, const char *msg)
{
  struct check_out *o = arg;
  const char *l = error ? "error" : "warning";
  if (o->msgs) {
    json_array_append_new(o->msgs, json_pack("{s:s,s:s}", "level", l, "message", msg));
    return;
  }
  if (o->shown++ < 200)
    fprintf(stderr, "%s: %s\n", l, msg);
}

/* check and dump read: a shared lock, or none with -U. */
static void meta_error(const char *cmd, const char *path, int r, const ts_error *err)
{
  if (r == -ENOENT)
    ts_cli_err("%s: %s (thinstack pool create CONFIG POOL makes a pool's metadata)", cmd, err->msg);
  else
    ts_cli_err("%s: %s%s", cmd, err->msg, r == -EBUSY ? " (EBUSY)" : "");
}

/* What reading a metadata file for check or dump comes to, about: its
 * allocated bytes (a sparse pool's file holds little more than its used
 * blocks), at most its size. */
static uint64_t meta_bytes(const char *path)
{
  struct stat st;
  if (stat(path, &st))
    return 0;
  uint64_t alloc = (uint64_t)st.st_blocks * 512;
  return S_ISREG(st.st_mode) && alloc < (uint64_t)st.st_size ? alloc : (uint64_t)st.st_size;
}

static void stale_warning(const char *cmd, const char *path)
{
  ts_cli_err("warning: %s is open for writing by another process: what %s shows may be stale "
             "or inconsistent", path, cmd);
}

int ts_cli_check(int argc, char **argv)
{
  if (want_help(argc, argv, "METADATA_FILE [-p] [--json]",
                "  Check thin-pool metadata (dm-thin format, version 2) without writing to it:\n"
                "  superblock, checksums, btree structure, device trees, and every metadata\n"
                "  and data reference count recomputed from the trees.\n"
                "  Exit status: 0 clean, 1 damaged, 2 usage or I/O error.\n"))
    return 0;
  const char *path = NULL;
  bool json = false;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--json"))
      json = true;
    else if (argv[i][0] == '-' || path) {
      ts_cli_err("check: unexpected argument '%s' (usage: thinstack check METADATA_FILE [--json])", argv[i]);
      return 2;
    } else
      path = argv[i];
  }
  if (!path) {
    ts_cli_err("check: missing METADATA_FILE (usage: thinstack check METADATA_FILE [--json])");
    return 2;
  }
  ts_error err = {0};
  struct check_out o = {json ? json_array() : NULL, 0};
  ts_pool_check_result res;
  ts_cli_progress_sample_reads(meta_bytes(path));
  int r = ts_pool_check(path, ts_cli_force_share ? TS_POOL_FORCE_SHARE : 0, check_report, &o, &res,
                        &err);
  ts_cli_progress_sample_end(r == 0);
  if (r) {
    meta_error("check", path, r, &err);
    json_decref(o.msgs);
    return 2;
  }
  if (res.stale)
    stale_warning("check", path);
  if (json) {
    json_t *j = json_pack("{s:s,s:b,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:o}", "file", path, "clean", res.errors == 0,
                          "errors", (json_int_t)res.errors, "warnings", (json_int_t)res.warnings, "devices",
                          (json_int_t)res.nr_devices, "mappings", (json_int_t)res.nr_mappings,
                          "metadata_blocks_used", (json_int_t)res.metadata_blocks_used, "data_blocks_used",
                          (json_int_t)res.data_blocks_used, "transaction_id", (json_int_t)res.transaction_id,
                          "findings", o.msgs);
    char *s = json_dumps(j, JSON_INDENT(2));
    if (s)
      puts(s);
    free(s);
    json_decref(j);
  } else {
    if (o.shown > 200)
      fprintf(stderr, "(%u more findings not shown)\n", o.shown - 200);
    printf("%s: %s: %llu devices, %llu mappings, %llu metadata blocks and %llu data blocks in use, "
           "transaction %llu, %llu errors, %llu warnings\n",
           path, res.errors ? "DAMAGED" : "clean", (unsigned long long)res.nr_devices,
           (unsigned long long)res.nr_mappings, (unsigned long long)res.metadata_blocks_used,
           (unsigned long long)res.data_blocks_used, (unsigned long long)res.transaction_id,
           (unsigned long long)res.errors, (unsigned long long)res.warnings);
  }
  return res.errors ? 1 : 0;
}

int ts_cli_dump(int argc, char **argv)
{
  if (want_help(argc, argv, "METADATA_FILE [-m|--metadata-snap] [-o FILE] [-p]",
                "  Print thin-pool metadata as thin_dump (0.9.0) XML, to stdout or FILE.\n"
                "  -m, --metadata-snap  dump the held metadata snapshot instead of the live pool\n"
                "  -o FILE              write to FILE\n"))
    return 0;
  static const struct option opts[] = {{"metadata-snap", no_argument, NULL, 'm'},
                                       {"output", required_argument, NULL, 'o'},
                                       {NULL, 0, NULL, 0}};
  bool snap = false;
  const char *outpath = NULL;
  int ch;
  optind = 1;
  opterr = 0;
  while ((ch = getopt_long(argc, argv, "mo:", opts, NULL)) != -1) {
    if (ch == 'm')
      snap = true;
    else if (ch == 'o')
      outpath = optarg;
    else {
      ts_cli_err("dump: bad option '%s' (usage: thinstack dump METADATA_FILE [-m] [-o FILE])", argv[optind - 1]);
      return 2;
    }
  }
  if (optind != argc - 1) {
    ts_cli_err("dump: expected exactly one METADATA_FILE (usage: thinstack dump METADATA_FILE [-m] [-o FILE])");
    return 2;
  }
  const char *path = argv[optind];
  if (outpath && same_file(path, outpath)) {
    ts_cli_err("dump: -o %s is the metadata file %s itself; writing the XML there would destroy it", outpath,
               path);
    return 2;
  }
  ts_error err = {0};
  FILE *out = outpath ? fopen(outpath, "w") : stdout;
  if (!out) {
    ts_cli_err("dump: %s: %s", outpath, strerror(errno));
    return 2;
  }
  bool stale = false;
  unsigned flags = (snap ? TS_POOL_METADATA_SNAP : 0) | (ts_cli_force_share ? TS_POOL_FORCE_SHARE : 0);
  ts_cli_progress_sample_reads(meta_bytes(path));
  int r = ts_pool_dump(path, flags, out, &stale, &err);
  ts_cli_progress_sample_end(r == 0);
  if (stale)
    stale_warning("dump", path);
  if (outpath && fclose(out) && !r) {
    ts_cli_err("dump: %s: %s", outpath, strerror(errno));
    return 2;
  }
  if (r == -ENOENT || r == -EBUSY || r == -EACCES) {
    meta_error("dump", path, r, &err); /* the file could not be opened */
    return 2;
  }
  if (r) {
    ts_cli_err("dump: %s: %s", path, err.msg);
    return r == -EIO || r == -ENOMEM ? 2 : 1;
  }
  return 0;
}

int ts_cli_restore(int argc, char **argv)
{
  if (want_help(argc, argv, "XML METADATA_FILE [-p]",
                "  Build fresh thin-pool metadata (version 2) on METADATA_FILE, which must\n"
                "  exist (its size is the metadata size), from thin_dump-format XML.\n"
                "  The whole XML is checked before the file is touched, and the new pool is\n"
                "  built beside the pool already there (its superblock written last), so a\n"
                "  restore that fails leaves the old pool.\n"))
    return 0;
  if (argc != 3 || argv[1][0] == '-' || argv[2][0] == '-') {
    ts_cli_err("restore: usage: thinstack restore XML METADATA_FILE");
    return 2;
  }
  if (same_file(argv[1], argv[2])) {
    ts_cli_err("restore: the XML %s and the metadata file %s are one file; restoring would overwrite its own input",
               argv[1], argv[2]);
    return 2;
  }
  FILE *in = fopen(argv[1], "r");
  if (!in) {
    ts_cli_err("restore: %s: %s", argv[1], strerror(errno));
    return 2;
  }
  ts_error err = {0};
  struct stat st;
  /* Reading the XML is most of a restore's time. */
  ts_cli_progress_sample_reads(fstat(fileno(in), &st) == 0 ? (uint64_t)st.st_size : 0);
  int r = ts_pool_restore(in, argv[2], &err);
  ts_cli_progress_sample_end(r == 0);
  fclose(in);
  if (r) {
    ts_cli_err("restore: %s: %s%s", argv[1], err.msg, r == -EBUSY ? " (EBUSY)" : "");
    return r == -EINVAL ? 1 : 2;
  }
  return 0;
}
