/* registry: see registry.h.
 *
 * Every cache entry is one question to the registry: "the schema of id N"
 * or "the id of this schema under subject S". An entry is asked at most
 * once at a time (one request, rg_req_t); the request tries the URLs in
 * turn, starting with the last one that answered, and the entry ends
 * OK, NOT_FOUND, REJECTED, or FAILED (every URL unavailable: asked again
 * after a backoff). Entries by subject are few (kbatch's own schemas) and
 * searched linearly. Entries by id are indexed by a hash table and bounded
 * (RG_IDS_MAX, the oldest not in flight evicted first), and ids never seen
 * are asked at most RG_NEW_IDS_PER_S a second: a stream of random ids in
 * bad Avro payloads must not grow memory, CPU or registry traffic without
 * bound (issue 15). The serde keeps its own copies of the schemas it uses. */
#include "registry.h"

#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <time.h>

#include "http.h"
#include "log.h"

#define RG_MAX_URLS 8
#define RG_MAX_RESPONSE                                                        \
        (8u << 20) /* bytes: a schema bigger than this is                      \
                    * refused */
#define RG_BACKOFF_MIN_MS 250
#define RG_BACKOFF_MAX_MS 10000
#define RG_CONTENT_TYPE   "application/vnd.schemaregistry.v1+json"
#define RG_IDX_SIZE       1024 /* buckets of the by-id index (power of 2) */
#define RG_IDS_MAX        1024 /* by-id entries kept */
#define RG_NEW_IDS_PER_S  20   /* ids never seen asked per second (burst) */

typedef enum {
        ENT_NEW = 0, /* never asked */
        ENT_ASKING,  /* request in flight (asynchronous mode) */
        ENT_OK,
        ENT_FAILED,   /* unavailable: ask again after en_retry_at */
        ENT_NOTFOUND, /* until en_retry_at */
        ENT_REJECTED, /* by id: permanent; by subject: until en_retry_at */
} ent_state_t;

typedef struct rg_req_s rg_req_t;

typedef struct rg_entry_s {
        struct rg_entry_s *en_next;
        struct rg_entry_s *en_hnext;             /* by id: hash chain */
        TAILQ_ENTRY(rg_entry_s) en_age;          /* by id: oldest first */
        int en_by_subject; /* 0: schema by id, 1: id by subject */
        int32_t en_id;     /* by id: the key; by subject: the answer */
        char *en_subject;  /* by subject: key */
        char *en_schema;   /* by id: the answer; by subject: key */
        int en_register;   /* by subject: register (1) or look up */
        ent_state_t en_state;
        int64_t en_retry_at; /* mono ms (FAILED, NOTFOUND) */
        int en_backoff_ms;
        char en_err[512];
        rg_req_t *en_req; /* in flight */
} rg_entry_t;

struct rg_req_s {
        kb_xfer_t rq_xfer; /* first: CURLOPT_PRIVATE points here */
        kb_registry_t *rq_rg;
        rg_entry_t *rq_ent;
        kb_http_req_t rq_http;
        char rq_path[512]; /* "/schemas/ids/5" */
        char *rq_body;     /* POST body, or NULL for GET */
        int rq_url;   /* index into rg_urls of this attempt */
        int rq_tried; /* URLs tried so far */
        char rq_errs[512]; /* every URL's failure, for the message */
};

struct kb_registry_s {
        kb_loop_t *rg_loop; /* NULL: blocking */
        char *rg_urls[RG_MAX_URLS];
        char *rg_shown[RG_MAX_URLS]; /* the same, credentials redacted: what
                                      * logs, errors and /readyz may show */
        int rg_url_cnt;
        int rg_cur; /* the URL that answered last */
        char *rg_user, *rg_password, *rg_bearer_env, *rg_bearer_file;
        char *rg_ca_file, *rg_cert_file, *rg_key_file;
        int rg_tls_verify;
        int rg_timeout_ms;
        size_t rg_ids_max;
        int rg_new_per_s;
        rg_entry_t *rg_entries;
        rg_entry_t *rg_idx[RG_IDX_SIZE];         /* by-id entries */
        TAILQ_HEAD(, rg_entry_s) rg_ids_age;
        size_t rg_ids_cnt;
        double rg_new_tokens;                    /* new ids that may be asked */
        int64_t rg_new_at;                       /* mono ms of the refill */
        uint64_t rg_generation;
        uint64_t rg_requests;
        /* health, read by other threads */
        pthread_mutex_t rg_lock;
        int rg_down;
        int64_t rg_down_since; /* wall ms */
        char rg_down_why[512];
};

