/* aggregator: see aggregator.h (the batch-state model is bstate.c).
 *
 * One results consumer (eager range assignment, state per
 * partition restored inside the rebalance callback), one restore consumer
 * (assign-only, read_committed, on the batch-state topic) and one
 * transactional producer. All on the loop thread. */
#include "aggregator.h"

#include <errno.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <unistd.h>

#include "kafka.h"
#include "log.h"
#include "metrics.h"
#include "role.h"
#include "serde.h"

/* glibc's sys/queue.h lacks the _SAFE iterators. */
#ifndef TAILQ_FOREACH_SAFE
#define TAILQ_FOREACH_SAFE(var, head, field, tvar)                             \
        for ((var) = TAILQ_FIRST((head));                                      \
             (var) && ((tvar) = TAILQ_NEXT((var), field), 1); (var) = (tvar))
#endif

typedef struct kb_batch_s kb_batch_t;
struct kb_batch_s {
        char *bt_id;                 /* owned: the key */
        kb_bstate_t *bt_st;          /* owned; NULL in a restore table */
        int32_t bt_partition;        /* results/batch-state partition */
        int bt_dirty;                /* on ag_dirty: record due */
        int bt_event_due;            /* counts changed on a complete batch */
        int bt_tombstone;            /* retire at the next commit */
        char *bt_raw;                /* restore: latest record (owned) */
        size_t bt_raw_len;
        char *bt_ev;                 /* commit: encoded event (owned) */
        size_t bt_ev_len;
        kb_batch_t *bt_hnext;        /* hash chain */
        TAILQ_ENTRY(kb_batch_s) bt_all;
        TAILQ_ENTRY(kb_batch_s) bt_dlink;
};

typedef struct kb_btable_s {
        kb_batch_t **tb_buckets;
        size_t tb_size;              /* power of two */
        size_t tb_cnt;
        TAILQ_HEAD(, kb_batch_s) tb_all;
} kb_btable_t;

/* An assigned (or once assigned) partition of the results topic. */
typedef struct kb_agpart_s {
        int ap_assigned;
        int64_t ap_next;             /* next offset to consume, -1 unknown */
        int64_t ap_sent;             /* next offset as last committed */
        int ap_at_eof;               /* consumed up to the end */
        int64_t ap_resume_at;        /* paused until (mono ms), 0: not */
} kb_agpart_t;

struct kb_aggregator_s {
        kb_role_t ag_role; /* first: the clients' opaque (role.h) */
        const kb_conf_t *ag_conf;
        kb_loop_t *ag_loop;
        const char *ag_results;      /* topic names, borrowed from conf */
        const char *ag_state;
        const char *ag_batches;
        rd_kafka_t *ag_consumer;     /* results, group */
        rd_kafka_queue_t *ag_cq;
        rd_kafka_t *ag_restorer;     /* batch-state, assign only */
        rd_kafka_t *ag_producer;     /* transactional */
        char ag_txn_id[320];
        kb_agpart_t *ag_parts;
        int32_t ag_part_cnt;
        kb_btable_t ag_table;
        TAILQ_HEAD(, kb_batch_s) ag_dirty;
        int ag_txn_ready;
        int ag_assigned_once;
        int ag_fatal;
        /* The transactional producer failed (a fatal or unclassified
         * transactional error): recreate it and rewind (producer_recover). */
        int ag_recover;
        int64_t ag_recover_at;
        uint64_t ag_recoveries;
        int64_t ag_recover_since; /* first of the recent recoveries */
        int ag_recover_recent;
        int64_t ag_fenced_at;     /* last recovery from fencing */
        int64_t ag_txn_begun_at;  /* the open transaction's begin, or 0 */
        int64_t ag_next_commit;
        int64_t ag_next_cron;
        /* counters, for logs */
        uint64_t ag_results_cnt, ag_counted, ag_dups, ag_invalid,
            ag_rejected, ag_events, ag_commits, ag_aborts;
        int64_t ag_commit_ms_sum, ag_commit_ms_max;
        kb_serde_t *ag_serde;        /* value formats (json/avro) */
        int ag_results_avro;         /* results topic is avro */
        int ag_events_avro;          /* batches topic is avro */
        uint64_t ag_txn_seq;
};

/* ---- the batch table ---- */

static uint64_t hash_str(const char *s) {
        uint64_t h = 1469598103934665603ULL;
        for (; *s; s++)
                h = (h ^ (unsigned char)*s) * 1099511628211ULL;
        return h;
}

static int tbl_init(kb_btable_t *tb) {
        tb->tb_size = 64;
        tb->tb_cnt = 0;
        TAILQ_INIT(&tb->tb_all);
        tb->tb_buckets = calloc(tb->tb_size, sizeof(*tb->tb_buckets));
        return tb->tb_buckets ? 0 : -1;
}

static kb_batch_t *tbl_find(const kb_btable_t *tb, const char *id) {
        kb_batch_t *bt = tb->tb_buckets[hash_str(id) & (tb->tb_size - 1)];
        for (; bt; bt = bt->bt_hnext)
                if (!strcmp(bt->bt_id, id))
                        return bt;
        return NULL;
}

static void tbl_link(kb_btable_t *tb, kb_batch_t *bt) {
        size_t h = hash_str(bt->bt_id) & (tb->tb_size - 1);
        bt->bt_hnext = tb->tb_buckets[h];
        tb->tb_buckets[h] = bt;
}

/* Inserts (the id must not be present). Growing is best effort. */
static void tbl_insert(kb_btable_t *tb, kb_batch_t *bt) {
        if (tb->tb_cnt >= tb->tb_size) {
                kb_batch_t **nb = calloc(tb->tb_size * 2, sizeof(*nb));
                if (nb) {
                        kb_batch_t *x;
                        free(tb->tb_buckets);
                        tb->tb_buckets = nb;
                        tb->tb_size *= 2;
                        TAILQ_FOREACH(x, &tb->tb_all, bt_all)
                                tbl_link(tb, x);
                }
        }
        tbl_link(tb, bt);
        TAILQ_INSERT_TAIL(&tb->tb_all, bt, bt_all);
        tb->tb_cnt++;
}

static void tbl_unlink(kb_btable_t *tb, kb_batch_t *bt) {
        kb_batch_t **pp = &tb->tb_buckets[hash_str(bt->bt_id) &
                                          (tb->tb_size - 1)];
        for (; *pp; pp = &(*pp)->bt_hnext)
                if (*pp == bt) {
                        *pp = bt->bt_hnext;
                        break;
                }
        TAILQ_REMOVE(&tb->tb_all, bt, bt_all);
        tb->tb_cnt--;
}

static void batch_free(kb_batch_t *bt) {
        if (!bt)
                return;
        free(bt->bt_id);
        kb_bstate_destroy(bt->bt_st);
        free(bt->bt_raw);
        free(bt->bt_ev);
        free(bt);
}

static kb_batch_t *batch_new(const char *id, int32_t partition) {
        kb_batch_t *bt = calloc(1, sizeof(*bt));
        if (!bt)
                return NULL;
        if (!(bt->bt_id = strdup(id))) {
                free(bt);
                return NULL;
        }
        bt->bt_partition = partition;
        return bt;
}

/* Removes and frees a batch of the live table. */
static void batch_remove(kb_aggregator_t *ag, kb_batch_t *bt) {
        if (bt->bt_dirty)
                TAILQ_REMOVE(&ag->ag_dirty, bt, bt_dlink);
        tbl_unlink(&ag->ag_table, bt);
        batch_free(bt);
}

static void batch_dirty(kb_aggregator_t *ag, kb_batch_t *bt) {
        if (!bt->bt_dirty) {
                bt->bt_dirty = 1;
                TAILQ_INSERT_TAIL(&ag->ag_dirty, bt, bt_dlink);
        }
}

/* Drops the in-memory state of the batches of partition p (-1: all). */
static void drop_partition(kb_aggregator_t *ag, int32_t p) {
        kb_batch_t *bt, *tmp;
        TAILQ_FOREACH_SAFE(bt, &ag->ag_table.tb_all, bt_all, tmp) {
                if (p < 0 || bt->bt_partition == p)
                        batch_remove(ag, bt);
        }
}

/* ---- partitions ---- */

static kb_agpart_t *part_get(kb_aggregator_t *ag, int32_t p, int create) {
        if (p < 0)
                return NULL;
        if (p >= ag->ag_part_cnt) {
                int32_t n = p + 1, i;
                kb_agpart_t *np;
                if (!create)
                        return NULL;
                if (!(np = realloc(ag->ag_parts, (size_t)n * sizeof(*np))))
                        return NULL;
                for (i = ag->ag_part_cnt; i < n; i++) {
                        memset(&np[i], 0, sizeof(np[i]));
                        np[i].ap_next = np[i].ap_sent = -1;
                }
                ag->ag_parts = np;
                ag->ag_part_cnt = n;
        }
        return &ag->ag_parts[p];
}

