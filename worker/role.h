/* role: what the Kafka roles share — the revocation protocol and the
 * rebalance and commit callbacks of the out-of-order consumer roles (items,
 * notifier), the error callback of every role's clients (items, notifier,
 * aggregator), the recovery of a failed producer, and the queue of outputs
 * to produce again.
 *
 * A role embeds a kb_role_t as the FIRST member of its struct, and that
 * struct is the opaque of its Kafka clients (kb_role_conf), so that the
 * callbacks find the kb_role_t. The role fills in a kb_role_ops_t with what
 * only it knows (its own work and how to count it); this module runs the
 * protocol.
 *
 * Revocation (kb_role_rebalance_cb), in this order:
 *   1. the work of the revoked parts that has not started (waiting in a
 *      queue or on a timer) is dropped: the next owner consumes it again;
 *   2. drain (kb_role_drain): delivery reports, due produces and transfers
 *      are driven (never the consumer) until no work of the parts is alive
 *      (pt_jobs) or worker.revoke_drain_ms passed; work that went back to
 *      waiting meanwhile is dropped at every turn;
 *   3. release: what is still alive is abandoned (calls aborted); work whose
 *      output is with the producer stays until its report, orphaned (it
 *      touches no offset);
 *   4. the parts are committed synchronously, their epoch ends, and the
 *      revocation is applied (partset.h).
 * A lost assignment (or a rebalance error) skips 1, 2 and the commit.
 *
 * Errors (kb_role_error_cb): a fatal error of the role's producer makes the
 * role recreate it (kb_role_producer_serve); any other fatal error, or a
 * failed authentication (kb_kafka_error), sets the role's fatal flag and
 * asks the loop to stop; the rest is logged.
 *
 * Loop thread only (librdkafka calls the callbacks from the role's polls). */
#ifndef KB_ROLE_H
#define KB_ROLE_H

#include <librdkafka/rdkafka.h>
#include <stdint.h>
#include <sys/queue.h>

#include "loop.h"
#include "partset.h"

/* ---- outputs to produce again -----------------------------------------
 * A queue of nodes embedded in the role's work (no allocation): an output
 * the producer refused or failed to deliver waits here until it is due. */

typedef struct kb_prodq_node_s {
        TAILQ_ENTRY(kb_prodq_node_s) pn_link;
        int64_t pn_at;  /* mono ms: produce again not before */
        int pn_queued;
} kb_prodq_node_t;

typedef TAILQ_HEAD(kb_prodq_s, kb_prodq_node_s) kb_prodq_t;

void kb_prodq_init(kb_prodq_t *q);

/* Queues n (at the tail, unless it is queued) to be produced again at
 * `at` (mono ms). */
void kb_prodq_later(kb_prodq_t *q, kb_prodq_node_t *n, int64_t at);

/* Unqueues n; a no-op when it is not queued. */
void kb_prodq_remove(kb_prodq_t *q, kb_prodq_node_t *n);

/* Calls produce for every node due (pn_at <= now; all with INT64_MAX),
 * unqueued first. The queue is taken whole before the walk: a node that
 * fails again is queued anew for a later turn, never met again in this
 * walk (walking the live queue, two outputs that kept failing
 * synchronously swapped places forever: the drain never returned).
 * Returns the ms until the next one is due (at most 1000). */
int kb_prodq_serve(kb_prodq_t *q, int64_t now,
                   void (*produce)(kb_prodq_node_t *n));

/* What a role does with its own work. self: the role's struct (the one
 * the kb_role_t is the first member of). */
typedef struct kb_role_ops_s {
        /* Optional: an assignment arrives, before it is applied. */
        void (*ro_assign)(void *self,
                          const rd_kafka_topic_partition_list_t *parts);
        /* Drops the work of pts (of every part, orphans included, when pts
         * is NULL) that has not started. */
        void (*ro_drop_unstarted)(void *self, kb_part_t **pts, size_t n);
        /* Produces again an output that waited on the role's prodq. */
        void (*ro_reproduce)(kb_prodq_node_t *n);
        /* Work alive, orphans included. */
        int (*ro_alive)(void *self);
        /* Shutdown, after the drain: ends every work but the outputs with
         * the producer (they get the flush). */
        void (*ro_abort)(void *self);
        /* Ends pt's epoch for the role's work (step 3 above). */
        void (*ro_release)(void *self, kb_part_t *pt);
        /* Makes a new producer like the role's (kb_role_producer_serve).
         * NULL + errstr on failure. */
        rd_kafka_t *(*ro_producer_new)(void *self, char *errstr,
                                       size_t errstr_size);
        /* Optional, instead of the default handling: a fatal error of rk
         * (msg: librdkafka's reason). */
        void (*ro_fatal_error)(void *self, rd_kafka_t *rk,
                               rd_kafka_resp_err_t err, const char *msg);
} kb_role_ops_t;

