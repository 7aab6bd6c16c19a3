/* api: the HTTP batch API, role `api` (SPEC §11, docs/api.md).
 *
 * libmicrohttpd, one thread per connection (requests that create a batch
 * read a file back from Kafka and publish its items: they block their own
 * connection only). OpenAI Files and Batches under /v1/files and
 * /v1/batches; Anthropic Message Batches under /v1/messages/batches. Every
 * request authenticates with a key of api.keys_file (apikeys.h); its tenant
 * sees only its own files and batches. Everything lives in Kafka
 * (apistore.h): any number of replicas answer the same requests. */
#ifndef KB_API_H
#define KB_API_H

#include <stddef.h>

#include "conf.h"

/* Idle connections are closed after this many seconds (slow or stalled
 * clients). */
#define KB_API_TIMEOUT_S 60

typedef struct kb_api_s kb_api_t;

/* Starts the API: keys, Kafka clients and the follower, then the server
 * on api.listen. NULL + errstr; *is_config (may be NULL) is set to 1 when
 * the failure is the configuration's (no keys file on a non-loopback
 * address, a bad keys file, a bad address): exit 2. */
kb_api_t *kb_api_new(const kb_conf_t *conf, int *is_config, char *errstr,
                     size_t errstr_size);
/* Stops the server (waits for the requests being answered), then the
 * store. NULL is a no-op. */
void kb_api_destroy(kb_api_t *ap);

/* The bound port (api.listen port 0 binds a free one). */
int kb_api_port(const kb_api_t *ap);
/* 1 once the store has caught up with its topics. */
int kb_api_ready(kb_api_t *ap);
/* 1 when the process must stop (a Kafka client failed to authenticate). */
int kb_api_fatal(kb_api_t *ap);

/* 1 when listen ("HOST:PORT") names only loopback addresses. */
int kb_api_listen_is_loopback(const char *listen);

#endif
