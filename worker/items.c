/* items: see items.h.
 *
 * Life of a job (one consumed message):
 *   consumed -> [decode/validate/route] -> WAITING (route at its limit)
 *            -> CALLING (transfer on the multi handle) -> PRODUCING (result
 *            or DLQ copy handed to the producer) -> acknowledged: offset done,
 *            job freed.
 * A job owns its rd_kafka_message_t, its CURL handle, request and response
 * buffers, and is freed in one place (job_destroy). */
#include "items.h"

#include <errno.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <unistd.h>

#include "async.h"
#include "codec.h"
#include "control.h"
#include "easypool.h"
#include "http.h"
#include "jobstore.h"
#include "kafka.h"
#include "log.h"
#include "metrics.h"
#include "offsets.h"
#include "partset.h"
#include "readahead.h"
#include "retry.h"
#include "role.h"
#include "routeq.h"
#include "routes.h"
#include "serde.h"

/* glibc's sys/queue.h lacks the _SAFE iterators. */
#ifndef LIST_FOREACH_SAFE
#define LIST_FOREACH_SAFE(var, head, field, tvar)                              \
        for ((var) = LIST_FIRST((head));                                       \
             (var) && ((tvar) = LIST_NEXT((var), field), 1); (var) = (tvar))
#endif
#ifndef TAILQ_FOREACH_SAFE
#define TAILQ_FOREACH_SAFE(var, head, field, tvar)                             \
        for ((var) = TAILQ_FIRST((head));                                      \
             (var) && ((tvar) = TAILQ_NEXT((var), field), 1); (var) = (tvar))
#endif

#define KB_MAX_OUTS 2

/* Retry-tier messages not due yet are held in memory, up to this many per
 * partition; beyond, the partition is paused until they come due. (Pausing
 * at once would make every next message late by up to a fetch long-poll,
 * fetch.wait.max.ms.) Held messages take no in-flight slot. */
#define KB_HOLD_MAX 256

typedef enum {
        JOB_NEW = 0,
        JOB_WAITING,   /* in its route's wait queue */
        JOB_CALLING,   /* transfer on the multi handle */
        JOB_PRODUCING, /* result/copies handed to the producer */
        JOB_TIMER,     /* on the timer list: see jb_timer */
} job_state_t;

/* What a job on the timer list waits for. */
typedef enum {
        TIMER_BACKOFF = 1, /* an in-process retry: call again when due */
        TIMER_DUE,         /* a retry-tier message not due yet: start it */
        TIMER_DECODE,      /* the schema registry was unavailable: decode
                            * again */
        TIMER_POLL,        /* an async job runs: poll it when due */
} job_timer_t;

typedef struct kb_job_s kb_job_t;

/* One message to publish for a job: its result, or its DLQ copy. */
typedef struct kb_out_s {
        kb_job_t *out_job;
        const char *out_topic;  /* borrowed from the config */
        char *out_payload;      /* owned: the result; NULL for a copy */
        size_t out_len;
        /* A copy of the original message (DLQ or retry tier) with the
         * error headers of SPEC §3: */
        int out_copy;
        char out_code[32];      /* kbatch-error-code */
        char *out_msg;          /* kbatch-error-message, owned */
        char out_last_code[32]; /* kbatch-last-error-code, or "" */
        int64_t out_not_before; /* kbatch-not-before (epoch ms), or 0 */
        int out_pending;        /* produced, not yet acknowledged */
        int out_done;
        int out_record;         /* an async job id record (jobstore.h) */
} kb_out_t;

struct kb_job_s {
        kb_xfer_t jb_xfer; /* CURLOPT_PRIVATE points here */
        kb_prodq_node_t jb_pqn;         /* on it_produce_retryq */
        TAILQ_ENTRY(kb_job_s) jb_tlink; /* the timer list */
        job_timer_t jb_timer;
        int64_t jb_due;                 /* mono ms, on the timer list */
        int jb_tier;                    /* 0: from the items topic, n: from
                                         * retry tier n */
        int jb_inproc;                  /* in-process retries so far */
        int jb_decode_tries;
        int64_t jb_est_tokens;          /* estimated for tokens_per_minute */
        char jb_last_code[32];          /* the last retryable error */
        char *jb_last_msg;              /* owned; NULL until a retry */
        LIST_ENTRY(kb_job_s) jb_all;
        kb_items_t *jb_it;
        rd_kafka_message_t *jb_msg;     /* owned */
        kb_part_t *jb_part;
        uint64_t jb_epoch;              /* jb_part's epoch when consumed */
        int64_t jb_offset;
        kb_item_t jb_item;
        kb_route_t *jb_route;
        kb_route_t *jb_called;          /* the route of the last call */
        kb_rq_node_t jb_rqn;            /* in jb_route's queue (WAITING) */
        kb_async_t *jb_async;           /* async routes: the job, owned */
        kb_out_t jb_rec;                /* its job id record */
        int jb_recorded;                /* ... acknowledged: tombstone it
                                         * after the result */
        int jb_lane;                    /* 0: priority lane, 1: normal */
        const char *jb_opname;
        job_state_t jb_state;
        kb_http_req_t jb_http;          /* the model call */
        char *jb_body;
        int jb_attempts;
        int64_t jb_started_at;   /* wall ms of the first call */
        int64_t jb_sent_ms;      /* mono ms this attempt's call started */
        int64_t jb_first_at;     /* wall ms when the job was first seen */
        char jb_traceparent[64];
        char jb_tracestate[512];
        kb_out_t jb_outs[KB_MAX_OUTS];
        int jb_out_cnt;
        int jb_shrunk;           /* the result was replaced by a smaller
                                  * one (job_shrink_result) */
};

TAILQ_HEAD(kb_timers_s, kb_job_s);

struct kb_items_s {
        kb_role_t it_role;        /* first: the clients' opaque (role.h) */
        const kb_conf_t *it_conf;
        kb_loop_t *it_loop;
        rd_kafka_t *it_consumer;
        rd_kafka_t *it_producer;
        rd_kafka_queue_t *it_cq;  /* consumer queue */
        rd_kafka_queue_t *it_pq;  /* producer main queue */
        rd_kafka_queue_t *it_prioq; /* the priority lane's partitions,
                                     * forwarded here: fetched first */
        int it_prio_jobs;         /* jobs alive from the priority lane */
        int it_ra_on;             /* worker.read_ahead > 0 */
        size_t it_ra_deferred;    /* offsets deferred, all partitions */
        kb_jobstore_t *it_jobstore; /* async job ids, when a route is
                                     * async (jobstore.h) */
        int it_polling;           /* async jobs waiting for their next
                                   * poll: no in-flight slot (SPEC §12) */
        kb_routes_t *it_routes;
        struct rstate_s *it_rstate; /* per route (rt_index): its queue and
                                     * calls (route_enqueue...) */
        kb_control_t *it_control; /* cancelled batches */
        kb_serde_t *it_serde;     /* value formats (json/avro) */
        kb_easypool_t *it_easypool; /* idle easy handles */
        const char *it_worker;    /* instance id */
        kb_partset_t *it_ps;      /* assigned partitions, commits */
        LIST_HEAD(, kb_job_s) it_jobs;
        kb_prodq_t it_produce_retryq;
        struct kb_timers_s it_timers;      /* sorted by jb_due */
        char **it_retry_topics;            /* tier n at [n-1] */
        int it_retry_cnt;
        int it_inflight;          /* jobs alive */
        int it_held;              /* of which retry-tier messages held until
                                   * due (not counted against the limit) */
        int64_t it_full_since_ms;
        int64_t it_expire_scan_ms;  /* mono ms of the next scan of the route
                                     * queues for deadlines */
        int it_stopping;          /* no more consuming */
        int it_fatal;
        int it_producer_up;       /* statistics: 1 a broker is UP, -1 none,
                                   * 0 none received yet (readiness) */
};

/* ---- partitions ---------------------------------------------------- */

static int part_current(const kb_job_t *jb) {
        return kb_part_current(jb->jb_part, jb->jb_epoch);
}

/* ---- jobs ------------------------------------------------------------ */

static void timer_remove(kb_items_t *it, kb_job_t *jb);
static void job_start(kb_items_t *it, kb_job_t *jb);

/* ---- route queues and calls -------------------------------------------
 * The pipeline's runtime state of each route, changed only here; the route
 * itself holds the limits and their adaptive state (routes.h). */

typedef struct rstate_s {
        kb_routeq_t rs_q;   /* jobs waiting (JOB_WAITING): lanes, batches
                             * in turn (routeq.h) */
        int rs_waiting;
        int rs_inflight;    /* jobs calling (JOB_CALLING) */
} rstate_t;

static rstate_t *rstate(kb_items_t *it, const kb_route_t *rt) {
        return &it->it_rstate[rt->rt_index];
}

#define RQN_JOB(n) ((kb_job_t *)(void *)((char *)(n) - offsetof(kb_job_t, jb_rqn)))

/* Queues a job on rt (its route from now on); head: it already waited. */
static void route_enqueue(kb_route_t *rt, kb_job_t *jb, int head) {
        rstate_t *rs = rstate(jb->jb_it, rt);
        jb->jb_route = rt;
        jb->jb_state = JOB_WAITING;
        if (kb_routeq_push(&rs->rs_q, &jb->jb_rqn, jb->jb_lane,
                           jb->jb_item.batch_id, head) != 0) {
                kb_log(KB_LOG_ERROR, "items", "out of memory");
                jb->jb_it->it_fatal = 1;
        }
        rs->rs_waiting++;
}

static void route_dequeue(kb_job_t *jb) {
        rstate_t *rs = rstate(jb->jb_it, jb->jb_route);
        kb_routeq_remove(&rs->rs_q, &jb->jb_rqn);
        rs->rs_waiting--;
        jb->jb_state = JOB_NEW;
}

/* The job at the head of rt's queue, or NULL. */
static kb_job_t *route_peek(kb_items_t *it, kb_route_t *rt) {
        kb_rq_node_t *n = kb_routeq_peek(&rstate(it, rt)->rs_q);
        return n ? RQN_JOB(n) : NULL;
}

/* The job's call was added to the loop (JOB_CALLING). */
static void route_call_started(kb_job_t *jb) {
        jb->jb_state = JOB_CALLING;
        rstate(jb->jb_it, jb->jb_route)->rs_inflight++;
}

/* The job's call ended (JOB_NEW); aborted: it never got an answer, so the
 * tokens it was charged are given back. */
static void route_call_ended(kb_job_t *jb, int aborted) {
        rstate(jb->jb_it, jb->jb_route)->rs_inflight--;
        if (aborted)
                kb_route_correct_tokens(jb->jb_route, jb->jb_est_tokens, 0);
        jb->jb_state = JOB_NEW;
}

/* Jobs waiting in every route's queue; *full: one queue is at
 * worker.route_queue_max. */
static int routes_waiting(kb_items_t *it, int *full) {
        size_t r;
        int waiting = 0;
        *full = 0;
        for (r = 0; r < kb_routes_cnt(it->it_routes); r++) {
                int n = it->it_rstate[r].rs_waiting;
                waiting += n;
                *full |= n >= it->it_conf->worker_route_queue_max;
        }
        return waiting;
}

static void job_destroy(kb_job_t *jb) {
        kb_items_t *it = jb->jb_it;
        int i;
        if (jb->jb_state == JOB_WAITING && jb->jb_route)
                route_dequeue(jb);
        kb_prodq_remove(&it->it_produce_retryq, &jb->jb_pqn);
        if (jb->jb_http.hr_easy) {
                if (jb->jb_state == JOB_CALLING) {
                        kb_loop_remove(it->it_loop, jb->jb_http.hr_easy);
                        if (jb->jb_route)
                                route_call_ended(jb, 1);
                }
        }
        kb_http_req_release(&jb->jb_http, it->it_easypool);
        free(jb->jb_body);
        free(jb->jb_last_msg);
        for (i = 0; i < jb->jb_out_cnt; i++) {
                free(jb->jb_outs[i].out_payload);
                free(jb->jb_outs[i].out_msg);
        }
        if (jb->jb_state == JOB_TIMER)
                timer_remove(it, jb);
        kb_item_clear(&jb->jb_item);
        kb_async_destroy(jb->jb_async);
        if (jb->jb_msg)
                rd_kafka_message_destroy(jb->jb_msg);
        kb_part_work_end(jb->jb_part, jb->jb_epoch);
        if (jb->jb_lane == 0)
                it->it_prio_jobs--;
        LIST_REMOVE(jb, jb_all);
        it->it_inflight--;
        free(jb);
}

static void async_forget(kb_job_t *jb);

/* The job's last message was acknowledged: its offset is done. */
static void job_finish(kb_job_t *jb) {
        if (part_current(jb))
                kb_offsets_mark_done(jb->jb_part->pt_ot, jb->jb_offset);
        if (jb->jb_recorded)
                async_forget(jb);
        job_destroy(jb);
}

/* ---- producing ------------------------------------------------------- */

