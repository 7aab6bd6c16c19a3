/* aggregator: see aggregator.h.
 *
 * Part 1, the pure model: status rule, 2-bit map, kb_bstate_t, result
 * decoding, the BatchState record and the BatchEvent encodings.
 * Part 2, the role: one results consumer (eager range assignment, state per
 * partition restored inside the rebalance callback), one restore consumer
 * (assign-only, read_committed, on the batch-state topic) and one
 * transactional producer. All on the loop thread. */
#include "aggregator.h"

#include <errno.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <unistd.h>

#include "kafka.h"
#include "log.h"
#include "metrics.h"
#include "role.h"
#include "serde.h"

/* ==== part 1: the pure model ============================================ */

static const char *batch_status_names[KB_BATCH__CNT] = {
    "in_progress", "succeeded", "partial_succeeded",
    "failed",      "cancelled", "expired",
};

const char *kb_batch_status_str(kb_batch_status_t st) {
        if ((unsigned)st >= KB_BATCH__CNT)
                return "unknown";
        return batch_status_names[st];
}

int kb_batch_status_parse(const char *s) {
        int i;
        for (i = 0; s && i < KB_BATCH__CNT; i++)
                if (!strcmp(s, batch_status_names[i]))
                        return i;
        return -1;
}

kb_batch_status_t kb_batch_status_rule(int64_t total, int64_t succeeded,
                                       int64_t failed, int64_t cancelled,
                                       int64_t expired) {
        if (succeeded == total && failed == 0 && cancelled == 0 &&
            expired == 0)
                return KB_BATCH_SUCCEEDED;
        if (cancelled > 0)
                return KB_BATCH_CANCELLED;
        if (expired > 0)
                return KB_BATCH_EXPIRED;
        if (succeeded == 0)
                return KB_BATCH_FAILED;
        return KB_BATCH_PARTIAL_SUCCEEDED;
}

/* cnt_table[b][v]: slots of value v in byte b. */
static uint8_t cnt_table[256][4];
static int cnt_table_ready;

static void cnt_table_init(void) {
        int b, k;
        if (cnt_table_ready)
                return;
        for (b = 0; b < 256; b++)
                for (k = 0; k < 4; k++)
                        cnt_table[b][(b >> (2 * k)) & 3]++;
        cnt_table_ready = 1;
}

void kb_bits2_count(const uint8_t *map, int64_t n, int64_t cnt[4]) {
        int64_t full = n / 4, i;
        cnt_table_init();
        cnt[0] = cnt[1] = cnt[2] = cnt[3] = 0;
        for (i = 0; i < full; i++) {
                const uint8_t *t = cnt_table[map[i]];
                cnt[0] += t[0];
                cnt[1] += t[1];
                cnt[2] += t[2];
                cnt[3] += t[3];
        }
        for (i = full * 4; i < n; i++)
                cnt[kb_bits2_get(map, i)]++;
}

kb_bstate_t *kb_bstate_new(const char *batch_id, int64_t items_total) {
        kb_bstate_t *bs;
        if (!batch_id || items_total < 1 || items_total > KB_ITEMS_TOTAL_MAX)
                return NULL;
        if (!(bs = calloc(1, sizeof(*bs))))
                return NULL;
        bs->bs_items_total = items_total;
        bs->bs_batch_id = strdup(batch_id);
        bs->bs_map = calloc(1, KB_BITS2_BYTES(items_total));
        if (!bs->bs_batch_id || !bs->bs_map) {
                kb_bstate_destroy(bs);
                return NULL;
        }
        return bs;
}

void kb_bstate_destroy(kb_bstate_t *bs) {
        if (!bs)
                return;
        free(bs->bs_batch_id);
        free(bs->bs_map);
        free(bs->bs_callback_url);
        json_decref(bs->bs_metadata);
        free(bs->bs_extra);
        free(bs);
}

kb_batch_status_t kb_bstate_status(const kb_bstate_t *bs) {
        if (!kb_bstate_complete(bs))
                return KB_BATCH_IN_PROGRESS;
        return kb_batch_status_rule(bs->bs_items_total, bs->bs_succeeded,
                                    bs->bs_failed, bs->bs_cancelled,
                                    bs->bs_expired);
}

static const char *apply_names[] = {"counted", "replayed", "duplicate",
                                    "invalid", "ignored"};

const char *kb_apply_res_str(kb_apply_res_t res) {
        if ((unsigned)res >= sizeof(apply_names) / sizeof(*apply_names))
                return "unknown";
        return apply_names[res];
}

/* ---- result decoding ---- */

static int64_t jint(const json_t *o, const char *k, int64_t dflt) {
        const json_t *v = json_object_get(o, k);
        return v && json_is_integer(v) ? json_integer_value(v) : dflt;
}

static const char *jstr(const json_t *o, const char *k) {
        const json_t *v = json_object_get(o, k);
        return v && json_is_string(v) ? json_string_value(v) : NULL;
}

json_t *kb_bresult_decode(const void *buf, size_t len, kb_bresult_t *br,
                          char *errstr, size_t errstr_size) {
        json_error_t jerr;
        json_t *o;

        memset(br, 0, sizeof(*br));
        br->br_item_index = -1;
        if (!buf || !len) {
                snprintf(errstr, errstr_size, "empty value");
                return NULL;
        }
        o = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
        if (!o) {
                snprintf(errstr, errstr_size, "not JSON: %s", jerr.text);
                return NULL;
        }
        if (kb_bresult_from_json(o, br) < 0) {
                snprintf(errstr, errstr_size, "value is not a JSON object");
                json_decref(o);
                return NULL;
        }
        return o;
}

int kb_bresult_from_json(const json_t *o, kb_bresult_t *br) {
        const json_t *u, *e, *md;
        const char *s;

        memset(br, 0, sizeof(*br));
        br->br_item_index = -1;
        if (!json_is_object(o))
                return -1;
        s = jstr(o, "batch_id");
        br->br_batch_id = kb_codec_batch_id_valid(s) ? s : NULL;
        br->br_item_index = jint(o, "item_index", -1);
        br->br_items_total = jint(o, "items_total", 0);
        s = jstr(o, "status");
        br->br_status = KB_STATUS_NONE;
        if (s) {
                if (!strcmp(s, "succeeded"))
                        br->br_status = KB_STATUS_SUCCEEDED;
                else if (!strcmp(s, "failed"))
                        br->br_status = KB_STATUS_FAILED;
                else if (!strcmp(s, "cancelled"))
                        br->br_status = KB_STATUS_CANCELLED;
                else if (!strcmp(s, "expired"))
                        br->br_status = KB_STATUS_EXPIRED;
        }
        if ((e = json_object_get(o, "error")) && json_is_object(e))
                br->br_error_code = jstr(e, "code");
        if ((u = json_object_get(o, "usage")) && json_is_object(u)) {
                br->br_has_usage = 1;
                br->br_input_tokens = jint(u, "input_tokens", 0);
                br->br_output_tokens = jint(u, "output_tokens", 0);
                br->br_total_tokens = jint(u, "total_tokens",
                                           br->br_input_tokens +
                                               br->br_output_tokens);
        }
        br->br_finished_at = jint(o, "finished_at", 0);
        if (br->br_finished_at < 0)
                br->br_finished_at = 0;
        br->br_deadline = jint(o, "deadline", 0);
        if (br->br_deadline < 0)
                br->br_deadline = 0;
        br->br_callback_url = jstr(o, "callback_url");
        if ((md = json_object_get(o, "metadata")) && json_is_object(md))
                br->br_metadata = (json_t *)md;
        return 0;
}

/* ---- applying a result ---- */

/* Takes what a counted result tells about the batch. */
static void take_info(kb_bstate_t *bs, const kb_bresult_t *br, int64_t now) {
        int64_t at = br->br_finished_at ? br->br_finished_at : now;
        if (br->br_has_usage) {
                bs->bs_input_tokens += br->br_input_tokens;
                bs->bs_output_tokens += br->br_output_tokens;
                bs->bs_total_tokens += br->br_total_tokens;
        }
        if (!bs->bs_first_result_at || at < bs->bs_first_result_at)
                bs->bs_first_result_at = at;
        if (at > bs->bs_last_result_at)
                bs->bs_last_result_at = at;
        if (br->br_deadline > bs->bs_deadline)
                bs->bs_deadline = br->br_deadline;
        /* Only what is within SPEC §2's bounds enters the state: results
         * are written by anyone who can write the topic, and an unbounded
         * field made a state record larger than a Kafka message (every
         * transaction of the partition aborted, forever). */
        if (!bs->bs_callback_url && br->br_callback_url &&
            *br->br_callback_url &&
            kb_codec_str_within(br->br_callback_url, KB_CALLBACK_URL_MAX))
                bs->bs_callback_url = strdup(br->br_callback_url);
        if (!bs->bs_metadata && br->br_metadata) {
                char err[256];
                if (!kb_codec_metadata_check(br->br_metadata, err,
                                             sizeof(err)))
                        bs->bs_metadata = json_deep_copy(br->br_metadata);
        }
}

/* After counts changed: completion or revision timestamps. */
static void note_change(kb_bstate_t *bs, const kb_bresult_t *br, int64_t now,
                        int was_complete) {
        int64_t at = br->br_finished_at ? br->br_finished_at : now;
        if (!kb_bstate_complete(bs))
                return;
        if (!was_complete)
                bs->bs_completed_at =
                    bs->bs_last_result_at ? bs->bs_last_result_at : now;
        else if (at > bs->bs_updated_at)
                bs->bs_updated_at = at;
}

kb_apply_res_t kb_bstate_apply(kb_bstate_t *bs, const kb_bresult_t *br,
                               int64_t now_ms) {
        int64_t i = br->br_item_index;
        int was_complete = kb_bstate_complete(bs);
        int invalid = br->br_items_total != bs->bs_items_total ||
                      br->br_status == KB_STATUS_NONE;
        unsigned want, old;
        size_t k;

        if (i < 0 || i >= bs->bs_items_total) {
                /* No slot: an extra invalid_item failure, once per index. */
                for (k = 0; k < bs->bs_extra_cnt; k++)
                        if (bs->bs_extra[k] == i)
                                return KB_APPLY_DUPLICATE;
                if (bs->bs_extra_cnt >= KB_BATCH_EXTRA_MAX)
                        return KB_APPLY_IGNORED;
                if (!bs->bs_extra) {
                        bs->bs_extra =
                            malloc(KB_BATCH_EXTRA_MAX * sizeof(*bs->bs_extra));
                        if (!bs->bs_extra)
                                return KB_APPLY_IGNORED;
                }
                bs->bs_extra[bs->bs_extra_cnt++] = i;
                bs->bs_failed++;
                bs->bs_invalid++;
                take_info(bs, br, now_ms);
                note_change(bs, br, now_ms, was_complete);
                return KB_APPLY_INVALID;
        }
        if (invalid)
                want = KB_SLOT_FAILED;
        else if (br->br_status == KB_STATUS_SUCCEEDED)
                want = KB_SLOT_SUCCEEDED;
        else if (br->br_status == KB_STATUS_FAILED)
                want = KB_SLOT_FAILED;
        else
                want = KB_SLOT_ENDED;
        old = kb_bits2_get(bs->bs_map, i);
        if (old == KB_SLOT_NONE) {
                kb_bits2_set(bs->bs_map, i, want);
                bs->bs_done++;
                if (invalid) {
                        bs->bs_failed++;
                        bs->bs_invalid++;
                } else if (br->br_status == KB_STATUS_SUCCEEDED)
                        bs->bs_succeeded++;
                else if (br->br_status == KB_STATUS_FAILED)
                        bs->bs_failed++;
                else if (br->br_status == KB_STATUS_CANCELLED)
                        bs->bs_cancelled++;
                else
                        bs->bs_expired++;
                take_info(bs, br, now_ms);
                note_change(bs, br, now_ms, was_complete);
                return invalid ? KB_APPLY_INVALID : KB_APPLY_COUNTED;
        }
        if (old == KB_SLOT_FAILED && want == KB_SLOT_SUCCEEDED && !invalid) {
                kb_bits2_set(bs->bs_map, i, KB_SLOT_SUCCEEDED);
                if (bs->bs_failed > 0)
                        bs->bs_failed--;
                bs->bs_succeeded++;
                take_info(bs, br, now_ms);
                note_change(bs, br, now_ms, was_complete);
                return KB_APPLY_REPLAYED;
        }
        return KB_APPLY_DUPLICATE;
}

