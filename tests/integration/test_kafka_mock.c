/* Fault injection with librdkafka's mock cluster: the project's producer
 * settings (idempotent, acks=all) deliver every message exactly once and in
 * order through request errors and a broker outage. */
#include <criterion/criterion.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

#include "conf.h"
#include "kafka.h"
#include "log.h"

static rd_kafka_t *mock_rk;
static rd_kafka_mock_cluster_t *mcluster;
static kb_conf_t *conf;

static void setup(void) {
        char err[512];
        rd_kafka_conf_t *kc = rd_kafka_conf_new();
        const char *bs;
        kb_log_init(KB_LOG_OFF, KB_LOG_FMT_JSON, NULL); /* outages are the point */
        rd_kafka_conf_set(kc, "log_level", "0", NULL, 0);
        mock_rk = rd_kafka_new(RD_KAFKA_PRODUCER, kc, err, sizeof(err));
        cr_assert(mock_rk, "%s", err);
        mcluster = rd_kafka_mock_cluster_new(mock_rk, 3);
        cr_assert(mcluster);
        bs = rd_kafka_mock_cluster_bootstraps(mcluster);
        setenv("KBATCH_KAFKA_BOOTSTRAP_SERVERS", bs, 1);
        conf = kb_conf_load(NULL, NULL, err, sizeof(err));
        cr_assert(conf, "%s", err);
        cr_assert_eq(rd_kafka_mock_topic_create(mcluster, "t", 2, 3), 0);
}

static void teardown(void) {
        kb_conf_destroy(conf);
        rd_kafka_mock_cluster_destroy(mcluster);
        rd_kafka_destroy(mock_rk);
        unsetenv("KBATCH_KAFKA_BOOTSTRAP_SERVERS");
}

static int delivered, failed;

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *op) {
        if (m->err)
                failed++;
        else
                delivered++;
}

static rd_kafka_t *producer(void) {
        char err[512];
        rd_kafka_conf_t *kc = kb_kafka_conf_new(conf, "test", err, sizeof(err));
        rd_kafka_t *rk;
        cr_assert(kc, "%s", err);
        rd_kafka_conf_set_dr_msg_cb(kc, dr_cb);
        rk = kb_kafka_producer_new(conf, kc, err, sizeof(err));
        cr_assert(rk, "%s", err);
        delivered = failed = 0;
        return rk;
}

/* Reads partition p of "t" and checks values are 0..n-1 in order, once. */
static void expect_partition(int32_t p, int n_expected) {
        char err[512];
        rd_kafka_conf_t *kc = rd_kafka_conf_new();
        rd_kafka_t *c;
        rd_kafka_topic_partition_list_t *l;
        int seen = 0, last = -1, idle = 0;
        rd_kafka_conf_set(kc, "bootstrap.servers",
                          rd_kafka_mock_cluster_bootstraps(mcluster), NULL, 0);
        rd_kafka_conf_set(kc, "group.id", "reader", NULL, 0);
        rd_kafka_conf_set(kc, "log_level", "0", NULL, 0);
        c = rd_kafka_new(RD_KAFKA_CONSUMER, kc, err, sizeof(err));
        cr_assert(c, "%s", err);
        l = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(l, "t", p)->offset =
            RD_KAFKA_OFFSET_BEGINNING;
        rd_kafka_assign(c, l);
        rd_kafka_topic_partition_list_destroy(l);
        while (idle < 20) {
                rd_kafka_message_t *m = rd_kafka_consumer_poll(c, 100);
                if (!m) {
                        if (seen >= n_expected)
                                idle++;
                        continue;
                }
                if (!m->err) {
                        int v = atoi((const char *)m->payload);
                        cr_expect_gt(v, last, "partition %d: %d after %d", p,
                                     v, last);
                        last = v;
                        seen++;
                }
                rd_kafka_message_destroy(m);
        }
        cr_expect_eq(seen, n_expected, "partition %d: %d messages, want %d", p,
                     seen, n_expected);
        rd_kafka_consumer_close(c);
        rd_kafka_destroy(c);
}

static void produce_n(rd_kafka_t *rk, int32_t p, int n) {
        int i;
        for (i = 0; i < n; i++) {
                char v[16];
                snprintf(v, sizeof(v), "%d", i);
                cr_assert_eq(rd_kafka_producev(rk, RD_KAFKA_V_TOPIC("t"),
                                               RD_KAFKA_V_PARTITION(p),
                                               RD_KAFKA_V_VALUE(v, strlen(v)),
                                               RD_KAFKA_V_MSGFLAGS(
                                                   RD_KAFKA_MSG_F_COPY),
                                               RD_KAFKA_V_END),
                             RD_KAFKA_RESP_ERR_NO_ERROR);
                rd_kafka_poll(rk, 0);
        }
}

TestSuite(kafka_mock, .init = setup, .fini = teardown, .timeout = 120);

