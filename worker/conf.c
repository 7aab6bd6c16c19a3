/* conf: see conf.h.
 *
 * One static table (kb_conf_settings[]) describes every scalar setting:
 * its path, type, range, default (as text, parsed by the same code as an
 * environment value, so defaults are validated like everything else) and
 * where it lives in kb_conf_t. Loading is:
 *   1. defaults from the table (+ the default catch-all route),
 *   2. the file, walked in order: every key must be known, well typed and in
 *      range; kafka.properties and routes have their own parsers,
 *   3. KBATCH_<SECTION>_<KEY> (and KBATCH_KAFKA_PROPERTIES_<NAME>)
 *      environment overrides,
 *   4. cross-field checks and derived values (topic names, instance id).
 * The first error stops the load and is reported as "FILE:LINE: message". */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* asprintf */
#endif
#include "conf.h"
#include "log.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <libconfig.h>
#include <librdkafka/rdkafka.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "jsonptr.h"
#include "offsets.h"

extern char **environ;

typedef enum {
        KB_CONF_T_INT,     /* int in [min, max] */
        KB_CONF_T_INT64,   /* int64_t in [min, max] */
        KB_CONF_T_BOOL,    /* int, 0 or 1 */
        KB_CONF_T_STR,     /* char *, length in [min, max] */
        KB_CONF_T_ENUM,    /* char *, one of `values` ("a|b|c") */
        KB_CONF_T_ROLES,   /* int, KB_ROLE_* bits named by `values` */
        KB_CONF_T_INTLIST, /* int * (+ size_t count at cnt_off), entries in
                            * [min, max], 1..KB_CONF_LIST_MAX entries */
} kb_conf_type_t;

#define KB_CONF_LIST_MAX 10

/* Extra validation of a string value: returns 0, or -1 with a message
 * ("must ...") in msg. */
typedef int (*kb_conf_check_t)(const char *v, char *msg, size_t msg_size);

#define KB_CONF_F_URL 0x1 /* print with the userinfo password redacted */

typedef struct kb_conf_setting_s {
        const char *path;     /* "section.key" (routes: just "key") */
        kb_conf_type_t type;
        int64_t min, max;
        const char *def;      /* default, as text; NULL: unset (routes) */
        size_t off;           /* into kb_conf_t (routes: kb_route_conf_t) */
        const char *values;   /* ENUM, ROLES */
        kb_conf_check_t check;
        size_t cnt_off;       /* INTLIST: its size_t count */
        int flags;            /* KB_CONF_F_* */
} kb_conf_setting_t;

static int check_topic(const char *v, char *msg, size_t msg_size);
static int check_instance(const char *v, char *msg, size_t msg_size);
static int check_path(const char *v, char *msg, size_t msg_size);
static int check_pointer(const char *v, char *msg, size_t msg_size);
static int check_envname(const char *v, char *msg, size_t msg_size);
static int check_url(const char *v, char *msg, size_t msg_size);
static int check_urls(const char *v, char *msg, size_t msg_size);
static int check_listen(const char *v, char *msg, size_t msg_size);
static int check_format(const char *v, char *msg, size_t msg_size);

#define OFF(f) offsetof(kb_conf_t, f)
#define S_INT(p, mn, mx, d, f)                                                 \
        { p, KB_CONF_T_INT, mn, mx, d, OFF(f), NULL, NULL, 0, 0 }
#define S_I64(p, mn, mx, d, f)                                                 \
        { p, KB_CONF_T_INT64, mn, mx, d, OFF(f), NULL, NULL, 0, 0 }
#define S_BOOL(p, d, f) { p, KB_CONF_T_BOOL, 0, 1, d, OFF(f), NULL, NULL, 0, 0 }
#define S_STR(p, mn, mx, d, f, chk)                                            \
        { p, KB_CONF_T_STR, mn, mx, d, OFF(f), NULL, chk, 0, 0 }
#define S_ENUM(p, vals, d, f)                                                  \
        { p, KB_CONF_T_ENUM, 0, 0, d, OFF(f), vals, NULL, 0, 0 }

#define DAY_MS  INT64_C(86400000)
#define YEAR_MS (365 * DAY_MS)

/* Every scalar setting, grouped by section in the order they are printed. */
static const kb_conf_setting_t kb_conf_settings[] = {
        S_STR("kafka.bootstrap_servers", 1, 4096, "localhost:9092",
              kafka_bootstrap_servers, NULL),
        S_STR("kafka.group_id", 1, 255, "kbatch-workers", kafka_group_id,
              NULL),
        S_STR("kafka.aggregator_group_id", 1, 255, "kbatch-aggregator",
              kafka_aggregator_group_id, NULL),
        S_STR("kafka.notifier_group_id", 1, 255, "kbatch-notifier",
              kafka_notifier_group_id, NULL),
        S_INT("kafka.message_max_bytes", 1048576, 104857600, "2097152",
              kafka_message_max_bytes),

        S_STR("topics.prefix", 0, 200, "kbatch.", topics_prefix, check_topic),
        S_STR("topics.items", 1, 240, "items", topics_base[KB_TOPIC_ITEMS],
              check_topic),
        S_STR("topics.items_priority", 1, 249, "items.priority",
              topics_base[KB_TOPIC_ITEMS_PRIORITY], check_topic),
        S_STR("topics.items_jobs", 1, 249, "items.jobs",
              topics_base[KB_TOPIC_ITEMS_JOBS], check_topic),
        S_STR("topics.items_dlq", 1, 249, "items.dlq",
              topics_base[KB_TOPIC_ITEMS_DLQ], check_topic),
        S_STR("topics.results", 1, 249, "results",
              topics_base[KB_TOPIC_RESULTS], check_topic),
        S_STR("topics.batches", 1, 249, "batches",
              topics_base[KB_TOPIC_BATCHES], check_topic),
        S_STR("topics.batches_dlq", 1, 249, "batches.dlq",
              topics_base[KB_TOPIC_BATCHES_DLQ], check_topic),
        S_STR("topics.control", 1, 249, "control",
              topics_base[KB_TOPIC_CONTROL], check_topic),
        S_STR("topics.batch_state", 1, 249, "batch-state",
              topics_base[KB_TOPIC_BATCH_STATE], check_topic),
        S_STR("topics.files", 1, 249, "files", topics_base[KB_TOPIC_FILES],
              check_topic),
        S_STR("topics.api_batches", 1, 249, "api-batches",
              topics_base[KB_TOPIC_API_BATCHES], check_topic),
        S_INT("topics.partitions", 1, 10000, "12", topics_partitions),
        S_INT("topics.replication", -1, 1000, "-1", topics_replication),

        { "worker.roles", KB_CONF_T_ROLES, 0, 0, "items,aggregator,notifier",
          OFF(worker_roles), "items|aggregator|notifier|api", NULL, 0, 0 },
        S_INT("worker.max_inflight", 1, 100000, "1000", worker_max_inflight),
        S_INT("worker.shutdown_drain_ms", 0, 3600000, "30000",
              worker_shutdown_drain_ms),
        S_INT("worker.revoke_drain_ms", 0, 3600000, "10000",
              worker_revoke_drain_ms),
        S_INT("worker.commit_interval_ms", 10, 600000, "1000",
              worker_commit_interval_ms),
        S_INT("worker.max_item_bytes", 1024, 104857600, "1048576",
              worker_max_item_bytes),
        S_INT("worker.queue_max_kbytes", 1, 2097151, "1024",
              worker_queue_max_kbytes),
        S_INT("worker.offsets_window", 64, KB_OFFSETS_WINDOW_MAX, "16384",
              worker_offsets_window),
        S_INT("worker.route_queue_max", 1, 1000000, "10000",
              worker_route_queue_max),
        S_INT("worker.read_ahead", 0, KB_OFFSETS_WINDOW_LIMIT, "1000000",
              worker_read_ahead),
        S_STR("worker.instance_id", 0, 128, "", worker_instance_id,
              check_instance),

        S_INT("http.max_response_bytes", 1024, 1073741824, "16777216",
              http_max_response_bytes),
        S_INT("http.max_connections", 0, 100000, "0", http_max_connections),

        S_INT("retry.max_attempts", 1, 100, "5", retry_max_attempts),
        S_INT("retry.inprocess_attempts", 0, 100, "2",
              retry_inprocess_attempts),
        S_INT("retry.backoff_base_ms", 0, 3600000, "500",
              retry_backoff_base_ms),
        S_INT("retry.backoff_max_ms", 0, 3600000, "30000",
              retry_backoff_max_ms),
        S_INT("retry.inprocess_max_wait_ms", 0, 3600000, "10000",
              retry_inprocess_max_wait_ms),
        { "retry.delays_ms", KB_CONF_T_INTLIST, 1, 86400000,
          "5000,30000,300000", OFF(retry_delays_ms), NULL, NULL,
          OFF(retry_delay_cnt), 0 },

        S_ENUM("serde.format", "json|avro", "json", serde_format),
        { "serde.schema_registry_url", KB_CONF_T_STR, 0, 4096, "",
          OFF(serde_schema_registry_url), NULL, check_urls, 0, KB_CONF_F_URL },
        S_STR("serde.schema_registry_user", 0, 1024, "",
              serde_schema_registry_user, NULL),
        S_STR("serde.schema_registry_password_env", 0, 255, "",
              serde_schema_registry_password_env, check_envname),
        S_BOOL("serde.auto_register", "true", serde_auto_register),
        S_STR("serde.items_format", 0, 4, "", serde_items_format,
              check_format),
        S_STR("serde.results_format", 0, 4, "", serde_results_format,
              check_format),
        S_STR("serde.batches_format", 0, 4, "", serde_batches_format,
              check_format),
        S_STR("serde.control_format", 0, 4, "", serde_control_format,
              check_format),
        S_STR("serde.batch_state_format", 0, 4, "", serde_batch_state_format,
              check_format),
        S_STR("serde.schema_registry_bearer_token_env", 0, 255, "",
              serde_schema_registry_bearer_token_env, check_envname),
        S_STR("serde.schema_registry_bearer_token_file", 0, 4096, "",
              serde_schema_registry_bearer_token_file, NULL),
        S_STR("serde.schema_registry_ca_file", 0, 4096, "",
              serde_schema_registry_ca_file, NULL),
        S_STR("serde.schema_registry_cert_file", 0, 4096, "",
              serde_schema_registry_cert_file, NULL),
        S_STR("serde.schema_registry_key_file", 0, 4096, "",
              serde_schema_registry_key_file, NULL),
        S_BOOL("serde.schema_registry_tls_verify", "true",
               serde_schema_registry_tls_verify),
        S_INT("serde.schema_registry_timeout_ms", 100, 600000, "5000",
              serde_schema_registry_timeout_ms),

        S_INT("aggregator.commit_interval_ms", 10, 600000, "1000",
              aggregator_commit_interval_ms),
        S_I64("aggregator.retention_ms", 1000, 10 * YEAR_MS, "604800000",
              aggregator_retention_ms),
        S_I64("aggregator.expiry_grace_ms", 0, 30 * DAY_MS, "3600000",
              aggregator_expiry_grace_ms),
        S_INT("aggregator.transaction_timeout_ms", 1000, 900000, "10000",
              aggregator_transaction_timeout_ms),
        S_INT("aggregator.test_txn_abort_every", 0, 1000000, "0",
              aggregator_test_txn_abort_every),
        S_INT("aggregator.test_txn_fatal_every", 0, 1000000, "0",
              aggregator_test_txn_fatal_every),

        S_STR("notifier.secret_env", 0, 255, "KBATCH_WEBHOOK_SECRET",
              notifier_secret_env, check_envname),
        S_STR("notifier.secret_file", 0, 4096, "", notifier_secret_file,
              NULL),
        S_INT("notifier.max_inflight", 1, 10000, "64", notifier_max_inflight),
        S_INT("notifier.timeout_ms", 100, 600000, "10000",
              notifier_timeout_ms),
        S_INT("notifier.max_attempts", 1, 100, "8", notifier_max_attempts),
        S_I64("notifier.max_age_ms", 60000, 30 * DAY_MS, "86400000",
              notifier_max_age_ms),
        S_BOOL("notifier.allow_private", "false", notifier_allow_private),
        S_INT("notifier.backoff_base_ms", 10, 3600000, "1000",
              notifier_backoff_base_ms),
        S_INT("notifier.backoff_max_ms", 10, 86400000, "300000",
              notifier_backoff_max_ms),
        S_INT("notifier.max_pending", 1, 1000000, "10000",
              notifier_max_pending),

        S_I64("control.lookback_ms", 0, 10 * YEAR_MS, "604800000",
              control_lookback_ms),

        S_STR("admin.listen", 0, 255, "0.0.0.0:8080", admin_listen,
              check_listen),

        S_STR("api.listen", 1, 255, "0.0.0.0:8081", api_listen,
              check_listen),
        S_STR("api.keys_file", 0, 4096, "", api_keys_file, NULL),
        S_I64("api.max_file_bytes", 1024, INT64_C(10737418240), "209715200",
              api_max_file_bytes),

        S_ENUM("log.level", "debug|info|warn|error|off", "info", log_level),
        S_ENUM("log.format", "json|text", "json", log_format),
};
#define KB_CONF_SETTING_CNT                                                    \
        (sizeof(kb_conf_settings) / sizeof(*kb_conf_settings))

