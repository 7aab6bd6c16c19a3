/* codec: see codec.h. */
#include "codec.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *status_names[] = {"none", "succeeded", "failed",
                                     "cancelled", "expired"};

const char *kb_item_status_str(kb_item_status_t st) {
        if ((unsigned)st >= sizeof(status_names) / sizeof(*status_names))
                return "unknown";
        return status_names[st];
}

int kb_codec_batch_id_valid(const char *s) {
        size_t n = 0;
        if (!s)
                return 0;
        for (; s[n]; n++) {
                unsigned char c = (unsigned char)s[n];
                if (!(isalnum(c) || c == '.' || c == '_' || c == ':' ||
                      c == '-'))
                        return 0;
                if (n >= KB_BATCH_ID_MAX)
                        return 0;
        }
        return n > 0;
}

void kb_item_clear(kb_item_t *item) {
        free(item->batch_id);
        free(item->item_id);
        free(item->model);
        free(item->operation);
        free(item->callback_url);
        json_decref(item->input);
        json_decref(item->metadata);
        memset(item, 0, sizeof(*item));
        item->item_index = -1;
}

/* Length of a UTF-8 string in code points (jansson guarantees validity). */
static size_t utf8_len(const char *s) {
        size_t n = 0;
        for (; *s; s++)
                if (((unsigned char)*s & 0xc0) != 0x80)
                        n++;
        return n;
}

/* 1 when s holds a control character (C0 or DEL). The item id goes into
 * request headers (Idempotency-Key, kbatch-item-id): a CR or LF there
 * would add headers of the item producer's choosing to the model request. */
static int has_ctl(const char *s) {
        for (; *s; s++)
                if ((unsigned char)*s < 0x20 || *s == 0x7f)
                        return 1;
        return 0;
}

/* A JSON integer that fits int64 (jansson rejects overflowing literals with
 * a decode error, and reals are not integers). */
static int get_int(const json_t *o, const char *k, int64_t *out, int *present) {
        const json_t *v = json_object_get(o, k);
        *present = v && !json_is_null(v);
        if (!*present)
                return 0;
        if (!json_is_integer(v))
                return -1;
        *out = json_integer_value(v);
        return 0;
}

static int get_str(const json_t *o, const char *k, char **out, int *present) {
        const json_t *v = json_object_get(o, k);
        *present = v && !json_is_null(v);
        if (!*present)
                return 0;
        if (!json_is_string(v))
                return -1;
        *out = strdup(json_string_value(v));
        return *out ? 0 : -1;
}

#define FAIL(...)                                                              \
        do {                                                                   \
                if (!err[0])                                                   \
                        snprintf(err, errstr_size, __VA_ARGS__);               \
        } while (0)

/* A string field over its bound is an error, and is dropped: it must not
 * reach the result, the batch state or the event (a 900,000-character
 * callback_url made every batch-state transaction of its partition fail). */
static int over_bound(char **s, size_t max) {
        if (!*s || utf8_len(*s) <= max)
                return 0;
        free(*s);
        *s = NULL;
        return 1;
}

kb_codec_res_t kb_codec_item_decode(const void *buf, size_t len,
                                    size_t max_bytes, kb_item_t *item,
                                    char *errstr, size_t errstr_size) {
        json_error_t jerr;
        json_t *o;
        kb_codec_res_t r;

        memset(item, 0, sizeof(*item));
        item->item_index = -1;
        errstr[0] = '\0';

        if (!buf || len == 0) {
                snprintf(errstr, errstr_size, "empty value");
                return KB_CODEC_UNDECODABLE;
        }
        o = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
        if (!o) {
                snprintf(errstr, errstr_size,
                         "value is not valid JSON: %s (at byte %d)", jerr.text,
                         jerr.position);
                return KB_CODEC_UNDECODABLE;
        }
        if (!json_is_object(o)) {
                snprintf(errstr, errstr_size, "value is not a JSON object");
                json_decref(o);
                return KB_CODEC_UNDECODABLE;
        }
        r = kb_codec_item_from_json(o, len, max_bytes, item, errstr,
                                    errstr_size);
        json_decref(o);
        return r;
}

