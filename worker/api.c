/* api: see api.h. The server, routing, authentication, errors and the
 * helpers of api_int.h; the endpoints are in api_files.c and
 * api_batches.c. */
#include "api.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>

#include "admin.h"
#include "api_int.h"
#include "batchfile.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"

/* Route patterns (the metrics' endpoint label) and allowed methods. */
static const struct {
        const char *rt_label;
        const char *rt_methods; /* for Allow: */
        kb_api_flavour_t rt_flavour;
} routes[R__CNT] = {
        [R_FILES] = {"/v1/files", "GET, POST", KB_API_OPENAI},
        [R_FILE] = {"/v1/files/{id}", "GET, DELETE", KB_API_OPENAI},
        [R_FILE_CONTENT] = {"/v1/files/{id}/content", "GET", KB_API_OPENAI},
        [R_BATCHES] = {"/v1/batches", "GET, POST", KB_API_OPENAI},
        [R_BATCH] = {"/v1/batches/{id}", "GET", KB_API_OPENAI},
        [R_BATCH_CANCEL] = {"/v1/batches/{id}/cancel", "POST", KB_API_OPENAI},
        [R_BATCH_ITEMS] = {"/v1/batches/{id}/items", "GET", KB_API_OPENAI},
        [R_MBATCHES] = {"/v1/messages/batches", "GET, POST",
                        KB_API_ANTHROPIC},
        [R_MBATCH] = {"/v1/messages/batches/{id}", "GET, DELETE",
                      KB_API_ANTHROPIC},
        [R_MBATCH_CANCEL] = {"/v1/messages/batches/{id}/cancel", "POST",
                             KB_API_ANTHROPIC},
        [R_MBATCH_RESULTS] = {"/v1/messages/batches/{id}/results", "GET",
                              KB_API_ANTHROPIC},
};

/* ---- answers ---- */

static enum MHD_Result queue(kb_api_req_t *rq, unsigned status,
                             struct MHD_Response *r, const char *ctype) {
        enum MHD_Result ret;
        if (!r)
                return MHD_NO;
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
        MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
        if (status == MHD_HTTP_METHOD_NOT_ALLOWED && rq->rq_route < R__CNT)
                MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW,
                                        routes[rq->rq_route].rt_methods);
        if (status == MHD_HTTP_UNAUTHORIZED)
                MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
                                        "Bearer");
        ret = MHD_queue_response(rq->rq_conn, status, r);
        MHD_destroy_response(r);
        if (ret == MHD_YES)
                rq->rq_status = status;
        return ret;
}

enum MHD_Result kb_api_reply_response(kb_api_req_t *rq, unsigned status,
                                      struct MHD_Response *r,
                                      const char *ctype) {
        return queue(rq, status, r, ctype);
}

enum MHD_Result kb_api_reply_raw(kb_api_req_t *rq, unsigned status,
                                 const char *ctype, char *body, size_t len) {
        struct MHD_Response *r = MHD_create_response_from_buffer(
                len, body, MHD_RESPMEM_MUST_FREE);
        if (!r)
                free(body);
        return queue(rq, status, r, ctype);
}

enum MHD_Result kb_api_reply_json(kb_api_req_t *rq, unsigned status,
                                  json_t *body) {
        char *s = body ? json_dumps(body, JSON_COMPACT) : NULL;
        json_decref(body);
        if (!s)
                return MHD_NO;
        return kb_api_reply_raw(rq, status, "application/json", s, strlen(s));
}

/* The error types of each flavour by status. */
static const char *openai_type(unsigned status) {
        switch (status) {
        case 401:
                return "invalid_request_error";
        case 404:
                return "invalid_request_error";
        case 409:
                return "invalid_request_error";
        case 429:
                return "rate_limit_error";
        default:
                return status >= 500 ? "server_error"
                                     : "invalid_request_error";
        }
}

static const char *openai_code(unsigned status) {
        switch (status) {
        case 401:
                return "invalid_api_key";
        case 404:
                return "not_found";
        case 405:
                return "method_not_allowed";
        case 409:
                return "conflict";
        case 413:
                return "request_too_large";
        case 503:
                return "unavailable";
        default:
                return status >= 500 ? "server_error" : "invalid_request";
        }
}

