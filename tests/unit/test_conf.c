/* Unit tests of worker/conf.c: defaults, worker.conf, every kind of error
 * (with its line), environment overrides, redaction, print round trip,
 * kb_conf_default_path(). Fixtures are in tests/unit/data/. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <criterion/criterion.h>
#include <ctype.h>
#include <libconfig.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conf.h"

extern char **environ;

/* Every KBATCH_* variable of the caller's environment would leak into the
 * loads under test: drop them all first. */
static void clear_env(void) {
        char **e, name[256];
        int again = 1;
        while (again) {
                again = 0;
                for (e = environ; e && *e; e++) {
                        const char *eq = strchr(*e, '=');
                        if (strncmp(*e, "KBATCH_", 7) || !eq ||
                            (size_t)(eq - *e) >= sizeof(name))
                                continue;
                        snprintf(name, sizeof(name), "%.*s", (int)(eq - *e),
                                 *e);
                        unsetenv(name);
                        again = 1;
                        break;
                }
        }
}

TestSuite(conf, .init = clear_env);

/* Paths relative to this source file, so the tests run from any cwd when
 * built from the repository root (as the Makefile does). */
static char *src_path(const char *rel) {
        char buf[PATH_MAX], *dir, *p;
        snprintf(buf, sizeof(buf), "%s", __FILE__);
        dir = dirname(buf);
        if (asprintf(&p, "%s/%s", dir, rel) < 0)
                return NULL;
        return p;
}

static char *write_tmp(const char *text) {
        char *path = strdup("/tmp/kbatch-test-conf-XXXXXX");
        int fd = mkstemp(path);
        FILE *fp;
        cr_assert(fd >= 0);
        fp = fdopen(fd, "w");
        cr_assert(fp);
        fputs(text, fp);
        fclose(fp);
        return path;
}

static kb_conf_t *load_text(const char *text, char **pathp, kb_conf_err_t *errp,
                            char *errstr, size_t size) {
        char *path = write_tmp(text);
        kb_conf_t *c = kb_conf_load(path, errp, errstr, size);
        if (pathp)
                *pathp = path;
        else {
                unlink(path);
                free(path);
        }
        return c;
}

static char *print_conf(const kb_conf_t *c) {
        char *buf = NULL;
        size_t len = 0;
        FILE *fp = open_memstream(&buf, &len);
        cr_assert(fp);
        kb_conf_print(c, fp);
        fclose(fp);
        return buf;
}

static const char *prop(const kb_conf_t *c, const char *k) {
        size_t i;
        for (i = 0; i < c->kafka_property_cnt; i++)
                if (!strcmp(c->kafka_properties[i].k, k))
                        return c->kafka_properties[i].v;
        return NULL;
}

static const char *kv_get(const kb_kv_t *kv, size_t cnt, const char *k) {
        size_t i;
        for (i = 0; i < cnt; i++)
                if (!strcmp(kv[i].k, k))
                        return kv[i].v;
        return NULL;
}


Test(conf, defaults) {
        char err[512];
        kb_conf_t *c = kb_conf_load(NULL, NULL, err, sizeof(err));
        static const char *topics[KB_TOPIC__CNT] = {
                "kbatch.items",       "kbatch.items.dlq", "kbatch.results",
                "kbatch.batches",     "kbatch.batches.dlq", "kbatch.control",
                "kbatch.batch-state", "kbatch.files",     "kbatch.api-batches",
                "kbatch.items.priority",
                "kbatch.items.jobs",
        };
        char host[256], want[300];
        size_t i;

        cr_assert(c, "defaults must load: %s", err);
        cr_expect_null(c->path);
        /* SPEC §7 */
        cr_expect_str_eq(c->kafka_bootstrap_servers, "localhost:9092");
        cr_expect_eq(c->kafka_property_cnt, 0);
        cr_expect_str_eq(c->topics_prefix, "kbatch.");
        cr_expect_eq(c->worker_roles,
                     KB_ROLE_ITEMS | KB_ROLE_AGGREGATOR | KB_ROLE_NOTIFIER);
        cr_expect_eq(c->worker_max_inflight, 1000);
        cr_expect_eq(c->worker_shutdown_drain_ms, 30000);
        cr_expect_eq(c->retry_max_attempts, 5);
        cr_assert_eq(c->retry_delay_cnt, 3);
        cr_expect_eq(c->retry_delays_ms[0], 5000);
        cr_expect_eq(c->retry_delays_ms[1], 30000);
        cr_expect_eq(c->retry_delays_ms[2], 300000);
        cr_expect_str_eq(c->serde_format, "json");
        cr_expect_str_eq(c->serde_schema_registry_url, "");
        cr_expect_str_eq(c->admin_listen, "0.0.0.0:8080");
        cr_expect_str_eq(c->log_level, "info");
        cr_expect_str_eq(c->log_format, "json");
        cr_assert_eq(c->route_cnt, 1);
        cr_expect_str_eq(c->routes[0].model, "*");
        cr_expect_str_eq(c->routes[0].base_url, "http://127.0.0.1:8000");
        cr_expect_null(c->routes[0].api_key_env);
        cr_expect_null(c->routes[0].api_key_file);
        cr_expect_null(c->routes[0].ca_file);
        cr_expect_str_eq(c->routes[0].default_operation, "chat.completions");
        cr_expect_eq(c->routes[0].line, 0);
        /* conf.h */
        cr_expect_str_eq(c->kafka_group_id, "kbatch-workers");
        cr_expect_str_eq(c->kafka_aggregator_group_id, "kbatch-aggregator");
        cr_expect_str_eq(c->kafka_notifier_group_id, "kbatch-notifier");
        cr_expect_eq(c->topics_partitions, 12);
        cr_expect_eq(c->topics_replication, -1);
        cr_expect_eq(c->worker_revoke_drain_ms, 10000);
        cr_expect_eq(c->worker_commit_interval_ms, 1000);
        cr_expect_eq(c->worker_max_item_bytes, 1048576);
        cr_expect_eq(c->worker_queue_max_kbytes, 1024);
        cr_expect_eq(c->worker_offsets_window, 16384);
        cr_expect_eq(c->http_max_response_bytes, 16777216);
        cr_expect_eq(c->http_max_connections, 0);
        cr_expect_eq(c->retry_inprocess_attempts, 2);
        cr_expect_eq(c->retry_backoff_base_ms, 500);
        cr_expect_eq(c->retry_backoff_max_ms, 30000);
        cr_expect_eq(c->retry_inprocess_max_wait_ms, 10000);
        cr_expect_eq(c->serde_auto_register, 1);
        cr_expect_eq(c->aggregator_commit_interval_ms, 1000);
        cr_expect_eq(c->aggregator_retention_ms, INT64_C(604800000));
        cr_expect_eq(c->aggregator_expiry_grace_ms, INT64_C(3600000));
        cr_expect_eq(c->aggregator_test_txn_abort_every, 0);
        cr_expect_eq(c->aggregator_test_txn_fatal_every, 0);
        cr_expect_str_eq(c->notifier_secret_env, "KBATCH_WEBHOOK_SECRET");
        cr_expect_str_eq(c->notifier_secret_file, "");
        cr_expect_eq(c->notifier_max_inflight, 64);
        cr_expect_eq(c->notifier_timeout_ms, 10000);
        cr_expect_eq(c->notifier_max_attempts, 8);
        cr_expect_eq(c->notifier_max_age_ms, INT64_C(86400000));
        cr_expect_eq(c->notifier_allow_private, 0);
        cr_expect_eq(c->control_lookback_ms, INT64_C(604800000));
        cr_expect_eq(c->routes[0].timeout_ms, 600000);
        cr_expect_eq(c->routes[0].connect_timeout_ms, 10000);
        cr_expect_eq(c->routes[0].max_inflight, 256);
        cr_expect_eq(c->routes[0].requests_per_minute, 0);
        cr_expect_eq(c->routes[0].tokens_per_minute, 0);
        cr_expect_eq(c->routes[0].tls_verify, 1);
        cr_expect_eq(c->routes[0].header_cnt, 0);
        cr_expect_str_eq(kv_get(c->routes[0].operations,
                                c->routes[0].operation_cnt,
                                "chat.completions"),
                         "/v1/chat/completions");
        cr_expect_str_eq(kv_get(c->routes[0].operations,
                                c->routes[0].operation_cnt, "embeddings"),
                         "/v1/embeddings");
        for (i = 0; i < KB_TOPIC__CNT; i++)
                cr_expect_str_eq(c->topics_name[i], topics[i]);
        /* instance id: <hostname>-<pid> */
        cr_assert_eq(gethostname(host, sizeof(host)), 0);
        snprintf(want, sizeof(want), "%s-%ld", host, (long)getpid());
        cr_expect_str_eq(kb_conf_instance_id(c), want);
        kb_conf_destroy(c);
}