static void set_header(rd_kafka_headers_t *h, const char *name,
                       const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_header(rd_kafka_headers_t *h, const char *name,
                       const char *fmt, ...) {
        char buf[1100]; /* values up to 1 KiB (SPEC §3) */
        va_list ap;
        int n;
        va_start(ap, fmt);
        n = vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        if (n < 0)
                return;
        if (n > 1024) {
                /* Cut at a character boundary, not inside a UTF-8
                 * sequence: buf[n] is the first byte left out. */
                n = 1024;
                while (n > 0 && ((unsigned char)buf[n] & 0xc0) == 0x80)
                        n--;
        }
        rd_kafka_header_remove(h, name);
        rd_kafka_header_add(h, name, -1, buf, n);
}

/* Headers of a DLQ or retry-tier copy: the original ones plus SPEC §3's.
 * The error message is cut at 1 KiB. Original coordinates and the first
 * attempt time are kept when the message already carries them (it came
 * from a retry tier). */
static rd_kafka_headers_t *copy_headers(kb_job_t *jb, const kb_out_t *out) {
        rd_kafka_headers_t *orig = NULL, *h;
        const rd_kafka_message_t *m = jb->jb_msg;
        char buf[64];
        if (rd_kafka_message_headers(m, &orig) == RD_KAFKA_RESP_ERR_NO_ERROR)
                h = rd_kafka_headers_copy(orig);
        else
                h = rd_kafka_headers_new(12);
        set_header(h, "kbatch-attempts", "%d", jb->jb_attempts);
        set_header(h, "kbatch-error-code", "%s", out->out_code);
        set_header(h, "kbatch-error-message", "%s",
                   out->out_msg ? out->out_msg : "");
        if (out->out_last_code[0])
                set_header(h, "kbatch-last-error-code", "%s",
                           out->out_last_code);
        else
                rd_kafka_header_remove(h, "kbatch-last-error-code");
        if (out->out_not_before)
                set_header(h, "kbatch-not-before", "%lld",
                           (long long)out->out_not_before);
        else
                rd_kafka_header_remove(h, "kbatch-not-before");
        if (!kb_kafka_header(m, "kbatch-original-topic", buf, sizeof(buf))) {
                rd_kafka_timestamp_type_t tt;
                set_header(h, "kbatch-original-topic", "%s",
                           rd_kafka_topic_name(m->rkt));
                set_header(h, "kbatch-original-partition", "%d",
                           (int)m->partition);
                set_header(h, "kbatch-original-offset", "%lld",
                           (long long)m->offset);
                set_header(h, "kbatch-original-timestamp", "%lld",
                           (long long)rd_kafka_message_timestamp(m, &tt));
        }
        set_header(h, "kbatch-first-attempt-at", "%lld",
                   (long long)jb->jb_first_at);
        set_header(h, "kbatch-worker", "%s", jb->jb_it->it_worker);
        if (jb->jb_traceparent[0]) /* one trace per item, across tiers */
                set_header(h, "traceparent", "%s", jb->jb_traceparent);
        if (jb->jb_lane == 0) /* stays in the priority lane (SPEC §12) */
                set_header(h, "kbatch-priority", "high");
        return h;
}

static void job_produce(kb_job_t *jb);
static int job_shrink_result(kb_job_t *jb, kb_out_t *out);
static void job_add_copy(kb_job_t *jb, const char *topic, const char *code,
                         const char *message, const char *last_code,
                         int64_t not_before);
static void job_complete(kb_job_t *jb, kb_result_t *res, int dlq,
                         const char *last_code);

/* Warnings about publishing that keeps failing, at most one per 10 s. */
static void produce_warn(const char *topic, rd_kafka_resp_err_t err,
                         const char *what) {
        static int64_t last;
        static int suppressed;
        int64_t now = kb_now_ms();
        if (now - last < 10000) {
                suppressed++;
                return;
        }
        kb_log(KB_LOG_WARN, "items", "%s to %s failed: %s (will retry%s)",
               what, topic, rd_kafka_err2str(err),
               suppressed ? "; more like it suppressed" : "");
        last = now;
        suppressed = 0;
}

static void produce_retry_later(kb_job_t *jb, int delay_ms) {
        kb_prodq_later(&jb->jb_it->it_produce_retryq, &jb->jb_pqn,
                       kb_now_ms() + delay_ms);
}

/* An output failed for good (kb_kafka_produce_err_permanent: too large
 * for its topic, refused). Producing it again would get the same answer
 * every 100 ms forever, so the item ends another way (issue 15):
 *   - a result: replaced by a smaller failed one (job_shrink_result); when
 *     that cannot be produced either, the item is dead-lettered with the
 *     reason instead;
 *   - a retry-tier copy: the item ends failed (invalid_item: too large to
 *     retry), without a DLQ copy (it would be as large);
 *   - a DLQ copy: dropped, with an error log; the result (when there is
 *     one) carries the error.
 * Returns 1 when the job was finished (freed): the caller must not touch
 * it again. */
static int job_output_failed(kb_job_t *jb, kb_out_t *out,
                             rd_kafka_resp_err_t err) {
        kb_items_t *it = jb->jb_it;
        const kb_conf_t *conf = it->it_conf;
        char msg[600], loc[160];
        int i;
        snprintf(loc, sizeof(loc), "%s[%d]@%lld",
                 rd_kafka_topic_name(jb->jb_msg->rkt),
                 (int)jb->jb_msg->partition, (long long)jb->jb_msg->offset);
        if (!out->out_copy) {
                if (job_shrink_result(jb, out))
                        return 0; /* the caller produces the smaller one */
                kb_log(KB_LOG_ERROR, "items",
                       "the result of %s cannot be published to %s: %s; "
                       "dead-lettering the item instead",
                       loc, out->out_topic, rd_kafka_err2str(err));
                out->out_done = 1;
                for (i = 0; i < jb->jb_out_cnt; i++)
                        if (jb->jb_outs[i].out_copy)
                                return 0; /* a DLQ copy goes already */
                snprintf(msg, sizeof(msg),
                         "the item's result cannot be published to %.200s: "
                         "%s",
                         out->out_topic, rd_kafka_err2str(err));
                job_add_copy(jb, conf->topics_name[KB_TOPIC_ITEMS_DLQ],
                             "response_too_large", msg, NULL, 0);
                return 0;
        }
        if (out->out_not_before) { /* a retry-tier copy */
                kb_result_t res;
                memset(&res, 0, sizeof(res));
                snprintf(msg, sizeof(msg),
                         "the item cannot be retried: its copy (%zu bytes "
                         "and headers) cannot be produced to %.200s: %s "
                         "(kafka.message_max_bytes, the topic's "
                         "max.message.bytes); last error: %.100s",
                         jb->jb_msg->len, out->out_topic,
                         rd_kafka_err2str(err), jb->jb_last_code);
                kb_log(KB_LOG_ERROR, "items", "%s: %s", loc, msg);
                res.status = KB_STATUS_FAILED;
                res.error_code = "invalid_item";
                res.error_message = msg;
                res.started_at = jb->jb_started_at;
                res.latency_ms = jb->jb_started_at
                                     ? kb_wall_ms() - jb->jb_started_at
                                     : -1;
                job_complete(jb, &res, 0, NULL);
                return 1; /* job_complete produced anew */
        }
        kb_log(KB_LOG_ERROR, "items",
               "%s cannot be dead-lettered to %s: %s; dropped%s", loc,
               out->out_topic, rd_kafka_err2str(err),
               jb->jb_out_cnt > 1 ? " (its result carries the error)" : "");
        kb_metrics_inc(KB_M_DLQ, "dlq_failed", NULL);
        out->out_done = 1;
        for (i = 0; i < jb->jb_out_cnt; i++)
                if (!jb->jb_outs[i].out_done)
                        return 0;
        job_finish(jb);
        return 1;
}

/* Hands every not-yet-acknowledged output of the job to the producer. */
static void job_produce(kb_job_t *jb) {
        kb_items_t *it = jb->jb_it;
        size_t max = (size_t)it->it_conf->kafka_message_max_bytes;
        int i;
        jb->jb_state = JOB_PRODUCING;
        for (i = 0; i < jb->jb_out_cnt; i++) {
                kb_out_t *out = &jb->jb_outs[i];
                rd_kafka_resp_err_t err;
                rd_kafka_headers_t *h;
                if (out->out_done || out->out_pending)
                        continue;
                if (!out->out_copy && out->out_len > max) {
                        /* Larger than the results topic allows: do not
                         * even try (the producer's limit is higher). */
                        if (job_output_failed(
                                jb, out, RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE))
                                return;
                        i = -1; /* outputs changed: walk them again */
                        continue;
                }
                if (out->out_copy) {
                        const rd_kafka_message_t *m = jb->jb_msg;
                        h = copy_headers(jb, out);
                        err = rd_kafka_producev(
                            it->it_producer, RD_KAFKA_V_TOPIC(out->out_topic),
                            RD_KAFKA_V_KEY(m->key, m->key_len),
                            RD_KAFKA_V_VALUE(m->payload, m->len),
                            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                            RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_OPAQUE(out),
                            RD_KAFKA_V_END);
                } else {
                        const char *key = jb->jb_item.batch_id;
                        h = rd_kafka_headers_new(2);
                        if (jb->jb_traceparent[0])
                                rd_kafka_header_add(h, "traceparent", -1,
                                                    jb->jb_traceparent, -1);
                        if (jb->jb_tracestate[0])
                                rd_kafka_header_add(h, "tracestate", -1,
                                                    jb->jb_tracestate, -1);
                        err = rd_kafka_producev(
                            it->it_producer, RD_KAFKA_V_TOPIC(out->out_topic),
                            RD_KAFKA_V_KEY(key, key ? strlen(key) : 0),
                            RD_KAFKA_V_VALUE(out->out_payload, out->out_len),
                            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                            RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_OPAQUE(out),
                            RD_KAFKA_V_END);
                }
                if (err) {
                        rd_kafka_headers_destroy(h);
                        if (kb_kafka_produce_err_permanent(err)) {
                                if (job_output_failed(jb, out, err))
                                        return;
                                i = -1; /* outputs changed: walk again */
                                continue;
                        }
                        if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
                                produce_warn(out->out_topic, err, "produce");
                        produce_retry_later(jb, 100);
                        continue;
                }
                out->out_pending = 1;
        }
}

static void async_recorded(kb_job_t *jb, rd_kafka_resp_err_t err);

static void dr_msg_cb(rd_kafka_t *rk, const rd_kafka_message_t *m,
                      void *opaque) {
        kb_out_t *out = m->_private;
        kb_job_t *jb;
        int i;
        if (!out)
                return;
        if (out->out_record) {
                async_recorded(out->out_job, m->err);
                return;
        }
        jb = out->out_job;
        out->out_pending = 0;
        if (m->err) {
                if (kb_kafka_produce_err_permanent(m->err)) {
                        if (!job_output_failed(jb, out, m->err))
                                job_produce(jb);
                        return;
                }
                produce_warn(out->out_topic, m->err, "delivery");
                produce_retry_later(jb, 1000);
                return;
        }
        out->out_done = 1;
        for (i = 0; i < jb->jb_out_cnt; i++)
                if (!jb->jb_outs[i].out_done)
                        return;
        job_finish(jb);
}

/* A result too large for a Kafka message (a large model response): replace
 * it, once, with a failed result without the output. Returns 1 when
 * replaced by one that fits kafka.message_max_bytes; 0 when it was replaced
 * before (no second try: that looped forever) or the smaller one does not
 * fit either (cannot happen with the item's strings bounded by the codec,
 * but checked rather than assumed). */
static int job_shrink_result(kb_job_t *jb, kb_out_t *out) {
        kb_result_t res;
        char msg[256], err[256], *payload;
        size_t len;
        long st = 0;
        if (out->out_copy || !out->out_payload || jb->jb_shrunk)
                return 0;
        jb->jb_shrunk = 1;
        memset(&res, 0, sizeof(res));
        snprintf(msg, sizeof(msg),
                 "the result (%zu bytes) is larger than a Kafka message may "
                 "be (kafka.message_max_bytes %d)",
                 out->out_len, jb->jb_it->it_conf->kafka_message_max_bytes);
        st = kb_http_req_status(&jb->jb_http);
        res.status = KB_STATUS_FAILED;
        res.http_status = (int)st;
        res.error_code = "response_too_large";
        res.error_message = msg;
        res.attempts = jb->jb_attempts;
        res.started_at = jb->jb_started_at;
        res.finished_at = kb_wall_ms();
        res.latency_ms = jb->jb_started_at ? res.finished_at - jb->jb_started_at
                                           : -1;
        res.worker = jb->jb_it->it_worker;
        payload = kb_serde_result_encode(
            jb->jb_it->it_serde, jb->jb_it->it_conf->topics_name[KB_TOPIC_RESULTS],
            &jb->jb_item, &res, &len, err, sizeof(err));
        if (!payload)
                return 0;
        if (len > (size_t)jb->jb_it->it_conf->kafka_message_max_bytes) {
                free(payload);
                return 0;
        }
        kb_log(KB_LOG_WARN, "items", "%s", msg);
        free(out->out_payload);
        out->out_payload = payload;
        out->out_len = len;
        return 1;
}

/* Adds the result as an output; payload is taken. */
static void job_add_result(kb_job_t *jb, char *payload, size_t len) {
        kb_out_t *out = &jb->jb_outs[jb->jb_out_cnt++];
        memset(out, 0, sizeof(*out));
        out->out_job = jb;
        out->out_topic = jb->jb_it->it_conf->topics_name[KB_TOPIC_RESULTS];
        out->out_payload = payload;
        out->out_len = len;
}

/* Adds a copy of the original message (to the DLQ or a retry tier). */
static void job_add_copy(kb_job_t *jb, const char *topic, const char *code,
                         const char *message, const char *last_code,
                         int64_t not_before) {
        kb_out_t *out = &jb->jb_outs[jb->jb_out_cnt++];
        memset(out, 0, sizeof(*out));
        out->out_job = jb;
        out->out_topic = topic;
        out->out_copy = 1;
        snprintf(out->out_code, sizeof(out->out_code), "%s", code);
        out->out_msg = strdup(message ? message : "");
        if (last_code)
                snprintf(out->out_last_code, sizeof(out->out_last_code), "%s",
                         last_code);
        out->out_not_before = not_before;
        if (topic == jb->jb_it->it_conf->topics_name[KB_TOPIC_ITEMS_DLQ])
                kb_metrics_inc(KB_M_DLQ, code, NULL);
}

/* Ends a job with a terminal result; with dlq, also a DLQ copy carrying
 * the result's error (and last_code, the error retries ended on). */
static void job_complete(kb_job_t *jb, kb_result_t *res, int dlq,
                         const char *last_code) {
        kb_items_t *it = jb->jb_it;
        const kb_conf_t *conf = it->it_conf;
        size_t len;
        char *payload;
        char err[512];
        res->worker = it->it_worker;
        res->attempts = jb->jb_attempts;
        res->route = jb->jb_called ? jb->jb_called->rt_conf->name : NULL;
        if (jb->jb_async && jb->jb_async->as_id) {
                res->job_id = jb->jb_async->as_id;
                res->job_polls = jb->jb_async->as_polls;
                res->job_wall_ms = kb_wall_ms() - jb->jb_async->as_submitted;
        }
        if (!res->finished_at)
                res->finished_at = kb_wall_ms();
        if (!jb->jb_item.operation && jb->jb_opname)
                jb->jb_item.operation = strdup(jb->jb_opname);
        payload = kb_serde_result_encode(it->it_serde,
                                         conf->topics_name[KB_TOPIC_RESULTS],
                                         &jb->jb_item, res, &len, err,
                                         sizeof(err));
        if (!payload) {
                kb_log(KB_LOG_ERROR, "items", "cannot encode a result: %s",
                       err);
                it->it_fatal = 1;
                return;
        }
        jb->jb_out_cnt = 0;
        job_add_result(jb, payload, len);
        kb_metrics_inc(KB_M_ITEMS_COMPLETED, kb_item_status_str(res->status),
                       NULL);
        kb_metric_observe(kb_metrics_get(KB_M_ITEM_SECONDS, NULL, NULL),
                          (double)(kb_wall_ms() - jb->jb_first_at) / 1000);
        if (dlq && res->error_code)
                job_add_copy(jb, conf->topics_name[KB_TOPIC_ITEMS_DLQ],
                             res->error_code, res->error_message, last_code, 0);
        {
                char att[16];
                const char *kv[] = {"batch_id", jb->jb_item.batch_id,
                                    "item_id", jb->jb_item.item_id,
                                    "attempt", att,
                                    "status", kb_item_status_str(res->status),
                                    "code", res->error_code,
                                    "traceparent", jb->jb_traceparent, NULL};
                snprintf(att, sizeof(att), "%d", jb->jb_attempts);
                kb_logkv(res->status == KB_STATUS_SUCCEEDED ? KB_LOG_DEBUG
                                                            : KB_LOG_INFO,
                         "items", kv, "item finished%s%s",
                         res->error_message ? ": " : "",
                         res->error_message ? res->error_message : "");
        }
        job_produce(jb);
}

/* Sends a message that cannot be addressed to the DLQ only. */
static void job_dead_letter(kb_job_t *jb, const char *code,
                            const char *message) {
        kb_items_t *it = jb->jb_it;
        char loc[128];
        jb->jb_out_cnt = 0;
        job_add_copy(jb, it->it_conf->topics_name[KB_TOPIC_ITEMS_DLQ], code,
                     message, NULL, 0);
        snprintf(loc, sizeof(loc), "%s[%d]@%lld",
                 rd_kafka_topic_name(jb->jb_msg->rkt),
                 (int)jb->jb_msg->partition, (long long)jb->jb_msg->offset);
        {
                const char *kv[] = {"code", code, "message_at", loc, NULL};
                kb_logkv(KB_LOG_WARN, "items", kv,
                         "message dead-lettered: %s", message);
        }
        job_produce(jb);
}

static void job_fail(kb_job_t *jb, kb_item_status_t st, const char *code,
                     const char *message) {
        kb_result_t res;
        memset(&res, 0, sizeof(res));
        res.status = st;
        res.error_code = code;
        res.error_message = message;
        res.latency_ms = -1;
        job_complete(jb, &res, 0, NULL);
}

/* ---- the model call ------------------------------------------------- */

static void call_done(kb_xfer_t *xf, CURLcode cc);

/* Starts the model call of a routed job. Returns 0, or -1 when the request
 * could not even be built (the job is then completed as failed). */
static int job_call(kb_job_t *jb) {
        kb_items_t *it = jb->jb_it;
        kb_route_t *rt = jb->jb_route;
        const kb_route_conf_t *rc = rt->rt_conf;
        const char *path = kb_route_path(rt, jb->jb_item.operation,
                                         &jb->jb_opname);
        kb_http_req_t *hr = &jb->jb_http;
        char url[4096];
        CURL *e;

        const char *body = jb->jb_body;
        if (!jb->jb_async || jb->jb_async->as_phase == KB_ASYNC_SUBMIT)
                jb->jb_attempts++; /* polls are not attempts */
        jb->jb_sent_ms = kb_now_ms();
        jb->jb_called = rt;
        kb_route_breaker_call(rt, jb->jb_sent_ms);
        if (!jb->jb_started_at)
                jb->jb_started_at = kb_wall_ms();
        snprintf(url, sizeof(url), "%s%s", rt->rt_base_url, path);
        e = kb_http_req_reset(hr, it->it_easypool,
                              (size_t)it->it_conf->http_max_response_bytes, 0);
        if (!e || !jb->jb_body)
                return -1;

        kb_route_refresh_auth(rt, kb_now_ms());
        kb_http_req_header(hr, "Content-Type: application/json");
        kb_http_req_header(hr, "Accept: application/json");
        kb_http_req_header(hr, "Expect:");
        hr->hr_hdrs = kb_route_headers(rt, hr->hr_hdrs);
        /* Never cut (kb_http_req_headerf): a batch_id of 128 and an item_id
         * of 256 characters take up to 1,153 bytes of UTF-8 (issue 15). */
        kb_http_req_headerf(hr, "Idempotency-Key: %s:%s",
                            jb->jb_item.batch_id, jb->jb_item.item_id);
        kb_http_req_headerf(hr, "kbatch-batch-id: %s", jb->jb_item.batch_id);
        kb_http_req_headerf(hr, "kbatch-item-id: %s", jb->jb_item.item_id);
        kb_http_req_headerf(hr, "kbatch-attempt: %d", jb->jb_attempts);
        if (jb->jb_traceparent[0])
                kb_http_req_headerf(hr, "traceparent: %s", jb->jb_traceparent);
        if (jb->jb_tracestate[0])
                kb_http_req_headerf(hr, "tracestate: %s", jb->jb_tracestate);

        jb->jb_xfer.xf_done = call_done;
        if (jb->jb_async && kb_async_request(jb->jb_async, rt, jb->jb_body,
                                             url, sizeof(url), &body))
                return -1;
        if (kb_http_req_prepare(hr, &jb->jb_xfer, url, body,
                                body ? strlen(body) : 0, (long)rc->timeout_ms,
                                (long)rc->connect_timeout_ms))
                return -1;
        curl_easy_setopt(e, CURLOPT_HTTP_VERSION, CURL_HTTP_VERSION_2TLS);
        /* Wait for a connection being set up rather than open another,
         * when it may carry HTTP/2 streams: only over TLS, where ALPN says
         * so at once. Over plain HTTP libcurl counts a connection as a
         * candidate until its first answer, so a slow call held back every
         * new one (a route timeout then failed them unsent). */
        if (!strncasecmp(rt->rt_base_url, "https://", 8))
                curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
        /* libcurl's receive buffer, one per transfer in flight (16 KiB by
         * default): 1 KiB, libcurl's minimum. A larger response only takes
         * more reads (a syscall each, next to a call of seconds); 4 KiB
         * were 40 MB of the heap at 10,000 in flight (massif). */
        curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 1024L);
        curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE,
                         (curl_off_t)it->it_conf->http_max_response_bytes);
        kb_http_req_tls(hr, rc->tls_verify, rc->ca_file);
        if (kb_http_req_start(hr, it->it_loop) != 0)
                return -1;
        route_call_started(jb);
        return 0;
}

