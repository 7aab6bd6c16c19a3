/* The items pipeline in process, against librdkafka's mock cluster and the
 * fake model (build/fake_model, a real HTTP server): the job state machine
 * from consume to commit without a broker process, and the faults a broker
 * cannot be made to show on demand.
 *
 * drain_ends_when_produces_keep_failing is the regression test of issue 15
 * #2: drain() walked the produce-retry queue while re-queuing into it, so
 * with two jobs failing to produce synchronously it never returned (SIGTERM,
 * a fatal producer error and the rebalance callback hung). */
#include <criterion/criterion.h>
#include <jansson.h>
#include <libgen.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conf.h"
#include "items.h"
#include "log.h"
#include "loop.h"

static rd_kafka_t *mock_rk;
static rd_kafka_mock_cluster_t *mcluster;
static pid_t fake_pid;
static int fake_port;
static char conf_path[] = "/tmp/kb_items_mock_XXXXXX";

/* Starts <dir of this binary>/../fake_model with extra arguments (NULL
 * ended) on a free port. */
static void fake_start(const char *arg1, const char *arg2) {
        char exe[4096], bin[4200], line[256];
        int fds[2];
        ssize_t n, got = 0;
        ssize_t len = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
        cr_assert(len > 0);
        exe[len] = '\0';
        snprintf(bin, sizeof(bin), "%s/../fake_model", dirname(exe));
        cr_assert_eq(pipe(fds), 0);
        fake_pid = fork();
        cr_assert(fake_pid >= 0);
        if (fake_pid == 0) {
                /* dies with the test, even when a timeout kills it */
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                dup2(fds[1], 1);
                close(fds[0]);
                execl(bin, bin, "--port", "0", arg1, arg2, (char *)NULL);
                _exit(127);
        }
        close(fds[1]);
        while (got < (ssize_t)sizeof(line) - 1 &&
               (n = read(fds[0], line + got, 1)) == 1 && line[got] != '\n')
                got++;
        line[got] = '\0';
        close(fds[0]);
        cr_assert(sscanf(line, "listening on 127.0.0.1:%d", &fake_port) == 1,
                  "fake_model did not start: '%s' (%s)", line, bin);
}

static void setup(void) {
        char err[512];
        rd_kafka_conf_t *kc = rd_kafka_conf_new();
        static const char *topics[] = {"t.items", "t.items.retry.1",
                                       "t.items.dlq", "t.results"};
        kb_log_init(getenv("KB_TEST_LOG") ? KB_LOG_INFO : KB_LOG_OFF, KB_LOG_FMT_JSON, NULL);
        rd_kafka_conf_set(kc, "log_level", "0", NULL, 0);
        mock_rk = rd_kafka_new(RD_KAFKA_PRODUCER, kc, err, sizeof(err));
        cr_assert(mock_rk, "%s", err);
        mcluster = rd_kafka_mock_cluster_new(mock_rk, 1);
        cr_assert(mcluster);
        for (size_t i = 0; i < sizeof(topics) / sizeof(*topics); i++)
                cr_assert_eq(rd_kafka_mock_topic_create(mcluster, topics[i], 2,
                                                        1),
                             0);
        cr_assert_eq(rd_kafka_mock_topic_create(mcluster, "t.control", 1, 1),
                     0);
        fake_pid = 0;
}

static void teardown(void) {
        if (fake_pid > 0) {
                kill(fake_pid, SIGTERM);
                waitpid(fake_pid, NULL, 0);
        }
        unlink(conf_path);
        strcpy(conf_path, "/tmp/kb_items_mock_XXXXXX");
        rd_kafka_mock_cluster_destroy(mcluster);
        rd_kafka_destroy(mock_rk);
}

TestSuite(items_mock, .init = setup, .fini = teardown, .timeout = 120);

/* A worker.conf for the mock cluster and the fake; props: extra
 * kafka.properties lines; extra: more settings (worker_extra inside
 * worker { }, route_extra inside the route, then whole sections). */
