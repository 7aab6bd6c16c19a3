/* Unit tests for worker/readahead.c: the deferred offsets of a partition. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "readahead.h"

static kb_ra_t *new_ra(void) {
        kb_ra_t *ra = kb_ra_new();
        cr_assert_not_null(ra);
        return ra;
}

Test(readahead, consecutive_offsets_of_a_batch_make_one_range) {
        kb_ra_t *ra = new_ra();
        const char *b = NULL;
        for (int64_t o = 100; o < 1100; o++)
                cr_assert_eq(kb_ra_defer(ra, o, "big"), 0);
        cr_assert_eq(kb_ra_cnt(ra), 1000);
        cr_assert_eq(kb_ra_ranges(ra), 1);
        cr_assert(kb_ra_has(ra, 100, &b));
        cr_assert_str_eq(b, "big");
        cr_assert(kb_ra_has(ra, 1099, NULL));
        cr_assert_not(kb_ra_has(ra, 99, NULL));
        cr_assert_not(kb_ra_has(ra, 1100, NULL));
        cr_assert_eq(kb_ra_last(ra), 1099);
        kb_ra_destroy(ra);
}

Test(readahead, offsets_must_increase) {
        kb_ra_t *ra = new_ra();
        cr_assert_eq(kb_ra_defer(ra, 10, "a"), 0);
        cr_assert_eq(kb_ra_defer(ra, 10, "a"), -1);
        cr_assert_eq(kb_ra_defer(ra, 5, "a"), -1);
        cr_assert_eq(kb_ra_cnt(ra), 1);
        kb_ra_destroy(ra);
}

Test(readahead, batches_and_gaps_split_ranges) {
        kb_ra_t *ra = new_ra();
        const char *b;
        cr_assert_eq(kb_ra_defer(ra, 1, "a"), 0);
        cr_assert_eq(kb_ra_defer(ra, 2, "a"), 0);
        cr_assert_eq(kb_ra_defer(ra, 3, "b"), 0);
        cr_assert_eq(kb_ra_defer(ra, 5, "b"), 0); /* 4 was taken at once */
        cr_assert_eq(kb_ra_ranges(ra), 3);
        cr_assert(kb_ra_has(ra, 3, &b));
        cr_assert_str_eq(b, "b");
        cr_assert_not(kb_ra_has(ra, 4, NULL));
        kb_ra_destroy(ra);
}

Test(readahead, take_from_the_front_middle_and_end) {
        kb_ra_t *ra = new_ra();
        for (int64_t o = 0; o < 10; o++)
                kb_ra_defer(ra, o, "a");
        kb_ra_take(ra, 0);  /* front */
        kb_ra_take(ra, 9);  /* end */
        kb_ra_take(ra, 5);  /* middle: a split */
        kb_ra_take(ra, 42); /* not deferred: no-op */
        cr_assert_eq(kb_ra_cnt(ra), 7);
        cr_assert_eq(kb_ra_ranges(ra), 2);
        for (int64_t o = 0; o < 10; o++)
                cr_assert_eq(kb_ra_has(ra, o, NULL), o != 0 && o != 5 && o != 9,
                             "offset %lld", (long long)o);
        cr_assert_eq(kb_ra_last(ra), 8);
        for (int64_t o = 0; o < 10; o++)
                kb_ra_take(ra, o);
        cr_assert_eq(kb_ra_cnt(ra), 0);
        cr_assert_eq(kb_ra_ranges(ra), 0);
        cr_assert_eq(kb_ra_last(ra), -1);
        /* Empty again: deferring starts over, lower offsets too. */
        cr_assert_eq(kb_ra_defer(ra, 3, "a"), 0);
        kb_ra_destroy(ra);
}

static long waiting_of(const char *batch_id, void *opaque) {
        (void)opaque;
        if (!strcmp(batch_id, "big"))
                return 500;
        if (!strcmp(batch_id, "mid"))
                return 3;
        return 40;
}

Test(readahead, pick_reads_the_batch_with_fewest_waiting_first) {
        kb_ra_t *ra = new_ra();
        for (int64_t o = 0; o < 1000; o++)
                kb_ra_defer(ra, o, "big");
        for (int64_t o = 1000; o < 1100; o++)
                kb_ra_defer(ra, o, o % 2 ? "mid" : "other");
        cr_assert_eq(kb_ra_pick(ra, waiting_of, NULL), 1001);
        /* Without a score: the lowest offset. */
        cr_assert_eq(kb_ra_pick(ra, NULL, NULL), 0);
        kb_ra_clear(ra);
        cr_assert_eq(kb_ra_pick(ra, waiting_of, NULL), -1);
        kb_ra_destroy(ra);
}

