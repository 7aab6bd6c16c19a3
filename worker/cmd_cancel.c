/* kbatch cancel BATCH_ID [-c FILE] [--reason TEXT]: publishes a cancel
 * ControlCommand (SPEC §2) for a batch and waits until the broker has it.
 * Workers then end the batch's unfinished items `cancelled`; the aggregator
 * completes the batch `cancelled` when its last item is terminal. */
#include <getopt.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cmd.h"
#include "codec.h"
#include "conf.h"
#include "kafka.h"
#include "log.h"
#include "loop.h"

#define KB_CANCEL_REASON_MAX 1024

static void usage(FILE *out) {
        fprintf(out,
                "usage: kbatch cancel BATCH_ID [-c FILE] [--reason TEXT]\n"
                "  Publishes a cancel command for the batch to the control\n"
                "  topic: items not finished yet end `cancelled` without a\n"
                "  model call, calls in flight are aborted.\n"
                "  -c, --config FILE   configuration (default: $KBATCH_CONFIG,\n"
                "                      else ./worker.conf, else built-in)\n"
                "  -r, --reason TEXT   why (up to %d characters), carried in\n"
                "                      the command\n",
                KB_CANCEL_REASON_MAX);
}

typedef struct {
        int cd_done;
        rd_kafka_resp_err_t cd_err;
        int32_t cd_partition;
        int64_t cd_offset;
} cancel_dr_t;

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
        cancel_dr_t *dr = m->_private;
        if (!dr)
                return;
        dr->cd_done = 1;
        dr->cd_err = m->err;
        dr->cd_partition = m->partition;
        dr->cd_offset = m->offset;
}

char *kb_cmd_cancel_payload(const char *id, const char *reason) {
        json_t *o = json_object();
        char *payload;
        json_object_set_new(o, "batch_id", json_string(id));
        json_object_set_new(o, "action", json_string("cancel"));
        json_object_set_new(o, "requested_at", json_integer(kb_wall_ms()));
        json_object_set_new(o, "reason", reason ? json_string(reason)
                                                : json_null());
        payload = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        return payload;
}

/* Publishes the command; 0, or -1 with errstr. */
static int publish(const kb_conf_t *conf, const char *id, const char *reason,
                   cancel_dr_t *dr, char *errstr, size_t errstr_size) {
        const char *topic = conf->topics_name[KB_TOPIC_CONTROL];
        rd_kafka_conf_t *kc;
        rd_kafka_t *rk;
        rd_kafka_topic_t *rkt;
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_resp_err_t err;
        char *payload;
        int ret = -1;

        if (!(kc = kb_kafka_conf_new(conf, "cancel", errstr, errstr_size)))
                return -1;
        if (kb_kafka_conf_set(kc, "message.timeout.ms", "30000", errstr,
                              errstr_size)) {
                rd_kafka_conf_destroy(kc);
                return -1;
        }
        rd_kafka_conf_set_dr_msg_cb(kc, dr_cb);
        if (!(rk = kb_kafka_producer_new(conf, kc, errstr, errstr_size)))
                return -1;
        /* A clear error for a missing topic instead of a delivery timeout. */
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
        rd_kafka_topic_destroy(rkt);
        if (err) {
                snprintf(errstr, errstr_size, "metadata from %s: %s",
                         conf->kafka_bootstrap_servers, rd_kafka_err2str(err));
                goto out;
        }
        if (md->topic_cnt < 1 || md->topics[0].err) {
                snprintf(errstr, errstr_size,
                         "topic %s does not exist (kbatch topics create)",
                         topic);
                goto out;
        }
        if (!(payload = kb_cmd_cancel_payload(id, reason))) {
                snprintf(errstr, errstr_size, "out of memory");
                goto out;
        }
        err = rd_kafka_producev(
            rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(id, strlen(id)),
            RD_KAFKA_V_VALUE(payload, strlen(payload)),
            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_FREE), RD_KAFKA_V_OPAQUE(dr),
            RD_KAFKA_V_END);
        if (err) {
                free(payload);
                snprintf(errstr, errstr_size, "produce to %s: %s", topic,
                         rd_kafka_err2str(err));
                goto out;
        }
        rd_kafka_flush(rk, 40000);
        rd_kafka_poll(rk, 0);
        if (!dr->cd_done)
                snprintf(errstr, errstr_size,
                         "no acknowledgement from %s for the command",
                         conf->kafka_bootstrap_servers);
        else if (dr->cd_err)
                snprintf(errstr, errstr_size, "publishing to %s: %s", topic,
                         rd_kafka_err2str(dr->cd_err));
        else
                ret = 0;
out:
        if (md)
                rd_kafka_metadata_destroy(md);
        rd_kafka_destroy(rk);
        return ret;
}

int kb_cmd_cancel(int argc, char **argv) {
        static const struct option opts[] = {{"config", 1, NULL, 'c'},
                                             {"reason", 1, NULL, 'r'},
                                             {"help", 0, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
        const char *path = NULL, *id, *reason = NULL;
        kb_conf_t *conf;
        cancel_dr_t dr;
        char errstr[1024];
        int c, r;

        opterr = 0;
        optind = 1;
        while ((c = getopt_long(argc, argv, "c:r:h", opts, NULL)) != -1) {
                switch (c) {
                case 'c':
                        path = optarg;
                        break;
                case 'r':
                        reason = optarg;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                default:
                        return kb_cmd_usage_error("cancel", "bad option '%s'",
                                                  argv[optind - 1]);
                }
        }
        if (kb_cmd_batch_id_arg("cancel", argc, argv, optind, &id))
                return 2;
        if (reason && strlen(reason) > KB_CANCEL_REASON_MAX) {
                fprintf(stderr,
                        "kbatch cancel: --reason is longer than %d bytes\n",
                        KB_CANCEL_REASON_MAX);
                return 2;
        }
        if (reason) {
                json_t *t = json_string(reason); /* NULL: not UTF-8 */
                if (!t) {
                        fprintf(stderr,
                                "kbatch cancel: --reason is not UTF-8\n");
                        return 2;
                }
                json_decref(t);
        }
        if (!(conf = kb_cmd_conf_load(path)))
                return 2;
        memset(&dr, 0, sizeof(dr));
        r = publish(conf, id, reason, &dr, errstr, sizeof(errstr));
        if (r < 0) {
                fprintf(stderr, "kbatch cancel: %s\n", errstr);
                kb_conf_destroy(conf);
                return 1;
        }
        printf("cancel requested for batch %s (%s[%d] offset %lld)\n", id,
               conf->topics_name[KB_TOPIC_CONTROL], (int)dr.cd_partition,
               (long long)dr.cd_offset);
        kb_conf_destroy(conf);
        return 0;
}