static const char *anthropic_type(unsigned status) {
        switch (status) {
        case 401:
                return "authentication_error";
        case 403:
                return "permission_error";
        case 404:
                return "not_found_error";
        case 413:
                return "request_too_large";
        case 429:
                return "rate_limit_error";
        case 503:
                return "overloaded_error";
        default:
                return status >= 500 ? "api_error" : "invalid_request_error";
        }
}

enum MHD_Result kb_api_error(kb_api_req_t *rq, unsigned status,
                             const char *param, const char *fmt, ...) {
        char msg[2048];
        va_list ap;
        json_t *o;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        if (rq->rq_flavour == KB_API_ANTHROPIC)
                o = json_pack("{ss s{ss ss}}", "type", "error", "error",
                              "type", anthropic_type(status), "message", msg);
        else
                o = json_pack("{s{ss ss so ss}}", "error", "message", msg,
                              "type", openai_type(status), "param",
                              param ? json_string(param) : json_null(),
                              "code", openai_code(status));
        return kb_api_reply_json(rq, status, o);
}

json_t *kb_api_body_object(kb_api_req_t *rq) {
        json_error_t je;
        json_t *o;
        if (!rq->rq_len) {
                kb_api_error(rq, 400, NULL,
                             "the request needs a JSON object body");
                return NULL;
        }
        o = json_loadb(rq->rq_body, rq->rq_len, JSON_REJECT_DUPLICATES, &je);
        if (!o) {
                kb_api_error(rq, 400, NULL,
                             "the body is not JSON: %s (line %d, column %d)",
                             je.text, je.line, je.column);
                return NULL;
        }
        if (!json_is_object(o)) {
                json_decref(o);
                kb_api_error(rq, 400, NULL, "the body must be a JSON object");
                return NULL;
        }
        return o;
}

int kb_api_new_id(const char *prefix, char *out) {
        uint8_t rnd[10];
        char id[KB_BF_BATCH_ID_SIZE];
        ssize_t n;
        do
                n = getrandom(rnd, sizeof(rnd), 0);
        while (n < 0 && errno == EINTR);
        if (n != (ssize_t)sizeof(rnd))
                return -1; /* never an id from a stale buffer */
        kb_bf_batch_id_generate(kb_wall_ms(), rnd, id);
        snprintf(out, 64, "%s%s", prefix, id + 2);
        return 0;
}

static int by_id_desc(const void *a, const void *b) {
        const char *x = json_string_value(
                json_object_get(*(json_t *const *)a, "id"));
        const char *y = json_string_value(
                json_object_get(*(json_t *const *)b, "id"));
        return strcmp(y ? y : "", x ? x : "");
}

json_t *kb_api_page(kb_api_req_t *rq, json_t *arr, int64_t limit,
                    const char *after_id, const char *before_id,
                    json_t *(*fmt)(kb_api_req_t *, json_t *)) {
        size_t n = json_array_size(arr), i, start = 0, end;
        json_t **v = calloc(n ? n : 1, sizeof(*v)), *data = json_array();
        json_t *first = NULL, *last = NULL, *out;
        for (i = 0; i < n; i++)
                v[i] = json_array_get(arr, i);
        qsort(v, n, sizeof(*v), by_id_desc);
        /* after: older than after_id; before: newer than before_id */
        if (after_id)
                while (start < n &&
                       strcmp(json_string_value(json_object_get(v[start],
                                                                "id")),
                              after_id) >= 0)
                        start++;
        end = n;
        if (before_id) {
                end = 0;
                while (end < n &&
                       strcmp(json_string_value(json_object_get(v[end], "id")),
                              before_id) > 0)
                        end++;
                if (end > (size_t)limit)
                        start = end - (size_t)limit;
        }
        for (i = start; i < end && i < start + (size_t)limit; i++)
                json_array_append_new(data, fmt(rq, v[i]));
        if (json_array_size(data)) {
                first = json_object_get(json_array_get(data, 0), "id");
                last = json_object_get(
                        json_array_get(data, json_array_size(data) - 1), "id");
        }
        out = json_pack("{so sO sO sb}", "data", data, "first_id",
                        first ? first : json_null(), "last_id",
                        last ? last : json_null(), "has_more",
                        before_id ? start > 0 : i < end);
        if (rq->rq_flavour == KB_API_OPENAI)
                json_object_set_new(out, "object", json_string("list"));
        free(v);
        return out;
}

