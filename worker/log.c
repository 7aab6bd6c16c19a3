/* log: see log.h.
 *
 * A line is built in a buffer on the stack (on the heap when it outgrows
 * it) and written with one write(2) under a mutex, so lines of different
 * threads never interleave and a reader of the stream (a log shipper) always
 * sees whole lines. */
#include "log.h"

#include <errno.h>
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

kb_log_level_t kb_log_level_cur = KB_LOG_INFO;

static kb_log_format_t kb_log_fmt = KB_LOG_FMT_JSON;
static FILE *kb_log_out;      /* NULL: stderr */
static char *kb_log_instance; /* NULL: none */
static pthread_mutex_t kb_log_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *kb_log_reserved[] = { "ts", "level", "facility", "msg",
                                         "instance" };

void kb_log_init(kb_log_level_t level, kb_log_format_t format, FILE *out) {
        kb_log_level_cur = level;
        kb_log_fmt = format;
        kb_log_out = out;
}

void kb_log_set_instance(const char *id) {
        char *dup = id && *id ? strdup(id) : NULL;
        pthread_mutex_lock(&kb_log_lock);
        free(kb_log_instance);
        kb_log_instance = dup;
        pthread_mutex_unlock(&kb_log_lock);
}

int kb_log_level_parse(const char *s) {
        static const char *names[] = { "debug", "info", "warn", "error",
                                       "off" };
        int i;
        if (!s)
                return -1;
        for (i = 0; i < 5; i++)
                if (!strcasecmp(s, names[i]))
                        return i;
        if (!strcasecmp(s, "warning"))
                return KB_LOG_WARN;
        return -1;
}

int kb_log_format_parse(const char *s) {
        if (s && !strcasecmp(s, "json"))
                return KB_LOG_FMT_JSON;
        if (s && !strcasecmp(s, "text"))
                return KB_LOG_FMT_TEXT;
        return -1;
}

const char *kb_log_level_str(kb_log_level_t level) {
        switch (level) {
        case KB_LOG_DEBUG:
                return "debug";
        case KB_LOG_INFO:
                return "info";
        case KB_LOG_WARN:
                return "warn";
        case KB_LOG_ERROR:
                return "error";
        case KB_LOG_OFF:
                return "off";
        }
        return "unknown";
}


/*
 * Line buffer
 */

typedef struct kb_log_buf_s {
        char *p;
        size_t len, cap;
        int heap; /* p was malloc()ed */
} kb_log_buf_t;

/* Makes room for n more bytes; on allocation failure the line is cut. */
static int lb_reserve(kb_log_buf_t *lb, size_t n) {
        size_t cap;
        char *np;
        if (lb->len + n <= lb->cap)
                return 0;
        cap = lb->cap * 2;
        while (cap < lb->len + n)
                cap *= 2;
        if (lb->heap)
                np = realloc(lb->p, cap);
        else if ((np = malloc(cap)))
                memcpy(np, lb->p, lb->len);
        if (!np)
                return -1;
        lb->p = np;
        lb->cap = cap;
        lb->heap = 1;
        return 0;
}

static void lb_put(kb_log_buf_t *lb, const char *s, size_t n) {
        if (lb_reserve(lb, n))
                return;
        memcpy(lb->p + lb->len, s, n);
        lb->len += n;
}

static void lb_puts(kb_log_buf_t *lb, const char *s) {
        lb_put(lb, s, strlen(s));
}

static void lb_putc(kb_log_buf_t *lb, char c) {
        lb_put(lb, &c, 1);
}

