/* registry: a Confluent Schema Registry REST client (libcurl + jansson).
 *
 * The subset kbatch needs:
 *   GET  /schemas/ids/{id}            the schema text of an id
 *   POST /subjects/{subject}/versions register a schema (returns its id)
 *   POST /subjects/{subject}          look a schema up (returns its id)
 * with basic auth (user + password from an environment variable, or user
 * info in the URL) or a bearer token, several URLs with failover, TLS
 * options, and two caches: schema text by id, id by (subject, schema).
 * Ids are immutable in a registry, so a cached answer never expires; a
 * "not found" answer is cached for KB_REGISTRY_NEG_TTL_MS only.
 *
 * Two modes:
 * - asynchronous (a kb_loop_t given): a cache miss starts a request on the
 *   loop's multi handle and returns KB_REG_PENDING at once; the caller asks
 *   again later (kb_registry_generation() changes whenever an answer
 *   arrives). Nothing blocks the loop.
 * - blocking (loop NULL): a miss performs the request(s) synchronously,
 *   bounded by the timeout per URL. For CLI commands and tests.
 *
 * A registry that is down, slow (timeout), answers 5xx, or refuses our
 * credentials is "unavailable": the answer is KB_REG_UNAVAILABLE with the
 * reason, and the request is tried again after a backoff (250 ms doubling
 * to 10 s) the next time it is asked for. Unavailability is never cached as
 * an answer: it must never turn into a dead-lettered item. */
#ifndef KB_REGISTRY_H
#define KB_REGISTRY_H

#include <stddef.h>
#include <stdint.h>

#include "loop.h"

#define KB_REGISTRY_NEG_TTL_MS 10000

typedef enum {
        KB_REG_OK = 0,
        KB_REG_PENDING,     /* asked, no answer yet: ask again later */
        KB_REG_UNAVAILABLE, /* registry down/slow/5xx/401: retry later */
        KB_REG_NOT_FOUND,   /* the registry says the id (or, for a look-up,
                             * the subject or schema) does not exist */
        KB_REG_REJECTED,    /* the registry refused the request: schema
                             * invalid or incompatible (409/422), or it
                             * answered something that is not a schema */
} kb_registry_res_t;

const char *kb_registry_res_str(kb_registry_res_t r);

typedef struct kb_registry_conf_s {
        const char *rc_urls;        /* comma-separated base URLs */
        const char *rc_user;        /* basic auth user, "" or NULL: none */
        const char *rc_password;    /* basic auth password (copied) */
        const char *rc_bearer_env;  /* env var holding a bearer token */
        const char *rc_bearer_file; /* file holding a bearer token (read
                                     * again for every request: rotated
                                     * tokens work) */
        const char *rc_ca_file;     /* CA bundle, "" or NULL: system */
        const char *rc_cert_file;   /* client certificate (mTLS) */
        const char *rc_key_file;    /* its private key */
        int rc_tls_verify;          /* verify peer and host name */
        int rc_timeout_ms;          /* per request and URL */
        int rc_ids_max;             /* entries by id kept (0: 1024) */
        int rc_new_ids_per_s;       /* ids never seen asked a second
                                     * (0: 20) */
} kb_registry_conf_t;

typedef struct kb_registry_s kb_registry_t;

/* Creates a client. rc's strings are copied. loop: borrowed for the
 * client's life (asynchronous mode), or NULL (blocking mode). NULL +
 * errstr when the URL list is empty or malformed. */
kb_registry_t *kb_registry_new(const kb_registry_conf_t *rc, kb_loop_t *loop,
                               char *errstr, size_t errstr_size);

/* Aborts requests in flight, frees the caches. NULL is a no-op. */
void kb_registry_destroy(kb_registry_t *rg);

/* The schema text of id. On KB_REG_OK *schemap points to the cached text
 * (NUL-terminated, borrowed until the next call: entries by id are bounded
 * and the oldest may be forgotten). Ids never seen are asked at most 20 a
 * second (kb_registry_conf_t); beyond, PENDING (ask again later). Anything else
 * fills errstr with the reason: PENDING/UNAVAILABLE (ask again later),
 * NOT_FOUND (40403), REJECTED (not an Avro schema). */
kb_registry_res_t kb_registry_schema_by_id(kb_registry_t *rg, int32_t id,
                                           const char **schemap, char *errstr,
                                           size_t errstr_size);

/* The id of schema (JSON text, borrowed) under subject: registers it when
 * do_register (POST /subjects/{subject}/versions, idempotent in the
 * registry), else looks it up (POST /subjects/{subject}); NOT_FOUND means
 * not registered there. Cached by (subject, schema text). */
kb_registry_res_t kb_registry_subject_id(kb_registry_t *rg, const char *subject,
                                         const char *schema, int do_register,
                                         int32_t *idp, char *errstr,
                                         size_t errstr_size);

/* Changes whenever an asynchronous answer (or failure) arrives: callers that
 * wait for one retry when it moved. */
uint64_t kb_registry_generation(const kb_registry_t *rg);

/* Entries by id held (bounded, for tests and metrics). */
size_t kb_registry_ids_cached(const kb_registry_t *rg);

/* Health, safe to call from any thread (the admin server's /readyz): 1 when
 * the last request got an answer (or none was made yet); 0 with the reason
 * in why ("schema registry unavailable since ...: <error>") when the last
 * request failed on every URL. */
int kb_registry_healthy(kb_registry_t *rg, char *why, size_t why_size);

/* Requests made (HTTP round trips, successful or not): for tests and
 * metrics. */
uint64_t kb_registry_requests(const kb_registry_t *rg);

#endif
