/* metrics: see metrics.h. */
#include "metrics.h"

#include "codec.h"

#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#ifndef KB_VERSION
#define KB_VERSION "0.0.0"
#endif
#ifndef KB_GITREV
#define KB_GITREV "unknown"
#endif

typedef enum { MT_COUNTER, MT_GAUGE, MT_HISTOGRAM } mtype_t;

#define MAX_BUCKETS 20

typedef struct {
        const char *mf_name;
        const char *mf_help;
        mtype_t mf_type;
        const char *mf_labels[2]; /* NULL-terminated when fewer */
        const double *mf_buckets; /* upper bounds, ascending, w/o +Inf */
        int mf_bucket_cnt;
} mfamily_t;

/* Model calls: tens of ms (embeddings, a fast proxy) to minutes (long
 * generations, up to the 600 s default timeout). */
static const double b_request[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                   0.5,   1,    2.5,   5,    10,  30,
                                   60,    120,  300,   600};
/* Item life: the same, plus retry tiers (default delays 5 s .. 5 min). */
static const double b_item[] = {0.01, 0.05, 0.1, 0.25, 0.5, 1,   2.5,  5,
                                10,   30,   60,  120,  300, 600, 1800, 3600};
/* Retry timing: DESIGN.md asks for due + a few ms. */
static const double b_late[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                0.25,  0.5,    1,     2.5,  5,     10,   30};

#define B(a) a, (int)(sizeof(a) / sizeof(a[0]))

