/* api_batches: OpenAI Batches (POST/GET /v1/batches, GET
 * /v1/batches/{id}, POST /v1/batches/{id}/cancel, GET
 * /v1/batches/{id}/items) and Anthropic Message Batches
 * (/v1/messages/batches...).
 *
 * Creating a batch writes its record (state "validating"), reads the input
 * file back from Kafka and publishes its items exactly as `kbatch submit`
 * does (publish.h), then writes the record again (state "in_progress").
 * Inline requests (OpenAI `requests`, every Anthropic create) are validated
 * the same way and stored as a file of the tenant first, so every batch has
 * an input file (its custom_ids, for the items listing).
 * Progress comes from the aggregator's batch-state (apistore.h); output and
 * error files are what `kbatch collect` writes (kb_cmd_collect_to), read
 * from the results topic when asked for. */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>
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

/* A result file streamed: a thread runs collect into a pipe, the response
 * reads the other end. Freed by the last of the two. */
typedef struct {
        kb_api_t *rs_api;
        char rs_id[KB_BATCH_ID_MAX + 1];
        int rs_which; /* 0 successes, 1 the others, 2 both */
        int rs_fmt;
        int rs_rfd, rs_wfd;
        atomic_int rs_refs;
        atomic_int rs_failed; /* collect failed: the body is cut short */
} rstream_t;

static void rstream_unref(rstream_t *rs) {
        if (atomic_fetch_sub(&rs->rs_refs, 1) == 1)
                free(rs);
}

static void *rstream_main(void *arg) {
        rstream_t *rs = arg;
        FILE *w = fdopen(rs->rs_wfd, "w"), *null = fopen("/dev/null", "w");
        char errstr[1024];
        if (!w || !null ||
            kb_cmd_collect_to(rs->rs_api->ap_conf, rs->rs_id, rs->rs_fmt,
                              rs->rs_which == 1 ? null : w,
                              rs->rs_which == 0 ? null : w, errstr,
                              sizeof(errstr)) < 0) {
                atomic_store(&rs->rs_failed, 1);
                kb_log(KB_LOG_WARN, "api", "batch %s: results cut short: %s",
                       rs->rs_id, w && null ? errstr : "out of memory");
        }
        if (null)
                fclose(null);
        if (w)
                fclose(w); /* the reader sees the end */
        else
                close(rs->rs_wfd);
        rstream_unref(rs);
        return NULL;
}

static ssize_t rstream_read(void *cls, uint64_t pos, char *buf, size_t max) {
        rstream_t *rs = cls;
        ssize_t n;
        (void)pos;
        do
                n = read(rs->rs_rfd, buf, max);
        while (n < 0 && errno == EINTR);
        if (n > 0)
                return n;
        return n == 0 && !atomic_load(&rs->rs_failed)
                       ? MHD_CONTENT_READER_END_OF_STREAM
                       : MHD_CONTENT_READER_END_WITH_ERROR;
}

static void rstream_free(void *cls) {
        rstream_t *rs = cls;
        close(rs->rs_rfd); /* a writer still running gets EPIPE and stops */
        rstream_unref(rs);
}

enum MHD_Result kb_api_result_stream(kb_api_req_t *rq, const char *batch_id,
                                     int which, int fmt, const char *ctype) {
        rstream_t *rs = calloc(1, sizeof(*rs));
        struct MHD_Response *r;
        pthread_t thr;
        int fds[2];
        if (!rs || pipe2(fds, O_CLOEXEC)) {
                free(rs);
                return kb_api_error(rq, 503, NULL, "cannot read the results: %s",
                                    strerror(errno));
        }
        rs->rs_api = rq->rq_api;
        snprintf(rs->rs_id, sizeof(rs->rs_id), "%s", batch_id);
        rs->rs_which = which;
        rs->rs_fmt = fmt;
        rs->rs_rfd = fds[0];
        rs->rs_wfd = fds[1];
        atomic_store(&rs->rs_refs, 2);
        if (!(r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 65536,
                                                    rstream_read, rs,
                                                    rstream_free))) {
                close(fds[0]);
                close(fds[1]);
                free(rs);
                return MHD_NO;
        }
        if (pthread_create(&thr, NULL, rstream_main, rs)) {
                close(fds[1]);
                atomic_store(&rs->rs_failed, 1);
                rstream_unref(rs); /* the thread's reference */
        } else
                pthread_detach(thr);
        return kb_api_reply_response(rq, 200, r, ctype);
}

/* ---- the batch objects ---- */

static json_t *int_or_null(int64_t v) {
        return v > 0 ? json_integer(v) : json_null();
}

/* RFC 3339 UTC of epoch seconds, or null for 0. */
static json_t *rfc3339(int64_t s) {
        char buf[32];
        time_t t = (time_t)s;
        struct tm tm;
        if (s <= 0 || !gmtime_r(&t, &tm))
                return json_null();
        strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
        return json_string(buf);
}

/* What the record and the aggregator's state say. */
typedef struct {
        const char *bv_id;
        const char *bv_state; /* the record's: validating, in_progress,
                               * failed */
        int bv_complete;      /* every item is terminal */
        const char *bv_status; /* the aggregator's batch status once
                                * complete */
        int64_t bv_total, bv_done, bv_succeeded, bv_failed, bv_cancelled,
                bv_expired;
        int64_t bv_completed_at; /* s */
        int64_t bv_cancel_at;    /* s, 0: no cancel */
} bview_t;

/* Fills bv; returns the state (new reference, may be NULL) that bv's
 * strings borrow from, with rec. */
