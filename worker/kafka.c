/* kafka: see kafka.h. */
#include "kafka.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "loop.h"
#include "offsets.h"
#include <jansson.h>

int kb_kafka_conf_set(rd_kafka_conf_t *kc, const char *name, const char *value,
                      char *errstr, size_t errstr_size) {
        char err[512];
        if (rd_kafka_conf_set(kc, name, value, err, sizeof(err)) !=
            RD_KAFKA_CONF_OK) {
                snprintf(errstr, errstr_size, "kafka property '%s': %s", name,
                         err);
                return -1;
        }
        return 0;
}

static void log_cb(const rd_kafka_t *rk, int level, const char *fac,
                   const char *buf) {
        /* librdkafka sends every connection failure it logs as FAIL to the
         * error callback too, where kbatch judges it (an error line for an
         * authentication failure or all brokers down, a warning for a
         * broker that went away): logged here as warnings, so that one
         * failure makes one error line, not three. */
        if (level < 4 && fac && !strcmp(fac, "FAIL"))
                level = 4;
        kb_log_rdkafka_cb(rk, level, fac, buf);
}

/* ---- authentication failures ------------------------------------------ */

static pthread_mutex_t auth_lock = PTHREAD_MUTEX_INITIALIZER;
static int auth_failed;    /* under auth_lock */
static int auth_reported;  /* under auth_lock */
static char auth_reason[512];

int kb_kafka_auth_failed(char *why, size_t why_size) {
        int r;
        pthread_mutex_lock(&auth_lock);
        r = auth_failed;
        if (r && why && why_size)
                snprintf(why, why_size,
                         "Kafka authentication failed: %s (check "
                         "kafka.properties: security_protocol, "
                         "sasl_mechanisms, sasl_username, sasl_password)",
                         auth_reason);
        pthread_mutex_unlock(&auth_lock);
        return r;
}

int kb_kafka_error(rd_kafka_t *rk, int err, const char *reason) {
        char why[800];
        int report = 0;
        (void)rk;
        pthread_mutex_lock(&auth_lock);
        if (err == RD_KAFKA_RESP_ERR__AUTHENTICATION && !auth_failed) {
                auth_failed = 1;
                snprintf(auth_reason, sizeof(auth_reason), "%s",
                         reason ? reason : "");
        }
        if (auth_failed && !auth_reported) {
                auth_reported = 1;
                report = 1;
        }
        err = auth_failed;
        pthread_mutex_unlock(&auth_lock);
        if (report) {
                kb_kafka_auth_failed(why, sizeof(why));
                kb_log(KB_LOG_ERROR, "kafka", "%s", why);
        }
        return err;
}

/* The error callback of clients whose owner sets none (the control reader,
 * CLI commands): records authentication failures for kb_kafka_metadata();
 * the rest is in librdkafka's own log lines. */
static void default_error_cb(rd_kafka_t *rk, int err, const char *reason,
                             void *opaque) {
        (void)opaque;
        if (err == RD_KAFKA_RESP_ERR__AUTHENTICATION) {
                pthread_mutex_lock(&auth_lock);
                if (!auth_failed) {
                        auth_failed = 1;
                        snprintf(auth_reason, sizeof(auth_reason), "%s",
                                 reason ? reason : "");
                }
                pthread_mutex_unlock(&auth_lock);
        }
        (void)rk;
}

/* Does a one-topic answer say the topic is still being set up (created a
 * moment ago and not yet known to this broker, or without a leader)? */
static int topic_settling(const struct rd_kafka_metadata *md) {
        const struct rd_kafka_metadata_topic *t;
        int i;
        if (!md || md->topic_cnt != 1)
                return 0;
        t = &md->topics[0];
        if (t->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ||
            t->err == RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE)
                return 1;
        if (t->err)
                return 0;
        if (t->partition_cnt < 1)
                return 1;
        for (i = 0; i < t->partition_cnt; i++)
                if (t->partitions[i].leader < 0)
                        return 1;
        return 0;
}

rd_kafka_resp_err_t kb_kafka_metadata(rd_kafka_t *rk, int all_topics,
                                      rd_kafka_topic_t *only,
                                      const struct rd_kafka_metadata **mdp,
                                      int timeout_ms, char *errstr,
                                      size_t errstr_size) {
        int64_t until = kb_now_ms() + timeout_ms;
        int step = 250; /* grows: a slow cluster still gets its answer */
        rd_kafka_resp_err_t err;
        for (;;) {
                int64_t left = until - kb_now_ms();
                err = rd_kafka_metadata(rk, all_topics, only, mdp,
                                        left < step ? (left > 0 ? (int)left : 1)
                                                    : step);
                if (!err && only && kb_now_ms() < until &&
                    !kb_loop_stop_requested && topic_settling(*mdp)) {
                        /* Just created, or its leader moving: not an
                         * answer yet. Its error is returned at the end. */
                        rd_kafka_metadata_destroy(*mdp);
                        *mdp = NULL;
                        usleep(100 * 1000);
                        continue;
                }
                if (!err)
                        return err;
                if (step < 4000)
                        step *= 2;
                *mdp = NULL;
                rd_kafka_poll(rk, 0); /* serves the error callback */
                if (kb_kafka_auth_failed(errstr, errstr_size)) {
                        pthread_mutex_lock(&auth_lock);
                        auth_reported = 1; /* the caller reports errstr */
                        pthread_mutex_unlock(&auth_lock);
                        return RD_KAFKA_RESP_ERR__AUTHENTICATION;
                }
                if (kb_now_ms() >= until || kb_loop_stop_requested) {
                        snprintf(errstr, errstr_size, "%s",
                                 rd_kafka_err2str(err));
                        return err;
                }
                if (err != RD_KAFKA_RESP_ERR__TIMED_OUT &&
                    err != RD_KAFKA_RESP_ERR__TRANSPORT)
                        usleep(100 * 1000);
        }
}