/* ---- timers ----------------------------------------------------------- */

/* Puts a job on the timer list (sorted by due time; most arrive in order,
 * so the scan from the tail is short). */
static void timer_add(kb_items_t *it, kb_job_t *jb, job_timer_t what,
                      int64_t due) {
        kb_job_t *after;
        jb->jb_state = JOB_TIMER;
        jb->jb_timer = what;
        it->it_polling += what == TIMER_POLL;
        jb->jb_due = due;
        after = TAILQ_LAST(&it->it_timers, kb_timers_s);
        while (after && after->jb_due > due)
                after = TAILQ_PREV(after, kb_timers_s, jb_tlink);
        if (after)
                TAILQ_INSERT_AFTER(&it->it_timers, after, jb, jb_tlink);
        else
                TAILQ_INSERT_HEAD(&it->it_timers, jb, jb_tlink);
}

/* Takes a job off the timer list (it is then JOB_NEW). */
static void timer_remove(kb_items_t *it, kb_job_t *jb) {
        TAILQ_REMOVE(&it->it_timers, jb, jb_tlink);
        jb->jb_state = JOB_NEW;
        it->it_polling -= jb->jb_timer == TIMER_POLL;
        if (jb->jb_timer == TIMER_DUE) {
                it->it_held--;
                kb_partset_hold(it->it_ps, jb->jb_part, jb->jb_epoch, 0,
                                KB_HOLD_MAX);
        }
}

static int route_dispatch(kb_items_t *it, kb_route_t *rt);

/* The route's circuit is open (or a long Retry-After blocks it): its
 * waiting items go to fb, its fallback (SPEC §12), and fb dispatches. */
static int route_divert(kb_items_t *it, kb_route_t *rt, kb_route_t *fb) {
        kb_job_t *jb;
        while ((jb = route_peek(it, rt))) {
                route_dequeue(jb);
                kb_metric_add(kb_metrics_get(KB_M_ROUTE_FALLBACKS,
                                             rt->rt_conf->name,
                                             fb->rt_conf->name), 1);
                route_enqueue(fb, jb, 0);
        }
        return route_dispatch(it, fb);
}

/* Starts waiting jobs of a route while its limits allow. Returns the ms
 * until the route's rate limits may admit the next one (1000 when it is
 * waiting for a call to finish, or has nothing waiting). */
static int route_dispatch(kb_items_t *it, kb_route_t *rt) {
        kb_job_t *jb;
        int64_t wait = 1000, now = kb_now_ms();
        kb_route_t *fb;
        rstate_t *rs = rstate(it, rt);
        while ((jb = route_peek(it, rt))) {
                if (rt->rt_fallback && (fb = kb_route_select(rt, now)) != rt)
                        return route_divert(it, rt, fb);
                if (rs->rs_inflight >= rt->rt_limit)
                        break;
                if (!kb_route_admit(rt, jb->jb_est_tokens, now, &wait))
                        return (int)(wait < 1000 ? wait : 1000);
                kb_routeq_pop(&rs->rs_q); /* jb: its batch's turn ends */
                rs->rs_waiting--;
                jb->jb_state = JOB_NEW;
                if (jb->jb_item.deadline && kb_wall_ms() > jb->jb_item.deadline) {
                        job_fail(jb, KB_STATUS_EXPIRED, "expired",
                                 "deadline passed before the item started");
                        continue;
                }
                if (job_call(jb) != 0)
                        job_fail(jb, KB_STATUS_FAILED, "invalid_item",
                                 "could not build the model request");
        }
        return 1000;
}

/* Ends the items waiting in the route's queue whose deadline passed:
 * `expired` now, not when the route admits them (a route held back by its
 * rate limits or a long Retry-After may not for hours). */
static void route_expire_waiting(kb_items_t *it, kb_route_t *rt,
                                 int64_t wall_now) {
        kb_rq_node_t *n, *tmp;
        KB_ROUTEQ_FOREACH_SAFE(n, &rstate(it, rt)->rs_q, tmp) {
                kb_job_t *jb = RQN_JOB(n);
                if (!jb->jb_item.deadline || wall_now <= jb->jb_item.deadline)
                        continue;
                route_dequeue(jb);
                job_fail(jb, KB_STATUS_EXPIRED, "expired",
                         jb->jb_attempts
                             ? "deadline passed while the item waited to be "
                               "called again"
                             : "deadline passed before the item started");
        }
}

/* After a failed call: retries it (in process or through a retry tier) and
 * returns 1, or returns 0 when the failure is final. Exhausted retries end
 * here too (a failed result with max_attempts_exceeded and a DLQ copy), and
 * return 1. */
