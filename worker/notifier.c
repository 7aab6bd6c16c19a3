/* notifier: see notifier.h.
 *
 * Life of an event (one consumed message):
 *   consumed -> [decode, URL check] -> READY (waits for an in-flight slot)
 *            -> RESOLVING (getaddrinfo_a) -> CALLING (transfer on the multi
 *            handle) -> delivered: offset done, event freed;
 *   a failed attempt -> WAITING (backoff timer) -> READY ...;
 *   given up or refused -> PRODUCING (DLQ copy) -> acknowledged: offset
 *            done, event freed.
 * An event owns its rd_kafka_message_t, its body, its resolver request,
 * its CURL handle and headers, and is freed in one place (ev_destroy). */
#include "notifier.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <netdb.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "http.h"
#include "kafka.h"
#include "log.h"
#include "offsets.h"
#include "partset.h"
#include "role.h"
#include "serde.h"
#include "ssrf.h"

/* glibc's sys/queue.h lacks the _SAFE iterators. */
#ifndef LIST_FOREACH_SAFE
#define LIST_FOREACH_SAFE(var, head, field, tvar)                              \
        for ((var) = LIST_FIRST((head));                                       \
             (var) && ((tvar) = LIST_NEXT((var), field), 1); (var) = (tvar))
#endif
#ifndef TAILQ_FOREACH_SAFE
#define TAILQ_FOREACH_SAFE(var, head, field, tvar)                             \
        for ((var) = TAILQ_FIRST((head));                                      \
             (var) && ((tvar) = TAILQ_NEXT((var), field), 1); (var) = (tvar))
#endif

#define KB_NT_KEEP_BODY   512   /* response bytes kept for the error message */
#define KB_NT_MAX_BODY    65536 /* response bytes read before hanging up */
#define KB_NT_DNS_POLL_MS 5     /* how often pending resolutions are checked */
#define KB_NT_RESOLVE_MAX 2048  /* CURLOPT_RESOLVE entry */

/* ---- pure helpers ------------------------------------------------------ */

int kb_notifier_sign(const void *secret, size_t secret_len, int64_t t,
                     const void *body, size_t body_len, char *out,
                     size_t out_size) {
        unsigned char mac[EVP_MAX_MD_SIZE];
        unsigned int mac_len = 0;
        char prefix[32];
        int plen, n;
        unsigned char *msg;
        unsigned i;

        if (out_size < KB_NOTIFIER_SIG_MAX)
                return -1;
        plen = snprintf(prefix, sizeof(prefix), "%lld.", (long long)t);
        if (!(msg = malloc((size_t)plen + body_len + 1)))
                return -1;
        memcpy(msg, prefix, (size_t)plen);
        if (body_len)
                memcpy(msg + plen, body, body_len);
        if (!HMAC(EVP_sha256(), secret_len ? secret : "", (int)secret_len, msg,
                  (size_t)plen + body_len, mac, &mac_len)) {
                free(msg);
                return -1;
        }
        free(msg);
        n = snprintf(out, out_size, "t=%lld,v1=", (long long)t);
        for (i = 0; i < mac_len && (size_t)n + 2 < out_size; i++)
                n += snprintf(out + n, out_size - (size_t)n, "%02x", mac[i]);
        OPENSSL_cleanse(mac, sizeof(mac));
        return n;
}

int64_t kb_notifier_backoff_ms(int base_ms, int max_ms, int n, uint32_t rnd) {
        int64_t d = base_ms > 0 ? base_ms : 0;
        while (n-- > 1 && d < max_ms)
                d *= 2;
        if (d > max_ms)
                d = max_ms;
        if (d <= 0)
                return 0;
        return d / 2 +
               (int64_t)(((uint64_t)rnd * (uint64_t)(d - d / 2 + 1)) >> 32);
}

int64_t kb_notifier_retry_wait(const kb_conf_t *conf, int attempts,
                               int64_t age_ms, int64_t retry_after_ms,
                               uint32_t rnd) {
        int64_t wait, left;
        if (age_ms < 0)
                age_ms = 0;
        if (attempts >= conf->notifier_max_attempts ||
            age_ms >= conf->notifier_max_age_ms)
                return -1;
        wait = kb_notifier_backoff_ms(conf->notifier_backoff_base_ms,
                                      conf->notifier_backoff_max_ms, attempts,
                                      rnd);
        if (retry_after_ms > wait)
                wait = retry_after_ms < conf->notifier_backoff_max_ms
                               ? retry_after_ms
                               : conf->notifier_backoff_max_ms;
        left = conf->notifier_max_age_ms - age_ms;
        if (wait > left)
                wait = left;
        return wait;
}

/* ---- types -------------------------------------------------------------- */

typedef enum {
        EV_NEW = 0,
        EV_READY,     /* on nt_ready: waits for an in-flight slot */
        EV_RESOLVING, /* on nt_resolving: getaddrinfo_a under way */
        EV_CALLING,   /* transfer on the multi handle */
        EV_WAITING,   /* on nt_timers: backoff, or decode again */
        EV_PRODUCING, /* DLQ copy with the producer (or on nt_prodq) */
} ev_state_t;

/* A getaddrinfo_a request. Freed when answered; one the notifier stopped
 * waiting for (timeout, revocation) is kept on nt_orphans until glibc is
 * done with it. */
typedef struct kb_gai_s {
        struct gaicb g_cb;
        struct addrinfo g_hints;
        char *g_name;
        int64_t g_deadline;          /* mono ms */
        LIST_ENTRY(kb_gai_s) g_link; /* nt_orphans */
} kb_gai_t;

typedef struct kb_nevent_s kb_nevent_t;

struct kb_nevent_s {
        kb_xfer_t ev_xfer; /* CURLOPT_PRIVATE points here */
        kb_notifier_t *ev_nt;
        LIST_ENTRY(kb_nevent_s) ev_all;
        /* on nt_ready, nt_resolving or nt_timers: */
        TAILQ_ENTRY(kb_nevent_s) ev_link;
        ev_state_t ev_state;
        kb_prodq_node_t ev_pqn; /* on nt_prodq */
        rd_kafka_message_t *ev_msg; /* owned */
        kb_part_t *ev_part;        /* NULL: orphaned by a revocation */
        uint64_t ev_epoch;
        int64_t ev_offset;
        int64_t ev_ts; /* wall ms: the message timestamp */
        int ev_decoded;
        int ev_decode_tries;
        const char *ev_body; /* the POST body: the message value
                              * (json) or ev_body_own (avro) */
        size_t ev_body_len;
        char *ev_body_own;
        char ev_id[320]; /* kbatch-event-id */
        char ev_batch[160];
        kb_ssrf_url_t ev_url;
        kb_gai_t *ev_gai;
        kb_http_req_t ev_http; /* keeps KB_NT_KEEP_BODY of the body, hangs
                                * up after KB_NT_MAX_BODY */
        struct curl_slist *ev_resolve;
        int ev_refused;   /* the connect-time guard refused */
        char ev_refused_why[128];
        int ev_attempts;
        int64_t ev_first_at;   /* wall ms of the first attempt */
        int64_t ev_due;        /* mono ms, on nt_timers */
        char ev_code[32];      /* DLQ: kbatch-error-code */
        char *ev_dlq_msg;      /* DLQ: kbatch-error-message, owned */
};

