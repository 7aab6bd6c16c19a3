/* reader: a consumer without a group that reads every partition of one
 * topic, for what every worker keeps whole (the cancelled batches of the
 * control topic, the async job ids). */
#ifndef KB_READER_H
#define KB_READER_H

#include <librdkafka/rdkafka.h>
#include <stdint.h>

#include "conf.h"
#include "loop.h"

/* Creates the consumer (client role `role`; a group id only because
 * librdkafka wants one: nothing is committed; partition EOFs reported),
 * assigns every partition of topic from start_ms (wall ms: the offsets of
 * that time, a partition with nothing newer at its end; -1: from the
 * beginning), and wakes the loop when messages arrive (*qp gets the
 * consumer queue, caller destroys it). *parts gets the partition count.
 * NULL + errstr ("cannot read the <what> <topic>: ...") on failure. */
rd_kafka_t *kb_reader_new(const kb_conf_t *conf, const char *role,
                          const char *topic, const char *what,
                          int64_t start_ms, kb_loop_t *loop,
                          rd_kafka_queue_t **qp, int *parts, char *errstr,
                          size_t errstr_size);

#endif