int kb_api_query_int(kb_api_req_t *rq, const char *name, int64_t lo,
                     int64_t hi, int64_t def, int64_t *out,
                     enum MHD_Result *queued) {
        const char *v = MHD_lookup_connection_value(
                rq->rq_conn, MHD_GET_ARGUMENT_KIND, name);
        char *end;
        long long x;
        if (!v) {
                *out = def;
                return 0;
        }
        errno = 0;
        x = strtoll(v, &end, 10);
        if (!*v || *end || errno || x < lo || x > hi) {
                *queued = kb_api_error(rq, 400, name,
                                       "'%s' must be an integer from %lld to "
                                       "%lld",
                                       name, (long long)lo, (long long)hi);
                return -1;
        }
        *out = x;
        return 0;
}

/* ---- routing ---- */

/* Splits url into the route and the id; R__CNT when no route matches. */
static kb_api_route_t route_of(const char *url, char *id, size_t id_size) {
        const char *p, *slash;
        size_t len;
        kb_api_route_t base, one;
        id[0] = '\0';
        if (!strncmp(url, "/v1/files", 9)) {
                p = url + 9;
                base = R_FILES;
                one = R_FILE;
        } else if (!strncmp(url, "/v1/batches", 11)) {
                p = url + 11;
                base = R_BATCHES;
                one = R_BATCH;
        } else if (!strncmp(url, "/v1/messages/batches", 20)) {
                p = url + 20;
                base = R_MBATCHES;
                one = R_MBATCH;
        } else
                return R__CNT;
        if (!*p || !strcmp(p, "/"))
                return base;
        if (*p != '/')
                return R__CNT;
        p++;
        slash = strchr(p, '/');
        len = slash ? (size_t)(slash - p) : strlen(p);
        if (!len || len >= id_size)
                return R__CNT;
        memcpy(id, p, len);
        id[len] = '\0';
        if (!slash || !slash[1])
                return one;
        slash++;
        if (one == R_FILE && !strcmp(slash, "content"))
                return R_FILE_CONTENT;
        if (one == R_BATCH && !strcmp(slash, "cancel"))
                return R_BATCH_CANCEL;
        if (one == R_BATCH && !strcmp(slash, "items"))
                return R_BATCH_ITEMS;
        if (one == R_MBATCH && !strcmp(slash, "cancel"))
                return R_MBATCH_CANCEL;
        if (one == R_MBATCH && !strcmp(slash, "results"))
                return R_MBATCH_RESULTS;
        return R__CNT;
}

static int method_allowed(kb_api_route_t r, const char *method) {
        const char *m = routes[r].rt_methods;
        size_t n = strlen(method);
        if (!strcmp(method, "HEAD"))
                method = "GET", n = 3;
        while ((m = strstr(m, method))) {
                if ((m == routes[r].rt_methods || m[-1] == ' ') &&
                    (m[n] == '\0' || m[n] == ','))
                        return 1;
                m += n;
        }
        return 0;
}

/* The key of the request: "Authorization: Bearer KEY" or "x-api-key". */
static const char *request_key(struct MHD_Connection *conn) {
        const char *a = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                    "Authorization");
        if (a && !strncasecmp(a, "Bearer ", 7)) {
                a += 7;
                while (*a == ' ')
                        a++;
                return a;
        }
        return MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "x-api-key");
}

/* Largest JSON body: inline batches are bounded like files. */
static size_t body_limit(const kb_api_t *ap) {
        return (size_t)ap->ap_conf->api_max_file_bytes;
}