TAILQ_HEAD(kb_nevq_s, kb_nevent_s);

struct kb_notifier_s {
        kb_role_t nt_role; /* first: the clients' opaque (role.h) */
        const kb_conf_t *nt_conf;
        kb_loop_t *nt_loop;
        const char *nt_topic;  /* batches, borrowed from the config */
        const char *nt_dlq;    /* batches DLQ */
        const char *nt_worker; /* instance id */
        rd_kafka_t *nt_consumer;
        rd_kafka_t *nt_producer;
        rd_kafka_queue_t *nt_cq;
        rd_kafka_queue_t *nt_pq;
        kb_serde_t *nt_serde;
        char *nt_secret; /* owned, never logged */
        size_t nt_secret_len;
        time_t nt_secret_mtime;
        int64_t nt_secret_checked;
        kb_partset_t *nt_ps; /* assigned partitions, commits */
        LIST_HEAD(, kb_nevent_s) nt_events;
        struct kb_nevq_s nt_ready;
        struct kb_nevq_s nt_resolving;
        struct kb_nevq_s nt_timers; /* sorted by ev_due */
        kb_prodq_t nt_prodq;        /* DLQ copies to produce again */
        LIST_HEAD(, kb_gai_s) nt_orphans;
        int nt_events_cnt; /* events alive */
        int nt_active;     /* RESOLVING + CALLING */
        int nt_stopping;
        int nt_fatal;
};

/* ---- partitions -------------------------------------------------------- */

static int part_current(const kb_nevent_t *ev) {
        return kb_part_current(ev->ev_part, ev->ev_epoch);
}

/* ---- the resolver ------------------------------------------------------ */

static void gai_free(kb_gai_t *g) {
        if (!g)
                return;
        if (g->g_cb.ar_result)
                freeaddrinfo(g->g_cb.ar_result);
        free(g->g_name);
        free(g);
}

/* Stops waiting for a request: freed now when glibc is done with it, else
 * kept on the orphan list. */
static void gai_abandon(kb_notifier_t *nt, kb_gai_t *g) {
        int r;
        if (!g)
                return;
        r = gai_error(&g->g_cb);
        if (r == EAI_INPROGRESS) {
                r = gai_cancel(&g->g_cb);
                if (r != EAI_CANCELED && r != EAI_ALLDONE) {
                        LIST_INSERT_HEAD(&nt->nt_orphans, g, g_link);
                        return;
                }
        }
        gai_free(g);
}

static void orphans_serve(kb_notifier_t *nt) {
        kb_gai_t *g, *tmp;
        LIST_FOREACH_SAFE(g, &nt->nt_orphans, g_link, tmp) {
                if (gai_error(&g->g_cb) == EAI_INPROGRESS)
                        continue;
                LIST_REMOVE(g, g_link);
                gai_free(g);
        }
}

/* ---- events -------------------------------------------------------------- */

static void ev_unlink(kb_nevent_t *ev) {
        kb_notifier_t *nt = ev->ev_nt;
        switch (ev->ev_state) {
        case EV_READY:
                TAILQ_REMOVE(&nt->nt_ready, ev, ev_link);
                break;
        case EV_RESOLVING:
                TAILQ_REMOVE(&nt->nt_resolving, ev, ev_link);
                nt->nt_active--;
                break;
        case EV_WAITING:
                TAILQ_REMOVE(&nt->nt_timers, ev, ev_link);
                break;
        case EV_PRODUCING:
                kb_prodq_remove(&nt->nt_prodq, &ev->ev_pqn);
                break;
        default:
                break;
        }
        ev->ev_state = EV_NEW;
}

/* Drops what one attempt held: the transfer, its headers, the resolver
 * request. */
static void ev_attempt_clear(kb_nevent_t *ev) {
        kb_notifier_t *nt = ev->ev_nt;
        if (ev->ev_http.hr_easy && ev->ev_state == EV_CALLING) {
                kb_loop_remove(nt->nt_loop, ev->ev_http.hr_easy);
                nt->nt_active--;
                ev->ev_state = EV_NEW;
        }
        kb_http_req_release(&ev->ev_http, NULL);
        curl_slist_free_all(ev->ev_resolve);
        ev->ev_resolve = NULL;
        if (ev->ev_gai) {
                gai_abandon(nt, ev->ev_gai);
                ev->ev_gai = NULL;
        }
}

static void ev_destroy(kb_nevent_t *ev) {
        kb_notifier_t *nt = ev->ev_nt;
        ev_attempt_clear(ev);
        ev_unlink(ev);
        kb_ssrf_url_clear(&ev->ev_url);
        free(ev->ev_body_own);
        free(ev->ev_dlq_msg);
        if (ev->ev_msg)
                rd_kafka_message_destroy(ev->ev_msg);
        kb_part_work_end(ev->ev_part, ev->ev_epoch);
        LIST_REMOVE(ev, ev_all);
        nt->nt_events_cnt--;
        free(ev);
}

/* Delivered, skipped or dead-lettered: the offset is done. */
static void ev_finish(kb_nevent_t *ev) {
        if (part_current(ev))
                kb_offsets_mark_done(ev->ev_part->pt_ot, ev->ev_offset);
        ev_destroy(ev);
}

