/* offsets: the per-partition tracker of out-of-order completion.
 *
 * Items of one partition finish in any order. The committable offset is the
 * lowest offset not yet done; offsets done above it are carried in the
 * commit's metadata string as a compact bitmap, so that after a restart or
 * rebalance the new owner skips them (as Confluent's Parallel Consumer does).
 *
 * Window: [low, next) where low is the committable offset and next is one past
 * the highest offset tracked. Offsets never seen inside the window (gaps from
 * compaction or transaction markers) count as done. The window is bounded so
 * that the metadata stays under Kafka's 4 KiB limit; callers stop taking
 * messages from a partition while kb_offsets_window_full() is true.
 *
 * Metadata format: "kb1:" followed by base64 (RFC 4648, no padding) of a
 * bitmap in which bit i (LSB-first within each byte) stands for offset
 * low + i; trailing zero bytes are trimmed; "" when nothing above low is done.
 * Not thread-safe: owned by the loop thread.
 *
 * Tracking rules (kb_offsets_track):
 *   offset < low (or invalid: negative, INT64_MAX)  KB_OFFSETS_STALE
 *   low <= offset < next, done (or gap, or skipped) KB_OFFSETS_STALE
 *   low <= offset < next, tracked, not done         KB_OFFSETS_DUP
 *   offset - low >= window bound, some in flight    KB_OFFSETS_FULL
 *   offset - low >= window bound, none in flight    the window moves to
 *                                                   offset (the gap is done)
 *   next <= offset, in the committed metadata       KB_OFFSETS_SKIP
 *   next <= offset otherwise                        KB_OFFSETS_OK
 * Only OK asks the caller to process the message; for every other answer the
 * caller drops it (FULL: and seeks back to it). After a FULL, do not track a
 * higher offset before that one: offsets jumped over count as gaps (done). */
#ifndef KB_OFFSETS_H
#define KB_OFFSETS_H

#include <stddef.h>
#include <stdint.h>

typedef struct kb_offsets_s kb_offsets_t;

#define KB_OFFSETS_META_MAX 4000   /* bytes of metadata we allow ourselves */
#define KB_OFFSETS_WINDOW_DEFAULT 16384

typedef enum {
        KB_OFFSETS_OK = 0,        /* tracked, in flight */
        KB_OFFSETS_SKIP,          /* the committed metadata says it is done:
                                   * do not process it (it is marked done) */
        KB_OFFSETS_STALE,         /* below the window (already done): skip */
        KB_OFFSETS_FULL,          /* beyond the window bound: not tracked;
                                   * seek back to it and pause */
        KB_OFFSETS_DUP,           /* already tracked and still in flight
                                   * (redelivered after a seek): skip it */
} kb_offsets_res_t;

/* "ok", "skip", "stale", "full", "dup" (static strings). */
const char *kb_offsets_res_str(kb_offsets_res_t res);

/* The largest window whose worst-case metadata fits KB_OFFSETS_META_MAX:
 * 4 + ceil(ceil(w / 8) * 4 / 3) <= 4000. */
#define KB_OFFSETS_WINDOW_MAX 23976

/* The largest window of a wide tracker (kb_offsets_new_wide). */
#define KB_OFFSETS_WINDOW_LIMIT (1 << 24)

/* New tracker. max_window: the bound on next - low (0 = default); it is
 * clamped to KB_OFFSETS_WINDOW_MAX so that the encoded metadata always fits
 * KB_OFFSETS_META_MAX. The tracker starts without a position: the first
 * tracked offset (or a reset) sets it. Returns NULL on allocation failure;
 * caller frees with kb_offsets_destroy(). */
kb_offsets_t *kb_offsets_new(size_t max_window);
void kb_offsets_destroy(kb_offsets_t *ot); /* NULL is a no-op */

/* A wide tracker: max_window up to KB_OFFSETS_WINDOW_LIMIT (clamped; 0 =
 * default), for a reader that runs far ahead of its lowest unfinished
 * offset (the items' read-ahead). Its ring starts small and doubles as the
 * window widens. Beyond KB_OFFSETS_WINDOW_MAX the done offsets cannot all
 * be carried in 4 KB: the metadata is then "kb2:" (run lengths, see
 * kb_offsets_meta_decode), which holds long runs compactly and, when even
 * that does not fit, is cut after the last run that does (the offsets past
 * the cut are redone after a restart, never skipped wrongly). */
