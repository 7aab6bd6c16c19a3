/* admin: see admin.h. */
#include "admin.h"

#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "log.h"
#include "loop.h"
#include "metrics.h"

struct kb_admin_s {
        struct MHD_Daemon *ad_mhd;
        int ad_port;
        _Atomic int64_t ad_heartbeat; /* kb_now_ms() of the last loop turn */
        _Atomic int ad_ready;
        pthread_mutex_t ad_lock; /* ad_why */
        char ad_why[512];
        int ad_published; /* kb_admin_set_ready called once */
};

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned int status,
                             const char *ctype, char *body, size_t len,
                             int must_free) {
        struct MHD_Response *r = MHD_create_response_from_buffer(
                len, body,
                must_free ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_MUST_COPY);
        enum MHD_Result ret;
        if (!r) {
                if (must_free)
                        free(body);
                return MHD_NO;
        }
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
        MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
        if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
                MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
        ret = MHD_queue_response(conn, status, r);
        MHD_destroy_response(r);
        return ret;
}

static enum MHD_Result reply_text(struct MHD_Connection *conn,
                                  unsigned int status, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
static enum MHD_Result reply_text(struct MHD_Connection *conn,
                                  unsigned int status, const char *fmt, ...) {
        char buf[1024];
        va_list ap;
        int n;
        va_start(ap, fmt);
        n = vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        if (n < 0)
                n = 0;
        if ((size_t)n >= sizeof(buf))
                n = sizeof(buf) - 1;
        return reply(conn, status, "text/plain; charset=utf-8", buf, (size_t)n,
                     0);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn,
                                  const char *url, const char *method,
                                  const char *version, const char *upload,
                                  size_t *upload_size, void **state) {
        kb_admin_t *ad = cls;
        (void)version;
        (void)upload;
        /* The first call only announces the headers; a body (there should
         * be none) arrives in between; answer on the last call. */
        if (!*state) {
                *state = ad;
                return MHD_YES;
        }
        if (*upload_size) {
                *upload_size = 0;
                return MHD_YES;
        }
        if (strcmp(method, MHD_HTTP_METHOD_GET) &&
            strcmp(method, MHD_HTTP_METHOD_HEAD))
                return reply_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED,
                                  "method not allowed\n");
        if (!strcmp(url, "/healthz")) {
                int64_t age = kb_now_ms() - atomic_load(&ad->ad_heartbeat);
                if (age < KB_ADMIN_STALE_MS)
                        return reply_text(conn, MHD_HTTP_OK, "ok\n");
                return reply_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE,
                                  "loop stalled: no heartbeat for %lld ms\n",
                                  (long long)age);
        }
        if (!strcmp(url, "/readyz")) {
                char why[sizeof(ad->ad_why)];
                if (atomic_load(&ad->ad_ready))
                        return reply_text(conn, MHD_HTTP_OK, "ready\n");
                pthread_mutex_lock(&ad->ad_lock);
                memcpy(why, ad->ad_why, sizeof(why));
                pthread_mutex_unlock(&ad->ad_lock);
                return reply_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE,
                                  "not ready: %s\n", why);
        }
        if (!strcmp(url, "/metrics")) {
                size_t len;
                char *body = kb_metrics_render(&len);
                if (!body)
                        return reply_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR,
                                          "out of memory\n");
                return reply(conn, MHD_HTTP_OK,
                             "text/plain; version=0.0.4; charset=utf-8", body,
                             len, 1);
        }
        if (!strcmp(url, "/"))
                return reply_text(conn, MHD_HTTP_OK,
                                  "kbatch admin\n"
                                  "/healthz  the loop is alive\n"
                                  "/readyz   group joined, producer "
                                  "connected, schema registry reachable\n"
                                  "/metrics  Prometheus metrics\n");
        return reply_text(conn, MHD_HTTP_NOT_FOUND, "not found\n");
}

void kb_admin_mhd_log(void *cls, const char *fmt, va_list ap) {
        char buf[512];
        size_t n;
        vsnprintf(buf, sizeof(buf), fmt, ap);
        n = strlen(buf);
        while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
                buf[--n] = '\0';
        kb_log(KB_LOG_WARN, cls ? (const char *)cls : "admin", "%s", buf);
}

/* Splits "HOST:PORT" / "[V6]:PORT" / ":PORT" into host (NULL: any IPv4)
 * and port. */
static int split_listen(const char *listen, char *host, size_t host_size,
                        char *port, size_t port_size) {
        const char *c = strrchr(listen, ':');
        size_t hl;
        if (!c || !c[1])
                return -1;
        snprintf(port, port_size, "%s", c + 1);
        hl = (size_t)(c - listen);
        if (hl >= 2 && listen[0] == '[' && listen[hl - 1] == ']') {
                listen++;
                hl -= 2;
        }
        if (hl >= host_size)
                return -1;
        memcpy(host, listen, hl);
        host[hl] = '\0';
        return 0;
}

