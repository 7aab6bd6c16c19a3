/* control: see control.h. */
#include "control.h"

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "kafka.h"
#include "log.h"
#include "reader.h"

#define KB_CONTROL_STARTUP_GRACE_MS 15000

struct kb_control_s {
        const kb_conf_t *ct_conf;
        rd_kafka_t *ct_rk;
        rd_kafka_queue_t *ct_q;
        kb_cancelset_t *ct_cancelled;
        int ct_parts;             /* partitions not yet caught up */
        int ct_ready;
        int64_t ct_started_ms;
        int64_t ct_sweep_ms;      /* mono ms of the next sweep */
        kb_control_cancel_cb *ct_cb;
        void *ct_opaque;
};

/* ---- the set of cancelled batches ------------------------------------ */

/* batch_id -> [reason, cancelled at (wall ms)], in insertion order (jansson
 * keeps it), so the oldest are first. */
struct kb_cancelset_s {
        json_t *cs_map;
        int64_t cs_max_age_ms;
        size_t cs_max;
};

kb_cancelset_t *kb_cancelset_new(int64_t max_age_ms, size_t max_cnt) {
        kb_cancelset_t *cs = calloc(1, sizeof(*cs));
        if (!cs || !(cs->cs_map = json_object())) {
                free(cs);
                return NULL;
        }
        cs->cs_max_age_ms = max_age_ms;
        cs->cs_max = max_cnt;
        return cs;
}

void kb_cancelset_destroy(kb_cancelset_t *cs) {
        if (!cs)
                return;
        json_decref(cs->cs_map);
        free(cs);
}

int kb_cancelset_add(kb_cancelset_t *cs, const char *batch_id,
                     const char *reason, int64_t at_ms) {
        if (json_object_get(cs->cs_map, batch_id))
                return 0;
        json_object_set_new(cs->cs_map, batch_id,
                            json_pack("[sI]", reason ? reason : "",
                                      (json_int_t)at_ms));
        while (json_object_size(cs->cs_map) > cs->cs_max) /* the oldest */
                json_object_del(cs->cs_map,
                                json_object_iter_key(
                                    json_object_iter(cs->cs_map)));
        return 1;
}

const char *kb_cancelset_get(const kb_cancelset_t *cs, const char *batch_id) {
        json_t *e = json_object_get(cs->cs_map, batch_id);
        return e ? json_string_value(json_array_get(e, 0)) : NULL;
}

size_t kb_cancelset_size(const kb_cancelset_t *cs) {
        return json_object_size(cs->cs_map);
}

size_t kb_cancelset_sweep(kb_cancelset_t *cs, int64_t now_ms) {
        const char *k;
        json_t *v;
        void *tmp;
        size_t n = 0;
        json_object_foreach_safe(cs->cs_map, tmp, k, v) {
                int64_t at = json_integer_value(json_array_get(v, 1));
                if (now_ms - at <= cs->cs_max_age_ms &&
                    json_object_size(cs->cs_map) <= cs->cs_max)
                        break; /* the rest are younger */
                json_object_del(cs->cs_map, k);
                n++;
        }
        return n;
}

int kb_control_parse(const void *buf, size_t len, char *batch_id,
                     size_t batch_id_size, char *reason, size_t reason_size) {
        json_t *o = json_loadb(buf, len, 0, NULL);
        const char *b, *a, *r;
        int ok = 0;
        if (!o)
                return 0;
        b = json_string_value(json_object_get(o, "batch_id"));
        a = json_string_value(json_object_get(o, "action"));
        r = json_string_value(json_object_get(o, "reason"));
        if (b && a && !strcmp(a, "cancel") && kb_codec_batch_id_valid(b)) {
                snprintf(batch_id, batch_id_size, "%s", b);
                snprintf(reason, reason_size, "%s", r ? r : "");
                ok = 1;
        }
        json_decref(o);
        return ok;
}

