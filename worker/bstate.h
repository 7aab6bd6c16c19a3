/* bstate: the batch-state model (SPEC §2, DESIGN.md "Batch completion: the
 * aggregator") and the reader of the batch-state topic.
 *
 * The model is pure: the batch status rule, the 2-bit map of item outcomes,
 * one batch's state (kb_bstate_t) and how a result changes it, the
 * BatchState record (the value of the compacted batch-state topic) and the
 * BatchEvent encodings. The aggregator role (aggregator.c) keeps the states
 * of its partitions' batches and commits them; `kbatch status`, `submit`,
 * `collect` and the HTTP API read them back (kb_bstate_read, apistore.c).
 * The unit tests are tests/unit/test_bstate.c. */
#ifndef KB_BSTATE_H
#define KB_BSTATE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "codec.h"

struct kb_conf_s;

/* ---- batch status (SPEC §2) ------------------------------------------ */

typedef enum {
        KB_BATCH_IN_PROGRESS = 0, /* not every item is terminal yet */
        KB_BATCH_SUCCEEDED,
        KB_BATCH_PARTIAL_SUCCEEDED,
        KB_BATCH_FAILED,
        KB_BATCH_CANCELLED,
        KB_BATCH_EXPIRED,
        KB_BATCH__CNT
} kb_batch_status_t;

/* "in_progress", "succeeded", "partial_succeeded", "failed", "cancelled",
 * "expired" (static strings; "unknown" out of range). */
const char *kb_batch_status_str(kb_batch_status_t st);
/* The inverse; -1 when unknown. */
int kb_batch_status_parse(const char *s);

/* The status of a batch whose items are all terminal, first rule that
 * holds: succeeded if every item succeeded (succeeded == total and nothing
 * else counted); cancelled if any cancelled; expired if any expired; failed
 * if none succeeded; otherwise partial_succeeded. Counts are not checked
 * against total beyond the first rule. */
kb_batch_status_t kb_batch_status_rule(int64_t total, int64_t succeeded,
                                       int64_t failed, int64_t cancelled,
                                       int64_t expired);

/* ---- the 2-bit map --------------------------------------------------- */

/* One slot per item_index: 0 none (not terminal), 1 succeeded, 2 failed,
 * 3 cancelled or expired (which of the two is kept only in the counts).
 * Slot i is bits 2*(i%4) .. 2*(i%4)+1 of byte i/4 (LSB first). */
#define KB_SLOT_NONE      0u
#define KB_SLOT_SUCCEEDED 1u
#define KB_SLOT_FAILED    2u
#define KB_SLOT_ENDED     3u /* cancelled or expired */
#define KB_BITS2_BYTES(n) ((size_t)(((n) + 3) / 4))

static inline unsigned kb_bits2_get(const uint8_t *map, int64_t i) {
        return (map[i >> 2] >> ((i & 3) * 2)) & 3u;
}

static inline void kb_bits2_set(uint8_t *map, int64_t i, unsigned v) {
        unsigned sh = (unsigned)(i & 3) * 2;
        map[i >> 2] = (uint8_t)((map[i >> 2] & ~(3u << sh)) | ((v & 3u) << sh));
}

/* Counts the slots of a map of n items by value: cnt[0..3]. */
void kb_bits2_count(const uint8_t *map, int64_t n, int64_t cnt[4]);

/* ---- one batch's state ----------------------------------------------- */

/* Out-of-range item indexes remembered per batch (to count each once). */
#define KB_BATCH_EXTRA_MAX 1024

