/* role: the produce-again queue, which work a revocation concerns, and the
 * per-partition work counters the drain waits on (partset.h). */
#include <criterion/criterion.h>
#include <librdkafka/rdkafka.h>
#include <stddef.h>
#include <stdint.h>

#include "log.h"
#include "partset.h"
#include "role.h"

typedef struct {
        kb_prodq_node_t o_pqn;
        int o_produced;
        int o_fail;      /* fails again (re-queued) this many times */
} out_t;

static kb_prodq_t q;

#define PQN_OUT(n) ((out_t *)(void *)((char *)(n) - offsetof(out_t, o_pqn)))

static void produce(kb_prodq_node_t *n) {
        out_t *o = PQN_OUT(n);
        o->o_produced++;
        if (o->o_fail-- > 0)
                kb_prodq_later(&q, n, 0); /* fails again at once */
}

/* Outputs that fail again synchronously are met once per walk (two of
 * them swapped places forever when the live queue was walked). */
Test(role, prodq_walk_meets_each_once) {
        out_t a = {.o_fail = 100}, b = {.o_fail = 100};
        kb_prodq_init(&q);
        kb_prodq_later(&q, &a.o_pqn, 0);
        kb_prodq_later(&q, &b.o_pqn, 0);
        kb_prodq_serve(&q, INT64_MAX, produce);
        cr_expect_eq(a.o_produced, 1);
        cr_expect_eq(b.o_produced, 1);
        cr_expect(a.o_pqn.pn_queued && b.o_pqn.pn_queued);
        kb_prodq_remove(&q, &a.o_pqn);
        kb_prodq_remove(&q, &a.o_pqn); /* not queued: a no-op */
        kb_prodq_remove(&q, &b.o_pqn);
        cr_expect(TAILQ_EMPTY(&q));
}

/* Only what is due is produced; the wait until the next is returned
 * (at most 1 s); queuing an output twice keeps one entry, the new time. */
Test(role, prodq_due_and_wait) {
        out_t a = {0}, b = {0};
        int w;
        kb_prodq_init(&q);
        kb_prodq_later(&q, &a.o_pqn, 100);
        kb_prodq_later(&q, &b.o_pqn, 5000);
        kb_prodq_later(&q, &b.o_pqn, 400);
        w = kb_prodq_serve(&q, 150, produce);
        cr_expect_eq(a.o_produced, 1);
        cr_expect_eq(b.o_produced, 0);
        cr_expect_eq(w, 250);
        cr_expect_eq(kb_prodq_serve(&q, 400, produce), 1000);
        cr_expect_eq(b.o_produced, 1);
        cr_expect(TAILQ_EMPTY(&q));
}

/* A consumer without brokers: pausing an unknown partition is refused
 * quietly, which is all partset needs here. */
static rd_kafka_t *consumer(void) {
        char err[512];
        rd_kafka_conf_t *kc = rd_kafka_conf_new();
        rd_kafka_t *c;
        rd_kafka_conf_set(kc, "group.id", "unit", NULL, 0);
        rd_kafka_conf_set(kc, "log_level", "0", NULL, 0);
        c = rd_kafka_new(RD_KAFKA_CONSUMER, kc, err, sizeof(err));
        cr_assert(c, "%s", err);
        return c;
}

/* Work of a part's current epoch counts; holding max pauses the part for
 * KB_PAUSE_DELAY, one less resumes it; work of an ended epoch (or of no
 * part: an orphan) touches nothing. */
Test(role, work_and_hold_counters) {
        rd_kafka_t *c = consumer();
        kb_partset_t *ps = kb_partset_new("test", 0, 1000);
        kb_part_t pt = {.pt_topic = "t", .pt_assigned = 1, .pt_epoch = 7};
        kb_part_t other = {.pt_topic = "t", .pt_partition = 1,
                           .pt_assigned = 1, .pt_epoch = 8};
        kb_part_t *pts[] = {&pt};
        kb_log_init(KB_LOG_OFF, KB_LOG_FMT_JSON, NULL);
        kb_partset_set_consumer(ps, c);
        kb_part_work_begin(&pt);
        kb_part_work_begin(&pt);
        kb_partset_hold(ps, &pt, 7, 1, 2);
        cr_expect_eq(pt.pt_pause, 0);
        kb_partset_hold(ps, &pt, 7, 1, 2);
        cr_expect(pt.pt_paused && pt.pt_pause == KB_PAUSE_DELAY);
        kb_partset_hold(ps, &pt, 7, 0, 2);
        cr_expect(!pt.pt_paused && !pt.pt_pause);
        kb_part_work_end(&pt, 7);
        cr_expect_eq(pt.pt_jobs, 1);
        cr_expect_eq(pt.pt_held, 1);
        /* an older epoch's work, an orphan's */
        kb_part_work_end(&pt, 6);
        kb_partset_hold(ps, &pt, 6, 1, 1);
        kb_part_work_end(NULL, 7);
        cr_expect_eq(pt.pt_jobs, 1);
        cr_expect_eq(pt.pt_held, 1);
        /* which work a revocation of pts concerns */
        cr_expect(kb_role_work_of(&pt, 7, pts, 1));
        cr_expect(!kb_role_work_of(&pt, 6, pts, 1));
        cr_expect(!kb_role_work_of(&other, 8, pts, 1));
        cr_expect(!kb_role_work_of(NULL, 7, pts, 1));
        cr_expect(kb_role_work_of(NULL, 7, NULL, 0), "all work at shutdown");
        kb_partset_destroy(ps);
        rd_kafka_destroy(c);
}
