/* routes: model glob -> endpoint (SPEC §6).
 *
 * First match wins. Each route knows its operation paths (OpenAI-compatible
 * defaults merged with the configured ones), its auth (api_key_env or
 * api_key_file, the file re-read when it changes, as Kubernetes secrets
 * rotate), its extra headers, its limits and their adaptive state (the
 * concurrency limit, the rate buckets, the circuit breaker). The items
 * pipeline keeps a route's wait queue and in-flight count itself. */
#ifndef KB_ROUTES_H
#define KB_ROUTES_H

#include <curl/curl.h>
#include <stdint.h>
#include <sys/queue.h>
#include <time.h>

#include "conf.h"

/* The circuit breaker of a route (SPEC §12). */
typedef enum {
        KB_BREAKER_CLOSED = 0,
        KB_BREAKER_OPEN = 1,      /* failing: no calls until it probes */
        KB_BREAKER_HALF_OPEN = 2, /* one probe call decides */
} kb_breaker_state_t;

typedef struct kb_route_s {
        const kb_route_conf_t *rt_conf; /* borrowed from the config */
        int rt_index;
        char *rt_base_url;              /* without trailing '/' */
        char *rt_auth;                  /* "Authorization: Bearer ..." or NULL */
        time_t rt_key_mtime;            /* api_key_file's mtime when read */
        int64_t rt_key_checked_ms;      /* monotonic ms of the last stat() */
        /* limits (kb_route_on_outcome, kb_route_admit) */
        int rt_limit;                   /* current concurrency limit */
        int rt_ok_streak;               /* successes since the last change */
        int64_t rt_decreased_ms;        /* mono ms of the last halving */
        int rt_timeouts;                /* timeouts in the current window */
        int64_t rt_timeout_window_ms;
        int64_t rt_blocked_until_ms;    /* Retry-After: no calls before */
        double rt_rpm_tokens;           /* requests_per_minute bucket */
        double rt_tpm_tokens;           /* tokens_per_minute bucket */
        int64_t rt_refilled_ms;
        /* circuit breaker and fallback (SPEC §12) */
        struct kb_route_s *rt_fallback; /* routes.rt_conf->fallback, or NULL */
        kb_breaker_state_t rt_breaker;
        int rt_fail_streak;             /* breaker failures in a row */
        int64_t rt_open_until_ms;       /* mono ms: OPEN until, then probe */
        int64_t rt_probe_ms;            /* mono ms the half-open probe call
                                         * started, 0: none in flight */
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

/* The route named name, or NULL. */
kb_route_t *kb_routes_find(kb_routes_t *routes, const char *name);

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

/* ---- limits (SPEC §6, DESIGN.md "Backpressure and rate limits") ----
 * Adaptive concurrency: the limit halves on a 429 (at most once per second,
 * so one burst of 429s counts once) or on a storm of timeouts (3 or more
 * within a second), and grows by one after `limit` successes in a row; it
 * stays within 1..max_inflight. A Retry-After on a 429 blocks the whole
 * route until then. requests_per_minute and tokens_per_minute are token
 * buckets holding one second's worth (at least one request, and at least
 * the request's estimated tokens so that a large request can ever pass),
 * refilled continuously; tokens are estimated before the call and
 * corrected from the response's usage. */

typedef enum {
        KB_ROUTE_OK = 0,    /* a success */
        KB_ROUTE_THROTTLED, /* HTTP 429 */
        KB_ROUTE_TIMEOUT,
        KB_ROUTE_OTHER,     /* any other failure: no change */
} kb_route_signal_t;

/* Feeds a finished call's outcome to the route's limits. retry_after_ms:
 * the server's Retry-After (-1 when none). sent_ms: when the call was
 * started; now_ms: now (both monotonic). */
void kb_route_on_outcome(kb_route_t *rt, kb_route_signal_t sig,
                         int64_t retry_after_ms, int64_t sent_ms,
                         int64_t now_ms);

/* May a call with `est_tokens` estimated tokens start now? 1: yes (the
 * buckets are charged). 0: not yet; *wait_ms gets how long until it may
 * (at least 1). Ignores the calls in flight (the caller checks them
 * against rt_limit). */
int kb_route_admit(kb_route_t *rt, int64_t est_tokens, int64_t now_ms,
                   int64_t *wait_ms);

/* An item's estimate as charged to the tokens bucket: at most the bucket's
 * capacity (a second of tokens_per_minute), so that an estimate alone (a
 * max_tokens of 1,000,000 on a 60,000 tpm route) never drives the bucket
 * below empty and holds every other item of the route back for minutes;
 * what the call really used is charged by kb_route_correct_tokens. */
int64_t kb_route_cap_estimate(const kb_route_t *rt, int64_t est_tokens);

/* Corrects the tokens bucket once the real usage is known: actual 0 gives
 * back the whole estimate (a call that failed, or never got an answer,
 * used nothing the provider counts). */
void kb_route_correct_tokens(kb_route_t *rt, int64_t estimated,
                             int64_t actual);

/* Estimates the tokens a request will use: its text at ~4 bytes per token
 * plus the completion budget it asks for (max_tokens,
 * max_completion_tokens or max_output_tokens). */
int64_t kb_route_estimate_tokens(const char *body, size_t body_len,
                                 int64_t max_output);

/* ---- circuit breaker and fallback (SPEC §12) ----
 * A route's circuit opens after breaker_failures breaker failures in a row
 * (connection errors, timeouts, 5xx), stays open breaker_open_ms, then is
 * half-open: one probe call is let through; its success closes the
 * circuit, its failure opens it again. Any other answer (a success, a 4xx)
 * resets the count. A 429 is neither (the endpoint is up, but says
 * nothing about its health). The breaker only changes where items go when
 * the route has a fallback; without one it is reported (metrics) only. */

typedef enum {
        KB_BREAKER_SUCCESS = 0, /* an answer that shows the endpoint works */
        KB_BREAKER_FAILURE,     /* connection error, timeout, 5xx */
        KB_BREAKER_NEUTRAL,     /* 429 or an aborted call */
} kb_breaker_signal_t;

/* Feeds a finished call to the breaker. now_ms: monotonic. */
void kb_route_breaker_record(kb_route_t *rt, kb_breaker_signal_t sig,
                             int64_t now_ms);

/* The breaker signal of a call's outcome (a kb_outcome_t, http.h). */
kb_breaker_signal_t kb_breaker_signal_of(int outcome);

/* The breaker's state now (OPEN turns HALF_OPEN once breaker_open_ms
 * passed). */
kb_breaker_state_t kb_route_breaker_state(kb_route_t *rt, int64_t now_ms);

/* A call on the route starts now: in HALF_OPEN, it is the probe. */
void kb_route_breaker_call(kb_route_t *rt, int64_t now_ms);

/* Where an item for rt goes now: rt itself when it takes calls (its
 * circuit closed, or half-open without a probe in flight, and no
 * Retry-After blocking it longer than fallback_after_ms) or has no
 * fallback; otherwise the first route of its fallback chain that does.
 * When no route of the chain does, rt. */
kb_route_t *kb_route_select(kb_route_t *rt, int64_t now_ms);

const char *kb_breaker_state_str(kb_breaker_state_t st);

/* Appends the route's static headers (auth and configured headers) to a
 * request's header list. Returns the new list (NULL on failure). */
struct curl_slist *kb_route_headers(const kb_route_t *rt,
                                    struct curl_slist *hdrs);

#endif