static enum MHD_Result first_call(kb_api_t *ap, kb_api_req_t *rq,
                                  const char *url, const char *method) {
        const char *key, *cl;
        rq->rq_route = route_of(url, rq->rq_id, sizeof(rq->rq_id));
        rq->rq_flavour = !strncmp(url, "/v1/messages", 12) ? KB_API_ANTHROPIC
                                                          : KB_API_OPENAI;
        if (ap->ap_keys) {
                key = request_key(rq->rq_conn);
                if (!key || !*key)
                        return kb_api_error(
                                rq, 401, NULL,
                                "missing API key: send 'Authorization: "
                                "Bearer KEY' or 'x-api-key: KEY'");
                if (!kb_apikeys_lookup(ap->ap_keys, key, strlen(key),
                                       rq->rq_tenant))
                        return kb_api_error(rq, 401, NULL,
                                            "incorrect API key provided");
        } else
                snprintf(rq->rq_tenant, sizeof(rq->rq_tenant), "default");
        if (rq->rq_route == R__CNT)
                return kb_api_error(rq, 404, NULL, "no such endpoint: %s %.200s",
                                    method, url);
        if (!method_allowed(rq->rq_route, method))
                return kb_api_error(rq, 405, NULL,
                                    "%s is not allowed on %s (allowed: %s)",
                                    method, routes[rq->rq_route].rt_label,
                                    routes[rq->rq_route].rt_methods);
        if (!kb_apistore_ready(ap->ap_store))
                return kb_api_error(rq, 503, NULL,
                                    "starting: still reading the state from "
                                    "Kafka; retry in a moment");
        cl = MHD_lookup_connection_value(rq->rq_conn, MHD_HEADER_KIND,
                                         MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > body_limit(ap) + 65536)
                return kb_api_error(rq, 413, NULL,
                                    "the body is larger than %lld bytes "
                                    "(api.max_file_bytes)",
                                    (long long)ap->ap_conf->api_max_file_bytes);
        if (rq->rq_route == R_FILES && !strcmp(method, "POST"))
                return kb_api_upload_start(rq);
        return MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn,
                                  const char *url, const char *method,
                                  const char *version, const char *upload,
                                  size_t *upload_size, void **state) {
        kb_api_t *ap = cls;
        kb_api_req_t *rq = *state;
        (void)version;
        if (!rq) {
                if (!(rq = calloc(1, sizeof(*rq))))
                        return MHD_NO;
                rq->rq_api = ap;
                rq->rq_conn = conn;
                rq->rq_t0 = kb_now_ms();
                rq->rq_method = method;
                rq->rq_route = R__CNT;
                *state = rq;
                return first_call(ap, rq, url, method);
        }
        if (rq->rq_status) {
                /* Answered already (an error before the whole body): the
                 * rest is dropped. */
                *upload_size = 0;
                return MHD_YES;
        }
        if (*upload_size) {
                size_t n = *upload_size;
                *upload_size = 0;
                if (rq->rq_up)
                        return kb_api_upload_data(rq, upload, n);
                if (rq->rq_too_big || rq->rq_len + n > body_limit(ap)) {
                        rq->rq_too_big = 1;
                        return MHD_YES;
                }
                if (rq->rq_len + n + 1 > rq->rq_cap) {
                        size_t cap = rq->rq_cap ? rq->rq_cap : 4096;
                        char *b;
                        while (cap < rq->rq_len + n + 1)
                                cap *= 2;
                        if (!(b = realloc(rq->rq_body, cap)))
                                return MHD_NO;
                        rq->rq_body = b;
                        rq->rq_cap = cap;
                }
                memcpy(rq->rq_body + rq->rq_len, upload, n);
                rq->rq_len += n;
                rq->rq_body[rq->rq_len] = '\0';
                return MHD_YES;
        }
        /* The whole request is in. */
        if (rq->rq_up)
                return kb_api_upload_finish(rq);
        if (rq->rq_too_big)
                return kb_api_error(rq, 413, NULL,
                                    "the body is larger than %lld bytes "
                                    "(api.max_file_bytes)",
                                    (long long)ap->ap_conf->api_max_file_bytes);
        switch (rq->rq_route) {
        case R_FILES:
        case R_FILE:
        case R_FILE_CONTENT:
                return kb_api_files(rq);
        default:
                return kb_api_batches(rq);
        }
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **state,
                         enum MHD_RequestTerminationCode toe) {
        kb_api_req_t *rq = *state;
        const char *ep;
        char code[8];
        (void)cls;
        (void)conn;
        (void)toe;
        if (!rq)
                return;
        ep = rq->rq_route < R__CNT ? routes[rq->rq_route].rt_label : "other";
        snprintf(code, sizeof(code), "%u", rq->rq_status);
        kb_metrics_inc(KB_M_API_REQUESTS, ep, rq->rq_status ? code : "none");
        kb_metric_observe(kb_metrics_get(KB_M_API_REQUEST_SECONDS, ep, NULL),
                          (double)(kb_now_ms() - rq->rq_t0) / 1000.0);
        kb_api_upload_free(rq->rq_up);
        free(rq->rq_body);
        free(rq);
        *state = NULL;
}

