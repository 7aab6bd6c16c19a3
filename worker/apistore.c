/* apistore: see apistore.h. */
#include "apistore.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bstate.h"
#include "kafka.h"
#include "log.h"
#include "loop.h"

/* The topics the follower reads: the records (file headers and batch
 * records) and the aggregator's state. */
enum { F_RECORDS = 0, F_STATE, F__CNT };
static const kb_topic_t follow_topics[F__CNT] = {KB_TOPIC_API_BATCHES,
                                                 KB_TOPIC_BATCH_STATE};

struct kb_apistore_s {
        const kb_conf_t *st_conf;
        rd_kafka_t *st_prod;
        rd_kafka_t *st_cons; /* the follower */
        rd_kafka_topic_t *st_rkt[KB_TOPIC__CNT]; /* producer's, for murmur2 */
        int32_t st_parts[KB_TOPIC__CNT];         /* partition counts */
        pthread_t st_poll_thr, st_follow_thr;
        int st_threads;
        atomic_int st_stop;
        atomic_int st_ready;
        atomic_int st_fatal;
        pthread_rwlock_t st_lock; /* the three views */
        json_t *st_files;   /* id -> header */
        json_t *st_batches; /* id -> record */
        json_t *st_states;  /* batch id -> state summary */
        json_t *st_idem;    /* idempotency digest -> batch id */
};

/* ---- delivery ---- */

struct kb_apiwait_s {
        pthread_mutex_t aw_lock;
        pthread_cond_t aw_cond;
        int64_t aw_sent, aw_ok, aw_failed;
        int64_t aw_first_offset;
        rd_kafka_resp_err_t aw_err;
};

kb_apiwait_t *kb_apiwait_new(void) {
        kb_apiwait_t *w = calloc(1, sizeof(*w));
        if (!w)
                return NULL;
        pthread_mutex_init(&w->aw_lock, NULL);
        pthread_cond_init(&w->aw_cond, NULL);
        w->aw_first_offset = -1;
        return w;
}

void kb_apiwait_destroy(kb_apiwait_t *w) {
        if (!w)
                return;
        pthread_cond_destroy(&w->aw_cond);
        pthread_mutex_destroy(&w->aw_lock);
        free(w);
}

void kb_apiwait_sent(kb_apiwait_t *w, int64_t n) {
        pthread_mutex_lock(&w->aw_lock);
        w->aw_sent += n;
        pthread_mutex_unlock(&w->aw_lock);
}

int kb_apiwait_wait(kb_apiwait_t *w, int timeout_ms, char *errstr,
                    size_t errstr_size) {
        int64_t until = kb_now_ms() + timeout_ms;
        int ret = 0;
        pthread_mutex_lock(&w->aw_lock);
        while (w->aw_ok + w->aw_failed < w->aw_sent && kb_now_ms() < until) {
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                ts.tv_nsec += 50 * 1000000L;
                if (ts.tv_nsec >= 1000000000L) {
                        ts.tv_sec++;
                        ts.tv_nsec -= 1000000000L;
                }
                pthread_cond_timedwait(&w->aw_cond, &w->aw_lock, &ts);
        }
        if (w->aw_failed) {
                snprintf(errstr, errstr_size, "%lld of %lld messages not "
                         "delivered: %s", (long long)w->aw_failed,
                         (long long)w->aw_sent, rd_kafka_err2str(w->aw_err));
                ret = -1;
        } else if (w->aw_ok < w->aw_sent) {
                snprintf(errstr, errstr_size,
                         "no acknowledgement from Kafka for %lld of %lld "
                         "messages",
                         (long long)(w->aw_sent - w->aw_ok),
                         (long long)w->aw_sent);
                ret = -1;
        }
        pthread_mutex_unlock(&w->aw_lock);
        return ret;
}

int64_t kb_apiwait_first_offset(kb_apiwait_t *w) {
        int64_t o;
        pthread_mutex_lock(&w->aw_lock);
        o = w->aw_first_offset;
        pthread_mutex_unlock(&w->aw_lock);
        return o;
}

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
        kb_apiwait_t *w = m->_private;
        (void)rk;
        (void)opaque;
        if (!w)
                return;
        pthread_mutex_lock(&w->aw_lock);
        if (m->err) {
                w->aw_failed++;
                w->aw_err = m->err;
        } else {
                w->aw_ok++;
                if (w->aw_first_offset < 0 || m->offset < w->aw_first_offset)
                        w->aw_first_offset = m->offset;
        }
        pthread_cond_broadcast(&w->aw_cond);
        pthread_mutex_unlock(&w->aw_lock);
}