Test(conf, worker_conf_equals_defaults) {
        char err[512], *path = src_path("../../worker.conf"), *a, *b;
        kb_conf_t *def = kb_conf_load(NULL, NULL, err, sizeof(err));
        kb_conf_t *wc = kb_conf_load(path, NULL, err, sizeof(err));
        cr_assert(def);
        cr_assert(wc, "worker.conf must load: %s", err);
        a = print_conf(def);
        b = print_conf(wc);
        cr_expect_str_eq(b, a, "worker.conf differs from the built-in "
                               "defaults");
        cr_expect_neq(wc->routes[0].line, 0);
        free(a);
        free(b);
        kb_conf_destroy(def);
        kb_conf_destroy(wc);
        free(path);
}

/* worker.conf documents every key by setting it. */
Test(conf, worker_conf_sets_every_key) {
        char *path = src_path("../../worker.conf");
        const char *name;
        config_t cfg;
        size_t i;
        config_init(&cfg);
        cr_assert(config_read_file(&cfg, path), "%s:%d: %s", path,
                  config_error_line(&cfg), config_error_text(&cfg));
        for (i = 0; (name = kb_conf_setting_name(i, NULL)); i++)
                cr_expect(config_lookup(&cfg, name), "worker.conf lacks %s",
                          name);
        cr_expect_gt(i, 40);
        cr_expect(config_lookup(&cfg, "kafka.properties"));
        cr_expect(config_lookup(&cfg, "routes"));
        config_destroy(&cfg);
        free(path);
}

/* The commented examples of worker.conf (a second route, SASL properties)
 * load once uncommented. */
Test(conf, worker_conf_examples_load) {
        char *path = src_path("../../worker.conf"), *text, *line, *save = NULL;
        char *out = NULL, err[512];
        size_t outlen = 0;
        FILE *in, *mem;
        kb_conf_t *c;
        long len;
        int in_routes = 0, in_props = 0;

        cr_assert((in = fopen(path, "r")));
        fseek(in, 0, SEEK_END);
        len = ftell(in);
        rewind(in);
        text = calloc(1, (size_t)len + 1);
        cr_assert_eq(fread(text, 1, (size_t)len, in), (size_t)len);
        fclose(in);
        mem = open_memstream(&out, &outlen);
        for (line = strtok_r(text, "\n", &save); line;
             line = strtok_r(NULL, "\n", &save)) {
                char *p = line;
                if (!strncmp(line, "routes = (", 10))
                        in_routes = 1;
                if (strstr(line, "properties = {"))
                        in_props = 1;
                while (*p == ' ')
                        p++;
                if ((in_routes || in_props) && !strncmp(p, "# ", 2) &&
                    !strstr(p, "uncomment") && !strstr(p, "catch-all")) {
                        fprintf(mem, "%.*s%s\n", (int)(p - line), line, p + 2);
                        continue;
                }
                if (in_props && !strncmp(p, "};", 2))
                        in_props = 0;
                fprintf(mem, "%s\n", line);
        }
        fclose(mem);
        c = load_text(out, NULL, NULL, err, sizeof(err));
        cr_assert(c, "uncommented worker.conf: %s\n%s", err, out);
        cr_assert_eq(c->route_cnt, 2);
        cr_expect_str_eq(c->routes[0].model, "gpt-*");
        cr_expect_str_eq(c->routes[0].api_key_env, "OPENAI_API_KEY");
        cr_expect_str_eq(kv_get(c->routes[0].headers, c->routes[0].header_cnt,
                                "OpenAI-Organization"),
                         "org-...");
        cr_expect_str_eq(kv_get(c->routes[0].operations,
                                c->routes[0].operation_cnt, "rerank"),
                         "/v1/rerank");
        cr_expect_str_eq(c->routes[1].model, "*");
        cr_expect_str_eq(prop(c, "security.protocol"), "SASL_SSL");
        cr_expect_str_eq(prop(c, "sasl.mechanisms"), "SCRAM-SHA-512");
        cr_expect_str_eq(prop(c, "ssl.ca.location"), "/etc/kbatch/ca.pem");
        kb_conf_destroy(c);
        free(out);
        free(text);
        free(path);
}

