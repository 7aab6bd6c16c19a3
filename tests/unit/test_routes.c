/* Routes: matching, operation paths, and the limits (adaptive concurrency,
 * Retry-After, requests and tokens per minute). */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf.h"
#include "http.h"
#include "routes.h"

static kb_conf_t *conf;
static kb_routes_t *routes;
static char path[] = "/tmp/kb_test_routes_XXXXXX";

static void load(const char *text) {
        char err[512];
        int fd = mkstemp(path);
        cr_assert(fd >= 0);
        cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
        close(fd);
        conf = kb_conf_load(path, NULL, err, sizeof(err));
        cr_assert(conf, "%s", err);
        routes = kb_routes_new(conf, err, sizeof(err));
        cr_assert(routes, "%s", err);
}

static void teardown(void) {
        kb_routes_destroy(routes);
        kb_conf_destroy(conf);
        unlink(path);
        strcpy(path, "/tmp/kb_test_routes_XXXXXX");
}

TestSuite(routes, .fini = teardown);

Test(routes, first_match_wins_and_paths) {
        const char *op;
        load("routes = ( { model = \"gpt-4*\"; base_url = \"http://a/\"; "
             "operations = { rerank = \"/v1/rerank\"; }; },"
             "{ model = \"gpt-*\"; base_url = \"http://b\"; "
             "default_operation = \"embeddings\"; },"
             "{ model = \"*\"; base_url = \"http://c\"; } );");
        kb_route_t *a = kb_routes_match(routes, "gpt-4o");
        kb_route_t *b = kb_routes_match(routes, "gpt-3.5");
        kb_route_t *c = kb_routes_match(routes, "claude");
        cr_assert(a && b && c);
        cr_expect_str_eq(a->rt_base_url, "http://a");
        cr_expect_str_eq(b->rt_base_url, "http://b");
        cr_expect_str_eq(c->rt_base_url, "http://c");
        cr_expect_str_eq(kb_route_path(a, NULL, &op), "/v1/chat/completions");
        cr_expect_str_eq(op, "chat.completions");
        cr_expect_str_eq(kb_route_path(a, "rerank", &op), "/v1/rerank");
        cr_expect_str_eq(kb_route_path(b, NULL, &op), "/v1/embeddings");
        cr_expect_null(kb_route_path(c, "rerank", &op));
        cr_expect_null(kb_routes_match(routes, NULL));
}

Test(routes, adaptive_concurrency) {
        load("routes = ( { model = \"*\"; base_url = \"http://a\"; "
             "max_inflight = 64; } );");
        kb_route_t *rt = kb_routes_get(routes, 0);
        int64_t t = 100000;
        int i;
        cr_assert_eq(rt->rt_limit, 64);
        kb_route_on_outcome(rt, KB_ROUTE_THROTTLED, -1, t - 50, t);
        cr_expect_eq(rt->rt_limit, 32);
        /* 429s of calls sent before that halving do not halve again, however
         * late they come back... */
        for (i = 0; i < 20; i++)
                kb_route_on_outcome(rt, KB_ROUTE_THROTTLED, -1, t - 1 - i,
                                    t + 10 + i * 100);
        cr_expect_eq(rt->rt_limit, 32);
        /* ...a 429 of a call sent after it does, however soon */
        kb_route_on_outcome(rt, KB_ROUTE_THROTTLED, -1, t, t + 5);
        cr_expect_eq(rt->rt_limit, 16);
        /* grows by one per `limit` successes */
        for (i = 0; i < 15; i++)
                kb_route_on_outcome(rt, KB_ROUTE_OK, -1, t + 1900, t + 2000);
        cr_expect_eq(rt->rt_limit, 16);
        kb_route_on_outcome(rt, KB_ROUTE_OK, -1, t + 1900, t + 2000);
        cr_expect_eq(rt->rt_limit, 17);
        /* ... never above max_inflight */
        for (i = 0; i < 10000; i++)
                kb_route_on_outcome(rt, KB_ROUTE_OK, -1, t + 2900, t + 3000);
        cr_expect_eq(rt->rt_limit, 64);
        /* a timeout storm halves; a lone timeout does not */
        kb_route_on_outcome(rt, KB_ROUTE_TIMEOUT, -1, t + 4000, t + 5000);
        kb_route_on_outcome(rt, KB_ROUTE_TIMEOUT, -1, t + 4100, t + 5100);
        cr_expect_eq(rt->rt_limit, 64);
        kb_route_on_outcome(rt, KB_ROUTE_TIMEOUT, -1, t + 4200, t + 5200);
        cr_expect_eq(rt->rt_limit, 32);
        /* never below one */
        for (i = 0; i < 20; i++)
                kb_route_on_outcome(rt, KB_ROUTE_THROTTLED, -1,
                                    t + 10000 + i * 1000,
                                    t + 10000 + i * 1000);
        cr_expect_eq(rt->rt_limit, 1);
}

