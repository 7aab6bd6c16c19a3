/* kb_bstate_read (worker/bstate.c), the batch-state reader of `kbatch
 * status`, `submit` and `collect`, against librdkafka's mock cluster: the
 * last record of a key wins, a tombstone means unknown, a record on another
 * partition than murmur2(batch_id) is still found, an unreadable record and
 * a missing topic are errors. */
#include <criterion/criterion.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdlib.h>
#include <string.h>

#include "bstate.h"
#include "conf.h"
#include "kafka.h"
#include "log.h"

#define PARTS 4

static rd_kafka_t *mock_rk;
static rd_kafka_mock_cluster_t *mcluster;
static kb_conf_t *conf;
static rd_kafka_t *prod;
static const char *topic;

static void setup(void) {
        char err[512];
        rd_kafka_conf_t *kc = rd_kafka_conf_new();
        kb_log_init(KB_LOG_OFF, KB_LOG_FMT_JSON, NULL);
        rd_kafka_conf_set(kc, "log_level", "0", NULL, 0);
        mock_rk = rd_kafka_new(RD_KAFKA_PRODUCER, kc, err, sizeof(err));
        cr_assert(mock_rk, "%s", err);
        mcluster = rd_kafka_mock_cluster_new(mock_rk, 1);
        cr_assert(mcluster);
        setenv("KBATCH_KAFKA_BOOTSTRAP_SERVERS",
               rd_kafka_mock_cluster_bootstraps(mcluster), 1);
        conf = kb_conf_load(NULL, NULL, err, sizeof(err));
        cr_assert(conf, "%s", err);
        topic = conf->topics_name[KB_TOPIC_BATCH_STATE];
        cr_assert_eq(rd_kafka_mock_topic_create(mcluster, topic, PARTS, 1), 0);
        kc = kb_kafka_conf_new(conf, "test", err, sizeof(err));
        cr_assert(kc, "%s", err);
        prod = kb_kafka_producer_new(conf, kc, err, sizeof(err));
        cr_assert(prod, "%s", err);
}

static void teardown(void) {
        rd_kafka_destroy(prod);
        kb_conf_destroy(conf);
        rd_kafka_mock_cluster_destroy(mcluster);
        rd_kafka_destroy(mock_rk);
        unsetenv("KBATCH_KAFKA_BOOTSTRAP_SERVERS");
}

/* The partition the aggregator writes batch id's state to. */
static int32_t home(const char *id) {
        rd_kafka_topic_t *rkt = rd_kafka_topic_new(prod, topic, NULL);
        int32_t p = rd_kafka_msg_partitioner_murmur2(rkt, id, strlen(id),
                                                     PARTS, NULL, NULL);
        rd_kafka_topic_destroy(rkt);
        return p;
}

/* Writes a record (value NULL: a tombstone) of key id to partition p. */
static void put(const char *id, int32_t p, const char *value, size_t len) {
        cr_assert_eq(rd_kafka_producev(prod, RD_KAFKA_V_TOPIC(topic),
                                       RD_KAFKA_V_PARTITION(p),
                                       RD_KAFKA_V_KEY(id, strlen(id)),
                                       RD_KAFKA_V_VALUE((void *)value, len),
                                       RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                       RD_KAFKA_V_END),
                     RD_KAFKA_RESP_ERR_NO_ERROR);
        cr_assert_eq(rd_kafka_flush(prod, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
}

/* The state record of batch id with total items, the first `succeeded`
 * succeeded, at revision rev. */
static void put_state(const char *id, int32_t p, int64_t total,
                      int64_t succeeded, int64_t rev) {
        kb_bstate_t *bs = kb_bstate_new(id, total);
        kb_bresult_t br;
        char *v;
        size_t len;
        int64_t i;
        cr_assert(bs);
        for (i = 0; i < succeeded; i++) {
                memset(&br, 0, sizeof(br));
                br.br_batch_id = id;
                br.br_item_index = i;
                br.br_items_total = total;
                br.br_status = KB_STATUS_SUCCEEDED;
                cr_assert_eq(kb_bstate_apply(bs, &br, 1000), KB_APPLY_COUNTED);
        }
        bs->bs_revision = rev;
        cr_assert((v = kb_bstate_encode(bs, &len)));
        put(id, p, v, len);
        free(v);
        kb_bstate_destroy(bs);
}

TestSuite(bstate_mock, .init = setup, .fini = teardown, .timeout = 120);

Test(bstate_mock, last_record_of_the_key_wins) {
        char err[512];
        kb_bstate_t *bs = NULL;
        put_state("b-one", home("b-one"), 10, 3, 0);
        put_state("b-other", home("b-one"), 5, 5, 1);
        put_state("b-one", home("b-one"), 10, 10, 1);
        cr_assert_eq(kb_bstate_read(conf, "b-one", &bs, err, sizeof(err)), 1,
                     "%s", err);
        cr_expect_str_eq(bs->bs_batch_id, "b-one");
        cr_expect_eq(bs->bs_items_total, 10);
        cr_expect_eq(bs->bs_succeeded, 10);
        cr_expect_eq(bs->bs_revision, 1);
        cr_expect_eq(kb_bstate_status(bs), KB_BATCH_SUCCEEDED);
        kb_bstate_destroy(bs);
}

Test(bstate_mock, found_on_another_partition) {
        char err[512];
        kb_bstate_t *bs = NULL;
        put_state("b-moved", (home("b-moved") + 1) % PARTS, 4, 2, 0);
        cr_assert_eq(kb_bstate_read(conf, "b-moved", &bs, err, sizeof(err)), 1,
                     "%s", err);
        cr_expect_eq(bs->bs_items_total, 4);
        cr_expect_eq(bs->bs_done, 2);
        cr_expect_eq(kb_bstate_status(bs), KB_BATCH_IN_PROGRESS);
        kb_bstate_destroy(bs);
}

Test(bstate_mock, tombstone_and_never_seen_are_unknown) {
        char err[512];
        kb_bstate_t *bs = NULL;
        put_state("b-retired", home("b-retired"), 3, 3, 1);
        put("b-retired", home("b-retired"), NULL, 0);
        cr_expect_eq(kb_bstate_read(conf, "b-retired", &bs, err, sizeof(err)),
                     0, "%s", err);
        cr_expect_null(bs);
        cr_expect_eq(kb_bstate_read(conf, "b-never", &bs, err, sizeof(err)), 0,
                     "%s", err);
        cr_expect_null(bs);
}

Test(bstate_mock, unreadable_record_is_an_error) {
        char err[512];
        kb_bstate_t *bs = NULL;
        put("b-bad", home("b-bad"), "{\"v\":1}", 7);
        cr_expect_eq(kb_bstate_read(conf, "b-bad", &bs, err, sizeof(err)), -1);
        cr_expect_null(bs);
        cr_expect(strstr(err, "the state record of batch 'b-bad' is "
                              "unreadable"),
                  "%s", err);
}

Test(bstate_mock, missing_topic_is_an_error) {
        char err[512];
        kb_bstate_t *bs = NULL;
        kb_conf_t *c;
        setenv("KBATCH_TOPICS_BATCH_STATE", "no-such-state", 1);
        c = kb_conf_load(NULL, NULL, err, sizeof(err));
        unsetenv("KBATCH_TOPICS_BATCH_STATE");
        cr_assert(c, "%s", err);
        cr_expect_eq(kb_bstate_read(c, "b-one", &bs, err, sizeof(err)), -1);
        cr_expect_null(bs);
        cr_expect(strstr(err, "no-such-state does not exist"), "%s", err);
        kb_conf_destroy(c);
}