static kb_conf_t *conf_load_ex(const char *props, const char *worker_extra,
                               const char *route_extra, const char *extra) {
        char text[4096], err[512];
        kb_conf_t *conf;
        int fd = mkstemp(conf_path);
        cr_assert(fd >= 0);
        snprintf(text, sizeof(text),
                 "kafka: { bootstrap_servers = \"%s\"; group_id = \"g\";\n"
                 "  properties = { statistics_interval_ms = 0; %s }; };\n"
                 "topics: { prefix = \"t.\"; partitions = 2; replication = 1; "
                 "};\n"
                 "worker: { roles = [\"items\"]; max_inflight = 100; "
                 "commit_interval_ms = 200; %s };\n"
                 "%s\n"
                 "admin: { listen = \"\"; };\n"
                 "log: { level = \"off\"; };\n"
                 "routes = ( { model = \"*\"; base_url = "
                 "\"http://127.0.0.1:%d\"; %s } );\n",
                 rd_kafka_mock_cluster_bootstraps(mcluster), props ? props : "",
                 worker_extra ? worker_extra : "",
                 extra ? extra : "retry: { delays_ms = [1000]; };", fake_port,
                 route_extra ? route_extra : "");
        cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
        close(fd);
        conf = kb_conf_load(conf_path, NULL, err, sizeof(err));
        cr_assert(conf, "%s", err);
        return conf;
}

static kb_conf_t *conf_load(const char *props) {
        return conf_load_ex(props, NULL, NULL, NULL);
}

/* A client of the mock cluster; group: its group.id (consumers). */
static rd_kafka_t *mock_client(rd_kafka_type_t type, const char *group) {
        char err[512];
        rd_kafka_conf_t *kc = rd_kafka_conf_new();
        rd_kafka_t *rk;
        rd_kafka_conf_set(kc, "bootstrap.servers",
                          rd_kafka_mock_cluster_bootstraps(mcluster), NULL, 0);
        if (group)
                rd_kafka_conf_set(kc, "group.id", group, NULL, 0);
        rd_kafka_conf_set(kc, "log_level", "0", NULL, 0);
        rk = rd_kafka_new(type, kc, err, sizeof(err));
        cr_assert(rk, "%s", err);
        return rk;
}

/* Produces raw values to t.items (NULL key). */
static void produce_values(const char **vals, int n) {
        rd_kafka_t *p = mock_client(RD_KAFKA_PRODUCER, NULL);
        for (int i = 0; i < n; i++)
                cr_assert_eq(rd_kafka_producev(
                                 p, RD_KAFKA_V_TOPIC("t.items"),
                                 RD_KAFKA_V_VALUE((void *)vals[i],
                                                  strlen(vals[i])),
                                 RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                 RD_KAFKA_V_END),
                             0);
        cr_assert_eq(rd_kafka_flush(p, 10000), 0);
        rd_kafka_destroy(p);
}

/* An item of batch `batch` (index i of n) whose request carries the fake
 * model's trigger `fake` (a JSON object, or NULL) and extra top-level
 * fields `extra` (",\"deadline\":..." or NULL). Caller frees. */
static char *item_json(const char *batch, int i, int n, const char *fake,
                       const char *extra) {
        char *v = NULL;
        cr_assert(asprintf(&v,
                           "{\"batch_id\":\"%s\",\"item_id\":\"r%d\","
                           "\"item_index\":%d,\"items_total\":%d,"
                           "\"model\":\"m\",\"input\":{\"messages\":[{"
                           "\"role\":\"user\",\"content\":\"hi\"}]%s%s}%s}",
                           batch, i, i, n, fake ? ",\"fake\":" : "",
                           fake ? fake : "", extra ? extra : "") > 0);
        return v;
}

/* n plain items of a batch. */
static void produce_items(const char *batch, int n) {
        char **vals = calloc((size_t)n, sizeof(*vals));
        cr_assert(vals);
        for (int i = 0; i < n; i++)
                vals[i] = item_json(batch, i, n, NULL, NULL);
        produce_values((const char **)vals, n);
        for (int i = 0; i < n; i++)
                free(vals[i]);
        free(vals);
}

/* A reader of a topic's two partitions from the start (no group). */
static rd_kafka_t *topic_reader(const char *topic) {
        rd_kafka_t *c = mock_client(RD_KAFKA_CONSUMER, "reader");
        rd_kafka_topic_partition_list_t *l =
            rd_kafka_topic_partition_list_new(2);
        rd_kafka_topic_partition_list_add(l, topic, 0)->offset =
            RD_KAFKA_OFFSET_BEGINNING;
        rd_kafka_topic_partition_list_add(l, topic, 1)->offset =
            RD_KAFKA_OFFSET_BEGINNING;
        cr_assert_eq(rd_kafka_assign(c, l), 0);
        rd_kafka_topic_partition_list_destroy(l);
        return c;
}

static rd_kafka_t *results_reader(void) { return topic_reader("t.results"); }

