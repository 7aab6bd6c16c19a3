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

#include "codec.h"
#include "http.h"
#include "kafka.h"
#include "log.h"
#include "offsets.h"
#include "routes.h"

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

typedef enum {
        JOB_NEW = 0,
        JOB_WAITING,
        JOB_CALLING,
        JOB_PRODUCING,
} job_state_t;

typedef struct kb_part_s kb_part_t;
typedef struct kb_job_s kb_job_t;

/* One message to publish for a job: its result, or its DLQ copy. */
typedef struct kb_out_s {
        kb_job_t *out_job;
        const char *out_topic;  /* borrowed from the config */
        char *out_payload;      /* owned; NULL for "copy the original" */
        size_t out_len;
        int out_dlq;            /* a DLQ copy: original key/value/headers */
        int out_pending;        /* produced, not yet acknowledged */
        int out_done;
} kb_out_t;

struct kb_job_s {
        kb_xfer_t jb_xfer; /* CURLOPT_PRIVATE points here */
        TAILQ_ENTRY(kb_job_s) jb_link;  /* route wait queue or produce retry */
        LIST_ENTRY(kb_job_s) jb_all;
        kb_items_t *jb_it;
        rd_kafka_message_t *jb_msg;     /* owned */
        kb_part_t *jb_part;
        uint64_t jb_epoch;              /* jb_part's epoch when consumed */
        int64_t jb_offset;
        kb_item_t jb_item;
        kb_route_t *jb_route;
        const char *jb_opname;
        job_state_t jb_state;
        CURL *jb_easy;
        struct curl_slist *jb_hdrs;
        char *jb_body;
        char *jb_resp;
        size_t jb_resp_len, jb_resp_cap;
        int jb_too_large;
        char jb_retry_after[64];
        char jb_errbuf[CURL_ERROR_SIZE];
        int jb_attempts;
        int64_t jb_started_at;   /* wall ms of the first call */
        int64_t jb_first_at;     /* wall ms when the job was first seen */
        char jb_traceparent[64];
        char jb_tracestate[512];
        kb_out_t jb_outs[KB_MAX_OUTS];
        int jb_out_cnt;
        int jb_in_retryq;        /* on it_produce_retryq */
        int64_t jb_produce_at;   /* mono ms: re-produce not before */
};

/* An assigned partition of a consumed topic. Never freed while the pipeline
 * lives: jobs refer to it with the epoch of their assignment, so a job that
 * outlives a revocation finds an epoch mismatch and touches nothing. */
struct kb_part_s {
        char *pt_topic;
        int32_t pt_partition;
        int pt_assigned;
        uint64_t pt_epoch;
        kb_offsets_t *pt_ot;
        int pt_jobs;          /* jobs of this epoch alive */
        int pt_window_paused; /* paused because the offset window is full */
        int pt_paused;        /* currently paused (any reason) */
        int pt_revoking;
};

struct kb_items_s {
        const kb_conf_t *it_conf;
        kb_loop_t *it_loop;
        rd_kafka_t *it_consumer;
        rd_kafka_t *it_producer;
        rd_kafka_queue_t *it_cq;  /* consumer queue */
        rd_kafka_queue_t *it_pq;  /* producer main queue */
        kb_routes_t *it_routes;
        const char *it_worker;    /* instance id */
        kb_part_t **it_parts;
        size_t it_part_cnt, it_part_cap;
        uint64_t it_epoch;
        LIST_HEAD(, kb_job_s) it_jobs;
        TAILQ_HEAD(, kb_job_s) it_produce_retryq;
        int it_inflight;          /* jobs alive */
        int64_t it_full_since_ms;
        int it_all_paused;        /* paused everything for the global limit */
        int it_stopping;          /* no more consuming */
        int it_fatal;
        int it_assigned_once;
        int64_t it_next_commit;
        int64_t it_commit_hold_until; /* mono ms: no periodic commits before */
        char it_meta[KB_OFFSETS_META_MAX + 1];
};

/* ---- partitions ---------------------------------------------------- */

static kb_part_t *part_find(kb_items_t *it, const char *topic, int32_t p,
                            int create) {
        size_t i;
        kb_part_t *pt;
        for (i = 0; i < it->it_part_cnt; i++) {
                pt = it->it_parts[i];
                if (pt->pt_partition == p && !strcmp(pt->pt_topic, topic))
                        return pt;
        }
        if (!create)
                return NULL;
        if (it->it_part_cnt == it->it_part_cap) {
                size_t cap = it->it_part_cap ? it->it_part_cap * 2 : 16;
                kb_part_t **n = realloc(it->it_parts, cap * sizeof(*n));
                if (!n)
                        return NULL;
                it->it_parts = n;
                it->it_part_cap = cap;
        }
        if (!(pt = calloc(1, sizeof(*pt))))
                return NULL;
        pt->pt_topic = strdup(topic);
        pt->pt_partition = p;
        it->it_parts[it->it_part_cnt++] = pt;
        return pt;
}

static int part_current(const kb_job_t *jb) {
        return jb->jb_part && jb->jb_part->pt_assigned &&
               jb->jb_part->pt_epoch == jb->jb_epoch;
}

static void part_pause(kb_items_t *it, kb_part_t *pt, int pause) {
        rd_kafka_topic_partition_list_t *l;
        if (!pt->pt_assigned || pt->pt_paused == pause)
                return;
        l = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(l, pt->pt_topic, pt->pt_partition);
        if (pause)
                rd_kafka_pause_partitions(it->it_consumer, l);
        else
                rd_kafka_resume_partitions(it->it_consumer, l);
        rd_kafka_topic_partition_list_destroy(l);
        pt->pt_paused = pause;
}

/* ---- jobs ------------------------------------------------------------ */

