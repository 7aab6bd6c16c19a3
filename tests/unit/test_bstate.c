/* Unit tests for the batch-state model, worker/bstate.c: the batch status
 * rule, the 2-bit map, counting results (dedup, replay, inconsistent input),
 * expiry of missing items, and the BatchState / BatchEvent encodings. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bstate.h"
#include "codec.h"

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

/* xorshift64*: a fixed, portable sequence. */
static uint64_t rng_state = 88172645463325252ULL;
static uint64_t rng(void) {
        rng_state ^= rng_state >> 12;
        rng_state ^= rng_state << 25;
        rng_state ^= rng_state >> 27;
        return rng_state * 2685821657736338717ULL;
}

/* ---- status rule ---- */

Test(bstate, status_rule_table) {
        static const struct {
                int64_t total, ok, failed, cancelled, expired;
                kb_batch_status_t want;
        } cases[] = {
            {3, 3, 0, 0, 0, KB_BATCH_SUCCEEDED},
            {1, 1, 0, 0, 0, KB_BATCH_SUCCEEDED},
            {3, 2, 1, 0, 0, KB_BATCH_PARTIAL_SUCCEEDED},
            {3, 0, 3, 0, 0, KB_BATCH_FAILED},
            {3, 2, 0, 1, 0, KB_BATCH_CANCELLED},
            {3, 0, 0, 3, 0, KB_BATCH_CANCELLED},
            {3, 1, 1, 0, 1, KB_BATCH_EXPIRED},
            {3, 0, 0, 0, 3, KB_BATCH_EXPIRED},
            /* cancelled wins over expired */
            {4, 1, 1, 1, 1, KB_BATCH_CANCELLED},
            {3, 0, 1, 1, 1, KB_BATCH_CANCELLED},
            /* invalid extras: all slots succeeded but a failure counted */
            {3, 3, 1, 0, 0, KB_BATCH_PARTIAL_SUCCEEDED},
            {3, 1, 2, 0, 0, KB_BATCH_PARTIAL_SUCCEEDED},
        };
        for (size_t i = 0; i < NELEM(cases); i++) {
                kb_batch_status_t got = kb_batch_status_rule(
                    cases[i].total, cases[i].ok, cases[i].failed,
                    cases[i].cancelled, cases[i].expired);
                cr_expect_eq(got, cases[i].want, "case %zu: got %s want %s", i,
                             kb_batch_status_str(got),
                             kb_batch_status_str(cases[i].want));
        }
}

Test(bstate, status_names_round_trip) {
        for (int i = 0; i < KB_BATCH__CNT; i++)
                cr_expect_eq(kb_batch_status_parse(
                                 kb_batch_status_str((kb_batch_status_t)i)),
                             i);
        cr_expect_eq(kb_batch_status_parse("nope"), -1);
        cr_expect_eq(kb_batch_status_parse(NULL), -1);
        cr_expect_str_eq(kb_batch_status_str(KB_BATCH_PARTIAL_SUCCEEDED),
                         "partial_succeeded");
        cr_expect_str_eq(kb_batch_status_str(KB_BATCH__CNT), "unknown");
}

/* ---- 2-bit map ---- */

Test(bstate, bits2_matches_reference) {
        static const int64_t sizes[] = {1, 2, 3, 4, 5, 7, 8, 9, 1001, 65537};
        for (size_t s = 0; s < NELEM(sizes); s++) {
                int64_t n = sizes[s], cnt[4], want[4] = {0, 0, 0, 0};
                uint8_t *map = calloc(KB_BITS2_BYTES(n), 1);
                uint8_t *ref = calloc((size_t)n, 1);
                for (int round = 0; round < 3; round++)
                        for (int64_t i = 0; i < n; i++) {
                                unsigned v = (unsigned)(rng() & 3);
                                kb_bits2_set(map, i, v);
                                ref[i] = (uint8_t)v;
                        }
                for (int64_t i = 0; i < n; i++) {
                        cr_assert_eq(kb_bits2_get(map, i), ref[i],
                                     "n=%lld i=%lld", (long long)n,
                                     (long long)i);
                        want[ref[i]]++;
                }
                kb_bits2_count(map, n, cnt);
                for (int v = 0; v < 4; v++)
                        cr_expect_eq(cnt[v], want[v], "n=%lld value %d",
                                     (long long)n, v);
                free(map);
                free(ref);
        }
}

