/* serde: json and avro (Confluent wire format) against the fake registry:
 * round trips, evolution, every decoding error, registry outages. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "conf.h"
#include "loop.h"
#include "registry.h"
#include "serde.h"

#include "fake_registry.h"

static fake_reg_t reg;

static kb_conf_t *conf_with(const char *format, const char *url) {
        char err[512];
        kb_conf_t *c;
        setenv("KBATCH_SERDE_FORMAT", format, 1);
        setenv("KBATCH_SERDE_SCHEMA_REGISTRY_URL", url ? url : "", 1);
        setenv("KBATCH_SERDE_SCHEMA_REGISTRY_TIMEOUT_MS", "1000", 1);
        c = kb_conf_load(NULL, NULL, err, sizeof(err));
        cr_assert(c, "%s", err);
        return c;
}

static void setup(void) {
        fake_reg_start(&reg, 0, NULL);
}
static void teardown(void) {
        fake_reg_stop(&reg);
}

TestSuite(serde, .init = setup, .fini = teardown, .timeout = 30);

static kb_serde_t *new_serde(const kb_conf_t *c, kb_loop_t *loop) {
        char err[512];
        kb_serde_t *sd = kb_serde_new(c, loop, err, sizeof(err));
        cr_assert(sd, "%s", err);
        return sd;
}

static const char *item_text =
        "{\"batch_id\":\"b-1\",\"item_id\":\"req-7\",\"item_index\":7,"
        "\"items_total\":10,\"model\":\"gpt-test\",\"operation\":\"chat."
        "completions\",\"input\":{\"messages\":[{\"role\":\"user\",\"content\":"
        "\"h\\u00e9llo\"}],\"temperature\":0.5},\"deadline\":4102444800000,"
        "\"callback_url\":\"https://example.com/hook\",\"metadata\":{\"team\":"
        "\"a\",\"run\":\"7\"},\"submitted_at\":1700000000000}";

static json_t *item_json(void) {
        json_t *j = json_loads(item_text, 0, NULL);
        cr_assert(j);
        return j;
}

/* ---- schemas ------------------------------------------------------- */

Test(serde, schemas_compiled_in) {
        kb_msg_t t;
        for (t = 0; t < KB_MSG__CNT; t++) {
                json_t *j = json_loads(kb_serde_schema_text(t), 0, NULL);
                char want[128];
                cr_assert(j, "schema %d is not JSON", (int)t);
                snprintf(want, sizeof(want), "%s.%s",
                         json_string_value(json_object_get(j, "namespace")),
                         json_string_value(json_object_get(j, "name")));
                cr_assert_str_eq(want, kb_serde_schema_name(t));
                cr_assert_str_eq(
                        json_string_value(json_object_get(j, "namespace")),
                        "kbatch.v1");
                json_decref(j);
        }
}

/* ---- formats per topic ------------------------------------------------ */

Test(serde, format_per_topic) {
        kb_conf_t *c;
        kb_serde_t *sd;
        setenv("KBATCH_SERDE_RESULTS_FORMAT", "json", 1);
        c = conf_with("avro", reg.fr_url);
        unsetenv("KBATCH_SERDE_RESULTS_FORMAT");
        sd = new_serde(c, NULL);
        cr_assert_eq(kb_serde_format(sd, "kbatch.items"), KB_FORMAT_AVRO);
        cr_assert_eq(kb_serde_format(sd, "kbatch.items.retry.2"),
                     KB_FORMAT_AVRO);
        cr_assert_eq(kb_serde_format(sd, "kbatch.items.dlq"), KB_FORMAT_AVRO);
        cr_assert_eq(kb_serde_format(sd, "kbatch.results"), KB_FORMAT_JSON);
        cr_assert_eq(kb_serde_format(sd, "kbatch.batches"), KB_FORMAT_AVRO);
        cr_assert_eq(kb_serde_format(sd, "other"), KB_FORMAT_AVRO);
        kb_serde_destroy(sd);
        kb_conf_destroy(c);
}

Test(serde, json_format_needs_no_registry) {
        kb_conf_t *c = conf_with("json", NULL);
        kb_serde_t *sd = new_serde(c, NULL);
        kb_item_t it;
        char err[256];
        cr_assert_null(kb_serde_registry(sd));
        cr_assert_eq(kb_serde_item_decode(sd, "kbatch.items", "kbatch.results",
                                          item_text, strlen(item_text), 0, &it,
                                          err, sizeof(err)),
                     KB_CODEC_OK, "%s", err);
        cr_assert_str_eq(it.item_id, "req-7");
        kb_item_clear(&it);
        cr_assert(kb_serde_healthy(sd, err, sizeof(err)));
        kb_serde_destroy(sd);
        kb_conf_destroy(c);
}