static int hexval(char c) {
        return c >= '0' && c <= '9'   ? c - '0'
               : c >= 'a' && c <= 'f' ? c - 'a' + 10
               : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                      : -1;
}

/* Percent-decodes s in place, but for "%00": decoded, it would cut the
 * path short ("/v1/batches/%00" would read as "/v1/batches/"; found by
 * schemathesis). It stays as it is: no id holds it. */
static size_t unescape(void *cls, struct MHD_Connection *conn, char *s) {
        char *r = s, *w = s;
        (void)cls;
        (void)conn;
        while (*r) {
                int hi, lo;
                if (*r == '%' && (hi = hexval(r[1])) >= 0 &&
                    (lo = hexval(r[2])) >= 0 && (hi || lo)) {
                        *w++ = (char)(hi << 4 | lo);
                        r += 3;
                } else
                        *w++ = *r++;
        }
        *w = '\0';
        return (size_t)(w - s);
}

static int addr_is_loopback(const struct sockaddr *sa) {
        if (sa->sa_family == AF_INET)
                return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >>
                        24) == 127;
        if (sa->sa_family == AF_INET6)
                return IN6_IS_ADDR_LOOPBACK(
                        &((const struct sockaddr_in6 *)sa)->sin6_addr);
        return 0;
}

int kb_api_listen_is_loopback(const char *listen) {
        char host[256], err[256];
        struct addrinfo *ai = kb_admin_resolve(listen, "api.listen", host,
                                               sizeof(host), err, sizeof(err));
        struct addrinfo *p;
        int lo = ai != NULL && host[0];
        for (p = ai; p && lo; p = p->ai_next)
                lo = addr_is_loopback(p->ai_addr);
        if (ai)
                freeaddrinfo(ai);
        return lo;
}

/* Every few seconds: batches whose replica died while publishing. */
static void *recover_main(void *arg) {
        kb_api_t *ap = arg;
        pthread_mutex_lock(&ap->ap_lock);
        while (!ap->ap_stop) {
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                ts.tv_sec += 5;
                pthread_cond_timedwait(&ap->ap_cond, &ap->ap_lock, &ts);
                if (ap->ap_stop)
                        break;
                pthread_mutex_unlock(&ap->ap_lock);
                if (kb_apistore_ready(ap->ap_store))
                        kb_api_recover(ap);
                pthread_mutex_lock(&ap->ap_lock);
        }
        pthread_mutex_unlock(&ap->ap_lock);
        return NULL;
}

