/*
 * fake_registry - a minimal Confluent-compatible Schema Registry for tests.
 *
 * No real registry can be installed here (Confluent's is not on Maven
 * Central, Karapace is not on PyPI), so the tests use this one. It serves
 * the REST subset kbatch and the confluent-kafka Python client use, keeps
 * everything in memory, and does no compatibility checking:
 *   GET  /schemas/ids/{id}                 {"schema": "..."}
 *   POST /subjects/{subject}/versions      register -> {"id": N}
 *   POST /subjects/{subject}               look up  -> {"subject", "id",
 *                                            "version", "schema"}
 *   GET  /subjects, /subjects/{s}/versions, /subjects/{s}/versions/{v|latest}
 *   GET|PUT /config[/{subject}]            {"compatibilityLevel": "NONE"}
 * Errors are the registry's: {"error_code": 40403, "message": "..."}.
 * A schema is identified by its JSON text normalized (keys sorted, no
 * spaces): registering the same schema under any subject gives the same id,
 * as in Confluent's registry.
 *
 * For fault injection and tests:
 *   GET  /_fake/stats    {"requests": N, "by_path": {"GET /schemas/ids/1": n}}
 *   POST /_fake/config   {"delay_ms": N, "fail_status": 503 (0: off)}
 * Options: --port N (0: any), --port-file F, --host A, --delay-ms N,
 * --user U:P (basic auth required), --token T (bearer required),
 * --tls-cert F --tls-key F (HTTPS), --base-path P (the API only under P,
 * e.g. /apis/ccompat/v7 as Apicurio serves it). Prints "listening on
 * HOST:PORT".
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <microhttpd.h>

#define FR_MAX_BODY (16u << 20)

typedef struct fr_schema_s {
        int id;
        char *text; /* as first registered */
        char *norm; /* normalized, the identity */
} fr_schema_t;

typedef struct fr_subject_s {
        char *name;
        int *ids; /* version v is ids[v-1] */
        int cnt;
} fr_subject_t;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static fr_schema_t *schemas;
static int schema_cnt;
static fr_subject_t *subjects;
static int subject_cnt;
static json_t *by_path;
static long requests;
static int delay_ms;
static int fail_status;
static const char *auth_basic; /* "user:pass" */
static const char *auth_token;
static const char *base_path = ""; /* the API is served under it */

/* Normalized JSON text of a schema, or NULL when it is not JSON. */
static char *normalize(const char *text) {
        json_t *j = json_loads(text, JSON_DECODE_ANY, NULL);
        char *s;
        if (!j)
                return NULL;
        s = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
        json_decref(j);
        return s;
}

static fr_schema_t *schema_by_id(int id) {
        int i;
        for (i = 0; i < schema_cnt; i++)
                if (schemas[i].id == id)
                        return &schemas[i];
        return NULL;
}

static fr_schema_t *schema_by_norm(const char *norm) {
        int i;
        for (i = 0; i < schema_cnt; i++)
                if (!strcmp(schemas[i].norm, norm))
                        return &schemas[i];
        return NULL;
}

static fr_subject_t *subject_find(const char *name, int create) {
        int i;
        for (i = 0; i < subject_cnt; i++)
                if (!strcmp(subjects[i].name, name))
                        return &subjects[i];
        if (!create)
                return NULL;
        subjects = realloc(subjects, sizeof(*subjects) * (subject_cnt + 1));
        subjects[subject_cnt].name = strdup(name);
        subjects[subject_cnt].ids = NULL;
        subjects[subject_cnt].cnt = 0;
        return &subjects[subject_cnt++];
}

static int subject_version_of(const fr_subject_t *sb, int id) {
        int v;
        for (v = 0; v < sb->cnt; v++)
                if (sb->ids[v] == id)
                        return v + 1;
        return 0;
}

typedef struct fr_req_s {
        char *body;
        size_t len;
        int too_large;
} fr_req_t;

static enum MHD_Result reply(struct MHD_Connection *c, int status,
                             json_t *body) {
        char *s = json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY);
        struct MHD_Response *r;
        enum MHD_Result ret;
        json_decref(body);
        r = MHD_create_response_from_buffer(strlen(s), s,
                                            MHD_RESPMEM_MUST_FREE);
        MHD_add_response_header(r, "Content-Type",
                                "application/vnd.schemaregistry.v1+json");
        ret = MHD_queue_response(c, (unsigned)status, r);
        MHD_destroy_response(r);
        return ret;
}

