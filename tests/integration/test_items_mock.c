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
        kb_log_init(KB_LOG_OFF, KB_LOG_FMT_JSON, NULL);
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
 * kafka.properties lines. */
static kb_conf_t *conf_load(const char *props) {
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
                 "commit_interval_ms = 200; };\n"
                 "retry: { delays_ms = [1000]; };\n"
                 "admin: { listen = \"\"; };\n"
                 "log: { level = \"off\"; };\n"
                 "routes = ( { model = \"*\"; base_url = "
                 "\"http://127.0.0.1:%d\"; } );\n",
                 rd_kafka_mock_cluster_bootstraps(mcluster), props ? props : "",
                 fake_port);
        cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
        close(fd);
        conf = kb_conf_load(conf_path, NULL, err, sizeof(err));
        cr_assert(conf, "%s", err);
        return conf;
}

static void produce_items(const char *batch, int n) {
        char err[512], v[512];
        rd_kafka_conf_t *kc = rd_kafka_conf_new();
        rd_kafka_t *p;
        rd_kafka_conf_set(kc, "bootstrap.servers",
                          rd_kafka_mock_cluster_bootstraps(mcluster), NULL, 0);
        rd_kafka_conf_set(kc, "log_level", "0", NULL, 0);
        p = rd_kafka_new(RD_KAFKA_PRODUCER, kc, err, sizeof(err));
        cr_assert(p, "%s", err);
        for (int i = 0; i < n; i++) {
                int len = snprintf(
                    v, sizeof(v),
                    "{\"batch_id\":\"%s\",\"item_id\":\"r%d\",\"item_index\":%d,"
                    "\"items_total\":%d,\"model\":\"m\",\"input\":{"
                    "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}}",
                    batch, i, i, n);
                cr_assert_eq(rd_kafka_producev(p, RD_KAFKA_V_TOPIC("t.items"),
                                               RD_KAFKA_V_VALUE(v, (size_t)len),
                                               RD_KAFKA_V_MSGFLAGS(
                                                   RD_KAFKA_MSG_F_COPY),
                                               RD_KAFKA_V_END),
                             0);
        }
        cr_assert_eq(rd_kafka_flush(p, 10000), 0);
        rd_kafka_destroy(p);
}

/* A reader of t.results from the start (both partitions, no group). */
static rd_kafka_t *results_reader(void) {
        char err[512];
        rd_kafka_conf_t *kc = rd_kafka_conf_new();
        rd_kafka_topic_partition_list_t *l;
        rd_kafka_t *c;
        rd_kafka_conf_set(kc, "bootstrap.servers",
                          rd_kafka_mock_cluster_bootstraps(mcluster), NULL, 0);
        rd_kafka_conf_set(kc, "group.id", "reader", NULL, 0);
        rd_kafka_conf_set(kc, "log_level", "0", NULL, 0);
        c = rd_kafka_new(RD_KAFKA_CONSUMER, kc, err, sizeof(err));
        cr_assert(c, "%s", err);
        l = rd_kafka_topic_partition_list_new(2);
        rd_kafka_topic_partition_list_add(l, "t.results", 0)->offset =
            RD_KAFKA_OFFSET_BEGINNING;
        rd_kafka_topic_partition_list_add(l, "t.results", 1)->offset =
            RD_KAFKA_OFFSET_BEGINNING;
        cr_assert_eq(rd_kafka_assign(c, l), 0);
        rd_kafka_topic_partition_list_destroy(l);
        return c;
}

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