/* Results read so far; seen[i] counts item i's. */
static int read_results(rd_kafka_t *c, int *seen, int n) {
        rd_kafka_message_t *m;
        int got = 0;
        while ((m = rd_kafka_consumer_poll(c, 0))) {
                const char *p;
                if (!m->err && m->payload &&
                    (p = memmem(m->payload, m->len, "\"item_index\":", 13))) {
                        int i = atoi(p + 13);
                        if (i >= 0 && i < n) {
                                seen[i]++;
                                got++;
                        }
                        cr_expect(memmem(m->payload, m->len,
                                         "\"status\":\"succeeded\"", 20),
                                  "%.*s", (int)m->len, (char *)m->payload);
                }
                rd_kafka_message_destroy(m);
        }
        return got;
}

/* Runs the loop until `want` results were read or ms passed. */
static int run_until(kb_items_t *it, kb_loop_t *loop, rd_kafka_t *reader,
                     int *seen, int n, int want, int ms) {
        int64_t deadline = kb_now_ms() + ms;
        int got = 0;
        while (got < want && kb_now_ms() < deadline) {
                int w = kb_items_serve(it, kb_now_ms());
                kb_loop_drive(loop, w < 50 ? w : 50);
                got += read_results(reader, seen, n);
        }
        return got;
}

Test(items_mock, every_item_gets_one_result) {
        char err[512];
        kb_conf_t *conf;
        kb_loop_t *loop;
        kb_items_t *it;
        rd_kafka_t *reader;
        int seen[200] = {0}, got;

        fake_start(NULL, NULL);
        conf = conf_load(NULL);
        loop = kb_loop_new(err, sizeof(err));
        cr_assert(loop, "%s", err);
        it = kb_items_new(conf, loop, NULL, err, sizeof(err));
        cr_assert(it, "%s", err);
        produce_items("b1", 200);
        reader = results_reader();
        got = run_until(it, loop, reader, seen, 200, 200, 60000);
        cr_expect_eq(got, 200, "%d results", got);
        for (int i = 0; i < 200; i++)
                cr_expect_eq(seen[i], 1, "item %d: %d results", i, seen[i]);
        kb_items_shutdown(it, 5000);
        kb_items_destroy(it);
        rd_kafka_destroy(reader);
        kb_loop_destroy(loop);
        kb_conf_destroy(conf);
}

Test(items_mock, drain_ends_when_produces_keep_failing) {
        char err[512];
        kb_conf_t *conf;
        kb_loop_t *loop;
        kb_items_t *it;
        rd_kafka_t *reader;
        int seen[50] = {0};
        int64_t t0;

        /* A producer queue of one message, sent only after 3 s: every
         * result but one fails to produce synchronously (QUEUE_FULL) and
         * waits in the produce-retry queue. */
        fake_start(NULL, NULL);
        conf = conf_load("queue_buffering_max_messages = 1; linger_ms = 3000;");
        loop = kb_loop_new(err, sizeof(err));
        cr_assert(loop, "%s", err);
        it = kb_items_new(conf, loop, NULL, err, sizeof(err));
        cr_assert(it, "%s", err);
        produce_items("b2", 50);
        reader = results_reader();
        /* let every call finish: their results queue up */
        run_until(it, loop, reader, seen, 50, 50, 2000);
        t0 = kb_now_ms();
        kb_items_shutdown(it, 1000);
        /* drain gives up at its deadline; the flush waits up to 10 s */
        cr_expect_lt(kb_now_ms() - t0, 20000, "shutdown took %lld ms",
                     (long long)(kb_now_ms() - t0));
        kb_items_destroy(it);
        rd_kafka_destroy(reader);
        kb_loop_destroy(loop);
        kb_conf_destroy(conf);
}

/* ---- the job state machine, item by item ---------------------------- */

/* Results read so far, whatever their status: res[i] keeps item i's
 * latest (parsed), seen[i] counts them. Returns how many were read. */
static int collect_results(rd_kafka_t *c, json_t **res, int *seen, int n) {
        rd_kafka_message_t *m;
        int got = 0;
        while ((m = rd_kafka_consumer_poll(c, 0))) {
                json_t *o = m->err ? NULL
                                   : json_loadb(m->payload, m->len, 0, NULL);
                int i = o ? (int)json_integer_value(
                                json_object_get(o, "item_index"))
                          : -1;
                if (o && i >= 0 && i < n) {
                        json_decref(res[i]);
                        res[i] = o;
                        seen[i]++;
                        got++;
                } else
                        json_decref(o);
                rd_kafka_message_destroy(m);
        }
        return got;
}