/* docs/configuration.md names every key and its environment variable. */
Test(conf, docs_cover_every_key) {
        char *path = src_path("../../docs/configuration.md"), *text, pat[128];
        const char *name, *env;
        FILE *in;
        long len;
        size_t i;
        cr_assert((in = fopen(path, "r")), "%s missing", path);
        fseek(in, 0, SEEK_END);
        len = ftell(in);
        rewind(in);
        text = calloc(1, (size_t)len + 1);
        cr_assert_eq(fread(text, 1, (size_t)len, in), (size_t)len);
        fclose(in);
        for (i = 0; (name = kb_conf_setting_name(i, &env)); i++) {
                snprintf(pat, sizeof(pat), "`%s`", name);
                cr_expect(strstr(text, pat), "docs lack %s", pat);
                snprintf(pat, sizeof(pat), "`%s`", env);
                cr_expect(strstr(text, pat), "docs lack %s", pat);
        }
        free(text);
        free(path);
}

Test(conf, env_names) {
        const char *env, *name;
        size_t i;
        char want[128], *p;
        for (i = 0; (name = kb_conf_setting_name(i, &env)); i++) {
                snprintf(want, sizeof(want), "KBATCH_%s", name);
                for (p = want; *p; p++)
                        *p = *p == '.' ? '_' : (char)toupper((unsigned char)*p);
                cr_expect_str_eq(env, want);
        }
        cr_expect_null(kb_conf_setting_name(i, &env));
        kb_conf_setting_name(0, &env);
        cr_expect_str_eq(env, "KBATCH_KAFKA_BOOTSTRAP_SERVERS");
}

Test(conf, full_config) {
        char err[512], *path = src_path("data/full.conf");
        kb_conf_t *c = kb_conf_load(path, NULL, err, sizeof(err));
        const kb_route_conf_t *r;
        cr_assert(c, "%s", err);
        cr_expect_str_eq(c->path, path);
        cr_expect_str_eq(c->kafka_bootstrap_servers,
                         "broker-1:9092,broker-2:9092");
        cr_expect_str_eq(c->kafka_group_id, "g-items");
        cr_expect_eq(c->kafka_property_cnt, 4);
        cr_expect_str_eq(prop(c, "socket.timeout.ms"), "30000");
        cr_expect_str_eq(prop(c, "socket.keepalive.enable"), "true");
        cr_expect_str_eq(prop(c, "client.rack"), "eu-west-1a");
        cr_expect_str_eq(prop(c, "log_level"), "6"); /* a real underscore */
        cr_expect_str_eq(c->topics_name[KB_TOPIC_ITEMS], "acme-in");
        cr_expect_str_eq(c->topics_name[KB_TOPIC_ITEMS_DLQ], "acme-in-dlq");
        cr_expect_str_eq(c->topics_name[KB_TOPIC_BATCH_STATE], "acme-state");
        cr_expect_str_eq(c->topics_base[KB_TOPIC_CONTROL], "ctl");
        cr_expect_eq(c->topics_replication, 2);
        cr_expect_eq(c->worker_roles, KB_ROLE_ITEMS | KB_ROLE_NOTIFIER);
        cr_expect_eq(c->worker_max_inflight, 50);
        cr_expect_str_eq(kb_conf_instance_id(c), "worker-a:1");
        cr_expect_eq(c->retry_delay_cnt, 4);
        cr_expect_eq(c->retry_delays_ms[3], 4000);
        cr_expect_str_eq(c->serde_format, "avro");
        cr_expect_eq(c->serde_auto_register, 0);
        /* beyond 32 bits without an L suffix */
        cr_expect_eq(c->aggregator_retention_ms, INT64_C(3000000000));
        cr_expect_eq(c->control_lookback_ms, 0);
        cr_expect_eq(c->notifier_allow_private, 1);
        cr_expect_str_eq(c->log_format, "text");
        cr_assert_eq(c->route_cnt, 3);
        {
                const kb_route_conf_t *g = &c->routes[1];
                cr_expect_str_eq(g->name, "genvr");
                cr_expect_null(g->fallback);
                cr_expect_eq(g->breaker_failures, 3);
                cr_expect_eq(g->breaker_open_ms, 30000);
                cr_expect_str_eq(g->mode, "async");
                cr_expect_str_eq(g->async.id_pointer, "/data/id");
                cr_expect_str_eq(g->async.status_method, "POST");
                cr_expect_eq(g->async.succeeded_cnt, 1);
                cr_expect_str_eq(g->async.succeeded[0], "completed");
                cr_expect_eq(g->async.failed_cnt, 2);
                cr_expect_str_eq(g->async.failed[1], "cancelled");
                cr_expect_null(g->async.output_pointer);
                cr_expect_null(g->async.cancel_path);
                cr_expect_eq(g->async.poll_ms, 500);
                cr_expect_eq(g->async.poll_max_ms, 5000);
                cr_expect_eq(g->async.max_wait_ms, 600000);
                cr_expect_str_eq(c->routes[0].mode, "sync");
                cr_expect_str_eq(c->routes[0].name, "gpt-*");
        }
        r = &c->routes[0];
        cr_expect_str_eq(r->model, "gpt-*");
        cr_expect_str_eq(r->base_url, "https://api.example.com/");
        cr_expect_str_eq(r->api_key_env, "EXAMPLE_KEY");
        cr_expect_null(r->api_key_file);
        cr_expect_str_eq(r->default_operation, "rerank");
        cr_expect_eq(r->timeout_ms, 30000);
        cr_expect_eq(r->connect_timeout_ms, 2000);
        cr_expect_eq(r->max_inflight, 16);
        cr_expect_eq(r->requests_per_minute, 600);
        cr_expect_eq(r->tokens_per_minute, 100000);
        cr_expect_eq(r->tls_verify, 0);
        cr_expect_str_eq(r->ca_file, "/etc/ssl/ca.pem");
        cr_expect_eq(r->header_cnt, 2);
        cr_expect_str_eq(kv_get(r->headers, r->header_cnt, "OpenAI-Beta"),
                         "assistants=v2");
        /* operations: the defaults, overridden and extended */
        cr_expect_eq(r->operation_cnt, 5);
        cr_expect_str_eq(kv_get(r->operations, r->operation_cnt,
                                "chat.completions"),
                         "/openai/chat");
        cr_expect_str_eq(kv_get(r->operations, r->operation_cnt, "responses"),
                         "/v1/responses");
        cr_expect_str_eq(kv_get(r->operations, r->operation_cnt, "rerank"),
                         "/v1/rerank");
        cr_expect_eq(r->line, 93);
        cr_expect_str_eq(c->routes[2].api_key_file, "/run/secrets/key");
        kb_conf_destroy(c);
        free(path);
}

