/* batchfile: submit's input lines, batch ids, arguments, collect's output
 * lines and the one-result-per-item collector. */
#include <criterion/criterion.h>
#include <string.h>

#include "batchfile.h"
#include "codec.h"

#define OAI(BODY)                                                              \
        "{\"custom_id\":\"r-1\",\"method\":\"POST\",\"url\":"                  \
        "\"/v1/chat/completions\",\"body\":" BODY "}"
#define MSGS "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]"

static const kb_kv_t extra_ops[] = {{"moderations", "/v1/moderations"},
                                    {"messages", "/v1/chat/completions"}};

static const struct {
        const char *line;
        kb_bf_format_t want;
        int ok;
        kb_bf_format_t fmt;    /* detected, when ok */
        const char *operation; /* when ok; NULL: none */
        const char *model;     /* when ok */
        const char *err;       /* substring of the reason, when not ok */
} lines[] = {
        /* OpenAI Batch */
        {OAI("{\"model\":\"gpt-4o-mini\"," MSGS "}"), KB_BF_AUTO, 1,
         KB_BF_OPENAI, "chat.completions", "gpt-4o-mini", NULL},
        {"{\"custom_id\":\"e\",\"method\":\"POST\",\"url\":\"/v1/embeddings\","
         "\"body\":{\"model\":\"emb\",\"input\":\"x\"}}",
         KB_BF_AUTO, 1, KB_BF_OPENAI, "embeddings", "emb", NULL},
        {"{\"custom_id\":\"e\",\"method\":\"POST\",\"url\":\"/v1/responses\","
         "\"body\":{\"model\":\"m\",\"input\":\"x\"}}",
         KB_BF_OPENAI, 1, KB_BF_OPENAI, "responses", "m", NULL},
        {"{\"custom_id\":\"e\",\"method\":\"POST\",\"url\":\"/v1/moderations\","
         "\"body\":{\"model\":\"m\",\"input\":\"x\"}}",
         KB_BF_AUTO, 1, KB_BF_OPENAI, "moderations", "m", NULL},
        /* the default operation wins over a route mapping the same path */
        {OAI("{\"model\":\"m\"}"), KB_BF_AUTO, 1, KB_BF_OPENAI,
         "chat.completions", "m", NULL},
        {"{\"custom_id\":\"e\",\"method\":\"GET\",\"url\":\"/v1/embeddings\","
         "\"body\":{\"model\":\"m\"}}",
         KB_BF_AUTO, 0, 0, NULL, NULL, "'method' must be \"POST\""},
        {"{\"custom_id\":\"e\",\"url\":\"/v1/embeddings\",\"body\":{\"model\":"
         "\"m\"}}",
         KB_BF_AUTO, 0, 0, NULL, NULL, "'method' is missing"},
        {"{\"custom_id\":\"e\",\"method\":\"POST\",\"url\":\"/v1/nope\","
         "\"body\":{\"model\":\"m\"}}",
         KB_BF_AUTO, 0, 0, NULL, NULL, "'url' \"/v1/nope\" is not an endpoint"},
        {"{\"custom_id\":\"e\",\"method\":\"POST\",\"url\":\"/v1/embeddings\"}",
         KB_BF_AUTO, 0, 0, NULL, NULL, "'body' is missing"},
        {OAI("[1]"), KB_BF_AUTO, 0, 0, NULL, NULL,
         "'body' is not a JSON object"},
        {OAI("{" MSGS "}"), KB_BF_AUTO, 0, 0, NULL, NULL,
         "'body.model' is missing"},
        {OAI("{\"model\":3}"), KB_BF_AUTO, 0, 0, NULL, NULL,
         "'body.model' is not a string"},
        {OAI("{\"model\":\"\"}"), KB_BF_AUTO, 0, 0, NULL, NULL,
         "'body.model' is empty"},
        {"{\"method\":\"POST\",\"url\":\"/v1/embeddings\",\"body\":{\"model\":"
         "\"m\"}}",
         KB_BF_AUTO, 0, 0, NULL, NULL, "'custom_id' is missing"},
        {"{\"custom_id\":7,\"method\":\"POST\",\"url\":\"/v1/embeddings\","
         "\"body\":{\"model\":\"m\"}}",
         KB_BF_AUTO, 0, 0, NULL, NULL, "'custom_id' is not a string"},
        {"{\"custom_id\":\"\",\"method\":\"POST\",\"url\":\"/v1/embeddings\","
         "\"body\":{\"model\":\"m\"}}",
         KB_BF_AUTO, 0, 0, NULL, NULL, "'custom_id' is empty"},
        /* Anthropic Message Batches */
        {"{\"custom_id\":\"a-1\",\"params\":{\"model\":\"claude-x\","
         "\"max_tokens\":64," MSGS "}}",
         KB_BF_AUTO, 1, KB_BF_ANTHROPIC, "messages", "claude-x", NULL},
        {"{\"custom_id\":\"a-1\",\"params\":\"x\"}", KB_BF_AUTO, 0, 0, NULL,
         NULL, "'params' is not a JSON object"},
        {"{\"custom_id\":\"a-1\",\"params\":{" MSGS "}}", KB_BF_AUTO, 0, 0,
         NULL, NULL, "'params.model' is missing"},
        {"{\"custom_id\":\"a-1\"}", KB_BF_ANTHROPIC, 0, 0, NULL, NULL,
         "'params' is missing"},
        /* native */
        {"{\"item_id\":\"n-1\",\"model\":\"m\",\"input\":{\"x\":1}}",
         KB_BF_AUTO, 1, KB_BF_NATIVE, NULL, "m", NULL},
        {"{\"custom_id\":\"n-1\",\"model\":\"m\",\"input\":{},\"operation\":"
         "\"embeddings\",\"deadline\":5,\"metadata\":{\"k\":\"v\"}}",
         KB_BF_NATIVE, 1, KB_BF_NATIVE, "embeddings", "m", NULL},
        {"{\"batch_id\":\"old\",\"item_id\":\"n\",\"item_index\":9,"
         "\"items_total\":10,\"model\":\"m\",\"input\":{}}",
         KB_BF_AUTO, 1, KB_BF_NATIVE, NULL, "m", NULL},
        {"{\"item_id\":\"n-1\",\"input\":{}}", KB_BF_AUTO, 0, 0, NULL, NULL,
         "'model' is missing"},
        {"{\"item_id\":\"n-1\",\"model\":\"m\",\"input\":\"hi\"}", KB_BF_AUTO,
         0, 0, NULL, NULL, "'input' is not a JSON object"},
        {"{\"item_id\":\"n-1\",\"model\":\"m\"}", KB_BF_NATIVE, 0, 0, NULL,
         NULL, "'input' is missing"},
        {"{\"item_id\":\"n\",\"model\":\"m\",\"input\":{},\"deadline\":\"x\"}",
         KB_BF_AUTO, 0, 0, NULL, NULL, "'deadline' is not a positive integer"},
        {"{\"item_id\":\"n\",\"model\":\"m\",\"input\":{},\"metadata\":[]}",
         KB_BF_AUTO, 0, 0, NULL, NULL, "'metadata' is not an object"},
        /* not a request at all */
        {"", KB_BF_AUTO, 0, 0, NULL, NULL, "not valid JSON"},
        {"{\"custom_id\":\"a\",", KB_BF_AUTO, 0, 0, NULL, NULL,
         "not valid JSON"},
        {"[1,2]", KB_BF_AUTO, 0, 0, NULL, NULL, "not a JSON object"},
        {"{\"custom_id\":\"a\",\"custom_id\":\"b\"}", KB_BF_AUTO, 0, 0, NULL,
         NULL, "duplicate"},
        {"{\"custom_id\":\"a\"}", KB_BF_AUTO, 0, 0, NULL, NULL,
         "expected an OpenAI Batch line"},
        /* a forced format */
        {"{\"custom_id\":\"a-1\",\"params\":{\"model\":\"c\"}}", KB_BF_OPENAI,
         0, 0, NULL, NULL, "'method' is missing"},
};

