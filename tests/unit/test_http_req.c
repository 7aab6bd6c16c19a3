/* The one HTTP request type (worker/http.c, kb_http_req_t): the body
 * buffer's cap and what it keeps, the Retry-After header in both forms, a
 * reset between attempts, headers of any length; and real transfers on the
 * loop against libmicrohttpd: a body over the cap stops the transfer, a 429
 * with Retry-After is read, a second attempt on the same handle does not see
 * the first one's body. */
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <microhttpd.h>
#include <stdio.h>
#include <string.h>

#include "http.h"
#include "log.h"
#include "loop.h"
#include "test_httpd.h"

/* ---- the callbacks, fed directly ---- */

static size_t feed(kb_http_req_t *hr, const char *s) {
        return kb_http_req_write_cb((char *)s, 1, strlen(s), hr);
}

static size_t hdr(kb_http_req_t *hr, const char *line) {
        return kb_http_req_header_cb((char *)line, 1, strlen(line), hr);
}

Test(http_req, body_up_to_the_cap_then_stopped) {
        kb_http_req_t hr;
        memset(&hr, 0, sizeof(hr));
        cr_assert(kb_http_req_reset(&hr, NULL, 10, 0));
        cr_assert_eq(feed(&hr, "0123"), 4);
        cr_assert_eq(feed(&hr, "456789"), 6); /* exactly the cap: accepted */
        cr_assert_eq(hr.hr_too_large, 0);
        cr_assert_str_eq(hr.hr_resp, "0123456789");
        cr_assert_eq(hr.hr_resp_len, 10);
        cr_assert_eq(feed(&hr, "a"), 0, "one byte over the cap is refused");
        cr_assert_eq(hr.hr_too_large, 1);
        cr_assert_str_eq(hr.hr_resp, "0123456789");
        kb_http_req_release(&hr, NULL);
        cr_assert_null(hr.hr_resp);
        cr_assert_null(hr.hr_easy);
}

Test(http_req, keeps_the_first_bytes_counts_the_rest) {
        kb_http_req_t hr;
        memset(&hr, 0, sizeof(hr));
        cr_assert(kb_http_req_reset(&hr, NULL, 16, 4));
        cr_assert_eq(feed(&hr, "abcdef"), 6);
        cr_assert_eq(feed(&hr, "ghijklmnop"), 10); /* 16: still accepted */
        cr_assert_str_eq(hr.hr_resp, "abcd");
        cr_assert_eq(hr.hr_resp_len, 4);
        cr_assert_eq(hr.hr_resp_total, 16);
        cr_assert_leq(hr.hr_resp_cap, 5, "a buffer of what is kept");
        cr_assert_eq(feed(&hr, "q"), 0);
        cr_assert_eq(hr.hr_too_large, 1);
        kb_http_req_release(&hr, NULL);
}

Test(http_req, retry_after_both_forms) {
        kb_http_req_t hr;
        time_t now = 1700000000; /* Tue, 14 Nov 2023 22:13:20 GMT */
        memset(&hr, 0, sizeof(hr));
        cr_assert(kb_http_req_reset(&hr, NULL, 100, 0));
        cr_assert_eq(kb_http_req_retry_after_ms(&hr, now), -1);
        cr_assert_eq(hdr(&hr, "Content-Type: application/json\r\n"), 32);
        cr_assert_str_eq(hr.hr_retry_after, "");
        /* delay-seconds, any case, spaces around */
        hdr(&hr, "retry-AFTER:   120 \r\n");
        cr_assert_str_eq(hr.hr_retry_after, "120");
        cr_assert_eq(kb_http_req_retry_after_ms(&hr, now), 120000);
        /* an HTTP-date, 30 s ahead */
        hdr(&hr, "Retry-After: Tue, 14 Nov 2023 22:13:50 GMT\r\n");
        cr_assert_str_eq(hr.hr_retry_after, "Tue, 14 Nov 2023 22:13:50 GMT");
        cr_assert_eq(kb_http_req_retry_after_ms(&hr, now), 30000);
        /* an over-long value is cut to the buffer, not past it */
        {
                char line[200];
                snprintf(line, sizeof(line), "Retry-After: %0150d\r\n", 7);
                hdr(&hr, line);
                cr_assert_eq(strlen(hr.hr_retry_after),
                             sizeof(hr.hr_retry_after) - 1);
        }
        /* "Retry-After:" alone: an empty value, none */
        hdr(&hr, "Retry-After:\r\n");
        cr_assert_str_eq(hr.hr_retry_after, "");
        cr_assert_eq(kb_http_req_retry_after_ms(&hr, now), -1);
        kb_http_req_release(&hr, NULL);
}

