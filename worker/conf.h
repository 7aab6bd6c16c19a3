/* conf: worker.conf (libconfig) + KBATCH_<SECTION>_<KEY> environment
 * overrides, validated completely before anything connects.
 *
 * One table of settings (path, type, min, max, default, offset into
 * kb_conf_t) drives parsing, validation, env overrides, defaults and the
 * printed effective configuration. Errors are reported as
 * "FILE:LINE: message" (or "environment KBATCH_X: message").
 * docs/configuration.md lists every key; worker.conf documents them too. */
#ifndef KB_CONF_H
#define KB_CONF_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum {
        KB_CONF_OK = 0,
        KB_CONF_ERR_IO,      /* file cannot be read */
        KB_CONF_ERR_SYNTAX,  /* libconfig parse error */
        KB_CONF_ERR_INVALID, /* unknown key, wrong type, out of range, ... */
} kb_conf_err_t;

const char *kb_conf_err_str(kb_conf_err_t err);

/* Roles (worker.roles). */
/* What a retry or dead-letter copy may add to an item's message: kbatch's
 * SPEC §3 headers (the error message is cut at 1 KiB). Retry and DLQ topics
 * allow kafka.message_max_bytes plus this, and so does the producer. */
#define KB_COPY_HEADROOM_BYTES 65536

#define KB_ROLE_ITEMS      0x1
#define KB_ROLE_AGGREGATOR 0x2
#define KB_ROLE_NOTIFIER   0x4
#define KB_ROLE_API        0x8 /* the HTTP batch API (SPEC §11) */

/* The resolved topic names: always topics.prefix + the per-topic name
 * (topics.items, ...); set topics.prefix = "" to give full names. */
typedef enum {
        KB_TOPIC_ITEMS = 0,
        KB_TOPIC_ITEMS_DLQ,
        KB_TOPIC_RESULTS,
        KB_TOPIC_BATCHES,
        KB_TOPIC_BATCHES_DLQ,
        KB_TOPIC_CONTROL,
        KB_TOPIC_BATCH_STATE,
        KB_TOPIC_FILES,       /* api: uploaded files (compacted) */
        KB_TOPIC_API_BATCHES, /* api: batch records (compacted) */
        KB_TOPIC_ITEMS_PRIORITY, /* SPEC §12: the priority lane */
        KB_TOPIC_ITEMS_JOBS,     /* SPEC §12: async job ids, compacted */
        KB_TOPIC__CNT
} kb_topic_t;

/* A name=value list (kafka.properties, route headers, route operations). */
typedef struct kb_kv_s {
        char *k;
        char *v;
} kb_kv_t;

/* A route's async job API (SPEC §12, mode = "async"). */
typedef struct kb_async_conf_s {
        char *submit_path;         /* POST the item's input here */
        char *id_pointer;          /* JSON Pointer to the job id in the
                                    * submit response */
        char *status_path;         /* "{id}" replaced */
        char *status_method;       /* "GET" or "POST" (the input + "id") */
        char *status_pointer;      /* JSON Pointer to the status */
        char **succeeded;          /* status values: done, output ready */
        size_t succeeded_cnt;
        char **failed;             /* status values: the job failed */
        size_t failed_cnt;
        char *output_pointer;      /* the output in the status response
                                    * (NULL: all of it) */
        char *result_path;         /* or fetched from here ("{id}"), NULL */
        char *cancel_path;         /* POSTed on cancel/deadline, or NULL */
        int poll_ms;               /* first poll interval, default 1000 */
        int poll_max_ms;           /* backoff up to, default 30000 */
        int max_wait_ms;           /* then job_timeout, default 86400000 */
} kb_async_conf_t;

