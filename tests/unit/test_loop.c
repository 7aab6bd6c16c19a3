/* The event loop (worker/loop.c) against a real HTTP server (libmicrohttpd,
 * a thread per connection): many transfers at once (over several of the
 * loop's multi handles) each finish exactly once, libcurl's timeouts fire with no socket activity, a removed transfer
 * is never reported, and a wake-up pipe ends the wait. */
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <errno.h>
#include <microhttpd.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "loop.h"
#include "test_httpd.h"

static struct MHD_Daemon *httpd;
static char base[64];

/* GET /delay/<ms>: answers "ok <ms>" after that many milliseconds. */
static enum MHD_Result handler(void *cls, struct MHD_Connection *c,
                               const char *url, const char *method,
                               const char *version, const char *upload,
                               size_t *upload_size, void **state) {
        char body[64];
        struct MHD_Response *r;
        enum MHD_Result ret;
        int ms = 0;
        (void)cls, (void)method, (void)version, (void)upload, (void)upload_size;
        if (!*state) { /* the first call only sees the headers */
                *state = (void *)1;
                return MHD_YES;
        }
        if (sscanf(url, "/delay/%d", &ms) == 1 && ms > 0)
                usleep((useconds_t)ms * 1000);
        snprintf(body, sizeof(body), "ok %d", ms);
        r = MHD_create_response_from_buffer(strlen(body), body,
                                            MHD_RESPMEM_MUST_COPY);
        ret = MHD_queue_response(c, MHD_HTTP_OK, r);
        MHD_destroy_response(r);
        return ret;
}

static void setup(void) {
        kb_log_init(KB_LOG_OFF, KB_LOG_FMT_JSON, NULL);
        httpd = test_httpd_start(handler, base, sizeof(base));
}

static void teardown(void) { MHD_stop_daemon(httpd); }

TestSuite(loop, .init = setup, .fini = teardown, .timeout = 60);

typedef struct {
        kb_xfer_t x;  /* first: the loop hands back this pointer */
        CURL *easy;
        int done;     /* times xf_done was called */
        CURLcode cc;
        char body[64];
        size_t len;
} xfer_t;

static void done_cb(kb_xfer_t *xf, CURLcode cc) {
        xfer_t *t = (xfer_t *)xf;
        t->done++;
        t->cc = cc;
}

static size_t write_cb(char *p, size_t sz, size_t n, void *arg) {
        xfer_t *t = arg;
        size_t k = sz * n;
        if (t->len + k < sizeof(t->body)) {
                memcpy(t->body + t->len, p, k);
                t->len += k;
                t->body[t->len] = '\0';
        }
        return k;
}

static void start(kb_loop_t *lp, xfer_t *t, int delay_ms, long timeout_ms) {
        char url[128];
        memset(t, 0, sizeof(*t));
        t->x.xf_done = done_cb;
        t->easy = curl_easy_init();
        cr_assert(t->easy);
        snprintf(url, sizeof(url), "%s/delay/%d", base, delay_ms);
        curl_easy_setopt(t->easy, CURLOPT_URL, url);
        curl_easy_setopt(t->easy, CURLOPT_PRIVATE, &t->x);
        curl_easy_setopt(t->easy, CURLOPT_WRITEFUNCTION, write_cb);
        curl_easy_setopt(t->easy, CURLOPT_WRITEDATA, t);
        curl_easy_setopt(t->easy, CURLOPT_TIMEOUT_MS, timeout_ms);
        cr_assert_eq(kb_loop_add(lp, t->easy), 0);
}

/* Drives until no transfer is left or `turns` turns passed. */
static void drive_all(kb_loop_t *lp, int turns) {
        while (kb_loop_transfers(lp) > 0 && turns-- > 0)
                cr_assert_eq(kb_loop_drive(lp, 1000), 0);
}

Test(loop, many_transfers_each_finish_once) {
        enum { N = 400 };
        static xfer_t t[N];
        char err[256], want[32];
        kb_loop_t *lp = kb_loop_new(err, sizeof(err));
        int i;
        cr_assert(lp, "%s", err);
        for (i = 0; i < N; i++)
                start(lp, &t[i], i % 7 * 20, 20000);
        cr_assert_eq(kb_loop_transfers(lp), N);
        drive_all(lp, 100000);
        cr_expect_eq(kb_loop_transfers(lp), 0);
        for (i = 0; i < N; i++) {
                snprintf(want, sizeof(want), "ok %d", i % 7 * 20);
                cr_expect_eq(t[i].done, 1, "transfer %d: xf_done %d times", i,
                             t[i].done);
                cr_expect_eq(t[i].cc, CURLE_OK, "transfer %d: %s", i,
                             curl_easy_strerror(t[i].cc));
                cr_expect_str_eq(t[i].body, want, "transfer %d", i);
                curl_easy_cleanup(t[i].easy);
        }
        /* the loop is reusable: a second round on the kept connections */
        for (i = 0; i < 50; i++)
                start(lp, &t[i], 0, 20000);
        drive_all(lp, 100000);
        for (i = 0; i < 50; i++) {
                cr_expect_eq(t[i].done, 1);
                cr_expect_eq(t[i].cc, CURLE_OK);
                curl_easy_cleanup(t[i].easy);
        }
        kb_loop_destroy(lp);
}

