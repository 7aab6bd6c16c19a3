/*
 * fake_model - a fast fake of the OpenAI HTTP API, for tests and benchmarks.
 *
 * Answers POST /v1/chat/completions, /v1/completions, /v1/embeddings,
 * /v1/responses and (Anthropic) /v1/messages with bodies of the real API's shape, deterministically from
 * the request body. Latency and failures come from command-line rates,
 * POST /_config, or a "fake" object in the request body; GET /_stats
 * reports what was asked. See --help and usage() for the interface.
 *
 * Threads: libmicrohttpd runs an epoll thread pool; a request that must wait
 * (latency, hang, trickle) is suspended and put on a min-heap that one timer
 * thread resumes, so waiting requests cost no thread. Statistics and trigger
 * counters live behind st.lock; settings behind cf_lock.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <microhttpd.h>

#define FM_MAX_BODY        (64u << 20)  /* request bodies above this: 413 */
#define FM_MAX_BODY_BYTES  (1u << 30)   /* cap on the "body_bytes" trigger */
#define FM_MAX_ATTEMPTS    256          /* per-item attempt/status history */
#define FM_MAX_PATHS       1024         /* distinct keys in by_path */
#define FM_ECHO_CHARS      64
#define FM_CREATED         1700000000   /* fixed "created" timestamp */
#define FM_HANG_POLL_MS    1000         /* how often a hung request checks
                                         * whether its client gave up */

/* ------------------------------------------------------------------------ */
/* Settings                                                                  */

/* Run-time settings: from the command line, changed by POST /_config. */
typedef struct fm_conf_s {
        int    cf_lat_min_ms;
        int    cf_lat_max_ms;
        double cf_fail_500;
        double cf_fail_429;
        double cf_fail_reset;
        double cf_fail_hang;
        double cf_fail_garbage;
        int    cf_max_concurrency;  /* 0: unlimited */
        int    cf_retry_after;      /* seconds, for 429s */
        bool   cf_record_items;     /* keep by_item (costs memory) */
        int    cf_job_ms;           /* job API: how long a job runs */
        double cf_job_fail;         /* job API: share of jobs that fail */
} fm_conf_t;

static fm_conf_t cf = {
        .cf_retry_after  = 1,
        .cf_record_items = true,
        .cf_job_ms       = 2000,
};
static pthread_mutex_t cf_lock = PTHREAD_MUTEX_INITIALIZER;

/** Returns a copy of the current settings. */
static fm_conf_t conf_get(void) {
        fm_conf_t c;
        pthread_mutex_lock(&cf_lock);
        c = cf;
        pthread_mutex_unlock(&cf_lock);
        return c;
}

/* ------------------------------------------------------------------------ */
/* Small helpers: time, hashing, random numbers                              */

static uint64_t now_mono_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t mix64(uint64_t z) {
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
}

/** 64-bit hash of a buffer (FNV-1a, then a finalizer), seeded. */
static uint64_t hash64(const void *p, size_t len, uint64_t seed) {
        const unsigned char *s = p;
        uint64_t h = 0xcbf29ce484222325ull ^ mix64(seed);
        for (size_t i = 0; i < len; i++) {
                h ^= s[i];
                h *= 0x100000001b3ull;
        }
        return mix64(h ^ len);
}

static _Atomic uint64_t rng_state;

/** Thread-safe splitmix64: one atomic add per number. */
static uint64_t rng_next(void) {
        return mix64(atomic_fetch_add(&rng_state, 0x9e3779b97f4a7c15ull) +
                     0x9e3779b97f4a7c15ull);
}

/** Uniform in [0, 1). */
static double rng_unit(void) {
        return (double)(rng_next() >> 11) * 0x1.0p-53;
}

static int latency_draw(const fm_conf_t *c) {
        if (c->cf_lat_max_ms <= c->cf_lat_min_ms)
                return c->cf_lat_min_ms;
        return c->cf_lat_min_ms +
               (int)(rng_next() %
                     (uint64_t)(c->cf_lat_max_ms - c->cf_lat_min_ms + 1));
}

/** Tokens for a text of @p bytes: one per four bytes, rounded up. */
static int64_t tokens_of(size_t bytes) {
        return (int64_t)((bytes + 3) / 4);
}

/** Length of the longest prefix of @p s (@p len bytes of valid UTF-8) that
 *  holds at most @p chars characters and at most @p max_bytes bytes. */
static size_t utf8_prefix(const char *s, size_t len, size_t chars,
                          size_t max_bytes) {
        size_t i = 0, n = 0;
        if (len > max_bytes)
                len = max_bytes;
        while (i < len && n < chars) {
                unsigned char c = (unsigned char)s[i];
                size_t cl = c < 0xc0 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
                if (i + cl > len)
                        break;
                i += cl;
                n++;
        }
        return i;
}

/* ------------------------------------------------------------------------ */
/* Growing string buffer                                                     */

typedef struct fm_buf_s {
        char  *b_data;
        size_t b_len;
        size_t b_cap;
        bool   b_oom;   /* an append failed; the contents are incomplete */
} fm_buf_t;

static void buf_add(fm_buf_t *b, const void *p, size_t len) {
        if (len == 0)
                return;
        if (b->b_len + len + 1 > b->b_cap) {
                size_t cap = b->b_cap ? b->b_cap : 512;
                while (cap < b->b_len + len + 1)
                        cap *= 2;
                char *d = realloc(b->b_data, cap);
                if (!d) {
                        b->b_oom = true;
                        return;
                }
                b->b_data = d;
                b->b_cap  = cap;
        }
        memcpy(b->b_data + b->b_len, p, len);
        b->b_len += len;
        b->b_data[b->b_len] = '\0';
}

static void buf_s(fm_buf_t *b, const char *s) {
        buf_add(b, s, strlen(s));
}

static void buf_fill(fm_buf_t *b, char c, size_t n) {
        char chunk[256];
        memset(chunk, c, sizeof(chunk));
        while (n > 0) {
                size_t k = n < sizeof(chunk) ? n : sizeof(chunk);
                buf_add(b, chunk, k);
                n -= k;
        }
}

__attribute__((format(printf, 2, 3)))
static void buf_f(fm_buf_t *b, const char *fmt, ...) {
        char tmp[256];
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
        va_end(ap);
        if (n < 0) {
                b->b_oom = true;
        } else if ((size_t)n < sizeof(tmp)) {
                buf_add(b, tmp, (size_t)n);
        } else {
                char *big = malloc((size_t)n + 1);
                if (!big) {
                        b->b_oom = true;
                        return;
                }
                va_start(ap, fmt);
                vsnprintf(big, (size_t)n + 1, fmt, ap);
                va_end(ap);
                buf_add(b, big, (size_t)n);
                free(big);
        }
}

/** Appends the JSON-escaped characters of @p s (no quotes). */
static void buf_jesc(fm_buf_t *b, const char *s, size_t len) {
        static const char hex[] = "0123456789abcdef";
        size_t run = 0;
        for (size_t i = 0; i < len; i++) {
                unsigned char c = (unsigned char)s[i];
                if (c >= 0x20 && c != '"' && c != '\\')
                        continue;
                buf_add(b, s + run, i - run);
                run = i + 1;
                char e[6] = { '\\', (char)c, 0, 0, 0, 0 };
                size_t el = 2;
                switch (c) {
                case '"':
                case '\\':
                        break;
                case '\n':
                        e[1] = 'n';
                        break;
                case '\r':
                        e[1] = 'r';
                        break;
                case '\t':
                        e[1] = 't';
                        break;
                default:
                        e[1] = 'u';
                        e[2] = '0';
                        e[3] = '0';
                        e[4] = hex[c >> 4];
                        e[5] = hex[c & 15];
                        el = 6;
                }
                buf_add(b, e, el);
        }
        buf_add(b, s + run, len - run);
}

/** Appends @p s as a quoted JSON string. */
static void buf_jstr(fm_buf_t *b, const char *s, size_t len) {
        buf_add(b, "\"", 1);
        buf_jesc(b, s, len);
        buf_add(b, "\"", 1);
}

/** Hands the contents over (caller frees) and empties @p b; NULL on OOM. */
static char *buf_take(fm_buf_t *b, size_t *len) {
        char *s = b->b_data;
        *len = b->b_len;
        if (b->b_oom || !s) {
                free(s);
                s = NULL;
                *len = 0;
        }
        memset(b, 0, sizeof(*b));
        return s;
}

/* ------------------------------------------------------------------------ */
/* Timer: a min-heap of wake-up times for suspended connections              */

typedef struct fm_trickle_s fm_trickle_t;

typedef struct fm_timer_s {
        uint64_t               t_at_ns;
        struct MHD_Connection *t_conn;
        fm_trickle_t          *t_trickle;  /* NULL: a waiting request */
} fm_timer_t;

static struct {
        pthread_mutex_t tm_lock;
        pthread_cond_t  tm_cond;
        fm_timer_t     *tm_heap;
        size_t          tm_n;
        size_t          tm_cap;
        bool            tm_stopping;
        pthread_t       tm_thread;
} tm = {
        .tm_lock = PTHREAD_MUTEX_INITIALIZER,
};

/* Set when a trickled response may send its next chunk. */
struct fm_trickle_s {
        char                  *tr_body;
        size_t                 tr_len;
        size_t                 tr_chunk;
        int                    tr_interval_ms;
        atomic_bool            tr_ready;
        struct MHD_Connection *tr_conn;
};

static void heap_swap(size_t a, size_t b) {
        fm_timer_t t = tm.tm_heap[a];
        tm.tm_heap[a] = tm.tm_heap[b];
        tm.tm_heap[b] = t;
}

static bool heap_push(const fm_timer_t *t) {
        if (tm.tm_n == tm.tm_cap) {
                size_t cap = tm.tm_cap ? tm.tm_cap * 2 : 1024;
                fm_timer_t *h = realloc(tm.tm_heap, cap * sizeof(*h));
                if (!h)
                        return false;
                tm.tm_heap = h;
                tm.tm_cap  = cap;
        }
        size_t i = tm.tm_n++;
        tm.tm_heap[i] = *t;
        while (i > 0) {
                size_t p = (i - 1) / 2;
                if (tm.tm_heap[p].t_at_ns <= tm.tm_heap[i].t_at_ns)
                        break;
                heap_swap(i, p);
                i = p;
        }
        return true;
}

static fm_timer_t heap_pop(void) {
        fm_timer_t top = tm.tm_heap[0];
        tm.tm_heap[0] = tm.tm_heap[--tm.tm_n];
        size_t i = 0;
        for (;;) {
                size_t l = 2 * i + 1, r = l + 1, m = i;
                if (l < tm.tm_n &&
                    tm.tm_heap[l].t_at_ns < tm.tm_heap[m].t_at_ns)
                        m = l;
                if (r < tm.tm_n &&
                    tm.tm_heap[r].t_at_ns < tm.tm_heap[m].t_at_ns)
                        m = r;
                if (m == i)
                        break;
                heap_swap(i, m);
                i = m;
        }
        return top;
}

static void timer_fire(const fm_timer_t *t) {
        if (t->t_trickle)
                atomic_store(&t->t_trickle->tr_ready, true);
        MHD_resume_connection(t->t_conn);
}

/**
 * Suspends @p conn (from its access handler or content reader) and resumes it
 * in @p delay_ms. Returns false, without suspending, when shutting down.
 * Suspending under tm_lock guarantees the resume cannot come first.
 */
static bool timer_suspend(struct MHD_Connection *conn, int delay_ms,
                          fm_trickle_t *tr) {
        fm_timer_t t = {
                .t_at_ns   = now_mono_ns() + (uint64_t)delay_ms * 1000000u,
                .t_conn    = conn,
                .t_trickle = tr,
        };
        pthread_mutex_lock(&tm.tm_lock);
        if (tm.tm_stopping) {
                pthread_mutex_unlock(&tm.tm_lock);
                return false;
        }
        MHD_suspend_connection(conn);
        if (!heap_push(&t)) {
                /* Out of memory: answer now rather than never. */
                pthread_mutex_unlock(&tm.tm_lock);
                timer_fire(&t);
                return true;
        }
        if (tm.tm_heap[0].t_conn == conn)
                pthread_cond_signal(&tm.tm_cond);
        pthread_mutex_unlock(&tm.tm_lock);
        return true;
}

