/* async: the job APIs of async routes (SPEC §12, mode = "async").
 *
 * An async item's call has phases: SUBMIT (POST the input to submit_path;
 * the job id is read by id_pointer), POLL (status_path, GET, or POST with
 * the input plus "id"; the status by status_pointer, repeated with backoff
 * from poll_ms to poll_max_ms while it names neither a succeeded nor a
 * failed value), RESULT (result_path, when set: the output is fetched
 * there; otherwise it is the status response, or its output_pointer). The
 * wait between polls is a timer in the items pipeline: no connection and
 * no in-flight slot. This module holds a job's phase and parses what the
 * provider answers; the pipeline makes the calls. */
#ifndef KB_ASYNC_H
#define KB_ASYNC_H

#include <jansson.h>
#include <stdint.h>

#include "loop.h"
#include "routes.h"

typedef enum {
        KB_ASYNC_SUBMIT = 0,
        KB_ASYNC_POLL,
        KB_ASYNC_RESULT,
} kb_async_phase_t;

typedef enum {
        KB_ASYNC_RUNNING = 0,
        KB_ASYNC_SUCCEEDED,
        KB_ASYNC_FAILED,
        KB_ASYNC_INVALID, /* no status where status_pointer says */
} kb_async_status_t;

typedef struct kb_async_s {
        kb_async_phase_t as_phase;
        char *as_id;           /* the provider's job id, or NULL */
        char *as_body;         /* POST body of a status/result call */
        int as_polls;          /* status calls answered */
        int64_t as_submitted;  /* wall ms of the submit's answer (or of
                                * resuming a recorded job) */
        int64_t as_wait_ms;    /* the last wait between polls */
} kb_async_t;

kb_async_t *kb_async_new(void);
void kb_async_destroy(kb_async_t *as); /* NULL is a no-op */

/* The request of the current phase: its URL in url, its body in *body
 * (input, or as_body, borrowed) or NULL for a GET. -1 when the URL does
 * not fit or memory runs out. */
int kb_async_request(kb_async_t *as, const kb_route_t *rt, const char *input,
                     char *url, size_t url_size, const char **body);

/* The submit's answer: as_id set, 0; or -1 with the reason in msg. */
int kb_async_on_submit(kb_async_t *as, const kb_async_conf_t *ac,
                       json_t *resp, int64_t now_wall, char *msg,
                       size_t msg_size);

/* A status answer. For KB_ASYNC_FAILED and KB_ASYNC_INVALID, msg says
 * why (the provider's message when it gives one). */
kb_async_status_t kb_async_on_status(kb_async_t *as, const kb_async_conf_t *ac,
                                     json_t *resp, char *msg,
                                     size_t msg_size);

/* The output in a status or result answer (borrowed from resp). */
json_t *kb_async_output(const kb_async_conf_t *ac, json_t *resp);

/* The wait before the next poll: poll_ms, then 1.5 times the last, at
 * most poll_max_ms. */
int64_t kb_async_next_wait(kb_async_t *as, const kb_async_conf_t *ac);

/* Asks the provider to cancel job id (POST cancel_path; nothing when the
 * route has none). Fire and forget: the transfer owns itself. */
void kb_async_cancel(kb_loop_t *loop, kb_route_t *rt, const char *id,
                     const char *input);

#endif