Test(batchfile, lines) {
        size_t i;
        for (i = 0; i < sizeof(lines) / sizeof(*lines); i++) {
                kb_bf_line_t l;
                char err[512];
                int r = kb_bf_line_parse(lines[i].line, strlen(lines[i].line),
                                         lines[i].want, extra_ops, 2, &l, err,
                                         sizeof(err));
                cr_assert_eq(r == 0, lines[i].ok, "line %zu: %s -> %d (%s)", i,
                             lines[i].line, r, err);
                if (!lines[i].ok) {
                        cr_assert(strstr(err, lines[i].err), "line %zu: '%s'",
                                  i, err);
                        cr_assert_null(l.bl_input);
                        continue;
                }
                cr_assert_eq(l.bl_format, lines[i].fmt, "line %zu", i);
                cr_assert_str_eq(l.bl_model, lines[i].model, "line %zu", i);
                if (lines[i].operation)
                        cr_assert_str_eq(l.bl_operation, lines[i].operation,
                                         "line %zu", i);
                else
                        cr_assert_null(l.bl_operation, "line %zu", i);
                cr_assert(json_is_object(l.bl_input));
                kb_bf_line_clear(&l);
                kb_bf_line_clear(&l); /* idempotent */
        }
}

/* The line's item is a valid BatchItem; the batch's options apply. */
Test(batchfile, item_json) {
        static const char *src[] = {
                OAI("{\"model\":\"gpt\"," MSGS "}"),
                "{\"custom_id\":\"a\",\"params\":{\"model\":\"claude\"," MSGS
                "}}",
                "{\"item_id\":\"n\",\"model\":\"m\",\"input\":{\"q\":1},"
                "\"metadata\":{\"team\":\"line\",\"own\":\"x\"},\"deadline\":"
                "77,"
                "\"callback_url\":\"https://own\"}",
        };
        json_t *md = json_pack("{s:s,s:s}", "team", "batch", "env", "prod");
        kb_bf_batch_t b = {.bb_batch_id = "b-1",
                           .bb_items_total = 3,
                           .bb_metadata = md,
                           .bb_submitted_at = 1000};
        size_t i;
        for (i = 0; i < 3; i++) {
                kb_bf_line_t l;
                kb_item_t it;
                char err[512];
                json_t *o;
                cr_assert_eq(kb_bf_line_parse(src[i], strlen(src[i]),
                                              KB_BF_AUTO, NULL, 0, &l, err,
                                              sizeof(err)),
                             0, "%s", err);
                o = kb_bf_item_json(&l, (int64_t)i, &b);
                cr_assert_eq(kb_codec_item_from_json(o, 100, 0, &it, err,
                                                     sizeof(err)),
                             KB_CODEC_OK, "%zu: %s", i, err);
                cr_assert_str_eq(it.batch_id, "b-1");
                cr_assert_eq(it.item_index, (int64_t)i);
                cr_assert_eq(it.items_total, 3);
                cr_assert_eq(it.submitted_at, 1000);
                cr_assert(json_equal(it.input, l.bl_input));
                cr_assert_str_eq(
                        json_string_value(json_object_get(it.metadata, "env")),
                        "prod");
                if (i == 2) {
                        /* the line's own metadata wins over the batch's */
                        cr_assert_str_eq(json_string_value(json_object_get(
                                                 it.metadata, "team")),
                                         "line");
                        cr_assert_eq(it.deadline, 77);
                        cr_assert_str_eq(it.callback_url, "https://own");
                        cr_assert_null(it.operation);
                } else
                        cr_assert_null(it.callback_url);
                kb_item_clear(&it);
                /* the batch's deadline and callback override the line's */
                b.bb_deadline = 99;
                b.bb_callback_url = "https://batch";
                json_decref(o);
                o = kb_bf_item_json(&l, (int64_t)i, &b);
                cr_assert_eq(json_integer_value(json_object_get(o, "deadline")),
                             99);
                cr_assert_str_eq(
                        json_string_value(json_object_get(o, "callback_url")),
                        "https://batch");
                b.bb_deadline = 0;
                b.bb_callback_url = NULL;
                json_decref(o);
                kb_bf_line_clear(&l);
        }
        json_decref(md);
}