static void ev_log(kb_nevent_t *ev, kb_log_level_t lvl, const char *code,
                   const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void ev_log(kb_nevent_t *ev, kb_log_level_t lvl, const char *code,
                   const char *fmt, ...) {
        char msg[1400], att[16];
        va_list ap;
        const char *kv[] = {
                "batch_id",
                ev->ev_batch,
                "event_id",
                ev->ev_id,
                "url",
                ev->ev_url.su_origin[0] ? ev->ev_url.su_origin : NULL,
                "attempts",
                att,
                "code",
                code,
                NULL};
        if (!kb_log_enabled(lvl))
                return;
        snprintf(att, sizeof(att), "%d", ev->ev_attempts);
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        kb_logkv(lvl, "notifier", kv, "%s", msg);
}

/* ---- dead letters ---------------------------------------------------- */

static void set_header(rd_kafka_headers_t *h, const char *name, const char *fmt,
                       ...) __attribute__((format(printf, 3, 4)));
static void set_header(rd_kafka_headers_t *h, const char *name, const char *fmt,
                       ...) {
        char buf[1100];
        va_list ap;
        int n;
        va_start(ap, fmt);
        n = vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        if (n < 0)
                return;
        if ((size_t)n >= sizeof(buf))
                n = sizeof(buf) - 1;
        rd_kafka_header_remove(h, name);
        rd_kafka_header_add(h, name, -1, buf, n);
}

static rd_kafka_headers_t *dlq_headers(kb_nevent_t *ev) {
        const rd_kafka_message_t *m = ev->ev_msg;
        rd_kafka_headers_t *orig = NULL, *h;
        rd_kafka_timestamp_type_t tt;
        if (rd_kafka_message_headers(m, &orig) == RD_KAFKA_RESP_ERR_NO_ERROR)
                h = rd_kafka_headers_copy(orig);
        else
                h = rd_kafka_headers_new(10);
        set_header(h, "kbatch-attempts", "%d", ev->ev_attempts);
        set_header(h, "kbatch-error-code", "%s", ev->ev_code);
        set_header(h, "kbatch-error-message", "%.1024s",
                   ev->ev_dlq_msg ? ev->ev_dlq_msg : "");
        set_header(h, "kbatch-original-topic", "%s",
                   rd_kafka_topic_name(m->rkt));
        set_header(h, "kbatch-original-partition", "%d", (int)m->partition);
        set_header(h, "kbatch-original-offset", "%lld", (long long)m->offset);
        set_header(h, "kbatch-original-timestamp", "%lld",
                   (long long)rd_kafka_message_timestamp(m, &tt));
        set_header(h, "kbatch-first-attempt-at", "%lld",
                   (long long)ev->ev_first_at);
        set_header(h, "kbatch-worker", "%s", ev->ev_nt->nt_worker);
        return h;
}

/* The DLQ copy can never be produced (too large for the topic, refused):
 * producing it again would loop forever and hold the partition. The event
 * ends here, loudly. */
static void dlq_impossible(kb_nevent_t *ev, rd_kafka_resp_err_t err) {
        ev_log(ev, KB_LOG_ERROR, "dlq_failed",
               "the event cannot be dead-lettered to %s: %s; it is dropped "
               "(its batch event stays on the batches topic)",
               ev->ev_nt->nt_dlq, rd_kafka_err2str(err));
        ev_finish(ev);
}

static void ev_produce(kb_nevent_t *ev) {
        kb_notifier_t *nt = ev->ev_nt;
        const rd_kafka_message_t *m = ev->ev_msg;
        rd_kafka_headers_t *h = dlq_headers(ev);
        rd_kafka_resp_err_t err;
        ev->ev_state = EV_PRODUCING;
        err = rd_kafka_producev(nt->nt_producer, RD_KAFKA_V_TOPIC(nt->nt_dlq),
                                RD_KAFKA_V_KEY(m->key, m->key_len),
                                RD_KAFKA_V_VALUE(m->payload, m->len),
                                RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_OPAQUE(ev),
                                RD_KAFKA_V_END);
        if (err) {
                rd_kafka_headers_destroy(h);
                if (kb_kafka_produce_err_permanent(err)) {
                        dlq_impossible(ev, err);
                        return;
                }
                if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
                        kb_log(KB_LOG_WARN, "notifier",
                               "produce to %s failed: %s (will retry)",
                               nt->nt_dlq, rd_kafka_err2str(err));
                kb_prodq_later(&nt->nt_prodq, &ev->ev_pqn, kb_now_ms() + 100);
        }
}

/* Ends the event with a DLQ copy (code: kbatch-error-code). */
static void ev_dead_letter(kb_nevent_t *ev, const char *code, const char *msg) {
        ev_attempt_clear(ev);
        ev_unlink(ev);
        if (!ev->ev_first_at)
                ev->ev_first_at = kb_wall_ms();
        snprintf(ev->ev_code, sizeof(ev->ev_code), "%s", code);
        free(ev->ev_dlq_msg);
        ev->ev_dlq_msg = strdup(msg ? msg : "");
        ev_log(ev, KB_LOG_WARN, code, "webhook dead-lettered: %s", msg);
        ev_produce(ev);
}

static void dr_msg_cb(rd_kafka_t *rk, const rd_kafka_message_t *m,
                      void *opaque) {
        kb_nevent_t *ev = m->_private;
        kb_notifier_t *nt;
        if (!ev)
                return;
        nt = ev->ev_nt;
        if (m->err && kb_kafka_produce_err_permanent(m->err)) {
                dlq_impossible(ev, m->err);
                return;
        }
        if (m->err) {
                kb_log(KB_LOG_WARN, "notifier",
                       "delivery to %s failed: %s (will produce again)",
                       nt->nt_dlq, rd_kafka_err2str(m->err));
                kb_prodq_later(&nt->nt_prodq, &ev->ev_pqn,
                               kb_now_ms() + 1000);
                return;
        }
        ev_finish(ev);
}

#define PQN_EV(n) \
        ((kb_nevent_t *)(void *)((char *)(n) - offsetof(kb_nevent_t, ev_pqn)))

static void prodq_produce(kb_prodq_node_t *n) { ev_produce(PQN_EV(n)); }

/* Produces again the DLQ copies that are due (not before `now`,
 * kb_prodq_serve). Returns the ms until the next one is due. */
static int prodq_serve(kb_notifier_t *nt, int64_t now) {
        return kb_prodq_serve(&nt->nt_prodq, now, prodq_produce);
}

/* ---- timers and the ready queue ----------------------------------------- */

static void timer_add(kb_notifier_t *nt, kb_nevent_t *ev, int64_t due) {
        kb_nevent_t *after;
        ev_unlink(ev);
        ev->ev_state = EV_WAITING;
        ev->ev_due = due;
        after = TAILQ_LAST(&nt->nt_timers, kb_nevq_s);
        while (after && after->ev_due > due)
                after = TAILQ_PREV(after, kb_nevq_s, ev_link);
        if (after)
                TAILQ_INSERT_AFTER(&nt->nt_timers, after, ev, ev_link);
        else
                TAILQ_INSERT_HEAD(&nt->nt_timers, ev, ev_link);
}

/* Queues an event for its next attempt; head: ahead of fresh events (it
 * already waited). */
static void ev_ready(kb_notifier_t *nt, kb_nevent_t *ev, int head) {
        ev_unlink(ev);
        ev->ev_state = EV_READY;
        if (head)
                TAILQ_INSERT_HEAD(&nt->nt_ready, ev, ev_link);
        else
                TAILQ_INSERT_TAIL(&nt->nt_ready, ev, ev_link);
}

/* ---- the secret --------------------------------------------------------- */

static void secret_set(kb_notifier_t *nt, char *s, size_t len) {
        if (nt->nt_secret) {
                OPENSSL_cleanse(nt->nt_secret, nt->nt_secret_len);
                free(nt->nt_secret);
        }
        nt->nt_secret = s;
        nt->nt_secret_len = len;
}

/* Reads the secret file: its content without trailing CR/LF. Returns 0,
 * or -1 with errstr (never the content). */
static int secret_read_file(kb_notifier_t *nt, char *errstr,
                            size_t errstr_size) {
        const char *path = nt->nt_conf->notifier_secret_file;
        struct stat st;
        char *buf;
        ssize_t r;
        size_t len = 0;
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || fstat(fd, &st) != 0) {
                snprintf(errstr, errstr_size, "notifier.secret_file %s: %s",
                         path, strerror(errno));
                if (fd >= 0)
                        close(fd);
                return -1;
        }
        if (st.st_size > 65536) {
                snprintf(errstr, errstr_size,
                         "notifier.secret_file %s: larger than 64 KiB", path);
                close(fd);
                return -1;
        }
        if (!(buf = malloc((size_t)st.st_size + 1))) {
                close(fd);
                snprintf(errstr, errstr_size, "out of memory");
                return -1;
        }
        while (len < (size_t)st.st_size &&
               (r = read(fd, buf + len, (size_t)st.st_size - len)) > 0)
                len += (size_t)r;
        close(fd);
        while (len && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
                len--;
        buf[len] = '\0';
        if (!len) {
                free(buf);
                snprintf(errstr, errstr_size,
                         "notifier.secret_file %s is empty", path);
                return -1;
        }
        secret_set(nt, buf, len);
        nt->nt_secret_mtime = st.st_mtime;
        return 0;
}

/* Re-reads the secret file when it changed (at most once a second), as
 * mounted Kubernetes secrets rotate. */
static void secret_refresh(kb_notifier_t *nt, int64_t now) {
        const char *path = nt->nt_conf->notifier_secret_file;
        struct stat st;
        char err[512];
        if (!path || !*path || now - nt->nt_secret_checked < 1000)
                return;
        nt->nt_secret_checked = now;
        if (stat(path, &st) != 0 ||
            (nt->nt_secret && st.st_mtime == nt->nt_secret_mtime))
                return;
        if (secret_read_file(nt, err, sizeof(err)) != 0) {
                kb_log(KB_LOG_WARN, "notifier", "%s (keeping the old secret)",
                       err);
                return;
        }
        kb_log(KB_LOG_INFO, "notifier", "notifier.secret_file %s reloaded",
               path);
}

/* ---- attempts ---------------------------------------------------------- */

static void attempt_failed(kb_nevent_t *ev, const char *what);

/* The connect-time guard: every address libcurl is about to connect to is
 * classified again, whatever the pinning did. */
static curl_socket_t opensocket_cb(void *clientp, curlsocktype purpose,
                                   struct curl_sockaddr *addr) {
        kb_nevent_t *ev = clientp;
        kb_ssrf_class_t cls = kb_ssrf_classify(&addr->addr);
        if (!kb_ssrf_allowed(cls, ev->ev_nt->nt_conf->notifier_allow_private)) {
                ev->ev_refused = 1;
                snprintf(ev->ev_refused_why, sizeof(ev->ev_refused_why),
                         "connects to a forbidden address (%s)",
                         kb_ssrf_class_str(cls));
                return CURL_SOCKET_BAD;
        }
        return socket(addr->family, addr->socktype | SOCK_CLOEXEC,
                      addr->protocol);
}

static void call_done(kb_xfer_t *xf, CURLcode cc);

/* Starts the POST; resolve: the CURLOPT_RESOLVE entry pinning the host, or
 * NULL for an IP literal. A failure to build it counts as a failed
 * attempt. */
static void ev_call(kb_nevent_t *ev, const char *resolve) {
        kb_notifier_t *nt = ev->ev_nt;
        const kb_conf_t *conf = nt->nt_conf;
        kb_http_req_t *hr = &ev->ev_http;
        char sig[KB_NOTIFIER_SIG_MAX];
        CURL *e;

        ev_unlink(ev);
        ev->ev_refused = 0;
        if (!(e = kb_http_req_reset(hr, NULL, KB_NT_MAX_BODY,
                                    KB_NT_KEEP_BODY)) ||
            kb_notifier_sign(nt->nt_secret, nt->nt_secret_len,
                             (int64_t)time(NULL), ev->ev_body, ev->ev_body_len,
                             sig, sizeof(sig)) < 0 ||
            kb_http_req_header(hr, "Content-Type: application/json") ||
            kb_http_req_headerf(hr, "kbatch-event-id: %s", ev->ev_id) ||
            kb_http_req_headerf(hr, "kbatch-signature: %s", sig) ||
            kb_http_req_headerf(hr, "kbatch-attempt: %d", ev->ev_attempts) ||
            kb_http_req_headerf(hr, "User-Agent: kbatch/%s", KB_VERSION) ||
            kb_http_req_header(hr, "Expect:")) {
                OPENSSL_cleanse(sig, sizeof(sig));
                attempt_failed(ev, "out of memory building the request");
                return;
        }
        OPENSSL_cleanse(sig, sizeof(sig));
        if (resolve && !(ev->ev_resolve = curl_slist_append(NULL, resolve))) {
                attempt_failed(ev, "out of memory building the request");
                return;
        }
        ev->ev_xfer.xf_done = call_done;
        kb_http_req_prepare(hr, &ev->ev_xfer, ev->ev_url.su_url, ev->ev_body,
                            ev->ev_body_len, (long)conf->notifier_timeout_ms,
                            (long)conf->notifier_timeout_ms);
        curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
        /* Webhooks go direct: an http_proxy from the environment would
         * make the pinning moot. */
        curl_easy_setopt(e, CURLOPT_PROXY, "");
        if (ev->ev_resolve)
                curl_easy_setopt(e, CURLOPT_RESOLVE, ev->ev_resolve);
        curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, opensocket_cb);
        curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, ev);
        curl_easy_setopt(e, CURLOPT_POST, 1L);
        if (kb_http_req_start(hr, nt->nt_loop) != 0) {
                attempt_failed(ev, "cannot start the request");
                return;
        }
        ev->ev_state = EV_CALLING;
        nt->nt_active++;
}