static const char *res_names[] = {"ok", "pending", "unavailable", "not found",
                                  "rejected"};

const char *kb_registry_res_str(kb_registry_res_t r) {
        if ((unsigned)r >= sizeof(res_names) / sizeof(*res_names))
                return "unknown";
        return res_names[r];
}

static char *dup_or_null(const char *s) {
        return s && *s ? strdup(s) : NULL;
}

kb_registry_t *kb_registry_new(const kb_registry_conf_t *rc, kb_loop_t *loop,
                               char *errstr, size_t errstr_size) {
        kb_registry_t *rg = calloc(1, sizeof(*rg));
        const char *p = rc->rc_urls ? rc->rc_urls : "";
        if (!rg) {
                snprintf(errstr, errstr_size, "out of memory");
                return NULL;
        }
        pthread_mutex_init(&rg->rg_lock, NULL);
        rg->rg_loop = loop;
        /* "http://a:8081, http://b:8081/" -> without spaces and the final
         * slash. */
        while (*p) {
                const char *e = strchr(p, ',');
                size_t n = e ? (size_t)(e - p) : strlen(p);
                while (n && (*p == ' ' || *p == '\t'))
                        p++, n--;
                while (n &&
                       (p[n - 1] == ' ' || p[n - 1] == '\t' || p[n - 1] == '/'))
                        n--;
                if (n) {
                        if (rg->rg_url_cnt == RG_MAX_URLS) {
                                snprintf(errstr, errstr_size,
                                         "at most %d schema registry URLs",
                                         RG_MAX_URLS);
                                goto fail;
                        }
                        if (!(rg->rg_shown[rg->rg_url_cnt] = malloc(n + 8)))
                                goto oom;
                        kb_url_redact(p, n, rg->rg_shown[rg->rg_url_cnt],
                                      n + 8);
                        if (!(rg->rg_urls[rg->rg_url_cnt++] = strndup(p, n)))
                                goto oom;
                }
                if (!e)
                        break;
                p = e + 1;
        }
        if (!rg->rg_url_cnt) {
                snprintf(errstr, errstr_size,
                         "no schema registry URL (serde.schema_registry_url)");
                goto fail;
        }
        rg->rg_user = dup_or_null(rc->rc_user);
        rg->rg_password = dup_or_null(rc->rc_password);
        rg->rg_bearer_env = dup_or_null(rc->rc_bearer_env);
        rg->rg_bearer_file = dup_or_null(rc->rc_bearer_file);
        rg->rg_ca_file = dup_or_null(rc->rc_ca_file);
        rg->rg_cert_file = dup_or_null(rc->rc_cert_file);
        rg->rg_key_file = dup_or_null(rc->rc_key_file);
        rg->rg_tls_verify = rc->rc_tls_verify;
        rg->rg_timeout_ms = rc->rc_timeout_ms > 0 ? rc->rc_timeout_ms : 5000;
        TAILQ_INIT(&rg->rg_ids_age);
        rg->rg_ids_max = rc->rc_ids_max > 0 ? (size_t)rc->rc_ids_max
                                            : RG_IDS_MAX;
        rg->rg_new_per_s = rc->rc_new_ids_per_s > 0 ? rc->rc_new_ids_per_s
                                                    : RG_NEW_IDS_PER_S;
        rg->rg_new_tokens = rg->rg_new_per_s;
        rg->rg_new_at = kb_now_ms();
        return rg;
oom:
        snprintf(errstr, errstr_size, "out of memory");
fail:
        kb_registry_destroy(rg);
        return NULL;
}