typedef struct kb_bstate_s {
        char *bs_batch_id;             /* owned */
        int64_t bs_items_total;        /* 1..KB_ITEMS_TOTAL_MAX */
        uint8_t *bs_map;               /* owned, KB_BITS2_BYTES(total) */
        int64_t bs_done;               /* slots that are terminal */
        int64_t bs_succeeded;
        int64_t bs_failed;             /* includes bs_invalid */
        int64_t bs_cancelled;
        int64_t bs_expired;
        int64_t bs_invalid;            /* invalid_item failures counted by
                                        * the aggregator (inconsistent
                                        * items_total, index out of range) */
        int64_t bs_input_tokens, bs_output_tokens, bs_total_tokens;
        int64_t bs_first_result_at;    /* epoch ms, 0: none */
        int64_t bs_last_result_at;     /* epoch ms, 0: none */
        int64_t bs_completed_at;       /* epoch ms of completion, 0: none */
        int64_t bs_updated_at;         /* epoch ms of the last revision > 1 */
        int64_t bs_deadline;           /* latest item deadline seen, 0: none */
        int64_t bs_revision;           /* events published (committed) */
        char *bs_callback_url;         /* owned, or NULL */
        json_t *bs_metadata;           /* owned reference, or NULL */
        int64_t *bs_extra;             /* owned: out-of-range indexes seen */
        size_t bs_extra_cnt;
} kb_bstate_t;

/* A new, empty state for items_total items (1..KB_ITEMS_TOTAL_MAX).
 * batch_id is copied. NULL on a bad total or out of memory. Free with
 * kb_bstate_destroy(). */
kb_bstate_t *kb_bstate_new(const char *batch_id, int64_t items_total);
void kb_bstate_destroy(kb_bstate_t *bs); /* NULL is a no-op */

/* 1 when every slot is terminal. */
static inline int kb_bstate_complete(const kb_bstate_t *bs) {
        return bs->bs_done >= bs->bs_items_total;
}

/* The batch status: KB_BATCH_IN_PROGRESS until complete, then the rule. */
kb_batch_status_t kb_bstate_status(const kb_bstate_t *bs);

/* What the aggregator reads from an ItemResult. Strings and metadata are
 * borrowed from the decoded JSON (see kb_bresult_decode). */
typedef struct kb_bresult_s {
        const char *br_batch_id;       /* NULL: missing or invalid */
        int64_t br_item_index;         /* -1: missing */
        int64_t br_items_total;        /* 0: missing */
        kb_item_status_t br_status;    /* KB_STATUS_NONE: missing/unknown */
        const char *br_error_code;     /* or NULL */
        int br_has_usage;
        int64_t br_input_tokens, br_output_tokens, br_total_tokens;
        int64_t br_finished_at;        /* epoch ms, 0: none */
        int64_t br_deadline;           /* epoch ms, 0: none */
        const char *br_callback_url;   /* or NULL */
        json_t *br_metadata;           /* borrowed object, or NULL */
} kb_bresult_t;

/* Decodes a JSON ItemResult value. On success returns the parsed JSON
 * (caller decrefs it after it is done with *br, which borrows from it);
 * NULL + errstr when the value is not a JSON object. Fields that are
 * missing or ill-typed are left at their "missing" values above. */
json_t *kb_bresult_decode(const void *buf, size_t len, kb_bresult_t *br,
                          char *errstr, size_t errstr_size);

/* The same from an ItemResult's JSON form (o borrowed; *br borrows from
 * it), e.g. what kb_serde_decode made of an Avro value. -1 when o is not an
 * object. */
int kb_bresult_from_json(const json_t *o, kb_bresult_t *br);

typedef enum {
        KB_APPLY_COUNTED = 0, /* a new terminal slot */
        KB_APPLY_REPLAYED,    /* failed -> succeeded: counts changed */
        KB_APPLY_DUPLICATE,   /* slot already terminal: ignored */
        KB_APPLY_INVALID,     /* counted as an invalid_item failure */
        KB_APPLY_IGNORED,     /* inconsistent and not countable (beyond the
                               * remembered out-of-range indexes) */
} kb_apply_res_t;

/* "counted", "replayed", "duplicate", "invalid", "ignored". */
const char *kb_apply_res_str(kb_apply_res_t res);

/* Counts one result of this batch (br->br_batch_id is not checked).
 * A result that agrees on items_total with 0 <= item_index < total and has a
 * known status sets its slot when the slot is not terminal; failed ->
 * succeeded is a replay; anything else on a terminal slot is a duplicate.
 * A result that disagrees on items_total or has an unknown status counts as
 * an invalid_item failure of its slot (when in range); one whose index is out
 * of range counts as an extra invalid_item failure, once per index (up to
 * KB_BATCH_EXTRA_MAX indexes). Usage, timestamps, deadline, callback_url and
 * metadata are taken from counted results. When this result completes the
 * batch, bs_completed_at is set (latest finished_at seen, else now_ms). */
