/* metrics: the process's Prometheus metrics (SPEC §10), and the W3C trace
 * context helper.
 *
 * One fixed, process-wide registry: the families are the kb_metric_id_t
 * values below (name, help, type, label names and histogram buckets are in
 * a table in metrics.c). A series is one family with up to two label values;
 * it is created at first use (under a mutex), never freed while the process
 * runs, and updated with atomics. Lookups do not lock (the series lists are
 * append-only and published with release stores), so any thread may update
 * or read; the hot path may still keep the kb_metric_t * of a series it
 * updates often.
 *
 *   kb_metric_add(kb_metrics_get(KB_M_DLQ, "client_error", NULL), 1);
 *   kb_metrics_inc(KB_M_ITEMS_CONSUMED, NULL, NULL);
 *
 * kb_metrics_render() writes the text exposition format 0.0.4 (HELP and
 * TYPE lines, escaped label values, cumulative histogram buckets with
 * le="+Inf", _sum and _count) for the admin server's /metrics. */
#ifndef KB_METRICS_H
#define KB_METRICS_H

#include <curl/curl.h>
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "conf.h"

typedef enum {
        /* SPEC §10 */
        KB_M_ITEMS_CONSUMED = 0,    /* counter: messages taken from the items
                                     * topic and its retry tiers */
        KB_M_ITEMS_COMPLETED,       /* counter {status}: terminal results */
        KB_M_MODEL_REQUESTS,        /* counter {route,code}: finished model
                                     * calls; code "ok" or a SPEC §4 code */
        KB_M_MODEL_REQUEST_SECONDS, /* histogram {route} */
        KB_M_INFLIGHT,              /* gauge: items in the pipeline */
        KB_M_RETRIES,               /* counter {tier}: "inprocess" or the
                                     * retry tier number */
        KB_M_DLQ,                   /* counter {code}: dead-letter copies */
        KB_M_BATCHES_COMPLETED,     /* counter {status}: batch.completed */
        KB_M_CONSUMER_LAG,          /* gauge: items consumer lag, summed
                                     * over the assigned partitions */
        KB_M_TOKENS,                /* counter {route,kind}: kind "input" or
                                     * "output", from the responses' usage */
        /* more */
        KB_M_BATCHES_UPDATED,         /* counter {status}: batch.updated */
        KB_M_ITEM_SECONDS,            /* histogram: first seen -> terminal */
        KB_M_RETRY_LATENESS_SECONDS,  /* histogram: retry-tier start after its
                                       * kbatch-not-before */
        KB_M_ROUTE_INFLIGHT,          /* gauge {route}: calls in flight */
        KB_M_ROUTE_CONCURRENCY_LIMIT, /* gauge {route}: current limit */
        KB_M_ROUTE_QUEUE,             /* gauge {route}: items waiting */
        KB_M_DEFERRED,                /* gauge: items read ahead and
                                       * deferred (offsets only) */
        KB_M_ROUTE_BREAKER,           /* gauge {route}: circuit state, 0
                                       * closed, 1 open, 2 half-open */
        KB_M_ROUTE_FALLBACKS,         /* counter {route,to}: items sent to
                                       * the route's fallback */
        KB_M_READY,                   /* gauge: 1 when /readyz answers 200 */
        KB_M_BUILD_INFO,              /* gauge {version,revision}: 1 */
        KB_M_START_TIME_SECONDS,      /* gauge: process start, unix time */
        KB_M_API_REQUESTS,            /* counter {endpoint,code}: role api */
        KB_M_API_REQUEST_SECONDS,     /* histogram {endpoint} */
        KB_M__CNT
} kb_metric_id_t;

typedef struct kb_metric_s kb_metric_t;

/* The series of family id with label values l1, l2 (NULL: ""; values past
 * the family's label count are ignored), created at first use. Borrowed,
 * valid until kb_metrics_reset() (i.e. for the process). NULL only when
 * out of memory or id is out of range; every kb_metric_* call accepts NULL
 * and then does nothing. Thread-safe. */