/* ---- round trips ----------------------------------------------------------
 */

/* Encodes the item JSON as Avro with our schema, decodes it with the items
 * pipeline's function: same fields as the JSON decoder gives. */
Test(serde, item_round_trip_equals_json_decoding) {
        kb_conf_t *c = conf_with("avro", reg.fr_url);
        kb_serde_t *sd = new_serde(c, NULL);
        json_t *j = item_json();
        char *buf, err[256];
        size_t len;
        kb_item_t a, b;

        cr_assert_eq(kb_serde_encode(sd, "kbatch.items", KB_MSG_BATCH_ITEM, j,
                                     &buf, &len, err, sizeof(err)),
                     KB_SERDE_OK, "%s", err);
        cr_assert_eq(buf[0], 0);
        cr_assert_eq(kb_serde_item_decode(sd, "kbatch.items", "kbatch.results",
                                          buf, len, 0, &a, err, sizeof(err)),
                     KB_CODEC_OK, "%s", err);
        cr_assert_eq(kb_codec_item_decode(item_text, strlen(item_text), 0, &b,
                                          err, sizeof(err)),
                     KB_CODEC_OK);
        cr_assert_str_eq(a.batch_id, b.batch_id);
        cr_assert_str_eq(a.item_id, b.item_id);
        cr_assert_eq(a.item_index, b.item_index);
        cr_assert_eq(a.items_total, b.items_total);
        cr_assert_str_eq(a.model, b.model);
        cr_assert_str_eq(a.operation, b.operation);
        cr_assert_str_eq(a.callback_url, b.callback_url);
        cr_assert_eq(a.deadline, b.deadline);
        cr_assert_eq(a.submitted_at, b.submitted_at);
        {
                /* JSON items keep their input as text: the request bodies
                 * are what must agree */
                int64_t ca, cb;
                char *ba = kb_codec_request_body(&a, &ca),
                     *bb = kb_codec_request_body(&b, &cb);
                json_t *ja = json_loads(ba, 0, NULL),
                       *jb = json_loads(bb, 0, NULL);
                cr_assert(ja && jb && json_equal(ja, jb), "%s vs %s", ba, bb);
                cr_assert_eq(ca, cb);
                json_decref(ja);
                json_decref(jb);
                free(ba);
                free(bb);
        }
        cr_assert(json_equal(a.metadata, b.metadata));
        kb_item_clear(&a);
        kb_item_clear(&b);
        free(buf);
        json_decref(j);
        kb_serde_destroy(sd);
        kb_conf_destroy(c);
}

typedef struct result_case_s {
        const char *name;
        kb_item_status_t status;
        int http_status;
        const char *output; /* JSON text or NULL */
        const char *code;
        int has_usage;
        int null_ids; /* an invalid item without item_id/model */
} result_case_t;

static const result_case_t result_cases[] = {
        {"succeeded", KB_STATUS_SUCCEEDED, 200,
         "{\"id\":\"x\",\"choices\":[{\"message\":{\"content\":\"hi\"}}],"
         "\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}",
         NULL, 1, 0},
        {"failed_with_body", KB_STATUS_FAILED, 400,
         "{\"error\":{\"message\":\"bad\"}}", "client_error", 0, 0},
        {"failed_no_response", KB_STATUS_FAILED, 0, NULL, "timeout", 0, 0},
        {"invalid_item", KB_STATUS_FAILED, 0, NULL, "invalid_item", 0, 1},
        {"cancelled", KB_STATUS_CANCELLED, 0, NULL, "cancelled", 0, 0},
        {"output_not_an_object", KB_STATUS_SUCCEEDED, 200, "[1,2,\"x\"]", NULL,
         0, 0},
};