static const mfamily_t families[KB_M__CNT] = {
        [KB_M_ITEMS_CONSUMED] = {"kbatch_items_consumed_total",
                                 "Messages taken from the items topic and its "
                                 "retry tiers.",
                                 MT_COUNTER,
                                 {NULL, NULL},
                                 NULL,
                                 0},
        [KB_M_ITEMS_COMPLETED] = {"kbatch_items_completed_total",
                                  "Items that ended with a terminal result, by "
                                  "status.",
                                  MT_COUNTER,
                                  {"status", NULL},
                                  NULL,
                                  0},
        [KB_M_MODEL_REQUESTS] = {"kbatch_model_requests_total",
                                 "Finished model API requests, by route (its "
                                 "model glob) and outcome code (ok or an "
                                 "error.code).",
                                 MT_COUNTER,
                                 {"route", "code"},
                                 NULL,
                                 0},
        [KB_M_MODEL_REQUEST_SECONDS] = {"kbatch_model_request_seconds",
                                        "Duration of model API requests.",
                                        MT_HISTOGRAM,
                                        {"route", NULL},
                                        B(b_request)},
        [KB_M_INFLIGHT] = {"kbatch_inflight",
                           "Items in the pipeline (consumed, not yet "
                           "acknowledged).",
                           MT_GAUGE,
                           {NULL, NULL},
                           NULL,
                           0},
        [KB_M_RETRIES] = {"kbatch_retries_total",
                          "Retries scheduled, by tier (inprocess or the retry "
                          "topic's number).",
                          MT_COUNTER,
                          {"tier", NULL},
                          NULL,
                          0},
        [KB_M_DLQ] =
                {"kbatch_dlq_total",
                 "Messages copied to the items dead-letter topic, by error "
                 "code.",
                 MT_COUNTER,
                 {"code", NULL},
                 NULL,
                 0},
        [KB_M_BATCHES_COMPLETED] =
                {"kbatch_batches_completed_total",
                 "batch.completed events published, by batch "
                 "status.",
                 MT_COUNTER,
                 {"status", NULL},
                 NULL,
                 0},
        [KB_M_CONSUMER_LAG] = {"kbatch_consumer_lag",
                               "Messages behind on the items topic and retry "
                               "tiers (committed offset to high watermark), "
                               "summed over the assigned partitions, from "
                               "librdkafka's statistics.",
                               MT_GAUGE,
                               {NULL, NULL},
                               NULL,
                               0},
        [KB_M_TOKENS] = {"kbatch_tokens_total",
                         "Tokens reported in the model responses' usage, by "
                         "route and kind (input, output).",
                         MT_COUNTER,
                         {"route", "kind"},
                         NULL,
                         0},
        [KB_M_BATCHES_UPDATED] = {"kbatch_batches_updated_total",
                                  "batch.updated events published (a later "
                                  "result changed a completed batch), by batch "
                                  "status.",
                                  MT_COUNTER,
                                  {"status", NULL},
                                  NULL,
                                  0},
        [KB_M_ITEM_SECONDS] = {"kbatch_item_seconds",
                               "Time from an item's first consumption to its "
                               "terminal result, retries included.",
                               MT_HISTOGRAM,
                               {NULL, NULL},
                               B(b_item)},
        [KB_M_RETRY_LATENESS_SECONDS] = {"kbatch_retry_lateness_seconds",
                                         "How late after its kbatch-not-before "
                                         "a retry-tier item started.",
                                         MT_HISTOGRAM,
                                         {NULL, NULL},
                                         B(b_late)},
        [KB_M_ROUTE_INFLIGHT] = {"kbatch_route_inflight",
                                 "Model requests in flight, by route.",
                                 MT_GAUGE,
                                 {"route", NULL},
                                 NULL,
                                 0},
        [KB_M_ROUTE_CONCURRENCY_LIMIT] =
                {"kbatch_route_concurrency_limit",
                 "Current (adaptive) concurrency limit, "
                 "by route.",
                 MT_GAUGE,
                 {"route", NULL},
                 NULL,
                 0},
        [KB_M_ROUTE_QUEUE] = {"kbatch_route_queue",
                              "Items waiting for room on their route.",
                              MT_GAUGE,
                              {"route", NULL},
                              NULL,
                              0},
        [KB_M_DEFERRED] = {"kbatch_items_deferred",
                           "Items read ahead while the route queues were full "
                           "and deferred: only their offsets are held.",
                           MT_GAUGE,
                           {NULL},
                           NULL,
                           0},
        [KB_M_ROUTE_BREAKER] = {"kbatch_route_breaker_state",
                                "Circuit breaker of the route: 0 closed, 1 "
                                "open, 2 half-open (SPEC 12).",
                                MT_GAUGE,
                                {"route", NULL},
                                NULL,
                                0},
        [KB_M_ROUTE_FALLBACKS] = {"kbatch_route_fallbacks_total",
                                  "Items the route sent to its fallback "
                                  "route.",
                                  MT_COUNTER,
                                  {"route", "to"},
                                  NULL,
                                  0},
        [KB_M_READY] = {"kbatch_ready",
                        "1 when the worker is ready (what /readyz answers).",
                        MT_GAUGE,
                        {NULL, NULL},
                        NULL,
                        0},
        [KB_M_BUILD_INFO] =
                {"kbatch_build_info",
                 "Version and git revision of this build; always 1.",
                 MT_GAUGE,
                 {"version", "revision"},
                 NULL,
                 0},
        [KB_M_START_TIME_SECONDS] = {"kbatch_start_time_seconds",
                                     "Start time of the process, unix seconds.",
                                     MT_GAUGE,
                                     {NULL, NULL},
                                     NULL,
                                     0},
        [KB_M_API_REQUESTS] = {"kbatch_api_requests_total",
                               "HTTP batch API requests answered, by "
                               "endpoint (its route pattern) and status code.",
                               MT_COUNTER,
                               {"endpoint", "code"},
                               NULL,
                               0},
        [KB_M_API_REQUEST_SECONDS] = {"kbatch_api_request_seconds",
                                      "Duration of HTTP batch API requests, "
                                      "by endpoint.",
                                      MT_HISTOGRAM,
                                      {"endpoint", NULL},
                                      B(b_request)},
};

struct kb_metric_s {
        _Atomic(kb_metric_t *) m_next;
        const mfamily_t *m_fam;
        char *m_l[2];
        _Atomic uint64_t m_bits;  /* value (double bits); histogram sum */
        _Atomic uint64_t m_count; /* histogram */
        _Atomic uint64_t m_buckets[MAX_BUCKETS + 1]; /* per bucket, not
                                                      * cumulative; [n] is
                                                      * above the last bound */
};

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic(kb_metric_t *) reg_head[KB_M__CNT];

static int label_cnt(const mfamily_t *mf) {
        return !mf->mf_labels[0] ? 0 : !mf->mf_labels[1] ? 1 : 2;
}

