/* What the fuzz targets share. Each target is one file defining
 * LLVMFuzzerTestOneInput; it is linked either with libFuzzer (the TS_FUZZ
 * build, clang) or with driver.c, which runs it over the regression and seed
 * files in the ordinary test suite. */
#ifndef TS_FUZZ_H
#define TS_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A private temporary folder for this process, made on first use and
 * removed at exit. fuzz_clean() empties it between inputs. */
const char *fuzz_dir(void);
void fuzz_clean(void);
/* fuzz_dir()/name, in a static buffer per call site's own copy. */
char *fuzz_path(const char *name);
/* Write bytes to fuzz_dir()/name (created or truncated), padded with zeroes
 * up to `min` bytes. Aborts on failure: the fuzz set-up itself is broken. */
void fuzz_write_file(const char *name, const void *data, size_t size, size_t min);
/* With TS_FUZZ_VERBOSE set, print why an input was refused (to stderr). */
void fuzz_note(const char *what, const char *why);
/* Route stdout to /dev/null (targets whose code under test prints). */
void fuzz_quiet_stdout(void);

#endif