/* ItemResult: Avro and JSON give the same object, field for field. */
Test(serde, result_round_trips) {
        kb_conf_t *c = conf_with("avro", reg.fr_url);
        kb_serde_t *sd = new_serde(c, NULL);
        size_t i;
        for (i = 0; i < sizeof(result_cases) / sizeof(*result_cases); i++) {
                const result_case_t *rc = &result_cases[i];
                kb_item_t it;
                kb_result_t res;
                json_t *want, *got = NULL, *out = NULL;
                char *buf, err[256];
                size_t len;

                cr_assert_eq(kb_codec_item_decode(item_text, strlen(item_text),
                                                  0, &it, err, sizeof(err)),
                             KB_CODEC_OK);
                if (rc->null_ids) {
                        free(it.item_id);
                        free(it.model);
                        it.item_id = it.model = NULL;
                }
                memset(&res, 0, sizeof(res));
                res.status = rc->status;
                res.http_status = rc->http_status;
                if (rc->output) {
                        out = json_loads(rc->output, JSON_DECODE_ANY, NULL);
                        res.output = out;
                        kb_codec_usage_from_output(out, &res);
                }
                res.error_code = rc->code;
                res.error_message =
                        rc->code ? "what happened: \"quoted\"" : NULL;
                res.attempts = 2;
                res.started_at = 1700000000123;
                res.finished_at = 1700000000456;
                res.latency_ms = 333;
                res.worker = "w-1";
                want = kb_codec_result_json(&it, &res);
                buf = kb_serde_result_encode(sd, "kbatch.results", &it, &res,
                                             &len, err, sizeof(err));
                cr_assert(buf, "%s: %s", rc->name, err);
                cr_assert_eq(buf[0], 0, "%s", rc->name);
                cr_assert_eq(kb_serde_decode(sd, "kbatch.results",
                                             KB_MSG_ITEM_RESULT, buf, len, &got,
                                             err, sizeof(err)),
                             KB_SERDE_OK, "%s: %s", rc->name, err);
                {
                        char *a = json_dumps(want, JSON_SORT_KEYS),
                             *b = json_dumps(got, JSON_SORT_KEYS);
                        cr_assert(json_equal(want, got), "%s:\n%s\n%s",
                                  rc->name, a, b);
                        free(a);
                        free(b);
                }
                cr_assert_eq(json_object_size(want), json_object_size(got));
                json_decref(want);
                json_decref(got);
                json_decref(out);
                free(buf);
                kb_item_clear(&it);
        }
        kb_serde_destroy(sd);
        kb_conf_destroy(c);
}

Test(serde, batch_event_round_trip) {
        kb_conf_t *c = conf_with("avro", reg.fr_url);
        kb_serde_t *sd = new_serde(c, NULL);
        json_t *ev = json_loads(
                "{\"event_id\":\"b-1:1\",\"type\":\"batch.completed\","
                "\"revision\":1,\"batch_id\":\"b-1\",\"status\":"
                "\"partial_succeeded\",\"items_total\":10,\"items_succeeded\":"
                "8,"
                "\"items_failed\":2,\"items_cancelled\":0,\"items_expired\":0,"
                "\"usage\":{\"input_tokens\":30,\"output_tokens\":20,"
                "\"total_tokens\":50},\"first_result_at\":1700000000000,"
                "\"completed_at\":1700000009000,\"metadata\":{\"team\":\"a\"},"
                "\"items_invalid\":0,\"updated_at\":null,"
                "\"callback_url\":\"https://example.com/hook\"}",
                0, NULL);
        json_t *got = NULL;
        char *buf, err[256];
        size_t len;
        cr_assert(ev);
        cr_assert_eq(kb_serde_batch_event_encode(sd, "kbatch.batches", ev, &buf,
                                                 &len, err, sizeof(err)),
                     KB_SERDE_OK, "%s", err);
        cr_assert_eq(kb_serde_decode(sd, "kbatch.batches", KB_MSG_BATCH_EVENT,
                                     buf, len, &got, err, sizeof(err)),
                     KB_SERDE_OK, "%s", err);
        cr_assert(json_equal(ev, got));
        free(buf);
        json_decref(got);
        /* a required field missing: INVALID, naming it */
        json_object_del(ev, "items_failed");
        cr_assert_eq(kb_serde_batch_event_encode(sd, "kbatch.batches", ev, &buf,
                                                 &len, err, sizeof(err)),
                     KB_SERDE_INVALID);
        cr_assert(strstr(err, "items_failed"), "%s", err);
        json_decref(ev);
        kb_serde_destroy(sd);
        kb_conf_destroy(c);
}