static json_t *bview(kb_api_t *ap, json_t *rec, bview_t *bv) {
        json_t *st;
        memset(bv, 0, sizeof(*bv));
        bv->bv_id = json_string_value(json_object_get(rec, "id"));
        bv->bv_state = json_string_value(json_object_get(rec, "state"));
        bv->bv_total = json_integer_value(json_object_get(rec, "items_total"));
        bv->bv_cancel_at = json_integer_value(
                json_object_get(rec, "cancel_requested_at"));
        if (!bv->bv_state)
                bv->bv_state = "in_progress";
        st = bv->bv_id ? kb_apistore_state(ap->ap_store, bv->bv_id) : NULL;
        /* The aggregator retires a batch's state aggregator.retention_ms
         * after it completed: the record keeps the last one. */
        if (!st && !(st = json_incref(json_object_get(rec, "final"))))
                return NULL;
        bv->bv_done = json_integer_value(json_object_get(st, "done"));
        bv->bv_succeeded = json_integer_value(json_object_get(st, "succeeded"));
        bv->bv_failed = json_integer_value(json_object_get(st, "failed"));
        bv->bv_cancelled = json_integer_value(json_object_get(st, "cancelled"));
        bv->bv_expired = json_integer_value(json_object_get(st, "expired"));
        bv->bv_completed_at =
                json_integer_value(json_object_get(st, "completed_at")) / 1000;
        bv->bv_status = json_string_value(json_object_get(st, "status"));
        bv->bv_complete = !strcmp(bv->bv_state, "in_progress") &&
                          bv->bv_done >= bv->bv_total;
        return st;
}

static const char *openai_status(const bview_t *bv) {
        if (!strcmp(bv->bv_state, "validating") ||
            !strcmp(bv->bv_state, "failed"))
                return bv->bv_state;
        if (bv->bv_complete) {
                if (bv->bv_status && !strcmp(bv->bv_status, "cancelled"))
                        return "cancelled";
                if (bv->bv_status && !strcmp(bv->bv_status, "expired"))
                        return "expired";
                return "completed";
        }
        return bv->bv_cancel_at ? "cancelling" : "in_progress";
}

static json_t *openai_batch(kb_api_req_t *rq, json_t *rec) {
        bview_t bv;
        json_t *state = bview(rq->rq_api, rec, &bv), *o, *md;
        const char *status = openai_status(&bv);
        char out_id[64], err_id[64];
        int done = bv.bv_complete;

        kb_api_result_file_id(bv.bv_id, "output", out_id);
        kb_api_result_file_id(bv.bv_id, "error", err_id);
        md = json_object_get(rec, "metadata");
        o = json_pack("{sO ss sO sO sO ss sO sO sO}", "id",
                      json_object_get(rec, "id"), "object", "batch",
                      "endpoint", json_object_get(rec, "endpoint"),
                      "input_file_id", json_object_get(rec, "input_file_id"),
                      "completion_window",
                      json_object_get(rec, "completion_window"), "status",
                      status, "created_at", json_object_get(rec, "created_at"),
                      "expires_at", json_object_get(rec, "expires_at"),
                      "metadata", md ? md : json_null());
        if (!o) {
                json_decref(state);
                return NULL;
        }
        json_object_set(o, "errors",
                        json_object_get(rec, "errors")
                                ? json_object_get(rec, "errors")
                                : json_null());
        json_object_set_new(o, "output_file_id",
                            done && bv.bv_succeeded ? json_string(out_id)
                                                    : json_null());
        json_object_set_new(o, "error_file_id",
                            done && bv.bv_done > bv.bv_succeeded
                                    ? json_string(err_id)
                                    : json_null());
        json_object_set_new(o, "in_progress_at",
                            int_or_null(json_integer_value(json_object_get(
                                    rec, "in_progress_at"))));
        json_object_set_new(o, "finalizing_at",
                            done ? int_or_null(bv.bv_completed_at)
                                 : json_null());
        json_object_set_new(o, "completed_at",
                            !strcmp(status, "completed")
                                    ? int_or_null(bv.bv_completed_at)
                                    : json_null());
        json_object_set_new(o, "failed_at",
                            int_or_null(json_integer_value(
                                    json_object_get(rec, "failed_at"))));
        json_object_set_new(o, "expired_at",
                            !strcmp(status, "expired")
                                    ? int_or_null(bv.bv_completed_at)
                                    : json_null());
        json_object_set_new(o, "cancelling_at", int_or_null(bv.bv_cancel_at));
        json_object_set_new(o, "cancelled_at",
                            !strcmp(status, "cancelled")
                                    ? int_or_null(bv.bv_completed_at)
                                    : json_null());
        json_object_set_new(
                o, "request_counts",
                json_pack("{sI sI sI}", "total", (json_int_t)bv.bv_total,
                          "completed", (json_int_t)bv.bv_succeeded, "failed",
                          (json_int_t)(bv.bv_done - bv.bv_succeeded)));
        if (json_object_get(rec, "callback_url"))
                json_object_set(o, "callback_url",
                                json_object_get(rec, "callback_url"));
        json_decref(state);
        return o;
}

static json_t *anthropic_batch(kb_api_req_t *rq, json_t *rec) {
        bview_t bv;
        json_t *state = bview(rq->rq_api, rec, &bv), *o;
        int ended = bv.bv_complete || !strcmp(bv.bv_state, "failed");
        const char *host = MHD_lookup_connection_value(
                rq->rq_conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST);
        char *url = NULL;
        if (ended &&
            asprintf(&url, "%s%s/v1/messages/batches/%s/results",
                     host ? "http://" : "", host ? host : "", bv.bv_id) < 0)
                url = NULL;
        o = json_pack(
                "{sO ss ss s{sI sI sI sI sI} so so so sn so so}", "id",
                json_object_get(rec, "id"), "type", "message_batch",
                "processing_status",
                ended            ? "ended"
                : bv.bv_cancel_at ? "canceling"
                                  : "in_progress",
                "request_counts", "processing",
                (json_int_t)(ended ? 0 : bv.bv_total - bv.bv_done),
                "succeeded", (json_int_t)bv.bv_succeeded, "errored",
                (json_int_t)(bv.bv_failed +
                             (ended && !bv.bv_complete ? bv.bv_total : 0)),
                "canceled", (json_int_t)bv.bv_cancelled, "expired",
                (json_int_t)bv.bv_expired, "created_at",
                rfc3339(json_integer_value(json_object_get(rec, "created_at"))),
                "expires_at",
                rfc3339(json_integer_value(json_object_get(rec, "expires_at"))),
                "ended_at",
                ended ? rfc3339(bv.bv_completed_at
                                        ? bv.bv_completed_at
                                        : json_integer_value(json_object_get(
                                                  rec, "failed_at")))
                      : json_null(),
                "archived_at", "cancel_initiated_at", rfc3339(bv.bv_cancel_at),
                "results_url", url ? json_string(url) : json_null());
        free(url);
        json_decref(state);
        return o;
}