int64_t kb_bstate_expire_missing(kb_bstate_t *bs, int64_t now_ms) {
        int64_t i, n = 0;
        if (kb_bstate_complete(bs))
                return 0;
        for (i = 0; i < bs->bs_items_total; i++) {
                /* Skip whole bytes whose four slots are all terminal. */
                if ((i & 3) == 0 && i + 4 <= bs->bs_items_total) {
                        uint8_t b = bs->bs_map[i >> 2];
                        if ((b & 0x03) && (b & 0x0c) && (b & 0x30) &&
                            (b & 0xc0)) {
                                i += 3;
                                continue;
                        }
                }
                if (kb_bits2_get(bs->bs_map, i) == KB_SLOT_NONE) {
                        kb_bits2_set(bs->bs_map, i, KB_SLOT_ENDED);
                        n++;
                }
        }
        bs->bs_done += n;
        bs->bs_expired += n;
        if (n)
                bs->bs_completed_at = now_ms;
        return n;
}

/* ---- base64 (RFC 4648, with padding) ---- */

static const char b64_chars[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char *b64_encode(const uint8_t *in, size_t len, size_t *olen) {
        size_t n = (len + 2) / 3 * 4, i;
        char *out = malloc(n + 1), *o = out;
        if (!out)
                return NULL;
        for (i = 0; i + 2 < len; i += 3) {
                uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 |
                             in[i + 2];
                *o++ = b64_chars[v >> 18];
                *o++ = b64_chars[(v >> 12) & 63];
                *o++ = b64_chars[(v >> 6) & 63];
                *o++ = b64_chars[v & 63];
        }
        if (i < len) {
                uint32_t v = (uint32_t)in[i] << 16;
                if (i + 1 < len)
                        v |= (uint32_t)in[i + 1] << 8;
                *o++ = b64_chars[v >> 18];
                *o++ = b64_chars[(v >> 12) & 63];
                *o++ = i + 1 < len ? b64_chars[(v >> 6) & 63] : '=';
                *o++ = '=';
        }
        *o = '\0';
        *olen = (size_t)(o - out);
        return out;
}

static int b64_val(unsigned char c) {
        if (c >= 'A' && c <= 'Z')
                return c - 'A';
        if (c >= 'a' && c <= 'z')
                return c - 'a' + 26;
        if (c >= '0' && c <= '9')
                return c - '0' + 52;
        if (c == '+')
                return 62;
        if (c == '/')
                return 63;
        return -1;
}

/* Decodes exactly `want` bytes from padded base64; -1 if malformed or of
 * another length. */
static int b64_decode(const char *s, size_t len, uint8_t *out, size_t want) {
        size_t i, o = 0, pad = (3 - want % 3) % 3;
        if (len % 4 || len != (want + 2) / 3 * 4)
                return -1;
        /* Exactly the padding that `want` bytes need. */
        for (i = 0; i < 2; i++)
                if (len > i && (s[len - 1 - i] == '=') != (i < pad))
                        return -1;
        for (i = 0; i < len; i += 4) {
                int a = b64_val((unsigned char)s[i]),
                    b = b64_val((unsigned char)s[i + 1]),
                    c = s[i + 2] == '=' ? 0 : b64_val((unsigned char)s[i + 2]),
                    d = s[i + 3] == '=' ? 0 : b64_val((unsigned char)s[i + 3]);
                uint32_t v;
                if (a < 0 || b < 0 || c < 0 || d < 0)
                        return -1;
                if ((s[i + 2] == '=' || s[i + 3] == '=') && i + 4 != len)
                        return -1;
                if (s[i + 2] == '=' && s[i + 3] != '=')
                        return -1;
                v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6 |
                    (uint32_t)d;
                if (o < want)
                        out[o++] = (uint8_t)(v >> 16);
                if (o < want && s[i + 2] != '=')
                        out[o++] = (uint8_t)(v >> 8);
                if (o < want && s[i + 3] != '=')
                        out[o++] = (uint8_t)v;
        }
        return o == want ? 0 : -1;
}

/* ---- encodings ---- */

static json_t *ms_or_null(int64_t ms) {
        return ms > 0 ? json_integer(ms) : json_null();
}

static json_t *usage_json(const kb_bstate_t *bs) {
        json_t *u = json_object();
        json_object_set_new(u, "input_tokens", json_integer(bs->bs_input_tokens));
        json_object_set_new(u, "output_tokens",
                            json_integer(bs->bs_output_tokens));
        json_object_set_new(u, "total_tokens", json_integer(bs->bs_total_tokens));
        return u;
}

/* The fields events and state records share. */
static void common_fields(json_t *o, const kb_bstate_t *bs) {
        json_object_set_new(o, "batch_id", json_string(bs->bs_batch_id));
        json_object_set_new(o, "status",
                            json_string(kb_batch_status_str(kb_bstate_status(bs))));
        json_object_set_new(o, "items_total", json_integer(bs->bs_items_total));
        json_object_set_new(o, "items_succeeded", json_integer(bs->bs_succeeded));
        json_object_set_new(o, "items_failed", json_integer(bs->bs_failed));
        json_object_set_new(o, "items_cancelled", json_integer(bs->bs_cancelled));
        json_object_set_new(o, "items_expired", json_integer(bs->bs_expired));
        json_object_set_new(o, "items_invalid", json_integer(bs->bs_invalid));
        json_object_set_new(o, "usage", usage_json(bs));
        json_object_set_new(o, "first_result_at",
                            ms_or_null(bs->bs_first_result_at));
        json_object_set_new(o, "completed_at", ms_or_null(bs->bs_completed_at));
        json_object_set_new(o, "callback_url",
                            bs->bs_callback_url
                                ? json_string(bs->bs_callback_url)
                                : json_null());
        json_object_set(o, "metadata",
                        bs->bs_metadata ? bs->bs_metadata : json_null());
}

static char *dump(json_t *o, size_t *lenp) {
        char *s = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        if (s && lenp)
                *lenp = strlen(s);
        return s;
}

char *kb_bstate_encode(const kb_bstate_t *bs, size_t *lenp) {
        json_t *o = json_object(), *ex;
        size_t blen, k;
        char *b64;
        if (!o)
                return NULL;
        json_object_set_new(o, "v", json_integer(1));
        common_fields(o, bs);
        json_object_set_new(o, "revision", json_integer(bs->bs_revision));
        json_object_set_new(o, "items_done", json_integer(bs->bs_done));
        json_object_set_new(o, "last_result_at",
                            ms_or_null(bs->bs_last_result_at));
        json_object_set_new(o, "updated_at", ms_or_null(bs->bs_updated_at));
        json_object_set_new(o, "deadline", ms_or_null(bs->bs_deadline));
        ex = json_array();
        for (k = 0; k < bs->bs_extra_cnt; k++)
                json_array_append_new(ex, json_integer(bs->bs_extra[k]));
        json_object_set_new(o, "extra_indexes", ex);
        if (!(b64 = b64_encode(bs->bs_map, KB_BITS2_BYTES(bs->bs_items_total),
                               &blen))) {
                json_decref(o);
                return NULL;
        }
        json_object_set_new(o, "statuses", json_stringn_nocheck(b64, blen));
        free(b64);
        return dump(o, lenp);
}

/* Reads a non-negative integer field; -1 when present but bad. */
static int get_count(const json_t *o, const char *k, int64_t *out) {
        const json_t *v = json_object_get(o, k);
        *out = 0;
        if (!v || json_is_null(v))
                return 0;
        if (!json_is_integer(v) || json_integer_value(v) < 0)
                return -1;
        *out = json_integer_value(v);
        return 0;
}

kb_bstate_t *kb_bstate_decode(const void *buf, size_t len, char *errstr,
                              size_t errstr_size) {
        json_error_t jerr;
        json_t *o, *v, *u;
        kb_bstate_t *bs = NULL;
        const char *id, *map;
        int64_t total, cnt[4], x;
        size_t k;

        if (!buf || !len) {
                snprintf(errstr, errstr_size, "empty record");
                return NULL;
        }
        if (!(o = json_loadb(buf, len, 0, &jerr))) {
                snprintf(errstr, errstr_size, "not JSON: %s", jerr.text);
                return NULL;
        }
#define BAD(...)                                                               \
        do {                                                                   \
                snprintf(errstr, errstr_size, __VA_ARGS__);                    \
                goto fail;                                                     \
        } while (0)
        if (!json_is_object(o))
                BAD("record is not a JSON object");
        if (jint(o, "v", 0) != 1)
                BAD("unknown record version");
        id = jstr(o, "batch_id");
        if (!kb_codec_batch_id_valid(id))
                BAD("bad batch_id");
        total = jint(o, "items_total", 0);
        if (!(bs = kb_bstate_new(id, total)))
                BAD("bad items_total %lld", (long long)total);
        map = jstr(o, "statuses");
        if (!map || b64_decode(map, strlen(map), bs->bs_map,
                               KB_BITS2_BYTES(total)) < 0)
                BAD("bad map for %lld items", (long long)total);
        /* Bits past the last item must be clear. */
        for (x = total; x < (int64_t)KB_BITS2_BYTES(total) * 4; x++)
                kb_bits2_set(bs->bs_map, x, 0);
        if (get_count(o, "items_succeeded", &bs->bs_succeeded) ||
            get_count(o, "items_failed", &bs->bs_failed) ||
            get_count(o, "items_cancelled", &bs->bs_cancelled) ||
            get_count(o, "items_expired", &bs->bs_expired) ||
            get_count(o, "items_invalid", &bs->bs_invalid) ||
            get_count(o, "revision", &bs->bs_revision) ||
            get_count(o, "first_result_at", &bs->bs_first_result_at) ||
            get_count(o, "last_result_at", &bs->bs_last_result_at) ||
            get_count(o, "completed_at", &bs->bs_completed_at) ||
            get_count(o, "updated_at", &bs->bs_updated_at) ||
            get_count(o, "deadline", &bs->bs_deadline))
                BAD("a count or timestamp is not a non-negative integer");
        if ((u = json_object_get(o, "usage")) && json_is_object(u) &&
            (get_count(u, "input_tokens", &bs->bs_input_tokens) ||
             get_count(u, "output_tokens", &bs->bs_output_tokens) ||
             get_count(u, "total_tokens", &bs->bs_total_tokens)))
                BAD("bad usage");
        kb_bits2_count(bs->bs_map, total, cnt);
        bs->bs_done = total - cnt[0];
        /* Bounded as on the way in (a record written before the bounds
         * existed may hold more). */
        if ((id = jstr(o, "callback_url")) &&
            kb_codec_str_within(id, KB_CALLBACK_URL_MAX))
                bs->bs_callback_url = strdup(id);
        if ((v = json_object_get(o, "metadata")) && json_is_object(v)) {
                char err[256];
                if (!kb_codec_metadata_check(v, err, sizeof(err)))
                        bs->bs_metadata = json_incref(v);
        }
        if ((v = json_object_get(o, "extra_indexes")) && json_is_array(v) &&
            json_array_size(v) > 0) {
                size_t n = json_array_size(v);
                if (n > KB_BATCH_EXTRA_MAX)
                        BAD("too many extra_indexes");
                bs->bs_extra = malloc(KB_BATCH_EXTRA_MAX * sizeof(*bs->bs_extra));
                if (!bs->bs_extra)
                        BAD("out of memory");
                for (k = 0; k < n; k++) {
                        json_t *e = json_array_get(v, k);
                        if (!json_is_integer(e))
                                BAD("bad extra_indexes");
                        bs->bs_extra[bs->bs_extra_cnt++] = json_integer_value(e);
                }
        }
#undef BAD
        json_decref(o);
        return bs;
fail:
        kb_bstate_destroy(bs);
        json_decref(o);
        return NULL;
}

char *kb_bstate_event_encode(const kb_bstate_t *bs, size_t *lenp) {
        json_t *o = kb_bstate_event_json(bs);
        return o ? dump(o, lenp) : NULL;
}

json_t *kb_bstate_event_json(const kb_bstate_t *bs) {
        json_t *o = json_object();
        char eid[KB_BATCH_ID_MAX + 32];
        if (!o)
                return NULL;
        snprintf(eid, sizeof(eid), "%s:%lld", bs->bs_batch_id,
                 (long long)bs->bs_revision);
        json_object_set_new(o, "event_id", json_string(eid));
        json_object_set_new(o, "type", json_string(bs->bs_revision <= 1
                                                       ? "batch.completed"
                                                       : "batch.updated"));
        json_object_set_new(o, "revision", json_integer(bs->bs_revision));
        common_fields(o, bs);
        if (bs->bs_revision > 1)
                json_object_set_new(o, "updated_at",
                                    ms_or_null(bs->bs_updated_at));
        return o;
}

/* ==== part 2: the role ================================================== */

/* glibc's sys/queue.h lacks the _SAFE iterators. */
#ifndef TAILQ_FOREACH_SAFE
#define TAILQ_FOREACH_SAFE(var, head, field, tvar)                             \
        for ((var) = TAILQ_FIRST((head));                                      \
             (var) && ((tvar) = TAILQ_NEXT((var), field), 1); (var) = (tvar))
#endif

typedef struct kb_batch_s kb_batch_t;
struct kb_batch_s {
        char *bt_id;                 /* owned: the key */
        kb_bstate_t *bt_st;          /* owned; NULL in a restore table */
        int32_t bt_partition;        /* results/batch-state partition */
        int bt_dirty;                /* on ag_dirty: record due */
        int bt_event_due;            /* counts changed on a complete batch */
        int bt_tombstone;            /* retire at the next commit */
        char *bt_raw;                /* restore: latest record (owned) */
        size_t bt_raw_len;
        char *bt_ev;                 /* commit: encoded event (owned) */
        size_t bt_ev_len;
        kb_batch_t *bt_hnext;        /* hash chain */
        TAILQ_ENTRY(kb_batch_s) bt_all;
        TAILQ_ENTRY(kb_batch_s) bt_dlink;
};

typedef struct kb_btable_s {
        kb_batch_t **tb_buckets;
        size_t tb_size;              /* power of two */
        size_t tb_cnt;
        TAILQ_HEAD(, kb_batch_s) tb_all;
} kb_btable_t;

/* An assigned (or once assigned) partition of the results topic. */
typedef struct kb_agpart_s {
        int ap_assigned;
        int64_t ap_next;             /* next offset to consume, -1 unknown */
        int64_t ap_sent;             /* next offset as last committed */
        int ap_at_eof;               /* consumed up to the end */
        int64_t ap_resume_at;        /* paused until (mono ms), 0: not */
} kb_agpart_t;

struct kb_aggregator_s {
        kb_role_t ag_role; /* first: the clients' opaque (role.h) */
        const kb_conf_t *ag_conf;
        kb_loop_t *ag_loop;
        const char *ag_results;      /* topic names, borrowed from conf */
        const char *ag_state;
        const char *ag_batches;
        rd_kafka_t *ag_consumer;     /* results, group */
        rd_kafka_queue_t *ag_cq;
        rd_kafka_t *ag_restorer;     /* batch-state, assign only */
        rd_kafka_t *ag_producer;     /* transactional */
        char ag_txn_id[320];
        kb_agpart_t *ag_parts;
        int32_t ag_part_cnt;
        kb_btable_t ag_table;
        TAILQ_HEAD(, kb_batch_s) ag_dirty;
        int ag_txn_ready;
        int ag_assigned_once;
        int ag_fatal;
        /* The transactional producer failed (a fatal or unclassified
         * transactional error): recreate it and rewind (producer_recover). */
        int ag_recover;
        int64_t ag_recover_at;
        uint64_t ag_recoveries;
        int64_t ag_recover_since; /* first of the recent recoveries */
        int ag_recover_recent;
        int64_t ag_fenced_at;     /* last recovery from fencing */
        int64_t ag_txn_begun_at;  /* the open transaction's begin, or 0 */
        int ag_test_fatal_every; /* $KBATCH_TEST_TXN_FATAL_EVERY=N */
        int64_t ag_next_commit;
        int64_t ag_next_cron;
        /* counters, for logs */
        uint64_t ag_results_cnt, ag_counted, ag_dups, ag_invalid,
            ag_rejected, ag_events, ag_commits, ag_aborts;
        int64_t ag_commit_ms_sum, ag_commit_ms_max;
        /* Fault injection for tests ($KBATCH_TEST_TXN_ABORT_EVERY=N): every
         * N-th transaction is aborted instead of committed, which takes the
         * same path as an abortable error. */
        int ag_test_abort_every;
        kb_serde_t *ag_serde;        /* value formats (json/avro) */
        int ag_results_avro;         /* results topic is avro */
        int ag_events_avro;          /* batches topic is avro */
        uint64_t ag_txn_seq;
};

/* ---- the batch table ---- */

static uint64_t hash_str(const char *s) {
        uint64_t h = 1469598103934665603ULL;
        for (; *s; s++)
                h = (h ^ (unsigned char)*s) * 1099511628211ULL;
        return h;
}

static int tbl_init(kb_btable_t *tb) {
        tb->tb_size = 64;
        tb->tb_cnt = 0;
        TAILQ_INIT(&tb->tb_all);
        tb->tb_buckets = calloc(tb->tb_size, sizeof(*tb->tb_buckets));
        return tb->tb_buckets ? 0 : -1;
}

static kb_batch_t *tbl_find(const kb_btable_t *tb, const char *id) {
        kb_batch_t *bt = tb->tb_buckets[hash_str(id) & (tb->tb_size - 1)];
        for (; bt; bt = bt->bt_hnext)
                if (!strcmp(bt->bt_id, id))
                        return bt;
        return NULL;
}

static void tbl_link(kb_btable_t *tb, kb_batch_t *bt) {
        size_t h = hash_str(bt->bt_id) & (tb->tb_size - 1);
        bt->bt_hnext = tb->tb_buckets[h];
        tb->tb_buckets[h] = bt;
}

/* Inserts (the id must not be present). Growing is best effort. */
static void tbl_insert(kb_btable_t *tb, kb_batch_t *bt) {
        if (tb->tb_cnt >= tb->tb_size) {
                kb_batch_t **nb = calloc(tb->tb_size * 2, sizeof(*nb));
                if (nb) {
                        kb_batch_t *x;
                        free(tb->tb_buckets);
                        tb->tb_buckets = nb;
                        tb->tb_size *= 2;
                        TAILQ_FOREACH(x, &tb->tb_all, bt_all)
                                tbl_link(tb, x);
                }
        }
        tbl_link(tb, bt);
        TAILQ_INSERT_TAIL(&tb->tb_all, bt, bt_all);
        tb->tb_cnt++;
}

static void tbl_unlink(kb_btable_t *tb, kb_batch_t *bt) {
        kb_batch_t **pp = &tb->tb_buckets[hash_str(bt->bt_id) &
                                          (tb->tb_size - 1)];
        for (; *pp; pp = &(*pp)->bt_hnext)
                if (*pp == bt) {
                        *pp = bt->bt_hnext;
                        break;
                }
        TAILQ_REMOVE(&tb->tb_all, bt, bt_all);
        tb->tb_cnt--;
}

static void batch_free(kb_batch_t *bt) {
        if (!bt)
                return;
        free(bt->bt_id);
        kb_bstate_destroy(bt->bt_st);
        free(bt->bt_raw);
        free(bt->bt_ev);
        free(bt);
}

static kb_batch_t *batch_new(const char *id, int32_t partition) {
        kb_batch_t *bt = calloc(1, sizeof(*bt));
        if (!bt)
                return NULL;
        if (!(bt->bt_id = strdup(id))) {
                free(bt);
                return NULL;
        }
        bt->bt_partition = partition;
        return bt;
}

/* Removes and frees a batch of the live table. */
static void batch_remove(kb_aggregator_t *ag, kb_batch_t *bt) {
        if (bt->bt_dirty)
                TAILQ_REMOVE(&ag->ag_dirty, bt, bt_dlink);
        tbl_unlink(&ag->ag_table, bt);
        batch_free(bt);
}

static void batch_dirty(kb_aggregator_t *ag, kb_batch_t *bt) {
        if (!bt->bt_dirty) {
                bt->bt_dirty = 1;
                TAILQ_INSERT_TAIL(&ag->ag_dirty, bt, bt_dlink);
        }
}

/* Drops the in-memory state of the batches of partition p (-1: all). */
static void drop_partition(kb_aggregator_t *ag, int32_t p) {
        kb_batch_t *bt, *tmp;
        TAILQ_FOREACH_SAFE(bt, &ag->ag_table.tb_all, bt_all, tmp) {
                if (p < 0 || bt->bt_partition == p)
                        batch_remove(ag, bt);
        }
}

/* ---- partitions ---- */

static kb_agpart_t *part_get(kb_aggregator_t *ag, int32_t p, int create) {
        if (p < 0)
                return NULL;
        if (p >= ag->ag_part_cnt) {
                int32_t n = p + 1, i;
                kb_agpart_t *np;
                if (!create)
                        return NULL;
                if (!(np = realloc(ag->ag_parts, (size_t)n * sizeof(*np))))
                        return NULL;
                for (i = ag->ag_part_cnt; i < n; i++) {
                        memset(&np[i], 0, sizeof(np[i]));
                        np[i].ap_next = np[i].ap_sent = -1;
                }
                ag->ag_parts = np;
                ag->ag_part_cnt = n;
        }
        return &ag->ag_parts[p];
}

static void set_fatal(kb_aggregator_t *ag, const char *what, const char *msg) {
        kb_log(KB_LOG_ERROR, "aggregator", "fatal: %s: %s", what, msg);
        ag->ag_fatal = 1;
        kb_loop_stop_requested = 1;
}

/* The transactional producer is unusable (a fatal error, e.g.
 * INVALID_TXN_STATE after a transaction timed out during a broker outage):
 * no more transactions until producer_recover() has made a new one. */
static int is_fenced(rd_kafka_resp_err_t err) {
        return err == RD_KAFKA_RESP_ERR__FENCED ||
               err == RD_KAFKA_RESP_ERR_PRODUCER_FENCED ||
               err == RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH;
}

static void set_recover(kb_aggregator_t *ag, const char *what,
                        const char *msg, rd_kafka_resp_err_t err) {
        int64_t now = kb_now_ms();
        if (ag->ag_recover && !ag->ag_txn_ready)
                return;
        /* Fenced: after a transaction open longer than its timeout (an
         * outage), the coordinator did it; else, or twice in a row,
         * another process has our instance id, and the newer one stays. */
        if (is_fenced(err)) {
                if (!ag->ag_txn_begun_at ||
                    now - ag->ag_txn_begun_at <
                        ag->ag_conf->aggregator_transaction_timeout_ms ||
                    (ag->ag_fenced_at && now - ag->ag_fenced_at < 300000)) {
                        char why[768];
                        snprintf(why, sizeof(why),
                                 "%s (another process with transactional.id "
                                 "%s?)",
                                 msg, ag->ag_txn_id);
                        set_fatal(ag, what, why);
                        return;
                }
                ag->ag_fenced_at = now;
        }
        /* Two processes with one instance id fence each other for ever:
         * more than 5 failures in 5 minutes end the process instead. */
        if (now - ag->ag_recover_since > 300000) {
                ag->ag_recover_since = now;
                ag->ag_recover_recent = 0;
        }
        if (++ag->ag_recover_recent > 5) {
                char why[768];
                snprintf(why, sizeof(why),
                         "%s (the 6th failure in 5 minutes: another process "
                         "with transactional.id %s?)",
                         msg, ag->ag_txn_id);
                set_fatal(ag, what, why);
                return;
        }
        kb_log(KB_LOG_ERROR, "aggregator",
               "transactional producer failed: %s: %s; recreating it", what,
               msg);
        ag->ag_recover = 1;
        ag->ag_txn_ready = 0;
}

/* ---- restore from batch-state ---- */

/* Reads partitions `parts` of batch-state from the beginning to the end
 * (read_committed; waiting, bounded, for a transaction still open on a
 * partition, which a crashed owner may have left) and installs the last
 * record of every key into the live table. Returns 0, or -1 when the
 * restore could not run (the caller treats it as fatal). */
static int restore(kb_aggregator_t *ag, const int32_t *parts, int n) {
        const kb_conf_t *conf = ag->ag_conf;
        rd_kafka_topic_partition_list_t *l;
        kb_btable_t tmp;
        kb_batch_t *bt, *nx;
        int *done, remaining = n, i, logged_wait = 0;
        int64_t t0 = kb_now_ms(), t1, deadline, records = 0, restored = 0;
        size_t bytes = 0;
        rd_kafka_resp_err_t err;
        char plist[256];
        size_t pl = 0;

        if (n <= 0)
                return 0;
        deadline = t0 + 2 * (int64_t)conf->aggregator_transaction_timeout_ms +
                   30000;
        if (tbl_init(&tmp) < 0 || !(done = calloc((size_t)n, sizeof(int)))) {
                free(tmp.tb_buckets);
                set_fatal(ag, "restore", "out of memory");
                return -1;
        }
        l = rd_kafka_topic_partition_list_new(n);
        plist[0] = '\0';
        for (i = 0; i < n; i++) {
                rd_kafka_topic_partition_list_add(l, ag->ag_state, parts[i])
                    ->offset = RD_KAFKA_OFFSET_BEGINNING;
                if (pl < sizeof(plist) - 16)
                        pl += (size_t)snprintf(plist + pl, sizeof(plist) - pl,
                                               "%s%d", i ? "," : "",
                                               (int)parts[i]);
        }
        err = rd_kafka_assign(ag->ag_restorer, l);
        rd_kafka_topic_partition_list_destroy(l);
        if (err) {
                free(done);
                free(tmp.tb_buckets);
                set_fatal(ag, "restore: assign", rd_kafka_err2str(err));
                return -1;
        }
        while (remaining > 0) {
                rd_kafka_message_t *m =
                    rd_kafka_consumer_poll(ag->ag_restorer, 200);
                if (!m) {
                        if (kb_now_ms() >= deadline || kb_loop_stop_requested)
                                break;
                        continue;
                }
                if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                        int64_t lo = -1, hi = -1;
                        for (i = 0; i < n && parts[i] != m->partition; i++)
                                ;
                        rd_kafka_get_watermark_offsets(ag->ag_restorer,
                                                       ag->ag_state,
                                                       m->partition, &lo, &hi);
                        if (i < n && !done[i]) {
                                /* The end for read_committed is the last
                                 * stable offset; below the high watermark a
                                 * transaction is still open. */
                                if (hi < 0 || m->offset >= hi) {
                                        done[i] = 1;
                                        remaining--;
                                } else if (!logged_wait++) {
                                        kb_log(KB_LOG_INFO, "aggregator",
                                               "%s[%d]: waiting for an open "
                                               "transaction to end (stable "
                                               "offset %lld, end %lld)",
                                               ag->ag_state, (int)m->partition,
                                               (long long)m->offset,
                                               (long long)hi);
                                }
                        }
                } else if (m->err) {
                        kb_log(KB_LOG_WARN, "aggregator", "restore: %s",
                               rd_kafka_message_errstr(m));
                        if (m->err == RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION ||
                            m->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
                                deadline = 0;
                } else if (m->key_len > 0 && m->key_len <= KB_BATCH_ID_MAX) {
                        char key[KB_BATCH_ID_MAX + 1];
                        memcpy(key, m->key, m->key_len);
                        key[m->key_len] = '\0';
                        records++;
                        bytes += m->len;
                        if (!(bt = tbl_find(&tmp, key))) {
                                if (!(bt = batch_new(key, m->partition))) {
                                        rd_kafka_message_destroy(m);
                                        continue;
                                }
                                tbl_insert(&tmp, bt);
                        }
                        bt->bt_partition = m->partition;
                        free(bt->bt_raw);
                        bt->bt_raw = NULL;
                        bt->bt_raw_len = 0;
                        if (m->payload && m->len &&
                            (bt->bt_raw = malloc(m->len))) {
                                memcpy(bt->bt_raw, m->payload, m->len);
                                bt->bt_raw_len = m->len;
                        }
                }
                rd_kafka_message_destroy(m);
        }
        rd_kafka_assign(ag->ag_restorer, NULL);
        free(done);
        if (remaining > 0) {
                /* Half a state must never meet the committed offsets: stop
                 * (a restart tries again) rather than count wrong. */
                char why[512];
                TAILQ_FOREACH_SAFE(bt, &tmp.tb_all, bt_all, nx) {
                        TAILQ_REMOVE(&tmp.tb_all, bt, bt_all);
                        batch_free(bt);
                }
                free(tmp.tb_buckets);
                if (kb_loop_stop_requested)
                        return -1;
                snprintf(why, sizeof(why),
                         "%s[%s]: end not reached in %lld ms (a transaction "
                         "that stays open?)",
                         ag->ag_state, plist, (long long)(kb_now_ms() - t0));
                set_fatal(ag, "restore", why);
                return -1;
        }

        /* Decode the last record of every key. */
        t1 = kb_now_ms();
        TAILQ_FOREACH_SAFE(bt, &tmp.tb_all, bt_all, nx) {
                char errstr[256];
                kb_bstate_t *bs;
                TAILQ_REMOVE(&tmp.tb_all, bt, bt_all);
                if (!bt->bt_raw) { /* tombstoned */
                        batch_free(bt);
                        continue;
                }
                bs = kb_bstate_decode(bt->bt_raw, bt->bt_raw_len, errstr,
                                      sizeof(errstr));
                free(bt->bt_raw);
                bt->bt_raw = NULL;
                if (!bs || strcmp(bs->bs_batch_id, bt->bt_id) ||
                    tbl_find(&ag->ag_table, bt->bt_id)) {
                        const char *kv[] = {"batch_id", bt->bt_id, NULL};
                        kb_logkv(KB_LOG_ERROR, "aggregator", kv,
                                 "cannot restore the state of a batch: %s",
                                 !bs ? errstr
                                     : strcmp(bs->bs_batch_id, bt->bt_id)
                                           ? "record names another batch"
                                           : "batch already restored from "
                                             "another partition");
                        kb_bstate_destroy(bs);
                        batch_free(bt);
                        continue;
                }
                bt->bt_st = bs;
                bt->bt_hnext = NULL;
                tbl_insert(&ag->ag_table, bt);
                restored++;
        }
        free(tmp.tb_buckets);
        kb_log(KB_LOG_INFO, "aggregator",
               "restored %lld batches from %s[%s] in %lld ms (%lld records, "
               "%zu bytes; decoding took %lld ms)",
               (long long)restored, ag->ag_state, plist,
               (long long)(kb_now_ms() - t0), (long long)records, bytes,
               (long long)(kb_now_ms() - t1));
        return 0;
}

/* ---- the transaction ---- */

typedef enum { TXN_OK = 0, TXN_RETRY, TXN_ABORT, TXN_FATAL } txn_res_t;

/* Classifies (and destroys) a transactional API error as librdkafka's
 * documentation says: abortable, retriable, else fatal. */
static txn_res_t txn_classify(kb_aggregator_t *ag, const char *what,
                              rd_kafka_error_t *e) {
        txn_res_t r;
        if (!e)
                return TXN_OK;
        if (rd_kafka_error_is_fatal(e))
                r = TXN_FATAL;
        else if (rd_kafka_error_txn_requires_abort(e))
                r = TXN_ABORT;
        else if (rd_kafka_error_is_retriable(e))
                r = TXN_RETRY;
        else
                r = TXN_FATAL;
        if (r == TXN_FATAL)
                set_recover(ag, what, rd_kafka_error_string(e),
                            rd_kafka_error_code(e));
        else
                kb_log(KB_LOG_WARN, "aggregator", "%s: %s: %s", what,
                       rd_kafka_error_name(e), rd_kafka_error_string(e));
        rd_kafka_error_destroy(e);
        return r;
}

/* Produces one message into the open transaction; value NULL: tombstone.
 * Takes value (freed by librdkafka or here). */
static int txn_produce(kb_aggregator_t *ag, const char *topic, int32_t part,
                       const char *key, char *value, size_t len) {
        rd_kafka_resp_err_t err;
        int tries = 0;
        for (;;) {
                err = rd_kafka_producev(
                    ag->ag_producer, RD_KAFKA_V_TOPIC(topic),
                    RD_KAFKA_V_PARTITION(part),
                    RD_KAFKA_V_KEY(key, strlen(key)),
                    RD_KAFKA_V_VALUE(value, value ? len : 0),
                    RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_FREE), RD_KAFKA_V_END);
                if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL || ++tries > 100)
                        break;
                rd_kafka_poll(ag->ag_producer, 100);
        }
        if (err) {
                free(value);
                kb_log(KB_LOG_WARN, "aggregator", "produce to %s: %s", topic,
                       rd_kafka_err2str(err));
                return -1;
        }
        return 0;
}

