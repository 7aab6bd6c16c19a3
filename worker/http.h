/* http: classification of a model call's outcome (SPEC §4) and the small
 * pure helpers around it. The rule lives here and nowhere else. */
#ifndef KB_HTTP_H
#define KB_HTTP_H

#include <curl/curl.h>
#include <stdint.h>
#include <time.h>

typedef enum {
        KB_OUT_OK = 0,             /* 2xx with a JSON body */
        KB_OUT_RATE_LIMITED,       /* 429 */
        KB_OUT_TIMEOUT,            /* connect or request timeout */
        KB_OUT_CONNECTION_ERROR,   /* DNS, connect, TLS, reset */
        KB_OUT_SERVER_ERROR,       /* 5xx */
        KB_OUT_CLIENT_ERROR,       /* other 4xx (and 1xx/3xx) */
        KB_OUT_INVALID_RESPONSE,   /* 2xx body that is not JSON */
        KB_OUT_RESPONSE_TOO_LARGE, /* body over http.max_response_bytes */
        KB_OUT__CNT
} kb_outcome_t;

/* error.code of SPEC §4 for an outcome ("" for KB_OUT_OK). */
const char *kb_outcome_code(kb_outcome_t out);
/* 1 when the outcome is retried (rate_limited, timeout, connection_error,
 * server_error). */
int kb_outcome_retryable(kb_outcome_t out);

/* Classifies a finished transfer. cc: libcurl's result; http_status: 0 when
 * no response; too_large: the body went over the limit (our write callback
 * stopped it); body_is_json: the 2xx body parsed as JSON. */
kb_outcome_t kb_http_classify(CURLcode cc, long http_status, int too_large,
                              int body_is_json);

/* Parses a Retry-After value: delay-seconds or an HTTP-date. Returns the wait
 * in ms (>= 0), or -1 when absent/unparseable. now: current epoch seconds.
 * Capped at 24 h. */
int64_t kb_http_retry_after_ms(const char *value, time_t now);

#endif