static int job_retry(kb_job_t *jb, kb_outcome_t oc, const char *msg) {
        kb_items_t *it = jb->jb_it;
        const kb_conf_t *conf = it->it_conf;
        kb_retry_decision_t d;
        int64_t ra = kb_http_req_retry_after_ms(&jb->jb_http, time(NULL));
        const char *code = kb_outcome_code(oc);
        char att[16];
        const char *kv[] = {"batch_id", jb->jb_item.batch_id, "item_id",
                            jb->jb_item.item_id, "attempt", att, "code", code,
                            "traceparent", jb->jb_traceparent, NULL};

        d = kb_retry_decide(conf, kb_outcome_retryable(oc), jb->jb_attempts,
                            jb->jb_inproc, jb->jb_tier, ra,
                            (uint32_t)random() ^ ((uint32_t)random() << 16));
        if (d.rd_action == KB_RETRY_FAIL)
                return 0;
        snprintf(jb->jb_last_code, sizeof(jb->jb_last_code), "%s", code);
        free(jb->jb_last_msg); /* on the heap: 1 KiB per job in flight */
        jb->jb_last_msg = strdup(msg);
        snprintf(att, sizeof(att), "%d", jb->jb_attempts);
        switch (d.rd_action) {
        case KB_RETRY_INPROC:
                jb->jb_inproc++;
                kb_metrics_retry(0);
                kb_logkv(KB_LOG_DEBUG, "items", kv,
                         "attempt %d failed (%s), retrying in %lld ms",
                         jb->jb_attempts, msg, (long long)d.rd_wait_ms);
                timer_add(it, jb, TIMER_BACKOFF, kb_now_ms() + d.rd_wait_ms);
                return 1;
        case KB_RETRY_TIER:
                kb_logkv(KB_LOG_INFO, "items", kv,
                         "attempt %d failed (%s), to retry tier %d (%lld ms)",
                         jb->jb_attempts, msg, d.rd_tier,
                         (long long)d.rd_wait_ms);
                kb_metrics_retry(d.rd_tier);
                jb->jb_out_cnt = 0;
                job_add_copy(jb, it->it_retry_topics[d.rd_tier - 1], code, msg,
                             NULL, kb_wall_ms() + d.rd_wait_ms);
                job_produce(jb);
                return 1;
        case KB_RETRY_EXHAUSTED: {
                kb_result_t res;
                char m[1200];
                memset(&res, 0, sizeof(res));
                snprintf(m, sizeof(m), "gave up after %d attempts; last: %s: %s",
                         jb->jb_attempts, code, msg);
                res.status = KB_STATUS_FAILED;
                res.error_code = "max_attempts_exceeded";
                res.error_message = m;
                res.started_at = jb->jb_started_at;
                res.finished_at = kb_wall_ms();
                res.latency_ms = res.finished_at - jb->jb_started_at;
                res.http_status = (int)kb_http_req_status(&jb->jb_http);
                job_complete(jb, &res, 1, code);
                return 1;
        }
        case KB_RETRY_FAIL:
                break;
        }
        return 0;
}

/* After a retryable failure on a route that now sends its items to its
 * fallback (circuit open, or a Retry-After longer than fallback_after_ms):
 * the item is called again there at once, rather than waiting for the
 * route (a retry tier would hold it for the Retry-After). Returns 1 then;
 * 0 when the item is not retried this way (no fallback, attempts used
 * up: job_retry decides). */
static int job_fallback(kb_job_t *jb, kb_outcome_t oc) {
        kb_route_t *rt = jb->jb_route, *fb;
        if (!rt->rt_fallback || !kb_outcome_retryable(oc) ||
            jb->jb_attempts >= jb->jb_it->it_conf->retry_max_attempts ||
            (fb = kb_route_select(rt, kb_now_ms())) == rt)
                return 0;
        kb_metric_add(kb_metrics_get(KB_M_ROUTE_FALLBACKS, rt->rt_conf->name,
                                     fb->rt_conf->name), 1);
        route_enqueue(fb, jb, 1);
        route_dispatch(jb->jb_it, fb);
        return 1;
}

static void async_answer(kb_job_t *jb, json_t *body);

static void call_done(kb_xfer_t *xf, CURLcode cc) {
        kb_job_t *jb = (kb_job_t *)xf;
        kb_items_t *it = jb->jb_it;
        kb_route_t *rt = jb->jb_route;
        kb_http_req_t *hr = &jb->jb_http;
        long status = 0;
        int body = 0;
        kb_jtext_usage_t usage;
        kb_outcome_t oc;
        kb_result_t res;
        char msg[1024];

        route_call_ended(jb, 0);
        memset(&res, 0, sizeof(res));
        status = kb_http_req_status(hr);
        /* The response is checked and embedded as text, not parsed. */
        if (cc == CURLE_OK && status >= 200 && status <= 299 && hr->hr_resp &&
            (body = kb_codec_output_scan(hr->hr_resp, &hr->hr_resp_len, &res,
                                         &usage)))
                kb_codec_usage_from_jtext(&usage, &res);
        oc = kb_http_classify(cc, status, hr->hr_too_large, body);
        kb_metrics_request_usage(rt->rt_conf->name, kb_outcome_code(oc),
                                 hr->hr_easy, oc == KB_OUT_OK ? &res : NULL);
        kb_route_on_outcome(
            rt,
            oc == KB_OUT_OK             ? KB_ROUTE_OK
            : oc == KB_OUT_RATE_LIMITED ? KB_ROUTE_THROTTLED
            : oc == KB_OUT_TIMEOUT      ? KB_ROUTE_TIMEOUT
                                        : KB_ROUTE_OTHER,
            kb_http_req_retry_after_ms(hr, time(NULL)),
            jb->jb_sent_ms, kb_now_ms());
        kb_route_breaker_record(rt, kb_breaker_signal_of(oc), kb_now_ms());

        res.http_status = (int)status;
        res.started_at = jb->jb_started_at;
        res.finished_at = kb_wall_ms();
        res.latency_ms = res.finished_at - jb->jb_started_at;
        if (jb->jb_async && oc == KB_OUT_OK) {
                /* A job API's answer is read by JSON Pointer: parsed. */
                json_t *ans = json_loadb(hr->hr_resp, hr->hr_resp_len, 0, NULL);
                async_answer(jb, ans);
                json_decref(ans);
                route_dispatch(it, rt);
                return;
        }
        if (oc == KB_OUT_OK) {
                res.status = KB_STATUS_SUCCEEDED;
                if (res.has_usage)
                        kb_route_correct_tokens(rt, jb->jb_est_tokens,
                                                res.total_tokens);
        } else {
                /* A failed call gives its estimate back: a 400 for a huge
                 * max_tokens must not hold the route's budget. */
                kb_route_correct_tokens(rt, jb->jb_est_tokens, 0);
                res.has_usage = 0;
                res.status = KB_STATUS_FAILED;
                res.error_code = kb_outcome_code(oc);
                if (cc != CURLE_OK && oc != KB_OUT_RESPONSE_TOO_LARGE)
                        snprintf(msg, sizeof(msg), "%s",
                                 hr->hr_errbuf[0] ? hr->hr_errbuf
                                                  : curl_easy_strerror(cc));
                else if (oc == KB_OUT_RESPONSE_TOO_LARGE)
                        snprintf(msg, sizeof(msg),
                                 "response body over %d bytes",
                                 it->it_conf->http_max_response_bytes);
                else
                        snprintf(msg, sizeof(msg), "HTTP %ld: %.900s", status,
                                 hr->hr_resp ? hr->hr_resp : "");
                res.error_message = msg;
                /* Keep a JSON error body from the provider as the output. */
                if (status && hr->hr_resp && !body)
                        kb_codec_output_scan(hr->hr_resp, &hr->hr_resp_len,
                                             &res, NULL);
                if (job_fallback(jb, oc) || job_retry(jb, oc, msg)) {
                        route_dispatch(it, rt);
                        return;
                }
        }
        job_complete(jb, &res, 0, NULL);
        route_dispatch(it, rt);
}

/* ---- async jobs (SPEC §12, async.h) -------------------------------- */

/* Asks the provider to cancel the job, when it has one running. */
static void async_abandon(kb_job_t *jb) {
        if (jb->jb_async && jb->jb_async->as_id && jb->jb_route)
                kb_async_cancel(jb->jb_it->it_loop, jb->jb_route,
                                jb->jb_async->as_id, jb->jb_body);
}

/* Ends an async job (its result carries the job: job_complete). */
static void async_complete(kb_job_t *jb, kb_item_status_t st,
                           const char *code, const char *msg, json_t *output) {
        kb_result_t res;
        long http = 0;
        memset(&res, 0, sizeof(res));
        http = kb_http_req_status(&jb->jb_http);
        res.status = st;
        res.http_status = (int)http;
        res.error_code = code;
        res.error_message = msg;
        res.output = output;
        res.started_at = jb->jb_started_at;
        res.finished_at = kb_wall_ms();
        res.latency_ms = res.finished_at - jb->jb_started_at;
        if (st == KB_STATUS_SUCCEEDED)
                kb_codec_usage_from_output(output, &res);
        job_complete(jb, &res, 0, NULL);
}

/* The job runs: poll it after the backoff, holding no slot. When the
 * worker stops or the item's partition goes, it is left for the next
 * owner, which resumes it from its record. */
static void async_wait(kb_job_t *jb) {
        if (jb->jb_it->it_stopping || !part_current(jb) ||
            jb->jb_part->pt_revoking) {
                job_destroy(jb);
                return;
        }
        /* Nothing held while it waits but the item: a worker may keep
         * tens of thousands of jobs running. */
        kb_http_req_release(&jb->jb_http, NULL);
        timer_add(jb->jb_it, jb, TIMER_POLL,
                  kb_now_ms() + kb_async_next_wait(
                                    jb->jb_async,
                                    &jb->jb_route->rt_conf->async));
}

/* The key of an item's job id record: <batch_id>:<item_index>. */
static void async_key(const kb_job_t *jb, char *key, size_t key_size) {
        snprintf(key, key_size, "%s:%lld", jb->jb_item.batch_id,
                 (long long)jb->jb_item.item_index);
}

/* The provider accepted the job: its id goes to the jobs topic, and the
 * job is polled only once the broker has it (async_recorded). */
static void async_record(kb_job_t *jb) {
        kb_items_t *it = jb->jb_it;
        kb_async_t *as = jb->jb_async;
        char key[512], *val;
        size_t len;
        rd_kafka_resp_err_t err;
        async_key(jb, key, sizeof(key));
        val = kb_jobstore_record(as->as_id, jb->jb_route->rt_conf->name,
                                 as->as_submitted, &len);
        memset(&jb->jb_rec, 0, sizeof(jb->jb_rec));
        jb->jb_rec.out_job = jb;
        jb->jb_rec.out_record = 1;
        err = val ? rd_kafka_producev(
                        it->it_producer,
                        RD_KAFKA_V_TOPIC(
                            it->it_conf->topics_name[KB_TOPIC_ITEMS_JOBS]),
                        RD_KAFKA_V_KEY(key, strlen(key)),
                        RD_KAFKA_V_VALUE(val, len),
                        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_FREE),
                        RD_KAFKA_V_OPAQUE(&jb->jb_rec), RD_KAFKA_V_END)
                  : RD_KAFKA_RESP_ERR__FAIL;
        if (err) {
                free(val);
                async_recorded(jb, err);
                return;
        }
        jb->jb_state = JOB_PRODUCING; /* not freed before the report */
}

/* The job id record was acknowledged (or could not be produced: the job
 * is polled anyway, and a crash now would submit it again). */
static void async_recorded(kb_job_t *jb, rd_kafka_resp_err_t err) {
        jb->jb_state = JOB_NEW;
        if (err)
                kb_log(KB_LOG_WARN, "async",
                       "the job id of %s:%lld could not be recorded (%s): a "
                       "crash would submit it again",
                       jb->jb_item.batch_id, (long long)jb->jb_item.item_index,
                       rd_kafka_err2str(err));
        else
                jb->jb_recorded = 1;
        async_wait(jb);
}

/* The item's result is acknowledged: its job id record goes (a
 * tombstone; fire and forget). */
static void async_forget(kb_job_t *jb) {
        kb_items_t *it = jb->jb_it;
        char key[512];
        async_key(jb, key, sizeof(key));
        rd_kafka_producev(
            it->it_producer,
            RD_KAFKA_V_TOPIC(it->it_conf->topics_name[KB_TOPIC_ITEMS_JOBS]),
            RD_KAFKA_V_KEY(key, strlen(key)), RD_KAFKA_V_VALUE(NULL, 0),
            RD_KAFKA_V_OPAQUE(NULL), RD_KAFKA_V_END);
}

/* A job this item submitted before (its id recorded, by this worker or
 * the partition's last owner): resume polling it now. Returns 1 then. */
static int async_resume(kb_job_t *jb) {
        kb_items_t *it = jb->jb_it;
        char key[512];
        const char *id;
        int64_t at = 0;
        if (!it->it_jobstore)
                return 0;
        async_key(jb, key, sizeof(key));
        if (!(id = kb_jobstore_get(it->it_jobstore, key,
                                   jb->jb_route->rt_conf->name, &at)) ||
            !(jb->jb_async->as_id = strdup(id)))
                return 0;
        jb->jb_async->as_phase = KB_ASYNC_POLL;
        jb->jb_async->as_submitted = at;
        jb->jb_started_at = at;
        jb->jb_attempts = jb->jb_attempts > 1 ? jb->jb_attempts : 1;
        jb->jb_recorded = 1;
        kb_log(KB_LOG_INFO, "async", "%s: resuming job %s", key, id);
        timer_add(it, jb, TIMER_POLL, kb_now_ms());
        return 1;
}