Test(conf, print_reloads_equal) {
        static const char *fixtures[] = { NULL, "data/full.conf",
                                          "data/secrets.conf",
                                          "../../worker.conf" };
        size_t i;
        for (i = 0; i < sizeof(fixtures) / sizeof(*fixtures); i++) {
                char err[512], *path = fixtures[i] ? src_path(fixtures[i])
                                                   : NULL;
                kb_conf_t *a = kb_conf_load(path, NULL, err, sizeof(err)), *b;
                char *pa, *pb;
                cr_assert(a, "%s: %s", fixtures[i], err);
                pa = print_conf(a);
                b = load_text(pa, NULL, NULL, err, sizeof(err));
                cr_assert(b, "%s: printed config does not load: %s\n%s",
                          fixtures[i], err, pa);
                pb = print_conf(b);
                cr_expect_str_eq(pb, pa, "%s: reload differs", fixtures[i]);
                free(pa);
                free(pb);
                kb_conf_destroy(a);
                kb_conf_destroy(b);
                free(path);
        }
}

Test(conf, redaction) {
        static const char *hidden[] = { "hunter2-sasl",  "hunter2-sslkey",
                                        "hunter2-registry", "hunter2-url",
                                        "hunter2-auth",  "hunter2-xkey",
                                        "hunter2-token", "hunter2-env" };
        static const char *shown[] = {
                "plain-value", "kbatch-user", "SASL_SSL",
                "https://reguser:***@registry.example.com:8081",
                "https://bob:***@api.example.com",
                "sasl_password = \"***\"", "Authorization = \"***\"",
        };
        char err[512], *path = src_path("data/secrets.conf"), *out;
        kb_conf_t *c;
        size_t i;

        setenv("KBATCH_KAFKA_PROPERTIES_SSL_KEYSTORE_PASSWORD", "hunter2-env",
               1);
        c = kb_conf_load(path, NULL, err, sizeof(err));
        cr_assert(c, "%s", err);
        /* the secrets are loaded as they are ... */
        cr_expect_str_eq(prop(c, "sasl.password"), "hunter2-sasl");
        cr_expect_str_eq(prop(c, "ssl.keystore.password"), "hunter2-env");
        cr_expect_str_eq(kv_get(c->routes[0].headers, c->routes[0].header_cnt,
                                "Authorization"),
                         "Bearer hunter2-auth");
        /* ... and never printed */
        out = print_conf(c);
        for (i = 0; i < sizeof(hidden) / sizeof(*hidden); i++)
                cr_expect_null(strstr(out, hidden[i]), "'%s' printed:\n%s",
                               hidden[i], out);
        for (i = 0; i < sizeof(shown) / sizeof(*shown); i++)
                cr_expect(strstr(out, shown[i]), "'%s' not printed:\n%s",
                          shown[i], out);
        free(out);
        kb_conf_destroy(c);
        free(path);
}

/*
 * Errors
 */

typedef struct {
        const char *name;
        const char *text;
        kb_conf_err_t err;
        int line;          /* expected "FILE:LINE: " prefix; 0: "FILE: " */
        const char *msg;   /* expected substring after the prefix */
} err_case_t;

