/* batchfile: the formats of `kbatch submit` and `kbatch collect` (SPEC §9).
 *
 * Pure functions, no I/O:
 * - input lines: OpenAI Batch input lines {custom_id, method, url, body},
 *   Anthropic Message Batches lines {custom_id, params} and native BatchItem
 *   lines, parsed and validated into one form (kb_bf_line_t) and turned into
 *   the BatchItem of SPEC §2 (kb_bf_item_json);
 * - the set of custom_ids seen (uniqueness within a file);
 * - batch ids: generated (sortable by time, like a ULID) or derived from an
 *   idempotency key;
 * - durations ("24h") and --metadata k=v arguments;
 * - output lines: an ItemResult as an OpenAI Batch output line or an
 *   Anthropic Message Batches result line;
 * - the collector: one result kept per item_index.
 *
 * URL -> operation: "/v1/chat/completions" chat.completions,
 * "/v1/responses" responses, "/v1/embeddings" embeddings, "/v1/completions"
 * completions, "/v1/messages" messages; then the extra (operation, path)
 * pairs a caller passes (the routes' own operations). Anthropic lines are
 * operation "messages" with the line's params as the input. */
#ifndef KB_BATCHFILE_H
#define KB_BATCHFILE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "conf.h"

/* Most requests in one file (SPEC §2 items_total). */
#define KB_BF_LINES_MAX 1000000

typedef enum {
        KB_BF_AUTO = 0,  /* each line: whichever format it has */
        KB_BF_OPENAI,    /* custom_id, method, url, body */
        KB_BF_ANTHROPIC, /* custom_id, params */
        KB_BF_NATIVE,    /* a BatchItem (batch_id, item_index and
                          * items_total are assigned by submit) */
} kb_bf_format_t;

/* "auto", "openai", "anthropic", "native". */
const char *kb_bf_format_str(kb_bf_format_t f);
/* The inverse; -1 when unknown. */
int kb_bf_format_parse(const char *s);

/* One request of the file, in the form common to the three formats. */
typedef struct kb_bf_line_s {
        kb_bf_format_t bl_format; /* the format the line had */
        char *bl_custom_id;       /* owned: the item_id */
        char *bl_model;           /* owned */
        char *bl_operation;       /* owned, or NULL: the route's default */
        json_t *bl_input;         /* owned reference: the request body */
        json_t *bl_metadata;      /* owned reference or NULL (native) */
        char *bl_callback_url;    /* owned or NULL (native) */
        int64_t bl_deadline;      /* epoch ms, 0: none (native) */
} kb_bf_line_t;

/* Parses and validates one line (buf, len bytes, without its newline).
 * want: the format the line must have, or KB_BF_AUTO to detect it. ops:
 * extra (operation name, path) pairs for OpenAI urls (k = name, v = path),
 * borrowed for the call; may be NULL. Returns 0 and fills *line (free with
 * kb_bf_line_clear), or -1 with the reason in errstr (a message naming the
 * field, without the FILE:LINE prefix) and *line cleared. */
int kb_bf_line_parse(const char *buf, size_t len, kb_bf_format_t want,
                     const kb_kv_t *ops, size_t op_cnt, kb_bf_line_t *line,
                     char *errstr, size_t errstr_size);
void kb_bf_line_clear(kb_bf_line_t *line); /* NULL-safe; idempotent */

/* What the whole batch shares. Borrowed by kb_bf_item_json. */
typedef struct kb_bf_batch_s {
        const char *bb_batch_id;
        int64_t bb_items_total;
        const char *bb_callback_url; /* NULL: the line's own (native) */
        int64_t bb_deadline;         /* epoch ms, 0: the line's own */
        const json_t *bb_metadata;   /* object or NULL; merged under the
                                      * line's own (the line wins) */
        int64_t bb_submitted_at;     /* epoch ms, 0: omitted */
} kb_bf_batch_t;

/* The BatchItem (SPEC §2) for line number `index` (0-based) of the batch:
 * a new object (caller decrefs), NULL on out of memory. Validate it with
 * kb_codec_item_from_json. */
json_t *kb_bf_item_json(const kb_bf_line_t *line, int64_t index,
                        const kb_bf_batch_t *b);

/* ---- custom_id uniqueness ---- */

typedef struct kb_bf_ids_s kb_bf_ids_t;

kb_bf_ids_t *kb_bf_ids_new(void);         /* NULL on out of memory */
void kb_bf_ids_destroy(kb_bf_ids_t *ids); /* NULL is a no-op */

/* Adds id (copied), seen on line `line`. Returns 0 when new, the line it
 * was first seen on when it is a duplicate, -1 on out of memory. */
int64_t kb_bf_ids_add(kb_bf_ids_t *ids, const char *id, int64_t line);

/* ---- batch ids ---- */

/* Size of a buffer that holds any id below. */
#define KB_BF_BATCH_ID_SIZE 40

