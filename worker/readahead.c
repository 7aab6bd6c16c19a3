/* readahead: see readahead.h.
 *
 * Ranges [start, end) of one batch each, sorted, in an array whose removed
 * prefix is skipped (ra_head): offsets are deferred in increasing order and
 * mostly taken back from the front. Batches are interned (a range holds an
 * index); a batch with nothing deferred any more frees its slot. */
#include "readahead.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
        int64_t r_start, r_end;
        uint32_t r_batch;
} ra_range_t;

typedef struct {
        char *b_id;   /* NULL: a free slot */
        size_t b_cnt; /* offsets deferred */
} ra_batch_t;

struct kb_ra_s {
        ra_range_t *ra_r;
        size_t ra_head, ra_len, ra_cap; /* live: [ra_head, ra_len) */
        ra_batch_t *ra_b;
        size_t ra_nb, ra_bcap, ra_live; /* slots used, allocated, in use */
        size_t ra_last;                 /* the batch deferred last */
        size_t ra_cnt;
        int ra_refilling;
        int64_t ra_from;     /* where the re-read was sent */
        int64_t ra_first;    /* the first offset it read, or -1 */
        int64_t ra_seen;     /* the last offset it read, or -1 */
        int64_t ra_progress; /* when it started or last read (ms) */
        int ra_told;         /* kb_ra_skipped said so for this re-read */
};

kb_ra_t *kb_ra_new(void) {
        return calloc(1, sizeof(kb_ra_t));
}

void kb_ra_clear(kb_ra_t *ra) {
        size_t i;
        for (i = 0; i < ra->ra_nb; i++)
                free(ra->ra_b[i].b_id);
        ra->ra_nb = ra->ra_live = ra->ra_last = 0;
        ra->ra_head = ra->ra_len = 0;
        ra->ra_cnt = 0;
        ra->ra_refilling = 0;
}

void kb_ra_destroy(kb_ra_t *ra) {
        if (!ra)
                return;
        kb_ra_clear(ra);
        free(ra->ra_r);
        free(ra->ra_b);
        free(ra);
}

size_t kb_ra_cnt(const kb_ra_t *ra) { return ra->ra_cnt; }
size_t kb_ra_ranges(const kb_ra_t *ra) { return ra->ra_len - ra->ra_head; }
int kb_ra_refilling(const kb_ra_t *ra) { return ra->ra_refilling; }

void kb_ra_refill_start(kb_ra_t *ra, int64_t from, int64_t now_ms) {
        ra->ra_refilling = 1;
        ra->ra_from      = from;
        ra->ra_first     = -1;
        ra->ra_seen      = -1;
        ra->ra_progress  = now_ms;
        ra->ra_told      = 0;
}

void kb_ra_refill_stop(kb_ra_t *ra) { ra->ra_refilling = 0; }

void kb_ra_seen(kb_ra_t *ra, int64_t offset, int64_t now_ms) {
        if (!ra->ra_refilling)
                return;
        if (ra->ra_first < 0)
                ra->ra_first = offset;
        if (offset > ra->ra_seen)
                ra->ra_seen = offset;
        ra->ra_progress = now_ms;
}

int kb_ra_skipped(kb_ra_t *ra) {
        if (!ra->ra_refilling || ra->ra_told || ra->ra_first <= ra->ra_from)
                return 0;
        ra->ra_told = 1;
        return 1;
}

int kb_ra_stalled(const kb_ra_t *ra, int64_t now_ms, int64_t ms) {
        return ra->ra_refilling && now_ms - ra->ra_progress >= ms;
}

size_t kb_ra_drop_below(kb_ra_t *ra, int64_t low,
                        void (*gone)(int64_t offset, void *opaque),
                        void *opaque) {
        size_t n = 0;
        while (ra->ra_len > ra->ra_head && ra->ra_r[ra->ra_head].r_start < low) {
                int64_t o = ra->ra_r[ra->ra_head].r_start;
                kb_ra_take(ra, o);
                if (gone)
                        gone(o, opaque);
                n++;
        }
        return n;
}