Test(bstate, bits2_set_touches_one_slot) {
        uint8_t map[2] = {0xff, 0xff};
        kb_bits2_set(map, 5, 0);
        cr_expect_eq(map[0], 0xff);
        cr_expect_eq(map[1], 0xf3); /* slot 5 = bits 2-3 of byte 1 */
        kb_bits2_set(map, 5, 2);
        cr_expect_eq(kb_bits2_get(map, 5), 2u);
        cr_expect_eq(kb_bits2_get(map, 4), 3u);
        cr_expect_eq(kb_bits2_get(map, 6), 3u);
}

/* ---- counting results ---- */

typedef struct {
        int64_t index, total;
        kb_item_status_t status;
        kb_apply_res_t want;
        /* counts after: done, succeeded, failed, cancelled, expired, invalid */
        int64_t done, ok, failed, cancelled, expired, invalid;
        int complete;
} apply_step_t;

static kb_bresult_t result(int64_t index, int64_t total, kb_item_status_t st) {
        kb_bresult_t br;
        memset(&br, 0, sizeof(br));
        br.br_batch_id = "b1";
        br.br_item_index = index;
        br.br_items_total = total;
        br.br_status = st;
        br.br_has_usage = 1;
        br.br_input_tokens = 10;
        br.br_output_tokens = 5;
        br.br_total_tokens = 15;
        br.br_finished_at = 1000 + index;
        return br;
}

static void run_steps(int64_t total, const apply_step_t *steps, size_t n) {
        kb_bstate_t *bs = kb_bstate_new("b1", total);
        cr_assert_not_null(bs);
        for (size_t i = 0; i < n; i++) {
                const apply_step_t *s = &steps[i];
                kb_bresult_t br = result(s->index, s->total, s->status);
                kb_apply_res_t r = kb_bstate_apply(bs, &br, 5000);
                cr_expect_eq(r, s->want, "step %zu: got %s want %s", i,
                             kb_apply_res_str(r), kb_apply_res_str(s->want));
                cr_expect_eq(bs->bs_done, s->done, "step %zu done", i);
                cr_expect_eq(bs->bs_succeeded, s->ok, "step %zu succeeded", i);
                cr_expect_eq(bs->bs_failed, s->failed, "step %zu failed", i);
                cr_expect_eq(bs->bs_cancelled, s->cancelled,
                             "step %zu cancelled", i);
                cr_expect_eq(bs->bs_expired, s->expired, "step %zu expired", i);
                cr_expect_eq(bs->bs_invalid, s->invalid, "step %zu invalid", i);
                cr_expect_eq(kb_bstate_complete(bs), s->complete,
                             "step %zu complete", i);
        }
        kb_bstate_destroy(bs);
}

#define S KB_STATUS_SUCCEEDED
#define F KB_STATUS_FAILED
#define C KB_STATUS_CANCELLED
#define E KB_STATUS_EXPIRED
#define N KB_STATUS_NONE

Test(bstate, apply_counts_each_slot_once) {
        static const apply_step_t steps[] = {
            {0, 3, S, KB_APPLY_COUNTED, 1, 1, 0, 0, 0, 0, 0},
            {0, 3, S, KB_APPLY_DUPLICATE, 1, 1, 0, 0, 0, 0, 0},
            {1, 3, F, KB_APPLY_COUNTED, 2, 1, 1, 0, 0, 0, 0},
            {1, 3, F, KB_APPLY_DUPLICATE, 2, 1, 1, 0, 0, 0, 0},
            /* a failed item replayed to success */
            {1, 3, S, KB_APPLY_REPLAYED, 2, 2, 0, 0, 0, 0, 0},
            {1, 3, F, KB_APPLY_DUPLICATE, 2, 2, 0, 0, 0, 0, 0},
            {0, 3, F, KB_APPLY_DUPLICATE, 2, 2, 0, 0, 0, 0, 0},
            {2, 3, C, KB_APPLY_COUNTED, 3, 2, 0, 1, 0, 0, 1},
            /* terminal cancelled/expired never change */
            {2, 3, S, KB_APPLY_DUPLICATE, 3, 2, 0, 1, 0, 0, 1},
            {2, 3, E, KB_APPLY_DUPLICATE, 3, 2, 0, 1, 0, 0, 1},
        };
        run_steps(3, steps, NELEM(steps));
}

