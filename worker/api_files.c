/* api_files: OpenAI Files (POST/GET /v1/files, GET/DELETE /v1/files/{id},
 * GET /v1/files/{id}/content). See apistore.h for how files are kept.
 *
 * An upload (multipart/form-data through libmicrohttpd's post processor)
 * is validated line by line as it arrives, by the validation `kbatch
 * submit` does (publish.h), and its bytes go to Kafka in chunks on the way:
 * no file is held whole in memory. A file with a bad line is refused whole
 * (400, every bad line numbered) and its chunks are deleted (tombstones). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api_int.h"
#include "batchfile.h"
#include "cmd.h"
#include "log.h"
#include "loop.h"
#include "publish.h"

/* Bad lines named in a 400 (the count is always given). */
#define BAD_LINES_SHOWN 100

struct kb_api_upload_s {
        kb_api_req_t *up_rq;
        struct MHD_PostProcessor *up_pp;
        char up_id[64];
        char up_filename[256];
        char up_purpose[64];
        int up_have_file;     /* a "file" part was seen */
        int up_file_done;     /* ... and ended (a second one is refused) */
        int64_t up_bytes;
        char *up_chunk;       /* KB_APISTORE_CHUNK bytes */
        size_t up_chunk_len;
        int64_t up_chunks;
        int32_t up_partition;
        kb_apiwait_t *up_wait;
        kb_pub_lines_t *up_lines;
        kb_pub_check_t *up_check;
        json_t *up_bad;       /* "line N: message" strings */
        int64_t up_bad_cnt;
        int up_stored;        /* the header is written: the file exists */
        unsigned up_fail;     /* status of a failure decided on the way */
        char up_fail_msg[512];
};

/* Tombstones for the chunks produced (an upload refused, failed, or cut
 * by the client). */
static void drop_chunks(kb_api_upload_t *up) {
        kb_api_t *ap = up->up_rq->rq_api;
        rd_kafka_t *rk = kb_apistore_producer(ap->ap_store);
        int64_t i;
        char key[96];
        for (i = 0; i < up->up_chunks; i++) {
                snprintf(key, sizeof(key), "%s:%lld", up->up_id, (long long)i);
                rd_kafka_producev(
                        rk,
                        RD_KAFKA_V_TOPIC(
                                ap->ap_conf->topics_name[KB_TOPIC_FILES]),
                        RD_KAFKA_V_PARTITION(up->up_partition),
                        RD_KAFKA_V_KEY(key, strlen(key)),
                        RD_KAFKA_V_VALUE(NULL, 0), RD_KAFKA_V_END);
        }
}

void kb_api_upload_free(kb_api_upload_t *up) {
        if (!up)
                return;
        if (!up->up_stored)
                drop_chunks(up);
        if (up->up_pp)
                MHD_destroy_post_processor(up->up_pp);
        if (up->up_wait) {
                /* Deliveries still pending refer to up_wait. */
                char err[256];
                kb_apiwait_wait(up->up_wait, 60000, err, sizeof(err));
        }
        kb_apiwait_destroy(up->up_wait);
        kb_pub_lines_destroy(up->up_lines);
        kb_pub_check_destroy(up->up_check);
        json_decref(up->up_bad);
        free(up->up_chunk);
        free(up);
}

