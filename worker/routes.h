/* routes: model glob -> endpoint (SPEC §6).
 *
 * First match wins. Each route knows its operation paths (OpenAI-compatible
 * defaults merged with the configured ones), its auth (api_key_env or
 * api_key_file, the file re-read when it changes, as Kubernetes secrets
 * rotate), its extra headers and its limits. The runtime part (in-flight
 * count, wait queue) belongs to the items pipeline. */
#ifndef KB_ROUTES_H
#define KB_ROUTES_H

#include <curl/curl.h>
#include <stdint.h>
#include <sys/queue.h>
#include <time.h>

#include "conf.h"

struct kb_job_s;

typedef struct kb_route_s {
        const kb_route_conf_t *rt_conf; /* borrowed from the config */
        int rt_index;
        char *rt_base_url;              /* without trailing '/' */
        char *rt_auth;                  /* "Authorization: Bearer ..." or NULL */
        time_t rt_key_mtime;            /* api_key_file's mtime when read */
        int64_t rt_key_checked_ms;      /* monotonic ms of the last stat() */
        /* runtime, owned by the items pipeline */
        int rt_inflight;
        int rt_limit;                   /* current concurrency limit */
        TAILQ_HEAD(, kb_job_s) rt_waitq;
        int rt_waiting;
} kb_route_t;

typedef struct kb_routes_s kb_routes_t;

/* Builds the routes of a loaded config (borrowed; must outlive the routes).
 * Fails (NULL + errstr) when a key file cannot be read or an env var named
 * by api_key_env is unset. */
kb_routes_t *kb_routes_new(const kb_conf_t *conf, char *errstr,
                           size_t errstr_size);
void kb_routes_destroy(kb_routes_t *routes); /* NULL is a no-op */

size_t kb_routes_cnt(const kb_routes_t *routes);
kb_route_t *kb_routes_get(kb_routes_t *routes, size_t i);

/* The first route whose glob matches model, or NULL. */
kb_route_t *kb_routes_match(kb_routes_t *routes, const char *model);

/* The path for an operation (NULL: the route's default operation), or NULL
 * when the route does not know the operation. *opname gets the operation's
 * name (borrowed). */
const char *kb_route_path(const kb_route_t *rt, const char *operation,
                          const char **opname);

/* Re-reads api_key_file when its mtime changed (checked at most once a
 * second). now_ms: monotonic ms. */
void kb_route_refresh_auth(kb_route_t *rt, int64_t now_ms);

/* Appends the route's static headers (auth and configured headers) to a
 * request's header list. Returns the new list (NULL on failure). */
struct curl_slist *kb_route_headers(const kb_route_t *rt,
                                    struct curl_slist *hdrs);

#endif