static void job_destroy(kb_job_t *jb) {
        kb_items_t *it = jb->jb_it;
        int i;
        if (jb->jb_state == JOB_WAITING && jb->jb_route) {
                TAILQ_REMOVE(&jb->jb_route->rt_waitq, jb, jb_link);
                jb->jb_route->rt_waiting--;
        }
        if (jb->jb_in_retryq)
                TAILQ_REMOVE(&it->it_produce_retryq, jb, jb_link);
        if (jb->jb_easy) {
                if (jb->jb_state == JOB_CALLING) {
                        kb_loop_remove(it->it_loop, jb->jb_easy);
                        if (jb->jb_route)
                                jb->jb_route->rt_inflight--;
                }
                curl_easy_cleanup(jb->jb_easy);
        }
        curl_slist_free_all(jb->jb_hdrs);
        free(jb->jb_body);
        free(jb->jb_resp);
        for (i = 0; i < jb->jb_out_cnt; i++)
                free(jb->jb_outs[i].out_payload);
        kb_item_clear(&jb->jb_item);
        if (jb->jb_msg)
                rd_kafka_message_destroy(jb->jb_msg);
        if (part_current(jb))
                jb->jb_part->pt_jobs--;
        LIST_REMOVE(jb, jb_all);
        it->it_inflight--;
        free(jb);
}

/* The job's last message was acknowledged: its offset is done. */
static void job_finish(kb_job_t *jb) {
        if (part_current(jb))
                kb_offsets_mark_done(jb->jb_part->pt_ot, jb->jb_offset);
        job_destroy(jb);
}

/* ---- producing ------------------------------------------------------- */

static void set_header(rd_kafka_headers_t *h, const char *name,
                       const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_header(rd_kafka_headers_t *h, const char *name,
                       const char *fmt, ...) {
        char buf[1100];
        va_list ap;
        int n;
        va_start(ap, fmt);
        n = vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        if (n < 0)
                return;
        if ((size_t)n >= sizeof(buf))
                n = sizeof(buf) - 1;
        rd_kafka_header_remove(h, name);
        rd_kafka_header_add(h, name, -1, buf, n);
}

/* Headers of a DLQ copy: the original ones plus SPEC §3's. The error
 * message is cut at 1 KiB. Original coordinates are kept when the message
 * already carries them (it came from a retry tier). */
static rd_kafka_headers_t *dlq_headers(kb_job_t *jb, const char *code,
                                       const char *message) {
        rd_kafka_headers_t *orig = NULL, *h;
        const rd_kafka_message_t *m = jb->jb_msg;
        char buf[64];
        if (rd_kafka_message_headers(m, &orig) == RD_KAFKA_RESP_ERR_NO_ERROR)
                h = rd_kafka_headers_copy(orig);
        else
                h = rd_kafka_headers_new(12);
        set_header(h, "kbatch-attempts", "%d", jb->jb_attempts);
        set_header(h, "kbatch-error-code", "%s", code);
        set_header(h, "kbatch-error-message", "%.1024s", message);
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
        if (!kb_kafka_header(m, "kbatch-first-attempt-at", buf, sizeof(buf)))
                set_header(h, "kbatch-first-attempt-at", "%lld",
                           (long long)(jb->jb_started_at ? jb->jb_started_at
                                                         : jb->jb_first_at));
        set_header(h, "kbatch-worker", "%s", jb->jb_it->it_worker);
        return h;
}

static void job_produce(kb_job_t *jb);

static void produce_retry_later(kb_job_t *jb, int delay_ms) {
        kb_items_t *it = jb->jb_it;
        jb->jb_produce_at = kb_now_ms() + delay_ms;
        if (!jb->jb_in_retryq) {
                TAILQ_INSERT_TAIL(&it->it_produce_retryq, jb, jb_link);
                jb->jb_in_retryq = 1;
        }
}

/* Hands every not-yet-acknowledged output of the job to the producer. */
static void job_produce(kb_job_t *jb) {
        kb_items_t *it = jb->jb_it;
        int i;
        jb->jb_state = JOB_PRODUCING;
        for (i = 0; i < jb->jb_out_cnt; i++) {
                kb_out_t *out = &jb->jb_outs[i];
                rd_kafka_resp_err_t err;
                rd_kafka_headers_t *h;
                if (out->out_done || out->out_pending)
                        continue;
                if (out->out_dlq) {
                        const rd_kafka_message_t *m = jb->jb_msg;
                        h = dlq_headers(jb, out->out_payload /* code */,
                                        out->out_payload +
                                            strlen(out->out_payload) + 1);
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
                        if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
                                kb_log(KB_LOG_WARN, "items",
                                       "produce to %s failed: %s (will retry)",
                                       out->out_topic, rd_kafka_err2str(err));
                        produce_retry_later(jb, 100);
                        continue;
                }
                out->out_pending = 1;
        }
}

static void dr_msg_cb(rd_kafka_t *rk, const rd_kafka_message_t *m,
                      void *opaque) {
        kb_out_t *out = m->_private;
        kb_job_t *jb;
        int i;
        if (!out)
                return;
        jb = out->out_job;
        out->out_pending = 0;
        if (m->err) {
                kb_log(KB_LOG_WARN, "items",
                       "delivery to %s failed: %s (will produce again)",
                       out->out_topic, rd_kafka_err2str(m->err));
                produce_retry_later(jb, 1000);
                return;
        }
        out->out_done = 1;
        for (i = 0; i < jb->jb_out_cnt; i++)
                if (!jb->jb_outs[i].out_done)
                        return;
        job_finish(jb);
}

/* Adds an output; payload is taken. */
static void job_add_out(kb_job_t *jb, const char *topic, char *payload,
                        size_t len, int dlq) {
        kb_out_t *out = &jb->jb_outs[jb->jb_out_cnt++];
        memset(out, 0, sizeof(*out));
        out->out_job = jb;
        out->out_topic = topic;
        out->out_payload = payload;
        out->out_len = len;
        out->out_dlq = dlq;
}

/* Ends a job with a terminal result (and optionally a DLQ copy). */
static void job_complete(kb_job_t *jb, kb_result_t *res, int also_dlq) {
        kb_items_t *it = jb->jb_it;
        const kb_conf_t *conf = it->it_conf;
        size_t len;
        char *payload;
        res->worker = it->it_worker;
        res->attempts = jb->jb_attempts;
        if (!res->finished_at)
                res->finished_at = kb_wall_ms();
        if (!jb->jb_item.operation && jb->jb_opname)
                jb->jb_item.operation = strdup(jb->jb_opname);
        payload = kb_codec_result_encode(&jb->jb_item, res, &len);
        if (!payload) {
                kb_log(KB_LOG_ERROR, "items", "out of memory encoding result");
                it->it_fatal = 1;
                return;
        }
        jb->jb_out_cnt = 0;
        job_add_out(jb, conf->topics_name[KB_TOPIC_RESULTS], payload, len, 0);
        if (also_dlq && res->error_code) {
                char *cm;
                size_t cl = strlen(res->error_code),
                       ml = strlen(res->error_message ? res->error_message : "");
                cm = malloc(cl + ml + 2);
                memcpy(cm, res->error_code, cl + 1);
                memcpy(cm + cl + 1, res->error_message ? res->error_message : "",
                       ml + 1);
                job_add_out(jb, conf->topics_name[KB_TOPIC_ITEMS_DLQ], cm, 0, 1);
        }
        {
                const char *kv[] = {"batch_id", jb->jb_item.batch_id,
                                    "item_id", jb->jb_item.item_id,
                                    "status", kb_item_status_str(res->status),
                                    "code", res->error_code, NULL};
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
        size_t cl = strlen(code), ml = strlen(message);
        char *cm = malloc(cl + ml + 2);
        char loc[128];
        memcpy(cm, code, cl + 1);
        memcpy(cm + cl + 1, message, ml + 1);
        jb->jb_out_cnt = 0;
        job_add_out(jb, it->it_conf->topics_name[KB_TOPIC_ITEMS_DLQ], cm, 0, 1);
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
        job_complete(jb, &res, 0);
}

/* ---- the model call ------------------------------------------------- */

static size_t write_cb(char *ptr, size_t size, size_t nmemb, void *ud) {
        kb_job_t *jb = ud;
        size_t n = size * nmemb;
        size_t max = (size_t)jb->jb_it->it_conf->http_max_response_bytes;
        if (jb->jb_resp_len + n > max) {
                jb->jb_too_large = 1;
                return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
        }
        if (jb->jb_resp_len + n + 1 > jb->jb_resp_cap) {
                size_t cap = jb->jb_resp_cap ? jb->jb_resp_cap : 4096;
                char *nb;
                while (cap < jb->jb_resp_len + n + 1)
                        cap *= 2;
                if (!(nb = realloc(jb->jb_resp, cap)))
                        return 0;
                jb->jb_resp = nb;
                jb->jb_resp_cap = cap;
        }
        memcpy(jb->jb_resp + jb->jb_resp_len, ptr, n);
        jb->jb_resp_len += n;
        jb->jb_resp[jb->jb_resp_len] = '\0';
        return n;
}

static size_t header_cb(char *buf, size_t size, size_t nitems, void *ud) {
        kb_job_t *jb = ud;
        size_t n = size * nitems;
        static const char ra[] = "retry-after:";
        if (n > sizeof(ra) - 1 && !strncasecmp(buf, ra, sizeof(ra) - 1)) {
                size_t vl = n - (sizeof(ra) - 1);
                const char *v = buf + sizeof(ra) - 1;
                while (vl && (*v == ' ' || *v == '\t'))
                        v++, vl--;
                while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n' ||
                              v[vl - 1] == ' '))
                        vl--;
                if (vl >= sizeof(jb->jb_retry_after))
                        vl = sizeof(jb->jb_retry_after) - 1;
                memcpy(jb->jb_retry_after, v, vl);
                jb->jb_retry_after[vl] = '\0';
        }
        return n;
}