static void *poll_main(void *arg) {
        kb_apistore_t *st = arg;
        while (!atomic_load(&st->st_stop))
                rd_kafka_poll(st->st_prod, 100);
        return NULL;
}

/* ---- the in-memory view ---- */

static int api_batch_id(const char *id, size_t len) {
        return (len > 6 && !strncmp(id, "batch_", 6)) ||
               (len > 9 && !strncmp(id, "msgbatch_", 9));
}

/* The summary of an aggregator state record. */
static json_t *state_summary(const kb_bstate_t *bs) {
        return json_pack(
                "{sI sI sI sI sI sI sI sI sI ss}", "items_total",
                (json_int_t)bs->bs_items_total, "done",
                (json_int_t)bs->bs_done, "succeeded",
                (json_int_t)bs->bs_succeeded, "failed",
                (json_int_t)bs->bs_failed, "cancelled",
                (json_int_t)bs->bs_cancelled, "expired",
                (json_int_t)bs->bs_expired, "first_result_at",
                (json_int_t)bs->bs_first_result_at, "last_result_at",
                (json_int_t)bs->bs_last_result_at, "completed_at",
                (json_int_t)bs->bs_completed_at, "status",
                kb_batch_status_str(kb_bstate_status(bs)));
}

/* A batch's state says every item is terminal: the aggregator retires it
 * aggregator.retention_ms later, so the batch record keeps it as "final"
 * (written once, by whichever replica sees it first; the same content if
 * several do). Called by the follower thread, outside the lock. */
static void keep_final(kb_apistore_t *st, const char *id, json_t *summary) {
        json_t *rec = kb_apistore_batch(st, id), *nrec;
        char err[256];
        if (!rec || json_object_get(rec, "final")) {
                json_decref(rec);
                return;
        }
        /* Never changed in place: readers share rec. */
        nrec = json_deep_copy(rec);
        json_object_set_new(nrec, "final", json_deep_copy(summary));
        if (kb_apistore_put(st, KB_TOPIC_API_BATCHES, id, nrec, -1, err,
                            sizeof(err)))
                kb_log(KB_LOG_WARN, "api",
                       "batch %s: cannot keep its final state: %s", id, err);
        json_decref(nrec);
        json_decref(rec);
}

/* Applies one record of topic (F_*) to the view. key: NUL-terminated. */
static void apply(kb_apistore_t *st, int topic, const char *key,
                  const void *val, size_t len) {
        json_t *v = NULL, *map;
        int is_file = !strncmp(key, "file-", 5);
        if (topic == F_STATE) {
                kb_bstate_t *bs;
                char err[256];
                if (!api_batch_id(key, strlen(key)))
                        return;
                if (val && len) {
                        if (!(bs = kb_bstate_decode(val, len, err,
                                                    sizeof(err)))) {
                                kb_log(KB_LOG_WARN, "api",
                                       "skipping the state of batch %s: %s",
                                       key, err);
                                return;
                        }
                        v = state_summary(bs);
                        kb_bstate_destroy(bs);
                        if (v && kb_apistore_ready(st) &&
                            json_integer_value(json_object_get(v, "done")) >=
                                    json_integer_value(json_object_get(
                                            v, "items_total")))
                                keep_final(st, key, v);
                }
        } else if (val && len) {
                json_error_t je;
                v = json_loadb(val, len, 0, &je);
                if (!json_is_object(v)) {
                        kb_log(KB_LOG_WARN, "api",
                               "skipping an unreadable record %s: %s", key,
                               je.text);
                        json_decref(v);
                        return;
                }
        }
        map = topic == F_STATE ? st->st_states
              : is_file        ? st->st_files
                               : st->st_batches;
        pthread_rwlock_wrlock(&st->st_lock);
        if (v) {
                const char *idem =
                        json_string_value(json_object_get(v, "idempotency"));
                if (topic == F_RECORDS && !is_file && idem)
                        json_object_set_new(st->st_idem, idem,
                                            json_string(key));
                json_object_set_new(map, key, v);
        } else
                json_object_del(map, key);
        pthread_rwlock_unlock(&st->st_lock);
}

