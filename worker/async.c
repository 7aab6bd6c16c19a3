/* async: see async.h. */
#include "async.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jsonptr.h"
#include "log.h"

kb_async_t *kb_async_new(void) { return calloc(1, sizeof(kb_async_t)); }

void kb_async_destroy(kb_async_t *as) {
        if (!as)
                return;
        free(as->as_id);
        free(as->as_body);
        free(as);
}

/* base + path with "{id}" replaced by the URL-escaped id. */
static int build_url(const kb_route_t *rt, const char *path, const char *id,
                     char *url, size_t url_size) {
        const char *at = id ? strstr(path, "{id}") : NULL;
        char *esc = NULL;
        int n;
        if (at) {
                if (!(esc = curl_easy_escape(NULL, id, 0)))
                        return -1;
                n = snprintf(url, url_size, "%s%.*s%s%s", rt->rt_base_url,
                             (int)(at - path), path, esc, at + 4);
                curl_free(esc);
        } else
                n = snprintf(url, url_size, "%s%s", rt->rt_base_url, path);
        return n < 0 || (size_t)n >= url_size ? -1 : 0;
}

/* The input with "id" added (GenVR's status-batch and response-batch). */
static char *input_with_id(const char *input, const char *id) {
        json_t *o = json_loads(input, 0, NULL);
        char *s = NULL;
        if (!json_is_object(o))
                o = (json_decref(o), json_object());
        if (o && !json_object_set_new(o, "id", json_string(id)))
                s = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        return s;
}

int kb_async_request(kb_async_t *as, const kb_route_t *rt, const char *input,
                     char *url, size_t url_size, const char **body) {
        const kb_async_conf_t *ac = &rt->rt_conf->async;
        const char *path;
        int post;
        switch (as->as_phase) {
        case KB_ASYNC_SUBMIT:
                *body = input;
                return build_url(rt, ac->submit_path, NULL, url, url_size);
        case KB_ASYNC_POLL:
                path = ac->status_path;
                post = !strcmp(ac->status_method, "POST");
                break;
        default:
                path = ac->result_path;
                post = !strcmp(ac->status_method, "POST");
                break;
        }
        *body = NULL;
        if (post) {
                free(as->as_body);
                if (!(as->as_body = input_with_id(input, as->as_id)))
                        return -1;
                *body = as->as_body;
        }
        return build_url(rt, path, as->as_id, url, url_size);
}

int kb_async_on_submit(kb_async_t *as, const kb_async_conf_t *ac,
                       json_t *resp, int64_t now_wall, char *msg,
                       size_t msg_size) {
        json_t *v = kb_jsonptr_get(resp, ac->id_pointer);
        char num[32];
        const char *id = json_string_value(v);
        if (json_is_integer(v)) {
                snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT,
                         json_integer_value(v));
                id = num;
        }
        if (!id || !*id || strlen(id) > 1024) {
                snprintf(msg, msg_size,
                         "the submit answer has no job id at %.200s",
                         ac->id_pointer);
                return -1;
        }
        free(as->as_id);
        if (!(as->as_id = strdup(id))) {
                snprintf(msg, msg_size, "out of memory");
                return -1;
        }
        as->as_phase = KB_ASYNC_POLL;
        as->as_submitted = now_wall;
        return 0;
}

static int in_list(char **l, size_t n, const char *v) {
        size_t i;
        for (i = 0; i < n; i++)
                if (!strcmp(l[i], v))
                        return 1;
        return 0;
}

/* The provider's message on a failed job: a string "error", or an
 * "error"/"message" member next to the status. */
static void failure_message(json_t *resp, const kb_async_conf_t *ac,
                            const char *status, char *msg, size_t msg_size) {
        char parent[1024];
        const char *slash = strrchr(ac->status_pointer, '/');
        json_t *p, *e, *m = NULL;
        snprintf(parent, sizeof(parent), "%.*s",
                 slash ? (int)(slash - ac->status_pointer) : 0,
                 ac->status_pointer);
        p = kb_jsonptr_get(resp, parent);
        e = json_object_get(p, "error");
        if (json_is_string(e))
                m = e;
        else if (json_is_object(e))
                m = json_object_get(e, "message");
        if (!json_is_string(m))
                m = json_object_get(p, "message");
        snprintf(msg, msg_size, "the job failed (status %.100s)%s%.800s",
                 status, json_is_string(m) ? ": " : "",
                 json_is_string(m) ? json_string_value(m) : "");
}