/* Messages read from a DLQ reader: their kbatch-error-code headers are
 * appended to codes (space separated). */
static int collect_dlq(rd_kafka_t *c, char *codes, size_t size) {
        rd_kafka_message_t *m;
        int got = 0;
        while ((m = rd_kafka_consumer_poll(c, 0))) {
                rd_kafka_headers_t *h = NULL;
                const void *v;
                size_t len;
                if (!m->err) {
                        got++;
                        if (!rd_kafka_message_headers(m, &h) &&
                            !rd_kafka_header_get_last(h, "kbatch-error-code",
                                                      &v, &len))
                                snprintf(codes + strlen(codes),
                                         size - strlen(codes), "%.*s ",
                                         (int)len, (const char *)v);
                }
                rd_kafka_message_destroy(m);
        }
        return got;
}

static const char *res_status(json_t *r) {
        return json_string_value(json_object_get(r, "status"));
}

static const char *res_code(json_t *r) {
        return json_string_value(
            json_object_get(json_object_get(r, "error"), "code"));
}

static int res_attempts(json_t *r) {
        return (int)json_integer_value(json_object_get(r, "attempts"));
}

/* The offsets committed by group g on t.items, summed over both
 * partitions (-1 when one holding messages has none), and the messages the
 * partitions hold (*total). */
static int64_t committed_sum(int64_t *total) {
        rd_kafka_t *c = mock_client(RD_KAFKA_CONSUMER, "g");
        rd_kafka_topic_partition_list_t *l;
        int64_t sum = 0;
        l = rd_kafka_topic_partition_list_new(2);
        rd_kafka_topic_partition_list_add(l, "t.items", 0);
        rd_kafka_topic_partition_list_add(l, "t.items", 1);
        cr_assert_eq(rd_kafka_committed(c, l, 10000), 0);
        *total = 0;
        for (int i = 0; i < 2; i++) {
                int64_t lo, hi;
                cr_assert_eq(rd_kafka_query_watermark_offsets(
                                 c, "t.items", i, &lo, &hi, 10000),
                             0);
                *total += hi;
                /* A partition the producer's sticky partitioning left
                 * empty has nothing to commit. */
                if (l->elems[i].offset < 0 && hi > lo)
                        sum = -1;
                else if (sum >= 0 && l->elems[i].offset > 0)
                        sum += l->elems[i].offset;
        }
        rd_kafka_topic_partition_list_destroy(l);
        rd_kafka_destroy(c);
        return sum;
}

/* The committed offsets (committed_sum) end at the end of the partitions,
 * which hold n messages. */
static void expect_all_committed(int64_t committed, int64_t total, int n) {
        cr_expect_eq(total, n);
        cr_expect_eq(committed, total, "committed %lld of %lld",
                     (long long)committed, (long long)total);
}

static void free_items(char **vals, json_t **res, int n) {
        for (int i = 0; i < n; i++) {
                free(vals[i]);
                json_decref(res[i]);
        }
}

/* Every outcome of a job, one item each: success at once, a retryable
 * error (500, then a 429) and then success, a permanent error (400:
 * failed, no DLQ copy), retries exhausted (failed + DLQ copy), an
 * undecodable message (DLQ copy only), a deadline already passed
 * (expired, never called), a deadline passing while the item waits in
 * its route's queue behind a slow call (expired, never called). The slow
 * call in flight at shutdown is drained. Every offset ends committed. */
