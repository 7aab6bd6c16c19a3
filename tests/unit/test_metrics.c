/* metrics: registry, text format, librdkafka statistics, traceparent; and
 * the admin server's endpoints (admin.c) over real HTTP. */
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"

static void setup(void) {
        kb_log_init(KB_LOG_OFF, KB_LOG_FMT_JSON, NULL);
        kb_metrics_reset();
}

TestSuite(metrics, .init = setup);

/* The rendered text, and whether it holds a line. */
static char *render(void) {
        size_t len;
        char *s = kb_metrics_render(&len);
        cr_assert(s);
        cr_assert_eq(strlen(s), len);
        return s;
}

static int has_line(const char *text, const char *line) {
        size_t n = strlen(line);
        const char *p = text;
        while ((p = strstr(p, line))) {
                if ((p == text || p[-1] == '\n') && (p[n] == '\n' || !p[n]))
                        return 1;
                p += n;
        }
        return 0;
}

Test(metrics, counters_gauges_and_labels) {
        static const struct {
                kb_metric_id_t id;
                const char *l1, *l2;
                double add, set;
                const char *line;
        } c[] = {
                {KB_M_ITEMS_CONSUMED, NULL, NULL, 3, 0,
                 "kbatch_items_consumed_total 3"},
                {KB_M_ITEMS_COMPLETED, "succeeded", NULL, 2, 0,
                 "kbatch_items_completed_total{status=\"succeeded\"} 2"},
                {KB_M_MODEL_REQUESTS, "gpt-*", "rate_limited", 1, 0,
                 "kbatch_model_requests_total{route=\"gpt-*\",code=\"rate_"
                 "limited\"} 1"},
                /* label values past the family's labels are ignored */
                {KB_M_DLQ, "invalid_item", "ignored", 1, 0,
                 "kbatch_dlq_total{code=\"invalid_item\"} 1"},
                /* escaping: backslash, quote, line feed */
                {KB_M_TOKENS, "a\\b\"c\nd", "input", 1.5, 0,
                 "kbatch_tokens_total{route=\"a\\\\b\\\"c\\nd\",kind=\"input\"}"
                 " 1.5"},
                {KB_M_INFLIGHT, NULL, NULL, 0, 42, "kbatch_inflight 42"},
                {KB_M_CONSUMER_LAG, NULL, NULL, 0, 1e6,
                 "kbatch_consumer_lag 1000000"},
                {KB_M_ROUTE_QUEUE, "", NULL, 0, 0.1,
                 "kbatch_route_queue{route=\"\"} 0.1"},
        };
        size_t i;
        char *s;
        for (i = 0; i < sizeof(c) / sizeof(*c); i++) {
                kb_metric_t *m = kb_metrics_get(c[i].id, c[i].l1, c[i].l2);
                cr_assert(m, "case %zu", i);
                cr_assert_eq(kb_metrics_get(c[i].id, c[i].l1, c[i].l2), m,
                             "same series, same handle (case %zu)", i);
                if (c[i].add)
                        kb_metric_add(m, c[i].add);
                else
                        kb_metric_set(m, c[i].set);
        }
        s = render();
        for (i = 0; i < sizeof(c) / sizeof(*c); i++)
                cr_expect(has_line(s, c[i].line), "missing '%s' in:\n%s",
                          c[i].line, s);
        free(s);
}

Test(metrics, every_family_has_help_and_type) {
        char *s = render(), line[256];
        int i;
        for (i = 0; i < KB_M__CNT; i++) {
                const char *n = kb_metrics_name((kb_metric_id_t)i);
                cr_assert(n);
                snprintf(line, sizeof(line), "# HELP %s ", n);
                cr_expect(strstr(s, line), "no HELP for %s", n);
                snprintf(line, sizeof(line), "# TYPE %s ", n);
                cr_expect(strstr(s, line), "no TYPE for %s", n);
        }
        /* unlabeled counters and gauges exist from the start */
        cr_expect(has_line(s, "kbatch_items_consumed_total 0"));
        cr_expect(has_line(s, "kbatch_inflight 0"));
        cr_expect(has_line(s, "# TYPE kbatch_model_request_seconds histogram"));
        cr_expect(has_line(s, "# TYPE kbatch_dlq_total counter"));
        cr_expect_null(kb_metrics_name(KB_M__CNT));
        cr_expect_null(kb_metrics_get(KB_M__CNT, NULL, NULL));
        free(s);
}

