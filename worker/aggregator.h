/* aggregator: batch completion (role `aggregator`, DESIGN.md "Batch
 * completion: the aggregator").
 *
 * Consumes the results topic in group kafka.aggregator_group_id
 * (read_committed, eager range assignment, manual offsets). On assignment of
 * results partition p it restores the state of p's batches from partition p
 * of the compacted batch-state topic (co-partitioned), read to its end. Each
 * result is counted once per (batch_id, item_index) in a 2-bit map; when the
 * last item of a batch is terminal a `batch.completed` BatchEvent is due, a
 * later change of the counts (a failed item replayed to success) makes a
 * `batch.updated` with the next revision.
 *
 * Exactly once: every aggregator.commit_interval_ms one Kafka transaction
 * (transactional.id "kbatch-aggregator-<instance id>") holds the dirty
 * batches' state records, the due events and the consumed offsets. A crash
 * anywhere replays from the last committed offsets into the last committed
 * state, so no event is ever published twice.
 *
 * The batch-state model (statuses, the 2-bit map, the state record and
 * event encodings) is bstate.h. */
#ifndef KB_AGGREGATOR_H
#define KB_AGGREGATOR_H

#include <stddef.h>
#include <stdint.h>

#include "bstate.h"
#include "conf.h"
#include "loop.h"

/* ---- the role --------------------------------------------------------- */

typedef struct kb_aggregator_s kb_aggregator_t;

/* Creates the transactional producer (and initializes its transactions,
 * which fences and aborts what a previous process with the same instance
 * id left open), the restore consumer and the results consumer, and
 * subscribes. Blocks for up to about a minute while the transaction
 * coordinator is unreachable. conf and loop are borrowed for the role's
 * life. NULL + errstr on failure. */
kb_aggregator_t *kb_aggregator_new(const kb_conf_t *conf, kb_loop_t *loop,
                                   char *errstr, size_t errstr_size);

/* One turn: consume results (rebalances restore state inside), expire and
 * retire batches, commit the transaction when due. Returns the ms until it
 * wants to run again. now: kb_now_ms(). */
int kb_aggregator_serve(kb_aggregator_t *ag, int64_t now);

/* Graceful stop: commits what is pending, leaves the group. */
void kb_aggregator_shutdown(kb_aggregator_t *ag);

/* 1 once transactions are initialized and an assignment was received. */
int kb_aggregator_ready(const kb_aggregator_t *ag);

/* 1 after a fatal error (fenced by another instance with the same
 * transactional.id, or an error librdkafka calls fatal): the worker must
 * exit non-zero. kb_loop_stop_requested is set too. */
int kb_aggregator_fatal(const kb_aggregator_t *ag);

void kb_aggregator_destroy(kb_aggregator_t *ag); /* NULL is a no-op */

#endif