/* A 2xx JSON answer to an async call, by phase. */
static void async_answer(kb_job_t *jb, json_t *body) {
        kb_async_t *as = jb->jb_async;
        const kb_async_conf_t *ac = &jb->jb_route->rt_conf->async;
        char msg[1024];
        json_t *out;
        switch (as->as_phase) {
        case KB_ASYNC_SUBMIT:
                if (kb_async_on_submit(as, ac, body, kb_wall_ms(), msg,
                                       sizeof(msg)))
                        async_complete(jb, KB_STATUS_FAILED, "invalid_response",
                                       msg, body);
                else
                        async_record(jb);
                return;
        case KB_ASYNC_POLL:
                switch (kb_async_on_status(as, ac, body, msg, sizeof(msg))) {
                case KB_ASYNC_RUNNING:
                        async_wait(jb);
                        return;
                case KB_ASYNC_FAILED:
                        /* The provider ran the job and says it failed: not
                         * retried (SPEC §4 client_error). */
                        async_complete(jb, KB_STATUS_FAILED, "client_error",
                                       msg, body);
                        return;
                case KB_ASYNC_INVALID:
                        async_complete(jb, KB_STATUS_FAILED, "invalid_response",
                                       msg, body);
                        return;
                case KB_ASYNC_SUCCEEDED:
                        break;
                }
                if (ac->result_path) {
                        as->as_phase = KB_ASYNC_RESULT;
                        route_enqueue(jb->jb_route, jb, 1);
                        return; /* the caller dispatches */
                }
                break;
        case KB_ASYNC_RESULT:
                break;
        }
        if (!(out = kb_async_output(ac, body))) {
                snprintf(msg, sizeof(msg), "the answer has no output at %.200s",
                         ac->output_pointer);
                async_complete(jb, KB_STATUS_FAILED, "invalid_response", msg,
                               body);
                return;
        }
        async_complete(jb, KB_STATUS_SUCCEEDED, NULL, NULL, out);
}

static int job_cancelled(kb_job_t *jb);

/* A job's poll is due: unless its batch was cancelled, its deadline passed
 * (expired) or it ran longer than async.max_wait_ms (job_timeout; the
 * provider is asked to cancel it in all three cases), it goes to its
 * route's queue, ahead of fresh items. */
static void async_poll_due(kb_items_t *it, kb_job_t *jb) {
        const kb_async_conf_t *ac = &jb->jb_route->rt_conf->async;
        int64_t wall = kb_wall_ms();
        char msg[256];
        if (job_cancelled(jb))
                return;
        if (jb->jb_item.deadline && wall > jb->jb_item.deadline) {
                async_abandon(jb);
                job_fail(jb, KB_STATUS_EXPIRED, "expired",
                         "deadline passed while the job ran");
                return;
        }
        if (wall - jb->jb_async->as_submitted > ac->max_wait_ms) {
                async_abandon(jb);
                snprintf(msg, sizeof(msg),
                         "the job did not end within async.max_wait_ms (%d "
                         "ms)",
                         ac->max_wait_ms);
                job_fail(jb, KB_STATUS_FAILED, "job_timeout", msg);
                return;
        }
        route_enqueue(jb->jb_route, jb, 1);
        route_dispatch(it, jb->jb_route);
}

/* ---- consuming ---------------------------------------------------------- */

/* Ends the job `cancelled` (no model call) when its batch was cancelled;
 * returns 1 then. */
static int job_cancelled(kb_job_t *jb) {
        char msg[600];
        const char *why = jb->jb_it->it_control
                              ? kb_control_cancelled(jb->jb_it->it_control,
                                                     jb->jb_item.batch_id)
                              : NULL;
        if (!why)
                return 0;
        snprintf(msg, sizeof(msg), "batch cancelled%s%.500s", *why ? ": " : "",
                 why);
        async_abandon(jb);
        job_fail(jb, KB_STATUS_CANCELLED, "cancelled", msg);
        return 1;
}

/* 1 when a message held before decoding (a retry-tier message not due yet)
 * is an item of batch_id: its batch id decoded and compared whole (a search
 * of the raw bytes for the id made cancelling b1 release b12's items). 0
 * when it is not, or cannot be told now (it is then cancelled when it comes
 * due: releasing it early only saves the wait). */
static int held_in_batch(kb_items_t *it, kb_job_t *jb, const char *batch_id) {
        const rd_kafka_message_t *m = jb->jb_msg;
        kb_item_t item;
        char err[256];
        int r;
        if (!m->payload)
                return 0;
        memset(&item, 0, sizeof(item));
        kb_serde_item_decode(it->it_serde, rd_kafka_topic_name(m->rkt),
                             it->it_conf->topics_name[KB_TOPIC_RESULTS],
                             m->payload, m->len, 0, &item, err, sizeof(err));
        r = item.batch_id && !strcmp(item.batch_id, batch_id);
        kb_item_clear(&item);
        return r;
}

/* A batch was cancelled: its items that are waiting end now, calls in
 * flight are aborted; held retry-tier messages that may belong to it are
 * decoded now (job_start then cancels them). */
static void on_cancel(const char *batch_id, const char *reason, void *opaque) {
        kb_items_t *it = opaque;
        kb_job_t *jb, *tmp;
        LIST_FOREACH_SAFE(jb, &it->it_jobs, jb_all, tmp) {
                if (jb->jb_state == JOB_TIMER && jb->jb_timer != TIMER_BACKOFF &&
                    jb->jb_timer != TIMER_POLL) {
                        if (held_in_batch(it, jb, batch_id)) {
                                timer_remove(it, jb);
                                job_start(it, jb);
                        }
                        continue;
                }
                if (!jb->jb_item.batch_id || strcmp(jb->jb_item.batch_id, batch_id))
                        continue;
                switch (jb->jb_state) {
                case JOB_WAITING:
                        route_dequeue(jb);
                        break;
                case JOB_TIMER:
                        timer_remove(it, jb);
                        break;
                case JOB_CALLING:
                        kb_loop_remove(it->it_loop, jb->jb_http.hr_easy);
                        route_call_ended(jb, 1);
                        break;
                default:
                        continue; /* finished already, or being published */
                }
                job_cancelled(jb);
        }
        (void)reason;
}

/* Decodes, validates and routes a job, then queues its call. */
static void job_start(kb_items_t *it, kb_job_t *jb) {
        char err[512];
        const rd_kafka_message_t *m = jb->jb_msg;
        kb_codec_res_t cr;

        cr = kb_serde_item_decode(
            it->it_serde, rd_kafka_topic_name(m->rkt),
            it->it_conf->topics_name[KB_TOPIC_RESULTS], m->payload, m->len,
            (size_t)it->it_conf->worker_max_item_bytes, &jb->jb_item, err,
            sizeof(err));
        switch (cr) {
        case KB_CODEC_OK:
                break;
        case KB_CODEC_UNDECODABLE:
                job_dead_letter(jb, "deserialization_error", err);
                return;
        case KB_CODEC_UNADDRESSABLE:
                job_dead_letter(jb, "invalid_item", err);
                return;
        case KB_CODEC_INVALID:
                job_fail(jb, KB_STATUS_FAILED, "invalid_item", err);
                return;
        default: {
                /* KB_CODEC_RETRY (Avro): the schema registry cannot be
                 * reached or has not answered yet. The item waits
                 * (holding its slot, so the wait is bounded by
                 * worker.max_inflight) and is decoded again. */
                int64_t w = 500LL << (jb->jb_decode_tries < 5
                                          ? jb->jb_decode_tries
                                          : 5);
                jb->jb_decode_tries++;
                kb_item_clear(&jb->jb_item);
                if (jb->jb_decode_tries == 1 || jb->jb_decode_tries % 10 == 0)
                        kb_log(KB_LOG_WARN, "items",
                               "cannot decode yet (%s): retrying in %lld ms",
                               err, (long long)w);
                timer_add(it, jb, TIMER_DECODE, kb_now_ms() + w);
                return;
        }
        }
        if (job_cancelled(jb))
                return;
        if (jb->jb_item.deadline && kb_wall_ms() > jb->jb_item.deadline) {
                job_fail(jb, KB_STATUS_EXPIRED, "expired",
                         "deadline passed before the item started");
                return;
        }
        if (!(jb->jb_route = kb_routes_match(it->it_routes, jb->jb_item.model)) ||
            !(jb->jb_route = kb_route_select(jb->jb_route, kb_now_ms()))) {
                snprintf(err, sizeof(err), "no route matches model '%.200s'",
                         jb->jb_item.model);
                job_fail(jb, KB_STATUS_FAILED, "unknown_model", err);
                return;
        }
        if (!kb_route_path(jb->jb_route, jb->jb_item.operation,
                           &jb->jb_opname)) {
                snprintf(err, sizeof(err),
                         "operation '%.200s' is not known to the route of "
                         "model '%.200s'",
                         jb->jb_opname, jb->jb_item.model);
                jb->jb_opname = NULL;
                job_fail(jb, KB_STATUS_FAILED, "invalid_item", err);
                return;
        }
        if (!strcmp(jb->jb_route->rt_conf->mode, "async") &&
            !(jb->jb_async = kb_async_new())) {
                job_fail(jb, KB_STATUS_FAILED, "invalid_item", "out of memory");
                return;
        }
        /* The request body, once: also what the token estimate reads. */
        {
                int64_t cap;
                if (!(jb->jb_body = kb_codec_request_body(&jb->jb_item, &cap))) {
                        job_fail(jb, KB_STATUS_FAILED, "invalid_item",
                                 "could not encode the model request");
                        return;
                }
                jb->jb_est_tokens = kb_route_cap_estimate(
                    jb->jb_route,
                    kb_route_estimate_tokens(jb->jb_body, strlen(jb->jb_body),
                                             cap));
        }
        if (jb->jb_async && async_resume(jb))
                return;
        route_enqueue(jb->jb_route, jb, 0);
        route_dispatch(it, jb->jb_route);
}

/* How late after its kbatch-not-before a retry-tier item started. */
static void log_retry_due(kb_job_t *jb, int64_t late_ms) {
        char late[32];
        const char *kv[] = {"batch_id", jb->jb_item.batch_id, "late_ms", late,
                            NULL};
        kb_metric_observe(kb_metrics_get(KB_M_RETRY_LATENESS_SECONDS, NULL,
                                         NULL),
                          (double)late_ms / 1000);
        if (!kb_log_enabled(KB_LOG_DEBUG))
                return;
        snprintf(late, sizeof(late), "%lld", (long long)late_ms);
        kb_logkv(KB_LOG_DEBUG, "items", kv, "retry due: %s[%d]@%lld",
                 rd_kafka_topic_name(jb->jb_msg->rkt),
                 (int)jb->jb_msg->partition, (long long)jb->jb_msg->offset);
}

/* Reads what the message's headers carry over from earlier attempts, and
 * starts the job now or, for a retry-tier message not yet due, holds it
 * (pausing its partition: later messages of a tier are due later). */
static void job_begin(kb_items_t *it, kb_job_t *jb) {
        const rd_kafka_message_t *m = jb->jb_msg;
        const char *topic = rd_kafka_topic_name(m->rkt);
        char buf[64];
        int i;

        jb->jb_first_at = kb_wall_ms();
        kb_kafka_header(m, "traceparent", jb->jb_traceparent,
                        sizeof(jb->jb_traceparent));
        kb_kafka_header(m, "tracestate", jb->jb_tracestate,
                        sizeof(jb->jb_tracestate));
        /* W3C tracestate is printable ASCII; anything else (a CR or LF
         * would add headers to the model request) drops it. */
        for (i = 0; jb->jb_tracestate[i]; i++)
                if ((unsigned char)jb->jb_tracestate[i] < 0x20 ||
                    (unsigned char)jb->jb_tracestate[i] > 0x7e) {
                        jb->jb_tracestate[0] = '\0';
                        break;
                }
        /* No (valid) traceparent: the item starts its own trace. */
        if (kb_metrics_traceparent(jb->jb_traceparent,
                                   sizeof(jb->jb_traceparent)))
                jb->jb_tracestate[0] = '\0';
        for (i = 0; i < it->it_retry_cnt; i++)
                if (!strcmp(topic, it->it_retry_topics[i]))
                        jb->jb_tier = i + 1;
        if (jb->jb_tier) {
                int64_t nb = 0, now = kb_wall_ms();
                if (kb_kafka_header(m, "kbatch-first-attempt-at", buf,
                                    sizeof(buf)))
                        jb->jb_first_at = strtoll(buf, NULL, 10);
                if (kb_kafka_header(m, "kbatch-attempts", buf, sizeof(buf)))
                        jb->jb_attempts = atoi(buf);
                if (kb_kafka_header(m, "kbatch-not-before", buf, sizeof(buf)))
                        nb = strtoll(buf, NULL, 10);
                if (nb > now) {
                        timer_add(it, jb, TIMER_DUE, kb_now_ms() + (nb - now));
                        it->it_held++;
                        kb_partset_hold(it->it_ps, jb->jb_part, jb->jb_epoch,
                                        1, KB_HOLD_MAX);
                        return;
                }
                if (nb)
                        log_retry_due(jb, now - nb);
        }
        job_start(it, jb);
}

