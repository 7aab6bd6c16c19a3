/*
 * rawconsume - the consume ceiling of `make bench`: reads every message of a
 * topic with librdkafka, doing no work with them, and prints one JSON line:
 *   {"messages": N, "bytes": B, "seconds": S, "per_second": R}
 * timed from the first message to the last (partition EOF on every partition).
 *
 *   rawconsume BOOTSTRAP TOPIC
 *
 * Partitions are assigned (no group, no commits) from the beginning, with the
 * same prefetch settings as librdkafka's defaults. Built by tests/bench/run.sh.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>

static double now_s(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int set(rd_kafka_conf_t *c, const char *k, const char *v) {
        char err[256];
        if (rd_kafka_conf_set(c, k, v, err, sizeof(err)) != RD_KAFKA_CONF_OK) {
                fprintf(stderr, "rawconsume: %s: %s\n", k, err);
                return -1;
        }
        return 0;
}

int main(int argc, char **argv) {
        char err[512];
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_topic_partition_list_t *parts;
        rd_kafka_conf_t *conf;
        rd_kafka_t *rk;
        rd_kafka_topic_t *rkt;
        int pcnt, eofs = 0, rc = 1;
        uint64_t msgs = 0, bytes = 0;
        double first = 0, last = 0;

        if (argc != 3) {
                fprintf(stderr, "usage: rawconsume BOOTSTRAP TOPIC\n");
                return 2;
        }
        conf = rd_kafka_conf_new();
        if (set(conf, "bootstrap.servers", argv[1]) ||
            set(conf, "group.id", "kbatch-bench-rawconsume") ||
            set(conf, "enable.auto.commit", "false") ||
            set(conf, "enable.partition.eof", "true"))
                return 2;
        if (!(rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err)))) {
                fprintf(stderr, "rawconsume: %s\n", err);
                return 1;
        }
        rd_kafka_poll_set_consumer(rk);
        rkt = rd_kafka_topic_new(rk, argv[2], NULL);
        if (rd_kafka_metadata(rk, 0, rkt, &md, 10000) != RD_KAFKA_RESP_ERR_NO_ERROR ||
            md->topic_cnt != 1 || md->topics[0].err) {
                fprintf(stderr, "rawconsume: no metadata for %s\n", argv[2]);
                goto out;
        }
        pcnt = md->topics[0].partition_cnt;
        parts = rd_kafka_topic_partition_list_new(pcnt);
        for (int i = 0; i < pcnt; i++)
                rd_kafka_topic_partition_list_add(parts, argv[2], i)->offset =
                        RD_KAFKA_OFFSET_BEGINNING;
        rd_kafka_assign(rk, parts);
        rd_kafka_topic_partition_list_destroy(parts);

        while (eofs < pcnt) {
                rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 1000);
                if (!m)
                        continue;
                if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                        eofs++;
                } else if (m->err) {
                        fprintf(stderr, "rawconsume: %s\n",
                                rd_kafka_message_errstr(m));
                } else {
                        if (!msgs)
                                first = now_s();
                        msgs++;
                        bytes += m->len;
                        last = now_s();
                }
                rd_kafka_message_destroy(m);
        }
        printf("{\"messages\": %" PRIu64 ", \"bytes\": %" PRIu64
               ", \"seconds\": %.6f, \"per_second\": %.1f}\n",
               msgs, bytes, last - first,
               last > first ? (double)msgs / (last - first) : 0.0);
        rc = 0;
out:
        if (md)
                rd_kafka_metadata_destroy(md);
        rd_kafka_topic_destroy(rkt);
        rd_kafka_consumer_close(rk);
        rd_kafka_destroy(rk);
        return rc;
}