static int labels_eq(const kb_metric_t *m, int n, const char *l1,
                     const char *l2) {
        return (n < 1 || !strcmp(m->m_l[0], l1)) &&
               (n < 2 || !strcmp(m->m_l[1], l2));
}

static kb_metric_t *find(kb_metric_t *m, int n, const char *l1,
                         const char *l2) {
        for (; m; m = atomic_load_explicit(&m->m_next, memory_order_acquire))
                if (labels_eq(m, n, l1, l2))
                        return m;
        return NULL;
}

kb_metric_t *kb_metrics_get(kb_metric_id_t id, const char *l1, const char *l2) {
        const mfamily_t *mf;
        kb_metric_t *m, *last;
        int n;
        if ((int)id < 0 || id >= KB_M__CNT)
                return NULL;
        mf = &families[id];
        n = label_cnt(mf);
        l1 = l1 ? l1 : "";
        l2 = l2 ? l2 : "";
        if ((m = find(atomic_load_explicit(&reg_head[id], memory_order_acquire),
                      n, l1, l2)))
                return m;
        pthread_mutex_lock(&reg_lock);
        /* Again under the lock: another thread may have just added it. */
        last = NULL;
        for (m = atomic_load(&reg_head[id]); m; m = atomic_load(&m->m_next)) {
                if (labels_eq(m, n, l1, l2))
                        goto out;
                last = m;
        }
        if (!(m = calloc(1, sizeof(*m))))
                goto out;
        m->m_fam = mf;
        m->m_l[0] = strdup(n >= 1 ? l1 : "");
        m->m_l[1] = strdup(n >= 2 ? l2 : "");
        if (!m->m_l[0] || !m->m_l[1]) {
                free(m->m_l[0]);
                free(m->m_l[1]);
                free(m);
                m = NULL;
                goto out;
        }
        /* Appended, so rendering keeps the order of first use. */
        if (last)
                atomic_store_explicit(&last->m_next, m, memory_order_release);
        else
                atomic_store_explicit(&reg_head[id], m, memory_order_release);
out:
        pthread_mutex_unlock(&reg_lock);
        return m;
}

static double bits2d(uint64_t b) {
        double d;
        memcpy(&d, &b, sizeof(d));
        return d;
}

static uint64_t d2bits(double d) {
        uint64_t b;
        memcpy(&b, &d, sizeof(b));
        return b;
}

static void atomic_add_double(_Atomic uint64_t *p, double v) {
        uint64_t old = atomic_load_explicit(p, memory_order_relaxed);
        while (!atomic_compare_exchange_weak_explicit(
                p, &old, d2bits(bits2d(old) + v), memory_order_relaxed,
                memory_order_relaxed))
                ;
}

void kb_metric_add(kb_metric_t *m, double v) {
        if (m && m->m_fam->mf_type != MT_HISTOGRAM)
                atomic_add_double(&m->m_bits, v);
}

void kb_metric_set(kb_metric_t *m, double v) {
        if (m && m->m_fam->mf_type == MT_GAUGE)
                atomic_store_explicit(&m->m_bits, d2bits(v),
                                      memory_order_relaxed);
}

void kb_metric_observe(kb_metric_t *m, double v) {
        const mfamily_t *mf;
        int i;
        if (!m || (mf = m->m_fam)->mf_type != MT_HISTOGRAM || isnan(v))
                return;
        for (i = 0; i < mf->mf_bucket_cnt && v > mf->mf_buckets[i]; i++)
                ;
        /* Bucket before count: a render that reads the count first never
         * sees fewer bucket observations than counted (it clamps above). */
        atomic_fetch_add_explicit(&m->m_buckets[i], 1, memory_order_relaxed);
        atomic_add_double(&m->m_bits, v);
        atomic_fetch_add_explicit(&m->m_count, 1, memory_order_release);
}

double kb_metric_value(const kb_metric_t *m) {
        return m ? bits2d(atomic_load_explicit(&((kb_metric_t *)m)->m_bits,
                                               memory_order_relaxed))
                 : 0;
}

uint64_t kb_metric_count(const kb_metric_t *m) {
        return m && m->m_fam->mf_type == MT_HISTOGRAM
                       ? atomic_load(&((kb_metric_t *)m)->m_count)
                       : 0;
}

const char *kb_metrics_name(kb_metric_id_t id) {
        return (int)id < 0 || id >= KB_M__CNT ? NULL : families[id].mf_name;
}