static void call_done(kb_xfer_t *xf, CURLcode cc);

/* Starts the model call of a routed job. Returns 0, or -1 when the request
 * could not even be built (the job is then completed as failed). */
static int job_call(kb_job_t *jb) {
        kb_items_t *it = jb->jb_it;
        kb_route_t *rt = jb->jb_route;
        const kb_route_conf_t *rc = rt->rt_conf;
        const char *path = kb_route_path(rt, jb->jb_item.operation,
                                         &jb->jb_opname);
        char url[4096], line[1024];
        CURL *e;

        jb->jb_attempts++;
        if (!jb->jb_started_at)
                jb->jb_started_at = kb_wall_ms();
        snprintf(url, sizeof(url), "%s%s", rt->rt_base_url, path);
        if (!jb->jb_body) {
                if (!json_object_get(jb->jb_item.input, "model"))
                        json_object_set_new(jb->jb_item.input, "model",
                                            json_string(jb->jb_item.model));
                jb->jb_body = json_dumps(jb->jb_item.input, JSON_COMPACT);
        }
        if (!jb->jb_easy)
                jb->jb_easy = curl_easy_init();
        else
                curl_easy_reset(jb->jb_easy);
        e = jb->jb_easy;
        curl_slist_free_all(jb->jb_hdrs);
        jb->jb_hdrs = NULL;
        jb->jb_resp_len = 0;
        jb->jb_too_large = 0;
        jb->jb_retry_after[0] = '\0';
        jb->jb_errbuf[0] = '\0';
        if (!e || !jb->jb_body)
                return -1;

        kb_route_refresh_auth(rt, kb_now_ms());
        jb->jb_hdrs = curl_slist_append(jb->jb_hdrs,
                                        "Content-Type: application/json");
        jb->jb_hdrs = curl_slist_append(jb->jb_hdrs, "Accept: application/json");
        jb->jb_hdrs = curl_slist_append(jb->jb_hdrs, "Expect:");
        jb->jb_hdrs = kb_route_headers(rt, jb->jb_hdrs);
        snprintf(line, sizeof(line), "Idempotency-Key: %s:%s",
                 jb->jb_item.batch_id, jb->jb_item.item_id);
        jb->jb_hdrs = curl_slist_append(jb->jb_hdrs, line);
        snprintf(line, sizeof(line), "kbatch-batch-id: %s",
                 jb->jb_item.batch_id);
        jb->jb_hdrs = curl_slist_append(jb->jb_hdrs, line);
        snprintf(line, sizeof(line), "kbatch-item-id: %s", jb->jb_item.item_id);
        jb->jb_hdrs = curl_slist_append(jb->jb_hdrs, line);
        snprintf(line, sizeof(line), "kbatch-attempt: %d", jb->jb_attempts);
        jb->jb_hdrs = curl_slist_append(jb->jb_hdrs, line);
        if (jb->jb_traceparent[0]) {
                snprintf(line, sizeof(line), "traceparent: %s",
                         jb->jb_traceparent);
                jb->jb_hdrs = curl_slist_append(jb->jb_hdrs, line);
        }
        if (jb->jb_tracestate[0]) {
                snprintf(line, sizeof(line), "tracestate: %s",
                         jb->jb_tracestate);
                jb->jb_hdrs = curl_slist_append(jb->jb_hdrs, line);
        }
        if (!jb->jb_hdrs)
                return -1;

        jb->jb_xfer.xf_done = call_done;
        curl_easy_setopt(e, CURLOPT_URL, url);
        curl_easy_setopt(e, CURLOPT_PRIVATE, &jb->jb_xfer);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, jb->jb_body);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)strlen(jb->jb_body));
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, jb->jb_hdrs);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, jb);
        curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
        curl_easy_setopt(e, CURLOPT_HEADERDATA, jb);
        curl_easy_setopt(e, CURLOPT_ERRORBUFFER, jb->jb_errbuf);
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)rc->timeout_ms);
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                         (long)rc->connect_timeout_ms);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
        curl_easy_setopt(e, CURLOPT_HTTP_VERSION, CURL_HTTP_VERSION_2TLS);
        curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
        curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
        curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE,
                         (curl_off_t)it->it_conf->http_max_response_bytes);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, (long)rc->tls_verify);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, rc->tls_verify ? 2L : 0L);
        if (rc->ca_file && *rc->ca_file)
                curl_easy_setopt(e, CURLOPT_CAINFO, rc->ca_file);
        if (kb_loop_add(it->it_loop, e) != 0)
                return -1;
        jb->jb_state = JOB_CALLING;
        rt->rt_inflight++;
        return 0;
}