/* Sections in print order; "routes" is a top-level list. */
static const char *kb_conf_sections[] = {
        "kafka", "topics", "worker",   "http",    "retry", "serde",
        "aggregator", "notifier", "control", "admin", "api", "log",
};
#define KB_CONF_SECTION_CNT                                                    \
        (sizeof(kb_conf_sections) / sizeof(*kb_conf_sections))

#undef OFF
#define OFF(f) offsetof(kb_route_conf_t, f)

/* The keys of one route (paths without the "routes[i]." part). headers and
 * operations are groups with their own parsers. */
static const kb_conf_setting_t kb_conf_route_settings[] = {
        S_STR("model", 1, 1024, NULL, model, NULL),
        { "base_url", KB_CONF_T_STR, 1, 4096, NULL, OFF(base_url), NULL,
          check_url, 0, KB_CONF_F_URL },
        S_STR("api_key_env", 1, 255, NULL, api_key_env, check_envname),
        S_STR("api_key_file", 1, 4096, NULL, api_key_file, NULL),
        S_STR("default_operation", 1, 128, "chat.completions",
              default_operation, NULL),
        S_INT("timeout_ms", 100, 86400000, "600000", timeout_ms),
        S_INT("connect_timeout_ms", 100, 600000, "10000", connect_timeout_ms),
        S_INT("max_inflight", 1, 100000, "256", max_inflight),
        S_INT("requests_per_minute", 0, 100000000, "0", requests_per_minute),
        S_INT("tokens_per_minute", 0, 2000000000, "0", tokens_per_minute),
        S_BOOL("tls_verify", "true", tls_verify),
        S_STR("ca_file", 1, 4096, NULL, ca_file, NULL),
        S_STR("name", 1, 256, NULL, name, NULL),
        S_STR("fallback", 1, 256, NULL, fallback, NULL),
        S_INT("breaker_failures", 1, 1000000, "5", breaker_failures),
        S_INT("breaker_open_ms", 100, 86400000, "30000", breaker_open_ms),
        S_INT("fallback_after_ms", 0, 86400000, "10000", fallback_after_ms),
        S_ENUM("mode", "sync|async", "sync", mode),
};
#define KB_CONF_ROUTE_SETTING_CNT                                              \
        (sizeof(kb_conf_route_settings) / sizeof(*kb_conf_route_settings))

#undef OFF
#define OFF(f) offsetof(kb_async_conf_t, f)

/* The scalar keys of a route's async group (succeeded and failed are
 * lists of strings with their own parser). */
static const kb_conf_setting_t kb_conf_async_settings[] = {
        S_STR("submit_path", 1, 4096, NULL, submit_path, check_path),
        S_STR("id_pointer", 0, 1024, NULL, id_pointer, check_pointer),
        S_STR("status_path", 1, 4096, NULL, status_path, check_path),
        S_ENUM("status_method", "GET|POST", "GET", status_method),
        S_STR("status_pointer", 0, 1024, NULL, status_pointer, check_pointer),
        S_STR("output_pointer", 0, 1024, NULL, output_pointer, check_pointer),
        S_STR("result_path", 1, 4096, NULL, result_path, check_path),
        S_STR("cancel_path", 1, 4096, NULL, cancel_path, check_path),
        S_INT("poll_ms", 10, 3600000, "1000", poll_ms),
        S_INT("poll_max_ms", 10, 3600000, "30000", poll_max_ms),
        S_INT("max_wait_ms", 1000, 2000000000, "86400000", max_wait_ms),
};
#define KB_CONF_ASYNC_SETTING_CNT                                              \
        (sizeof(kb_conf_async_settings) / sizeof(*kb_conf_async_settings))

#undef OFF

/* OpenAI-compatible operation paths every route starts from. */
static const kb_kv_t kb_conf_default_ops[] = {
        { "chat.completions", "/v1/chat/completions" },
        { "responses", "/v1/responses" },
        { "embeddings", "/v1/embeddings" },
        { "completions", "/v1/completions" },
};

/* kafka.properties kbatch sets itself: setting them would be overridden or
 * would break its delivery guarantees. */
static const struct {
        const char *name;
        const char *hint;
} kb_conf_managed_props[] = {
        { "bootstrap.servers", "use kafka.bootstrap_servers" },
        { "metadata.broker.list", "use kafka.bootstrap_servers" },
        { "group.id", "use kafka.group_id, kafka.aggregator_group_id or "
                      "kafka.notifier_group_id" },
        { "enable.auto.commit", "kbatch commits offsets itself" },
        { "enable.auto.offset.store", "kbatch stores offsets itself" },
        { "enable.idempotence", "kbatch's producer is always idempotent" },
        { "acks", "kbatch's producer always uses acks=all" },
        { "request.required.acks", "kbatch's producer always uses acks=all" },
        { "transactional.id", "kbatch sets it for the aggregator" },
        { "queued.max.messages.kbytes", "use worker.queue_max_kbytes" },
};

#define KB_CONF_PROP_ENV "KBATCH_KAFKA_PROPERTIES_"

/* Where a value came from, for messages. */
typedef struct kb_conf_loc_s {
        const char *file; /* NULL: not from a file */
        int line;
        const char *env;  /* environment variable, or NULL */
} kb_conf_loc_t;

typedef struct kb_conf_ctx_s {
        kb_conf_t *conf;
        const char *path;  /* the main file, for messages */
        const char *text;  /* its contents (NUL-terminated) */
        char *errstr;
        size_t errstr_size;
        kb_conf_err_t err;
        kb_conf_loc_t where[KB_CONF_SETTING_CNT]; /* last set by */
        char envbuf[KB_CONF_SETTING_CNT][64];     /* env names for where[] */
        char *dir;         /* the main file's directory, for @include */
        char **files;      /* file names of where[] (outlive libconfig) */
        size_t file_cnt;
} kb_conf_ctx_t;


const char *kb_conf_err_str(kb_conf_err_t err) {
        switch (err) {
        case KB_CONF_OK:
                return "ok";
        case KB_CONF_ERR_IO:
                return "cannot read the configuration file";
        case KB_CONF_ERR_SYNTAX:
                return "configuration syntax error";
        case KB_CONF_ERR_INVALID:
                return "invalid configuration";
        }
        return "unknown error";
}


/*
 * Small helpers
 */

/* "KBATCH_" + path uppercased, dots to underscores. */
static void env_name(const char *path, char *buf, size_t size) {
        size_t n = 0;
        const char *p;
        n = (size_t)snprintf(buf, size, "KBATCH_");
        for (p = path; *p && n + 1 < size; p++)
                buf[n++] = *p == '.' ? '_' : (char)toupper((unsigned char)*p);
        buf[n] = '\0';
}

static pthread_once_t kb_conf_env_once = PTHREAD_ONCE_INIT;
static char kb_conf_env_names[KB_CONF_SETTING_CNT][64];

static void env_names_init(void) {
        size_t i;
        for (i = 0; i < KB_CONF_SETTING_CNT; i++)
                env_name(kb_conf_settings[i].path, kb_conf_env_names[i],
                         sizeof(kb_conf_env_names[i]));
}

const char *kb_conf_setting_name(size_t i, const char **envp) {
        if (i >= KB_CONF_SETTING_CNT)
                return NULL;
        if (envp) {
                pthread_once(&kb_conf_env_once, env_names_init);
                *envp = kb_conf_env_names[i];
        }
        return kb_conf_settings[i].path;
}

static void *field(void *base, const kb_conf_setting_t *st) {
        return (char *)base + st->off;
}

static const void *cfield(const void *base, const kb_conf_setting_t *st) {
        return (const char *)base + st->off;
}

static void *xrealloc_array(void *p, size_t n, size_t size) {
        if (n && size > SIZE_MAX / n)
                return NULL;
        return realloc(p, n * size);
}

/* Levenshtein distance of two short strings (capped at 64 chars). */
static int edit_distance(const char *a, const char *b) {
        int prev[65], cur[65];
        int la = (int)strlen(a), lb = (int)strlen(b), i, j;
        if (la > 64 || lb > 64)
                return 99;
        for (j = 0; j <= lb; j++)
                prev[j] = j;
        for (i = 1; i <= la; i++) {
                cur[0] = i;
                for (j = 1; j <= lb; j++) {
                        int d = prev[j - 1] + (a[i - 1] != b[j - 1]);
                        if (prev[j] + 1 < d)
                                d = prev[j] + 1;
                        if (cur[j - 1] + 1 < d)
                                d = cur[j - 1] + 1;
                        cur[j] = d;
                }
                memcpy(prev, cur, sizeof(int) * (size_t)(lb + 1));
        }
        return prev[lb];
}

/* The closest candidate within edit distance 2; else a candidate whose last
 * component equals key's (a key put in the wrong section); else one whose
 * last component starts with key's and "_" ("timeout" -> "timeout_ms");
 * else NULL. */
static const char *suggest(const char *key, const char *const *cands,
                           size_t cnt) {
        const char *best = NULL, *k, *c;
        int bestd = 3;
        size_t i;
        for (i = 0; i < cnt; i++) {
                int d = edit_distance(key, cands[i]);
                if (d < bestd) {
                        bestd = d;
                        best = cands[i];
                }
        }
        if (best)
                return best;
        k = strrchr(key, '.');
        k = k ? k + 1 : key;
        for (i = 0; i < cnt; i++) {
                c = strrchr(cands[i], '.');
                if (c && !strcmp(c + 1, k))
                        return cands[i];
        }
        for (i = 0; i < cnt; i++) {
                size_t kl = strlen(k);
                c = strrchr(cands[i], '.');
                c = c ? c + 1 : cands[i];
                if (kl >= 3 && !strncmp(c, k, kl) && c[kl] == '_')
                        return cands[i];
        }
        return NULL;
}

/* Every known top-level name and "section.key" path. */
static size_t known_keys(const char **out, size_t size) {
        size_t n = 0, i;
        for (i = 0; i < KB_CONF_SECTION_CNT && n < size; i++)
                out[n++] = kb_conf_sections[i];
        if (n < size)
                out[n++] = "routes";
        if (n < size)
                out[n++] = "kafka.properties";
        for (i = 0; i < KB_CONF_SETTING_CNT && n < size; i++)
                out[n++] = kb_conf_settings[i].path;
        return n;
}

/* Records the error (the first one only) and returns -1. subject, when not
 * NULL, is quoted before the message for file locations ("'x' must ..."). */
