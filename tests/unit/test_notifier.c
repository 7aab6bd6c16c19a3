/* The notifier's pure parts: the webhook signature (vectors computed with
 * Python's hmac module, not with this code), the backoff and the
 * retry-or-dead-letter decision. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"
#include "notifier.h"

static kb_conf_t *conf;

static void setup(void) {
        char err[512];
        conf = kb_conf_load(NULL, NULL, err, sizeof(err));
        cr_assert(conf, "%s", err);
}

static void teardown(void) {
        kb_conf_destroy(conf);
}

TestSuite(notifier, .init = setup, .fini = teardown);

Test(notifier, defaults_are_the_documented_ones) {
        cr_expect_eq(conf->notifier_max_inflight, 64);
        cr_expect_eq(conf->notifier_timeout_ms, 10000);
        cr_expect_eq(conf->notifier_max_attempts, 8);
        cr_expect_eq(conf->notifier_max_age_ms, 86400000);
        cr_expect_eq(conf->notifier_allow_private, 0);
        cr_expect_eq(conf->notifier_backoff_base_ms, 1000);
        cr_expect_eq(conf->notifier_backoff_max_ms, 300000);
        cr_expect_eq(conf->notifier_max_pending, 10000);
        cr_expect_str_eq(conf->notifier_secret_env, "KBATCH_WEBHOOK_SECRET");
}

Test(notifier, signature_vectors) {
        /* python3: hmac.new(secret, f"{t}.".encode() + body,
         *                   hashlib.sha256).hexdigest() */
        static char big_secret[101], big_body[1001];
        static const struct {
                const char *secret;
                int64_t t;
                const char *body;
                const char *want;
        } c[] = {
                {"whsec_test", 1700000000, "{\"event_id\":\"b1:1\"}",
                 "t=1700000000,v1="
                 "742cef5e2d11efb5669889aaedacdc26615ff5d03f2507ed"
                 "38a5bb1367c19963"},
                {"", 0, "",
                 "t=0,v1="
                 "b849d5a581847b281957065739df36df2463d1977ea8d6e1e4e6cf33"
                 "fadc68c3"},
                {big_secret, 1234567890123, big_body,
                 "t=1234567890123,v1="
                 "a9808d3217868427b0724b68a4a47a3a682f24acf97c"
                 "1a67620659227aececeb"},
        };
        size_t i;
        memset(big_secret, 'k', 100);
        memset(big_body, 'x', 1000);
        for (i = 0; i < sizeof(c) / sizeof(*c); i++) {
                char out[KB_NOTIFIER_SIG_MAX];
                int n = kb_notifier_sign(c[i].secret, strlen(c[i].secret),
                                         c[i].t, c[i].body, strlen(c[i].body),
                                         out, sizeof(out));
                cr_expect_eq(n, (int)strlen(c[i].want), "case %zu", i);
                cr_expect_str_eq(out, c[i].want, "case %zu", i);
        }
}

Test(notifier, signature_binds_body_timestamp_and_secret) {
        char a[KB_NOTIFIER_SIG_MAX], b[KB_NOTIFIER_SIG_MAX];
        kb_notifier_sign("s", 1, 100, "{}", 2, a, sizeof(a));
        kb_notifier_sign("s", 1, 100, "{ }", 3, b, sizeof(b));
        cr_expect_str_neq(a, b);
        kb_notifier_sign("s", 1, 101, "{}", 2, b, sizeof(b));
        cr_expect_str_neq(a + 6, b + 6);
        kb_notifier_sign("t", 1, 100, "{}", 2, b, sizeof(b));
        cr_expect_str_neq(a, b);
        /* A body with NUL bytes is signed as bytes, not as a C string. */
        kb_notifier_sign("s", 1, 100, "{}\0x", 4, b, sizeof(b));
        cr_expect_str_neq(a, b);
}

Test(notifier, signature_needs_room) {
        char out[KB_NOTIFIER_SIG_MAX - 1];
        cr_expect_eq(kb_notifier_sign("s", 1, 1, "", 0, out, sizeof(out)), -1);
}

Test(notifier, backoff_equal_jitter_table) {
        static const struct {
                int base, max, n;
                uint32_t rnd;
                int64_t want;
        } c[] = {
                {1000, 300000, 1, 0, 500}, /* [500, 1000] */
                {1000, 300000, 1, 0xffffffffu, 1000},
                {1000, 300000, 2, 0, 1000}, /* [1000, 2000] */
                {1000, 300000, 2, 0xffffffffu, 2000},
                {1000, 300000, 4, 0xffffffffu, 8000},
                {1000, 300000, 10, 0xffffffffu, 300000}, /* capped */
                {1000, 300000, 10, 0, 150000},
                {1000, 300000, 90, 0xffffffffu, 300000}, /* no overflow */
                {100, 300000, 3, 0x80000000u, 300},      /* 200 + half of 201 */
                {0, 300000, 3, 0xffffffffu, 0},
        };
        size_t i;
        for (i = 0; i < sizeof(c) / sizeof(*c); i++)
                cr_expect_eq(kb_notifier_backoff_ms(c[i].base, c[i].max, c[i].n,
                                                    c[i].rnd),
                             c[i].want, "case %zu", i);
}

Test(notifier, retry_or_dead_letter_table) {
        static const struct {
                int attempts;
                int64_t age, retry_after;
                uint32_t rnd;
                int64_t want;
        } c[] = {
                /* max_attempts 8, max_age 1 h, base 1000, max 300000 */
                {1, 0, -1, 0xffffffffu, 1000},
                {3, 0, -1, 0xffffffffu, 4000},
                {7, 0, -1, 0xffffffffu, 64000},
                {8, 0, -1, 0xffffffffu, -1}, /* attempts used up */
                {9, 0, -1, 0, -1},
                {1, 3600000, -1, 0, -1}, /* too old */
                {1, 7200000, -1, 0, -1},
                {1, 3599500, -1, 0xffffffffu, 500}, /* cut to the deadline */
                {1, -5000, -1, 0xffffffffu, 1000},  /* clock skew: age 0 */
                {1, 0, 30000, 0, 30000},            /* Retry-After honoured */
                {1, 0, 900000, 0, 300000},          /* ... up to the max */
                {5, 0, 10, 0xffffffffu, 16000},     /* shorter: backoff */
        };
        size_t i;
        conf->notifier_max_age_ms = 3600000;
        for (i = 0; i < sizeof(c) / sizeof(*c); i++)
                cr_expect_eq(kb_notifier_retry_wait(conf, c[i].attempts,
                                                    c[i].age, c[i].retry_after,
                                                    c[i].rnd),
                             c[i].want, "case %zu", i);
}

Test(notifier, one_attempt_means_no_retry) {
        conf->notifier_max_attempts = 1;
        cr_expect_eq(kb_notifier_retry_wait(conf, 1, 0, -1, 0), -1);
}

Test(notifier, destroy_null_is_a_no_op) {
        kb_notifier_destroy(NULL);
}
