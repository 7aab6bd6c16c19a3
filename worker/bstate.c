/* bstate: see bstate.h.
 *
 * Part 1, the pure model: status rule, 2-bit map, kb_bstate_t, result
 * decoding, the BatchState record and the BatchEvent encodings.
 * Part 2, the reader: the latest record of one batch_id in the batch-state
 * topic.
 *
 * The aggregator writes a batch's state records to the partition of
 * batch-state that has the number of the batch's results partition; results
 * are keyed by batch_id with the murmur2 partitioner and batch-state has the
 * same partition count, so that is murmur2(batch_id). That partition is read
 * to its end (read_committed) and the last record of the key wins; when it
 * has none, the other partitions are read too (results produced with another
 * partitioner). */
#include "bstate.h"

#include "b64.h"

#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf.h"
#include "kafka.h"
#include "loop.h"

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

/* ---- base64 (RFC 4648, with padding; b64.h) ---- */

static char *b64_encode(const uint8_t *in, size_t len, size_t *olen) {
        char *out = malloc(kb_b64_encoded_len(len, KB_B64_PAD) + 1);
        if (!out)
                return NULL;
        *olen = kb_b64_encode(in, len, out, KB_B64_PAD);
        return out;
}

/* Decodes exactly `want` bytes from padded base64; -1 if malformed or of
 * another length. */
static int b64_decode(const char *s, size_t len, uint8_t *out, size_t want) {
        if (len != (want + 2) / 3 * 4)
                return -1;
        return kb_b64_decode(s, len, KB_B64_PAD, out, want) == (long)want ? 0
                                                                          : -1;
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

json_t *kb_bstate_json(const kb_bstate_t *bs) {
        json_t *o = json_object();
        if (!o)
                return NULL;
        common_fields(o, bs);
        json_object_set_new(o, "revision", json_integer(bs->bs_revision));
        json_object_set_new(o, "items_done", json_integer(bs->bs_done));
        json_object_set_new(o, "last_result_at",
                            ms_or_null(bs->bs_last_result_at));
        json_object_set_new(o, "updated_at", ms_or_null(bs->bs_updated_at));
        json_object_set_new(o, "deadline", ms_or_null(bs->bs_deadline));
        return o;
}

char *kb_bstate_encode(const kb_bstate_t *bs, size_t *lenp) {
        json_t *o = kb_bstate_json(bs), *ex;
        size_t blen, k;
        char *b64;
        if (!o)
                return NULL;
        json_object_set_new(o, "v", json_integer(1));
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

/* ==== part 2: the reader ================================================ */

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

int kb_bstate_partition(rd_kafka_t *rk, const kb_conf_t *conf,
                        const char *topic, const char *batch_id, int wait_ms,
                        int32_t *cntp, int32_t *partp, char *errstr,
                        size_t errstr_size) {
        rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_resp_err_t err;
        int64_t until = kb_now_ms() + wait_ms;
        int ret = -1;

        for (;;) {
                err = rd_kafka_metadata(rk, 0, rkt, &md, 30000);
                if (err || kb_now_ms() >= until ||
                    (md->topic_cnt >= 1 && !md->topics[0].err))
                        break;
                rd_kafka_metadata_destroy(md);
                md = NULL;
                usleep(200 * 1000);
        }
        if (err)
                snprintf(errstr, errstr_size, "cannot reach Kafka at %s: %s",
                         conf->kafka_bootstrap_servers, rd_kafka_err2str(err));
        else if (md->topic_cnt < 1 || md->topics[0].err ||
                 md->topics[0].partition_cnt < 1)
                snprintf(errstr, errstr_size,
                         "topic %s does not exist (kbatch topics create)",
                         topic);
        else {
                *cntp = md->topics[0].partition_cnt;
                *partp = rd_kafka_msg_partitioner_murmur2(
                    rkt, batch_id, strlen(batch_id), *cntp, NULL, NULL);
                ret = 0;
        }
        if (md)
                rd_kafka_metadata_destroy(md);
        rd_kafka_topic_destroy(rkt);
        return ret;
}

/* Reads the batch's partition p of topic, then, when its key is not there,
 * the cnt - 1 others. 0, or -1 with errstr. */
static int find_record(rd_kafka_t *rk, const char *topic, int32_t cnt,
                       int32_t p, status_find_t *sf, char *errstr,
                       size_t errstr_size) {
        int32_t q, *others;
        int n = 0, r;
        if (read_partitions(rk, topic, &p, 1, sf, errstr, errstr_size) < 0)
                return -1;
        if (sf->sf_found || cnt <= 1)
                return 0;
        if (!(others = calloc((size_t)cnt, sizeof(*others)))) {
                snprintf(errstr, errstr_size, "out of memory");
                return -1;
        }
        for (q = 0; q < cnt; q++)
                if (q != p)
                        others[n++] = q;
        r = read_partitions(rk, topic, others, n, sf, errstr, errstr_size);
        free(others);
        return r;
}

int kb_bstate_read(const kb_conf_t *conf, const char *id, kb_bstate_t **bsp,
                   char *errstr, size_t errstr_size) {
        const char *topic = conf->topics_name[KB_TOPIC_BATCH_STATE];
        status_find_t sf;
        rd_kafka_t *rk;
        int32_t cnt, p;
        int ret = -1;

        memset(&sf, 0, sizeof(sf));
        sf.sf_key = id;
        sf.sf_key_len = strlen(id);
        *bsp = NULL;
        if (!(rk = kb_kafka_reader_new(conf, "status", "read_committed", errstr,
                                       errstr_size)))
                return -1;
        /* A topic created a moment ago may not be in the metadata yet. */
        if (kb_bstate_partition(rk, conf, topic, id, 5000, &cnt, &p, errstr,
                                errstr_size) < 0 ||
            find_record(rk, topic, cnt, p, &sf, errstr, errstr_size) < 0)
                goto out;
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
        free(sf.sf_raw);
        rd_kafka_consumer_close(rk);
        rd_kafka_destroy(rk);
        return ret;
}