static void log_event(const kb_bstate_t *bs) {
        char rev[24], cnt[160];
        const char *kv[] = {"batch_id", bs->bs_batch_id, "status",
                            kb_batch_status_str(kb_bstate_status(bs)),
                            "revision", rev, "counts", cnt, NULL};
        snprintf(rev, sizeof(rev), "%lld", (long long)bs->bs_revision);
        snprintf(cnt, sizeof(cnt), "%lld/%lld/%lld/%lld of %lld",
                 (long long)bs->bs_succeeded, (long long)bs->bs_failed,
                 (long long)bs->bs_cancelled, (long long)bs->bs_expired,
                 (long long)bs->bs_items_total);
        kb_logkv(KB_LOG_INFO, "aggregator", kv, "batch %s",
                 bs->bs_revision <= 1 ? "completed" : "updated");
}

/* Drops the events encoded for a commit that does not happen. */
static void events_forget(kb_aggregator_t *ag) {
        kb_batch_t *bt;
        TAILQ_FOREACH(bt, &ag->ag_dirty, bt_dlink) {
                if (!bt->bt_ev)
                        continue;
                free(bt->bt_ev);
                bt->bt_ev = NULL;
                bt->bt_st->bs_revision--;
        }
}

/* Encodes the events due in this commit before it begins, each with its
 * next revision (json, or avro through the schema registry). Returns
 * TXN_OK; TXN_RETRY when the events topic's schema id is not known yet
 * (nothing changed: the commit waits); TXN_FATAL when an event does not fit
 * the schema. */
