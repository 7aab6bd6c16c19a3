/* libFuzzer target: Retry-After parsing (kb_http_retry_after_ms).
 *
 * The value comes from a model API's response header, so any bytes. The
 * first 8 bytes of the input choose "now" (so that HTTP-dates both before
 * and after it are reached); the rest is the header value.
 * Checks: the answer is -1 or within [0, 24 h]; delay-seconds are exact. */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http.h"
#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        const int64_t cap = 24LL * 3600 * 1000;
        uint64_t u = 0;
        time_t now;
        char *v;
        int64_t ms;

        if (size < 8)
                return 0;
        memcpy(&u, data, 8);
        /* 1970..2100, so that dates both sides of it parse */
        now = (time_t)(u % 4102444800ULL);
        data += 8;
        size -= 8;
        if (!(v = malloc(size + 1)))
                return 0;
        memcpy(v, data, size);
        v[size] = '\0';
        ms = kb_http_retry_after_ms(v, now);
        CHECK(ms == -1 || (ms >= 0 && ms <= cap));

        /* A plain number of seconds (no NUL inside, 1-6 digits, optional
         * surrounding blanks) is exact. */
        if (memchr(data, '\0', size) == NULL) {
                const char *p = v;
                const char *d;
                while (*p == ' ' || *p == '\t')
                        p++;
                d = p;
                while (isdigit((unsigned char)*p))
                        p++;
                if (p > d && p - d <= 6) {
                        const char *q = p;
                        while (*q == ' ' || *q == '\t' || *q == '\r' ||
                               *q == '\n')
                                q++;
                        if (!*q) {
                                int64_t s = strtoll(d, NULL, 10) * 1000;
                                CHECK(ms == (s > cap ? cap : s));
                        }
                }
        }
        free(v);
        return 0;
}