Test(readahead, a_batch_with_nothing_deferred_frees_its_slot) {
        kb_ra_t *ra = new_ra();
        char id[32];
        /* Many batches over time, few at once: never at the bound. */
        for (int64_t o = 0; o < 3 * KB_RA_BATCHES_MAX; o++) {
                snprintf(id, sizeof(id), "b%lld", (long long)o);
                cr_assert_eq(kb_ra_defer(ra, o, id), 0, "offset %lld", (long long)o);
                kb_ra_take(ra, o);
        }
        cr_assert_not(kb_ra_at_bound(ra));
        kb_ra_destroy(ra);
}

Test(readahead, bounds_refuse_and_keep_what_is_deferred) {
        kb_ra_t *ra = new_ra();
        char id[32];
        int64_t o;
        for (o = 0; o < KB_RA_BATCHES_MAX; o++) {
                snprintf(id, sizeof(id), "b%lld", (long long)o);
                cr_assert_eq(kb_ra_defer(ra, o, id), 0);
        }
        cr_assert(kb_ra_at_bound(ra));
        cr_assert_eq(kb_ra_defer(ra, o, "new"), -1);
        /* A batch it knows still extends. */
        cr_assert_eq(kb_ra_defer(ra, o, "b0"), 0);
        cr_assert_eq(kb_ra_cnt(ra), KB_RA_BATCHES_MAX + 1);
        kb_ra_clear(ra);
        /* Ranges: alternate two batches. */
        for (o = 0; o < KB_RA_RANGES_MAX; o++)
                cr_assert_eq(kb_ra_defer(ra, o, o % 2 ? "x" : "y"), 0);
        cr_assert(kb_ra_at_bound(ra));
        cr_assert_eq(kb_ra_defer(ra, o, o % 2 ? "x" : "y"), -1);
        cr_assert_eq(kb_ra_cnt(ra), KB_RA_RANGES_MAX);
        kb_ra_destroy(ra);
}

Test(readahead, a_re_read_is_over_once_past_the_last_deferred) {
        kb_ra_t *ra = new_ra();
        for (int64_t o = 10; o < 20; o++)
                kb_ra_defer(ra, o, "a");
        cr_assert_not(kb_ra_pass_over(ra)); /* at the front */
        kb_ra_seen(ra, 25, 0);              /* not re-reading: ignored */
        kb_ra_refill_start(ra, 10, 1000);
        cr_assert(kb_ra_refilling(ra));
        cr_assert_not(kb_ra_stalled(ra, 5000, 10000));
        cr_assert(kb_ra_stalled(ra, 11000, 10000));
        kb_ra_seen(ra, 10, 2000);
        kb_ra_seen(ra, 15, 3000);
        cr_assert_not(kb_ra_pass_over(ra));
        cr_assert_not(kb_ra_stalled(ra, 11000, 10000)); /* it read at 3 s */
        kb_ra_seen(ra, 12, 3000); /* never goes back */
        kb_ra_seen(ra, 19, 3000);
        cr_assert(kb_ra_pass_over(ra));
        cr_assert_not(kb_ra_skipped(ra));
        kb_ra_refill_start(ra, 10, 4000); /* a new re-read */
        cr_assert_not(kb_ra_pass_over(ra));
        kb_ra_refill_stop(ra);
        cr_assert_not(kb_ra_refilling(ra));
        cr_assert_not(kb_ra_stalled(ra, 100000, 10000));
        kb_ra_destroy(ra);
}

static void count_gone(int64_t offset, void *opaque) {
        int64_t *sum = opaque;
        *sum += offset;
}

Test(readahead, records_gone_are_found_and_dropped) {
        kb_ra_t *ra = new_ra();
        int64_t sum = 0;
        for (int64_t o = 10; o < 20; o++)
                kb_ra_defer(ra, o, o < 15 ? "a" : "b");
        /* Sent to 10, the first record read is 13: 10..12 were deleted. */
        kb_ra_refill_start(ra, 10, 0);
        kb_ra_seen(ra, 13, 1);
        cr_assert(kb_ra_skipped(ra));
        cr_assert_not(kb_ra_skipped(ra)); /* once per re-read */
        cr_assert_eq(kb_ra_drop_below(ra, 13, count_gone, &sum), 3);
        cr_assert_eq(sum, 10 + 11 + 12);
        cr_assert_eq(kb_ra_cnt(ra), 7);
        cr_assert_not(kb_ra_has(ra, 12, NULL));
        cr_assert(kb_ra_has(ra, 13, NULL));
        /* Across batches and ranges. */
        cr_assert_eq(kb_ra_drop_below(ra, 17, NULL, NULL), 4);
        cr_assert_eq(kb_ra_cnt(ra), 3);
        cr_assert_eq(kb_ra_drop_below(ra, 5, NULL, NULL), 0);
        cr_assert_eq(kb_ra_drop_below(ra, 100, NULL, NULL), 3);
        cr_assert_eq(kb_ra_cnt(ra), 0);
        kb_ra_destroy(ra);
}
