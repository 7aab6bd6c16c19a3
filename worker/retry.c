/* retry: see retry.h. */
#include "retry.h"

int64_t kb_retry_backoff_ms(int base_ms, int max_ms, int n, uint32_t rnd) {
        int64_t cap = base_ms;
        while (n-- > 0 && cap < max_ms)
                cap *= 2;
        if (cap > max_ms)
                cap = max_ms;
        if (cap <= 0)
                return 0;
        return (int64_t)(((uint64_t)rnd * (uint64_t)(cap + 1)) >> 32);
}

kb_retry_decision_t kb_retry_decide(const kb_conf_t *conf, int retryable,
                                    int attempts, int inproc, int tier,
                                    int64_t retry_after_ms, uint32_t rnd) {
        kb_retry_decision_t d = {KB_RETRY_FAIL, 0, 0};
        int64_t wait;
        int t, n = (int)conf->retry_delay_cnt;
        if (!retryable)
                return d;
        if (attempts >= conf->retry_max_attempts) {
                d.rd_action = KB_RETRY_EXHAUSTED;
                return d;
        }
        wait = retry_after_ms >= 0
                   ? retry_after_ms
                   : kb_retry_backoff_ms(conf->retry_backoff_base_ms,
                                         conf->retry_backoff_max_ms, inproc,
                                         rnd);
        if (n == 0 || (inproc < conf->retry_inprocess_attempts &&
                       wait <= conf->retry_inprocess_max_wait_ms)) {
                /* Without tiers every retry happens in process. */
                d.rd_action = KB_RETRY_INPROC;
                d.rd_wait_ms = wait;
                return d;
        }
        /* The next tier, or a later one whose delay covers the wait the
         * server asked for: within a tier every delay is equal, so due
         * times stay in offset order. */
        t = tier + 1 > n ? n : tier + 1;
        while (t < n && conf->retry_delays_ms[t - 1] < wait)
                t++;
        d.rd_action = KB_RETRY_TIER;
        d.rd_tier = t;
        d.rd_wait_ms = conf->retry_delays_ms[t - 1];
        return d;
}
