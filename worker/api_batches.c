/* api_batches: OpenAI Batches (POST/GET /v1/batches, GET
 * /v1/batches/{id}, POST /v1/batches/{id}/cancel).
 *
 * Creating a batch writes its record (state "validating"), reads the input
 * file back from Kafka and publishes its items exactly as `kbatch submit`
 * does (publish.h), then writes the record again (state "in_progress").
 * Progress comes from the aggregator's batch-state (apistore.h); output and
 * error files are what `kbatch collect` writes (kb_cmd_collect_to), read
 * from the results topic when asked for. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api_int.h"
#include "batchfile.h"
#include "cmd.h"
#include "codec.h"
#include "log.h"
#include "loop.h"
#include "publish.h"
#include "serde.h"

/* ---- result files ---- */

void kb_api_result_file_id(const char *batch_id, const char *which,
                           char *id_out) {
        snprintf(id_out, 64, "file-%s-%s", batch_id + 6, which);
}

int kb_api_result_file_parse(const char *id, char *batch_id, int *errors) {
        size_t n = strlen(id);
        if (n < 5 + 7 || strncmp(id, "file-", 5) || n - 5 > 50)
                return 0;
        if (!strcmp(id + n - 7, "-output"))
                *errors = 0;
        else if (!strcmp(id + n - 6, "-error"))
                *errors = 1;
        else
                return 0;
        snprintf(batch_id, 64, "batch_%.*s", (int)(n - 5 - (*errors ? 6 : 7)),
                 id + 5);
        return 1;
}

int kb_api_result_file(kb_api_t *ap, const char *batch_id, int errors,
                       int fmt, char **body, size_t *len, char *errstr,
                       size_t errstr_size) {
        char *ok = NULL, *bad = NULL;
        size_t ok_len = 0, bad_len = 0;
        FILE *fo = open_memstream(&ok, &ok_len), *fe;
        int r;
        if (!fo || !(fe = open_memstream(&bad, &bad_len))) {
                if (fo)
                        fclose(fo);
                free(ok);
                snprintf(errstr, errstr_size, "out of memory");
                return -1;
        }
        r = kb_cmd_collect_to(ap->ap_conf, batch_id, fmt, fo, fe, errstr,
                              errstr_size);
        fclose(fo);
        fclose(fe);
        if (r < 0) {
                free(ok);
                free(bad);
                return -1;
        }
        if (errors) {
                free(ok);
                *body = bad;
                *len = bad_len;
        } else {
                free(bad);
                *body = ok;
                *len = ok_len;
        }
        return 0;
}

/* ---- the batch object ---- */

static json_t *int_or_null(int64_t v) {
        return v > 0 ? json_integer(v) : json_null();
}

/* The OpenAI status of a record and its aggregator state (may be NULL);
 * *complete: every item is terminal. */
static const char *openai_status(json_t *rec, json_t *state, int *complete) {
        const char *s = json_string_value(json_object_get(rec, "state"));
        int64_t total = json_integer_value(json_object_get(rec, "items_total"));
        *complete = 0;
        if (s && !strcmp(s, "validating"))
                return "validating";
        if (s && !strcmp(s, "failed"))
                return "failed";
        if (state && json_integer_value(json_object_get(state, "done")) >=
                             total) {
                const char *st =
                        json_string_value(json_object_get(state, "status"));
                *complete = 1;
                if (st && !strcmp(st, "cancelled"))
                        return "cancelled";
                if (st && !strcmp(st, "expired"))
                        return "expired";
                return "completed";
        }
        if (json_object_get(rec, "cancel_requested_at"))
                return "cancelling";
        return "in_progress";
}