/* keep_final for every complete batch state read while catching up. */
static void keep_finals(kb_apistore_t *st) {
        json_t *done = json_object(), *v;
        const char *k;
        pthread_rwlock_rdlock(&st->st_lock);
        json_object_foreach(st->st_states, k, v) {
                if (json_integer_value(json_object_get(v, "done")) >=
                            json_integer_value(json_object_get(v,
                                                               "items_total")) &&
                    !json_object_get(json_object_get(st->st_batches, k),
                                     "final"))
                        json_object_set(done, k, v);
        }
        pthread_rwlock_unlock(&st->st_lock);
        json_object_foreach(done, k, v)
                keep_final(st, k, v);
        json_decref(done);
}

static void *follow_main(void *arg) {
        kb_apistore_t *st = arg;
        const char *names[F__CNT] = {
                st->st_conf->topics_name[KB_TOPIC_API_BATCHES],
                st->st_conf->topics_name[KB_TOPIC_BATCH_STATE]};
        int32_t total = st->st_parts[KB_TOPIC_API_BATCHES] +
                        st->st_parts[KB_TOPIC_BATCH_STATE];
        int32_t eofs = 0;
        uint8_t *seen_eof = calloc((size_t)total, 1);
        char key[512];

        while (!atomic_load(&st->st_stop)) {
                rd_kafka_message_t *m = rd_kafka_consumer_poll(st->st_cons,
                                                               200);
                int t, base = 0;
                const char *tn;
                if (!m)
                        continue;
                tn = m->rkt ? rd_kafka_topic_name(m->rkt) : "";
                /* base: the index of the topic's partition 0 in seen_eof */
                for (t = 0; t < F__CNT && strcmp(tn, names[t]); t++)
                        base += st->st_parts[follow_topics[t]];
                if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                        if (t < F__CNT && seen_eof &&
                            !seen_eof[base + m->partition]) {
                                seen_eof[base + m->partition] = 1;
                                if (++eofs == total) {
                                        keep_finals(st);
                                        atomic_store(&st->st_ready, 1);
                                        kb_log(KB_LOG_INFO, "api",
                                               "caught up with the file and "
                                               "batch records and the "
                                               "batch state");
                                }
                        }
                } else if (m->err) {
                        if (kb_kafka_error(st->st_cons, m->err,
                                           rd_kafka_message_errstr(m)))
                                atomic_store(&st->st_fatal, 1);
                        else
                                kb_log(KB_LOG_WARN, "api", "follower: %s",
                                       rd_kafka_message_errstr(m));
                } else if (t < F__CNT && m->key && m->key_len < sizeof(key)) {
                        memcpy(key, m->key, m->key_len);
                        key[m->key_len] = '\0';
                        apply(st, t, key, m->payload, m->len);
                }
                rd_kafka_message_destroy(m);
        }
        free(seen_eof);
        return NULL;
}

/* The partition count of topic t (producer metadata). */
static int32_t partitions_of(kb_apistore_t *st, kb_topic_t t, char *errstr,
                             size_t errstr_size) {
        const struct rd_kafka_metadata *md = NULL;
        const char *name = st->st_conf->topics_name[t];
        int32_t n = -1;
        if (!(st->st_rkt[t] = rd_kafka_topic_new(st->st_prod, name, NULL))) {
                snprintf(errstr, errstr_size, "topic %s: %s", name,
                         rd_kafka_err2str(rd_kafka_last_error()));
                return -1;
        }
        if (kb_kafka_metadata(st->st_prod, 0, st->st_rkt[t], &md, 30000,
                              errstr, errstr_size))
                return -1;
        if (md->topic_cnt < 1 || md->topics[0].err ||
            md->topics[0].partition_cnt < 1)
                snprintf(errstr, errstr_size,
                         "topic %s does not exist (kbatch topics create)",
                         name);
        else
                n = md->topics[0].partition_cnt;
        rd_kafka_metadata_destroy(md);
        return n;
}