static void *timer_main(void *arg) {
        fm_timer_t due[256];
        pthread_mutex_lock(&tm.tm_lock);
        while (!tm.tm_stopping) {
                if (tm.tm_n == 0) {
                        pthread_cond_wait(&tm.tm_cond, &tm.tm_lock);
                        continue;
                }
                uint64_t now = now_mono_ns();
                if (tm.tm_heap[0].t_at_ns > now) {
                        uint64_t at = tm.tm_heap[0].t_at_ns;
                        struct timespec ts = {
                                .tv_sec  = (time_t)(at / 1000000000u),
                                .tv_nsec = (long)(at % 1000000000u),
                        };
                        pthread_cond_timedwait(&tm.tm_cond, &tm.tm_lock, &ts);
                        continue;
                }
                size_t n = 0;
                while (n < sizeof(due) / sizeof(due[0]) && tm.tm_n > 0 &&
                       tm.tm_heap[0].t_at_ns <= now)
                        due[n++] = heap_pop();
                /* Resume outside the lock: each entry was pushed after its
                 * suspension, so the order is already right. */
                pthread_mutex_unlock(&tm.tm_lock);
                for (size_t i = 0; i < n; i++)
                        timer_fire(&due[i]);
                pthread_mutex_lock(&tm.tm_lock);
        }
        /* Shutting down: everything suspended must be resumed before
         * MHD_stop_daemon(). */
        while (tm.tm_n > 0) {
                fm_timer_t t = heap_pop();
                timer_fire(&t);
        }
        pthread_mutex_unlock(&tm.tm_lock);
        return NULL;
}

static int timer_start(char *errstr, size_t errstr_size) {
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&tm.tm_cond, &ca);
        pthread_condattr_destroy(&ca);
        int err = pthread_create(&tm.tm_thread, NULL, timer_main, NULL);
        if (err) {
                snprintf(errstr, errstr_size, "pthread_create: %s",
                         strerror(err));
                return -1;
        }
        return 0;
}

/** Resumes every suspended connection and stops the timer thread. */
static void timer_stop(void) {
        pthread_mutex_lock(&tm.tm_lock);
        tm.tm_stopping = true;
        pthread_cond_signal(&tm.tm_cond);
        pthread_mutex_unlock(&tm.tm_lock);
        pthread_join(tm.tm_thread, NULL);
        free(tm.tm_heap);
}

static bool stopping(void) {
        bool s;
        pthread_mutex_lock(&tm.tm_lock);
        s = tm.tm_stopping;
        pthread_mutex_unlock(&tm.tm_lock);
        return s;
}

/* ------------------------------------------------------------------------ */
/* Statistics                                                                */

enum {
        INJ_500,
        INJ_429,
        INJ_RESET,
        INJ_HANG,
        INJ_GARBAGE,
        INJ_TRICKLE,
        INJ_CONCURRENCY,
        INJ_TRIGGER,
        INJ__CNT
};
static const char *inj_names[INJ__CNT] = {
        "500", "429", "reset", "hang", "garbage", "trickle",
        "concurrency_429", "trigger",
};

static struct {
        pthread_mutex_t st_lock;
        uint64_t        st_requests;
        uint64_t        st_by_status[600];
        uint64_t        st_injected[INJ__CNT];
        json_t         *st_by_path;      /* path -> count */
        json_t         *st_by_item;      /* "batch:item" -> record */
        json_t         *st_triggers;     /* item key -> trigger answers */
        json_t         *st_jobs;         /* job API: id -> job */
        json_t         *st_job_items;    /* job API: item key -> counts */
        uint64_t        st_job_seq;
        json_t         *st_headers;      /* last request's headers, as a
                                          * string holding a JSON object */
        char            st_last_method[16];
        char            st_last_path[256];
} st = {
        .st_lock = PTHREAD_MUTEX_INITIALIZER,
};

static atomic_long st_inflight;
static atomic_long st_peak;

static void stats_init(void) {
        st.st_by_path  = json_object();
        st.st_by_item  = json_object();
        st.st_triggers = json_object();
        st.st_headers  = json_string("{}");
        st.st_jobs      = json_object();
        st.st_job_items = json_object();
}

/** Zeroes statistics and trigger counters (POST /_reset). */
static void stats_reset(void) {
        pthread_mutex_lock(&st.st_lock);
        st.st_requests = 0;
        memset(st.st_by_status, 0, sizeof(st.st_by_status));
        memset(st.st_injected, 0, sizeof(st.st_injected));
        json_object_clear(st.st_by_path);
        json_object_clear(st.st_by_item);
        json_object_clear(st.st_triggers);
        json_object_clear(st.st_jobs);
        json_object_clear(st.st_job_items);
        json_decref(st.st_headers);
        st.st_headers = json_string("{}");
        st.st_last_method[0] = st.st_last_path[0] = '\0';
        atomic_store(&st_peak, atomic_load(&st_inflight));
        pthread_mutex_unlock(&st.st_lock);
}

/** Counts a request in flight unless @p max (0: no limit) are already;
 *  keeps the peak. */
static bool inflight_enter(long max) {
        long n = atomic_load(&st_inflight);
        do {
                if (max > 0 && n >= max)
                        return false;
        } while (!atomic_compare_exchange_weak(&st_inflight, &n, n + 1));
        n++;
        long p = atomic_load(&st_peak);
        while (n > p && !atomic_compare_exchange_weak(&st_peak, &p, n))
                ;
        return true;
}

static void counter_add(json_t *obj, const char *key, json_int_t by) {
        json_t *v = json_object_get(obj, key);
        if (v)
                json_integer_set(v, json_integer_value(v) + by);
        else
                json_object_set_new(obj, key, json_integer(by));
}

static void injected_add(int kind) {
        pthread_mutex_lock(&st.st_lock);
        st.st_injected[kind]++;
        pthread_mutex_unlock(&st.st_lock);
}

/* ------------------------------------------------------------------------ */
/* Requests                                                                  */

enum {
        ACT_RESPOND,
        ACT_RESET,
        ACT_HANG,
        ACT_TRICKLE,
        ACT_GARBAGE,
};

/* One HTTP request; owned by MHD's con_cls, freed in on_completed(). */
typedef struct fm_req_s {
        fm_buf_t   rq_body;
        bool       rq_too_big;
        bool       rq_decided;     /* waiting to be resumed */
        bool       rq_inflight;    /* counted in st_inflight */
        int        rq_action;
        unsigned   rq_status;
        char      *rq_resp;        /* response body, malloc'd */
        size_t     rq_resp_len;
        int        rq_retry_after; /* -1: no Retry-After header */
        size_t     rq_trickle_chunk;
        int        rq_trickle_ms;
        int        rq_hang_ms;     /* next hang poll interval */
        char       rq_reqid[40];
        char      *rq_item;        /* "batch:item", or NULL */
        uint64_t   rq_arrived_ns;
} fm_req_t;

static void req_free(fm_req_t *rq) {
        if (!rq)
                return;
        free(rq->rq_body.b_data);
        free(rq->rq_resp);
        free(rq->rq_item);
        free(rq);
}

/** Records an answer's status (or outcome name) for by_status and the item. */
static void stats_outcome(fm_req_t *rq, unsigned status, const char *what) {
        pthread_mutex_lock(&st.st_lock);
        if (status && status < 600)
                st.st_by_status[status]++;
        if (rq->rq_item) {
                json_t *it = json_object_get(st.st_by_item, rq->rq_item);
                json_t *ss = it ? json_object_get(it, "statuses") : NULL;
                if (ss && json_array_size(ss) < FM_MAX_ATTEMPTS)
                        json_array_append_new(ss, status ? json_integer(status)
                                                         : json_string(what));
        }
        pthread_mutex_unlock(&st.st_lock);
}

/* Appends one header to a JSON object's text, the name in lower case. */
static enum MHD_Result header_collect(void *cls, enum MHD_ValueKind kind,
                                      const char *key, const char *value) {
        fm_buf_t *b = cls;
        char name[256];
        size_t n = strlen(key);
        if (n >= sizeof(name))
                n = sizeof(name) - 1;
        for (size_t i = 0; i < n; i++)
                name[i] = (char)((key[i] >= 'A' && key[i] <= 'Z')
                                 ? key[i] + 32 : key[i]);
        buf_add(b, b->b_len > 1 ? ",\"" : "\"", b->b_len > 1 ? 2 : 1);
        buf_jesc(b, name, n);
        buf_add(b, "\":", 2);
        buf_jstr(b, value ? value : "", value ? strlen(value) : 0);
        return MHD_YES;
}

/**
 * Counts an API request's arrival: totals, by_path, the headers, by_item.
 * The headers are kept as JSON text and parsed only by GET /_stats, which
 * keeps this path cheap.
 */
static void stats_arrival(struct MHD_Connection *conn, fm_req_t *rq,
                          const char *method, const char *path,
                          const fm_conf_t *c) {
        fm_buf_t hb = { 0 };
        buf_add(&hb, "{", 1);
        MHD_get_connection_values(conn, MHD_HEADER_KIND, header_collect,
                                  &hb);
        buf_add(&hb, "}", 1);
        json_t *hdrs = hb.b_oom ? json_string("{}")
                       : json_stringn_nocheck(hb.b_data, hb.b_len);
        free(hb.b_data);
        const char *batch = MHD_lookup_connection_value(
                conn, MHD_HEADER_KIND, "kbatch-batch-id");
        const char *item = MHD_lookup_connection_value(
                conn, MHD_HEADER_KIND, "kbatch-item-id");
        const char *attempt = MHD_lookup_connection_value(
                conn, MHD_HEADER_KIND, "kbatch-attempt");
        if (batch && item && asprintf(&rq->rq_item, "%s:%s", batch,
                                      item) < 0)
                rq->rq_item = NULL;

        json_t *old_hdrs;
        pthread_mutex_lock(&st.st_lock);
        st.st_requests++;
        if (json_object_get(st.st_by_path, path) ||
            json_object_size(st.st_by_path) < FM_MAX_PATHS)
                counter_add(st.st_by_path, path, 1);
        else
                counter_add(st.st_by_path, "(other)", 1);
        old_hdrs = st.st_headers;
        st.st_headers = json_incref(hdrs);
        snprintf(st.st_last_method, sizeof(st.st_last_method), "%s", method);
        snprintf(st.st_last_path, sizeof(st.st_last_path), "%s", path);
        if (rq->rq_item && c->cf_record_items) {
                json_t *it = json_object_get(st.st_by_item, rq->rq_item);
                if (!it) {
                        it = json_pack("{s:i,s:[],s:[]}", "count", 0,
                                       "attempts", "statuses");
                        json_object_set_new(st.st_by_item, rq->rq_item, it);
                }
                counter_add(it, "count", 1);
                json_t *at = json_object_get(it, "attempts");
                if (json_array_size(at) < FM_MAX_ATTEMPTS)
                        json_array_append_new(at, attempt
                                              ? json_string(attempt)
                                              : json_null());
                json_object_set(it, "last_headers", hdrs);
        }
        /* Under the lock: other threads drop references to these too, and
         * jansson's json_decref() reads the count non-atomically first. */
        json_decref(hdrs);
        json_decref(old_hdrs);
        pthread_mutex_unlock(&st.st_lock);
}

/* ------------------------------------------------------------------------ */
/* Response bodies                                                           */

/** Dumps @p j (stolen) compactly; caller frees the result. */
static char *dump(json_t *j, size_t *len) {
        char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
        json_decref(j);
        *len = s ? strlen(s) : 0;
        return s;
}