/* Serves the timer list: due jobs go on. Returns ms to the next one. */
static int timers_serve(kb_items_t *it, int64_t now) {
        kb_job_t *jb;
        while ((jb = TAILQ_FIRST(&it->it_timers)) && jb->jb_due <= now) {
                job_timer_t what = jb->jb_timer;
                timer_remove(it, jb);
                if (what == TIMER_BACKOFF) {
                        /* Ahead of fresh items: it already waited. */
                        route_enqueue(jb->jb_route, jb, 1);
                        route_dispatch(it, jb->jb_route);
                } else if (what == TIMER_POLL) {
                        async_poll_due(it, jb);
                } else {
                        if (what == TIMER_DUE)
                                log_retry_due(jb, now - jb->jb_due);
                        job_start(it, jb);
                }
        }
        jb = TAILQ_FIRST(&it->it_timers);
        return jb ? (int)(jb->jb_due - now) : 1000;
}

/* Moves pt's fetch position to offset. */
static void part_seek(kb_items_t *it, kb_part_t *pt, int64_t offset) {
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(l, pt->pt_topic, pt->pt_partition)
            ->offset = offset;
        rd_kafka_error_t *e = rd_kafka_seek_partitions(it->it_consumer, l, 5000);
        if (e) {
                kb_log(KB_LOG_WARN, "items", "%s[%d]: seek to %lld: %s",
                       pt->pt_topic, (int)pt->pt_partition, (long long)offset,
                       rd_kafka_error_string(e));
                rd_kafka_error_destroy(e);
        }
        rd_kafka_topic_partition_list_destroy(l);
}

/* Goes back to offset of pt (a message refused for now) and pauses the
 * partition until its offsets window (or its read-ahead) has room. */
static void seek_back(kb_items_t *it, kb_part_t *pt, int64_t offset) {
        kb_partset_pause(it->it_ps, pt, KB_PAUSE_WINDOW, 1);
        part_seek(it, pt, offset);
}

/* Tracks m's offset: 1 when m is to be processed, else 0 with m freed (done
 * before, already in flight, or beyond the window: sought back to). */
static int track(kb_items_t *it, kb_part_t *pt, rd_kafka_message_t *m) {
        kb_offsets_res_t r = kb_offsets_track(pt->pt_ot, m->offset);
        if (r == KB_OFFSETS_FULL) {
                /* Should not happen (we pause at the bound), but never drop:
                 * go back to it and wait for the window to move. */
                seek_back(it, pt, m->offset);
                rd_kafka_message_destroy(m);
                return 0;
        }
        if (r != KB_OFFSETS_OK) {
                /* Done before (commit metadata), or already in flight. */
                rd_kafka_message_destroy(m);
                return 0;
        }
        if (kb_offsets_window_full(pt->pt_ot))
                kb_partset_pause(it->it_ps, pt, KB_PAUSE_WINDOW, 1);
        return 1;
}

/* A job for m (tracked), started. Takes ownership of m. */
static void job_new(kb_items_t *it, kb_part_t *pt, rd_kafka_message_t *m) {
        kb_job_t *jb;
        if (!(jb = calloc(1, sizeof(*jb)))) {
                kb_log(KB_LOG_ERROR, "items", "out of memory");
                it->it_fatal = 1;
                rd_kafka_message_destroy(m);
                return;
        }
        jb->jb_it = it;
        jb->jb_msg = m;
        jb->jb_part = pt;
        jb->jb_epoch = pt->pt_epoch;
        jb->jb_offset = m->offset;
        jb->jb_item.item_index = -1;
        {
                /* The priority lane: its topic, or a retry-tier copy of
                 * one of its items. */
                char pr[8];
                jb->jb_lane =
                    strcmp(pt->pt_topic,
                           it->it_conf->topics_name[KB_TOPIC_ITEMS_PRIORITY]) &&
                    !(kb_kafka_header(m, "kbatch-priority", pr, sizeof(pr)) &&
                      !strcmp(pr, "high"));
        }
        it->it_prio_jobs += jb->jb_lane == 0;
        kb_part_work_begin(pt);
        LIST_INSERT_HEAD(&it->it_jobs, jb, jb_all);
        it->it_inflight++;
        kb_metrics_inc(KB_M_ITEMS_CONSUMED, NULL, NULL);
        job_begin(it, jb);
}

/* ---- read-ahead (worker.read_ahead; readahead.h) ---------------------- */

/* Below this many items waiting on its route, a batch is light: its items
 * are taken even while the queues are full (a small batch behind a large
 * one starts at once); a route's queue takes at most half its bound more
 * of them. */
#define KB_RA_LIGHT 32

/* A re-read that has read nothing for this long is looked at again. */
#define KB_RA_STALL_MS 10000

/* The read-ahead set of pt: partitions of the items topic only; made at
 * the first message of an assignment. NULL when off or out of memory. */
static kb_ra_t *ra_of(kb_items_t *it, kb_part_t *pt) {
        if (!it->it_ra_on ||
            strcmp(pt->pt_topic, it->it_conf->topics_name[KB_TOPIC_ITEMS]))
                return NULL;
        if (!pt->pt_ra)
                pt->pt_ra = kb_ra_new();
        return pt->pt_ra;
}

/* Items waiting in all route queues, and in the fullest one. */
static int ra_waiting(kb_items_t *it, int *most) {
        int waiting = 0;
        size_t r;
        *most = 0;
        for (r = 0; r < kb_routes_cnt(it->it_routes); r++) {
                int n = it->it_rstate[r].rs_waiting;
                waiting += n;
                if (n > *most)
                        *most = n;
        }
        return waiting;
}

/* Full: a route's queue at its bound, or the calls at the worker's limit
 * (the consume loop's own test). Room: well below both (hysteresis, so
 * that each read of deferred items fills a quarter of a queue). */
static int ra_full(kb_items_t *it) {
        int most, waiting = ra_waiting(it, &most);
        return most >= it->it_conf->worker_route_queue_max ||
               it->it_inflight - it->it_held - waiting - it->it_polling >=
                   it->it_conf->worker_max_inflight;
}

static int ra_calls_room(kb_items_t *it) {
        int most, waiting = ra_waiting(it, &most);
        return it->it_inflight - it->it_held - waiting - it->it_polling <
               it->it_conf->worker_max_inflight;
}

static int ra_room(kb_items_t *it) {
        int most, waiting = ra_waiting(it, &most);
        return most <= it->it_conf->worker_route_queue_max * 3 / 4 &&
               it->it_inflight - it->it_held - waiting - it->it_polling <
                   it->it_conf->worker_max_inflight;
}

/* Is m light (see KB_RA_LIGHT)? Decodes it; *batch_id gets its batch id
 * (malloc'd; NULL when it has none). Items that will fail without a call
 * (undecodable, no route) are light: they cost nothing to take. */
static int ra_light(kb_items_t *it, const rd_kafka_message_t *m,
                    char **batch_id) {
        kb_item_t item;
        char err[256];
        kb_codec_res_t cr;
        kb_route_t *rt;
        int light = 1;
        *batch_id = NULL;
        memset(&item, 0, sizeof(item));
        cr = kb_serde_item_decode(
            it->it_serde, rd_kafka_topic_name(m->rkt),
            it->it_conf->topics_name[KB_TOPIC_RESULTS], m->payload, m->len,
            (size_t)it->it_conf->worker_max_item_bytes, &item, err,
            sizeof(err));
        if (cr == KB_CODEC_OK && item.batch_id &&
            (rt = kb_routes_match(it->it_routes, item.model))) {
                int q = it->it_conf->worker_route_queue_max;
                rstate_t *rs = rstate(it, rt);
                light = kb_routeq_batch_cnt(&rs->rs_q, item.batch_id) <
                            KB_RA_LIGHT &&
                        rs->rs_waiting < q + q / 2;
                *batch_id = strdup(item.batch_id);
        } else if (cr != KB_CODEC_OK && cr != KB_CODEC_UNDECODABLE &&
                   cr != KB_CODEC_UNADDRESSABLE && cr != KB_CODEC_INVALID)
                light = 0; /* cannot be decoded yet: read it later */
        kb_item_clear(&item);
        return light;
}

/* Items of batch_id waiting on every route: kb_ra_pick reads the batch
 * with fewest first. */
static long ra_score(const char *batch_id, void *opaque) {
        kb_items_t *it = opaque;
        long n = 0;
        size_t r;
        for (r = 0; r < kb_routes_cnt(it->it_routes); r++)
                n += kb_routeq_batch_cnt(&it->it_rstate[r].rs_q, batch_id);
        return n;
}

/* Back to the front: the partition reads new offsets again. */
static void ra_front(kb_items_t *it, kb_part_t *pt, kb_ra_t *ra) {
        int64_t next = kb_offsets_next(pt->pt_ot);
        kb_ra_refill_stop(ra);
        kb_log(KB_LOG_DEBUG, "items", "%s[%d]: read-ahead: front at %lld (%zu deferred)",
               pt->pt_topic, (int)pt->pt_partition, (long long)next,
               kb_ra_cnt(ra));
        if (next >= 0)
                part_seek(it, pt, next);
}

/* Reads deferred offsets again: from the first of the batch with fewest
 * items waiting. The partition reads even with its window full. */
static void ra_refill(kb_items_t *it, kb_part_t *pt, kb_ra_t *ra) {
        int64_t off = kb_ra_pick(ra, ra_score, it);
        if (off < 0)
                return;
        kb_ra_refill_start(ra, off, kb_now_ms());
        kb_log(KB_LOG_DEBUG, "items", "%s[%d]: read-ahead: reading deferred from %lld (%zu deferred)",
               pt->pt_topic, (int)pt->pt_partition, (long long)off,
               kb_ra_cnt(ra));
        part_seek(it, pt, off);
        kb_partset_pause(it->it_ps, pt, KB_PAUSE_WINDOW, 0);
        kb_partset_pause(it->it_ps, pt, KB_PAUSE_GLOBAL, 0);
}

/* A message of a partition with read-ahead: 1 when handled here (m then
 * owned), 0 for the usual path. */
static int ra_handle(kb_items_t *it, kb_part_t *pt, kb_ra_t *ra,
                     rd_kafka_message_t *m) {
        char *batch = NULL;
        int64_t next = kb_offsets_next(pt->pt_ot);
        kb_ra_seen(ra, m->offset, kb_now_ms());
        if (kb_ra_has(ra, m->offset, NULL)) {
                if (ra_full(it)) {
                        /* Full again: it stays deferred. */
                        if (kb_ra_refilling(ra))
                                ra_front(it, pt, ra);
                        rd_kafka_message_destroy(m);
                        return 1;
                }
                kb_ra_take(ra, m->offset);
                it->it_ra_deferred--;
                job_new(it, pt, m); /* tracked when it was deferred */
                return 1;
        }
        if (next >= 0 && m->offset < next)
                return 0; /* taken or done: the tracker drops it */
        kb_ra_refill_stop(ra); /* reading new offsets */
        if (!ra_full(it))
                return 0;
        if (kb_ra_at_bound(ra)) {
                /* Wait here until deferred items were taken (ra_serve). */
                kb_partset_pause(it->it_ps, pt, KB_PAUSE_READAHEAD, 1);
                part_seek(it, pt, m->offset);
                rd_kafka_message_destroy(m);
                return 1;
        }
        /* Light items are taken while calls have room (the route queue
         * is what is full); at the worker's call limit everything waits. */
        if (ra_calls_room(it) && ra_light(it, m, &batch)) {
                free(batch);
                return 0;
        }
        if (!track(it, pt, m)) {
                free(batch);
                return 1;
        }
        if (kb_ra_defer(ra, m->offset, batch ? batch : "") == 0) {
                it->it_ra_deferred++;
                rd_kafka_message_destroy(m);
        } else
                job_new(it, pt, m); /* no room to defer: take it */
        free(batch);
        return 1;
}

static void ra_gone(int64_t offset, void *opaque) {
        kb_part_t *pt = opaque;
        kb_offsets_mark_done(pt->pt_ot, offset);
}

/* A re-read that began above where it was sent, or read nothing for a
 * while: deferred records may be gone (deleted by retention before they
 * were read again). The partition's low watermark tells; those below it
 * are given up, or the committed offset could never pass them. */
static void ra_check_gone(kb_items_t *it, kb_part_t *pt, kb_ra_t *ra) {
        int64_t lo = -1, hi = -1;
        size_t n;
        rd_kafka_resp_err_t err = rd_kafka_query_watermark_offsets(
            it->it_consumer, pt->pt_topic, pt->pt_partition, &lo, &hi, 500);
        if (err) {
                kb_log(KB_LOG_WARN, "items", "%s[%d]: read-ahead: watermarks: %s",
                       pt->pt_topic, (int)pt->pt_partition,
                       rd_kafka_err2str(err));
                return;
        }
        if ((n = kb_ra_drop_below(ra, lo, ra_gone, pt))) {
                it->it_ra_deferred -= n;
                kb_log(KB_LOG_ERROR, "items",
                       "%s[%d]: %zu deferred items were deleted (retention) "
                       "before they were read again: offsets below %lld are "
                       "lost",
                       pt->pt_topic, (int)pt->pt_partition, n, (long long)lo);
        }
}

/* Each serve: partitions re-read deferred offsets when there is room, and
 * go back to the front when full. */