static void set_fatal(kb_aggregator_t *ag, const char *what, const char *msg) {
        kb_log(KB_LOG_ERROR, "aggregator", "fatal: %s: %s", what, msg);
        ag->ag_fatal = 1;
        kb_loop_stop_requested = 1;
}

/* The transactional producer is unusable (a fatal error, e.g.
 * INVALID_TXN_STATE after a transaction timed out during a broker outage):
 * no more transactions until producer_recover() has made a new one. */
static int is_fenced(rd_kafka_resp_err_t err) {
        return err == RD_KAFKA_RESP_ERR__FENCED ||
               err == RD_KAFKA_RESP_ERR_PRODUCER_FENCED ||
               err == RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH;
}

static void set_recover(kb_aggregator_t *ag, const char *what,
                        const char *msg, rd_kafka_resp_err_t err) {
        int64_t now = kb_now_ms();
        if (ag->ag_recover && !ag->ag_txn_ready)
                return;
        /* Fenced: after a transaction open longer than its timeout (an
         * outage), the coordinator did it; else, or twice in a row,
         * another process has our instance id, and the newer one stays. */
        if (is_fenced(err)) {
                if (!ag->ag_txn_begun_at ||
                    now - ag->ag_txn_begun_at <
                        ag->ag_conf->aggregator_transaction_timeout_ms ||
                    (ag->ag_fenced_at && now - ag->ag_fenced_at < 300000)) {
                        char why[768];
                        snprintf(why, sizeof(why),
                                 "%s (another process with transactional.id "
                                 "%s?)",
                                 msg, ag->ag_txn_id);
                        set_fatal(ag, what, why);
                        return;
                }
                ag->ag_fenced_at = now;
        }
        /* Two processes with one instance id fence each other for ever:
         * more than 5 failures in 5 minutes end the process instead. */
        if (now - ag->ag_recover_since > 300000) {
                ag->ag_recover_since = now;
                ag->ag_recover_recent = 0;
        }
        if (++ag->ag_recover_recent > 5) {
                char why[768];
                snprintf(why, sizeof(why),
                         "%s (the 6th failure in 5 minutes: another process "
                         "with transactional.id %s?)",
                         msg, ag->ag_txn_id);
                set_fatal(ag, what, why);
                return;
        }
        kb_log(KB_LOG_ERROR, "aggregator",
               "transactional producer failed: %s: %s; recreating it", what,
               msg);
        ag->ag_recover = 1;
        ag->ag_txn_ready = 0;
}

/* ---- restore from batch-state ---- */

/* One restore: the partitions being read and what was read so far. */
typedef struct restore_run_s {
        const int32_t *rr_parts;
        int rr_n;
        int *rr_done;          /* rr_done[i]: parts[i] read to its end */
        int rr_remaining;      /* partitions not read to their end */
        int rr_logged_wait;
        int64_t rr_deadline;
        int64_t rr_records;
        size_t rr_bytes;
        kb_btable_t rr_tmp;    /* the last record of every key (bt_raw) */
        char rr_plist[256];    /* "0,3,5", for logs */
} restore_run_t;

static void tbl_free_all(kb_btable_t *tb) {
        kb_batch_t *bt, *nx;
        TAILQ_FOREACH_SAFE(bt, &tb->tb_all, bt_all, nx) {
                TAILQ_REMOVE(&tb->tb_all, bt, bt_all);
                batch_free(bt);
        }
        free(tb->tb_buckets);
        tb->tb_buckets = NULL;
}

/* Assigns the partitions from their beginning. -1 (fatal set) on failure. */
static int restore_assign(kb_aggregator_t *ag, restore_run_t *rr) {
        rd_kafka_topic_partition_list_t *l;
        rd_kafka_resp_err_t err;
        size_t pl = 0;
        int i;

        l = rd_kafka_topic_partition_list_new(rr->rr_n);
        rr->rr_plist[0] = '\0';
        for (i = 0; i < rr->rr_n; i++) {
                rd_kafka_topic_partition_list_add(l, ag->ag_state,
                                                  rr->rr_parts[i])
                    ->offset = RD_KAFKA_OFFSET_BEGINNING;
                if (pl < sizeof(rr->rr_plist) - 16)
                        pl += (size_t)snprintf(
                            rr->rr_plist + pl, sizeof(rr->rr_plist) - pl,
                            "%s%d", i ? "," : "", (int)rr->rr_parts[i]);
        }
        err = rd_kafka_assign(ag->ag_restorer, l);
        rd_kafka_topic_partition_list_destroy(l);
        if (err) {
                set_fatal(ag, "restore: assign", rd_kafka_err2str(err));
                return -1;
        }
        return 0;
}

/* A partition's end was reached: done when it is the stable end. */
static void restore_eof(kb_aggregator_t *ag, restore_run_t *rr,
                        const rd_kafka_message_t *m) {
        int64_t lo = -1, hi = -1;
        int i;
        for (i = 0; i < rr->rr_n && rr->rr_parts[i] != m->partition; i++)
                ;
        rd_kafka_get_watermark_offsets(ag->ag_restorer, ag->ag_state,
                                       m->partition, &lo, &hi);
        if (i >= rr->rr_n || rr->rr_done[i])
                return;
        /* The end for read_committed is the last stable offset; below the
         * high watermark a transaction is still open. */
        if (hi < 0 || m->offset >= hi) {
                rr->rr_done[i] = 1;
                rr->rr_remaining--;
        } else if (!rr->rr_logged_wait++) {
                kb_log(KB_LOG_INFO, "aggregator",
                       "%s[%d]: waiting for an open transaction to end "
                       "(stable offset %lld, end %lld)",
                       ag->ag_state, (int)m->partition, (long long)m->offset,
                       (long long)hi);
        }
}

/* Keeps a record as the latest of its key (a copy; NULL for a tombstone). */
static void restore_keep(restore_run_t *rr, const rd_kafka_message_t *m) {
        char key[KB_BATCH_ID_MAX + 1];
        kb_batch_t *bt;
        memcpy(key, m->key, m->key_len);
        key[m->key_len] = '\0';
        rr->rr_records++;
        rr->rr_bytes += m->len;
        if (!(bt = tbl_find(&rr->rr_tmp, key))) {
                if (!(bt = batch_new(key, m->partition)))
                        return;
                tbl_insert(&rr->rr_tmp, bt);
        }
        bt->bt_partition = m->partition;
        free(bt->bt_raw);
        bt->bt_raw = NULL;
        bt->bt_raw_len = 0;
        if (m->payload && m->len && (bt->bt_raw = malloc(m->len))) {
                memcpy(bt->bt_raw, m->payload, m->len);
                bt->bt_raw_len = m->len;
        }
}

/* Reads until every partition is at its end, the deadline passes or a stop
 * is requested. */
static void restore_read(kb_aggregator_t *ag, restore_run_t *rr) {
        while (rr->rr_remaining > 0) {
                rd_kafka_message_t *m =
                    rd_kafka_consumer_poll(ag->ag_restorer, 200);
                if (!m) {
                        if (kb_now_ms() >= rr->rr_deadline ||
                            kb_loop_stop_requested)
                                break;
                        continue;
                }
                if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                        restore_eof(ag, rr, m);
                } else if (m->err) {
                        kb_log(KB_LOG_WARN, "aggregator", "restore: %s",
                               rd_kafka_message_errstr(m));
                        if (m->err == RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION ||
                            m->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
                                rr->rr_deadline = 0;
                } else if (m->key_len > 0 && m->key_len <= KB_BATCH_ID_MAX) {
                        restore_keep(rr, m);
                }
                rd_kafka_message_destroy(m);
        }
        rd_kafka_assign(ag->ag_restorer, NULL);
}

/* Decodes the last record of every key into the live table (the restore
 * table's entries move there or are freed). Returns the batches restored. */
static int64_t restore_install(kb_aggregator_t *ag, kb_btable_t *tmp) {
        kb_batch_t *bt, *nx;
        int64_t restored = 0;
        TAILQ_FOREACH_SAFE(bt, &tmp->tb_all, bt_all, nx) {
                char errstr[256];
                kb_bstate_t *bs;
                TAILQ_REMOVE(&tmp->tb_all, bt, bt_all);
                if (!bt->bt_raw) { /* tombstoned */
                        batch_free(bt);
                        continue;
                }
                bs = kb_bstate_decode(bt->bt_raw, bt->bt_raw_len, errstr,
                                      sizeof(errstr));
                free(bt->bt_raw);
                bt->bt_raw = NULL;
                if (!bs || strcmp(bs->bs_batch_id, bt->bt_id) ||
                    tbl_find(&ag->ag_table, bt->bt_id)) {
                        const char *kv[] = {"batch_id", bt->bt_id, NULL};
                        kb_logkv(KB_LOG_ERROR, "aggregator", kv,
                                 "cannot restore the state of a batch: %s",
                                 !bs ? errstr
                                     : strcmp(bs->bs_batch_id, bt->bt_id)
                                           ? "record names another batch"
                                           : "batch already restored from "
                                             "another partition");
                        kb_bstate_destroy(bs);
                        batch_free(bt);
                        continue;
                }
                bt->bt_st = bs;
                bt->bt_hnext = NULL;
                tbl_insert(&ag->ag_table, bt);
                restored++;
        }
        return restored;
}

