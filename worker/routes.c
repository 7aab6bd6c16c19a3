/* routes: see routes.h. */
#include "routes.h"

#include <errno.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "http.h"
#include "log.h"

struct kb_routes_s {
        kb_route_t *rs_routes;
        size_t rs_cnt;
};

static const kb_kv_t default_ops[] = {
    {"chat.completions", "/v1/chat/completions"},
    {"responses", "/v1/responses"},
    {"embeddings", "/v1/embeddings"},
    {"completions", "/v1/completions"},
    {"messages", "/v1/messages"},
};

/* Reads a key file: the first line, trimmed. Returns a malloc'd string or
 * NULL with errstr filled. */
static char *read_key_file(const char *path, time_t *mtime, char *errstr,
                           size_t errstr_size) {
        FILE *fp = fopen(path, "r");
        char buf[4096];
        struct stat st;
        size_t n;
        if (!fp) {
                snprintf(errstr, errstr_size, "cannot read api_key_file %s: %s",
                         path, strerror(errno));
                return NULL;
        }
        if (fstat(fileno(fp), &st) == 0)
                *mtime = st.st_mtime;
        n = fread(buf, 1, sizeof(buf) - 1, fp);
        fclose(fp);
        buf[n] = '\0';
        buf[strcspn(buf, "\r\n")] = '\0';
        while (n > 0 && (buf[n - 1] == ' ' || buf[n - 1] == '\t'))
                buf[--n] = '\0';
        return strdup(buf);
}

static char *auth_header(const char *key) {
        char *h;
        if (!key || !*key)
                return NULL;
        if (asprintf(&h, "Authorization: Bearer %s", key) < 0)
                return NULL;
        return h;
}

kb_routes_t *kb_routes_new(const kb_conf_t *conf, char *errstr,
                           size_t errstr_size) {
        kb_routes_t *rs = calloc(1, sizeof(*rs));
        size_t i;
        if (!rs)
                return NULL;
        rs->rs_routes = calloc(conf->route_cnt ? conf->route_cnt : 1,
                               sizeof(*rs->rs_routes));
        if (!rs->rs_routes) {
                free(rs);
                return NULL;
        }
        rs->rs_cnt = conf->route_cnt;
        for (i = 0; i < conf->route_cnt; i++) {
                kb_route_t *rt = &rs->rs_routes[i];
                const kb_route_conf_t *rc = &conf->routes[i];
                size_t n;
                rt->rt_conf = rc;
                rt->rt_index = (int)i;
                rt->rt_limit = rc->max_inflight;
                rt->rt_base_url = strdup(rc->base_url);
                n = strlen(rt->rt_base_url);
                while (n > 0 && rt->rt_base_url[n - 1] == '/')
                        rt->rt_base_url[--n] = '\0';
                if (rc->api_key_env && *rc->api_key_env) {
                        const char *k = getenv(rc->api_key_env);
                        if (!k || !*k) {
                                snprintf(errstr, errstr_size,
                                         "route '%s': environment variable %s "
                                         "(api_key_env) is not set",
                                         rc->model, rc->api_key_env);
                                kb_routes_destroy(rs);
                                return NULL;
                        }
                        rt->rt_auth = auth_header(k);
                } else if (rc->api_key_file && *rc->api_key_file) {
                        char *k = read_key_file(rc->api_key_file,
                                                &rt->rt_key_mtime, errstr,
                                                errstr_size);
                        if (!k) {
                                kb_routes_destroy(rs);
                                return NULL;
                        }
                        rt->rt_auth = auth_header(k);
                        free(k);
                }
        }
        for (i = 0; i < conf->route_cnt; i++) {
                kb_route_t *rt = &rs->rs_routes[i];
                if (rt->rt_conf->fallback)
                        rt->rt_fallback =
                            kb_routes_find(rs, rt->rt_conf->fallback);
        }
        return rs;
}

void kb_routes_destroy(kb_routes_t *rs) {
        size_t i;
        if (!rs)
                return;
        for (i = 0; i < rs->rs_cnt; i++) {
                free(rs->rs_routes[i].rt_base_url);
                free(rs->rs_routes[i].rt_auth);
        }
        free(rs->rs_routes);
        free(rs);
}

size_t kb_routes_cnt(const kb_routes_t *rs) { return rs->rs_cnt; }

kb_route_t *kb_routes_get(kb_routes_t *rs, size_t i) {
        return i < rs->rs_cnt ? &rs->rs_routes[i] : NULL;
}