Test(kafka_mock, produce_through_request_errors) {
        rd_kafka_t *rk = producer();
        /* Retriable errors on the first produce requests, including ones the
         * broker may have written (timeouts): idempotence must keep each
         * message exactly once and in order. */
        rd_kafka_mock_push_request_errors(
            mcluster, 0 /* ApiKey Produce */, 6,
            RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
            RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND);
        produce_n(rk, 0, 500);
        cr_assert_eq(rd_kafka_flush(rk, 60000), RD_KAFKA_RESP_ERR_NO_ERROR);
        cr_expect_eq(delivered, 500);
        cr_expect_eq(failed, 0);
        rd_kafka_destroy(rk);
        expect_partition(0, 500);
}

Test(kafka_mock, produce_through_leader_outage) {
        rd_kafka_t *rk = producer();
        int32_t leader = 1;
        rd_kafka_mock_partition_set_leader(mcluster, "t", 1, leader);
        produce_n(rk, 1, 100);
        /* The leader goes away for 3 s while more is produced. */
        rd_kafka_mock_broker_set_down(mcluster, leader);
        {
                int i;
                for (i = 100; i < 300; i++) {
                        char v[16];
                        snprintf(v, sizeof(v), "%d", i);
                        rd_kafka_producev(rk, RD_KAFKA_V_TOPIC("t"),
                                          RD_KAFKA_V_PARTITION(1),
                                          RD_KAFKA_V_VALUE(v, strlen(v)),
                                          RD_KAFKA_V_MSGFLAGS(
                                              RD_KAFKA_MSG_F_COPY),
                                          RD_KAFKA_V_END);
                }
        }
        for (int i = 0; i < 30; i++) {
                rd_kafka_poll(rk, 100);
        }
        rd_kafka_mock_broker_set_up(mcluster, leader);
        cr_assert_eq(rd_kafka_flush(rk, 60000), RD_KAFKA_RESP_ERR_NO_ERROR);
        cr_expect_eq(delivered, 300);
        cr_expect_eq(failed, 0);
        rd_kafka_destroy(rk);
        expect_partition(1, 300);
}

static void *settle_late(void *arg) {
        usleep(800 * 1000);
        rd_kafka_mock_topic_set_error(mcluster, (const char *)arg,
                                      RD_KAFKA_RESP_ERR_NO_ERROR);
        return NULL;
}

/* A topic created a moment ago (a worker started right after `kbatch
 * topics create`): while the broker still answers "unknown topic" (the
 * mock cluster's topic error, cleared after 0.8 s), kb_kafka_metadata asks
 * again, instead of returning that answer at once. */
Test(kafka_mock, metadata_waits_for_a_topic_being_created) {
        char err[512];
        rd_kafka_conf_t *kc = kb_kafka_conf_new(conf, "test", err, sizeof(err));
        rd_kafka_t *rk;
        rd_kafka_topic_t *rkt;
        const struct rd_kafka_metadata *md = NULL;
        pthread_t th;
        cr_assert(kc, "%s", err);
        rk = rd_kafka_new(RD_KAFKA_PRODUCER, kc, err, sizeof(err));
        cr_assert(rk, "%s", err);
        cr_assert_eq(rd_kafka_mock_topic_create(mcluster, "late", 3, 1), 0);
        rd_kafka_mock_topic_set_error(mcluster, "late",
                                      RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART);
        rkt = rd_kafka_topic_new(rk, "late", NULL);
        cr_assert_eq(pthread_create(&th, NULL, settle_late, "late"), 0);
        cr_assert_eq(kb_kafka_metadata(rk, 0, rkt, &md, 10000, err, sizeof(err)),
                     RD_KAFKA_RESP_ERR_NO_ERROR, "%s", err);
        pthread_join(th, NULL);
        cr_assert(md);
        cr_assert_eq(md->topic_cnt, 1);
        cr_expect_eq(md->topics[0].err, RD_KAFKA_RESP_ERR_NO_ERROR, "%s",
                     rd_kafka_err2str(md->topics[0].err));
        cr_expect_eq(md->topics[0].partition_cnt, 3);
        rd_kafka_metadata_destroy(md);
        rd_kafka_topic_destroy(rkt);
        /* a topic that never comes: its error, once the time is up */
        cr_assert_eq(rd_kafka_mock_topic_create(mcluster, "never", 1, 1), 0);
        rd_kafka_mock_topic_set_error(mcluster, "never",
                                      RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART);
        rkt = rd_kafka_topic_new(rk, "never", NULL);
        cr_assert_eq(kb_kafka_metadata(rk, 0, rkt, &md, 1000, err, sizeof(err)),
                     RD_KAFKA_RESP_ERR_NO_ERROR, "%s", err);
        cr_assert(md);
        cr_expect_eq(md->topics[0].err, RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
                     "%s", rd_kafka_err2str(md->topics[0].err));
        rd_kafka_metadata_destroy(md);
        rd_kafka_topic_destroy(rkt);
        rd_kafka_destroy(rk);
}
