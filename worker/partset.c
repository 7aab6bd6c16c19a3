/* partset: see partset.h. */
#include "partset.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "loop.h"

struct kb_partset_s {
        const char *ps_fac;
        size_t ps_window;
        char *ps_wide_topic;    /* its partitions get a wide tracker */
        size_t ps_wide_window;
        int ps_interval_ms;
        rd_kafka_t *ps_consumer;
        kb_part_t **ps_parts;
        size_t ps_cnt, ps_cap;
        uint64_t ps_epoch;
        int ps_all_paused;
        int ps_assigned_once;
        int64_t ps_next_commit;
        int ps_stopping;        /* paused for KB_PAUSE_STOP: closing */
        int ps_cooperative;     /* the last rebalance protocol seen */
        char ps_meta[KB_OFFSETS_META_MAX + 1];
};

kb_partset_t *kb_partset_new(const char *facility, size_t window,
                             int commit_interval_ms) {
        kb_partset_t *ps = calloc(1, sizeof(*ps));
        if (!ps)
                return NULL;
        ps->ps_fac = facility;
        ps->ps_window = window;
        ps->ps_interval_ms = commit_interval_ms;
        ps->ps_next_commit = kb_now_ms() + commit_interval_ms;
        return ps;
}

int kb_partset_set_wide(kb_partset_t *ps, const char *topic, size_t window) {
        free(ps->ps_wide_topic);
        ps->ps_wide_topic  = topic ? strdup(topic) : NULL;
        ps->ps_wide_window = window;
        return topic && !ps->ps_wide_topic ? -1 : 0;
}

void kb_partset_destroy(kb_partset_t *ps) {
        size_t i;
        if (!ps)
                return;
        for (i = 0; i < ps->ps_cnt; i++) {
                kb_offsets_destroy(ps->ps_parts[i]->pt_ot);
                free(ps->ps_parts[i]->pt_topic);
                free(ps->ps_parts[i]);
        }
        free(ps->ps_parts);
        free(ps->ps_wide_topic);
        free(ps);
}

void kb_partset_set_consumer(kb_partset_t *ps, rd_kafka_t *consumer) {
        ps->ps_consumer = consumer;
}

static kb_part_t *find(kb_partset_t *ps, const char *topic, int32_t p,
                       int create) {
        size_t i;
        kb_part_t *pt;
        for (i = 0; i < ps->ps_cnt; i++) {
                pt = ps->ps_parts[i];
                if (pt->pt_partition == p && !strcmp(pt->pt_topic, topic))
                        return pt;
        }
        if (!create)
                return NULL;
        if (ps->ps_cnt == ps->ps_cap) {
                size_t cap = ps->ps_cap ? ps->ps_cap * 2 : 16;
                kb_part_t **n = realloc(ps->ps_parts, cap * sizeof(*n));
                if (!n)
                        return NULL;
                ps->ps_parts = n;
                ps->ps_cap = cap;
        }
        if (!(pt = calloc(1, sizeof(*pt))) || !(pt->pt_topic = strdup(topic))) {
                free(pt);
                return NULL;
        }
        pt->pt_partition = p;
        ps->ps_parts[ps->ps_cnt++] = pt;
        return pt;
}

kb_part_t *kb_partset_find(kb_partset_t *ps, const char *topic, int32_t p) {
        return find(ps, topic, p, 0);
}

size_t kb_partset_cnt(const kb_partset_t *ps) { return ps->ps_cnt; }

kb_part_t *kb_partset_get(kb_partset_t *ps, size_t i) {
        return i < ps->ps_cnt ? ps->ps_parts[i] : NULL;
}

void kb_partset_pause(kb_partset_t *ps, kb_part_t *pt, int reason, int on) {
        rd_kafka_topic_partition_list_t *l;
        int pause;
        if (on)
                pt->pt_pause |= reason;
        else
                pt->pt_pause &= ~reason;
        pause = pt->pt_pause != 0;
        if (!pt->pt_assigned || pt->pt_paused == pause)
                return;
        /* Pausing drops librdkafka's prefetched messages of the partition;
         * fetching resumes after the last message handed to us. */
        l = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(l, pt->pt_topic, pt->pt_partition);
        if (pause)
                rd_kafka_pause_partitions(ps->ps_consumer, l);
        else
                rd_kafka_resume_partitions(ps->ps_consumer, l);
        rd_kafka_topic_partition_list_destroy(l);
        pt->pt_paused = pause;
}

void kb_partset_hold(kb_partset_t *ps, kb_part_t *pt, uint64_t epoch, int on,
                     int max) {
        if (!kb_part_current(pt, epoch))
                return;
        if (on && ++pt->pt_held >= max)
                kb_partset_pause(ps, pt, KB_PAUSE_DELAY, 1);
        else if (!on && --pt->pt_held < max)
                kb_partset_pause(ps, pt, KB_PAUSE_DELAY, 0);
}