/* The record of batch rq_id when the tenant owns it and its flavour is
 * flavour (NULL: any) (new reference), else NULL. */
static json_t *owned_batch(kb_api_req_t *rq, const char *flavour) {
        json_t *b = kb_apistore_batch(rq->rq_api->ap_store, rq->rq_id);
        const char *tn = json_string_value(json_object_get(b, "tenant"));
        const char *fl = json_string_value(json_object_get(b, "flavour"));
        if (b && tn && !strcmp(tn, rq->rq_tenant) && fl &&
            (!flavour || !strcmp(fl, flavour)))
                return b;
        json_decref(b);
        return NULL;
}

/* ---- create ---- */

/* Publishing a file's lines as the batch's items. */
typedef struct {
        kb_api_t *cp_api;
        json_t *cp_rec; /* the record, borrowed */
        kb_pub_t *cp_pub;
        kb_pub_lines_t *cp_lines;
        kb_apiwait_t *cp_wait;
        int64_t cp_beat; /* kb_now_ms() of the last heartbeat */
        char cp_err[1024];
        int cp_failed;
} create_pub_t;

/* Writes the record with heartbeat_at = now: a replica publishing a batch
 * says it is alive (see kb_api_recover). */
static int heartbeat(kb_api_t *ap, json_t *rec, char *errstr,
                     size_t errstr_size) {
        json_object_set_new(rec, "heartbeat_at", json_integer(kb_wall_ms()));
        return kb_apistore_put(
                ap->ap_store, KB_TOPIC_API_BATCHES,
                json_string_value(json_object_get(rec, "id")), rec, -1, errstr,
                errstr_size);
}

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
        if (kb_now_ms() - cp->cp_beat > KB_API_ORPHAN_MS / 3) {
                cp->cp_beat = kb_now_ms();
                if (heartbeat(cp->cp_api, cp->cp_rec, cp->cp_err,
                              sizeof(cp->cp_err)))
                        return cp->cp_failed = 1;
        }
        return 0;
}

static int pub_chunk(void *opaque, const char *buf, size_t len) {
        create_pub_t *cp = opaque;
        return kb_pub_lines_feed(cp->cp_lines, buf, len);
}

/* Publishes the items of file (a header) as batch rec (written again
 * with a heartbeat every KB_API_ORPHAN_MS / 3). 0, or -1 with errstr. */
