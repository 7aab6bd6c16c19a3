/* http: one outgoing HTTP request (kb_http_req_t: the easy handle, the
 * request headers, a size-capped response body, Retry-After, the transfer
 * on the loop), used by the model calls (items.c), the webhooks
 * (notifier.c) and the schema registry (registry.c); and the
 * classification of a model call's outcome (SPEC §4). The rule lives here
 * and nowhere else. */
#ifndef KB_HTTP_H
#define KB_HTTP_H

#include <curl/curl.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "easypool.h"
#include "loop.h"

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


/* ---- one request ------------------------------------------------------
 *
 * Embedded in its owner's struct (one per job in flight: no allocation of
 * its own on the model call's path), zeroed before first use; one attempt
 * at a time:
 *
 *   kb_http_req_reset(&hr, pool, max, keep);        a handle, state cleared
 *   kb_http_req_header(&hr, "Accept: ...");         request headers
 *   kb_http_req_prepare(&hr, &owner->xfer, url, ...) the common options
 *   curl_easy_setopt(hr.hr_easy, ...);              the caller's own
 *   kb_http_req_start(&hr, loop);                   xfer->xf_done follows
 *   ... hr.hr_resp, hr.hr_too_large, hr.hr_retry_after, hr.hr_errbuf
 *   kb_http_req_release(&hr, pool);                 (not while in the loop)
 */
typedef struct kb_http_req_s {
        CURL *hr_easy;              /* owned; NULL until the first reset */
        struct curl_slist *hr_hdrs; /* owned */
        char *hr_resp;        /* the body received, NUL-terminated; owned;
                               * NULL when nothing came yet */
        size_t hr_resp_len;   /* bytes in hr_resp (at most hr_keep) */
        size_t hr_resp_cap;
        size_t hr_resp_total; /* bytes received, kept or not */
        size_t hr_max;        /* over this many the transfer is stopped */
        size_t hr_keep;       /* the first hr_keep bytes are kept */
        int hr_too_large;     /* stopped for hr_max (CURLE_WRITE_ERROR) */
        int hr_hdr_err;       /* a header could not be added */
        char hr_retry_after[64]; /* the Retry-After value, or "" */
        char hr_errbuf[CURL_ERROR_SIZE];
} kb_http_req_t;

/* Starts an attempt: takes a handle from ep (ep NULL: curl_easy_init) or
 * resets the one held, drops the headers, empties the body (hr_resp "")
 * and the response state. max: the body limit; keep: bytes of it kept
 * (0: all of them). Returns the handle, NULL when libcurl cannot allocate
 * one. */
CURL *kb_http_req_reset(kb_http_req_t *hr, kb_easypool_t *ep, size_t max,
                        size_t keep);
/* Appends a header line (copied). Returns 0, or -1 (and hr_hdr_err: the
 * prepare fails) when out of memory. */
int kb_http_req_header(kb_http_req_t *hr, const char *line);
/* The same, formatted; a line of any length. */
int kb_http_req_headerf(kb_http_req_t *hr, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Sets the options every request has: CURLOPT_PRIVATE xf (borrowed for the
 * transfer), the URL, the headers, the body (body NULL: a GET; borrowed
 * until the transfer ends), the write and header callbacks, the error
 * buffer, the two timeouts, no signals, no redirects, TCP keepalive.
 * Returns -1 when a header failed (or there is none) or there is no
 * handle. */
int kb_http_req_prepare(kb_http_req_t *hr, kb_xfer_t *xf, const char *url,
                        const char *body, size_t body_len, long timeout_ms,
                        long connect_timeout_ms);
/* Server certificate checks: verify the peer and its name (or neither);
 * ca_file NULL or "": the system's CAs. */
void kb_http_req_tls(kb_http_req_t *hr, int verify, const char *ca_file);
/* Adds the transfer to the loop. Returns 0 or -1. */
int kb_http_req_start(kb_http_req_t *hr, kb_loop_t *loop);
/* The response's HTTP status, 0 when none (or no handle). */
long kb_http_req_status(const kb_http_req_t *hr);
/* The Retry-After wait in ms (kb_http_retry_after_ms), -1 when none. */
int64_t kb_http_req_retry_after_ms(const kb_http_req_t *hr, time_t now);
/* Frees the headers and the body and gives the handle back to ep (ep NULL:
 * curl_easy_cleanup); the caller has removed it from the loop. hr can be
 * reset again. */
void kb_http_req_release(kb_http_req_t *hr, kb_easypool_t *ep);

/* The libcurl callbacks, for the tests: the body (ud: the kb_http_req_t)
 * and one header line. */
size_t kb_http_req_write_cb(char *ptr, size_t size, size_t nmemb, void *ud);
size_t kb_http_req_header_cb(char *buf, size_t size, size_t nitems, void *ud);

#endif