static json_t *openai_batch(kb_api_t *ap, json_t *rec) {
        const char *id = json_string_value(json_object_get(rec, "id"));
        json_t *state = kb_apistore_state(ap->ap_store, id), *o;
        int complete;
        const char *status = openai_status(rec, state, &complete);
        int64_t total = json_integer_value(json_object_get(rec, "items_total"));
        int64_t succeeded = 0, done = 0, completed_at = 0, cancel_at;
        char out_id[64], err_id[64];

        if (state) {
                succeeded = json_integer_value(
                        json_object_get(state, "succeeded"));
                done = json_integer_value(json_object_get(state, "done"));
                completed_at = json_integer_value(
                                       json_object_get(state, "completed_at")) /
                               1000;
        }
        cancel_at = json_integer_value(
                json_object_get(rec, "cancel_requested_at"));
        kb_api_result_file_id(id, "output", out_id);
        kb_api_result_file_id(id, "error", err_id);
        o = json_pack("{sO ss sO sO sO ss sO sO sO}", "id",
                      json_object_get(rec, "id"), "object", "batch",
                      "endpoint", json_object_get(rec, "endpoint"),
                      "input_file_id", json_object_get(rec, "input_file_id"),
                      "completion_window",
                      json_object_get(rec, "completion_window"), "status",
                      status, "created_at", json_object_get(rec, "created_at"),
                      "expires_at", json_object_get(rec, "expires_at"),
                      "metadata",
                      json_object_get(rec, "metadata")
                              ? json_object_get(rec, "metadata")
                              : json_null());
        if (!o) {
                json_decref(state);
                return NULL;
        }
        json_object_set(o, "errors",
                        json_object_get(rec, "errors")
                                ? json_object_get(rec, "errors")
                                : json_null());
        json_object_set_new(o, "output_file_id",
                            complete && succeeded ? json_string(out_id)
                                                  : json_null());
        json_object_set_new(o, "error_file_id",
                            complete && done > succeeded ? json_string(err_id)
                                                         : json_null());
        json_object_set_new(o, "in_progress_at",
                            int_or_null(json_integer_value(json_object_get(
                                    rec, "in_progress_at"))));
        json_object_set_new(o, "finalizing_at",
                            complete ? int_or_null(completed_at) : json_null());
        json_object_set_new(o, "completed_at",
                            complete && !strcmp(status, "completed")
                                    ? int_or_null(completed_at)
                                    : json_null());
        json_object_set_new(o, "failed_at",
                            !strcmp(status, "failed")
                                    ? int_or_null(json_integer_value(
                                              json_object_get(rec,
                                                              "failed_at")))
                                    : json_null());
        json_object_set_new(o, "expired_at",
                            !strcmp(status, "expired")
                                    ? int_or_null(completed_at)
                                    : json_null());
        json_object_set_new(o, "cancelling_at", int_or_null(cancel_at));
        json_object_set_new(o, "cancelled_at",
                            !strcmp(status, "cancelled")
                                    ? int_or_null(completed_at)
                                    : json_null());
        json_object_set_new(
                o, "request_counts",
                json_pack("{sI sI sI}", "total", (json_int_t)total,
                          "completed", (json_int_t)succeeded, "failed",
                          (json_int_t)(done - succeeded)));
        json_decref(state);
        return o;
}

/* The record of batch id when tenant owns it and flavour matches (new
 * reference), else NULL. */
static json_t *owned_batch(kb_api_req_t *rq, const char *flavour) {
        json_t *b = kb_apistore_batch(rq->rq_api->ap_store, rq->rq_id);
        const char *tn = json_string_value(json_object_get(b, "tenant"));
        const char *fl = json_string_value(json_object_get(b, "flavour"));
        if (b && tn && !strcmp(tn, rq->rq_tenant) && fl &&
            !strcmp(fl, flavour))
                return b;
        json_decref(b);
        return NULL;
}

/* ---- create ---- */

/* Publishing a file's lines as the batch's items. */
typedef struct {
        kb_pub_t *cp_pub;
        kb_pub_lines_t *cp_lines;
        kb_apiwait_t *cp_wait;
        char cp_err[1024];
        int cp_failed;
} create_pub_t;