kb_route_t *kb_routes_find(kb_routes_t *rs, const char *name) {
        size_t i;
        for (i = 0; name && i < rs->rs_cnt; i++)
                if (rs->rs_routes[i].rt_conf->name &&
                    !strcmp(rs->rs_routes[i].rt_conf->name, name))
                        return &rs->rs_routes[i];
        return NULL;
}

kb_route_t *kb_routes_match(kb_routes_t *rs, const char *model) {
        size_t i;
        if (!model)
                return NULL;
        for (i = 0; i < rs->rs_cnt; i++)
                if (fnmatch(rs->rs_routes[i].rt_conf->model, model, 0) == 0)
                        return &rs->rs_routes[i];
        return NULL;
}

const char *kb_route_path(const kb_route_t *rt, const char *operation,
                          const char **opname) {
        const kb_route_conf_t *rc = rt->rt_conf;
        size_t i;
        if (!operation)
                operation = rc->default_operation ? rc->default_operation
                                                  : "chat.completions";
        *opname = operation;
        for (i = 0; i < rc->operation_cnt; i++)
                if (!strcmp(rc->operations[i].k, operation))
                        return rc->operations[i].v;
        for (i = 0; i < sizeof(default_ops) / sizeof(*default_ops); i++)
                if (!strcmp(default_ops[i].k, operation))
                        return default_ops[i].v;
        return NULL;
}

void kb_route_refresh_auth(kb_route_t *rt, int64_t now_ms) {
        const kb_route_conf_t *rc = rt->rt_conf;
        struct stat st;
        char err[256];
        if (!rc->api_key_file || !*rc->api_key_file ||
            (rc->api_key_env && *rc->api_key_env))
                return;
        if (now_ms - rt->rt_key_checked_ms < 1000)
                return;
        rt->rt_key_checked_ms = now_ms;
        if (stat(rc->api_key_file, &st) != 0 || st.st_mtime == rt->rt_key_mtime)
                return;
        {
                time_t mt = st.st_mtime;
                char *k = read_key_file(rc->api_key_file, &mt, err, sizeof(err));
                if (!k) {
                        kb_log(KB_LOG_WARN, "routes", "%s (keeping the old key)",
                               err);
                        return;
                }
                free(rt->rt_auth);
                rt->rt_auth = auth_header(k);
                rt->rt_key_mtime = mt;
                free(k);
                kb_log(KB_LOG_INFO, "routes",
                       "route '%s': api_key_file %s changed, key reloaded",
                       rc->model, rc->api_key_file);
        }
}

struct curl_slist *kb_route_headers(const kb_route_t *rt,
                                    struct curl_slist *hdrs) {
        const kb_route_conf_t *rc = rt->rt_conf;
        size_t i;
        char line[8192];
        if (rt->rt_auth && !(hdrs = curl_slist_append(hdrs, rt->rt_auth)))
                return NULL;
        for (i = 0; i < rc->header_cnt; i++) {
                snprintf(line, sizeof(line), "%s: %s", rc->headers[i].k,
                         rc->headers[i].v);
                if (!(hdrs = curl_slist_append(hdrs, line)))
                        return NULL;
        }
        return hdrs;
}

/* ---- limits ------------------------------------------------------------ */

static void refill(kb_route_t *rt, int64_t now_ms) {
        const kb_route_conf_t *rc = rt->rt_conf;
        double dt;
        if (!rt->rt_refilled_ms) {
                /* Start full: one second's worth (at least one request). */
                rt->rt_rpm_tokens = rc->requests_per_minute / 60.0 < 1
                                        ? 1
                                        : rc->requests_per_minute / 60.0;
                rt->rt_tpm_tokens = rc->tokens_per_minute / 60.0;
                rt->rt_refilled_ms = now_ms;
                return;
        }
        dt = (double)(now_ms - rt->rt_refilled_ms);
        if (dt <= 0)
                return;
        rt->rt_refilled_ms = now_ms;
        if (rc->requests_per_minute > 0) {
                double cap = rc->requests_per_minute / 60.0;
                if (cap < 1)
                        cap = 1;
                rt->rt_rpm_tokens += dt * rc->requests_per_minute / 60000.0;
                if (rt->rt_rpm_tokens > cap)
                        rt->rt_rpm_tokens = cap;
        }
        if (rc->tokens_per_minute > 0) {
                double cap = rc->tokens_per_minute / 60.0;
                rt->rt_tpm_tokens += dt * rc->tokens_per_minute / 60000.0;
                if (rt->rt_tpm_tokens > cap)
                        rt->rt_tpm_tokens = cap;
        }
}