/* Starts waiting jobs of a route while it has room. */
static void route_dispatch(kb_items_t *it, kb_route_t *rt) {
        kb_job_t *jb;
        while (rt->rt_inflight < rt->rt_limit &&
               (jb = TAILQ_FIRST(&rt->rt_waitq))) {
                TAILQ_REMOVE(&rt->rt_waitq, jb, jb_link);
                rt->rt_waiting--;
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
}

static void call_done(kb_xfer_t *xf, CURLcode cc) {
        kb_job_t *jb = (kb_job_t *)xf;
        kb_items_t *it = jb->jb_it;
        kb_route_t *rt = jb->jb_route;
        long status = 0;
        json_t *body = NULL;
        kb_outcome_t oc;
        kb_result_t res;
        char msg[1024];

        rt->rt_inflight--;
        jb->jb_state = JOB_NEW;
        curl_easy_getinfo(jb->jb_easy, CURLINFO_RESPONSE_CODE, &status);
        if (cc == CURLE_OK && status >= 200 && status <= 299 && jb->jb_resp)
                body = json_loadb(jb->jb_resp, jb->jb_resp_len, 0, NULL);
        oc = kb_http_classify(cc, status, jb->jb_too_large, body != NULL);

        memset(&res, 0, sizeof(res));
        res.http_status = (int)status;
        res.started_at = jb->jb_started_at;
        res.finished_at = kb_wall_ms();
        res.latency_ms = res.finished_at - jb->jb_started_at;
        if (oc == KB_OUT_OK) {
                res.status = KB_STATUS_SUCCEEDED;
                res.output = body;
                kb_codec_usage_from_output(body, &res);
        } else {
                res.status = KB_STATUS_FAILED;
                res.error_code = kb_outcome_code(oc);
                if (cc != CURLE_OK && oc != KB_OUT_RESPONSE_TOO_LARGE)
                        snprintf(msg, sizeof(msg), "%s",
                                 jb->jb_errbuf[0] ? jb->jb_errbuf
                                                  : curl_easy_strerror(cc));
                else if (oc == KB_OUT_RESPONSE_TOO_LARGE)
                        snprintf(msg, sizeof(msg),
                                 "response body over %d bytes",
                                 it->it_conf->http_max_response_bytes);
                else
                        snprintf(msg, sizeof(msg), "HTTP %ld: %.900s", status,
                                 jb->jb_resp ? jb->jb_resp : "");
                res.error_message = msg;
                /* Keep a JSON error body from the provider as the output. */
                if (status && jb->jb_resp && !body)
                        body = json_loadb(jb->jb_resp, jb->jb_resp_len, 0, NULL);
                res.output = body;
        }
        job_complete(jb, &res, 0);
        json_decref(body);
        route_dispatch(it, rt);
}

/* ---- consuming ---------------------------------------------------------- */

static void job_start(kb_items_t *it, kb_job_t *jb) {
        char err[512];
        const rd_kafka_message_t *m = jb->jb_msg;
        kb_codec_res_t cr;
        char buf[64];

        jb->jb_first_at = kb_wall_ms();
        if (kb_kafka_header(m, "kbatch-first-attempt-at", buf, sizeof(buf)))
                jb->jb_first_at = strtoll(buf, NULL, 10);
        kb_kafka_header(m, "traceparent", jb->jb_traceparent,
                        sizeof(jb->jb_traceparent));
        kb_kafka_header(m, "tracestate", jb->jb_tracestate,
                        sizeof(jb->jb_tracestate));

        cr = kb_codec_item_decode(m->payload, m->len,
                                  (size_t)it->it_conf->worker_max_item_bytes,
                                  &jb->jb_item, err, sizeof(err));
        switch (cr) {
        case KB_CODEC_UNDECODABLE:
                job_dead_letter(jb, "deserialization_error", err);
                return;
        case KB_CODEC_UNADDRESSABLE:
                job_dead_letter(jb, "invalid_item", err);
                return;
        case KB_CODEC_INVALID:
                job_fail(jb, KB_STATUS_FAILED, "invalid_item", err);
                return;
        case KB_CODEC_OK:
                break;
        }
        if (jb->jb_item.deadline && kb_wall_ms() > jb->jb_item.deadline) {
                job_fail(jb, KB_STATUS_EXPIRED, "expired",
                         "deadline passed before the item started");
                return;
        }
        if (!(jb->jb_route = kb_routes_match(it->it_routes, jb->jb_item.model))) {
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
        jb->jb_state = JOB_WAITING;
        TAILQ_INSERT_TAIL(&jb->jb_route->rt_waitq, jb, jb_link);
        jb->jb_route->rt_waiting++;
        route_dispatch(it, jb->jb_route);
}

/* Takes ownership of m. */
static void handle_message(kb_items_t *it, rd_kafka_message_t *m) {
        kb_part_t *pt;
        kb_job_t *jb;
        kb_offsets_res_t r;

        if (m->err) {
                if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                        kb_log(KB_LOG_WARN, "items", "consumer: %s",
                               rd_kafka_message_errstr(m));
                rd_kafka_message_destroy(m);
                return;
        }
        pt = part_find(it, rd_kafka_topic_name(m->rkt), m->partition, 0);
        if (!pt || !pt->pt_assigned || pt->pt_revoking) {
                rd_kafka_message_destroy(m);
                return;
        }
        r = kb_offsets_track(pt->pt_ot, m->offset);
        if (r == KB_OFFSETS_FULL) {
                /* Should not happen (we pause at the bound), but never drop:
                 * go back to it and wait for the window to move. */
                rd_kafka_topic_partition_list_t *l =
                    rd_kafka_topic_partition_list_new(1);
                part_pause(it, pt, 1);
                pt->pt_window_paused = 1;
                rd_kafka_topic_partition_list_add(l, pt->pt_topic,
                                                  pt->pt_partition)
                    ->offset = m->offset;
                rd_kafka_error_t *e = rd_kafka_seek_partitions(it->it_consumer,
                                                               l, 5000);
                if (e)
                        rd_kafka_error_destroy(e);
                rd_kafka_topic_partition_list_destroy(l);
                rd_kafka_message_destroy(m);
                return;
        }
        if (r != KB_OFFSETS_OK) {
                /* Done before (commit metadata), or already in flight. */
                rd_kafka_message_destroy(m);
                return;
        }
        if (kb_offsets_window_full(pt->pt_ot)) {
                part_pause(it, pt, 1);
                pt->pt_window_paused = 1;
        }
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
        pt->pt_jobs++;
        LIST_INSERT_HEAD(&it->it_jobs, jb, jb_all);
        it->it_inflight++;
        job_start(it, jb);
}

/* ---- commits and rebalances ----------------------------------------- */

/* Commits the committable position of the given parts (all assigned when
 * only is NULL). sync: wait for the broker, and commit even when the
 * position did not change since the last (async) commit: that one may have
 * failed with a rebalance error we have not heard of yet. */
static void commit_parts(kb_items_t *it, kb_part_t **only, size_t only_cnt,
                         int sync) {
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(
            (int)(only ? only_cnt : it->it_part_cnt));
        size_t i, n = only ? only_cnt : it->it_part_cnt;
        rd_kafka_resp_err_t err;
        for (i = 0; i < n; i++) {
                kb_part_t *pt = only ? only[i] : it->it_parts[i];
                int64_t off;
                rd_kafka_topic_partition_t *tp;
                if (!pt->pt_assigned || !pt->pt_ot)
                        continue;
                if ((!kb_offsets_committable(pt->pt_ot, &off, it->it_meta,
                                             sizeof(it->it_meta)) &&
                     !sync) ||
                    off < 0)
                        continue;
                tp = rd_kafka_topic_partition_list_add(l, pt->pt_topic,
                                                       pt->pt_partition);
                tp->offset = off;
                tp->metadata_size = strlen(it->it_meta);
                tp->metadata = tp->metadata_size ? strdup(it->it_meta) : NULL;
                if (!tp->metadata)
                        tp->metadata_size = 0;
                /* Optimistic: a failed commit is retried with the next
                 * change (and at revocation/shutdown synchronously). */
                kb_offsets_committed(pt->pt_ot, off, it->it_meta);
        }
        if (l->cnt > 0) {
                err = rd_kafka_commit(it->it_consumer, l, !sync);
                if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET) {
                        kb_log(KB_LOG_WARN, "items", "commit failed: %s",
                               rd_kafka_err2str(err));
                        for (i = 0; i < n; i++) {
                                kb_part_t *pt = only ? only[i] : it->it_parts[i];
                                if (pt->pt_ot)
                                        kb_offsets_committed(pt->pt_ot, -1, "");
                        }
                }
        }
        rd_kafka_topic_partition_list_destroy(l);
}

static void commit_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                      rd_kafka_topic_partition_list_t *offsets, void *opaque) {
        kb_items_t *it = opaque;
        int i;
        if (err == RD_KAFKA_RESP_ERR_NO_ERROR ||
            err == RD_KAFKA_RESP_ERR__NO_OFFSET)
                return;
        kb_log(KB_LOG_WARN, "items", "offset commit failed: %s",
               rd_kafka_err2str(err));
        /* Forget what we thought was committed so it is sent again. */
        for (i = 0; offsets && i < offsets->cnt; i++) {
                kb_part_t *pt = part_find(it, offsets->elems[i].topic,
                                          offsets->elems[i].partition, 0);
                if (pt && pt->pt_ot)
                        kb_offsets_committed(pt->pt_ot, -1, "");
        }
}