kb_apply_res_t kb_bstate_apply(kb_bstate_t *bs, const kb_bresult_t *br,
                               int64_t now_ms);

/* Ends every non-terminal slot as expired (SPEC: missing items of a batch
 * past its deadline + grace). Returns the number of slots ended; completes
 * the batch (bs_completed_at = now_ms) when it ended any. */
int64_t kb_bstate_expire_missing(kb_bstate_t *bs, int64_t now_ms);

/* The state as a new JSON object (caller decrefs; NULL on out of memory),
 * what `kbatch status --json` prints: batch_id, status, items_total,
 * items_done, items_succeeded/failed/cancelled/expired/invalid, usage,
 * first_result_at, last_result_at, completed_at, updated_at, deadline
 * (null when none), revision, callback_url, metadata. */
json_t *kb_bstate_json(const kb_bstate_t *bs);

/* The BatchState record (the value in the batch-state topic): a JSON object
 * with every field of kb_bstate_t: kb_bstate_json plus v, extra_indexes and
 * the map as base64 in "statuses" (the field names of
 * schemas/BatchState.avsc, plus v, items_done, items_invalid,
 * last_result_at, deadline and extra_indexes). Always JSON: the topic is
 * internal. Caller frees with free(); NULL on out of memory. A 1,000,000-item
 * batch is about 333 KB. */
char *kb_bstate_encode(const kb_bstate_t *bs, size_t *lenp);

/* Decodes a BatchState record; the slot counts are re-derived from the map
 * (a record whose counts disagree with its map is accepted, its done count
 * taken from the map). NULL + errstr on anything malformed. */
kb_bstate_t *kb_bstate_decode(const void *buf, size_t len, char *errstr,
                              size_t errstr_size);

/* The BatchEvent (SPEC §2) for the state's current revision: event_id
 * "<batch_id>:<revision>", type batch.completed (revision 1) or
 * batch.updated, status, counts, usage, first_result_at, completed_at,
 * updated_at (revisions > 1), callback_url, metadata. Caller frees with
 * free(); NULL on out of memory. */
char *kb_bstate_event_encode(const kb_bstate_t *bs, size_t *lenp);

/* The same event as a new JSON object (caller decrefs), for encoders of
 * other formats (kb_serde_batch_event_encode). NULL on out of memory. */
json_t *kb_bstate_event_json(const kb_bstate_t *bs);

/* ---- the reader -------------------------------------------------------- */

/* The partition count of topic and batch_id's partition in it:
 * murmur2(batch_id), as kb_kafka_producer_new's murmur2_random places keyed
 * messages (results, batch-state and batches keep a batch in the partition
 * of that number). A topic the metadata does not know yet is asked for
 * again for up to wait_ms (one created a moment ago). rk and conf are
 * borrowed. 0, or -1 with errstr. */
struct rd_kafka_s;
int kb_bstate_partition(struct rd_kafka_s *rk, const struct kb_conf_s *conf,
                        const char *topic, const char *batch_id, int wait_ms,
                        int32_t *cntp, int32_t *partp, char *errstr,
                        size_t errstr_size);

/* The state of batch `batch_id` as the aggregator last committed it (what
 * `kbatch status` prints): reads the batch's partition of the batch-state
 * topic to its end (read_committed), then the others when it is not there.
 * Returns 1 found (*bsp: caller frees with kb_bstate_destroy()), 0 unknown
 * (never aggregated, or retired), -1 on a Kafka error or an unreadable
 * record (errstr). Blocks up to about 30 s without broker answers. conf is
 * borrowed for the call. */
int kb_bstate_read(const struct kb_conf_s *conf, const char *batch_id,
                   kb_bstate_t **bsp, char *errstr, size_t errstr_size);

#endif