void kb_route_on_outcome(kb_route_t *rt, kb_route_signal_t sig,
                         int64_t retry_after_ms, int64_t sent_ms,
                         int64_t now_ms) {
        int max = rt->rt_conf->max_inflight;
        int halve = 0;
        switch (sig) {
        case KB_ROUTE_OK:
                if (rt->rt_limit < max && ++rt->rt_ok_streak >= rt->rt_limit) {
                        rt->rt_limit++;
                        rt->rt_ok_streak = 0;
                }
                return;
        case KB_ROUTE_THROTTLED:
                halve = 1;
                if (retry_after_ms > 0 &&
                    now_ms + retry_after_ms > rt->rt_blocked_until_ms)
                        rt->rt_blocked_until_ms = now_ms + retry_after_ms;
                break;
        case KB_ROUTE_TIMEOUT:
                if (now_ms - rt->rt_timeout_window_ms > 1000) {
                        rt->rt_timeout_window_ms = now_ms;
                        rt->rt_timeouts = 0;
                }
                halve = ++rt->rt_timeouts >= 3;
                break;
        case KB_ROUTE_OTHER:
                return;
        }
        rt->rt_ok_streak = 0;
        /* Once per round, as TCP does: a call sent before the last halving
         * saw the old limit and says nothing about the new one. A time
         * gate instead lets the limit climb past the provider's between
         * two halvings, and every slot above it then turns into a 429 as
         * fast as the provider can refuse. */
        if (halve && (!rt->rt_decreased_ms || sent_ms >= rt->rt_decreased_ms)) {
                int before = rt->rt_limit;
                rt->rt_limit = rt->rt_limit / 2 > 1 ? rt->rt_limit / 2 : 1;
                rt->rt_decreased_ms = now_ms;
                if (before != rt->rt_limit)
                        kb_log(KB_LOG_INFO, "routes",
                               "route '%s': %s, concurrency %d -> %d",
                               rt->rt_conf->name,
                               sig == KB_ROUTE_THROTTLED ? "throttled (429)"
                                                         : "timeouts",
                               before, rt->rt_limit);
        }
}

int kb_route_admit(kb_route_t *rt, int64_t est_tokens, int64_t now_ms,
                   int64_t *wait_ms) {
        const kb_route_conf_t *rc = rt->rt_conf;
        int64_t w = 0;
        if (rt->rt_blocked_until_ms > now_ms)
                w = rt->rt_blocked_until_ms - now_ms;
        refill(rt, now_ms);
        if (rc->requests_per_minute > 0 && rt->rt_rpm_tokens < 1.0) {
                int64_t need = (int64_t)((1.0 - rt->rt_rpm_tokens) * 60000.0 /
                                         rc->requests_per_minute) + 1;
                if (need > w)
                        w = need;
        }
        if (rc->tokens_per_minute > 0) {
                /* A request larger than the bucket may pass once it is
                 * full; it then drives the bucket negative. */
                double cap = rc->tokens_per_minute / 60.0;
                double want = (double)est_tokens < cap ? (double)est_tokens : cap;
                if (rt->rt_tpm_tokens < want) {
                        int64_t need = (int64_t)((want - rt->rt_tpm_tokens) *
                                                 60000.0 /
                                                 rc->tokens_per_minute) + 1;
                        if (need > w)
                                w = need;
                }
        }
        if (w > 0) {
                *wait_ms = w;
                return 0;
        }
        if (rc->requests_per_minute > 0)
                rt->rt_rpm_tokens -= 1.0;
        if (rc->tokens_per_minute > 0)
                rt->rt_tpm_tokens -= (double)est_tokens;
        return 1;
}

int64_t kb_route_cap_estimate(const kb_route_t *rt, int64_t est_tokens) {
        int64_t cap = (int64_t)(rt->rt_conf->tokens_per_minute / 60.0);
        if (rt->rt_conf->tokens_per_minute <= 0)
                return est_tokens;
        if (cap < 1)
                cap = 1;
        return est_tokens < cap ? est_tokens : cap;
}

void kb_route_correct_tokens(kb_route_t *rt, int64_t estimated,
                             int64_t actual) {
        if (rt->rt_conf->tokens_per_minute > 0)
                rt->rt_tpm_tokens -= (double)(actual - estimated);
}

int64_t kb_route_estimate_tokens(const char *body, size_t body_len,
                                 int64_t max_output) {
        (void)body;
        return (int64_t)(body_len + 3) / 4 + (max_output > 0 ? max_output : 0);
}

/* ---- circuit breaker and fallback ---------------------------------- */

const char *kb_breaker_state_str(kb_breaker_state_t st) {
        switch (st) {
        case KB_BREAKER_CLOSED:
                return "closed";
        case KB_BREAKER_OPEN:
                return "open";
        case KB_BREAKER_HALF_OPEN:
                return "half_open";
        }
        return "?";
}