void kb_metrics_retry(int tier) {
        char t[16];
        if (tier <= 0) {
                kb_metrics_inc(KB_M_RETRIES, "inprocess", NULL);
                return;
        }
        snprintf(t, sizeof(t), "%d", tier);
        kb_metrics_inc(KB_M_RETRIES, t, NULL);
}

void kb_metrics_request(const char *route, const char *code, CURL *easy,
                        const json_t *output) {
        kb_result_t res;
        memset(&res, 0, sizeof(res));
        if (output)
                kb_codec_usage_from_output(output, &res);
        kb_metrics_request_usage(route, code, easy, &res);
}

void kb_metrics_request_usage(const char *route, const char *code, CURL *easy,
                              const kb_result_t *usage) {
        curl_off_t us = 0;
        if (!code || !*code)
                code = "ok";
        kb_metrics_inc(KB_M_MODEL_REQUESTS, route, code);
        if (easy &&
            curl_easy_getinfo(easy, CURLINFO_TOTAL_TIME_T, &us) == CURLE_OK)
                kb_metric_observe(
                        kb_metrics_get(KB_M_MODEL_REQUEST_SECONDS, route, NULL),
                        (double)us / 1e6);
        if (!usage || !usage->has_usage)
                return;
        if (usage->input_tokens > 0)
                kb_metric_add(kb_metrics_get(KB_M_TOKENS, route, "input"),
                              (double)usage->input_tokens);
        if (usage->output_tokens > 0)
                kb_metric_add(kb_metrics_get(KB_M_TOKENS, route, "output"),
                              (double)usage->output_tokens);
}

void kb_metrics_process_info(void) {
        kb_metric_set(kb_metrics_get(KB_M_BUILD_INFO, KB_VERSION, KB_GITREV),
                      1);
        kb_metric_set(kb_metrics_get(KB_M_START_TIME_SECONDS, NULL, NULL),
                      (double)time(NULL));
}

void kb_metrics_reset(void) {
        int i;
        pthread_mutex_lock(&reg_lock);
        for (i = 0; i < KB_M__CNT; i++) {
                kb_metric_t *m = atomic_exchange(&reg_head[i], NULL), *n;
                for (; m; m = n) {
                        n = atomic_load(&m->m_next);
                        free(m->m_l[0]);
                        free(m->m_l[1]);
                        free(m);
                }
        }
        pthread_mutex_unlock(&reg_lock);
}

/* ---- rendering ------------------------------------------------------------
 */

typedef struct {
        char *b_data;
        size_t b_len, b_cap;
        int b_oom;
} buf_t;

static void buf_add(buf_t *b, const char *s, size_t n) {
        if (b->b_oom)
                return;
        if (b->b_len + n + 1 > b->b_cap) {
                size_t cap = b->b_cap ? b->b_cap : 4096;
                char *nd;
                while (cap < b->b_len + n + 1)
                        cap *= 2;
                if (!(nd = realloc(b->b_data, cap))) {
                        b->b_oom = 1;
                        return;
                }
                b->b_data = nd;
                b->b_cap = cap;
        }
        memcpy(b->b_data + b->b_len, s, n);
        b->b_len += n;
        b->b_data[b->b_len] = '\0';
}

static void buf_s(buf_t *b, const char *s) {
        buf_add(b, s, strlen(s));
}