/* Starts attempt number ev_attempts + 1: a literal host is called at once,
 * a name is resolved first. */
static void ev_attempt(kb_nevent_t *ev, int64_t now) {
        kb_notifier_t *nt = ev->ev_nt;
        kb_gai_t *g;
        struct gaicb *list[1];
        int r;

        ev_unlink(ev);
        ev->ev_attempts++;
        if (!ev->ev_first_at)
                ev->ev_first_at = kb_wall_ms();
        secret_refresh(nt, now);
        if (!nt->nt_secret) {
                char why[512];
                snprintf(why, sizeof(why),
                         "no webhook signing secret (set $%s or "
                         "notifier.secret_file)",
                         nt->nt_conf->notifier_secret_env);
                attempt_failed(ev, why);
                return;
        }
        if (ev->ev_url.su_literal) {
                ev_call(ev, NULL);
                return;
        }
        if (!(g = calloc(1, sizeof(*g))) ||
            !(g->g_name = strdup(ev->ev_url.su_host))) {
                free(g);
                attempt_failed(ev, "out of memory resolving the host");
                return;
        }
        g->g_hints.ai_family = AF_UNSPEC;
        g->g_hints.ai_socktype = SOCK_STREAM;
        g->g_cb.ar_name = g->g_name;
        g->g_cb.ar_request = &g->g_hints;
        g->g_deadline = now + nt->nt_conf->notifier_timeout_ms;
        list[0] = &g->g_cb;
        if ((r = getaddrinfo_a(GAI_NOWAIT, list, 1, NULL)) != 0) {
                char why[256];
                gai_free(g);
                snprintf(why, sizeof(why), "cannot resolve the host: %s",
                         gai_strerror(r));
                attempt_failed(ev, why);
                return;
        }
        ev->ev_gai = g;
        ev->ev_state = EV_RESOLVING;
        TAILQ_INSERT_TAIL(&nt->nt_resolving, ev, ev_link);
        nt->nt_active++;
}