/* Reads partitions `parts` of batch-state from the beginning to the end
 * (read_committed; waiting, bounded, for a transaction still open on a
 * partition, which a crashed owner may have left) and installs the last
 * record of every key into the live table. Returns 0, or -1 when the
 * restore could not run (the caller treats it as fatal). */
static int restore(kb_aggregator_t *ag, const int32_t *parts, int n) {
        restore_run_t rr;
        int64_t t0 = kb_now_ms(), t1, restored;

        if (n <= 0)
                return 0;
        memset(&rr, 0, sizeof(rr));
        rr.rr_parts = parts;
        rr.rr_n = rr.rr_remaining = n;
        rr.rr_deadline =
            t0 + 2 * (int64_t)ag->ag_conf->aggregator_transaction_timeout_ms +
            30000;
        if (tbl_init(&rr.rr_tmp) < 0 ||
            !(rr.rr_done = calloc((size_t)n, sizeof(int)))) {
                free(rr.rr_tmp.tb_buckets);
                set_fatal(ag, "restore", "out of memory");
                return -1;
        }
        if (restore_assign(ag, &rr) < 0) {
                free(rr.rr_done);
                free(rr.rr_tmp.tb_buckets);
                return -1;
        }
        restore_read(ag, &rr);
        free(rr.rr_done);
        if (rr.rr_remaining > 0) {
                /* Half a state must never meet the committed offsets: stop
                 * (a restart tries again) rather than count wrong. */
                char why[512];
                tbl_free_all(&rr.rr_tmp);
                if (kb_loop_stop_requested)
                        return -1;
                snprintf(why, sizeof(why),
                         "%s[%s]: end not reached in %lld ms (a transaction "
                         "that stays open?)",
                         ag->ag_state, rr.rr_plist,
                         (long long)(kb_now_ms() - t0));
                set_fatal(ag, "restore", why);
                return -1;
        }
        t1 = kb_now_ms();
        restored = restore_install(ag, &rr.rr_tmp);
        free(rr.rr_tmp.tb_buckets);
        kb_log(KB_LOG_INFO, "aggregator",
               "restored %lld batches from %s[%s] in %lld ms (%lld records, "
               "%zu bytes; decoding took %lld ms)",
               (long long)restored, ag->ag_state, rr.rr_plist,
               (long long)(kb_now_ms() - t0), (long long)rr.rr_records,
               rr.rr_bytes, (long long)(kb_now_ms() - t1));
        return 0;
}

/* ---- the transaction ---- */

typedef enum { TXN_OK = 0, TXN_RETRY, TXN_ABORT, TXN_FATAL } txn_res_t;

/* Classifies (and destroys) a transactional API error as librdkafka's
 * documentation says: abortable, retriable, else fatal. */
static txn_res_t txn_classify(kb_aggregator_t *ag, const char *what,
                              rd_kafka_error_t *e) {
        txn_res_t r;
        if (!e)
                return TXN_OK;
        if (rd_kafka_error_is_fatal(e))
                r = TXN_FATAL;
        else if (rd_kafka_error_txn_requires_abort(e))
                r = TXN_ABORT;
        else if (rd_kafka_error_is_retriable(e))
                r = TXN_RETRY;
        else
                r = TXN_FATAL;
        if (r == TXN_FATAL)
                set_recover(ag, what, rd_kafka_error_string(e),
                            rd_kafka_error_code(e));
        else
                kb_log(KB_LOG_WARN, "aggregator", "%s: %s: %s", what,
                       rd_kafka_error_name(e), rd_kafka_error_string(e));
        rd_kafka_error_destroy(e);
        return r;
}

/* Produces one message into the open transaction; value NULL: tombstone.
 * Takes value (freed by librdkafka or here). */
static int txn_produce(kb_aggregator_t *ag, const char *topic, int32_t part,
                       const char *key, char *value, size_t len) {
        rd_kafka_resp_err_t err;
        int tries = 0;
        for (;;) {
                err = rd_kafka_producev(
                    ag->ag_producer, RD_KAFKA_V_TOPIC(topic),
                    RD_KAFKA_V_PARTITION(part),
                    RD_KAFKA_V_KEY(key, strlen(key)),
                    RD_KAFKA_V_VALUE(value, value ? len : 0),
                    RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_FREE), RD_KAFKA_V_END);
                if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL || ++tries > 100)
                        break;
                rd_kafka_poll(ag->ag_producer, 100);
        }
        if (err) {
                free(value);
                kb_log(KB_LOG_WARN, "aggregator", "produce to %s: %s", topic,
                       rd_kafka_err2str(err));
                return -1;
        }
        return 0;
}

static void log_event(const kb_bstate_t *bs) {
        char rev[24], cnt[160];
        const char *kv[] = {"batch_id", bs->bs_batch_id, "status",
                            kb_batch_status_str(kb_bstate_status(bs)),
                            "revision", rev, "counts", cnt, NULL};
        snprintf(rev, sizeof(rev), "%lld", (long long)bs->bs_revision);
        snprintf(cnt, sizeof(cnt), "%lld/%lld/%lld/%lld of %lld",
                 (long long)bs->bs_succeeded, (long long)bs->bs_failed,
                 (long long)bs->bs_cancelled, (long long)bs->bs_expired,
                 (long long)bs->bs_items_total);
        kb_logkv(KB_LOG_INFO, "aggregator", kv, "batch %s",
                 bs->bs_revision <= 1 ? "completed" : "updated");
}

/* Drops the events encoded for a commit that does not happen. */
static void events_forget(kb_aggregator_t *ag) {
        kb_batch_t *bt;
        TAILQ_FOREACH(bt, &ag->ag_dirty, bt_dlink) {
                if (!bt->bt_ev)
                        continue;
                free(bt->bt_ev);
                bt->bt_ev = NULL;
                bt->bt_st->bs_revision--;
        }
}

/* Encodes the events due in this commit before it begins, each with its
 * next revision (json, or avro through the schema registry). Returns
 * TXN_OK; TXN_RETRY when the events topic's schema id is not known yet
 * (nothing changed: the commit waits); TXN_FATAL when an event does not fit
 * the schema. */
static txn_res_t events_encode(kb_aggregator_t *ag) {
        kb_batch_t *bt;
        char errstr[512];
        TAILQ_FOREACH(bt, &ag->ag_dirty, bt_dlink) {
                kb_bstate_t *bs = bt->bt_st;
                kb_serde_res_t r = KB_SERDE_INVALID;
                json_t *ev;
                if (bt->bt_tombstone || !bt->bt_event_due ||
                    !kb_bstate_complete(bs))
                        continue;
                bs->bs_revision++;
                snprintf(errstr, sizeof(errstr), "out of memory");
                if (!ag->ag_events_avro) {
                        if ((bt->bt_ev = kb_bstate_event_encode(
                                 bs, &bt->bt_ev_len)))
                                r = KB_SERDE_OK;
                } else if ((ev = kb_bstate_event_json(bs))) {
                        r = kb_serde_batch_event_encode(
                            ag->ag_serde, ag->ag_batches, ev, &bt->bt_ev,
                            &bt->bt_ev_len, errstr, sizeof(errstr));
                        json_decref(ev);
                }
                if (r == KB_SERDE_OK)
                        continue;
                bt->bt_ev = NULL;
                bs->bs_revision--;
                events_forget(ag);
                if (r == KB_SERDE_RETRY) {
                        kb_log(KB_LOG_WARN, "aggregator",
                               "%s: schema not available yet (%s); commit "
                               "postponed",
                               ag->ag_batches, errstr);
                        return TXN_RETRY;
                }
                set_fatal(ag, "encoding a batch event", errstr);
                return TXN_FATAL;
        }
        return TXN_OK;
}

/* The consumed offsets not yet committed, of the assigned partitions.
 * Caller destroys the list. */
static rd_kafka_topic_partition_list_t *txn_offsets(kb_aggregator_t *ag) {
        rd_kafka_topic_partition_list_t *offs =
            rd_kafka_topic_partition_list_new(ag->ag_part_cnt + 1);
        int32_t p;
        for (p = 0; p < ag->ag_part_cnt; p++) {
                kb_agpart_t *ap = &ag->ag_parts[p];
                if (ap->ap_assigned && ap->ap_next >= 0 &&
                    ap->ap_next != ap->ap_sent)
                        rd_kafka_topic_partition_list_add(offs, ag->ag_results,
                                                          p)
                            ->offset = ap->ap_next;
        }
        return offs;
}