Test(routes, retry_after_blocks_the_route) {
        int64_t w;
        load("routes = ( { model = \"*\"; base_url = \"http://a\"; } );");
        kb_route_t *rt = kb_routes_get(routes, 0);
        cr_expect(kb_route_admit(rt, 10, 1000, &w));
        kb_route_on_outcome(rt, KB_ROUTE_THROTTLED, 2000, 990, 1000);
        cr_expect(!kb_route_admit(rt, 10, 1500, &w));
        cr_expect_eq(w, 1500);
        cr_expect(kb_route_admit(rt, 10, 3000, &w));
}

Test(routes, requests_per_minute_bucket) {
        int64_t w, t = 50000;
        int admitted = 0, i;
        load("routes = ( { model = \"*\"; base_url = \"http://a\"; "
             "requests_per_minute = 600; } );");
        kb_route_t *rt = kb_routes_get(routes, 0);
        /* Over 30 simulated seconds, asking every ms: 10/s plus the
         * initial second's burst. */
        for (i = 0; i < 30000; i++)
                admitted += kb_route_admit(rt, 1, t + i, &w);
        cr_expect(admitted >= 300 && admitted <= 311, "%d", admitted);
}

Test(routes, tokens_per_minute_estimate_and_correction) {
        int64_t w, t = 50000;
        load("routes = ( { model = \"*\"; base_url = \"http://a\"; "
             "tokens_per_minute = 6000; } );");
        kb_route_t *rt = kb_routes_get(routes, 0);
        /* bucket: 100 tokens (one second) */
        cr_expect(kb_route_admit(rt, 60, t, &w));
        cr_expect(!kb_route_admit(rt, 60, t, &w));
        cr_expect(w > 0 && w <= 201, "%lld", (long long)w);
        /* the call used fewer tokens than estimated: credit back */
        kb_route_correct_tokens(rt, 60, 10);
        cr_expect(kb_route_admit(rt, 60, t, &w));
        /* a request larger than the bucket passes when it is full */
        cr_expect(kb_route_admit(rt, 5000, t + 60000, &w));
        cr_expect(!kb_route_admit(rt, 1, t + 60000, &w));
        cr_expect_eq(kb_route_estimate_tokens("12345678", 8, 100), 102);
}

/* Issue 15: one item's max_tokens blocked a route for minutes: the whole
 * estimate (1,000,000 tokens on a 60,000 tpm route) drove the bucket a
 * million below empty, and a call that failed (a 400) never gave it back.
 * Now one item is charged at most a full bucket, and a failed call gives
 * its charge back: the next item passes at once. */
Test(routes, one_item_cannot_hold_the_tokens_bucket) {
        int64_t wait = 0, est, now = 1000000;
        load("routes = ( { model = \"*\"; base_url = \"http://x\"; "
             "tokens_per_minute = 60000; } );");
        kb_route_t *rt = kb_routes_match(routes, "m");
        est = kb_route_cap_estimate(rt, kb_route_estimate_tokens("{}", 2,
                                                                 1000000));
        cr_expect_eq(est, 1000, "charged %lld", (long long)est);
        /* small estimates are not changed */
        cr_expect_eq(kb_route_cap_estimate(rt, 20), 20);
        cr_assert_eq(kb_route_admit(rt, est, now, &wait), 1);
        /* the call fails (HTTP 400): the charge is given back */
        kb_route_correct_tokens(rt, est, 0);
        cr_expect_eq(kb_route_admit(rt, 50, now, &wait), 1,
                     "waited %lld ms", (long long)wait);
        /* a success with real usage is still charged what it used */
        kb_route_correct_tokens(rt, 50, 5000);
        cr_expect_eq(kb_route_admit(rt, 50, now, &wait), 0);
        cr_expect_gt(wait, 4000);
        cr_expect_lt(wait, 6000);
}