static void req_free(rg_req_t *rq) {
        if (!rq)
                return;
        kb_http_req_release(&rq->rq_http, NULL);
        free(rq->rq_body);
        free(rq);
}

void kb_registry_destroy(kb_registry_t *rg) {
        rg_entry_t *en, *next;
        int i;
        if (!rg)
                return;
        for (en = rg->rg_entries; en; en = next) {
                next = en->en_next;
                if (en->en_req) {
                        if (rg->rg_loop && en->en_req->rq_http.hr_easy)
                                kb_loop_remove(rg->rg_loop,
                                               en->en_req->rq_http.hr_easy);
                        req_free(en->en_req);
                }
                free(en->en_subject);
                free(en->en_schema);
                free(en);
        }
        for (i = 0; i < RG_MAX_URLS; i++) {
                free(rg->rg_urls[i]);
                free(rg->rg_shown[i]);
        }
        free(rg->rg_user);
        if (rg->rg_password) {
                memset(rg->rg_password, 0, strlen(rg->rg_password));
                free(rg->rg_password);
        }
        free(rg->rg_bearer_env);
        free(rg->rg_bearer_file);
        free(rg->rg_ca_file);
        free(rg->rg_cert_file);
        free(rg->rg_key_file);
        pthread_mutex_destroy(&rg->rg_lock);
        free(rg);
}

uint64_t kb_registry_generation(const kb_registry_t *rg) {
        return rg->rg_generation;
}

uint64_t kb_registry_requests(const kb_registry_t *rg) {
        return rg->rg_requests;
}

int kb_registry_healthy(kb_registry_t *rg, char *why, size_t why_size) {
        int ok;
        pthread_mutex_lock(&rg->rg_lock);
        ok = !rg->rg_down;
        if (!ok && why && why_size)
                snprintf(why, why_size,
                         "schema registry unavailable for %lld "
                         "ms: %s",
                         (long long)(kb_wall_ms() - rg->rg_down_since),
                         rg->rg_down_why);
        pthread_mutex_unlock(&rg->rg_lock);
        return ok;
}

static void set_health(kb_registry_t *rg, int up, const char *why) {
        pthread_mutex_lock(&rg->rg_lock);
        if (up)
                rg->rg_down = 0;
        else {
                if (!rg->rg_down) {
                        rg->rg_down = 1;
                        rg->rg_down_since = kb_wall_ms();
                }
                snprintf(rg->rg_down_why, sizeof(rg->rg_down_why), "%s", why);
        }
        pthread_mutex_unlock(&rg->rg_lock);
}

/* ---- one HTTP round trip --------------------------------------------- */

/* The bearer token, from the file (read each time) or the environment.
 * Returns 1 with the token in buf. */
static int bearer_token(const kb_registry_t *rg, char *buf, size_t size) {
        if (rg->rg_bearer_file) {
                FILE *f = fopen(rg->rg_bearer_file, "r");
                size_t n;
                if (!f)
                        return 0;
                n = fread(buf, 1, size - 1, f);
                fclose(f);
                while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' ||
                             buf[n - 1] == ' '))
                        n--;
                buf[n] = '\0';
                return n > 0;
        }
        if (rg->rg_bearer_env) {
                const char *t = getenv(rg->rg_bearer_env);
                if (t && *t) {
                        snprintf(buf, size, "%s", t);
                        return 1;
                }
        }
        return 0;
}

static void xfer_done(kb_xfer_t *xf, CURLcode cc);