/* Checks answered resolutions. Returns 1 while some are pending. */
static int resolving_serve(kb_notifier_t *nt, int64_t now) {
        kb_nevent_t *ev, *tmp;
        int pending = 0;
        TAILQ_FOREACH_SAFE(ev, &nt->nt_resolving, ev_link, tmp) {
                kb_gai_t *g = ev->ev_gai;
                int r = gai_error(&g->g_cb);
                char why[600], resolve[KB_NT_RESOLVE_MAX];
                if (r == EAI_INPROGRESS) {
                        if (now < g->g_deadline) {
                                pending = 1;
                                continue;
                        }
                        ev_unlink(ev);
                        attempt_failed(ev, "DNS resolution timed out");
                        continue;
                }
                ev_unlink(ev);
                if (r != 0) {
                        snprintf(why, sizeof(why),
                                 "cannot resolve the host: %s",
                                 gai_strerror(r));
                        attempt_failed(ev, why);
                        continue;
                }
                r = kb_ssrf_check_addrs(
                        ev->ev_url.su_host, ev->ev_url.su_port,
                        g->g_cb.ar_result, nt->nt_conf->notifier_allow_private,
                        resolve, sizeof(resolve), why, sizeof(why));
                gai_abandon(nt, g);
                ev->ev_gai = NULL;
                if (r == -1) {
                        char msg[700];
                        snprintf(msg, sizeof(msg), "callback_url refused: %s",
                                 why);
                        ev_dead_letter(ev, "webhook_refused", msg);
                        continue;
                }
                if (r != 0) {
                        attempt_failed(ev, why);
                        continue;
                }
                ev_call(ev, resolve);
        }
        return pending;
}

/* Printable ASCII of a response body, for an error message. */
static void snippet(const char *in, size_t len, char *out, size_t size) {
        size_t i, n = 0;
        for (i = 0; i < len && n + 1 < size; i++) {
                unsigned char c = (unsigned char)in[i];
                out[n++] = (c >= 0x20 && c < 0x7f) ? (char)c : ' ';
        }
        out[n] = '\0';
}

static void call_done(kb_xfer_t *xf, CURLcode cc) {
        kb_nevent_t *ev = (kb_nevent_t *)xf;
        kb_notifier_t *nt = ev->ev_nt;
        kb_http_req_t *hr = &ev->ev_http;
        long status = 0;
        char msg[1100], body[KB_NT_KEEP_BODY + 1];

        nt->nt_active--;
        ev->ev_state = EV_NEW;
        status = kb_http_req_status(hr);
        if (status >= 200 && status <= 299 &&
            (cc == CURLE_OK || (cc == CURLE_WRITE_ERROR && hr->hr_too_large))) {
                char st[16];
                snprintf(st, sizeof(st), "%ld", status);
                ev_attempt_clear(ev);
                ev_log(ev, KB_LOG_INFO, NULL, "webhook delivered (HTTP %s)",
                       st);
                ev_finish(ev);
                return;
        }
        if (ev->ev_refused) {
                snprintf(msg, sizeof(msg), "callback_url refused: %s",
                         ev->ev_refused_why);
                ev_dead_letter(ev, "webhook_refused", msg);
                return;
        }
        if (cc != CURLE_OK && !(cc == CURLE_WRITE_ERROR && hr->hr_too_large))
                snprintf(msg, sizeof(msg), "%s: %s",
                         cc == CURLE_OPERATION_TIMEDOUT ? "timeout"
                                                        : "connection error",
                         hr->hr_errbuf[0] ? hr->hr_errbuf
                                          : curl_easy_strerror(cc));
        else {
                snippet(hr->hr_resp ? hr->hr_resp : "", hr->hr_resp_len, body,
                        sizeof(body));
                snprintf(msg, sizeof(msg), "HTTP %ld%s%s", status,
                         body[0] ? ": " : "", body);
        }
        attempt_failed(ev, msg);
}

/* A failed attempt: retried after a backoff, or dead-lettered. */
static void attempt_failed(kb_nevent_t *ev, const char *what) {
        kb_notifier_t *nt = ev->ev_nt;
        int64_t now = kb_wall_ms();
        int64_t age = now - (ev->ev_ts > 0 ? ev->ev_ts : ev->ev_first_at);
        int64_t ra = kb_http_req_retry_after_ms(&ev->ev_http, time(NULL));
        int64_t wait;
        ev_attempt_clear(ev);
        ev_unlink(ev);
        wait = kb_notifier_retry_wait(nt->nt_conf, ev->ev_attempts, age, ra,
                                      (uint32_t)random() ^
                                              ((uint32_t)random() << 16));
        if (wait < 0) {
                char msg[1300];
                if (ev->ev_attempts >= nt->nt_conf->notifier_max_attempts)
                        snprintf(msg, sizeof(msg),
                                 "gave up after %d attempts; last: %s",
                                 ev->ev_attempts, what);
                else
                        snprintf(msg, sizeof(msg),
                                 "gave up after %d attempts: event older "
                                 "than notifier.max_age_ms; last: %s",
                                 ev->ev_attempts, what);
                ev_dead_letter(ev, "webhook_failed", msg);
                return;
        }
        ev_log(ev, KB_LOG_INFO, "webhook_failed",
               "webhook attempt %d failed (%s), retrying in %lld ms",
               ev->ev_attempts, what, (long long)wait);
        timer_add(nt, ev, kb_now_ms() + wait);
}