/* ---- names, fallback, circuit breaker (SPEC §12) ---------------------- */

#define FALLBACK_ROUTES                                                        \
        "routes = ( { model = \"m*\"; name = \"primary\"; "                    \
        "base_url = \"http://a\"; fallback = \"backup\"; "                     \
        "breaker_failures = 3; breaker_open_ms = 1000; "                       \
        "fallback_after_ms = 5000; timeout_ms = 2000; },"                      \
        "{ model = \"m*\"; name = \"backup\"; base_url = \"http://b\"; },"     \
        "{ model = \"*\"; base_url = \"http://c\"; } );"

Test(routes, names_default_to_the_glob_and_fallback_resolves) {
        load(FALLBACK_ROUTES);
        kb_route_t *p = kb_routes_find(routes, "primary");
        kb_route_t *b = kb_routes_find(routes, "backup");
        kb_route_t *c = kb_routes_find(routes, "*");
        cr_assert(p && b && c);
        cr_expect_eq(kb_routes_match(routes, "m1"), p);
        cr_expect_eq(p->rt_fallback, b);
        cr_expect_null(b->rt_fallback);
        cr_expect_null(kb_routes_find(routes, "nope"));
        cr_expect_eq(b->rt_conf->breaker_failures, 5); /* defaults */
        cr_expect_eq(b->rt_conf->breaker_open_ms, 30000);
        cr_expect_eq(b->rt_conf->fallback_after_ms, 10000);
}

Test(routes, breaker_opens_after_failures_in_a_row) {
        load(FALLBACK_ROUTES);
        kb_route_t *p = kb_routes_find(routes, "primary");
        kb_route_t *b = kb_routes_find(routes, "backup");
        int64_t t = 100000;
        cr_expect_eq(kb_route_select(p, t), p);
        kb_route_breaker_record(p, KB_BREAKER_FAILURE, t);
        kb_route_breaker_record(p, KB_BREAKER_FAILURE, t);
        /* A success in between resets the count. */
        kb_route_breaker_record(p, KB_BREAKER_SUCCESS, t);
        kb_route_breaker_record(p, KB_BREAKER_FAILURE, t);
        kb_route_breaker_record(p, KB_BREAKER_FAILURE, t);
        cr_expect_eq(kb_route_breaker_state(p, t), KB_BREAKER_CLOSED);
        cr_expect_eq(kb_route_select(p, t), p);
        /* Neither does a 429. */
        kb_route_breaker_record(p, KB_BREAKER_NEUTRAL, t);
        kb_route_breaker_record(p, KB_BREAKER_FAILURE, t);
        cr_expect_eq(kb_route_breaker_state(p, t), KB_BREAKER_OPEN);
        cr_expect_eq(kb_route_select(p, t), b);
        cr_expect_eq(kb_route_select(p, t + 999), b);
        cr_expect_eq(kb_route_select(b, t), b); /* no fallback: itself */
}