kb_apistore_t *kb_apistore_new(const kb_conf_t *conf, char *errstr,
                               size_t errstr_size) {
        kb_apistore_t *st = calloc(1, sizeof(*st));
        rd_kafka_conf_t *kc;
        rd_kafka_topic_partition_list_t *l;
        const kb_topic_t *follow = follow_topics;
        int i, t;
        rd_kafka_resp_err_t err;

        if (!st) {
                snprintf(errstr, errstr_size, "out of memory");
                return NULL;
        }
        st->st_conf = conf;
        pthread_rwlock_init(&st->st_lock, NULL);
        st->st_files = json_object();
        st->st_batches = json_object();
        st->st_states = json_object();
        st->st_idem = json_object();
        if (!(kc = kb_kafka_conf_new(conf, "api", errstr, errstr_size)))
                goto fail;
        rd_kafka_conf_set_dr_msg_cb(kc, dr_cb);
        if (!(st->st_prod = kb_kafka_producer_new(conf, kc, errstr,
                                                  errstr_size)))
                goto fail;
        for (t = 0; t < F__CNT; t++)
                if ((st->st_parts[follow[t]] = partitions_of(
                             st, follow[t], errstr, errstr_size)) < 0)
                        goto fail;
        /* Checked now for a clear error: written by uploads, creates and
         * cancels. */
        if ((st->st_parts[KB_TOPIC_FILES] = partitions_of(
                     st, KB_TOPIC_FILES, errstr, errstr_size)) < 0 ||
            (st->st_parts[KB_TOPIC_ITEMS] = partitions_of(
                     st, KB_TOPIC_ITEMS, errstr, errstr_size)) < 0 ||
            (st->st_parts[KB_TOPIC_CONTROL] = partitions_of(
                     st, KB_TOPIC_CONTROL, errstr, errstr_size)) < 0)
                goto fail;
        if (!(st->st_cons = kb_kafka_reader_new(conf, "api", "read_committed", errstr,
                                       errstr_size)))
                goto fail;
        l = rd_kafka_topic_partition_list_new(64);
        for (t = 0; t < F__CNT; t++)
                for (i = 0; i < st->st_parts[follow[t]]; i++)
                        rd_kafka_topic_partition_list_add(
                                l, conf->topics_name[follow[t]], i)
                                ->offset = RD_KAFKA_OFFSET_BEGINNING;
        err = rd_kafka_assign(st->st_cons, l);
        rd_kafka_topic_partition_list_destroy(l);
        if (err) {
                snprintf(errstr, errstr_size, "assign: %s",
                         rd_kafka_err2str(err));
                goto fail;
        }
        if (pthread_create(&st->st_poll_thr, NULL, poll_main, st))
                goto fail_thr;
        if (pthread_create(&st->st_follow_thr, NULL, follow_main, st)) {
                atomic_store(&st->st_stop, 1);
                pthread_join(st->st_poll_thr, NULL);
                goto fail_thr;
        }
        st->st_threads = 1;
        return st;
fail_thr:
        snprintf(errstr, errstr_size, "cannot start a thread: %s",
                 strerror(errno));
fail:
        kb_apistore_destroy(st);
        return NULL;
}

void kb_apistore_destroy(kb_apistore_t *st) {
        int t;
        if (!st)
                return;
        atomic_store(&st->st_stop, 1);
        if (st->st_threads) {
                pthread_join(st->st_follow_thr, NULL);
                pthread_join(st->st_poll_thr, NULL);
        }
        if (st->st_cons) {
                rd_kafka_consumer_close(st->st_cons);
                rd_kafka_destroy(st->st_cons);
        }
        for (t = 0; t < KB_TOPIC__CNT; t++)
                if (st->st_rkt[t])
                        rd_kafka_topic_destroy(st->st_rkt[t]);
        if (st->st_prod) {
                rd_kafka_flush(st->st_prod, 10000);
                rd_kafka_destroy(st->st_prod);
        }
        json_decref(st->st_files);
        json_decref(st->st_batches);
        json_decref(st->st_states);
        json_decref(st->st_idem);
        pthread_rwlock_destroy(&st->st_lock);
        free(st);
}

int kb_apistore_ready(kb_apistore_t *st) {
        return atomic_load(&st->st_ready);
}

int kb_apistore_fatal(kb_apistore_t *st) {
        return atomic_load(&st->st_fatal) || kb_kafka_auth_failed(NULL, 0);
}

rd_kafka_t *kb_apistore_producer(kb_apistore_t *st) {
        return st->st_prod;
}

int32_t kb_apistore_partition(kb_apistore_t *st, kb_topic_t t,
                              const char *key) {
        if (!st->st_rkt[t] || st->st_parts[t] < 1)
                return RD_KAFKA_PARTITION_UA;
        return rd_kafka_msg_partitioner_murmur2(st->st_rkt[t], key,
                                                strlen(key), st->st_parts[t],
                                                NULL, NULL);
}