Test(items_mock, job_outcomes_and_commits) {
        enum { N = 9 };
        char err[512], codes[256] = "", *vals[N] = {0};
        char past[64], soon[64];
        kb_conf_t *conf;
        kb_loop_t *loop;
        kb_items_t *it;
        rd_kafka_t *reader, *dlq;
        json_t *res[N] = {0};
        int seen[N] = {0}, got = 0, dlqs = 0, i;
        int64_t deadline, committed, total;

        fake_start(NULL, NULL);
        /* One call at a time: item 7 waits behind item 6's slow call. */
        conf = conf_load_ex(NULL, NULL, "max_inflight = 1;",
                            "retry: { max_attempts = 2; inprocess_attempts = 1; "
                            "backoff_base_ms = 50; backoff_max_ms = 100; "
                            "delays_ms = [1000]; };");
        loop = kb_loop_new(err, sizeof(err));
        cr_assert(loop, "%s", err);
        snprintf(past, sizeof(past), ",\"deadline\":%lld",
                 (long long)(kb_wall_ms() - 60000));
        vals[0] = item_json("s", 0, N, NULL, NULL);
        vals[1] = item_json("s", 1, N, "{\"status\":500,\"times\":1}", NULL);
        vals[2] = item_json("s", 2, N,
                            "{\"status\":429,\"times\":1,\"retry_after\":0}",
                            NULL);
        vals[3] = item_json("s", 3, N, "{\"status\":400}", NULL);
        vals[4] = item_json("s", 4, N, "{\"status\":503}", NULL);
        vals[5] = strdup("not json at all");
        vals[6] = item_json("s", 6, N, NULL, past);
        produce_values((const char **)vals, 7);
        it = kb_items_new(conf, loop, NULL, err, sizeof(err));
        cr_assert(it, "%s", err);
        reader = topic_reader("t.results");
        dlq = topic_reader("t.items.dlq");
        deadline = kb_now_ms() + 30000;
        while ((got < 6 || dlqs < 2) && kb_now_ms() < deadline) {
                int w = kb_items_serve(it, kb_now_ms());
                kb_loop_drive(loop, w < 50 ? w : 50);
                got += collect_results(reader, res, seen, N);
                dlqs += collect_dlq(dlq, codes, sizeof(codes));
        }
        cr_assert_eq(got, 6, "%d results", got);
        /* Then a slow call holds the route's only slot while item 7, due
         * in 2 s, waits behind it. */
        vals[8] = item_json("s", 8, N, "{\"latency_ms\":5000}", NULL);
        produce_values((const char **)vals + 8, 1);
        deadline = kb_now_ms() + 1000;
        while (kb_now_ms() < deadline) {
                int w = kb_items_serve(it, kb_now_ms());
                kb_loop_drive(loop, w < 50 ? w : 50);
        }
        snprintf(soon, sizeof(soon), ",\"deadline\":%lld",
                 (long long)(kb_wall_ms() + 2000));
        vals[7] = item_json("s", 7, N, NULL, soon);
        produce_values((const char **)vals + 7, 1);
        deadline = kb_now_ms() + 30000;
        while (!seen[7] && kb_now_ms() < deadline) {
                int w = kb_items_serve(it, kb_now_ms());
                kb_loop_drive(loop, w < 50 ? w : 50);
                got += collect_results(reader, res, seen, N);
        }

        cr_expect_str_eq(res_status(res[0]), "succeeded");
        cr_expect_eq(res_attempts(res[0]), 1);
        for (i = 1; i <= 2; i++) {
                cr_expect_str_eq(res_status(res[i]), "succeeded", "item %d", i);
                cr_expect_eq(res_attempts(res[i]), 2, "item %d", i);
        }
        cr_expect_str_eq(res_status(res[3]), "failed");
        cr_expect_str_eq(res_code(res[3]), "client_error");
        cr_expect_eq(res_attempts(res[3]), 1);
        cr_expect_str_eq(res_status(res[4]), "failed");
        cr_expect_str_eq(res_code(res[4]), "max_attempts_exceeded");
        cr_expect_eq(res_attempts(res[4]), 2);
        cr_expect_eq(seen[5], 0);
        cr_expect_str_eq(res_status(res[6]), "expired");
        cr_expect_eq(res_attempts(res[6]), 0);
        cr_assert(res[7], "item 7: no result");
        cr_expect_str_eq(res_status(res[7]), "expired");
        cr_expect_eq(res_attempts(res[7]), 0);
        for (i = 0; i < N; i++)
                cr_expect_leq(seen[i], 1, "item %d: %d results", i, seen[i]);
        /* the DLQ: item 4's copy and the undecodable message, nothing
         * else (the 400 is a result only) */
        cr_expect_eq(dlqs, 2, "%d DLQ copies (%s)", dlqs, codes);
        cr_expect(strstr(codes, "max_attempts_exceeded"), "%s", codes);
        cr_expect(strstr(codes, "deserialization_error"), "%s", codes);

        cr_expect_eq(seen[8], 0, "the slow call ended before the shutdown");
        kb_items_shutdown(it, 10000);
        kb_items_destroy(it);
        deadline = kb_now_ms() + 5000;
        while (!seen[8] && kb_now_ms() < deadline) {
                collect_results(reader, res, seen, N);
                usleep(10000);
        }
        cr_expect_str_eq(res_status(res[8]), "succeeded");
        /* every offset done and committed, the slow call's too (drained) */
        committed = committed_sum(&total);
        expect_all_committed(committed, total, N);
        free_items(vals, res, N);
        rd_kafka_destroy(reader);
        rd_kafka_destroy(dlq);
        kb_loop_destroy(loop);
        kb_conf_destroy(conf);
}

