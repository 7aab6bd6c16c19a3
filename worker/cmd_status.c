/* kbatch status BATCH_ID [-c FILE] [--json]: a batch's status from the
 * batch-state topic.
 *
 * The aggregator writes a batch's state records to the partition of
 * batch-state that has the number of the batch's results partition; results
 * are keyed by batch_id with the murmur2 partitioner and batch-state has the
 * same partition count, so that is murmur2(batch_id). That partition is read
 * to its end (read_committed) and the last record of the key wins; when it
 * has none, the other partitions are read too (results produced with another
 * partitioner). */
#include <getopt.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "aggregator.h"
#include "cmd.h"
#include "codec.h"
#include "conf.h"
#include "kafka.h"
#include "log.h"
#include "loop.h"

static void usage(FILE *out) {
        fprintf(out,
                "usage: kbatch status BATCH_ID [-c FILE] [--json]\n"
                "  Prints a batch's status, item counts, token usage and\n"
                "  timestamps from the aggregator's state (kbatch.batch-state).\n"
                "  Exit 0 when the batch is known, 1 when it is unknown (no\n"
                "  result aggregated yet, or its state was retired).\n"
                "  -c, --config FILE   configuration (default: $KBATCH_CONFIG,\n"
                "                      else ./worker.conf, else built-in)\n"
                "  --json              one JSON object on stdout\n");
}

/* The latest record of the key: *raw (malloc'ed, NULL for a tombstone) and
 * *found. */
typedef struct {
        const char *sf_key;
        size_t sf_key_len;
        int sf_found;
        char *sf_raw;
        size_t sf_raw_len;
} status_find_t;

/* Reads the given partitions of topic from the beginning to their end.
 * Returns 0, or -1 with errstr. */
static int read_partitions(rd_kafka_t *rk, const char *topic,
                           const int32_t *parts, int n, status_find_t *sf,
                           char *errstr, size_t errstr_size) {
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(n);
        int i, remaining = n;
        int *done = calloc((size_t)n, sizeof(int));
        int64_t idle_until = kb_now_ms() + 30000;
        rd_kafka_resp_err_t err;

        for (i = 0; i < n; i++)
                rd_kafka_topic_partition_list_add(l, topic, parts[i])->offset =
                    RD_KAFKA_OFFSET_BEGINNING;
        err = rd_kafka_assign(rk, l);
        rd_kafka_topic_partition_list_destroy(l);
        if (err || !done) {
                snprintf(errstr, errstr_size, "assign %s: %s", topic,
                         err ? rd_kafka_err2str(err) : "out of memory");
                free(done);
                return -1;
        }
        while (remaining > 0) {
                rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
                if (!m) {
                        if (kb_now_ms() > idle_until) {
                                snprintf(errstr, errstr_size,
                                         "timed out reading %s from %s", topic,
                                         "the broker");
                                free(done);
                                rd_kafka_assign(rk, NULL);
                                return -1;
                        }
                        continue;
                }
                idle_until = kb_now_ms() + 30000;
                if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                        for (i = 0; i < n; i++)
                                if (parts[i] == m->partition && !done[i]) {
                                        done[i] = 1;
                                        remaining--;
                                }
                } else if (m->err) {
                        snprintf(errstr, errstr_size, "reading %s: %s", topic,
                                 rd_kafka_message_errstr(m));
                        if (m->err != RD_KAFKA_RESP_ERR__TRANSPORT &&
                            m->err != RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) {
                                rd_kafka_message_destroy(m);
                                free(done);
                                rd_kafka_assign(rk, NULL);
                                return -1;
                        }
                } else if (m->key_len == sf->sf_key_len &&
                           !memcmp(m->key, sf->sf_key, m->key_len)) {
                        free(sf->sf_raw);
                        sf->sf_raw = NULL;
                        sf->sf_raw_len = 0;
                        sf->sf_found = 1;
                        if (m->payload && m->len &&
                            (sf->sf_raw = malloc(m->len))) {
                                memcpy(sf->sf_raw, m->payload, m->len);
                                sf->sf_raw_len = m->len;
                        }
                }
                rd_kafka_message_destroy(m);
        }
        free(done);
        rd_kafka_assign(rk, NULL);
        return 0;
}

