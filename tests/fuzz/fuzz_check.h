/* CHECK(c) for the fuzz targets: a failed check is a crash libFuzzer
 * keeps (its input goes to build/fuzz/artifacts/). */
#ifndef KB_FUZZ_CHECK_H
#define KB_FUZZ_CHECK_H

#include <stdio.h>

#define CHECK(c)                                                               \
        do {                                                                   \
                if (!(c)) {                                                    \
                        fprintf(stderr, "check failed: %s (%s:%d)\n", #c,      \
                                __FILE__, __LINE__);                           \
                        __builtin_trap();                                      \
                }                                                              \
        } while (0)

#endif