Test(serde, batch_state_bytes_are_base64_in_json) {
        kb_conf_t *c = conf_with("avro", reg.fr_url);
        kb_serde_t *sd = new_serde(c, NULL);
        json_t *st = json_loads(
                "{\"batch_id\":\"b\",\"revision\":0,\"items_total\":5,"
                "\"items_succeeded\":1,\"items_failed\":0,\"items_cancelled\":"
                "0,"
                "\"items_expired\":0,\"statuses\":\"AQIDBA==\"}",
                0, NULL);
        json_t *got = NULL;
        char *buf, err[256];
        size_t len;
        cr_assert_eq(kb_serde_encode(sd, "kbatch.batch-state",
                                     KB_MSG_BATCH_STATE, st, &buf, &len, err,
                                     sizeof(err)),
                     KB_SERDE_OK, "%s", err);
        cr_assert_eq(kb_serde_decode(sd, "kbatch.batch-state",
                                     KB_MSG_BATCH_STATE, buf, len, &got, err,
                                     sizeof(err)),
                     KB_SERDE_OK, "%s", err);
        cr_assert_str_eq(json_string_value(json_object_get(got, "statuses")),
                         "AQIDBA==");
        cr_assert(json_is_null(json_object_get(got, "usage")));
        free(buf);
        json_decref(got);
        json_decref(st);
        kb_serde_destroy(sd);
        kb_conf_destroy(c);
}

/* ---- evolution --------------------------------------------------------- */

typedef struct evo_case_s {
        const char *name;
        const char *schema;
        int expect_ok;
        const char *err_part;
} evo_case_t;

/* Writer schemas: BatchItem with an extra optional field, without
 * optional fields, with promotions, and one that lacks a required one. */
static const evo_case_t evo_cases[] = {
        {"extra_optional_field",
         "{\"type\":\"record\",\"name\":\"BatchItem\",\"namespace\":"
         "\"kbatch.v1\",\"fields\":["
         "{\"name\":\"batch_id\",\"type\":\"string\"},"
         "{\"name\":\"item_id\",\"type\":\"string\"},"
         "{\"name\":\"priority\",\"type\":[\"null\",\"int\"],\"default\":null},"
         "{\"name\":\"item_index\",\"type\":\"int\"},"
         "{\"name\":\"items_total\",\"type\":\"int\"},"
         "{\"name\":\"model\",\"type\":\"string\"},"
         "{\"name\":\"operation\",\"type\":[\"null\",\"string\"],\"default\":"
         "null},"
         "{\"name\":\"input\",\"type\":\"string\"},"
         "{\"name\":\"deadline\",\"type\":[\"null\",\"long\"],\"default\":null}"
         ","
         "{\"name\":\"callback_url\",\"type\":[\"null\",\"string\"],"
         "\"default\":null},"
         "{\"name\":\"metadata\",\"type\":[\"null\",{\"type\":\"map\","
         "\"values\":\"string\"}],\"default\":null},"
         "{\"name\":\"submitted_at\",\"type\":[\"null\",\"long\"],\"default\":"
         "null},"
         "{\"name\":\"tags\",\"type\":{\"type\":\"array\",\"items\":"
         "\"string\"},\"default\":[]}]}",
         1, NULL},
        {"lacks_optional_fields",
         "{\"type\":\"record\",\"name\":\"BatchItem\",\"namespace\":"
         "\"kbatch.v1\",\"fields\":["
         "{\"name\":\"batch_id\",\"type\":\"string\"},"
         "{\"name\":\"item_id\",\"type\":\"string\"},"
         "{\"name\":\"item_index\",\"type\":\"int\"},"
         "{\"name\":\"items_total\",\"type\":\"int\"},"
         "{\"name\":\"model\",\"type\":\"string\"},"
         "{\"name\":\"input\",\"type\":\"string\"}]}",
         1, NULL},
        {"promotions_and_plain_types",
         "{\"type\":\"record\",\"name\":\"Item\",\"namespace\":\"acme\","
         "\"fields\":["
         "{\"name\":\"model\",\"type\":\"string\"},"
         "{\"name\":\"batch_id\",\"type\":\"string\"},"
         "{\"name\":\"item_id\",\"type\":\"string\"},"
         "{\"name\":\"item_index\",\"type\":\"int\"},"
         "{\"name\":\"items_total\",\"type\":\"int\"},"
         "{\"name\":\"input\",\"type\":\"string\"},"
         "{\"name\":\"deadline\",\"type\":\"int\"},"
         "{\"name\":\"operation\",\"type\":\"string\"}]}",
         1, NULL},
        {"lacks_required_field",
         "{\"type\":\"record\",\"name\":\"BatchItem\",\"namespace\":"
         "\"kbatch.v1\",\"fields\":["
         "{\"name\":\"batch_id\",\"type\":\"string\"},"
         "{\"name\":\"item_id\",\"type\":\"string\"},"
         "{\"name\":\"item_index\",\"type\":\"int\"},"
         "{\"name\":\"items_total\",\"type\":\"int\"},"
         "{\"name\":\"input\",\"type\":\"string\"}]}",
         0, "field 'model' is missing in the writer schema and has no default"},
        {"incompatible_type",
         "{\"type\":\"record\",\"name\":\"BatchItem\",\"namespace\":"
         "\"kbatch.v1\",\"fields\":["
         "{\"name\":\"batch_id\",\"type\":\"string\"},"
         "{\"name\":\"item_id\",\"type\":\"string\"},"
         "{\"name\":\"item_index\",\"type\":\"string\"},"
         "{\"name\":\"items_total\",\"type\":\"int\"},"
         "{\"name\":\"model\",\"type\":\"string\"},"
         "{\"name\":\"input\",\"type\":\"string\"}]}",
         0,
         "'item_index': the writer's string cannot be read as the reader's "
         "int"},
};