Test(bstate, apply_inconsistent_input) {
        static const apply_step_t steps[] = {
            {0, 4, S, KB_APPLY_COUNTED, 1, 1, 0, 0, 0, 0, 0},
            /* disagreeing items_total, in range: its slot fails */
            {1, 5, S, KB_APPLY_INVALID, 2, 1, 1, 0, 0, 1, 0},
            {1, 4, F, KB_APPLY_DUPLICATE, 2, 1, 1, 0, 0, 1, 0},
            /* out of range: an extra failure, once per index */
            {4, 5, S, KB_APPLY_INVALID, 2, 1, 2, 0, 0, 2, 0},
            {4, 5, S, KB_APPLY_DUPLICATE, 2, 1, 2, 0, 0, 2, 0},
            {-1, 4, S, KB_APPLY_INVALID, 2, 1, 3, 0, 0, 3, 0},
            {99, 4, S, KB_APPLY_INVALID, 2, 1, 4, 0, 0, 4, 0},
            /* unknown status: the slot fails */
            {2, 4, N, KB_APPLY_INVALID, 3, 1, 5, 0, 0, 5, 0},
            {3, 4, E, KB_APPLY_COUNTED, 4, 1, 5, 0, 1, 5, 1},
        };
        run_steps(4, steps, NELEM(steps));
}

Test(bstate, apply_bounds_remembered_extras) {
        kb_bstate_t *bs = kb_bstate_new("b1", 2);
        kb_bresult_t br;
        for (int64_t i = 0; i < KB_BATCH_EXTRA_MAX; i++) {
                br = result(100 + i, 2, S);
                cr_assert_eq(kb_bstate_apply(bs, &br, 1), KB_APPLY_INVALID);
        }
        br = result(100 + KB_BATCH_EXTRA_MAX, 2, S);
        cr_expect_eq(kb_bstate_apply(bs, &br, 1), KB_APPLY_IGNORED);
        cr_expect_eq(bs->bs_failed, KB_BATCH_EXTRA_MAX);
        cr_expect_eq(bs->bs_extra_cnt, (size_t)KB_BATCH_EXTRA_MAX);
        kb_bstate_destroy(bs);
}

Test(bstate, apply_takes_info_from_counted_results) {
        kb_bstate_t *bs = kb_bstate_new("b1", 2);
        json_t *md = json_pack("{s:s}", "team", "a");
        kb_bresult_t br = result(1, 2, S);
        br.br_metadata = md;
        br.br_callback_url = "https://example.com/hook";
        br.br_deadline = 7000;
        br.br_finished_at = 3000;
        cr_assert_eq(kb_bstate_apply(bs, &br, 1), KB_APPLY_COUNTED);
        /* a duplicate adds nothing */
        cr_assert_eq(kb_bstate_apply(bs, &br, 1), KB_APPLY_DUPLICATE);
        cr_expect_eq(bs->bs_total_tokens, 15);
        cr_expect_str_eq(bs->bs_callback_url, "https://example.com/hook");
        cr_expect(json_equal(bs->bs_metadata, md));
        cr_expect_eq(bs->bs_deadline, 7000);
        cr_expect_eq(bs->bs_completed_at, 0);
        br = result(0, 2, F);
        br.br_finished_at = 2000;
        cr_assert_eq(kb_bstate_apply(bs, &br, 1), KB_APPLY_COUNTED);
        cr_expect_eq(bs->bs_first_result_at, 2000);
        cr_expect_eq(bs->bs_last_result_at, 3000);
        /* completed at the latest finished_at */
        cr_expect_eq(bs->bs_completed_at, 3000);
        cr_expect_eq(kb_bstate_status(bs), KB_BATCH_PARTIAL_SUCCEEDED);
        br = result(0, 2, S);
        br.br_finished_at = 9000;
        cr_assert_eq(kb_bstate_apply(bs, &br, 1), KB_APPLY_REPLAYED);
        cr_expect_eq(bs->bs_completed_at, 3000);
        cr_expect_eq(bs->bs_updated_at, 9000);
        cr_expect_eq(bs->bs_total_tokens, 45);
        cr_expect_eq(kb_bstate_status(bs), KB_BATCH_SUCCEEDED);
        json_decref(md);
        kb_bstate_destroy(bs);
}

Test(bstate, new_rejects_bad_totals) {
        cr_expect_null(kb_bstate_new("b", 0));
        cr_expect_null(kb_bstate_new("b", -5));
        cr_expect_null(kb_bstate_new("b", KB_ITEMS_TOTAL_MAX + 1));
        cr_expect_null(kb_bstate_new(NULL, 3));
        kb_bstate_t *bs = kb_bstate_new("b", KB_ITEMS_TOTAL_MAX);
        cr_expect_not_null(bs);
        kb_bstate_destroy(bs);
        kb_bstate_destroy(NULL);
}

