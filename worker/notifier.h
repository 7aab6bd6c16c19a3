/* notifier: batch-completion webhooks (role `notifier`, SPEC §8,
 * docs/webhooks.md).
 *
 * Consumes the batches topic in group kafka.notifier_group_id
 * (read_committed, manual offsets). For every BatchEvent with a
 * callback_url it POSTs the event's JSON to that URL, signed
 *     kbatch-signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
 *                                                  "<t>.<body>")>
 * with kbatch-event-id, content-type: application/json and kbatch-attempt.
 * Requests run on the loop's libcurl multi handle, at most
 * notifier.max_inflight at once (DNS resolutions included), each limited to
 * notifier.timeout_ms, redirects not followed, the response body read up
 * to a small limit and discarded.
 *
 * A 2xx answer delivers the event. Anything else (other status, timeout,
 * connection or DNS failure, no signing secret) is retried with exponential
 * backoff and jitter (Retry-After honoured up to notifier.backoff_max_ms)
 * until notifier.max_attempts attempts were made or the event is older than
 * notifier.max_age_ms (its Kafka timestamp); then its bytes go to the
 * batches DLQ with error code webhook_failed. A URL the SSRF guard refuses
 * (ssrf.h) is dead-lettered at once with webhook_refused; an undecodable
 * value with deserialization_error. Events without a callback_url are
 * skipped.
 *
 * An event's offset is done once it was delivered or its DLQ copy was
 * acknowledged; offsets complete out of order and are committed through
 * kb_offsets, with the done-above map in the commit metadata (DESIGN.md).
 * Attempts are counted per owner: after a restart or rebalance an event is
 * tried again from attempt 1 (at least once), its age still measured from
 * its timestamp.
 *
 * DNS: each attempt resolves the host once with glibc's getaddrinfo_a (its
 * own threads; the loop polls for the answer every few ms, never blocks),
 * refuses the URL when any address is forbidden, and pins the request to
 * the checked addresses with CURLOPT_RESOLVE; the address libcurl connects
 * to is checked once more in CURLOPT_OPENSOCKETFUNCTION. */
#ifndef KB_NOTIFIER_H
#define KB_NOTIFIER_H

#include <stddef.h>
#include <stdint.h>

#include "conf.h"
#include "loop.h"

/* ---- pure helpers (unit-tested) -------------------------------------- */

/* Longest signature header value: "t=" + 20 digits + ",v1=" + 64 hex. */
#define KB_NOTIFIER_SIG_MAX 96

/* Writes the kbatch-signature value "t=<t>,v1=<hex HMAC-SHA256(secret,
 * "<t>.<body>")>" into out (out_size >= KB_NOTIFIER_SIG_MAX). secret and
 * body are borrowed for the call. Returns the length, or -1 (out too small,
 * out of memory). */
int kb_notifier_sign(const void *secret, size_t secret_len, int64_t t,
                     const void *body, size_t body_len, char *out,
                     size_t out_size);

/* Backoff before retry n (n = 1 after the first failed attempt), "equal
 * jitter": d = min(max_ms, base_ms * 2^(n-1)), the wait is uniform in
 * [d/2, d]; rnd is a uniform random 32-bit value. */
int64_t kb_notifier_backoff_ms(int base_ms, int max_ms, int n, uint32_t rnd);

/* After failed attempt number `attempts` of an event age_ms old (since its
 * timestamp): the wait before the next attempt, or -1 when the event must
 * be dead-lettered (attempts >= notifier.max_attempts, or age_ms >=
 * notifier.max_age_ms). retry_after_ms: the receiver's Retry-After, or -1;
 * a longer one than the backoff is honoured up to notifier.backoff_max_ms.
 * A wait that would pass max_age_ms is cut to end there (a last attempt at
 * the deadline). */
int64_t kb_notifier_retry_wait(const kb_conf_t *conf, int attempts,
                               int64_t age_ms, int64_t retry_after_ms,
                               uint32_t rnd);

/* ---- the role --------------------------------------------------------- */

typedef struct kb_notifier_s kb_notifier_t;

/* Loads the signing secret (notifier.secret_file, which must be readable
 * when set, else the variable notifier.secret_env; without either the
 * role starts with a warning and every attempt fails until a secret file
 * appears), creates the DLQ producer and the consumer, and subscribes.
 * conf and loop are borrowed for the role's life. NULL + errstr on failure
 * (an unreadable secret file, a bad Kafka property). */
kb_notifier_t *kb_notifier_new(const kb_conf_t *conf, kb_loop_t *loop,
                               char *errstr, size_t errstr_size);

/* One turn: delivery reports, consuming while below the limits, DNS
 * answers, starting requests, retry timers, commits. Returns the ms until
 * it wants to run again (the loop may wake earlier). now: kb_now_ms(). */
int kb_notifier_serve(kb_notifier_t *nt, int64_t now);

/* Graceful stop: stops fetching, lets requests in flight and DLQ copies
 * finish for up to drain_ms, flushes, commits, leaves the group. Events
 * waiting for a retry are left to the next owner (not committed). */
void kb_notifier_shutdown(kb_notifier_t *nt, int drain_ms);

/* Readiness: an assignment was received. */
int kb_notifier_ready(const kb_notifier_t *nt);

/* 1 after a fatal Kafka error (kb_loop_stop_requested is set too): the
 * worker must exit non-zero. */
int kb_notifier_fatal(const kb_notifier_t *nt);

void kb_notifier_destroy(kb_notifier_t *nt); /* NULL is a no-op */

#endif