Test(serde, evolution) {
        kb_conf_t *c = conf_with("avro", reg.fr_url);
        kb_serde_t *sd = new_serde(c, NULL);
        size_t i;
        for (i = 0; i < sizeof(evo_cases) / sizeof(*evo_cases); i++) {
                const evo_case_t *ec = &evo_cases[i];
                json_t *j = item_json();
                char subject[64], *buf, err[512];
                size_t len;
                kb_item_t it;
                kb_codec_res_t r;

                /* other producers write input as a plain string */
                {
                        char *in = json_dumps(json_object_get(j, "input"),
                                              JSON_COMPACT);
                        json_object_set_new(j, "input", json_string(in));
                        free(in);
                }
                json_object_set_new(j, "priority", json_integer(3));
                json_object_set_new(j, "tags", json_pack("[s]", "x"));
                if (!strcmp(ec->name, "promotions_and_plain_types"))
                        json_object_set_new(j, "deadline",
                                            json_integer(2000000000));
                if (!strcmp(ec->name, "incompatible_type"))
                        json_object_set_new(j, "item_index", json_string("7"));
                snprintf(subject, sizeof(subject), "evo-%zu-value", i);
                fake_reg_register(&reg, subject, ec->schema);
                /* ids are given in registration order (the results schema
                 * is not registered yet) */
                cr_assert_eq(kb_serde_encode_with_schema(
                                     ec->schema, (int32_t)i + 1, j, &buf, &len,
                                     err, sizeof(err)),
                             KB_SERDE_OK, "%s: %s", ec->name, err);
                r = kb_serde_item_decode(sd, "kbatch.items", NULL, buf, len, 0,
                                         &it, err, sizeof(err));
                if (ec->expect_ok) {
                        cr_assert_eq(r, KB_CODEC_OK, "%s: %s", ec->name, err);
                        cr_assert_str_eq(it.batch_id, "b-1");
                        cr_assert_eq(it.item_index, 7);
                        cr_assert_str_eq(it.model, "gpt-test");
                        cr_assert(json_is_object(it.input));
                        cr_assert_str_eq(
                                json_string_value(
                                        json_object_get(it.input, "messages")
                                                ? json_object_get(
                                                          json_array_get(
                                                                  json_object_get(
                                                                          it.input,
                                                                          "mess"
                                                                          "age"
                                                                          "s"),
                                                                  0),
                                                          "content")
                                                : NULL),
                                "h\xc3\xa9llo");
                        if (!strcmp(ec->name, "lacks_optional_fields")) {
                                cr_assert_null(it.operation);
                                cr_assert_null(it.metadata);
                                cr_assert_eq(it.deadline, 0);
                        }
                        if (!strcmp(ec->name, "promotions_and_plain_types"))
                                cr_assert_eq(it.deadline, 2000000000);
                } else {
                        cr_assert_eq(r, KB_CODEC_UNDECODABLE, "%s", ec->name);
                        cr_assert(strstr(err, ec->err_part), "%s: %s", ec->name,
                                  err);
                        cr_assert(strstr(err, "cannot be read as "
                                              "kbatch.v1.BatchItem"),
                                  "%s", err);
                }
                kb_item_clear(&it);
                free(buf);
                json_decref(j);
        }
        kb_serde_destroy(sd);
        kb_conf_destroy(c);
}