int kb_cmd_batch_state(const kb_conf_t *conf, const char *id,
                       kb_bstate_t **bsp, char *errstr, size_t errstr_size) {
        const char *topic = conf->topics_name[KB_TOPIC_BATCH_STATE];
        rd_kafka_conf_t *kc;
        rd_kafka_t *rk = NULL;
        rd_kafka_topic_t *rkt = NULL;
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_resp_err_t err;
        status_find_t sf;
        int32_t cnt, p, *others = NULL;
        int ret = -1, n = 0;
        char gid[64];

        memset(&sf, 0, sizeof(sf));
        sf.sf_key = id;
        sf.sf_key_len = strlen(id);
        *bsp = NULL;
        snprintf(gid, sizeof(gid), "kbatch-status-%d", (int)getpid());
        if (!(kc = kb_kafka_conf_new(conf, "status", errstr, errstr_size)))
                return -1;
        if (kb_kafka_conf_set(kc, "group.id", gid, errstr, errstr_size) ||
            kb_kafka_conf_set(kc, "enable.auto.commit", "false", errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "enable.partition.eof", "true", errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "isolation.level", "read_committed", errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "fetch.wait.max.ms", "50", errstr,
                              errstr_size)) {
                rd_kafka_conf_destroy(kc);
                return -1;
        }
        if (!(rk = rd_kafka_new(RD_KAFKA_CONSUMER, kc, errstr, errstr_size))) {
                rd_kafka_conf_destroy(kc);
                return -1;
        }
        rd_kafka_poll_set_consumer(rk);
        rkt = rd_kafka_topic_new(rk, topic, NULL);
        /* A topic created a moment ago may not be in the metadata yet. */
        for (int tries = 0;; tries++) {
                err = rd_kafka_metadata(rk, 0, rkt, &md, 30000);
                if (err || tries >= 25 ||
                    (md->topic_cnt >= 1 && !md->topics[0].err))
                        break;
                rd_kafka_metadata_destroy(md);
                md = NULL;
                usleep(200 * 1000);
        }
        if (err) {
                snprintf(errstr, errstr_size, "metadata from %s: %s",
                         conf->kafka_bootstrap_servers, rd_kafka_err2str(err));
                goto out;
        }
        if (md->topic_cnt < 1 || md->topics[0].err ||
            md->topics[0].partition_cnt < 1) {
                snprintf(errstr, errstr_size,
                         "topic %s does not exist (kbatch topics create)",
                         topic);
                goto out;
        }
        cnt = md->topics[0].partition_cnt;
        p = rd_kafka_msg_partitioner_murmur2(rkt, id, strlen(id), cnt, NULL,
                                             NULL);
        if (read_partitions(rk, topic, &p, 1, &sf, errstr, errstr_size) < 0)
                goto out;
        if (!sf.sf_found && cnt > 1) {
                int32_t q;
                if (!(others = calloc((size_t)cnt, sizeof(*others))))
                        goto out;
                for (q = 0; q < cnt; q++)
                        if (q != p)
                                others[n++] = q;
                if (read_partitions(rk, topic, others, n, &sf, errstr,
                                    errstr_size) < 0)
                        goto out;
        }
        ret = 0;
        if (sf.sf_raw) {
                if (!(*bsp = kb_bstate_decode(sf.sf_raw, sf.sf_raw_len, errstr,
                                              errstr_size))) {
                        char e2[256];
                        snprintf(e2, sizeof(e2), "%s", errstr);
                        snprintf(errstr, errstr_size,
                                 "the state record of batch '%s' is "
                                 "unreadable: %s",
                                 id, e2);
                        ret = -1;
                } else
                        ret = 1;
        }
out:
        free(others);
        free(sf.sf_raw);
        if (md)
                rd_kafka_metadata_destroy(md);
        if (rkt)
                rd_kafka_topic_destroy(rkt);
        rd_kafka_consumer_close(rk);
        rd_kafka_destroy(rk);
        return ret;
}

static json_t *ms_or_null(int64_t ms) {
        return ms > 0 ? json_integer(ms) : json_null();
}

static void print_json(const kb_bstate_t *bs) {
        json_t *o = json_object(), *u = json_object();
        char *s;
        json_object_set_new(o, "batch_id", json_string(bs->bs_batch_id));
        json_object_set_new(
            o, "status", json_string(kb_batch_status_str(kb_bstate_status(bs))));
        json_object_set_new(o, "items_total", json_integer(bs->bs_items_total));
        json_object_set_new(o, "items_done", json_integer(bs->bs_done));
        json_object_set_new(o, "items_succeeded", json_integer(bs->bs_succeeded));
        json_object_set_new(o, "items_failed", json_integer(bs->bs_failed));
        json_object_set_new(o, "items_cancelled", json_integer(bs->bs_cancelled));
        json_object_set_new(o, "items_expired", json_integer(bs->bs_expired));
        json_object_set_new(o, "items_invalid", json_integer(bs->bs_invalid));
        json_object_set_new(u, "input_tokens", json_integer(bs->bs_input_tokens));
        json_object_set_new(u, "output_tokens",
                            json_integer(bs->bs_output_tokens));
        json_object_set_new(u, "total_tokens", json_integer(bs->bs_total_tokens));
        json_object_set_new(o, "usage", u);
        json_object_set_new(o, "first_result_at",
                            ms_or_null(bs->bs_first_result_at));
        json_object_set_new(o, "last_result_at",
                            ms_or_null(bs->bs_last_result_at));
        json_object_set_new(o, "completed_at", ms_or_null(bs->bs_completed_at));
        json_object_set_new(o, "updated_at", ms_or_null(bs->bs_updated_at));
        json_object_set_new(o, "deadline", ms_or_null(bs->bs_deadline));
        json_object_set_new(o, "revision", json_integer(bs->bs_revision));
        json_object_set_new(o, "callback_url",
                            bs->bs_callback_url
                                ? json_string(bs->bs_callback_url)
                                : json_null());
        json_object_set(o, "metadata",
                        bs->bs_metadata ? bs->bs_metadata : json_null());
        s = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        if (s)
                printf("%s\n", s);
        free(s);
}

