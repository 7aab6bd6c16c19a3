/* batchfile: see batchfile.h. */
#include "batchfile.h"

#include <ctype.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec.h"

static const char *format_names[] = {"auto", "openai", "anthropic", "native"};

const char *kb_bf_format_str(kb_bf_format_t f) {
        if ((unsigned)f >= sizeof(format_names) / sizeof(*format_names))
                return "unknown";
        return format_names[f];
}

int kb_bf_format_parse(const char *s) {
        size_t i;
        for (i = 0; s && i < sizeof(format_names) / sizeof(*format_names); i++)
                if (!strcmp(s, format_names[i]))
                        return (int)i;
        return -1;
}

/* The endpoints every route knows (routes.c default_ops). */
static const kb_kv_t default_ops[] = {
        {"chat.completions", "/v1/chat/completions"},
        {"responses", "/v1/responses"},
        {"embeddings", "/v1/embeddings"},
        {"completions", "/v1/completions"},
        {"messages", "/v1/messages"},
};

/* Length of a UTF-8 string in code points (jansson guarantees validity). */
static size_t utf8_len(const char *s) {
        size_t n = 0;
        for (; *s; s++)
                if (((unsigned char)*s & 0xc0) != 0x80)
                        n++;
        return n;
}

void kb_bf_line_clear(kb_bf_line_t *line) {
        if (!line)
                return;
        free(line->bl_custom_id);
        free(line->bl_model);
        free(line->bl_operation);
        free(line->bl_callback_url);
        json_decref(line->bl_input);
        json_decref(line->bl_metadata);
        memset(line, 0, sizeof(*line));
}

#define FAIL(...)                                                              \
        do {                                                                   \
                snprintf(errstr, errstr_size, __VA_ARGS__);                    \
                goto fail;                                                     \
        } while (0)

/* A required non-empty string field: its value, or NULL with errstr. */
static const char *req_str(const json_t *o, const char *what, const char *k,
                           char *errstr, size_t errstr_size) {
        const json_t *v = json_object_get(o, k);
        if (!v || json_is_null(v))
                snprintf(errstr, errstr_size, "'%s%s' is missing", what, k);
        else if (!json_is_string(v))
                snprintf(errstr, errstr_size, "'%s%s' is not a string", what,
                         k);
        else if (!json_string_length(v))
                snprintf(errstr, errstr_size, "'%s%s' is empty", what, k);
        else
                return json_string_value(v);
        return NULL;
}

/* The custom_id (or, for native lines, item_id) of a line. */
static int take_id(const json_t *o, const char *k, kb_bf_line_t *line,
                   char *errstr, size_t errstr_size) {
        const char *id = req_str(o, "", k, errstr, errstr_size);
        if (!id)
                return -1;
        if (utf8_len(id) > KB_ITEM_ID_MAX) {
                snprintf(errstr, errstr_size,
                         "'%s' must be 1-%d characters (got %zu)", k,
                         KB_ITEM_ID_MAX, utf8_len(id));
                return -1;
        }
        if (!(line->bl_custom_id = strdup(id))) {
                snprintf(errstr, errstr_size, "out of memory");
                return -1;
        }
        return 0;
}

/* The operation of an OpenAI url, or NULL. */
static const char *op_of_url(const char *url, const kb_kv_t *ops,
                             size_t op_cnt) {
        size_t i;
        for (i = 0; i < sizeof(default_ops) / sizeof(*default_ops); i++)
                if (!strcmp(url, default_ops[i].v))
                        return default_ops[i].k;
        for (i = 0; ops && i < op_cnt; i++)
                if (ops[i].v && !strcmp(url, ops[i].v))
                        return ops[i].k;
        return NULL;
}