static void buf_f(buf_t *b, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));
static void buf_f(buf_t *b, const char *fmt, ...) {
        char tmp[256];
        va_list ap;
        int n;
        va_start(ap, fmt);
        n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
        va_end(ap);
        if (n > 0)
                buf_add(b, tmp,
                        (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

/* A sample value: integers exactly, others in the shortest of %.15g and
 * %.17g that reads back the same. */
static void fmt_value(char *out, size_t size, double v) {
        if (isnan(v))
                snprintf(out, size, "NaN");
        else if (isinf(v))
                snprintf(out, size, "%s", v > 0 ? "+Inf" : "-Inf");
        else if (v == floor(v) && fabs(v) < 1e15)
                snprintf(out, size, "%.0f", v);
        else {
                snprintf(out, size, "%.15g", v);
                if (strtod(out, NULL) != v)
                        snprintf(out, size, "%.17g", v);
        }
}

/* A label value: backslash, double quote and line feed escaped. */
static void buf_label(buf_t *b, const char *name, const char *v) {
        buf_s(b, name);
        buf_s(b, "=\"");
        for (; *v; v++) {
                if (*v == '\\')
                        buf_s(b, "\\\\");
                else if (*v == '"')
                        buf_s(b, "\\\"");
                else if (*v == '\n')
                        buf_s(b, "\\n");
                else
                        buf_add(b, v, 1);
        }
        buf_s(b, "\"");
}

/* name{labels[,le="x"]} value */
static void sample(buf_t *b, const char *name, const char *suffix,
                   const kb_metric_t *m, const char *le, double v) {
        const mfamily_t *mf = m->m_fam;
        int i, n = label_cnt(mf);
        char val[64];
        buf_s(b, name);
        buf_s(b, suffix);
        if (n || le) {
                buf_s(b, "{");
                for (i = 0; i < n; i++) {
                        if (i)
                                buf_s(b, ",");
                        buf_label(b, mf->mf_labels[i], m->m_l[i]);
                }
                if (le) {
                        if (n)
                                buf_s(b, ",");
                        buf_label(b, "le", le);
                }
                buf_s(b, "}");
        }
        fmt_value(val, sizeof(val), v);
        buf_s(b, " ");
        buf_s(b, val);
        buf_s(b, "\n");
}

static void render_histogram(buf_t *b, kb_metric_t *m) {
        const mfamily_t *mf = m->m_fam;
        uint64_t count =
                atomic_load_explicit(&m->m_count, memory_order_acquire);
        uint64_t cum = 0;
        double sum =
                bits2d(atomic_load_explicit(&m->m_bits, memory_order_relaxed));
        char le[64];
        int i;
        for (i = 0; i < mf->mf_bucket_cnt; i++) {
                cum += atomic_load_explicit(&m->m_buckets[i],
                                            memory_order_relaxed);
                /* Observations racing this render may be in a bucket and
                 * not yet in the count: buckets never exceed the count. */
                if (cum > count)
                        cum = count;
                snprintf(le, sizeof(le), "%g", mf->mf_buckets[i]);
                sample(b, mf->mf_name, "_bucket", m, le, (double)cum);
        }
        sample(b, mf->mf_name, "_bucket", m, "+Inf", (double)count);
        sample(b, mf->mf_name, "_sum", m, NULL, sum);
        sample(b, mf->mf_name, "_count", m, NULL, (double)count);
}

char *kb_metrics_render(size_t *lenp) {
        buf_t b = {0};
        int i;
        for (i = 0; i < KB_M__CNT; i++) {
                const mfamily_t *mf = &families[i];
                kb_metric_t *m;
                /* Unlabeled counters and gauges exist from the start (0). */
                if (!label_cnt(mf) && mf->mf_type != MT_HISTOGRAM)
                        kb_metrics_get((kb_metric_id_t)i, NULL, NULL);
                buf_f(&b, "# HELP %s ", mf->mf_name);
                buf_s(&b, mf->mf_help); /* no '\\' or '\n' in our texts */
                buf_f(&b, "\n# TYPE %s %s\n", mf->mf_name,
                      mf->mf_type == MT_COUNTER ? "counter"
                      : mf->mf_type == MT_GAUGE ? "gauge"
                                                : "histogram");
                for (m = atomic_load_explicit(&reg_head[i],
                                              memory_order_acquire);
                     m; m = atomic_load_explicit(&m->m_next,
                                                 memory_order_acquire)) {
                        if (mf->mf_type == MT_HISTOGRAM)
                                render_histogram(&b, m);
                        else
                                sample(&b, mf->mf_name, "", m, NULL,
                                       kb_metric_value(m));
                }
        }
        if (b.b_oom) {
                free(b.b_data);
                return NULL;
        }
        if (lenp)
                *lenp = b.b_len;
        return b.b_data;
}

/* ---- librdkafka statistics ---------------------------------------------- */

int kb_metrics_rdstats_parse(const char *json, size_t len, kb_rdstats_t *rs) {
        json_t *root = json_loadb(json, len, 0, NULL), *v, *t, *p;
        const char *k, *tk, *pk;
        int known = 0;
        memset(rs, 0, sizeof(*rs));
        rs->rs_lag = -1;
        if (!json_is_object(root)) {
                json_decref(root);
                return -1;
        }
        rs->rs_consumer =
                json_is_string(json_object_get(root, "type")) &&
                !strcmp(json_string_value(json_object_get(root, "type")),
                        "consumer");
        json_object_foreach(json_object_get(root, "brokers"), k, v) {
                json_t *st = json_object_get(v, "state");
                if (json_is_string(st) && !strcmp(json_string_value(st), "UP"))
                        rs->rs_brokers_up++;
        }
        json_object_foreach(json_object_get(root, "topics"), tk, t) {
                json_object_foreach(json_object_get(t, "partitions"), pk, p) {
                        json_t *lag = json_object_get(p, "consumer_lag");
                        json_t *des = json_object_get(p, "desired");
                        json_t *pid = json_object_get(p, "partition");
                        /* -1: librdkafka's internal unassigned partition */
                        if ((json_is_integer(pid) &&
                             json_integer_value(pid) < 0) ||
                            !strcmp(pk, "-1"))
                                continue;
                        if (json_is_boolean(des) && !json_is_true(des))
                                continue;
                        if (!json_is_integer(lag) ||
                            json_integer_value(lag) < 0)
                                continue;
                        if (!known++)
                                rs->rs_lag = 0;
                        rs->rs_lag += json_integer_value(lag);
                }
        }
        json_decref(root);
        return 0;
}

const char *kb_metrics_stats_interval(const kb_conf_t *conf) {
        size_t i;
        for (i = 0; conf && i < conf->kafka_property_cnt; i++)
                if (!strcmp(conf->kafka_properties[i].k,
                            "statistics.interval.ms"))
                        return conf->kafka_properties[i].v;
        return KB_METRICS_STATS_MS;
}

/* ---- W3C trace context ------------------------------------------------------
 */

static int lower_hex(const char *s, size_t n) {
        size_t i;
        int nonzero = 0;
        for (i = 0; i < n; i++) {
                if (!((s[i] >= '0' && s[i] <= '9') ||
                      (s[i] >= 'a' && s[i] <= 'f')))
                        return -1;
                nonzero |= s[i] != '0';
        }
        return nonzero;
}

/* traceparent = version "-" trace-id "-" parent-id "-" trace-flags */
static int traceparent_valid(const char *tp) {
        size_t len = strlen(tp);
        if (len < 55 || tp[2] != '-' || tp[35] != '-' || tp[52] != '-')
                return 0;
        if (lower_hex(tp, 2) < 0 || !strncmp(tp, "ff", 2))
                return 0;
        if (!strncmp(tp, "00", 2) && len != 55)
                return 0;
        if (len > 55 && tp[55] != '-') /* a later version may add fields */
                return 0;
        return lower_hex(tp + 3, 32) == 1 && lower_hex(tp + 36, 16) == 1 &&
               lower_hex(tp + 53, 2) >= 0;
}

static int all_zero(const unsigned char *b, size_t n) {
        while (n--)
                if (*b++)
                        return 0;
        return 1;
}

static void rand_bytes(unsigned char *b, size_t n) {
        size_t got = 0;
        while (got < n) {
                ssize_t r = getrandom(b + got, n - got, GRND_NONBLOCK);
                if (r <= 0)
                        break;
                got += (size_t)r;
        }
        for (; got < n; got++) /* no entropy yet: still unique enough */
                b[got] = (unsigned char)(random() >> 7);
}

int kb_metrics_traceparent(char *tp, size_t size) {
        static const char hex[] = "0123456789abcdef";
        unsigned char r[24];
        char *o;
        int i;
        if (!tp || size < 56)
                return 0;
        if (traceparent_valid(tp))
                return 0;
        do
                rand_bytes(r, sizeof(r));
        while (all_zero(r, 16) || all_zero(r + 16, 8)); /* invalid ids */
        o = tp;
        *o++ = '0';
        *o++ = '0';
        *o++ = '-';
        for (i = 0; i < 24; i++) {
                if (i == 16)
                        *o++ = '-';
                *o++ = hex[r[i] >> 4];
                *o++ = hex[r[i] & 15];
        }
        memcpy(o, "-01", 4);
        return 1;
}
