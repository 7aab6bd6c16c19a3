/* http: see http.h. */
#include "http.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

static const char *codes[KB_OUT__CNT] = {
    [KB_OUT_OK] = "",
    [KB_OUT_RATE_LIMITED] = "rate_limited",
    [KB_OUT_TIMEOUT] = "timeout",
    [KB_OUT_CONNECTION_ERROR] = "connection_error",
    [KB_OUT_SERVER_ERROR] = "server_error",
    [KB_OUT_CLIENT_ERROR] = "client_error",
    [KB_OUT_INVALID_RESPONSE] = "invalid_response",
    [KB_OUT_RESPONSE_TOO_LARGE] = "response_too_large",
};

const char *kb_outcome_code(kb_outcome_t out) {
        return (unsigned)out < KB_OUT__CNT ? codes[out] : "unknown";
}

int kb_outcome_retryable(kb_outcome_t out) {
        return out == KB_OUT_RATE_LIMITED || out == KB_OUT_TIMEOUT ||
               out == KB_OUT_CONNECTION_ERROR || out == KB_OUT_SERVER_ERROR;
}

kb_outcome_t kb_http_classify(CURLcode cc, long http_status, int too_large,
                              int body_is_json) {
        if (too_large)
                return KB_OUT_RESPONSE_TOO_LARGE;
        switch (cc) {
        case CURLE_OK:
                break;
        case CURLE_OPERATION_TIMEDOUT:
                return KB_OUT_TIMEOUT;
        case CURLE_FILESIZE_EXCEEDED:
                return KB_OUT_RESPONSE_TOO_LARGE;
        case CURLE_WRITE_ERROR:
                /* Only our write callback refuses data, and only for size. */
                return KB_OUT_RESPONSE_TOO_LARGE;
        default:
                /* DNS, connect, TLS, reset, empty reply, partial body,
                 * HTTP/2 stream errors: the transport failed. */
                return KB_OUT_CONNECTION_ERROR;
        }
        if (http_status == 429)
                return KB_OUT_RATE_LIMITED;
        if (http_status == 408)
                return KB_OUT_TIMEOUT;
        if (http_status >= 500 && http_status <= 599)
                return KB_OUT_SERVER_ERROR;
        if (http_status >= 200 && http_status <= 299)
                return body_is_json ? KB_OUT_OK : KB_OUT_INVALID_RESPONSE;
        return KB_OUT_CLIENT_ERROR;
}

int64_t kb_http_retry_after_ms(const char *value, time_t now) {
        const int64_t cap = 24LL * 3600 * 1000;
        const char *p;
        if (!value)
                return -1;
        while (*value == ' ' || *value == '\t')
                value++;
        if (!*value)
                return -1;
        for (p = value; isdigit((unsigned char)*p); p++)
                ;
        if (p > value) {
                const char *q = p;
                while (*q == ' ' || *q == '\t' || *q == '\r' || *q == '\n')
                        q++;
                if (*q)
                        return -1;
                if (p - value > 6)
                        return cap; /* more than 11 days: capped anyway */
                int64_t s = strtoll(value, NULL, 10);
                return s * 1000 > cap ? cap : s * 1000;
        }
        {
                time_t t = curl_getdate(value, NULL);
                if (t == (time_t)-1)
                        return -1;
                if (t <= now)
                        return 0;
                /* In seconds first: a date centuries ahead (curl_getdate
                 * takes any year) would overflow the product. */
                if ((int64_t)t - (int64_t)now > cap / 1000)
                        return cap;
                return ((int64_t)t - (int64_t)now) * 1000;
        }
}