/* ---- decoding errors: DLQ deserialization_error, precise message ---- */

typedef enum { MK_RAW, MK_CUT, MK_TRAIL, MK_CORRUPT, MK_ID } mk_t;

typedef struct err_case_s {
        const char *name;
        mk_t mk;
        const char *raw; /* MK_RAW */
        size_t raw_len;
        int arg; /* MK_CUT: bytes removed; MK_ID: the id */
        const char *err_part;
} err_case_t;

static const err_case_t err_cases[] = {
        {"empty", MK_RAW, "", 0, 0, "empty value"},
        {"json_value", MK_RAW, "{\"batch_id\":\"b\"}", 16, 0,
         "wrong magic byte 0x7b: the Confluent wire format starts with 0x00 "
         "(the value looks like JSON"},
        {"magic_1", MK_RAW, "\x01\x00\x00\x00\x01\x02", 6, 0,
         "wrong magic byte 0x01"},
        {"short", MK_RAW, "\x00\x00\x01", 3, 0,
         "value of 3 bytes is too short for the Confluent wire format"},
        {"unknown_id", MK_ID, NULL, 0, 4242,
         "schema id 4242 not found in the schema registry"},
        {"truncated", MK_CUT, NULL, 0, 10,
         "Avro value truncated or corrupt "
         "(schema id 1"},
        {"header_only", MK_CUT, NULL, 0, -1,
         "Avro value truncated or corrupt "
         "(schema id 1, 0 bytes"},
        {"trailing_bytes", MK_TRAIL, NULL, 0, 0,
         "corrupt: 1 bytes left over after the record"},
        {"huge_length", MK_CORRUPT, NULL, 0, 0,
         "truncated: string at byte 0 needs 2147483647 bytes"},
        {"negative_length", MK_CORRUPT, NULL, 0, 1,
         "corrupt: string at byte 0 has a negative length (-1)"},
        {"long_varint", MK_CORRUPT, NULL, 0, 2,
         "corrupt: string at byte 0 is a varint of more than 10 bytes"},
};

Test(serde, decoding_errors) {
        kb_conf_t *c = conf_with("avro", reg.fr_url);
        kb_serde_t *sd = new_serde(c, NULL);
        json_t *j = item_json();
        char *good, err[512];
        size_t good_len, i;

        cr_assert_eq(kb_serde_encode(sd, "kbatch.items", KB_MSG_BATCH_ITEM, j,
                                     &good, &good_len, err, sizeof(err)),
                     KB_SERDE_OK, "%s", err);
        cr_assert_eq(good[4], 1); /* the first id of the fake */
        for (i = 0; i < sizeof(err_cases) / sizeof(*err_cases); i++) {
                const err_case_t *ec = &err_cases[i];
                char buf[4096];
                size_t len = 0;
                kb_item_t it;
                json_t *o = NULL;
                switch (ec->mk) {
                case MK_RAW:
                        memcpy(buf, ec->raw, ec->raw_len);
                        len = ec->raw_len;
                        break;
                case MK_CUT:
                        len = ec->arg < 0 ? 5 : good_len - (size_t)ec->arg;
                        memcpy(buf, good, len);
                        break;
                case MK_TRAIL:
                        memcpy(buf, good, good_len);
                        buf[good_len] = 0x02;
                        len = good_len + 1;
                        break;
                case MK_CORRUPT: {
                        /* the first field's string length: huge, -1, or a
                         * varint that never ends */
                        static const char *const lens[] = {
                                "\xfe\xff\xff\xff\x0f", "\x01",
                                "\xff\xff\xff\xff\xff\xff\xff\xff\xff"
                                "\xff\x01"};
                        size_t ll = strlen(lens[ec->arg]);
                        memcpy(buf, good, 5);
                        memcpy(buf + 5, lens[ec->arg], ll);
                        memcpy(buf + 5 + ll, good + 6, good_len - 6);
                        len = good_len - 1 + ll;
                        break;
                }
                case MK_ID:
                        memcpy(buf, good, good_len);
                        buf[1] = (char)(ec->arg >> 24);
                        buf[2] = (char)(ec->arg >> 16);
                        buf[3] = (char)(ec->arg >> 8);
                        buf[4] = (char)ec->arg;
                        len = good_len;
                        break;
                }
                cr_assert_eq(kb_serde_item_decode(sd, "kbatch.items", NULL, buf,
                                                  len, 0, &it, err,
                                                  sizeof(err)),
                             KB_CODEC_UNDECODABLE, "%s: %s", ec->name, err);
                cr_assert(strstr(err, ec->err_part), "%s: '%s'", ec->name, err);
                kb_item_clear(&it);
                cr_assert_eq(kb_serde_decode(sd, "kbatch.items",
                                             KB_MSG_BATCH_ITEM, buf, len, &o,
                                             err, sizeof(err)),
                             KB_SERDE_UNDECODABLE, "%s", ec->name);
                cr_assert_null(o);
        }
        /* the registry answered every time: healthy */
        cr_assert(kb_serde_healthy(sd, err, sizeof(err)), "%s", err);
        free(good);
        json_decref(j);
        kb_serde_destroy(sd);
        kb_conf_destroy(c);
}