typedef struct kb_role_s {
        const kb_role_ops_t *ro_ops;   /* borrowed (static) */
        const char *ro_fac;            /* log facility ("items") */
        kb_loop_t *ro_loop;            /* borrowed */
        int *ro_fatal;                 /* the role's fatal flag */
        kb_partset_t *ro_ps;           /* borrowed; consumer roles */
        int ro_drain_ms;               /* worker.revoke_drain_ms */
        /* the producer recreated on a fatal error (NULL: none) */
        rd_kafka_t **ro_producer;      /* the role's field */
        rd_kafka_queue_t **ro_pq;      /* its main queue, the role's field */
        int ro_pwfd;                   /* the queue's wake pipe */
        kb_prodq_t *ro_prodq;          /* outputs to produce again */
        int ro_producer_failed;
        int64_t ro_test_fatal_at;      /* $KBATCH_TEST_PRODUCER_FATAL_MS */
} kb_role_t;

/* Sets up r (embedded first in self). ops, fac and loop are borrowed for
 * the role's life; fatal: the role's flag, set on a fatal error. */
void kb_role_init(kb_role_t *r, const kb_role_ops_t *ops, const char *fac,
                  kb_loop_t *loop, int *fatal);

/* Makes the role's producer (ro_producer_new), recreated on a fatal
 * error: *rkp and *pqp are the role's fields, set here to the producer and
 * its main queue (forwarded to a wake pipe of the loop; the role serves
 * its delivery reports), and again by kb_kafka_producer_replace. prodq
 * (borrowed) holds the outputs to produce again (ro_reproduce), served at
 * once by the drain. Reads $KBATCH_TEST_PRODUCER_FATAL_MS (tests: a fatal
 * error that many ms from now). 0, or -1 + errstr. */
int kb_role_producer_start(kb_role_t *r, rd_kafka_t **rkp,
                           rd_kafka_queue_t **pqp, kb_prodq_t *prodq,
                           char *errstr, size_t errstr_size);

/* Sets the role's callbacks on a client's configuration: the error
 * callback and the opaque (the role); with consumer, the rebalance and
 * offset commit callbacks too (r->ro_ps must be set before the first
 * rebalance). */
void kb_role_conf(kb_role_t *r, rd_kafka_conf_t *kc, int consumer);

/* The callbacks kb_role_conf sets, for clients that set their own others
 * (opaque: a struct that begins with a kb_role_t). */
void kb_role_error_cb(rd_kafka_t *rk, int err, const char *reason,
                      void *opaque);
void kb_role_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                          rd_kafka_topic_partition_list_t *parts,
                          void *opaque);
void kb_role_commit_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                       rd_kafka_topic_partition_list_t *offsets, void *opaque);

/* Drives the loop until no work of pts (all work when pts is NULL) is
 * alive or the deadline (mono ms) passed, dropping unstarted work at every
 * turn (step 2 above). */
void kb_role_drain(kb_role_t *r, kb_part_t **pts, size_t n, int64_t deadline);

/* For ro_drop_unstarted: 1 when work tagged (pt, epoch) belongs to the
 * current epoch of one of pts; always 1 when pts is NULL. */
int kb_role_work_of(const kb_part_t *pt, uint64_t epoch, kb_part_t **pts,
                    size_t n);

/* The graceful stop of a consumer role (once the role stopped consuming):
 * stops fetching (KB_PAUSE_STOP), drains all its work until deadline
 * (mono ms; unstarted work is left to the next owner), aborts the rest
 * (ro_abort), flushes the producer (up to 10 s), commits synchronously and
 * leaves the group (kb_kafka_consumer_close: bounded, 15 s). */
void kb_role_stop(kb_role_t *r, rd_kafka_t *consumer, int64_t deadline);

/* Once a turn: the test's fatal error when due, and a new producer after a
 * fatal one (retried at the next turn when it cannot be made). */
void kb_role_producer_serve(kb_role_t *r, int64_t now);

/* Serves a client's pending callbacks (delivery reports, errors). */
void kb_role_poll(rd_kafka_t *rk);

#endif