Test(metrics, type_rules) {
        kb_metric_t *c = kb_metrics_get(KB_M_DLQ, "x", NULL);
        kb_metric_t *h = kb_metrics_get(KB_M_ITEM_SECONDS, NULL, NULL);
        kb_metric_set(c, 7);     /* not a gauge: ignored */
        kb_metric_observe(c, 1); /* not a histogram: ignored */
        kb_metric_add(h, 5);     /* a histogram: ignored */
        cr_expect_eq(kb_metric_value(c), 0);
        cr_expect_eq(kb_metric_count(h), 0);
        /* NULL handles are no-ops */
        kb_metric_add(NULL, 1);
        kb_metric_set(NULL, 1);
        kb_metric_observe(NULL, 1);
        cr_expect_eq(kb_metric_value(NULL), 0);
}

Test(metrics, histogram_buckets_are_cumulative_and_inclusive) {
        /* kbatch_retry_lateness_seconds: 0.001 0.0025 0.005 0.01 ... 30 */
        static const double obs[] = {0.0005, 0.001, 0.002, 0.01, 7, 100};
        static const struct {
                const char *le;
                int want;
        } c[] = {
                {"0.001", 2}, {"0.0025", 3}, {"0.005", 3}, {"0.01", 4},
                {"5", 4},     {"10", 5},     {"30", 5},    {"+Inf", 6},
        };
        kb_metric_t *h =
                kb_metrics_get(KB_M_RETRY_LATENESS_SECONDS, NULL, NULL);
        char line[256], *s;
        size_t i;
        for (i = 0; i < sizeof(obs) / sizeof(*obs); i++)
                kb_metric_observe(h, obs[i]);
        cr_expect_eq(kb_metric_count(h), 6);
        s = render();
        for (i = 0; i < sizeof(c) / sizeof(*c); i++) {
                snprintf(line, sizeof(line),
                         "kbatch_retry_lateness_seconds_bucket{le=\"%s\"} %d",
                         c[i].le, c[i].want);
                cr_expect(has_line(s, line), "missing '%s' in:\n%s", line, s);
        }
        cr_expect(has_line(s, "kbatch_retry_lateness_seconds_count 6"), "%s",
                  s);
        cr_expect(strstr(s, "\nkbatch_retry_lateness_seconds_sum 107.01"), "%s",
                  s);
        cr_expect_float_eq(kb_metric_value(h), 107.0135, 1e-9);
        free(s);
}

Test(metrics, labeled_histogram) {
        kb_metric_t *h = kb_metrics_get(KB_M_MODEL_REQUEST_SECONDS, "m", NULL);
        char *s;
        kb_metric_observe(h, 0.3);
        s = render();
        cr_expect(has_line(s, "kbatch_model_request_seconds_bucket{route=\"m\","
                              "le=\"0.25\"} 0"),
                  "%s", s);
        cr_expect(has_line(s, "kbatch_model_request_seconds_bucket{route=\"m\","
                              "le=\"0.5\"} 1"),
                  "%s", s);
        cr_expect(has_line(s, "kbatch_model_request_seconds_bucket{route=\"m\","
                              "le=\"+Inf\"} 1"));
        cr_expect(has_line(
                s, "kbatch_model_request_seconds_sum{route=\"m\"} 0.3"));
        cr_expect(has_line(
                s, "kbatch_model_request_seconds_count{route=\"m\"} 1"));
        free(s);
}

Test(metrics, request_and_retry_shortcuts) {
        static const struct {
                const char *code, *body, *want_code;
                double in, out;
        } c[] = {
                {"",
                 "{\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}",
                 "ok", 7, 3},
                {NULL, "{\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}",
                 "ok", 12, 4},
                {"rate_limited", NULL, "rate_limited", 12, 4},
                {NULL, "{\"no\":\"usage\"}", "ok", 12, 4},
        };
        size_t i;
        for (i = 0; i < sizeof(c) / sizeof(*c); i++) {
                json_t *b = c[i].body ? json_loads(c[i].body, 0, NULL) : NULL;
                kb_metrics_request("r", c[i].code, NULL, b);
                json_decref(b);
                cr_expect_eq(kb_metric_value(
                                     kb_metrics_get(KB_M_TOKENS, "r", "input")),
                             c[i].in, "case %zu", i);
                cr_expect_eq(kb_metric_value(kb_metrics_get(KB_M_TOKENS, "r",
                                                            "output")),
                             c[i].out, "case %zu", i);
        }
        cr_expect_eq(
                kb_metric_value(kb_metrics_get(KB_M_MODEL_REQUESTS, "r", "ok")),
                3);
        cr_expect_eq(kb_metric_value(kb_metrics_get(KB_M_MODEL_REQUESTS, "r",
                                                    "rate_limited")),
                     1);
        kb_metrics_retry(0);
        kb_metrics_retry(0);
        kb_metrics_retry(2);
        cr_expect_eq(kb_metric_value(
                             kb_metrics_get(KB_M_RETRIES, "inprocess", NULL)),
                     2);
        cr_expect_eq(kb_metric_value(kb_metrics_get(KB_M_RETRIES, "2", NULL)),
                     1);
}