static const err_case_t err_cases[] = {
        /* syntax */
        { "syntax", "worker = {\n  max_inflight = ;\n};\n", KB_CONF_ERR_SYNTAX,
          2, "syntax error" },
        { "syntax unterminated", "log = {\n level = \"info;\n};\n",
          KB_CONF_ERR_SYNTAX, 0, "" },
        { "duplicate", "log = {\n level = \"info\";\n level = \"debug\";\n};\n",
          KB_CONF_ERR_SYNTAX, 3, "duplicate setting name" },
        /* unknown keys */
        { "unknown key, suggested", "# c\nworker = {\n\n  max_infligt = 5;\n};\n",
          KB_CONF_ERR_INVALID, 4,
          "unknown key 'worker.max_infligt'; did you mean "
          "'worker.max_inflight'?" },
        { "unknown key", "worker = {\n  zzz = 1;\n};\n", KB_CONF_ERR_INVALID, 2,
          "unknown key 'worker.zzz'" },
        { "unknown key, wrong section",
          "worker = {\n  bootstrap_servers = \"x\";\n};\n", KB_CONF_ERR_INVALID,
          2, "did you mean 'kafka.bootstrap_servers'?" },
        { "unknown section", "\nkafak = { };\n", KB_CONF_ERR_INVALID, 2,
          "unknown key 'kafak'; did you mean 'kafka'?" },
        { "unknown top-level key", "max_inflight = 5;\n", KB_CONF_ERR_INVALID, 1,
          "unknown key 'max_inflight'; did you mean 'worker.max_inflight'?" },
        { "unknown nested group", "log = {\n  sub = { level = 1; };\n};\n",
          KB_CONF_ERR_INVALID, 2, "unknown key 'log.sub'" },
        /* types */
        { "section not a group", "worker = 5;\n", KB_CONF_ERR_INVALID, 1,
          "'worker' must be a group" },
        { "int as string", "worker = {\n  max_inflight = \"10\";\n};\n",
          KB_CONF_ERR_INVALID, 2, "'worker.max_inflight' must be an integer" },
        { "int as float", "worker = { max_inflight = 1.5; };\n",
          KB_CONF_ERR_INVALID, 1, "'worker.max_inflight' must be an integer" },
        { "int64 as bool", "control = { lookback_ms = true; };\n",
          KB_CONF_ERR_INVALID, 1, "'control.lookback_ms' must be an integer" },
        { "bool as int", "serde = { auto_register = 1; };\n",
          KB_CONF_ERR_INVALID, 1,
          "'serde.auto_register' must be a boolean (true or false)" },
        { "string as int", "kafka = { bootstrap_servers = 9092; };\n",
          KB_CONF_ERR_INVALID, 1, "'kafka.bootstrap_servers' must be a string" },
        { "roles not a list", "worker = { roles = 1; };\n", KB_CONF_ERR_INVALID,
          1, "'worker.roles' must be a list of roles" },
        { "roles not strings", "worker = { roles = [1, 2]; };\n",
          KB_CONF_ERR_INVALID, 1, "'worker.roles' must be a list of strings" },
        { "delays not a list", "retry = { delays_ms = 5; };\n",
          KB_CONF_ERR_INVALID, 1, "'retry.delays_ms' must be a list of integers" },
        { "delays not ints", "retry = { delays_ms = (1, \"2\"); };\n",
          KB_CONF_ERR_INVALID, 1, "'retry.delays_ms' must be a list of integers" },
        /* ranges */
        { "int below", "worker = {\n  max_inflight = 0;\n};\n",
          KB_CONF_ERR_INVALID, 2,
          "'worker.max_inflight' must be between 1 and 100000 (got 0)" },
        { "int above", "retry = { max_attempts = 101; };\n", KB_CONF_ERR_INVALID,
          1, "'retry.max_attempts' must be between 1 and 100 (got 101)" },
        { "int wrapped by libconfig", "worker = { max_inflight = 4294967297; };\n",
          KB_CONF_ERR_INVALID, 1,
          "'worker.max_inflight' must be between 1 and 100000 (got 4294967297)" },
        { "int64 above", "notifier = { max_age_ms = 9999999999999; };\n",
          KB_CONF_ERR_INVALID, 1,
          "'notifier.max_age_ms' must be between 60000 and 2592000000 (got "
          "9999999999999)" },
        { "int64 beyond int64",
          "control = { lookback_ms = 99999999999999999999; };\n",
          KB_CONF_ERR_INVALID, 1, "(got 99999999999999999999)" },
        { "empty string", "kafka = { bootstrap_servers = \"\"; };\n",
          KB_CONF_ERR_INVALID, 1, "'kafka.bootstrap_servers' must not be empty" },
        { "control character", "kafka = { group_id = \"a\\nb\"; };\n",
          KB_CONF_ERR_INVALID, 1,
          "'kafka.group_id' must not contain control characters" },
        { "bad enum", "serde = {\n  format = \"xml\";\n};\n", KB_CONF_ERR_INVALID,
          2, "'serde.format' must be one of json, avro (got 'xml')" },
        { "bad log level", "log = { level = \"verbose\"; };\n",
          KB_CONF_ERR_INVALID, 1,
          "'log.level' must be one of debug, info, warn, error, off" },
        { "bad log format", "log = { format = \"yaml\"; };\n",
          KB_CONF_ERR_INVALID, 1, "'log.format' must be one of json, text" },
        { "unknown role", "worker = { roles = [\"items\", \"bogus\"]; };\n",
          KB_CONF_ERR_INVALID, 1,
          "'worker.roles' has an unknown role 'bogus' (roles: items, "
          "aggregator, notifier, api)" },
        { "no roles", "worker = { roles = []; };\n", KB_CONF_ERR_INVALID, 1,
          "'worker.roles' must name at least one role" },
        { "no delays", "retry = { delays_ms = []; };\n", KB_CONF_ERR_INVALID, 1,
          "'retry.delays_ms' must have between 1 and 10 entries (got 0)" },
        { "too many delays",
          "retry = { delays_ms = [1,2,3,4,5,6,7,8,9,10,11]; };\n",
          KB_CONF_ERR_INVALID, 1, "between 1 and 10 entries (got 11)" },
        { "delay out of range", "retry = { delays_ms = [5000, 0]; };\n",
          KB_CONF_ERR_INVALID, 1,
          "'retry.delays_ms' entries must be between 1 and 86400000 (got 0)" },
        { "bad topic name", "topics = { prefix = \"a b\"; };\n",
          KB_CONF_ERR_INVALID, 1, "'topics.prefix' may only contain" },
        { "bad listen", "admin = { listen = \"nope\"; };\n", KB_CONF_ERR_INVALID,
          1, "'admin.listen' must be \"\" (disabled) or HOST:PORT" },
        { "bad listen port", "admin = { listen = \":70000\"; };\n",
          KB_CONF_ERR_INVALID, 1, "'admin.listen' must be" },
        { "bad instance id", "worker = { instance_id = \"a b\"; };\n",
          KB_CONF_ERR_INVALID, 1, "'worker.instance_id' may only contain" },
        { "bad env var name",
          "serde = { schema_registry_password_env = \"1BAD\"; };\n",
          KB_CONF_ERR_INVALID, 1,
          "'serde.schema_registry_password_env' must be an environment "
          "variable name" },
        { "bad registry url", "serde = { schema_registry_url = \"registry:8081\"; };\n",
          KB_CONF_ERR_INVALID, 1, "'serde.schema_registry_url' must be empty or" },
        /* kafka.properties */
        { "kafka property bad value",
          "kafka = {\n  properties = {\n    socket_timeout_ms = \"abc\";\n  };\n};\n",
          KB_CONF_ERR_INVALID, 3,
          "kafka.properties: 'socket.timeout.ms': Invalid value" },
        { "kafka property unknown",
          "kafka = { properties = { no_such_property = \"x\"; }; };\n",
          KB_CONF_ERR_INVALID, 1,
          "kafka.properties: 'no.such.property': No such configuration "
          "property" },
        { "kafka property bad enum",
          "kafka = { properties = {\n security_protocol = \"carrier_pigeon\"; }; };\n",
          KB_CONF_ERR_INVALID, 2, "kafka.properties: 'security.protocol': " },
        { "kafka property managed",
          "kafka = { properties = { group_id = \"x\"; }; };\n",
          KB_CONF_ERR_INVALID, 1,
          "kafka.properties: 'group.id' is set by kbatch (use kafka.group_id" },
        { "kafka property list", "kafka = { properties = { debug = [1]; }; };\n",
          KB_CONF_ERR_INVALID, 1,
          "kafka.properties: 'debug' must be a string, integer or boolean" },
        { "kafka properties not a group", "kafka = { properties = 1; };\n",
          KB_CONF_ERR_INVALID, 1, "'kafka.properties' must be a group" },
        /* routes */
        { "route without base_url", "routes = (\n  {\n    model = \"*\";\n  }\n);\n",
          KB_CONF_ERR_INVALID, 2, "'routes[0].base_url' is required" },
        { "route without model",
          "routes = ( { model = \"a\"; base_url = \"http://a\"; },\n"
          "  { base_url = \"http://b\"; } );\n",
          KB_CONF_ERR_INVALID, 2, "'routes[1].model' is required" },
        { "route with both key sources",
          "routes = ( {\n model = \"*\";\n base_url = \"http://a\";\n"
          " api_key_env = \"K\";\n api_key_file = \"/k\";\n} );\n",
          KB_CONF_ERR_INVALID, 5,
          "'routes[0]' sets both api_key_env and api_key_file" },
        { "unknown route key",
          "routes = (\n  {\n    model = \"*\";\n    base_url = \"http://a\";\n"
          "    timeout = 5;\n  }\n);\n",
          KB_CONF_ERR_INVALID, 5,
          "unknown key 'routes[0].timeout'; did you mean 'timeout_ms'?" },
        { "route bad base_url",
          "routes = ( { model = \"*\"; base_url = \"ftp://a\"; } );\n",
          KB_CONF_ERR_INVALID, 1,
          "'routes[0].base_url' must start with http:// or https://" },
        { "route bad int", "routes = ( { model = \"*\"; base_url = \"http://a\";\n"
                           "  max_inflight = 0; } );\n",
          KB_CONF_ERR_INVALID, 2,
          "'routes[0].max_inflight' must be between 1 and 100000 (got 0)" },
        { "route bad bool", "routes = ( { model = \"*\"; base_url = \"http://a\";"
                            " tls_verify = \"no\"; } );\n",
          KB_CONF_ERR_INVALID, 1, "'routes[0].tls_verify' must be a boolean" },
        { "routes not a list", "routes = { model = \"*\"; };\n",
          KB_CONF_ERR_INVALID, 1, "'routes' must be a list of groups" },
        { "routes empty", "routes = ();\n", KB_CONF_ERR_INVALID, 1,
          "'routes' must have at least one route" },
        { "route not a group", "routes = ( \"*\" );\n", KB_CONF_ERR_INVALID, 1,
          "'routes[0]' must be a group" },
        { "route header not a string",
          "routes = ( { model = \"*\"; base_url = \"http://a\";\n"
          "  headers = { X-A = 1; }; } );\n",
          KB_CONF_ERR_INVALID, 2, "'routes[0].headers.X-A' must be a string" },
        { "route header with newline",
          "routes = ( { model = \"*\"; base_url = \"http://a\";\n"
          "  headers = { X-A = \"a\\r\\nX-B: b\"; }; } );\n",
          KB_CONF_ERR_INVALID, 2, "must not contain control characters" },
        { "route operation path",
          "routes = ( { model = \"*\"; base_url = \"http://a\";\n"
          "  operations = { rerank = \"v1/rerank\"; }; } );\n",
          KB_CONF_ERR_INVALID, 2,
          "'routes[0].operations.rerank' must be a path starting with '/'" },
        { "route default_operation",
          "routes = ( { model = \"*\"; base_url = \"http://a\";"
          " default_operation = \"rerank\"; } );\n",
          KB_CONF_ERR_INVALID, 1,
          "'routes[0].default_operation' 'rerank' is not an operation" },
        { "route duplicate model",
          "routes = ( { model = \"*\"; base_url = \"http://a\"; },\n"
          "  { model = \"*\"; base_url = \"http://b\"; } );\n",
          KB_CONF_ERR_INVALID, 2, "'routes[1].model' '*' is already the model" },
        { "route duplicate name",
          "routes = ( { model = \"a\"; name = \"x\"; base_url = \"http://a\"; },\n"
          "  { model = \"b\"; name = \"x\"; base_url = \"http://b\"; } );\n",
          KB_CONF_ERR_INVALID, 2, "'routes[1].name' 'x' is already the name" },
        { "route name defaults to the model",
          "routes = ( { model = \"a\"; base_url = \"http://a\"; },\n"
          "  { model = \"b\"; name = \"a\"; base_url = \"http://b\"; } );\n",
          KB_CONF_ERR_INVALID, 2, "'routes[1].name' 'a' is already the name" },
        { "route unknown fallback",
          "routes = ( { model = \"a\"; base_url = \"http://a\";\n"
          "  fallback = \"nope\"; } );\n",
          KB_CONF_ERR_INVALID, 1,
          "'routes[0].fallback' 'nope' is not the name of another route" },
        { "route fallback to itself",
          "routes = ( { model = \"a\"; base_url = \"http://a\";\n"
          "  fallback = \"a\"; } );\n",
          KB_CONF_ERR_INVALID, 1,
          "'routes[0].fallback' 'a' is not the name of another route" },
        { "async route with a fallback",
          "routes = ( { model = \"a\"; base_url = \"http://a\"; fallback = \"b\";\n"
          "  mode = \"async\"; async = { submit_path = \"/s\"; id_pointer = \"/id\";\n"
          "    status_path = \"/s/{id}\"; status_pointer = \"/st\";\n"
          "    succeeded = [\"ok\"]; failed = [\"bad\"]; }; },\n"
          "  { model = \"b\"; base_url = \"http://b\"; } );\n",
          KB_CONF_ERR_INVALID, 1, "fallback routes must both be mode = \"sync\"" },
        { "async without submit_path",
          "routes = ( { model = \"a\"; base_url = \"http://a\";\n"
          "  mode = \"async\"; } );\n",
          KB_CONF_ERR_INVALID, 1,
          "'routes[0].async.submit_path' is required with mode = \"async\"" },
        { "async bad pointer",
          "routes = ( { model = \"a\"; base_url = \"http://a\";\n"
          "  async = { id_pointer = \"data/id\"; }; } );\n",
          KB_CONF_ERR_INVALID, 2, "is not a JSON Pointer" },
        { "async unknown key",
          "routes = ( { model = \"a\"; base_url = \"http://a\";\n"
          "  async = { pol_ms = 5; }; } );\n",
          KB_CONF_ERR_INVALID, 2, "did you mean 'poll_ms'?" },
        { "async succeeded not a list",
          "routes = ( { model = \"a\"; base_url = \"http://a\";\n"
          "  async = { succeeded = \"done\"; }; } );\n",
          KB_CONF_ERR_INVALID, 2, "must be a list of strings" },
        { "async poll_max below poll",
          "routes = ( { model = \"a\"; base_url = \"http://a\"; mode = \"async\";\n"
          "  async = { submit_path = \"/s\"; id_pointer = \"/id\";\n"
          "    status_path = \"/s/{id}\"; status_pointer = \"/st\";\n"
          "    succeeded = [\"ok\"]; failed = [\"bad\"]; poll_ms = 500;\n"
          "    poll_max_ms = 100; }; } );\n",
          KB_CONF_ERR_INVALID, 1, "poll_max_ms (100) must not be below poll_ms" },
        { "route breaker_failures range",
          "routes = ( { model = \"a\"; base_url = \"http://a\";\n"
          "  breaker_failures = 0; } );\n",
          KB_CONF_ERR_INVALID, 2, "'routes[0].breaker_failures' must be between" },
        /* cross-field */
        { "inprocess above max",
          "retry = {\n  max_attempts = 3;\n  inprocess_attempts = 4;\n};\n",
          KB_CONF_ERR_INVALID, 3,
          "'retry.inprocess_attempts' (4) must not exceed 'retry.max_attempts' "
          "(3)" },
        /* issue 15: limits consistent with the message size */
        { "item above message max",
          "kafka = { message_max_bytes = 1048576; };\n"
          "worker = { max_item_bytes = 2000000; };\n",
          KB_CONF_ERR_INVALID, 2,
          "'worker.max_item_bytes' (2000000) must not exceed "
          "'kafka.message_max_bytes' (1048576)" },
        { "producer message.max.bytes below copies",
          "kafka = {\n  properties = { message_max_bytes = 1000000; };\n};\n",
          KB_CONF_ERR_INVALID, 0,
          "'kafka.properties.message_max_bytes' must be at least "
          "kafka.message_max_bytes + 65536 (2162688)" },
        { "backoff base above max", "retry = { backoff_base_ms = 60000; };\n",
          KB_CONF_ERR_INVALID, 1,
          "'retry.backoff_base_ms' (60000) must not exceed" },
        { "avro without registry", "serde = {\n  format = \"avro\";\n};\n",
          KB_CONF_ERR_INVALID, 2,
          "'serde.schema_registry_url' must be set when 'serde.format' is "
          "\"avro\"" },
        { "replication 0", "topics = { replication = 0; };\n",
          KB_CONF_ERR_INVALID, 1, "'topics.replication' must be -1" },
        { "same group ids",
          "kafka = { aggregator_group_id = \"kbatch-workers\"; };\n",
          KB_CONF_ERR_INVALID, 1, "must differ" },
        { "same topics", "topics = {\n  results = \"items\";\n};\n",
          KB_CONF_ERR_INVALID, 2,
          "'topics.items' and 'topics.results' both name topic 'kbatch.items'" },
        { "topic name too long",
          "topics = { prefix = \"" 
          "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
          "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
          "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\";\n"
          "  items = \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"; };\n",
          KB_CONF_ERR_INVALID, 2, "is not a valid Kafka topic name" },
};