static void breaker_set(kb_route_t *rt, kb_breaker_state_t st,
                        int64_t now_ms) {
        if (st == KB_BREAKER_OPEN)
                rt->rt_open_until_ms = now_ms + rt->rt_conf->breaker_open_ms;
        rt->rt_probe_ms = 0;
        if (rt->rt_breaker == st)
                return;
        kb_log(st == KB_BREAKER_OPEN ? KB_LOG_WARN : KB_LOG_INFO, "routes",
               "route '%s': circuit %s -> %s%s%s", rt->rt_conf->name,
               kb_breaker_state_str(rt->rt_breaker), kb_breaker_state_str(st),
               st == KB_BREAKER_OPEN && rt->rt_fallback ? ", items go to "
                                                        : "",
               st == KB_BREAKER_OPEN && rt->rt_fallback
                   ? rt->rt_fallback->rt_conf->name
                   : "");
        rt->rt_breaker = st;
}

kb_breaker_state_t kb_route_breaker_state(kb_route_t *rt, int64_t now_ms) {
        if (rt->rt_breaker == KB_BREAKER_OPEN && now_ms >= rt->rt_open_until_ms)
                breaker_set(rt, KB_BREAKER_HALF_OPEN, now_ms);
        return rt->rt_breaker;
}

void kb_route_breaker_record(kb_route_t *rt, kb_breaker_signal_t sig,
                             int64_t now_ms) {
        kb_breaker_state_t st = kb_route_breaker_state(rt, now_ms);
        switch (sig) {
        case KB_BREAKER_SUCCESS:
                rt->rt_fail_streak = 0;
                if (st != KB_BREAKER_CLOSED)
                        breaker_set(rt, KB_BREAKER_CLOSED, now_ms);
                return;
        case KB_BREAKER_FAILURE:
                rt->rt_fail_streak++;
                /* A failure of a call sent while the circuit was open (a
                 * call started before it opened) keeps it open; one in
                 * half-open is the probe's answer. */
                if (st == KB_BREAKER_HALF_OPEN ||
                    (st == KB_BREAKER_CLOSED &&
                     rt->rt_fail_streak >= rt->rt_conf->breaker_failures))
                        breaker_set(rt, KB_BREAKER_OPEN, now_ms);
                return;
        case KB_BREAKER_NEUTRAL:
                if (st == KB_BREAKER_HALF_OPEN)
                        rt->rt_probe_ms = 0; /* let another call probe */
                return;
        }
}

kb_breaker_signal_t kb_breaker_signal_of(int outcome) {
        switch ((kb_outcome_t)outcome) {
        case KB_OUT_TIMEOUT:
        case KB_OUT_CONNECTION_ERROR:
        case KB_OUT_SERVER_ERROR:
                return KB_BREAKER_FAILURE;
        case KB_OUT_RATE_LIMITED:
        case KB_OUT__CNT:
                return KB_BREAKER_NEUTRAL;
        default:
                return KB_BREAKER_SUCCESS;
        }
}

void kb_route_breaker_call(kb_route_t *rt, int64_t now_ms) {
        if (kb_route_breaker_state(rt, now_ms) == KB_BREAKER_HALF_OPEN)
                rt->rt_probe_ms = now_ms ? now_ms : 1;
}

/* 1 when the route takes an item now (see kb_route_select). */
static int route_takes(kb_route_t *rt, int64_t now_ms) {
        const kb_route_conf_t *rc = rt->rt_conf;
        switch (kb_route_breaker_state(rt, now_ms)) {
        case KB_BREAKER_OPEN:
                return 0;
        case KB_BREAKER_HALF_OPEN:
                /* A probe that never reported (its item was cancelled, or
                 * its answer is lost) is given up after the route's
                 * timeout: then another call probes. */
                if (rt->rt_probe_ms &&
                    now_ms - rt->rt_probe_ms <= (int64_t)rc->timeout_ms)
                        return 0;
                break;
        case KB_BREAKER_CLOSED:
                break;
        }
        return rt->rt_blocked_until_ms - now_ms <= (int64_t)rc->fallback_after_ms;
}

kb_route_t *kb_route_select(kb_route_t *rt, int64_t now_ms) {
        kb_route_t *r = rt;
        int hops;
        /* Bounded: fallback chains may form a cycle. */
        for (hops = 0; r && hops < 64; hops++, r = r->rt_fallback) {
                if (!r->rt_fallback || route_takes(r, now_ms)) {
                        if (r != rt && !route_takes(r, now_ms))
                                return rt; /* the end of the chain is down
                                            * too: stay */
                        return r;
                }
        }
        return rt;
}