static int pub_line(void *opaque, char *s, size_t len, int64_t lineno,
                    int too_long) {
        create_pub_t *cp = opaque;
        int64_t before = kb_pub_count(cp->cp_pub);
        if (too_long) {
                snprintf(cp->cp_err, sizeof(cp->cp_err),
                         "line %lld is too long (the file changed?)",
                         (long long)lineno);
                return cp->cp_failed = 1;
        }
        if (kb_pub_line(cp->cp_pub, s, len, lineno == 1, NULL, cp->cp_err,
                        sizeof(cp->cp_err)))
                return cp->cp_failed = 1;
        if (kb_pub_count(cp->cp_pub) > before)
                kb_apiwait_sent(cp->cp_wait, 1);
        return 0;
}

static int pub_chunk(void *opaque, const char *buf, size_t len) {
        create_pub_t *cp = opaque;
        return kb_pub_lines_feed(cp->cp_lines, buf, len);
}

/* Publishes the items of file (a header) as batch rec. 0, or -1 with
 * errstr. */
static int publish_file(kb_api_t *ap, json_t *rec, json_t *file,
                        int64_t deadline, char *errstr, size_t errstr_size) {
        const char *id = json_string_value(json_object_get(rec, "id"));
        int64_t total = json_integer_value(json_object_get(file, "lines"));
        kb_serde_t *sd;
        kb_bf_batch_t b;
        create_pub_t cp;
        int ret = -1;

        memset(&cp, 0, sizeof(cp));
        if (!(sd = kb_serde_new(ap->ap_conf, NULL, errstr, errstr_size)))
                return -1;
        memset(&b, 0, sizeof(b));
        b.bb_batch_id = id;
        b.bb_items_total = total;
        b.bb_deadline = deadline;
        b.bb_metadata = json_object_get(rec, "metadata");
        b.bb_submitted_at = kb_wall_ms();
        if (!(cp.cp_wait = kb_apiwait_new()) ||
            !(cp.cp_pub = kb_pub_new(kb_apistore_producer(ap->ap_store), sd,
                                     ap->ap_conf, KB_BF_AUTO, &b,
                                     cp.cp_wait)) ||
            !(cp.cp_lines = kb_pub_lines_new(
                      2 * (size_t)ap->ap_conf->worker_max_item_bytes, pub_line,
                      &cp))) {
                snprintf(errstr, errstr_size, "out of memory");
                goto out;
        }
        if (kb_apistore_file_read(ap->ap_store, file, pub_chunk, &cp, errstr,
                                  errstr_size) ||
            kb_pub_lines_end(cp.cp_lines)) {
                if (cp.cp_failed)
                        snprintf(errstr, errstr_size, "%s", cp.cp_err);
                goto out;
        }
        if (kb_pub_count(cp.cp_pub) != total) {
                snprintf(errstr, errstr_size,
                         "the file has %lld requests, %lld when uploaded",
                         (long long)kb_pub_count(cp.cp_pub), (long long)total);
                goto out;
        }
        if (kb_apiwait_wait(cp.cp_wait, 600000, errstr, errstr_size))
                goto out;
        ret = 0;
out:
        if (cp.cp_wait) {
                char e[256];
                kb_apiwait_wait(cp.cp_wait, 60000, e, sizeof(e));
        }
        kb_pub_lines_destroy(cp.cp_lines);
        kb_pub_destroy(cp.cp_pub);
        kb_apiwait_destroy(cp.cp_wait);
        kb_serde_destroy(sd);
        return ret;
}

/* The idempotency digests of the request: 1 and key_digest (the tenant's
 * key) and payload_digest set when an Idempotency-Key came; 0 when none;
 * -1 after queuing the 400. */