static int parse_openai(const json_t *o, const kb_kv_t *ops, size_t op_cnt,
                        kb_bf_line_t *line, char *errstr, size_t errstr_size) {
        const json_t *body = json_object_get(o, "body");
        const char *method, *url, *model, *op;
        if (take_id(o, "custom_id", line, errstr, errstr_size))
                return -1;
        if (!(method = req_str(o, "", "method", errstr, errstr_size)))
                return -1;
        if (strcmp(method, "POST")) {
                snprintf(errstr, errstr_size,
                         "'method' must be \"POST\" (got \"%.32s\")", method);
                return -1;
        }
        if (!(url = req_str(o, "", "url", errstr, errstr_size)))
                return -1;
        if (!(op = op_of_url(url, ops, op_cnt))) {
                snprintf(errstr, errstr_size,
                         "'url' \"%.200s\" is not an endpoint kbatch knows "
                         "(/v1/chat/completions, /v1/responses, "
                         "/v1/embeddings, /v1/completions, /v1/messages or "
                         "a path of a route's operations)",
                         url);
                return -1;
        }
        if (!body || json_is_null(body)) {
                snprintf(errstr, errstr_size, "'body' is missing");
                return -1;
        }
        if (!json_is_object(body)) {
                snprintf(errstr, errstr_size, "'body' is not a JSON object");
                return -1;
        }
        if (!(model = req_str(body, "body.", "model", errstr, errstr_size)))
                return -1;
        line->bl_model = strdup(model);
        line->bl_operation = strdup(op);
        line->bl_input = json_incref((json_t *)body);
        return 0;
}

static int parse_anthropic(const json_t *o, kb_bf_line_t *line, char *errstr,
                           size_t errstr_size) {
        const json_t *params = json_object_get(o, "params");
        const char *model;
        if (take_id(o, "custom_id", line, errstr, errstr_size))
                return -1;
        if (!params || json_is_null(params)) {
                snprintf(errstr, errstr_size, "'params' is missing");
                return -1;
        }
        if (!json_is_object(params)) {
                snprintf(errstr, errstr_size, "'params' is not a JSON object");
                return -1;
        }
        if (!(model = req_str(params, "params.", "model", errstr, errstr_size)))
                return -1;
        line->bl_model = strdup(model);
        line->bl_operation = strdup("messages");
        line->bl_input = json_incref((json_t *)params);
        return 0;
}

static int parse_native(const json_t *o, kb_bf_line_t *line, char *errstr,
                        size_t errstr_size) {
        const json_t *v;
        const char *model;
        /* item_id, or custom_id as the other formats call it */
        if (take_id(o,
                    !json_object_get(o, "item_id") &&
                                    json_object_get(o, "custom_id")
                            ? "custom_id"
                            : "item_id",
                    line, errstr, errstr_size))
                return -1;
        if (!(model = req_str(o, "", "model", errstr, errstr_size)))
                return -1;
        line->bl_model = strdup(model);
        v = json_object_get(o, "input");
        if (!v || json_is_null(v)) {
                snprintf(errstr, errstr_size, "'input' is missing");
                return -1;
        }
        if (!json_is_object(v)) {
                snprintf(errstr, errstr_size, "'input' is not a JSON object");
                return -1;
        }
        line->bl_input = json_incref((json_t *)v);
        v = json_object_get(o, "operation");
        if (v && !json_is_null(v)) {
                if (!json_is_string(v) || !json_string_length(v)) {
                        snprintf(errstr, errstr_size,
                                 "'operation' is not a non-empty string");
                        return -1;
                }
                line->bl_operation = strdup(json_string_value(v));
        }
        v = json_object_get(o, "callback_url");
        if (v && !json_is_null(v)) {
                if (!json_is_string(v)) {
                        snprintf(errstr, errstr_size,
                                 "'callback_url' is not a string");
                        return -1;
                }
                line->bl_callback_url = strdup(json_string_value(v));
        }
        v = json_object_get(o, "deadline");
        if (v && !json_is_null(v)) {
                if (!json_is_integer(v) || json_integer_value(v) <= 0) {
                        snprintf(errstr, errstr_size,
                                 "'deadline' is not a positive integer "
                                 "(epoch ms)");
                        return -1;
                }
                line->bl_deadline = json_integer_value(v);
        }
        v = json_object_get(o, "metadata");
        if (v && !json_is_null(v)) {
                if (!json_is_object(v)) {
                        snprintf(errstr, errstr_size,
                                 "'metadata' is not an object");
                        return -1;
                }
                line->bl_metadata = json_incref((json_t *)v);
        }
        return 0;
}