/* A new batch id "b-" + 26 characters of Crockford base32: 48 bits of
 * now_ms then the 80 bits of rnd (10 bytes), so ids sort by creation time
 * (ULID layout). out: at least KB_BF_BATCH_ID_SIZE bytes. */
void kb_bf_batch_id_generate(int64_t now_ms, const uint8_t rnd[10], char *out);

/* The batch id of an idempotency key: "b-" + the first 24 hex digits of
 * SHA-256(key). The same key always gives the same id. out: at least
 * KB_BF_BATCH_ID_SIZE bytes. Returns 0, -1 when hashing failed. */
int kb_bf_batch_id_from_key(const char *key, char *out);

/* ---- arguments ---- */

/* A duration: an integer with a unit ms, s, m, h, d ("24h", "90s",
 * "500ms"), or several ("1h30m"). Returns milliseconds (> 0), or -1 when
 * malformed, zero or over 10 years. */
int64_t kb_bf_duration_parse(const char *s);

/* A point in time for --deadline: a duration from now_ms ("24h"), epoch ms,
 * or RFC 3339 UTC ("2026-11-22T10:00:00Z", fractions and offsets "+02:00"
 * accepted). Returns epoch ms, -1 when malformed. */
int64_t kb_bf_time_parse(const char *s, int64_t now_ms);

/* Adds one "key=value" to md (an object) under the SPEC §2 metadata limits
 * (16 entries, key 1-64 and value up to 512 characters, UTF-8). Returns 0,
 * or -1 with errstr. A repeated key replaces the earlier value. */
int kb_bf_metadata_add(json_t *md, const char *kv, char *errstr,
                       size_t errstr_size);

/* ---- output lines ---- */

typedef enum {
        KB_BF_OUT_OPENAI = 0, /* OpenAI Batch output lines */
        KB_BF_OUT_ANTHROPIC,  /* Anthropic Message Batches result lines */
        KB_BF_OUT_NATIVE,     /* the ItemResult as it is */
} kb_bf_out_t;

/* "openai", "anthropic", "native"; the inverse is -1 when unknown. */
const char *kb_bf_out_str(kb_bf_out_t f);
int kb_bf_out_parse(const char *s);

/* The output line for an ItemResult (borrowed; its JSON form, SPEC §2):
 * a new object (caller decrefs), NULL when result is not an object.
 *
 * openai: {"id": "batch_req_<24 hex of SHA-256(batch_id:item_index)>",
 *   "custom_id": item_id, "response": null or {"status_code": http_status,
 *   "request_id": the result's request_id or null, "body": output},
 *   "error": null (succeeded) or {"code", "message"}}; the codes are
 *   kbatch's (SPEC §4) but for expired and cancelled, which are OpenAI's
 *   "batch_expired" and "batch_cancelled".
 * anthropic: {"custom_id", "result": {"type": "succeeded", "message":
 *   output} | {"type": "errored", "error": {"type": "error", "error":
 *   {"type", "message"}}} | {"type": "canceled"} | {"type": "expired"}};
 *   an errored item whose output is an Anthropic error object carries it.
 * native: a copy of the ItemResult.
 * *is_error (may be NULL) is 1 unless the result succeeded. */
json_t *kb_bf_output_line(kb_bf_out_t fmt, const json_t *result, int *is_error);

/* ---- the collector: one result per item ---- */

typedef struct kb_bf_collect_s kb_bf_collect_t;

/* For a batch of items_total (1..KB_BF_LINES_MAX) items. NULL on a bad
 * total or out of memory. */
kb_bf_collect_t *kb_bf_collect_new(int64_t items_total);
void kb_bf_collect_destroy(kb_bf_collect_t *co); /* NULL is a no-op */

typedef enum {
        KB_BF_KEEP_FINAL = 0, /* a success: final, write it now */
        KB_BF_KEEP_PENDING,   /* not a success: kept (kb_bf_collect_take)
                               * until a success for the item replaces it,
                               * as a replayed item's does */
        KB_BF_DUPLICATE,      /* the item already has a result: dropped */
        KB_BF_OUT_OF_RANGE,   /* item_index missing or not in
                               * 0..items_total-1: dropped */
} kb_bf_keep_t;

/* Offers a result (its JSON form, borrowed; a pending one is kept with a
 * new reference). The first result of an item wins, except that a success
 * replaces a pending failure. */
kb_bf_keep_t kb_bf_collect_offer(kb_bf_collect_t *co, json_t *result);

/* Items with a result (final or pending). */
int64_t kb_bf_collect_seen(const kb_bf_collect_t *co);
/* Items with a success. */
int64_t kb_bf_collect_succeeded(const kb_bf_collect_t *co);
int64_t kb_bf_collect_total(const kb_bf_collect_t *co);

/* Iterates over the pending results in item_index order: *pos starts at 0;
 * returns a borrowed result (valid until destroy), NULL at the end. */
json_t *kb_bf_collect_next_pending(const kb_bf_collect_t *co, int64_t *pos);

#endif