Test(batchfile, ids_unique) {
        kb_bf_ids_t *ids = kb_bf_ids_new();
        char id[32];
        int i;
        for (i = 0; i < 100000; i++) {
                snprintf(id, sizeof(id), "req-%d", i);
                cr_assert_eq(kb_bf_ids_add(ids, id, i + 1), 0);
        }
        cr_assert_eq(kb_bf_ids_add(ids, "req-0", 200000), 1);
        cr_assert_eq(kb_bf_ids_add(ids, "req-99999", 200001), 100000);
        cr_assert_eq(kb_bf_ids_add(ids, "req-100000", 200002), 0);
        kb_bf_ids_destroy(ids);
        kb_bf_ids_destroy(NULL);
}

Test(batchfile, batch_ids) {
        uint8_t r1[10] = {0}, r2[10] = {0xff, 0xff, 0xff, 0xff, 0xff,
                                        0xff, 0xff, 0xff, 0xff, 0xff};
        char a[KB_BF_BATCH_ID_SIZE], b[KB_BF_BATCH_ID_SIZE],
                c[KB_BF_BATCH_ID_SIZE];
        kb_bf_batch_id_generate(1700000000000LL, r2, a);
        kb_bf_batch_id_generate(1700000000001LL, r1, b);
        cr_assert_eq(strlen(a), 28);
        cr_assert(kb_codec_batch_id_valid(a));
        cr_assert_lt(strcmp(a, b), 0, "%s < %s: sortable by time", a, b);
        cr_assert_str_eq(a + 12, "ZZZZZZZZZZZZZZZZ");
        cr_assert_str_eq(b + 12, "0000000000000000");
        kb_bf_batch_id_generate(0, r1, c);
        cr_assert_str_eq(c, "b-00000000000000000000000000");
        /* SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223... */
        cr_assert_eq(kb_bf_batch_id_from_key("abc", a), 0);
        cr_assert_str_eq(a, "b-ba7816bf8f01cfea414140de");
        kb_bf_batch_id_from_key("abc", b);
        cr_assert_str_eq(a, b);
        kb_bf_batch_id_from_key("abd", b);
        cr_assert_str_neq(a, b);
        cr_assert(kb_codec_batch_id_valid(a));
}