void kb_partset_pause_all(kb_partset_t *ps, int reason, int on) {
        size_t i;
        for (i = 0; i < ps->ps_cnt; i++)
                if (ps->ps_parts[i]->pt_assigned)
                        kb_partset_pause(ps, ps->ps_parts[i], reason, on);
        if (reason == KB_PAUSE_GLOBAL)
                ps->ps_all_paused = on;
        if (reason == KB_PAUSE_STOP)
                ps->ps_stopping = on;
}

int kb_partset_all_paused(const kb_partset_t *ps) { return ps->ps_all_paused; }

static int cooperative(kb_partset_t *ps) {
        const char *p = rd_kafka_rebalance_protocol(ps->ps_consumer);
        /* NULL once the consumer is no longer in its group (the rebalance
         * callbacks rd_kafka_consumer_close() serves): the protocol it had.
         * (strcmp(NULL) crashed a worker on SIGTERM.) */
        if (p)
                ps->ps_cooperative = !strcmp(p, "COOPERATIVE");
        return ps->ps_cooperative;
}

void kb_partset_assign(kb_partset_t *ps,
                       rd_kafka_topic_partition_list_t *parts) {
        rd_kafka_resp_err_t err;
        rd_kafka_error_t *e = NULL;
        int i;
        /* Stopping: an assignment that arrives now (served by
         * rd_kafka_consumer_close()) is never consumed, and the fetch can
         * wait out its whole timeout there (seen after a broker restart:
         * 30 s per rebalance, a SIGTERM that took over a minute). */
        err = ps->ps_stopping ? RD_KAFKA_RESP_ERR_NO_ERROR
                              : rd_kafka_committed(ps->ps_consumer, parts,
                                                   30000);
        if (err)
                kb_log(KB_LOG_WARN, ps->ps_fac,
                       "fetching committed offsets failed: %s",
                       rd_kafka_err2str(err));
        for (i = 0; i < parts->cnt; i++) {
                rd_kafka_topic_partition_t *tp = &parts->elems[i];
                kb_part_t *pt = find(ps, tp->topic, tp->partition, 1);
                if (!pt)
                        continue;
                pt->pt_assigned = 1;
                pt->pt_epoch = ++ps->ps_epoch;
                pt->pt_jobs = pt->pt_held = 0;
                pt->pt_paused = pt->pt_pause = 0;
                pt->pt_revoking = 0;
                kb_offsets_destroy(pt->pt_ot);
                pt->pt_ot = ps->ps_wide_topic &&
                                    !strcmp(tp->topic, ps->ps_wide_topic)
                                ? kb_offsets_new_wide(ps->ps_wide_window)
                                : kb_offsets_new(ps->ps_window);
                if (tp->offset >= 0 &&
                    kb_offsets_reset(pt->pt_ot, tp->offset, tp->metadata,
                                     tp->metadata_size) < 0)
                        kb_log(KB_LOG_WARN, ps->ps_fac,
                               "%s[%d]: ignoring unreadable commit metadata",
                               tp->topic, (int)tp->partition);
                kb_log(KB_LOG_INFO, ps->ps_fac,
                       "assigned %s[%d] at offset %lld%s", tp->topic,
                       (int)tp->partition, (long long)tp->offset,
                       tp->metadata_size ? " (with done-above map)" : "");
        }
        if (cooperative(ps))
                e = rd_kafka_incremental_assign(ps->ps_consumer, parts);
        else if ((err = rd_kafka_assign(ps->ps_consumer, parts)))
                kb_log(KB_LOG_ERROR, ps->ps_fac, "assign: %s",
                       rd_kafka_err2str(err));
        if (e) {
                kb_log(KB_LOG_ERROR, ps->ps_fac, "incremental assign: %s",
                       rd_kafka_error_string(e));
                rd_kafka_error_destroy(e);
        }
        /* librdkafka keeps a partition paused across its revocation (or
         * loss) and a new assignment to the same consumer (librdkafka#1849).
         * It starts unpaused here (pt_pause is 0): tell librdkafka, or a
         * partition paused when it was lost (the in-flight limit during a
         * broker outage) would never be fetched again. */
        if (!ps->ps_stopping && parts->cnt > 0 &&
            (err = rd_kafka_resume_partitions(ps->ps_consumer, parts)))
                kb_log(KB_LOG_WARN, ps->ps_fac, "resume: %s",
                       rd_kafka_err2str(err));
        ps->ps_assigned_once = 1;
        /* New partitions are not paused for the global limit; the role
         * pauses again if it still has to. */
        ps->ps_all_paused = 0;
        /* Shutting down: nothing new is fetched. */
        if (ps->ps_stopping)
                kb_partset_pause_all(ps, KB_PAUSE_STOP, 1);
}

kb_part_t **kb_partset_revoking(kb_partset_t *ps,
                                const rd_kafka_topic_partition_list_t *parts,
                                size_t *np) {
        kb_part_t **pts = calloc((size_t)parts->cnt + 1, sizeof(*pts));
        size_t n = 0;
        int i;
        for (i = 0; pts && i < parts->cnt; i++) {
                kb_part_t *pt = find(ps, parts->elems[i].topic,
                                     parts->elems[i].partition, 0);
                if (pt && pt->pt_assigned) {
                        pt->pt_revoking = 1;
                        pts[n++] = pt;
                }
        }
        *np = n;
        return pts;
}

