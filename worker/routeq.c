/* routeq: see routeq.h. */
#include "routeq.h"

#include <stdlib.h>
#include <string.h>

typedef struct kb_rq_bucket_s {
        TAILQ_ENTRY(kb_rq_bucket_s) b_link; /* in its lane's ring */
        TAILQ_HEAD(, kb_rq_node_s) b_items;
        int b_lane;
        int b_cnt; /* items queued in it */
        char *b_batch;
} kb_rq_bucket_t;

void kb_routeq_init(kb_routeq_t *q) {
        int l;
        for (l = 0; l < KB_ROUTEQ_LANES; l++)
                TAILQ_INIT(&q->rq_ring[l]);
        q->rq_cnt = 0;
}

static void bucket_free(kb_routeq_t *q, kb_rq_bucket_t *b) {
        TAILQ_REMOVE(&q->rq_ring[b->b_lane], b, b_link);
        free(b->b_batch);
        free(b);
}

void kb_routeq_clear(kb_routeq_t *q) {
        int l;
        for (l = 0; l < KB_ROUTEQ_LANES; l++) {
                kb_rq_bucket_t *b;
                while ((b = TAILQ_FIRST(&q->rq_ring[l]))) {
                        kb_rq_node_t *n;
                        while ((n = TAILQ_FIRST(&b->b_items))) {
                                TAILQ_REMOVE(&b->b_items, n, n_link);
                                n->n_bucket = NULL;
                        }
                        bucket_free(q, b);
                }
        }
        q->rq_cnt = 0;
}

/* The bucket of batch_id in a lane. A linear search: the batches with
 * items waiting on one route are few (tens), and the last one used is
 * checked first (items of a batch mostly arrive together). */
static kb_rq_bucket_t *bucket_find(kb_routeq_t *q, int lane,
                                   const char *batch_id) {
        kb_rq_bucket_t *b = TAILQ_LAST(&q->rq_ring[lane], kb_rq_ring_s);
        if (b && !strcmp(b->b_batch, batch_id))
                return b;
        TAILQ_FOREACH(b, &q->rq_ring[lane], b_link)
                if (!strcmp(b->b_batch, batch_id))
                        return b;
        return NULL;
}

int kb_routeq_push(kb_routeq_t *q, kb_rq_node_t *n, int lane,
                   const char *batch_id, int head) {
        kb_rq_bucket_t *b;
        if (lane < 0 || lane >= KB_ROUTEQ_LANES)
                lane = KB_ROUTEQ_LANES - 1;
        if (!batch_id)
                batch_id = "";
        if (!(b = bucket_find(q, lane, batch_id))) {
                if (!(b = calloc(1, sizeof(*b))) ||
                    !(b->b_batch = strdup(batch_id))) {
                        free(b);
                        return -1;
                }
                b->b_lane = lane;
                TAILQ_INIT(&b->b_items);
                /* A batch new to the queue takes its turn after the ones
                 * waiting; an item that already waited, at once. */
                if (head)
                        TAILQ_INSERT_HEAD(&q->rq_ring[lane], b, b_link);
                else
                        TAILQ_INSERT_TAIL(&q->rq_ring[lane], b, b_link);
        }
        if (head)
                TAILQ_INSERT_HEAD(&b->b_items, n, n_link);
        else
                TAILQ_INSERT_TAIL(&b->b_items, n, n_link);
        n->n_bucket = b;
        b->b_cnt++;
        q->rq_cnt++;
        return 0;
}

int kb_routeq_batch_cnt(kb_routeq_t *q, const char *batch_id) {
        int l, n = 0;
        for (l = 0; l < KB_ROUTEQ_LANES; l++) {
                kb_rq_bucket_t *b = bucket_find(q, l, batch_id ? batch_id : "");
                n += b ? b->b_cnt : 0;
        }
        return n;
}

kb_rq_node_t *kb_routeq_peek(const kb_routeq_t *q) {
        int l;
        for (l = 0; l < KB_ROUTEQ_LANES; l++) {
                kb_rq_bucket_t *b = TAILQ_FIRST(&q->rq_ring[l]);
                if (b)
                        return TAILQ_FIRST(&b->b_items);
        }
        return NULL;
}

void kb_routeq_remove(kb_routeq_t *q, kb_rq_node_t *n) {
        kb_rq_bucket_t *b = n->n_bucket;
        if (!b)
                return;
        TAILQ_REMOVE(&b->b_items, n, n_link);
        n->n_bucket = NULL;
        b->b_cnt--;
        q->rq_cnt--;
        if (TAILQ_EMPTY(&b->b_items))
                bucket_free(q, b);
}

kb_rq_node_t *kb_routeq_pop(kb_routeq_t *q) {
        kb_rq_node_t *n = kb_routeq_peek(q);
        kb_rq_bucket_t *b;
        int more;
        if (!n)
                return NULL;
        b = n->n_bucket;
        more = TAILQ_NEXT(n, n_link) != NULL;
        kb_routeq_remove(q, n); /* frees b unless more */
        if (more) {
                /* Its batch has more: its turn is over. */
                TAILQ_REMOVE(&q->rq_ring[b->b_lane], b, b_link);
                TAILQ_INSERT_TAIL(&q->rq_ring[b->b_lane], b, b_link);
        }
        return n;
}

kb_rq_node_t *kb_routeq_next(const kb_routeq_t *q, const kb_rq_node_t *prev) {
        const kb_rq_bucket_t *b;
        int l = 0;
        if (prev) {
                kb_rq_node_t *n = TAILQ_NEXT(prev, n_link);
                if (n)
                        return n;
                b = TAILQ_NEXT(prev->n_bucket, b_link);
                if (b)
                        return TAILQ_FIRST(&b->b_items);
                l = prev->n_bucket->b_lane + 1;
        }
        for (; l < KB_ROUTEQ_LANES; l++)
                if ((b = TAILQ_FIRST(&q->rq_ring[l])))
                        return TAILQ_FIRST(&b->b_items);
        return NULL;
}