static txn_res_t events_encode(kb_aggregator_t *ag) {
        kb_batch_t *bt;
        char errstr[512];
        TAILQ_FOREACH(bt, &ag->ag_dirty, bt_dlink) {
                kb_bstate_t *bs = bt->bt_st;
                kb_serde_res_t r = KB_SERDE_INVALID;
                json_t *ev;
                if (bt->bt_tombstone || !bt->bt_event_due ||
                    !kb_bstate_complete(bs))
                        continue;
                bs->bs_revision++;
                snprintf(errstr, sizeof(errstr), "out of memory");
                if (!ag->ag_events_avro) {
                        if ((bt->bt_ev = kb_bstate_event_encode(
                                 bs, &bt->bt_ev_len)))
                                r = KB_SERDE_OK;
                } else if ((ev = kb_bstate_event_json(bs))) {
                        r = kb_serde_batch_event_encode(
                            ag->ag_serde, ag->ag_batches, ev, &bt->bt_ev,
                            &bt->bt_ev_len, errstr, sizeof(errstr));
                        json_decref(ev);
                }
                if (r == KB_SERDE_OK)
                        continue;
                bt->bt_ev = NULL;
                bs->bs_revision--;
                events_forget(ag);
                if (r == KB_SERDE_RETRY) {
                        kb_log(KB_LOG_WARN, "aggregator",
                               "%s: schema not available yet (%s); commit "
                               "postponed",
                               ag->ag_batches, errstr);
                        return TXN_RETRY;
                }
                set_fatal(ag, "encoding a batch event", errstr);
                return TXN_FATAL;
        }
        return TXN_OK;
}