/* Produces the dirty batches' records (tombstones for retired ones) and
 * their encoded events into the open transaction. -1: the transaction must
 * be aborted. */
static int txn_produce_dirty(kb_aggregator_t *ag, int *events, int *records) {
        kb_batch_t *bt;
        TAILQ_FOREACH(bt, &ag->ag_dirty, bt_dlink) {
                size_t len;
                char *v;
                if (bt->bt_tombstone) {
                        if (txn_produce(ag, ag->ag_state, bt->bt_partition,
                                        bt->bt_id, NULL, 0))
                                return -1;
                        (*records)++;
                        continue;
                }
                if (bt->bt_ev) {
                        v = bt->bt_ev;
                        bt->bt_ev = NULL; /* taken by txn_produce */
                        if (txn_produce(ag, ag->ag_batches,
                                        RD_KAFKA_PARTITION_UA, bt->bt_id, v,
                                        bt->bt_ev_len))
                                return -1;
                        (*events)++;
                }
                if (!(v = kb_bstate_encode(bt->bt_st, &len)) ||
                    txn_produce(ag, ag->ag_state, bt->bt_partition, bt->bt_id,
                                v, len))
                        return -1;
                (*records)++;
        }
        return 0;
}

/* Sends the consumed offsets into the open transaction (retried). */
static txn_res_t txn_send_offsets(kb_aggregator_t *ag,
                                  rd_kafka_topic_partition_list_t *offs) {
        rd_kafka_consumer_group_metadata_t *cgmd;
        txn_res_t r = TXN_OK;
        int tries;
        if (offs->cnt == 0)
                return TXN_OK;
        cgmd = rd_kafka_consumer_group_metadata(ag->ag_consumer);
        for (tries = 0;; tries++) {
                r = txn_classify(ag, "send offsets to transaction",
                                 rd_kafka_send_offsets_to_transaction(
                                     ag->ag_producer, offs, cgmd, -1));
                if (r != TXN_RETRY || tries >= 5)
                        break;
        }
        rd_kafka_consumer_group_metadata_destroy(cgmd);
        return r;
}

/* The fault injection of aggregator.test_txn_fatal_every and
 * aggregator.test_txn_abort_every (tests only). Returns 1 when this
 * transaction is to be aborted on purpose. */
static int txn_test_faults(kb_aggregator_t *ag) {
        int fatal_every = ag->ag_conf->aggregator_test_txn_fatal_every,
            abort_every = ag->ag_conf->aggregator_test_txn_abort_every;
        ag->ag_txn_seq++;
        if (fatal_every && ag->ag_txn_seq % (uint64_t)fatal_every == 0)
                rd_kafka_test_fatal_error(ag->ag_producer,
                                          RD_KAFKA_RESP_ERR_INVALID_TXN_STATE,
                                          "test: aggregator.test_txn_fatal_every");
        if (abort_every && ag->ag_txn_seq % (uint64_t)abort_every == 0) {
                kb_log(KB_LOG_WARN, "aggregator",
                       "test: aborting a transaction on purpose");
                return 1;
        }
        return 0;
}

/* Commits the open transaction (retried). */
static txn_res_t txn_end(kb_aggregator_t *ag) {
        txn_res_t r;
        int tries;
        for (tries = 0;; tries++) {
                r = txn_classify(ag, "commit transaction",
                                 rd_kafka_commit_transaction(ag->ag_producer,
                                                             -1));
                if (r != TXN_RETRY || tries >= 5)
                        break;
        }
        return r;
}

/* After a commit: the offsets count as sent, retired batches go, the
 * events published are counted and logged. */
static void txn_committed(kb_aggregator_t *ag,
                          const rd_kafka_topic_partition_list_t *offs,
                          int64_t t0, int events, int records) {
        kb_batch_t *bt, *tmp;
        int64_t ms = kb_now_ms() - t0;
        char ev[16], rec[16], lat[24];
        const char *kv[] = {"events", ev, "records", rec, "latency_ms", lat,
                            NULL};
        int p;

        ag->ag_txn_begun_at = 0;
        ag->ag_commits++;
        ag->ag_commit_ms_sum += ms;
        if (ms > ag->ag_commit_ms_max)
                ag->ag_commit_ms_max = ms;
        for (p = 0; p < offs->cnt; p++) {
                kb_agpart_t *ap = part_get(ag, offs->elems[p].partition, 0);
                if (ap)
                        ap->ap_sent = offs->elems[p].offset;
        }
        TAILQ_FOREACH_SAFE(bt, &ag->ag_dirty, bt_dlink, tmp) {
                TAILQ_REMOVE(&ag->ag_dirty, bt, bt_dlink);
                bt->bt_dirty = 0;
                if (bt->bt_tombstone) {
                        const char *bkv[] = {"batch_id", bt->bt_id, NULL};
                        kb_logkv(KB_LOG_INFO, "aggregator", bkv,
                                 "batch state retired");
                        tbl_unlink(&ag->ag_table, bt);
                        batch_free(bt);
                        continue;
                }
                if (bt->bt_event_due && kb_bstate_complete(bt->bt_st)) {
                        ag->ag_events++;
                        kb_metrics_inc(bt->bt_st->bs_revision <= 1
                                           ? KB_M_BATCHES_COMPLETED
                                           : KB_M_BATCHES_UPDATED,
                                       kb_batch_status_str(
                                           kb_bstate_status(bt->bt_st)),
                                       NULL);
                        log_event(bt->bt_st);
                }
                bt->bt_event_due = 0;
        }
        snprintf(ev, sizeof(ev), "%d", events);
        snprintf(rec, sizeof(rec), "%d", records);
        snprintf(lat, sizeof(lat), "%lld", (long long)ms);
        kb_logkv(events ? KB_LOG_INFO : KB_LOG_DEBUG, "aggregator", kv,
                 "transaction committed");
}

/* Aborts the open transaction (retried). TXN_ABORT: the caller rewinds;
 * TXN_FATAL when the abort did not succeed (the producer is recreated). */
static txn_res_t txn_abort(kb_aggregator_t *ag) {
        txn_res_t r;
        int tries;
        events_forget(ag);
        ag->ag_aborts++;
        kb_log(KB_LOG_WARN, "aggregator",
               "aborting the transaction; rewinding to the last commit");
        for (tries = 0;; tries++) {
                r = txn_classify(ag, "abort transaction",
                                 rd_kafka_abort_transaction(ag->ag_producer,
                                                            -1));
                if (r != TXN_RETRY || tries >= 5)
                        break;
        }
        if (r != TXN_OK) {
                set_recover(ag, "abort transaction", "did not succeed",
                            RD_KAFKA_RESP_ERR_NO_ERROR);
                return TXN_FATAL;
        }
        ag->ag_txn_begun_at = 0;
        return TXN_ABORT;
}

/* Commits one transaction with the dirty batches' records, their due
 * events and the consumed offsets. Returns TXN_OK (also when there was
 * nothing to commit), TXN_RETRY (could not begin: nothing changed, try
 * later), TXN_ABORT (aborted: the caller must rewind and restore) or
 * TXN_FATAL. */
static txn_res_t txn_commit(kb_aggregator_t *ag) {
        rd_kafka_topic_partition_list_t *offs;
        txn_res_t r;
        int events = 0, records = 0;
        int64_t t0;

        if (ag->ag_fatal || !ag->ag_txn_ready)
                return TXN_FATAL;
        offs = txn_offsets(ag);
        if (TAILQ_EMPTY(&ag->ag_dirty) && offs->cnt == 0) {
                rd_kafka_topic_partition_list_destroy(offs);
                return TXN_OK;
        }
        t0 = kb_now_ms();
        if ((r = events_encode(ag)) != TXN_OK) {
                rd_kafka_topic_partition_list_destroy(offs);
                return r;
        }
        if ((r = txn_classify(ag, "begin transaction",
                              rd_kafka_begin_transaction(ag->ag_producer))) !=
            TXN_OK) {
                /* Nothing was sent: a non-fatal error is tried again at the
                 * next interval. */
                events_forget(ag);
                rd_kafka_topic_partition_list_destroy(offs);
                return r == TXN_FATAL ? TXN_FATAL : TXN_RETRY;
        }
        ag->ag_txn_begun_at = t0;
        if (txn_produce_dirty(ag, &events, &records) < 0)
                r = TXN_ABORT;
        else if ((r = txn_send_offsets(ag, offs)) == TXN_OK)
                r = txn_test_faults(ag) ? TXN_ABORT : txn_end(ag);
        if (r == TXN_OK)
                txn_committed(ag, offs, t0, events, records);
        rd_kafka_topic_partition_list_destroy(offs);
        if (r == TXN_OK)
                return TXN_OK;
        if (r == TXN_FATAL) {
                events_forget(ag);
                return TXN_FATAL;
        }
        return txn_abort(ag);
}