/* Input that is not a JSON object inside a valid record: addressable, so a
 * failed result (invalid_item), not a DLQ copy. */
Test(serde, invalid_input_is_invalid_item) {
        kb_conf_t *c = conf_with("avro", reg.fr_url);
        kb_serde_t *sd = new_serde(c, NULL);
        json_t *j = item_json();
        char *buf, err[512];
        size_t len;
        kb_item_t it;
        json_object_set_new(j, "input", json_string("not json {"));
        cr_assert_eq(kb_serde_encode(sd, "kbatch.items", KB_MSG_BATCH_ITEM, j,
                                     &buf, &len, err, sizeof(err)),
                     KB_SERDE_OK, "%s", err);
        cr_assert_eq(kb_serde_item_decode(sd, "kbatch.items", "kbatch.results",
                                          buf, len, 0, &it, err, sizeof(err)),
                     KB_CODEC_INVALID);
        cr_assert(strstr(err, "'input' is not a JSON object"), "%s", err);
        cr_assert_str_eq(it.batch_id, "b-1");
        kb_item_clear(&it);
        free(buf);
        json_decref(j);
        kb_serde_destroy(sd);
        kb_conf_destroy(c);
}

/* ---- the registry down: RETRY, never UNDECODABLE ------------------------ */

Test(serde, registry_down_is_retry_then_recovers) {
        kb_conf_t *c = conf_with("avro", reg.fr_url);
        kb_serde_t *sd = new_serde(c, NULL), *sd2;
        json_t *j = item_json();
        char *buf, err[512];
        size_t len;
        kb_item_t it;
        int port = reg.fr_port, i;
        kb_codec_res_t r = KB_CODEC_RETRY;

        cr_assert_eq(kb_serde_encode(sd, "kbatch.items", KB_MSG_BATCH_ITEM, j,
                                     &buf, &len, err, sizeof(err)),
                     KB_SERDE_OK, "%s", err);
        fake_reg_stop(&reg);
        /* a fresh process: nothing cached */
        sd2 = new_serde(c, NULL);
        cr_assert_eq(kb_serde_item_decode(sd2, "kbatch.items", NULL, buf, len,
                                          0, &it, err, sizeof(err)),
                     KB_CODEC_RETRY);
        cr_assert(strstr(err, "schema registry unavailable"), "%s", err);
        cr_assert_not(kb_serde_healthy(sd2, err, sizeof(err)));
        cr_assert(strstr(err, "schema registry unavailable for"), "%s", err);
        cr_assert(strstr(err, "/schemas/ids/1"), "%s", err);
        /* the encoding side waits too (results schema id unknown) */
        cr_assert_eq(kb_serde_item_decode(sd2, "kbatch.items", "kbatch.results",
                                          buf, len, 0, &it, err, sizeof(err)),
                     KB_CODEC_RETRY);
        /* the first process keeps working from its cache */
        cr_assert_eq(kb_serde_item_decode(sd, "kbatch.items", NULL, buf, len, 0,
                                          &it, err, sizeof(err)),
                     KB_CODEC_OK, "%s", err);
        kb_item_clear(&it);

        /* back, with the same schema under the same id */
        fake_reg_start(&reg, port, NULL);
        fake_reg_register(&reg, "kbatch.items-value",
                          kb_serde_schema_text(KB_MSG_BATCH_ITEM));
        for (i = 0; i < 100 && r == KB_CODEC_RETRY; i++) {
                struct timespec ts = {0, 50 * 1000 * 1000};
                nanosleep(&ts, NULL);
                r = kb_serde_item_decode(sd2, "kbatch.items", NULL, buf, len, 0,
                                         &it, err, sizeof(err));
        }
        cr_assert_eq(r, KB_CODEC_OK, "%s", err);
        cr_assert_str_eq(it.item_id, "req-7");
        cr_assert(kb_serde_healthy(sd2, err, sizeof(err)), "%s", err);
        kb_item_clear(&it);
        free(buf);
        json_decref(j);
        kb_serde_destroy(sd2);
        kb_serde_destroy(sd);
        kb_conf_destroy(c);
}