Test(conf, errors) {
        size_t i;
        for (i = 0; i < sizeof(err_cases) / sizeof(*err_cases); i++) {
                const err_case_t *ec = &err_cases[i];
                char err[1024] = "", prefix[512], *path = NULL;
                kb_conf_err_t kind = KB_CONF_OK;
                kb_conf_t *c = load_text(ec->text, &path, &kind, err,
                                         sizeof(err));
                cr_expect_null(c, "[%s] loaded", ec->name);
                kb_conf_destroy(c);
                cr_expect_eq(kind, ec->err, "[%s] kind %d, want %d (%s)",
                             ec->name, kind, ec->err, err);
                if (ec->line)
                        snprintf(prefix, sizeof(prefix), "%s:%d: ", path,
                                 ec->line);
                else
                        snprintf(prefix, sizeof(prefix), "%s:", path);
                cr_expect(!strncmp(err, prefix, strlen(prefix)),
                          "[%s] '%s' does not start with '%s'", ec->name, err,
                          prefix);
                cr_expect(strstr(err + strlen(prefix), ec->msg),
                          "[%s] '%s' lacks '%s'", ec->name, err, ec->msg);
                cr_expect_null(strchr(err, '\n'), "[%s] not one line",
                               ec->name);
                unlink(path);
                free(path);
        }
}

