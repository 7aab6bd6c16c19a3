/* reader: see reader.h. */
#include "reader.h"

#include <stdio.h>

#include "kafka.h"

/* Every partition of topic, from start_ms (see reader.h); NULL + errstr. */
static rd_kafka_topic_partition_list_t *
all_partitions(rd_kafka_t *rk, const char *topic, const char *what,
               int64_t start_ms, char *errstr, size_t errstr_size) {
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_topic_partition_list_t *l;
        rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
        int i;
        if (kb_kafka_metadata(rk, 0, rkt, &md, 10000, errstr, errstr_size) ==
            RD_KAFKA_RESP_ERR__AUTHENTICATION) {
                /* errstr: the one line that says so */
                rd_kafka_topic_destroy(rkt);
                return NULL;
        }
        if (!md || md->topic_cnt != 1 || md->topics[0].err ||
            md->topics[0].partition_cnt < 1) {
                snprintf(errstr, errstr_size, "cannot read the %s %s: %s",
                         what, topic,
                         md && md->topic_cnt
                             ? rd_kafka_err2str(md->topics[0].err)
                             : "no metadata (is the broker up, were the "
                               "topics created?)");
                if (md)
                        rd_kafka_metadata_destroy(md);
                rd_kafka_topic_destroy(rkt);
                return NULL;
        }
        l = rd_kafka_topic_partition_list_new(md->topics[0].partition_cnt);
        for (i = 0; i < md->topics[0].partition_cnt; i++)
                rd_kafka_topic_partition_list_add(l, topic, i)->offset =
                    start_ms < 0 ? RD_KAFKA_OFFSET_BEGINNING : start_ms;
        rd_kafka_metadata_destroy(md);
        rd_kafka_topic_destroy(rkt);
        if (start_ms < 0)
                return l;
        /* Offsets by time (a partition with nothing newer starts at its
         * end). */
        if (rd_kafka_offsets_for_times(rk, l, 10000)) {
                for (i = 0; i < l->cnt; i++)
                        l->elems[i].offset = RD_KAFKA_OFFSET_BEGINNING;
        }
        for (i = 0; i < l->cnt; i++)
                if (l->elems[i].offset < 0)
                        l->elems[i].offset = RD_KAFKA_OFFSET_END;
        return l;
}

rd_kafka_t *kb_reader_new(const kb_conf_t *conf, const char *role,
                          const char *topic, const char *what,
                          int64_t start_ms, kb_loop_t *loop,
                          rd_kafka_queue_t **qp, int *parts, char *errstr,
                          size_t errstr_size) {
        kb_kafka_reader_opts_t o = {NULL, NULL, 0};
        rd_kafka_t *rk;
        rd_kafka_topic_partition_list_t *l;
        char group[64];
        int wfd;
        *qp = NULL;
        snprintf(group, sizeof(group), "kbatch-%s-reader", role);
        o.group = group;
        if (!(rk = kb_kafka_reader_new_opts(conf, role, &o, errstr,
                                            errstr_size)))
                return NULL;
        if (!(l = all_partitions(rk, topic, what, start_ms, errstr,
                                 errstr_size)))
                goto fail;
        *parts = l->cnt;
        if (rd_kafka_assign(rk, l)) {
                snprintf(errstr, errstr_size, "cannot assign %s", topic);
                rd_kafka_topic_partition_list_destroy(l);
                goto fail;
        }
        rd_kafka_topic_partition_list_destroy(l);
        *qp = rd_kafka_queue_get_consumer(rk);
        if ((wfd = kb_loop_wake_pipe(loop)) >= 0)
                rd_kafka_queue_io_event_enable(*qp, wfd, "r", 1);
        return rk;
fail:
        rd_kafka_destroy(rk);
        return NULL;
}