/* ---- expiry ---- */

Test(bstate, expire_missing_counts_missing_as_expired) {
        static const int64_t totals[] = {1, 3, 4, 9, 1000};
        for (size_t t = 0; t < NELEM(totals); t++) {
                int64_t n = totals[t], set = 0;
                kb_bstate_t *bs = kb_bstate_new("b", n);
                for (int64_t i = 0; i < n; i += 3) {
                        kb_bresult_t br = result(i, n, S);
                        kb_bstate_apply(bs, &br, 1);
                        set++;
                }
                if (set == n) {
                        cr_expect_eq(kb_bstate_expire_missing(bs, 77), 0);
                        kb_bstate_destroy(bs);
                        continue;
                }
                cr_expect_eq(kb_bstate_expire_missing(bs, 77), n - set,
                             "total %lld", (long long)n);
                cr_expect(kb_bstate_complete(bs));
                cr_expect_eq(bs->bs_expired, n - set);
                cr_expect_eq(bs->bs_completed_at, 77);
                cr_expect_eq(kb_bstate_status(bs), KB_BATCH_EXPIRED);
                /* results arriving later do not change it */
                kb_bresult_t late = result(1 % n, n, S);
                if (kb_bits2_get(bs->bs_map, 1 % n) == KB_SLOT_ENDED)
                        cr_expect_eq(kb_bstate_apply(bs, &late, 1),
                                     KB_APPLY_DUPLICATE);
                cr_expect_eq(kb_bstate_expire_missing(bs, 99), 0);
                kb_bstate_destroy(bs);
        }
}

/* ---- encodings ---- */

static kb_bstate_t *random_state(int64_t n) {
        kb_bstate_t *bs = kb_bstate_new("batch-x:1", n);
        for (int64_t i = 0; i < n; i++) {
                static const kb_item_status_t sts[] = {N, S, F, C, E};
                kb_item_status_t st = sts[rng() % 5];
                if (st == N)
                        continue;
                kb_bresult_t br = result(i, n, st);
                kb_bstate_apply(bs, &br, 1);
        }
        return bs;
}

static void expect_same(const kb_bstate_t *a, const kb_bstate_t *b) {
        cr_expect_str_eq(a->bs_batch_id, b->bs_batch_id);
        cr_expect_eq(a->bs_items_total, b->bs_items_total);
        cr_expect_eq(memcmp(a->bs_map, b->bs_map,
                            KB_BITS2_BYTES(a->bs_items_total)),
                     0);
        cr_expect_eq(a->bs_done, b->bs_done);
        cr_expect_eq(a->bs_succeeded, b->bs_succeeded);
        cr_expect_eq(a->bs_failed, b->bs_failed);
        cr_expect_eq(a->bs_cancelled, b->bs_cancelled);
        cr_expect_eq(a->bs_expired, b->bs_expired);
        cr_expect_eq(a->bs_invalid, b->bs_invalid);
        cr_expect_eq(a->bs_input_tokens, b->bs_input_tokens);
        cr_expect_eq(a->bs_output_tokens, b->bs_output_tokens);
        cr_expect_eq(a->bs_total_tokens, b->bs_total_tokens);
        cr_expect_eq(a->bs_first_result_at, b->bs_first_result_at);
        cr_expect_eq(a->bs_last_result_at, b->bs_last_result_at);
        cr_expect_eq(a->bs_completed_at, b->bs_completed_at);
        cr_expect_eq(a->bs_updated_at, b->bs_updated_at);
        cr_expect_eq(a->bs_deadline, b->bs_deadline);
        cr_expect_eq(a->bs_revision, b->bs_revision);
        cr_expect_eq(!a->bs_callback_url, !b->bs_callback_url);
        if (a->bs_callback_url && b->bs_callback_url)
                cr_expect_str_eq(a->bs_callback_url, b->bs_callback_url);
        cr_expect_eq(!a->bs_metadata, !b->bs_metadata);
        if (a->bs_metadata && b->bs_metadata)
                cr_expect(json_equal(a->bs_metadata, b->bs_metadata));
        cr_expect_eq(a->bs_extra_cnt, b->bs_extra_cnt);
        for (size_t k = 0; k < a->bs_extra_cnt && k < b->bs_extra_cnt; k++)
                cr_expect_eq(a->bs_extra[k], b->bs_extra[k]);
}

