/* codec: see codec.h. */
#include "codec.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Members of a BatchItem (or of its input) read without jansson; an item
 * with more goes the jansson way. */
#define ITEM_MEMBERS_MAX 64

static int key_eq(const kb_jtext_member_t *m, const char *name) {
        size_t n = strlen(name);
        return m->jm_key_len == n && !memcmp(m->jm_key, name, n);
}

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

static const char *body_caps[] = {"max_tokens", "max_completion_tokens",
                                  "max_output_tokens"};
#define BODY_CAPS (sizeof(body_caps) / sizeof(*body_caps))

/* The request body from the input's text: its compact copy, with
 * ,"model":... before the closing brace when it has no model (where
 * json_dumps after json_object_set_new put it). NULL when the text has
 * keys with escapes (one may spell "model") or too many members. */
static char *body_from_text(const kb_item_t *item, int64_t *capp) {
        kb_jtext_member_t m[ITEM_MEMBERS_MAX];
        int n = kb_jtext_members(item->input_text, item->input_text_len, 0, m,
                                 ITEM_MEMBERS_MAX),
            i, has_model = 0;
        size_t k, clen;
        kb_jtext_buf_t b;
        if (n < 0)
                return NULL;
        for (i = 0; i < n; i++) {
                if (m[i].jm_key_esc)
                        return NULL;
                has_model |= key_eq(&m[i], "model");
        }
        for (k = 0; k < BODY_CAPS; k++)
                for (i = 0; i < n; i++)
                        if (key_eq(&m[i], body_caps[k]) &&
                            m[i].jm_type == KB_JTEXT_INTEGER)
                                *capp = m[i].jm_int;
        kb_jtext_buf_init(&b, item->input_text_len + 16 +
                                  (item->model ? 2 * strlen(item->model) : 0));
        if (b.jb_cap < item->input_text_len + 1) {
                kb_jtext_buf_clear(&b);
                return NULL;
        }
        kb_jtext_check(item->input_text, item->input_text_len, b.jb_buf, &clen,
                       NULL);
        b.jb_len = clen;
        if (!has_model) {
                b.jb_len--; /* the closing brace */
                kb_jtext_put_lit(&b, clen > 2 ? ",\"model\":" : "\"model\":");
                kb_jtext_put_str(&b, item->model);
                kb_jtext_put_lit(&b, "}");
        }
        return kb_jtext_buf_take(&b, NULL);
}

