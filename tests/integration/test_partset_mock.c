/* partset against librdkafka's mock cluster: a partition that was paused
 * when it was lost (or revoked) and is then assigned to the same consumer
 * again must be fetched again. librdkafka keeps a partition's pause across
 * the two (librdkafka#1849); partset starts it unpaused, so it has to tell
 * librdkafka. Found by the broker-down chaos scenario (tests/chaos/): after
 * the outage, partitions paused for the in-flight limit stalled forever. */
#include <criterion/criterion.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "partset.h"

static rd_kafka_t *mock_rk;
static rd_kafka_mock_cluster_t *mcluster;

static void setup(void) {
        char err[512];
        rd_kafka_conf_t *kc = rd_kafka_conf_new();
        kb_log_init(KB_LOG_OFF, KB_LOG_FMT_JSON, NULL);
        rd_kafka_conf_set(kc, "log_level", "0", NULL, 0);
        mock_rk = rd_kafka_new(RD_KAFKA_PRODUCER, kc, err, sizeof(err));
        cr_assert(mock_rk, "%s", err);
        mcluster = rd_kafka_mock_cluster_new(mock_rk, 1);
        cr_assert(mcluster);
        cr_assert_eq(rd_kafka_mock_topic_create(mcluster, "t", 1, 1), 0);
}

static void teardown(void) {
        rd_kafka_mock_cluster_destroy(mcluster);
        rd_kafka_destroy(mock_rk);
}

TestSuite(partset_mock, .init = setup, .fini = teardown, .timeout = 60);

static void produce(int n) {
        char err[512];
        rd_kafka_conf_t *kc = rd_kafka_conf_new();
        rd_kafka_t *p;
        int i;
        rd_kafka_conf_set(kc, "bootstrap.servers",
                          rd_kafka_mock_cluster_bootstraps(mcluster), NULL, 0);
        rd_kafka_conf_set(kc, "log_level", "0", NULL, 0);
        p = rd_kafka_new(RD_KAFKA_PRODUCER, kc, err, sizeof(err));
        cr_assert(p, "%s", err);
        for (i = 0; i < n; i++)
                cr_assert_eq(rd_kafka_producev(p, RD_KAFKA_V_TOPIC("t"),
                                               RD_KAFKA_V_PARTITION(0),
                                               RD_KAFKA_V_VALUE("v", 1),
                                               RD_KAFKA_V_MSGFLAGS(
                                                   RD_KAFKA_MSG_F_COPY),
                                               RD_KAFKA_V_END),
                             0);
        cr_assert_eq(rd_kafka_flush(p, 10000), 0);
        rd_kafka_destroy(p);
}

/* Messages consumed within ms milliseconds. */
static int consume_for(rd_kafka_t *c, int ms) {
        int n = 0, i;
        for (i = 0; i < ms / 100; i++) {
                rd_kafka_message_t *m = rd_kafka_consumer_poll(c, 100);
                if (!m)
                        continue;
                if (!m->err)
                        n++;
                rd_kafka_message_destroy(m);
        }
        return n;
}

/* A consumer of the mock cluster in `group`, without auto commits. */
static rd_kafka_t *consumer(const char *group) {
        char err[512];
        rd_kafka_conf_t *kc = rd_kafka_conf_new();
        rd_kafka_t *c;
        rd_kafka_conf_set(kc, "bootstrap.servers",
                          rd_kafka_mock_cluster_bootstraps(mcluster), NULL, 0);
        rd_kafka_conf_set(kc, "group.id", group, NULL, 0);
        rd_kafka_conf_set(kc, "auto.offset.reset", "earliest", NULL, 0);
        rd_kafka_conf_set(kc, "enable.auto.commit", "false", NULL, 0);
        rd_kafka_conf_set(kc, "log_level", "0", NULL, 0);
        c = rd_kafka_new(RD_KAFKA_CONSUMER, kc, err, sizeof(err));
        cr_assert(c, "%s", err);
        return c;
}

Test(partset_mock, paused_partition_is_fetched_after_reassignment) {
        rd_kafka_t *c;
        rd_kafka_topic_partition_list_t *l;
        kb_partset_t *ps = kb_partset_new("test", 0, 1000);
        kb_part_t **pts;
        size_t n = 0;

        produce(10);
        c = consumer("g");
        cr_assert(ps);
        kb_partset_set_consumer(ps, c);

        l = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(l, "t", 0);
        kb_partset_assign(ps, l);
        cr_assert_eq(consume_for(c, 3000), 10);

        /* paused (say, for the in-flight limit), then lost */
        pts = kb_partset_revoking(ps, l, &n);
        cr_assert_eq(n, 1);
        kb_partset_pause(ps, pts[0], KB_PAUSE_GLOBAL, 1);
        kb_partset_revoked(ps, pts, n, 1);
        kb_partset_unassign(ps, l);
        free(pts);

        /* assigned again (nothing was committed: from the start): it
         * starts unpaused and must fetch */
        produce(5);
        rd_kafka_topic_partition_list_destroy(l);
        l = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(l, "t", 0);
        kb_partset_assign(ps, l);
        cr_assert_geq(consume_for(c, 4000), 5,
                      "the re-assigned partition is not fetched");

        rd_kafka_topic_partition_list_destroy(l);
        rd_kafka_consumer_close(c);
        rd_kafka_destroy(c);
        kb_partset_destroy(ps);
}

/* The rebalance callbacks that rd_kafka_consumer_close() serves can come
 * when the consumer is no longer in its group, and librdkafka then has no
 * rebalance protocol to tell (NULL): partset crashed on it (SIGSEGV on
 * SIGTERM, found by the scale chaos scenario). After the close, every call
 * is such a call. */
Test(partset_mock, no_rebalance_protocol_when_closing) {
        rd_kafka_t *c;
        rd_kafka_topic_partition_list_t *l;
        kb_partset_t *ps = kb_partset_new("test", 0, 1000);
        kb_part_t **pts;
        size_t n = 0;

        c = consumer("g2");
        kb_partset_set_consumer(ps, c);
        l = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(l, "t", 0);
        kb_partset_pause_all(ps, KB_PAUSE_STOP, 1);
        rd_kafka_consumer_close(c);
        cr_assert_null(rd_kafka_rebalance_protocol(c),
                       "librdkafka has a protocol after close: this test no "
                       "longer covers the NULL case");
        kb_partset_assign(ps, l);
        pts = kb_partset_revoking(ps, l, &n);
        kb_partset_revoked(ps, pts, n, 1);
        kb_partset_unassign(ps, l);
        free(pts);
        rd_kafka_topic_partition_list_destroy(l);
        rd_kafka_destroy(c);
        kb_partset_destroy(ps);
}