Test(bstate, state_record_round_trip) {
        static const int64_t sizes[] = {1, 2, 3, 4, 5, 6, 7, 8, 31, 1000,
                                        KB_ITEMS_TOTAL_MAX};
        for (size_t s = 0; s < NELEM(sizes); s++) {
                kb_bstate_t *a = random_state(sizes[s]), *b;
                size_t len;
                char *rec, errstr[256];
                kb_bresult_t br = result(sizes[s] + 3, sizes[s] + 7, S);
                kb_bstate_apply(a, &br, 1); /* an extra */
                a->bs_revision = 2;
                a->bs_deadline = 123456;
                a->bs_updated_at = 555;
                a->bs_callback_url = strdup("https://h.example/cb?x=1");
                a->bs_metadata = json_pack("{s:s,s:s}", "k", "v", "ü", "ß");
                rec = kb_bstate_encode(a, &len);
                cr_assert_not_null(rec);
                cr_expect_eq(strlen(rec), len);
                b = kb_bstate_decode(rec, len, errstr, sizeof(errstr));
                cr_assert_not_null(b, "size %lld: %s", (long long)sizes[s],
                                   errstr);
                expect_same(a, b);
                if (sizes[s] == KB_ITEMS_TOTAL_MAX)
                        /* the map dominates: 250,000 bytes as base64 */
                        cr_expect(len > 333336 && len < 334500, "len %zu",
                                  len);
                free(rec);
                kb_bstate_destroy(a);
                kb_bstate_destroy(b);
        }
}

/* kb_bstate_json (what `kbatch status --json` prints): exactly these
 * fields, nulls for unset times, and the state record is it plus v,
 * extra_indexes and statuses. */
Test(bstate, json_view_fields_and_record) {
        static const char *const want[] = {
            "batch_id",        "status",          "items_total",
            "items_done",      "items_succeeded", "items_failed",
            "items_cancelled", "items_expired",   "items_invalid",
            "usage",           "first_result_at", "last_result_at",
            "completed_at",    "updated_at",      "deadline",
            "revision",        "callback_url",    "metadata"};
        kb_bstate_t *bs = kb_bstate_new("b-json", 3);
        kb_bresult_t br = result(0, 3, S);
        json_t *o, *rec;
        const char *k;
        json_t *v;
        char *raw;
        size_t i, len;
        br.br_finished_at = 7000;
        br.br_has_usage = 1;
        br.br_input_tokens = 5;
        br.br_output_tokens = 2;
        br.br_total_tokens = 7;
        cr_assert_eq(kb_bstate_apply(bs, &br, 1), KB_APPLY_COUNTED);
        cr_assert((o = kb_bstate_json(bs)));
        cr_expect_eq(json_object_size(o), NELEM(want));
        for (i = 0; i < NELEM(want); i++)
                cr_expect(json_object_get(o, want[i]), "lacks %s", want[i]);
        cr_expect_str_eq(json_string_value(json_object_get(o, "status")),
                         "in_progress");
        cr_expect_eq(json_integer_value(json_object_get(o, "items_done")), 1);
        cr_expect_eq(json_integer_value(json_object_get(o, "items_succeeded")),
                     1);
        cr_expect_eq(json_integer_value(json_object_get(
                         json_object_get(o, "usage"), "total_tokens")),
                     7);
        cr_expect_eq(
            json_integer_value(json_object_get(o, "first_result_at")), 7000);
        cr_expect(json_is_null(json_object_get(o, "completed_at")));
        cr_expect(json_is_null(json_object_get(o, "deadline")));
        cr_expect(json_is_null(json_object_get(o, "callback_url")));
        cr_assert((raw = kb_bstate_encode(bs, &len)));
        cr_assert((rec = json_loadb(raw, len, 0, NULL)));
        cr_expect_eq(json_object_size(rec), NELEM(want) + 3);
        json_object_foreach(o, k, v)
                cr_expect(json_equal(v, json_object_get(rec, k)), "%s", k);
        cr_expect_eq(json_integer_value(json_object_get(rec, "v")), 1);
        cr_expect(json_is_array(json_object_get(rec, "extra_indexes")));
        cr_expect(json_is_string(json_object_get(rec, "statuses")));
        json_decref(rec);
        free(raw);
        json_decref(o);
        kb_bstate_destroy(bs);
}