kb_codec_res_t kb_codec_item_from_json(const json_t *o, size_t len,
                                       size_t max_bytes, kb_item_t *item,
                                       char *errstr, size_t errstr_size) {
        int present, addressable = 1;
        char *err = errstr;

        memset(item, 0, sizeof(*item));
        item->item_index = -1;
        err[0] = '\0';
        if (!json_is_object(o)) {
                snprintf(errstr, errstr_size, "value is not a JSON object");
                return KB_CODEC_UNDECODABLE;
        }

        /* Address: batch_id, item_index, items_total. */
        if (get_str(o, "batch_id", &item->batch_id, &present) || !present) {
                FAIL("'batch_id' is %s", present ? "not a string" : "missing");
                addressable = 0;
        } else if (!kb_codec_batch_id_valid(item->batch_id)) {
                FAIL("'batch_id' must be 1-%d characters of [A-Za-z0-9._:-]",
                     KB_BATCH_ID_MAX);
                free(item->batch_id);
                item->batch_id = NULL;
                addressable = 0;
        }
        if (get_int(o, "item_index", &item->item_index, &present) ||
            !present) {
                FAIL("'item_index' is %s",
                     present ? "not an integer" : "missing");
                item->item_index = -1;
                addressable = 0;
        }
        if (get_int(o, "items_total", &item->items_total, &present) ||
            !present) {
                FAIL("'items_total' is %s",
                     present ? "not an integer" : "missing");
                item->items_total = 0;
                addressable = 0;
        }

        /* The rest: any error makes the item invalid, first error wins. */
        if (addressable) {
                if (item->items_total < 1 ||
                    item->items_total > KB_ITEMS_TOTAL_MAX)
                        FAIL("'items_total' must be between 1 and %d (got "
                             "%lld)",
                             KB_ITEMS_TOTAL_MAX,
                             (long long)item->items_total);
                else if (item->item_index < 0 ||
                         item->item_index >= item->items_total)
                        FAIL("'item_index' must be between 0 and "
                             "items_total-1 (got %lld of %lld)",
                             (long long)item->item_index,
                             (long long)item->items_total);
        }
        if (get_str(o, "item_id", &item->item_id, &present) || !present)
                FAIL("'item_id' is %s", present ? "not a string" : "missing");
        else if (item->item_id[0] == '\0' ||
                 over_bound(&item->item_id, KB_ITEM_ID_MAX))
                FAIL("'item_id' must be 1-%d characters", KB_ITEM_ID_MAX);
        else if (has_ctl(item->item_id))
                FAIL("'item_id' must not contain control characters");
        if (get_str(o, "model", &item->model, &present) || !present)
                FAIL("'model' is %s", present ? "not a string" : "missing");
        else if (item->model[0] == '\0')
                FAIL("'model' is empty");
        else if (over_bound(&item->model, KB_MODEL_MAX))
                FAIL("'model' is longer than %d characters", KB_MODEL_MAX);
        if (get_str(o, "operation", &item->operation, &present))
                FAIL("'operation' is not a string");
        else if (over_bound(&item->operation, KB_OPERATION_MAX))
                FAIL("'operation' is longer than %d characters",
                     KB_OPERATION_MAX);
        if (get_str(o, "callback_url", &item->callback_url, &present))
                FAIL("'callback_url' is not a string");
        else if (over_bound(&item->callback_url, KB_CALLBACK_URL_MAX))
                FAIL("'callback_url' is longer than %d characters",
                     KB_CALLBACK_URL_MAX);
        if (get_int(o, "deadline", &item->deadline, &present))
                FAIL("'deadline' is not an integer (epoch ms)");
        else if (present && item->deadline <= 0)
                FAIL("'deadline' must be a positive epoch ms");
        if (get_int(o, "submitted_at", &item->submitted_at, &present))
                FAIL("'submitted_at' is not an integer (epoch ms)");

        {
                json_t *in = json_object_get(o, "input");
                if (!in || json_is_null(in))
                        FAIL("'input' is missing");
                else if (!json_is_object(in))
                        FAIL("'input' is not a JSON object");
                else
                        item->input = json_incref(in);
        }
        {
                json_t *md = json_object_get(o, "metadata");
                char merr[256];
                if (md && !json_is_null(md)) {
                        if (kb_codec_metadata_check(md, merr, sizeof(merr)))
                                FAIL("%s", merr);
                        else if (!err[0])
                                item->metadata = json_incref(md);
                }
        }
        if (max_bytes && len > max_bytes) {
                /* Reported first: size is the decisive reason. */
                err[0] = '\0';
                FAIL("value is %zu bytes, over the limit of %zu", len,
                     max_bytes);
        }
        if (!addressable)
                return KB_CODEC_UNADDRESSABLE;
        return err[0] ? KB_CODEC_INVALID : KB_CODEC_OK;
}

int kb_codec_metadata_check(const json_t *md, char *errstr,
                            size_t errstr_size) {
        const char *k;
        json_t *v;
        if (!json_is_object(md)) {
                snprintf(errstr, errstr_size, "'metadata' is not an object");
                return -1;
        }
        if (json_object_size(md) > KB_METADATA_MAX) {
                snprintf(errstr, errstr_size,
                         "'metadata' has more than %d entries", KB_METADATA_MAX);
                return -1;
        }
        json_object_foreach((json_t *)md, k, v) {
                if (utf8_len(k) > KB_METADATA_KEY_MAX) {
                        snprintf(errstr, errstr_size,
                                 "'metadata' key longer than %d characters",
                                 KB_METADATA_KEY_MAX);
                        return -1;
                }
                if (!json_is_string(v)) {
                        snprintf(errstr, errstr_size,
                                 "'metadata.%.64s' is not a string", k);
                        return -1;
                }
                if (utf8_len(json_string_value(v)) > KB_METADATA_VAL_MAX) {
                        snprintf(errstr, errstr_size,
                                 "'metadata.%.64s' is longer than %d "
                                 "characters",
                                 k, KB_METADATA_VAL_MAX);
                        return -1;
                }
        }
        return 0;
}