Test(routes, half_open_lets_one_probe_through) {
        load(FALLBACK_ROUTES);
        kb_route_t *p = kb_routes_find(routes, "primary");
        kb_route_t *b = kb_routes_find(routes, "backup");
        int64_t t = 100000;
        int i;
        for (i = 0; i < 3; i++)
                kb_route_breaker_record(p, KB_BREAKER_FAILURE, t);
        cr_expect_eq(kb_route_breaker_state(p, t + 1000),
                     KB_BREAKER_HALF_OPEN);
        /* The first item after the open time probes; the next ones go to
         * the fallback while the probe runs. */
        cr_expect_eq(kb_route_select(p, t + 1000), p);
        kb_route_breaker_call(p, t + 1000);
        cr_expect_eq(kb_route_select(p, t + 1001), b);
        /* The probe fails: open again for breaker_open_ms. */
        kb_route_breaker_record(p, KB_BREAKER_FAILURE, t + 1500);
        cr_expect_eq(kb_route_breaker_state(p, t + 1500), KB_BREAKER_OPEN);
        cr_expect_eq(kb_route_select(p, t + 2499), b);
        cr_expect_eq(kb_route_breaker_state(p, t + 2500),
                     KB_BREAKER_HALF_OPEN);
        kb_route_breaker_call(p, t + 2500);
        /* A probe that never answers is given up after timeout_ms. */
        cr_expect_eq(kb_route_select(p, t + 4500), b);
        cr_expect_eq(kb_route_select(p, t + 4501), p);
        kb_route_breaker_call(p, t + 4501);
        /* The probe succeeds: closed, items stay on the route. */
        kb_route_breaker_record(p, KB_BREAKER_SUCCESS, t + 4600);
        cr_expect_eq(kb_route_breaker_state(p, t + 4600), KB_BREAKER_CLOSED);
        cr_expect_eq(kb_route_select(p, t + 4600), p);
        cr_expect_eq(p->rt_fail_streak, 0);
}

Test(routes, long_retry_after_goes_to_the_fallback) {
        load(FALLBACK_ROUTES);
        kb_route_t *p = kb_routes_find(routes, "primary");
        kb_route_t *b = kb_routes_find(routes, "backup");
        int64_t t = 100000;
        /* Retry-After at most fallback_after_ms: the item waits. */
        kb_route_on_outcome(p, KB_ROUTE_THROTTLED, 5000, t, t);
        cr_expect_eq(kb_route_select(p, t), p);
        /* Longer: it goes to the fallback until the wait left is short. */
        kb_route_on_outcome(p, KB_ROUTE_THROTTLED, 60000, t, t);
        cr_expect_eq(kb_route_select(p, t), b);
        cr_expect_eq(kb_route_select(p, t + 55000), p);
        cr_expect_eq(kb_route_breaker_state(p, t), KB_BREAKER_CLOSED);
}

Test(routes, fallback_chain_ends_and_cycles_are_bounded) {
        load("routes = ( { model = \"a\"; base_url = \"http://a\"; "
             "fallback = \"b\"; breaker_failures = 1; },"
             "{ model = \"b\"; base_url = \"http://b\"; fallback = \"a\"; "
             "breaker_failures = 1; } );");
        kb_route_t *a = kb_routes_find(routes, "a");
        kb_route_t *b = kb_routes_find(routes, "b");
        int64_t t = 100000;
        cr_assert(a && b);
        kb_route_breaker_record(a, KB_BREAKER_FAILURE, t);
        cr_expect_eq(kb_route_select(a, t), b);
        /* Both down: an item stays where it is (no ping-pong). */
        kb_route_breaker_record(b, KB_BREAKER_FAILURE, t);
        cr_expect_eq(kb_route_select(a, t), a);
        cr_expect_eq(kb_route_select(b, t), b);
}

Test(routes, breaker_signals) {
        cr_expect_eq(kb_breaker_signal_of(KB_OUT_CONNECTION_ERROR),
                     KB_BREAKER_FAILURE);
        cr_expect_eq(kb_breaker_signal_of(KB_OUT_TIMEOUT), KB_BREAKER_FAILURE);
        cr_expect_eq(kb_breaker_signal_of(KB_OUT_SERVER_ERROR),
                     KB_BREAKER_FAILURE);
        cr_expect_eq(kb_breaker_signal_of(KB_OUT_RATE_LIMITED),
                     KB_BREAKER_NEUTRAL);
        cr_expect_eq(kb_breaker_signal_of(KB_OUT_CLIENT_ERROR),
                     KB_BREAKER_SUCCESS);
        cr_expect_eq(kb_breaker_signal_of(KB_OUT_OK), KB_BREAKER_SUCCESS);
}