/* Prepares the easy handle of rq for its URL rq_url. -1 on failure. */
static int req_setup(rg_req_t *rq) {
        kb_registry_t *rg = rq->rq_rg;
        kb_http_req_t *hr = &rq->rq_http;
        char url[4096], tok[4096], line[4200];
        CURL *e;

        snprintf(url, sizeof(url), "%s%s", rg->rg_urls[rq->rq_url],
                 rq->rq_path);
        /* (a body of RG_MAX_RESPONSE bytes is refused, as it always was) */
        if (!(e = kb_http_req_reset(hr, NULL, RG_MAX_RESPONSE - 1, 0)))
                return -1;
        kb_http_req_header(hr, "Accept: " RG_CONTENT_TYPE
                               ", application/json;q=0.9");
        if (rq->rq_body)
                kb_http_req_header(hr, "Content-Type: " RG_CONTENT_TYPE);
        kb_http_req_header(hr, "Expect:");
        if (bearer_token(rg, tok, sizeof(tok))) {
                snprintf(line, sizeof(line), "Authorization: Bearer %s", tok);
                kb_http_req_header(hr, line);
                memset(tok, 0, sizeof(tok));
                memset(line, 0, sizeof(line));
        }
        rq->rq_xfer.xf_done = xfer_done;
        if (kb_http_req_prepare(hr, &rq->rq_xfer, url, rq->rq_body,
                                rq->rq_body ? strlen(rq->rq_body) : 0,
                                (long)rg->rg_timeout_ms,
                                (long)rg->rg_timeout_ms))
                return -1;
        if (rg->rg_user) {
                curl_easy_setopt(e, CURLOPT_HTTPAUTH, CURLAUTH_BASIC);
                curl_easy_setopt(e, CURLOPT_USERNAME, rg->rg_user);
                curl_easy_setopt(e, CURLOPT_PASSWORD,
                                 rg->rg_password ? rg->rg_password : "");
        }
        kb_http_req_tls(hr, rg->rg_tls_verify, rg->rg_ca_file);
        if (rg->rg_cert_file)
                curl_easy_setopt(e, CURLOPT_SSLCERT, rg->rg_cert_file);
        if (rg->rg_key_file)
                curl_easy_setopt(e, CURLOPT_SSLKEY, rg->rg_key_file);
        rg->rg_requests++;
        return 0;
}

/* The registry's error message from an error body, or the body itself. */
static void error_text(const rg_req_t *rq, long status, char *buf,
                       size_t size) {
        const kb_http_req_t *hr = &rq->rq_http;
        json_t *o = hr->hr_resp
                            ? json_loadb(hr->hr_resp, hr->hr_resp_len, 0, NULL)
                            : NULL;
        const char *msg =
                o ? json_string_value(json_object_get(o, "message")) : NULL;
        json_int_t code =
                o ? json_integer_value(json_object_get(o, "error_code")) : 0;
        if (msg && code)
                snprintf(buf, size, "HTTP %ld, error %lld: %.300s", status,
                         (long long)code, msg);
        else if (msg)
                snprintf(buf, size, "HTTP %ld: %.300s", status, msg);
        else
                snprintf(buf, size, "HTTP %ld: %.200s", status,
                         hr->hr_resp ? hr->hr_resp : "");
        json_decref(o);
}

static rg_entry_t *entry_new(kb_registry_t *rg);
static rg_entry_t *id_find(kb_registry_t *rg, int32_t id);
static rg_entry_t *id_add(kb_registry_t *rg, int32_t id);

/* A subject answer also tells the schema of an id: cache it by id too, so
 * that reading back what we wrote needs no request. */
static void id_learned(kb_registry_t *rg, int32_t id, const char *schema) {
        rg_entry_t *en = id_find(rg, id);
        if (en && (en->en_state == ENT_OK || en->en_state == ENT_ASKING))
                return;
        if (!en && !(en = id_add(rg, id)))
                return;
        free(en->en_schema);
        if ((en->en_schema = strdup(schema)))
                en->en_state = ENT_OK;
        else
                en->en_state = ENT_NEW;
}