rd_kafka_conf_t *kb_kafka_conf_new(const kb_conf_t *conf, const char *role,
                                   char *errstr, size_t errstr_size) {
        rd_kafka_conf_t *kc = rd_kafka_conf_new();
        char cid[256];
        size_t i;
        snprintf(cid, sizeof(cid), "kbatch-%s-%s", role,
                 kb_conf_instance_id(conf));
        if (kb_kafka_conf_set(kc, "bootstrap.servers",
                              conf->kafka_bootstrap_servers, errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "client.id", cid, errstr, errstr_size))
                goto fail;
        for (i = 0; i < conf->kafka_property_cnt; i++)
                if (kb_kafka_conf_set(kc, conf->kafka_properties[i].k,
                                      conf->kafka_properties[i].v, errstr,
                                      errstr_size))
                        goto fail;
        rd_kafka_conf_set_log_cb(kc, log_cb);
        rd_kafka_conf_set_error_cb(kc, default_error_cb);
        return kc;
fail:
        rd_kafka_conf_destroy(kc);
        return NULL;
}

int kb_kafka_produce_err_permanent(rd_kafka_resp_err_t err) {
        switch (err) {
        case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
        case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
        case RD_KAFKA_RESP_ERR_INVALID_RECORD:
        case RD_KAFKA_RESP_ERR_INVALID_MSG:
        case RD_KAFKA_RESP_ERR_INVALID_MSG_SIZE:
        case RD_KAFKA_RESP_ERR__INVALID_ARG:
        case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
        case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
                return 1;
        default:
                return 0;
        }
}

int kb_kafka_consumer_close(rd_kafka_t *rk, int timeout_ms, const char *who) {
        rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
        rd_kafka_error_t *e = rd_kafka_consumer_close_queue(rk, q);
        int64_t until = kb_now_ms() + timeout_ms;
        int closed;
        if (e) {
                kb_log(KB_LOG_WARN, who, "consumer close: %s",
                       rd_kafka_error_string(e));
                rd_kafka_error_destroy(e);
        }
        /* Serves the rebalance callbacks of the close, as
         * rd_kafka_consumer_close() does, but not forever: a close after
         * an UNKNOWN_MEMBER commit error could wait without end, and
         * SIGTERM must finish (the group drops the member at its session
         * timeout anyway). */
        while (!(closed = rd_kafka_consumer_closed(rk)) &&
               kb_now_ms() < until) {
                rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 100);
                if (!ev)
                        continue;
                /* The owner drained and committed before: a revocation
                 * only lets the partitions go, an assignment is refused. */
                if (rd_kafka_event_type(ev) == RD_KAFKA_EVENT_REBALANCE) {
                        const char *proto = rd_kafka_rebalance_protocol(rk);
                        int coop = proto && !strcmp(proto, "COOPERATIVE");
                        rd_kafka_resp_err_t re = rd_kafka_event_error(ev);
                        rd_kafka_topic_partition_list_t *parts =
                            rd_kafka_event_topic_partition_list(ev);
                        if (coop) {
                                rd_kafka_error_t *ue =
                                    re == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS
                                        ? NULL
                                        : rd_kafka_incremental_unassign(rk,
                                                                        parts);
                                if (ue)
                                        rd_kafka_error_destroy(ue);
                        } else
                                rd_kafka_assign(rk, NULL);
                }
                rd_kafka_event_destroy(ev);
        }
        rd_kafka_queue_destroy(q);
        if (!closed)
                kb_log(KB_LOG_WARN, who,
                       "the consumer did not leave its group within %d ms; "
                       "going on (the group drops it at its session timeout)",
                       timeout_ms);
        return closed ? 0 : -1;
}

