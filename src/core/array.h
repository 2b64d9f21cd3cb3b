/* Growing arrays: one doubling rule for the library's hand-kept vectors. */
#ifndef TS_CORE_ARRAY_H
#define TS_CORE_ARRAY_H

#include <stddef.h>

/* Room for element `n` of array `v` (capacity `*cap` elements of `elem`
 * bytes): returns `v` when it fits, else the array moved to twice the
 * capacity (from 8), updating `*cap`; NULL when out of memory (`v` then
 * unchanged). `inl` is the array's inline storage, or NULL: it is copied
 * out, never freed. Not thread-safe: the caller owns the array. */
void *ts__array_grow(void *v, size_t *cap, size_t n, size_t elem, const void *inl);

#endif