kb_control_t *kb_control_new(const kb_conf_t *conf, kb_loop_t *loop,
                             kb_control_cancel_cb *cb, void *opaque,
                             char *errstr, size_t errstr_size) {
        kb_control_t *ct = calloc(1, sizeof(*ct));
        const char *topic = conf->topics_name[KB_TOPIC_CONTROL];

        if (!ct)
                return NULL;
        ct->ct_conf = conf;
        ct->ct_cb = cb;
        ct->ct_opaque = opaque;
        /* A cancellation older than the look-back is not read again at
         * start either: forget it the same way (and bound the set). */
        if (!(ct->ct_cancelled = kb_cancelset_new(conf->control_lookback_ms,
                                                  KB_CONTROL_CANCELLED_MAX))) {
                snprintf(errstr, errstr_size, "out of memory");
                goto fail;
        }
        ct->ct_started_ms = kb_now_ms();
        if (!(ct->ct_rk = kb_reader_new(conf, "control", topic,
                                        "control topic",
                                        kb_wall_ms() - conf->control_lookback_ms,
                                        loop, &ct->ct_q, &ct->ct_parts, errstr,
                                        errstr_size)))
                goto fail;
        return ct;
fail:
        kb_control_destroy(ct);
        return NULL;
}

void kb_control_destroy(kb_control_t *ct) {
        if (!ct)
                return;
        if (ct->ct_q)
                rd_kafka_queue_destroy(ct->ct_q);
        if (ct->ct_rk) {
                rd_kafka_consumer_close(ct->ct_rk);
                rd_kafka_destroy(ct->ct_rk);
        }
        kb_cancelset_destroy(ct->ct_cancelled);
        free(ct);
}

int kb_control_serve(kb_control_t *ct, int64_t now) {
        rd_kafka_message_t *m;
        int budget = 1000;
        while (budget-- > 0 && (m = rd_kafka_consumer_poll(ct->ct_rk, 0))) {
                char batch[KB_BATCH_ID_MAX + 1], reason[512];
                if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                        if (ct->ct_parts > 0 && --ct->ct_parts == 0 &&
                            !ct->ct_ready) {
                                ct->ct_ready = 1;
                                kb_log(KB_LOG_INFO, "control",
                                       "control topic read: %zu cancelled "
                                       "batches",
                                       kb_cancelset_size(ct->ct_cancelled));
                        }
                } else if (m->err) {
                        kb_log(KB_LOG_WARN, "control", "%s",
                               rd_kafka_message_errstr(m));
                } else if (kb_control_parse(m->payload, m->len, batch,
                                            sizeof(batch), reason,
                                            sizeof(reason))) {
                        rd_kafka_timestamp_type_t tt;
                        int64_t at = rd_kafka_message_timestamp(m, &tt);
                        if (at <= 0)
                                at = kb_wall_ms();
                        if (kb_cancelset_add(ct->ct_cancelled, batch, reason,
                                             at)) {
                                const char *kv[] = {"batch_id", batch, NULL};
                                kb_logkv(KB_LOG_INFO, "control", kv,
                                         "batch cancelled%s%s",
                                         reason[0] ? ": " : "", reason);
                                if (ct->ct_cb)
                                        ct->ct_cb(batch, reason,
                                                  ct->ct_opaque);
                        }
                }
                rd_kafka_message_destroy(m);
        }
        if (now >= ct->ct_sweep_ms) {
                ct->ct_sweep_ms = now + 60000;
                kb_cancelset_sweep(ct->ct_cancelled, kb_wall_ms());
        }
        if (!ct->ct_ready &&
            now - ct->ct_started_ms > KB_CONTROL_STARTUP_GRACE_MS) {
                ct->ct_ready = 1;
                kb_log(KB_LOG_WARN, "control",
                       "control topic not caught up after %d ms; going on",
                       KB_CONTROL_STARTUP_GRACE_MS);
        }
        return budget <= 0 ? 0 : 1000;
}

int kb_control_ready(const kb_control_t *ct) { return ct->ct_ready; }

const char *kb_control_cancelled(const kb_control_t *ct,
                                 const char *batch_id) {
        if (!batch_id)
                return NULL;
        return kb_cancelset_get(ct->ct_cancelled, batch_id);
}
