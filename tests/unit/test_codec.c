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
                                /* the route and an async job (SPEC §12),
                                 * with strings to escape */
                                r.route = k ? "fallback \"b\"" : NULL;
                                r.job_id = k ? "job-\u00e9\n1" : NULL;
                                r.job_polls = 3;
                                r.job_wall_ms = 4000000000LL;
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

/* ---- the tree-less item decoding ------------------------------------------
 * kb_codec_item_decode reads the top level from the text and leaves the
 * input as text; the reference is what it did before,
 * kb_codec_item_decode_tree: the whole value through json_loadb
 * (JSON_REJECT_DUPLICATES) and kb_codec_item_from_json, the body json_dumps
 * of the input with "model" added. */

static int str_same(const char *a, const char *b) {
        return (!a && !b) || (a && b && !strcmp(a, b));
}

static void decode_against_ref(const char *s, size_t len, const char *what) {
        kb_item_t a, b;
        char ea[512], eb[512];
        kb_codec_res_t ra = kb_codec_item_decode(s, len, 0, &a, ea, sizeof(ea));
        kb_codec_res_t rb =
            kb_codec_item_decode_tree(s, len, 0, &b, eb, sizeof(eb));
        cr_assert_eq(ra, rb, "%s: %d vs %d: %.*s", what, ra, rb, (int)len, s);
        cr_assert_str_eq(ea, eb, "%s", what);
        if (ra != KB_CODEC_UNDECODABLE) {
                cr_assert(str_same(a.batch_id, b.batch_id), "%s", what);
                cr_assert(str_same(a.item_id, b.item_id), "%s", what);
                cr_assert(str_same(a.model, b.model), "%s", what);
                cr_assert(str_same(a.operation, b.operation), "%s", what);
                cr_assert(str_same(a.callback_url, b.callback_url), "%s", what);
                cr_assert_eq(a.item_index, b.item_index, "%s", what);
                cr_assert_eq(a.items_total, b.items_total, "%s", what);
                cr_assert_eq(a.deadline, b.deadline, "%s", what);
                cr_assert_eq(a.submitted_at, b.submitted_at, "%s", what);
                cr_assert((!a.metadata && !b.metadata) ||
                              json_equal(a.metadata, b.metadata),
                          "%s", what);
                cr_assert_eq(!!(a.input || a.input_text), !!b.input, "%s", what);
        }
        if (ra == KB_CODEC_OK) {
                int64_t ca, cb;
                char *ba = kb_codec_request_body(&a, &ca),
                     *bb = kb_codec_request_body(&b, &cb);
                json_t *ja = json_loads(ba, 0, NULL), *jb = json_loads(bb, 0, NULL);
                cr_assert(ja && json_equal(ja, jb), "%s: %s vs %s", what, ba, bb);
                cr_assert_eq(ca, cb, "%s: cap", what);
                json_decref(ja);
                json_decref(jb);
                free(ba);
                free(bb);
        }
        kb_item_clear(&a);
        kb_item_clear(&b);
}

static const char *fast_items[] = {
    "{" OKITEM "}",
    " {" OKITEM ",\"operation\":\"embeddings\",\"deadline\":1,\"submitted_at\":"
    "2,\"metadata\":{\"k\":\"v\"},\"callback_url\":\"https://x\"} ",
    "{\"batch_id\":\"b-1\",\"item_id\":\"x\\u00e9\",\"item_index\":0,"
    "\"items_total\":2,\"model\":\"m\\/1\",\"input\":{ \"model\" : \"own\" ,"
    " \"max_tokens\": 5, \"max_output_tokens\": 7 }}",
    "{\"batch_id\":\"b-1\",\"item_id\":\"x\",\"item_index\":0,\"items_total\":"
    "2,\"model\":\"m\",\"input\":{}}",
    "{\"batch_id\":\"b-1\",\"item_id\":\"x\",\"item_index\":0,\"items_total\":"
    "2,\"model\":\"m\",\"input\":{\"max_tokens\":1.5,\"max_completion_tokens\":"
    "3,\"m\\u006fdel\":\"esc\"}}",
    "{" OKITEM ",\"input\":{\"b\":1}}", /* a duplicate key */
    "{" OKITEM ",\"metadata\":{\"k\":\"v\",\"k\":\"w\"}}",
    "{\"batch_id\":\"b-1\",\"item_id\":\"x\",\"item_index\":0,\"items_total\":"
    "2,\"model\":\"m\",\"input\":{\"a\":{\"a\":1},\"b\":{\"a\":2}}}",
    "{\"batch_id\":\"b-1\",\"item_id\":\"x\",\"item_index\":0,\"items_total\":"
    "2,\"model\":\"m\",\"input\":{\"a\":{\"x\":1,\"x\":2}}}",
    "{\"b\\u0061tch_id\":\"b-1\",\"item_id\":\"x\",\"item_index\":0,"
    "\"items_total\":2,\"model\":\"m\",\"input\":{}}",
    "{" OKITEM ",\"metadata\":[1]}",
    "{" OKITEM ",\"deadline\":1.0}",
    "{" OKITEM ",\"deadline\":-3}",
    "{" OKITEM ",\"operation\":7}",
    "{" OKITEM ",\"extra\":[true,false,null,-0,1e3]}",
    "{\"batch_id\":\"b-1\",\"item_id\":\"x\",\"item_index\":0,\"items_total\":"
    "2,\"model\":\"m\",\"input\":\"text\"}",
    "{\"batch_id\":\"b-1\",\"item_id\":\"x\",\"item_index\":0,\"items_total\":"
    "2,\"model\":\"m\",\"input\":null}",
    "{\"batch_id\":\"b-1\",\"item_id\":\"a\\nb\",\"item_index\":0,"
    "\"items_total\":2,\"model\":\"m\",\"input\":{}}",
    "{\"batch_id\":\"b/1\",\"item_index\":0,\"items_total\":1}",
    "{\"batch_id\":null,\"item_index\":0,\"items_total\":1}",
    "[" OKITEM "]", "{" OKITEM "", "", "{}",
};

Test(codec, fast_decode_like_jansson) {
        size_t i;
        char what[32];
        for (i = 0; i < sizeof(fast_items) / sizeof(*fast_items); i++) {
                snprintf(what, sizeof(what), "case %zu", i);
                decode_against_ref(fast_items[i], strlen(fast_items[i]), what);
        }
        for (i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
                snprintf(what, sizeof(what), "table %zu", i);
                decode_against_ref(cases[i].json, strlen(cases[i].json), what);
        }
}

/* The first three (valid) items with one byte changed, many times. */
Test(codec, fast_decode_random_like_jansson) {
        static const char alphabet[] = "{}[]\":,\\ 0123456789-.eEtfnul\x01\xc3"
                                       "abmodelinput";
        unsigned seed = 99;
        char buf[1024], what[32];
        int i;
        for (i = 0; i < 20000; i++) {
                const char *base = fast_items[i % 3];
                size_t len = strlen(base), at;
                memcpy(buf, base, len);
                seed = seed * 1103515245u + 12345u;
                at = (seed >> 8) % len;
                seed = seed * 1103515245u + 12345u;
                buf[at] = alphabet[(seed >> 8) % (sizeof(alphabet) - 1)];
                snprintf(what, sizeof(what), "mutated %d", i);
                decode_against_ref(buf, len, what);
        }
}