int64_t kb_ra_last(const kb_ra_t *ra) {
        return ra->ra_len > ra->ra_head ? ra->ra_r[ra->ra_len - 1].r_end - 1
                                        : -1;
}

int kb_ra_pass_over(const kb_ra_t *ra) {
        return ra->ra_refilling && ra->ra_seen >= kb_ra_last(ra);
}

int kb_ra_at_bound(const kb_ra_t *ra) {
        return kb_ra_ranges(ra) >= KB_RA_RANGES_MAX ||
               ra->ra_live >= KB_RA_BATCHES_MAX;
}

/* The slot of batch_id, interned when new. (size_t)-1 when out of slots or
 * memory. */
static size_t batch_slot(kb_ra_t *ra, const char *batch_id) {
        size_t i, free_slot = (size_t)-1;
        if (ra->ra_last < ra->ra_nb && ra->ra_b[ra->ra_last].b_id &&
            !strcmp(ra->ra_b[ra->ra_last].b_id, batch_id))
                return ra->ra_last;
        for (i = 0; i < ra->ra_nb; i++) {
                if (!ra->ra_b[i].b_id) {
                        if (free_slot == (size_t)-1)
                                free_slot = i;
                } else if (!strcmp(ra->ra_b[i].b_id, batch_id))
                        return i;
        }
        if (ra->ra_live >= KB_RA_BATCHES_MAX)
                return (size_t)-1;
        if (free_slot == (size_t)-1) {
                if (ra->ra_nb == ra->ra_bcap) {
                        size_t cap = ra->ra_bcap ? ra->ra_bcap * 2 : 16;
                        ra_batch_t *b = realloc(ra->ra_b, cap * sizeof(*b));
                        if (!b)
                                return (size_t)-1;
                        ra->ra_b    = b;
                        ra->ra_bcap = cap;
                }
                free_slot = ra->ra_nb++;
        }
        if (!(ra->ra_b[free_slot].b_id = strdup(batch_id)))
                return (size_t)-1;
        ra->ra_b[free_slot].b_cnt = 0;
        ra->ra_live++;
        return free_slot;
}

static void batch_sub(kb_ra_t *ra, uint32_t b) {
        if (--ra->ra_b[b].b_cnt == 0) {
                free(ra->ra_b[b].b_id);
                ra->ra_b[b].b_id = NULL;
                ra->ra_live--;
        }
}

/* A slot interned for a defer that then failed. */
static void batch_unused(kb_ra_t *ra, size_t b) {
        if (ra->ra_b[b].b_cnt == 0) {
                free(ra->ra_b[b].b_id);
                ra->ra_b[b].b_id = NULL;
                ra->ra_live--;
        }
}

int kb_ra_defer(kb_ra_t *ra, int64_t offset, const char *batch_id) {
        ra_range_t *last = ra->ra_len > ra->ra_head ? &ra->ra_r[ra->ra_len - 1]
                                                    : NULL;
        size_t b;
        if (last && offset < last->r_end)
                return -1; /* not increasing */
        if ((b = batch_slot(ra, batch_id ? batch_id : "")) == (size_t)-1)
                return -1;
        if (last && last->r_end == offset && last->r_batch == b) {
                last->r_end++;
        } else {
                if (kb_ra_ranges(ra) >= KB_RA_RANGES_MAX) {
                        batch_unused(ra, b);
                        return -1;
                }
                if (ra->ra_head > 0 && ra->ra_len == ra->ra_cap) {
                        /* Reuse the taken prefix first. */
                        memmove(ra->ra_r, ra->ra_r + ra->ra_head,
                                (ra->ra_len - ra->ra_head) * sizeof(*ra->ra_r));
                        ra->ra_len -= ra->ra_head;
                        ra->ra_head = 0;
                }
                if (ra->ra_len == ra->ra_cap) {
                        size_t cap = ra->ra_cap ? ra->ra_cap * 2 : 64;
                        ra_range_t *r = realloc(ra->ra_r, cap * sizeof(*r));
                        if (!r) {
                                batch_unused(ra, b);
                                return -1;
                        }
                        ra->ra_r   = r;
                        ra->ra_cap = cap;
                }
                ra->ra_r[ra->ra_len++] =
                    (ra_range_t){offset, offset + 1, (uint32_t)b};
        }
        ra->ra_b[b].b_cnt++;
        ra->ra_last = b;
        ra->ra_cnt++;
        return 0;
}