static void *hammer(void *arg) {
        int i;
        (void)arg;
        for (i = 0; i < 100000; i++) {
                /* a new series now and then, created while others update */
                char l[16];
                snprintf(l, sizeof(l), "r%d", i % 50);
                kb_metrics_inc(KB_M_RETRIES, l, NULL);
                kb_metric_observe(kb_metrics_get(KB_M_ITEM_SECONDS, NULL, NULL),
                                  0.5);
        }
        return NULL;
}

Test(metrics, concurrent_updates_are_exact) {
        pthread_t t[4];
        double total = 0;
        char l[16];
        int i;
        for (i = 0; i < 4; i++)
                pthread_create(&t[i], NULL, hammer, NULL);
        for (i = 0; i < 4; i++)
                pthread_join(t[i], NULL);
        for (i = 0; i < 50; i++) {
                snprintf(l, sizeof(l), "r%d", i);
                total += kb_metric_value(kb_metrics_get(KB_M_RETRIES, l, NULL));
        }
        cr_expect_eq(total, 400000);
        cr_expect_eq(
                kb_metric_count(kb_metrics_get(KB_M_ITEM_SECONDS, NULL, NULL)),
                400000);
        cr_expect_eq(
                kb_metric_value(kb_metrics_get(KB_M_ITEM_SECONDS, NULL, NULL)),
                200000);
}

Test(metrics, build_info) {
        char *s;
        kb_metrics_process_info();
        s = render();
        cr_expect(strstr(s, "kbatch_build_info{version=\""), "%s", s);
        cr_expect(strstr(s, "\nkbatch_start_time_seconds 1"), "%s", s);
        free(s);
}

/* ---- librdkafka statistics ----------------------------------------------- */

Test(metrics, rdstats_lag_and_brokers) {
        static const struct {
                const char *json;
                int ret, consumer;
                int64_t lag;
                int up;
        } c[] = {
                {"not json", -1, 0, -1, 0},
                {"{}", 0, 0, -1, 0},
                {"{\"type\":\"producer\",\"brokers\":{\"b1\":{\"state\":\"UP\"}"
                 ","
                 "\"b2\":{\"state\":\"DOWN\"},\"b3\":{\"state\":\"UP\"}}}",
                 0, 0, -1, 2},
                /* summed over topics and partitions; -1 lags, the internal
                 * partition -1 and partitions not desired are skipped */
                {"{\"type\":\"consumer\",\"brokers\":{\"b\":{\"state\":"
                 "\"INIT\"}},"
                 "\"topics\":{"
                 "\"a\":{\"partitions\":{"
                 "\"0\":{\"partition\":0,\"desired\":true,\"consumer_lag\":5},"
                 "\"1\":{\"partition\":1,\"desired\":true,\"consumer_lag\":-1},"
                 "\"2\":{\"partition\":2,\"desired\":false,\"consumer_lag\":"
                 "100},"
                 "\"-1\":{\"partition\":-1,\"desired\":false,\"consumer_lag\":"
                 "7}}},"
                 "\"b\":{\"partitions\":{"
                 "\"3\":{\"partition\":3,\"desired\":true,\"consumer_lag\":0},"
                 "\"4\":{\"partition\":4,\"consumer_lag\":11}}}}}",
                 0, 1, 16, 0},
                {"{\"type\":\"consumer\",\"topics\":{\"a\":{\"partitions\":{"
                 "\"0\":{\"partition\":0,\"desired\":true,\"consumer_lag\":-1}}"
                 "}}}",
                 0, 1, -1, 0},
        };
        size_t i;
        for (i = 0; i < sizeof(c) / sizeof(*c); i++) {
                kb_rdstats_t rs;
                int r = kb_metrics_rdstats_parse(c[i].json, strlen(c[i].json),
                                                 &rs);
                cr_expect_eq(r, c[i].ret, "case %zu", i);
                if (r)
                        continue;
                cr_expect_eq(rs.rs_consumer, c[i].consumer, "case %zu", i);
                cr_expect_eq(rs.rs_lag, c[i].lag, "case %zu: %lld", i,
                             (long long)rs.rs_lag);
                cr_expect_eq(rs.rs_brokers_up, c[i].up, "case %zu", i);
        }
}