static void producer_poll(kb_items_t *it) {
        while (rd_kafka_poll(it->it_producer, 0) > 0)
                ;
}

/* Drives transfers and delivery reports (never the consumer) until no job of
 * the given parts is alive or the deadline passes. */
static void drain(kb_items_t *it, kb_part_t **parts, size_t cnt,
                  int64_t deadline) {
        for (;;) {
                size_t i;
                int alive = 0;
                kb_job_t *jb, *tmp;
                producer_poll(it);
                /* Retry pending produces now rather than later. */
                TAILQ_FOREACH_SAFE(jb, &it->it_produce_retryq, jb_link, tmp) {
                        TAILQ_REMOVE(&it->it_produce_retryq, jb, jb_link);
                        jb->jb_in_retryq = 0;
                        job_produce(jb);
                }
                for (i = 0; parts && i < cnt; i++)
                        alive += parts[i]->pt_jobs;
                if (!parts)
                        alive = it->it_inflight;
                if (!alive || kb_now_ms() >= deadline)
                        return;
                kb_loop_drive(it->it_loop, 10);
        }
}

/* Drops the jobs of a part that have not started a call (they will be
 * consumed again by the partition's next owner). */
static void drop_unstarted(kb_items_t *it, kb_part_t *pt) {
        kb_job_t *jb, *tmp;
        LIST_FOREACH_SAFE(jb, &it->it_jobs, jb_all, tmp) {
                if (jb->jb_part == pt && jb->jb_epoch == pt->pt_epoch &&
                    jb->jb_state == JOB_WAITING)
                        job_destroy(jb);
        }
}