/* ---- consuming ---------------------------------------------------------- */

static const char *jstr(json_t *o, const char *k) {
        return json_string_value(json_object_get(o, k));
}

/* Decodes the event and checks its URL; then it is ready, finished
 * (no callback_url), waiting (decode again later) or dead-lettered. */
static void ev_start(kb_notifier_t *nt, kb_nevent_t *ev) {
        const rd_kafka_message_t *m = ev->ev_msg;
        char err[600];
        json_t *o = NULL, *cb;
        kb_serde_res_t r;
        const char *s;

        r = kb_serde_decode(nt->nt_serde, nt->nt_topic, KB_MSG_BATCH_EVENT,
                            m->payload, m->len, &o, err, sizeof(err));
        if (r == KB_SERDE_RETRY) {
                int64_t w =
                        500LL
                        << (ev->ev_decode_tries < 5 ? ev->ev_decode_tries : 5);
                if (ev->ev_decode_tries++ % 10 == 0)
                        kb_log(KB_LOG_WARN, "notifier",
                               "cannot decode yet (%s): retrying in %lld ms",
                               err, (long long)w);
                timer_add(nt, ev, kb_now_ms() + w);
                return;
        }
        if (r != KB_SERDE_OK) {
                if (m->key && m->key_len)
                        snprintf(ev->ev_batch, sizeof(ev->ev_batch), "%.*s",
                                 (int)(m->key_len < 150 ? m->key_len : 150),
                                 (const char *)m->key);
                ev_dead_letter(ev, "deserialization_error", err);
                return;
        }
        ev->ev_decoded = 1;
        if ((s = jstr(o, "batch_id")))
                snprintf(ev->ev_batch, sizeof(ev->ev_batch), "%s", s);
        if ((s = jstr(o, "event_id")) && *s)
                snprintf(ev->ev_id, sizeof(ev->ev_id), "%s", s);
        else
                snprintf(ev->ev_id, sizeof(ev->ev_id), "%s:%d:%lld",
                         nt->nt_topic, (int)m->partition, (long long)m->offset);
        cb = json_object_get(o, "callback_url");
        if (!cb || json_is_null(cb) ||
            (json_is_string(cb) && !*json_string_value(cb))) {
                json_decref(o);
                ev_finish(ev); /* nothing to notify */
                return;
        }
        if (!json_is_string(cb)) {
                json_decref(o);
                ev_dead_letter(ev, "webhook_refused",
                               "callback_url refused: not a string");
                return;
        }
        if (kb_ssrf_url_parse(json_string_value(cb), &ev->ev_url, err,
                              sizeof(err)) != KB_SSRF_URL_OK) {
                char msg[700];
                json_decref(o);
                snprintf(msg, sizeof(msg), "callback_url refused: %s", err);
                ev_dead_letter(ev, "webhook_refused", msg);
                return;
        }
        if (kb_serde_format(nt->nt_serde, nt->nt_topic) == KB_FORMAT_JSON) {
                /* The bytes as published: what the aggregator signed off. */
                ev->ev_body = m->payload;
                ev->ev_body_len = m->len;
        } else {
                if (!(ev->ev_body_own = json_dumps(o, JSON_COMPACT))) {
                        json_decref(o);
                        ev_dead_letter(ev, "deserialization_error",
                                       "cannot render the event as JSON");
                        return;
                }
                ev->ev_body = ev->ev_body_own;
                ev->ev_body_len = strlen(ev->ev_body_own);
        }
        json_decref(o);
        if (ev->ev_url.su_literal) {
                kb_ssrf_class_t cls = kb_ssrf_classify(
                        (struct sockaddr *)&ev->ev_url.su_addr);
                if (!kb_ssrf_allowed(cls,
                                     nt->nt_conf->notifier_allow_private)) {
                        char msg[300];
                        snprintf(msg, sizeof(msg),
                                 "callback_url refused: %s is not allowed (%s)",
                                 ev->ev_url.su_host, kb_ssrf_class_str(cls));
                        ev_dead_letter(ev, "webhook_refused", msg);
                        return;
                }
        }
        ev_ready(nt, ev, 0);
}

/* Takes ownership of m. */
static void handle_message(kb_notifier_t *nt, rd_kafka_message_t *m) {
        kb_part_t *pt;
        kb_nevent_t *ev;
        kb_offsets_res_t r;
        rd_kafka_timestamp_type_t tt;

        if (m->err) {
                if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                        kb_log(KB_LOG_WARN, "notifier", "consumer: %s",
                               rd_kafka_message_errstr(m));
                rd_kafka_message_destroy(m);
                return;
        }
        pt = kb_partset_find(nt->nt_ps, nt->nt_topic, m->partition);
        if (!pt || !pt->pt_assigned || pt->pt_revoking) {
                rd_kafka_message_destroy(m);
                return;
        }
        r = kb_offsets_track(pt->pt_ot, m->offset);
        if (r == KB_OFFSETS_FULL) {
                rd_kafka_topic_partition_list_t *l =
                        rd_kafka_topic_partition_list_new(1);
                rd_kafka_error_t *e;
                kb_partset_pause(nt->nt_ps, pt, KB_PAUSE_WINDOW, 1);
                rd_kafka_topic_partition_list_add(l, nt->nt_topic,
                                                  pt->pt_partition)
                        ->offset = m->offset;
                if ((e = rd_kafka_seek_partitions(nt->nt_consumer, l, 5000)))
                        rd_kafka_error_destroy(e);
                rd_kafka_topic_partition_list_destroy(l);
                rd_kafka_message_destroy(m);
                return;
        }
        if (r != KB_OFFSETS_OK) {
                rd_kafka_message_destroy(m);
                return;
        }
        if (kb_offsets_window_full(pt->pt_ot))
                kb_partset_pause(nt->nt_ps, pt, KB_PAUSE_WINDOW, 1);
        if (!(ev = calloc(1, sizeof(*ev)))) {
                kb_log(KB_LOG_ERROR, "notifier", "out of memory");
                nt->nt_fatal = 1;
                kb_loop_stop_requested = 1;
                rd_kafka_message_destroy(m);
                return;
        }
        ev->ev_nt = nt;
        ev->ev_msg = m;
        ev->ev_part = pt;
        ev->ev_epoch = pt->pt_epoch;
        ev->ev_offset = m->offset;
        ev->ev_ts = rd_kafka_message_timestamp(m, &tt);
        kb_part_work_begin(pt);
        LIST_INSERT_HEAD(&nt->nt_events, ev, ev_all);
        nt->nt_events_cnt++;
        ev_start(nt, ev);
}