int kb_bf_line_parse(const char *buf, size_t len, kb_bf_format_t want,
                     const kb_kv_t *ops, size_t op_cnt, kb_bf_line_t *line,
                     char *errstr, size_t errstr_size) {
        json_error_t jerr;
        json_t *o = NULL;
        kb_bf_format_t f = want;
        int r;

        memset(line, 0, sizeof(*line));
        errstr[0] = '\0';
        if (!(o = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr)))
                FAIL("not valid JSON: %s (column %d)", jerr.text,
                     jerr.column > 0 ? jerr.column : (int)jerr.position + 1);
        if (!json_is_object(o))
                FAIL("not a JSON object");
        if (f == KB_BF_AUTO) {
                if (json_object_get(o, "params"))
                        f = KB_BF_ANTHROPIC;
                else if (json_object_get(o, "body") ||
                         json_object_get(o, "url") ||
                         json_object_get(o, "method"))
                        f = KB_BF_OPENAI;
                else if (json_object_get(o, "item_id") ||
                         json_object_get(o, "input") ||
                         json_object_get(o, "batch_id"))
                        f = KB_BF_NATIVE;
                else
                        FAIL("not a request: expected an OpenAI Batch line "
                             "(custom_id, method, url, body), an Anthropic "
                             "Message Batches line (custom_id, params) or a "
                             "BatchItem (item_id, model, input)");
        }
        switch (f) {
        case KB_BF_OPENAI:
                r = parse_openai(o, ops, op_cnt, line, errstr, errstr_size);
                break;
        case KB_BF_ANTHROPIC:
                r = parse_anthropic(o, line, errstr, errstr_size);
                break;
        default:
                r = parse_native(o, line, errstr, errstr_size);
                break;
        }
        if (r)
                goto fail;
        if (!line->bl_custom_id || !line->bl_model || !line->bl_input ||
            (f != KB_BF_NATIVE && !line->bl_operation))
                FAIL("out of memory");
        line->bl_format = f;
        json_decref(o);
        return 0;
fail:
        json_decref(o);
        kb_bf_line_clear(line);
        return -1;
}

json_t *kb_bf_item_json(const kb_bf_line_t *line, int64_t index,
                        const kb_bf_batch_t *b) {
        json_t *o = json_object(), *md = NULL;
        const char *cb =
                b->bb_callback_url ? b->bb_callback_url : line->bl_callback_url;
        int64_t deadline = b->bb_deadline ? b->bb_deadline : line->bl_deadline;
        if (!o)
                return NULL;
        json_object_set_new(o, "batch_id", json_string(b->bb_batch_id));
        json_object_set_new(o, "item_id", json_string(line->bl_custom_id));
        json_object_set_new(o, "item_index", json_integer(index));
        json_object_set_new(o, "items_total", json_integer(b->bb_items_total));
        json_object_set_new(o, "model", json_string(line->bl_model));
        if (line->bl_operation)
                json_object_set_new(o, "operation",
                                    json_string(line->bl_operation));
        json_object_set(o, "input", line->bl_input);
        if (deadline > 0)
                json_object_set_new(o, "deadline", json_integer(deadline));
        if (cb)
                json_object_set_new(o, "callback_url", json_string(cb));
        if (b->bb_metadata && json_object_size(b->bb_metadata)) {
                md = json_deep_copy(b->bb_metadata);
                if (md && line->bl_metadata)
                        json_object_update(md, line->bl_metadata);
        } else if (line->bl_metadata)
                md = json_incref(line->bl_metadata);
        if (md)
                json_object_set_new(o, "metadata", md);
        if (b->bb_submitted_at > 0)
                json_object_set_new(o, "submitted_at",
                                    json_integer(b->bb_submitted_at));
        return o;
}

/* ---- custom_id uniqueness ---- */

typedef struct {
        char *id_s; /* NULL: empty slot */
        uint64_t id_hash;
        int64_t id_line;
} kb_bf_id_t;

struct kb_bf_ids_s {
        kb_bf_id_t *is_slots;
        size_t is_size; /* power of two */
        size_t is_cnt;
};

static uint64_t hash_str(const char *s) {
        uint64_t h = 0xcbf29ce484222325ull;
        for (; *s; s++) {
                h ^= (unsigned char)*s;
                h *= 0x100000001b3ull;
        }
        h ^= h >> 33;
        h *= 0xff51afd7ed558ccdull;
        h ^= h >> 33;
        return h;
}

kb_bf_ids_t *kb_bf_ids_new(void) {
        kb_bf_ids_t *ids = calloc(1, sizeof(*ids));
        if (!ids)
                return NULL;
        ids->is_size = 1024;
        if (!(ids->is_slots = calloc(ids->is_size, sizeof(*ids->is_slots)))) {
                free(ids);
                return NULL;
        }
        return ids;
}