/* Ends the part's epoch: jobs still alive are abandoned (calls aborted; a
 * job whose result is with the producer stays until its report, touching
 * nothing). */
static void part_release(kb_items_t *it, kb_part_t *pt) {
        kb_job_t *jb, *tmp;
        LIST_FOREACH_SAFE(jb, &it->it_jobs, jb_all, tmp) {
                if (jb->jb_part != pt || jb->jb_epoch != pt->pt_epoch)
                        continue;
                if (jb->jb_state == JOB_PRODUCING) {
                        pt->pt_jobs--;
                        jb->jb_part = NULL; /* orphan: freed at its report */
                } else
                        job_destroy(jb);
        }
        kb_offsets_destroy(pt->pt_ot);
        pt->pt_ot = NULL;
        pt->pt_assigned = 0;
        pt->pt_revoking = 0;
        pt->pt_paused = 0;
        pt->pt_window_paused = 0;
        pt->pt_jobs = 0;
}

static void on_assign(kb_items_t *it, rd_kafka_topic_partition_list_t *parts) {
        rd_kafka_resp_err_t err;
        int i;
        rd_kafka_error_t *e;
        /* Where each partition was left, with the done-above map. A blocking
         * call, as allowed at rebalance. */
        err = rd_kafka_committed(it->it_consumer, parts, 30000);
        if (err)
                kb_log(KB_LOG_WARN, "items",
                       "fetching committed offsets failed: %s",
                       rd_kafka_err2str(err));
        for (i = 0; i < parts->cnt; i++) {
                rd_kafka_topic_partition_t *tp = &parts->elems[i];
                kb_part_t *pt = part_find(it, tp->topic, tp->partition, 1);
                if (!pt)
                        continue;
                pt->pt_assigned = 1;
                pt->pt_epoch = ++it->it_epoch;
                pt->pt_jobs = 0;
                pt->pt_paused = 0;
                pt->pt_window_paused = 0;
                pt->pt_revoking = 0;
                kb_offsets_destroy(pt->pt_ot);
                pt->pt_ot = kb_offsets_new((size_t)it->it_conf->worker_offsets_window);
                if (tp->offset >= 0) {
                        if (kb_offsets_reset(pt->pt_ot, tp->offset,
                                             tp->metadata, tp->metadata_size) < 0)
                                kb_log(KB_LOG_WARN, "items",
                                       "%s[%d]: ignoring unreadable commit "
                                       "metadata",
                                       tp->topic, (int)tp->partition);
                }
                kb_log(KB_LOG_INFO, "items", "assigned %s[%d] at offset %lld%s",
                       tp->topic, (int)tp->partition, (long long)tp->offset,
                       tp->metadata_size ? " (with done-above map)" : "");
        }
        if (!strcmp(rd_kafka_rebalance_protocol(it->it_consumer), "COOPERATIVE"))
                e = rd_kafka_incremental_assign(it->it_consumer, parts);
        else {
                e = NULL;
                err = rd_kafka_assign(it->it_consumer, parts);
                if (err)
                        kb_log(KB_LOG_ERROR, "items", "assign: %s",
                               rd_kafka_err2str(err));
        }
        if (e) {
                kb_log(KB_LOG_ERROR, "items", "incremental assign: %s",
                       rd_kafka_error_string(e));
                rd_kafka_error_destroy(e);
        }
        it->it_assigned_once = 1;
        it->it_commit_hold_until = 0;
        /* If we were paused for the global limit, the new ones start paused
         * too on the next serve. */
        it->it_all_paused = 0;
}

