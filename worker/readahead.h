/* readahead: the offsets of one partition that were read but deferred.
 *
 * A worker whose route queues are full does not stop reading its items
 * partitions: it reads on, takes the items of batches it holds few of (a
 * small batch published behind a large one), and defers the others. A
 * deferred item costs its offset, not its message: the set keeps ranges of
 * consecutive offsets of one batch, and the items pipeline reads them again
 * (seeking back) when it has room, batch by batch, the batch with the
 * fewest items waiting first. Deferred offsets stay tracked and not done in
 * the partition's offsets tracker, so the committed offset never passes
 * them; a revoked partition simply forgets its set (the next owner reads
 * them from the committed offset).
 *
 * Owned by the loop thread; one per assigned partition of the items topic. */
#ifndef KB_READAHEAD_H
#define KB_READAHEAD_H

#include <stddef.h>
#include <stdint.h>

typedef struct kb_ra_s kb_ra_t;

/* Bounds: ranges per partition, distinct batches per partition. */
#define KB_RA_RANGES_MAX  65536
#define KB_RA_BATCHES_MAX 4096

/* Returns NULL on allocation failure; free with kb_ra_destroy(). */
kb_ra_t *kb_ra_new(void);
void kb_ra_destroy(kb_ra_t *ra); /* NULL is a no-op */

/* Forgets every deferred offset (revocation). */
void kb_ra_clear(kb_ra_t *ra);

/* Defers offset (above every offset deferred before) of batch batch_id
 * (copied; "" when it could not be decoded). Returns 0, or -1 when the set
 * is at a bound or out of memory (nothing deferred). */
int kb_ra_defer(kb_ra_t *ra, int64_t offset, const char *batch_id);

/* 1 when offset is deferred, else 0. *batch_id (when not NULL) gets the
 * batch it was deferred under (borrowed: valid until the set changes). */
int kb_ra_has(const kb_ra_t *ra, int64_t offset, const char **batch_id);

/* Takes a deferred offset out of the set (a no-op for another offset). */
void kb_ra_take(kb_ra_t *ra, int64_t offset);

/* Deferred offsets; ranges held. */
size_t kb_ra_cnt(const kb_ra_t *ra);
size_t kb_ra_ranges(const kb_ra_t *ra);

/* 1 when the next kb_ra_defer() may fail for a bound. */
int kb_ra_at_bound(const kb_ra_t *ra);

/* The first deferred offset of the batch to read next: the batch with the
 * lowest score(batch_id, opaque) (items of it waiting, say), ties to the
 * lowest offset. -1 when nothing is deferred. */
int64_t kb_ra_pick(const kb_ra_t *ra,
                   long (*score)(const char *batch_id, void *opaque),
                   void *opaque);

/* The highest deferred offset, or -1. */
int64_t kb_ra_last(const kb_ra_t *ra);

/* Where the partition's consumer reads: re-reading deferred offsets from
 * `from` (after a seek back, at now_ms), or at the front. While re-reading
 * the caller reports each offset read (kb_ra_seen). A re-read is over when
 * it has passed the highest deferred offset without filling up
 * (kb_ra_pass_over); it began above `from` when the first offset it read
 * was higher (kb_ra_skipped, said once per re-read: the records there may
 * be gone, deleted by retention before they were read again); it is
 * stalled when nothing was read for ms. */
void kb_ra_refill_start(kb_ra_t *ra, int64_t from, int64_t now_ms);
void kb_ra_refill_stop(kb_ra_t *ra);
int kb_ra_refilling(const kb_ra_t *ra);
void kb_ra_seen(kb_ra_t *ra, int64_t offset, int64_t now_ms);
int kb_ra_pass_over(const kb_ra_t *ra);
int kb_ra_skipped(kb_ra_t *ra);
int kb_ra_stalled(const kb_ra_t *ra, int64_t now_ms, int64_t ms);

/* Takes every deferred offset below `low` out of the set (records that
 * are gone), calling gone(offset, opaque) for each. Returns how many. */
size_t kb_ra_drop_below(kb_ra_t *ra, int64_t low,
                        void (*gone)(int64_t offset, void *opaque),
                        void *opaque);

#endif
