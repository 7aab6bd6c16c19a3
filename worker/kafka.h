/* kafka: librdkafka client construction and the admin operations kbatch
 * needs. Every client gets the bootstrap servers, kafka.properties (passed
 * straight through), our log callback and the murmur2 partitioner (the one
 * Java clients use, so results and batch-state co-partition with any
 * producer). */
#ifndef KB_KAFKA_H
#define KB_KAFKA_H

#include <librdkafka/rdkafka.h>
#include <stdio.h>

#include "conf.h"

/* A new client config: bootstrap, kafka.properties, logging, client.id.
 * Caller owns the result (or hands it to rd_kafka_new). NULL + errstr on a
 * bad property (reported by name). */
rd_kafka_conf_t *kb_kafka_conf_new(const kb_conf_t *conf, const char *role,
                                   char *errstr, size_t errstr_size);

/* Authentication failures (wrong SASL credentials, an unsupported
 * mechanism) do not heal by reconnecting, and librdkafka would reconnect
 * forever, logging each failure: kbatch stops instead, with one clear error
 * line. Every client of kb_kafka_conf_new() records them (a default error
 * callback); clients with their own error callback call kb_kafka_error()
 * from it.
 *
 * kb_kafka_error(): 1 when the process must stop because a client failed
 * to authenticate (err is RD_KAFKA_RESP_ERR__AUTHENTICATION, or one was
 * seen before): the first call logs the one error line ("Kafka
 * authentication failed: <librdkafka's reason> (check kafka.properties:
 * ...)"); later errors are not worth a line. 0 otherwise: the caller
 * handles err as before. Thread-safe. */
int kb_kafka_error(rd_kafka_t *rk, int err, const char *reason);

/* 1 when any client of this process failed to authenticate; then why (may
 * be NULL) gets the error line's text. Thread-safe. */
int kb_kafka_auth_failed(char *why, size_t why_size);

/* rd_kafka_metadata() for start-up checks that gives up at once when the
 * client fails to authenticate (returns RD_KAFKA_RESP_ERR__AUTHENTICATION,
 * errstr: the error line's text, which the caller reports) instead of
 * waiting timeout_ms. Serves rk's error callback (rd_kafka_poll): only for
 * handles whose main queue holds nothing else yet. Other failures: the
 * error code, errstr its text. With `only`, an answer that says the topic
 * is unknown or leaderless is asked again until timeout_ms (a topic created
 * a moment ago), and then returned as it is. */
rd_kafka_resp_err_t kb_kafka_metadata(rd_kafka_t *rk, int all_topics,
                                      rd_kafka_topic_t *only,
                                      const struct rd_kafka_metadata **mdp,
                                      int timeout_ms, char *errstr,
                                      size_t errstr_size);

/* Sets one property, "name: message" into errstr on failure. */
int kb_kafka_conf_set(rd_kafka_conf_t *kc, const char *name, const char *value,
                      char *errstr, size_t errstr_size);

/* An idempotent producer (acks=all). kc: taken (also on failure), NULL for
 * a default one from conf. */
rd_kafka_t *kb_kafka_producer_new(const kb_conf_t *conf, rd_kafka_conf_t *kc,
                                  char *errstr, size_t errstr_size);

/* How a group-less consumer is made (kb_kafka_reader_new_opts). */
typedef struct {
        const char *group;     /* the group id: NULL for its own one
                                * (kbatch-<role>-<instance>-<pid>); a real
                                * group's to look up its committed offsets */
        const char *isolation; /* "read_committed", "read_uncommitted", or
                                * NULL for librdkafka's default */
        int fetch_wait_ms;     /* fetch.wait.max.ms; 0: librdkafka's */
} kb_kafka_reader_opts_t;

/* The one set-up of the read-only consumers: one that only reads
 * partitions it assigns itself (never joins its group), commits and stores
 * nothing, reports partition EOFs, its main queue forwarded to the
 * consumer queue. NULL + errstr on a bad property. */
rd_kafka_t *kb_kafka_reader_new_opts(const kb_conf_t *conf, const char *role,
                                     const kb_kafka_reader_opts_t *opts,
                                     char *errstr, size_t errstr_size);
/* The same with its own group id, that isolation and fetch.wait.max.ms
 * 100. */
rd_kafka_t *kb_kafka_reader_new(const kb_conf_t *conf, const char *role,
                                const char *isolation, char *errstr,
                                size_t errstr_size);

/* Replaces a producer that had a fatal error by nrk (made like it): purges
 * *rkp (its delivery reports, served here through its callback, fail what
 * it held, which the owner publishes again), waits up to 10 s for them,
 * destroys *pqp and *rkp, and sets *rkp = nrk, *pqp = its main queue,
 * forwarded to the wake pipe wfd. Takes nrk. */
void kb_kafka_producer_replace(rd_kafka_t **rkp, rd_kafka_queue_t **pqp,
                               rd_kafka_t *nrk, int wfd);

/* Name of retry tier n (1-based): "<items topic>.retry.<n>". Caller frees. */
char *kb_kafka_retry_topic(const kb_conf_t *conf, int n);

/* Creates every topic of SPEC §1 (idempotently: existing topics are left as
 * they are and reported). partitions/replication: -1 for the configured
 * defaults. Prints one line per topic to out (may be NULL). Returns 0 or -1
 * with errstr. */
int kb_kafka_topics_create(const kb_conf_t *conf, int partitions,
                           int replication, FILE *out, char *errstr,
                           size_t errstr_size);

/* Describes every kbatch topic: partitions, end offsets, and for the group
 * that consumes it (workers on items and retry tiers, the aggregator on
 * results, the notifier on batches) the committed offset, lag, commit
 * metadata and the number of offsets it marks done above the committed
 * one. Returns a new JSON object (caller decrefs) or NULL + errstr. */
struct json_t;
struct json_t *kb_kafka_topics_describe(const kb_conf_t *conf, char *errstr,
                                        size_t errstr_size);

/* Headers helper: value of the last header `name` as a NUL-terminated copy
 * into buf (truncated), or NULL when absent. */
const char *kb_kafka_header(const rd_kafka_message_t *msg, const char *name,
                            char *buf, size_t size);

/* 1 when producing a message failed for good (it is too large for the
 * producer or the topic, the broker refuses it as invalid, or the topic may
 * not be written): producing it again gets the same answer, so its item
 * must end another way. Transient errors (queue full, timeouts, leader
 * changes, broker down) return 0. */
int kb_kafka_produce_err_permanent(rd_kafka_resp_err_t err);

/* Start-up check of the message size limits of the topics the items
 * pipeline writes to: a WARN line for each whose max.message.bytes is
 * below what kbatch may write there (docs/limits.md). Returns how many;
 * the topics cannot be described: 0, nothing said. */
int kb_kafka_check_limits(const kb_conf_t *conf, rd_kafka_t *rk);

/* Leaves the group (rd_kafka_consumer_close_queue), serving the rebalance
 * callbacks, for at most timeout_ms. 0 when closed, -1 when it timed out
 * (logged under facility `who`). */
int kb_kafka_consumer_close(rd_kafka_t *rk, int timeout_ms, const char *who);

/* rd_kafka_destroy() of a consumer, without a second (blocking) close when
 * kb_kafka_consumer_close() timed out or it never joined. NULL: no-op. */
void kb_kafka_consumer_destroy(rd_kafka_t *rk);

#endif