Test(batchfile, durations_and_times) {
        static const struct {
                const char *s;
                int64_t ms;
        } d[] = {{"24h", 86400000},  {"90s", 90000},    {"500ms", 500},
                 {"1h30m", 5400000}, {"2d", 172800000}, {"15m", 900000},
                 {"", -1},           {"h", -1},         {"10", -1},
                 {"0s", -1},         {"5y", -1},        {"-5s", -1},
                 {"99999d", -1}};
        size_t i;
        for (i = 0; i < sizeof(d) / sizeof(*d); i++)
                cr_assert_eq(kb_bf_duration_parse(d[i].s), d[i].ms, "%s",
                             d[i].s);
        cr_assert_eq(kb_bf_time_parse("1h", 1000), 3601000);
        cr_assert_eq(kb_bf_time_parse("1700000000000", 5), 1700000000000LL);
        cr_assert_eq(kb_bf_time_parse("2023-11-14T22:13:20Z", 0),
                     1700000000000LL);
        cr_assert_eq(kb_bf_time_parse("2023-11-14T22:13:20.250Z", 0),
                     1700000000250LL);
        cr_assert_eq(kb_bf_time_parse("2023-11-15T00:13:20+02:00", 0),
                     1700000000000LL);
        cr_assert_eq(kb_bf_time_parse("2023-11-14", 0), -1);
        cr_assert_eq(kb_bf_time_parse("tomorrow", 0), -1);
}