int kb_apistore_put(kb_apistore_t *st, kb_topic_t t, const char *key,
                    json_t *value, int32_t partition, char *errstr,
                    size_t errstr_size) {
        kb_apiwait_t *w = kb_apiwait_new();
        char *buf = value ? json_dumps(value, JSON_COMPACT) : NULL;
        rd_kafka_resp_err_t err;
        int ret = -1;
        if (!w || (value && !buf)) {
                snprintf(errstr, errstr_size, "out of memory");
                goto out;
        }
        err = rd_kafka_producev(
                st->st_prod, RD_KAFKA_V_TOPIC(st->st_conf->topics_name[t]),
                RD_KAFKA_V_PARTITION(partition),
                RD_KAFKA_V_KEY(key, strlen(key)),
                RD_KAFKA_V_VALUE(buf, buf ? strlen(buf) : 0),
                RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                RD_KAFKA_V_OPAQUE(w), RD_KAFKA_V_END);
        if (err) {
                snprintf(errstr, errstr_size, "producing to %s: %s",
                         st->st_conf->topics_name[t], rd_kafka_err2str(err));
                goto out;
        }
        kb_apiwait_sent(w, 1);
        if (kb_apiwait_wait(w, 60000, errstr, errstr_size))
                goto out;
        if (t == KB_TOPIC_API_BATCHES)
                apply(st, F_RECORDS, key, buf, buf ? strlen(buf) : 0);
        ret = 0;
out:
        free(buf);
        kb_apiwait_destroy(w);
        return ret;
}

/* ---- reads ---- */

static json_t *get(kb_apistore_t *st, json_t *map, const char *key) {
        json_t *v;
        pthread_rwlock_rdlock(&st->st_lock);
        v = json_incref(json_object_get(map, key));
        pthread_rwlock_unlock(&st->st_lock);
        return v;
}

json_t *kb_apistore_file(kb_apistore_t *st, const char *id) {
        return get(st, st->st_files, id);
}

json_t *kb_apistore_batch(kb_apistore_t *st, const char *id) {
        return get(st, st->st_batches, id);
}

json_t *kb_apistore_state(kb_apistore_t *st, const char *batch_id) {
        return get(st, st->st_states, batch_id);
}

json_t *kb_apistore_batch_by_idem(kb_apistore_t *st, const char *digest) {
        json_t *id = get(st, st->st_idem, digest), *b = NULL;
        if (json_is_string(id))
                b = kb_apistore_batch(st, json_string_value(id));
        json_decref(id);
        return b;
}

static json_t *list(kb_apistore_t *st, json_t *map, const char *tenant,
                    const char *flavour) {
        json_t *out = json_array(), *v;
        const char *k;
        pthread_rwlock_rdlock(&st->st_lock);
        json_object_foreach(map, k, v) {
                const char *tn = json_string_value(json_object_get(v, "tenant"));
                const char *fl =
                        json_string_value(json_object_get(v, "flavour"));
                if (tenant && (!tn || strcmp(tn, tenant)))
                        continue;
                if (flavour && (!fl || strcmp(fl, flavour)))
                        continue;
                json_array_append(out, v);
        }
        pthread_rwlock_unlock(&st->st_lock);
        return out;
}

json_t *kb_apistore_files(kb_apistore_t *st, const char *tenant) {
        return list(st, st->st_files, tenant, NULL);
}

json_t *kb_apistore_batches(kb_apistore_t *st, const char *tenant,
                            const char *flavour) {
        return list(st, st->st_batches, tenant, flavour);
}

struct kb_apifile_s {
        kb_apistore_t *af_st;
        rd_kafka_t *af_rk;
        char af_id[128];
        char af_prefix[136]; /* "<id>:" */
        size_t af_plen;
        int64_t af_chunks, af_next;
        rd_kafka_message_t *af_msg; /* the chunk handed out last */
};

void kb_apistore_file_close(kb_apifile_t *f) {
        if (!f)
                return;
        if (f->af_msg)
                rd_kafka_message_destroy(f->af_msg);
        if (f->af_rk) {
                rd_kafka_consumer_close(f->af_rk);
                rd_kafka_destroy(f->af_rk);
        }
        free(f);
}

