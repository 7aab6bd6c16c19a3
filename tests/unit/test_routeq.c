/* routeq: two lanes, batches served in turn (SPEC §12 fairness). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stddef.h>

#include "routeq.h"

typedef struct {
        kb_rq_node_t node;
        int id;
} item_t;

static int id_of(kb_rq_node_t *n) {
        return n ? ((item_t *)((char *)n - offsetof(item_t, node)))->id : -1;
}

Test(routeq, batches_take_turns) {
        kb_routeq_t q;
        item_t big[6], small[2];
        int i, order[8];
        kb_routeq_init(&q);
        for (i = 0; i < 6; i++) {
                big[i].id = i;
                cr_assert_eq(kb_routeq_push(&q, &big[i].node, 1, "big", 0), 0);
        }
        for (i = 0; i < 2; i++) {
                small[i].id = 100 + i;
                kb_routeq_push(&q, &small[i].node, 1, "small", 0);
        }
        cr_expect_eq(q.rq_cnt, 8);
        for (i = 0; i < 8; i++)
                order[i] = id_of(kb_routeq_pop(&q));
        /* The small batch queued behind six items finishes after two
         * turns each, not after the large one. */
        int want[] = {0, 100, 1, 101, 2, 3, 4, 5};
        for (i = 0; i < 8; i++)
                cr_expect_eq(order[i], want[i], "pos %d: %d, want %d", i,
                             order[i], want[i]);
        cr_expect_null(kb_routeq_pop(&q));
        cr_expect_eq(q.rq_cnt, 0);
}

Test(routeq, priority_lane_first_and_head_insert) {
        kb_routeq_t q;
        item_t a[3], p[2], back;
        int i;
        kb_routeq_init(&q);
        for (i = 0; i < 3; i++) {
                a[i].id = i;
                kb_routeq_push(&q, &a[i].node, 1, "a", 0);
        }
        p[0].id = 50;
        p[1].id = 51;
        kb_routeq_push(&q, &p[0].node, 0, "pa", 0);
        kb_routeq_push(&q, &p[1].node, 0, "pb", 0);
        back.id = 9; /* an item back from its retry backoff */
        kb_routeq_push(&q, &back.node, 1, "b", 1);
        cr_expect_eq(id_of(kb_routeq_peek(&q)), 50);
        cr_expect_eq(id_of(kb_routeq_pop(&q)), 50);
        cr_expect_eq(id_of(kb_routeq_pop(&q)), 51);
        cr_expect_eq(id_of(kb_routeq_pop(&q)), 9);
        cr_expect_eq(id_of(kb_routeq_pop(&q)), 0);
        cr_expect_eq(id_of(kb_routeq_pop(&q)), 1);
        kb_routeq_clear(&q);
        cr_expect_null(a[2].node.n_bucket);
        cr_expect_null(kb_routeq_peek(&q));
}

Test(routeq, remove_and_walk) {
        kb_routeq_t q;
        item_t it[10];
        kb_rq_node_t *n, *tmp;
        int i, seen = 0, sum = 0;
        char b[8];
        kb_routeq_init(&q);
        for (i = 0; i < 10; i++) {
                it[i].id = i;
                snprintf(b, sizeof(b), "b%d", i % 3);
                kb_routeq_push(&q, &it[i].node, i < 2 ? 0 : 1, b, 0);
        }
        /* Remove the odd ones while walking. */
        KB_ROUTEQ_FOREACH_SAFE(n, &q, tmp) {
                seen++;
                if (id_of(n) % 2)
                        kb_routeq_remove(&q, n);
        }
        cr_expect_eq(seen, 10);
        cr_expect_eq(q.rq_cnt, 5);
        for (n = kb_routeq_next(&q, NULL); n; n = kb_routeq_next(&q, n))
                sum += id_of(n);
        cr_expect_eq(sum, 0 + 2 + 4 + 6 + 8);
        /* Removing a bucket's last item frees it: b1 now holds only 4. */
        kb_routeq_remove(&q, &it[4].node);
        kb_routeq_remove(&q, &it[4].node); /* not queued: no-op */
        cr_expect_eq(q.rq_cnt, 4);
        while (kb_routeq_pop(&q))
                ;
        cr_expect_eq(q.rq_cnt, 0);
}