static enum MHD_Result error(struct MHD_Connection *c, int status, int code,
                             const char *msg) {
        return reply(
                c, status,
                json_pack("{s:i,s:s}", "error_code", code, "message", msg));
}

static int authorized(struct MHD_Connection *c) {
        if (auth_basic) {
                char *pass = NULL;
                char *user = MHD_basic_auth_get_username_password(c, &pass);
                char buf[512];
                int ok;
                snprintf(buf, sizeof(buf), "%s:%s", user ? user : "",
                         pass ? pass : "");
                ok = user && !strcmp(buf, auth_basic);
                MHD_free(user);
                MHD_free(pass);
                if (!ok)
                        return 0;
        }
        if (auth_token) {
                const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                            "Authorization");
                char want[512];
                snprintf(want, sizeof(want), "Bearer %s", auth_token);
                if (!h || strcmp(h, want))
                        return 0;
        }
        return 1;
}

static json_t *subject_schema_json(const fr_subject_t *sb, int version) {
        fr_schema_t *s = schema_by_id(sb->ids[version - 1]);
        return json_pack("{s:s,s:i,s:i,s:s}", "subject", sb->name, "id", s->id,
                         "version", version, "schema", s->text);
}

/* The API, under the lock. */
static enum MHD_Result serve(struct MHD_Connection *c, const char *method,
                             const char *url, fr_req_t *rq) {
        char sub[1024];
        const char *p;
        int post = !strcmp(method, "POST"), get = !strcmp(method, "GET");

        if (!strncmp(url, "/schemas/ids/", 13) && get) {
                fr_schema_t *s = schema_by_id(atoi(url + 13));
                if (!s)
                        return error(c, 404, 40403, "Schema not found");
                return reply(c, 200, json_pack("{s:s}", "schema", s->text));
        }
        if (!strcmp(url, "/subjects") && get) {
                json_t *a = json_array();
                int i;
                for (i = 0; i < subject_cnt; i++)
                        json_array_append_new(a, json_string(subjects[i].name));
                return reply(c, 200, a);
        }
        if (!strncmp(url, "/config", 7)) {
                if (!strcmp(method, "PUT"))
                        return reply(
                                c, 200,
                                json_pack("{s:s}", "compatibility", "NONE"));
                return reply(c, 200,
                             json_pack("{s:s}", "compatibilityLevel", "NONE"));
        }
        if (strncmp(url, "/subjects/", 10))
                return error(c, 404, 404, "HTTP 404 Not Found");
        p = url + 10;
        {
                const char *e = strchr(p, '/');
                size_t n = e ? (size_t)(e - p) : strlen(p);
                if (n >= sizeof(sub))
                        return error(c, 404, 40401, "Subject not found");
                memcpy(sub, p, n);
                sub[n] = '\0';
                p = e ? e : p + n;
        }
        if (post && (!*p || !strcmp(p, "/versions"))) {
                json_t *b = rq->body ? json_loadb(rq->body, rq->len, 0, NULL)
                                     : NULL;
                const char *text =
                        json_string_value(json_object_get(b, "schema"));
                const char *type =
                        json_string_value(json_object_get(b, "schemaType"));
                char *norm = text ? normalize(text) : NULL;
                fr_schema_t *s;
                fr_subject_t *sb;
                enum MHD_Result ret;
                if (!norm || (type && strcmp(type, "AVRO"))) {
                        json_decref(b);
                        free(norm);
                        return error(c, 422, 42201, "Invalid schema");
                }
                s = schema_by_norm(norm);
                if (!*p) { /* look up */
                        int v;
                        sb = subject_find(sub, 0);
                        if (!sb)
                                ret = error(c, 404, 40401, "Subject not found");
                        else if (!s || !(v = subject_version_of(sb, s->id)))
                                ret = error(c, 404, 40403, "Schema not found");
                        else
                                ret = reply(c, 200, subject_schema_json(sb, v));
                        json_decref(b);
                        free(norm);
                        return ret;
                }
                if (!s) {
                        schemas = realloc(schemas,
                                          sizeof(*schemas) * (schema_cnt + 1));
                        s = &schemas[schema_cnt++];
                        s->id = schema_cnt;
                        s->text = strdup(text);
                        s->norm = norm;
                        norm = NULL;
                }
                sb = subject_find(sub, 1);
                if (!subject_version_of(sb, s->id)) {
                        sb->ids = realloc(sb->ids, sizeof(int) * (sb->cnt + 1));
                        sb->ids[sb->cnt++] = s->id;
                }
                free(norm);
                json_decref(b);
                return reply(c, 200, json_pack("{s:i}", "id", s->id));
        }
        if (get && !strcmp(p, "/versions")) {
                fr_subject_t *sb = subject_find(sub, 0);
                json_t *a;
                int v;
                if (!sb)
                        return error(c, 404, 40401, "Subject not found");
                a = json_array();
                for (v = 1; v <= sb->cnt; v++)
                        json_array_append_new(a, json_integer(v));
                return reply(c, 200, a);
        }
        if (get && !strncmp(p, "/versions/", 10)) {
                fr_subject_t *sb = subject_find(sub, 0);
                int v;
                if (!sb)
                        return error(c, 404, 40401, "Subject not found");
                v = !strcmp(p + 10, "latest") ? sb->cnt : atoi(p + 10);
                if (v < 1 || v > sb->cnt)
                        return error(c, 404, 40402, "Version not found");
                return reply(c, 200, subject_schema_json(sb, v));
        }
        return error(c, 404, 404, "HTTP 404 Not Found");
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c,
                                  const char *url, const char *method,
                                  const char *version, const char *data,
                                  size_t *data_size, void **con_cls) {
        fr_req_t *rq = *con_cls;
        char key[1200];
        int d, fs;
        enum MHD_Result ret;
        (void)cls;
        (void)version;

        if (!rq) {
                *con_cls = calloc(1, sizeof(fr_req_t));
                return *con_cls ? MHD_YES : MHD_NO;
        }
        if (*data_size) {
                if (rq->len + *data_size > FR_MAX_BODY)
                        rq->too_large = 1;
                else {
                        rq->body = realloc(rq->body, rq->len + *data_size + 1);
                        memcpy(rq->body + rq->len, data, *data_size);
                        rq->len += *data_size;
                        rq->body[rq->len] = '\0';
                }
                *data_size = 0;
                return MHD_YES;
        }
        if (!strncmp(url, "/_fake/", 7)) {
                pthread_mutex_lock(&lock);
                if (!strcmp(url, "/_fake/stats")) {
                        json_t *o = json_pack("{s:I,s:O}", "requests",
                                              (json_int_t)requests, "by_path",
                                              by_path);
                        pthread_mutex_unlock(&lock);
                        return reply(c, 200, o);
                }
                if (!strcmp(url, "/_fake/config") && rq->body) {
                        json_t *b = json_loadb(rq->body, rq->len, 0, NULL);
                        json_t *v;
                        if ((v = json_object_get(b, "delay_ms")))
                                delay_ms = (int)json_integer_value(v);
                        if ((v = json_object_get(b, "fail_status")))
                                fail_status = (int)json_integer_value(v);
                        json_decref(b);
                        pthread_mutex_unlock(&lock);
                        return reply(c, 200, json_pack("{s:b}", "ok", 1));
                }
                pthread_mutex_unlock(&lock);
                return error(c, 404, 404, "unknown fake endpoint");
        }
        pthread_mutex_lock(&lock);
        requests++;
        snprintf(key, sizeof(key), "%s %s", method, url);
        json_object_set_new(
                by_path, key,
                json_integer(json_integer_value(json_object_get(by_path, key)) +
                             1));
        d = delay_ms;
        fs = fail_status;
        pthread_mutex_unlock(&lock);
        if (d > 0)
                usleep((useconds_t)d * 1000);
        if (!authorized(c))
                return error(c, 401, 40101, "Unauthorized");
        if (fs)
                return error(c, fs, fs * 100 + 1, "injected failure");
        if (rq->too_large)
                return error(c, 413, 41301, "body too large");
        if (strncmp(url, base_path, strlen(base_path)) ||
            url[strlen(base_path)] != '/')
                return error(c, 404, 404, "HTTP 404 Not Found (base path)");
        pthread_mutex_lock(&lock);
        ret = serve(c, method, url + strlen(base_path), rq);
        pthread_mutex_unlock(&lock);
        return ret;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
        fr_req_t *rq = *con_cls;
        (void)cls;
        (void)c;
        (void)toe;
        if (rq) {
                free(rq->body);
                free(rq);
        }
        *con_cls = NULL;
}