typedef struct kb_route_conf_s {
        char *model;               /* glob (fnmatch) on the item's model */
        char *base_url;            /* e.g. "http://127.0.0.1:8000" */
        char *api_key_env;         /* env var holding the key, or NULL */
        char *api_key_file;        /* file holding the key, or NULL */
        char *default_operation;   /* default "chat.completions" */
        int timeout_ms;            /* whole request, default 600000 */
        int connect_timeout_ms;    /* default 10000 */
        int max_inflight;          /* default 256 */
        int requests_per_minute;   /* 0 = unlimited */
        int tokens_per_minute;     /* 0 = unlimited */
        int tls_verify;            /* default 1 */
        char *ca_file;             /* or NULL */
        kb_kv_t *headers;          /* extra request headers */
        size_t header_cnt;
        kb_kv_t *operations;       /* operation name -> path: the
                                    * OpenAI-compatible defaults
                                    * (chat.completions, responses,
                                    * embeddings, completions) first, then
                                    * the route's own, overriding by name */
        size_t operation_cnt;
        /* SPEC §12 */
        char *name;                /* default: the model glob (resolved at
                                    * load: never NULL after it) */
        char *fallback;            /* the name of another route, or NULL */
        int breaker_failures;      /* failures in a row that open the
                                    * circuit, default 5 */
        int breaker_open_ms;       /* open this long, then probe; 30000 */
        int fallback_after_ms;     /* a Retry-After longer than this sends
                                    * items to the fallback; 10000 */
        char *mode;                /* "sync" (default) or "async" */
        kb_async_conf_t async;     /* mode "async" */
        int line;                  /* config line of this route, 0 if default */
} kb_route_conf_t;

typedef struct kb_conf_s {
        char *path;                /* the file loaded, or NULL */

        /* kafka */
        char *kafka_bootstrap_servers;   /* "localhost:9092" */
        char *kafka_group_id;            /* "kbatch-workers" */
        char *kafka_aggregator_group_id; /* "kbatch-aggregator" */
        char *kafka_notifier_group_id;   /* "kbatch-notifier" */
        int kafka_message_max_bytes;     /* 2097152: topics' max.message.bytes */
        kb_kv_t *kafka_properties;       /* passed to every client; k is
                                          * librdkafka's dotted name */
        size_t kafka_property_cnt;

        /* topics */
        char *topics_prefix;             /* "kbatch." */
        char *topics_name[KB_TOPIC__CNT];/* resolved full names */
        char *topics_base[KB_TOPIC__CNT];/* topics.items, ... (no prefix) */
        int topics_partitions;           /* for `topics create`, 12 */
        int topics_replication;          /* for `topics create`, -1 = broker */

        /* worker */
        int worker_roles;                /* KB_ROLE_* bits, all */
        int worker_max_inflight;         /* 1000 */
        int worker_shutdown_drain_ms;    /* 30000 */
        int worker_revoke_drain_ms;      /* 10000 */
        int worker_commit_interval_ms;   /* 1000 */
        int worker_max_item_bytes;       /* 1048576 */
        int worker_queue_max_kbytes;     /* librdkafka prefetch, 16384 */
        int worker_offsets_window;       /* per partition, 16384 */
        int worker_route_queue_max;      /* items waiting per route, 10000 */
        int worker_read_ahead;           /* offsets past the lowest unfinished
                                          * one, items topic; 0: off */
        char *worker_instance_id;        /* "" -> hostname-pid */
        char *instance_id;               /* resolved at load, see
                                          * kb_conf_instance_id() */

        /* http (all routes) */
        int http_max_response_bytes;     /* 16777216 */
        int http_max_connections;        /* 0 = unlimited */

        /* retry */
        int retry_max_attempts;          /* 5 */
        int retry_inprocess_attempts;    /* 2 */
        int retry_backoff_base_ms;       /* 500 */
        int retry_backoff_max_ms;        /* 30000 */
        int retry_inprocess_max_wait_ms; /* 10000 */
        int *retry_delays_ms;            /* [5000, 30000, 300000] */
        size_t retry_delay_cnt;

        /* routes */
        kb_route_conf_t *routes;
        size_t route_cnt;

        /* serde */
        char *serde_format;              /* "json" | "avro" */
        char *serde_schema_registry_url; /* "" */
        char *serde_schema_registry_user;
        char *serde_schema_registry_password_env;
        int serde_auto_register;         /* 1 */
        /* per-topic formats: "" = serde.format */
        char *serde_items_format;        /* items, its retry tiers, DLQ */
        char *serde_results_format;
        char *serde_batches_format;      /* batches and its DLQ */
        char *serde_control_format;
        char *serde_batch_state_format;
        char *serde_schema_registry_bearer_token_env;  /* "" */
        char *serde_schema_registry_bearer_token_file; /* "" */
        char *serde_schema_registry_ca_file;           /* "" */
        char *serde_schema_registry_cert_file;         /* "" */
        char *serde_schema_registry_key_file;          /* "" */
        int serde_schema_registry_tls_verify;          /* 1 */
        int serde_schema_registry_timeout_ms;          /* 5000 */

        /* aggregator */
        int aggregator_commit_interval_ms; /* 1000 */
        int64_t aggregator_retention_ms;   /* 7 days */
        int64_t aggregator_expiry_grace_ms;/* 1 hour */
        int aggregator_transaction_timeout_ms; /* 10000 */
        /* Fault injection, tests only (0: off): every N-th transaction is
         * aborted instead of committed (the path of an abortable error), or
         * gets a fatal error injected (the producer is recreated). */
        int aggregator_test_txn_abort_every;
        int aggregator_test_txn_fatal_every;

        /* notifier */
        char *notifier_secret_env;       /* "KBATCH_WEBHOOK_SECRET" */
        char *notifier_secret_file;      /* "", takes precedence over
                                          * notifier_secret_env when set */
        int notifier_max_inflight;       /* 64 */
        int notifier_timeout_ms;         /* 10000 */
        int notifier_max_attempts;       /* 8 */
        int64_t notifier_max_age_ms;     /* 24 h */
        int notifier_allow_private;      /* 0 */
        int notifier_backoff_base_ms;    /* 1000 */
        int notifier_backoff_max_ms;     /* 300000 */
        int notifier_max_pending;        /* 10000 events held */

        /* control */
        int64_t control_lookback_ms;     /* 7 days */

        /* admin */
        char *admin_listen;              /* "0.0.0.0:8080"; "" disables */

        /* api (SPEC §11) */
        char *api_listen;                /* "0.0.0.0:8081" */
        char *api_keys_file;             /* "": only a loopback listen */
        int64_t api_max_file_bytes;      /* 200 MiB */

        /* log */
        char *log_level;                 /* "info" */
        char *log_format;                /* "json" */
} kb_conf_t;

