/* jobstore: the job ids of async routes' running jobs, recorded in a
 * compacted Kafka topic (topics.items_jobs; SPEC §12, DESIGN.md "Async
 * jobs").
 *
 * A worker produces <batch_id>:<item_index> -> {"id", "route",
 * "submitted_at"} after a provider accepted a job, and polls only once the
 * broker acknowledged it; a tombstone follows the item's result. Every
 * worker reads the whole topic (all partitions, no group) at start and
 * follows it, so whoever owns an item after a crash or a rebalance finds
 * its job and resumes polling instead of submitting it again. Only workers
 * with an async route read it. */
#ifndef KB_JOBSTORE_H
#define KB_JOBSTORE_H

#include <stdint.h>

#include "conf.h"
#include "loop.h"

typedef struct kb_jobstore_s kb_jobstore_t;

kb_jobstore_t *kb_jobstore_new(const kb_conf_t *conf, kb_loop_t *loop,
                               char *errstr, size_t errstr_size);
void kb_jobstore_destroy(kb_jobstore_t *js); /* NULL is a no-op */

/* Reads what arrived. Returns ms until it wants to run again. */
int kb_jobstore_serve(kb_jobstore_t *js, int64_t now);

/* 1 once the topic was read up to where it ended at start (or a grace of
 * 30 s passed). */
int kb_jobstore_ready(const kb_jobstore_t *js);

/* The recorded job of key ("<batch_id>:<item_index>") on route, or NULL.
 * The id is borrowed until the next kb_jobstore_serve; *submitted_at gets
 * its wall ms. */
const char *kb_jobstore_get(const kb_jobstore_t *js, const char *key,
                            const char *route, int64_t *submitted_at);

/* Applies one record (value NULL: a tombstone). Exposed for tests. */
void kb_jobstore_apply(kb_jobstore_t *js, const char *key, size_t key_len,
                       const void *value, size_t value_len);

/* The record's value (caller frees), or NULL when out of memory. */
char *kb_jobstore_record(const char *id, const char *route,
                         int64_t submitted_at, size_t *lenp);

/* Records held (for tests and metrics). */
size_t kb_jobstore_size(const kb_jobstore_t *js);

/* An empty store reading nothing (for tests). */
kb_jobstore_t *kb_jobstore_new_local(void);

#endif