static char *slurp(const char *path) {
        FILE *f = fopen(path, "rb");
        char *buf;
        long n;
        if (!f)
                return NULL;
        fseek(f, 0, SEEK_END);
        n = ftell(f);
        fseek(f, 0, SEEK_SET);
        buf = malloc((size_t)n + 1);
        if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
                free(buf);
                buf = NULL;
        }
        if (buf)
                buf[n] = '\0';
        fclose(f);
        return buf;
}

static void usage(FILE *out) {
        fprintf(out,
                "usage: fake_registry [--port N] [--port-file F] [--host A]\n"
                "         [--delay-ms N] [--user U:P] [--token T]\n"
                "         [--tls-cert F --tls-key F] [--base-path P]\n");
}

int main(int argc, char **argv) {
        static const struct option opts[] = {
                {"port", 1, NULL, 'p'},     {"port-file", 1, NULL, 'f'},
                {"host", 1, NULL, 'H'},     {"delay-ms", 1, NULL, 'd'},
                {"user", 1, NULL, 'u'},     {"token", 1, NULL, 't'},
                {"tls-cert", 1, NULL, 'c'}, {"tls-key", 1, NULL, 'k'},
                {"base-path", 1, NULL, 'b'}, {"help", 0, NULL, 'h'},
                {NULL, 0, NULL, 0}};
        const char *host = "127.0.0.1", *port_file = NULL;
        const char *cert_file = NULL, *key_file = NULL;
        char *cert = NULL, *key = NULL;
        int port = 0, o;
        unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD |
                         MHD_USE_THREAD_PER_CONNECTION | MHD_USE_ERROR_LOG;
        struct sockaddr_in sa;
        struct MHD_Daemon *d;
        const union MHD_DaemonInfo *di;
        sigset_t mask;

        while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
                switch (o) {
                case 'p':
                        port = atoi(optarg);
                        break;
                case 'f':
                        port_file = optarg;
                        break;
                case 'H':
                        host = optarg;
                        break;
                case 'd':
                        delay_ms = atoi(optarg);
                        break;
                case 'u':
                        auth_basic = optarg;
                        break;
                case 't':
                        auth_token = optarg;
                        break;
                case 'c':
                        cert_file = optarg;
                        break;
                case 'k':
                        key_file = optarg;
                        break;
                case 'b':
                        base_path = optarg;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                default:
                        usage(stderr);
                        return 2;
                }
        }
        by_path = json_object();
        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        pthread_sigmask(SIG_BLOCK, &mask, NULL);
        memset(&sa, 0, sizeof(sa));
        sa.sin_family = AF_INET;
        sa.sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
                fprintf(stderr, "fake_registry: --host must be an IPv4 "
                                "address\n");
                return 2;
        }
        if (cert_file || key_file) {
                if (!cert_file || !key_file || !(cert = slurp(cert_file)) ||
                    !(key = slurp(key_file))) {
                        fprintf(stderr, "fake_registry: cannot read the TLS "
                                        "certificate and key\n");
                        return 2;
                }
                flags |= MHD_USE_TLS;
        }
        d = cert ? MHD_start_daemon(flags, (uint16_t)port, NULL, NULL,
                                    on_request, NULL, MHD_OPTION_SOCK_ADDR, &sa,
                                    MHD_OPTION_NOTIFY_COMPLETED, on_completed,
                                    NULL, MHD_OPTION_HTTPS_MEM_CERT, cert,
                                    MHD_OPTION_HTTPS_MEM_KEY, key,
                                    MHD_OPTION_END)
                 : MHD_start_daemon(flags, (uint16_t)port, NULL, NULL,
                                    on_request, NULL, MHD_OPTION_SOCK_ADDR, &sa,
                                    MHD_OPTION_NOTIFY_COMPLETED, on_completed,
                                    NULL, MHD_OPTION_END);
        if (!d) {
                fprintf(stderr, "fake_registry: cannot listen on %s:%d\n", host,
                        port);
                return 1;
        }
        di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
        if (port_file) {
                FILE *f = fopen(port_file, "w");
                if (f) {
                        fprintf(f, "%u\n", (unsigned)di->port);
                        fclose(f);
                }
        }
        printf("listening on %s:%u\n", host, (unsigned)di->port);
        fflush(stdout);
        /* SIGTERM/SIGINT were blocked before any thread started: wait for
         * one here (no race between a flag check and pause()). */
        {
                int got;
                sigwait(&mask, &got);
        }
        MHD_stop_daemon(d);
        free(cert);
        free(key);
        return 0;
}