Test(conf, io_errors) {
        char err[512];
        kb_conf_err_t kind = KB_CONF_OK;
        char *dir = src_path("data");
        cr_expect_null(kb_conf_load("/nonexistent/worker.conf", &kind, err,
                                    sizeof(err)));
        cr_expect_eq(kind, KB_CONF_ERR_IO);
        cr_expect_str_eq(err,
                         "/nonexistent/worker.conf: No such file or directory");
        kind = KB_CONF_OK;
        cr_expect_null(kb_conf_load(dir, &kind, err, sizeof(err)));
        cr_expect_eq(kind, KB_CONF_ERR_IO);
        cr_expect(strstr(err, "Is a directory"), "%s", err);
        /* NULL errstr is allowed */
        cr_expect_null(kb_conf_load("/nonexistent", NULL, NULL, 0));
        free(dir);
}

Test(conf, include) {
        char err[512], *path = src_path("data/include.conf"), *bad;
        kb_conf_t *c = kb_conf_load(path, NULL, err, sizeof(err));
        cr_assert(c, "%s", err);
        cr_expect_eq(c->worker_max_inflight, 7);
        cr_expect_str_eq(c->log_level, "debug");
        kb_conf_destroy(c);
        /* an error in an included file names that file and its line */
        bad = src_path("data/include_bad.conf");
        cr_expect_null(kb_conf_load(bad, NULL, err, sizeof(err)));
        cr_expect(strstr(err, "data/included_bad.conf:3: 'log.level' must be one "
                              "of"),
                  "%s", err);
        free(bad);
        free(path);
}

/*
 * Environment
 */

Test(conf, env_overrides) {
        char err[512];
        kb_conf_t *c;
        setenv("KBATCH_KAFKA_BOOTSTRAP_SERVERS", "b1:9092,b2:9092", 1);
        setenv("KBATCH_WORKER_MAX_INFLIGHT", "42", 1);
        setenv("KBATCH_WORKER_ROLES", " items , notifier ", 1);
        setenv("KBATCH_RETRY_DELAYS_MS", "100,200", 1);
        setenv("KBATCH_SERDE_AUTO_REGISTER", "false", 1);
        setenv("KBATCH_AGGREGATOR_RETENTION_MS", "3000000000", 1);
        setenv("KBATCH_LOG_LEVEL", "debug", 1);
        setenv("KBATCH_ADMIN_LISTEN", "", 1);
        setenv("KBATCH_TOPICS_PREFIX", "", 1);
        setenv("KBATCH_KAFKA_PROPERTIES_SASL_USERNAME", "u", 1);
        c = kb_conf_load(NULL, NULL, err, sizeof(err));
        cr_assert(c, "%s", err);
        cr_expect_str_eq(c->kafka_bootstrap_servers, "b1:9092,b2:9092");
        cr_expect_eq(c->worker_max_inflight, 42);
        cr_expect_eq(c->worker_roles, KB_ROLE_ITEMS | KB_ROLE_NOTIFIER);
        cr_assert_eq(c->retry_delay_cnt, 2);
        cr_expect_eq(c->retry_delays_ms[1], 200);
        cr_expect_eq(c->serde_auto_register, 0);
        cr_expect_eq(c->aggregator_retention_ms, INT64_C(3000000000));
        cr_expect_str_eq(c->log_level, "debug");
        cr_expect_str_eq(c->admin_listen, "");
        cr_expect_str_eq(c->topics_name[KB_TOPIC_ITEMS], "items");
        cr_expect_str_eq(prop(c, "sasl.username"), "u");
        kb_conf_destroy(c);
}