Test(batchfile, metadata_args) {
        json_t *md = json_object();
        char err[256], kv[1024];
        int i;
        cr_assert_eq(kb_bf_metadata_add(md, "team=search", err, sizeof(err)),
                     0);
        cr_assert_eq(kb_bf_metadata_add(md, "q=a=b", err, sizeof(err)), 0);
        cr_assert_str_eq(json_string_value(json_object_get(md, "q")), "a=b");
        cr_assert_eq(kb_bf_metadata_add(md, "empty=", err, sizeof(err)), 0);
        cr_assert_eq(kb_bf_metadata_add(md, "noeq", err, sizeof(err)), -1);
        cr_assert(strstr(err, "key=value"));
        cr_assert_eq(kb_bf_metadata_add(md, "=v", err, sizeof(err)), -1);
        memset(kv, 'k', 65);
        strcpy(kv + 65, "=v");
        cr_assert_eq(kb_bf_metadata_add(md, kv, err, sizeof(err)), -1);
        strcpy(kv, "k=");
        memset(kv + 2, 'v', 513);
        kv[515] = '\0';
        cr_assert_eq(kb_bf_metadata_add(md, kv, err, sizeof(err)), -1);
        cr_assert_eq(kb_bf_metadata_add(md, "bad=\xff", err, sizeof(err)), -1);
        cr_assert(strstr(err, "UTF-8"));
        for (i = 0; i < 13; i++) {
                snprintf(kv, sizeof(kv), "k%d=v", i);
                cr_assert_eq(kb_bf_metadata_add(md, kv, err, sizeof(err)), 0);
        }
        cr_assert_eq(json_object_size(md), 16);
        cr_assert_eq(kb_bf_metadata_add(md, "k17=v", err, sizeof(err)), -1);
        cr_assert_eq(kb_bf_metadata_add(md, "team=other", err, sizeof(err)), 0,
                     "replacing a key is not a new entry");
        json_decref(md);
}

static json_t *result(const char *status, int http, const char *output,
                      const char *code) {
        json_t *r = json_pack("{s:s,s:s,s:i,s:i,s:s}", "batch_id", "b-1",
                              "item_id", "req-7", "item_index", 7,
                              "items_total", 10, "status", status);
        json_object_set_new(r, "http_status",
                            http ? json_integer(http) : json_null());
        json_object_set_new(r, "output",
                            output ? json_loads(output, 0, NULL) : json_null());
        json_object_set_new(
                r, "error",
                code ? json_pack("{s:s,s:s}", "code", code, "message", "why")
                     : json_null());
        return r;
}