struct addrinfo *kb_admin_resolve(const char *listen, const char *what,
                                  char *host, size_t host_size,
                                  char *errstr, size_t errstr_size) {
        char port[16];
        struct addrinfo hints, *ai = NULL;
        int rc;
        if (!listen ||
            split_listen(listen, host, host_size, port, sizeof(port)) != 0) {
                snprintf(errstr, errstr_size, "%s: bad address '%s' (HOST:PORT)",
                         what, listen ? listen : "");
                return NULL;
        }
        memset(&hints, 0, sizeof(hints));
        hints.ai_family = host[0] ? AF_UNSPEC : AF_INET;
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
        if ((rc = getaddrinfo(host[0] ? host : NULL, port, &hints, &ai)) != 0) {
                snprintf(errstr, errstr_size, "%s '%s': %s", what, listen,
                         gai_strerror(rc));
                return NULL;
        }
        return ai;
}

kb_admin_t *kb_admin_new(const char *listen, char *errstr, size_t errstr_size) {
        kb_admin_t *ad;
        char host[256];
        struct addrinfo *ai;
        const union MHD_DaemonInfo *di;
        unsigned int flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO |
                             MHD_USE_ERROR_LOG;

        if (!(ai = kb_admin_resolve(listen, "admin.listen", host, sizeof(host),
                                    errstr, errstr_size)))
                return NULL;
        if (!(ad = calloc(1, sizeof(*ad)))) {
                freeaddrinfo(ai);
                snprintf(errstr, errstr_size, "out of memory");
                return NULL;
        }
        pthread_mutex_init(&ad->ad_lock, NULL);
        atomic_store(&ad->ad_heartbeat, kb_now_ms());
        snprintf(ad->ad_why, sizeof(ad->ad_why), "starting");
        if (ai->ai_family == AF_INET6)
                flags |= MHD_USE_IPv6;
        errno = 0;
        /* The logger first: it applies to the options after it. */
        ad->ad_mhd = MHD_start_daemon(
                flags, 0, NULL, NULL, on_request, ad,
                MHD_OPTION_EXTERNAL_LOGGER, kb_admin_mhd_log, "admin", MHD_OPTION_SOCK_ADDR,
                ai->ai_addr, MHD_OPTION_CONNECTION_LIMIT, (unsigned int)64,
                MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)30,
                MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)32768,
                MHD_OPTION_END);
        freeaddrinfo(ai);
        if (!ad->ad_mhd) {
                snprintf(errstr, errstr_size,
                         "admin.listen '%s': cannot listen: %s", listen,
                         strerror(errno ? errno : EADDRINUSE));
                kb_admin_destroy(ad);
                return NULL;
        }
        di = MHD_get_daemon_info(ad->ad_mhd, MHD_DAEMON_INFO_BIND_PORT);
        ad->ad_port = di ? di->port : 0;
        kb_metrics_process_info();
        kb_log(KB_LOG_INFO, "admin",
               "admin server listening on %s%s%s:%d "
               "(/healthz, /readyz, /metrics)",
               strchr(host, ':') ? "[" : "", host[0] ? host : "0.0.0.0",
               strchr(host, ':') ? "]" : "", ad->ad_port);
        return ad;
}

void kb_admin_destroy(kb_admin_t *ad) {
        if (!ad)
                return;
        if (ad->ad_mhd)
                MHD_stop_daemon(ad->ad_mhd);
        pthread_mutex_destroy(&ad->ad_lock);
        free(ad);
}

int kb_admin_port(const kb_admin_t *ad) {
        return ad ? ad->ad_port : 0;
}

void kb_admin_heartbeat(kb_admin_t *ad, int64_t now_ms) {
        if (ad)
                atomic_store_explicit(&ad->ad_heartbeat, now_ms,
                                      memory_order_relaxed);
}

void kb_admin_set_ready(kb_admin_t *ad, int ready, const char *why) {
        int was, changed;
        if (!ad)
                return;
        ready = ready ? 1 : 0;
        if (!why)
                why = "";
        pthread_mutex_lock(&ad->ad_lock);
        was = atomic_load(&ad->ad_ready);
        changed = !ad->ad_published || was != ready ||
                  (!ready && strcmp(ad->ad_why, why));
        if (changed)
                snprintf(ad->ad_why, sizeof(ad->ad_why), "%s", why);
        ad->ad_published = 1;
        atomic_store(&ad->ad_ready, ready);
        pthread_mutex_unlock(&ad->ad_lock);
        if (!changed)
                return;
        kb_metric_set(kb_metrics_get(KB_M_READY, NULL, NULL), ready);
        if (ready)
                kb_log(KB_LOG_INFO, "admin", "ready");
        else
                kb_log(KB_LOG_INFO, "admin", "not ready: %s", why);
}
