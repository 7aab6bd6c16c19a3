/* routeq: a route's queue of waiting items, in two lanes (priority, then
 * normal: SPEC §12), each serving the batches it holds in turn.
 *
 * A lane is a ring of per-batch FIFOs: kb_routeq_pop takes the first item
 * of the batch at the head of the ring and moves that batch to the ring's
 * tail, so a 10-item batch behind a 200,000-item one gets every other
 * call instead of waiting for the large one to finish. Nodes are embedded
 * in the caller's structs (no allocation per item); a batch's bucket is
 * allocated while it has items waiting. */
#ifndef KB_ROUTEQ_H
#define KB_ROUTEQ_H

#include <stddef.h>
#include <sys/queue.h>

#define KB_ROUTEQ_LANES 2 /* 0: priority, 1: normal */

struct kb_rq_bucket_s;

/* Embedded in a queued item; owned by the queue while queued. */
typedef struct kb_rq_node_s {
        TAILQ_ENTRY(kb_rq_node_s) n_link;
        struct kb_rq_bucket_s *n_bucket; /* NULL: not queued */
} kb_rq_node_t;

typedef struct kb_routeq_s {
        TAILQ_HEAD(kb_rq_ring_s, kb_rq_bucket_s) rq_ring[KB_ROUTEQ_LANES];
        int rq_cnt; /* items queued, both lanes */
} kb_routeq_t;

void kb_routeq_init(kb_routeq_t *q);
/* Frees the buckets; the nodes still queued are only unlinked. */
void kb_routeq_clear(kb_routeq_t *q);

/* Queues n in lane (0 priority, 1 normal) under batch_id (copied): at the
 * tail of its batch, or at the head with head (an item that already
 * waited). Returns 0, or -1 when out of memory (n is not queued). */
int kb_routeq_push(kb_routeq_t *q, kb_rq_node_t *n, int lane,
                   const char *batch_id, int head);

/* Items of batch_id queued (both lanes). O(batches queued). */
int kb_routeq_batch_cnt(kb_routeq_t *q, const char *batch_id);

/* The item kb_routeq_pop would take next, or NULL. */
kb_rq_node_t *kb_routeq_peek(const kb_routeq_t *q);

/* Takes the next item: the priority lane first; within a lane, the first
 * item of the batch whose turn it is (its batch then goes to the back). */
kb_rq_node_t *kb_routeq_pop(kb_routeq_t *q);

/* Unlinks a queued node (anywhere in the queue). */
void kb_routeq_remove(kb_routeq_t *q, kb_rq_node_t *n);

/* Walks every queued node (lanes in order, batches in turn order): the
 * first with prev NULL, then the one after prev. The node returned may be
 * removed before asking for the next one only when its successor was
 * taken first (see KB_ROUTEQ_FOREACH_SAFE). */
kb_rq_node_t *kb_routeq_next(const kb_routeq_t *q, const kb_rq_node_t *prev);

#define KB_ROUTEQ_FOREACH_SAFE(n, q, tmp)                                      \
        for ((n) = kb_routeq_next((q), NULL);                                  \
             (n) && ((tmp) = kb_routeq_next((q), (n)), 1); (n) = (tmp))

#endif
