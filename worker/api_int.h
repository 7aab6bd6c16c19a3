/* api_int: what the parts of the HTTP API share (api.c: server, routing,
 * auth, errors; api_files.c: OpenAI Files; api_batches.c: OpenAI Batches
 * and Anthropic Message Batches). Not a public interface. */
#ifndef KB_API_INT_H
#define KB_API_INT_H

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdint.h>

#include "api.h"
#include "apikeys.h"
#include "apistore.h"
#include "conf.h"

struct kb_api_s {
        const kb_conf_t *ap_conf;
        struct MHD_Daemon *ap_mhd;
        int ap_port;
        kb_apikeys_t *ap_keys; /* NULL: no keys file (loopback only) */
        kb_apistore_t *ap_store;
        pthread_t ap_recover_thr; /* kb_api_recover every few seconds */
        int ap_recovering;        /* the thread runs */
        pthread_mutex_t ap_lock;  /* ap_stop, with ap_cond */
        pthread_cond_t ap_cond;
        int ap_stop;
};

typedef enum { KB_API_OPENAI = 0, KB_API_ANTHROPIC } kb_api_flavour_t;

/* The routes (path patterns). */
typedef enum {
        R_FILES = 0,     /* /v1/files */
        R_FILE,          /* /v1/files/{id} */
        R_FILE_CONTENT,  /* /v1/files/{id}/content */
        R_BATCHES,       /* /v1/batches */
        R_BATCH,         /* /v1/batches/{id} */
        R_BATCH_CANCEL,  /* /v1/batches/{id}/cancel */
        R_BATCH_ITEMS,   /* /v1/batches/{id}/items */
        R_MBATCHES,      /* /v1/messages/batches */
        R_MBATCH,        /* /v1/messages/batches/{id} */
        R_MBATCH_CANCEL, /* /v1/messages/batches/{id}/cancel */
        R_MBATCH_RESULTS, /* /v1/messages/batches/{id}/results */
        R__CNT
} kb_api_route_t;

typedef struct kb_api_upload_s kb_api_upload_t;

/* One request (the connection's state between libmicrohttpd's calls). */
typedef struct kb_api_req_s {
        kb_api_t *rq_api;
        struct MHD_Connection *rq_conn;
        int64_t rq_t0;           /* kb_now_ms() at the headers */
        kb_api_route_t rq_route; /* R__CNT: none */
        kb_api_flavour_t rq_flavour;
        const char *rq_method;   /* borrowed from libmicrohttpd */
        char rq_id[256];         /* the {id} of the path, "" when none */
        char rq_tenant[KB_APIKEYS_TENANT_MAX + 1];
        unsigned rq_status;      /* of the response queued, 0: none yet */
        char *rq_body;           /* a JSON body, rq_len bytes (+ NUL) */
        size_t rq_len, rq_cap;
        int rq_too_big;          /* the body passed the limit */
        kb_api_upload_t *rq_up;  /* POST /v1/files */
} kb_api_req_t;

/* ---- answers (api.c); each returns what the access handler returns ---- */

/* Queues body (stolen) as JSON with status. */
enum MHD_Result kb_api_reply_json(kb_api_req_t *rq, unsigned status,
                                  json_t *body);
/* Queues body (len bytes, taken: freed by libmicrohttpd) with ctype. */
enum MHD_Result kb_api_reply_raw(kb_api_req_t *rq, unsigned status,
                                 const char *ctype, char *body, size_t len);
/* Queues r (taken) with status and ctype. */
enum MHD_Result kb_api_reply_response(kb_api_req_t *rq, unsigned status,
                                      struct MHD_Response *r,
                                      const char *ctype);
/* Queues an error in the request's flavour: OpenAI {"error": {message,
 * type, param, code}}, Anthropic {"type": "error", "error": {type,
 * message}}. param may be NULL; the types follow from status. */
enum MHD_Result kb_api_error(kb_api_req_t *rq, unsigned status,
                             const char *param, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));

/* The request's JSON body as an object; NULL after queuing the 400. */
json_t *kb_api_body_object(kb_api_req_t *rq);