/* Commits one transaction with the dirty batches' records, their due
 * events and the consumed offsets. Returns TXN_OK (also when there was
 * nothing to commit), TXN_RETRY (could not begin: nothing changed, try
 * later), TXN_ABORT (aborted: the caller must rewind and restore) or
 * TXN_FATAL. */
static txn_res_t txn_commit(kb_aggregator_t *ag) {
        rd_kafka_topic_partition_list_t *offs;
        rd_kafka_consumer_group_metadata_t *cgmd;
        kb_batch_t *bt, *tmp;
        txn_res_t r;
        int32_t p;
        int tries, events = 0, records = 0;
        int64_t t0, ms;

        if (ag->ag_fatal || !ag->ag_txn_ready)
                return TXN_FATAL;
        offs = rd_kafka_topic_partition_list_new(ag->ag_part_cnt + 1);
        for (p = 0; p < ag->ag_part_cnt; p++) {
                kb_agpart_t *ap = &ag->ag_parts[p];
                if (ap->ap_assigned && ap->ap_next >= 0 &&
                    ap->ap_next != ap->ap_sent)
                        rd_kafka_topic_partition_list_add(offs, ag->ag_results,
                                                          p)
                            ->offset = ap->ap_next;
        }
        if (TAILQ_EMPTY(&ag->ag_dirty) && offs->cnt == 0) {
                rd_kafka_topic_partition_list_destroy(offs);
                return TXN_OK;
        }
        t0 = kb_now_ms();
        if ((r = events_encode(ag)) != TXN_OK) {
                rd_kafka_topic_partition_list_destroy(offs);
                return r;
        }
        if ((r = txn_classify(ag, "begin transaction",
                              rd_kafka_begin_transaction(ag->ag_producer))) !=
            TXN_OK) {
                /* Nothing was sent: a non-fatal error is tried again at the
                 * next interval. */
                events_forget(ag);
                rd_kafka_topic_partition_list_destroy(offs);
                return r == TXN_FATAL ? TXN_FATAL : TXN_RETRY;
        }
        ag->ag_txn_begun_at = t0;
        TAILQ_FOREACH(bt, &ag->ag_dirty, bt_dlink) {
                kb_bstate_t *bs = bt->bt_st;
                size_t len;
                char *v;
                if (bt->bt_tombstone) {
                        if (txn_produce(ag, ag->ag_state, bt->bt_partition,
                                        bt->bt_id, NULL, 0))
                                goto abort;
                        records++;
                        continue;
                }
                if (bt->bt_ev) {
                        v = bt->bt_ev;
                        bt->bt_ev = NULL; /* taken by txn_produce */
                        if (txn_produce(ag, ag->ag_batches,
                                        RD_KAFKA_PARTITION_UA, bt->bt_id, v,
                                        bt->bt_ev_len))
                                goto abort;
                        events++;
                }
                if (!(v = kb_bstate_encode(bs, &len)) ||
                    txn_produce(ag, ag->ag_state, bt->bt_partition, bt->bt_id,
                                v, len))
                        goto abort;
                records++;
        }
        if (offs->cnt > 0) {
                cgmd = rd_kafka_consumer_group_metadata(ag->ag_consumer);
                for (tries = 0;; tries++) {
                        r = txn_classify(ag, "send offsets to transaction",
                                         rd_kafka_send_offsets_to_transaction(
                                             ag->ag_producer, offs, cgmd, -1));
                        if (r != TXN_RETRY || tries >= 5)
                                break;
                }
                rd_kafka_consumer_group_metadata_destroy(cgmd);
                if (r == TXN_FATAL)
                        goto fatal;
                if (r != TXN_OK)
                        goto abort;
        }
        ag->ag_txn_seq++;
        if (ag->ag_test_fatal_every &&
            ag->ag_txn_seq % (uint64_t)ag->ag_test_fatal_every == 0)
                rd_kafka_test_fatal_error(ag->ag_producer,
                                          RD_KAFKA_RESP_ERR_INVALID_TXN_STATE,
                                          "test: KBATCH_TEST_TXN_FATAL_EVERY");
        if (ag->ag_test_abort_every &&
            ag->ag_txn_seq % (uint64_t)ag->ag_test_abort_every == 0) {
                kb_log(KB_LOG_WARN, "aggregator",
                       "test: aborting a transaction on purpose");
                goto abort;
        }
        for (tries = 0;; tries++) {
                r = txn_classify(ag, "commit transaction",
                                 rd_kafka_commit_transaction(ag->ag_producer,
                                                             -1));
                if (r != TXN_RETRY || tries >= 5)
                        break;
        }
        if (r == TXN_FATAL)
                goto fatal;
        if (r != TXN_OK)
                goto abort;

        /* Committed. */
        ag->ag_txn_begun_at = 0;
        ms = kb_now_ms() - t0;
        ag->ag_commits++;
        ag->ag_commit_ms_sum += ms;
        if (ms > ag->ag_commit_ms_max)
                ag->ag_commit_ms_max = ms;
        for (p = 0; p < offs->cnt; p++) {
                kb_agpart_t *ap = part_get(ag, offs->elems[p].partition, 0);
                if (ap)
                        ap->ap_sent = offs->elems[p].offset;
        }
        rd_kafka_topic_partition_list_destroy(offs);
        TAILQ_FOREACH_SAFE(bt, &ag->ag_dirty, bt_dlink, tmp) {
                TAILQ_REMOVE(&ag->ag_dirty, bt, bt_dlink);
                bt->bt_dirty = 0;
                if (bt->bt_tombstone) {
                        const char *kv[] = {"batch_id", bt->bt_id, NULL};
                        kb_logkv(KB_LOG_INFO, "aggregator", kv,
                                 "batch state retired");
                        tbl_unlink(&ag->ag_table, bt);
                        batch_free(bt);
                        continue;
                }
                if (bt->bt_event_due && kb_bstate_complete(bt->bt_st)) {
                        ag->ag_events++;
                        kb_metrics_inc(bt->bt_st->bs_revision <= 1
                                           ? KB_M_BATCHES_COMPLETED
                                           : KB_M_BATCHES_UPDATED,
                                       kb_batch_status_str(
                                           kb_bstate_status(bt->bt_st)),
                                       NULL);
                        log_event(bt->bt_st);
                }
                bt->bt_event_due = 0;
        }
        {
                char ev[16], rec[16], lat[24];
                const char *kv[] = {"events", ev, "records", rec,
                                    "latency_ms", lat, NULL};
                snprintf(ev, sizeof(ev), "%d", events);
                snprintf(rec, sizeof(rec), "%d", records);
                snprintf(lat, sizeof(lat), "%lld", (long long)ms);
                kb_logkv(events ? KB_LOG_INFO : KB_LOG_DEBUG, "aggregator", kv,
                         "transaction committed");
        }
        return TXN_OK;

abort:
        events_forget(ag);
        rd_kafka_topic_partition_list_destroy(offs);
        ag->ag_aborts++;
        kb_log(KB_LOG_WARN, "aggregator",
               "aborting the transaction; rewinding to the last commit");
        for (tries = 0;; tries++) {
                r = txn_classify(ag, "abort transaction",
                                 rd_kafka_abort_transaction(ag->ag_producer,
                                                            -1));
                if (r != TXN_RETRY || tries >= 5)
                        break;
        }
        if (r != TXN_OK) {
                set_recover(ag, "abort transaction", "did not succeed",
                            RD_KAFKA_RESP_ERR_NO_ERROR);
                return TXN_FATAL;
        }
        ag->ag_txn_begun_at = 0;
        return TXN_ABORT;
fatal:
        events_forget(ag);
        rd_kafka_topic_partition_list_destroy(offs);
        return TXN_FATAL;
}

/* After an aborted transaction: forget the in-memory state, restore it from
 * batch-state and seek the consumer back to the committed offsets (what
 * examples/transactions.c calls rewind). */