kb_apifile_t *kb_apistore_file_open(kb_apistore_t *st, const json_t *file,
                                    char *errstr, size_t errstr_size) {
        const char *id = json_string_value(json_object_get(file, "id"));
        int32_t part = (int32_t)json_integer_value(
                json_object_get(file, "partition"));
        int64_t first =
                json_integer_value(json_object_get(file, "first_offset"));
        kb_apifile_t *f;
        rd_kafka_topic_partition_list_t *l;
        rd_kafka_resp_err_t err;

        if (!id || strlen(id) >= sizeof(f->af_id)) {
                snprintf(errstr, errstr_size, "a file header without an id");
                return NULL;
        }
        if (!(f = calloc(1, sizeof(*f)))) {
                snprintf(errstr, errstr_size, "out of memory");
                return NULL;
        }
        f->af_st = st;
        snprintf(f->af_id, sizeof(f->af_id), "%s", id);
        f->af_plen = (size_t)snprintf(f->af_prefix, sizeof(f->af_prefix),
                                      "%s:", id);
        f->af_chunks = json_integer_value(json_object_get(file, "chunks"));
        if (f->af_chunks <= 0)
                return f;
        if (!(f->af_rk = kb_kafka_reader_new(st->st_conf, "api-read",
                                             "read_uncommitted", errstr,
                                             errstr_size))) {
                free(f);
                return NULL;
        }
        l = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(
                l, st->st_conf->topics_name[KB_TOPIC_FILES], part)
                ->offset = first;
        err = rd_kafka_assign(f->af_rk, l);
        rd_kafka_topic_partition_list_destroy(l);
        if (err) {
                snprintf(errstr, errstr_size, "assign: %s",
                         rd_kafka_err2str(err));
                kb_apistore_file_close(f);
                return NULL;
        }
        return f;
}

int kb_apistore_file_next(kb_apifile_t *f, const char **buf, size_t *len,
                          char *errstr, size_t errstr_size) {
        int64_t idle_until = kb_now_ms() + 30000;
        if (f->af_msg) {
                rd_kafka_message_destroy(f->af_msg);
                f->af_msg = NULL;
        }
        while (f->af_next < f->af_chunks) {
                rd_kafka_message_t *m = rd_kafka_consumer_poll(f->af_rk, 200);
                char num[24];
                if (atomic_load(&f->af_st->st_stop)) {
                        snprintf(errstr, errstr_size, "shutting down");
                        if (m)
                                rd_kafka_message_destroy(m);
                        return -1;
                }
                if (!m) {
                        if (kb_now_ms() <= idle_until)
                                continue;
                        snprintf(errstr, errstr_size,
                                 "timed out reading file %s", f->af_id);
                        return -1;
                }
                if (m->err) {
                        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
                                snprintf(errstr, errstr_size,
                                         "file %s: chunk %lld of %lld is "
                                         "missing",
                                         f->af_id, (long long)f->af_next,
                                         (long long)f->af_chunks);
                        else
                                snprintf(errstr, errstr_size,
                                         "reading file %s: %s", f->af_id,
                                         rd_kafka_message_errstr(m));
                        rd_kafka_message_destroy(m);
                        return -1;
                }
                idle_until = kb_now_ms() + 30000;
                /* Chunks of other files share the partition. */
                if (m->payload && m->key_len > f->af_plen &&
                    m->key_len - f->af_plen < sizeof(num) &&
                    !memcmp(m->key, f->af_prefix, f->af_plen)) {
                        memcpy(num, (const char *)m->key + f->af_plen,
                               m->key_len - f->af_plen);
                        num[m->key_len - f->af_plen] = '\0';
                        if (strtoll(num, NULL, 10) == f->af_next) {
                                f->af_next++;
                                f->af_msg = m;
                                *buf = m->payload;
                                *len = m->len;
                                return 1;
                        }
                }
                rd_kafka_message_destroy(m);
        }
        return 0;
}

int kb_apistore_file_read(kb_apistore_t *st, const json_t *file,
                          kb_apistore_chunk_cb_t cb, void *opaque,
                          char *errstr, size_t errstr_size) {
        kb_apifile_t *f = kb_apistore_file_open(st, file, errstr, errstr_size);
        const char *buf;
        size_t len;
        int r;
        if (!f)
                return -1;
        while ((r = kb_apistore_file_next(f, &buf, &len, errstr,
                                          errstr_size)) > 0)
                if ((r = cb(opaque, buf, len))) {
                        snprintf(errstr, errstr_size,
                                 "could not process file %s", f->af_id);
                        break;
                }
        kb_apistore_file_close(f);
        return r;
}
