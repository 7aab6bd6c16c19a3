/* role: see role.h. */
#include "role.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kafka.h"
#include "log.h"

void kb_role_init(kb_role_t *r, const kb_role_ops_t *ops, const char *fac,
                  kb_loop_t *loop, int *fatal) {
        r->ro_ops = ops;
        r->ro_fac = fac;
        r->ro_loop = loop;
        r->ro_fatal = fatal;
}

int kb_role_producer_start(kb_role_t *r, rd_kafka_t **rkp,
                           rd_kafka_queue_t **pqp, kb_prodq_t *prodq,
                           char *errstr, size_t errstr_size) {
        const char *t = getenv("KBATCH_TEST_PRODUCER_FATAL_MS");
        if (!(*rkp = r->ro_ops->ro_producer_new(r, errstr, errstr_size)))
                return -1;
        *pqp = rd_kafka_queue_get_main(*rkp);
        if ((r->ro_pwfd = kb_loop_wake_pipe(r->ro_loop)) < 0) {
                snprintf(errstr, errstr_size, "pipe: %s", strerror(errno));
                return -1;
        }
        rd_kafka_queue_io_event_enable(*pqp, r->ro_pwfd, "p", 1);
        r->ro_producer = rkp;
        r->ro_pq = pqp;
        r->ro_prodq = prodq;
        if (t)
                r->ro_test_fatal_at = kb_now_ms() + atoi(t);
        return 0;
}

void kb_role_conf(kb_role_t *r, rd_kafka_conf_t *kc, int consumer) {
        if (consumer) {
                rd_kafka_conf_set_rebalance_cb(kc, kb_role_rebalance_cb);
                rd_kafka_conf_set_offset_commit_cb(kc, kb_role_commit_cb);
        }
        rd_kafka_conf_set_error_cb(kc, kb_role_error_cb);
        rd_kafka_conf_set_opaque(kc, r);
}

static void stop(kb_role_t *r) {
        *r->ro_fatal = 1;
        kb_loop_stop_requested = 1;
}

void kb_role_error_cb(rd_kafka_t *rk, int err, const char *reason,
                      void *opaque) {
        kb_role_t *r = opaque;
        if (err == RD_KAFKA_RESP_ERR__FATAL) {
                char buf[512];
                rd_kafka_resp_err_t ferr =
                    rd_kafka_fatal_error(rk, buf, sizeof(buf));
                if (r->ro_ops->ro_fatal_error) {
                        r->ro_ops->ro_fatal_error(r, rk, ferr, buf);
                        return;
                }
                if (r->ro_producer && rk == *r->ro_producer) {
                        /* recreated, not the end */
                        kb_log(KB_LOG_ERROR, r->ro_fac,
                               "producer failed: %s; recreating it", buf);
                        r->ro_producer_failed = 1;
                        return;
                }
                kb_log(KB_LOG_ERROR, "kafka", "fatal error: %s", buf);
                stop(r);
                return;
        }
        if (kb_kafka_error(rk, err, reason)) {
                /* authentication failed: logged once, stop */
                stop(r);
                return;
        }
        kb_log(err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN ||
                       err == RD_KAFKA_RESP_ERR__AUTHENTICATION
                   ? KB_LOG_ERROR
                   : KB_LOG_WARN,
               "kafka", "%s: %s", rd_kafka_err2name(err), reason);
}

/* ---- revocation ---------------------------------------------------------- */

void kb_role_drain(kb_role_t *r, kb_part_t **pts, size_t n, int64_t deadline) {
        for (;;) {
                size_t i;
                int alive = 0;
                /* Delivery reports, and pending produces now rather than
                 * later. */
                if (r->ro_producer)
                        kb_role_poll(*r->ro_producer);
                if (r->ro_prodq)
                        kb_prodq_serve(r->ro_prodq, INT64_MAX,
                                       r->ro_ops->ro_reproduce);
                /* Work whose attempt failed meanwhile went back to waiting:
                 * it is the next owner's. */
                r->ro_ops->ro_drop_unstarted(r, pts, n);
                for (i = 0; pts && i < n; i++)
                        alive += pts[i]->pt_jobs;
                if (!pts)
                        alive = r->ro_ops->ro_alive(r);
                if (!alive || kb_now_ms() >= deadline)
                        return;
                kb_loop_drive(r->ro_loop, 10);
        }
}

int kb_role_work_of(const kb_part_t *pt, uint64_t epoch, kb_part_t **pts,
                    size_t n) {
        size_t i;
        if (!pts)
                return 1;
        if (!kb_part_current(pt, epoch))
                return 0;
        for (i = 0; i < n; i++)
                if (pt == pts[i])
                        return 1;
        return 0;
}

static void on_revoke(kb_role_t *r, rd_kafka_topic_partition_list_t *parts,
                      int lost) {
        size_t n = 0, i;
        kb_part_t **pts = kb_partset_revoking(r->ro_ps, parts, &n);
        if (!lost && n) {
                int64_t deadline = kb_now_ms() + r->ro_drain_ms;
                r->ro_ops->ro_drop_unstarted(r, pts, n);
                kb_role_drain(r, pts, n, deadline);
        }
        for (i = 0; pts && i < n; i++)
                r->ro_ops->ro_release(r, pts[i]);
        if (pts)
                kb_partset_revoked(r->ro_ps, pts, n, lost);
        free(pts);
        kb_partset_unassign(r->ro_ps, parts);
}

