/* admin: the admin HTTP server (SPEC §10), libmicrohttpd in its own thread.
 *
 *   GET /healthz   200 "ok" while the loop's heartbeat is fresh (younger
 *                  than KB_ADMIN_STALE_MS), else 503 with the heartbeat's
 *                  age
 *   GET /readyz    200 "ready" once the loop says so (group joined,
 *                  producer connected, schema registry reachable when Avro
 *                  is used), else 503 "not ready: <reason>"
 *   GET /metrics   the metrics registry (metrics.h) in the Prometheus text
 *                  format 0.0.4
 *   GET /          a one-line-per-endpoint index
 * HEAD works wherever GET does; other methods get 405, other paths 404.
 *
 * The server thread never touches the loop's state: it reads the heartbeat
 * and readiness that the loop publishes here (atomics, and a reason string
 * under a mutex) and the metrics registry (atomics). */
#ifndef KB_ADMIN_H
#define KB_ADMIN_H

#include <stddef.h>
#include <stdint.h>

/* /healthz fails when the loop has not turned for this long. */
#define KB_ADMIN_STALE_MS 10000

typedef struct kb_admin_s kb_admin_t;

/* Starts serving on listen: "HOST:PORT", "[IPv6]:PORT" or ":PORT" (all
 * IPv4 interfaces); HOST may be a name. Port 0 binds a free port (see
 * kb_admin_port). listen is borrowed for the call. The heartbeat starts
 * fresh and readiness false ("starting"). NULL + errstr when the address
 * does not resolve or cannot be bound. */
kb_admin_t *kb_admin_new(const char *listen, char *errstr, size_t errstr_size);

/* Resolves a listen address ("HOST:PORT", "[IPv6]:PORT", ":PORT": any
 * IPv4 interface) for binding; host (host_size bytes) gets the HOST part
 * ("" for any). Caller frees the result with freeaddrinfo(). NULL + errstr
 * ("<what>: ...") when malformed or not resolvable. */
struct addrinfo;
struct addrinfo *kb_admin_resolve(const char *listen, const char *what,
                                  char *host, size_t host_size,
                                  char *errstr, size_t errstr_size);

/* libmicrohttpd's external logger: one warning line of facility cls (a
 * static string; NULL: "admin"). */
#include <stdarg.h>
void kb_admin_mhd_log(void *cls, const char *fmt, va_list ap);

/* Stops the server thread (waits for requests being answered) and frees
 * everything. NULL is a no-op. */
void kb_admin_destroy(kb_admin_t *ad);

/* The bound port. */
int kb_admin_port(const kb_admin_t *ad);

/* The loop's heartbeat; now_ms: kb_now_ms() (monotonic). Any thread,
 * cheap (one atomic store): call it every loop turn. */
void kb_admin_heartbeat(kb_admin_t *ad, int64_t now_ms);

/* Publishes readiness. why (borrowed for the call; NULL or "" when ready)
 * is what /readyz says when not ready. Transitions are logged, and
 * kbatch_ready follows. NULL ad is a no-op. */
void kb_admin_set_ready(kb_admin_t *ad, int ready, const char *why);

#endif