/* ---- commits and rebalances --------------------------------------------- */

static int alive(void *self) { return ((kb_notifier_t *)self)->nt_events_cnt; }

/* Shutdown, after the drain: events still calling are aborted; DLQ copies
 * with the producer get the flush. */
static void abort_calls(void *self) {
        kb_notifier_t *nt = self;
        kb_nevent_t *ev, *tmp;
        LIST_FOREACH_SAFE(ev, &nt->nt_events, ev_all, tmp) {
                if (ev->ev_state != EV_PRODUCING)
                        ev_destroy(ev);
        }
}

/* Drops the events of the parts (all when pts is NULL) that are not
 * calling or producing (the next owner consumes them again). */
static void drop_unstarted(void *self, kb_part_t **pts, size_t n) {
        kb_notifier_t *nt = self;
        kb_nevent_t *ev, *tmp;
        LIST_FOREACH_SAFE(ev, &nt->nt_events, ev_all, tmp) {
                if (kb_role_work_of(ev->ev_part, ev->ev_epoch, pts, n) &&
                    ev->ev_state != EV_CALLING && ev->ev_state != EV_PRODUCING)
                        ev_destroy(ev);
        }
}

/* Ends the part's epoch: events still calling are aborted; one whose DLQ
 * copy is with the producer stays until its report, touching nothing. */
static void part_release(void *self, kb_part_t *pt) {
        kb_notifier_t *nt = self;
        kb_nevent_t *ev, *tmp;
        LIST_FOREACH_SAFE(ev, &nt->nt_events, ev_all, tmp) {
                if (ev->ev_part != pt || ev->ev_epoch != pt->pt_epoch)
                        continue;
                if (ev->ev_state == EV_PRODUCING) {
                        kb_part_work_end(pt, ev->ev_epoch);
                        ev->ev_part = NULL;
                } else
                        ev_destroy(ev);
        }
}

/* ---- construction ---------------------------------------------------------
 */

/* The DLQ producer (idempotent, acks=all), reports and errors to us (also
 * ro_producer_new: made again after a fatal error; what the old one held
 * is dead-lettered again, at-least-once). */
static rd_kafka_t *producer_create(void *self, char *errstr,
                                   size_t errstr_size) {
        kb_notifier_t *nt = self;
        rd_kafka_conf_t *kc = kb_kafka_conf_new(nt->nt_conf, "notifier-producer",
                                                errstr, errstr_size);
        if (!kc)
                return NULL;
        rd_kafka_conf_set_dr_msg_cb(kc, dr_msg_cb);
        kb_role_conf(&nt->nt_role, kc, 0);
        return kb_kafka_producer_new(nt->nt_conf, kc, errstr, errstr_size);
}

_Static_assert(offsetof(struct kb_notifier_s, nt_role) == 0,
               "the role's clients' opaque is the kb_notifier_t");

static const kb_role_ops_t notifier_ops = {
        .ro_drop_unstarted = drop_unstarted,
        .ro_reproduce = prodq_produce,
        .ro_alive = alive,
        .ro_abort = abort_calls,
        .ro_release = part_release,
        .ro_producer_new = producer_create,
};

kb_notifier_t *kb_notifier_new(const kb_conf_t *conf, kb_loop_t *loop,
                               char *errstr, size_t errstr_size) {
        kb_notifier_t *nt = calloc(1, sizeof(*nt));
        rd_kafka_conf_t *kc = NULL;
        rd_kafka_topic_partition_list_t *topics;
        rd_kafka_resp_err_t err;
        char num[32];
        int wfd;

        if (!nt) {
                snprintf(errstr, errstr_size, "out of memory");
                return NULL;
        }
        kb_role_init(&nt->nt_role, &notifier_ops, "notifier", loop,
                     &nt->nt_fatal);
        nt->nt_conf = conf;
        nt->nt_loop = loop;
        nt->nt_topic = conf->topics_name[KB_TOPIC_BATCHES];
        nt->nt_dlq = conf->topics_name[KB_TOPIC_BATCHES_DLQ];
        nt->nt_worker = kb_conf_instance_id(conf);
        LIST_INIT(&nt->nt_events);
        LIST_INIT(&nt->nt_orphans);
        TAILQ_INIT(&nt->nt_ready);
        TAILQ_INIT(&nt->nt_resolving);
        TAILQ_INIT(&nt->nt_timers);
        kb_prodq_init(&nt->nt_prodq);

        /* The secret: an explicitly named file must be readable. */
        if (conf->notifier_secret_file && *conf->notifier_secret_file) {
                if (secret_read_file(nt, errstr, errstr_size) != 0)
                        goto fail;
        } else if (conf->notifier_secret_env && *conf->notifier_secret_env) {
                const char *v = getenv(conf->notifier_secret_env);
                if (v && *v) {
                        char *s = strdup(v);
                        if (!s) {
                                snprintf(errstr, errstr_size, "out of memory");
                                goto fail;
                        }
                        secret_set(nt, s, strlen(s));
                }
        }
        if (!nt->nt_secret)
                kb_log(KB_LOG_WARN, "notifier",
                       "no webhook signing secret ($%s is unset and "
                       "notifier.secret_file is empty): webhooks are not "
                       "sent, their attempts fail until one is configured",
                       conf->notifier_secret_env);

        if (!(nt->nt_serde = kb_serde_new(conf, loop, errstr, errstr_size)))
                goto fail;

        /* DLQ producer: idempotent, acks=all; reports on our loop. */
        if (kb_role_producer_start(&nt->nt_role, &nt->nt_producer, &nt->nt_pq,
                                   &nt->nt_prodq, errstr, errstr_size) != 0)
                goto fail;

        /* Consumer: read_committed (the aggregator is transactional),
         * manual offsets, eager range assignment (little traffic; avoids
         * librdkafka#4059). */
        if (!(kc = kb_kafka_conf_new(conf, "notifier-consumer", errstr,
                                     errstr_size)))
                goto fail;
        snprintf(num, sizeof(num), "%d",
                 conf->worker_queue_max_kbytes < 4096
                         ? conf->worker_queue_max_kbytes
                         : 4096);
        if (kb_kafka_conf_set(kc, "group.id", conf->kafka_notifier_group_id,
                              errstr, errstr_size) ||
            kb_kafka_conf_set(kc, "isolation.level", "read_committed", errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "enable.auto.commit", "false", errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "enable.auto.offset.store", "false", errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "partition.assignment.strategy", "range",
                              errstr, errstr_size) ||
            kb_kafka_conf_set(kc, "auto.offset.reset", "earliest", errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "queued.max.messages.kbytes", num, errstr,
                              errstr_size))
                goto fail;
        kb_role_conf(&nt->nt_role, kc, 1);
        if (!(nt->nt_ps = kb_partset_new("notifier",
                                         (size_t)conf->worker_offsets_window,
                                         conf->worker_commit_interval_ms))) {
                snprintf(errstr, errstr_size, "out of memory");
                goto fail;
        }
        nt->nt_role.ro_ps = nt->nt_ps;
        nt->nt_role.ro_drain_ms = conf->worker_revoke_drain_ms;
        if (!(nt->nt_consumer =
                      rd_kafka_new(RD_KAFKA_CONSUMER, kc, errstr, errstr_size)))
                goto fail;
        kc = NULL;
        kb_partset_set_consumer(nt->nt_ps, nt->nt_consumer);
        rd_kafka_poll_set_consumer(nt->nt_consumer);
        nt->nt_cq = rd_kafka_queue_get_consumer(nt->nt_consumer);
        if ((wfd = kb_loop_wake_pipe(loop)) < 0) {
                snprintf(errstr, errstr_size, "pipe: %s", strerror(errno));
                goto fail;
        }
        rd_kafka_queue_io_event_enable(nt->nt_cq, wfd, "c", 1);

        topics = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(topics, nt->nt_topic,
                                          RD_KAFKA_PARTITION_UA);
        err = rd_kafka_subscribe(nt->nt_consumer, topics);
        rd_kafka_topic_partition_list_destroy(topics);
        if (err) {
                snprintf(errstr, errstr_size, "subscribe: %s",
                         rd_kafka_err2str(err));
                goto fail;
        }
        kb_log(KB_LOG_INFO, "notifier",
               "consuming %s in group %s (private addresses %s)", nt->nt_topic,
               conf->kafka_notifier_group_id,
               conf->notifier_allow_private ? "allowed" : "refused");
        return nt;
fail:
        if (kc)
                rd_kafka_conf_destroy(kc);
        kb_notifier_destroy(nt);
        return NULL;
}