void kb_bf_ids_destroy(kb_bf_ids_t *ids) {
        size_t i;
        if (!ids)
                return;
        for (i = 0; i < ids->is_size; i++)
                free(ids->is_slots[i].id_s);
        free(ids->is_slots);
        free(ids);
}

static int ids_grow(kb_bf_ids_t *ids) {
        size_t size = ids->is_size * 2, i, j;
        kb_bf_id_t *slots = calloc(size, sizeof(*slots));
        if (!slots)
                return -1;
        for (i = 0; i < ids->is_size; i++) {
                if (!ids->is_slots[i].id_s)
                        continue;
                for (j = ids->is_slots[i].id_hash & (size - 1); slots[j].id_s;
                     j = (j + 1) & (size - 1))
                        ;
                slots[j] = ids->is_slots[i];
        }
        free(ids->is_slots);
        ids->is_slots = slots;
        ids->is_size = size;
        return 0;
}

int64_t kb_bf_ids_add(kb_bf_ids_t *ids, const char *id, int64_t line) {
        uint64_t h = hash_str(id);
        size_t j;
        if ((ids->is_cnt + 1) * 2 > ids->is_size && ids_grow(ids))
                return -1;
        for (j = h & (ids->is_size - 1); ids->is_slots[j].id_s;
             j = (j + 1) & (ids->is_size - 1))
                if (ids->is_slots[j].id_hash == h &&
                    !strcmp(ids->is_slots[j].id_s, id))
                        return ids->is_slots[j].id_line;
        if (!(ids->is_slots[j].id_s = strdup(id)))
                return -1;
        ids->is_slots[j].id_hash = h;
        ids->is_slots[j].id_line = line;
        ids->is_cnt++;
        return 0;
}

/* ---- batch ids ---- */

static const char crockford[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

void kb_bf_batch_id_generate(int64_t now_ms, const uint8_t rnd[10], char *out) {
        uint64_t t = (uint64_t)now_ms & 0xffffffffffffull;
        int i, bit;
        out[0] = 'b';
        out[1] = '-';
        /* 48 bits of time in 10 characters (the first holds 3 bits) */
        for (i = 9; i >= 0; i--) {
                out[2 + i] = crockford[t & 31];
                t >>= 5;
        }
        /* 80 bits of randomness in 16 characters */
        for (i = 0; i < 16; i++) {
                unsigned v = 0;
                for (bit = 0; bit < 5; bit++) {
                        int n = i * 5 + bit;
                        v = (v << 1) | ((rnd[n / 8] >> (7 - n % 8)) & 1u);
                }
                out[12 + i] = crockford[v];
        }
        out[28] = '\0';
}

/* Lower-case hex of the first n bytes of SHA-256(s, len) into out (2n+1). */
static int sha256_hex(const void *s, size_t len, size_t n, char *out) {
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int mdlen = 0;
        size_t i;
        if (!EVP_Digest(s, len, md, &mdlen, EVP_sha256(), NULL) || mdlen < n)
                return -1;
        for (i = 0; i < n; i++)
                snprintf(out + 2 * i, 3, "%02x", md[i]);
        return 0;
}

int kb_bf_batch_id_from_key(const char *key, char *out) {
        out[0] = 'b';
        out[1] = '-';
        return sha256_hex(key, strlen(key), 12, out + 2);
}

/* ---- arguments ---- */

#define TEN_YEARS_MS (10LL * 366 * 86400 * 1000)

int64_t kb_bf_duration_parse(const char *s) {
        int64_t total = 0;
        if (!s || !*s)
                return -1;
        while (*s) {
                int64_t v = 0, unit;
                int digits = 0;
                while (isdigit((unsigned char)*s)) {
                        v = v * 10 + (*s++ - '0');
                        if (++digits > 12)
                                return -1;
                }
                if (!digits)
                        return -1;
                if (!strncmp(s, "ms", 2)) {
                        unit = 1;
                        s += 2;
                } else if (*s == 's') {
                        unit = 1000;
                        s++;
                } else if (*s == 'm') {
                        unit = 60000;
                        s++;
                } else if (*s == 'h') {
                        unit = 3600000;
                        s++;
                } else if (*s == 'd') {
                        unit = 86400000;
                        s++;
                } else
                        return -1;
                total += v * unit;
                if (total > TEN_YEARS_MS)
                        return -1;
        }
        return total > 0 ? total : -1;
}

int64_t kb_bf_time_parse(const char *s, int64_t now_ms) {
        int64_t d = kb_bf_duration_parse(s);
        struct tm tm;
        const char *p;
        char *end;
        long long v;
        int64_t ms = 0, off = 0;
        if (d > 0)
                return now_ms + d;
        if (!s || !*s)
                return -1;
        v = strtoll(s, &end, 10);
        if (end != s && !*end)
                return v > 0 ? v : -1;
        memset(&tm, 0, sizeof(tm));
        if (!(p = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm)))
                return -1;
        if (*p == '.') {
                int64_t scale = 100;
                for (p++; isdigit((unsigned char)*p); p++) {
                        ms += (*p - '0') * scale;
                        scale /= 10;
                }
        }
        if (*p == 'Z' && !p[1])
                off = 0;
        else if ((*p == '+' || *p == '-') && isdigit((unsigned char)p[1]) &&
                 isdigit((unsigned char)p[2]) && p[3] == ':' &&
                 isdigit((unsigned char)p[4]) && isdigit((unsigned char)p[5]) &&
                 !p[6])
                off = (((p[1] - '0') * 10 + (p[2] - '0')) * 60 +
                       (p[4] - '0') * 10 + (p[5] - '0')) *
                      60000LL * (*p == '-' ? -1 : 1);
        else
                return -1;
        return (int64_t)timegm(&tm) * 1000 + ms - off;
}