kb_async_status_t kb_async_on_status(kb_async_t *as, const kb_async_conf_t *ac,
                                     json_t *resp, char *msg,
                                     size_t msg_size) {
        const char *st = json_string_value(kb_jsonptr_get(resp,
                                                          ac->status_pointer));
        as->as_polls++;
        if (!st) {
                snprintf(msg, msg_size,
                         "the status answer has no status at %.200s",
                         ac->status_pointer);
                return KB_ASYNC_INVALID;
        }
        if (in_list(ac->succeeded, ac->succeeded_cnt, st))
                return KB_ASYNC_SUCCEEDED;
        if (in_list(ac->failed, ac->failed_cnt, st)) {
                failure_message(resp, ac, st, msg, msg_size);
                return KB_ASYNC_FAILED;
        }
        return KB_ASYNC_RUNNING;
}

json_t *kb_async_output(const kb_async_conf_t *ac, json_t *resp) {
        return ac->output_pointer ? kb_jsonptr_get(resp, ac->output_pointer)
                                  : resp;
}

int64_t kb_async_next_wait(kb_async_t *as, const kb_async_conf_t *ac) {
        int64_t w = as->as_wait_ms ? as->as_wait_ms * 3 / 2 : ac->poll_ms;
        if (w > ac->poll_max_ms)
                w = ac->poll_max_ms;
        if (w < ac->poll_ms)
                w = ac->poll_ms;
        return as->as_wait_ms = w;
}

/* ---- cancel: a transfer of its own ---------------------------------- */

typedef struct {
        kb_xfer_t cx_xfer; /* first: CURLOPT_PRIVATE */
        CURL *cx_easy;
        struct curl_slist *cx_hdrs;
        char *cx_body;
        char cx_route[256];
} cancel_xfer_t;

static size_t discard(char *p, size_t sz, size_t n, void *ud) {
        (void)p;
        (void)ud;
        return sz * n;
}

static void cancel_done(kb_xfer_t *xf, CURLcode cc) {
        cancel_xfer_t *cx = (cancel_xfer_t *)xf;
        long st = 0;
        curl_easy_getinfo(cx->cx_easy, CURLINFO_RESPONSE_CODE, &st);
        if (cc != CURLE_OK || st < 200 || st > 299)
                kb_log(KB_LOG_INFO, "async",
                       "route '%s': cancelling a job: %s (HTTP %ld)",
                       cx->cx_route, curl_easy_strerror(cc), st);
        curl_easy_cleanup(cx->cx_easy);
        curl_slist_free_all(cx->cx_hdrs);
        free(cx->cx_body);
        free(cx);
}

void kb_async_cancel(kb_loop_t *loop, kb_route_t *rt, const char *id,
                     const char *input) {
        const kb_async_conf_t *ac = &rt->rt_conf->async;
        cancel_xfer_t *cx;
        char url[4096];
        if (!ac->cancel_path || !id ||
            build_url(rt, ac->cancel_path, id, url, sizeof(url)))
                return;
        if (!(cx = calloc(1, sizeof(*cx))))
                return;
        snprintf(cx->cx_route, sizeof(cx->cx_route), "%s", rt->rt_conf->name);
        cx->cx_xfer.xf_done = cancel_done;
        cx->cx_body = input_with_id(input ? input : "{}", id);
        cx->cx_hdrs = curl_slist_append(NULL, "Content-Type: application/json");
        cx->cx_hdrs = kb_route_headers(rt, cx->cx_hdrs);
        if (!(cx->cx_easy = curl_easy_init()) || !cx->cx_body ||
            !cx->cx_hdrs) {
                if (cx->cx_easy)
                        curl_easy_cleanup(cx->cx_easy);
                curl_slist_free_all(cx->cx_hdrs);
                free(cx->cx_body);
                free(cx);
                return;
        }
        curl_easy_setopt(cx->cx_easy, CURLOPT_URL, url);
        curl_easy_setopt(cx->cx_easy, CURLOPT_PRIVATE, &cx->cx_xfer);
        curl_easy_setopt(cx->cx_easy, CURLOPT_POSTFIELDS, cx->cx_body);
        curl_easy_setopt(cx->cx_easy, CURLOPT_HTTPHEADER, cx->cx_hdrs);
        curl_easy_setopt(cx->cx_easy, CURLOPT_WRITEFUNCTION, discard);
        curl_easy_setopt(cx->cx_easy, CURLOPT_TIMEOUT_MS,
                         (long)rt->rt_conf->timeout_ms);
        curl_easy_setopt(cx->cx_easy, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(cx->cx_easy, CURLOPT_SSL_VERIFYPEER,
                         (long)rt->rt_conf->tls_verify);
        curl_easy_setopt(cx->cx_easy, CURLOPT_SSL_VERIFYHOST,
                         rt->rt_conf->tls_verify ? 2L : 0L);
        if (rt->rt_conf->ca_file && *rt->rt_conf->ca_file)
                curl_easy_setopt(cx->cx_easy, CURLOPT_CAINFO,
                                 rt->rt_conf->ca_file);
        if (kb_loop_add(loop, cx->cx_easy) != 0)
                cancel_done(&cx->cx_xfer, CURLE_FAILED_INIT);
}