/* Serves two pipelines (b may be NULL) for ms, or until want results. */
static int run_two(kb_items_t *a, kb_loop_t *la, kb_items_t *b, kb_loop_t *lb,
                   rd_kafka_t *reader, json_t **res, int *seen, int n,
                   int want, int ms) {
        int64_t deadline = kb_now_ms() + ms;
        int got = 0;
        while ((want <= 0 || got < want) && kb_now_ms() < deadline) {
                kb_items_serve(a, kb_now_ms());
                kb_loop_drive(la, 10);
                if (b) {
                        kb_items_serve(b, kb_now_ms());
                        kb_loop_drive(lb, 10);
                }
                if (reader)
                        got += collect_results(reader, res, seen, n);
        }
        return got;
}

/* A second worker joins while the first has calls in flight (10 calling,
 * the rest waiting in the route's queue): the first drops what had not
 * started, drains its calls, commits and lets the partitions go. Nothing
 * is lost, and the committed offsets end at the end of the partitions.
 *
 * librdkafka's mock cluster refuses the revocation's commit
 * (REBALANCE_IN_PROGRESS: it rejects commits while the group is joining,
 * where a broker accepts them from the current generation) and often
 * rebalances twice, so the next owner may call again what the drain
 * finished: duplicates are not counted here (the e2e tests against a
 * broker do). */
Test(items_mock, revoke_while_in_flight_loses_nothing) {
        enum { N = 40 };
        char err[512], *vals[N];
        kb_conf_t *conf;
        kb_loop_t *la, *lb;
        kb_items_t *a, *b;
        rd_kafka_t *reader;
        json_t *res[N] = {0};
        int seen[N] = {0}, got, i;
        int64_t committed, total, t0 = kb_now_ms();

        fake_start(NULL, NULL);
        /* a shorter session (the mock's rebalance waits a session less
         * 1 s for the members to rejoin), longer than kb_items_new takes
         * against the mock (~10 s), when the first worker is not served */
        conf = conf_load_ex("session_timeout_ms = 20000;",
                            "revoke_drain_ms = 20000;", "max_inflight = 10;",
                            NULL);
        la = kb_loop_new(err, sizeof(err));
        lb = kb_loop_new(err, sizeof(err));
        cr_assert(la && lb, "%s", err);
        for (i = 0; i < N; i++)
                vals[i] = item_json("v", i, N, "{\"latency_ms\":1500}", NULL);
        produce_values((const char **)vals, N);
        a = kb_items_new(conf, la, NULL, err, sizeof(err));
        cr_assert(a, "%s", err);
        reader = topic_reader("t.results");
        /* until the first calls are under way (none can end in 1.5 s) */
        got = run_two(a, la, NULL, NULL, reader, res, seen, N, 0, 1000);
        cr_assert_eq(got, 0);
        b = kb_items_new(conf, lb, NULL, err, sizeof(err));
        cr_assert(b, "%s", err);
        while (kb_now_ms() < t0 + 60000) {
                int missing = 0;
                got += run_two(a, la, b, lb, reader, res, seen, N, 0, 200);
                for (i = 0; i < N; i++)
                        missing += !seen[i];
                if (!missing)
                        break;
        }
        for (i = 0; i < N; i++) {
                cr_expect_geq(seen[i], 1, "item %d lost", i);
                cr_expect_str_eq(res_status(res[i]), "succeeded");
        }
        /* The first worker leaves (its shutdown commits and closes); the
         * second ends up with every partition and commits them. (Waiting
         * for the periodic commits of both: the mock's coordinator at
         * times stayed in a rebalance for over a minute, refusing every
         * commit, with neither member told to rejoin.) */
        kb_items_shutdown(a, 5000);
        while ((committed = committed_sum(&total)) != total &&
               kb_now_ms() < t0 + 150000)
                run_two(b, lb, NULL, NULL, reader, res, seen, N, 0, 500);
        kb_items_shutdown(b, 5000);
        kb_items_destroy(b);
        kb_items_destroy(a);
        expect_all_committed(committed, total, N);
        free_items(vals, res, N);
        rd_kafka_destroy(reader);
        kb_loop_destroy(lb);
        kb_loop_destroy(la);
        kb_conf_destroy(conf);
}