Test(http_req, reset_clears_the_last_attempt) {
        kb_http_req_t hr;
        CURL *e;
        memset(&hr, 0, sizeof(hr));
        cr_assert((e = kb_http_req_reset(&hr, NULL, 4, 0)));
        cr_assert_eq(kb_http_req_header(&hr, "Accept: a/b"), 0);
        feed(&hr, "body");
        feed(&hr, "more");
        hdr(&hr, "Retry-After: 3\r\n");
        cr_assert_eq(hr.hr_too_large, 1);
        cr_assert_eq(kb_http_req_reset(&hr, NULL, 100, 0), e,
                     "the handle is kept");
        cr_assert_str_eq(hr.hr_resp, "", "the last attempt's body is gone");
        cr_assert_eq(hr.hr_resp_len, 0);
        cr_assert_eq(hr.hr_resp_total, 0);
        cr_assert_eq(hr.hr_too_large, 0);
        cr_assert_str_eq(hr.hr_retry_after, "");
        cr_assert_null(hr.hr_hdrs);
        kb_http_req_release(&hr, NULL);
}

Test(http_req, headers_never_cut_and_prepare_checks_them) {
        kb_http_req_t hr;
        char v[2000];
        memset(&hr, 0, sizeof(hr));
        memset(v, 'x', sizeof(v) - 1);
        v[sizeof(v) - 1] = '\0';
        cr_assert(kb_http_req_reset(&hr, NULL, 100, 0));
        cr_assert_eq(kb_http_req_prepare(&hr, NULL, "http://127.0.0.1:9/",
                                         NULL, 0, 1000, 1000),
                     -1, "no header: refused");
        cr_assert_eq(kb_http_req_headerf(&hr, "X-Long: %s", v), 0);
        cr_assert_eq(kb_http_req_headerf(&hr, "X-Short: %d", 7), 0);
        cr_assert(hr.hr_hdrs && hr.hr_hdrs->next);
        cr_assert_eq(strlen(hr.hr_hdrs->data), strlen("X-Long: ") + 1999);
        cr_assert_str_eq(hr.hr_hdrs->next->data, "X-Short: 7");
        cr_assert_eq(kb_http_req_prepare(&hr, NULL, "http://127.0.0.1:9/",
                                         NULL, 0, 1000, 1000),
                     0);
        hr.hr_hdr_err = 1; /* as after an allocation failure */
        cr_assert_eq(kb_http_req_prepare(&hr, NULL, "http://127.0.0.1:9/",
                                         NULL, 0, 1000, 1000),
                     -1, "a lost header: refused");
        kb_http_req_release(&hr, NULL);
}

/* ---- transfers on the loop ---- */

static struct MHD_Daemon *httpd;
static char base[64];

/* GET /big: 4096 bytes. GET /busy: 429, Retry-After: 7, a JSON body.
 * GET /empty: 503, no body. POST /echo: the request body back. */
static enum MHD_Result handler(void *cls, struct MHD_Connection *c,
                               const char *url, const char *method,
                               const char *version, const char *upload,
                               size_t *upload_size, void **state) {
        static char big[4096];
        static char echo[256];
        static size_t echo_len;
        struct MHD_Response *r;
        enum MHD_Result ret;
        unsigned code = MHD_HTTP_OK;
        (void)cls, (void)method, (void)version;
        if (!*state) { /* the first call only sees the headers */
                *state = (void *)1;
                echo_len = 0;
                return MHD_YES;
        }
        if (*upload_size) {
                size_t k = *upload_size;
                if (k > sizeof(echo) - echo_len)
                        k = sizeof(echo) - echo_len;
                memcpy(echo + echo_len, upload, k);
                echo_len += k;
                *upload_size = 0;
                return MHD_YES;
        }
        if (!strcmp(url, "/big")) {
                memset(big, 'b', sizeof(big));
                r = MHD_create_response_from_buffer(sizeof(big), big,
                                                    MHD_RESPMEM_PERSISTENT);
        } else if (!strcmp(url, "/busy")) {
                r = MHD_create_response_from_buffer(
                    15, "{\"busy\": true}", MHD_RESPMEM_PERSISTENT);
                MHD_add_response_header(r, "Retry-After", "7");
                code = 429;
        } else if (!strcmp(url, "/empty")) {
                r = MHD_create_response_from_buffer(0, "",
                                                    MHD_RESPMEM_PERSISTENT);
                code = 503;
        } else {
                r = MHD_create_response_from_buffer(echo_len, echo,
                                                    MHD_RESPMEM_MUST_COPY);
        }
        ret = MHD_queue_response(c, code, r);
        MHD_destroy_response(r);
        return ret;
}

