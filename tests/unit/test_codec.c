/* BatchItem decoding/validation and ItemResult encoding (SPEC §2, §4). */
#include <criterion/criterion.h>
#include <string.h>

#include "codec.h"

#define OKITEM                                                                 \
        "\"batch_id\":\"b-1\",\"item_id\":\"x\",\"item_index\":0,"             \
        "\"items_total\":2,\"model\":\"m\",\"input\":{\"a\":1}"

static const struct {
        const char *json;
        kb_codec_res_t want;
        const char *err; /* substring of the reason */
} cases[] = {
    {"{" OKITEM "}", KB_CODEC_OK, ""},
    {"{" OKITEM ",\"operation\":\"embeddings\",\"deadline\":1,"
     "\"metadata\":{\"k\":\"v\"},\"callback_url\":\"https://x\"}",
     KB_CODEC_OK, ""},
    {"", KB_CODEC_UNDECODABLE, "empty"},
    {"not json", KB_CODEC_UNDECODABLE, "not valid JSON"},
    {"[1,2]", KB_CODEC_UNDECODABLE, "not a JSON object"},
    {"{\"item_id\":\"x\",\"item_index\":0,\"items_total\":1}",
     KB_CODEC_UNADDRESSABLE, "'batch_id' is missing"},
    {"{\"batch_id\":\"b/1\",\"item_index\":0,\"items_total\":1}",
     KB_CODEC_UNADDRESSABLE, "'batch_id' must be"},
    {"{\"batch_id\":\"b\",\"item_index\":\"0\",\"items_total\":1}",
     KB_CODEC_UNADDRESSABLE, "'item_index' is not an integer"},
    {"{\"batch_id\":\"b\",\"item_index\":0}", KB_CODEC_UNADDRESSABLE,
     "'items_total' is missing"},
    {"{\"batch_id\":\"b\",\"item_id\":\"x\",\"item_index\":0,\"items_total\":"
     "1,\"model\":\"m\",\"input\":\"hi\"}",
     KB_CODEC_INVALID, "'input' is not a JSON object"},
    {"{\"batch_id\":\"b\",\"item_id\":\"x\",\"item_index\":0,\"items_total\":"
     "1,\"model\":\"m\"}",
     KB_CODEC_INVALID, "'input' is missing"},
    {"{\"batch_id\":\"b\",\"item_id\":\"x\",\"item_index\":1,\"items_total\":"
     "1,\"model\":\"m\",\"input\":{}}",
     KB_CODEC_INVALID, "'item_index' must be between"},
    {"{\"batch_id\":\"b\",\"item_id\":\"x\",\"item_index\":-1,\"items_total\":"
     "1,\"model\":\"m\",\"input\":{}}",
     KB_CODEC_INVALID, "'item_index' must be between"},
    {"{\"batch_id\":\"b\",\"item_id\":\"x\",\"item_index\":0,\"items_total\":"
     "1000001,\"model\":\"m\",\"input\":{}}",
     KB_CODEC_INVALID, "'items_total' must be between"},
    {"{\"batch_id\":\"b\",\"item_index\":0,\"items_total\":1,\"model\":\"m\","
     "\"input\":{}}",
     KB_CODEC_INVALID, "'item_id' is missing"},
    {"{\"batch_id\":\"b\",\"item_id\":\"\",\"item_index\":0,\"items_total\":1,"
     "\"model\":\"m\",\"input\":{}}",
     KB_CODEC_INVALID, "'item_id' must be"},
    {"{\"batch_id\":\"b\",\"item_id\":\"x\",\"item_index\":0,\"items_total\":"
     "1,\"input\":{}}",
     KB_CODEC_INVALID, "'model' is missing"},
    {"{\"batch_id\":\"b\",\"item_id\":\"x\",\"item_index\":0,\"items_total\":"
     "1,\"model\":7,\"input\":{}}",
     KB_CODEC_INVALID, "'model' is not a string"},
    {"{" OKITEM ",\"metadata\":{\"k\":1}}", KB_CODEC_INVALID,
     "'metadata.k' is not a string"},
    {"{" OKITEM ",\"metadata\":[]}", KB_CODEC_INVALID,
     "'metadata' is not an object"},
    {"{" OKITEM ",\"deadline\":\"tomorrow\"}", KB_CODEC_INVALID,
     "'deadline' is not an integer"},
    {"{" OKITEM ",\"item_index\":1}", KB_CODEC_UNDECODABLE,
     "duplicate"}, /* duplicate keys are refused */
    {"{\"batch_id\":\"b\",\"item_id\":\"x\",\"item_index\":"
     "99999999999999999999999,\"items_total\":1,\"model\":\"m\",\"input\":{}}",
     KB_CODEC_UNDECODABLE, "not valid JSON"},
};