/* Look-up only: until the schema is registered, encoding waits and the
 * serde is not healthy; nothing is dead-lettered. */
Test(serde, lookup_only_waits_for_registration) {
        kb_conf_t *c;
        kb_serde_t *sd;
        char *buf, err[512];
        size_t len;
        json_t *j = item_json();
        setenv("KBATCH_SERDE_AUTO_REGISTER", "false", 1);
        c = conf_with("avro", reg.fr_url);
        unsetenv("KBATCH_SERDE_AUTO_REGISTER");
        sd = new_serde(c, NULL);
        cr_assert_eq(kb_serde_encode(sd, "kbatch.items", KB_MSG_BATCH_ITEM, j,
                                     &buf, &len, err, sizeof(err)),
                     KB_SERDE_RETRY);
        cr_assert(strstr(err, "not registered"), "%s", err);
        cr_assert_not(kb_serde_healthy(sd, err, sizeof(err)));
        cr_assert(strstr(err, "cannot publish kbatch.v1.BatchItem to "
                              "kbatch.items"),
                  "%s", err);
        fake_reg_register(&reg, "kbatch.items-value",
                          kb_serde_schema_text(KB_MSG_BATCH_ITEM));
        /* "not found" is remembered for KB_REGISTRY_NEG_TTL_MS: a new
         * process sees the registration at once */
        kb_serde_destroy(sd);
        sd = new_serde(c, NULL);
        cr_assert_eq(kb_serde_encode(sd, "kbatch.items", KB_MSG_BATCH_ITEM, j,
                                     &buf, &len, err, sizeof(err)),
                     KB_SERDE_OK, "%s", err);
        cr_assert(kb_serde_healthy(sd, err, sizeof(err)), "%s", err);
        free(buf);
        json_decref(j);
        kb_serde_destroy(sd);
        kb_conf_destroy(c);
}

/* Asynchronous mode: the first decode starts the fetch on the loop and
 * returns RETRY without blocking; after the loop ran, it decodes. */
Test(serde, async_fetch_on_the_loop) {
        kb_conf_t *c = conf_with("avro", reg.fr_url);
        kb_serde_t *enc = new_serde(c, NULL), *sd;
        kb_loop_t *loop;
        json_t *j = item_json();
        char *buf, err[512];
        size_t len;
        kb_item_t it;
        uint64_t gen;
        int i;

        cr_assert_eq(kb_serde_encode(enc, "kbatch.items", KB_MSG_BATCH_ITEM, j,
                                     &buf, &len, err, sizeof(err)),
                     KB_SERDE_OK, "%s", err);
        loop = kb_loop_new(err, sizeof(err));
        cr_assert(loop);
        sd = new_serde(c, loop);
        gen = kb_serde_generation(sd);
        cr_assert_eq(kb_serde_item_decode(sd, "kbatch.items", "kbatch.results",
                                          buf, len, 0, &it, err, sizeof(err)),
                     KB_CODEC_RETRY);
        cr_assert(strstr(err, "waiting for the schema registry"), "%s", err);
        cr_assert_eq(kb_loop_transfers(loop), 1); /* the results subject */
        for (i = 0; i < 200; i++) {
                kb_codec_res_t r;
                kb_loop_drive(loop, 20);
                r = kb_serde_item_decode(sd, "kbatch.items", "kbatch.results",
                                         buf, len, 0, &it, err, sizeof(err));
                if (r == KB_CODEC_OK)
                        break;
                cr_assert_eq(r, KB_CODEC_RETRY, "%s", err);
        }
        cr_assert_str_eq(it.item_id, "req-7");
        cr_assert_gt(kb_serde_generation(sd), gen);
        kb_item_clear(&it);
        kb_serde_destroy(sd);
        kb_loop_destroy(loop);
        free(buf);
        json_decref(j);
        kb_serde_destroy(enc);
        kb_conf_destroy(c);
}