kb_offsets_t *kb_offsets_new_wide(size_t max_window);

/* One past the highest offset tracked (the first never seen), or -1 when
 * nothing was tracked or reset. */
int64_t kb_offsets_next(const kb_offsets_t *ot);

/* Starts from a committed position: offset `committed` (the next offset the
 * consumer will read) and its commit metadata (meta_len bytes, need not be
 * NUL-terminated; borrowed for the call only; NULL or "" for none).
 * Malformed or foreign metadata (or no memory to hold it) is ignored and
 * reported by the return value -1; otherwise 0. committed < 0 (no committed
 * offset) forgets the position: the next tracked offset starts the window.
 * Offsets the metadata marks done are answered KB_OFFSETS_SKIP by track(),
 * and stay in the committable metadata until tracked. Forgets whatever was
 * tracked before (pending drops to 0) and records (committed, meta) as the
 * last commit for the change check of kb_offsets_committable(). */
int kb_offsets_reset(kb_offsets_t *ot, int64_t committed, const char *meta,
                     size_t meta_len);

/* Registers a consumed offset (see "Tracking rules" above). Offsets are
 * tracked in increasing order; offsets skipped over since the last tracked
 * one are treated as gaps. O(1) amortized. */
kb_offsets_res_t kb_offsets_track(kb_offsets_t *ot, int64_t offset);

/* Marks a tracked offset done (idempotent inside the window); advances the
 * committable offset past done ones, O(1) amortized. Returns 0, or -1 if the
 * offset is not in the window [low, next). */
int kb_offsets_mark_done(kb_offsets_t *ot, int64_t offset);

/* True when next - low has reached the bound, or an offset answered FULL
 * is still beyond it while something below is in flight. */
int kb_offsets_window_full(const kb_offsets_t *ot);

/* Number of tracked offsets (answered KB_OFFSETS_OK) not yet done. */
size_t kb_offsets_pending(const kb_offsets_t *ot);

/* The committable position: *offset gets the lowest offset not done (or
 * next when all are done; -1 when nothing was ever tracked or reset), and
 * meta (of meta_size bytes, >= KB_OFFSETS_META_MAX + 1) the NUL-terminated
 * metadata for it. Returns 1 when it differs from the last position passed
 * to kb_offsets_committed() (or reset), else 0; -1 (with *offset = -1) when
 * meta_size is too small. */
int kb_offsets_committable(const kb_offsets_t *ot, int64_t *offset, char *meta,
                           size_t meta_size);

/* Records that (offset, meta) was committed (for the change check above);
 * meta is borrowed for the call only, NULL means "". */
void kb_offsets_committed(kb_offsets_t *ot, int64_t offset, const char *meta);

/* Encodes/decodes the metadata on its own (exposed for tests and fuzzing).
 * encode: bits beyond nbits in the last byte are ignored; writes the
 * NUL-terminated metadata ("" when no bit is set) and returns its length, or
 * -1 when out_size is too small.
 * decode: meta is len bytes (need not be NUL-terminated, never read past
 * len; any bytes are safe). "" gives no bits; otherwise the metadata must be
 * "kb1:" + canonical unpadded base64 and at most KB_OFFSETS_META_MAX bytes,
 * or "kb2:" + the same base64 of LEB128 run lengths alternating not done,
 * done, not done, ..., done from the committed offset (only the first run
 * may be 0; at most KB_OFFSETS_WINDOW_LIMIT offsets in all).
 * Fills *bits (caller frees with free(); NULL when *nbits is 0) and *nbits (a
 * multiple of 8); returns 0, or -1 (with *bits NULL) when malformed or out of
 * memory. */
int kb_offsets_meta_encode(const uint8_t *bits, size_t nbits, char *out,
                           size_t out_size);
int kb_offsets_meta_decode(const char *meta, size_t len, uint8_t **bits,
                           size_t *nbits);

#endif
