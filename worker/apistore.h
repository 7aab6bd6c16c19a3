/* apistore: what the HTTP API (role `api`, SPEC §11) knows, all of it in
 * Kafka (DESIGN.md "The API role").
 *
 * - Files: a file's bytes in chunks of KB_APISTORE_CHUNK bytes keyed
 *   "<file_id>:<n>" in topic topics.files (compacted), all in the partition
 *   of murmur2(file_id); then its header record keyed "<file_id>" (JSON:
 *   id, tenant, filename, purpose, bytes, lines, created_at, partition,
 *   first_offset, chunks) in the records topic. A file exists once its
 *   header is there; deleting it writes tombstones for the header and the
 *   chunks. Chunks are read only when a file is (kb_apistore_file_read).
 * - Batch records (the records topic, topics.api_batches, compacted): one
 *   JSON record per batch keyed by its id (tenant, flavour, endpoint, input
 *   file, metadata, idempotency digest, created_at, ...); the latest wins.
 * - Batch progress: the aggregator's records in topics.batch_state, for the
 *   batches of the API (ids "batch_..." and "msgbatch_...").
 *
 * A follower thread reads the records topic and the batch state from their
 * beginning to their end at start (the store is ready then) and follows them, keeping the file
 * headers, batch records and a summary of each batch's state in memory
 * (JSON objects under a read-write lock; readers get new references, writers
 * replace values, never change them in place). What this replica writes is
 * applied at once after the broker acknowledged it, so a client reads its
 * own writes on the same replica. */
#ifndef KB_APISTORE_H
#define KB_APISTORE_H

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <stddef.h>
#include <stdint.h>

#include "conf.h"

#define KB_APISTORE_CHUNK (512 * 1024)

typedef struct kb_apistore_s kb_apistore_t;

/* Connects (producer, follower) and starts the follower thread. NULL +
 * errstr on a client configuration error or a missing topic. */
kb_apistore_t *kb_apistore_new(const kb_conf_t *conf, char *errstr,
                               size_t errstr_size);
/* Stops the threads, flushes the producer, frees. NULL is a no-op. */
void kb_apistore_destroy(kb_apistore_t *st);

/* 1 once the follower has read every topic to its end as of start. */
int kb_apistore_ready(kb_apistore_t *st);
/* 1 when a Kafka client failed for good (authentication). */
int kb_apistore_fatal(kb_apistore_t *st);

/* ---- waiting for acknowledgements ---- */

/* Delivery bookkeeping of a group of messages: pass it as the message
 * opaque (RD_KAFKA_V_OPAQUE); count each message produced with
 * kb_apiwait_sent. */
typedef struct kb_apiwait_s kb_apiwait_t;
kb_apiwait_t *kb_apiwait_new(void);
void kb_apiwait_destroy(kb_apiwait_t *w); /* NULL is a no-op */
void kb_apiwait_sent(kb_apiwait_t *w, int64_t n);
/* Waits until every message sent was acknowledged or failed, up to
 * timeout_ms. 0 when all were delivered; -1 with errstr otherwise. */
int kb_apiwait_wait(kb_apiwait_t *w, int timeout_ms, char *errstr,
                    size_t errstr_size);
/* The offset of the first message of the group acknowledged, -1 if none. */
int64_t kb_apiwait_first_offset(kb_apiwait_t *w);

/* The producer (idempotent, acks=all; a thread of the store polls it).
 * Borrowed. */
rd_kafka_t *kb_apistore_producer(kb_apistore_t *st);

/* The partition of key in topic t (murmur2 over its partition count). */
int32_t kb_apistore_partition(kb_apistore_t *st, kb_topic_t t,
                              const char *key);

/* Produces value (a JSON object, borrowed; NULL: a tombstone) keyed key to
 * topic t (partition -1: by key), waits for the acknowledgement and, for
 * the records topic (file headers, keys "file-...", and batch records),
 * applies it to the in-memory view. 0, or -1 with errstr. */
int kb_apistore_put(kb_apistore_t *st, kb_topic_t t, const char *key,
                    json_t *value, int32_t partition, char *errstr,
                    size_t errstr_size);

/* ---- reads (new references, caller decrefs; NULL: not there) ---- */

json_t *kb_apistore_file(kb_apistore_t *st, const char *id);
json_t *kb_apistore_batch(kb_apistore_t *st, const char *id);
/* {items_total, done, succeeded, failed, cancelled, expired,
 *  first_result_at, last_result_at, completed_at, status} of the
 * aggregator's last committed state. */
json_t *kb_apistore_state(kb_apistore_t *st, const char *batch_id);

/* Every file header / batch record whose "tenant" is tenant (NULL: any)
 * (and, with flavour not NULL, whose "flavour" is flavour): a new array, in
 * no order. */
json_t *kb_apistore_files(kb_apistore_t *st, const char *tenant);
json_t *kb_apistore_batches(kb_apistore_t *st, const char *tenant,
                            const char *flavour);

/* The batch of an idempotency digest (hex), NULL when unknown; new
 * reference. */
json_t *kb_apistore_batch_by_idem(kb_apistore_t *st, const char *digest);

/* Reads the chunks of file (a header, borrowed) in order and calls cb for
 * each (buf, len: borrowed for the call). A non-zero cb return stops and is
 * returned. 0 when the whole file was read; -1 with errstr on a Kafka
 * error, a missing chunk or stop becoming non-zero. */
typedef int (*kb_apistore_chunk_cb_t)(void *opaque, const char *buf,
                                      size_t len);
int kb_apistore_file_read(kb_apistore_t *st, const json_t *file,
                          kb_apistore_chunk_cb_t cb, void *opaque,
                          char *errstr, size_t errstr_size);

/* The same, chunk by chunk: open (NULL + errstr on a Kafka error), next
 * (1 and *buf, *len: the next chunk, borrowed until the next call or
 * close; 0 at the end; -1 with errstr), close (NULL is a no-op). For one
 * thread at a time. */
typedef struct kb_apifile_s kb_apifile_t;
kb_apifile_t *kb_apistore_file_open(kb_apistore_t *st, const json_t *file,
                                    char *errstr, size_t errstr_size);
int kb_apistore_file_next(kb_apifile_t *f, const char **buf, size_t *len,
                          char *errstr, size_t errstr_size);
void kb_apistore_file_close(kb_apifile_t *f);

#endif