Test(metrics, stats_interval_default_and_override) {
        kb_kv_t kv[] = {{"linger.ms", "1"}, {"statistics.interval.ms", "0"}};
        kb_conf_t conf;
        memset(&conf, 0, sizeof(conf));
        cr_expect_str_eq(kb_metrics_stats_interval(&conf), KB_METRICS_STATS_MS);
        conf.kafka_properties = kv;
        conf.kafka_property_cnt = 1;
        cr_expect_str_eq(kb_metrics_stats_interval(&conf), KB_METRICS_STATS_MS);
        conf.kafka_property_cnt = 2;
        cr_expect_str_eq(kb_metrics_stats_interval(&conf), "0");
}

/* ---- traceparent ------------------------------------------------------------
 */

static int is_fresh_traceparent(const char *tp) {
        size_t i;
        if (strlen(tp) != 55 || strncmp(tp, "00-", 3) || tp[35] != '-' ||
            tp[52] != '-' || strcmp(tp + 52, "-01"))
                return 0;
        for (i = 3; i < 52; i++)
                if (i != 35 && !strchr("0123456789abcdef", tp[i]))
                        return 0;
        return 1;
}

Test(metrics, traceparent_kept_or_started) {
        static const struct {
                const char *in;
                int kept;
        } c[] = {
                {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", 1},
                {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00", 1},
                /* a later version may carry more fields */
                {"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-xyz",
                 1},
                {"", 0},
                {"garbage", 0},
                /* version 00 is exactly 55 characters */
                {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",
                 0},
                {"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", 0},
                {"00-00000000000000000000000000000000-b7ad6b7169203331-01", 0},
                {"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", 0},
                {"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", 0},
                {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0g", 0},
                {"00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", 0},
        };
        size_t i;
        for (i = 0; i < sizeof(c) / sizeof(*c); i++) {
                char tp[64];
                snprintf(tp, sizeof(tp), "%s", c[i].in);
                cr_expect_eq(kb_metrics_traceparent(tp, sizeof(tp)), !c[i].kept,
                             "case %zu", i);
                if (c[i].kept)
                        cr_expect_str_eq(tp, c[i].in, "case %zu", i);
                else
                        cr_expect(is_fresh_traceparent(tp), "case %zu: %s", i,
                                  tp);
        }
}

Test(metrics, traceparent_ids_differ) {
        char a[64] = "", b[64] = "";
        kb_metrics_traceparent(a, sizeof(a));
        kb_metrics_traceparent(b, sizeof(b));
        cr_expect(strncmp(a + 3, b + 3, 32), "%s %s", a, b);
        cr_expect(strncmp(a + 36, b + 36, 16), "%s %s", a, b);
        /* a buffer too small is left alone */
        cr_expect_eq(kb_metrics_traceparent(a, 40), 0);
}

/* ---- the admin server -------------------------------------------------------
 */

typedef struct {
        char *data;
        size_t len;
} body_t;

static size_t collect(char *p, size_t sz, size_t n, void *ud) {
        body_t *b = ud;
        b->data = realloc(b->data, b->len + sz * n + 1);
        memcpy(b->data + b->len, p, sz * n);
        b->len += sz * n;
        b->data[b->len] = '\0';
        return sz * n;
}

/* GET (or method) http://127.0.0.1:port/path: status, body (caller frees)
 * and content type (static copy). */
static long get(int port, const char *method, const char *path, char **body,
                char *ctype, size_t ctype_size) {
        CURL *e = curl_easy_init();
        char url[256];
        body_t b = {NULL, 0};
        long st = 0;
        char *ct = NULL;
        snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", port, path);
        curl_easy_setopt(e, CURLOPT_URL, url);
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
        if (!strcmp(method, "HEAD"))
                curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, collect);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, &b);
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 5000L);
        cr_assert_eq(curl_easy_perform(e), CURLE_OK, "%s", url);
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &st);
        curl_easy_getinfo(e, CURLINFO_CONTENT_TYPE, &ct);
        if (ctype)
                snprintf(ctype, ctype_size, "%s", ct ? ct : "");
        curl_easy_cleanup(e);
        if (body)
                *body = b.data ? b.data : strdup("");
        else
                free(b.data);
        return st;
}