Test(bstate, state_record_recounts_done_from_map) {
        kb_bstate_t *a = random_state(50), *b;
        size_t len;
        char errstr[256], *rec;
        int64_t done = a->bs_done;
        a->bs_done = 3; /* the record's own count is not trusted */
        rec = kb_bstate_encode(a, &len);
        b = kb_bstate_decode(rec, len, errstr, sizeof(errstr));
        cr_assert_not_null(b, "%s", errstr);
        cr_expect_eq(b->bs_done, done);
        free(rec);
        kb_bstate_destroy(a);
        kb_bstate_destroy(b);
}

Test(bstate, state_record_rejects_malformed) {
        static const char *bad[] = {
            "",
            "not json",
            "[1,2]",
            "{}",
            "{\"v\":2,\"batch_id\":\"b\",\"items_total\":1,\"statuses\":\"AA==\"}",
            "{\"v\":1,\"batch_id\":\"b b\",\"items_total\":1,\"statuses\":\"AA==\"}",
            "{\"v\":1,\"batch_id\":\"b\",\"items_total\":0,\"statuses\":\"\"}",
            "{\"v\":1,\"batch_id\":\"b\",\"items_total\":1000001,\"statuses\":\"\"}",
            "{\"v\":1,\"batch_id\":\"b\",\"items_total\":1}",
            "{\"v\":1,\"batch_id\":\"b\",\"items_total\":1,\"statuses\":\"AAA=\"}",
            "{\"v\":1,\"batch_id\":\"b\",\"items_total\":9,\"statuses\":\"AA==\"}",
            "{\"v\":1,\"batch_id\":\"b\",\"items_total\":1,\"statuses\":\"A!==\"}",
            "{\"v\":1,\"batch_id\":\"b\",\"items_total\":1,\"statuses\":\"AA=A\"}",
            "{\"v\":1,\"batch_id\":\"b\",\"items_total\":1,\"statuses\":\"AA==\","
            "\"items_failed\":-1}",
            "{\"v\":1,\"batch_id\":\"b\",\"items_total\":1,\"statuses\":\"AA==\","
            "\"revision\":\"x\"}",
            "{\"v\":1,\"batch_id\":\"b\",\"items_total\":1,\"statuses\":\"AA==\","
            "\"usage\":{\"input_tokens\":-4}}",
            "{\"v\":1,\"batch_id\":\"b\",\"items_total\":1,\"statuses\":\"AA==\","
            "\"extra_indexes\":[\"x\"]}",
        };
        for (size_t i = 0; i < NELEM(bad); i++) {
                char errstr[256] = "";
                kb_bstate_t *bs =
                    kb_bstate_decode(bad[i], strlen(bad[i]), errstr,
                                     sizeof(errstr));
                cr_expect_null(bs, "case %zu accepted: %s", i, bad[i]);
                cr_expect(errstr[0], "case %zu: no reason", i);
                kb_bstate_destroy(bs);
        }
        /* Random bytes never crash the decoder. */
        for (int round = 0; round < 2000; round++) {
                char buf[64], errstr[128];
                size_t n = (size_t)(rng() % sizeof(buf));
                for (size_t k = 0; k < n; k++)
                        buf[k] = (char)(rng() & 0xff);
                kb_bstate_destroy(
                    kb_bstate_decode(buf, n, errstr, sizeof(errstr)));
        }
}

Test(bstate, state_record_clears_bits_past_the_end) {
        /* total 1: "/w==" is 0xff, slots 1..3 set: ignored, slot 0 = 3 */
        const char *rec = "{\"v\":1,\"batch_id\":\"b\",\"items_total\":1,"
                          "\"statuses\":\"/w==\",\"items_expired\":1}";
        char errstr[128];
        kb_bstate_t *bs = kb_bstate_decode(rec, strlen(rec), errstr,
                                           sizeof(errstr));
        cr_assert_not_null(bs, "%s", errstr);
        cr_expect_eq(bs->bs_map[0], 0x03);
        cr_expect_eq(bs->bs_done, 1);
        cr_expect_eq(kb_bstate_status(bs), KB_BATCH_EXPIRED);
        kb_bstate_destroy(bs);
}