void kb_partset_revoked(kb_partset_t *ps, kb_part_t **pts, size_t n,
                        int lost) {
        size_t i;
        if (!lost && n)
                kb_partset_commit(ps, pts, n, 1);
        for (i = 0; i < n; i++) {
                kb_part_t *pt = pts[i];
                kb_log(KB_LOG_INFO, ps->ps_fac, "%s %s[%d]%s",
                       lost ? "lost" : "revoked", pt->pt_topic,
                       (int)pt->pt_partition,
                       pt->pt_jobs ? " (with unfinished work)" : "");
                kb_offsets_destroy(pt->pt_ot);
                pt->pt_ot = NULL;
                pt->pt_assigned = 0;
                pt->pt_revoking = 0;
                pt->pt_paused = pt->pt_pause = 0;
                pt->pt_jobs = pt->pt_held = 0;
        }
}

void kb_partset_unassign(kb_partset_t *ps,
                         rd_kafka_topic_partition_list_t *parts) {
        rd_kafka_error_t *e = NULL;
        if (cooperative(ps))
                e = rd_kafka_incremental_unassign(ps->ps_consumer, parts);
        else
                rd_kafka_assign(ps->ps_consumer, NULL);
        if (e) {
                kb_log(KB_LOG_WARN, ps->ps_fac, "incremental unassign: %s",
                       rd_kafka_error_string(e));
                rd_kafka_error_destroy(e);
        }
}

void kb_partset_commit(kb_partset_t *ps, kb_part_t **pts, size_t n, int sync) {
        rd_kafka_topic_partition_list_t *l;
        rd_kafka_resp_err_t err;
        size_t i;
        if (!pts)
                n = ps->ps_cnt;
        l = rd_kafka_topic_partition_list_new((int)n + 1);
        for (i = 0; i < n; i++) {
                kb_part_t *pt = pts ? pts[i] : ps->ps_parts[i];
                int64_t off;
                rd_kafka_topic_partition_t *tp;
                if (!pt->pt_assigned || !pt->pt_ot)
                        continue;
                /* A synchronous commit sends even an unchanged position: an
                 * earlier asynchronous commit of it may have failed with a
                 * rebalance error not reported yet. */
                if ((!kb_offsets_committable(pt->pt_ot, &off, ps->ps_meta,
                                             sizeof(ps->ps_meta)) &&
                     !sync) ||
                    off < 0)
                        continue;
                tp = rd_kafka_topic_partition_list_add(l, pt->pt_topic,
                                                       pt->pt_partition);
                tp->offset = off;
                tp->metadata_size = strlen(ps->ps_meta);
                tp->metadata = tp->metadata_size ? strdup(ps->ps_meta) : NULL;
                if (!tp->metadata)
                        tp->metadata_size = 0;
                /* Optimistic: a failure is reported by the commit callback
                 * (or below), and the position is then sent again. */
                kb_offsets_committed(pt->pt_ot, off, ps->ps_meta);
        }
        if (l->cnt > 0) {
                err = rd_kafka_commit(ps->ps_consumer, l, !sync);
                if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET) {
                        kb_log(KB_LOG_WARN, ps->ps_fac, "commit failed: %s",
                               rd_kafka_err2str(err));
                        kb_partset_commit_failed(ps, l);
                }
        }
        rd_kafka_topic_partition_list_destroy(l);
}

int kb_partset_commit_due(kb_partset_t *ps, int64_t now) {
        if (now >= ps->ps_next_commit) {
                kb_partset_commit(ps, NULL, 0, 0);
                ps->ps_next_commit = now + ps->ps_interval_ms;
        }
        return ps->ps_next_commit > now ? (int)(ps->ps_next_commit - now) : 1;
}

int kb_partset_serve(kb_partset_t *ps, int64_t now) {
        size_t i;
        for (i = 0; i < ps->ps_cnt; i++) {
                kb_part_t *pt = ps->ps_parts[i];
                if (pt->pt_assigned && (pt->pt_pause & KB_PAUSE_WINDOW) &&
                    !kb_offsets_window_full(pt->pt_ot))
                        kb_partset_pause(ps, pt, KB_PAUSE_WINDOW, 0);
        }
        return kb_partset_commit_due(ps, now);
}

void kb_partset_commit_failed(kb_partset_t *ps,
                              const rd_kafka_topic_partition_list_t *offsets) {
        int i;
        for (i = 0; offsets && i < offsets->cnt; i++) {
                kb_part_t *pt = find(ps, offsets->elems[i].topic,
                                     offsets->elems[i].partition, 0);
                if (pt && pt->pt_ot)
                        kb_offsets_committed(pt->pt_ot, -1, "");
        }
}

int kb_partset_assigned_once(const kb_partset_t *ps) {
        return ps->ps_assigned_once;
}