int kb_bf_metadata_add(json_t *md, const char *kv, char *errstr,
                       size_t errstr_size) {
        const char *eq = strchr(kv, '=');
        char key[4 * KB_METADATA_KEY_MAX + 1];
        json_t *val;
        size_t klen;
        if (!eq || eq == kv) {
                snprintf(errstr, errstr_size,
                         "--metadata '%.100s' is not key=value", kv);
                return -1;
        }
        klen = (size_t)(eq - kv);
        if (klen >= sizeof(key)) {
                snprintf(errstr, errstr_size,
                         "--metadata key longer than %d characters",
                         KB_METADATA_KEY_MAX);
                return -1;
        }
        memcpy(key, kv, klen);
        key[klen] = '\0';
        {
                json_t *k = json_string(key); /* NULL: not UTF-8 */
                val = k ? json_string(eq + 1) : NULL;
                json_decref(k);
        }
        if (!val) {
                snprintf(errstr, errstr_size,
                         "--metadata '%.100s' is not UTF-8", kv);
                return -1;
        }
        if (utf8_len(key) > KB_METADATA_KEY_MAX) {
                json_decref(val);
                snprintf(errstr, errstr_size,
                         "--metadata key '%.64s...' is longer than %d "
                         "characters",
                         key, KB_METADATA_KEY_MAX);
                return -1;
        }
        if (utf8_len(eq + 1) > KB_METADATA_VAL_MAX) {
                json_decref(val);
                snprintf(errstr, errstr_size,
                         "--metadata value of '%s' is longer than %d "
                         "characters",
                         key, KB_METADATA_VAL_MAX);
                return -1;
        }
        if (!json_object_get(md, key) &&
            json_object_size(md) >= KB_METADATA_MAX) {
                json_decref(val);
                snprintf(errstr, errstr_size, "more than %d --metadata entries",
                         KB_METADATA_MAX);
                return -1;
        }
        json_object_set_new(md, key, val);
        return 0;
}

/* ---- output lines ---- */

static const char *out_names[] = {"openai", "anthropic", "native"};

const char *kb_bf_out_str(kb_bf_out_t f) {
        if ((unsigned)f >= sizeof(out_names) / sizeof(*out_names))
                return "unknown";
        return out_names[f];
}

int kb_bf_out_parse(const char *s) {
        size_t i;
        for (i = 0; s && i < sizeof(out_names) / sizeof(*out_names); i++)
                if (!strcmp(s, out_names[i]))
                        return (int)i;
        return -1;
}

static const char *jstr(const json_t *o, const char *k) {
        return json_string_value(json_object_get(o, k));
}

