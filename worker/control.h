/* control: the cancelled batches, from the control topic (SPEC §2
 * ControlCommand).
 *
 * Every worker instance reads every partition of the control topic, with no
 * consumer group, starting control.lookback_ms back, and keeps the set of
 * batches a cancel command named. Items of those batches end `cancelled`
 * without a model call; calls in flight are aborted (the items pipeline
 * does that when told through the callback). */
#ifndef KB_CONTROL_H
#define KB_CONTROL_H

#include <stdint.h>

#include "conf.h"
#include "loop.h"

typedef struct kb_control_s kb_control_t;

/* The set of cancelled batches (exposed for tests). Entries older than
 * max_age_ms are forgotten by a sweep, and so are the oldest beyond
 * max_cnt: the set never grows without bound (issue 15). */
typedef struct kb_cancelset_s kb_cancelset_t;
#define KB_CONTROL_CANCELLED_MAX 100000
kb_cancelset_t *kb_cancelset_new(int64_t max_age_ms, size_t max_cnt);
void kb_cancelset_destroy(kb_cancelset_t *cs); /* NULL is a no-op */
/* 1 when added, 0 when batch_id was there already. */
int kb_cancelset_add(kb_cancelset_t *cs, const char *batch_id,
                     const char *reason, int64_t at_ms);
/* The reason (borrowed until the next change), or NULL. */
const char *kb_cancelset_get(const kb_cancelset_t *cs, const char *batch_id);
size_t kb_cancelset_size(const kb_cancelset_t *cs);
/* Forgets what is too old or too many; returns how many. */
size_t kb_cancelset_sweep(kb_cancelset_t *cs, int64_t now_ms);

/* Called once per newly cancelled batch (batch_id and reason borrowed for
 * the call). */
typedef void(kb_control_cancel_cb)(const char *batch_id, const char *reason,
                                   void *opaque);

kb_control_t *kb_control_new(const kb_conf_t *conf, kb_loop_t *loop,
                             kb_control_cancel_cb *cb, void *opaque,
                             char *errstr, size_t errstr_size);
void kb_control_destroy(kb_control_t *ct); /* NULL is a no-op */

/* Reads what arrived. Returns ms until it wants to run again. */
int kb_control_serve(kb_control_t *ct, int64_t now);

/* 1 once the topic was read up to where it ended at start-up (or a start-up
 * grace passed), so that items are not called before a cancel that was
 * already published is known. */
int kb_control_ready(const kb_control_t *ct);

/* The reason (possibly "") when batch_id was cancelled, else NULL. */
const char *kb_control_cancelled(const kb_control_t *ct, const char *batch_id);

/* Parses one ControlCommand value (JSON). Returns 1 for a cancel (fills
 * batch_id and reason, truncated to their sizes), 0 for anything else. */
int kb_control_parse(const void *buf, size_t len, char *batch_id,
                     size_t batch_id_size, char *reason, size_t reason_size);

#endif