static int publish_file(kb_api_t *ap, json_t *rec, json_t *file,
                        int64_t deadline, char *errstr, size_t errstr_size) {
        const char *id = json_string_value(json_object_get(rec, "id"));
        int64_t total = json_integer_value(json_object_get(file, "lines"));
        kb_serde_t *sd;
        kb_bf_batch_t b;
        create_pub_t cp;
        int ret = -1;

        memset(&cp, 0, sizeof(cp));
        cp.cp_api = ap;
        cp.cp_rec = rec;
        cp.cp_beat = kb_now_ms();
        if (!(sd = kb_serde_new(ap->ap_conf, NULL, errstr, errstr_size)))
                return -1;
        memset(&b, 0, sizeof(b));
        b.bb_batch_id = id;
        b.bb_items_total = total;
        b.bb_deadline = deadline;
        b.bb_metadata = json_object_get(rec, "metadata");
        b.bb_callback_url =
                json_string_value(json_object_get(rec, "callback_url"));
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

/* What a create asks for. */
typedef struct {
        const char *cr_flavour;      /* "openai", "anthropic" */
        const char *cr_endpoint;     /* OpenAI's, or NULL */
        const char *cr_window;       /* as given */
        int64_t cr_window_ms;
        json_t *cr_metadata;         /* borrowed, or NULL */
        const char *cr_callback_url; /* or NULL */
        int cr_inline;               /* the input file was made here */
        int cr_idem;                 /* an Idempotency-Key came */
        char cr_key_digest[KB_BF_BATCH_ID_SIZE];
        char cr_payload_digest[KB_BF_BATCH_ID_SIZE];
} create_t;

/* The idempotency digests of the request: 1 and the digests set when an
 * Idempotency-Key came; 0 when none; -1 after queuing the 400. */
static int idempotency(kb_api_req_t *rq, json_t *body, create_t *cr,
                       enum MHD_Result *queued) {
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
        if (asprintf(&s, "%s\n%s\n%s", rq->rq_tenant, cr->cr_flavour, k) < 0)
                s = NULL;
        if (!s || !dump || kb_bf_batch_id_from_key(s, cr->cr_key_digest) ||
            kb_bf_batch_id_from_key(dump, cr->cr_payload_digest)) {
                free(s);
                free(dump);
                *queued = MHD_NO;
                return -1;
        }
        free(s);
        free(dump);
        cr->cr_idem = 1;
        return 1;
}

/* The batch an Idempotency-Key already made: 1 after queuing the answer
 * (200 with it, 409 when the payload differs), 0 when none. */
static int idempotent_replay(kb_api_req_t *rq, const create_t *cr,
                             enum MHD_Result *queued) {
        json_t *prior;
        const char *pd;
        if (!cr->cr_idem ||
            !(prior = kb_apistore_batch_by_idem(rq->rq_api->ap_store,
                                                cr->cr_key_digest)))
                return 0;
        pd = json_string_value(json_object_get(prior, "payload_digest"));
        if (pd && !strcmp(pd, cr->cr_payload_digest))
                *queued = kb_api_reply_json(
                        rq, 200,
                        rq->rq_flavour == KB_API_ANTHROPIC
                                ? anthropic_batch(rq, prior)
                                : openai_batch(rq, prior));
        else
                *queued = kb_api_error(
                        rq, 409, "Idempotency-Key",
                        "this Idempotency-Key was used for another request "
                        "(batch %s)",
                        json_string_value(json_object_get(prior, "id")));
        json_decref(prior);
        return 1;
}

/* Publishes the items of a record in state "validating" and writes it
 * "in_progress"; on failure writes it "failed" (errors). 0, or -1 with
 * errstr. */
static int publish_and_mark(kb_api_t *ap, json_t *rec, json_t *file,
                            char *errstr, size_t errstr_size) {
        const char *id = json_string_value(json_object_get(rec, "id"));
        int64_t deadline =
                json_integer_value(json_object_get(rec, "expires_at")) * 1000;
        char e2[256];
        if (publish_file(ap, rec, file, deadline, errstr, errstr_size)) {
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
                return -1;
        }
        json_object_set_new(rec, "state", json_string("in_progress"));
        json_object_set_new(rec, "in_progress_at",
                            json_integer(kb_wall_ms() / 1000));
        return kb_apistore_put(ap->ap_store, KB_TOPIC_API_BATCHES, id, rec, -1,
                               errstr, errstr_size);
}

void kb_api_recover(kb_api_t *ap) {
        json_t *all = kb_apistore_batches(ap->ap_store, NULL, NULL), *rec;
        int64_t now = kb_wall_ms();
        size_t i;
        json_array_foreach(all, i, rec) {
                const char *state =
                        json_string_value(json_object_get(rec, "state"));
                const char *id = json_string_value(json_object_get(rec, "id"));
                const char *fid = json_string_value(
                        json_object_get(rec, "input_file_id"));
                int64_t beat = json_integer_value(
                        json_object_get(rec, "heartbeat_at"));
                json_t *file, *mine;
                char errstr[1024];
                if (!state || strcmp(state, "validating") || !id ||
                    now - beat < KB_API_ORPHAN_MS)
                        continue;
                /* Claimed by this replica's heartbeat; a replica that
                 * claimed it at the same time publishes the same items
                 * again: the aggregator and the output files count each
                 * item once. */
                mine = json_deep_copy(rec);
                if (heartbeat(ap, mine, errstr, sizeof(errstr))) {
                        json_decref(mine);
                        continue;
                }
                kb_log(KB_LOG_WARN, "api",
                       "batch %s: its replica stopped while publishing "
                       "(no heartbeat for %lld s): publishing it again",
                       id, (long long)((now - beat) / 1000));
                file = fid ? kb_apistore_file(ap->ap_store, fid) : NULL;
                if (!file) {
                        snprintf(errstr, sizeof(errstr),
                                 "input file %s was deleted", fid ? fid : "");
                        json_object_set_new(mine, "state",
                                            json_string("failed"));
                        kb_apistore_put(ap->ap_store, KB_TOPIC_API_BATCHES, id,
                                        mine, -1, errstr, sizeof(errstr));
                } else if (!publish_and_mark(ap, mine, file, errstr,
                                             sizeof(errstr)))
                        kb_log(KB_LOG_INFO, "api", "batch %s: published",
                               id);
                json_decref(file);
                json_decref(mine);
        }
        json_decref(all);
}

/* Creates the batch of file (a header of the tenant): record, items,
 * record. Returns the record (new reference), or NULL after queuing the
 * error. */
static json_t *create_batch(kb_api_req_t *rq, const create_t *cr, json_t *file,
                            enum MHD_Result *queued) {
        kb_api_t *ap = rq->rq_api;
        char id[64], errstr[1024];
        int64_t now = kb_wall_ms();
        json_t *rec;

        if (kb_api_new_id(!strcmp(cr->cr_flavour, "anthropic") ? "msgbatch_"
                                                               : "batch_",
                          id)) {
                *queued = kb_api_error(rq, 503, NULL,
                                       "no random bytes for an id");
                return NULL;
        }
        rec = json_pack("{ss ss ss sO sO sI sI sO ss}", "id", id, "tenant",
                        rq->rq_tenant, "flavour", cr->cr_flavour,
                        "input_file_id", json_object_get(file, "id"),
                        "metadata",
                        cr->cr_metadata ? cr->cr_metadata : json_null(),
                        "created_at", (json_int_t)(now / 1000), "expires_at",
                        (json_int_t)((now + cr->cr_window_ms) / 1000),
                        "items_total", json_object_get(file, "lines"), "state",
                        "validating");
        if (rec)
                json_object_set_new(rec, "heartbeat_at",
                                    json_integer(kb_wall_ms()));
        if (!rec) {
                *queued = MHD_NO;
                return NULL;
        }
        if (cr->cr_endpoint)
                json_object_set_new(rec, "endpoint",
                                    json_string(cr->cr_endpoint));
        if (cr->cr_window)
                json_object_set_new(rec, "completion_window",
                                    json_string(cr->cr_window));
        if (cr->cr_callback_url)
                json_object_set_new(rec, "callback_url",
                                    json_string(cr->cr_callback_url));
        if (cr->cr_inline)
                json_object_set_new(rec, "inline", json_true());
        if (cr->cr_idem) {
                json_object_set_new(rec, "idempotency",
                                    json_string(cr->cr_key_digest));
                json_object_set_new(rec, "payload_digest",
                                    json_string(cr->cr_payload_digest));
        }
        if (kb_apistore_put(ap->ap_store, KB_TOPIC_API_BATCHES, id, rec, -1,
                            errstr, sizeof(errstr))) {
                *queued = kb_api_error(rq, 503, NULL,
                                       "cannot store the batch: %s", errstr);
                json_decref(rec);
                return NULL;
        }
        if (publish_and_mark(ap, rec, file, errstr, sizeof(errstr))) {
                *queued = kb_api_error(rq, 503, NULL,
                                       "cannot publish the batch: %s", errstr);
                json_decref(rec);
                return NULL;
        }
        kb_log(KB_LOG_INFO, "api",
               "tenant %s created %s batch %s: %lld items", rq->rq_tenant,
               cr->cr_flavour, id,
               (long long)json_integer_value(json_object_get(file, "lines")));
        return rec;
}

/* Inline requests (an array, borrowed) as the lines of a batch file,
 * validated as `kbatch submit` validates a file: 0 and *buf, *len (caller
 * frees), *n requests; -1 after queuing the 400 listing every bad
 * request. OpenAI requests {custom_id, body[, method, url]} become OpenAI
 * Batch lines of endpoint; Anthropic ones {custom_id, params} are lines as
 * they are. */
static int inline_lines(kb_api_req_t *rq, json_t *reqs, const create_t *cr,
                        char **buf, size_t *len, int64_t *n,
                        enum MHD_Result *queued) {
        kb_api_t *ap = rq->rq_api;
        int anthropic = !strcmp(cr->cr_flavour, "anthropic");
        kb_pub_check_t *ck;
        FILE *out;
        json_t *r, *bad = json_array();
        size_t i;
        char err[1280];
        int64_t nbad = 0;

        *buf = NULL;
        *len = 0;
        if (!json_is_array(reqs) || !json_array_size(reqs)) {
                json_decref(bad);
                *queued = kb_api_error(rq, 400, "requests",
                                       "'requests' must be a non-empty array");
                return -1;
        }
        if (json_array_size(reqs) > KB_BF_LINES_MAX) {
                json_decref(bad);
                *queued = kb_api_error(rq, 400, "requests",
                                       "'requests' has %zu entries, more than "
                                       "%d",
                                       json_array_size(reqs), KB_BF_LINES_MAX);
                return -1;
        }
        ck = kb_pub_check_new(ap->ap_conf,
                              anthropic ? KB_BF_ANTHROPIC : KB_BF_OPENAI,
                              anthropic ? KB_API_PLACEHOLDER_MSGBATCH_ID
                                        : KB_API_PLACEHOLDER_BATCH_ID,
                              cr->cr_metadata, cr->cr_callback_url, 0);
        out = open_memstream(buf, len);
        if (!ck || !out || !bad) {
                kb_pub_check_destroy(ck);
                if (out)
                        fclose(out);
                free(*buf);
                json_decref(bad);
                *queued = MHD_NO;
                return -1;
        }
        json_array_foreach(reqs, i, r) {
                json_t *l;
                char *s;
                if (anthropic || !json_is_object(r))
                        l = json_incref(r);
                else {
                        l = json_deep_copy(r);
                        if (!json_object_get(l, "method"))
                                json_object_set_new(l, "method",
                                                    json_string("POST"));
                        if (!json_object_get(l, "url"))
                                json_object_set_new(
                                        l, "url", json_string(cr->cr_endpoint));
                }
                s = json_dumps(l, JSON_COMPACT | JSON_ENCODE_ANY);
                json_decref(l);
                if (!s)
                        continue;
                if (kb_pub_check_line(ck, s, strlen(s), (int64_t)i + 1, err,
                                      sizeof(err)) != KB_PUB_LINE_OK) {
                        if (++nbad <= 100) {
                                char *m = NULL;
                                if (asprintf(&m, "requests[%zu]: %s", i,
                                             err) >= 0)
                                        json_array_append_new(bad,
                                                              json_string(m));
                                free(m);
                        }
                } else
                        fprintf(out, "%s\n", s);
                free(s);
        }
        fclose(out);
        *n = kb_pub_check_items(ck);
        kb_pub_check_destroy(ck);
        if (nbad) {
                char *list = NULL, *m;
                json_t *s;
                json_array_foreach(bad, i, s) {
                        if (asprintf(&m, "%s%s%s", list ? list : "",
                                     list ? "; " : "", json_string_value(s)) <
                            0)
                                m = NULL;
                        free(list);
                        list = m;
                }
                *queued = kb_api_error(rq, 400, "requests",
                                       "%lld bad request%s: %s%s",
                                       (long long)nbad, nbad == 1 ? "" : "s",
                                       list ? list : "",
                                       nbad > 100 ? "; ..." : "");
                free(list);
                free(*buf);
                *buf = NULL;
                json_decref(bad);
                return -1;
        }
        json_decref(bad);
        return 0;
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

/* POST /v1/batches and POST /v1/messages/batches. */
static enum MHD_Result create(kb_api_req_t *rq) {
        kb_api_t *ap = rq->rq_api;
        int anthropic = rq->rq_flavour == KB_API_ANTHROPIC;
        json_t *body, *file = NULL, *rec = NULL, *reqs, *cb;
        const char *file_id = NULL, *tn;
        char errstr[1024], *buf = NULL;
        size_t len = 0;
        int64_t n = 0;
        enum MHD_Result ret = MHD_NO;
        create_t cr;
        int i;

        memset(&cr, 0, sizeof(cr));
        if (!(body = kb_api_body_object(rq)))
                return MHD_YES;
        cr.cr_flavour = anthropic ? "anthropic" : "openai";
        reqs = json_object_get(body, "requests");
        if (anthropic) {
                cr.cr_window = NULL;
                cr.cr_window_ms = 24 * 3600 * 1000;
        } else {
                json_t *w = json_object_get(body, "completion_window");
                json_t *e = json_object_get(body, "endpoint");
                json_t *f = json_object_get(body, "input_file_id");
                if ((f && !json_is_string(f)) || (!f && !reqs)) {
                        ret = kb_api_error(rq, 400, "input_file_id",
                                           "'input_file_id' (a string) or "
                                           "'requests' is required");
                        goto out;
                }
                if (f && reqs) {
                        ret = kb_api_error(rq, 400, "requests",
                                           "give one of 'input_file_id' and "
                                           "'requests'");
                        goto out;
                }
                file_id = json_string_value(f);
                if ((e && !json_is_string(e)) || (!e && !reqs)) {
                        ret = kb_api_error(rq, 400, "endpoint",
                                           "'endpoint' (a string) is "
                                           "required");
                        goto out;
                }
                cr.cr_endpoint = e ? json_string_value(e)
                                   : "/v1/chat/completions";
                for (i = 0; openai_endpoints[i] &&
                            strcmp(openai_endpoints[i], cr.cr_endpoint);
                     i++)
                        ;
                if (!openai_endpoints[i]) {
                        ret = kb_api_error(
                                rq, 400, "endpoint",
                                "'endpoint' must be /v1/chat/completions, "
                                "/v1/responses, /v1/embeddings or "
                                "/v1/completions");
                        goto out;
                }
                if (w && !json_is_string(w)) {
                        ret = kb_api_error(rq, 400, "completion_window",
                                           "'completion_window' must be a "
                                           "string");
                        goto out;
                }
                cr.cr_window = w ? json_string_value(w) : "24h";
                if ((cr.cr_window_ms = kb_bf_duration_parse(cr.cr_window)) <=
                    0) {
                        ret = kb_api_error(rq, 400, "completion_window",
                                           "'completion_window' must be a "
                                           "duration such as \"24h\" or "
                                           "\"90m\"");
                        goto out;
                }
                cr.cr_metadata = json_object_get(body, "metadata");
                if (check_metadata(rq, cr.cr_metadata, &ret))
                        goto out;
                if (json_is_null(cr.cr_metadata))
                        cr.cr_metadata = NULL;
                cb = json_object_get(body, "callback_url");
                if (cb && !json_is_null(cb)) {
                        if (!json_is_string(cb) || !json_string_length(cb)) {
                                ret = kb_api_error(rq, 400, "callback_url",
                                                   "'callback_url' must be a "
                                                   "URL");
                                goto out;
                        }
                        cr.cr_callback_url = json_string_value(cb);
                }
        }
        if (idempotency(rq, body, &cr, &ret) < 0 ||
            idempotent_replay(rq, &cr, &ret))
                goto out;
        if (file_id) {
                file = kb_apistore_file(ap->ap_store, file_id);
                tn = json_string_value(json_object_get(file, "tenant"));
                if (!file || !tn || strcmp(tn, rq->rq_tenant)) {
                        ret = kb_api_error(rq, 404, "input_file_id",
                                           "no such file: %s", file_id);
                        goto out;
                }
        } else {
                if (inline_lines(rq, reqs, &cr, &buf, &len, &n, &ret))
                        goto out;
                if (kb_api_file_store(ap, rq->rq_tenant, "requests.jsonl",
                                      "batch", buf, len, n, &file, errstr,
                                      sizeof(errstr))) {
                        ret = kb_api_error(rq, 503, NULL,
                                           "cannot store the requests: %s",
                                           errstr);
                        goto out;
                }
                cr.cr_inline = 1;
        }
        if ((rec = create_batch(rq, &cr, file, &ret)))
                ret = kb_api_reply_json(rq, 200,
                                        anthropic ? anthropic_batch(rq, rec)
                                                  : openai_batch(rq, rec));
out:
        free(buf);
        json_decref(rec);
        json_decref(file);
        json_decref(body);
        return ret;
}

/* ---- cancel, delete ---- */

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

/* POST .../cancel: the batch after the cancel was requested. */
static enum MHD_Result cancel(kb_api_req_t *rq, json_t *rec) {
        kb_api_t *ap = rq->rq_api;
        bview_t bv;
        json_t *state = bview(ap, rec, &bv);
        char errstr[512];
        int running = !bv.bv_complete && !bv.bv_cancel_at &&
                      strcmp(bv.bv_state, "failed");
        json_decref(state);
        if (running) {
                if (cancel_batch(ap, rec, errstr, sizeof(errstr)))
                        return kb_api_error(rq, 503, NULL, "cannot cancel: %s",
                                            errstr);
                rec = kb_apistore_batch(ap->ap_store, rq->rq_id);
        } else
                json_incref(rec);
        {
                enum MHD_Result ret = kb_api_reply_json(
                        rq, 200,
                        rq->rq_flavour == KB_API_ANTHROPIC
                                ? anthropic_batch(rq, rec)
                                : openai_batch(rq, rec));
                json_decref(rec);
                return ret;
        }
}

/* DELETE /v1/messages/batches/{id}: an ended batch's record. */
static enum MHD_Result delete_batch(kb_api_req_t *rq, json_t *rec) {
        bview_t bv;
        json_t *state = bview(rq->rq_api, rec, &bv);
        char errstr[512];
        int ended = bv.bv_complete || !strcmp(bv.bv_state, "failed");
        json_decref(state);
        if (!ended)
                return kb_api_error(rq, 400, NULL,
                                    "batch %s is still processing: cancel it "
                                    "and wait until it has ended",
                                    rq->rq_id);
        if (kb_apistore_put(rq->rq_api->ap_store, KB_TOPIC_API_BATCHES,
                            rq->rq_id, NULL, -1, errstr, sizeof(errstr)))
                return kb_api_error(rq, 503, NULL, "cannot delete: %s",
                                    errstr);
        return kb_api_reply_json(rq, 200,
                                 json_pack("{ss ss}", "id", rq->rq_id, "type",
                                           "message_batch_deleted"));
}

/* GET /v1/messages/batches/{id}/results: the results as JSONL. */
static enum MHD_Result results(kb_api_req_t *rq, json_t *rec) {
        bview_t bv;
        json_t *state = bview(rq->rq_api, rec, &bv);
        json_decref(state);
        if (!bv.bv_complete)
                return kb_api_error(rq, 400, NULL,
                                    "batch %s has not ended yet: its results "
                                    "are available once processing_status is "
                                    "ended",
                                    rq->rq_id);
        return kb_api_result_stream(rq, rq->rq_id, 2, KB_BF_OUT_ANTHROPIC,
                                    "application/binary");
}

/* ---- the items of a batch ---- */

typedef struct {
        json_t **it_ids; /* custom_id of item i (json strings) */
        int64_t it_n, it_cap;
        char it_err[256];
} items_in_t;

static int item_line(void *opaque, char *s, size_t len, int64_t lineno,
                     int too_long) {
        items_in_t *in = opaque;
        json_t *l, *id;
        if (lineno == 1)
                kb_pub_strip_bom(s, &len);
        if (too_long || kb_pub_trim_line(s, &len))
                return 0;
        l = json_loadb(s, len, 0, NULL);
        id = json_object_get(l, "custom_id");
        if (!id)
                id = json_object_get(l, "item_id");
        if (in->it_n == in->it_cap) {
                int64_t cap = in->it_cap ? in->it_cap * 2 : 1024;
                json_t **v = realloc(in->it_ids, (size_t)cap * sizeof(*v));
                if (!v) {
                        json_decref(l);
                        return -1;
                }
                in->it_ids = v;
                in->it_cap = cap;
        }
        in->it_ids[in->it_n++] = json_is_string(id) ? json_incref(id)
                                                    : json_string("");
        json_decref(l);
        return 0;
}

static int item_chunk(void *opaque, const char *buf, size_t len) {
        return kb_pub_lines_feed(((void **)opaque)[0], buf, len);
}

static const char *const item_statuses[] = {
        "pending", "succeeded", "failed", "cancelled", "expired", NULL};

/* The custom_ids of the batch's input file into *in. 0; -1 when it cannot
 * be read (errstr); -2 out of memory. */
static int items_read_ids(kb_api_t *ap, json_t *file, items_in_t *in,
                          char *errstr, size_t errstr_size) {
        kb_pub_lines_t *ls;
        void *ctx[1];
        int r = 0;
        if (!(ls = kb_pub_lines_new(
                      2 * (size_t)ap->ap_conf->worker_max_item_bytes,
                      item_line, in)))
                return -2;
        ctx[0] = ls;
        if (kb_apistore_file_read(ap->ap_store, file, item_chunk, ctx, errstr,
                                  errstr_size) ||
            kb_pub_lines_end(ls))
                r = -1;
        kb_pub_lines_destroy(ls);
        return r;
}

/* Indexes ItemResult lines (JSON lines of buf) by item_index into res[0,
 * total): the first result of an index wins. */
static void items_index_results(json_t **res, int64_t total, char *buf,
                                size_t len) {
        char *p = buf, *end = buf + len;
        while (p && p < end) {
                char *nl = memchr(p, '\n', (size_t)(end - p));
                json_t *r = json_loadb(
                        p, nl ? (size_t)(nl - p) : (size_t)(end - p), 0, NULL);
                int64_t ix =
                        json_integer_value(json_object_get(r, "item_index"));
                if (r && ix >= 0 && ix < total && !res[ix])
                        res[ix] = r;
                else
                        json_decref(r);
                p = nl ? nl + 1 : end;
        }
}

/* One batch.item: custom_id id, index i, its ItemResult r (NULL: pending)
 * with status st. New reference. */
static json_t *item_json(json_t *id, int64_t i, json_t *r, const char *st) {
        json_t *o = json_pack("{ss sO sI ss}", "object", "batch.item",
                              "custom_id", id, "item_index", (json_int_t)i,
                              "status", st ? st : "unknown");
        json_t *at = r ? json_object_get(r, "attempts") : NULL;
        json_t *code = r ? json_object_get(r, "http_status") : NULL;
        json_t *body = r ? json_object_get(r, "output") : NULL;
        json_object_set_new(o, "attempts",
                            at ? json_incref(at) : json_integer(0));
        json_object_set(o, "error",
                        r && json_object_get(r, "error")
                                ? json_object_get(r, "error")
                                : json_null());
        json_object_set_new(o, "response",
                            r ? json_pack("{sO sO}", "status_code",
                                          code ? code : json_null(), "body",
                                          body ? body : json_null())
                              : json_null());
        return o;
}

/* The page of items from start on, of status want (NULL: any), at most
 * limit: the list reply. */
static enum MHD_Result items_page(kb_api_req_t *rq, const items_in_t *in,
                                  json_t **res, int64_t start,
                                  const char *want, int64_t limit) {
        json_t *data = json_array(), *last = NULL;
        int64_t i;
        int more = 0;
        for (i = start; i < in->it_n; i++) {
                json_t *r = res[i];
                const char *st =
                        r ? json_string_value(json_object_get(r, "status"))
                          : "pending";
                if (want && strcmp(want, st ? st : ""))
                        continue;
                if ((int64_t)json_array_size(data) == limit) {
                        more = 1;
                        break;
                }
                json_array_append_new(data, item_json(in->it_ids[i], i, r, st));
                last = in->it_ids[i];
        }
        return kb_api_reply_json(
                rq, 200,
                json_pack("{ss so sO sb}", "object", "list", "data", data,
                          "last_id", last ? last : json_null(), "has_more",
                          more));
}

/* GET /v1/batches/{id}/items?limit=&after=&status= */
static enum MHD_Result items(kb_api_req_t *rq, json_t *rec) {
        kb_api_t *ap = rq->rq_api;
        const char *after = MHD_lookup_connection_value(
                rq->rq_conn, MHD_GET_ARGUMENT_KIND, "after");
        const char *want = MHD_lookup_connection_value(
                rq->rq_conn, MHD_GET_ARGUMENT_KIND, "status");
        const char *fid = json_string_value(json_object_get(rec, "input_file_id"));
        json_t *file = fid ? kb_apistore_file(ap->ap_store, fid) : NULL;
        json_t **res = NULL;
        items_in_t in;
        char errstr[1024], *ok = NULL, *bad = NULL;
        size_t ok_len = 0, bad_len = 0;
        int64_t limit, i, start = 0;
        enum MHD_Result ret;
        int r;

        memset(&in, 0, sizeof(in));
        if (kb_api_query_int(rq, "limit", 1, 1000, 100, &limit, &ret)) {
                json_decref(file);
                return ret;
        }
        for (i = 0; want && item_statuses[i] && strcmp(item_statuses[i], want);
             i++)
                ;
        if (want && !item_statuses[i]) {
                json_decref(file);
                return kb_api_error(rq, 400, "status",
                                    "'status' must be pending, succeeded, "
                                    "failed, cancelled or expired");
        }
        if (!file) {
                return kb_api_error(rq, 404, NULL,
                                    "the input file of batch %s was deleted",
                                    rq->rq_id);
        }
        /* The custom_ids, from the input file. */
        if ((r = items_read_ids(ap, file, &in, errstr, sizeof(errstr)))) {
                ret = r == -2 ? MHD_NO
                              : kb_api_error(rq, 503, NULL,
                                             "cannot read the input: %s",
                                             errstr);
                goto out;
        }
        /* The results so far, as ItemResults. */
        if (kb_api_result_file(ap, rq->rq_id, 0, KB_BF_OUT_NATIVE, &ok,
                               &ok_len, errstr, sizeof(errstr)) ||
            kb_api_result_file(ap, rq->rq_id, 1, KB_BF_OUT_NATIVE, &bad,
                               &bad_len, errstr, sizeof(errstr))) {
                ret = kb_api_error(rq, 503, NULL,
                                   "cannot read the results: %s", errstr);
                goto out;
        }
        if (!(res = calloc((size_t)(in.it_n ? in.it_n : 1), sizeof(*res)))) {
                ret = MHD_NO;
                goto out;
        }
        items_index_results(res, in.it_n, ok, ok_len);
        items_index_results(res, in.it_n, bad, bad_len);
        if (after) {
                for (i = 0; i < in.it_n; i++)
                        if (!strcmp(json_string_value(in.it_ids[i]), after))
                                break;
                if (i == in.it_n) {
                        ret = kb_api_error(rq, 400, "after",
                                           "'after' is not a custom_id of "
                                           "batch %s",
                                           rq->rq_id);
                        goto out;
                }
                start = i + 1;
        }
        ret = items_page(rq, &in, res, start, want, limit);
out:
        if (res)
                for (i = 0; i < in.it_n; i++)
                        json_decref(res[i]);
        for (i = 0; i < in.it_n; i++)
                json_decref(in.it_ids[i]);
        free(in.it_ids);
        free(res);
        free(ok);
        free(bad);
        json_decref(file);
        return ret;
}

/* ---- dispatch ---- */

/* GET list of either flavour. */
static enum MHD_Result list(kb_api_req_t *rq) {
        kb_api_t *ap = rq->rq_api;
        int anthropic = rq->rq_flavour == KB_API_ANTHROPIC;
        const char *after = MHD_lookup_connection_value(
                rq->rq_conn, MHD_GET_ARGUMENT_KIND,
                anthropic ? "after_id" : "after");
        const char *before =
                anthropic ? MHD_lookup_connection_value(
                                    rq->rq_conn, MHD_GET_ARGUMENT_KIND,
                                    "before_id")
                          : NULL;
        int64_t limit;
        enum MHD_Result ret;
        json_t *all;
        if (kb_api_query_int(rq, "limit", 1, anthropic ? 1000 : 100, 20,
                             &limit, &ret))
                return ret;
        if (after && before)
                return kb_api_error(rq, 400, "before_id",
                                    "give one of before_id and after_id");
        all = kb_apistore_batches(ap->ap_store, rq->rq_tenant,
                                  anthropic ? "anthropic" : "openai");
        ret = kb_api_reply_json(
                rq, 200,
                kb_api_page(rq, all, limit, after, before,
                            anthropic ? anthropic_batch : openai_batch));
        json_decref(all);
        return ret;
}

enum MHD_Result kb_api_batches(kb_api_req_t *rq) {
        int anthropic = rq->rq_flavour == KB_API_ANTHROPIC;
        enum MHD_Result ret;
        json_t *rec;

        if (rq->rq_route == R_BATCHES || rq->rq_route == R_MBATCHES)
                return !strcmp(rq->rq_method, "POST") ? create(rq) : list(rq);
        if (!(rec = owned_batch(rq, rq->rq_route == R_BATCH_ITEMS
                                            ? NULL
                                            : anthropic ? "anthropic"
                                                        : "openai")))
                return kb_api_error(rq, 404, "batch_id", "no such batch: %s",
                                    rq->rq_id);
        switch (rq->rq_route) {
        case R_BATCH_CANCEL:
        case R_MBATCH_CANCEL:
                ret = cancel(rq, rec);
                break;
        case R_BATCH_ITEMS:
                ret = items(rq, rec);
                break;
        case R_MBATCH_RESULTS:
                ret = results(rq, rec);
                break;
        default:
                if (!strcmp(rq->rq_method, "DELETE"))
                        ret = delete_batch(rq, rec);
                else
                        ret = kb_api_reply_json(
                                rq, 200,
                                anthropic ? anthropic_batch(rq, rec)
                                          : openai_batch(rq, rec));
        }
        json_decref(rec);
        return ret;
}