/* Which file to load: `given` (from -c/--config) when not NULL; else
 * $KBATCH_CONFIG when set and non-empty; else "worker.conf" when it exists
 * in the current directory; else NULL (built-in defaults + environment).
 * Returns `given`, getenv()'s string or a static string. */
const char *kb_conf_default_path(const char *given);

/* Loads `path` (NULL: defaults only; the file must exist when given),
 * applies KBATCH_* overrides from the environment, validates everything.
 * Returns NULL and fills errstr ("FILE:LINE: message") on failure; *errp
 * (may be NULL) receives the error kind. Caller frees with kb_conf_destroy. */
kb_conf_t *kb_conf_load(const char *path, kb_conf_err_t *errp, char *errstr,
                        size_t errstr_size);
void kb_conf_destroy(kb_conf_t *conf); /* NULL is a no-op */

/* Prints the effective configuration in libconfig syntax, secrets redacted
 * (kafka.properties whose name contains "password", "secret", "key" or
 * "token"; route headers such as Authorization). */
void kb_conf_print(const kb_conf_t *conf, FILE *out);

/* Instance id: worker.instance_id, or "<hostname>-<pid>" (resolved at load
 * time). Borrowed until kb_conf_destroy(). */
const char *kb_conf_instance_id(const kb_conf_t *conf);

/* The settings table, for docs and tests: the i-th scalar setting's path
 * ("section.key") and, in *envp when not NULL, its environment variable
 * ("KBATCH_SECTION_KEY"). NULL past the end. Static strings. */
const char *kb_conf_setting_name(size_t i, const char **envp);

#endif