Test(metrics, admin_endpoints) {
        char err[256], ct[128], *body;
        kb_admin_t *ad = kb_admin_new("127.0.0.1:0", err, sizeof(err));
        int port;
        cr_assert(ad, "%s", err);
        port = kb_admin_port(ad);
        cr_assert_gt(port, 0);

        /* fresh heartbeat at start; not ready yet */
        cr_expect_eq(get(port, "GET", "/healthz", NULL, NULL, 0), 200);
        cr_expect_eq(get(port, "GET", "/readyz", &body, NULL, 0), 503);
        cr_expect(strstr(body, "not ready: starting"), "%s", body);
        free(body);

        kb_admin_set_ready(ad, 0, "no partition assignment yet");
        cr_expect_eq(get(port, "GET", "/readyz", &body, NULL, 0), 503);
        cr_expect(strstr(body, "no partition assignment yet"), "%s", body);
        free(body);
        kb_admin_set_ready(ad, 1, NULL);
        cr_expect_eq(get(port, "GET", "/readyz", NULL, NULL, 0), 200);
        cr_expect_eq(get(port, "HEAD", "/readyz", NULL, NULL, 0), 200);
        cr_expect_eq(kb_metric_value(kb_metrics_get(KB_M_READY, NULL, NULL)),
                     1);

        /* a stale heartbeat fails /healthz */
        kb_admin_heartbeat(ad, kb_now_ms() - KB_ADMIN_STALE_MS - 1000);
        cr_expect_eq(get(port, "GET", "/healthz", &body, NULL, 0), 503);
        cr_expect(strstr(body, "no heartbeat"), "%s", body);
        free(body);
        kb_admin_heartbeat(ad, kb_now_ms());
        cr_expect_eq(get(port, "GET", "/healthz", NULL, NULL, 0), 200);

        kb_metrics_inc(KB_M_ITEMS_CONSUMED, NULL, NULL);
        cr_expect_eq(get(port, "GET", "/metrics", &body, ct, sizeof(ct)), 200);
        cr_expect_str_eq(ct, "text/plain; version=0.0.4; charset=utf-8");
        cr_expect(has_line(body, "kbatch_items_consumed_total 1"), "%s", body);
        cr_expect(has_line(body, "kbatch_ready 1"), "%s", body);
        cr_expect(strstr(body, "kbatch_build_info{"), "%s", body);
        free(body);

        cr_expect_eq(get(port, "POST", "/metrics", NULL, NULL, 0), 405);
        cr_expect_eq(get(port, "GET", "/nope", NULL, NULL, 0), 404);
        cr_expect_eq(get(port, "GET", "/", NULL, NULL, 0), 200);
        kb_admin_destroy(ad);
        kb_admin_destroy(NULL);
}

Test(metrics, admin_bad_addresses) {
        static const char *bad[] = {"", "nope",
                                    "127.0.0.1:", "host.invalid:8080"};
        char err[256];
        size_t i;
        for (i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
                err[0] = '\0';
                cr_expect_null(kb_admin_new(bad[i], err, sizeof(err)), "%s",
                               bad[i]);
                cr_expect(strstr(err, "admin.listen"), "%s: %s", bad[i], err);
        }
}

Test(metrics, admin_port_in_use) {
        char err[256], addr[64];
        kb_admin_t *a = kb_admin_new("127.0.0.1:0", err, sizeof(err)), *b;
        cr_assert(a, "%s", err);
        snprintf(addr, sizeof(addr), "127.0.0.1:%d", kb_admin_port(a));
        b = kb_admin_new(addr, err, sizeof(err));
        cr_expect_null(b);
        cr_expect(strstr(err, "cannot listen"), "%s", err);
        kb_admin_destroy(b);
        kb_admin_destroy(a);
}