Test(codec, decode_table) {
        size_t i;
        for (i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
                kb_item_t it;
                char err[512];
                kb_codec_res_t r = kb_codec_item_decode(
                    cases[i].json, strlen(cases[i].json), 1 << 20, &it, err,
                    sizeof(err));
                cr_expect_eq(r, cases[i].want, "case %zu (%s): got %d (%s)",
                             i, cases[i].json, r, err);
                if (r != KB_CODEC_OK)
                        cr_expect(strstr(err, cases[i].err) != NULL,
                                  "case %zu: reason '%s' lacks '%s'", i, err,
                                  cases[i].err);
                kb_item_clear(&it);
        }
}

Test(codec, too_large_is_invalid_but_addressable) {
        const char *j = "{" OKITEM "}";
        kb_item_t it;
        char err[256];
        cr_assert_eq(kb_codec_item_decode(j, strlen(j), 20, &it, err,
                                          sizeof(err)),
                     KB_CODEC_INVALID);
        cr_expect(strstr(err, "over the limit of 20") != NULL, "%s", err);
        cr_expect_str_eq(it.batch_id, "b-1");
        cr_expect_eq(it.item_index, 0);
        kb_item_clear(&it);
}

Test(codec, batch_id_rules) {
        char long_id[200];
        memset(long_id, 'a', sizeof(long_id));
        long_id[128] = '\0';
        cr_expect(kb_codec_batch_id_valid(long_id));
        long_id[128] = 'a';
        long_id[129] = '\0';
        cr_expect(!kb_codec_batch_id_valid(long_id));
        cr_expect(kb_codec_batch_id_valid("A-z_0.9:x"));
        cr_expect(!kb_codec_batch_id_valid(""));
        cr_expect(!kb_codec_batch_id_valid("a b"));
        cr_expect(!kb_codec_batch_id_valid(NULL));
}

Test(codec, usage_shapes) {
        static const struct {
                const char *body;
                int found;
                long long in, out, tot;
        } u[] = {
            {"{\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,"
             "\"total_tokens\":7}}",
             1, 3, 4, 7},
            {"{\"usage\":{\"input_tokens\":5,\"output_tokens\":6}}", 1, 5, 6,
             11},
            {"{\"usage\":{\"prompt_tokens\":8,\"total_tokens\":8}}", 1, 8, 0,
             8},
            {"{\"usage\":null}", 0, 0, 0, 0},
            {"{}", 0, 0, 0, 0},
        };
        size_t i;
        for (i = 0; i < sizeof(u) / sizeof(*u); i++) {
                json_t *b = json_loads(u[i].body, 0, NULL);
                kb_result_t r;
                memset(&r, 0, sizeof(r));
                cr_expect_eq(kb_codec_usage_from_output(b, &r), u[i].found,
                             "case %zu", i);
                cr_expect_eq(r.input_tokens, u[i].in, "case %zu", i);
                cr_expect_eq(r.output_tokens, u[i].out, "case %zu", i);
                cr_expect_eq(r.total_tokens, u[i].tot, "case %zu", i);
                json_decref(b);
        }
}

