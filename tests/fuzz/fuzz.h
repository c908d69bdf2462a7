/* The entry point every fuzz target defines (libFuzzer's), shared with
 * replay.c, which runs a target over files without libFuzzer (gcc builds,
 * ctest replay of the seed corpus and of regression inputs). A target must
 * never crash, leak, hang or trip a sanitizer on any input; it aborts
 * (FUZZ_CHECK) when an invariant it checks does not hold. */
#ifndef CTXD_FUZZ_H
#define CTXD_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* An invariant of the code under test, checked on fuzz input: abort with
 * the failed expression so libFuzzer records the input as a crash. */
#define FUZZ_CHECK(expr)                                                       \
    do {                                                                       \
        if (!(expr)) {                                                         \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__,         \
                    __LINE__, #expr);                                          \
            abort();                                                           \
        }                                                                      \
    } while (0)

#endif