int kb_notifier_serve(kb_notifier_t *nt, int64_t now) {
        const kb_conf_t *conf = nt->nt_conf;
        int max_pending = conf->notifier_max_pending;
        int wait = 1000;
        kb_nevent_t *ev;

        kb_role_poll(nt->nt_producer);
        kb_role_producer_serve(&nt->nt_role, now);
        {
                int w = prodq_serve(nt, now);
                if (w < wait)
                        wait = w;
        }

        /* Consume while fewer than notifier.max_pending events are held;
         * beyond, pause everything but keep polling (rebalances, and
         * max.poll.interval.ms). */
        if (!nt->nt_stopping) {
                rd_kafka_message_t *m;
                int budget = 1000;
                if (nt->nt_events_cnt >= max_pending && !kb_partset_all_paused(nt->nt_ps))
                        kb_partset_pause_all(nt->nt_ps, KB_PAUSE_GLOBAL, 1);
                else if (kb_partset_all_paused(nt->nt_ps) &&
                         nt->nt_events_cnt < max_pending * 3 / 4 + 1)
                        kb_partset_pause_all(nt->nt_ps, KB_PAUSE_GLOBAL, 0);
                while (budget-- > 0 &&
                       (m = rd_kafka_consumer_poll(nt->nt_consumer, 0)))
                        handle_message(nt, m);
        }

        orphans_serve(nt);
        if (resolving_serve(nt, now) && wait > KB_NT_DNS_POLL_MS)
                wait = KB_NT_DNS_POLL_MS;

        /* Retry timers. */
        while ((ev = TAILQ_FIRST(&nt->nt_timers)) && ev->ev_due <= now) {
                if (ev->ev_decoded)
                        ev_ready(nt, ev, 1);
                else {
                        ev_unlink(ev);
                        ev_start(nt, ev);
                }
        }
        if ((ev = TAILQ_FIRST(&nt->nt_timers)) && ev->ev_due - now < wait)
                wait = (int)(ev->ev_due - now);

        /* Start attempts while below notifier.max_inflight. */
        if (!nt->nt_stopping) {
                while (nt->nt_active < conf->notifier_max_inflight &&
                       (ev = TAILQ_FIRST(&nt->nt_ready)))
                        ev_attempt(ev, now);
                if (!TAILQ_EMPTY(&nt->nt_resolving) && wait > KB_NT_DNS_POLL_MS)
                        wait = KB_NT_DNS_POLL_MS;
        }

        {
                int w = kb_partset_serve(nt->nt_ps, now);
                if (w < wait)
                        wait = w;
        }
        return wait < 0 ? 0 : wait;
}

void kb_notifier_shutdown(kb_notifier_t *nt, int drain_ms) {
        nt->nt_stopping = 1;
        kb_log(KB_LOG_INFO, "notifier",
               "stopping: %d events held, %d requests in flight, draining "
               "for up to %d ms",
               nt->nt_events_cnt, nt->nt_active, drain_ms);
        kb_role_stop(&nt->nt_role, nt->nt_consumer, kb_now_ms() + drain_ms);
        kb_log(KB_LOG_INFO, "notifier",
               "stopped (%d events left to the next "
               "owner)",
               nt->nt_events_cnt);
}

int kb_notifier_ready(const kb_notifier_t *nt) {
        return kb_partset_assigned_once(nt->nt_ps);
}

int kb_notifier_fatal(const kb_notifier_t *nt) {
        return nt->nt_fatal;
}

void kb_notifier_destroy(kb_notifier_t *nt) {
        kb_nevent_t *ev, *tmp;
        kb_gai_t *g, *gtmp;
        if (!nt)
                return;
        LIST_FOREACH_SAFE(ev, &nt->nt_events, ev_all, tmp) {
                ev_destroy(ev);
        }
        /* Requests glibc still works on are left to it (the process is
         * about to exit); the finished ones are freed. */
        LIST_FOREACH_SAFE(g, &nt->nt_orphans, g_link, gtmp) {
                if (gai_error(&g->g_cb) != EAI_INPROGRESS) {
                        LIST_REMOVE(g, g_link);
                        gai_free(g);
                }
        }
        if (nt->nt_cq)
                rd_kafka_queue_destroy(nt->nt_cq);
        if (nt->nt_pq)
                rd_kafka_queue_destroy(nt->nt_pq);
        if (nt->nt_consumer)
                kb_kafka_consumer_destroy(nt->nt_consumer);
        if (nt->nt_producer)
                rd_kafka_destroy(nt->nt_producer);
        kb_partset_destroy(nt->nt_ps);
        kb_serde_destroy(nt->nt_serde);
        secret_set(nt, NULL, 0);
        free(nt);
}