Test(codec, result_encode_fields) {
        const char *j = "{" OKITEM ",\"metadata\":{\"team\":\"a\"},"
                        "\"deadline\":1700000000000}";
        kb_item_t it;
        kb_result_t r;
        char err[256];
        json_t *out = json_loads("{\"id\":\"c1\"}", 0, NULL), *o, *e;
        char *s;
        cr_assert_eq(kb_codec_item_decode(j, strlen(j), 0, &it, err,
                                          sizeof(err)),
                     KB_CODEC_OK);
        memset(&r, 0, sizeof(r));
        r.status = KB_STATUS_FAILED;
        r.http_status = 400;
        r.output = out;
        r.error_code = "client_error";
        r.error_message = "HTTP 400";
        r.attempts = 1;
        r.started_at = 10;
        r.finished_at = 15;
        r.latency_ms = 5;
        r.worker = "w1";
        s = kb_codec_result_encode(&it, &r, NULL);
        o = json_loads(s, 0, NULL);
        cr_assert(o);
        cr_expect_str_eq(json_string_value(json_object_get(o, "batch_id")),
                         "b-1");
        cr_expect_str_eq(json_string_value(json_object_get(o, "status")),
                         "failed");
        cr_expect_eq(json_integer_value(json_object_get(o, "http_status")),
                     400);
        e = json_object_get(o, "error");
        cr_expect_str_eq(json_string_value(json_object_get(e, "code")),
                         "client_error");
        cr_expect(json_is_null(json_object_get(o, "usage")));
        cr_expect(json_is_null(json_object_get(o, "operation")));
        cr_expect_eq(json_integer_value(json_object_get(o, "deadline")),
                     1700000000000LL);
        cr_expect_str_eq(json_string_value(json_object_get(
                             json_object_get(o, "metadata"), "team")),
                         "a");
        cr_expect_str_eq(json_string_value(json_object_get(
                             json_object_get(o, "output"), "id")),
                         "c1");
        cr_expect_str_eq(json_string_value(json_object_get(o, "worker")), "w1");
        {
                static const char *fields[] = {
                    "batch_id", "item_id", "item_index", "items_total",
                    "model", "operation", "status", "http_status", "output",
                    "error", "attempts", "usage", "started_at", "finished_at",
                    "latency_ms", "worker", "callback_url", "deadline",
                    "metadata", "route", "job"};
                size_t i;
                for (i = 0; i < sizeof(fields) / sizeof(*fields); i++)
                        cr_expect(json_object_get(o, fields[i]) != NULL,
                                  "missing %s", fields[i]);
                cr_expect_eq(json_object_size(o),
                             sizeof(fields) / sizeof(*fields));
        }
        json_decref(o);
        json_decref(out);
        free(s);
        kb_item_clear(&it);
}

/* Issue 15: every string an item carries into its result, the batch state
 * and the event is bounded; one over its bound makes the item invalid and
 * is dropped, so it never reaches them (a huge callback_url made the
 * batch-state record too large for a Kafka message). */
Test(codec, strings_are_bounded_and_dropped_over_the_bound) {
        static const struct {
                const char *field;
                size_t max;
        } f[] = {{"model", KB_MODEL_MAX},
                 {"operation", KB_OPERATION_MAX},
                 {"callback_url", KB_CALLBACK_URL_MAX},
                 {"item_id", KB_ITEM_ID_MAX}};
        for (size_t i = 0; i < sizeof(f) / sizeof(*f); i++) {
                for (int over = 0; over <= 1; over++) {
                        size_t n = f[i].max + (size_t)over;
                        char *v = malloc(n * 2 + 1), *buf;
                        kb_item_t it;
                        char err[256];
                        kb_codec_res_t r;
                        for (size_t k = 0; k < n; k++)
                                memcpy(v + 2 * k, "\xc3\xa9", 2); /* é */
                        v[2 * n] = '\0';
                        json_t *o = json_pack(
                            "{s:s,s:s,s:i,s:i,s:s,s:{}}", "batch_id", "b",
                            "item_id", "x", "item_index", 0, "items_total", 1,
                            "model", "m", "input");
                        json_object_set_new(o, f[i].field, json_string(v));
                        buf = json_dumps(o, JSON_COMPACT);
                        json_decref(o);
                        cr_assert(buf);
                        r = kb_codec_item_decode(buf, strlen(buf), 0, &it, err,
                                                 sizeof(err));
                        const char *got =
                            !strcmp(f[i].field, "model")       ? it.model
                            : !strcmp(f[i].field, "operation") ? it.operation
                            : !strcmp(f[i].field, "item_id")   ? it.item_id
                                                               : it.callback_url;
                        if (over) {
                                cr_expect_eq(r, KB_CODEC_INVALID, "%s",
                                             f[i].field);
                                cr_expect(strstr(err, f[i].field), "%s", err);
                                cr_expect_null(got, "%s kept", f[i].field);
                        } else {
                                cr_expect_eq(r, KB_CODEC_OK, "%s: %s",
                                             f[i].field, err);
                                cr_expect_str_eq(got, v);
                        }
                        kb_item_clear(&it);
                        free(buf);
                        free(v);
                }
        }
}