static void setup(void) {
        kb_log_init(KB_LOG_OFF, KB_LOG_FMT_JSON, NULL);
        httpd = test_httpd_start(handler, base, sizeof(base));
}

static void teardown(void) { MHD_stop_daemon(httpd); }

typedef struct {
        kb_xfer_t x; /* first: the loop hands back this pointer */
        kb_http_req_t hr;
        int done;
        CURLcode cc;
} call_t;

static void done_cb(kb_xfer_t *xf, CURLcode cc) {
        call_t *c = (call_t *)xf;
        c->done++;
        c->cc = cc;
}

/* One attempt at base+path, driven to its end. */
static void call(kb_loop_t *lp, kb_easypool_t *ep, call_t *c, const char *path,
                 const char *body, size_t max) {
        char url[128];
        int turns = 100;
        snprintf(url, sizeof(url), "%s%s", base, path);
        c->x.xf_done = done_cb;
        c->done = 0;
        cr_assert(kb_http_req_reset(&c->hr, ep, max, 0));
        cr_assert_eq(kb_http_req_header(&c->hr, "Expect:"), 0);
        cr_assert_eq(kb_http_req_prepare(&c->hr, &c->x, url, body,
                                         body ? strlen(body) : 0, 10000,
                                         10000),
                     0);
        cr_assert_eq(kb_http_req_start(&c->hr, lp), 0);
        while (!c->done && turns-- > 0)
                cr_assert_eq(kb_loop_drive(lp, 200), 0);
        cr_assert_eq(c->done, 1);
}

TestSuite(http_loop, .init = setup, .fini = teardown, .timeout = 60);

Test(http_loop, attempts_on_one_pooled_handle) {
        char err[256];
        kb_loop_t *lp = kb_loop_new(err, sizeof(err));
        kb_easypool_t *ep = kb_easypool_new(4);
        call_t c;
        CURL *first;
        cr_assert(lp, "%s", err);
        cr_assert(ep);
        memset(&c, 0, sizeof(c));

        /* A POST comes back whole. */
        call(lp, ep, &c, "/echo", "{\"a\":1}", 1024);
        cr_assert_eq(c.cc, CURLE_OK);
        cr_assert_eq(kb_http_req_status(&c.hr), 200);
        cr_assert_str_eq(c.hr.hr_resp, "{\"a\":1}");
        first = c.hr.hr_easy;

        /* A body over the cap stops the transfer: CURLE_WRITE_ERROR, which
         * kb_http_classify calls response_too_large. */
        call(lp, ep, &c, "/big", NULL, 1000);
        cr_assert_eq(c.cc, CURLE_WRITE_ERROR);
        cr_assert_eq(c.hr.hr_too_large, 1);
        cr_assert_leq(c.hr.hr_resp_len, 1000);
        cr_assert_eq(kb_http_classify(c.cc, kb_http_req_status(&c.hr),
                                      c.hr.hr_too_large, 0),
                     KB_OUT_RESPONSE_TOO_LARGE);
        cr_assert_eq(c.hr.hr_easy, first, "one handle for every attempt");

        /* 429 with Retry-After: 7. */
        call(lp, ep, &c, "/busy", NULL, 1000);
        cr_assert_eq(c.cc, CURLE_OK);
        cr_assert_eq(kb_http_req_status(&c.hr), 429);
        cr_assert_str_eq(c.hr.hr_retry_after, "7");
        cr_assert_eq(kb_http_req_retry_after_ms(&c.hr, time(NULL)), 7000);
        cr_assert_str_eq(c.hr.hr_resp, "{\"busy\": true}");

        /* A 503 without a body after it: no Retry-After, and not the 429's
         * body (an error message quotes hr_resp). */
        call(lp, ep, &c, "/empty", NULL, 1000);
        cr_assert_eq(kb_http_req_status(&c.hr), 503);
        cr_assert_str_eq(c.hr.hr_retry_after, "");
        cr_assert(!c.hr.hr_resp || !c.hr.hr_resp[0], "stale body \"%s\"",
                  c.hr.hr_resp);

        kb_http_req_release(&c.hr, ep);
        cr_assert_null(c.hr.hr_easy);
        cr_assert_eq(kb_easypool_get(ep), first, "the handle went back");
        curl_easy_cleanup(first);
        kb_easypool_destroy(ep);
        kb_loop_destroy(lp);
}