static json_t *jcopy(const json_t *o, const char *k) {
        json_t *v = json_object_get(o, k);
        return v ? json_incref(v) : json_null();
}

/* The error code and message of a failed result ("" when absent). */
static void error_of(const json_t *r, const char **code, const char **msg) {
        const json_t *e = json_object_get(r, "error");
        *code = jstr(e, "code");
        *msg = jstr(e, "message");
        if (!*code)
                *code = jstr(r, "status");
        if (!*code)
                *code = "unknown";
        if (!*msg)
                *msg = "";
}

static json_t *openai_line(const json_t *r, const char *status) {
        json_t *o = json_object(), *http = json_object_get(r, "http_status");
        char buf[KB_BATCH_ID_MAX + 32], hex[64];
        const char *bid = jstr(r, "batch_id");
        snprintf(buf, sizeof(buf), "%s:%lld", bid ? bid : "",
                 (long long)json_integer_value(
                         json_object_get(r, "item_index")));
        if (sha256_hex(buf, strlen(buf), 12, hex))
                snprintf(hex, sizeof(hex), "%s", "000000000000000000000000");
        snprintf(buf, sizeof(buf), "batch_req_%s", hex);
        json_object_set_new(o, "id", json_string(buf));
        json_object_set_new(o, "custom_id", jcopy(r, "item_id"));
        if (json_is_integer(http)) {
                json_t *resp = json_object();
                const json_t *rid = json_object_get(r, "request_id");
                json_object_set_new(resp, "status_code", json_incref(http));
                json_object_set_new(resp, "request_id",
                                    json_is_string(rid)
                                            ? json_incref((json_t *)rid)
                                            : json_null());
                json_object_set_new(resp, "body", jcopy(r, "output"));
                json_object_set_new(o, "response", resp);
        } else
                json_object_set_new(o, "response", json_null());
        if (!strcmp(status, "succeeded"))
                json_object_set_new(o, "error", json_null());
        else {
                const char *code, *msg;
                json_t *e = json_object();
                error_of(r, &code, &msg);
                if (!strcmp(status, "expired"))
                        code = "batch_expired";
                else if (!strcmp(status, "cancelled"))
                        code = "batch_cancelled";
                json_object_set_new(e, "code", json_string(code));
                json_object_set_new(e, "message", json_string(msg));
                json_object_set_new(o, "error", e);
        }
        return o;
}

/* Anthropic's error type for a kbatch error. */
static const char *anthropic_error_type(const char *code, int http) {
        if (!strcmp(code, "rate_limited") || http == 429)
                return "rate_limit_error";
        if (http == 401)
                return "authentication_error";
        if (http == 403)
                return "permission_error";
        if (http == 404)
                return "not_found_error";
        if (http == 413)
                return "request_too_large";
        if (http == 529)
                return "overloaded_error";
        if (!strcmp(code, "client_error") || !strcmp(code, "invalid_item") ||
            !strcmp(code, "unknown_model"))
                return "invalid_request_error";
        return "api_error";
}

static json_t *anthropic_line(const json_t *r, const char *status) {
        json_t *o = json_object(), *res = json_object();
        json_object_set_new(o, "custom_id", jcopy(r, "item_id"));
        if (!strcmp(status, "succeeded")) {
                json_object_set_new(res, "type", json_string("succeeded"));
                json_object_set_new(res, "message", jcopy(r, "output"));
        } else if (!strcmp(status, "cancelled"))
                json_object_set_new(res, "type", json_string("canceled"));
        else if (!strcmp(status, "expired"))
                json_object_set_new(res, "type", json_string("expired"));
        else {
                const json_t *out = json_object_get(r, "output");
                const char *t = jstr(out, "type");
                json_object_set_new(res, "type", json_string("errored"));
                if (t && !strcmp(t, "error") &&
                    json_is_object(json_object_get(out, "error")))
                        json_object_set_new(res, "error",
                                            json_incref((json_t *)out));
                else {
                        const char *code, *msg;
                        char m[2048];
                        json_t *e = json_object(), *inner = json_object();
                        error_of(r, &code, &msg);
                        snprintf(m, sizeof(m), "%s: %s", code, msg);
                        json_object_set_new(
                                inner, "type",
                                json_string(anthropic_error_type(
                                        code,
                                        (int)json_integer_value(json_object_get(
                                                r, "http_status")))));
                        json_object_set_new(inner, "message", json_string(m));
                        json_object_set_new(e, "type", json_string("error"));
                        json_object_set_new(e, "error", inner);
                        json_object_set_new(res, "error", e);
                }
        }
        json_object_set_new(o, "result", res);
        return o;
}

