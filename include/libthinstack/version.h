/* libthinstack: version. Include <libthinstack/thinstack.h>. */
#ifndef LIBTHINSTACK_VERSION_H
#define LIBTHINSTACK_VERSION_H

/* The one place the version is written: CMakeLists.txt reads it from here.
 * docs/abi.md says when each number (and the soname) changes. */
#define TS_VERSION_MAJOR 0
#define TS_VERSION_MINOR 2
#define TS_VERSION_PATCH 0
#define TS_VERSION_STR_(x) #x
#define TS_VERSION_STR(x) TS_VERSION_STR_(x)
#define TS_VERSION_STRING                                                                          \
  TS_VERSION_STR(TS_VERSION_MAJOR) "." TS_VERSION_STR(TS_VERSION_MINOR) "." TS_VERSION_STR(TS_VERSION_PATCH)

/* Public symbols are exported from the shared library; everything else is hidden. */
#if defined(TS_BUILDING_LIBRARY)
#define TS_EXTERN __attribute__((visibility("default")))
#else
#define TS_EXTERN
#endif
#define TS_PRINTF(f, a) __attribute__((format(printf, f, a)))

#ifdef __cplusplus
extern "C" {
#endif
/* The library's version at run time, "MAJOR.MINOR.PATCH". */
TS_EXTERN const char *ts_version(void);
/* One TS_HAVE_<CALL> per call above, for code that builds against
 * several versions of the library (#ifdef TS_HAVE_TS_POOL_CHECK). */
#define TS_HAVE_TS_VERSION 1

#ifdef __cplusplus
}
#endif
#endif