/* Reads a 2xx answer into the entry. */
static void take_answer(rg_req_t *rq, long status) {
        rg_entry_t *en = rq->rq_ent;
        json_error_t jerr;
        const kb_http_req_t *hr = &rq->rq_http;
        json_t *o = hr->hr_resp
                            ? json_loadb(hr->hr_resp, hr->hr_resp_len, 0, &jerr)
                            : NULL;
        if (!o || !json_is_object(o)) {
                snprintf(en->en_err, sizeof(en->en_err),
                         "the schema registry answered %s %.200s with HTTP %ld "
                         "and a body that is not a JSON object",
                         rq->rq_body ? "POST" : "GET", rq->rq_path, status);
                en->en_state = ENT_REJECTED;
                json_decref(o);
                return;
        }
        if (!en->en_by_subject) {
                const char *s = json_string_value(json_object_get(o, "schema"));
                const char *type =
                        json_string_value(json_object_get(o, "schemaType"));
                json_t *refs = json_object_get(o, "references");
                if (!s) {
                        snprintf(en->en_err, sizeof(en->en_err),
                                 "schema id %d: the registry's answer has no "
                                 "'schema' string",
                                 (int)en->en_id);
                        en->en_state = ENT_REJECTED;
                } else if (type && strcmp(type, "AVRO")) {
                        snprintf(en->en_err, sizeof(en->en_err),
                                 "schema id %d is a %.32s schema, not AVRO",
                                 (int)en->en_id, type);
                        en->en_state = ENT_REJECTED;
                } else if (json_is_array(refs) && json_array_size(refs)) {
                        snprintf(en->en_err, sizeof(en->en_err),
                                 "schema id %d uses schema references, which "
                                 "kbatch does not support",
                                 (int)en->en_id);
                        en->en_state = ENT_REJECTED;
                } else if (!(en->en_schema = strdup(s))) {
                        snprintf(en->en_err, sizeof(en->en_err),
                                 "out of memory");
                        en->en_state = ENT_FAILED;
                } else
                        en->en_state = ENT_OK;
        } else {
                json_t *id = json_object_get(o, "id");
                if (!json_is_integer(id) || json_integer_value(id) < 0 ||
                    json_integer_value(id) > INT32_MAX) {
                        snprintf(en->en_err, sizeof(en->en_err),
                                 "subject %.200s: the registry's answer has "
                                 "no valid 'id'",
                                 en->en_subject);
                        en->en_state = ENT_REJECTED;
                } else {
                        en->en_id = (int32_t)json_integer_value(id);
                        en->en_state = ENT_OK;
                        id_learned(rq->rq_rg, en->en_id, en->en_schema);
                }
        }
        json_decref(o);
}