/* Length of the valid UTF-8 sequence at s (n bytes available), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n) {
        unsigned char c = s[0];
        size_t len, i;
        unsigned char lo = 0x80, hi = 0xbf;
        if (c < 0x80)
                return 1;
        if (c >= 0xc2 && c <= 0xdf)
                len = 2;
        else if (c >= 0xe0 && c <= 0xef) {
                len = 3;
                if (c == 0xe0)
                        lo = 0xa0; /* overlong */
                else if (c == 0xed)
                        hi = 0x9f; /* surrogates */
        } else if (c >= 0xf0 && c <= 0xf4) {
                len = 4;
                if (c == 0xf0)
                        lo = 0x90; /* overlong */
                else if (c == 0xf4)
                        hi = 0x8f; /* > U+10FFFF */
        } else
                return 0;
        if (n < len)
                return 0;
        if (s[1] < lo || s[1] > hi)
                return 0;
        for (i = 2; i < len; i++)
                if (s[i] < 0x80 || s[i] > 0xbf)
                        return 0;
        return len;
}

/* At most max bytes of s, not cutting a UTF-8 sequence in two. */
static size_t cut_len(const char *s, size_t n, size_t max, int *cut) {
        *cut = n > max;
        if (n <= max)
                return n;
        n = max;
        while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
                n--;
        return n;
}

/* A JSON string literal, quotes included. */
static void lb_json(kb_log_buf_t *lb, const char *s, size_t n) {
        static const char hex[] = "0123456789abcdef";
        const unsigned char *p = (const unsigned char *)s, *end = p + n;
        int cut;
        n = cut_len(s, n, KB_LOG_MSG_MAX, &cut);
        end = p + n;
        lb_putc(lb, '"');
        while (p < end) {
                const unsigned char *run = p;
                size_t ul;
                /* copy plain bytes in runs */
                while (p < end && *p >= 0x20 && *p < 0x7f && *p != '"' &&
                       *p != '\\')
                        p++;
                if (p > run)
                        lb_put(lb, (const char *)run, (size_t)(p - run));
                if (p >= end)
                        break;
                switch (*p) {
                case '"':
                        lb_puts(lb, "\\\"");
                        p++;
                        continue;
                case '\\':
                        lb_puts(lb, "\\\\");
                        p++;
                        continue;
                case '\n':
                        lb_puts(lb, "\\n");
                        p++;
                        continue;
                case '\r':
                        lb_puts(lb, "\\r");
                        p++;
                        continue;
                case '\t':
                        lb_puts(lb, "\\t");
                        p++;
                        continue;
                }
                if (*p < 0x20 || *p == 0x7f) {
                        char u[6] = { '\\', 'u', '0', '0', hex[*p >> 4],
                                      hex[*p & 0xf] };
                        lb_put(lb, u, 6);
                        p++;
                        continue;
                }
                if ((ul = utf8_len(p, (size_t)(end - p)))) {
                        lb_put(lb, (const char *)p, ul);
                        p += ul;
                } else {
                        lb_puts(lb, "\\ufffd");
                        p++;
                }
        }
        if (cut)
                lb_puts(lb, "...");
        lb_putc(lb, '"');
}

/* Text for humans: control characters escaped, invalid UTF-8 as U+FFFD;
 * quoted (with " and \ escaped) when quote is set. */
static void lb_text(kb_log_buf_t *lb, const char *s, size_t n, int quote) {
        static const char hex[] = "0123456789abcdef";
        const unsigned char *p = (const unsigned char *)s, *end;
        size_t ul;
        int cut;
        n = cut_len(s, n, KB_LOG_MSG_MAX, &cut);
        end = p + n;
        if (quote)
                lb_putc(lb, '"');
        while (p < end) {
                if (*p == '\n') {
                        lb_puts(lb, "\\n");
                        p++;
                } else if (*p == '\r') {
                        lb_puts(lb, "\\r");
                        p++;
                } else if (*p == '\t') {
                        lb_puts(lb, "\\t");
                        p++;
                } else if (*p < 0x20 || *p == 0x7f) {
                        char x[4] = { '\\', 'x', hex[*p >> 4], hex[*p & 0xf] };
                        lb_put(lb, x, 4);
                        p++;
                } else if (quote && (*p == '"' || *p == '\\')) {
                        lb_putc(lb, '\\');
                        lb_putc(lb, (char)*p++);
                } else if ((ul = utf8_len(p, (size_t)(end - p)))) {
                        lb_put(lb, (const char *)p, ul);
                        p += ul;
                } else {
                        lb_puts(lb, "\xef\xbf\xbd");
                        p++;
                }
        }
        if (cut)
                lb_puts(lb, "...");
        if (quote)
                lb_putc(lb, '"');
}