static void fail(kb_api_upload_t *up, unsigned status, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
static void fail(kb_api_upload_t *up, unsigned status, const char *fmt, ...) {
        va_list ap;
        if (up->up_fail)
                return;
        up->up_fail = status;
        va_start(ap, fmt);
        vsnprintf(up->up_fail_msg, sizeof(up->up_fail_msg), fmt, ap);
        va_end(ap);
}

/* Produces chunk n of file id (buf, len bytes, copied) to its partition;
 * the delivery is counted in w. 0, or -1 with errstr. */
static int produce_chunk(kb_api_t *ap, const char *id, int32_t part,
                         int64_t n, const char *buf, size_t len,
                         kb_apiwait_t *w, char *errstr, size_t errstr_size) {
        rd_kafka_t *rk = kb_apistore_producer(ap->ap_store);
        const char *topic = ap->ap_conf->topics_name[KB_TOPIC_FILES];
        char key[96];
        rd_kafka_resp_err_t err;
        snprintf(key, sizeof(key), "%s:%lld", id, (long long)n);
        for (;;) {
                err = rd_kafka_producev(
                        rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(part),
                        RD_KAFKA_V_KEY(key, strlen(key)),
                        RD_KAFKA_V_VALUE((void *)buf, len),
                        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                        RD_KAFKA_V_OPAQUE(w), RD_KAFKA_V_END);
                if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
                        break;
                rd_kafka_poll(rk, 50);
        }
        if (err) {
                snprintf(errstr, errstr_size, "%s", rd_kafka_err2str(err));
                return -1;
        }
        kb_apiwait_sent(w, 1);
        return 0;
}

/* Produces the chunk buffered. */
static void flush_chunk(kb_api_upload_t *up) {
        char err[256];
        if (!up->up_chunk_len || up->up_fail)
                return;
        if (produce_chunk(up->up_rq->rq_api, up->up_id, up->up_partition,
                          up->up_chunks, up->up_chunk, up->up_chunk_len,
                          up->up_wait, err, sizeof(err))) {
                fail(up, 503, "cannot store the file: %s", err);
                return;
        }
        up->up_chunks++;
        up->up_chunk_len = 0;
}

/* Waits for the chunks of file id, then writes its header. 0 and *hdrp
 * (new reference), or -1 with errstr. */
static int store_header(kb_api_t *ap, const char *id, const char *tenant,
                        const char *filename, const char *purpose,
                        int64_t bytes, int64_t lines, int32_t part,
                        int64_t chunks, kb_apiwait_t *w, json_t **hdrp,
                        char *errstr, size_t errstr_size) {
        json_t *hdr;
        if (kb_apiwait_wait(w, 120000, errstr, errstr_size))
                return -1;
        hdr = json_pack("{ss ss ss ss sI sI sI si sI sI}", "id", id, "tenant",
                        tenant, "filename", filename, "purpose", purpose,
                        "bytes", (json_int_t)bytes, "lines", (json_int_t)lines,
                        "created_at", (json_int_t)(kb_wall_ms() / 1000),
                        "partition", (int)part, "first_offset",
                        (json_int_t)kb_apiwait_first_offset(w), "chunks",
                        (json_int_t)chunks);
        if (!hdr) {
                snprintf(errstr, errstr_size, "out of memory");
                return -1;
        }
        if (kb_apistore_put(ap->ap_store, KB_TOPIC_API_BATCHES, id, hdr, -1,
                            errstr, errstr_size)) {
                json_decref(hdr);
                return -1;
        }
        *hdrp = hdr;
        return 0;
}

int kb_api_file_store(kb_api_t *ap, const char *tenant, const char *filename,
                      const char *purpose, const char *buf, size_t len,
                      int64_t lines, json_t **hdrp, char *errstr,
                      size_t errstr_size) {
        char id[64];
        int32_t part;
        int64_t n = 0;
        size_t off;
        kb_apiwait_t *w = kb_apiwait_new();
        int ret = -1;
        if (!w) {
                snprintf(errstr, errstr_size, "out of memory");
                return -1;
        }
        if (kb_api_new_id("file-", id)) {
                snprintf(errstr, errstr_size, "no random bytes for an id");
                kb_apiwait_destroy(w);
                return -1;
        }
        part = kb_apistore_partition(ap->ap_store, KB_TOPIC_FILES, id);
        for (off = 0; off < len; off += KB_APISTORE_CHUNK, n++)
                if (produce_chunk(ap, id, part, n, buf + off,
                                  len - off < KB_APISTORE_CHUNK
                                          ? len - off
                                          : KB_APISTORE_CHUNK,
                                  w, errstr, errstr_size))
                        goto out;
        ret = store_header(ap, id, tenant, filename, purpose, (int64_t)len,
                           lines, part, n, w, hdrp, errstr, errstr_size);
out:
        if (ret) {
                char e[128];
                kb_apiwait_wait(w, 60000, e, sizeof(e));
        }
        kb_apiwait_destroy(w);
        return ret;
}

static int on_line(void *opaque, char *s, size_t len, int64_t lineno,
                   int too_long) {
        kb_api_upload_t *up = opaque;
        char err[1280];
        kb_pub_line_res_t r;
        if (too_long) {
                r = KB_PUB_LINE_BAD;
                snprintf(err, sizeof(err),
                         "the line is longer than %d bytes "
                         "(2 x worker.max_item_bytes)",
                         2 * up->up_rq->rq_api->ap_conf->worker_max_item_bytes);
        } else
                r = kb_pub_check_line(up->up_check, s, len, lineno, err,
                                      sizeof(err));
        if (r == KB_PUB_LINE_BAD) {
                if (++up->up_bad_cnt <= BAD_LINES_SHOWN) {
                        char *m = NULL;
                        if (asprintf(&m, "line %lld: %s", (long long)lineno,
                                     err) >= 0) {
                                json_array_append_new(up->up_bad,
                                                      json_string(m));
                                free(m);
                        }
                }
        }
        return 0;
}

/* File bytes: validated line by line, buffered into chunks. */
static void file_data(kb_api_upload_t *up, const char *data, size_t size) {
        const kb_conf_t *conf = up->up_rq->rq_api->ap_conf;
        up->up_bytes += (int64_t)size;
        if (up->up_bytes > conf->api_max_file_bytes) {
                fail(up, 413, "the file is larger than %lld bytes "
                              "(api.max_file_bytes)",
                     (long long)conf->api_max_file_bytes);
                return;
        }
        kb_pub_lines_feed(up->up_lines, data, size);
        while (size > 0 && !up->up_fail) {
                size_t n = KB_APISTORE_CHUNK - up->up_chunk_len;
                if (n > size)
                        n = size;
                memcpy(up->up_chunk + up->up_chunk_len, data, n);
                up->up_chunk_len += n;
                data += n;
                size -= n;
                if (up->up_chunk_len == KB_APISTORE_CHUNK)
                        flush_chunk(up);
        }
}

static enum MHD_Result on_part(void *cls, enum MHD_ValueKind kind,
                               const char *key, const char *filename,
                               const char *content_type,
                               const char *transfer_encoding, const char *data,
                               uint64_t off, size_t size) {
        kb_api_upload_t *up = cls;
        (void)kind;
        (void)content_type;
        (void)transfer_encoding;
        if (up->up_fail)
                return MHD_YES;
        if (!key) {
                /* A part without a name (found by schemathesis). */
                fail(up, 400, "a multipart part has no name");
                return MHD_YES;
        }
        if (!strcmp(key, "purpose")) {
                size_t have = strlen(up->up_purpose);
                if (off + size >= sizeof(up->up_purpose) - 1 ||
                    off != have) {
                        fail(up, 400, "'purpose' is too long");
                        return MHD_YES;
                }
                memcpy(up->up_purpose + have, data, size);
                up->up_purpose[have + size] = '\0';
                return MHD_YES;
        }
        if (!strcmp(key, "file")) {
                if (off == 0 && up->up_have_file && up->up_file_done) {
                        fail(up, 400, "more than one 'file' part");
                        return MHD_YES;
                }
                if (!up->up_have_file) {
                        up->up_have_file = 1;
                        snprintf(up->up_filename, sizeof(up->up_filename),
                                 "%s", filename ? filename : "upload.jsonl");
                }
                if (size)
                        file_data(up, data, size);
                return MHD_YES;
        }
        /* Other fields (expires_after[...]) are accepted and ignored. */
        if (up->up_have_file)
                up->up_file_done = 1;
        return MHD_YES;
}

enum MHD_Result kb_api_upload_start(kb_api_req_t *rq) {
        kb_api_t *ap = rq->rq_api;
        kb_api_upload_t *up;
        const char *ct = MHD_lookup_connection_value(
                rq->rq_conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
        if (!ct || strncasecmp(ct, "multipart/form-data", 19))
                return kb_api_error(rq, 400, NULL,
                                    "POST /v1/files takes multipart/form-data "
                                    "with the fields 'purpose' and 'file'");
        if (!(up = calloc(1, sizeof(*up))))
                return MHD_NO;
        rq->rq_up = up;
        up->up_rq = rq;
        if (kb_api_new_id("file-", up->up_id))
                return kb_api_error(rq, 503, NULL,
                                    "no random bytes for an id");
        up->up_partition =
                kb_apistore_partition(ap->ap_store, KB_TOPIC_FILES, up->up_id);
        if (!(up->up_chunk = malloc(KB_APISTORE_CHUNK)) ||
            !(up->up_wait = kb_apiwait_new()) || !(up->up_bad = json_array()) ||
            /* The items' size depends on the batch id's length. */
            !(up->up_check = kb_pub_check_new(ap->ap_conf, KB_BF_AUTO,
                                              KB_API_PLACEHOLDER_BATCH_ID,
                                              NULL, NULL, 0)) ||
            !(up->up_lines = kb_pub_lines_new(
                      2 * (size_t)ap->ap_conf->worker_max_item_bytes, on_line,
                      up)))
                return MHD_NO;
        if (!(up->up_pp = MHD_create_post_processor(rq->rq_conn, 65536,
                                                    on_part, up)))
                return kb_api_error(rq, 400, NULL,
                                    "cannot read the multipart/form-data body "
                                    "(a boundary is missing?)");
        return MHD_YES;
}

enum MHD_Result kb_api_upload_data(kb_api_req_t *rq, const char *data,
                                   size_t size) {
        kb_api_upload_t *up = rq->rq_up;
        if (up->up_fail)
                return MHD_YES;
        if (MHD_post_process(up->up_pp, data, size) != MHD_YES)
                fail(up, 400, "the multipart/form-data body is malformed");
        if (up->up_fail == 413)
                /* Answer now: the rest of the body is not read. */
                return kb_api_error(rq, 413, "file", "%s", up->up_fail_msg);
        return MHD_YES;
}

json_t *kb_api_file_object(kb_api_t *ap, json_t *hdr) {
        (void)ap;
        return json_pack("{sO ss sO sO sO sO ss sn sn}", "id",
                         json_object_get(hdr, "id"), "object", "file", "bytes",
                         json_object_get(hdr, "bytes"), "created_at",
                         json_object_get(hdr, "created_at"), "filename",
                         json_object_get(hdr, "filename"), "purpose",
                         json_object_get(hdr, "purpose"), "status",
                         "processed", "expires_at", "status_details");
}

enum MHD_Result kb_api_upload_finish(kb_api_req_t *rq) {
        kb_api_upload_t *up = rq->rq_up;
        kb_api_t *ap = rq->rq_api;
        char errstr[512];
        json_t *hdr;
        int64_t items;
        enum MHD_Result ret;

        if (!up->up_fail) {
                MHD_destroy_post_processor(up->up_pp);
                up->up_pp = NULL;
                if (!up->up_have_file)
                        fail(up, 400, "the 'file' field is missing");
                else if (strcmp(up->up_purpose, "batch"))
                        fail(up, 400,
                             "'purpose' must be \"batch\" (got \"%.60s\")",
                             up->up_purpose);
        }
        if (!up->up_fail) {
                kb_pub_lines_end(up->up_lines);
                flush_chunk(up);
        }
        items = kb_pub_check_items(up->up_check);
        if (!up->up_fail && up->up_bad_cnt) {
                char *list = NULL, *m;
                size_t i;
                json_t *s;
                json_array_foreach(up->up_bad, i, s) {
                        if (asprintf(&m, "%s%s%s", list ? list : "",
                                     list ? "; " : "", json_string_value(s)) <
                            0)
                                m = NULL;
                        free(list);
                        list = m;
                }
                kb_api_error(rq, 400, "file",
                             "the file has %lld bad line%s; nothing was "
                             "stored: %s%s",
                             (long long)up->up_bad_cnt,
                             up->up_bad_cnt == 1 ? "" : "s", list ? list : "",
                             up->up_bad_cnt > BAD_LINES_SHOWN ? "; ..." : "");
                free(list);
                return MHD_YES;
        }
        if (!up->up_fail && !items)
                fail(up, 400, "the file has no requests");
        if (up->up_fail) {
                return kb_api_error(rq, up->up_fail, "file", "%s",
                                    up->up_fail_msg);
        }
        if (store_header(ap, up->up_id, rq->rq_tenant, up->up_filename,
                         up->up_purpose, up->up_bytes, items,
                         up->up_partition, up->up_chunks, up->up_wait, &hdr,
                         errstr, sizeof(errstr))) {
                return kb_api_error(rq, 503, NULL, "cannot store the file: %s",
                                    errstr);
        }
        up->up_stored = 1;
        kb_log(KB_LOG_INFO, "api",
               "tenant %s uploaded file %s: %lld bytes, %lld requests, %lld "
               "chunks",
               rq->rq_tenant, up->up_id, (long long)up->up_bytes,
               (long long)items, (long long)up->up_chunks);
        ret = kb_api_reply_json(rq, 200, kb_api_file_object(ap, hdr));
        json_decref(hdr);
        return ret;
}

/* ---- the other endpoints ---- */

/* The header of file id if tenant owns it (new reference), else NULL. A
 * result file of a batch gets a header made up from the batch. */
static json_t *owned_file(kb_api_req_t *rq, const char *id) {
        kb_api_t *ap = rq->rq_api;
        json_t *f = kb_apistore_file(ap->ap_store, id), *b;
        const char *tn;
        char bid[64];
        int errors;
        if (f) {
                tn = json_string_value(json_object_get(f, "tenant"));
                if (tn && !strcmp(tn, rq->rq_tenant))
                        return f;
                json_decref(f);
                return NULL;
        }
        if (!kb_api_result_file_parse(id, bid, &errors) ||
            !(b = kb_apistore_batch(ap->ap_store, bid)))
                return NULL;
        tn = json_string_value(json_object_get(b, "tenant"));
        if (!tn || strcmp(tn, rq->rq_tenant)) {
                json_decref(b);
                return NULL;
        }
        f = json_pack("{ss sO ss ss sO si s{ss si}}", "id", id, "tenant",
                      json_object_get(b, "tenant"), "filename",
                      errors ? "batch_errors.jsonl" : "batch_output.jsonl",
                      "purpose", "batch_output", "created_at",
                      json_object_get(b, "created_at"), "bytes", 0, "result",
                      "batch_id", bid, "errors", errors);
        json_decref(b);
        return f;
}

static json_t *file_fmt(kb_api_req_t *rq, json_t *hdr) {
        return kb_api_file_object(rq->rq_api, hdr);
}

/* An uploaded file's content, streamed from its chunks: libmicrohttpd
 * asks for the bytes from pos on (one connection, one thread). */
typedef struct {
        kb_apifile_t *cs_f;
        const char *cs_buf; /* the current chunk, borrowed from cs_f */
        size_t cs_len, cs_off;
} content_t;

static ssize_t content_read(void *cls, uint64_t pos, char *buf, size_t max) {
        content_t *cs = cls;
        char err[256];
        size_t n;
        (void)pos;
        while (cs->cs_off == cs->cs_len) {
                int r = kb_apistore_file_next(cs->cs_f, &cs->cs_buf,
                                              &cs->cs_len, err, sizeof(err));
                if (r <= 0) {
                        if (r < 0)
                                kb_log(KB_LOG_WARN, "api",
                                       "sending a file cut short: %s", err);
                        return r < 0 ? MHD_CONTENT_READER_END_WITH_ERROR
                                     : MHD_CONTENT_READER_END_OF_STREAM;
                }
                cs->cs_off = 0;
        }
        n = cs->cs_len - cs->cs_off < max ? cs->cs_len - cs->cs_off : max;
        memcpy(buf, cs->cs_buf + cs->cs_off, n);
        cs->cs_off += n;
        return (ssize_t)n;
}

static void content_free(void *cls) {
        content_t *cs = cls;
        kb_apistore_file_close(cs->cs_f);
        free(cs);
}

static enum MHD_Result file_content(kb_api_req_t *rq, json_t *f) {
        kb_api_t *ap = rq->rq_api;
        json_t *res = json_object_get(f, "result");
        char errstr[1024];
        if (res)
                return kb_api_result_stream(
                        rq, json_string_value(json_object_get(res, "batch_id")),
                        (int)json_integer_value(json_object_get(res, "errors")),
                        KB_BF_OUT_OPENAI, "application/jsonl");
        {
                content_t *cs = calloc(1, sizeof(*cs));
                struct MHD_Response *r;
                if (!cs)
                        return MHD_NO;
                if (!(cs->cs_f = kb_apistore_file_open(ap->ap_store, f, errstr,
                                                       sizeof(errstr)))) {
                        free(cs);
                        return kb_api_error(rq, 503, NULL,
                                            "cannot read the file: %s",
                                            errstr);
                }
                r = MHD_create_response_from_callback(
                        (uint64_t)json_integer_value(
                                json_object_get(f, "bytes")),
                        65536, content_read, cs, content_free);
                if (!r) {
                        content_free(cs);
                        return MHD_NO;
                }
                return kb_api_reply_response(rq, 200, r, "application/jsonl");
        }
}

static enum MHD_Result file_delete(kb_api_req_t *rq, json_t *f) {
        kb_api_t *ap = rq->rq_api;
        int64_t i, chunks = json_integer_value(json_object_get(f, "chunks"));
        int32_t part =
                (int32_t)json_integer_value(json_object_get(f, "partition"));
        char errstr[512], key[96];
        rd_kafka_t *rk = kb_apistore_producer(ap->ap_store);
        if (json_object_get(f, "result"))
                return kb_api_error(rq, 400, NULL,
                                    "the result files of a batch are not "
                                    "deleted by themselves");
        for (i = 0; i < chunks; i++) {
                snprintf(key, sizeof(key), "%s:%lld", rq->rq_id, (long long)i);
                rd_kafka_producev(
                        rk,
                        RD_KAFKA_V_TOPIC(
                                ap->ap_conf->topics_name[KB_TOPIC_FILES]),
                        RD_KAFKA_V_PARTITION(part),
                        RD_KAFKA_V_KEY(key, strlen(key)),
                        RD_KAFKA_V_VALUE(NULL, 0), RD_KAFKA_V_END);
        }
        if (kb_apistore_put(ap->ap_store, KB_TOPIC_API_BATCHES, rq->rq_id,
                            NULL, -1, errstr, sizeof(errstr)))
                return kb_api_error(rq, 503, NULL, "cannot delete: %s", errstr);
        return kb_api_reply_json(rq, 200,
                                 json_pack("{ss ss sb}", "id", rq->rq_id,
                                           "object", "file", "deleted", 1));
}

enum MHD_Result kb_api_files(kb_api_req_t *rq) {
        kb_api_t *ap = rq->rq_api;
        enum MHD_Result ret;
        json_t *f;
        if (rq->rq_route == R_FILES) {
                int64_t limit;
                const char *after = MHD_lookup_connection_value(
                        rq->rq_conn, MHD_GET_ARGUMENT_KIND, "after");
                json_t *all;
                if (kb_api_query_int(rq, "limit", 1, 10000, 10000, &limit,
                                     &ret))
                        return ret;
                all = kb_apistore_files(ap->ap_store, rq->rq_tenant);
                ret = kb_api_reply_json(rq, 200,
                                        kb_api_page(rq, all, limit, after, NULL,
                                                    file_fmt));
                json_decref(all);
                return ret;
        }
        if (!(f = owned_file(rq, rq->rq_id)))
                return kb_api_error(rq, 404, "file_id", "no such file: %s",
                                    rq->rq_id);
        if (rq->rq_route == R_FILE_CONTENT)
                ret = file_content(rq, f);
        else if (!strcmp(rq->rq_method, "DELETE"))
                ret = file_delete(rq, f);
        else
                ret = kb_api_reply_json(rq, 200, kb_api_file_object(ap, f));
        json_decref(f);
        return ret;
}
