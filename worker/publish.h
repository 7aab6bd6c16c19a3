/* publish: the validation and the publishing behind `kbatch submit`, shared
 * by the command and the HTTP API (role `api`, SPEC §11).
 *
 * - kb_pub_check_t validates a batch file line by line, exactly as submit
 *   does: every line an OpenAI Batch, Anthropic Message Batches or native
 *   BatchItem line, unique custom_ids, one callback_url, at most
 *   KB_BF_LINES_MAX requests, each item a valid BatchItem under
 *   worker.max_item_bytes. A bad line gets one message (without a FILE:LINE
 *   prefix: the caller adds its own).
 * - kb_pub_t publishes the lines of a validated file as one batch: item i
 *   keyed "<batch_id>:<i>" to the items topic, encoded by the serde of the
 *   items topic, through a producer the caller owns (and polls).
 * - kb_pub_lines_t splits a byte stream into lines (for callers that get
 *   the file in pieces, not through getline). */
#ifndef KB_PUBLISH_H
#define KB_PUBLISH_H

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "batchfile.h"
#include "conf.h"
#include "serde.h"

/* Drops a UTF-8 byte order mark at the start of s (editors on Windows
 * write one); *len is updated. */
void kb_pub_strip_bom(char *s, size_t *len);

/* Strips the newline (and CRs before it); 1 when only whitespace is left
 * (a blank line, skipped), else 0. */
int kb_pub_trim_line(char *s, size_t *len);

/* The operations of the configured routes, for OpenAI urls that are not
 * the defaults: a malloc'ed array of pairs borrowed from conf (caller
 * frees the array), NULL when there are none (*cnt 0). */
kb_kv_t *kb_pub_route_ops(const kb_conf_t *conf, size_t *cnt);

/* ---- validation ---- */

typedef struct kb_pub_check_s kb_pub_check_t;

/* A validator for one file. batch_id: the id the batch will have (or one
 * of the same length: the item size depends on it), copied. metadata:
 * borrowed for the checker's life, may be NULL. callback_url: the batch's,
 * or NULL when the lines may carry their own (native; then they must all
 * be the same). NULL on out of memory. */
kb_pub_check_t *kb_pub_check_new(const kb_conf_t *conf, kb_bf_format_t format,
                                 const char *batch_id, const json_t *metadata,
                                 const char *callback_url, int64_t deadline);
void kb_pub_check_destroy(kb_pub_check_t *ck); /* NULL is a no-op */

typedef enum {
        KB_PUB_LINE_OK = 0, /* a valid request */
        KB_PUB_LINE_BLANK,  /* nothing but whitespace: not a request */
        KB_PUB_LINE_BAD,    /* errstr says why */
        KB_PUB_LINE_OVER,   /* past KB_BF_LINES_MAX requests, after the
                             * line that said so (one bad line) */
} kb_pub_line_res_t;

/* Validates line number lineno (1-based; s, len: the line, with or without
 * its newline, modified in place). */
kb_pub_line_res_t kb_pub_check_line(kb_pub_check_t *ck, char *s, size_t len,
                                    int64_t lineno, char *errstr,
                                    size_t errstr_size);

/* Requests seen (valid or not, but not blank), and bad lines (the lines
 * past the limit count as one). */
int64_t kb_pub_check_items(const kb_pub_check_t *ck);
int64_t kb_pub_check_bad(const kb_pub_check_t *ck);
/* The one callback_url the native lines carried, or NULL; borrowed. */
const char *kb_pub_check_callback(const kb_pub_check_t *ck);

/* ---- publishing ---- */

typedef struct kb_pub_s kb_pub_t;

/* A publisher of one batch. rk: a producer (borrowed; its delivery reports
 * are the caller's: every message carries msg_opaque). sd: the serde
 * (borrowed). b: the batch fields, copied but for bb_metadata and the
 * strings, borrowed for the publisher's life. NULL on out of memory. */
kb_pub_t *kb_pub_new(rd_kafka_t *rk, kb_serde_t *sd, const kb_conf_t *conf,
                     kb_bf_format_t format, const kb_bf_batch_t *b,
                     void *msg_opaque);
void kb_pub_destroy(kb_pub_t *pb); /* NULL is a no-op */

/* Publishes the next request of the file (the n-th publish call is item
 * n-1); blank lines are skipped (returns 0, publishes nothing). When the
 * producer's queue is full it polls the producer (50 ms at a time) until
 * there is room, or *stop becomes non-zero (stop may be NULL). Returns 0,
 * or -1 with errstr (a line that does not parse: the file changed since
 * it was validated; a serde or producer error). */
int kb_pub_line(kb_pub_t *pb, char *s, size_t len, int first_line,
                volatile sig_atomic_t *stop, char *errstr, size_t errstr_size);

/* Items produced so far. */
int64_t kb_pub_count(const kb_pub_t *pb);

/* ---- lines of a byte stream ---- */

typedef struct kb_pub_lines_s kb_pub_lines_t;

/* Called for each line (s: the line without its newline, NUL-terminated,
 * modifiable, valid for the call; lineno 1-based). too_long: the line was
 * longer than max_line and only its first max_line bytes are in s.
 * Returns 0 to go on, non-zero to stop (kb_pub_lines_feed returns it). */
typedef int (*kb_pub_line_cb_t)(void *opaque, char *s, size_t len,
                                int64_t lineno, int too_long);

/* max_line: the longest line kept whole. NULL on out of memory. */
kb_pub_lines_t *kb_pub_lines_new(size_t max_line, kb_pub_line_cb_t cb,
                                 void *opaque);
void kb_pub_lines_destroy(kb_pub_lines_t *ls); /* NULL is a no-op */
/* Feeds len bytes; returns 0 or the callback's non-zero value. */
int kb_pub_lines_feed(kb_pub_lines_t *ls, const char *buf, size_t len);
/* The last line when the stream does not end with a newline. */
int kb_pub_lines_end(kb_pub_lines_t *ls);

#endif