static int idempotency(kb_api_req_t *rq, json_t *body, char *key_digest,
                       char *payload_digest, enum MHD_Result *queued) {
        const char *k = MHD_lookup_connection_value(
                rq->rq_conn, MHD_HEADER_KIND, "Idempotency-Key");
        char *s = NULL, *dump;
        size_t n;
        if (!k)
                return 0;
        n = strlen(k);
        if (n < 8 || n > 128) {
                *queued = kb_api_error(rq, 400, "Idempotency-Key",
                                       "Idempotency-Key must be 8-128 "
                                       "characters");
                return -1;
        }
        dump = json_dumps(body, JSON_COMPACT | JSON_SORT_KEYS);
        if (asprintf(&s, "%s\n%s\n%s", rq->rq_tenant,
                     rq->rq_flavour == KB_API_ANTHROPIC ? "anthropic"
                                                        : "openai",
                     k) < 0 ||
            !dump || kb_bf_batch_id_from_key(s, key_digest) ||
            kb_bf_batch_id_from_key(dump, payload_digest)) {
                free(s);
                free(dump);
                *queued = MHD_NO;
                return -1;
        }
        free(s);
        free(dump);
        return 1;
}

static const char *const openai_endpoints[] = {
        "/v1/chat/completions", "/v1/responses", "/v1/embeddings",
        "/v1/completions", NULL};

/* Checks metadata (NULL, null or an object of up to 16 strings). */
static int check_metadata(kb_api_req_t *rq, json_t *md,
                          enum MHD_Result *queued) {
        const char *k;
        json_t *v;
        if (!md || json_is_null(md))
                return 0;
        if (!json_is_object(md) || json_object_size(md) > KB_METADATA_MAX) {
                *queued = kb_api_error(rq, 400, "metadata",
                                       "'metadata' must be an object of up to "
                                       "%d string values",
                                       KB_METADATA_MAX);
                return -1;
        }
        json_object_foreach(md, k, v) {
                if (!json_is_string(v) || strlen(k) < 1 || strlen(k) > 64 ||
                    json_string_length(v) > 512) {
                        *queued = kb_api_error(
                                rq, 400, "metadata",
                                "'metadata' keys must be 1-64 characters and "
                                "values strings of up to 512");
                        return -1;
                }
        }
        return 0;
}

static enum MHD_Result create_openai(kb_api_req_t *rq) {
        kb_api_t *ap = rq->rq_api;
        json_t *body, *file = NULL, *rec = NULL, *prior, *md;
        const char *file_id, *endpoint, *window, *tn;
        char id[64], key_digest[KB_BF_BATCH_ID_SIZE],
                payload_digest[KB_BF_BATCH_ID_SIZE], errstr[1024];
        int64_t window_ms, now;
        enum MHD_Result ret = MHD_NO;
        int i, idem;