static void rewind_all(kb_aggregator_t *ag) {
        rd_kafka_topic_partition_list_t *l;
        rd_kafka_error_t *e;
        rd_kafka_resp_err_t err;
        int32_t *ps, p;
        int n = 0, i;

        if (!(ps = calloc((size_t)ag->ag_part_cnt + 1, sizeof(*ps)))) {
                set_fatal(ag, "rewind", "out of memory");
                return;
        }
        /* Nothing is committed until the state and positions are back. */
        for (p = 0; p < ag->ag_part_cnt; p++)
                if (ag->ag_parts[p].ap_assigned) {
                        ps[n++] = p;
                        ag->ag_parts[p].ap_next = ag->ag_parts[p].ap_sent = -1;
                }
        drop_partition(ag, -1);
        if (restore(ag, ps, n) < 0) {
                for (i = 0; i < n; i++)
                        ag->ag_parts[ps[i]].ap_assigned = 0;
                free(ps);
                return;
        }
        l = rd_kafka_topic_partition_list_new(n + 1);
        for (i = 0; i < n; i++)
                rd_kafka_topic_partition_list_add(l, ag->ag_results, ps[i]);
        free(ps);
        if (n > 0) {
                err = rd_kafka_committed(ag->ag_consumer, l, 30000);
                if (err) {
                        /* The broker is not quite back (NOT_COORDINATOR
                         * right after an outage): again in a second. */
                        kb_log(KB_LOG_WARN, "aggregator",
                               "rewind: committed offsets: %s (retrying)",
                               rd_kafka_err2str(err));
                        ag->ag_recover = 1;
                        rd_kafka_topic_partition_list_destroy(l);
                        return;
                }
                for (i = 0; i < l->cnt; i++) {
                        rd_kafka_topic_partition_t *tp = &l->elems[i];
                        kb_agpart_t *ap = part_get(ag, tp->partition, 0);
                        int64_t off = tp->offset >= 0 ? tp->offset : -1;
                        if (ap) {
                                ap->ap_next = ap->ap_sent = off;
                                ap->ap_at_eof = 0;
                        }
                        tp->offset = off >= 0 ? off : RD_KAFKA_OFFSET_BEGINNING;
                }
                if ((e = rd_kafka_seek_partitions(ag->ag_consumer, l, 30000))) {
                        set_fatal(ag, "rewind: seek", rd_kafka_error_string(e));
                        rd_kafka_error_destroy(e);
                } else {
                        for (i = 0; i < l->cnt; i++)
                                if (l->elems[i].err)
                                        set_fatal(ag, "rewind: seek",
                                                  rd_kafka_err2str(
                                                      l->elems[i].err));
                }
        }
        rd_kafka_topic_partition_list_destroy(l);
        kb_log(KB_LOG_INFO, "aggregator", "rewound %d partitions", n);
}

/* ---- rebalances ---- */

static void on_assign(kb_aggregator_t *ag,
                      rd_kafka_topic_partition_list_t *parts) {
        int32_t *ps = calloc((size_t)parts->cnt + 1, sizeof(*ps));
        rd_kafka_resp_err_t err;
        int i;

        if (!ps) {
                set_fatal(ag, "assign", "out of memory");
                rd_kafka_assign(ag->ag_consumer, NULL);
                return;
        }
        for (i = 0; i < parts->cnt; i++) {
                kb_agpart_t *ap = part_get(ag, parts->elems[i].partition, 1);
                ps[i] = parts->elems[i].partition;
                drop_partition(ag, ps[i]);
                if (ap) {
                        ap->ap_assigned = 1;
                        ap->ap_at_eof = 0;
                        ap->ap_resume_at = 0;
                        ap->ap_next = ap->ap_sent = -1;
                }
        }
        /* State first (it waits for what a previous owner left open), then
         * the offsets committed with it. */
        if (restore(ag, ps, parts->cnt) < 0) {
                for (i = 0; i < parts->cnt; i++) {
                        kb_agpart_t *ap = part_get(ag, ps[i], 0);
                        if (ap)
                                ap->ap_assigned = 0;
                }
                free(ps);
                rd_kafka_assign(ag->ag_consumer, NULL);
                return;
        }
        free(ps);
        err = rd_kafka_committed(ag->ag_consumer, parts, 30000);
        if (err)
                /* Safe, only slower: re-reading from the beginning counts
                 * nothing twice (the 2-bit map). */
                kb_log(KB_LOG_WARN, "aggregator",
                       "fetching committed offsets failed: %s; starting from "
                       "the beginning",
                       rd_kafka_err2str(err));
        for (i = 0; i < parts->cnt; i++) {
                rd_kafka_topic_partition_t *tp = &parts->elems[i];
                kb_agpart_t *ap = part_get(ag, tp->partition, 0);
                if (err || tp->offset < 0)
                        tp->offset = RD_KAFKA_OFFSET_BEGINNING;
                else if (ap)
                        ap->ap_next = ap->ap_sent = tp->offset;
                kb_log(KB_LOG_INFO, "aggregator", "assigned %s[%d] at %s%lld",
                       tp->topic, (int)tp->partition,
                       tp->offset < 0 ? "the beginning " : "offset ",
                       (long long)(tp->offset < 0 ? 0 : tp->offset));
        }
        err = rd_kafka_assign(ag->ag_consumer, parts);
        if (err)
                set_fatal(ag, "assign", rd_kafka_err2str(err));
        else /* a partition held before a rebalance may still be paused */
                rd_kafka_resume_partitions(ag->ag_consumer, parts);
        ag->ag_assigned_once = 1;
}

static void on_revoke(kb_aggregator_t *ag,
                      rd_kafka_topic_partition_list_t *parts, int lost) {
        int i;
        /* Hand over what is done; on failure the next owner restores the
         * last commit and replays. */
        if (!lost && !ag->ag_fatal && ag->ag_txn_ready && !ag->ag_recover)
                txn_commit(ag);
        for (i = 0; i < parts->cnt; i++) {
                kb_agpart_t *ap = part_get(ag, parts->elems[i].partition, 0);
                drop_partition(ag, parts->elems[i].partition);
                if (ap) {
                        ap->ap_assigned = 0;
                        ap->ap_at_eof = 0;
                        ap->ap_resume_at = 0;
                        ap->ap_next = ap->ap_sent = -1;
                }
                kb_log(KB_LOG_INFO, "aggregator", "%s %s[%d]",
                       lost ? "lost" : "revoked", parts->elems[i].topic,
                       (int)parts->elems[i].partition);
        }
        rd_kafka_assign(ag->ag_consumer, NULL);
}

static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque) {
        kb_aggregator_t *ag = opaque;
        if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS)
                on_assign(ag, parts);
        else if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS)
                on_revoke(ag, parts, rd_kafka_assignment_lost(rk));
        else {
                kb_log(KB_LOG_ERROR, "aggregator", "rebalance error: %s",
                       rd_kafka_err2str(err));
                on_revoke(ag, parts, 1);
        }
}

/* A fatal Kafka error (kb_role_error_cb): the transactional producer is
 * recreated, any other client's ends the process. */
static void fatal_error(void *self, rd_kafka_t *rk, rd_kafka_resp_err_t ferr,
                        const char *msg) {
        kb_aggregator_t *ag = self;
        if (rk == ag->ag_producer)
                set_recover(ag, rd_kafka_name(rk), msg, ferr);
        else
                set_fatal(ag, rd_kafka_name(rk), msg);
}

_Static_assert(offsetof(struct kb_aggregator_s, ag_role) == 0,
               "the role's clients' opaque is the kb_aggregator_t");

static const kb_role_ops_t aggregator_ops = {.ro_fatal_error = fatal_error};

/* ---- consuming ---- */

/* The writer schema of an Avro result is not available yet: go back to the
 * message and pause its partition for a moment (serving rebalances all
 * along). */
static void hold_partition(kb_aggregator_t *ag, kb_agpart_t *ap,
                           const rd_kafka_message_t *m) {
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
        rd_kafka_error_t *e;
        rd_kafka_topic_partition_list_add(l, ag->ag_results, m->partition)
            ->offset = m->offset;
        rd_kafka_pause_partitions(ag->ag_consumer, l);
        if ((e = rd_kafka_seek_partitions(ag->ag_consumer, l, 0))) {
                kb_log(KB_LOG_WARN, "aggregator", "seek: %s",
                       rd_kafka_error_string(e));
                rd_kafka_error_destroy(e);
        }
        rd_kafka_topic_partition_list_destroy(l);
        ap->ap_resume_at = kb_now_ms() + 200;
        kb_log(KB_LOG_DEBUG, "aggregator",
               "%s[%d]@%lld: writer schema not available yet, holding",
               ag->ag_results, (int)m->partition, (long long)m->offset);
}

/* Resumes the partitions held by hold_partition whose time came. */
static int resume_held(kb_aggregator_t *ag, int64_t now) {
        int32_t p;
        int wait = 1000;
        for (p = 0; p < ag->ag_part_cnt; p++) {
                kb_agpart_t *ap = &ag->ag_parts[p];
                rd_kafka_topic_partition_list_t *l;
                if (!ap->ap_resume_at)
                        continue;
                if (!ap->ap_assigned) {
                        ap->ap_resume_at = 0;
                        continue;
                }
                if (ap->ap_resume_at > now) {
                        if (ap->ap_resume_at - now < wait)
                                wait = (int)(ap->ap_resume_at - now);
                        continue;
                }
                l = rd_kafka_topic_partition_list_new(1);
                rd_kafka_topic_partition_list_add(l, ag->ag_results, p);
                rd_kafka_resume_partitions(ag->ag_consumer, l);
                rd_kafka_topic_partition_list_destroy(l);
                ap->ap_resume_at = 0;
        }
        return wait;
}