/* "2026-11-22T11:00:00.123Z", or "-" for 0. */
static const char *iso(int64_t ms, char *buf, size_t size) {
        time_t t = (time_t)(ms / 1000);
        struct tm tm;
        char b[32];
        if (ms <= 0 || !gmtime_r(&t, &tm))
                return "-";
        strftime(b, sizeof(b), "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(buf, size, "%s.%03dZ", b, (int)(ms % 1000));
        return buf;
}

static void print_text(const kb_bstate_t *bs) {
        char b1[40];
        printf("batch %s: %s\n", bs->bs_batch_id,
               kb_batch_status_str(kb_bstate_status(bs)));
        printf("  items        %lld total, %lld done: %lld succeeded, %lld "
               "failed, %lld cancelled, %lld expired\n",
               (long long)bs->bs_items_total, (long long)bs->bs_done,
               (long long)bs->bs_succeeded, (long long)bs->bs_failed,
               (long long)bs->bs_cancelled, (long long)bs->bs_expired);
        if (bs->bs_invalid)
                printf("  invalid      %lld inconsistent items counted as "
                       "failed (invalid_item)\n",
                       (long long)bs->bs_invalid);
        printf("  usage        %lld input + %lld output = %lld tokens\n",
               (long long)bs->bs_input_tokens, (long long)bs->bs_output_tokens,
               (long long)bs->bs_total_tokens);
        printf("  first result %s\n", iso(bs->bs_first_result_at, b1, sizeof(b1)));
        printf("  last result  %s\n", iso(bs->bs_last_result_at, b1, sizeof(b1)));
        printf("  completed    %s\n", iso(bs->bs_completed_at, b1, sizeof(b1)));
        if (bs->bs_revision > 1)
                printf("  updated      %s (revision %lld)\n",
                       iso(bs->bs_updated_at, b1, sizeof(b1)),
                       (long long)bs->bs_revision);
        if (bs->bs_deadline)
                printf("  deadline     %s\n", iso(bs->bs_deadline, b1, sizeof(b1)));
}

int kb_cmd_status(int argc, char **argv) {
        static const struct option opts[] = {{"config", 1, NULL, 'c'},
                                             {"json", 0, NULL, 'j'},
                                             {"help", 0, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
        const char *path = NULL, *id = NULL;
        int c, json = 0, r;
        kb_conf_t *conf;
        kb_bstate_t *bs = NULL;
        char errstr[1024];

        opterr = 0;
        optind = 1;
        while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
                switch (c) {
                case 'c':
                        path = optarg;
                        break;
                case 'j':
                        json = 1;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                default:
                        fprintf(stderr,
                                "kbatch status: bad option '%s' (see kbatch "
                                "status --help)\n",
                                argv[optind - 1]);
                        return 2;
                }
        }
        if (optind >= argc) {
                fprintf(stderr, "kbatch status: missing BATCH_ID (see kbatch "
                                "status --help)\n");
                return 2;
        }
        if (optind + 1 < argc) {
                fprintf(stderr, "kbatch status: unexpected argument '%s'\n",
                        argv[optind + 1]);
                return 2;
        }
        id = argv[optind];
        if (!kb_codec_batch_id_valid(id)) {
                fprintf(stderr,
                        "kbatch status: '%.200s' is not a batch id (1-%d "
                        "characters of [A-Za-z0-9._:-])\n",
                        id, KB_BATCH_ID_MAX);
                return 2;
        }
        if (!(conf = kb_cmd_conf_load(path)))
                return 2;
        r = kb_cmd_batch_state(conf, id, &bs, errstr, sizeof(errstr));
        kb_conf_destroy(conf);
        if (r < 0) {
                fprintf(stderr, "kbatch status: %s\n", errstr);
                return 1;
        }
        if (r == 0) {
                fprintf(stderr, "kbatch status: unknown batch '%s'\n", id);
                return 1;
        }
        if (json)
                print_json(bs);
        else
                print_text(bs);
        kb_bstate_destroy(bs);
        return 0;
}
