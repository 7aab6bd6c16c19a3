/* retry: what to do after a failed model call (DESIGN.md "Retries").
 *
 * Pure: the items pipeline asks, this answers. Retryable errors get up to
 * retry.inprocess_attempts quick retries in process (exponential backoff
 * with full jitter, or the server's Retry-After); a wait longer than
 * retry.inprocess_max_wait_ms, or in-process retries used up, sends the item
 * to a delayed retry tier; after retry.max_attempts model calls the item
 * fails with max_attempts_exceeded. */
#ifndef KB_RETRY_H
#define KB_RETRY_H

#include <stdint.h>

#include "conf.h"

typedef enum {
        KB_RETRY_FAIL = 0,  /* not retryable: a failed result */
        KB_RETRY_INPROC,    /* call again in process after wait_ms */
        KB_RETRY_TIER,      /* publish to retry tier `tier` (1-based) */
        KB_RETRY_EXHAUSTED, /* max_attempts reached: failed result with
                             * max_attempts_exceeded and a DLQ copy */
} kb_retry_action_t;

typedef struct kb_retry_decision_s {
        kb_retry_action_t rd_action;
        int64_t rd_wait_ms; /* INPROC: the wait; TIER: the tier's delay */
        int rd_tier;        /* TIER: 1..retry_delay_cnt */
} kb_retry_decision_t;

/* Full-jitter exponential backoff: uniform in [0, min(max, base * 2^n)],
 * n = 0 for the first retry; rnd is a uniform random 32-bit value. */
int64_t kb_retry_backoff_ms(int base_ms, int max_ms, int n, uint32_t rnd);

/* Decides. attempts: model calls made so far (this one included);
 * inproc: in-process retries already made since the item was consumed;
 * tier: the tier it was consumed from (0 = the items topic);
 * retry_after_ms: the server's Retry-After, or -1. */
kb_retry_decision_t kb_retry_decide(const kb_conf_t *conf, int retryable,
                                    int attempts, int inproc, int tier,
                                    int64_t retry_after_ms, uint32_t rnd);

#endif
