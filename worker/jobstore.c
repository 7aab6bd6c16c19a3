/* jobstore: see jobstore.h. */
#include "jobstore.h"

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "reader.h"
#include "log.h"

#define JS_STARTUP_GRACE_MS 30000

struct kb_jobstore_s {
        rd_kafka_t *js_rk;
        rd_kafka_queue_t *js_q;
        json_t *js_map;     /* key -> {"id", "route", "submitted_at"} */
        int js_parts;       /* partitions not read to their end yet */
        int js_ready;
        int64_t js_started_ms;
};

kb_jobstore_t *kb_jobstore_new_local(void) {
        kb_jobstore_t *js = calloc(1, sizeof(*js));
        if (js && !(js->js_map = json_object())) {
                free(js);
                return NULL;
        }
        if (js)
                js->js_ready = 1;
        return js;
}

kb_jobstore_t *kb_jobstore_new(const kb_conf_t *conf, kb_loop_t *loop,
                               char *errstr, size_t errstr_size) {
        const char *topic = conf->topics_name[KB_TOPIC_ITEMS_JOBS];
        kb_jobstore_t *js = kb_jobstore_new_local();

        if (!js) {
                snprintf(errstr, errstr_size, "out of memory");
                return NULL;
        }
        js->js_ready = 0;
        js->js_started_ms = kb_now_ms();
        if (!(js->js_rk = kb_reader_new(conf, "jobs", topic, "async jobs topic",
                                        -1, loop, &js->js_q, &js->js_parts,
                                        errstr, errstr_size)))
                goto fail;
        return js;
fail:
        kb_jobstore_destroy(js);
        return NULL;
}

void kb_jobstore_destroy(kb_jobstore_t *js) {
        if (!js)
                return;
        if (js->js_q)
                rd_kafka_queue_destroy(js->js_q);
        if (js->js_rk) {
                rd_kafka_consumer_close(js->js_rk);
                rd_kafka_destroy(js->js_rk);
        }
        json_decref(js->js_map);
        free(js);
}

void kb_jobstore_apply(kb_jobstore_t *js, const char *key, size_t key_len,
                       const void *value, size_t value_len) {
        char k[512];
        json_t *v;
        if (!key || !key_len || key_len >= sizeof(k))
                return;
        memcpy(k, key, key_len);
        k[key_len] = '\0';
        if (!value) {
                json_object_del(js->js_map, k);
                return;
        }
        v = json_loadb(value, value_len, 0, NULL);
        if (json_is_string(json_object_get(v, "id")))
                json_object_set_new(js->js_map, k, v);
        else
                json_decref(v);
}

int kb_jobstore_serve(kb_jobstore_t *js, int64_t now) {
        rd_kafka_message_t *m;
        int budget = 1000;
        if (!js->js_rk)
                return 1000;
        while (budget-- > 0 && (m = rd_kafka_consumer_poll(js->js_rk, 0))) {
                if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                        if (js->js_parts > 0 && --js->js_parts == 0 &&
                            !js->js_ready) {
                                js->js_ready = 1;
                                kb_log(KB_LOG_INFO, "async",
                                       "jobs topic read: %zu running jobs "
                                       "recorded",
                                       json_object_size(js->js_map));
                        }
                } else if (m->err) {
                        kb_log(KB_LOG_WARN, "async", "%s",
                               rd_kafka_message_errstr(m));
                } else
                        kb_jobstore_apply(js, m->key, m->key_len, m->payload,
                                          m->len);
                rd_kafka_message_destroy(m);
        }
        if (!js->js_ready && now - js->js_started_ms > JS_STARTUP_GRACE_MS) {
                js->js_ready = 1;
                kb_log(KB_LOG_WARN, "async",
                       "jobs topic not caught up after %d ms; going on",
                       JS_STARTUP_GRACE_MS);
        }
        return budget <= 0 ? 0 : 1000;
}

int kb_jobstore_ready(const kb_jobstore_t *js) { return js->js_ready; }

const char *kb_jobstore_get(const kb_jobstore_t *js, const char *key,
                            const char *route, int64_t *submitted_at) {
        json_t *v = json_object_get(js->js_map, key);
        const char *r = json_string_value(json_object_get(v, "route"));
        if (!v || !r || !route || strcmp(r, route))
                return NULL;
        *submitted_at = json_integer_value(json_object_get(v, "submitted_at"));
        return json_string_value(json_object_get(v, "id"));
}

char *kb_jobstore_record(const char *id, const char *route,
                         int64_t submitted_at, size_t *lenp) {
        json_t *o = json_pack("{s:s,s:s,s:I}", "id", id, "route", route,
                              "submitted_at", (json_int_t)submitted_at);
        char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (s && lenp)
                *lenp = strlen(s);
        return s;
}

size_t kb_jobstore_size(const kb_jobstore_t *js) {
        return json_object_size(js->js_map);
}
