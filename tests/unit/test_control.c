/* control: the set of cancelled batches stays bounded (issue 15: it only
 * ever grew, one entry per cancel command, for the process's life). */
#include <criterion/criterion.h>
#include <stdio.h>

#include "control.h"

Test(control, cancelled_set_forgets_what_is_older_than_the_lookback) {
        kb_cancelset_t *cs = kb_cancelset_new(1000, 100);
        char id[32];
        cr_assert(cs);
        cr_expect_eq(kb_cancelset_add(cs, "b1", "why", 10000), 1);
        cr_expect_eq(kb_cancelset_add(cs, "b1", "again", 10001), 0);
        cr_expect_str_eq(kb_cancelset_get(cs, "b1"), "why");
        cr_expect_null(kb_cancelset_get(cs, "b12"));
        for (int i = 0; i < 50; i++) {
                snprintf(id, sizeof(id), "x%d", i);
                kb_cancelset_add(cs, id, "", 10500 + i);
        }
        cr_expect_eq(kb_cancelset_size(cs), 51);
        /* nothing is old yet */
        cr_expect_eq(kb_cancelset_sweep(cs, 10900), 0);
        /* b1 is past the look-back, x0..x9 too */
        cr_expect_eq(kb_cancelset_sweep(cs, 11510), 11);
        cr_expect_null(kb_cancelset_get(cs, "b1"));
        cr_expect_null(kb_cancelset_get(cs, "x9"));
        cr_expect_str_eq(kb_cancelset_get(cs, "x10"), "");
        cr_expect_eq(kb_cancelset_size(cs), 40);
        kb_cancelset_destroy(cs);
        kb_cancelset_destroy(NULL);
}

Test(control, cancelled_set_is_bounded_in_count) {
        kb_cancelset_t *cs = kb_cancelset_new(1000000, 100);
        char id[32];
        for (int i = 0; i < 1000; i++) {
                snprintf(id, sizeof(id), "b%d", i);
                kb_cancelset_add(cs, id, "r", 5000);
        }
        cr_expect_eq(kb_cancelset_size(cs), 100);
        /* the newest are kept */
        cr_expect_str_eq(kb_cancelset_get(cs, "b999"), "r");
        cr_expect_null(kb_cancelset_get(cs, "b899"));
        kb_cancelset_destroy(cs);
}