kb_api_t *kb_api_new(const kb_conf_t *conf, int *is_config, char *errstr,
                     size_t errstr_size) {
        kb_api_t *ap;
        char host[256];
        struct addrinfo *ai;
        const union MHD_DaemonInfo *di;
        unsigned int flags = MHD_USE_THREAD_PER_CONNECTION |
                             MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO |
                             MHD_USE_ERROR_LOG;
        int dummy;

        if (!is_config)
                is_config = &dummy;
        *is_config = 1;
        if (!conf->api_keys_file[0] &&
            !kb_api_listen_is_loopback(conf->api_listen)) {
                snprintf(errstr, errstr_size,
                         "api.keys_file is not set: the API would be open to "
                         "anyone on %s (set api.keys_file, or listen on a "
                         "loopback address such as 127.0.0.1:8081)",
                         conf->api_listen);
                return NULL;
        }
        if (!(ap = calloc(1, sizeof(*ap)))) {
                snprintf(errstr, errstr_size, "out of memory");
                return NULL;
        }
        ap->ap_conf = conf;
        pthread_mutex_init(&ap->ap_lock, NULL);
        pthread_cond_init(&ap->ap_cond, NULL);
        if (conf->api_keys_file[0] &&
            !(ap->ap_keys = kb_apikeys_new(conf->api_keys_file, errstr,
                                           errstr_size)))
                goto fail;
        if (!(ai = kb_admin_resolve(conf->api_listen, "api.listen", host,
                                    sizeof(host), errstr, errstr_size)))
                goto fail;
        *is_config = 0;
        if (!(ap->ap_store = kb_apistore_new(conf, errstr, errstr_size))) {
                freeaddrinfo(ai);
                goto fail;
        }
        if (ai->ai_family == AF_INET6)
                flags |= MHD_USE_IPv6;
        errno = 0;
        ap->ap_mhd = MHD_start_daemon(
                flags, 0, NULL, NULL, on_request, ap,
                MHD_OPTION_EXTERNAL_LOGGER, kb_admin_mhd_log, "api", MHD_OPTION_SOCK_ADDR,
                ai->ai_addr, MHD_OPTION_CONNECTION_LIMIT, (unsigned int)512,
                MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)KB_API_TIMEOUT_S,
                MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
                MHD_OPTION_UNESCAPE_CALLBACK, unescape, NULL, MHD_OPTION_END);
        freeaddrinfo(ai);
        if (!ap->ap_mhd) {
                snprintf(errstr, errstr_size,
                         "api.listen '%s': cannot listen: %s", conf->api_listen,
                         strerror(errno ? errno : EADDRINUSE));
                goto fail;
        }
        di = MHD_get_daemon_info(ap->ap_mhd, MHD_DAEMON_INFO_BIND_PORT);
        ap->ap_port = di ? di->port : 0;
        if (pthread_create(&ap->ap_recover_thr, NULL, recover_main, ap)) {
                snprintf(errstr, errstr_size, "cannot start a thread: %s",
                         strerror(errno));
                goto fail;
        }
        ap->ap_recovering = 1;
        kb_log(KB_LOG_INFO, "api",
               "batch API listening on %s%s%s:%d (%s)",
               strchr(host, ':') ? "[" : "", host[0] ? host : "0.0.0.0",
               strchr(host, ':') ? "]" : "", ap->ap_port,
               ap->ap_keys ? "keys file" : "no keys: loopback only");
        return ap;
fail:
        kb_api_destroy(ap);
        return NULL;
}

void kb_api_destroy(kb_api_t *ap) {
        if (!ap)
                return;
        if (ap->ap_recovering) {
                pthread_mutex_lock(&ap->ap_lock);
                ap->ap_stop = 1;
                pthread_cond_signal(&ap->ap_cond);
                pthread_mutex_unlock(&ap->ap_lock);
                pthread_join(ap->ap_recover_thr, NULL);
        }
        if (ap->ap_mhd)
                MHD_stop_daemon(ap->ap_mhd);
        kb_apistore_destroy(ap->ap_store);
        kb_apikeys_destroy(ap->ap_keys);
        pthread_cond_destroy(&ap->ap_cond);
        pthread_mutex_destroy(&ap->ap_lock);
        free(ap);
}

int kb_api_port(const kb_api_t *ap) {
        return ap ? ap->ap_port : 0;
}

int kb_api_ready(kb_api_t *ap) {
        return ap && kb_apistore_ready(ap->ap_store);
}

int kb_api_fatal(kb_api_t *ap) {
        return ap && kb_apistore_fatal(ap->ap_store);
}