/* Judges one attempt. Returns 1 when the next URL should be tried. */
static int attempt_done(rg_req_t *rq, CURLcode cc) {
        kb_registry_t *rg = rq->rq_rg;
        rg_entry_t *en = rq->rq_ent;
        long status = 0;
        char why[400];
        size_t n;

        if (cc == CURLE_OK)
                status = kb_http_req_status(&rq->rq_http);
        if (cc == CURLE_OK && status >= 200 && status <= 299 &&
            !rq->rq_http.hr_too_large) {
                take_answer(rq, status);
                rg->rg_cur = rq->rq_url;
                set_health(rg, 1, NULL);
                return 0;
        }
        if (cc == CURLE_OK && status == 404) {
                error_text(rq, status, why, sizeof(why));
                if (en->en_by_subject)
                        snprintf(en->en_err, sizeof(en->en_err),
                                 "subject '%.200s': schema not registered "
                                 "(%.250s)",
                                 en->en_subject, why);
                else
                        snprintf(en->en_err, sizeof(en->en_err),
                                 "schema id %d not found in the schema "
                                 "registry (%.300s)",
                                 (int)en->en_id, why);
                en->en_state = ENT_NOTFOUND;
                en->en_retry_at = kb_now_ms() + KB_REGISTRY_NEG_TTL_MS;
                rg->rg_cur = rq->rq_url;
                set_health(rg, 1, NULL);
                return 0;
        }
        if (cc == CURLE_OK && status >= 400 && status <= 499 && status != 401 &&
            status != 403 && status != 408 && status != 429) {
                /* 409 incompatible, 422 invalid schema, 400, ...: the
                 * registry works and said no. */
                error_text(rq, status, why, sizeof(why));
                snprintf(en->en_err, sizeof(en->en_err),
                         "the schema registry refused %s %.100s: %.300s",
                         rq->rq_body ? "POST" : "GET", rq->rq_path, why);
                en->en_state = ENT_REJECTED;
                rg->rg_cur = rq->rq_url;
                set_health(rg, 1, NULL);
                return 0;
        }
        /* Unavailable here: transport error, timeout, 5xx, 401/403 (a
         * credentials problem is the operator's to fix, not the item's),
         * 408/429, or an oversized answer. */
        if (cc != CURLE_OK)
                snprintf(why, sizeof(why), "%s",
                         rq->rq_http.hr_errbuf[0] ? rq->rq_http.hr_errbuf
                                                  : curl_easy_strerror(cc));
        else if (rq->rq_http.hr_too_large)
                snprintf(why, sizeof(why), "answer over %u bytes",
                         RG_MAX_RESPONSE);
        else
                error_text(rq, status, why, sizeof(why));
        n = strlen(rq->rq_errs);
        snprintf(rq->rq_errs + n, sizeof(rq->rq_errs) - n, "%s%s: %s",
                 n ? "; " : "", rg->rg_shown[rq->rq_url], why);
        rq->rq_tried++;
        if (rq->rq_tried < rg->rg_url_cnt) {
                rq->rq_url = (rq->rq_url + 1) % rg->rg_url_cnt;
                return 1;
        }
        snprintf(en->en_err, sizeof(en->en_err), "%s %.100s: %.390s",
                 rq->rq_body ? "POST" : "GET", rq->rq_path, rq->rq_errs);
        en->en_state = ENT_FAILED;
        en->en_backoff_ms = en->en_backoff_ms
                                    ? (en->en_backoff_ms * 2 > RG_BACKOFF_MAX_MS
                                               ? RG_BACKOFF_MAX_MS
                                               : en->en_backoff_ms * 2)
                                    : RG_BACKOFF_MIN_MS;
        en->en_retry_at = kb_now_ms() + en->en_backoff_ms;
        set_health(rg, 0, en->en_err);
        kb_log(KB_LOG_WARN, "registry",
               "schema registry unavailable: %s "
               "(asking again in %d ms)",
               en->en_err, en->en_backoff_ms);
        return 0;
}

/* Ends the entry's request (answered or failed on every URL). */
static void req_end(rg_req_t *rq) {
        kb_registry_t *rg = rq->rq_rg;
        rq->rq_ent->en_req = NULL;
        if (rq->rq_ent->en_state == ENT_OK)
                rq->rq_ent->en_backoff_ms = 0;
        /* a subject's refusal (409: its compatibility rule) can end when an
         * operator changes the rule: asked again later, like not found */
        if (rq->rq_ent->en_state == ENT_REJECTED)
                rq->rq_ent->en_retry_at = kb_now_ms() + KB_REGISTRY_NEG_TTL_MS;
        req_free(rq);
        rg->rg_generation++;
}

static void xfer_done(kb_xfer_t *xf, CURLcode cc) {
        rg_req_t *rq = (rg_req_t *)xf;
        kb_registry_t *rg = rq->rq_rg;
        if (attempt_done(rq, cc)) {
                if (req_setup(rq) == 0 &&
                    kb_http_req_start(&rq->rq_http, rg->rg_loop) == 0)
                        return;
                snprintf(rq->rq_ent->en_err, sizeof(rq->rq_ent->en_err),
                         "cannot start a request to the schema registry");
                rq->rq_ent->en_state = ENT_FAILED;
                rq->rq_ent->en_retry_at = kb_now_ms() + RG_BACKOFF_MIN_MS;
        }
        req_end(rq);
}

/* Asks the entry's question: asynchronously (returns with ENT_ASKING) or
 * blocking (returns with the answer). */