static void on_revoke(kb_items_t *it, rd_kafka_topic_partition_list_t *parts,
                      int lost) {
        kb_part_t **pts = calloc((size_t)parts->cnt + 1, sizeof(*pts));
        size_t n = 0, i;
        rd_kafka_error_t *e = NULL;
        for (i = 0; i < (size_t)parts->cnt; i++) {
                kb_part_t *pt = part_find(it, parts->elems[i].topic,
                                          parts->elems[i].partition, 0);
                if (pt && pt->pt_assigned) {
                        pt->pt_revoking = 1;
                        pts[n++] = pt;
                }
        }
        if (!lost) {
                int64_t deadline = kb_now_ms() + it->it_conf->worker_revoke_drain_ms;
                for (i = 0; i < n; i++)
                        drop_unstarted(it, pts[i]);
                drain(it, pts, n, deadline);
                commit_parts(it, pts, n, 1);
                /* A cooperative revoke is followed at once by a second
                 * rebalance. librdkafka < 2.8 declares the whole assignment
                 * lost when a commit races that rebalance's generation bump
                 * (librdkafka#4059), and the work done since the last commit
                 * would run again elsewhere: hold periodic commits until the
                 * rebalance ends with its assign callback. */
                it->it_commit_hold_until = kb_now_ms() + 30000;
        }
        for (i = 0; i < n; i++) {
                kb_log(KB_LOG_INFO, "items", "%s %s[%d]%s",
                       lost ? "lost" : "revoked", pts[i]->pt_topic,
                       (int)pts[i]->pt_partition,
                       pts[i]->pt_jobs ? " (with unfinished jobs)" : "");
                part_release(it, pts[i]);
        }
        free(pts);
        if (!strcmp(rd_kafka_rebalance_protocol(it->it_consumer), "COOPERATIVE"))
                e = rd_kafka_incremental_unassign(it->it_consumer, parts);
        else
                rd_kafka_assign(it->it_consumer, NULL);
        if (e) {
                kb_log(KB_LOG_WARN, "items", "incremental unassign: %s",
                       rd_kafka_error_string(e));
                rd_kafka_error_destroy(e);
        }
}

static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque) {
        kb_items_t *it = opaque;
        if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS)
                on_assign(it, parts);
        else if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS)
                on_revoke(it, parts, rd_kafka_assignment_lost(rk));
        else {
                kb_log(KB_LOG_ERROR, "items", "rebalance error: %s",
                       rd_kafka_err2str(err));
                on_revoke(it, parts, 1);
        }
}

static void error_cb(rd_kafka_t *rk, int err, const char *reason,
                     void *opaque) {
        kb_items_t *it = opaque;
        if (err == RD_KAFKA_RESP_ERR__FATAL) {
                char buf[512];
                rd_kafka_fatal_error(rk, buf, sizeof(buf));
                kb_log(KB_LOG_ERROR, "kafka", "fatal error: %s", buf);
                it->it_fatal = 1;
                kb_loop_stop_requested = 1;
                return;
        }
        kb_log(err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN ||
                       err == RD_KAFKA_RESP_ERR__AUTHENTICATION
                   ? KB_LOG_ERROR
                   : KB_LOG_WARN,
               "kafka", "%s: %s", rd_kafka_err2name(err), reason);
}

/* ---- construction ---------------------------------------------------------- */

kb_items_t *kb_items_new(const kb_conf_t *conf, kb_loop_t *loop, char *errstr,
                         size_t errstr_size) {
        kb_items_t *it = calloc(1, sizeof(*it));
        rd_kafka_conf_t *kc = NULL;
        rd_kafka_topic_partition_list_t *topics;
        rd_kafka_resp_err_t err;
        char num[32];
        int wfd;

        if (!it)
                return NULL;
        it->it_conf = conf;
        it->it_loop = loop;
        it->it_worker = kb_conf_instance_id(conf);
        LIST_INIT(&it->it_jobs);
        TAILQ_INIT(&it->it_produce_retryq);

        if (!(it->it_routes = kb_routes_new(conf, errstr, errstr_size)))
                goto fail;

        /* Producer: idempotent, acks=all; delivery reports on our loop. */
        if (!(kc = kb_kafka_conf_new(conf, "items-producer", errstr,
                                     errstr_size)))
                goto fail;
        rd_kafka_conf_set_dr_msg_cb(kc, dr_msg_cb);
        rd_kafka_conf_set_error_cb(kc, error_cb);
        rd_kafka_conf_set_opaque(kc, it);
        if (!(it->it_producer = kb_kafka_producer_new(conf, kc, errstr,
                                                      errstr_size)))
                goto fail;
        kc = NULL;
        it->it_pq = rd_kafka_queue_get_main(it->it_producer);
        if ((wfd = kb_loop_wake_pipe(loop)) < 0) {
                snprintf(errstr, errstr_size, "pipe: %s", strerror(errno));
                goto fail;
        }
        rd_kafka_queue_io_event_enable(it->it_pq, wfd, "p", 1);

        /* Consumer: manual offsets, cooperative-sticky, bounded prefetch. */
        if (!(kc = kb_kafka_conf_new(conf, "items-consumer", errstr,
                                     errstr_size)))
                goto fail;
        snprintf(num, sizeof(num), "%d", conf->worker_queue_max_kbytes);
        if (kb_kafka_conf_set(kc, "group.id", conf->kafka_group_id, errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "enable.auto.commit", "false", errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "enable.auto.offset.store", "false", errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "partition.assignment.strategy",
                              "cooperative-sticky", errstr, errstr_size) ||
            kb_kafka_conf_set(kc, "auto.offset.reset", "earliest", errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "queued.max.messages.kbytes", num, errstr,
                              errstr_size))
                goto fail;
        rd_kafka_conf_set_rebalance_cb(kc, rebalance_cb);
        rd_kafka_conf_set_offset_commit_cb(kc, commit_cb);
        rd_kafka_conf_set_error_cb(kc, error_cb);
        rd_kafka_conf_set_opaque(kc, it);
        if (!(it->it_consumer = rd_kafka_new(RD_KAFKA_CONSUMER, kc, errstr,
                                             errstr_size)))
                goto fail;
        kc = NULL;
        rd_kafka_poll_set_consumer(it->it_consumer);
        it->it_cq = rd_kafka_queue_get_consumer(it->it_consumer);
        if ((wfd = kb_loop_wake_pipe(loop)) < 0) {
                snprintf(errstr, errstr_size, "pipe: %s", strerror(errno));
                goto fail;
        }
        rd_kafka_queue_io_event_enable(it->it_cq, wfd, "c", 1);

        topics = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(
            topics, conf->topics_name[KB_TOPIC_ITEMS], RD_KAFKA_PARTITION_UA);
        err = rd_kafka_subscribe(it->it_consumer, topics);
        rd_kafka_topic_partition_list_destroy(topics);
        if (err) {
                snprintf(errstr, errstr_size, "subscribe: %s",
                         rd_kafka_err2str(err));
                goto fail;
        }
        it->it_next_commit = kb_now_ms() + conf->worker_commit_interval_ms;
        kb_log(KB_LOG_INFO, "items", "consuming %s in group %s (%zu routes)",
               conf->topics_name[KB_TOPIC_ITEMS], conf->kafka_group_id,
               kb_routes_cnt(it->it_routes));
        return it;
fail:
        if (kc)
                rd_kafka_conf_destroy(kc);
        kb_items_destroy(it);
        return NULL;
}