/* After an aborted transaction: forget the in-memory state, restore it from
 * batch-state and seek the consumer back to the committed offsets (what
 * examples/transactions.c calls rewind). */
static void rewind_all(kb_aggregator_t *ag) {
        rd_kafka_topic_partition_list_t *l;
        rd_kafka_error_t *e;
        rd_kafka_resp_err_t err;
        int32_t *ps, p;
        int n = 0, i;

        if (!(ps = calloc((size_t)ag->ag_part_cnt + 1, sizeof(*ps)))) {
                set_fatal(ag, "rewind", "out of memory");
                return;
        }
        /* Nothing is committed until the state and positions are back. */
        for (p = 0; p < ag->ag_part_cnt; p++)
                if (ag->ag_parts[p].ap_assigned) {
                        ps[n++] = p;
                        ag->ag_parts[p].ap_next = ag->ag_parts[p].ap_sent = -1;
                }
        drop_partition(ag, -1);
        if (restore(ag, ps, n) < 0) {
                for (i = 0; i < n; i++)
                        ag->ag_parts[ps[i]].ap_assigned = 0;
                free(ps);
                return;
        }
        l = rd_kafka_topic_partition_list_new(n + 1);
        for (i = 0; i < n; i++)
                rd_kafka_topic_partition_list_add(l, ag->ag_results, ps[i]);
        free(ps);
        if (n > 0) {
                err = rd_kafka_committed(ag->ag_consumer, l, 30000);
                if (err) {
                        /* The broker is not quite back (NOT_COORDINATOR
                         * right after an outage): again in a second. */
                        kb_log(KB_LOG_WARN, "aggregator",
                               "rewind: committed offsets: %s (retrying)",
                               rd_kafka_err2str(err));
                        ag->ag_recover = 1;
                        rd_kafka_topic_partition_list_destroy(l);
                        return;
                }
                for (i = 0; i < l->cnt; i++) {
                        rd_kafka_topic_partition_t *tp = &l->elems[i];
                        kb_agpart_t *ap = part_get(ag, tp->partition, 0);
                        int64_t off = tp->offset >= 0 ? tp->offset : -1;
                        if (ap) {
                                ap->ap_next = ap->ap_sent = off;
                                ap->ap_at_eof = 0;
                        }
                        tp->offset = off >= 0 ? off : RD_KAFKA_OFFSET_BEGINNING;
                }
                if ((e = rd_kafka_seek_partitions(ag->ag_consumer, l, 30000))) {
                        set_fatal(ag, "rewind: seek", rd_kafka_error_string(e));
                        rd_kafka_error_destroy(e);
                } else {
                        for (i = 0; i < l->cnt; i++)
                                if (l->elems[i].err)
                                        set_fatal(ag, "rewind: seek",
                                                  rd_kafka_err2str(
                                                      l->elems[i].err));
                }
        }
        rd_kafka_topic_partition_list_destroy(l);
        kb_log(KB_LOG_INFO, "aggregator", "rewound %d partitions", n);
}

/* ---- rebalances ---- */

static void on_assign(kb_aggregator_t *ag,
                      rd_kafka_topic_partition_list_t *parts) {
        int32_t *ps = calloc((size_t)parts->cnt + 1, sizeof(*ps));
        rd_kafka_resp_err_t err;
        int i;

        if (!ps) {
                set_fatal(ag, "assign", "out of memory");
                rd_kafka_assign(ag->ag_consumer, NULL);
                return;
        }
        for (i = 0; i < parts->cnt; i++) {
                kb_agpart_t *ap = part_get(ag, parts->elems[i].partition, 1);
                ps[i] = parts->elems[i].partition;
                drop_partition(ag, ps[i]);
                if (ap) {
                        ap->ap_assigned = 1;
                        ap->ap_at_eof = 0;
                        ap->ap_resume_at = 0;
                        ap->ap_next = ap->ap_sent = -1;
                }
        }
        /* State first (it waits for what a previous owner left open), then
         * the offsets committed with it. */
        if (restore(ag, ps, parts->cnt) < 0) {
                for (i = 0; i < parts->cnt; i++) {
                        kb_agpart_t *ap = part_get(ag, ps[i], 0);
                        if (ap)
                                ap->ap_assigned = 0;
                }
                free(ps);
                rd_kafka_assign(ag->ag_consumer, NULL);
                return;
        }
        free(ps);
        err = rd_kafka_committed(ag->ag_consumer, parts, 30000);
        if (err)
                /* Safe, only slower: re-reading from the beginning counts
                 * nothing twice (the 2-bit map). */
                kb_log(KB_LOG_WARN, "aggregator",
                       "fetching committed offsets failed: %s; starting from "
                       "the beginning",
                       rd_kafka_err2str(err));
        for (i = 0; i < parts->cnt; i++) {
                rd_kafka_topic_partition_t *tp = &parts->elems[i];
                kb_agpart_t *ap = part_get(ag, tp->partition, 0);
                if (err || tp->offset < 0)
                        tp->offset = RD_KAFKA_OFFSET_BEGINNING;
                else if (ap)
                        ap->ap_next = ap->ap_sent = tp->offset;
                kb_log(KB_LOG_INFO, "aggregator", "assigned %s[%d] at %s%lld",
                       tp->topic, (int)tp->partition,
                       tp->offset < 0 ? "the beginning " : "offset ",
                       (long long)(tp->offset < 0 ? 0 : tp->offset));
        }
        err = rd_kafka_assign(ag->ag_consumer, parts);
        if (err)
                set_fatal(ag, "assign", rd_kafka_err2str(err));
        else /* a partition held before a rebalance may still be paused */
                rd_kafka_resume_partitions(ag->ag_consumer, parts);
        ag->ag_assigned_once = 1;
}

static void on_revoke(kb_aggregator_t *ag,
                      rd_kafka_topic_partition_list_t *parts, int lost) {
        int i;
        /* Hand over what is done; on failure the next owner restores the
         * last commit and replays. */
        if (!lost && !ag->ag_fatal && ag->ag_txn_ready && !ag->ag_recover)
                txn_commit(ag);
        for (i = 0; i < parts->cnt; i++) {
                kb_agpart_t *ap = part_get(ag, parts->elems[i].partition, 0);
                drop_partition(ag, parts->elems[i].partition);
                if (ap) {
                        ap->ap_assigned = 0;
                        ap->ap_at_eof = 0;
                        ap->ap_resume_at = 0;
                        ap->ap_next = ap->ap_sent = -1;
                }
                kb_log(KB_LOG_INFO, "aggregator", "%s %s[%d]",
                       lost ? "lost" : "revoked", parts->elems[i].topic,
                       (int)parts->elems[i].partition);
        }
        rd_kafka_assign(ag->ag_consumer, NULL);
}

static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque) {
        kb_aggregator_t *ag = opaque;
        if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS)
                on_assign(ag, parts);
        else if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS)
                on_revoke(ag, parts, rd_kafka_assignment_lost(rk));
        else {
                kb_log(KB_LOG_ERROR, "aggregator", "rebalance error: %s",
                       rd_kafka_err2str(err));
                on_revoke(ag, parts, 1);
        }
}

/* A fatal Kafka error (kb_role_error_cb): the transactional producer is
 * recreated, any other client's ends the process. */
static void fatal_error(void *self, rd_kafka_t *rk, rd_kafka_resp_err_t ferr,
                        const char *msg) {
        kb_aggregator_t *ag = self;
        if (rk == ag->ag_producer)
                set_recover(ag, rd_kafka_name(rk), msg, ferr);
        else
                set_fatal(ag, rd_kafka_name(rk), msg);
}

_Static_assert(offsetof(struct kb_aggregator_s, ag_role) == 0,
               "the role's clients' opaque is the kb_aggregator_t");

static const kb_role_ops_t aggregator_ops = {.ro_fatal_error = fatal_error};

/* ---- consuming ---- */

/* The writer schema of an Avro result is not available yet: go back to the
 * message and pause its partition for a moment (serving rebalances all
 * along). */
static void hold_partition(kb_aggregator_t *ag, kb_agpart_t *ap,
                           const rd_kafka_message_t *m) {
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
        rd_kafka_error_t *e;
        rd_kafka_topic_partition_list_add(l, ag->ag_results, m->partition)
            ->offset = m->offset;
        rd_kafka_pause_partitions(ag->ag_consumer, l);
        if ((e = rd_kafka_seek_partitions(ag->ag_consumer, l, 0))) {
                kb_log(KB_LOG_WARN, "aggregator", "seek: %s",
                       rd_kafka_error_string(e));
                rd_kafka_error_destroy(e);
        }
        rd_kafka_topic_partition_list_destroy(l);
        ap->ap_resume_at = kb_now_ms() + 200;
        kb_log(KB_LOG_DEBUG, "aggregator",
               "%s[%d]@%lld: writer schema not available yet, holding",
               ag->ag_results, (int)m->partition, (long long)m->offset);
}