Test(bstate, event_fields) {
        kb_bstate_t *bs = kb_bstate_new("b-7", 2);
        kb_bresult_t br = result(0, 2, S);
        json_t *md = json_pack("{s:s}", "team", "search");
        br.br_metadata = md;
        br.br_callback_url = "https://cb.example/x";
        kb_bstate_apply(bs, &br, 1);
        br = result(1, 2, F);
        kb_bstate_apply(bs, &br, 1);
        bs->bs_revision = 1;
        size_t len;
        char *ev = kb_bstate_event_encode(bs, &len);
        json_error_t jerr;
        json_t *o = json_loads(ev, 0, &jerr);
        cr_assert_not_null(o);
        cr_expect_str_eq(json_string_value(json_object_get(o, "event_id")),
                         "b-7:1");
        cr_expect_str_eq(json_string_value(json_object_get(o, "type")),
                         "batch.completed");
        cr_expect_eq(json_integer_value(json_object_get(o, "revision")), 1);
        cr_expect_str_eq(json_string_value(json_object_get(o, "batch_id")),
                         "b-7");
        cr_expect_str_eq(json_string_value(json_object_get(o, "status")),
                         "partial_succeeded");
        cr_expect_eq(json_integer_value(json_object_get(o, "items_total")), 2);
        cr_expect_eq(json_integer_value(json_object_get(o, "items_succeeded")),
                     1);
        cr_expect_eq(json_integer_value(json_object_get(o, "items_failed")), 1);
        cr_expect_eq(json_integer_value(json_object_get(o, "items_cancelled")),
                     0);
        cr_expect_eq(json_integer_value(json_object_get(o, "items_expired")), 0);
        cr_expect_eq(json_integer_value(json_object_get(
                         json_object_get(o, "usage"), "total_tokens")),
                     30);
        cr_expect_eq(json_integer_value(json_object_get(o, "first_result_at")),
                     1000);
        cr_expect_eq(json_integer_value(json_object_get(o, "completed_at")),
                     1001);
        cr_expect_str_eq(json_string_value(json_object_get(o, "callback_url")),
                         "https://cb.example/x");
        cr_expect(json_equal(json_object_get(o, "metadata"), md));
        cr_expect_null(json_object_get(o, "statuses"));
        cr_expect_null(json_object_get(o, "updated_at"));
        json_decref(o);
        free(ev);
        bs->bs_revision = 2;
        ev = kb_bstate_event_encode(bs, &len);
        o = json_loads(ev, 0, &jerr);
        cr_expect_str_eq(json_string_value(json_object_get(o, "type")),
                         "batch.updated");
        cr_expect_str_eq(json_string_value(json_object_get(o, "event_id")),
                         "b-7:2");
        cr_expect_not_null(json_object_get(o, "updated_at"));
        json_decref(o);
        free(ev);
        json_decref(md);
        kb_bstate_destroy(bs);
}

/* ---- result decoding: what the items pipeline writes ---- */

Test(bstate, decodes_codec_results) {
        kb_item_t item;
        kb_result_t res;
        kb_bresult_t br;
        char errstr[128];
        memset(&item, 0, sizeof(item));
        memset(&res, 0, sizeof(res));
        item.batch_id = "b-9";
        item.item_id = "req-3";
        item.item_index = 3;
        item.items_total = 10;
        item.deadline = 4242;
        item.callback_url = "https://x.example/cb";
        item.metadata = json_pack("{s:s}", "a", "b");
        res.status = KB_STATUS_CANCELLED;
        res.error_code = "cancelled";
        res.error_message = "batch cancelled";
        res.has_usage = 1;
        res.input_tokens = 3;
        res.output_tokens = 4;
        res.total_tokens = 7;
        res.finished_at = 999;
        res.latency_ms = -1;
        size_t len;
        char *s = kb_codec_result_encode(&item, &res, &len);
        json_t *o = kb_bresult_decode(s, len, &br, errstr, sizeof(errstr));
        cr_assert_not_null(o, "%s", errstr);
        cr_expect_str_eq(br.br_batch_id, "b-9");
        cr_expect_eq(br.br_item_index, 3);
        cr_expect_eq(br.br_items_total, 10);
        cr_expect_eq(br.br_status, KB_STATUS_CANCELLED);
        cr_expect_str_eq(br.br_error_code, "cancelled");
        cr_expect(br.br_has_usage);
        cr_expect_eq(br.br_total_tokens, 7);
        cr_expect_eq(br.br_finished_at, 999);
        cr_expect_eq(br.br_deadline, 4242);
        cr_expect_str_eq(br.br_callback_url, "https://x.example/cb");
        cr_expect(json_equal(br.br_metadata, item.metadata));
        json_decref(o);
        free(s);
        json_decref(item.metadata);

        static const char *partial[] = {"{}", "{\"batch_id\":\"a b\"}",
                                        "{\"status\":\"weird\",\"usage\":1}"};
        for (size_t i = 0; i < NELEM(partial); i++) {
                o = kb_bresult_decode(partial[i], strlen(partial[i]), &br,
                                      errstr, sizeof(errstr));
                cr_assert_not_null(o);
                cr_expect_null(br.br_batch_id);
                cr_expect_eq(br.br_item_index, -1);
                cr_expect_eq(br.br_status, KB_STATUS_NONE);
                cr_expect(!br.br_has_usage);
                json_decref(o);
        }
        cr_expect_null(kb_bresult_decode("[]", 2, &br, errstr, sizeof(errstr)));
        cr_expect_null(kb_bresult_decode("{", 1, &br, errstr, sizeof(errstr)));
        cr_expect_null(kb_bresult_decode(NULL, 0, &br, errstr, sizeof(errstr)));
}