/* The environment wins over the file. */
Test(conf, env_over_file) {
        char err[512];
        kb_conf_t *c;
        setenv("KBATCH_WORKER_MAX_INFLIGHT", "20", 1);
        setenv("KBATCH_KAFKA_PROPERTIES_SOCKET_TIMEOUT_MS", "7000", 1);
        c = load_text("worker = { max_inflight = 10; shutdown_drain_ms = 5; };\n"
                      "kafka = { properties = { socket_timeout_ms = 6000; }; };\n",
                      NULL, NULL, err, sizeof(err));
        cr_assert(c, "%s", err);
        cr_expect_eq(c->worker_max_inflight, 20);
        cr_expect_eq(c->worker_shutdown_drain_ms, 5);
        cr_expect_eq(c->kafka_property_cnt, 1);
        cr_expect_str_eq(prop(c, "socket.timeout.ms"), "7000");
        kb_conf_destroy(c);
        /* an env value can also fix what the file got wrong for a
         * cross-field check */
        setenv("KBATCH_RETRY_MAX_ATTEMPTS", "9", 1);
        c = load_text("retry = { inprocess_attempts = 8; };\n", NULL, NULL, err,
                      sizeof(err));
        cr_expect(c, "%s", err);
        kb_conf_destroy(c);
}

typedef struct {
        const char *var, *value, *msg;
} env_case_t;

static const env_case_t env_cases[] = {
        { "KBATCH_WORKER_MAX_INFLIGHT", "abc", "must be an integer" },
        { "KBATCH_WORKER_MAX_INFLIGHT", "12x", "must be an integer" },
        { "KBATCH_WORKER_MAX_INFLIGHT", "", "must be an integer" },
        { "KBATCH_WORKER_MAX_INFLIGHT", "0",
          "must be between 1 and 100000 (got 0)" },
        { "KBATCH_CONTROL_LOOKBACK_MS", "99999999999999999999",
          "(got 99999999999999999999)" },
        { "KBATCH_WORKER_ROLES", "items,bogus", "unknown role 'bogus'" },
        { "KBATCH_WORKER_ROLES", " , ", "must name at least one role" },
        { "KBATCH_RETRY_DELAYS_MS", "1,x",
          "must be a comma-separated list of integers" },
        { "KBATCH_RETRY_DELAYS_MS", "1,2,3,4,5,6,7,8,9,10,11",
          "between 1 and 10 entries (got 11)" },
        { "KBATCH_SERDE_AUTO_REGISTER", "maybe", "must be a boolean" },
        { "KBATCH_LOG_LEVEL", "loud", "must be one of debug, info" },
        { "KBATCH_KAFKA_BOOTSTRAP_SERVERS", "", "must not be empty" },
        { "KBATCH_RETRY_INPROCESS_ATTEMPTS", "9",
          "'retry.inprocess_attempts' (9) must not exceed" },
        { "KBATCH_KAFKA_PROPERTIES_SOCKET_TIMEOUT_MS", "zz",
          "kafka.properties: 'socket.timeout.ms': Invalid value" },
        { "KBATCH_KAFKA_PROPERTIES_GROUP_ID", "g",
          "kafka.properties: 'group.id' is set by kbatch" },
};

Test(conf, env_errors) {
        size_t i;
        for (i = 0; i < sizeof(env_cases) / sizeof(*env_cases); i++) {
                const env_case_t *ec = &env_cases[i];
                char err[1024], prefix[256];
                kb_conf_err_t kind = KB_CONF_OK;
                kb_conf_t *c;
                setenv(ec->var, ec->value, 1);
                c = kb_conf_load(NULL, &kind, err, sizeof(err));
                unsetenv(ec->var);
                cr_expect_null(c, "[%s=%s] loaded", ec->var, ec->value);
                kb_conf_destroy(c);
                cr_expect_eq(kind, KB_CONF_ERR_INVALID);
                snprintf(prefix, sizeof(prefix), "environment %s: ", ec->var);
                cr_expect(!strncmp(err, prefix, strlen(prefix)),
                          "[%s=%s] '%s' does not start with '%s'", ec->var,
                          ec->value, err, prefix);
                cr_expect(strstr(err, ec->msg), "[%s=%s] '%s' lacks '%s'",
                          ec->var, ec->value, err, ec->msg);
        }
}

/* Every setting reads its variable: a value no type accepts (a control
 * character) must be reported against it. */
Test(conf, env_every_setting) {
        const char *name, *env;
        size_t i;
        for (i = 0; (name = kb_conf_setting_name(i, &env)); i++) {
                char err[1024], prefix[256];
                kb_conf_t *c;
                setenv(env, "\x01", 1);
                c = kb_conf_load(NULL, NULL, err, sizeof(err));
                unsetenv(env);
                cr_expect_null(c, "%s ignored", env);
                kb_conf_destroy(c);
                snprintf(prefix, sizeof(prefix), "environment %s: ", env);
                cr_expect(!strncmp(err, prefix, strlen(prefix)), "%s: '%s'",
                          env, err);
        }
}

/*
 * kb_conf_default_path
 */

Test(conf, default_path) {
        char cwd[PATH_MAX], tmpl[] = "/tmp/kbatch-test-cwd-XXXXXX", *dir, f[600];
        FILE *fp;
        cr_assert(getcwd(cwd, sizeof(cwd)));
        cr_assert((dir = mkdtemp(tmpl)));
        cr_assert_eq(chdir(dir), 0);

        /* nothing: built-in defaults */
        cr_expect_null(kb_conf_default_path(NULL));
        /* ./worker.conf when it exists */
        snprintf(f, sizeof(f), "%s/worker.conf", dir);
        cr_assert((fp = fopen(f, "w")));
        fclose(fp);
        cr_expect_str_eq(kb_conf_default_path(NULL), "worker.conf");
        /* $KBATCH_CONFIG over ./worker.conf; empty is unset */
        setenv("KBATCH_CONFIG", "/etc/kbatch/worker.conf", 1);
        cr_expect_str_eq(kb_conf_default_path(NULL), "/etc/kbatch/worker.conf");
        setenv("KBATCH_CONFIG", "", 1);
        cr_expect_str_eq(kb_conf_default_path(NULL), "worker.conf");
        /* -c over everything */
        setenv("KBATCH_CONFIG", "/etc/kbatch/worker.conf", 1);
        cr_expect_str_eq(kb_conf_default_path("given.conf"), "given.conf");

        unsetenv("KBATCH_CONFIG");
        unlink(f);
        cr_assert_eq(chdir(cwd), 0);
        rmdir(dir);
}

Test(conf, misc) {
        cr_expect_str_eq(kb_conf_err_str(KB_CONF_OK), "ok");
        cr_expect_str_neq(kb_conf_err_str(KB_CONF_ERR_IO),
                          kb_conf_err_str(KB_CONF_ERR_SYNTAX));
        cr_expect_str_neq(kb_conf_err_str(KB_CONF_ERR_SYNTAX),
                          kb_conf_err_str(KB_CONF_ERR_INVALID));
        kb_conf_destroy(NULL);
}
