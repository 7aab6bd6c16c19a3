/* Classification of model call outcomes (SPEC §4) and Retry-After. */
#include <criterion/criterion.h>

#include "http.h"

static const struct {
        CURLcode cc;
        long status;
        int too_large, json;
        kb_outcome_t want;
        const char *code;
        int retryable;
} cases[] = {
    {CURLE_OK, 200, 0, 1, KB_OUT_OK, "", 0},
    {CURLE_OK, 201, 0, 1, KB_OUT_OK, "", 0},
    {CURLE_OK, 200, 0, 0, KB_OUT_INVALID_RESPONSE, "invalid_response", 0},
    {CURLE_OK, 429, 0, 1, KB_OUT_RATE_LIMITED, "rate_limited", 1},
    {CURLE_OK, 500, 0, 1, KB_OUT_SERVER_ERROR, "server_error", 1},
    {CURLE_OK, 503, 0, 0, KB_OUT_SERVER_ERROR, "server_error", 1},
    {CURLE_OK, 599, 0, 0, KB_OUT_SERVER_ERROR, "server_error", 1},
    {CURLE_OK, 400, 0, 1, KB_OUT_CLIENT_ERROR, "client_error", 0},
    {CURLE_OK, 401, 0, 1, KB_OUT_CLIENT_ERROR, "client_error", 0},
    {CURLE_OK, 404, 0, 1, KB_OUT_CLIENT_ERROR, "client_error", 0},
    {CURLE_OK, 408, 0, 1, KB_OUT_TIMEOUT, "timeout", 1},
    {CURLE_OK, 302, 0, 0, KB_OUT_CLIENT_ERROR, "client_error", 0},
    {CURLE_OPERATION_TIMEDOUT, 0, 0, 0, KB_OUT_TIMEOUT, "timeout", 1},
    {CURLE_COULDNT_CONNECT, 0, 0, 0, KB_OUT_CONNECTION_ERROR,
     "connection_error", 1},
    {CURLE_COULDNT_RESOLVE_HOST, 0, 0, 0, KB_OUT_CONNECTION_ERROR,
     "connection_error", 1},
    {CURLE_RECV_ERROR, 0, 0, 0, KB_OUT_CONNECTION_ERROR, "connection_error", 1},
    {CURLE_GOT_NOTHING, 0, 0, 0, KB_OUT_CONNECTION_ERROR, "connection_error",
     1},
    {CURLE_SSL_CONNECT_ERROR, 0, 0, 0, KB_OUT_CONNECTION_ERROR,
     "connection_error", 1},
    {CURLE_PARTIAL_FILE, 200, 0, 0, KB_OUT_CONNECTION_ERROR,
     "connection_error", 1},
    {CURLE_WRITE_ERROR, 200, 1, 0, KB_OUT_RESPONSE_TOO_LARGE,
     "response_too_large", 0},
    {CURLE_FILESIZE_EXCEEDED, 200, 0, 0, KB_OUT_RESPONSE_TOO_LARGE,
     "response_too_large", 0},
    {CURLE_OK, 200, 1, 1, KB_OUT_RESPONSE_TOO_LARGE, "response_too_large", 0},
};

Test(http, classify_table) {
        size_t i;
        for (i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
                kb_outcome_t o = kb_http_classify(cases[i].cc, cases[i].status,
                                                  cases[i].too_large,
                                                  cases[i].json);
                cr_expect_eq(o, cases[i].want, "case %zu: got %d want %d", i,
                             o, cases[i].want);
                cr_expect_str_eq(kb_outcome_code(o), cases[i].code,
                                 "case %zu", i);
                cr_expect_eq(kb_outcome_retryable(o), cases[i].retryable,
                             "case %zu", i);
        }
}

Test(http, retry_after) {
        time_t now = 1700000000; /* Tue, 14 Nov 2023 22:13:20 GMT */
        cr_expect_eq(kb_http_retry_after_ms("2", now), 2000);
        cr_expect_eq(kb_http_retry_after_ms(" 0 ", now), 0);
        cr_expect_eq(kb_http_retry_after_ms("120\r\n", now), 120000);
        cr_expect_eq(kb_http_retry_after_ms(NULL, now), -1);
        cr_expect_eq(kb_http_retry_after_ms("", now), -1);
        cr_expect_eq(kb_http_retry_after_ms("-5", now), -1);
        cr_expect_eq(kb_http_retry_after_ms("1.5", now), -1);
        cr_expect_eq(kb_http_retry_after_ms("soon", now), -1);
        cr_expect_eq(kb_http_retry_after_ms("99999999999999999999", now),
                     24LL * 3600 * 1000);
        cr_expect_eq(
            kb_http_retry_after_ms("Tue, 14 Nov 2023 22:13:25 GMT", now), 5000);
        cr_expect_eq(
            kb_http_retry_after_ms("Tue, 14 Nov 2023 22:13:00 GMT", now), 0);
        /* a date in the year 400000000: capped, not an overflow (found by
         * tests/fuzz/fuzz_retry_after; UBSan in make test-san) */
        cr_expect_eq(
            kb_http_retry_after_ms("Sun, 06 Nov 400000000 08:49:37 GMT", now),
            24LL * 3600 * 1000);
}
