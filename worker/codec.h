/* codec: BatchItem decoding/validation and ItemResult encoding (SPEC §2).
 *
 * JSON format here (jansson); the Avro format plugs in behind the same
 * functions (see the Avro issue). Decoding distinguishes three outcomes:
 * undecodable (no result can be addressed: DLQ only), addressable but
 * invalid (a `failed` result with invalid_item), and valid. */
#ifndef KB_CODEC_H
#define KB_CODEC_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "jtext.h"

typedef enum {
        KB_CODEC_OK = 0,
        KB_CODEC_UNDECODABLE,   /* not JSON / not an object: DLQ,
                                 * deserialization_error */
        KB_CODEC_UNADDRESSABLE, /* JSON object without a usable batch_id,
                                 * item_index or items_total: DLQ,
                                 * invalid_item */
        KB_CODEC_INVALID,       /* addressable, but a field is wrong: a
                                 * failed result with invalid_item */
        KB_CODEC_RETRY,         /* Avro only (kb_serde_item_decode): the
                                 * schema registry is unreachable or has not
                                 * answered yet; nothing was decoded. Park
                                 * the item and decode again later: never a
                                 * DLQ, never a result. */
} kb_codec_res_t;

/* limits of SPEC §2 */
#define KB_BATCH_ID_MAX     128
#define KB_ITEM_ID_MAX      256
#define KB_ITEMS_TOTAL_MAX  1000000
#define KB_METADATA_MAX     16
#define KB_METADATA_KEY_MAX 64
#define KB_METADATA_VAL_MAX 512
/* Bounds of the other strings an item carries into its result, the batch
 * state and the batch event (docs/limits.md): with them a result without
 * its output, and a batch-state record, always fit a Kafka message. */
#define KB_MODEL_MAX        256
#define KB_OPERATION_MAX    64
#define KB_CALLBACK_URL_MAX 2048

typedef struct kb_item_s {
        char *batch_id;       /* NULL when absent/invalid */
        char *item_id;        /* NULL when absent/invalid */
        int64_t item_index;   /* -1 when absent */
        int64_t items_total;  /* 0 when absent */
        char *model;          /* NULL when absent */
        char *operation;      /* NULL: the route's default */
        json_t *input;        /* owned reference, an object, or NULL;
                               * NULL too when input_text has it */
        const char *input_text; /* borrowed from the decoded value (valid
                                 * while it is): the input object as JSON
                                 * text, when kb_codec_item_decode took it
                                 * without building a tree; else NULL */
        size_t input_text_len;
        int64_t deadline;     /* epoch ms, 0 when none */
        char *callback_url;   /* or NULL */
        json_t *metadata;     /* owned reference, object of strings, or NULL */
        int64_t submitted_at; /* epoch ms, 0 when none */
} kb_item_t;

/* 1 when a BatchItem value of len bytes is over max_bytes (0: no limit):
 * the rule the decoders below apply first ("too large"), for callers that
 * must tell that reason from the others. */
static inline int kb_codec_item_too_large(size_t len, size_t max_bytes) {
        return max_bytes && len > max_bytes;
}

/* Decodes a JSON BatchItem value. On any result but UNDECODABLE, *item holds
 * whatever fields could be read (free with kb_item_clear). max_bytes: values
 * larger than this are INVALID (or UNADDRESSABLE) "too large". errstr gets
 * the reason for anything but OK. */
kb_codec_res_t kb_codec_item_decode(const void *buf, size_t len,
                                    size_t max_bytes, kb_item_t *item,
                                    char *errstr, size_t errstr_size);
void kb_item_clear(kb_item_t *item);

/* kb_codec_item_decode the way it was before the tree-less path: the whole
 * value through json_loadb (JSON_REJECT_DUPLICATES), input as a tree. What
 * kb_codec_item_decode falls back to for anything unusual, and the
 * reference its tests and fuzz target compare with. */
kb_codec_res_t kb_codec_item_decode_tree(const void *buf, size_t len,
                                         size_t max_bytes, kb_item_t *item,
                                         char *errstr, size_t errstr_size);

/* The model request body: the item's input (tree or text) with "model"
 * added when it has none, compact JSON, NUL-terminated (caller frees);
 * *capp gets the last of max_tokens, max_completion_tokens,
 * max_output_tokens that is an integer (in that order), else 0. NULL on
 * allocation failure or when the item has no input. */