void kb_kafka_consumer_destroy(rd_kafka_t *rk) {
        if (!rk)
                return;
        /* A close that timed out is not tried again here. */
        rd_kafka_destroy_flags(rk, rd_kafka_consumer_closed(rk)
                                       ? 0
                                       : RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
}

/* Sets a property unless kafka.properties already did. */
static int set_default(const kb_conf_t *conf, rd_kafka_conf_t *kc,
                       const char *name, const char *value, char *errstr,
                       size_t errstr_size) {
        size_t i;
        for (i = 0; i < conf->kafka_property_cnt; i++)
                if (!strcmp(conf->kafka_properties[i].k, name))
                        return 0;
        return kb_kafka_conf_set(kc, name, value, errstr, errstr_size);
}

rd_kafka_t *kb_kafka_producer_new(const kb_conf_t *conf, rd_kafka_conf_t *kc,
                                  char *errstr, size_t errstr_size) {
        rd_kafka_t *rk;
        char copy_max[32];
        /* Large enough for a copy of the largest item (conf.c checks a
         * message.max.bytes set in kafka.properties the same way). */
        snprintf(copy_max, sizeof(copy_max), "%d",
                 conf->kafka_message_max_bytes + KB_COPY_HEADROOM_BYTES);
        if (!kc && !(kc = kb_kafka_conf_new(conf, "producer", errstr,
                                            errstr_size)))
                return NULL;
        if (kb_kafka_conf_set(kc, "enable.idempotence", "true", errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "acks", "all", errstr, errstr_size) ||
            set_default(conf, kc, "partitioner", "murmur2_random", errstr,
                        errstr_size) ||
            set_default(conf, kc, "linger.ms", "5", errstr, errstr_size) ||
            set_default(conf, kc, "queue.buffering.max.messages", "1000000",
                        errstr, errstr_size) ||
            set_default(conf, kc, "message.max.bytes", copy_max, errstr,
                        errstr_size)) {
                rd_kafka_conf_destroy(kc);
                return NULL;
        }
        rk = rd_kafka_new(RD_KAFKA_PRODUCER, kc, errstr, errstr_size);
        if (!rk)
                rd_kafka_conf_destroy(kc);
        return rk;
}

rd_kafka_t *kb_kafka_reader_new_opts(const kb_conf_t *conf, const char *role,
                                     const kb_kafka_reader_opts_t *opts,
                                     char *errstr, size_t errstr_size) {
        rd_kafka_conf_t *kc;
        rd_kafka_t *rk;
        char gid[256], fw[16];
        if (opts->group)
                snprintf(gid, sizeof(gid), "%s", opts->group);
        else
                snprintf(gid, sizeof(gid), "kbatch-%s-%s-%d", role,
                         kb_conf_instance_id(conf), (int)getpid());
        snprintf(fw, sizeof(fw), "%d", opts->fetch_wait_ms);
        if (!(kc = kb_kafka_conf_new(conf, role, errstr, errstr_size)))
                return NULL;
        if (kb_kafka_conf_set(kc, "group.id", gid, errstr, errstr_size) ||
            kb_kafka_conf_set(kc, "enable.auto.commit", "false", errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "enable.auto.offset.store", "false", errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "enable.partition.eof", "true", errstr,
                              errstr_size) ||
            (opts->isolation &&
             kb_kafka_conf_set(kc, "isolation.level", opts->isolation, errstr,
                               errstr_size)) ||
            (opts->fetch_wait_ms > 0 &&
             kb_kafka_conf_set(kc, "fetch.wait.max.ms", fw, errstr,
                               errstr_size))) {
                rd_kafka_conf_destroy(kc);
                return NULL;
        }
        if (!(rk = rd_kafka_new(RD_KAFKA_CONSUMER, kc, errstr, errstr_size))) {
                rd_kafka_conf_destroy(kc);
                return NULL;
        }
        rd_kafka_poll_set_consumer(rk);
        return rk;
}

rd_kafka_t *kb_kafka_reader_new(const kb_conf_t *conf, const char *role,
                                const char *isolation, char *errstr,
                                size_t errstr_size) {
        kb_kafka_reader_opts_t o = {NULL, isolation, 100};
        return kb_kafka_reader_new_opts(conf, role, &o, errstr, errstr_size);
}

void kb_kafka_producer_replace(rd_kafka_t **rkp, rd_kafka_queue_t **pqp,
                               rd_kafka_t *nrk, int wfd) {
        int64_t until = kb_now_ms() + 10000;
        rd_kafka_purge(*rkp, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        while (rd_kafka_outq_len(*rkp) > 0 && kb_now_ms() < until)
                rd_kafka_poll(*rkp, 10);
        rd_kafka_queue_destroy(*pqp);
        rd_kafka_destroy(*rkp);
        *rkp = nrk;
        *pqp = rd_kafka_queue_get_main(nrk);
        rd_kafka_queue_io_event_enable(*pqp, wfd, "p", 1);
}

char *kb_kafka_retry_topic(const kb_conf_t *conf, int n) {
        char *s;
        if (asprintf(&s, "%s.retry.%d", conf->topics_name[KB_TOPIC_ITEMS], n) <
            0)
                return NULL;
        return s;
}

const char *kb_kafka_header(const rd_kafka_message_t *msg, const char *name,
                            char *buf, size_t size) {
        rd_kafka_headers_t *hdrs;
        const void *val;
        size_t len;
        if (rd_kafka_message_headers(msg, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR)
                return NULL;
        if (rd_kafka_header_get_last(hdrs, name, &val, &len) !=
            RD_KAFKA_RESP_ERR_NO_ERROR)
                return NULL;
        if (!val)
                len = 0;
        if (len >= size)
                len = size - 1;
        memcpy(buf, val, len);
        buf[len] = '\0';
        return buf;
}

typedef struct {
        char *name;
        int partitions;
        const char *cfg[16]; /* name, value, ..., NULL */
} topic_spec_t;

/* What `topics create` makes: every topic with its settings. */
typedef struct {
        topic_spec_t tp_specs[KB_TOPIC__CNT + 16];
        size_t tp_cnt;
        char tp_mmax[32], tp_cmax[32]; /* tp_specs' cfg point here */
} topic_plan_t;

static void plan_add(topic_plan_t *tp, const char *name, int partitions,
                     const char *const *cfg, size_t ncfg) {
        topic_spec_t *ts = &tp->tp_specs[tp->tp_cnt++];
        ts->name = strdup(name);
        ts->partitions = partitions;
        memcpy(ts->cfg, cfg, ncfg * sizeof(*cfg));
}

#define PLAN(TP, NAME, PARTS, ...)                                             \
        do {                                                                   \
                const char *_c[] = {__VA_ARGS__, NULL};                        \
                _Static_assert(sizeof(_c) <= sizeof((TP)->tp_specs[0].cfg),    \
                               "topic_spec_t.cfg too small");                  \
                plan_add((TP), (NAME), (PARTS), _c, sizeof(_c) / sizeof(*_c)); \
        } while (0)

/* Fills tp (zeroed by the caller) with every topic of conf. */
static void topic_plan(const kb_conf_t *conf, int partitions,
                       topic_plan_t *tp) {
        const char *mmax = tp->tp_mmax, *cmax = tp->tp_cmax;
        size_t i;
        /* Message size limits set explicitly (docs/limits.md): M for what
         * kbatch or upstream writes, M + the copy headroom where copies go
         * (a retry or DLQ copy is an item plus kbatch's headers). */
        snprintf(tp->tp_mmax, sizeof(tp->tp_mmax), "%d",
                 conf->kafka_message_max_bytes);
        snprintf(tp->tp_cmax, sizeof(tp->tp_cmax), "%d",
                 conf->kafka_message_max_bytes + KB_COPY_HEADROOM_BYTES);
        PLAN(tp, conf->topics_name[KB_TOPIC_ITEMS], partitions, "retention.ms",
             "604800000", "max.message.bytes", mmax);
        for (i = 0; i < conf->retry_delay_cnt && i < 16; i++) {
                char *t = kb_kafka_retry_topic(conf, (int)i + 1);
                PLAN(tp, t, partitions, "retention.ms", "604800000",
                     "max.message.bytes", cmax);
                free(t);
        }
        PLAN(tp, conf->topics_name[KB_TOPIC_ITEMS_PRIORITY], partitions,
             "retention.ms", "604800000", "max.message.bytes", mmax);
        /* Async job ids (jobstore.h): compacted, tombstones kept a day. */
        PLAN(tp, conf->topics_name[KB_TOPIC_ITEMS_JOBS], partitions,
             "cleanup.policy", "compact", "delete.retention.ms", "86400000",
             "max.message.bytes", mmax);
        PLAN(tp, conf->topics_name[KB_TOPIC_ITEMS_DLQ], partitions,
             "retention.ms", "2592000000", "max.message.bytes", cmax);
        PLAN(tp, conf->topics_name[KB_TOPIC_RESULTS], partitions,
             "retention.ms", "604800000", "max.message.bytes", mmax);
        PLAN(tp, conf->topics_name[KB_TOPIC_BATCHES], partitions,
             "retention.ms", "2592000000", "max.message.bytes", mmax);
        PLAN(tp, conf->topics_name[KB_TOPIC_BATCHES_DLQ], partitions,
             "retention.ms", "2592000000", "max.message.bytes", cmax);
        PLAN(tp, conf->topics_name[KB_TOPIC_CONTROL], 1, "retention.ms",
             "604800000", "max.message.bytes", mmax);
        /* Co-partitioned with results, compacted. */
        PLAN(tp, conf->topics_name[KB_TOPIC_BATCH_STATE], partitions,
             "cleanup.policy", "compact", "min.compaction.lag.ms", "0",
             /* Compact often: restore time grows with superseded records
              * of large, long-running batches. */
             "segment.ms", "600000", "min.cleanable.dirty.ratio", "0.1",
             "max.message.bytes", mmax);
        /* The HTTP API's state (SPEC §11): kept until deleted (tombstones),
         * chunks of 512 KiB. */
        PLAN(tp, conf->topics_name[KB_TOPIC_FILES], partitions,
             "cleanup.policy", "compact", "min.compaction.lag.ms", "0",
             "max.message.bytes", mmax);
        PLAN(tp, conf->topics_name[KB_TOPIC_API_BATCHES], partitions,
             "cleanup.policy", "compact", "min.compaction.lag.ms", "0",
             "max.message.bytes", mmax);
}
#undef PLAN

/* An admin client, once the cluster answered (fail fast, and clearly,
 * when it is unreachable). NULL + errstr. */
static rd_kafka_t *admin_client(const kb_conf_t *conf, char *errstr,
                                size_t errstr_size) {
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_conf_t *kc;
        rd_kafka_t *rk;
        rd_kafka_resp_err_t e;
        char err[512], why[800];
        if (!(kc = kb_kafka_conf_new(conf, "admin", errstr, errstr_size)))
                return NULL;
        if (!(rk = rd_kafka_new(RD_KAFKA_PRODUCER, kc, err, sizeof(err)))) {
                snprintf(errstr, errstr_size, "cannot create client: %s", err);
                rd_kafka_conf_destroy(kc);
                return NULL;
        }
        e = kb_kafka_metadata(rk, 0, NULL, &md, 10000, why, sizeof(why));
        if (e == RD_KAFKA_RESP_ERR__AUTHENTICATION) {
                snprintf(errstr, errstr_size, "%s", why);
                rd_kafka_destroy(rk);
                return NULL;
        }
        if (e) {
                snprintf(errstr, errstr_size, "cannot reach Kafka at %s: %s",
                         conf->kafka_bootstrap_servers, rd_kafka_err2str(e));
                rd_kafka_destroy(rk);
                return NULL;
        }
        rd_kafka_metadata_destroy(md);
        return rk;
}

/* The NewTopic objects of the plan into nts. Returns how many were made:
 * tp_cnt, or fewer with errstr set. */
static size_t new_topics(const topic_plan_t *tp, int replication,
                         rd_kafka_NewTopic_t **nts, char *errstr,
                         size_t errstr_size) {
        char err[512];
        size_t i, j;
        for (i = 0; i < tp->tp_cnt; i++) {
                const topic_spec_t *ts = &tp->tp_specs[i];
                nts[i] = rd_kafka_NewTopic_new(ts->name, ts->partitions,
                                               replication, err, sizeof(err));
                if (!nts[i]) {
                        snprintf(errstr, errstr_size, "topic %s: %s", ts->name,
                                 err);
                        return i;
                }
                for (j = 0; ts->cfg[j]; j += 2)
                        rd_kafka_NewTopic_set_config(nts[i], ts->cfg[j],
                                                     ts->cfg[j + 1]);
                /* acks=all means something only with more than one replica
                 * in sync: with replication, a write needs two (durability
                 * first, SPEC §5: nothing is lost). */
                if (replication > 1)
                        rd_kafka_NewTopic_set_config(nts[i],
                                                     "min.insync.replicas",
                                                     "2");
        }
        return i;
}

/* Reads CreateTopics' answer: "created"/"exists" lines to out (may be
 * NULL). Returns 0, or -1 + errstr when a topic failed. */
static int created_report(rd_kafka_event_t *ev, FILE *out, char *errstr,
                          size_t errstr_size) {
        const rd_kafka_CreateTopics_result_t *res =
            rd_kafka_event_CreateTopics_result(ev);
        size_t n, i;
        const rd_kafka_topic_result_t **trs =
            rd_kafka_CreateTopics_result_topics(res, &n);
        int ret = 0;
        for (i = 0; i < n; i++) {
                rd_kafka_resp_err_t e = rd_kafka_topic_result_error(trs[i]);
                const char *tn = rd_kafka_topic_result_name(trs[i]);
                if (e == RD_KAFKA_RESP_ERR_NO_ERROR) {
                        if (out)
                                fprintf(out, "created %s\n", tn);
                } else if (e == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
                        if (out)
                                fprintf(out, "exists  %s\n", tn);
                } else {
                        snprintf(errstr, errstr_size, "topic %s: %s", tn,
                                 rd_kafka_topic_result_error_string(trs[i]));
                        ret = -1;
                }
        }
        return ret;
}

/* One CreateTopics request for nts, its answer reported. */
static int create_request(const kb_conf_t *conf, rd_kafka_t *rk,
                          rd_kafka_NewTopic_t **nts, size_t cnt, FILE *out,
                          char *errstr, size_t errstr_size) {
        rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
        rd_kafka_AdminOptions_t *opts =
            rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
        rd_kafka_event_t *ev;
        char err[512];
        int ret = -1;
        rd_kafka_AdminOptions_set_operation_timeout(opts, 30000, err,
                                                    sizeof(err));
        rd_kafka_AdminOptions_set_request_timeout(opts, 30000, err,
                                                  sizeof(err));
        rd_kafka_CreateTopics(rk, nts, cnt, opts, q);
        ev = rd_kafka_queue_poll(q, 60000);
        if (!ev)
                snprintf(errstr, errstr_size, "timed out creating topics on %s",
                         conf->kafka_bootstrap_servers);
        else if (rd_kafka_event_error(ev))
                snprintf(errstr, errstr_size, "creating topics: %s",
                         rd_kafka_event_error_string(ev));
        else
                ret = created_report(ev, out, errstr, errstr_size);
        if (ev)
                rd_kafka_event_destroy(ev);
        rd_kafka_AdminOptions_destroy(opts);
        rd_kafka_queue_destroy(q);
        return ret;
}

int kb_kafka_topics_create(const kb_conf_t *conf, int partitions,
                           int replication, FILE *out, char *errstr,
                           size_t errstr_size) {
        topic_plan_t tp;
        rd_kafka_NewTopic_t *nts[KB_TOPIC__CNT + 16];
        rd_kafka_t *rk;
        size_t cnt, i;
        int ret = -1;

        if (partitions <= 0)
                partitions = conf->topics_partitions;
        if (replication == 0)
                replication = conf->topics_replication;
        memset(&tp, 0, sizeof(tp));
        topic_plan(conf, partitions, &tp);
        if ((rk = admin_client(conf, errstr, errstr_size))) {
                cnt = new_topics(&tp, replication, nts, errstr, errstr_size);
                if (cnt == tp.tp_cnt)
                        ret = create_request(conf, rk, nts, cnt, out, errstr,
                                             errstr_size);
                for (i = 0; i < cnt; i++)
                        rd_kafka_NewTopic_destroy(nts[i]);
                rd_kafka_destroy(rk);
        }
        for (i = 0; i < tp.tp_cnt; i++)
                free(tp.tp_specs[i].name);
        return ret;
}

/* A consumer handle in group `group` (never subscribed): only for
 * committed-offset look-ups. */
static rd_kafka_t *lookup_consumer(const kb_conf_t *conf, const char *group,
                                   char *errstr, size_t errstr_size) {
        kb_kafka_reader_opts_t o = {group, NULL, 0};
        return kb_kafka_reader_new_opts(conf, "describe", &o, errstr,
                                        errstr_size);
}

/* Counts the set bits of a done-above map (0 when absent or unreadable). */
static int meta_done_count(const char *meta, size_t len) {
        uint8_t *bits = NULL;
        size_t nbits = 0, i;
        int n = 0;
        if (!meta || !len || kb_offsets_meta_decode(meta, len, &bits, &nbits))
                return 0;
        for (i = 0; i < nbits; i++)
                n += (bits[i / 8] >> (i % 8)) & 1;
        free(bits);
        return n;
}

/* Adds "config" {retention.ms, cleanup.policy, min.insync.replicas,
 * segment.ms, max.message.bytes} (the topic's effective values) to every topic of the array
 * that has no "error", with one DescribeConfigs request. On failure each
 * such topic gets "config_error" instead. */
static void describe_configs(rd_kafka_t *rk, json_t *topics) {
        static const char *keys[] = {"retention.ms", "cleanup.policy",
                                     "min.insync.replicas", "segment.ms",
                                     "max.message.bytes"};
        size_t n = json_array_size(topics), i, cnt = 0, rcnt = 0, k, c;
        rd_kafka_ConfigResource_t **crs = calloc(n ? n : 1, sizeof(*crs));
        const rd_kafka_ConfigResource_t **res;
        rd_kafka_queue_t *q;
        rd_kafka_AdminOptions_t *opts;
        rd_kafka_event_t *ev;
        json_t *t;
        char err[256];
        if (!crs)
                return;
        json_array_foreach(topics, i, t) {
                if (!json_object_get(t, "error"))
                        crs[cnt++] = rd_kafka_ConfigResource_new(
                            RD_KAFKA_RESOURCE_TOPIC,
                            json_string_value(json_object_get(t, "name")));
        }
        if (!cnt) {
                free(crs);
                return;
        }
        q = rd_kafka_queue_new(rk);
        opts = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_DESCRIBECONFIGS);
        rd_kafka_AdminOptions_set_request_timeout(opts, 10000, err,
                                                  sizeof(err));
        rd_kafka_DescribeConfigs(rk, crs, cnt, opts, q);
        ev = rd_kafka_queue_poll(q, 15000);
        res = NULL;
        if (ev && !rd_kafka_event_error(ev))
                res = rd_kafka_DescribeConfigs_result_resources(
                    rd_kafka_event_DescribeConfigs_result(ev), &rcnt);
        json_array_foreach(topics, i, t) {
                const char *name = json_string_value(json_object_get(t, "name"));
                json_t *cj;
                if (json_object_get(t, "error"))
                        continue;
                for (c = 0; c < rcnt; c++)
                        if (!strcmp(rd_kafka_ConfigResource_name(res[c]), name))
                                break;
                if (c == rcnt || rd_kafka_ConfigResource_error(res[c])) {
                        json_object_set_new(
                            t, "config_error",
                            json_string(!ev ? "timed out"
                                        : rd_kafka_event_error(ev)
                                            ? rd_kafka_event_error_string(ev)
                                        : c == rcnt
                                            ? "not in the answer"
                                            : rd_kafka_ConfigResource_error_string(
                                                  res[c])));
                        continue;
                }
                cj = json_object();
                {
                        size_t ecnt, e;
                        const rd_kafka_ConfigEntry_t **ents =
                            rd_kafka_ConfigResource_configs(res[c], &ecnt);
                        for (e = 0; e < ecnt; e++)
                                for (k = 0; k < sizeof(keys) / sizeof(*keys);
                                     k++)
                                        if (!strcmp(rd_kafka_ConfigEntry_name(
                                                        ents[e]),
                                                    keys[k])) {
                                                const char *v =
                                                    rd_kafka_ConfigEntry_value(
                                                        ents[e]);
                                                json_object_set_new(
                                                    cj, keys[k],
                                                    v ? json_string(v)
                                                      : json_null());
                                        }
                }
                json_object_set_new(t, "config", cj);
        }
        if (ev)
                rd_kafka_event_destroy(ev);
        rd_kafka_AdminOptions_destroy(opts);
        rd_kafka_queue_destroy(q);
        for (i = 0; i < cnt; i++)
                rd_kafka_ConfigResource_destroy(crs[i]);
        free(crs);
}

int kb_kafka_check_limits(const kb_conf_t *conf, rd_kafka_t *rk) {
        json_t *topics = json_array(), *t;
        size_t i;
        int low = 0;
        long long m = conf->kafka_message_max_bytes,
                  c = m + KB_COPY_HEADROOM_BYTES;
        struct {
                const char *name;
                long long need;
        } want[KB_TOPIC__CNT + 16];
        size_t cnt = 0;
        char *retry[16];
        size_t rcnt = 0;
        if (!topics)
                return 0;
        want[cnt].name = conf->topics_name[KB_TOPIC_ITEMS];
        want[cnt++].need = conf->worker_max_item_bytes;
        want[cnt].name = conf->topics_name[KB_TOPIC_ITEMS_PRIORITY];
        want[cnt++].need = conf->worker_max_item_bytes;
        want[cnt].name = conf->topics_name[KB_TOPIC_RESULTS];
        want[cnt++].need = m;
        want[cnt].name = conf->topics_name[KB_TOPIC_ITEMS_DLQ];
        want[cnt++].need = c;
        for (i = 0; i < conf->retry_delay_cnt && i < 16; i++) {
                retry[rcnt] = kb_kafka_retry_topic(conf, (int)i + 1);
                want[cnt].name = retry[rcnt++];
                want[cnt++].need = c;
        }
        for (i = 0; i < cnt; i++)
                json_array_append_new(topics,
                                      json_pack("{s:s}", "name", want[i].name));
        describe_configs(rk, topics);
        json_array_foreach(topics, i, t) {
                const char *v = json_string_value(json_object_get(
                    json_object_get(t, "config"), "max.message.bytes"));
                if (!v || atoll(v) >= want[i].need)
                        continue;
                low++;
                kb_log(KB_LOG_WARN, "kafka",
                       "topic %s allows messages of %s bytes, less than the "
                       "%lld kbatch may write there (kafka.message_max_bytes, "
                       "worker.max_item_bytes; `kbatch topics create` sets "
                       "it): larger ones will end their items with an error "
                       "(docs/limits.md)",
                       want[i].name, v, want[i].need);
        }
        json_decref(topics);
        for (i = 0; i < rcnt; i++)
                free(retry[i]);
        return low;
}

/* A topic `topics describe` shows, and the group whose lag it shows
 * (NULL: none). */
typedef struct {
        char *topic;
        const char *group;
} described_t;

/* Fills tl with the topics of conf; returns how many. */
static size_t describe_list(const kb_conf_t *conf, described_t *tl) {
        size_t cnt = 0, i;
#define ADD(T, G)                                                              \
        do {                                                                   \
                tl[cnt].topic = strdup(T);                                     \
                tl[cnt].group = (G);                                           \
                cnt++;                                                         \
        } while (0)
        ADD(conf->topics_name[KB_TOPIC_ITEMS], conf->kafka_group_id);
        for (i = 0; i < conf->retry_delay_cnt && i < 16; i++) {
                char *t = kb_kafka_retry_topic(conf, (int)i + 1);
                ADD(t, conf->kafka_group_id);
                free(t);
        }
        ADD(conf->topics_name[KB_TOPIC_ITEMS_PRIORITY], conf->kafka_group_id);
        ADD(conf->topics_name[KB_TOPIC_ITEMS_JOBS], NULL);
        ADD(conf->topics_name[KB_TOPIC_ITEMS_DLQ], NULL);
        ADD(conf->topics_name[KB_TOPIC_RESULTS], conf->kafka_aggregator_group_id);
        ADD(conf->topics_name[KB_TOPIC_BATCHES], conf->kafka_notifier_group_id);
        ADD(conf->topics_name[KB_TOPIC_BATCHES_DLQ], NULL);
        ADD(conf->topics_name[KB_TOPIC_CONTROL], NULL);
        ADD(conf->topics_name[KB_TOPIC_BATCH_STATE], NULL);
        ADD(conf->topics_name[KB_TOPIC_FILES], NULL);
        ADD(conf->topics_name[KB_TOPIC_API_BATCHES], NULL);
#undef ADD
        return cnt;
}

/* The topic's metadata into t: "partitions" and "replication_factor", or
 * "error". Returns the partition count, -1 on "error". */
static int describe_metadata(rd_kafka_t *rk, const char *topic, json_t *t) {
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
        rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 0, rkt, &md, 10000);
        int np;
        if (err || !md || md->topic_cnt < 1 || md->topics[0].err) {
                json_object_set_new(
                    t, "error",
                    json_string(rd_kafka_err2str(
                        err ? err
                            : md && md->topic_cnt
                                  ? md->topics[0].err
                                  : RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC)));
                if (md)
                        rd_kafka_metadata_destroy(md);
                rd_kafka_topic_destroy(rkt);
                return -1;
        }
        np = md->topics[0].partition_cnt;
        if (np > 0)
                json_object_set_new(
                    t, "replication_factor",
                    json_integer(md->topics[0].partitions[0].replica_cnt));
        rd_kafka_metadata_destroy(md);
        rd_kafka_topic_destroy(rkt);
        json_object_set_new(t, "partitions", json_integer(np));
        return np;
}

/* The committed offsets of group on the np partitions of topic, NULL when
 * they cannot be read. Caller destroys the list. */
static rd_kafka_topic_partition_list_t *
describe_committed(const kb_conf_t *conf, const char *topic, int np,
                   const char *group, char *errstr, size_t errstr_size) {
        rd_kafka_topic_partition_list_t *l =
            rd_kafka_topic_partition_list_new(np);
        rd_kafka_t *grk;
        int p;
        for (p = 0; p < np; p++)
                rd_kafka_topic_partition_list_add(l, topic, p);
        grk = lookup_consumer(conf, group, errstr, errstr_size);
        if (!grk ||
            rd_kafka_committed(grk, l, 10000) != RD_KAFKA_RESP_ERR_NO_ERROR) {
                rd_kafka_topic_partition_list_destroy(l);
                l = NULL;
        }
        if (grk) {
                rd_kafka_consumer_close(grk);
                rd_kafka_destroy(grk);
        }
        return l;
}

/* One partition's offsets, and with committed offsets (tp, may be NULL)
 * its group's position and lag (added to *lag_total). */
static json_t *describe_partition(rd_kafka_t *rk, const char *topic, int p,
                                  const rd_kafka_topic_partition_t *tp,
                                  int64_t *lag_total) {
        int64_t lo = -1, hi = -1, lag;
        json_t *pj = json_object();
        rd_kafka_query_watermark_offsets(rk, topic, p, &lo, &hi, 10000);
        json_object_set_new(pj, "partition", json_integer(p));
        json_object_set_new(pj, "start_offset", json_integer(lo));
        json_object_set_new(pj, "end_offset", json_integer(hi));
        if (!tp)
                return pj;
        lag = tp->offset >= 0 ? hi - tp->offset : hi - lo;
        json_object_set_new(pj, "committed",
                            tp->offset >= 0 ? json_integer(tp->offset)
                                            : json_null());
        json_object_set_new(pj, "metadata",
                            tp->metadata_size
                                ? json_stringn(tp->metadata, tp->metadata_size)
                                : json_string(""));
        json_object_set_new(
            pj, "done_above",
            json_integer(meta_done_count(tp->metadata, tp->metadata_size)));
        json_object_set_new(pj, "lag", json_integer(lag));
        *lag_total += lag;
        return pj;
}

/* One topic of `topics describe`. */
static json_t *describe_topic(const kb_conf_t *conf, rd_kafka_t *rk,
                              const described_t *d, char *errstr,
                              size_t errstr_size) {
        json_t *t = json_object(), *parts;
        rd_kafka_topic_partition_list_t *l = NULL;
        int64_t lag_total = 0;
        int p, np;
        json_object_set_new(t, "name", json_string(d->topic));
        if ((np = describe_metadata(rk, d->topic, t)) < 0)
                return t;
        if (d->group) {
                json_object_set_new(t, "group", json_string(d->group));
                l = describe_committed(conf, d->topic, np, d->group, errstr,
                                       errstr_size);
        }
        parts = json_array();
        for (p = 0; p < np; p++)
                json_array_append_new(
                    parts, describe_partition(rk, d->topic, p,
                                              l ? &l->elems[p] : NULL,
                                              &lag_total));
        if (l)
                json_object_set_new(t, "lag", json_integer(lag_total));
        json_object_set_new(t, "partition_offsets", parts);
        if (l)
                rd_kafka_topic_partition_list_destroy(l);
        return t;
}

json_t *kb_kafka_topics_describe(const kb_conf_t *conf, char *errstr,
                                 size_t errstr_size) {
        described_t tl[KB_TOPIC__CNT + 16];
        size_t cnt = describe_list(conf, tl), i;
        json_t *out = NULL, *topics;
        rd_kafka_t *rk;

        if ((rk = lookup_consumer(conf, conf->kafka_group_id, errstr,
                                  errstr_size))) {
                out = json_object();
                topics = json_array();
                json_object_set_new(out, "bootstrap_servers",
                                    json_string(conf->kafka_bootstrap_servers));
                json_object_set_new(out, "topics", topics);
                for (i = 0; i < cnt; i++)
                        json_array_append_new(
                            topics, describe_topic(conf, rk, &tl[i], errstr,
                                                   errstr_size));
                describe_configs(rk, topics);
                rd_kafka_destroy(rk);
        }
        for (i = 0; i < cnt; i++)
                free(tl[i].topic);
        return out;
}