static void ask(kb_registry_t *rg, rg_entry_t *en) {
        rg_req_t *rq = calloc(1, sizeof(*rq));
        char *esc = NULL;
        if (!rq)
                goto fail;
        rq->rq_rg = rg;
        rq->rq_ent = en;
        rq->rq_url = rg->rg_cur;
        if (!en->en_by_subject)
                snprintf(rq->rq_path, sizeof(rq->rq_path), "/schemas/ids/%d",
                         (int)en->en_id);
        else {
                json_t *b = json_pack("{s:s}", "schema", en->en_schema);
                if (!b)
                        goto fail;
                rq->rq_body = json_dumps(b, JSON_COMPACT);
                json_decref(b);
                if (!rq->rq_body ||
                    !(esc = curl_easy_escape(NULL, en->en_subject, 0)))
                        goto fail;
                snprintf(rq->rq_path, sizeof(rq->rq_path), "/subjects/%s%s",
                         esc, en->en_register ? "/versions" : "");
                curl_free(esc);
        }
        en->en_req = rq;
        if (rg->rg_loop) {
                if (req_setup(rq) != 0 ||
                    kb_http_req_start(&rq->rq_http, rg->rg_loop) != 0)
                        goto fail_req;
                en->en_state = ENT_ASKING;
                return;
        }
        for (;;) {
                CURLcode cc;
                if (req_setup(rq) != 0)
                        goto fail_req;
                cc = curl_easy_perform(rq->rq_http.hr_easy);
                if (!attempt_done(rq, cc))
                        break;
        }
        req_end(rq);
        return;
fail_req:
        en->en_req = NULL;
fail:
        req_free(rq);
        snprintf(en->en_err, sizeof(en->en_err),
                 "cannot start a request to the schema registry (out of "
                 "memory?)");
        en->en_state = ENT_FAILED;
        en->en_retry_at = kb_now_ms() + RG_BACKOFF_MIN_MS;
}

/* The answer of an entry, asking when needed. */
static kb_registry_res_t answer(kb_registry_t *rg, rg_entry_t *en, char *errstr,
                                size_t errstr_size) {
        int64_t now = kb_now_ms();
        if (en->en_state == ENT_NEW ||
            ((en->en_state == ENT_FAILED || en->en_state == ENT_NOTFOUND ||
              (en->en_state == ENT_REJECTED && en->en_by_subject)) &&
             now >= en->en_retry_at))
                ask(rg, en);
        switch (en->en_state) {
        case ENT_OK:
                return KB_REG_OK;
        case ENT_ASKING:
                if (en->en_by_subject)
                        snprintf(errstr, errstr_size,
                                 "waiting for the schema registry (subject "
                                 "'%.200s')",
                                 en->en_subject);
                else
                        snprintf(errstr, errstr_size,
                                 "waiting for the schema registry (schema id "
                                 "%d)",
                                 (int)en->en_id);
                return KB_REG_PENDING;
        case ENT_FAILED:
                snprintf(errstr, errstr_size, "schema registry unavailable: %s",
                         en->en_err);
                return KB_REG_UNAVAILABLE;
        case ENT_NOTFOUND:
                snprintf(errstr, errstr_size, "%s", en->en_err);
                return KB_REG_NOT_FOUND;
        case ENT_REJECTED:
        default:
                snprintf(errstr, errstr_size, "%s", en->en_err);
                return KB_REG_REJECTED;
        }
}

static rg_entry_t *entry_new(kb_registry_t *rg) {
        rg_entry_t *en = calloc(1, sizeof(*en));
        if (!en)
                return NULL;
        en->en_next = rg->rg_entries;
        rg->rg_entries = en;
        return en;
}

static size_t id_bucket(int32_t id) {
        return ((uint32_t)id * 2654435761u) & (RG_IDX_SIZE - 1);
}

static rg_entry_t *id_find(kb_registry_t *rg, int32_t id) {
        rg_entry_t *en;
        for (en = rg->rg_idx[id_bucket(id)]; en; en = en->en_hnext)
                if (en->en_id == id)
                        return en;
        return NULL;
}

/* Forgets a by-id entry (not in flight): off the index, the age list and
 * the list of entries. */