static void handle_result(kb_aggregator_t *ag, rd_kafka_message_t *m) {
        kb_agpart_t *ap = part_get(ag, m->partition, 0);
        kb_bresult_t br;
        kb_batch_t *bt;
        kb_apply_res_t r;
        char errstr[256], key[KB_BATCH_ID_MAX + 1], idx[24];
        json_t *o;

        if (m->err) {
                if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                        if (ap && ap->ap_assigned)
                                ap->ap_at_eof = 1;
                } else
                        kb_log(KB_LOG_WARN, "aggregator", "consumer: %s",
                               rd_kafka_message_errstr(m));
                return;
        }
        if (!ap || !ap->ap_assigned || ap->ap_resume_at)
                return;
        if (ag->ag_results_avro) {
                kb_serde_res_t sr = kb_serde_decode(
                    ag->ag_serde, ag->ag_results, KB_MSG_ITEM_RESULT,
                    m->payload, m->len, &o, errstr, sizeof(errstr));
                if (sr == KB_SERDE_RETRY) {
                        hold_partition(ag, ap, m);
                        return;
                }
                if (sr != KB_SERDE_OK)
                        o = NULL;
                else
                        kb_bresult_from_json(o, &br);
        } else
                o = kb_bresult_decode(m->payload, m->len, &br, errstr,
                                      sizeof(errstr));
        ap->ap_next = m->offset + 1;
        ap->ap_at_eof = 0;
        ag->ag_results_cnt++;
        if (!o) {
                kb_log(KB_LOG_WARN, "aggregator",
                       "%s[%d]@%lld: unreadable result ignored: %s",
                       ag->ag_results, (int)m->partition, (long long)m->offset,
                       errstr);
                ag->ag_rejected++;
                return;
        }
        if (!br.br_batch_id && m->key_len > 0 && m->key_len <= KB_BATCH_ID_MAX) {
                memcpy(key, m->key, m->key_len);
                key[m->key_len] = '\0';
                if (kb_codec_batch_id_valid(key))
                        br.br_batch_id = key;
        }
        snprintf(idx, sizeof(idx), "%lld", (long long)br.br_item_index);
        if (!br.br_batch_id) {
                kb_log(KB_LOG_WARN, "aggregator",
                       "%s[%d]@%lld: result without a usable batch_id ignored",
                       ag->ag_results, (int)m->partition,
                       (long long)m->offset);
                ag->ag_rejected++;
                json_decref(o);
                return;
        }
        if (!(bt = tbl_find(&ag->ag_table, br.br_batch_id))) {
                kb_bstate_t *bs = kb_bstate_new(br.br_batch_id,
                                                br.br_items_total);
                if (!bs || !(bt = batch_new(br.br_batch_id, m->partition))) {
                        const char *kv[] = {"batch_id", br.br_batch_id,
                                            "item_index", idx, NULL};
                        kb_logkv(KB_LOG_WARN, "aggregator", kv,
                                 "result ignored: items_total %lld cannot "
                                 "start a batch",
                                 (long long)br.br_items_total);
                        kb_bstate_destroy(bs);
                        ag->ag_rejected++;
                        json_decref(o);
                        return;
                }
                bt->bt_st = bs;
                tbl_insert(&ag->ag_table, bt);
        }
        r = kb_bstate_apply(bt->bt_st, &br, kb_wall_ms());
        switch (r) {
        case KB_APPLY_DUPLICATE:
                ag->ag_dups++;
                break;
        case KB_APPLY_IGNORED: {
                const char *kv[] = {"batch_id", br.br_batch_id, "item_index",
                                    idx, NULL};
                kb_logkv(KB_LOG_WARN, "aggregator", kv,
                         "inconsistent result ignored: more than %d "
                         "out-of-range item indexes",
                         KB_BATCH_EXTRA_MAX);
                ag->ag_rejected++;
                break;
        }
        case KB_APPLY_INVALID: {
                const char *kv[] = {"batch_id", br.br_batch_id, "item_index",
                                    idx, NULL};
                kb_logkv(KB_LOG_WARN, "aggregator", kv,
                         "inconsistent result counted as an invalid_item "
                         "failure (items_total %lld, the batch has %lld)",
                         (long long)br.br_items_total,
                         (long long)bt->bt_st->bs_items_total);
                ag->ag_invalid++;
        }
                /* fall through */
        case KB_APPLY_COUNTED:
        case KB_APPLY_REPLAYED:
                ag->ag_counted++;
                bt->bt_tombstone = 0;
                batch_dirty(ag, bt);
                if (kb_bstate_complete(bt->bt_st))
                        bt->bt_event_due = 1;
                if (r == KB_APPLY_REPLAYED) {
                        const char *kv[] = {"batch_id", br.br_batch_id,
                                            "item_index", idx, NULL};
                        kb_logkv(KB_LOG_INFO, "aggregator", kv,
                                 "replayed item succeeded");
                }
                break;
        }
        json_decref(o);
}

/* Timers: batches past deadline + grace, and retention. Only partitions
 * consumed to their end decide that results are missing. */
static void cron(kb_aggregator_t *ag) {
        const kb_conf_t *conf = ag->ag_conf;
        int64_t wall = kb_wall_ms();
        kb_batch_t *bt;
        TAILQ_FOREACH(bt, &ag->ag_table.tb_all, bt_all) {
                kb_bstate_t *bs = bt->bt_st;
                kb_agpart_t *ap = part_get(ag, bt->bt_partition, 0);
                int caught_up = ap && ap->ap_assigned && ap->ap_at_eof;
                const char *kv[] = {"batch_id", bt->bt_id, NULL};
                if (bt->bt_tombstone)
                        continue;
                if (!kb_bstate_complete(bs) && bs->bs_deadline && caught_up &&
                    wall > bs->bs_deadline + conf->aggregator_expiry_grace_ms) {
                        int64_t n = kb_bstate_expire_missing(bs, wall);
                        kb_logkv(KB_LOG_INFO, "aggregator", kv,
                                 "deadline passed %lld ms ago: %lld missing "
                                 "items counted as expired",
                                 (long long)(wall - bs->bs_deadline),
                                 (long long)n);
                        bt->bt_event_due = 1;
                        batch_dirty(ag, bt);
                } else if (kb_bstate_complete(bs) && bs->bs_completed_at &&
                           wall > bs->bs_completed_at +
                                      conf->aggregator_retention_ms) {
                        bt->bt_tombstone = 1;
                        batch_dirty(ag, bt);
                } else if (!kb_bstate_complete(bs) && caught_up &&
                           bs->bs_last_result_at &&
                           wall > bs->bs_last_result_at +
                                      conf->aggregator_retention_ms) {
                        kb_logkv(KB_LOG_WARN, "aggregator", kv,
                                 "incomplete batch without results for %lld "
                                 "ms retired (%lld of %lld items)",
                                 (long long)(wall - bs->bs_last_result_at),
                                 (long long)bs->bs_done,
                                 (long long)bs->bs_items_total);
                        bt->bt_tombstone = 1;
                        batch_dirty(ag, bt);
                }
        }
}

/* ---- construction ---- */

static int has_prop(const kb_conf_t *conf, const char *name) {
        size_t i;
        for (i = 0; i < conf->kafka_property_cnt; i++)
                if (!strcmp(conf->kafka_properties[i].k, name))
                        return 1;
        return 0;
}

/* A transactional producer with our transactional.id (not initialized). */
static rd_kafka_t *producer_new(kb_aggregator_t *ag, char *errstr,
                                size_t errstr_size) {
        const kb_conf_t *conf = ag->ag_conf;
        rd_kafka_conf_t *kc;
        char num[32];
        snprintf(num, sizeof(num), "%d", conf->aggregator_transaction_timeout_ms);
        if (!(kc = kb_kafka_conf_new(conf, "aggregator-producer", errstr,
                                     errstr_size)))
                return NULL;
        if (kb_kafka_conf_set(kc, "transactional.id", ag->ag_txn_id, errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "transaction.timeout.ms", num, errstr,
                              errstr_size) ||
            (!has_prop(conf, "compression.type") &&
             kb_kafka_conf_set(kc, "compression.type", "lz4", errstr,
                               errstr_size))) {
                rd_kafka_conf_destroy(kc);
                return NULL;
        }
        rd_kafka_conf_set_error_cb(kc, kb_role_error_cb);
        rd_kafka_conf_set_opaque(kc, ag);
        return kb_kafka_producer_new(conf, kc, errstr, errstr_size);
}

/* Checks that results and batch-state exist and are co-partitioned, and
 * that the batches topic exists. */
static int check_topics(kb_aggregator_t *ag, char *errstr,
                        size_t errstr_size) {
        const char *names[3] = {ag->ag_results, ag->ag_state, ag->ag_batches};
        int cnt[3], i, j, missing;
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_resp_err_t err;
        int64_t until = kb_now_ms() + 10000;

        /* Topics created a moment ago may take a little while to show in
         * every broker's metadata. */
        for (;;) {
                cnt[0] = cnt[1] = cnt[2] = -1;
                err = rd_kafka_metadata(ag->ag_producer, 1, NULL, &md, 30000);
                if (err) {
                        snprintf(errstr, errstr_size, "metadata from %s: %s",
                                 ag->ag_conf->kafka_bootstrap_servers,
                                 rd_kafka_err2str(err));
                        return -1;
                }
                for (i = 0; i < md->topic_cnt; i++)
                        for (j = 0; j < 3; j++)
                                if (!strcmp(md->topics[i].topic, names[j]) &&
                                    !md->topics[i].err)
                                        cnt[j] = md->topics[i].partition_cnt;
                rd_kafka_metadata_destroy(md);
                for (j = 0, missing = 0; j < 3; j++)
                        missing += cnt[j] <= 0;
                if (!missing || kb_now_ms() >= until ||
                    kb_loop_stop_requested)
                        break;
                usleep(200 * 1000);
        }
        for (j = 0; j < 3; j++)
                if (cnt[j] <= 0) {
                        snprintf(errstr, errstr_size,
                                 "topic %s does not exist (kbatch topics "
                                 "create)",
                                 names[j]);
                        return -1;
                }
        if (cnt[0] != cnt[1]) {
                snprintf(errstr, errstr_size,
                         "%s has %d partitions and %s %d: they must be "
                         "co-partitioned (same count)",
                         names[0], cnt[0], names[1], cnt[1]);
                return -1;
        }
        return 0;
}

