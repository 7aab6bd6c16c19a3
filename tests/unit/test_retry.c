/* The retry policy: in process, then tiers, then exhausted. */
#include <criterion/criterion.h>
#include <stdlib.h>

#include "conf.h"
#include "retry.h"

static kb_conf_t *conf;

static void setup(void) {
        char err[512];
        conf = kb_conf_load(NULL, NULL, err, sizeof(err));
        cr_assert(conf, "%s", err);
        /* defaults: max_attempts 5, inprocess 2, base 500, max 30000,
         * inprocess_max_wait 10000, tiers 5000, 30000, 300000 */
}

static void teardown(void) { kb_conf_destroy(conf); }

TestSuite(retry, .init = setup, .fini = teardown);

Test(retry, defaults_are_the_documented_ones) {
        cr_assert_eq(conf->retry_max_attempts, 5);
        cr_assert_eq(conf->retry_inprocess_attempts, 2);
        cr_assert_eq(conf->retry_delay_cnt, 3);
        cr_assert_eq(conf->retry_delays_ms[0], 5000);
        cr_assert_eq(conf->retry_delays_ms[2], 300000);
}

Test(retry, backoff_full_jitter_bounds) {
        static const struct {
                int base, max, n;
                uint32_t rnd;
                int64_t want;
        } c[] = {
            {500, 30000, 0, 0, 0},
            {500, 30000, 0, 0xffffffffu, 500},
            {500, 30000, 1, 0xffffffffu, 1000},
            {500, 30000, 3, 0xffffffffu, 4000},
            {500, 30000, 10, 0xffffffffu, 30000},
            {500, 30000, 40, 0xffffffffu, 30000}, /* no overflow */
            {500, 30000, 2, 0x80000000u, 1000},   /* half of 2000 */
            {0, 30000, 3, 0xffffffffu, 0},
        };
        size_t i;
        for (i = 0; i < sizeof(c) / sizeof(*c); i++)
                cr_expect_eq(kb_retry_backoff_ms(c[i].base, c[i].max, c[i].n,
                                                 c[i].rnd),
                             c[i].want, "case %zu", i);
}

Test(retry, decisions_table) {
        static const struct {
                int retryable, attempts, inproc, tier;
                int64_t retry_after;
                kb_retry_action_t want;
                int64_t wait;
                int want_tier;
        } c[] = {
            /* not retryable */
            {0, 1, 0, 0, -1, KB_RETRY_FAIL, 0, 0},
            /* first failures: in process, jittered wait <= base */
            {1, 1, 0, 0, -1, KB_RETRY_INPROC, -1, 0},
            {1, 2, 1, 0, -1, KB_RETRY_INPROC, -1, 0},
            /* in-process retries used up: tier 1 */
            {1, 3, 2, 0, -1, KB_RETRY_TIER, 5000, 1},
            /* consumed from tier 1, in-process used up again: tier 2 */
            {1, 4, 2, 1, -1, KB_RETRY_TIER, 30000, 2},
            /* the last tier repeats */
            {1, 4, 2, 3, -1, KB_RETRY_TIER, 300000, 3},
            /* Retry-After short enough: in process, exactly that wait */
            {1, 1, 0, 0, 2000, KB_RETRY_INPROC, 2000, 0},
            /* Retry-After longer than inprocess_max_wait: a tier whose
             * delay covers it */
            {1, 1, 0, 0, 20000, KB_RETRY_TIER, 30000, 2},
            {1, 1, 0, 0, 11000, KB_RETRY_TIER, 30000, 2},
            {1, 1, 0, 0, 999999, KB_RETRY_TIER, 300000, 3},
            /* attempts exhausted */
            {1, 5, 0, 0, -1, KB_RETRY_EXHAUSTED, 0, 0},
            {1, 9, 2, 3, -1, KB_RETRY_EXHAUSTED, 0, 0},
        };
        size_t i;
        for (i = 0; i < sizeof(c) / sizeof(*c); i++) {
                kb_retry_decision_t d = kb_retry_decide(
                    conf, c[i].retryable, c[i].attempts, c[i].inproc,
                    c[i].tier, c[i].retry_after, 0xffffffffu);
                cr_expect_eq(d.rd_action, c[i].want, "case %zu: action %d", i,
                             d.rd_action);
                if (c[i].want == KB_RETRY_TIER) {
                        cr_expect_eq(d.rd_tier, c[i].want_tier, "case %zu", i);
                        cr_expect_eq(d.rd_wait_ms, c[i].wait, "case %zu", i);
                }
                if (c[i].want == KB_RETRY_INPROC && c[i].wait >= 0)
                        cr_expect_eq(d.rd_wait_ms, c[i].wait, "case %zu", i);
                if (c[i].want == KB_RETRY_INPROC && c[i].wait < 0)
                        cr_expect(d.rd_wait_ms >= 0 &&
                                      d.rd_wait_ms <=
                                          (int64_t)500 << c[i].inproc,
                                  "case %zu: %lld", i,
                                  (long long)d.rd_wait_ms);
        }
}

Test(retry, without_tiers_everything_is_in_process) {
        conf->retry_delay_cnt = 0;
        kb_retry_decision_t d = kb_retry_decide(conf, 1, 3, 2, 0, 60000, 1);
        cr_expect_eq(d.rd_action, KB_RETRY_INPROC);
        cr_expect_eq(d.rd_wait_ms, 60000);
        d = kb_retry_decide(conf, 1, 5, 4, 0, -1, 1);
        cr_expect_eq(d.rd_action, KB_RETRY_EXHAUSTED);
}