/* Resumes the partitions held by hold_partition whose time came. */
static int resume_held(kb_aggregator_t *ag, int64_t now) {
        int32_t p;
        int wait = 1000;
        for (p = 0; p < ag->ag_part_cnt; p++) {
                kb_agpart_t *ap = &ag->ag_parts[p];
                rd_kafka_topic_partition_list_t *l;
                if (!ap->ap_resume_at)
                        continue;
                if (!ap->ap_assigned) {
                        ap->ap_resume_at = 0;
                        continue;
                }
                if (ap->ap_resume_at > now) {
                        if (ap->ap_resume_at - now < wait)
                                wait = (int)(ap->ap_resume_at - now);
                        continue;
                }
                l = rd_kafka_topic_partition_list_new(1);
                rd_kafka_topic_partition_list_add(l, ag->ag_results, p);
                rd_kafka_resume_partitions(ag->ag_consumer, l);
                rd_kafka_topic_partition_list_destroy(l);
                ap->ap_resume_at = 0;
        }
        return wait;
}

static void handle_result(kb_aggregator_t *ag, rd_kafka_message_t *m) {
        kb_agpart_t *ap = part_get(ag, m->partition, 0);
        kb_bresult_t br;
        kb_batch_t *bt;
        kb_apply_res_t r;
        char errstr[256], key[KB_BATCH_ID_MAX + 1], idx[24];
        json_t *o;

        if (m->err) {
                if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                        if (ap && ap->ap_assigned)
                                ap->ap_at_eof = 1;
                } else
                        kb_log(KB_LOG_WARN, "aggregator", "consumer: %s",
                               rd_kafka_message_errstr(m));
                return;
        }
        if (!ap || !ap->ap_assigned || ap->ap_resume_at)
                return;
        if (ag->ag_results_avro) {
                kb_serde_res_t sr = kb_serde_decode(
                    ag->ag_serde, ag->ag_results, KB_MSG_ITEM_RESULT,
                    m->payload, m->len, &o, errstr, sizeof(errstr));
                if (sr == KB_SERDE_RETRY) {
                        hold_partition(ag, ap, m);
                        return;
                }
                if (sr != KB_SERDE_OK)
                        o = NULL;
                else
                        kb_bresult_from_json(o, &br);
        } else
                o = kb_bresult_decode(m->payload, m->len, &br, errstr,
                                      sizeof(errstr));
        ap->ap_next = m->offset + 1;
        ap->ap_at_eof = 0;
        ag->ag_results_cnt++;
        if (!o) {
                kb_log(KB_LOG_WARN, "aggregator",
                       "%s[%d]@%lld: unreadable result ignored: %s",
                       ag->ag_results, (int)m->partition, (long long)m->offset,
                       errstr);
                ag->ag_rejected++;
                return;
        }
        if (!br.br_batch_id && m->key_len > 0 && m->key_len <= KB_BATCH_ID_MAX) {
                memcpy(key, m->key, m->key_len);
                key[m->key_len] = '\0';
                if (kb_codec_batch_id_valid(key))
                        br.br_batch_id = key;
        }
        snprintf(idx, sizeof(idx), "%lld", (long long)br.br_item_index);
        if (!br.br_batch_id) {
                kb_log(KB_LOG_WARN, "aggregator",
                       "%s[%d]@%lld: result without a usable batch_id ignored",
                       ag->ag_results, (int)m->partition,
                       (long long)m->offset);
                ag->ag_rejected++;
                json_decref(o);
                return;
        }
        if (!(bt = tbl_find(&ag->ag_table, br.br_batch_id))) {
                kb_bstate_t *bs = kb_bstate_new(br.br_batch_id,
                                                br.br_items_total);
                if (!bs || !(bt = batch_new(br.br_batch_id, m->partition))) {
                        const char *kv[] = {"batch_id", br.br_batch_id,
                                            "item_index", idx, NULL};
                        kb_logkv(KB_LOG_WARN, "aggregator", kv,
                                 "result ignored: items_total %lld cannot "
                                 "start a batch",
                                 (long long)br.br_items_total);
                        kb_bstate_destroy(bs);
                        ag->ag_rejected++;
                        json_decref(o);
                        return;
                }
                bt->bt_st = bs;
                tbl_insert(&ag->ag_table, bt);
        }
        r = kb_bstate_apply(bt->bt_st, &br, kb_wall_ms());
        switch (r) {
        case KB_APPLY_DUPLICATE:
                ag->ag_dups++;
                break;
        case KB_APPLY_IGNORED: {
                const char *kv[] = {"batch_id", br.br_batch_id, "item_index",
                                    idx, NULL};
                kb_logkv(KB_LOG_WARN, "aggregator", kv,
                         "inconsistent result ignored: more than %d "
                         "out-of-range item indexes",
                         KB_BATCH_EXTRA_MAX);
                ag->ag_rejected++;
                break;
        }
        case KB_APPLY_INVALID: {
                const char *kv[] = {"batch_id", br.br_batch_id, "item_index",
                                    idx, NULL};
                kb_logkv(KB_LOG_WARN, "aggregator", kv,
                         "inconsistent result counted as an invalid_item "
                         "failure (items_total %lld, the batch has %lld)",
                         (long long)br.br_items_total,
                         (long long)bt->bt_st->bs_items_total);
                ag->ag_invalid++;
        }
                /* fall through */
        case KB_APPLY_COUNTED:
        case KB_APPLY_REPLAYED:
                ag->ag_counted++;
                bt->bt_tombstone = 0;
                batch_dirty(ag, bt);
                if (kb_bstate_complete(bt->bt_st))
                        bt->bt_event_due = 1;
                if (r == KB_APPLY_REPLAYED) {
                        const char *kv[] = {"batch_id", br.br_batch_id,
                                            "item_index", idx, NULL};
                        kb_logkv(KB_LOG_INFO, "aggregator", kv,
                                 "replayed item succeeded");
                }
                break;
        }
        json_decref(o);
}

/* Timers: batches past deadline + grace, and retention. Only partitions
 * consumed to their end decide that results are missing. */
static void cron(kb_aggregator_t *ag) {
        const kb_conf_t *conf = ag->ag_conf;
        int64_t wall = kb_wall_ms();
        kb_batch_t *bt;
        TAILQ_FOREACH(bt, &ag->ag_table.tb_all, bt_all) {
                kb_bstate_t *bs = bt->bt_st;
                kb_agpart_t *ap = part_get(ag, bt->bt_partition, 0);
                int caught_up = ap && ap->ap_assigned && ap->ap_at_eof;
                const char *kv[] = {"batch_id", bt->bt_id, NULL};
                if (bt->bt_tombstone)
                        continue;
                if (!kb_bstate_complete(bs) && bs->bs_deadline && caught_up &&
                    wall > bs->bs_deadline + conf->aggregator_expiry_grace_ms) {
                        int64_t n = kb_bstate_expire_missing(bs, wall);
                        kb_logkv(KB_LOG_INFO, "aggregator", kv,
                                 "deadline passed %lld ms ago: %lld missing "
                                 "items counted as expired",
                                 (long long)(wall - bs->bs_deadline),
                                 (long long)n);
                        bt->bt_event_due = 1;
                        batch_dirty(ag, bt);
                } else if (kb_bstate_complete(bs) && bs->bs_completed_at &&
                           wall > bs->bs_completed_at +
                                      conf->aggregator_retention_ms) {
                        bt->bt_tombstone = 1;
                        batch_dirty(ag, bt);
                } else if (!kb_bstate_complete(bs) && caught_up &&
                           bs->bs_last_result_at &&
                           wall > bs->bs_last_result_at +
                                      conf->aggregator_retention_ms) {
                        kb_logkv(KB_LOG_WARN, "aggregator", kv,
                                 "incomplete batch without results for %lld "
                                 "ms retired (%lld of %lld items)",
                                 (long long)(wall - bs->bs_last_result_at),
                                 (long long)bs->bs_done,
                                 (long long)bs->bs_items_total);
                        bt->bt_tombstone = 1;
                        batch_dirty(ag, bt);
                }
        }
}

/* ---- construction ---- */

static int has_prop(const kb_conf_t *conf, const char *name) {
        size_t i;
        for (i = 0; i < conf->kafka_property_cnt; i++)
                if (!strcmp(conf->kafka_properties[i].k, name))
                        return 1;
        return 0;
}

