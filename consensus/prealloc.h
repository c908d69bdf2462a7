#ifndef CTXD_PREALLOC_H
#define CTXD_PREALLOC_H

#include <stdint.h>

/* consensus/prealloc.c: the executable's posix_fallocate writes a new log
 * segment with zeros while the disk takes them at least this fast (bytes
 * per second), then leaves the rest to fallocate(2). */
#define PREALLOC_MIN_RATE (32u * 1024 * 1024)

/* Change that rate (tests): 0 writes zeros however slowly they go;
 * UINT64_MAX leaves the range to fallocate(2), all but at most one chunk.
 * Not synchronised: set it before any thread calls posix_fallocate. */
void prealloc_min_rate_set(uint64_t bytes_per_s);

#endif