/* Issue 15: a result carrying a 900,000-character callback_url (or
 * metadata over SPEC §2's bounds) made the batch-state record larger than
 * a Kafka message: every transaction of the partition aborted, forever.
 * Only bounded fields enter the state, so the largest record possible (a
 * 1,000,000-item batch with every bounded field at its maximum) stays far
 * below the smallest kafka.message_max_bytes (1 MiB). */
Test(bstate, state_record_is_bounded) {
        kb_bstate_t *bs = kb_bstate_new("b-huge", KB_ITEMS_TOTAL_MAX);
        kb_bresult_t br = result(0, KB_ITEMS_TOTAL_MAX, S);
        char *big = malloc(900001), *v, *url, *enc;
        json_t *md = json_object();
        size_t len;
        memset(big, 'a', 900000);
        big[900000] = '\0';
        br.br_callback_url = big;
        json_object_set_new(md, "k", json_string(big));
        br.br_metadata = md;
        cr_assert_eq(kb_bstate_apply(bs, &br, 1), KB_APPLY_COUNTED);
        cr_expect_null(bs->bs_callback_url);
        cr_expect_null(bs->bs_metadata);
        /* At the bounds: taken. Multi-byte characters count as one. */
        url = malloc(KB_CALLBACK_URL_MAX * 4 + 1);
        for (int i = 0; i < KB_CALLBACK_URL_MAX; i++)
                memcpy(url + 4 * i, "\xf0\x9f\x98\x80", 4);
        url[KB_CALLBACK_URL_MAX * 4] = '\0';
        json_decref(md);
        md = json_object();
        v = malloc(KB_METADATA_VAL_MAX * 4 + 1);
        for (int i = 0; i < KB_METADATA_VAL_MAX; i++)
                memcpy(v + 4 * i, "\xf0\x9f\x98\x80", 4);
        v[KB_METADATA_VAL_MAX * 4] = '\0';
        for (int i = 0; i < KB_METADATA_MAX; i++) {
                char k[KB_METADATA_KEY_MAX + 1];
                memset(k, 'k', KB_METADATA_KEY_MAX);
                snprintf(k + KB_METADATA_KEY_MAX - 3, 4, "%03d", i);
                json_object_set_new(md, k, json_string(v));
        }
        br = result(1, KB_ITEMS_TOTAL_MAX, F);
        br.br_callback_url = url;
        br.br_metadata = md;
        kb_bstate_destroy(bs);
        bs = kb_bstate_new("b-huge", KB_ITEMS_TOTAL_MAX);
        cr_assert_eq(kb_bstate_apply(bs, &br, 1), KB_APPLY_COUNTED);
        cr_expect_str_eq(bs->bs_callback_url, url);
        cr_expect(json_equal(bs->bs_metadata, md));
        /* Every item terminal with a status of its own: the densest map. */
        for (int64_t i = 2; i < KB_ITEMS_TOTAL_MAX; i++) {
                br = result(i, KB_ITEMS_TOTAL_MAX, i % 3 ? S : F);
                kb_bstate_apply(bs, &br, 1);
        }
        enc = kb_bstate_encode(bs, &len);
        cr_assert(enc);
        cr_expect_lt(len, 524288, "state record is %zu bytes", len);
        free(enc);
        kb_bstate_destroy(bs);
        json_decref(md);
        free(big);
        free(url);
        free(v);
}