/* A transactional producer with our transactional.id (not initialized). */
static rd_kafka_t *producer_new(kb_aggregator_t *ag, char *errstr,
                                size_t errstr_size) {
        const kb_conf_t *conf = ag->ag_conf;
        rd_kafka_conf_t *kc;
        char num[32];
        snprintf(num, sizeof(num), "%d", conf->aggregator_transaction_timeout_ms);
        if (!(kc = kb_kafka_conf_new(conf, "aggregator-producer", errstr,
                                     errstr_size)))
                return NULL;
        if (kb_kafka_conf_set(kc, "transactional.id", ag->ag_txn_id, errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "transaction.timeout.ms", num, errstr,
                              errstr_size) ||
            (!has_prop(conf, "compression.type") &&
             kb_kafka_conf_set(kc, "compression.type", "lz4", errstr,
                               errstr_size))) {
                rd_kafka_conf_destroy(kc);
                return NULL;
        }
        rd_kafka_conf_set_error_cb(kc, kb_role_error_cb);
        rd_kafka_conf_set_opaque(kc, ag);
        return kb_kafka_producer_new(conf, kc, errstr, errstr_size);
}

/* Checks that results and batch-state exist and are co-partitioned, and
 * that the batches topic exists. */
static int check_topics(kb_aggregator_t *ag, char *errstr,
                        size_t errstr_size) {
        const char *names[3] = {ag->ag_results, ag->ag_state, ag->ag_batches};
        int cnt[3], i, j, missing;
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_resp_err_t err;
        int64_t until = kb_now_ms() + 10000;

        /* Topics created a moment ago may take a little while to show in
         * every broker's metadata. */
        for (;;) {
                cnt[0] = cnt[1] = cnt[2] = -1;
                err = rd_kafka_metadata(ag->ag_producer, 1, NULL, &md, 30000);
                if (err) {
                        snprintf(errstr, errstr_size, "metadata from %s: %s",
                                 ag->ag_conf->kafka_bootstrap_servers,
                                 rd_kafka_err2str(err));
                        return -1;
                }
                for (i = 0; i < md->topic_cnt; i++)
                        for (j = 0; j < 3; j++)
                                if (!strcmp(md->topics[i].topic, names[j]) &&
                                    !md->topics[i].err)
                                        cnt[j] = md->topics[i].partition_cnt;
                rd_kafka_metadata_destroy(md);
                for (j = 0, missing = 0; j < 3; j++)
                        missing += cnt[j] <= 0;
                if (!missing || kb_now_ms() >= until ||
                    kb_loop_stop_requested)
                        break;
                usleep(200 * 1000);
        }
        for (j = 0; j < 3; j++)
                if (cnt[j] <= 0) {
                        snprintf(errstr, errstr_size,
                                 "topic %s does not exist (kbatch topics "
                                 "create)",
                                 names[j]);
                        return -1;
                }
        if (cnt[0] != cnt[1]) {
                snprintf(errstr, errstr_size,
                         "%s has %d partitions and %s %d: they must be "
                         "co-partitioned (same count)",
                         names[0], cnt[0], names[1], cnt[1]);
                return -1;
        }
        return 0;
}

/* The value formats of the results and batches topics (the events' Avro
 * schema prepared when it is Avro). */
static int formats_setup(kb_aggregator_t *ag, char *errstr,
                         size_t errstr_size) {
        if (!(ag->ag_serde =
                  kb_serde_new(ag->ag_conf, ag->ag_loop, errstr, errstr_size)))
                return -1;
        ag->ag_results_avro =
            kb_serde_format(ag->ag_serde, ag->ag_results) == KB_FORMAT_AVRO;
        ag->ag_events_avro =
            kb_serde_format(ag->ag_serde, ag->ag_batches) == KB_FORMAT_AVRO;
        if (ag->ag_events_avro &&
            kb_serde_prepare(ag->ag_serde, ag->ag_batches, KB_MSG_BATCH_EVENT,
                             errstr, errstr_size) == KB_SERDE_INVALID)
                return -1;
        return 0;
}

/* Initializes transactions, which fences a previous process with our
 * transactional.id and aborts what it left open (so the restore is not held
 * up). Retried for up to a minute while the coordinator is unreachable. */
static int txn_init(kb_aggregator_t *ag, char *errstr, size_t errstr_size) {
        int64_t until = kb_now_ms() + 60000;
        rd_kafka_error_t *e;
        for (;;) {
                e = rd_kafka_init_transactions(ag->ag_producer, 10000);
                if (!e)
                        break;
                if (!rd_kafka_error_is_retriable(e) || kb_now_ms() >= until ||
                    kb_loop_stop_requested) {
                        snprintf(errstr, errstr_size,
                                 "initializing transactions (%s): %s",
                                 ag->ag_txn_id, rd_kafka_error_string(e));
                        rd_kafka_error_destroy(e);
                        return -1;
                }
                kb_log(KB_LOG_WARN, "aggregator",
                       "initializing transactions: %s (retrying)",
                       rd_kafka_error_string(e));
                rd_kafka_error_destroy(e);
        }
        ag->ag_txn_ready = 1;
        return 0;
}

/* The restore consumer: assign only, never commits; connected now rather
 * than in the first restore. */
static int restorer_new(kb_aggregator_t *ag, char *errstr,
                        size_t errstr_size) {
        const kb_conf_t *conf = ag->ag_conf;
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_topic_t *rkt;
        rd_kafka_conf_t *kc;
        char gid[300];

        snprintf(gid, sizeof(gid), "%s.restore", conf->kafka_aggregator_group_id);
        if (!(kc = kb_kafka_conf_new(conf, "aggregator-restore", errstr,
                                     errstr_size)))
                return -1;
        if (kb_kafka_conf_set(kc, "group.id", gid, errstr, errstr_size) ||
            kb_kafka_conf_set(kc, "enable.auto.commit", "false", errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "enable.auto.offset.store", "false", errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "enable.partition.eof", "true", errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "isolation.level", "read_committed", errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "fetch.wait.max.ms", "10", errstr,
                              errstr_size)) {
                rd_kafka_conf_destroy(kc);
                return -1;
        }
        rd_kafka_conf_set_error_cb(kc, kb_role_error_cb);
        rd_kafka_conf_set_opaque(kc, ag);
        if (!(ag->ag_restorer = rd_kafka_new(RD_KAFKA_CONSUMER, kc, errstr,
                                             errstr_size))) {
                rd_kafka_conf_destroy(kc);
                return -1;
        }
        rd_kafka_poll_set_consumer(ag->ag_restorer);
        rkt = rd_kafka_topic_new(ag->ag_restorer, ag->ag_state, NULL);
        if (rkt && !rd_kafka_metadata(ag->ag_restorer, 0, rkt, &md, 10000))
                rd_kafka_metadata_destroy(md);
        if (rkt)
                rd_kafka_topic_destroy(rkt);
        return 0;
}

/* The results consumer: eager range assignment (all state of a partition
 * moves at once), manual offsets (committed by the transactions), events
 * on the loop's wake-up pipe; subscribed. */
static int consumer_new(kb_aggregator_t *ag, char *errstr,
                        size_t errstr_size) {
        const kb_conf_t *conf = ag->ag_conf;
        rd_kafka_topic_partition_list_t *topics;
        rd_kafka_resp_err_t err;
        rd_kafka_conf_t *kc;
        char num[32];
        int wfd;

        snprintf(num, sizeof(num), "%d", conf->worker_queue_max_kbytes);
        if (!(kc = kb_kafka_conf_new(conf, "aggregator-consumer", errstr,
                                     errstr_size)))
                return -1;
        if (kb_kafka_conf_set(kc, "group.id", conf->kafka_aggregator_group_id,
                              errstr, errstr_size) ||
            kb_kafka_conf_set(kc, "enable.auto.commit", "false", errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "enable.auto.offset.store", "false", errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "partition.assignment.strategy", "range",
                              errstr, errstr_size) ||
            kb_kafka_conf_set(kc, "auto.offset.reset", "earliest", errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "isolation.level", "read_committed", errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "enable.partition.eof", "true", errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "queued.max.messages.kbytes", num, errstr,
                              errstr_size)) {
                rd_kafka_conf_destroy(kc);
                return -1;
        }
        rd_kafka_conf_set_rebalance_cb(kc, rebalance_cb);
        rd_kafka_conf_set_error_cb(kc, kb_role_error_cb);
        rd_kafka_conf_set_opaque(kc, ag);
        if (!(ag->ag_consumer = rd_kafka_new(RD_KAFKA_CONSUMER, kc, errstr,
                                             errstr_size))) {
                rd_kafka_conf_destroy(kc);
                return -1;
        }
        rd_kafka_poll_set_consumer(ag->ag_consumer);
        ag->ag_cq = rd_kafka_queue_get_consumer(ag->ag_consumer);
        if ((wfd = kb_loop_wake_pipe(ag->ag_loop)) < 0) {
                snprintf(errstr, errstr_size, "pipe: %s", strerror(errno));
                return -1;
        }
        rd_kafka_queue_io_event_enable(ag->ag_cq, wfd, "a", 1);
        topics = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(topics, ag->ag_results,
                                          RD_KAFKA_PARTITION_UA);
        err = rd_kafka_subscribe(ag->ag_consumer, topics);
        rd_kafka_topic_partition_list_destroy(topics);
        if (err) {
                snprintf(errstr, errstr_size, "subscribe: %s",
                         rd_kafka_err2str(err));
                return -1;
        }
        return 0;
}

