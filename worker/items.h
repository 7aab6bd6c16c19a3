/* items: the item pipeline (role `items`).
 *
 * Consumes the items topic in group kafka.group_id (cooperative-sticky,
 * manual offsets), decodes and validates every BatchItem, routes it, calls
 * the model API on the loop's multi handle, publishes one ItemResult (or a
 * DLQ copy) with the idempotent producer, and marks the item's offset done
 * only when the broker acknowledged that message. Offsets are committed out
 * of order through kb_offsets (DESIGN.md). */
#ifndef KB_ITEMS_H
#define KB_ITEMS_H

#include <stdint.h>

#include "conf.h"
#include "loop.h"

typedef struct kb_items_s kb_items_t;

/* Connects the consumer and producer (nothing is consumed until
 * kb_items_serve). conf and loop are borrowed for the pipeline's life.
 * NULL + errstr on failure; *runtime (may be NULL) then says whether it was
 * a run-time failure (the cluster cannot be reached: exit 1) rather than
 * the configuration (client settings, route keys: exit 2). */
kb_items_t *kb_items_new(const kb_conf_t *conf, kb_loop_t *loop, int *runtime,
                         char *errstr, size_t errstr_size);

/* One turn of the loop's work: delivery reports, consuming while below the
 * limits, dispatching parked items, timers. Returns the ms until it wants to
 * run again (the loop may wake earlier). */
int kb_items_serve(kb_items_t *it, int64_t now);

/* Graceful stop: stops fetching, drains in-flight work for up to drain_ms,
 * flushes the producer, commits, leaves the group. */
void kb_items_shutdown(kb_items_t *it, int drain_ms);

/* 1 once a fatal error happened (the worker must exit non-zero). */
int kb_items_fatal(const kb_items_t *it);

/* Readiness: the group was joined (an assignment was received) and the
 * producer has a broker connection. */
int kb_items_ready(const kb_items_t *it);

/* Readiness for /readyz (loop thread): 1, or 0 with the reason in why: no
 * assignment received yet, the producer has no broker connection (from
 * librdkafka's statistics; without them, no metadata answer yet), or the
 * schema registry is unavailable (Avro). */
int kb_items_readiness(kb_items_t *it, char *why, size_t why_size);

void kb_items_destroy(kb_items_t *it); /* NULL is a no-op */

#endif