        if (!(body = kb_api_body_object(rq)))
                return MHD_YES;
        file_id = json_string_value(json_object_get(body, "input_file_id"));
        endpoint = json_string_value(json_object_get(body, "endpoint"));
        window = json_string_value(json_object_get(body, "completion_window"));
        md = json_object_get(body, "metadata");
        if (json_object_get(body, "requests")) {
                ret = kb_api_error(rq, 400, "requests",
                                   "inline 'requests' are not supported yet: "
                                   "upload a file and pass input_file_id");
                goto out;
        }
        if (!file_id) {
                ret = kb_api_error(rq, 400, "input_file_id",
                                   "'input_file_id' (a string) is required");
                goto out;
        }
        if (!endpoint) {
                ret = kb_api_error(rq, 400, "endpoint",
                                   "'endpoint' (a string) is required");
                goto out;
        }
        for (i = 0; openai_endpoints[i] && strcmp(openai_endpoints[i], endpoint);
             i++)
                ;
        if (!openai_endpoints[i]) {
                ret = kb_api_error(rq, 400, "endpoint",
                                   "'endpoint' must be /v1/chat/completions, "
                                   "/v1/responses, /v1/embeddings or "
                                   "/v1/completions");
                goto out;
        }
        if (!window || (window_ms = kb_bf_duration_parse(window)) <= 0) {
                ret = kb_api_error(rq, 400, "completion_window",
                                   "'completion_window' must be a duration "
                                   "such as \"24h\" or \"90m\"");
                goto out;
        }
        if (check_metadata(rq, md, &ret))
                goto out;
        if ((idem = idempotency(rq, body, key_digest, payload_digest, &ret)) <
            0)
                goto out;
        if (idem && (prior = kb_apistore_batch_by_idem(ap->ap_store,
                                                       key_digest))) {
                const char *pd = json_string_value(
                        json_object_get(prior, "payload_digest"));
                if (pd && !strcmp(pd, payload_digest))
                        ret = kb_api_reply_json(rq, 200,
                                                openai_batch(ap, prior));
                else
                        ret = kb_api_error(rq, 409, "Idempotency-Key",
                                           "this Idempotency-Key was used for "
                                           "another request (batch %s)",
                                           json_string_value(json_object_get(
                                                   prior, "id")));
                json_decref(prior);
                goto out;
        }
        file = kb_apistore_file(ap->ap_store, file_id);
        tn = json_string_value(json_object_get(file, "tenant"));
        if (!file || !tn || strcmp(tn, rq->rq_tenant)) {
                ret = kb_api_error(rq, 404, "input_file_id", "no such file: %s",
                                   file_id);
                goto out;
        }
        kb_api_new_id("batch_", id);
        now = kb_wall_ms();
        rec = json_pack("{ss ss ss ss ss ss sO sI sI sO ss}", "id", id,
                        "tenant", rq->rq_tenant, "flavour", "openai",
                        "endpoint", endpoint, "input_file_id", file_id,
                        "completion_window", window, "metadata",
                        md ? md : json_null(), "created_at",
                        (json_int_t)(now / 1000), "expires_at",
                        (json_int_t)((now + window_ms) / 1000), "items_total",
                        json_object_get(file, "lines"), "state", "validating");
        if (!rec)
                goto out;
        if (idem) {
                json_object_set_new(rec, "idempotency",
                                    json_string(key_digest));
                json_object_set_new(rec, "payload_digest",
                                    json_string(payload_digest));
        }
        if (kb_apistore_put(ap->ap_store, KB_TOPIC_API_BATCHES, id, rec, -1,
                            errstr, sizeof(errstr))) {
                ret = kb_api_error(rq, 503, NULL, "cannot store the batch: %s",
                                   errstr);
                goto out;
        }
        if (publish_file(ap, rec, file, now + window_ms, errstr,
                         sizeof(errstr))) {
                char e2[256];
                kb_log(KB_LOG_ERROR, "api", "batch %s: publishing failed: %s",
                       id, errstr);
                json_object_set_new(rec, "state", json_string("failed"));
                json_object_set_new(rec, "failed_at",
                                    json_integer(kb_wall_ms() / 1000));
                json_object_set_new(
                        rec, "errors",
                        json_pack("{ss s[{ss ss}]}", "object", "list", "data",
                                  "code", "publish_failed", "message",
                                  errstr));
                kb_apistore_put(ap->ap_store, KB_TOPIC_API_BATCHES, id, rec,
                                -1, e2, sizeof(e2));
                ret = kb_api_error(rq, 503, NULL,
                                   "cannot publish the batch: %s", errstr);
                goto out;
        }
        json_object_set_new(rec, "state", json_string("in_progress"));
        json_object_set_new(rec, "in_progress_at",
                            json_integer(kb_wall_ms() / 1000));
        if (kb_apistore_put(ap->ap_store, KB_TOPIC_API_BATCHES, id, rec, -1,
                            errstr, sizeof(errstr))) {
                ret = kb_api_error(rq, 503, NULL, "cannot store the batch: %s",
                                   errstr);
                goto out;
        }
        kb_log(KB_LOG_INFO, "api", "tenant %s created batch %s: %lld items",
               rq->rq_tenant, id,
               (long long)json_integer_value(json_object_get(rec,
                                                             "items_total")));
        ret = kb_api_reply_json(rq, 200, openai_batch(ap, rec));
out:
        json_decref(rec);
        json_decref(file);
        json_decref(body);
        return ret;
}

