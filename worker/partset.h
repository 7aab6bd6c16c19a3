/* partset: the partitions a consumer role owns, with out-of-order commits.
 *
 * Shared by the roles that process messages out of order (items, notifier):
 * a table of assigned partitions, each with an epoch (bumped at every
 * assignment, so work that outlives a revocation finds a mismatch and
 * touches nothing), its offsets tracker (worker/offsets.h), and a set of
 * reasons it is paused for. It restores trackers from the committed offsets
 * and their done-above maps on assignment, commits periodically and
 * synchronously on revocation and shutdown, and applies assignments in the
 * consumer's rebalance protocol (cooperative or eager). The revocation
 * protocol (drop, drain, release, commit) is role.h's; what a role does with
 * its own jobs it tells through kb_role_ops_t.
 * Loop thread only. */
#ifndef KB_PARTSET_H
#define KB_PARTSET_H

#include <librdkafka/rdkafka.h>
#include <stdint.h>

#include "offsets.h"

/* Why a partition is paused; it fetches again when no reason is left. */
#define KB_PAUSE_WINDOW 0x1 /* its offset window is full */
#define KB_PAUSE_GLOBAL 0x2 /* the role's in-flight limit reached for long */
#define KB_PAUSE_DELAY  0x4 /* too many messages held until due */
#define KB_PAUSE_STOP   0x8 /* shutting down */
#define KB_PAUSE_READAHEAD 0x10 /* the items' read-ahead at its bound (the
                                 * items role resumes it) */

typedef struct kb_part_s {
        char *pt_topic;
        int32_t pt_partition;
        int pt_assigned;
        uint64_t pt_epoch;
        kb_offsets_t *pt_ot;  /* NULL when not assigned */
        int pt_pause;         /* KB_PAUSE_* reasons */
        int pt_paused;        /* paused in the consumer */
        int pt_revoking;
        /* the role's work of this epoch, reset at each assignment;
         * changed only through kb_part_work_* and kb_partset_hold */
        int pt_jobs;          /* alive (the revocation drains it) */
        int pt_held;          /* of which held back until due */
        struct kb_ra_s *pt_ra; /* the items role's read-ahead (owned and
                                * freed by it; NULL for other roles) */
} kb_part_t;

typedef struct kb_partset_s kb_partset_t;

/* facility: for logs ("items"); window: offsets window per partition;
 * commit_interval_ms: periodic commits. */
kb_partset_t *kb_partset_new(const char *facility, size_t window,
                             int commit_interval_ms);
void kb_partset_destroy(kb_partset_t *ps); /* NULL is a no-op */

/* The partitions of topic (copied; NULL: none) get a wide offsets tracker
 * of `window` (kb_offsets_new_wide) at their next assignment. Returns 0, or
 * -1 when out of memory. */
int kb_partset_set_wide(kb_partset_t *ps, const char *topic, size_t window);

/* The consumer (borrowed) the partitions belong to. */
void kb_partset_set_consumer(kb_partset_t *ps, rd_kafka_t *consumer);

kb_part_t *kb_partset_find(kb_partset_t *ps, const char *topic, int32_t p);
size_t kb_partset_cnt(const kb_partset_t *ps);
kb_part_t *kb_partset_get(kb_partset_t *ps, size_t i);

/* Does work tagged (pt, epoch) still belong to the current assignment? */
static inline int kb_part_current(const kb_part_t *pt, uint64_t epoch) {
        return pt && pt->pt_assigned && pt->pt_epoch == epoch;
}

/* The role's work: one more consumed from pt (of pt's current epoch); one
 * tagged (pt, epoch) ended (freed, or orphaned at a release: it no longer
 * counts), a no-op once the epoch is over. */
static inline void kb_part_work_begin(kb_part_t *pt) { pt->pt_jobs++; }
static inline void kb_part_work_end(kb_part_t *pt, uint64_t epoch) {
        if (kb_part_current(pt, epoch))
                pt->pt_jobs--;
}

void kb_partset_pause(kb_partset_t *ps, kb_part_t *pt, int reason, int on);

/* Work tagged (pt, epoch) is held back until due (on), or no longer is:
 * pt is paused for KB_PAUSE_DELAY while it holds max or more, and fetches
 * again below. A no-op once the epoch is over. */
void kb_partset_hold(kb_partset_t *ps, kb_part_t *pt, uint64_t epoch, int on,
                     int max);
void kb_partset_pause_all(kb_partset_t *ps, int reason, int on);
/* 1 while every partition is paused for KB_PAUSE_GLOBAL. */
int kb_partset_all_paused(const kb_partset_t *ps);

/* Rebalance callback, assignment: fetches the committed offsets with their
 * done-above maps (blocking, as allowed at rebalance), starts a tracker per
 * partition, and applies the assignment. Once the set is paused for
 * KB_PAUSE_STOP (shutting down), nothing is fetched: the assignment is only
 * applied, as the consumer's close requires, and its partitions paused. */
void kb_partset_assign(kb_partset_t *ps,
                       rd_kafka_topic_partition_list_t *parts);

/* Rebalance callback, revocation, in three steps: the assigned parts among
 * `parts` (marked revoking; caller frees the array; *np their count); then,
 * after the role drained them, kb_partset_revoked() commits them
 * synchronously (unless lost) and ends their epoch; then the role's
 * leftovers are gone and kb_partset_unassign() applies the revocation. */
kb_part_t **kb_partset_revoking(kb_partset_t *ps,
                                const rd_kafka_topic_partition_list_t *parts,
                                size_t *np);
void kb_partset_revoked(kb_partset_t *ps, kb_part_t **pts, size_t n,
                        int lost);
void kb_partset_unassign(kb_partset_t *ps,
                         rd_kafka_topic_partition_list_t *parts);

/* Commits the committable positions of pts (all when NULL). sync: waits,
 * and sends even unchanged positions. */
void kb_partset_commit(kb_partset_t *ps, kb_part_t **pts, size_t n, int sync);

/* Periodic commit when due; returns ms until the next one. */
int kb_partset_commit_due(kb_partset_t *ps, int64_t now);

/* Once a turn: partitions paused for their offset window fetch again once
 * it moved, and the periodic commit (kb_partset_commit_due, whose wait it
 * returns). */
int kb_partset_serve(kb_partset_t *ps, int64_t now);

/* For the consumer's offset commit callback: a failed commit is sent again. */
void kb_partset_commit_failed(kb_partset_t *ps,
                              const rd_kafka_topic_partition_list_t *offsets);

/* 1 once any assignment was received. */
int kb_partset_assigned_once(const kb_partset_t *ps);

#endif