kb_metric_t *kb_metrics_get(kb_metric_id_t id, const char *l1, const char *l2);

/* Counter or gauge: adds v (counters: v >= 0). */
void kb_metric_add(kb_metric_t *m, double v);
/* Gauge: sets v. */
void kb_metric_set(kb_metric_t *m, double v);
/* Histogram: counts one observation v (seconds for *_SECONDS). */
void kb_metric_observe(kb_metric_t *m, double v);

/* The value of a counter or gauge; of a histogram, its sum. */
double kb_metric_value(const kb_metric_t *m);
/* A histogram's observation count (0 for other types). */
uint64_t kb_metric_count(const kb_metric_t *m);

#define kb_metrics_inc(id, l1, l2) kb_metric_add(kb_metrics_get(id, l1, l2), 1)

/* Shortcuts for the item pipeline (one line at each instrumentation
 * point). */

/* A retry was scheduled: tier 0 in process, n on retry tier n. */
void kb_metrics_retry(int tier);

/* A model request of route (its model glob) finished: code "" or NULL for
 * a success ("ok"), else the SPEC §4 error code. Its duration is read from
 * the easy handle (CURLINFO_TOTAL_TIME_T); the tokens from output's usage
 * (a success's response body, borrowed; NULL for none). */
void kb_metrics_request(const char *route, const char *code, CURL *easy,
                        const json_t *output);
/* The same with the tokens already read (the items pipeline reads them
 * from the response text, kb_codec_output_scan): usage->has_usage and its
 * counts (borrowed; NULL for none). */
struct kb_result_s;
void kb_metrics_request_usage(const char *route, const char *code, CURL *easy,
                              const struct kb_result_s *usage);

/* The family's metric name ("kbatch_inflight"), NULL when out of range. */
const char *kb_metrics_name(kb_metric_id_t id);

/* Renders every family in the Prometheus text format 0.0.4. Families
 * without a series are rendered with their HELP and TYPE lines only;
 * unlabeled counters and gauges always have their one series. Caller frees;
 * *lenp (may be NULL) gets the length. NULL when out of memory. */
char *kb_metrics_render(size_t *lenp);

/* Sets kbatch_build_info and kbatch_start_time_seconds. */
void kb_metrics_process_info(void);

/* Drops every series (tests only: not safe while other threads use the
 * registry). */
void kb_metrics_reset(void);

/* ---- librdkafka statistics ---------------------------------------------- */

/* What kbatch reads from one statistics JSON document (the stats_cb of a
 * client with statistics.interval.ms > 0). */
typedef struct kb_rdstats_s {
        int rs_consumer;   /* 1 for a consumer's statistics */
        int64_t rs_lag;    /* sum of consumer_lag over the partitions it
                            * consumes (desired, partition id >= 0, lag
                            * known); -1 when none is known */
        int rs_brokers_up; /* brokers in state "UP" */
} kb_rdstats_t;

/* Parses a statistics document (json: len bytes, borrowed). 0, or -1 when
 * it is not JSON. */
int kb_metrics_rdstats_parse(const char *json, size_t len, kb_rdstats_t *rs);

/* The statistics interval kbatch uses for a client: kafka.properties'
 * statistics.interval.ms when set (0 disables statistics, and with them
 * kbatch_consumer_lag), else KB_METRICS_STATS_MS. As a string for
 * rd_kafka_conf_set (static or borrowed from conf). */
#define KB_METRICS_STATS_MS "5000"
const char *kb_metrics_stats_interval(const kb_conf_t *conf);

/* ---- W3C trace context ------------------------------------------------------
 */

/* Keeps tp when it holds a valid W3C traceparent ("00-<32 hex>-<16 hex>-<2
 * hex>", ids not all zero; a later version with at least these fields is
 * accepted too), else writes a new one into it: version 00, a random trace
 * id and span id, flags 01 (sampled). size: at least 56. Returns 1 when it
 * started a new trace, 0 when it kept tp. */
int kb_metrics_traceparent(char *tp, size_t size);

#endif