/** An OpenAI-shaped error body (@p code may be NULL); caller frees. */
static char *error_body(const char *msg, const char *type, const char *code,
                        size_t *len) {
        fm_buf_t b = { 0 };
        buf_s(&b, "{\"error\":{\"message\":");
        buf_jstr(&b, msg, strlen(msg));
        buf_s(&b, ",\"type\":");
        buf_jstr(&b, type, strlen(type));
        buf_s(&b, ",\"param\":null,\"code\":");
        if (code)
                buf_jstr(&b, code, strlen(code));
        else
                buf_s(&b, "null");
        buf_s(&b, "}}");
        return buf_take(&b, len);
}

static char *error_for_status(unsigned status, size_t *len) {
        char msg[128];
        switch (status) {
        case 429:
                return error_body("Rate limit reached for requests "
                                  "(fake_model).", "requests",
                                  "rate_limit_exceeded", len);
        case 400:
                return error_body("Bad request (fake_model).",
                                  "invalid_request_error", NULL, len);
        case 401:
                return error_body("Incorrect API key provided (fake_model).",
                                  "invalid_request_error", "invalid_api_key",
                                  len);
        case 404:
                return error_body("The model does not exist (fake_model).",
                                  "invalid_request_error",
                                  "model_not_found", len);
        default:
                snprintf(msg, sizeof(msg),
                         "The server had an error while processing your "
                         "request (fake_model, status %u).", status);
                return error_body(msg, status >= 500 ? "server_error"
                                                     : "invalid_request_error",
                                  NULL, len);
        }
}

/* What the model was asked, gathered from the request. */
typedef struct fm_gen_s {
        size_t      g_in_bytes;     /* all input text */
        int64_t     g_in_tokens;    /* input given as token ids */
        const char *g_last;         /* last user text (borrowed) */
        size_t      g_last_len;
        int64_t     g_max_out;      /* -1: no limit */
        int64_t     g_out_override; /* -1: none (fake.completion_tokens) */
} fm_gen_t;

/* The answer text: "echo: " and the start of the last user text, cut to
 * the output token limit, then g_pad bytes of 'x' (body_bytes). */
typedef struct fm_answer_s {
        size_t  a_pre_len;     /* bytes of "echo: " used */
        size_t  a_user_len;    /* bytes of the user text used */
        size_t  a_pad;
        bool    a_truncated;
        int64_t a_tokens;      /* completion tokens with the padding */
        int64_t a_tokens_bare; /* ... and without it */
} fm_answer_t;

static const char echo_pre[] = "echo: ";
#define ECHO_PRE_LEN (sizeof(echo_pre) - 1)

/* Adds the text in a message "content" (string or array of parts) to
 * *bytes; sets *last to its first text. */
static void content_text(json_t *content, size_t *bytes, const char **last,
                         size_t *last_len) {
        if (json_is_string(content)) {
                *bytes += json_string_length(content);
                *last = json_string_value(content);
                *last_len = json_string_length(content);
                return;
        }
        if (!json_is_array(content))
                return;
        size_t i;
        json_t *part;
        bool first = true;
        json_array_foreach(content, i, part) {
                json_t *t = json_is_string(part) ? part
                            : json_object_get(part, "text");
                if (!json_is_string(t))
                        continue;
                *bytes += json_string_length(t);
                if (first) {
                        *last = json_string_value(t);
                        *last_len = json_string_length(t);
                        first = false;
                }
        }
}

static fm_answer_t answer_of(const fm_gen_t *g, size_t pad) {
        fm_answer_t a = { .a_pad = pad };
        size_t n = utf8_prefix(g->g_last ? g->g_last : "", g->g_last_len,
                               FM_ECHO_CHARS, g->g_last_len);
        size_t tl = ECHO_PRE_LEN + n;
        if (g->g_max_out >= 0 && tokens_of(tl) > g->g_max_out) {
                size_t cap = (size_t)g->g_max_out * 4;
                if (cap <= ECHO_PRE_LEN) {
                        tl = cap;
                        n = 0;
                } else {
                        n = utf8_prefix(g->g_last, n, FM_ECHO_CHARS,
                                        cap - ECHO_PRE_LEN);
                        tl = ECHO_PRE_LEN + n;
                }
                a.a_truncated = true;
        }
        a.a_pre_len = tl < ECHO_PRE_LEN ? tl : ECHO_PRE_LEN;
        a.a_user_len = n;
        a.a_tokens_bare = g->g_out_override >= 0 ? g->g_out_override
                          : tokens_of(tl);
        a.a_tokens = g->g_out_override >= 0 ? g->g_out_override
                     : tokens_of(tl + pad);
        return a;
}

/** Appends the answer as a quoted JSON string, padded or not. */
static void buf_answer(fm_buf_t *b, const fm_gen_t *g, const fm_answer_t *a,
                       bool padded) {
        buf_add(b, "\"", 1);
        buf_add(b, echo_pre, a->a_pre_len);
        buf_jesc(b, g->g_last, a->a_user_len);
        if (padded)
                buf_fill(b, 'x', a->a_pad);
        buf_add(b, "\"", 1);
}

static void buf_hexid(fm_buf_t *b, const char *prefix, uint64_t h,
                      int words) {
        buf_s(b, "\"");
        buf_s(b, prefix);
        for (int i = 0; i < words; i++)
                buf_f(b, "%016" PRIx64, i ? mix64(h + (uint64_t)i) : h);
        buf_s(b, "\"");
}

static int64_t max_tokens_of(json_t *req, const char *k1, const char *k2) {
        json_t *v = json_object_get(req, k1);
        if (!json_is_integer(v) && k2)
                v = json_object_get(req, k2);
        return json_is_integer(v) && json_integer_value(v) >= 0
               ? json_integer_value(v) : -1;
}

static int64_t n_of(json_t *req) {
        json_t *v = json_object_get(req, "n");
        int64_t n = json_is_integer(v) ? json_integer_value(v) : 1;
        return n < 1 ? 1 : n > 128 ? 128 : n;
}

/** Appends ,"model":... and the "created" time; both endpoints use them. */
static void buf_model(fm_buf_t *b, json_t *req, const char *created_key) {
        json_t *m = json_object_get(req, "model");
        buf_f(b, ",\"%s\":%d,\"model\":", created_key, FM_CREATED);
        if (json_is_string(m))
                buf_jstr(b, json_string_value(m), json_string_length(m));
        else
                buf_s(b, "\"fake-model\"");
}

/** POST /v1/chat/completions. */
static void gen_chat(fm_buf_t *b, json_t *req, uint64_t h, fm_gen_t *g,
                     size_t pad) {
        json_t *msgs = json_object_get(req, "messages");
        const char *any = NULL;
        size_t any_len = 0, i;
        json_t *m;
        json_array_foreach(msgs, i, m) {
                const char *t = NULL;
                size_t tl = 0;
                content_text(json_object_get(m, "content"), &g->g_in_bytes,
                             &t, &tl);
                if (!t)
                        continue;
                any = t;
                any_len = tl;
                const char *role = json_string_value(
                        json_object_get(m, "role"));
                if (role && !strcmp(role, "user")) {
                        g->g_last = t;
                        g->g_last_len = tl;
                }
        }
        if (!g->g_last) {
                g->g_last = any;
                g->g_last_len = any_len;
        }
        g->g_max_out = max_tokens_of(req, "max_completion_tokens",
                                     "max_tokens");
        fm_answer_t a = answer_of(g, pad);
        int64_t n = n_of(req), out = 0, in = tokens_of(g->g_in_bytes);

        buf_s(b, "{\"id\":");
        buf_hexid(b, "chatcmpl-", h, 2);
        buf_s(b, ",\"object\":\"chat.completion\"");
        buf_model(b, req, "created");
        buf_s(b, ",\"choices\":[");
        for (int64_t k = 0; k < n; k++) {
                /* Only the first choice carries the padding. */
                buf_f(b, "%s{\"index\":%" PRId64 ",\"message\":{\"role\":"
                      "\"assistant\",\"content\":", k ? "," : "", k);
                buf_answer(b, g, &a, k == 0);
                buf_f(b, ",\"refusal\":null,\"annotations\":[]},"
                      "\"logprobs\":null,\"finish_reason\":\"%s\"}",
                      a.a_truncated ? "length" : "stop");
                out += k ? a.a_tokens_bare : a.a_tokens;
        }
        buf_f(b, "],\"usage\":{\"prompt_tokens\":%" PRId64 ","
              "\"completion_tokens\":%" PRId64 ",\"total_tokens\":%" PRId64
              ",\"prompt_tokens_details\":{\"cached_tokens\":0,"
              "\"audio_tokens\":0},\"completion_tokens_details\":{"
              "\"reasoning_tokens\":0,\"audio_tokens\":0,"
              "\"accepted_prediction_tokens\":0,"
              "\"rejected_prediction_tokens\":0}},"
              "\"service_tier\":\"default\","
              "\"system_fingerprint\":\"fp_fake_model\"}",
              in, out, in + out);
}

/** POST /v1/completions: one choice per prompt and per n. */
static void gen_completions(fm_buf_t *b, json_t *req, uint64_t h,
                            fm_gen_t *g, size_t pad) {
        json_t *prompt = json_object_get(req, "prompt");
        json_t *prompts;
        /* A string, a list of strings, a list of token ids, or a list of
         * such lists: normalize to a list of prompts. */
        if (!prompt)
                prompts = json_pack("[s]", "");
        else if (json_is_array(prompt) && json_array_size(prompt) > 0 &&
                 !json_is_integer(json_array_get(prompt, 0)))
                prompts = json_incref(prompt);
        else
                prompts = json_pack("[O]", prompt);
        g->g_max_out = max_tokens_of(req, "max_tokens", NULL);
        int64_t n = n_of(req), out = 0;

        buf_s(b, "{\"id\":");
        buf_hexid(b, "cmpl-", h, 2);
        buf_s(b, ",\"object\":\"text_completion\"");
        buf_model(b, req, "created");
        buf_s(b, ",\"choices\":[");
        size_t i;
        json_t *p;
        json_array_foreach(prompts, i, p) {
                fm_gen_t pg = *g;
                char tokbuf[64];
                if (json_is_string(p)) {
                        pg.g_last = json_string_value(p);
                        pg.g_last_len = json_string_length(p);
                        g->g_in_bytes += pg.g_last_len;
                } else if (json_is_array(p)) {
                        size_t nt = json_array_size(p);
                        snprintf(tokbuf, sizeof(tokbuf), "[%zu tokens]", nt);
                        pg.g_last = tokbuf;
                        pg.g_last_len = strlen(tokbuf);
                        g->g_in_tokens += (int64_t)nt;
                } else {
                        pg.g_last = "";
                        pg.g_last_len = 0;
                }
                fm_answer_t a = answer_of(&pg, i == 0 ? pad : 0);
                for (int64_t k = 0; k < n; k++) {
                        buf_s(b, i || k ? ",{\"text\":" : "{\"text\":");
                        buf_answer(b, &pg, &a, k == 0);
                        buf_f(b, ",\"index\":%" PRId64 ",\"logprobs\":null,"
                              "\"finish_reason\":\"%s\"}",
                              (int64_t)i * n + k,
                              a.a_truncated ? "length" : "stop");
                        out += k ? a.a_tokens_bare : a.a_tokens;
                }
        }
        json_decref(prompts);
        int64_t in = tokens_of(g->g_in_bytes) + g->g_in_tokens;
        buf_f(b, "],\"usage\":{\"prompt_tokens\":%" PRId64 ","
              "\"completion_tokens\":%" PRId64 ",\"total_tokens\":%" PRId64
              "},\"system_fingerprint\":\"fp_fake_model\"}",
              in, out, in + out);
}