char *kb_codec_request_body(kb_item_t *item, int64_t *capp) {
        char *body;
        size_t k;
        *capp = 0;
        if (item->input_text) {
                if ((body = body_from_text(item, capp)))
                        return body;
                /* The way of a tree, then. */
                *capp = 0;
                if (!(item->input = json_loadb(item->input_text,
                                               item->input_text_len, 0, NULL)))
                        return NULL;
                item->input_text = NULL;
                item->input_text_len = 0;
        }
        if (!item->input)
                return NULL;
        if (!json_object_get(item->input, "model"))
                json_object_set_new(item->input, "model",
                                    json_string(item->model));
        if (!(body = json_dumps(item->input, JSON_COMPACT)))
                return NULL;
        for (k = 0; k < BODY_CAPS; k++) {
                json_t *v = json_object_get(item->input, body_caps[k]);
                if (json_is_integer(v))
                        *capp = json_integer_value(v);
        }
        return body;
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

/* A jansson value for a member: scalars made directly (the text is
 * checked: a string without escapes is valid UTF-8 without NUL), nested
 * values, escaped strings and reals loaded from their own text. */
static json_t *member_value(const kb_jtext_member_t *m) {
        switch (m->jm_type) {
        case KB_JTEXT_STRING:
                if (!m->jm_str_esc)
                        return json_stringn_nocheck(m->jm_val + 1,
                                                    m->jm_val_len - 2);
                break;
        case KB_JTEXT_INTEGER:
                return json_integer(m->jm_int);
        case KB_JTEXT_LITERAL:
                return m->jm_val[0] == 't'   ? json_true()
                       : m->jm_val[0] == 'f' ? json_false()
                                             : json_null();
        }
        return json_loadb(m->jm_val, m->jm_val_len,
                          JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, NULL);
}

/* The fast way of kb_codec_item_decode: the item's top level built from
 * its text, the input object left as text (*inp, a stand-in empty object
 * in the tree: what the validation looks at is its type). NULL when the
 * text must go to jansson: not a valid object without duplicate keys (and
 * jansson says why), keys with escapes, too many members. */
static json_t *item_shallow(const char *buf, size_t len, const char **inp,
                            size_t *inlenp) {
        kb_jtext_member_t m[ITEM_MEMBERS_MAX];
        int n = kb_jtext_members(buf, len, KB_JTEXT_NO_DUPLICATES, m,
                                 ITEM_MEMBERS_MAX),
            i;
        json_t *o;
        *inp = NULL;
        if (n < 0 || !(o = json_object()))
                return NULL;
        for (i = 0; i < n; i++) {
                json_t *v;
                if (m[i].jm_type == KB_JTEXT_OBJECT && key_eq(&m[i], "input")) {
                        v = json_object();
                        *inp = m[i].jm_val;
                        *inlenp = m[i].jm_val_len;
                } else
                        v = member_value(&m[i]);
                if (!v || json_object_setn_new_nocheck(o, m[i].jm_key,
                                                       m[i].jm_key_len, v)) {
                        json_decref(o);
                        return NULL;
                }
        }
        return o;
}

kb_codec_res_t kb_codec_item_decode(const void *buf, size_t len,
                                    size_t max_bytes, kb_item_t *item,
                                    char *errstr, size_t errstr_size) {
        json_t *o;
        kb_codec_res_t r;
        const char *in;
        size_t inlen = 0;

        if (!buf || len == 0 || !(o = item_shallow(buf, len, &in, &inlen)))
                return kb_codec_item_decode_tree(buf, len, max_bytes, item,
                                                 errstr, errstr_size);
        r = kb_codec_item_from_json(o, len, max_bytes, item, errstr,
                                    errstr_size);
        json_decref(o);
        if (item->input && in) {
                json_decref(item->input);
                item->input = NULL;
                item->input_text = in;
                item->input_text_len = inlen;
        }
        return r;
}

kb_codec_res_t kb_codec_item_decode_tree(const void *buf, size_t len,
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
        if (kb_codec_item_too_large(len, max_bytes)) {
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

static void obj_int(const json_t *o, const char *k, int *found,
                    int64_t *v) {
        const json_t *j = json_object_get(o, k);
        *found = j && json_is_integer(j);
        *v = *found ? json_integer_value(j) : 0;
}

int kb_codec_usage_from_output(const json_t *output, kb_result_t *res) {
        const json_t *u = json_object_get(output, "usage");
        kb_jtext_usage_t ju;
        memset(&ju, 0, sizeof(ju));
        if (u && json_is_object(u)) {
                ju.ju_usage = 1;
                obj_int(u, "prompt_tokens", &ju.ju_has_prompt, &ju.ju_prompt);
                obj_int(u, "completion_tokens", &ju.ju_has_completion,
                        &ju.ju_completion);
                obj_int(u, "input_tokens", &ju.ju_has_input, &ju.ju_input);
                obj_int(u, "output_tokens", &ju.ju_has_output, &ju.ju_output);
                obj_int(u, "total_tokens", &ju.ju_has_total, &ju.ju_total);
        }
        return kb_codec_usage_from_jtext(&ju, res);
}

int kb_codec_usage_from_jtext(const kb_jtext_usage_t *u, kb_result_t *res) {
        int fin, fout;
        int64_t in, out, tot;
        if (!u->ju_usage)
                return 0;
        fin = u->ju_has_prompt || u->ju_has_input;
        in = u->ju_has_prompt ? u->ju_prompt : u->ju_input;
        fout = u->ju_has_completion || u->ju_has_output;
        out = u->ju_has_completion ? u->ju_completion : u->ju_output;
        tot = u->ju_total;
        if (!fin && !fout && !u->ju_has_total)
                return 0;
        if (!u->ju_has_total)
                tot = in + out;
        res->has_usage = 1;
        res->input_tokens = in;
        res->output_tokens = out;
        res->total_tokens = tot;
        return 1;
}

int kb_codec_output_scan(char *buf, size_t *lenp, kb_result_t *res,
                         kb_jtext_usage_t *usage) {
        size_t n;
        res->output_text = NULL;
        res->output_text_len = 0;
        /* A failed check leaves buf as it was: the compact copy goes to
         * buf only once the text is known to be JSON. */
        if (!kb_jtext_check(buf, *lenp, NULL, &n, usage))
                return 0;
        if (n < *lenp) /* there is whitespace to drop */
                kb_jtext_check(buf, *lenp, buf, &n, NULL);
        buf[n] = '\0';
        *lenp = n;
        res->output_text = buf;
        res->output_text_len = n;
        return 1;
}

static json_t *str_or_null(const char *s) {
        return s ? json_string(s) : json_null();
}

static json_t *ms_or_null(int64_t ms) {
        return ms > 0 ? json_integer(ms) : json_null();
}

/* j compact, as json_dumps prints it. */
static void put_json(kb_jtext_buf_t *b, const json_t *j) {
        char *t = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
        if (!t) {
                b->jb_oom = 1;
                return;
        }
        kb_jtext_put_lit(b, t);
        free(t);
}

static void put_ms(kb_jtext_buf_t *b, int64_t ms) {
        if (ms > 0)
                kb_jtext_put_int(b, ms);
        else
                kb_jtext_put_lit(b, "null");
}

/* Writes what json_dumps(kb_codec_result_json(item, res), JSON_COMPACT)
 * prints, byte for byte (tests/unit/test_codec.c compares the two), but
 * without the tree: the output goes in as the checked text it came as. */
char *kb_codec_result_encode(const kb_item_t *item, const kb_result_t *res,
                             size_t *lenp) {
        kb_jtext_buf_t b;
        kb_jtext_buf_init(&b, 512 + res->output_text_len);
        kb_jtext_put_lit(&b, "{\"batch_id\":");
        kb_jtext_put_str(&b, item->batch_id);
        kb_jtext_put_lit(&b, ",\"item_id\":");
        kb_jtext_put_str(&b, item->item_id);
        kb_jtext_put_lit(&b, ",\"item_index\":");
        kb_jtext_put_int(&b, item->item_index);
        kb_jtext_put_lit(&b, ",\"items_total\":");
        kb_jtext_put_int(&b, item->items_total);
        kb_jtext_put_lit(&b, ",\"model\":");
        kb_jtext_put_str(&b, item->model);
        kb_jtext_put_lit(&b, ",\"operation\":");
        kb_jtext_put_str(&b, item->operation);
        kb_jtext_put_lit(&b, ",\"status\":");
        kb_jtext_put_str(&b, kb_item_status_str(res->status));
        kb_jtext_put_lit(&b, ",\"http_status\":");
        if (res->http_status)
                kb_jtext_put_int(&b, res->http_status);
        else
                kb_jtext_put_lit(&b, "null");
        kb_jtext_put_lit(&b, ",\"output\":");
        if (res->output)
                put_json(&b, res->output);
        else if (res->output_text)
                kb_jtext_put_raw(&b, res->output_text, res->output_text_len);
        else
                kb_jtext_put_lit(&b, "null");
        kb_jtext_put_lit(&b, ",\"error\":");
        if (res->error_code) {
                kb_jtext_put_lit(&b, "{\"code\":");
                kb_jtext_put_str(&b, res->error_code);
                kb_jtext_put_lit(&b, ",\"message\":");
                kb_jtext_put_str(&b, res->error_message ? res->error_message
                                                        : "");
                kb_jtext_put_lit(&b, "}");
        } else
                kb_jtext_put_lit(&b, "null");
        kb_jtext_put_lit(&b, ",\"attempts\":");
        kb_jtext_put_int(&b, res->attempts);
        kb_jtext_put_lit(&b, ",\"usage\":");
        if (res->has_usage) {
                kb_jtext_put_lit(&b, "{\"input_tokens\":");
                kb_jtext_put_int(&b, res->input_tokens);
                kb_jtext_put_lit(&b, ",\"output_tokens\":");
                kb_jtext_put_int(&b, res->output_tokens);
                kb_jtext_put_lit(&b, ",\"total_tokens\":");
                kb_jtext_put_int(&b, res->total_tokens);
                kb_jtext_put_lit(&b, "}");
        } else
                kb_jtext_put_lit(&b, "null");
        kb_jtext_put_lit(&b, ",\"started_at\":");
        put_ms(&b, res->started_at);
        kb_jtext_put_lit(&b, ",\"finished_at\":");
        put_ms(&b, res->finished_at);
        kb_jtext_put_lit(&b, ",\"latency_ms\":");
        if (res->latency_ms >= 0)
                kb_jtext_put_int(&b, res->latency_ms);
        else
                kb_jtext_put_lit(&b, "null");
        kb_jtext_put_lit(&b, ",\"worker\":");
        kb_jtext_put_str(&b, res->worker);
        kb_jtext_put_lit(&b, ",\"route\":");
        kb_jtext_put_str(&b, res->route);
        kb_jtext_put_lit(&b, ",\"job\":");
        if (res->job_id) {
                kb_jtext_put_lit(&b, "{\"id\":");
                kb_jtext_put_str(&b, res->job_id);
                kb_jtext_put_lit(&b, ",\"polls\":");
                kb_jtext_put_int(&b, res->job_polls);
                kb_jtext_put_lit(&b, ",\"wall_ms\":");
                kb_jtext_put_int(&b, res->job_wall_ms);
                kb_jtext_put_lit(&b, "}");
        } else
                kb_jtext_put_lit(&b, "null");
        kb_jtext_put_lit(&b, ",\"callback_url\":");
        kb_jtext_put_str(&b, item->callback_url);
        kb_jtext_put_lit(&b, ",\"deadline\":");
        put_ms(&b, item->deadline);
        kb_jtext_put_lit(&b, ",\"metadata\":");
        if (item->metadata && json_is_object(item->metadata)) {
                const char *k;
                json_t *v;
                int first = 1;
                kb_jtext_put_lit(&b, "{");
                json_object_foreach(item->metadata, k, v) {
                        if (!first)
                                kb_jtext_put_lit(&b, ",");
                        first = 0;
                        kb_jtext_put_str(&b, k);
                        kb_jtext_put_lit(&b, ":");
                        if (json_is_string(v))
                                kb_jtext_put_str(&b, json_string_value(v));
                        else
                                put_json(&b, v);
                }
                kb_jtext_put_lit(&b, "}");
        } else if (item->metadata)
                put_json(&b, item->metadata);
        else
                kb_jtext_put_lit(&b, "null");
        kb_jtext_put_lit(&b, "}");
        return kb_jtext_buf_take(&b, lenp);
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
        if (res->output)
                json_object_set(o, "output", res->output);
        else if (res->output_text)
                json_object_set_new(o, "output",
                                    json_loadb(res->output_text,
                                               res->output_text_len, 0, NULL));
        else
                json_object_set_new(o, "output", json_null());
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