/* key=value values are quoted when they would not read back as one token. */
static int text_needs_quote(const char *s) {
        if (!*s)
                return 1;
        for (; *s; s++)
                if ((unsigned char)*s <= 0x20 || *s == '"' || *s == '=' ||
                    *s == '\\' || *s == 0x7f)
                        return 1;
        return 0;
}

static int key_reserved(const char *k) {
        size_t i;
        for (i = 0; i < sizeof(kb_log_reserved) / sizeof(*kb_log_reserved); i++)
                if (!strcmp(k, kb_log_reserved[i]))
                        return 1;
        return 0;
}

static void timestamp(char *buf, size_t size) {
        struct timespec ts;
        struct tm tm;
        clock_gettime(CLOCK_REALTIME, &ts);
        gmtime_r(&ts.tv_sec, &tm);
        snprintf(buf, size, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
                 (tm.tm_year + 1900) % 10000, (tm.tm_mon + 1) % 100,
                 tm.tm_mday % 100, tm.tm_hour % 100, tm.tm_min % 100,
                 tm.tm_sec % 100, (int)(ts.tv_nsec / 1000000) % 1000);
}

static void emit(const char *p, size_t n) {
        FILE *out = kb_log_out ? kb_log_out : stderr;
        int fd = fileno(out);
        ssize_t w;
        if (fd < 0) { /* e.g. open_memstream() */
                flockfile(out);
                fwrite(p, 1, n, out);
                fflush(out);
                funlockfile(out);
                return;
        }
        fflush(out); /* whatever was buffered goes first */
        while (n > 0) {
                w = write(fd, p, n);
                if (w < 0) {
                        if (errno == EINTR)
                                continue;
                        return; /* nowhere left to report it */
                }
                p += w;
                n -= (size_t)w;
        }
}