kb_aggregator_t *kb_aggregator_new(const kb_conf_t *conf, kb_loop_t *loop,
                                   char *errstr, size_t errstr_size) {
        kb_aggregator_t *ag = calloc(1, sizeof(*ag));
        rd_kafka_conf_t *kc = NULL;
        rd_kafka_topic_partition_list_t *topics;
        rd_kafka_resp_err_t err;
        rd_kafka_error_t *e;
        char num[32], gid[300];
        int64_t until;
        int wfd;

        if (!ag) {
                snprintf(errstr, errstr_size, "out of memory");
                return NULL;
        }
        ag->ag_conf = conf;
        kb_role_init(&ag->ag_role, &aggregator_ops, "aggregator", loop,
                     &ag->ag_fatal);
        ag->ag_loop = loop;
        ag->ag_results = conf->topics_name[KB_TOPIC_RESULTS];
        ag->ag_state = conf->topics_name[KB_TOPIC_BATCH_STATE];
        ag->ag_batches = conf->topics_name[KB_TOPIC_BATCHES];
        TAILQ_INIT(&ag->ag_dirty);
        if (getenv("KBATCH_TEST_TXN_ABORT_EVERY"))
                ag->ag_test_abort_every =
                    atoi(getenv("KBATCH_TEST_TXN_ABORT_EVERY"));
        if (ag->ag_test_abort_every < 0)
                ag->ag_test_abort_every = 0;
        if (tbl_init(&ag->ag_table) < 0) {
                snprintf(errstr, errstr_size, "out of memory");
                goto fail;
        }
        if (!(ag->ag_serde = kb_serde_new(conf, loop, errstr, errstr_size)))
                goto fail;
        ag->ag_results_avro =
            kb_serde_format(ag->ag_serde, ag->ag_results) == KB_FORMAT_AVRO;
        ag->ag_events_avro =
            kb_serde_format(ag->ag_serde, ag->ag_batches) == KB_FORMAT_AVRO;
        if (ag->ag_events_avro &&
            kb_serde_prepare(ag->ag_serde, ag->ag_batches, KB_MSG_BATCH_EVENT,
                             errstr, errstr_size) == KB_SERDE_INVALID)
                goto fail;

        /* The transactional producer. */
        snprintf(ag->ag_txn_id, sizeof(ag->ag_txn_id), "kbatch-aggregator-%s",
                 kb_conf_instance_id(conf));
        if (getenv("KBATCH_TEST_TXN_FATAL_EVERY"))
                ag->ag_test_fatal_every =
                    atoi(getenv("KBATCH_TEST_TXN_FATAL_EVERY"));
        if (ag->ag_test_fatal_every < 0)
                ag->ag_test_fatal_every = 0;
        if (!(ag->ag_producer = producer_new(ag, errstr, errstr_size)))
                goto fail;
        if (check_topics(ag, errstr, errstr_size) < 0)
                goto fail;
        /* Fences a previous process with our transactional.id and aborts
         * what it left open (so the restore below is not held up). */
        until = kb_now_ms() + 60000;
        for (;;) {
                e = rd_kafka_init_transactions(ag->ag_producer, 10000);
                if (!e)
                        break;
                if (!rd_kafka_error_is_retriable(e) || kb_now_ms() >= until ||
                    kb_loop_stop_requested) {
                        snprintf(errstr, errstr_size,
                                 "initializing transactions (%s): %s",
                                 ag->ag_txn_id, rd_kafka_error_string(e));
                        rd_kafka_error_destroy(e);
                        goto fail;
                }
                kb_log(KB_LOG_WARN, "aggregator",
                       "initializing transactions: %s (retrying)",
                       rd_kafka_error_string(e));
                rd_kafka_error_destroy(e);
        }
        ag->ag_txn_ready = 1;

        /* The restore consumer: assign only, never commits. */
        snprintf(gid, sizeof(gid), "%s.restore", conf->kafka_aggregator_group_id);
        if (!(kc = kb_kafka_conf_new(conf, "aggregator-restore", errstr,
                                     errstr_size)))
                goto fail;
        if (kb_kafka_conf_set(kc, "group.id", gid, errstr, errstr_size) ||
            kb_kafka_conf_set(kc, "enable.auto.commit", "false", errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "enable.auto.offset.store", "false", errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "enable.partition.eof", "true", errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "isolation.level", "read_committed", errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "fetch.wait.max.ms", "10", errstr,
                              errstr_size))
                goto fail;
        rd_kafka_conf_set_error_cb(kc, kb_role_error_cb);
        rd_kafka_conf_set_opaque(kc, ag);
        if (!(ag->ag_restorer = rd_kafka_new(RD_KAFKA_CONSUMER, kc, errstr,
                                             errstr_size)))
                goto fail;
        kc = NULL;
        rd_kafka_poll_set_consumer(ag->ag_restorer);
        {
                /* Connects now rather than in the first restore. */
                const struct rd_kafka_metadata *md = NULL;
                rd_kafka_topic_t *rkt =
                    rd_kafka_topic_new(ag->ag_restorer, ag->ag_state, NULL);
                if (rkt && !rd_kafka_metadata(ag->ag_restorer, 0, rkt, &md,
                                              10000))
                        rd_kafka_metadata_destroy(md);
                if (rkt)
                        rd_kafka_topic_destroy(rkt);
        }

        /* The results consumer: eager range assignment (all state of a
         * partition moves at once), manual offsets (committed by the
         * transactions). */
        snprintf(num, sizeof(num), "%d", conf->worker_queue_max_kbytes);
        if (!(kc = kb_kafka_conf_new(conf, "aggregator-consumer", errstr,
                                     errstr_size)))
                goto fail;
        if (kb_kafka_conf_set(kc, "group.id", conf->kafka_aggregator_group_id,
                              errstr, errstr_size) ||
            kb_kafka_conf_set(kc, "enable.auto.commit", "false", errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "enable.auto.offset.store", "false", errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "partition.assignment.strategy", "range",
                              errstr, errstr_size) ||
            kb_kafka_conf_set(kc, "auto.offset.reset", "earliest", errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "isolation.level", "read_committed", errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "enable.partition.eof", "true", errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "queued.max.messages.kbytes", num, errstr,
                              errstr_size))
                goto fail;
        rd_kafka_conf_set_rebalance_cb(kc, rebalance_cb);
        rd_kafka_conf_set_error_cb(kc, kb_role_error_cb);
        rd_kafka_conf_set_opaque(kc, ag);
        if (!(ag->ag_consumer = rd_kafka_new(RD_KAFKA_CONSUMER, kc, errstr,
                                             errstr_size)))
                goto fail;
        kc = NULL;
        rd_kafka_poll_set_consumer(ag->ag_consumer);
        ag->ag_cq = rd_kafka_queue_get_consumer(ag->ag_consumer);
        if ((wfd = kb_loop_wake_pipe(loop)) < 0) {
                snprintf(errstr, errstr_size, "pipe: %s", strerror(errno));
                goto fail;
        }
        rd_kafka_queue_io_event_enable(ag->ag_cq, wfd, "a", 1);
        topics = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(topics, ag->ag_results,
                                          RD_KAFKA_PARTITION_UA);
        err = rd_kafka_subscribe(ag->ag_consumer, topics);
        rd_kafka_topic_partition_list_destroy(topics);
        if (err) {
                snprintf(errstr, errstr_size, "subscribe: %s",
                         rd_kafka_err2str(err));
                goto fail;
        }
        ag->ag_next_commit = kb_now_ms() + conf->aggregator_commit_interval_ms;
        ag->ag_next_cron = kb_now_ms() + 1000;
        kb_log(KB_LOG_INFO, "aggregator",
               "consuming %s in group %s (transactional.id %s)",
               ag->ag_results, conf->kafka_aggregator_group_id, ag->ag_txn_id);
        return ag;
fail:
        if (kc)
                rd_kafka_conf_destroy(kc);
        kb_aggregator_destroy(ag);
        return NULL;
}

/* In process, instead of exiting: a new transactional producer with the
 * same transactional.id (init_transactions fences the failed one and aborts
 * its open transaction), then the state and positions of the last commit
 * (rewind_all). Meanwhile the consumer is polled (rebalances, the poll
 * interval) and what it returns is dropped: the rewind goes back to the
 * committed offsets. Tried again every second until the broker answers.
 * Returns the time to wait. */
static int producer_recover(kb_aggregator_t *ag, int64_t now) {
        rd_kafka_message_t *m;
        rd_kafka_error_t *e;
        char errstr[512];
        int budget = 20000;

        while (budget-- > 0 && !ag->ag_fatal &&
               (m = rd_kafka_consumer_poll(ag->ag_consumer, 0)))
                rd_kafka_message_destroy(m);
        if (ag->ag_fatal || now < ag->ag_recover_at)
                return ag->ag_fatal ? 1000 : (int)(ag->ag_recover_at - now);
        ag->ag_recover_at = now + 1000;
        if (!ag->ag_txn_ready) {
                if (ag->ag_producer &&
                    rd_kafka_fatal_error(ag->ag_producer, NULL, 0)) {
                        rd_kafka_destroy(ag->ag_producer);
                        ag->ag_producer = NULL;
                }
                if (!ag->ag_producer &&
                    !(ag->ag_producer =
                          producer_new(ag, errstr, sizeof(errstr)))) {
                        kb_log(KB_LOG_WARN, "aggregator", "new producer: %s",
                               errstr);
                        return 1000;
                }
                /* Bounded: the loop serves the other roles too. */
                if ((e = rd_kafka_init_transactions(ag->ag_producer, 5000))) {
                        kb_log(KB_LOG_WARN, "aggregator",
                               "initializing transactions: %s (retrying)",
                               rd_kafka_error_string(e));
                        if (rd_kafka_error_is_fatal(e)) {
                                rd_kafka_destroy(ag->ag_producer);
                                ag->ag_producer = NULL;
                        }
                        rd_kafka_error_destroy(e);
                        return 1000;
                }
                ag->ag_txn_ready = 1;
                ag->ag_txn_begun_at = 0;
                ag->ag_recoveries++;
                kb_log(KB_LOG_INFO, "aggregator",
                       "transactional producer recreated (%s); rewinding",
                       ag->ag_txn_id);
        }
        /* A rewind that cannot finish yet sets ag_recover again. */
        ag->ag_recover = 0;
        rewind_all(ag);
        return 0;
}

int kb_aggregator_serve(kb_aggregator_t *ag, int64_t now) {
        const kb_conf_t *conf = ag->ag_conf;
        int budget = 20000, wait, held_wait;
        rd_kafka_message_t *m;

        if (ag->ag_producer)
                rd_kafka_poll(ag->ag_producer, 0); /* error_cb */
        if (ag->ag_fatal)
                return 1000;
        if (ag->ag_recover)
                return producer_recover(ag, now);
        held_wait = resume_held(ag, now);
        while (budget-- > 0 && !ag->ag_fatal &&
               (m = rd_kafka_consumer_poll(ag->ag_consumer, 0))) {
                handle_result(ag, m);
                rd_kafka_message_destroy(m);
        }
        now = kb_now_ms();
        if (now >= ag->ag_next_cron) {
                cron(ag);
                ag->ag_next_cron = now + 1000;
        }
        if (now >= ag->ag_next_commit && !ag->ag_fatal && !ag->ag_recover) {
                if (txn_commit(ag) == TXN_ABORT)
                        rewind_all(ag);
                now = kb_now_ms();
                ag->ag_next_commit = now + conf->aggregator_commit_interval_ms;
        }
        wait = (int)((ag->ag_next_commit < ag->ag_next_cron ? ag->ag_next_commit
                                                            : ag->ag_next_cron) -
                     now);
        if (held_wait < wait)
                wait = held_wait;
        if (budget < 0)
                wait = 0;
        return wait < 0 ? 0 : wait;
}

void kb_aggregator_shutdown(kb_aggregator_t *ag) {
        if (!ag)
                return;
        if (!ag->ag_fatal && ag->ag_txn_ready && !ag->ag_recover)
                txn_commit(ag);
        /* Leaves the group; the revoke callback commits again (no-op). */
        kb_kafka_consumer_close(ag->ag_consumer, 15000, "aggregator");
        kb_log(KB_LOG_INFO, "aggregator",
               "stopped: %llu results (%llu counted, %llu duplicates, %llu "
               "invalid, %llu ignored), %llu events, %llu transactions "
               "(%llu aborted, commit avg %.1f ms, max %lld ms)",
               (unsigned long long)ag->ag_results_cnt,
               (unsigned long long)ag->ag_counted,
               (unsigned long long)ag->ag_dups,
               (unsigned long long)ag->ag_invalid,
               (unsigned long long)ag->ag_rejected,
               (unsigned long long)ag->ag_events,
               (unsigned long long)ag->ag_commits,
               (unsigned long long)ag->ag_aborts,
               ag->ag_commits ? (double)ag->ag_commit_ms_sum /
                                    (double)ag->ag_commits
                              : 0.0,
               (long long)ag->ag_commit_ms_max);
}

int kb_aggregator_ready(const kb_aggregator_t *ag) {
        return ag->ag_txn_ready && ag->ag_assigned_once;
}

int kb_aggregator_fatal(const kb_aggregator_t *ag) { return ag->ag_fatal; }

void kb_aggregator_destroy(kb_aggregator_t *ag) {
        kb_batch_t *bt, *tmp;
        if (!ag)
                return;
        /* A consumer not closed yet closes in rd_kafka_destroy() and may
         * call the rebalance callback: no transaction from there, and the
         * table stays valid until the clients are gone. */
        ag->ag_txn_ready = 0;
        if (ag->ag_cq)
                rd_kafka_queue_destroy(ag->ag_cq);
        if (ag->ag_consumer)
                kb_kafka_consumer_destroy(ag->ag_consumer);
        if (ag->ag_restorer) {
                rd_kafka_consumer_close(ag->ag_restorer);
                rd_kafka_destroy(ag->ag_restorer);
        }
        if (ag->ag_producer)
                rd_kafka_destroy(ag->ag_producer);
        kb_serde_destroy(ag->ag_serde);
        if (ag->ag_table.tb_buckets) {
                TAILQ_FOREACH_SAFE(bt, &ag->ag_table.tb_all, bt_all, tmp)
                        batch_free(bt);
                free(ag->ag_table.tb_buckets);
        }
        free(ag->ag_parts);
        free(ag);
}