json_t *kb_bf_output_line(kb_bf_out_t fmt, const json_t *result,
                          int *is_error) {
        const char *status;
        if (!json_is_object(result))
                return NULL;
        if (!(status = jstr(result, "status")))
                status = "failed";
        if (is_error)
                *is_error = strcmp(status, "succeeded") != 0;
        switch (fmt) {
        case KB_BF_OUT_ANTHROPIC:
                return anthropic_line(result, status);
        case KB_BF_OUT_NATIVE:
                return json_deep_copy(result);
        default:
                return openai_line(result, status);
        }
}

/* ---- the collector ---- */

#define SLOT_NONE    0
#define SLOT_FINAL   1
#define SLOT_PENDING 2

struct kb_bf_collect_s {
        int64_t co_total;
        uint8_t *co_slots;   /* SLOT_* per item_index */
        json_t **co_pending; /* per item_index, allocated on first use */
        int64_t co_seen;
        int64_t co_succeeded;
};

kb_bf_collect_t *kb_bf_collect_new(int64_t items_total) {
        kb_bf_collect_t *co;
        if (items_total < 1 || items_total > KB_BF_LINES_MAX)
                return NULL;
        if (!(co = calloc(1, sizeof(*co))))
                return NULL;
        co->co_total = items_total;
        if (!(co->co_slots = calloc((size_t)items_total, 1))) {
                free(co);
                return NULL;
        }
        return co;
}

void kb_bf_collect_destroy(kb_bf_collect_t *co) {
        int64_t i;
        if (!co)
                return;
        if (co->co_pending)
                for (i = 0; i < co->co_total; i++)
                        json_decref(co->co_pending[i]);
        free(co->co_pending);
        free(co->co_slots);
        free(co);
}

kb_bf_keep_t kb_bf_collect_offer(kb_bf_collect_t *co, json_t *result) {
        const json_t *iv = json_object_get(result, "item_index");
        const char *st = jstr(result, "status");
        int ok = st && !strcmp(st, "succeeded");
        int64_t i;
        if (!json_is_integer(iv))
                return KB_BF_OUT_OF_RANGE;
        i = json_integer_value(iv);
        if (i < 0 || i >= co->co_total)
                return KB_BF_OUT_OF_RANGE;
        switch (co->co_slots[i]) {
        case SLOT_FINAL:
                return KB_BF_DUPLICATE;
        case SLOT_PENDING:
                if (!ok)
                        return KB_BF_DUPLICATE;
                json_decref(co->co_pending[i]);
                co->co_pending[i] = NULL;
                co->co_slots[i] = SLOT_FINAL;
                co->co_succeeded++;
                return KB_BF_KEEP_FINAL;
        default:
                break;
        }
        if (ok) {
                co->co_slots[i] = SLOT_FINAL;
                co->co_seen++;
                co->co_succeeded++;
                return KB_BF_KEEP_FINAL;
        }
        if (!co->co_pending &&
            !(co->co_pending = calloc((size_t)co->co_total, sizeof(json_t *))))
                return KB_BF_DUPLICATE; /* out of memory: nothing better */
        co->co_pending[i] = json_incref(result);
        co->co_slots[i] = SLOT_PENDING;
        co->co_seen++;
        return KB_BF_KEEP_PENDING;
}

int64_t kb_bf_collect_seen(const kb_bf_collect_t *co) {
        return co->co_seen;
}

int64_t kb_bf_collect_succeeded(const kb_bf_collect_t *co) {
        return co->co_succeeded;
}

int64_t kb_bf_collect_total(const kb_bf_collect_t *co) {
        return co->co_total;
}

json_t *kb_bf_collect_next_pending(const kb_bf_collect_t *co, int64_t *pos) {
        int64_t i;
        if (!co->co_pending)
                return NULL;
        for (i = *pos; i < co->co_total; i++)
                if (co->co_slots[i] == SLOT_PENDING) {
                        *pos = i + 1;
                        return co->co_pending[i];
                }
        *pos = co->co_total;
        return NULL;
}