static void id_evict(kb_registry_t *rg, rg_entry_t *en) {
        rg_entry_t **pp;
        for (pp = &rg->rg_idx[id_bucket(en->en_id)]; *pp;
             pp = &(*pp)->en_hnext)
                if (*pp == en) {
                        *pp = en->en_hnext;
                        break;
                }
        for (pp = &rg->rg_entries; *pp; pp = &(*pp)->en_next)
                if (*pp == en) {
                        *pp = en->en_next;
                        break;
                }
        TAILQ_REMOVE(&rg->rg_ids_age, en, en_age);
        rg->rg_ids_cnt--;
        free(en->en_schema);
        free(en);
}

/* A new by-id entry; the oldest not in flight is forgotten beyond
 * RG_IDS_MAX (its schema, if it had one, is asked again when needed). */
static rg_entry_t *id_add(kb_registry_t *rg, int32_t id) {
        rg_entry_t *en, *old;
        if (rg->rg_ids_cnt >= rg->rg_ids_max)
                TAILQ_FOREACH(old, &rg->rg_ids_age, en_age)
                        if (!old->en_req) {
                                id_evict(rg, old);
                                break;
                        }
        if (!(en = entry_new(rg)))
                return NULL;
        en->en_id = id;
        en->en_hnext = rg->rg_idx[id_bucket(id)];
        rg->rg_idx[id_bucket(id)] = en;
        TAILQ_INSERT_TAIL(&rg->rg_ids_age, en, en_age);
        rg->rg_ids_cnt++;
        return en;
}

/* May an id never seen be asked now? A token bucket of RG_NEW_IDS_PER_S. */
static int new_id_allowed(kb_registry_t *rg) {
        int64_t now = kb_now_ms();
        rg->rg_new_tokens += (double)(now - rg->rg_new_at) *
                             rg->rg_new_per_s / 1000.0;
        rg->rg_new_at = now;
        if (rg->rg_new_tokens > rg->rg_new_per_s)
                rg->rg_new_tokens = rg->rg_new_per_s;
        if (rg->rg_new_tokens < 1.0)
                return 0;
        rg->rg_new_tokens -= 1.0;
        return 1;
}

kb_registry_res_t kb_registry_schema_by_id(kb_registry_t *rg, int32_t id,
                                           const char **schemap, char *errstr,
                                           size_t errstr_size) {
        rg_entry_t *en = id_find(rg, id);
        kb_registry_res_t r;
        if (!en) {
                if (!new_id_allowed(rg)) {
                        snprintf(errstr, errstr_size,
                                 "waiting for the schema registry (schema id "
                                 "%d: more than %d new ids a second)",
                                 (int)id, rg->rg_new_per_s);
                        return KB_REG_PENDING;
                }
                if (!(en = id_add(rg, id))) {
                        snprintf(errstr, errstr_size, "out of memory");
                        return KB_REG_UNAVAILABLE;
                }
        }
        r = answer(rg, en, errstr, errstr_size);
        if (r == KB_REG_OK)
                *schemap = en->en_schema;
        return r;
}

size_t kb_registry_ids_cached(const kb_registry_t *rg) {
        return rg->rg_ids_cnt;
}

kb_registry_res_t kb_registry_subject_id(kb_registry_t *rg, const char *subject,
                                         const char *schema, int do_register,
                                         int32_t *idp, char *errstr,
                                         size_t errstr_size) {
        rg_entry_t *en;
        kb_registry_res_t r;
        for (en = rg->rg_entries; en; en = en->en_next)
                if (en->en_by_subject && en->en_register == !!do_register &&
                    en->en_subject && en->en_schema &&
                    !strcmp(en->en_subject, subject) &&
                    !strcmp(en->en_schema, schema))
                        break;
        if (!en) {
                if (!(en = entry_new(rg)) ||
                    !(en->en_subject = strdup(subject)) ||
                    !(en->en_schema = strdup(schema))) {
                        snprintf(errstr, errstr_size, "out of memory");
                        return KB_REG_UNAVAILABLE;
                }
                en->en_by_subject = 1;
                en->en_register = !!do_register;
        }
        r = answer(rg, en, errstr, errstr_size);
        if (r == KB_REG_OK)
                *idp = en->en_id;
        return r;
}