/* A transfer whose server says nothing: only libcurl's timer can end it. */
Test(loop, timeout_fires_without_socket_activity) {
        char err[256];
        kb_loop_t *lp = kb_loop_new(err, sizeof(err));
        xfer_t slow, quick;
        cr_assert(lp, "%s", err);
        start(lp, &slow, 3000, 300);
        start(lp, &quick, 0, 20000);
        drive_all(lp, 1000);
        cr_expect_eq(slow.done, 1);
        cr_expect_eq(slow.cc, CURLE_OPERATION_TIMEDOUT, "%s",
                     curl_easy_strerror(slow.cc));
        cr_expect_eq(quick.done, 1);
        cr_expect_eq(quick.cc, CURLE_OK);
        curl_easy_cleanup(slow.easy);
        curl_easy_cleanup(quick.easy);
        kb_loop_destroy(lp);
}

Test(loop, removed_transfer_is_not_reported) {
        char err[256];
        kb_loop_t *lp = kb_loop_new(err, sizeof(err));
        xfer_t gone, kept, other;
        int i;
        cr_assert(lp, "%s", err);
        start(lp, &gone, 500, 20000);
        start(lp, &kept, 200, 20000);
        for (i = 0; i < 3; i++)
                cr_assert_eq(kb_loop_drive(lp, 10), 0);
        kb_loop_remove(lp, gone.easy);
        cr_expect_eq(kb_loop_transfers(lp), 1);
        drive_all(lp, 1000);
        cr_expect_eq(kept.done, 1);
        cr_expect_eq(kept.cc, CURLE_OK);
        /* more turns: nothing comes for the removed one */
        for (i = 0; i < 5; i++)
                cr_assert_eq(kb_loop_drive(lp, 100), 0);
        cr_expect_eq(gone.done, 0);
        /* removing again, or a finished one, changes nothing */
        start(lp, &other, 0, 20000);
        kb_loop_remove(lp, gone.easy);
        kb_loop_remove(lp, kept.easy);
        cr_expect_eq(kb_loop_transfers(lp), 1);
        drive_all(lp, 1000);
        cr_expect_eq(other.done, 1);
        cr_expect_eq(kb_loop_transfers(lp), 0);
        curl_easy_cleanup(other.easy);
        curl_easy_cleanup(gone.easy);
        curl_easy_cleanup(kept.easy);
        kb_loop_destroy(lp);
}

static void *wake_later(void *arg) {
        usleep(100 * 1000);
        cr_assert_eq(write(*(int *)arg, "w", 1), 1);
        return NULL;
}

/* A write to a wake-up pipe ends a long wait; the pipe is drained (the next
 * wait is not ended by the same byte). */
Test(loop, wake_pipe_ends_the_wait) {
        char err[256];
        kb_loop_t *lp = kb_loop_new(err, sizeof(err));
        pthread_t th;
        int64_t t0;
        int wfd;
        cr_assert(lp, "%s", err);
        wfd = kb_loop_wake_pipe(lp);
        cr_assert_geq(wfd, 0);
        cr_assert_eq(pthread_create(&th, NULL, wake_later, &wfd), 0);
        t0 = kb_now_ms();
        cr_assert_eq(kb_loop_drive(lp, 20000), 0);
        cr_expect_lt(kb_now_ms() - t0, 10000, "the wake-up did not end the wait");
        pthread_join(th, NULL);
        t0 = kb_now_ms();
        cr_assert_eq(kb_loop_drive(lp, 300), 0);
        cr_expect_geq(kb_now_ms() - t0, 250, "the pipe was not drained");
        kb_loop_destroy(lp);
}

/* When the loop's table of pipes is full, kb_loop_wake_pipe fails with
 * errno set, so that a caller's strerror(errno) names the cause (it used to
 * return -1 with whatever errno held before). */
Test(loop, wake_pipe_failure_sets_errno) {
        char err[256];
        kb_loop_t *lp = kb_loop_new(err, sizeof(err));
        int i, wfd = 0;
        cr_assert(lp, "%s", err);
        for (i = 0; i < 64 && wfd >= 0; i++) {
                errno = 0;
                wfd = kb_loop_wake_pipe(lp);
        }
        cr_assert_lt(wfd, 0, "the table of pipes never filled up");
        cr_expect_eq(errno, EMFILE, "errno %d (%s)", errno, strerror(errno));
        kb_loop_destroy(lp);
}