int kb_codec_str_within(const char *s, size_t max_chars) {
        return !s || utf8_len(s) <= max_chars;
}

static int64_t obj_int(const json_t *o, const char *k, int *found) {
        const json_t *v = json_object_get(o, k);
        if (v && json_is_integer(v)) {
                *found = 1;
                return json_integer_value(v);
        }
        return 0;
}

int kb_codec_usage_from_output(const json_t *output, kb_result_t *res) {
        const json_t *u = json_object_get(output, "usage");
        int fin = 0, fout = 0, ftot = 0;
        int64_t in, out, tot;
        if (!u || !json_is_object(u))
                return 0;
        in = obj_int(u, "prompt_tokens", &fin);
        if (!fin)
                in = obj_int(u, "input_tokens", &fin);
        out = obj_int(u, "completion_tokens", &fout);
        if (!fout)
                out = obj_int(u, "output_tokens", &fout);
        tot = obj_int(u, "total_tokens", &ftot);
        if (!fin && !fout && !ftot)
                return 0;
        if (!ftot)
                tot = in + out;
        res->has_usage = 1;
        res->input_tokens = in;
        res->output_tokens = out;
        res->total_tokens = tot;
        return 1;
}

static json_t *str_or_null(const char *s) {
        return s ? json_string(s) : json_null();
}

static json_t *ms_or_null(int64_t ms) {
        return ms > 0 ? json_integer(ms) : json_null();
}

char *kb_codec_result_encode(const kb_item_t *item, const kb_result_t *res,
                             size_t *lenp) {
        json_t *o = kb_codec_result_json(item, res);
        char *s;
        if (!o)
                return NULL;
        s = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        if (s && lenp)
                *lenp = strlen(s);
        return s;
}

json_t *kb_codec_result_json(const kb_item_t *item, const kb_result_t *res) {
        json_t *o = json_object();
        if (!o)
                return NULL;
        json_object_set_new(o, "batch_id", str_or_null(item->batch_id));
        json_object_set_new(o, "item_id", str_or_null(item->item_id));
        json_object_set_new(o, "item_index", json_integer(item->item_index));
        json_object_set_new(o, "items_total", json_integer(item->items_total));
        json_object_set_new(o, "model", str_or_null(item->model));
        json_object_set_new(o, "operation", str_or_null(item->operation));
        json_object_set_new(o, "status",
                            json_string(kb_item_status_str(res->status)));
        json_object_set_new(o, "http_status",
                            res->http_status ? json_integer(res->http_status)
                                             : json_null());
        json_object_set(o, "output", res->output ? res->output : json_null());
        if (res->error_code) {
                json_t *e = json_object();
                json_object_set_new(e, "code", json_string(res->error_code));
                json_object_set_new(
                    e, "message",
                    json_string(res->error_message ? res->error_message : ""));
                json_object_set_new(o, "error", e);
        } else
                json_object_set_new(o, "error", json_null());
        json_object_set_new(o, "attempts", json_integer(res->attempts));
        if (res->has_usage) {
                json_t *u = json_object();
                json_object_set_new(u, "input_tokens",
                                    json_integer(res->input_tokens));
                json_object_set_new(u, "output_tokens",
                                    json_integer(res->output_tokens));
                json_object_set_new(u, "total_tokens",
                                    json_integer(res->total_tokens));
                json_object_set_new(o, "usage", u);
        } else
                json_object_set_new(o, "usage", json_null());
        json_object_set_new(o, "started_at", ms_or_null(res->started_at));
        json_object_set_new(o, "finished_at", ms_or_null(res->finished_at));
        json_object_set_new(o, "latency_ms", res->latency_ms >= 0
                                                 ? json_integer(res->latency_ms)
                                                 : json_null());
        json_object_set_new(o, "worker", str_or_null(res->worker));
        json_object_set_new(o, "route", str_or_null(res->route));
        json_object_set_new(
            o, "job",
            res->job_id ? json_pack("{s:s,s:i,s:I}", "id", res->job_id,
                                    "polls", res->job_polls, "wall_ms",
                                    (json_int_t)res->job_wall_ms)
                        : json_null());
        json_object_set_new(o, "callback_url", str_or_null(item->callback_url));
        json_object_set_new(o, "deadline", ms_or_null(item->deadline));
        json_object_set(o, "metadata",
                        item->metadata ? item->metadata : json_null());
        return o;
}