/* A new id: prefix + 26 characters (48 bits of time, 80 random bits), so
 * ids sort by creation time. out: at least 64 bytes. 0, or -1 when the
 * system gave no random bytes. */
int kb_api_new_id(const char *prefix, char *out);

/* An id of the length of a batch's, for sizing items while validating. */
#define KB_API_PLACEHOLDER_BATCH_ID "batch_00000000000000000000000000"
#define KB_API_PLACEHOLDER_MSGBATCH_ID "msgbatch_00000000000000000000000000"

/* Sorts arr (of objects with "id") by id, newest first, and answers a
 * page of at most limit after (ids older than) after_id, or the limit
 * newest before (ids newer than) before_id: {data, first_id, last_id,
 * has_more} (+ object "list" for OpenAI). fmt(rq, o) makes each element
 * (new reference). */
json_t *kb_api_page(kb_api_req_t *rq, json_t *arr, int64_t limit,
                    const char *after_id, const char *before_id,
                    json_t *(*fmt)(kb_api_req_t *, json_t *));

/* A query argument as int64 in [lo, hi], def when absent; -1 after
 * queuing the 400 (then *queued is the result to return). */
int kb_api_query_int(kb_api_req_t *rq, const char *name, int64_t lo,
                     int64_t hi, int64_t def, int64_t *out,
                     enum MHD_Result *queued);

/* ---- files (api_files.c) ---- */

/* POST /v1/files: called with each piece of the body, then once with
 * size 0 at the end. */
enum MHD_Result kb_api_upload_data(kb_api_req_t *rq, const char *data,
                                   size_t size);
enum MHD_Result kb_api_upload_start(kb_api_req_t *rq);
enum MHD_Result kb_api_upload_finish(kb_api_req_t *rq);
void kb_api_upload_free(kb_api_upload_t *up);

enum MHD_Result kb_api_files(kb_api_req_t *rq);

/* Stores buf (len bytes: lines already validated, lines requests) as a
 * file of tenant, as an upload would. 0 and *hdrp (the header, new
 * reference), or -1 with errstr. */
int kb_api_file_store(kb_api_t *ap, const char *tenant, const char *filename,
                      const char *purpose, const char *buf, size_t len,
                      int64_t lines, json_t **hdrp, char *errstr,
                      size_t errstr_size);

/* The OpenAI file object of a header. */
json_t *kb_api_file_object(kb_api_t *ap, json_t *hdr);

/* ---- batches (api_batches.c) ---- */

enum MHD_Result kb_api_batches(kb_api_req_t *rq);

/* A batch whose record says "validating" without a heartbeat for this
 * long lost the replica that was publishing it. */
#define KB_API_ORPHAN_MS 30000

/* Publishes the batches that lost their replica while publishing
 * (validating, no heartbeat for KB_API_ORPHAN_MS) again. Called every few
 * seconds by every replica. */
void kb_api_recover(kb_api_t *ap);

/* The output ("output") or error ("error") file of an API batch:
 * "file-<26>-output" for batch "batch_<26>". id_out: at least 64 bytes. */
void kb_api_result_file_id(const char *batch_id, const char *which,
                           char *id_out);
/* The batch and which file of a result file id: 1 and batch_id (64
 * bytes) and *errors set, 0 when id is not one. */
int kb_api_result_file_parse(const char *id, char *batch_id, int *errors);

/* Queues a 200 whose body streams what `kbatch collect` writes for
 * batch_id in format fmt (a kb_bf_out_t): which 0 the successes, 1 the
 * other items, 2 both; a failure on the way cuts the body short. */
enum MHD_Result kb_api_result_stream(kb_api_req_t *rq, const char *batch_id,
                                     int which, int fmt, const char *ctype);

/* The lines of a result file (which: 0 successes, 1 the others) of a
 * batch, in memory: 0 and *body, *len (caller frees); -1 with errstr. */
int kb_api_result_file(kb_api_t *ap, const char *batch_id, int errors,
                       int fmt, char **body, size_t *len, char *errstr,
                       size_t errstr_size);

#endif