/* Pauses (or resumes) every assigned partition for the global limit. */
static void pause_all(kb_items_t *it, int pause) {
        size_t i;
        for (i = 0; i < it->it_part_cnt; i++) {
                kb_part_t *pt = it->it_parts[i];
                if (!pt->pt_assigned)
                        continue;
                if (!pause && pt->pt_window_paused)
                        continue;
                part_pause(it, pt, pause);
        }
        it->it_all_paused = pause;
}

int kb_items_serve(kb_items_t *it, int64_t now) {
        const kb_conf_t *conf = it->it_conf;
        int max = conf->worker_max_inflight;
        int wait = 1000;
        size_t i;
        kb_job_t *jb, *tmp;

        producer_poll(it);

        TAILQ_FOREACH_SAFE(jb, &it->it_produce_retryq, jb_link, tmp) {
                if (jb->jb_produce_at > now) {
                        int w = (int)(jb->jb_produce_at - now);
                        if (w < wait)
                                wait = w;
                        continue;
                }
                TAILQ_REMOVE(&it->it_produce_retryq, jb, jb_link);
                jb->jb_in_retryq = 0;
                job_produce(jb);
        }

        /* Consume while below the in-flight limit. */
        if (!it->it_stopping) {
                int full = it->it_inflight >= max;
                if (!full) {
                        it->it_full_since_ms = 0;
                        if (it->it_all_paused && it->it_inflight < max * 3 / 4 + 1)
                                pause_all(it, 0);
                }
                if (!full || it->it_all_paused) {
                        rd_kafka_message_t *m;
                        int budget = 10000;
                        while ((it->it_inflight < max || it->it_all_paused) &&
                               budget-- > 0 &&
                               (m = rd_kafka_consumer_poll(it->it_consumer, 0)))
                                handle_message(it, m);
                } else {
                        /* Full: if for long, pause everything so that we can
                         * keep polling (max.poll.interval.ms never expires,
                         * rebalances are served). */
                        if (!it->it_full_since_ms)
                                it->it_full_since_ms = now;
                        else if (now - it->it_full_since_ms >= 500)
                                pause_all(it, 1);
                        if (wait > 100)
                                wait = 100;
                }
        }

        /* Partitions paused by their offset window resume when it moved. */
        for (i = 0; i < it->it_part_cnt; i++) {
                kb_part_t *pt = it->it_parts[i];
                if (pt->pt_assigned && pt->pt_window_paused &&
                    !kb_offsets_window_full(pt->pt_ot)) {
                        pt->pt_window_paused = 0;
                        if (!it->it_all_paused)
                                part_pause(it, pt, 0);
                }
        }

        if (now >= it->it_next_commit && now >= it->it_commit_hold_until) {
                commit_parts(it, NULL, 0, 0);
                it->it_next_commit = now + conf->worker_commit_interval_ms;
        }
        if (it->it_next_commit - now < wait)
                wait = (int)(it->it_next_commit - now);
        return wait < 0 ? 0 : wait;
}

void kb_items_shutdown(kb_items_t *it, int drain_ms) {
        int64_t deadline = kb_now_ms() + drain_ms;
        kb_job_t *jb, *tmp;
        size_t i;
        rd_kafka_resp_err_t err;

        it->it_stopping = 1;
        kb_log(KB_LOG_INFO, "items", "stopping: %d items in flight, draining "
               "for up to %d ms", it->it_inflight, drain_ms);
        /* Stop fetching. */
        for (i = 0; i < it->it_part_cnt; i++)
                part_pause(it, it->it_parts[i], 1);
        /* Items not started yet are left for the next owner. */
        LIST_FOREACH_SAFE(jb, &it->it_jobs, jb_all, tmp) {
                if (jb->jb_state == JOB_WAITING)
                        job_destroy(jb);
        }
        drain(it, NULL, 0, deadline);
        /* Abort what is still calling; what is producing gets the flush. */
        LIST_FOREACH_SAFE(jb, &it->it_jobs, jb_all, tmp) {
                if (jb->jb_state != JOB_PRODUCING)
                        job_destroy(jb);
        }
        err = rd_kafka_flush(it->it_producer, 10000);
        if (err)
                kb_log(KB_LOG_WARN, "items", "flush: %s", rd_kafka_err2str(err));
        producer_poll(it);
        commit_parts(it, NULL, 0, 1);
        /* Leave the group: the revoke callback commits again (no-op). */
        err = rd_kafka_consumer_close(it->it_consumer);
        if (err)
                kb_log(KB_LOG_WARN, "items", "consumer close: %s",
                       rd_kafka_err2str(err));
        kb_log(KB_LOG_INFO, "items", "stopped (%d items abandoned)",
               it->it_inflight);
}

int kb_items_fatal(const kb_items_t *it) { return it->it_fatal; }

int kb_items_ready(const kb_items_t *it) {
        return it->it_assigned_once;
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
        if (it->it_pq)
                rd_kafka_queue_destroy(it->it_pq);
        if (it->it_consumer)
                rd_kafka_destroy(it->it_consumer);
        if (it->it_producer)
                rd_kafka_destroy(it->it_producer);
        for (i = 0; i < it->it_part_cnt; i++) {
                kb_offsets_destroy(it->it_parts[i]->pt_ot);
                free(it->it_parts[i]->pt_topic);
                free(it->it_parts[i]);
        }
        free(it->it_parts);
        kb_routes_destroy(it->it_routes);
        free(it);
}