/* ---- cancel ---- */

/* Publishes the cancel command and records the request. 0, or -1 with
 * errstr. */
static int cancel_batch(kb_api_t *ap, json_t *rec, char *errstr,
                        size_t errstr_size) {
        const char *id = json_string_value(json_object_get(rec, "id"));
        char *payload = kb_cmd_cancel_payload(id, "cancelled through the API");
        kb_apiwait_t *w = kb_apiwait_new();
        rd_kafka_resp_err_t err;
        json_t *nrec;
        int ret = -1;
        if (!payload || !w) {
                snprintf(errstr, errstr_size, "out of memory");
                goto out;
        }
        err = rd_kafka_producev(
                kb_apistore_producer(ap->ap_store),
                RD_KAFKA_V_TOPIC(ap->ap_conf->topics_name[KB_TOPIC_CONTROL]),
                RD_KAFKA_V_KEY(id, strlen(id)),
                RD_KAFKA_V_VALUE(payload, strlen(payload)),
                RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                RD_KAFKA_V_OPAQUE(w), RD_KAFKA_V_END);
        if (err) {
                snprintf(errstr, errstr_size, "%s", rd_kafka_err2str(err));
                goto out;
        }
        kb_apiwait_sent(w, 1);
        if (kb_apiwait_wait(w, 60000, errstr, errstr_size))
                goto out;
        nrec = json_deep_copy(rec);
        json_object_set_new(nrec, "cancel_requested_at",
                            json_integer(kb_wall_ms() / 1000));
        ret = kb_apistore_put(ap->ap_store, KB_TOPIC_API_BATCHES, id, nrec, -1,
                              errstr, errstr_size);
        json_decref(nrec);
out:
        free(payload);
        kb_apiwait_destroy(w);
        return ret;
}

enum MHD_Result kb_api_batches(kb_api_req_t *rq) {
        kb_api_t *ap = rq->rq_api;
        enum MHD_Result ret;
        json_t *rec, *all;
        char errstr[1024];
        int complete;

        switch (rq->rq_route) {
        case R_BATCHES:
                if (!strcmp(rq->rq_method, "POST"))
                        return create_openai(rq);
                {
                        int64_t limit;
                        const char *after = MHD_lookup_connection_value(
                                rq->rq_conn, MHD_GET_ARGUMENT_KIND, "after");
                        if (kb_api_query_int(rq, "limit", 1, 100, 20, &limit,
                                             &ret))
                                return ret;
                        all = kb_apistore_batches(ap->ap_store, rq->rq_tenant,
                                                  "openai");
                        ret = kb_api_reply_json(
                                rq, 200,
                                kb_api_page(all, limit, after, NULL,
                                            openai_batch, ap, 0));
                        json_decref(all);
                        return ret;
                }
        case R_BATCH:
        case R_BATCH_CANCEL:
                if (!(rec = owned_batch(rq, "openai")))
                        return kb_api_error(rq, 404, "batch_id",
                                            "no such batch: %s", rq->rq_id);
                if (rq->rq_route == R_BATCH_CANCEL) {
                        json_t *state =
                                kb_apistore_state(ap->ap_store, rq->rq_id);
                        openai_status(rec, state, &complete);
                        json_decref(state);
                        if (!complete &&
                            !json_object_get(rec, "cancel_requested_at")) {
                                if (cancel_batch(ap, rec, errstr,
                                                 sizeof(errstr))) {
                                        json_decref(rec);
                                        return kb_api_error(
                                                rq, 503, NULL,
                                                "cannot cancel: %s", errstr);
                                }
                                json_decref(rec);
                                rec = kb_apistore_batch(ap->ap_store,
                                                        rq->rq_id);
                        }
                }
                ret = kb_api_reply_json(rq, 200, openai_batch(ap, rec));
                json_decref(rec);
                return ret;
        default:
                return kb_api_error(rq, 404, NULL,
                                    "not implemented yet: %s",
                                    rq->rq_method);
        }
}
