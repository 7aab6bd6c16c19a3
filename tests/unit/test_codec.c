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
                    "metadata"};
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

/* The tree-less encoder writes what json_dumps of the jansson tree
 * (kb_codec_result_json) prints, byte for byte, for items and results of
 * every shape; with the output as checked text (kb_codec_output_scan of a
 * pretty-printed response) it writes the same bytes as with the output as
 * a tree. */
Test(codec, result_encode_like_jansson) {
        static const char *items[] = {
            "{" OKITEM "}",
            "{" OKITEM ",\"operation\":\"embeddings\",\"deadline\":5,"
            "\"callback_url\":\"https://h/\\\"q\\\"\",\"metadata\":{\"k\":"
            "\"v\\n\\u0001\",\"t\\u00e9\":\"\xe2\x82\xac\",\"z\":\"\"}}",
            /* invalid: partly filled */
            "{\"batch_id\":\"b\",\"item_index\":0,\"items_total\":1}",
        };
        static const char *outputs[] = {
            NULL,
            "{\n  \"id\": \"c1\",\n  \"choices\": [ {\"t\": \"a b\\u00e9\\/\"} ],"
            "\n  \"n\": [1.5, -0, 1e2, true, null],\n  \"usage\": {"
            "\"prompt_tokens\": 3, \"completion_tokens\": 4}\n}\n",
            "[]",
        };
        size_t i, j, k;
        for (i = 0; i < sizeof(items) / sizeof(*items); i++)
                for (j = 0; j < sizeof(outputs) / sizeof(*outputs); j++)
                        for (k = 0; k < 2; k++) {
                                kb_item_t it;
                                kb_result_t r;
                                char err[256], *got, *want, *text = NULL;
                                size_t glen, tlen;
                                json_t *tree = NULL, *o;
                                kb_codec_item_decode(items[i], strlen(items[i]),
                                                     0, &it, err, sizeof(err));
                                memset(&r, 0, sizeof(r));
                                r.status = k ? KB_STATUS_FAILED
                                             : KB_STATUS_SUCCEEDED;
                                r.http_status = k ? 0 : 200;
                                r.error_code = k ? "client_error" : NULL;
                                r.error_message = k ? "HTTP 400: \"bad\"\t" : NULL;
                                r.attempts = (int)k + 1;
                                r.started_at = k ? 0 : 1700000000000LL;
                                r.finished_at = 1700000000123LL;
                                r.latency_ms = k ? -1 : 123;
                                r.worker = k ? NULL : "w-1";
                                if (outputs[j]) {
                                        tree = json_loads(outputs[j], 0, NULL);
                                        cr_assert(tree);
                                        kb_codec_usage_from_output(tree, &r);
                                }
                                r.output = tree;
                                o = kb_codec_result_json(&it, &r);
                                want = json_dumps(o, JSON_COMPACT);
                                json_decref(o);
                                got = kb_codec_result_encode(&it, &r, &glen);
                                cr_assert_str_eq(got, want, "item %zu output %zu",
                                                 i, j);
                                cr_assert_eq(glen, strlen(want));
                                free(got);
                                if (outputs[j]) {
                                        r.output = NULL;
                                        tlen = strlen(outputs[j]);
                                        text = strdup(outputs[j]);
                                        cr_assert(kb_codec_output_scan(
                                            text, &tlen, &r, NULL));
                                        got = kb_codec_result_encode(&it, &r,
                                                                     NULL);
                                        /* jansson prints \u00e9 as é and \/
                                         * as /: the text keeps them */
                                        o = json_loads(got, 0, NULL);
                                        cr_assert(o, "%s", got);
                                        {
                                                json_t *w = json_loads(
                                                    want, 0, NULL);
                                                cr_assert(json_equal(o, w));
                                                json_decref(w);
                                        }
                                        json_decref(o);
                                        free(got);
                                        free(text);
                                }
                                json_decref(tree);
                                free(want);
                                kb_item_clear(&it);
                        }
}

/* A message cut in the middle of a UTF-8 character (the "HTTP 500: <body>"
 * of a failed call is cut at 900 bytes) gets U+FFFD; jansson refused the
 * string and the result had no "message" at all. */
Test(codec, result_encode_cut_utf8_message) {
        const char *j = "{" OKITEM "}";
        kb_item_t it;
        kb_result_t r;
        char err[256], *s;
        json_t *o;
        kb_codec_item_decode(j, strlen(j), 0, &it, err, sizeof(err));
        memset(&r, 0, sizeof(r));
        r.status = KB_STATUS_FAILED;
        r.error_code = "server_error";
        r.error_message = "HTTP 500: caf\xc3";
        s = kb_codec_result_encode(&it, &r, NULL);
        o = json_loads(s, 0, NULL);
        cr_assert(o, "%s", s);
        cr_expect_str_eq(json_string_value(json_object_get(
                             json_object_get(o, "error"), "message")),
                         "HTTP 500: caf\xef\xbf\xbd");
        json_decref(o);
        free(s);
        kb_item_clear(&it);
}

/* A response that is not JSON is left as it was (its text goes into the
 * error message). */
Test(codec, output_scan_invalid_untouched) {
        char buf[] = "{ \"a\": 1, }";
        size_t len = strlen(buf);
        kb_result_t r;
        memset(&r, 0, sizeof(r));
        cr_assert_eq(kb_codec_output_scan(buf, &len, &r, NULL), 0);
        cr_assert_str_eq(buf, "{ \"a\": 1, }");
        cr_assert_eq(len, strlen(buf));
        cr_assert_eq(r.output_text, NULL);
}