char *kb_codec_request_body(kb_item_t *item, int64_t *capp);

/* The validation half of kb_codec_item_decode: reads a BatchItem from an
 * already parsed JSON object (the Avro decoder builds that object from the
 * Avro record, see serde.h). o is borrowed; len is the size of the value on
 * the wire (for the max_bytes check). Same results as kb_codec_item_decode
 * (UNDECODABLE only when o is not an object). */
kb_codec_res_t kb_codec_item_from_json(const json_t *o, size_t len,
                                       size_t max_bytes, kb_item_t *item,
                                       char *errstr, size_t errstr_size);

/* Valid batch_id: 1..128 of [A-Za-z0-9._:-]. */
int kb_codec_batch_id_valid(const char *s);

/* 0 when md is a metadata object within SPEC §2's bounds (at most 16
 * entries, keys <= 64 and string values <= 512 characters); else -1 and
 * the reason in errstr. */
int kb_codec_metadata_check(const json_t *md, char *errstr,
                            size_t errstr_size);

/* 1 when s is NULL or at most max_chars characters (UTF-8) long. */
int kb_codec_str_within(const char *s, size_t max_chars);

typedef enum {
        KB_STATUS_NONE = 0, /* not terminal (2-bit value 0) */
        KB_STATUS_SUCCEEDED = 1,
        KB_STATUS_FAILED = 2,
        KB_STATUS_CANCELLED = 3,
        KB_STATUS_EXPIRED = 4, /* aggregated with cancelled/failed by 2 bits:
                                * see aggregator */
} kb_item_status_t;

const char *kb_item_status_str(kb_item_status_t st);

/* Everything an ItemResult carries beyond the item itself. */
typedef struct kb_result_s {
        kb_item_status_t status;
        int http_status;       /* 0: null */
        json_t *output;        /* borrowed; NULL: output_text, or null */
        const char *output_text; /* borrowed: checked, compact JSON text
                                  * (kb_codec_output_scan), embedded as it
                                  * is; used when output is NULL */
        size_t output_text_len;
        const char *error_code;/* NULL: no error */
        const char *error_message;
        int attempts;
        int has_usage;
        int64_t input_tokens, output_tokens, total_tokens;
        int64_t started_at, finished_at; /* epoch ms; 0: null */
        int64_t latency_ms;              /* -1: null */
        const char *worker;
        const char *route;     /* the route of the last call; NULL: null */
        const char *job_id;    /* async routes: the provider's job id;
                                * NULL: "job" is null */
        int job_polls;         /* status calls answered */
        int64_t job_wall_ms;   /* submit to the last answer */
} kb_result_t;

/* Extracts usage from a model response body (OpenAI chat/completions/
 * embeddings: prompt_tokens/completion_tokens; responses and Anthropic:
 * input_tokens/output_tokens). Returns 1 when found. */
int kb_codec_usage_from_output(const json_t *output, kb_result_t *res);

/* The same from the usage kb_jtext_check read from the response text. */
int kb_codec_usage_from_jtext(const kb_jtext_usage_t *u, kb_result_t *res);

/* Checks that a model response buf[0..*lenp) is JSON (as jansson would
 * load it: see jtext.h) without building a tree, compacts it in place (buf
 * must have room for *lenp + 1 bytes; *lenp becomes the compact length,
 * NUL-terminated) and points res->output_text at it. usage: NULL, or what
 * the response says in its top-level "usage" (kb_codec_usage_from_jtext).
 * Returns 1 when JSON; 0 when not (buf and *lenp untouched, res->output_text
 * NULL). */
int kb_codec_output_scan(char *buf, size_t *lenp, kb_result_t *res,
                         kb_jtext_usage_t *usage);

/* Encodes an ItemResult as a JSON object string (caller frees with free()).
 * The item may be partly filled (invalid items). NULL on allocation
 * failure. */
char *kb_codec_result_encode(const kb_item_t *item, const kb_result_t *res,
                             size_t *lenp);

/* The ItemResult as a JSON object (what kb_codec_result_encode prints,
 * written without this tree; the Avro encoder converts it, see serde.h).
 * res->output_text is loaded into the tree. New reference, caller decrefs;
 * NULL on allocation failure. */
json_t *kb_codec_result_json(const kb_item_t *item, const kb_result_t *res);

#endif