void kb_role_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                          rd_kafka_topic_partition_list_t *parts,
                          void *opaque) {
        kb_role_t *r = opaque;
        if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
                if (r->ro_ops->ro_assign)
                        r->ro_ops->ro_assign(r, parts);
                kb_partset_assign(r->ro_ps, parts);
        } else if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS)
                on_revoke(r, parts, rd_kafka_assignment_lost(rk));
        else {
                kb_log(KB_LOG_ERROR, r->ro_fac, "rebalance error: %s",
                       rd_kafka_err2str(err));
                on_revoke(r, parts, 1);
        }
}

/* An asynchronous commit failed: its positions are sent again. */
void kb_role_commit_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                       rd_kafka_topic_partition_list_t *offsets, void *opaque) {
        kb_role_t *r = opaque;
        (void)rk;
        if (err == RD_KAFKA_RESP_ERR_NO_ERROR ||
            err == RD_KAFKA_RESP_ERR__NO_OFFSET)
                return;
        kb_log(KB_LOG_WARN, r->ro_fac, "offset commit failed: %s",
               rd_kafka_err2str(err));
        kb_partset_commit_failed(r->ro_ps, offsets);
}

void kb_role_stop(kb_role_t *r, rd_kafka_t *consumer, int64_t deadline) {
        rd_kafka_resp_err_t err;
        kb_partset_pause_all(r->ro_ps, KB_PAUSE_STOP, 1);
        kb_role_drain(r, NULL, 0, deadline);
        r->ro_ops->ro_abort(r);
        if ((err = rd_kafka_flush(*r->ro_producer, 10000)))
                kb_log(KB_LOG_WARN, r->ro_fac, "flush: %s",
                       rd_kafka_err2str(err));
        kb_role_poll(*r->ro_producer);
        kb_partset_commit(r->ro_ps, NULL, 0, 1);
        /* Leave the group: the close serves the revocation itself. */
        kb_kafka_consumer_close(consumer, 15000, r->ro_fac);
}

/* ---- the producer ---------------------------------------------------------- */

/* A fatal error of the idempotent producer (an unrecoverable sequence or
 * epoch error): instead of exiting, purge it (the delivery reports of what
 * it held put that work on the role's produce-again queue), then publish
 * through a new one. What the old one had written but not confirmed is
 * published again (at-least-once); offsets are marked done only on
 * acknowledgement, as always. */
static void producer_recover(kb_role_t *r) {
        char errstr[512];
        rd_kafka_t *nrk = r->ro_ops->ro_producer_new(r, errstr,
                                                     sizeof(errstr));
        if (!nrk) {
                kb_log(KB_LOG_WARN, r->ro_fac, "new producer: %s (retrying)",
                       errstr);
                return;
        }
        kb_kafka_producer_replace(r->ro_producer, r->ro_pq, nrk, r->ro_pwfd);
        r->ro_producer_failed = 0;
        kb_log(KB_LOG_INFO, r->ro_fac, "producer recreated");
}

void kb_role_producer_serve(kb_role_t *r, int64_t now) {
        if (!r->ro_producer)
                return;
        if (r->ro_test_fatal_at && now >= r->ro_test_fatal_at) {
                r->ro_test_fatal_at = 0;
                rd_kafka_test_fatal_error(
                    *r->ro_producer,
                    RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                    "test: KBATCH_TEST_PRODUCER_FATAL_MS");
        }
        if (r->ro_producer_failed)
                producer_recover(r);
}

void kb_role_poll(rd_kafka_t *rk) {
        while (rd_kafka_poll(rk, 0) > 0)
                ;
}

/* ---- outputs to produce again ---------------------------------------------- */

void kb_prodq_init(kb_prodq_t *q) { TAILQ_INIT(q); }

void kb_prodq_later(kb_prodq_t *q, kb_prodq_node_t *n, int64_t at) {
        n->pn_at = at;
        if (!n->pn_queued) {
                TAILQ_INSERT_TAIL(q, n, pn_link);
                n->pn_queued = 1;
        }
}

void kb_prodq_remove(kb_prodq_t *q, kb_prodq_node_t *n) {
        if (!n->pn_queued)
                return;
        TAILQ_REMOVE(q, n, pn_link);
        n->pn_queued = 0;
}

int kb_prodq_serve(kb_prodq_t *q, int64_t now,
                   void (*produce)(kb_prodq_node_t *n)) {
        kb_prodq_t walk = TAILQ_HEAD_INITIALIZER(walk);
        kb_prodq_node_t *n;
        int64_t next = INT64_MAX;
        TAILQ_CONCAT(&walk, q, pn_link);
        while ((n = TAILQ_FIRST(&walk))) {
                TAILQ_REMOVE(&walk, n, pn_link);
                if (n->pn_at > now) {
                        TAILQ_INSERT_TAIL(q, n, pn_link);
                        if (n->pn_at < next)
                                next = n->pn_at;
                        continue;
                }
                n->pn_queued = 0;
                produce(n);
        }
        if (next == INT64_MAX || now == INT64_MAX)
                return 1000;
        return next - now > 1000 ? 1000 : (int)(next - now);
}