/* The index of the range holding offset, or (size_t)-1. */
static size_t range_find(const kb_ra_t *ra, int64_t offset) {
        size_t lo = ra->ra_head, hi = ra->ra_len;
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                if (ra->ra_r[mid].r_end <= offset)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        if (lo < ra->ra_len && ra->ra_r[lo].r_start <= offset &&
            offset < ra->ra_r[lo].r_end)
                return lo;
        return (size_t)-1;
}

int kb_ra_has(const kb_ra_t *ra, int64_t offset, const char **batch_id) {
        size_t i = range_find(ra, offset);
        if (i == (size_t)-1)
                return 0;
        if (batch_id)
                *batch_id = ra->ra_b[ra->ra_r[i].r_batch].b_id;
        return 1;
}

void kb_ra_take(kb_ra_t *ra, int64_t offset) {
        size_t i = range_find(ra, offset);
        ra_range_t *r;
        if (i == (size_t)-1)
                return;
        r = &ra->ra_r[i];
        if (offset != r->r_start && offset != r->r_end - 1 &&
            ra->ra_len == ra->ra_cap) {
                size_t cap = ra->ra_cap * 2;
                ra_range_t *nr = realloc(ra->ra_r, cap * sizeof(*nr));
                if (!nr)
                        return;
                ra->ra_r   = nr;
                ra->ra_cap = cap;
                r = &ra->ra_r[i];
        }
        batch_sub(ra, r->r_batch);
        ra->ra_cnt--;
        if (offset == r->r_start)
                r->r_start++;
        else if (offset == r->r_end - 1)
                r->r_end--;
        else {
                /* A split: the range's tail becomes its own range. The
                 * array grows first; without memory the offset stays
                 * deferred (read again later, never lost). */
                memmove(&ra->ra_r[i + 2], &ra->ra_r[i + 1],
                        (ra->ra_len - i - 1) * sizeof(*ra->ra_r));
                ra->ra_len++;
                ra->ra_r[i + 1] =
                    (ra_range_t){offset + 1, r->r_end, r->r_batch};
                r->r_end = offset;
                return;
        }
        if (r->r_start < r->r_end)
                return;
        if (i == ra->ra_head) {
                ra->ra_head++;
        } else {
                memmove(&ra->ra_r[i], &ra->ra_r[i + 1],
                        (ra->ra_len - i - 1) * sizeof(*ra->ra_r));
                ra->ra_len--;
        }
        if (ra->ra_head == ra->ra_len)
                ra->ra_head = ra->ra_len = 0;
}

int64_t kb_ra_pick(const kb_ra_t *ra,
                   long (*score)(const char *batch_id, void *opaque),
                   void *opaque) {
        size_t i, best = (size_t)-1;
        long best_score = 0;
        int64_t best_off = -1;
        if (ra->ra_cnt == 0)
                return -1;
        /* Ranges are sorted: the first range of each batch is its lowest
         * offset, so one pass scores each batch at its first range. */
        char *seen = calloc(ra->ra_nb ? ra->ra_nb : 1, 1);
        for (i = ra->ra_head; i < ra->ra_len; i++) {
                uint32_t b = ra->ra_r[i].r_batch;
                long s;
                if (seen) {
                        if (seen[b])
                                continue;
                        seen[b] = 1;
                }
                s = score ? score(ra->ra_b[b].b_id, opaque) : 0;
                if (best == (size_t)-1 || s < best_score) {
                        best       = b;
                        best_score = s;
                        best_off   = ra->ra_r[i].r_start;
                }
                if (!seen)
                        break; /* no memory to score: the lowest offset */
        }
        free(seen);
        return best_off;
}