Test(batchfile, openai_output) {
        static const struct {
                const char *status;
                int http;
                const char *output, *code;
                int is_error;
                const char *want; /* the line, key order as produced */
        } c[] = {
                {"succeeded", 200, "{\"id\":\"chatcmpl-1\"}", NULL, 0,
                 "{\"id\": \"batch_req_X\", \"custom_id\": \"req-7\", "
                 "\"response\": {\"status_code\": 200, \"request_id\": null, "
                 "\"body\": {\"id\": \"chatcmpl-1\"}}, \"error\": null}"},
                {"failed", 400, "{\"error\":{\"message\":\"bad\"}}",
                 "client_error", 1,
                 "{\"id\": \"batch_req_X\", \"custom_id\": \"req-7\", "
                 "\"response\": {\"status_code\": 400, \"request_id\": null, "
                 "\"body\": {\"error\": {\"message\": \"bad\"}}}, \"error\": "
                 "{\"code\": \"client_error\", \"message\": \"why\"}}"},
                {"failed", 0, NULL, "max_attempts_exceeded", 1,
                 "{\"id\": \"batch_req_X\", \"custom_id\": \"req-7\", "
                 "\"response\": null, \"error\": {\"code\": "
                 "\"max_attempts_exceeded\", \"message\": \"why\"}}"},
                {"expired", 0, NULL, "expired", 1,
                 "{\"id\": \"batch_req_X\", \"custom_id\": \"req-7\", "
                 "\"response\": null, \"error\": {\"code\": \"batch_expired\", "
                 "\"message\": \"why\"}}"},
                {"cancelled", 0, NULL, "cancelled", 1,
                 "{\"id\": \"batch_req_X\", \"custom_id\": \"req-7\", "
                 "\"response\": null, \"error\": {\"code\": "
                 "\"batch_cancelled\", \"message\": \"why\"}}"},
        };
        size_t i;
        char *id0 = NULL;
        for (i = 0; i < sizeof(c) / sizeof(*c); i++) {
                json_t *r =
                        result(c[i].status, c[i].http, c[i].output, c[i].code);
                int is_error = -1;
                json_t *o = kb_bf_output_line(KB_BF_OUT_OPENAI, r, &is_error);
                json_t *want = json_loads(c[i].want, 0, NULL);
                const char *id = json_string_value(json_object_get(o, "id"));
                cr_assert_eq(is_error, c[i].is_error, "%zu", i);
                cr_assert(!strncmp(id, "batch_req_", 10) && strlen(id) == 34,
                          "%s", id);
                /* stable: from batch_id and item_index */
                if (!id0)
                        id0 = strdup(id);
                cr_assert_str_eq(id, id0);
                json_object_set_new(o, "id", json_string("batch_req_X"));
                cr_assert(json_equal(o, want), "%zu: %s", i, json_dumps(o, 0));
                json_decref(want);
                json_decref(o);
                json_decref(r);
        }
        {
                /* the request id, when the result carries one */
                json_t *r = result("succeeded", 200, "{}", NULL);
                json_t *o;
                json_object_set_new(r, "request_id", json_string("req_abc"));
                o = kb_bf_output_line(KB_BF_OUT_OPENAI, r, NULL);
                cr_assert_str_eq(
                        json_string_value(json_object_get(
                                json_object_get(o, "response"), "request_id")),
                        "req_abc");
                json_decref(o);
                json_decref(r);
        }
        free(id0);
        cr_assert_null(kb_bf_output_line(KB_BF_OUT_OPENAI, json_null(), NULL));
}

Test(batchfile, anthropic_output) {
        static const struct {
                const char *status;
                int http;
                const char *output, *code;
                const char *want_result;
        } c[] = {
                {"succeeded", 200, "{\"id\":\"msg_1\",\"type\":\"message\"}",
                 NULL,
                 "{\"type\": \"succeeded\", \"message\": {\"id\": \"msg_1\", "
                 "\"type\": \"message\"}}"},
                {"failed", 400,
                 "{\"type\":\"error\",\"error\":{\"type\":"
                 "\"invalid_request_error\",\"message\":\"m\"}}",
                 "client_error",
                 "{\"type\": \"errored\", \"error\": {\"type\": \"error\", "
                 "\"error\": {\"type\": \"invalid_request_error\", "
                 "\"message\": "
                 "\"m\"}}}"},
                {"failed", 0, NULL, "max_attempts_exceeded",
                 "{\"type\": \"errored\", \"error\": {\"type\": \"error\", "
                 "\"error\": {\"type\": \"api_error\", \"message\": "
                 "\"max_attempts_exceeded: why\"}}}"},
                {"failed", 429, "{\"error\":\"x\"}", "rate_limited",
                 "{\"type\": \"errored\", \"error\": {\"type\": \"error\", "
                 "\"error\": {\"type\": \"rate_limit_error\", \"message\": "
                 "\"rate_limited: why\"}}}"},
                {"cancelled", 0, NULL, "cancelled", "{\"type\": \"canceled\"}"},
                {"expired", 0, NULL, "expired", "{\"type\": \"expired\"}"},
        };
        size_t i;
        for (i = 0; i < sizeof(c) / sizeof(*c); i++) {
                json_t *r =
                        result(c[i].status, c[i].http, c[i].output, c[i].code);
                json_t *o = kb_bf_output_line(KB_BF_OUT_ANTHROPIC, r, NULL);
                json_t *want = json_loads(c[i].want_result, 0, NULL);
                cr_assert_str_eq(
                        json_string_value(json_object_get(o, "custom_id")),
                        "req-7");
                cr_assert(json_equal(json_object_get(o, "result"), want),
                          "%zu: %s", i, json_dumps(o, 0));
                json_decref(want);
                json_decref(o);
                json_decref(r);
        }
}