static void ra_serve(kb_items_t *it) {
        size_t i;
        int room = -1, full = -1;
        int64_t now = kb_now_ms();
        for (i = 0; i < kb_partset_cnt(it->it_ps); i++) {
                kb_part_t *pt = kb_partset_get(it->it_ps, i);
                kb_ra_t *ra = pt->pt_ra;
                if (!ra || !pt->pt_assigned || pt->pt_revoking)
                        continue;
                if ((pt->pt_pause & KB_PAUSE_READAHEAD) &&
                    (!kb_ra_at_bound(ra) || !ra_full(it)))
                        kb_partset_pause(it->it_ps, pt, KB_PAUSE_READAHEAD, 0);
                if (!kb_ra_cnt(ra))
                        continue;
                if (kb_ra_skipped(ra))
                        ra_check_gone(it, pt, ra);
                if (kb_ra_stalled(ra, now, KB_RA_STALL_MS)) {
                        ra_check_gone(it, pt, ra);
                        kb_ra_refill_stop(ra); /* read again from the pick */
                        continue;
                }
                if (kb_ra_refilling(ra) && !kb_ra_pass_over(ra)) {
                        if (full < 0)
                                full = ra_full(it);
                        if (full)
                                ra_front(it, pt, ra);
                } else {
                        /* At the front, or a re-read that went past every
                         * deferred offset (those below where it started
                         * are left): read them again when there is room. */
                        if (room < 0)
                                room = ra_room(it);
                        if (room)
                                ra_refill(it, pt, ra);
                }
        }
}

/* The items partitions that read ahead are not paused for the global
 * limit: they defer what they cannot take. */
static void ra_unpause(kb_items_t *it) {
        size_t i;
        for (i = 0; i < kb_partset_cnt(it->it_ps); i++) {
                kb_part_t *pt = kb_partset_get(it->it_ps, i);
                if (pt->pt_assigned && ra_of(it, pt))
                        kb_partset_pause(it->it_ps, pt, KB_PAUSE_GLOBAL, 0);
        }
}

/* Forgets pt's deferred offsets (revocation: the next owner reads them). */
static void ra_forget(kb_items_t *it, kb_part_t *pt) {
        if (!pt->pt_ra)
                return;
        it->it_ra_deferred -= kb_ra_cnt(pt->pt_ra);
        kb_ra_clear(pt->pt_ra);
}

/* Takes ownership of m. */
static void handle_message(kb_items_t *it, rd_kafka_message_t *m) {
        kb_part_t *pt;
        kb_ra_t *ra;

        if (m->err) {
                if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                        kb_log(KB_LOG_WARN, "items", "consumer: %s",
                               rd_kafka_message_errstr(m));
                rd_kafka_message_destroy(m);
                return;
        }
        pt = kb_partset_find(it->it_ps, rd_kafka_topic_name(m->rkt),
                             m->partition);
        if (!pt || !pt->pt_assigned || pt->pt_revoking) {
                rd_kafka_message_destroy(m);
                return;
        }
        if ((ra = ra_of(it, pt)) && ra_handle(it, pt, ra, m))
                return;
        if (track(it, pt, m))
                job_new(it, pt, m);
}

/* ---- commits and rebalances ----------------------------------------- */

#define PQN_JOB(n) ((kb_job_t *)(void *)((char *)(n) - offsetof(kb_job_t, jb_pqn)))

static void retry_produce(kb_prodq_node_t *n) { job_produce(PQN_JOB(n)); }

/* Hands the jobs whose publishing is due again (not before `now`) to the
 * producer (kb_prodq_serve). Returns the ms until the next one is due. */
static int produce_retry_serve(kb_items_t *it, int64_t now) {
        return kb_prodq_serve(&it->it_produce_retryq, now, retry_produce);
}

/* ---- the role's part in revocations and shutdown (role.h) ----------- */

static int alive(void *self) { return ((kb_items_t *)self)->it_inflight; }

/* Shutdown, after the drain: what is still calling is aborted; what is
 * producing gets the flush. */
static void abort_calls(void *self) {
        kb_items_t *it = self;
        kb_job_t *jb, *tmp;
        LIST_FOREACH_SAFE(jb, &it->it_jobs, jb_all, tmp) {
                if (jb->jb_state != JOB_PRODUCING)
                        job_destroy(jb);
        }
}

/* Drops the jobs of the parts (all when pts is NULL) that have not started
 * a call (they will be consumed again by the partition's next owner). */
static void drop_unstarted(void *self, kb_part_t **pts, size_t n) {
        kb_items_t *it = self;
        kb_job_t *jb, *tmp;
        LIST_FOREACH_SAFE(jb, &it->it_jobs, jb_all, tmp) {
                if (kb_role_work_of(jb->jb_part, jb->jb_epoch, pts, n) &&
                    (jb->jb_state == JOB_WAITING || jb->jb_state == JOB_TIMER))
                        job_destroy(jb);
        }
}

/* Ends the part's epoch for its jobs: those still alive are abandoned
 * (calls aborted; a job whose result is with the producer stays until its
 * report, touching nothing). */
static void part_release(void *self, kb_part_t *pt) {
        kb_items_t *it = self;
        kb_job_t *jb, *tmp;
        ra_forget(it, pt);
        LIST_FOREACH_SAFE(jb, &it->it_jobs, jb_all, tmp) {
                if (jb->jb_part != pt || jb->jb_epoch != pt->pt_epoch)
                        continue;
                if (jb->jb_state == JOB_PRODUCING) {
                        kb_part_work_end(pt, jb->jb_epoch);
                        jb->jb_part = NULL; /* orphan: freed at its report */
                } else
                        job_destroy(jb);
        }
}

/* The priority lane (SPEC §12): its partitions' messages go to it_prioq,
 * which kb_items_serve polls before the consumer's queue. */
static void prio_forward(void *self,
                         const rd_kafka_topic_partition_list_t *parts) {
        kb_items_t *it = self;
        const char *prio = it->it_conf->topics_name[KB_TOPIC_ITEMS_PRIORITY];
        int i;
        for (i = 0; i < parts->cnt; i++) {
                rd_kafka_queue_t *q;
                if (strcmp(parts->elems[i].topic, prio))
                        continue;
                q = rd_kafka_queue_get_partition(it->it_consumer, prio,
                                                 parts->elems[i].partition);
                if (!q)
                        continue;
                rd_kafka_queue_forward(q, it->it_prioq);
                rd_kafka_queue_destroy(q);
        }
}

/* The priority lane is not paused for the global limit (it has its own
 * bound, it_prio_jobs): a worker full of normal items still fetches it. */
static void prio_unpause(kb_items_t *it) {
        const char *prio = it->it_conf->topics_name[KB_TOPIC_ITEMS_PRIORITY];
        size_t i;
        for (i = 0; i < kb_partset_cnt(it->it_ps); i++) {
                kb_part_t *pt = kb_partset_get(it->it_ps, i);
                if (pt->pt_assigned && !strcmp(pt->pt_topic, prio))
                        kb_partset_pause(it->it_ps, pt, KB_PAUSE_GLOBAL, 0);
        }
}

/* ---- operations: statistics, readiness, gauges (docs/operations.md) -- */

/* librdkafka statistics (statistics.interval.ms): the consumer's lag for
 * kbatch_consumer_lag; whether the producer has a broker connection. */
static int stats_cb(rd_kafka_t *rk, char *json, size_t len, void *opaque) {
        kb_items_t *it = opaque;
        kb_rdstats_t rs;
        if (kb_metrics_rdstats_parse(json, len, &rs) != 0)
                return 0;
        if (rd_kafka_type(rk) == RD_KAFKA_CONSUMER)
                kb_metric_set(kb_metrics_get(KB_M_CONSUMER_LAG, NULL, NULL),
                              rs.rs_lag < 0 ? 0 : (double)rs.rs_lag);
        else
                it->it_producer_up = rs.rs_brokers_up > 0 ? 1 : -1;
        return 0; /* librdkafka frees json */
}

int kb_items_readiness(kb_items_t *it, char *why, size_t why_size) {
        char sw[400];
        if (!kb_partset_assigned_once(it->it_ps)) {
                snprintf(why, why_size, "items: no partition assignment yet "
                         "(joining group %s)", it->it_conf->kafka_group_id);
                return 0;
        }
        /* Without statistics (statistics.interval.ms = 0): a metadata
         * answer was received once. */
        if (it->it_producer_up < 0 ||
            (it->it_producer_up == 0 &&
             rd_kafka_controllerid(it->it_producer, 0) < 0)) {
                snprintf(why, why_size, "items: the producer has no broker "
                         "connection");
                return 0;
        }
        if (!kb_serde_healthy(it->it_serde, sw, sizeof(sw))) {
                snprintf(why, why_size, "items: schema registry: %s", sw);
                return 0;
        }
        return 1;
}

/* Gauges of the pipeline and its routes (every turn: a few atomic stores). */
static void metrics_refresh(kb_items_t *it) {
        size_t i, n = kb_routes_cnt(it->it_routes);
        kb_metric_set(kb_metrics_get(KB_M_INFLIGHT, NULL, NULL),
                      it->it_inflight);
        kb_metric_set(kb_metrics_get(KB_M_DEFERRED, NULL, NULL),
                      (double)it->it_ra_deferred);
        for (i = 0; i < n; i++) {
                kb_route_t *rt = kb_routes_get(it->it_routes, i);
                const char *r = rt->rt_conf->name;
                kb_metric_set(kb_metrics_get(KB_M_ROUTE_INFLIGHT, r, NULL),
                              it->it_rstate[i].rs_inflight);
                kb_metric_set(kb_metrics_get(KB_M_ROUTE_CONCURRENCY_LIMIT, r,
                                             NULL),
                              rt->rt_limit);
                kb_metric_set(kb_metrics_get(KB_M_ROUTE_QUEUE, r, NULL),
                              it->it_rstate[i].rs_waiting);
                kb_metric_set(kb_metrics_get(KB_M_ROUTE_BREAKER, r, NULL),
                              kb_route_breaker_state(rt, kb_now_ms()));

        }
}

/* ---- construction ---------------------------------------------------------- */

/* Did kafka.properties set this librdkafka property? */
static int user_set(const kb_conf_t *conf, const char *name) {
        size_t i;
        for (i = 0; i < conf->kafka_property_cnt; i++)
                if (!strcmp(conf->kafka_properties[i].k, name))
                        return 1;
        return 0;
}

/* The items producer (idempotent, acks=all), delivery reports and errors
 * to us (also ro_producer_new: made again after a fatal error). */
static rd_kafka_t *producer_create(void *self, char *errstr,
                                   size_t errstr_size) {
        kb_items_t *it = self;
        rd_kafka_conf_t *kc = kb_kafka_conf_new(it->it_conf, "items-producer",
                                                errstr, errstr_size);
        if (!kc)
                return NULL;
        rd_kafka_conf_set_dr_msg_cb(kc, dr_msg_cb);
        rd_kafka_conf_set_stats_cb(kc, stats_cb);
        if (kb_kafka_conf_set(kc, "statistics.interval.ms",
                              kb_metrics_stats_interval(it->it_conf), errstr,
                              errstr_size)) {
                rd_kafka_conf_destroy(kc);
                return NULL;
        }
        kb_role_conf(&it->it_role, kc, 0);
        return kb_kafka_producer_new(it->it_conf, kc, errstr, errstr_size);
}

_Static_assert(offsetof(struct kb_items_s, it_role) == 0,
               "the role's clients' opaque is the kb_items_t");

static const kb_role_ops_t items_ops = {
        .ro_assign = prio_forward,
        .ro_drop_unstarted = drop_unstarted,
        .ro_reproduce = retry_produce,
        .ro_alive = alive,
        .ro_abort = abort_calls,
        .ro_release = part_release,
        .ro_producer_new = producer_create,
};

/* The consumer (manual offsets, the role's callbacks), its queues on the
 * loop's wake pipes, subscribed to the items topics. 0, or -1 + errstr. */
