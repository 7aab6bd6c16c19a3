/* kafka: see kafka.h. */
#include "kafka.h"

#include <stdlib.h>
#include <string.h>

#include "log.h"

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
        kb_log_rdkafka_cb(rk, level, fac, buf);
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
        return kc;
fail:
        rd_kafka_conf_destroy(kc);
        return NULL;
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
                        errstr, errstr_size)) {
                rd_kafka_conf_destroy(kc);
                return NULL;
        }
        rk = rd_kafka_new(RD_KAFKA_PRODUCER, kc, errstr, errstr_size);
        if (!rk)
                rd_kafka_conf_destroy(kc);
        return rk;
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
        const char *cfg[8]; /* name, value, ..., NULL */
} topic_spec_t;

int kb_kafka_topics_create(const kb_conf_t *conf, int partitions,
                           int replication, FILE *out, char *errstr,
                           size_t errstr_size) {
        topic_spec_t specs[KB_TOPIC__CNT + 16];
        rd_kafka_NewTopic_t *nts[KB_TOPIC__CNT + 16];
        size_t cnt = 0, i;
        rd_kafka_conf_t *kc;
        rd_kafka_t *rk;
        rd_kafka_queue_t *q;
        rd_kafka_AdminOptions_t *opts;
        rd_kafka_event_t *ev;
        int ret = -1;
        char err[512];

        if (partitions <= 0)
                partitions = conf->topics_partitions;
        if (replication == 0)
                replication = conf->topics_replication;

        memset(specs, 0, sizeof(specs));
#define SPEC(NAME, PARTS, ...)                                                 \
        do {                                                                   \
                specs[cnt].name = strdup(NAME);                                \
                specs[cnt].partitions = (PARTS);                               \
                const char *_c[] = {__VA_ARGS__, NULL};                        \
                memcpy(specs[cnt].cfg, _c, sizeof(_c));                        \
                cnt++;                                                         \
        } while (0)
        SPEC(conf->topics_name[KB_TOPIC_ITEMS], partitions, "retention.ms",
             "604800000");
        for (i = 0; i < conf->retry_delay_cnt && i < 16; i++) {
                char *t = kb_kafka_retry_topic(conf, (int)i + 1);
                SPEC(t, partitions, "retention.ms", "604800000");
                free(t);
        }
        SPEC(conf->topics_name[KB_TOPIC_ITEMS_DLQ], partitions, "retention.ms",
             "2592000000");
        SPEC(conf->topics_name[KB_TOPIC_RESULTS], partitions, "retention.ms",
             "604800000");
        SPEC(conf->topics_name[KB_TOPIC_BATCHES], partitions, "retention.ms",
             "2592000000");
        SPEC(conf->topics_name[KB_TOPIC_BATCHES_DLQ], partitions,
             "retention.ms", "2592000000");
        SPEC(conf->topics_name[KB_TOPIC_CONTROL], 1, "retention.ms",
             "604800000");
        /* Co-partitioned with results, compacted. */
        SPEC(conf->topics_name[KB_TOPIC_BATCH_STATE], partitions,
             "cleanup.policy", "compact", "min.compaction.lag.ms", "0",
             "segment.ms", "3600000");
#undef SPEC

        if (!(kc = kb_kafka_conf_new(conf, "admin", errstr, errstr_size)))
                goto out;
        if (!(rk = rd_kafka_new(RD_KAFKA_PRODUCER, kc, err, sizeof(err)))) {
                snprintf(errstr, errstr_size, "cannot create client: %s", err);
                rd_kafka_conf_destroy(kc);
                goto out;
        }
        for (i = 0; i < cnt; i++) {
                size_t j;
                nts[i] = rd_kafka_NewTopic_new(specs[i].name,
                                               specs[i].partitions,
                                               replication, err, sizeof(err));
                if (!nts[i]) {
                        snprintf(errstr, errstr_size, "topic %s: %s",
                                 specs[i].name, err);
                        cnt = i;
                        goto destroy;
                }
                for (j = 0; specs[i].cfg[j]; j += 2)
                        rd_kafka_NewTopic_set_config(nts[i], specs[i].cfg[j],
                                                     specs[i].cfg[j + 1]);
        }
        q = rd_kafka_queue_new(rk);
        opts = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
        rd_kafka_AdminOptions_set_operation_timeout(opts, 30000, err,
                                                    sizeof(err));
        rd_kafka_AdminOptions_set_request_timeout(opts, 30000, err,
                                                  sizeof(err));
        rd_kafka_CreateTopics(rk, nts, cnt, opts, q);
        ev = rd_kafka_queue_poll(q, 60000);
        if (!ev) {
                snprintf(errstr, errstr_size,
                         "timed out creating topics on %s",
                         conf->kafka_bootstrap_servers);
        } else if (rd_kafka_event_error(ev)) {
                snprintf(errstr, errstr_size, "creating topics: %s",
                         rd_kafka_event_error_string(ev));
        } else {
                const rd_kafka_CreateTopics_result_t *res =
                    rd_kafka_event_CreateTopics_result(ev);
                size_t n;
                const rd_kafka_topic_result_t **trs =
                    rd_kafka_CreateTopics_result_topics(res, &n);
                ret = 0;
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
                                snprintf(errstr, errstr_size, "topic %s: %s",
                                         tn,
                                         rd_kafka_topic_result_error_string(
                                             trs[i]));
                                ret = -1;
                        }
                }
        }
        if (ev)
                rd_kafka_event_destroy(ev);
        rd_kafka_AdminOptions_destroy(opts);
        rd_kafka_queue_destroy(q);
destroy:
        for (i = 0; i < cnt; i++)
                rd_kafka_NewTopic_destroy(nts[i]);
        rd_kafka_destroy(rk);
out:
        for (i = 0; i < sizeof(specs) / sizeof(*specs); i++)
                free(specs[i].name);
        return ret;
}