static int conf_fail(kb_conf_ctx_t *ctx, const kb_conf_loc_t *loc,
                     const char *subject, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int conf_fail(kb_conf_ctx_t *ctx, const kb_conf_loc_t *loc,
                     const char *subject, const char *fmt, ...) {
        char msg[1024], subj[300] = "";
        va_list ap;
        if (ctx->err != KB_CONF_OK)
                return -1;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        if (subject)
                snprintf(subj, sizeof(subj), "'%s' ", subject);
        if (loc && loc->env) /* the variable names the key */
                snprintf(ctx->errstr, ctx->errstr_size, "environment %s: %s",
                         loc->env, msg);
        else if (loc && loc->file && loc->line > 0)
                snprintf(ctx->errstr, ctx->errstr_size, "%s:%d: %s%s",
                         loc->file, loc->line, subj, msg);
        else /* a default, or a cross-field check on defaults */
                snprintf(ctx->errstr, ctx->errstr_size, "%s: %s%s",
                         loc && loc->file ? loc->file
                         : ctx->path      ? ctx->path
                                          : "configuration",
                         subj, msg);
        ctx->err = KB_CONF_ERR_INVALID;
        return -1;
}

/* The name to report for a file libconfig read: an @include'd file as a
 * path from the current directory; kept until the load ends (where[] refers
 * to it after libconfig's own strings are gone). */
static const char *file_name(kb_conf_ctx_t *ctx, const char *f) {
        char *name, **files;
        size_t i;
        if (!f || (ctx->path && !strcmp(f, ctx->path)))
                return ctx->path;
        for (i = 0; i < ctx->file_cnt; i++)
                if (!strcmp(ctx->files[i], f) ||
                    (ctx->dir && !strncmp(ctx->files[i], ctx->dir,
                                          strlen(ctx->dir)) &&
                     ctx->files[i][strlen(ctx->dir)] == '/' &&
                     !strcmp(ctx->files[i] + strlen(ctx->dir) + 1, f)))
                        return ctx->files[i];
        if (f[0] != '/' && ctx->dir) {
                if (asprintf(&name, "%s/%s", ctx->dir, f) < 0)
                        return ctx->path;
        } else if (!(name = strdup(f)))
                return ctx->path;
        if (!(files = xrealloc_array(ctx->files, ctx->file_cnt + 1,
                                     sizeof(*files)))) {
                free(name);
                return ctx->path;
        }
        ctx->files = files;
        ctx->files[ctx->file_cnt++] = name;
        return name;
}

static kb_conf_loc_t setting_loc(kb_conf_ctx_t *ctx,
                                 const config_setting_t *s) {
        kb_conf_loc_t loc = { NULL, 0, NULL };
        loc.file = file_name(ctx, config_setting_source_file(s));
        loc.line = config_setting_source_line(s);
        return loc;
}

static const kb_conf_setting_t *setting_find(const char *path) {
        size_t i;
        for (i = 0; i < KB_CONF_SETTING_CNT; i++)
                if (!strcmp(kb_conf_settings[i].path, path))
                        return &kb_conf_settings[i];
        return NULL;
}

static const kb_conf_setting_t *route_setting_find(const char *key) {
        size_t i;
        for (i = 0; i < KB_CONF_ROUTE_SETTING_CNT; i++)
                if (!strcmp(kb_conf_route_settings[i].path, key))
                        return &kb_conf_route_settings[i];
        return NULL;
}

/* "a|b|c" -> index of v, or -1. */
static int value_index(const char *values, const char *v, size_t vlen) {
        const char *p = values;
        int i = 0;
        while (*p) {
                const char *e = strchr(p, '|');
                size_t n = e ? (size_t)(e - p) : strlen(p);
                if (n == vlen && !strncmp(p, v, n))
                        return i;
                if (!e)
                        break;
                p = e + 1;
                i++;
        }
        return -1;
}

/* "a|b|c" -> "a, b, c" */
static void values_list(const char *values, char *buf, size_t size) {
        size_t n = 0;
        const char *p;
        for (p = values; *p && n + 3 < size; p++) {
                if (*p == '|') {
                        buf[n++] = ',';
                        buf[n++] = ' ';
                } else
                        buf[n++] = *p;
        }
        buf[n] = '\0';
}

static char *trim(char *s) {
        char *e;
        while (isspace((unsigned char)*s))
                s++;
        e = s + strlen(s);
        while (e > s && isspace((unsigned char)e[-1]))
                *--e = '\0';
        return s;
}

/* Decimal (or 0x hex) integer, the whole string. Returns 0, -1 when not an
 * integer, 1 when out of int64's range. */
static int parse_int64(const char *s, int64_t *v) {
        char *end;
        long long x;
        const char *p = s;
        int base = 10;
        while (isspace((unsigned char)*p))
                p++;
        if (!*p)
                return -1;
        if ((p[0] == '-' || p[0] == '+') && p[1] == '0' &&
            (p[2] == 'x' || p[2] == 'X'))
                base = 16;
        else if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X'))
                base = 16;
        errno = 0;
        x = strtoll(p, &end, base);
        if (end == p)
                return -1;
        while (isspace((unsigned char)*end))
                end++;
        if (*end)
                return -1;
        if (errno == ERANGE)
                return 1;
        *v = x;
        return 0;
}

static int parse_bool(const char *s, int *v) {
        static const char *t[] = { "true", "yes", "on", "1" };
        static const char *f[] = { "false", "no", "off", "0" };
        size_t i;
        for (i = 0; i < 4; i++) {
                if (!strcasecmp(s, t[i])) {
                        *v = 1;
                        return 0;
                }
                if (!strcasecmp(s, f[i])) {
                        *v = 0;
                        return 0;
                }
        }
        return -1;
}


/*
 * String checks
 */

static int check_topic(const char *v, char *msg, size_t msg_size) {
        const char *p;
        for (p = v; *p; p++)
                if (!isalnum((unsigned char)*p) && *p != '.' && *p != '_' &&
                    *p != '-') {
                        snprintf(msg, msg_size,
                                 "may only contain letters, digits, '.', '_' "
                                 "and '-' (got '%s')",
                                 v);
                        return -1;
                }
        return 0;
}

static int check_instance(const char *v, char *msg, size_t msg_size) {
        const char *p;
        for (p = v; *p; p++)
                if (!isalnum((unsigned char)*p) && !strchr("._:-", *p)) {
                        snprintf(msg, msg_size,
                                 "may only contain letters, digits, '.', '_', "
                                 "':' and '-' (got '%s')",
                                 v);
                        return -1;
                }
        return 0;
}

static int check_path(const char *v, char *msg, size_t msg_size) {
        const char *p;
        if (v[0] != '/') {
                snprintf(msg, msg_size, "must be a path starting with '/'");
                return -1;
        }
        for (p = v; *p; p++)
                if ((unsigned char)*p <= 0x20 || *p == 0x7f) {
                        snprintf(msg, msg_size, "must not contain spaces or "
                                 "control characters");
                        return -1;
                }
        return 0;
}

static int check_pointer(const char *v, char *msg, size_t msg_size) {
        return kb_jsonptr_check(v, msg, msg_size);
}

static int check_envname(const char *v, char *msg, size_t msg_size) {
        const char *p;
        if (!*v)
                return 0;
        if (isdigit((unsigned char)*v))
                goto bad;
        for (p = v; *p; p++)
                if (!isalnum((unsigned char)*p) && *p != '_')
                        goto bad;
        return 0;
bad:
        snprintf(msg, msg_size,
                 "must be an environment variable name (letters, digits, '_'; "
                 "got '%s')",
                 v);
        return -1;
}

static int url_ok(const char *v, size_t n) {
        size_t pl;
        if (n > 7 && !strncmp(v, "http://", 7))
                pl = 7;
        else if (n > 8 && !strncmp(v, "https://", 8))
                pl = 8;
        else
                return 0;
        return v[pl] != '/' && v[pl] != ' ';
}

static int check_url(const char *v, char *msg, size_t msg_size) {
        if (url_ok(v, strlen(v)) && !strchr(v, ' '))
                return 0;
        snprintf(msg, msg_size,
                 "must start with http:// or https:// and name a host "
                 "(got '%s')",
                 v);
        return -1;
}

/* "" or a comma-separated list of URLs (the registry client fails over). */
static int check_urls(const char *v, char *msg, size_t msg_size) {
        const char *p = v;
        if (!*v)
                return 0;
        for (;;) {
                const char *e = strchr(p, ',');
                size_t n = e ? (size_t)(e - p) : strlen(p);
                while (n && *p == ' ') {
                        p++;
                        n--;
                }
                if (!url_ok(p, n)) {
                        snprintf(msg, msg_size,
                                 "must be empty or a comma-separated list of "
                                 "http:// or https:// URLs (got '%s')",
                                 v);
                        return -1;
                }
                if (!e)
                        return 0;
                p = e + 1;
        }
}

/* A per-topic serde format: "" (serde.format), "json" or "avro". */
static int check_format(const char *v, char *msg, size_t msg_size) {
        if (!*v || !strcmp(v, "json") || !strcmp(v, "avro"))
                return 0;
        snprintf(msg, msg_size,
                 "must be \"json\", \"avro\" or \"\" (serde.format) (got "
                 "'%s')",
                 v);
        return -1;
}

/* "" (disabled) or [HOST]:PORT, HOST an IPv4 address, a name or [IPv6]. */
static int check_listen(const char *v, char *msg, size_t msg_size) {
        const char *c, *p;
        long port;
        char *end;
        if (!*v)
                return 0;
        c = strrchr(v, ':');
        if (!c || !c[1])
                goto bad;
        if (*v == '[') {
                const char *rb = strchr(v, ']');
                if (!rb || rb + 1 != c)
                        goto bad;
        } else {
                for (p = v; p < c; p++)
                        if (!isalnum((unsigned char)*p) && *p != '.' &&
                            *p != '-')
                                goto bad;
        }
        errno = 0;
        port = strtol(c + 1, &end, 10);
        if (*end || errno || port < 0 || port > 65535 ||
            !isdigit((unsigned char)c[1]))
                goto bad;
        return 0;
bad:
        snprintf(msg, msg_size,
                 "must be \"\" (disabled) or HOST:PORT, e.g. \"0.0.0.0:8080\" "
                 "or \"[::]:8080\" (got '%s')",
                 v);
        return -1;
}


/*
 * Storing values (every source ends here)
 */

static int set_int(kb_conf_ctx_t *ctx, const kb_conf_setting_t *st,
                   void *base, const char *subject, int64_t v, const char *got,
                   const kb_conf_loc_t *loc) {
        char gotbuf[32];
        if (got || v < st->min || v > st->max) {
                if (!got) {
                        snprintf(gotbuf, sizeof(gotbuf), "%" PRId64, v);
                        got = gotbuf;
                }
                return conf_fail(ctx, loc, subject,
                                 "must be between %" PRId64 " and %" PRId64
                                 " (got %s)",
                                 st->min, st->max, got);
        }
        if (st->type == KB_CONF_T_INT64)
                *(int64_t *)field(base, st) = v;
        else
                *(int *)field(base, st) = (int)v;
        return 0;
}

static int set_bool(void *base, const kb_conf_setting_t *st, int v) {
        *(int *)field(base, st) = v ? 1 : 0;
        return 0;
}

static int set_str(kb_conf_ctx_t *ctx, const kb_conf_setting_t *st,
                   void *base, const char *subject, const char *v,
                   const kb_conf_loc_t *loc) {
        char msg[512], vals[256];
        size_t len = strlen(v);
        const char *p;
        char *dup, **fp = field(base, st);

        if (st->type == KB_CONF_T_ENUM) {
                if (value_index(st->values, v, len) < 0) {
                        values_list(st->values, vals, sizeof(vals));
                        return conf_fail(ctx, loc, subject,
                                         "must be one of %s (got '%s')", vals,
                                         v);
                }
        } else {
                if ((int64_t)len < st->min)
                        return conf_fail(ctx, loc, subject,
                                         "must not be empty");
                if ((int64_t)len > st->max)
                        return conf_fail(ctx, loc, subject,
                                         "must be at most %" PRId64
                                         " characters (got %zu)",
                                         st->max, len);
        }
        for (p = v; *p; p++)
                if ((unsigned char)*p < 0x20 || *p == 0x7f)
                        return conf_fail(ctx, loc, subject,
                                         "must not contain control "
                                         "characters");
        if (st->check && st->check(v, msg, sizeof(msg)))
                return conf_fail(ctx, loc, subject, "%s", msg);
        if (!(dup = strdup(v)))
                return conf_fail(ctx, loc, subject, "out of memory");
        free(*fp);
        *fp = dup;
        return 0;
}

/* names: n role names (need not be NUL-terminated: lens). */
static int set_roles(kb_conf_ctx_t *ctx, const kb_conf_setting_t *st,
                     void *base, const char *const *names, size_t n,
                     const kb_conf_loc_t *loc) {
        char vals[256];
        int bits = 0, idx;
        size_t i;
        values_list(st->values, vals, sizeof(vals));
        if (n == 0)
                return conf_fail(ctx, loc, st->path,
                                 "must name at least one role (%s)", vals);
        for (i = 0; i < n; i++) {
                idx = value_index(st->values, names[i], strlen(names[i]));
                if (idx < 0)
                        return conf_fail(ctx, loc, st->path,
                                         "has an unknown role '%s' "
                                         "(roles: %s)",
                                         names[i], vals);
                bits |= 1 << idx;
        }
        *(int *)field(base, st) = bits;
        return 0;
}

static int set_intlist(kb_conf_ctx_t *ctx, const kb_conf_setting_t *st,
                       void *base, const int64_t *v, size_t n,
                       const kb_conf_loc_t *loc) {
        int **fp = field(base, st), *arr;
        size_t *cntp = (size_t *)((char *)base + st->cnt_off), i;
        if (n < 1 || n > KB_CONF_LIST_MAX)
                return conf_fail(ctx, loc, st->path,
                                 "must have between 1 and %d entries (got %zu)",
                                 KB_CONF_LIST_MAX, n);
        for (i = 0; i < n; i++)
                if (v[i] < st->min || v[i] > st->max)
                        return conf_fail(ctx, loc, st->path,
                                         "entries must be between %" PRId64
                                         " and %" PRId64 " (got %" PRId64 ")",
                                         st->min, st->max, v[i]);
        if (!(arr = calloc(n, sizeof(*arr))))
                return conf_fail(ctx, loc, st->path, "out of memory");
        for (i = 0; i < n; i++)
                arr[i] = (int)v[i];
        free(*fp);
        *fp = arr;
        *cntp = n;
        return 0;
}

/* A value given as text: a default or an environment variable. Lists are
 * comma-separated. */
static int parse_text(kb_conf_ctx_t *ctx, const kb_conf_setting_t *st,
                      void *base, const char *subject, const char *text,
                      const kb_conf_loc_t *loc) {
        int64_t v, vals[KB_CONF_LIST_MAX + 1];
        const char *names[16];
        char *copy, *tok, *save = NULL;
        size_t n = 0;
        int b, r;

        switch (st->type) {
        case KB_CONF_T_INT:
        case KB_CONF_T_INT64:
                r = parse_int64(text, &v);
                if (r < 0)
                        return conf_fail(ctx, loc, subject,
                                         "must be an integer (got '%s')", text);
                return set_int(ctx, st, base, subject, v, r ? text : NULL,
                               loc);
        case KB_CONF_T_BOOL:
                if (parse_bool(text, &b))
                        return conf_fail(ctx, loc, subject,
                                         "must be a boolean (true or false; "
                                         "got '%s')",
                                         text);
                return set_bool(base, st, b);
        case KB_CONF_T_STR:
        case KB_CONF_T_ENUM:
                return set_str(ctx, st, base, subject, text, loc);
        case KB_CONF_T_ROLES:
        case KB_CONF_T_INTLIST:
                break;
        }

        if (!(copy = strdup(text)))
                return conf_fail(ctx, loc, subject, "out of memory");
        r = 0;
        for (tok = strtok_r(copy, ",", &save); tok;
             tok = strtok_r(NULL, ",", &save)) {
                tok = trim(tok);
                if (!*tok)
                        continue;
                if (st->type == KB_CONF_T_ROLES) {
                        if (n == sizeof(names) / sizeof(*names)) {
                                r = conf_fail(ctx, loc, subject,
                                              "has too many roles");
                                break;
                        }
                        names[n++] = tok;
                } else {
                        if (n > KB_CONF_LIST_MAX) {
                                n++;
                                continue; /* counted, reported below */
                        }
                        if (parse_int64(tok, &v)) {
                                r = conf_fail(ctx, loc, subject,
                                              "must be a comma-separated list "
                                              "of integers (got '%s')",
                                              text);
                                break;
                        }
                        vals[n++] = v;
                }
        }
        if (!r) {
                if (st->type == KB_CONF_T_ROLES)
                        r = set_roles(ctx, st, base, names, n, loc);
                else
                        r = set_intlist(ctx, st, base, vals, n, loc);
        }
        free(copy);
        return r;
}

/* libconfig 1.5 silently wraps integer literals beyond 32 bits that lack the
 * L suffix (3000000000 reads as -1294967296). Re-reads the literal of a
 * named setting from its source line in the main file. Returns 0 and sets
 * *v, 1 when the literal is beyond int64, -1 when it cannot be found
 * unambiguously (then libconfig's value stands). */
static int literal_int(kb_conf_ctx_t *ctx, const config_setting_t *s,
                       int64_t *v, char *lit, size_t lit_size) {
        const char *name = config_setting_name(s), *f, *p, *end, *q, *found;
        int line = config_setting_source_line(s), l, cnt = 0;
        size_t nlen, n;
        char buf[64];

        f = config_setting_source_file(s);
        if (!ctx->text || !name || line <= 0 ||
            file_name(ctx, f) != ctx->path)
                return -1;
        for (p = ctx->text, l = 1; *p && l < line; p++)
                if (*p == '\n')
                        l++;
        if (l != line)
                return -1;
        end = strchr(p, '\n');
        if (!end)
                end = p + strlen(p);
        nlen = strlen(name);
        found = NULL;
        for (q = p; q + nlen <= end; q++) {
                const char *r;
                if (strncmp(q, name, nlen) ||
                    (q > p && (isalnum((unsigned char)q[-1]) ||
                               strchr("_-*", q[-1]))))
                        continue;
                r = q + nlen;
                if (r < end &&
                    (isalnum((unsigned char)*r) || strchr("_-*", *r)))
                        continue;
                while (r < end && (*r == ' ' || *r == '\t'))
                        r++;
                if (r >= end || (*r != '=' && *r != ':'))
                        continue;
                r++;
                while (r < end && (*r == ' ' || *r == '\t'))
                        r++;
                found = r;
                cnt++;
        }
        if (cnt != 1)
                return -1;
        for (n = 0; found + n < end && n + 1 < sizeof(buf) &&
                    (isxdigit((unsigned char)found[n]) || strchr("+-xX", found[n]));
             n++)
                buf[n] = found[n];
        buf[n] = '\0';
        snprintf(lit, lit_size, "%s", buf);
        switch (parse_int64(buf, v)) {
        case 0:
                return 0;
        case 1:
                return 1;
        default:
                return -1;
        }
}

static int setting_int64(kb_conf_ctx_t *ctx, const config_setting_t *s,
                         int64_t *v, char *lit, size_t lit_size) {
        int64_t lv;
        int r;
        *v = config_setting_get_int64(s);
        if (config_setting_type(s) != CONFIG_TYPE_INT)
                return 0;
        r = literal_int(ctx, s, &lv, lit, lit_size);
        if (r == 1)
                return 1;
        if (r == 0 && lv != *v)
                *v = lv;
        return 0;
}

/* A value from the file. */
static int parse_setting(kb_conf_ctx_t *ctx, const kb_conf_setting_t *st,
                         void *base, const char *subject,
                         const config_setting_t *s) {
        kb_conf_loc_t loc = setting_loc(ctx, s);
        int type = config_setting_type(s);
        int64_t v, *vals;
        const char **names;
        char lit[64];
        int n, i, r;

        switch (st->type) {
        case KB_CONF_T_INT:
        case KB_CONF_T_INT64:
                if (type != CONFIG_TYPE_INT && type != CONFIG_TYPE_INT64)
                        return conf_fail(ctx, &loc, subject,
                                         "must be an integer");
                if (setting_int64(ctx, s, &v, lit, sizeof(lit)))
                        return set_int(ctx, st, base, subject, 0, lit, &loc);
                return set_int(ctx, st, base, subject, v, NULL, &loc);
        case KB_CONF_T_BOOL:
                if (type != CONFIG_TYPE_BOOL)
                        return conf_fail(ctx, &loc, subject,
                                         "must be a boolean (true or false)");
                return set_bool(base, st, config_setting_get_bool(s));
        case KB_CONF_T_STR:
        case KB_CONF_T_ENUM:
                if (type != CONFIG_TYPE_STRING)
                        return conf_fail(ctx, &loc, subject,
                                         "must be a string");
                return set_str(ctx, st, base, subject,
                               config_setting_get_string(s), &loc);
        case KB_CONF_T_ROLES:
                if (type == CONFIG_TYPE_STRING)
                        return parse_text(ctx, st, base, subject,
                                          config_setting_get_string(s), &loc);
                if (type != CONFIG_TYPE_LIST && type != CONFIG_TYPE_ARRAY)
                        return conf_fail(ctx, &loc, subject,
                                         "must be a list of roles, e.g. "
                                         "[\"items\", \"aggregator\"]");
                n = config_setting_length(s);
                if (!(names = calloc((size_t)n + 1, sizeof(*names))))
                        return conf_fail(ctx, &loc, subject, "out of memory");
                for (i = 0; i < n; i++) {
                        const config_setting_t *e =
                            config_setting_get_elem(s, (unsigned)i);
                        if (config_setting_type(e) != CONFIG_TYPE_STRING) {
                                free(names);
                                return conf_fail(ctx, &loc, subject,
                                                 "must be a list of strings");
                        }
                        names[i] = config_setting_get_string(e);
                }
                r = set_roles(ctx, st, base, names, (size_t)n, &loc);
                free(names);
                return r;
        case KB_CONF_T_INTLIST:
                if (type != CONFIG_TYPE_LIST && type != CONFIG_TYPE_ARRAY)
                        return conf_fail(ctx, &loc, subject,
                                         "must be a list of integers, e.g. "
                                         "[5000, 30000]");
                n = config_setting_length(s);
                if (!(vals = calloc((size_t)n + 1, sizeof(*vals))))
                        return conf_fail(ctx, &loc, subject, "out of memory");
                for (i = 0; i < n; i++) {
                        const config_setting_t *e =
                            config_setting_get_elem(s, (unsigned)i);
                        int et = config_setting_type(e);
                        if (et != CONFIG_TYPE_INT && et != CONFIG_TYPE_INT64) {
                                free(vals);
                                return conf_fail(ctx, &loc, subject,
                                                 "must be a list of integers");
                        }
                        vals[i] = config_setting_get_int64(e);
                }
                r = set_intlist(ctx, st, base, vals, (size_t)n, &loc);
                free(vals);
                return r;
        }
        return 0;
}


/*
 * kafka.properties
 */

static void kv_free(kb_kv_t *kv, size_t cnt) {
        size_t i;
        for (i = 0; i < cnt; i++) {
                free(kv[i].k);
                free(kv[i].v);
        }
        free(kv);
}

static ssize_t kv_find(const kb_kv_t *kv, size_t cnt, const char *k,
                       int nocase) {
        size_t i;
        for (i = 0; i < cnt; i++)
                if (nocase ? !strcasecmp(kv[i].k, k) : !strcmp(kv[i].k, k))
                        return (ssize_t)i;
        return -1;
}

/* Sets k=v, replacing an existing k. Returns -1 on allocation failure. */
static int kv_set(kb_kv_t **kv, size_t *cnt, const char *k, const char *v) {
        ssize_t i = kv_find(*kv, *cnt, k, 0);
        char *nv = strdup(v), *nk;
        kb_kv_t *arr;
        if (!nv)
                return -1;
        if (i >= 0) {
                free((*kv)[i].v);
                (*kv)[i].v = nv;
                return 0;
        }
        if (!(nk = strdup(k)) ||
            !(arr = xrealloc_array(*kv, *cnt + 1, sizeof(**kv)))) {
                free(nk);
                free(nv);
                return -1;
        }
        arr[*cnt].k = nk;
        arr[*cnt].v = nv;
        *kv = arr;
        (*cnt)++;
        return 0;
}

/* libconfig names cannot hold dots: "_" stands for "." */
static void undot(const char *name, char *buf, size_t size) {
        size_t n;
        for (n = 0; name[n] && n + 1 < size; n++)
                buf[n] = name[n] == '_' ? '.' : name[n];
        buf[n] = '\0';
}

/* "." back to "_" for printing. */
static void dot_to_us(const char *name, char *buf, size_t size) {
        size_t n;
        for (n = 0; name[n] && n + 1 < size; n++)
                buf[n] = name[n] == '.' ? '_' : name[n];
        buf[n] = '\0';
}

/* Validates one property on a scratch librdkafka configuration and stores
 * it under its librdkafka name: `name` with "_" for "." (sasl_password ->
 * sasl.password), or `name` as is when only that is a property (log_level).
 */
static int set_property(kb_conf_ctx_t *ctx, rd_kafka_conf_t *scratch,
                        const char *name, const char *value,
                        const kb_conf_loc_t *loc) {
        kb_conf_t *conf = ctx->conf;
        char dotted[256], err[512], err2[512];
        const char *use;
        rd_kafka_conf_res_t res, res2;
        size_t i;

        if (strlen(name) >= sizeof(dotted))
                return conf_fail(ctx, loc, NULL,
                                 "kafka.properties: '%s': name too long", name);
        undot(name, dotted, sizeof(dotted));
        use = dotted;
        for (i = 0; i < sizeof(kb_conf_managed_props) /
                            sizeof(*kb_conf_managed_props);
             i++)
                if (!strcmp(dotted, kb_conf_managed_props[i].name))
                        return conf_fail(ctx, loc, NULL,
                                         "kafka.properties: '%s' is set by "
                                         "kbatch (%s)",
                                         dotted, kb_conf_managed_props[i].hint);
        res = rd_kafka_conf_set(scratch, dotted, value, err, sizeof(err));
        if (res == RD_KAFKA_CONF_UNKNOWN && strchr(name, '_')) {
                res2 = rd_kafka_conf_set(scratch, name, value, err2,
                                         sizeof(err2));
                if (res2 != RD_KAFKA_CONF_UNKNOWN) {
                        use = name;
                        res = res2;
                        memcpy(err, err2, sizeof(err));
                }
        }
        if (res != RD_KAFKA_CONF_OK)
                return conf_fail(ctx, loc, NULL, "kafka.properties: '%s': %s",
                                 use, err);
        if (kv_set(&conf->kafka_properties, &conf->kafka_property_cnt, use,
                   value))
                return conf_fail(ctx, loc, NULL, "out of memory");
        return 0;
}

static int parse_properties(kb_conf_ctx_t *ctx, rd_kafka_conf_t *scratch,
                            const config_setting_t *g) {
        kb_conf_loc_t loc = setting_loc(ctx, g);
        char val[64], dotted[256];
        const char *name, *v;
        int i, n;

        if (!config_setting_is_group(g))
                return conf_fail(ctx, &loc, "kafka.properties",
                                 "must be a group of name = value settings, "
                                 "e.g. properties = { security_protocol = "
                                 "\"SSL\"; }");
        n = config_setting_length(g);
        for (i = 0; i < n; i++) {
                const config_setting_t *s =
                    config_setting_get_elem(g, (unsigned)i);
                loc = setting_loc(ctx, s);
                name = config_setting_name(s);
                switch (config_setting_type(s)) {
                case CONFIG_TYPE_STRING:
                        v = config_setting_get_string(s);
                        break;
                case CONFIG_TYPE_INT:
                case CONFIG_TYPE_INT64: {
                        int64_t x;
                        char lit[64];
                        if (setting_int64(ctx, s, &x, lit, sizeof(lit)))
                                snprintf(val, sizeof(val), "%s", lit);
                        else
                                snprintf(val, sizeof(val), "%" PRId64, x);
                        v = val;
                        break;
                }
                case CONFIG_TYPE_BOOL:
                        v = config_setting_get_bool(s) ? "true" : "false";
                        break;
                case CONFIG_TYPE_FLOAT:
                        snprintf(val, sizeof(val), "%g",
                                 config_setting_get_float(s));
                        v = val;
                        break;
                default:
                        return conf_fail(ctx, &loc, NULL,
                                         "kafka.properties: '%s' must be a "
                                         "string, integer or boolean",
                                         name);
                }
                undot(name, dotted, sizeof(dotted));
                if (kv_find(ctx->conf->kafka_properties,
                            ctx->conf->kafka_property_cnt, dotted, 0) >= 0)
                        return conf_fail(ctx, &loc, NULL,
                                         "kafka.properties: '%s' is set twice",
                                         dotted);
                if (set_property(ctx, scratch, name, v, &loc))
                        return -1;
        }
        return 0;
}


/*
 * routes
 */

static void strlist_free(char **l, size_t n) {
        size_t i;
        for (i = 0; i < n; i++)
                free(l[i]);
        free(l);
}

static void route_free(kb_route_conf_t *rc) {
        size_t i;
        for (i = 0; i < KB_CONF_ROUTE_SETTING_CNT; i++) {
                const kb_conf_setting_t *st = &kb_conf_route_settings[i];
                if (st->type == KB_CONF_T_STR || st->type == KB_CONF_T_ENUM)
                        free(*(char **)field(rc, st));
        }
        kv_free(rc->headers, rc->header_cnt);
        kv_free(rc->operations, rc->operation_cnt);
        for (i = 0; i < KB_CONF_ASYNC_SETTING_CNT; i++) {
                const kb_conf_setting_t *st = &kb_conf_async_settings[i];
                if (st->type == KB_CONF_T_STR || st->type == KB_CONF_T_ENUM)
                        free(*(char **)field(&rc->async, st));
        }
        strlist_free(rc->async.succeeded, rc->async.succeeded_cnt);
        strlist_free(rc->async.failed, rc->async.failed_cnt);
        memset(rc, 0, sizeof(*rc));
}

static void routes_free(kb_conf_t *conf) {
        size_t i;
        for (i = 0; i < conf->route_cnt; i++)
                route_free(&conf->routes[i]);
        free(conf->routes);
        conf->routes = NULL;
        conf->route_cnt = 0;
}

/* Defaults of one route; model and base_url stay NULL. */
static int route_init(kb_conf_ctx_t *ctx, kb_route_conf_t *rc) {
        size_t i;
        memset(rc, 0, sizeof(*rc));
        for (i = 0; i < KB_CONF_ROUTE_SETTING_CNT; i++) {
                const kb_conf_setting_t *st = &kb_conf_route_settings[i];
                if (st->def && parse_text(ctx, st, rc, st->path, st->def, NULL))
                        return -1;
        }
        for (i = 0; i < KB_CONF_ASYNC_SETTING_CNT; i++) {
                const kb_conf_setting_t *st = &kb_conf_async_settings[i];
                if (st->def &&
                    parse_text(ctx, st, &rc->async, st->path, st->def, NULL))
                        return -1;
        }
        for (i = 0; i < sizeof(kb_conf_default_ops) /
                            sizeof(*kb_conf_default_ops);
             i++)
                if (kv_set(&rc->operations, &rc->operation_cnt,
                           kb_conf_default_ops[i].k, kb_conf_default_ops[i].v))
                        return conf_fail(ctx, NULL, NULL, "out of memory");
        return 0;
}

static int default_routes(kb_conf_ctx_t *ctx) {
        kb_conf_t *conf = ctx->conf;
        if (!(conf->routes = calloc(1, sizeof(*conf->routes))))
                return conf_fail(ctx, NULL, NULL, "out of memory");
        conf->route_cnt = 1;
        if (route_init(ctx, &conf->routes[0]) ||
            !(conf->routes[0].model = strdup("*")) ||
            !(conf->routes[0].name = strdup("*")) ||
            !(conf->routes[0].base_url = strdup("http://127.0.0.1:8000")))
                return conf_fail(ctx, NULL, NULL, "out of memory");
        return 0;
}

static int header_name_ok(const char *n) {
        for (; *n; n++)
                if (!isalnum((unsigned char)*n) && *n != '-' && *n != '_')
                        return 0;
        return 1;
}

static int parse_route_kv(kb_conf_ctx_t *ctx, kb_route_conf_t *rc, int idx,
                          const config_setting_t *g, int headers) {
        kb_conf_loc_t loc = setting_loc(ctx, g);
        char subject[128], name[256];
        const char *v, *p;
        int i, n;

        snprintf(subject, sizeof(subject), "routes[%d].%s", idx,
                 headers ? "headers" : "operations");
        if (!config_setting_is_group(g))
                return conf_fail(ctx, &loc, subject,
                                 headers ? "must be a group of Name = \"value\" "
                                           "settings"
                                         : "must be a group of name = "
                                           "\"/path\" settings");
        n = config_setting_length(g);
        for (i = 0; i < n; i++) {
                const config_setting_t *s =
                    config_setting_get_elem(g, (unsigned)i);
                const char *sn = config_setting_name(s);
                loc = setting_loc(ctx, s);
                snprintf(subject, sizeof(subject), "routes[%d].%s.%s", idx,
                         headers ? "headers" : "operations", sn);
                if (config_setting_type(s) != CONFIG_TYPE_STRING)
                        return conf_fail(ctx, &loc, subject,
                                         "must be a string");
                v = config_setting_get_string(s);
                for (p = v; *p; p++)
                        if (((unsigned char)*p < 0x20 && *p != '\t') ||
                            *p == 0x7f)
                                return conf_fail(ctx, &loc, subject,
                                                 "must not contain control "
                                                 "characters");
                if (headers) {
                        if (!header_name_ok(sn))
                                return conf_fail(ctx, &loc, subject,
                                                 "is not a valid header name");
                        if (kv_find(rc->headers, rc->header_cnt, sn, 1) >= 0)
                                return conf_fail(ctx, &loc, subject,
                                                 "is set twice");
                        if (kv_set(&rc->headers, &rc->header_cnt, sn, v))
                                return conf_fail(ctx, &loc, NULL,
                                                 "out of memory");
                } else {
                        if (v[0] != '/' || strchr(v, ' '))
                                return conf_fail(ctx, &loc, subject,
                                                 "must be a path starting "
                                                 "with '/' (got '%s')",
                                                 v);
                        undot(sn, name, sizeof(name));
                        if (kv_set(&rc->operations, &rc->operation_cnt, name,
                                   v))
                                return conf_fail(ctx, &loc, NULL,
                                                 "out of memory");
                }
        }
        return 0;
}

/* A list of strings (succeeded, failed); *l and *n replaced. */
static int parse_strlist(kb_conf_ctx_t *ctx, const config_setting_t *s,
                         const char *subject, char ***l, size_t *n) {
        kb_conf_loc_t loc = setting_loc(ctx, s);
        int i, cnt;
        if (!config_setting_is_array(s) && !config_setting_is_list(s))
                return conf_fail(ctx, &loc, subject,
                                 "must be a list of strings: [\"done\", ...]");
        cnt = config_setting_length(s);
        strlist_free(*l, *n);
        *n = 0;
        if (!(*l = calloc((size_t)cnt + 1, sizeof(char *))))
                return conf_fail(ctx, &loc, NULL, "out of memory");
        for (i = 0; i < cnt; i++) {
                const config_setting_t *e =
                    config_setting_get_elem(s, (unsigned)i);
                if (config_setting_type(e) != CONFIG_TYPE_STRING)
                        return conf_fail(ctx, &loc, subject,
                                         "must be a list of strings");
                if (!((*l)[(*n)++] = strdup(config_setting_get_string(e))))
                        return conf_fail(ctx, &loc, NULL, "out of memory");
        }
        return 0;
}

/* routes[i].async = { ... } (SPEC §12). */
static int parse_route_async(kb_conf_ctx_t *ctx, kb_route_conf_t *rc,
                             int idx, const config_setting_t *g) {
        kb_conf_loc_t loc = setting_loc(ctx, g);
        const char *keys[KB_CONF_ASYNC_SETTING_CNT + 2], *sug;
        char subject[128];
        size_t k;
        int i, n;
        snprintf(subject, sizeof(subject), "routes[%d].async", idx);
        if (!config_setting_is_group(g))
                return conf_fail(ctx, &loc, subject,
                                 "must be a group: { submit_path = \"...\"; "
                                 "... }");
        n = config_setting_length(g);
        for (i = 0; i < n; i++) {
                const config_setting_t *s =
                    config_setting_get_elem(g, (unsigned)i);
                const char *sn = config_setting_name(s);
                const kb_conf_setting_t *st = NULL;
                kb_conf_loc_t sl = setting_loc(ctx, s);
                snprintf(subject, sizeof(subject), "routes[%d].async.%s", idx,
                         sn);
                if (!strcmp(sn, "succeeded") || !strcmp(sn, "failed")) {
                        int ok = sn[0] == 's';
                        if (parse_strlist(ctx, s, subject,
                                          ok ? &rc->async.succeeded
                                             : &rc->async.failed,
                                          ok ? &rc->async.succeeded_cnt
                                             : &rc->async.failed_cnt))
                                return -1;
                        continue;
                }
                for (k = 0; k < KB_CONF_ASYNC_SETTING_CNT; k++)
                        if (!strcmp(kb_conf_async_settings[k].path, sn))
                                st = &kb_conf_async_settings[k];
                if (!st) {
                        for (k = 0; k < KB_CONF_ASYNC_SETTING_CNT; k++)
                                keys[k] = kb_conf_async_settings[k].path;
                        keys[k++] = "succeeded";
                        keys[k++] = "failed";
                        if ((sug = suggest(sn, keys, k)))
                                return conf_fail(ctx, &sl, NULL,
                                                 "unknown key '%s'; did you "
                                                 "mean '%s'?",
                                                 subject, sug);
                        return conf_fail(ctx, &sl, NULL, "unknown key '%s'",
                                         subject);
                }
                if (parse_setting(ctx, st, &rc->async, subject, s))
                        return -1;
        }
        return 0;
}

/* mode = "async" needs the async group's required keys. */
static int check_route_async(kb_conf_ctx_t *ctx, kb_route_conf_t *rc,
                             int idx, kb_conf_loc_t *loc) {
        const kb_async_conf_t *a = &rc->async;
        char subject[128];
        const char *missing = NULL;
        if (strcmp(rc->mode, "async"))
                return 0;
        if (!a->submit_path)
                missing = "submit_path";
        else if (!a->id_pointer)
                missing = "id_pointer";
        else if (!a->status_path)
                missing = "status_path";
        else if (!a->status_pointer)
                missing = "status_pointer";
        else if (!a->succeeded_cnt)
                missing = "succeeded";
        else if (!a->failed_cnt)
                missing = "failed";
        if (missing) {
                snprintf(subject, sizeof(subject), "routes[%d].async.%s", idx,
                         missing);
                return conf_fail(ctx, loc, subject,
                                 "is required with mode = \"async\"");
        }
        if (a->poll_max_ms < a->poll_ms) {
                snprintf(subject, sizeof(subject), "routes[%d].async", idx);
                return conf_fail(ctx, loc, subject,
                                 "poll_max_ms (%d) must not be below poll_ms "
                                 "(%d)",
                                 a->poll_max_ms, a->poll_ms);
        }
        return 0;
}

static int parse_route(kb_conf_ctx_t *ctx, kb_route_conf_t *rc, int idx,
                       const config_setting_t *g) {
        kb_conf_loc_t loc = setting_loc(ctx, g), kfloc = { NULL, 0, NULL };
        const char *route_keys[KB_CONF_ROUTE_SETTING_CNT + 3];
        char subject[128], ops[512];
        const kb_conf_setting_t *st;
        const char *sug;
        size_t i, k;
        int n, j;

        snprintf(subject, sizeof(subject), "routes[%d]", idx);
        if (!config_setting_is_group(g))
                return conf_fail(ctx, &loc, subject,
                                 "must be a group: { model = \"...\"; "
                                 "base_url = \"...\"; }");
        if (route_init(ctx, rc))
                return -1;
        rc->line = loc.line;
        n = config_setting_length(g);
        for (j = 0; j < n; j++) {
                const config_setting_t *s =
                    config_setting_get_elem(g, (unsigned)j);
                const char *name = config_setting_name(s);
                kb_conf_loc_t sl = setting_loc(ctx, s);
                snprintf(subject, sizeof(subject), "routes[%d].%s", idx, name);
                if (!strcmp(name, "async")) {
                        if (parse_route_async(ctx, rc, idx, s))
                                return -1;
                        continue;
                }
                if (!strcmp(name, "headers") || !strcmp(name, "operations")) {
                        if (parse_route_kv(ctx, rc, idx, s,
                                           !strcmp(name, "headers")))
                                return -1;
                        continue;
                }
                if (!(st = route_setting_find(name))) {
                        for (k = 0; k < KB_CONF_ROUTE_SETTING_CNT; k++)
                                route_keys[k] = kb_conf_route_settings[k].path;
                        route_keys[k++] = "headers";
                        route_keys[k++] = "operations";
                        route_keys[k++] = "async";
                        sug = suggest(name, route_keys, k);
                        if (sug)
                                return conf_fail(ctx, &sl, NULL,
                                                 "unknown key '%s'; did you "
                                                 "mean '%s'?",
                                                 subject, sug);
                        return conf_fail(ctx, &sl, NULL, "unknown key '%s'",
                                         subject);
                }
                if (parse_setting(ctx, st, rc, subject, s))
                        return -1;
                if (!strcmp(name, "api_key_file"))
                        kfloc = sl;
        }
        if (!rc->model) {
                snprintf(subject, sizeof(subject), "routes[%d].model", idx);
                return conf_fail(ctx, &loc, subject,
                                 "is required (a glob on the item's model, "
                                 "e.g. \"*\")");
        }
        if (!rc->base_url) {
                snprintf(subject, sizeof(subject), "routes[%d].base_url", idx);
                return conf_fail(ctx, &loc, subject,
                                 "is required (e.g. \"http://127.0.0.1:8000\")");
        }
        if (check_route_async(ctx, rc, idx, &loc))
                return -1;
        if (rc->api_key_env && rc->api_key_file) {
                snprintf(subject, sizeof(subject), "routes[%d]", idx);
                return conf_fail(ctx, kfloc.line ? &kfloc : &loc, subject,
                                 "sets both api_key_env and api_key_file; "
                                 "use one");
        }
        if (kv_find(rc->operations, rc->operation_cnt, rc->default_operation,
                    0) < 0) {
                size_t o = 0;
                ops[0] = '\0';
                for (i = 0; i < rc->operation_cnt && o + 2 < sizeof(ops); i++)
                        o += (size_t)snprintf(ops + o, sizeof(ops) - o, "%s%s",
                                              i ? ", " : "",
                                              rc->operations[i].k);
                snprintf(subject, sizeof(subject),
                         "routes[%d].default_operation", idx);
                return conf_fail(ctx, &loc, subject,
                                 "'%s' is not an operation of this route (%s)",
                                 rc->default_operation, ops);
        }
        return 0;
}

/* 1 when some route names routes[i] as its fallback. */
static int route_is_fallback(const kb_conf_t *conf, size_t i) {
        size_t j;
        for (j = 0; j < conf->route_cnt; j++)
                if (conf->routes[j].fallback &&
                    !strcmp(conf->routes[j].fallback, conf->routes[i].name))
                        return 1;
        return 0;
}

/* Names (default: the model glob), unique; fallbacks name another route;
 * a model glob already matched by an earlier route is an error unless the
 * route serves as a fallback (it is then reached by name, SPEC §12). */
static int check_route_names(kb_conf_ctx_t *ctx, const config_setting_t *l) {
        kb_conf_t *conf = ctx->conf;
        char subject[64];
        size_t i, j;
        for (i = 0; i < conf->route_cnt; i++)
                if (!conf->routes[i].name &&
                    !(conf->routes[i].name = strdup(conf->routes[i].model)))
                        return conf_fail(ctx, NULL, NULL, "out of memory");
        for (i = 0; i < conf->route_cnt; i++) {
                kb_route_conf_t *rc = &conf->routes[i];
                const config_setting_t *g =
                    config_setting_get_elem(l, (unsigned)i);
                kb_conf_loc_t gl = setting_loc(ctx, g);
                for (j = 0; j < i; j++) {
                        const kb_route_conf_t *o = &conf->routes[j];
                        int model = !strcmp(o->model, rc->model) &&
                                    !route_is_fallback(conf, i);
                        if (!model && strcmp(o->name, rc->name))
                                continue;
                        snprintf(subject, sizeof(subject), "routes[%zu].%s", i,
                                 model ? "model" : "name");
                        return conf_fail(
                            ctx, &gl, subject,
                            "'%s' is already the %s of routes[%zu] (line "
                            "%d)%s",
                            model ? rc->model : rc->name,
                            model ? "model" : "name", j, o->line,
                            model ? ", which always matches first" : "");
                }
                if (!rc->fallback)
                        continue;
                snprintf(subject, sizeof(subject), "routes[%zu].fallback", i);
                for (j = 0; j < conf->route_cnt; j++)
                        if (j != i && conf->routes[j].name &&
                            !strcmp(conf->routes[j].name, rc->fallback))
                                break;
                if (j == conf->route_cnt)
                        return conf_fail(ctx, &gl, subject,
                                         "'%s' is not the name of another "
                                         "route",
                                         rc->fallback);
                /* A job running at an async provider cannot move. */
                if (strcmp(rc->mode, "sync") ||
                    strcmp(conf->routes[j].mode, "sync"))
                        return conf_fail(ctx, &gl, subject,
                                         "fallback routes must both be "
                                         "mode = \"sync\"");
        }
        return 0;
}

static int parse_routes(kb_conf_ctx_t *ctx, const config_setting_t *l) {
        kb_conf_loc_t loc = setting_loc(ctx, l);
        kb_conf_t *conf = ctx->conf;
        int n, i;

        if (!config_setting_is_list(l))
                return conf_fail(ctx, &loc, "routes",
                                 "must be a list of groups: routes = "
                                 "( { model = \"*\"; base_url = \"...\"; } );");
        n = config_setting_length(l);
        if (n == 0)
                return conf_fail(ctx, &loc, "routes",
                                 "must have at least one route");
        routes_free(conf);
        if (!(conf->routes = calloc((size_t)n, sizeof(*conf->routes))))
                return conf_fail(ctx, &loc, NULL, "out of memory");
        for (i = 0; i < n; i++) {
                const config_setting_t *g =
                    config_setting_get_elem(l, (unsigned)i);
                conf->route_cnt = (size_t)i + 1;
                if (parse_route(ctx, &conf->routes[i], i, g))
                        return -1;
        }
        return check_route_names(ctx, l);
}

/*
 * The file
 */

static int unknown_key(kb_conf_ctx_t *ctx, const kb_conf_loc_t *loc,
                       const char *key) {
        const char *cands[KB_CONF_SETTING_CNT + KB_CONF_SECTION_CNT + 2];
        size_t n = known_keys(cands, sizeof(cands) / sizeof(*cands));
        const char *sug = suggest(key, cands, n);
        if (sug)
                return conf_fail(ctx, loc, NULL,
                                 "unknown key '%s'; did you mean '%s'?", key,
                                 sug);
        return conf_fail(ctx, loc, NULL, "unknown key '%s'", key);
}

static int section_known(const char *name) {
        size_t i;
        for (i = 0; i < KB_CONF_SECTION_CNT; i++)
                if (!strcmp(kb_conf_sections[i], name))
                        return 1;
        return 0;
}

static int parse_root(kb_conf_ctx_t *ctx, config_t *cfg) {
        const config_setting_t *root = config_root_setting(cfg);
        rd_kafka_conf_t *scratch = NULL;
        int i, n, j, m, r = 0;
        char path[256];

        n = config_setting_length(root);
        for (i = 0; i < n && !r; i++) {
                const config_setting_t *sec =
                    config_setting_get_elem(root, (unsigned)i);
                const char *sname = config_setting_name(sec);
                kb_conf_loc_t loc = setting_loc(ctx, sec);

                if (!strcmp(sname, "routes")) {
                        r = parse_routes(ctx, sec);
                        continue;
                }
                if (!section_known(sname)) {
                        r = unknown_key(ctx, &loc, sname);
                        continue;
                }
                if (!config_setting_is_group(sec)) {
                        r = conf_fail(ctx, &loc, sname,
                                      "must be a group: %s = { ... };", sname);
                        continue;
                }
                m = config_setting_length(sec);
                for (j = 0; j < m && !r; j++) {
                        const config_setting_t *s =
                            config_setting_get_elem(sec, (unsigned)j);
                        const kb_conf_setting_t *st;
                        kb_conf_loc_t sl = setting_loc(ctx, s);
                        snprintf(path, sizeof(path), "%s.%s", sname,
                                 config_setting_name(s));
                        if (!strcmp(path, "kafka.properties")) {
                                if (!scratch)
                                        scratch = rd_kafka_conf_new();
                                r = parse_properties(ctx, scratch, s);
                                continue;
                        }
                        if (!(st = setting_find(path))) {
                                r = unknown_key(ctx, &sl, path);
                                continue;
                        }
                        r = parse_setting(ctx, st, ctx->conf, st->path, s);
                        if (!r)
                                ctx->where[st - kb_conf_settings] = sl;
                }
        }
        if (scratch)
                rd_kafka_conf_destroy(scratch);
        return r;
}

/* Reads the whole file; -1 with errno set. */
static char *read_file(const char *path) {
        FILE *fp = fopen(path, "rb");
        char *buf = NULL, *nb;
        size_t len = 0, cap = 0, n;
        int e;
        struct stat stt;
        if (!fp)
                return NULL;
        if (fstat(fileno(fp), &stt) == 0 && S_ISDIR(stt.st_mode)) {
                fclose(fp);
                errno = EISDIR;
                return NULL;
        }
        for (;;) {
                if (cap - len < 4096) {
                        cap = cap ? cap * 2 : 8192;
                        if (!(nb = realloc(buf, cap))) {
                                e = ENOMEM;
                                goto fail;
                        }
                        buf = nb;
                }
                n = fread(buf + len, 1, cap - len - 1, fp);
                len += n;
                if (n == 0) {
                        if (ferror(fp)) {
                                e = errno ? errno : EIO;
                                goto fail;
                        }
                        break;
                }
        }
        buf[len] = '\0';
        fclose(fp);
        if (memchr(buf, '\0', len)) {
                free(buf);
                errno = EILSEQ;
                return NULL;
        }
        return buf;
fail:
        free(buf);
        fclose(fp);
        errno = e;
        return NULL;
}

static int load_file(kb_conf_ctx_t *ctx, const char *path) {
        config_t cfg;
        char *text, *dir, *slash;
        int r;

        if (!(text = read_file(path))) {
                snprintf(ctx->errstr, ctx->errstr_size, "%s: %s", path,
                         errno == EILSEQ ? "not a text file"
                                         : strerror(errno));
                ctx->err = KB_CONF_ERR_IO;
                return -1;
        }
        config_init(&cfg);
        /* @include paths are relative to the file's directory. */
        if ((dir = strdup(path)) && (slash = strrchr(dir, '/'))) {
                *slash = '\0';
                if (!*dir) {
                        free(dir);
                        dir = strdup("/");
                }
                ctx->dir = dir;
                config_set_include_dir(&cfg, dir);
        } else
                free(dir);
        if (!config_read_string(&cfg, text)) {
                snprintf(ctx->errstr, ctx->errstr_size, "%s:%d: %s",
                         file_name(ctx, config_error_file(&cfg)),
                         config_error_line(&cfg), config_error_text(&cfg));
                ctx->err = KB_CONF_ERR_SYNTAX;
                config_destroy(&cfg);
                free(text);
                return -1;
        }
        ctx->text = text;
        r = parse_root(ctx, &cfg);
        ctx->text = NULL;
        config_destroy(&cfg);
        free(text);
        return r;
}


/*
 * Environment
 */

static int load_env(kb_conf_ctx_t *ctx) {
        size_t i, pl = strlen(KB_CONF_PROP_ENV);
        rd_kafka_conf_t *scratch = NULL;
        char **e, name[256], envvar[256];
        int r = 0;

        for (i = 0; i < KB_CONF_SETTING_CNT; i++) {
                const kb_conf_setting_t *st = &kb_conf_settings[i];
                kb_conf_loc_t loc = { NULL, 0, ctx->envbuf[i] };
                const char *v;
                env_name(st->path, ctx->envbuf[i], sizeof(ctx->envbuf[i]));
                if (!(v = getenv(ctx->envbuf[i])))
                        continue;
                if (parse_text(ctx, st, ctx->conf, st->path, v, &loc))
                        return -1;
                ctx->where[i] = loc;
        }

        /* KBATCH_KAFKA_PROPERTIES_SASL_PASSWORD=... sets sasl.password. */
        for (e = environ; e && *e && !r; e++) {
                const char *eq = strchr(*e, '=');
                size_t n, k;
                kb_conf_loc_t loc = { NULL, 0, envvar };
                if (!eq || strncmp(*e, KB_CONF_PROP_ENV, pl) ||
                    (size_t)(eq - *e) <= pl)
                        continue;
                n = (size_t)(eq - *e) - pl;
                if (n >= sizeof(name) || (size_t)(eq - *e) >= sizeof(envvar))
                        continue;
                snprintf(envvar, sizeof(envvar), "%.*s", (int)(eq - *e), *e);
                for (k = 0; k < n; k++)
                        name[k] = (char)tolower((unsigned char)(*e)[pl + k]);
                name[n] = '\0';
                if (!scratch)
                        scratch = rd_kafka_conf_new();
                r = set_property(ctx, scratch, name, eq + 1, &loc);
        }
        if (scratch)
                rd_kafka_conf_destroy(scratch);
        return r;
}


/*
 * Cross-field checks and derived values
 */

/* Where setting `a` was set, or else `b`, for cross-field messages. */
static const kb_conf_loc_t *loc_of(kb_conf_ctx_t *ctx, const char *a,
                                   const char *b) {
        const kb_conf_setting_t *sa = setting_find(a), *sb = setting_find(b);
        const kb_conf_loc_t *la = &ctx->where[sa - kb_conf_settings];
        const kb_conf_loc_t *lb = &ctx->where[sb - kb_conf_settings];
        if (la->env || la->file)
                return la;
        if (lb->env || lb->file)
                return lb;
        return NULL;
}

/* "topics.items" for KB_TOPIC_ITEMS, ... */
static const char *topic_key(size_t t) {
        size_t n;
        for (n = 0; n < KB_CONF_SETTING_CNT; n++)
                if (kb_conf_settings[n].off ==
                    offsetof(kb_conf_t, topics_base) + t * sizeof(char *))
                        return kb_conf_settings[n].path;
        return "topics.prefix";
}

static int check_all(kb_conf_ctx_t *ctx) {
        kb_conf_t *c = ctx->conf;
        char hn[256];
        size_t i, j;

        /* Message size limits (docs/limits.md): an item must fit a message
         * of its topic, and its retry or DLQ copy (the same bytes plus
         * kbatch's headers) the producer's message.max.bytes. */
        if (c->worker_max_item_bytes > c->kafka_message_max_bytes)
                return conf_fail(
                    ctx,
                    loc_of(ctx, "worker.max_item_bytes",
                           "kafka.message_max_bytes"),
                    NULL,
                    "'worker.max_item_bytes' (%d) must not exceed "
                    "'kafka.message_max_bytes' (%d)",
                    c->worker_max_item_bytes, c->kafka_message_max_bytes);
        for (i = 0; i < c->kafka_property_cnt; i++) {
                const kb_kv_t *kv = &c->kafka_properties[i];
                long long v;
                if (strcmp(kv->k, "message.max.bytes"))
                        continue;
                v = strtoll(kv->v, NULL, 10);
                if (v < (long long)c->kafka_message_max_bytes +
                            KB_COPY_HEADROOM_BYTES)
                        return conf_fail(
                            ctx,
                            loc_of(ctx, "kafka.message_max_bytes",
                                   "kafka.message_max_bytes"),
                            "kafka.properties.message_max_bytes",
                            "must be at least kafka.message_max_bytes + "
                            "%d (%lld) so that retry and dead-letter copies "
                            "of the largest item can be produced (got %s)",
                            KB_COPY_HEADROOM_BYTES,
                            (long long)c->kafka_message_max_bytes +
                                KB_COPY_HEADROOM_BYTES,
                            kv->v);
        }

        if (c->retry_inprocess_attempts > c->retry_max_attempts)
                return conf_fail(
                    ctx,
                    loc_of(ctx, "retry.inprocess_attempts", "retry.max_attempts"),
                    NULL,
                    "'retry.inprocess_attempts' (%d) must not exceed "
                    "'retry.max_attempts' (%d)",
                    c->retry_inprocess_attempts, c->retry_max_attempts);
        if (c->retry_backoff_base_ms > c->retry_backoff_max_ms)
                return conf_fail(
                    ctx,
                    loc_of(ctx, "retry.backoff_base_ms", "retry.backoff_max_ms"),
                    NULL,
                    "'retry.backoff_base_ms' (%d) must not exceed "
                    "'retry.backoff_max_ms' (%d)",
                    c->retry_backoff_base_ms, c->retry_backoff_max_ms);
        if (c->topics_replication == 0)
                return conf_fail(ctx,
                                 loc_of(ctx, "topics.replication",
                                        "topics.replication"),
                                 "topics.replication",
                                 "must be -1 (the broker's default) or "
                                 "between 1 and 1000 (got 0)");
        {
                /* Every topic whose format resolves to avro needs the
                 * registry. */
                static const char *const fk[] = {
                    "serde.format", "serde.items_format",
                    "serde.results_format", "serde.batches_format",
                    "serde.control_format", "serde.batch_state_format"};
                const char *fv[] = {c->serde_format, c->serde_items_format,
                                    c->serde_results_format,
                                    c->serde_batches_format,
                                    c->serde_control_format,
                                    c->serde_batch_state_format};
                for (i = 0; i < sizeof(fk) / sizeof(*fk); i++) {
                        int avro = !strcmp(fv[i], "avro") ||
                                   (i && !*fv[i] &&
                                    !strcmp(c->serde_format, "avro"));
                        if (avro && !*c->serde_schema_registry_url)
                                return conf_fail(
                                    ctx,
                                    loc_of(ctx, fk[i],
                                           "serde.schema_registry_url"),
                                    NULL,
                                    "'serde.schema_registry_url' must be set "
                                    "when '%s' is \"avro\"",
                                    i && !*fv[i] ? fk[0] : fk[i]);
                }
        }
        if (!strcmp(c->kafka_group_id, c->kafka_aggregator_group_id) ||
            !strcmp(c->kafka_group_id, c->kafka_notifier_group_id) ||
            !strcmp(c->kafka_aggregator_group_id, c->kafka_notifier_group_id))
                return conf_fail(ctx,
                                 loc_of(ctx, "kafka.aggregator_group_id",
                                        "kafka.notifier_group_id"),
                                 NULL,
                                 "'kafka.group_id', "
                                 "'kafka.aggregator_group_id' and "
                                 "'kafka.notifier_group_id' must differ");

        /* Topics: prefix + name, valid and distinct. */
        for (i = 0; i < KB_TOPIC__CNT; i++) {
                size_t len = strlen(c->topics_prefix) +
                             strlen(c->topics_base[i]);
                free(c->topics_name[i]);
                if (!(c->topics_name[i] = malloc(len + 1)))
                        return conf_fail(ctx, NULL, NULL, "out of memory");
                snprintf(c->topics_name[i], len + 1, "%s%s", c->topics_prefix,
                         c->topics_base[i]);
        }
        for (i = 0; i < KB_TOPIC__CNT; i++) {
                const char *t = c->topics_name[i];
                /* the items topic also names its retry tiers:
                 * <items>.retry.N */
                size_t max = i == KB_TOPIC_ITEMS ? 240 : 249;
                const char *key = topic_key(i);
                if (strlen(t) > max || !strcmp(t, ".") || !strcmp(t, ".."))
                        return conf_fail(
                            ctx, loc_of(ctx, key, "topics.prefix"), NULL,
                            "topic name '%s' (topics.prefix + '%s') is not a "
                            "valid Kafka topic name (at most %zu characters, "
                            "not \".\" or \"..\")",
                            t, key, max);
                for (j = 0; j < i; j++)
                        if (!strcmp(t, c->topics_name[j]))
                                return conf_fail(
                                    ctx, loc_of(ctx, key, "topics.prefix"),
                                    NULL,
                                    "'%s' and '%s' both name topic '%s'; "
                                    "every topic must differ",
                                    topic_key(j), key, t);
        }

        /* Instance id. */
        free(c->instance_id);
        if (*c->worker_instance_id)
                c->instance_id = strdup(c->worker_instance_id);
        else {
                if (gethostname(hn, sizeof(hn)) != 0 || !*hn)
                        snprintf(hn, sizeof(hn), "localhost");
                hn[sizeof(hn) - 1] = '\0';
                if (asprintf(&c->instance_id, "%s-%ld", hn, (long)getpid()) < 0)
                        c->instance_id = NULL;
        }
        if (!c->instance_id)
                return conf_fail(ctx, NULL, NULL, "out of memory");
        return 0;
}


/*
 * Public API
 */

static void ctx_free(kb_conf_ctx_t *ctx) {
        size_t i;
        for (i = 0; i < ctx->file_cnt; i++)
                free(ctx->files[i]);
        free(ctx->files);
        free(ctx->dir);
        free(ctx);
}

const char *kb_conf_default_path(const char *given) {
        const char *e;
        if (given)
                return given;
        if ((e = getenv("KBATCH_CONFIG")) && *e)
                return e;
        if (access("worker.conf", F_OK) == 0)
                return "worker.conf";
        return NULL;
}

kb_conf_t *kb_conf_load(const char *path, kb_conf_err_t *errp, char *errstr,
                        size_t errstr_size) {
        kb_conf_ctx_t *ctx;
        kb_conf_t *conf;
        kb_conf_err_t err = KB_CONF_OK;
        char dummy[1];
        size_t i;

        if (!errstr || !errstr_size) {
                errstr = dummy;
                errstr_size = sizeof(dummy);
        }
        errstr[0] = '\0';
        ctx = calloc(1, sizeof(*ctx));
        conf = calloc(1, sizeof(*conf));
        if (!ctx || !conf) {
                snprintf(errstr, errstr_size, "out of memory");
                free(ctx);
                free(conf);
                if (errp)
                        *errp = KB_CONF_ERR_INVALID;
                return NULL;
        }
        ctx->conf = conf;
        ctx->path = path;
        ctx->errstr = errstr;
        ctx->errstr_size = errstr_size;

        for (i = 0; i < KB_CONF_SETTING_CNT; i++)
                if (parse_text(ctx, &kb_conf_settings[i], conf,
                               kb_conf_settings[i].path,
                               kb_conf_settings[i].def, NULL))
                        goto fail;
        if (default_routes(ctx))
                goto fail;
        if (path) {
                if (!(conf->path = strdup(path))) {
                        conf_fail(ctx, NULL, NULL, "out of memory");
                        goto fail;
                }
                if (load_file(ctx, path))
                        goto fail;
        }
        if (load_env(ctx) || check_all(ctx))
                goto fail;
        ctx_free(ctx);
        if (errp)
                *errp = KB_CONF_OK;
        return conf;

fail:
        err = ctx->err != KB_CONF_OK ? ctx->err : KB_CONF_ERR_INVALID;
        ctx_free(ctx);
        kb_conf_destroy(conf);
        if (errp)
                *errp = err;
        return NULL;
}

void kb_conf_destroy(kb_conf_t *conf) {
        size_t i;
        if (!conf)
                return;
        for (i = 0; i < KB_CONF_SETTING_CNT; i++) {
                const kb_conf_setting_t *st = &kb_conf_settings[i];
                if (st->type == KB_CONF_T_STR || st->type == KB_CONF_T_ENUM ||
                    st->type == KB_CONF_T_INTLIST)
                        free(*(void **)field(conf, st));
        }
        for (i = 0; i < KB_TOPIC__CNT; i++)
                free(conf->topics_name[i]);
        kv_free(conf->kafka_properties, conf->kafka_property_cnt);
        routes_free(conf);
        free(conf->instance_id);
        free(conf->path);
        free(conf);
}

const char *kb_conf_instance_id(const kb_conf_t *conf) {
        return conf->instance_id ? conf->instance_id : conf->worker_instance_id;
}


/*
 * Printing
 */

static int contains_ci(const char *s, const char *needle) {
        size_t n = strlen(needle);
        for (; *s; s++)
                if (!strncasecmp(s, needle, n))
                        return 1;
        return 0;
}

static int prop_secret(const char *name) {
        return contains_ci(name, "password") || contains_ci(name, "secret") ||
               contains_ci(name, "key") || contains_ci(name, "token") ||
               contains_ci(name, "credential") ||
               !strcmp(name, "sasl.oauthbearer.config");
}

static int header_secret(const char *name) {
        return contains_ci(name, "auth") || contains_ci(name, "key") ||
               contains_ci(name, "token") || contains_ci(name, "secret") ||
               contains_ci(name, "cookie") || contains_ci(name, "password") ||
               contains_ci(name, "credential");
}

/* A libconfig string literal. */
static void print_str(FILE *out, const char *s) {
        fputc('"', out);
        for (; *s; s++) {
                unsigned char ch = (unsigned char)*s;
                if (ch == '"' || ch == '\\')
                        fprintf(out, "\\%c", ch);
                else if (ch == '\n')
                        fputs("\\n", out);
                else if (ch == '\t')
                        fputs("\\t", out);
                else if (ch < 0x20 || ch == 0x7f)
                        fprintf(out, "\\x%02x", ch);
                else
                        fputc(ch, out);
        }
        fputc('"', out);
}

/* Appends url (len bytes) to buf with its userinfo password replaced. */
static void redact_url(char *buf, size_t size, const char *url, size_t len) {
        size_t o = strlen(buf);
        if (o < size)
                kb_url_redact(url, len, buf + o, size - o);
}

/* A (comma-separated list of) URL(s), passwords redacted. */
static void print_urls(FILE *out, const char *v) {
        char buf[8192] = "";
        const char *p = v;
        for (;;) {
                const char *e = strchr(p, ',');
                size_t n = e ? (size_t)(e - p) : strlen(p), o;
                redact_url(buf, sizeof(buf), p, n);
                if (!e)
                        break;
                o = strlen(buf);
                snprintf(buf + o, sizeof(buf) - o, ",");
                p = e + 1;
        }
        print_str(out, buf);
}

static void print_value(FILE *out, const void *base,
                        const kb_conf_setting_t *st) {
        const void *fp = cfield(base, st);
        size_t i, n;
        const char *p;
        int bits;

        switch (st->type) {
        case KB_CONF_T_INT:
                fprintf(out, "%d", *(const int *)fp);
                break;
        case KB_CONF_T_INT64: {
                int64_t v = *(const int64_t *)fp;
                fprintf(out, "%" PRId64 "%s", v,
                        v > INT32_MAX || v < INT32_MIN ? "L" : "");
                break;
        }
        case KB_CONF_T_BOOL:
                fputs(*(const int *)fp ? "true" : "false", out);
                break;
        case KB_CONF_T_STR:
        case KB_CONF_T_ENUM: {
                const char *s = *(char *const *)fp;
                if (st->flags & KB_CONF_F_URL)
                        print_urls(out, s ? s : "");
                else
                        print_str(out, s ? s : "");
                break;
        }
        case KB_CONF_T_ROLES:
                bits = *(const int *)fp;
                fputc('[', out);
                for (p = st->values, i = 0, n = 0; *p; i++) {
                        const char *e = strchr(p, '|');
                        size_t len = e ? (size_t)(e - p) : strlen(p);
                        if (bits & (1 << i))
                                fprintf(out, "%s\"%.*s\"", n++ ? ", " : "",
                                        (int)len, p);
                        p += len;
                        if (*p)
                                p++;
                }
                fputc(']', out);
                break;
        case KB_CONF_T_INTLIST:
                n = *(const size_t *)((const char *)base + st->cnt_off);
                fputc('[', out);
                for (i = 0; i < n; i++)
                        fprintf(out, "%s%d", i ? ", " : "",
                                (*(int *const *)fp)[i]);
                fputc(']', out);
                break;
        }
}

static void print_strlist(FILE *out, const char *name, char **l, size_t n) {
        size_t i;
        fprintf(out, "                        %s = [", name);
        for (i = 0; i < n; i++) {
                fputs(i ? ", " : " ", out);
                print_str(out, l[i]);
        }
        fputs(" ];\n", out);
}

static void print_route_async(FILE *out, const kb_async_conf_t *a) {
        size_t i;
        fputs("                async = {\n", out);
        for (i = 0; i < KB_CONF_ASYNC_SETTING_CNT; i++) {
                const kb_conf_setting_t *st = &kb_conf_async_settings[i];
                if (st->type == KB_CONF_T_STR && !*(char *const *)cfield(a, st))
                        continue;
                fprintf(out, "                        %s = ", st->path);
                print_value(out, a, st);
                fputs(";\n", out);
        }
        print_strlist(out, "succeeded", a->succeeded, a->succeeded_cnt);
        print_strlist(out, "failed", a->failed, a->failed_cnt);
        fputs("                };\n", out);
}

static void print_route(FILE *out, const kb_route_conf_t *rc) {
        char name[256];
        size_t i;
        fputs("        {\n", out);
        for (i = 0; i < KB_CONF_ROUTE_SETTING_CNT; i++) {
                const kb_conf_setting_t *st = &kb_conf_route_settings[i];
                if ((st->type == KB_CONF_T_STR) && !*(char *const *)cfield(rc, st))
                        continue;
                fprintf(out, "                %s = ", st->path);
                print_value(out, rc, st);
                fputs(";\n", out);
        }
        if (rc->header_cnt) {
                fputs("                headers = {\n", out);
                for (i = 0; i < rc->header_cnt; i++) {
                        fprintf(out, "                        %s = ",
                                rc->headers[i].k);
                        print_str(out, header_secret(rc->headers[i].k)
                                           ? "***"
                                           : rc->headers[i].v);
                        fputs(";\n", out);
                }
                fputs("                };\n", out);
        }
        fputs("                operations = {\n", out);
        for (i = 0; i < rc->operation_cnt; i++) {
                dot_to_us(rc->operations[i].k, name, sizeof(name));
                fprintf(out, "                        %s = ", name);
                print_str(out, rc->operations[i].v);
                fputs(";\n", out);
        }
        fputs("                };\n", out);
        if (!strcmp(rc->mode, "async"))
                print_route_async(out, &rc->async);
        fputs("        }", out);
}

/* Derived values as comments: resolved topic names, the instance id. */
static void print_note(FILE *out, const kb_conf_t *conf,
                       const kb_conf_setting_t *st) {
        size_t t;
        for (t = 0; t < KB_TOPIC__CNT; t++)
                if (st->off == offsetof(kb_conf_t, topics_base) +
                                   t * sizeof(char *) &&
                    conf->topics_name[t])
                        fprintf(out, "  # topic %s", conf->topics_name[t]);
        if (st->off == offsetof(kb_conf_t, worker_instance_id) &&
            conf->instance_id && !*conf->worker_instance_id)
                fprintf(out, "  # \"\" = <hostname>-<pid>, here %s",
                        conf->instance_id);
}

void kb_conf_print(const kb_conf_t *conf, FILE *out) {
        char name[256];
        size_t s, i, sl;

        for (s = 0; s < KB_CONF_SECTION_CNT; s++) {
                const char *sec = kb_conf_sections[s];
                sl = strlen(sec);
                fprintf(out, "%s = {\n", sec);
                for (i = 0; i < KB_CONF_SETTING_CNT; i++) {
                        const kb_conf_setting_t *st = &kb_conf_settings[i];
                        if (strncmp(st->path, sec, sl) || st->path[sl] != '.')
                                continue;
                        fprintf(out, "        %s = ", st->path + sl + 1);
                        print_value(out, conf, st);
                        fputs(";", out);
                        print_note(out, conf, st);
                        fputs("\n", out);
                }
                if (!strcmp(sec, "kafka")) {
                        fputs("        properties = {\n", out);
                        for (i = 0; i < conf->kafka_property_cnt; i++) {
                                const kb_kv_t *kv = &conf->kafka_properties[i];
                                dot_to_us(kv->k, name, sizeof(name));
                                fprintf(out, "                %s = ", name);
                                print_str(out,
                                          prop_secret(kv->k) ? "***" : kv->v);
                                fputs(";\n", out);
                        }
                        fputs("        };\n", out);
                }
                fputs("};\n\n", out);
        }
        fputs("routes = (\n", out);
        for (i = 0; i < conf->route_cnt; i++) {
                print_route(out, &conf->routes[i]);
                fputs(i + 1 < conf->route_cnt ? ",\n" : "\n", out);
        }
        fputs(");\n", out);
}