Test(batchfile, native_output_is_a_copy) {
        json_t *r = result("failed", 500, NULL, "server_error");
        int e = 0;
        json_t *o = kb_bf_output_line(KB_BF_OUT_NATIVE, r, &e);
        cr_assert(json_equal(o, r) && o != r && e == 1);
        json_decref(o);
        json_decref(r);
        cr_assert_eq(kb_bf_out_parse("anthropic"), KB_BF_OUT_ANTHROPIC);
        cr_assert_eq(kb_bf_out_parse("csv"), -1);
        cr_assert_eq(kb_bf_format_parse("native"), KB_BF_NATIVE);
        cr_assert_str_eq(kb_bf_format_str(KB_BF_OPENAI), "openai");
}

static json_t *res_at(int64_t i, const char *status) {
        return json_pack("{s:I,s:s}", "item_index", (json_int_t)i, "status",
                         status);
}

Test(batchfile, collector) {
        static const struct {
                int64_t index;
                const char *status;
                kb_bf_keep_t want;
        } seq[] = {
                {0, "succeeded", KB_BF_KEEP_FINAL},
                {0, "succeeded", KB_BF_DUPLICATE},
                {0, "failed", KB_BF_DUPLICATE},
                {1, "failed", KB_BF_KEEP_PENDING},
                {1, "failed", KB_BF_DUPLICATE},
                {1, "succeeded", KB_BF_KEEP_FINAL}, /* a replayed item */
                {1, "succeeded", KB_BF_DUPLICATE},
                {2, "expired", KB_BF_KEEP_PENDING},
                {3, "cancelled", KB_BF_KEEP_PENDING},
                {4, "succeeded", KB_BF_OUT_OF_RANGE},
                {-1, "succeeded", KB_BF_OUT_OF_RANGE},
        };
        kb_bf_collect_t *co = kb_bf_collect_new(4);
        json_t *r;
        int64_t pos = 0;
        size_t i;
        cr_assert_null(kb_bf_collect_new(0));
        cr_assert_null(kb_bf_collect_new(KB_BF_LINES_MAX + 1));
        for (i = 0; i < sizeof(seq) / sizeof(*seq); i++) {
                r = res_at(seq[i].index, seq[i].status);
                cr_assert_eq(kb_bf_collect_offer(co, r), seq[i].want, "%zu", i);
                json_decref(r);
        }
        r = json_pack("{s:s}", "status", "succeeded");
        cr_assert_eq(kb_bf_collect_offer(co, r), KB_BF_OUT_OF_RANGE);
        json_decref(r);
        cr_assert_eq(kb_bf_collect_seen(co), 4);
        cr_assert_eq(kb_bf_collect_succeeded(co), 2);
        cr_assert_eq(kb_bf_collect_total(co), 4);
        r = kb_bf_collect_next_pending(co, &pos);
        cr_assert_eq(json_integer_value(json_object_get(r, "item_index")), 2);
        r = kb_bf_collect_next_pending(co, &pos);
        cr_assert_eq(json_integer_value(json_object_get(r, "item_index")), 3);
        cr_assert_null(kb_bf_collect_next_pending(co, &pos));
        kb_bf_collect_destroy(co);
        kb_bf_collect_destroy(NULL);
}