void kb_log_vwrite(kb_log_level_t level, const char *facility,
                   const char *const *kv, const char *fmt, va_list ap) {
        static const char *upper[] = { "DEBUG", "INFO ", "WARN ", "ERROR" };
        char stackbuf[2048], msg[KB_LOG_MSG_MAX + 8], ts[40];
        kb_log_buf_t lb = { stackbuf, 0, sizeof(stackbuf), 0 };
        size_t i, mlen;
        int n, errno_save = errno;

        if (level < KB_LOG_DEBUG || level >= KB_LOG_OFF ||
            !kb_log_enabled(level))
                return;
        if (!facility)
                facility = "kbatch";
        n = vsnprintf(msg, sizeof(msg), fmt ? fmt : "", ap);
        if (n < 0)
                n = 0;
        /* A few bytes past the limit, so that lb_json()/lb_text() see it is
         * cut and where the last whole UTF-8 character ends. */
        mlen = (size_t)n < sizeof(msg) ? (size_t)n : sizeof(msg) - 1;
        timestamp(ts, sizeof(ts));

        pthread_mutex_lock(&kb_log_lock);
        if (kb_log_fmt == KB_LOG_FMT_TEXT) {
                lb_puts(&lb, ts);
                lb_putc(&lb, ' ');
                lb_puts(&lb, upper[level]);
                lb_putc(&lb, ' ');
                lb_text(&lb, facility, strlen(facility), 0);
                lb_puts(&lb, ": ");
                lb_text(&lb, msg, mlen, 0);
                for (i = 0; kv && kv[i]; i += 2) {
                        if (!kv[i + 1])
                                continue;
                        lb_putc(&lb, ' ');
                        lb_text(&lb, kv[i], strlen(kv[i]),
                                text_needs_quote(kv[i]));
                        lb_putc(&lb, '=');
                        lb_text(&lb, kv[i + 1], strlen(kv[i + 1]),
                                text_needs_quote(kv[i + 1]));
                }
        } else {
                lb_puts(&lb, "{\"ts\":\"");
                lb_puts(&lb, ts);
                lb_puts(&lb, "\",\"level\":\"");
                lb_puts(&lb, kb_log_level_str(level));
                lb_puts(&lb, "\",\"facility\":");
                lb_json(&lb, facility, strlen(facility));
                lb_puts(&lb, ",\"msg\":");
                lb_json(&lb, msg, mlen);
                if (kb_log_instance) {
                        lb_puts(&lb, ",\"instance\":");
                        lb_json(&lb, kb_log_instance, strlen(kb_log_instance));
                }
                for (i = 0; kv && kv[i]; i += 2) {
                        char key[256];
                        if (!kv[i + 1])
                                continue;
                        if (key_reserved(kv[i]))
                                snprintf(key, sizeof(key), "_%s", kv[i]);
                        else
                                snprintf(key, sizeof(key), "%s", kv[i]);
                        lb_putc(&lb, ',');
                        lb_json(&lb, key, strlen(key));
                        lb_putc(&lb, ':');
                        lb_json(&lb, kv[i + 1], strlen(kv[i + 1]));
                }
                lb_putc(&lb, '}');
        }
        lb_putc(&lb, '\n');
        if (lb.len == 0 || lb.p[lb.len - 1] != '\n') /* cut by ENOMEM */
                lb.p[lb.len ? lb.len - 1 : 0] = '\n';
        emit(lb.p, lb.len ? lb.len : 1);
        pthread_mutex_unlock(&kb_log_lock);
        if (lb.heap)
                free(lb.p);
        errno = errno_save;
}

void kb_log_write(kb_log_level_t level, const char *facility,
                  const char *const *kv, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        kb_log_vwrite(level, facility, kv, fmt, ap);
        va_end(ap);
}

void kb_log_rdkafka_cb(const void *rk, int level, const char *fac,
                       const char *buf) {
        kb_log_level_t l;
        const char *kv[5];
        if (level <= 3)
                l = KB_LOG_ERROR;
        else if (level == 4)
                l = KB_LOG_WARN;
        else if (level <= 6)
                l = KB_LOG_INFO;
        else
                l = KB_LOG_DEBUG;
        if (!kb_log_enabled(l))
                return;
        kv[0] = "fac";
        kv[1] = fac;
        kv[2] = "client";
        kv[3] = rk ? rd_kafka_name((const rd_kafka_t *)rk) : NULL;
        kv[4] = NULL;
        kb_log_write(l, "rdkafka", kv, "%s", buf ? buf : "");
}

void kb_url_redact(const char *url, size_t len, char *out, size_t out_size) {
        const char *s = NULL, *at = NULL, *colon = NULL, *p, *end = url + len;
        if (!out_size)
                return;
        for (p = url; p + 3 <= end; p++)
                if (!strncmp(p, "://", 3)) {
                        s = p + 3;
                        break;
                }
        /* The authority ends at the first '/', '?' or '#'; its last '@'
         * ends the userinfo. */
        for (p = s; p && p < end && *p != '/' && *p != '?' && *p != '#'; p++)
                if (*p == '@')
                        at = p;
        for (p = s; at && p < at; p++)
                if (*p == ':') {
                        colon = p;
                        break;
                }
        if (colon)
                snprintf(out, out_size, "%.*s***%.*s", (int)(colon + 1 - url),
                         url, (int)(end - at), at);
        else if (at) /* user only, or a token as the user: hide it too */
                snprintf(out, out_size, "%.*s***%.*s", (int)(s - url), url,
                         (int)(end - at), at);
        else
                snprintf(out, out_size, "%.*s", (int)len, url);
}