static const char b64[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static void buf_base64(fm_buf_t *b, const unsigned char *p, size_t n) {
        for (size_t i = 0; i < n; i += 3) {
                uint32_t v = (uint32_t)p[i] << 16;
                if (i + 1 < n)
                        v |= (uint32_t)p[i + 1] << 8;
                if (i + 2 < n)
                        v |= p[i + 2];
                char q[4] = {
                        b64[(v >> 18) & 63], b64[(v >> 12) & 63],
                        i + 1 < n ? b64[(v >> 6) & 63] : '=',
                        i + 2 < n ? b64[v & 63] : '=',
                };
                buf_add(b, q, 4);
        }
}

/** Appends a deterministic unit vector for one input. */
static void buf_embedding(fm_buf_t *b, uint64_t h, int dims, bool base64) {
        float v[4096];
        double norm = 0;
        for (int i = 0; i < dims; i++) {
                uint64_t r = mix64(h + (uint64_t)i * 0x9e3779b97f4a7c15ull);
                v[i] = (float)((double)(r >> 11) * 0x1.0p-53 * 2.0 - 1.0);
                norm += (double)v[i] * v[i];
        }
        norm = sqrt(norm);
        for (int i = 0; i < dims; i++)
                v[i] = norm > 0 ? (float)(v[i] / norm) : 0.0f;
        if (base64) {
                /* Little-endian float32, like the real API. */
                buf_add(b, "\"", 1);
                buf_base64(b, (const unsigned char *)v,
                           (size_t)dims * sizeof(v[0]));
                buf_add(b, "\"", 1);
                return;
        }
        buf_add(b, "[", 1);
        for (int i = 0; i < dims; i++)
                buf_f(b, "%s%.8g", i ? "," : "", (double)v[i]);
        buf_add(b, "]", 1);
}

/** POST /v1/embeddings: one vector per input. */
static void gen_embeddings(fm_buf_t *b, json_t *req, fm_gen_t *g) {
        json_t *input = json_object_get(req, "input");
        json_t *inputs;
        if (!input)
                inputs = json_pack("[s]", "");
        else if (json_is_array(input) && json_array_size(input) > 0 &&
                 !json_is_integer(json_array_get(input, 0)))
                inputs = json_incref(input);
        else
                inputs = json_pack("[O]", input);
        json_t *d = json_object_get(req, "dimensions");
        int dims = json_is_integer(d) ? (int)json_integer_value(d) : 16;
        if (dims < 1)
                dims = 1;
        if (dims > 4096)
                dims = 4096;
        const char *fmt = json_string_value(json_object_get(
                req, "encoding_format"));
        bool base64 = fmt && !strcmp(fmt, "base64");
        buf_s(b, "{\"object\":\"list\",\"data\":[");
        size_t i;
        json_t *in;
        json_array_foreach(inputs, i, in) {
                uint64_t ih;
                if (json_is_string(in)) {
                        g->g_in_bytes += json_string_length(in);
                        ih = hash64(json_string_value(in),
                                    json_string_length(in), 7);
                } else {
                        char *s = json_dumps(in, JSON_COMPACT |
                                             JSON_ENCODE_ANY);
                        ih = hash64(s ? s : "", s ? strlen(s) : 0, 7);
                        free(s);
                        if (json_is_array(in))
                                g->g_in_tokens += (int64_t)json_array_size(in);
                }
                buf_f(b, "%s{\"object\":\"embedding\",\"index\":%zu,"
                      "\"embedding\":", i ? "," : "", i);
                buf_embedding(b, ih, dims, base64);
                buf_s(b, "}");
        }
        json_decref(inputs);
        int64_t tok = tokens_of(g->g_in_bytes) + g->g_in_tokens;
        buf_s(b, "]");
        /* The real API has no "created" here; buf_model() adds it, so
         * write the model by hand. */
        json_t *m = json_object_get(req, "model");
        buf_s(b, ",\"model\":");
        if (json_is_string(m))
                buf_jstr(b, json_string_value(m), json_string_length(m));
        else
                buf_s(b, "\"fake-model\"");
        buf_f(b, ",\"usage\":{\"prompt_tokens\":%" PRId64 ","
              "\"total_tokens\":%" PRId64 "}}", tok, tok);
}

/** POST /v1/responses. */
static void gen_responses(fm_buf_t *b, json_t *req, uint64_t h, fm_gen_t *g,
                          size_t pad) {
        json_t *input = json_object_get(req, "input");
        json_t *instr = json_object_get(req, "instructions");
        if (json_is_string(instr))
                g->g_in_bytes += json_string_length(instr);
        if (json_is_string(input)) {
                content_text(input, &g->g_in_bytes, &g->g_last,
                             &g->g_last_len);
        } else if (json_is_array(input)) {
                size_t i;
                json_t *it;
                const char *any = NULL;
                size_t any_len = 0;
                json_array_foreach(input, i, it) {
                        const char *t = NULL;
                        size_t tl = 0;
                        json_t *c = json_object_get(it, "content");
                        if (!c)
                                c = json_object_get(it, "output");
                        if (!c)
                                c = json_object_get(it, "text");
                        content_text(c, &g->g_in_bytes, &t, &tl);
                        if (!t)
                                continue;
                        any = t;
                        any_len = tl;
                        const char *role = json_string_value(
                                json_object_get(it, "role"));
                        if (role && !strcmp(role, "user")) {
                                g->g_last = t;
                                g->g_last_len = tl;
                        }
                }
                if (!g->g_last) {
                        g->g_last = any;
                        g->g_last_len = any_len;
                }
        }
        g->g_max_out = max_tokens_of(req, "max_output_tokens", NULL);
        fm_answer_t a = answer_of(g, pad);
        int64_t in = tokens_of(g->g_in_bytes), out = a.a_tokens;
        const char *status = a.a_truncated ? "incomplete" : "completed";

        buf_s(b, "{\"id\":");
        buf_hexid(b, "resp_", h, 3);
        buf_s(b, ",\"object\":\"response\"");
        buf_model(b, req, "created_at");
        buf_f(b, ",\"status\":\"%s\",\"error\":null,", status);
        if (a.a_truncated)
                buf_s(b, "\"incomplete_details\":{\"reason\":"
                      "\"max_output_tokens\"},");
        else
                buf_s(b, "\"incomplete_details\":null,");
        buf_s(b, "\"instructions\":");
        if (json_is_string(instr))
                buf_jstr(b, json_string_value(instr),
                         json_string_length(instr));
        else
                buf_s(b, "null");
        buf_s(b, ",\"output\":[{\"type\":\"message\",\"id\":");
        buf_hexid(b, "msg_", mix64(h), 3);
        buf_f(b, ",\"status\":\"%s\",\"role\":\"assistant\",\"content\":[{"
              "\"type\":\"output_text\",\"text\":", status);
        buf_answer(b, g, &a, true);
        buf_f(b, ",\"annotations\":[]}]}],\"parallel_tool_calls\":true,"
              "\"usage\":{\"input_tokens\":%" PRId64 ","
              "\"input_tokens_details\":{\"cached_tokens\":0},"
              "\"output_tokens\":%" PRId64 ",\"output_tokens_details\":{"
              "\"reasoning_tokens\":0},\"total_tokens\":%" PRId64 "}}",
              in, out, in + out);
}

/** POST /v1/messages: an Anthropic Messages answer. */
static void gen_messages(fm_buf_t *b, json_t *req, uint64_t h, fm_gen_t *g,
                         size_t pad) {
        json_t *msgs = json_object_get(req, "messages");
        json_t *sys = json_object_get(req, "system");
        const char *any = NULL, *st = NULL;
        size_t any_len = 0, i, sl = 0;
        json_t *m;
        content_text(sys, &g->g_in_bytes, &st, &sl);
        json_array_foreach(msgs, i, m) {
                const char *t = NULL;
                size_t tl = 0;
                content_text(json_object_get(m, "content"), &g->g_in_bytes,
                             &t, &tl);
                if (!t)
                        continue;
                any = t;
                any_len = tl;
                const char *role = json_string_value(
                        json_object_get(m, "role"));
                if (role && !strcmp(role, "user")) {
                        g->g_last = t;
                        g->g_last_len = tl;
                }
        }
        if (!g->g_last) {
                g->g_last = any;
                g->g_last_len = any_len;
        }
        g->g_max_out = max_tokens_of(req, "max_tokens", NULL);
        fm_answer_t a = answer_of(g, pad);
        json_t *model = json_object_get(req, "model");

        buf_s(b, "{\"id\":");
        buf_hexid(b, "msg_", h, 2);
        buf_s(b, ",\"type\":\"message\",\"role\":\"assistant\",\"model\":");
        if (json_is_string(model))
                buf_jstr(b, json_string_value(model),
                         json_string_length(model));
        else
                buf_s(b, "\"fake-model\"");
        buf_s(b, ",\"content\":[{\"type\":\"text\",\"text\":");
        buf_answer(b, g, &a, true);
        buf_f(b, "}],\"stop_reason\":\"%s\",\"stop_sequence\":null,"
              "\"usage\":{\"input_tokens\":%" PRId64 ",\"output_tokens\":%"
              PRId64 "}}",
              a.a_truncated ? "max_tokens" : "end_turn",
              tokens_of(g->g_in_bytes), a.a_tokens);
}

enum { EP_NONE, EP_CHAT, EP_COMPLETIONS, EP_EMBEDDINGS, EP_RESPONSES,
       EP_MESSAGES };

static int endpoint_of(const char *path) {
        if (!strcmp(path, "/v1/chat/completions"))
                return EP_CHAT;
        if (!strcmp(path, "/v1/completions"))
                return EP_COMPLETIONS;
        if (!strcmp(path, "/v1/embeddings"))
                return EP_EMBEDDINGS;
        if (!strcmp(path, "/v1/responses"))
                return EP_RESPONSES;
        if (!strcmp(path, "/v1/messages"))
                return EP_MESSAGES;
        return EP_NONE;
}

/** The successful answer for @p ep, its text padded with @p pad bytes;
 *  caller frees; NULL when out of memory. */
static char *gen_body(int ep, json_t *req, uint64_t h, size_t pad,
                      int64_t out_override, size_t *len) {
        fm_gen_t g = { .g_max_out = -1, .g_out_override = out_override };
        fm_buf_t b = { 0 };
        switch (ep) {
        case EP_CHAT:
                gen_chat(&b, req, h, &g, pad);
                break;
        case EP_COMPLETIONS:
                gen_completions(&b, req, h, &g, pad);
                break;
        case EP_EMBEDDINGS:
                gen_embeddings(&b, req, &g);
                break;
        case EP_RESPONSES:
                gen_responses(&b, req, h, &g, pad);
                break;
        case EP_MESSAGES:
                gen_messages(&b, req, h, &g, pad);
                break;
        }
        return buf_take(&b, len);
}

/**
 * Grows the JSON object @p body (caller-owned, @p *len bytes) to exactly
 * @p want bytes when smaller: adds a "fake_padding" string member, or
 * whitespace when fewer bytes are missing than that takes.
 */
static char *pad_to(char *body, size_t *len, size_t want) {
        static const char key[] = ",\"fake_padding\":\"";
        if (!body || want <= *len || *len < 2 || body[*len - 1] != '}')
                return body;
        size_t add = want - *len, at = *len - 1;
        char *nb = malloc(want + 1);
        if (!nb)
                return body;
        memcpy(nb, body, at);
        if (add >= sizeof(key)) {
                memcpy(nb + at, key, sizeof(key) - 1);
                memset(nb + at + sizeof(key) - 1, 'x', add - sizeof(key));
                nb[at + add - 1] = '"';
        } else {
                memset(nb + at, ' ', add);
        }
        nb[want - 1] = '}';
        nb[want] = '\0';
        free(body);
        *len = want;
        return nb;
}

/* ------------------------------------------------------------------------ */
/* Answering                                                                 */

/* --log-responses: one line per answered request that carries the kbatch
 * item headers, "batch:item status arrived_ms responded_ms" (wall clock, ms
 * with a fraction), for the benchmark's added-latency figures. */
static FILE *resp_log;
static pthread_mutex_t resp_log_lock = PTHREAD_MUTEX_INITIALIZER;

static void log_response(const fm_req_t *rq, unsigned status,
                         const struct timespec *ts) {
        if (!resp_log || !rq->rq_item)
                return;
        double now_ms = (double)ts->tv_sec * 1e3 + (double)ts->tv_nsec / 1e6;
        double waited_ms = (double)(now_mono_ns() - rq->rq_arrived_ns) / 1e6;
        pthread_mutex_lock(&resp_log_lock);
        fprintf(resp_log, "%s %u %.3f %.3f\n", rq->rq_item, status,
                now_ms - waited_ms, now_ms);
        pthread_mutex_unlock(&resp_log_lock);
}

static void add_common_headers(struct MHD_Response *r, fm_req_t *rq) {
        char v[64];
        struct timespec ts;
        MHD_add_response_header(r, "Content-Type", "application/json");
        MHD_add_response_header(r, "x-request-id", rq->rq_reqid);
        if (rq->rq_retry_after >= 0) {
                snprintf(v, sizeof(v), "%d", rq->rq_retry_after);
                MHD_add_response_header(r, "Retry-After", v);
        }
        snprintf(v, sizeof(v), "%" PRIu64,
                 (now_mono_ns() - rq->rq_arrived_ns) / 1000000u);
        MHD_add_response_header(r, "openai-processing-ms", v);
        clock_gettime(CLOCK_REALTIME, &ts);
        snprintf(v, sizeof(v), "%lld.%06ld",
                 (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000,
                 (long)(ts.tv_nsec % 1000000));
        MHD_add_response_header(r, "x-fake-responded-at", v);
        log_response(rq, rq->rq_status, &ts);
}

/** Queues rq_status with rq_resp (ownership passes to MHD). */
static enum MHD_Result respond(struct MHD_Connection *conn, fm_req_t *rq) {
        struct MHD_Response *r = MHD_create_response_from_buffer(
                rq->rq_resp_len, rq->rq_resp, MHD_RESPMEM_MUST_FREE);
        if (!r)
                return MHD_NO;
        rq->rq_resp = NULL;
        add_common_headers(r, rq);
        enum MHD_Result ret = MHD_queue_response(conn, rq->rq_status, r);
        MHD_destroy_response(r);
        stats_outcome(rq, rq->rq_status, NULL);
        return ret;
}

static ssize_t trickle_read(void *cls, uint64_t pos, char *buf, size_t max) {
        fm_trickle_t *tr = cls;
        if (pos >= tr->tr_len)
                return MHD_CONTENT_READER_END_OF_STREAM;
        if (!atomic_exchange(&tr->tr_ready, false)) {
                if (!timer_suspend(tr->tr_conn, tr->tr_interval_ms, tr))
                        return MHD_CONTENT_READER_END_WITH_ERROR;
                return 0;
        }
        size_t n = tr->tr_len - (size_t)pos;
        if (n > tr->tr_chunk)
                n = tr->tr_chunk;
        if (n > max)
                n = max;
        memcpy(buf, tr->tr_body + pos, n);
        return (ssize_t)n;
}

static void trickle_free(void *cls) {
        fm_trickle_t *tr = cls;
        free(tr->tr_body);
        free(tr);
}

/** Queues the answer a few bytes at a time, one chunk per interval. */
static enum MHD_Result respond_trickle(struct MHD_Connection *conn,
                                       fm_req_t *rq) {
        fm_trickle_t *tr = calloc(1, sizeof(*tr));
        if (!tr)
                return MHD_NO;
        tr->tr_body = rq->rq_resp;
        tr->tr_len = rq->rq_resp_len;
        tr->tr_chunk = rq->rq_trickle_chunk;
        tr->tr_interval_ms = rq->rq_trickle_ms;
        tr->tr_conn = conn;
        atomic_init(&tr->tr_ready, true);
        rq->rq_resp = NULL;
        struct MHD_Response *r = MHD_create_response_from_callback(
                tr->tr_len, 1024, trickle_read, tr, trickle_free);
        if (!r) {
                trickle_free(tr);
                return MHD_NO;
        }
        add_common_headers(r, rq);
        enum MHD_Result ret = MHD_queue_response(conn, rq->rq_status, r);
        MHD_destroy_response(r);
        stats_outcome(rq, rq->rq_status, NULL);
        return ret;
}

/** Drops the connection so that the client sees a reset. */
static enum MHD_Result reset_connection(struct MHD_Connection *conn,
                                        fm_req_t *rq) {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(
                conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (ci) {
                /* Linger 0: close() sends RST instead of FIN. */
                struct linger lg = { .l_onoff = 1, .l_linger = 0 };
                setsockopt(ci->connect_fd, SOL_SOCKET, SO_LINGER, &lg,
                           sizeof(lg));
        }
        stats_outcome(rq, 0, "reset");
        return MHD_NO;
}

static bool peer_closed(struct MHD_Connection *conn) {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(
                conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (!ci)
                return true;
        char c;
        ssize_t n = recv(ci->connect_fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
        return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK &&
                          errno != EINTR);
}

/** Carries out a decided answer, now or after resumption. */
static enum MHD_Result act(struct MHD_Connection *conn, fm_req_t *rq) {
        switch (rq->rq_action) {
        case ACT_RESET:
                return reset_connection(conn, rq);
        case ACT_HANG:
                /* Never answer; look now and then whether the client gave
                 * up, so that its socket can be closed. */
                if (peer_closed(conn)) {
                        stats_outcome(rq, 0, "hang");
                        return MHD_NO;
                }
                if (!timer_suspend(conn, rq->rq_hang_ms, NULL))
                        return MHD_NO;
                if (rq->rq_hang_ms < FM_HANG_POLL_MS)
                        rq->rq_hang_ms *= 2;
                return MHD_YES;
        case ACT_TRICKLE:
                return respond_trickle(conn, rq);
        default:
                return respond(conn, rq);
        }
}

/** Fills rq with an error answer for @p status. */
static void decide_error(fm_req_t *rq, unsigned status) {
        rq->rq_action = ACT_RESPOND;
        rq->rq_status = status;
        free(rq->rq_resp);
        rq->rq_resp = error_for_status(status, &rq->rq_resp_len);
}

/* A "fake" trigger object, parsed. */
typedef struct fm_trigger_s {
        bool    tg_active;
        int     tg_status;        /* 0: none */
        int     tg_latency_ms;
        int     tg_retry_after;   /* -1: none */
        int     tg_action;
        int64_t tg_body_bytes;    /* -1: none */
        int64_t tg_out_tokens;    /* -1: none */
        size_t  tg_chunk;
        int     tg_interval_ms;
} fm_trigger_t;

static int64_t int_field(json_t *o, const char *k, int64_t dflt, int64_t min,
                         int64_t max) {
        json_t *v = json_object_get(o, k);
        if (!json_is_number(v))
                return dflt;
        double d = json_number_value(v);
        return d < (double)min ? min : d > (double)max ? max : (int64_t)d;
}

/**
 * Reads the body's "fake" object and decides whether it fires for this
 * item: it does for the first "times" answers per item key (always when
 * "times" is absent).
 */
static void trigger_parse(json_t *req, fm_req_t *rq, uint64_t h,
                          fm_trigger_t *tg) {
        memset(tg, 0, sizeof(*tg));
        tg->tg_retry_after = -1;
        tg->tg_body_bytes = -1;
        tg->tg_out_tokens = -1;
        json_t *f = json_object_get(req, "fake");
        if (!json_is_object(f))
                return;
        int64_t times = int_field(f, "times", -1, 0, INT_MAX);
        if (times >= 0) {
                char key[64];
                const char *k = rq->rq_item;
                if (!k) {
                        snprintf(key, sizeof(key), "body:%016" PRIx64, h);
                        k = key;
                }
                bool fire;
                pthread_mutex_lock(&st.st_lock);
                json_t *v = json_object_get(st.st_triggers, k);
                int64_t used = v ? json_integer_value(v) : 0;
                fire = used < times;
                if (fire)
                        counter_add(st.st_triggers, k, 1);
                pthread_mutex_unlock(&st.st_lock);
                if (!fire)
                        return;
        }
        tg->tg_active = true;
        tg->tg_status = (int)int_field(f, "status", 0, 0, 599);
        if (tg->tg_status < 100)
                tg->tg_status = 0;
        tg->tg_latency_ms = (int)int_field(f, "latency_ms", 0, 0,
                                           24 * 3600 * 1000);
        tg->tg_retry_after = (int)int_field(f, "retry_after", -1, 0,
                                            INT_MAX);
        tg->tg_body_bytes = int_field(f, "body_bytes", -1, 0,
                                      FM_MAX_BODY_BYTES);
        tg->tg_out_tokens = int_field(f, "completion_tokens", -1, 0,
                                      INT64_C(1) << 40);
        tg->tg_chunk = (size_t)int_field(f, "chunk_bytes", 8, 1, 1 << 20);
        tg->tg_interval_ms = (int)int_field(f, "interval_ms", 100, 1, 60000);
        const char *mode = json_string_value(json_object_get(f, "mode"));
        tg->tg_action = ACT_RESPOND;
        if (mode) {
                if (!strcmp(mode, "reset"))
                        tg->tg_action = ACT_RESET;
                else if (!strcmp(mode, "hang"))
                        tg->tg_action = ACT_HANG;
                else if (!strcmp(mode, "trickle"))
                        tg->tg_action = ACT_TRICKLE;
                else if (!strcmp(mode, "garbage"))
                        tg->tg_action = ACT_GARBAGE;
        }
}

static void decide_garbage(fm_req_t *rq) {
        static const char g[] =
                "{\"id\": \"chatcmpl-garbage\", \"object\": \"chat.compl"
                "<html><body>upstream hiccup</body></html>\n";
        rq->rq_action = ACT_RESPOND;
        rq->rq_status = 200;
        free(rq->rq_resp);
        rq->rq_resp = strdup(g);
        rq->rq_resp_len = rq->rq_resp ? sizeof(g) - 1 : 0;
}

/** Builds rq_resp for rq_status: the model's answer or an error, grown to
 *  the trigger's body_bytes. Returns false when out of memory. */
static bool build_resp(fm_req_t *rq, int ep, json_t *req, uint64_t h,
                       const fm_trigger_t *tg) {
        if (rq->rq_status < 200 || rq->rq_status >= 300) {
                rq->rq_resp = error_for_status(rq->rq_status,
                                               &rq->rq_resp_len);
        } else {
                size_t pad = 0, want = (size_t)tg->tg_body_bytes;
                rq->rq_resp = gen_body(ep, req, h, 0, tg->tg_out_tokens,
                                       &rq->rq_resp_len);
                /* Pad the answer text itself; the token counts grow with
                 * it, so converge in a few rounds. */
                for (int round = 0; round < 4 && rq->rq_resp &&
                     tg->tg_body_bytes >= 0 && ep != EP_EMBEDDINGS &&
                     rq->rq_resp_len != want; round++) {
                        if (rq->rq_resp_len > want + pad)
                                break;
                        pad = want + pad - rq->rq_resp_len;
                        free(rq->rq_resp);
                        rq->rq_resp = gen_body(ep, req, h, pad,
                                               tg->tg_out_tokens,
                                               &rq->rq_resp_len);
                }
        }
        if (tg->tg_body_bytes >= 0)
                rq->rq_resp = pad_to(rq->rq_resp, &rq->rq_resp_len,
                                     (size_t)tg->tg_body_bytes);
        return rq->rq_resp != NULL;
}

/**
 * Decides the answer to a complete API request and either carries it out or
 * suspends the connection until its latency has passed.
 */
static enum MHD_Result handle_api(struct MHD_Connection *conn, fm_req_t *rq,
                                  const char *method, const char *path) {
        fm_conf_t c = conf_get();
        stats_arrival(conn, rq, method, path, &c);
        uint64_t h = hash64(rq->rq_body.b_data ? rq->rq_body.b_data : "",
                            rq->rq_body.b_len, 0);
        snprintf(rq->rq_reqid, sizeof(rq->rq_reqid), "req_%016" PRIx64, h);

        int ep = endpoint_of(path);
        if (ep == EP_NONE) {
                char msg[300];
                snprintf(msg, sizeof(msg), "Invalid URL (%s %.200s)", method,
                         path);
                rq->rq_status = 404;
                rq->rq_resp = error_body(msg, "invalid_request_error",
                                         "unknown_url", &rq->rq_resp_len);
                return respond(conn, rq);
        }
        if (strcmp(method, "POST")) {
                char msg[300];
                snprintf(msg, sizeof(msg), "Invalid method for URL (%s "
                         "%.200s)", method, path);
                rq->rq_status = 405;
                rq->rq_resp = error_body(msg, "invalid_request_error",
                                         "method_not_allowed",
                                         &rq->rq_resp_len);
                return respond(conn, rq);
        }
        if (rq->rq_too_big) {
                rq->rq_status = 413;
                rq->rq_resp = error_body("Request body too large.",
                                         "invalid_request_error", NULL,
                                         &rq->rq_resp_len);
                return respond(conn, rq);
        }
        json_error_t jerr;
        json_t *req = rq->rq_body.b_data
                      ? json_loadb(rq->rq_body.b_data, rq->rq_body.b_len,
                                   0, &jerr)
                      : NULL;
        if (!json_is_object(req)) {
                json_decref(req);
                rq->rq_status = 400;
                rq->rq_resp = error_body(
                        "We could not parse the JSON body of your request. "
                        "The body must be a JSON object.",
                        "invalid_request_error", NULL, &rq->rq_resp_len);
                return respond(conn, rq);
        }
        if (!inflight_enter(c.cf_max_concurrency)) {
                /* Like a provider's concurrency limit: refuse at once. */
                json_decref(req);
                injected_add(INJ_CONCURRENCY);
                rq->rq_retry_after = c.cf_retry_after;
                decide_error(rq, 429);
                return respond(conn, rq);
        }
        rq->rq_inflight = true;

        fm_trigger_t tg;
        trigger_parse(req, rq, h, &tg);
        int delay = latency_draw(&c) + (tg.tg_active ? tg.tg_latency_ms : 0);
        rq->rq_action = ACT_RESPOND;
        rq->rq_status = 200;
        if (tg.tg_active) {
                injected_add(INJ_TRIGGER);
                if (tg.tg_status)
                        rq->rq_status = (unsigned)tg.tg_status;
                if (tg.tg_status == 429)
                        rq->rq_retry_after = c.cf_retry_after;
                if (tg.tg_retry_after >= 0)
                        rq->rq_retry_after = tg.tg_retry_after;
                rq->rq_action = tg.tg_action;
        } else {
                /* One draw, split in this order: reset, hang, 429, 500,
                 * garbage. */
                double u = rng_unit(), acc = 0;
                if (u < (acc += c.cf_fail_reset)) {
                        rq->rq_action = ACT_RESET;
                } else if (u < (acc += c.cf_fail_hang)) {
                        rq->rq_action = ACT_HANG;
                } else if (u < (acc += c.cf_fail_429)) {
                        rq->rq_status = 429;
                        rq->rq_retry_after = c.cf_retry_after;
                        injected_add(INJ_429);
                } else if (u < (acc += c.cf_fail_500)) {
                        rq->rq_status = 500;
                        injected_add(INJ_500);
                } else if (u < (acc += c.cf_fail_garbage)) {
                        rq->rq_action = ACT_GARBAGE;
                }
        }
        switch (rq->rq_action) {
        case ACT_RESET:
                injected_add(INJ_RESET);
                break;
        case ACT_HANG:
                injected_add(INJ_HANG);
                rq->rq_hang_ms = 100;
                delay = 0;
                break;
        case ACT_TRICKLE:
                injected_add(INJ_TRICKLE);
                rq->rq_trickle_chunk = tg.tg_chunk;
                rq->rq_trickle_ms = tg.tg_interval_ms;
                break;
        default:
                break;
        }
        if (rq->rq_action == ACT_GARBAGE) {
                injected_add(INJ_GARBAGE);
                decide_garbage(rq);
        } else if (rq->rq_action != ACT_RESET && rq->rq_action != ACT_HANG &&
                   !build_resp(rq, ep, req, h, &tg)) {
                json_decref(req);
                decide_error(rq, 500);
                return respond(conn, rq);
        }
        json_decref(req);

        if (rq->rq_action == ACT_HANG || delay > 0) {
                rq->rq_decided = true;
                if (rq->rq_action == ACT_HANG)
                        delay = rq->rq_hang_ms;
                if (!timer_suspend(conn, delay, NULL))
                        return MHD_NO;
                return MHD_YES;
        }
        return act(conn, rq);
}

/* ------------------------------------------------------------------------ */
/* Control endpoints                                                         */

static json_t *conf_json(const fm_conf_t *c) {
        char lat[32];
        if (c->cf_lat_max_ms > c->cf_lat_min_ms)
                snprintf(lat, sizeof(lat), "%d-%d", c->cf_lat_min_ms,
                         c->cf_lat_max_ms);
        else
                snprintf(lat, sizeof(lat), "%d", c->cf_lat_min_ms);
        return json_pack("{s:s,s:i,s:i,s:f,s:f,s:f,s:f,s:f,s:i,s:i,s:b,s:i,s:f}",
                         "latency_ms", lat,
                         "latency_min_ms", c->cf_lat_min_ms,
                         "latency_max_ms", c->cf_lat_max_ms,
                         "fail_500", c->cf_fail_500,
                         "fail_429", c->cf_fail_429,
                         "fail_reset", c->cf_fail_reset,
                         "fail_hang", c->cf_fail_hang,
                         "fail_garbage", c->cf_fail_garbage,
                         "max_concurrency", c->cf_max_concurrency,
                         "retry_after", c->cf_retry_after,
                         "record_items", c->cf_record_items,
                         "job_ms", c->cf_job_ms,
                         "job_fail", c->cf_job_fail);
}

/** Parses "N" or "MIN-MAX" milliseconds. */
static bool parse_latency(const char *s, int *min, int *max) {
        char *end;
        errno = 0;
        long a = strtol(s, &end, 10), b;
        if (errno || end == s || a < 0 || a > 86400000)
                return false;
        if (*end == '-') {
                const char *t = end + 1;
                b = strtol(t, &end, 10);
                if (errno || end == t || *end || b < a || b > 86400000)
                        return false;
        } else if (*end) {
                return false;
        } else {
                b = a;
        }
        *min = (int)a;
        *max = (int)b;
        return true;
}

static bool parse_rate(const char *s, double *out) {
        char *end;
        errno = 0;
        double d = strtod(s, &end);
        if (errno || end == s || *end || !(d >= 0.0 && d <= 1.0))
                return false;
        *out = d;
        return true;
}

/** Applies a POST /_config object to a copy of the settings. */
static bool conf_apply(fm_conf_t *c, json_t *o, char *err, size_t err_size) {
        const char *k;
        json_t *v;
        json_object_foreach(o, k, v) {
                double *rate = NULL;
                if (!strcmp(k, "fail_500"))
                        rate = &c->cf_fail_500;
                else if (!strcmp(k, "fail_429"))
                        rate = &c->cf_fail_429;
                else if (!strcmp(k, "fail_reset"))
                        rate = &c->cf_fail_reset;
                else if (!strcmp(k, "fail_hang"))
                        rate = &c->cf_fail_hang;
                else if (!strcmp(k, "fail_garbage"))
                        rate = &c->cf_fail_garbage;
                else if (!strcmp(k, "job_fail"))
                        rate = &c->cf_job_fail;
                if (rate) {
                        double d = json_number_value(v);
                        if (!json_is_number(v) || d < 0 || d > 1) {
                                snprintf(err, err_size, "%s: a number "
                                         "0..1 expected", k);
                                return false;
                        }
                        *rate = d;
                } else if (!strcmp(k, "latency_ms")) {
                        if (json_is_integer(v) && json_integer_value(v) >= 0 &&
                            json_integer_value(v) <= 86400000) {
                                c->cf_lat_min_ms = c->cf_lat_max_ms =
                                        (int)json_integer_value(v);
                        } else if (json_is_array(v) &&
                                   json_array_size(v) == 2) {
                                char s[64];
                                snprintf(s, sizeof(s), "%" JSON_INTEGER_FORMAT
                                         "-%" JSON_INTEGER_FORMAT,
                                         json_integer_value(
                                                 json_array_get(v, 0)),
                                         json_integer_value(
                                                 json_array_get(v, 1)));
                                if (!parse_latency(s, &c->cf_lat_min_ms,
                                                   &c->cf_lat_max_ms))
                                        goto bad_latency;
                        } else if (!json_is_string(v) ||
                                   !parse_latency(json_string_value(v),
                                                  &c->cf_lat_min_ms,
                                                  &c->cf_lat_max_ms)) {
                                goto bad_latency;
                        }
                } else if (!strcmp(k, "job_ms")) {
                        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
                            json_integer_value(v) > 86400000) {
                                snprintf(err, err_size, "%s: an integer "
                                         "0..86400000 expected", k);
                                return false;
                        }
                        c->cf_job_ms = (int)json_integer_value(v);
                } else if (!strcmp(k, "max_concurrency") ||
                           !strcmp(k, "retry_after")) {
                        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
                            json_integer_value(v) > INT_MAX) {
                                snprintf(err, err_size, "%s: an integer >= 0 "
                                         "expected", k);
                                return false;
                        }
                        *(k[0] == 'm' ? &c->cf_max_concurrency
                                      : &c->cf_retry_after) =
                                (int)json_integer_value(v);
                } else if (!strcmp(k, "record_items")) {
                        if (!json_is_boolean(v)) {
                                snprintf(err, err_size, "%s: a boolean "
                                         "expected", k);
                                return false;
                        }
                        c->cf_record_items = json_is_true(v);
                } else {
                        snprintf(err, err_size, "unknown setting \"%.64s\"",
                                 k);
                        return false;
                }
        }
        return true;
bad_latency:
        snprintf(err, err_size, "latency_ms: N, \"N\", \"MIN-MAX\" or "
                 "[MIN, MAX] expected");
        return false;
}

/** Parses headers kept as JSON text (see stats_arrival()). */
static json_t *headers_json(json_t *raw) {
        json_t *h = raw ? json_loadb(json_string_value(raw),
                                     json_string_length(raw), 0, NULL)
                        : NULL;
        return h ? h : json_object();
}

/** The job API's part of /_stats (under st_lock): jobs submitted, running
 *  now (started, not past their time, not cancelled), cancelled, and with
 *  items the per-item submits/polls/results/cancels. */
static json_t *jobs_stats(bool items) {
        int64_t now = (int64_t)(now_mono_ns() / 1000000);
        json_int_t running = 0, cancelled = 0;
        const char *k;
        json_t *j;
        json_object_foreach(st.st_jobs, k, j) {
                if (json_is_true(json_object_get(j, "cancelled")))
                        cancelled++;
                else if (json_integer_value(json_object_get(j, "done_ms")) >
                         now)
                        running++;
        }
        json_t *r = json_pack("{s:I,s:I,s:I}", "submitted",
                              (json_int_t)json_object_size(st.st_jobs),
                              "running", running, "cancelled", cancelled);
        if (r && items)
                json_object_set_new(r, "by_item",
                                    json_deep_copy(st.st_job_items));
        return r;
}

/** The /_stats body; caller frees. Built and serialized under the lock
 *  because it borrows the live counters. */
static char *stats_dump(bool items, size_t *len) {
        json_t *by_status = json_object();
        json_t *inj = json_object();
        char k[16];
        pthread_mutex_lock(&st.st_lock);
        for (int i = 0; i < 600; i++) {
                if (!st.st_by_status[i])
                        continue;
                snprintf(k, sizeof(k), "%d", i);
                json_object_set_new(by_status, k, json_integer(
                        (json_int_t)st.st_by_status[i]));
        }
        for (int i = 0; i < INJ__CNT; i++)
                json_object_set_new(inj, inj_names[i], json_integer(
                        (json_int_t)st.st_injected[i]));
        json_t *r = json_pack(
                "{s:I,s:I,s:I,s:o,s:O,s:o,s:o,s:{s:s,s:s},s:I}",
                "requests_total", (json_int_t)st.st_requests,
                "inflight", (json_int_t)atomic_load(&st_inflight),
                "peak_concurrency", (json_int_t)atomic_load(&st_peak),
                "by_status", by_status,
                "by_path", st.st_by_path,
                "injected", inj,
                "headers_seen", headers_json(st.st_headers),
                "last_request", "method", st.st_last_method,
                "path", st.st_last_path,
                "items_total", (json_int_t)json_object_size(st.st_by_item));
        if (r && items) {
                json_t *bi = json_object(), *it;
                const char *key;
                json_object_foreach(st.st_by_item, key, it) {
                        json_object_set_new(bi, key, json_pack(
                                "{s:O,s:O,s:O,s:o}",
                                "count", json_object_get(it, "count"),
                                "attempts", json_object_get(it, "attempts"),
                                "statuses", json_object_get(it, "statuses"),
                                "last_headers", headers_json(
                                        json_object_get(it,
                                                        "last_headers"))));
                }
                json_object_set_new(r, "by_item", bi);
        }
        if (r)
                json_object_set_new(r, "jobs", jobs_stats(items));
        char *s = dump(r, len);
        pthread_mutex_unlock(&st.st_lock);
        return s;
}

/** Queues @p s (malloc'd, @p len bytes; ownership passes) as JSON. */
static enum MHD_Result respond_raw(struct MHD_Connection *conn,
                                   unsigned status, char *s, size_t len) {
        if (!s)
                return MHD_NO;
        struct MHD_Response *r = MHD_create_response_from_buffer(
                len, s, MHD_RESPMEM_MUST_FREE);
        if (!r) {
                free(s);
                return MHD_NO;
        }
        MHD_add_response_header(r, "Content-Type", "application/json");
        enum MHD_Result ret = MHD_queue_response(conn, status, r);
        MHD_destroy_response(r);
        return ret;
}

/** Queues @p j (stolen) as JSON. */
static enum MHD_Result respond_json(struct MHD_Connection *conn,
                                    unsigned status, json_t *j) {
        size_t len;
        char *s = dump(j, &len);
        return respond_raw(conn, status, s, len);
}

/** GET /_stats, POST /_reset, GET|POST /_config. */
static enum MHD_Result handle_control(struct MHD_Connection *conn,
                                      fm_req_t *rq, const char *method,
                                      const char *path) {
        char err[256];
        if (!strcmp(path, "/_stats") && !strcmp(method, "GET")) {
                const char *it = MHD_lookup_connection_value(
                        conn, MHD_GET_ARGUMENT_KIND, "items");
                bool items = !(it && (!strcmp(it, "0") ||
                                      !strcasecmp(it, "false")));
                size_t len;
                char *s = stats_dump(items, &len);
                return respond_raw(conn, 200, s, len);
        }
        if (!strcmp(path, "/_reset") && !strcmp(method, "POST")) {
                stats_reset();
                return respond_json(conn, 200, json_pack("{s:b}", "ok", 1));
        }
        if (!strcmp(path, "/_config") && (!strcmp(method, "POST") ||
                                         !strcmp(method, "GET"))) {
                fm_conf_t c;
                pthread_mutex_lock(&cf_lock);
                c = cf;
                if (!strcmp(method, "POST")) {
                        json_error_t jerr;
                        json_t *o = rq->rq_body.b_data
                                    ? json_loadb(rq->rq_body.b_data,
                                                 rq->rq_body.b_len, 0, &jerr)
                                    : NULL;
                        bool ok = json_is_object(o);
                        if (!ok)
                                snprintf(err, sizeof(err), "a JSON object "
                                         "expected");
                        else
                                ok = conf_apply(&c, o, err, sizeof(err));
                        json_decref(o);
                        if (!ok) {
                                size_t len;
                                pthread_mutex_unlock(&cf_lock);
                                char *s = error_body(err,
                                                     "invalid_request_error",
                                                     NULL, &len);
                                return respond_raw(conn, 400, s, len);
                        }
                        cf = c;
                }
                pthread_mutex_unlock(&cf_lock);
                return respond_json(conn, 200, conf_json(&c));
        }
        snprintf(err, sizeof(err), "Invalid URL (%s %.200s)", method, path);
        size_t len;
        char *s = error_body(err, "invalid_request_error", "unknown_url",
                             &len);
        return respond_raw(conn, 404, s, len);
}

/* ------------------------------------------------------------------------ */
/* libmicrohttpd callbacks                                                   */

/* ------------------------------------------------------------------------ */
/* Job API (async providers, SPEC §12): two shapes.                          */
/*   POST-then-GET: POST /jobs/submit -> 202 {"job": {"id"}};               */
/*     GET /jobs/status/ID -> {"id", "status": queued|running|succeeded|   */
/*     failed|cancelled, "output" (succeeded), "error": {"message"}};        */
/*     POST /jobs/cancel/ID.                                                 */
/*   GenVR's three POSTs: /genvr/generate-batch (the input) ->              */
/*     {"success": true, "data": {"id", "status"}}; /genvr/status-batch and  */
/*     /genvr/response-batch (the input with "id") -> {"data": {"id",       */
/*     "status": queued|processing|completed|failed, "error"}} and          */
/*     {"data": {"id", "output"}}.                                           */
/* A job runs job_ms, fails with probability job_fail; submits, polls,       */
/* result fetches and cancels are counted per item (kbatch item headers).   */

static void job_count(const char *item, const char *what) {
        json_t *c;
        if (!item)
                return;
        if (!(c = json_object_get(st.st_job_items, item))) {
                c = json_pack("{s:i,s:i,s:i,s:i}", "submits", 0, "polls", 0,
                              "results", 0, "cancels", 0);
                json_object_set_new(st.st_job_items, item, c);
        }
        counter_add(c, what, 1);
}

/** The job's state now: "running", "succeeded", "failed", "cancelled". */
static const char *job_state(json_t *j, int64_t now) {
        if (json_is_true(json_object_get(j, "cancelled")))
                return "cancelled";
        if (json_integer_value(json_object_get(j, "done_ms")) > now)
                return "running";
        return json_is_true(json_object_get(j, "fail")) ? "failed"
                                                        : "succeeded";
}

static enum MHD_Result handle_jobs(struct MHD_Connection *conn, fm_req_t *rq,
                                   const char *method, const char *path) {
        fm_conf_t c = conf_get();
        int64_t now = (int64_t)(now_mono_ns() / 1000000);
        bool genvr = !strncmp(path, "/genvr/", 7);
        const char *op = path + (genvr ? 7 : 6), *id = NULL;
        json_t *req = NULL, *j, *out = NULL;
        unsigned status = 200;
        char idbuf[64];

        stats_arrival(conn, rq, method, path, &c);
        if (rq->rq_body.b_len)
                req = json_loadb(rq->rq_body.b_data, rq->rq_body.b_len, 0,
                                 NULL);
        pthread_mutex_lock(&st.st_lock);
        if ((!strcmp(op, "submit") || !strcmp(op, "generate-batch")) &&
            !strcmp(method, "POST")) {
                snprintf(idbuf, sizeof(idbuf), "job-%" PRIu64, ++st.st_job_seq);
                j = json_pack("{s:I,s:b,s:b,s:s?,s:O?}", "done_ms",
                              (json_int_t)(now + c.cf_job_ms), "fail",
                              rng_unit() < c.cf_job_fail, "cancelled", 0,
                              "item", rq->rq_item, "input", req);
                json_object_set_new(st.st_jobs, idbuf, j);
                job_count(rq->rq_item, "submits");
                if (genvr)
                        out = json_pack("{s:b,s:{s:s,s:s}}", "success", 1,
                                        "data", "id", idbuf, "status",
                                        "queued");
                else {
                        status = 202;
                        out = json_pack("{s:{s:s,s:s}}", "job", "id", idbuf,
                                        "status", "queued");
                }
                goto answer;
        }
        if (genvr)
                id = json_string_value(json_object_get(req, "id"));
        else if (!strncmp(op, "status/", 7))
                id = op + 7;
        else if (!strncmp(op, "cancel/", 7))
                id = op + 7;
        if (!id || !(j = json_object_get(st.st_jobs, id))) {
                status = 404;
                out = json_pack("{s:{s:s}}", "error", "message",
                                "no such job");
                goto answer;
        }
        if ((genvr && !strcmp(op, "status-batch")) ||
            (!genvr && !strncmp(op, "status/", 7) && !strcmp(method, "GET"))) {
                const char *stt = job_state(j, now);
                job_count(rq->rq_item, "polls");
                if (genvr)
                        out = json_pack(
                            "{s:b,s:{s:s,s:s}}", "success", 1, "data", "id",
                            id, "status",
                            !strcmp(stt, "running")     ? "processing"
                            : !strcmp(stt, "succeeded") ? "completed"
                                                        : stt);
                else
                        out = json_pack("{s:s,s:s}", "id", id, "status", stt);
                if (!strcmp(stt, "failed"))
                        json_object_set_new(genvr ? json_object_get(out, "data")
                                                  : out,
                                            "error",
                                            json_pack("{s:s}", "message",
                                                      "the job failed "
                                                      "(injected)"));
                if (!genvr && !strcmp(stt, "succeeded"))
                        json_object_set_new(out, "output",
                                            json_pack("{s:s,s:O?}", "job", id,
                                                      "input",
                                                      json_object_get(
                                                          j, "input")));
        } else if (genvr && !strcmp(op, "response-batch")) {
                job_count(rq->rq_item, "results");
                if (strcmp(job_state(j, now), "succeeded")) {
                        status = 409;
                        out = json_pack("{s:b,s:s}", "success", 0, "message",
                                        "the job has no result");
                } else
                        out = json_pack("{s:b,s:{s:s,s:{s:s}}}", "success", 1,
                                        "data", "id", id, "output", "job", id);
        } else if (!genvr && !strncmp(op, "cancel/", 7) &&
                   !strcmp(method, "POST")) {
                job_count(rq->rq_item, "cancels");
                json_object_set_new(j, "cancelled", json_true());
                out = json_pack("{s:s,s:s}", "id", id, "status", "cancelled");
        } else {
                status = 405;
                out = json_pack("{s:{s:s}}", "error", "message",
                                "method not allowed");
        }
answer:
        pthread_mutex_unlock(&st.st_lock);
        json_decref(req);
        stats_outcome(rq, status, NULL);
        return respond_json(conn, status, out);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn,
                                  const char *url, const char *method,
                                  const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls) {
        fm_req_t *rq = *con_cls;
        if (!rq) {
                rq = calloc(1, sizeof(*rq));
                if (!rq)
                        return MHD_NO;
                rq->rq_retry_after = -1;
                rq->rq_arrived_ns = now_mono_ns();
                *con_cls = rq;
                return MHD_YES;
        }
        if (*upload_size) {
                if (rq->rq_body.b_len + *upload_size > FM_MAX_BODY)
                        rq->rq_too_big = true;
                else
                        buf_add(&rq->rq_body, upload, *upload_size);
                if (rq->rq_body.b_oom)
                        return MHD_NO;
                *upload_size = 0;
                return MHD_YES;
        }
        if (rq->rq_decided) {
                /* Resumed after a wait. */
                if (stopping())
                        return MHD_NO;
                return act(conn, rq);
        }
        if (url[0] == '/' && url[1] == '_')
                return handle_control(conn, rq, method, url);
        if (!strncmp(url, "/jobs/", 6) || !strncmp(url, "/genvr/", 7))
                return handle_jobs(conn, rq, method, url);
        return handle_api(conn, rq, method, url);
}

static void on_completed(void *cls, struct MHD_Connection *conn,
                         void **con_cls, enum MHD_RequestTerminationCode toe) {
        fm_req_t *rq = *con_cls;
        if (!rq)
                return;
        if (rq->rq_inflight)
                atomic_fetch_sub(&st_inflight, 1);
        req_free(rq);
        *con_cls = NULL;
}

/* ------------------------------------------------------------------------ */
/* Start-up                                                                  */

static void usage(FILE *f) {
        fprintf(f,
"usage: fake_model [options]\n"
"A fake OpenAI-compatible model API for tests and benchmarks.\n"
"\n"
"  --port N              listen port (0: any free port; default 0)\n"
"  --port-file FILE      also write the chosen port to FILE\n"
"  --host ADDR           listen address (default 127.0.0.1)\n"
"  --latency-ms N|A-B    answer after N ms, or uniformly A..B ms (default 0)\n"
"  --fail-500 RATE       answer 500 with probability RATE (0..1)\n"
"  --fail-429 RATE       answer 429 with Retry-After\n"
"  --fail-reset RATE     reset the connection without answering\n"
"  --fail-hang RATE      never answer (until the client gives up)\n"
"  --fail-garbage RATE   answer 200 with a body that is not JSON\n"
"                        (one draw per request, split in this order;\n"
"                        latency applies to every failure but 429s from\n"
"                        --max-concurrency)\n"
"  --retry-after S       Retry-After seconds on 429s (default 1)\n"
"  --max-concurrency N   answer 429 at once above N requests in flight\n"
"  --seed N              random seed (default 1)\n"
"  --threads N           server threads (default 2)\n"
"  --no-item-stats       do not keep per-item stats (for long benchmarks)\n"
"  --job-ms N            job API: how long a job runs (default 2000)\n"
"  --job-fail RATE       job API: share of jobs that fail (default 0)\n"
"  --log-responses FILE  append \"batch:item status arrived_ms responded_ms\"\n"
"                        per answered request with kbatch item headers\n"
"  --help                this text\n"
"\n"
"Endpoints: POST /v1/chat/completions, /v1/completions, /v1/embeddings,\n"
"/v1/responses, /v1/messages (Anthropic); GET /_stats[?items=0];\n"
"POST /_reset; GET|POST /_config.\n"
"Job API: POST /jobs/submit, GET /jobs/status/ID, POST /jobs/cancel/ID;\n"
"POST /genvr/generate-batch, /genvr/status-batch, /genvr/response-batch\n"
"(the input with \"id\"). /_stats \"jobs\" counts them per item.\n"
"A request body's \"fake\" object forces an answer: {\"status\": 500,\n"
"\"times\": 2, \"latency_ms\": 100, \"retry_after\": 2, \"mode\":\n"
"\"reset|hang|garbage|trickle\", \"body_bytes\": N, \"chunk_bytes\": 8,\n"
"\"interval_ms\": 100, \"completion_tokens\": N}.\n");
}

static void die_usage(const char *fmt, const char *arg) {
        fprintf(stderr, "fake_model: ");
        fprintf(stderr, fmt, arg);
        fprintf(stderr, " (see --help)\n");
        exit(2);
}

static long parse_long(const char *opt, const char *s, long min, long max) {
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (errno || end == s || *end || v < min || v > max) {
                fprintf(stderr, "fake_model: %s: bad value \"%s\" "
                        "(see --help)\n", opt, s);
                exit(2);
        }
        return v;
}

static void raise_nofile(void) {
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max;
                setrlimit(RLIMIT_NOFILE, &rl);
        }
}

static int write_port_file(const char *path, unsigned port) {
        char tmp[PATH_MAX];
        snprintf(tmp, sizeof(tmp), "%s.tmp", path);
        FILE *f = fopen(tmp, "w");
        if (!f)
                return -1;
        fprintf(f, "%u\n", port);
        if (fclose(f) != 0)
                return -1;
        return rename(tmp, path);
}

int main(int argc, char **argv) {
        enum {
                O_PORT = 256, O_PORT_FILE, O_HOST, O_LATENCY, O_F500, O_F429,
                O_FRESET, O_FHANG, O_FGARBAGE, O_RETRY, O_MAXCONC, O_SEED,
                O_THREADS, O_NOITEMS, O_RESPLOG, O_HELP, O_JOBMS, O_JOBFAIL,
        };
        static const struct option opts[] = {
                { "port",            required_argument, NULL, O_PORT },
                { "port-file",       required_argument, NULL, O_PORT_FILE },
                { "host",            required_argument, NULL, O_HOST },
                { "latency-ms",      required_argument, NULL, O_LATENCY },
                { "fail-500",        required_argument, NULL, O_F500 },
                { "fail-429",        required_argument, NULL, O_F429 },
                { "fail-reset",      required_argument, NULL, O_FRESET },
                { "fail-hang",       required_argument, NULL, O_FHANG },
                { "fail-garbage",    required_argument, NULL, O_FGARBAGE },
                { "retry-after",     required_argument, NULL, O_RETRY },
                { "max-concurrency", required_argument, NULL, O_MAXCONC },
                { "seed",            required_argument, NULL, O_SEED },
                { "threads",         required_argument, NULL, O_THREADS },
                { "no-item-stats",   no_argument,       NULL, O_NOITEMS },
                { "log-responses",   required_argument, NULL, O_RESPLOG },
                { "help",            no_argument,       NULL, O_HELP },
                { "job-ms",          required_argument, NULL, O_JOBMS },
                { "job-fail",        required_argument, NULL, O_JOBFAIL },
                { NULL, 0, NULL, 0 },
        };
        const char *host = "127.0.0.1", *port_file = NULL;
        long port = 0, threads = 2;
        uint64_t seed = 1;
        int o;
        opterr = 0;
        while ((o = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
                const char *name = argv[optind - 1];
                switch (o) {
                case O_PORT:
                        port = parse_long("--port", optarg, 0, 65535);
                        break;
                case O_PORT_FILE:
                        port_file = optarg;
                        break;
                case O_HOST:
                        host = optarg;
                        break;
                case O_LATENCY:
                        if (!parse_latency(optarg, &cf.cf_lat_min_ms,
                                           &cf.cf_lat_max_ms))
                                die_usage("--latency-ms: bad value \"%s\" "
                                          "(N or MIN-MAX)", optarg);
                        break;
                case O_F500:
                case O_F429:
                case O_FRESET:
                case O_FHANG:
                case O_FGARBAGE: {
                        double *r = o == O_F500 ? &cf.cf_fail_500
                                    : o == O_F429 ? &cf.cf_fail_429
                                    : o == O_FRESET ? &cf.cf_fail_reset
                                    : o == O_FHANG ? &cf.cf_fail_hang
                                    : &cf.cf_fail_garbage;
                        if (!parse_rate(optarg, r))
                                die_usage("bad rate \"%s\" (0..1 expected)",
                                          optarg);
                        break;
                }
                case O_RETRY:
                        cf.cf_retry_after = (int)parse_long(
                                "--retry-after", optarg, 0, INT_MAX);
                        break;
                case O_MAXCONC:
                        cf.cf_max_concurrency = (int)parse_long(
                                "--max-concurrency", optarg, 0, INT_MAX);
                        break;
                case O_SEED:
                        seed = (uint64_t)parse_long("--seed", optarg, 0,
                                                    LONG_MAX);
                        break;
                case O_THREADS:
                        threads = parse_long("--threads", optarg, 1, 256);
                        break;
                case O_NOITEMS:
                        cf.cf_record_items = false;
                        break;
                case O_JOBMS:
                        cf.cf_job_ms = (int)parse_long("--job-ms", optarg, 0,
                                                       86400000);
                        break;
                case O_JOBFAIL:
                        if (!parse_rate(optarg, &cf.cf_job_fail))
                                die_usage("bad rate \"%s\" (0..1 expected)",
                                          optarg);
                        break;
                case O_RESPLOG:
                        if (!(resp_log = fopen(optarg, "a"))) {
                                fprintf(stderr, "fake_model: %s: %s\n",
                                        optarg, strerror(errno));
                                return 2;
                        }
                        setvbuf(resp_log, NULL, _IOFBF, 1 << 20);
                        break;
                case O_HELP:
                        usage(stdout);
                        return 0;
                case ':':
                        die_usage("option %s needs a value", name);
                        break;
                default:
                        die_usage("unknown option %s", name);
                }
        }
        if (optind < argc)
                die_usage("unexpected argument \"%s\"", argv[optind]);

        raise_nofile();
        signal(SIGPIPE, SIG_IGN);
        sigset_t sigs;
        sigemptyset(&sigs);
        sigaddset(&sigs, SIGINT);
        sigaddset(&sigs, SIGTERM);
        pthread_sigmask(SIG_BLOCK, &sigs, NULL);

        atomic_init(&rng_state, mix64(seed));
        json_object_seed(0x6b626174u);
        stats_init();

        struct addrinfo hints = {
                .ai_family   = AF_UNSPEC,
                .ai_socktype = SOCK_STREAM,
                .ai_flags    = AI_PASSIVE | AI_NUMERICSERV,
        }, *ai = NULL;
        char portstr[16];
        snprintf(portstr, sizeof(portstr), "%ld", port);
        int gai = getaddrinfo(host, portstr, &hints, &ai);
        if (gai) {
                fprintf(stderr, "fake_model: --host %s: %s\n", host,
                        gai_strerror(gai));
                return 2;
        }

        char errstr[256];
        if (timer_start(errstr, sizeof(errstr))) {
                fprintf(stderr, "fake_model: %s\n", errstr);
                return 1;
        }
        unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL |
                         MHD_ALLOW_SUSPEND_RESUME | MHD_USE_TURBO;
        if (ai->ai_family == AF_INET6)
                flags |= MHD_USE_IPv6;
        struct MHD_Daemon *d = MHD_start_daemon(
                flags, (uint16_t)port, NULL, NULL, on_request, NULL,
                MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                MHD_OPTION_THREAD_POOL_SIZE, (unsigned)threads,
                MHD_OPTION_CONNECTION_LIMIT, (unsigned)20000,
                MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)4096,
                MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)16384,
                MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)0,
                MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
                MHD_OPTION_END);
        freeaddrinfo(ai);
        if (!d) {
                fprintf(stderr, "fake_model: cannot listen on %s:%ld: %s\n",
                        host, port, strerror(errno ? errno : EADDRINUSE));
                timer_stop();
                return 1;
        }
        const union MHD_DaemonInfo *di = MHD_get_daemon_info(
                d, MHD_DAEMON_INFO_BIND_PORT);
        unsigned bound = di ? di->port : (unsigned)port;
        /* The port file first: whoever reads stdout may look at it next. */
        if (port_file && write_port_file(port_file, bound)) {
                fprintf(stderr, "fake_model: %s: %s\n", port_file,
                        strerror(errno));
                timer_stop();
                MHD_stop_daemon(d);
                return 1;
        }
        if (strchr(host, ':'))
                printf("listening on [%s]:%u\n", host, bound);
        else
                printf("listening on %s:%u\n", host, bound);
        fflush(stdout);

        int sig;
        sigwait(&sigs, &sig);

        /* Stop accepting, resume everything suspended (its handler sees
         * stopping() and closes), then stop. */
        MHD_quiesce_daemon(d);
        timer_stop();
        MHD_stop_daemon(d);
        if (resp_log && fclose(resp_log) != 0)
                return 1;
        return 0;
}
