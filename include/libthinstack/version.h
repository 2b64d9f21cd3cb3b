/* libthinstack: version. Include <libthinstack/thinstack.h>. */
#ifndef LIBTHINSTACK_VERSION_H
#define LIBTHINSTACK_VERSION_H

#define TS_VERSION_MAJOR 0
#define TS_VERSION_MINOR 1
#define TS_VERSION_PATCH 0
#define TS_VERSION_STRING "0.1.0"

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
#ifdef __cplusplus
}
#endif
#endif