static int consumer_create(kb_items_t *it, char *errstr, size_t errstr_size) {
        const kb_conf_t *conf = it->it_conf;
        rd_kafka_conf_t *kc;
        rd_kafka_topic_partition_list_t *topics;
        rd_kafka_resp_err_t err;
        char num[32];
        int wfd;

        /* Consumer: manual offsets, bounded prefetch, eager range
         * assignment. Eager: a rebalance calls the revoke callback (drain,
         * synchronous commit) before rejoining. With cooperative-sticky
         * the rejoin comes first, and the periodic commits sent behind the
         * JoinGroup on the coordinator connection wait for the whole
         * rebalance, fail with the old generation and make librdkafka (2.0.2
         * and 2.8.0 alike, librdkafka#4059) drop the whole assignment: with
         * a crash every few seconds most work ran twice (docs/reliability.md,
         * chaos). */
        if (!(kc = kb_kafka_conf_new(conf, "items-consumer", errstr,
                                     errstr_size)))
                return -1;
        snprintf(num, sizeof(num), "%d", conf->worker_queue_max_kbytes);
        if (kb_kafka_conf_set(kc, "group.id", conf->kafka_group_id, errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "enable.auto.commit", "false", errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "enable.auto.offset.store", "false", errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "partition.assignment.strategy",
                              "range", errstr, errstr_size) ||
            kb_kafka_conf_set(kc, "auto.offset.reset", "earliest", errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "queued.max.messages.kbytes", num, errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "statistics.interval.ms",
                              kb_metrics_stats_interval(conf), errstr,
                              errstr_size) ||
            (!user_set(conf, "fetch.queue.backoff.ms") &&
             kb_kafka_conf_set(kc, "fetch.queue.backoff.ms", "10", errstr,
                               errstr_size)))
                goto fail;
        rd_kafka_conf_set_stats_cb(kc, stats_cb);
        kb_role_conf(&it->it_role, kc, 1);
        if (!(it->it_ps = kb_partset_new(
                  "items", (size_t)conf->worker_offsets_window,
                  conf->worker_commit_interval_ms)) ||
            (conf->worker_read_ahead > 0 &&
             kb_partset_set_wide(
                 it->it_ps, conf->topics_name[KB_TOPIC_ITEMS],
                 (size_t)(conf->worker_read_ahead > conf->worker_offsets_window
                              ? conf->worker_read_ahead
                              : conf->worker_offsets_window)))) {
                snprintf(errstr, errstr_size, "out of memory");
                goto fail;
        }
        it->it_ra_on = conf->worker_read_ahead > 0;
        it->it_role.ro_ps = it->it_ps;
        it->it_role.ro_drain_ms = conf->worker_revoke_drain_ms;
        if (!(it->it_consumer = rd_kafka_new(RD_KAFKA_CONSUMER, kc, errstr,
                                             errstr_size)))
                goto fail;
        kc = NULL;
        kb_partset_set_consumer(it->it_ps, it->it_consumer);
        rd_kafka_poll_set_consumer(it->it_consumer);
        it->it_cq = rd_kafka_queue_get_consumer(it->it_consumer);
        if ((wfd = kb_loop_wake_pipe(it->it_loop)) < 0) {
                snprintf(errstr, errstr_size, "pipe: %s", strerror(errno));
                goto fail;
        }
        rd_kafka_queue_io_event_enable(it->it_cq, wfd, "c", 1);
        if (!(it->it_prioq = rd_kafka_queue_new(it->it_consumer)) ||
            (wfd = kb_loop_wake_pipe(it->it_loop)) < 0) {
                snprintf(errstr, errstr_size, "priority queue: %s",
                         it->it_prioq ? strerror(errno) : "cannot create it");
                goto fail;
        }
        rd_kafka_queue_io_event_enable(it->it_prioq, wfd, "q", 1);

        topics = rd_kafka_topic_partition_list_new(2 + it->it_retry_cnt);
        rd_kafka_topic_partition_list_add(
            topics, conf->topics_name[KB_TOPIC_ITEMS], RD_KAFKA_PARTITION_UA);
        rd_kafka_topic_partition_list_add(
            topics, conf->topics_name[KB_TOPIC_ITEMS_PRIORITY],
            RD_KAFKA_PARTITION_UA);
        for (int i = 0; i < it->it_retry_cnt; i++)
                rd_kafka_topic_partition_list_add(topics,
                                                  it->it_retry_topics[i],
                                                  RD_KAFKA_PARTITION_UA);
        err = rd_kafka_subscribe(it->it_consumer, topics);
        rd_kafka_topic_partition_list_destroy(topics);
        if (err) {
                snprintf(errstr, errstr_size, "subscribe: %s",
                         rd_kafka_err2str(err));
                goto fail;
        }
        return 0;
fail:
        if (kc)
                rd_kafka_conf_destroy(kc);
        return -1;
}

kb_items_t *kb_items_new(const kb_conf_t *conf, kb_loop_t *loop, int *runtime,
                         char *errstr, size_t errstr_size) {
        kb_items_t *it = calloc(1, sizeof(*it));

        if (runtime)
                *runtime = 0;
        if (!it)
                return NULL;
        kb_role_init(&it->it_role, &items_ops, "items", loop, &it->it_fatal);
        it->it_conf = conf;
        it->it_loop = loop;
        it->it_worker = kb_conf_instance_id(conf);
        LIST_INIT(&it->it_jobs);
        kb_prodq_init(&it->it_produce_retryq);
        TAILQ_INIT(&it->it_timers);
        /* Enough for the calls that end and start in one turn of the
         * loop; NULL (no pool) works too: a handle per call. */
        it->it_easypool = kb_easypool_new(256);
        it->it_retry_cnt = (int)conf->retry_delay_cnt;
        it->it_retry_topics = calloc((size_t)it->it_retry_cnt + 1,
                                     sizeof(char *));
        for (int i = 0; i < it->it_retry_cnt; i++)
                it->it_retry_topics[i] = kb_kafka_retry_topic(conf, i + 1);

        if (!(it->it_routes = kb_routes_new(conf, errstr, errstr_size)))
                goto fail;
        if (!(it->it_rstate = calloc(kb_routes_cnt(it->it_routes) + 1,
                                     sizeof(*it->it_rstate)))) {
                snprintf(errstr, errstr_size, "out of memory");
                goto fail;
        }
        for (size_t r = 0; r < kb_routes_cnt(it->it_routes); r++)
                kb_routeq_init(&it->it_rstate[r].rs_q);
        if (!(it->it_control = kb_control_new(conf, loop, on_cancel, it, errstr,
                                              errstr_size))) {
                /* Its metadata request is the first to meet the cluster. */
                if (runtime)
                        *runtime = 1;
                goto fail;
        }
        /* Value formats; with avro, register (or look up) the results
         * schema now, asynchronously, so the first result does not wait. */
        for (size_t r = 0; r < conf->route_cnt; r++)
                if (!strcmp(conf->routes[r].mode, "async") &&
                    !it->it_jobstore &&
                    !(it->it_jobstore = kb_jobstore_new(conf, loop, errstr,
                                                        errstr_size))) {
                        if (runtime)
                                *runtime = 1;
                        goto fail;
                }
        if (!(it->it_serde = kb_serde_new(conf, loop, errstr, errstr_size)))
                goto fail;
        {
                char serr[512];
                kb_serde_prepare(it->it_serde,
                                 conf->topics_name[KB_TOPIC_RESULTS],
                                 KB_MSG_ITEM_RESULT, serr, sizeof(serr));
        }

        /* Producer: idempotent, acks=all; delivery reports on our loop. */
        if (kb_role_producer_start(&it->it_role, &it->it_producer, &it->it_pq,
                                   &it->it_produce_retryq, errstr,
                                   errstr_size) != 0)
                goto fail;

        if (consumer_create(it, errstr, errstr_size) != 0)
                goto fail;
        kb_kafka_check_limits(conf, it->it_producer);
        kb_log(KB_LOG_INFO, "items", "consuming %s in group %s (%zu routes)",
               conf->topics_name[KB_TOPIC_ITEMS], conf->kafka_group_id,
               kb_routes_cnt(it->it_routes));
        return it;
fail:
        kb_items_destroy(it);
        return NULL;
}

/* Pauses (or resumes) every assigned partition for the global limit. */

int kb_items_serve(kb_items_t *it, int64_t now) {
        const kb_conf_t *conf = it->it_conf;
        int max = conf->worker_max_inflight;
        int wait = 1000;

        kb_role_poll(it->it_producer);
        kb_role_producer_serve(&it->it_role, now);
        metrics_refresh(it);

        {
                int w = produce_retry_serve(it, now);
                if (w < wait)
                        wait = w;
        }

        {
                int w = kb_control_serve(it->it_control, now);
                if (w < wait)
                        wait = w;
                if (it->it_jobstore &&
                    (w = kb_jobstore_serve(it->it_jobstore, now)) < wait)
                        wait = w;
        }

        /* Consume while below the in-flight limit. Items held for a retry
         * tier, and items waiting in their route's queue, do not count: a
         * throttled route must not hold back the others (its queue has its
         * own bound). */
        if (!it->it_stopping && kb_control_ready(it->it_control) &&
            (!it->it_jobstore || kb_jobstore_ready(it->it_jobstore))) {
                int qfull, active;
                int waiting = routes_waiting(it, &qfull);
                active = it->it_inflight - it->it_held - waiting -
                         it->it_polling;
                /* The priority lane first, with its own bound (a full
                 * route queue of normal items does not hold it back). */
                {
                        rd_kafka_message_t *m;
                        int budget = 1000;
                        while (it->it_prio_jobs < max && budget-- > 0 &&
                               (m = rd_kafka_consume_queue(it->it_prioq, 0)))
                                handle_message(it, m);
                }
                int full = qfull || active >= max;
                if (!full) {
                        it->it_full_since_ms = 0;
                        if (kb_partset_all_paused(it->it_ps) && active < max * 3 / 4 + 1)
                                kb_partset_pause_all(it->it_ps, KB_PAUSE_GLOBAL, 0);
                }
                /* Full: with read-ahead the items partitions read on (what
                 * cannot be taken is deferred), the others pause at once;
                 * without, everything pauses if full for long, so that we
                 * keep polling (max.poll.interval.ms never expires,
                 * rebalances are served). */
                if (full) {
                        if (!it->it_full_since_ms)
                                it->it_full_since_ms = now;
                        /* Read-ahead is for full route queues: at the
                         * worker's call limit, a queue has no turns to
                         * share. */
                        int ra_mode = it->it_ra_on && qfull && active < max;
                        if ((ra_mode || now - it->it_full_since_ms >= 500) &&
                            !kb_partset_all_paused(it->it_ps)) {
                                kb_partset_pause_all(it->it_ps, KB_PAUSE_GLOBAL, 1);
                                prio_unpause(it);
                                if (ra_mode)
                                        ra_unpause(it);
                        }
                        if (wait > 100)
                                wait = 100;
                }
                if (!full || kb_partset_all_paused(it->it_ps)) {
                        rd_kafka_message_t *m;
                        /* Deferring decodes each item: a smaller slice. */
                        int budget = full ? 2000 : 10000;
                        while ((it->it_inflight - it->it_held - waiting -
                                        it->it_polling <
                                    max ||
                                kb_partset_all_paused(it->it_ps)) &&
                               budget-- > 0 &&
                               (m = rd_kafka_consumer_poll(it->it_consumer, 0)))
                                handle_message(it, m);
                        /* A slice used up: more is likely waiting, come
                         * back at once (after the transfers' turn). */
                        if (budget < 0)
                                wait = 0;
                }
                if (it->it_ra_on)
                        ra_serve(it);
        }

        {
                int w = timers_serve(it, now);
                size_t r;
                if (w < wait)
                        wait = w;
                int scan = now >= it->it_expire_scan_ms;
                int64_t wall = kb_wall_ms();
                if (scan)
                        it->it_expire_scan_ms = now + 200;
                /* Routes held back by their rate limits or a Retry-After. */
                for (r = 0; r < kb_routes_cnt(it->it_routes); r++) {
                        kb_route_t *rt = kb_routes_get(it->it_routes, r);
                        int waiting = it->it_rstate[r].rs_waiting;
                        if (scan && waiting)
                                route_expire_waiting(it, rt, wall);
                        if (waiting && (w = route_dispatch(it, rt)) < wait)
                                wait = w;
                }
        }

        /* Partitions paused by their offset window resume when it moved;
         * periodic commits. */
        {
                int w = kb_partset_serve(it->it_ps, now);
                if (w < wait)
                        wait = w;
        }
        return wait < 0 ? 0 : wait;
}

void kb_items_shutdown(kb_items_t *it, int drain_ms) {
        it->it_stopping = 1;
        kb_log(KB_LOG_INFO, "items", "stopping: %d items in flight, draining "
               "for up to %d ms", it->it_inflight, drain_ms);
        kb_role_stop(&it->it_role, it->it_consumer, kb_now_ms() + drain_ms);
        kb_log(KB_LOG_INFO, "items", "stopped (%d items abandoned)",
               it->it_inflight);
}

int kb_items_fatal(const kb_items_t *it) { return it->it_fatal; }

int kb_items_ready(const kb_items_t *it) {
        return kb_partset_assigned_once(it->it_ps);
}

void kb_items_destroy(kb_items_t *it) {
        kb_job_t *jb, *tmp;
        size_t i;
        if (!it)
                return;
        LIST_FOREACH_SAFE(jb, &it->it_jobs, jb_all, tmp) {
                job_destroy(jb);
        }
        if (it->it_cq)
                rd_kafka_queue_destroy(it->it_cq);
        if (it->it_prioq)
                rd_kafka_queue_destroy(it->it_prioq);
        if (it->it_pq)
                rd_kafka_queue_destroy(it->it_pq);
        if (it->it_consumer)
                kb_kafka_consumer_destroy(it->it_consumer);
        if (it->it_producer)
                rd_kafka_destroy(it->it_producer);
        for (i = 0; it->it_ps && i < kb_partset_cnt(it->it_ps); i++) {
                kb_ra_destroy(kb_partset_get(it->it_ps, i)->pt_ra);
                kb_partset_get(it->it_ps, i)->pt_ra = NULL;
        }
        kb_partset_destroy(it->it_ps);
        for (i = 0; it->it_retry_topics && i < (size_t)it->it_retry_cnt; i++)
                free(it->it_retry_topics[i]);
        free(it->it_retry_topics);
        kb_control_destroy(it->it_control);
        kb_jobstore_destroy(it->it_jobstore);
        for (i = 0; it->it_rstate && i < kb_routes_cnt(it->it_routes); i++)
                kb_routeq_clear(&it->it_rstate[i].rs_q);
        free(it->it_rstate);
        kb_routes_destroy(it->it_routes);
        kb_serde_destroy(it->it_serde);
        kb_easypool_destroy(it->it_easypool);
        free(it);
}