kb_aggregator_t *kb_aggregator_new(const kb_conf_t *conf, kb_loop_t *loop,
                                   char *errstr, size_t errstr_size) {
        kb_aggregator_t *ag = calloc(1, sizeof(*ag));

        if (!ag) {
                snprintf(errstr, errstr_size, "out of memory");
                return NULL;
        }
        ag->ag_conf = conf;
        kb_role_init(&ag->ag_role, &aggregator_ops, "aggregator", loop,
                     &ag->ag_fatal);
        ag->ag_loop = loop;
        ag->ag_results = conf->topics_name[KB_TOPIC_RESULTS];
        ag->ag_state = conf->topics_name[KB_TOPIC_BATCH_STATE];
        ag->ag_batches = conf->topics_name[KB_TOPIC_BATCHES];
        TAILQ_INIT(&ag->ag_dirty);
        snprintf(ag->ag_txn_id, sizeof(ag->ag_txn_id), "kbatch-aggregator-%s",
                 kb_conf_instance_id(conf));
        if (tbl_init(&ag->ag_table) < 0) {
                snprintf(errstr, errstr_size, "out of memory");
                goto fail;
        }
        if (formats_setup(ag, errstr, errstr_size) < 0 ||
            !(ag->ag_producer = producer_new(ag, errstr, errstr_size)) ||
            check_topics(ag, errstr, errstr_size) < 0 ||
            txn_init(ag, errstr, errstr_size) < 0 ||
            restorer_new(ag, errstr, errstr_size) < 0 ||
            consumer_new(ag, errstr, errstr_size) < 0)
                goto fail;
        ag->ag_next_commit = kb_now_ms() + conf->aggregator_commit_interval_ms;
        ag->ag_next_cron = kb_now_ms() + 1000;
        kb_log(KB_LOG_INFO, "aggregator",
               "consuming %s in group %s (transactional.id %s)",
               ag->ag_results, conf->kafka_aggregator_group_id, ag->ag_txn_id);
        return ag;
fail:
        kb_aggregator_destroy(ag);
        return NULL;
}

/* In process, instead of exiting: a new transactional producer with the
 * same transactional.id (init_transactions fences the failed one and aborts
 * its open transaction), then the state and positions of the last commit
 * (rewind_all). Meanwhile the consumer is polled (rebalances, the poll
 * interval) and what it returns is dropped: the rewind goes back to the
 * committed offsets. Tried again every second until the broker answers.
 * Returns the time to wait. */
static int producer_recover(kb_aggregator_t *ag, int64_t now) {
        rd_kafka_message_t *m;
        rd_kafka_error_t *e;
        char errstr[512];
        int budget = 20000;

        while (budget-- > 0 && !ag->ag_fatal &&
               (m = rd_kafka_consumer_poll(ag->ag_consumer, 0)))
                rd_kafka_message_destroy(m);
        if (ag->ag_fatal || now < ag->ag_recover_at)
                return ag->ag_fatal ? 1000 : (int)(ag->ag_recover_at - now);
        ag->ag_recover_at = now + 1000;
        if (!ag->ag_txn_ready) {
                if (ag->ag_producer &&
                    rd_kafka_fatal_error(ag->ag_producer, NULL, 0)) {
                        rd_kafka_destroy(ag->ag_producer);
                        ag->ag_producer = NULL;
                }
                if (!ag->ag_producer &&
                    !(ag->ag_producer =
                          producer_new(ag, errstr, sizeof(errstr)))) {
                        kb_log(KB_LOG_WARN, "aggregator", "new producer: %s",
                               errstr);
                        return 1000;
                }
                /* Bounded: the loop serves the other roles too. */
                if ((e = rd_kafka_init_transactions(ag->ag_producer, 5000))) {
                        kb_log(KB_LOG_WARN, "aggregator",
                               "initializing transactions: %s (retrying)",
                               rd_kafka_error_string(e));
                        if (rd_kafka_error_is_fatal(e)) {
                                rd_kafka_destroy(ag->ag_producer);
                                ag->ag_producer = NULL;
                        }
                        rd_kafka_error_destroy(e);
                        return 1000;
                }
                ag->ag_txn_ready = 1;
                ag->ag_txn_begun_at = 0;
                ag->ag_recoveries++;
                kb_log(KB_LOG_INFO, "aggregator",
                       "transactional producer recreated (%s); rewinding",
                       ag->ag_txn_id);
        }
        /* A rewind that cannot finish yet sets ag_recover again. */
        ag->ag_recover = 0;
        rewind_all(ag);
        return 0;
}

int kb_aggregator_serve(kb_aggregator_t *ag, int64_t now) {
        const kb_conf_t *conf = ag->ag_conf;
        int budget = 20000, wait, held_wait;
        rd_kafka_message_t *m;

        if (ag->ag_producer)
                rd_kafka_poll(ag->ag_producer, 0); /* error_cb */
        if (ag->ag_fatal)
                return 1000;
        if (ag->ag_recover)
                return producer_recover(ag, now);
        held_wait = resume_held(ag, now);
        while (budget-- > 0 && !ag->ag_fatal &&
               (m = rd_kafka_consumer_poll(ag->ag_consumer, 0))) {
                handle_result(ag, m);
                rd_kafka_message_destroy(m);
        }
        now = kb_now_ms();
        if (now >= ag->ag_next_cron) {
                cron(ag);
                ag->ag_next_cron = now + 1000;
        }
        if (now >= ag->ag_next_commit && !ag->ag_fatal && !ag->ag_recover) {
                if (txn_commit(ag) == TXN_ABORT)
                        rewind_all(ag);
                now = kb_now_ms();
                ag->ag_next_commit = now + conf->aggregator_commit_interval_ms;
        }
        wait = (int)((ag->ag_next_commit < ag->ag_next_cron ? ag->ag_next_commit
                                                            : ag->ag_next_cron) -
                     now);
        if (held_wait < wait)
                wait = held_wait;
        if (budget < 0)
                wait = 0;
        return wait < 0 ? 0 : wait;
}

void kb_aggregator_shutdown(kb_aggregator_t *ag) {
        if (!ag)
                return;
        if (!ag->ag_fatal && ag->ag_txn_ready && !ag->ag_recover)
                txn_commit(ag);
        /* Leaves the group; the revoke callback commits again (no-op). */
        kb_kafka_consumer_close(ag->ag_consumer, 15000, "aggregator");
        kb_log(KB_LOG_INFO, "aggregator",
               "stopped: %llu results (%llu counted, %llu duplicates, %llu "
               "invalid, %llu ignored), %llu events, %llu transactions "
               "(%llu aborted, commit avg %.1f ms, max %lld ms)",
               (unsigned long long)ag->ag_results_cnt,
               (unsigned long long)ag->ag_counted,
               (unsigned long long)ag->ag_dups,
               (unsigned long long)ag->ag_invalid,
               (unsigned long long)ag->ag_rejected,
               (unsigned long long)ag->ag_events,
               (unsigned long long)ag->ag_commits,
               (unsigned long long)ag->ag_aborts,
               ag->ag_commits ? (double)ag->ag_commit_ms_sum /
                                    (double)ag->ag_commits
                              : 0.0,
               (long long)ag->ag_commit_ms_max);
}

int kb_aggregator_ready(const kb_aggregator_t *ag) {
        return ag->ag_txn_ready && ag->ag_assigned_once;
}

int kb_aggregator_fatal(const kb_aggregator_t *ag) { return ag->ag_fatal; }

void kb_aggregator_destroy(kb_aggregator_t *ag) {
        kb_batch_t *bt, *tmp;
        if (!ag)
                return;
        /* A consumer not closed yet closes in rd_kafka_destroy() and may
         * call the rebalance callback: no transaction from there, and the
         * table stays valid until the clients are gone. */
        ag->ag_txn_ready = 0;
        if (ag->ag_cq)
                rd_kafka_queue_destroy(ag->ag_cq);
        if (ag->ag_consumer)
                kb_kafka_consumer_destroy(ag->ag_consumer);
        if (ag->ag_restorer) {
                rd_kafka_consumer_close(ag->ag_restorer);
                rd_kafka_destroy(ag->ag_restorer);
        }
        if (ag->ag_producer)
                rd_kafka_destroy(ag->ag_producer);
        kb_serde_destroy(ag->ag_serde);
        if (ag->ag_table.tb_buckets) {
                TAILQ_FOREACH_SAFE(bt, &ag->ag_table.tb_all, bt_all, tmp)
                        batch_free(bt);
                free(ag->ag_table.tb_buckets);
        }
        free(ag->ag_parts);
        free(ag);
}
