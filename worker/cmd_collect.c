/* kbatch collect BATCH_ID [-o OUT] [--errors FILE] [--format F] [--no-wait]
 * [--timeout D]: waits for a batch and writes its results (SPEC §9).
 *
 * Reading little: a batch's results share one partition of the results
 * topic (keyed by batch_id, murmur2), and its batch events one partition of
 * the batches topic. Both are read from the offset of a timestamp: the
 * batch's first_result_at (from its aggregator state in kbatch.batch-state,
 * kb_bstate_read)
 * minus --lookback (default 1 minute, for clock skew and open
 * transactions), or now minus --lookback when the aggregator does not know
 * the batch yet. Results of other batches are skipped by key without
 * decoding. When a batch event shows an earlier first result than the
 * start, the results partition is read again from there.
 *
 * The batch is complete when every item has a result, or when its batch
 * event was read and the results partition has been read up to its end as
 * of the event (items the aggregator ended without a result, e.g. expired,
 * have no line). One result per item: the first, except that a later
 * success replaces a failure (a replayed item). Successes are written as
 * they come; the other results when the batch is complete. Files are
 * written under a temporary name and renamed at the end. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bstate.h"
#include "batchfile.h"
#include "cmd.h"
#include "codec.h"
#include "conf.h"
#include "kafka.h"
#include "log.h"
#include "loop.h"
#include "serde.h"

#define LOOKBACK_DEFAULT_MS 60000

static void usage(FILE *out) {
        fprintf(out,
                "usage: kbatch collect BATCH_ID [-c FILE] [-o OUT] [--errors "
                "FILE]\n"
                "                      [--format openai|anthropic|native] "
                "[--no-wait]\n"
                "                      [--timeout D] [--lookback D] [-v] "
                "[-q]\n"
                "  Waits for the batch to complete and writes one line per "
                "item: OpenAI\n"
                "  Batch output lines {id, custom_id, response{status_code, "
                "request_id,\n"
                "  body}, error{code, message}} by default. Successes go to "
                "OUT, the\n"
                "  other items to --errors FILE (to OUT too when it is not "
                "given).\n"
                "  -c, --config FILE  configuration (default: "
                "$KBATCH_CONFIG, else\n"
                "                     ./worker.conf, else built-in)\n"
                "  -o, --output OUT   output file (default: standard "
                "output)\n"
                "  --errors FILE      the items that did not succeed\n"
                "  --format F         openai (default), anthropic (Message "
                "Batches\n"
                "                     results) or native (the ItemResults)\n"
                "  --no-wait          write what there is now; exit 1 when "
                "the batch\n"
                "                     is not complete\n"
                "  --timeout D        give up after D (90s, 30m, 24h): exit "
                "1, no files\n"
                "  --lookback D       start reading this long before the "
                "batch's first\n"
                "                     result (default 1m; clock skew "
                "between hosts)\n"
                "  -v, --verbose      how much was read, on stderr\n"
                "  -q, --quiet        no progress and no summary on stderr\n"
                "Exit codes: 0 complete and written, 1 runtime failure, "
                "timeout or\n"
                "incomplete (--no-wait), 2 usage or configuration error.\n");
}

typedef struct {
        const char *co_id;
        const char *co_conf;
        const char *co_out;    /* NULL or "-": stdout */
        const char *co_errors; /* NULL: with the output */
        kb_bf_out_t co_format;
        int co_no_wait;
        int co_verbose;
        int co_quiet;
        int64_t co_timeout_ms; /* 0: none */
        int64_t co_lookback_ms;
        FILE *co_fp_out;       /* kb_cmd_collect_to: the streams given */
        FILE *co_fp_err;
        char *co_errbuf;       /* ... and the error, instead of stderr */
        size_t co_errbuf_size;
} collect_opts_t;

static volatile sig_atomic_t interrupted;

static void on_signal(int sig) {
        (void)sig;
        interrupted = 1;
}

/* ---- the collection ---- */

/* An output file written under a temporary name (or stdout, or a path
 * that is not a regular file, such as /dev/null or a FIFO, written as it
 * is: renaming a file onto a device would replace the device). */
typedef struct {
        const char *of_path; /* NULL: stdout */
        char *of_tmp;        /* owned */
        FILE *of_fp;
        int of_direct;       /* of_path opened as it is */
} outfile_t;

static int outfile_open(outfile_t *of, const char *path, char *errstr,
                        size_t errstr_size) {
        memset(of, 0, sizeof(*of));
        if (!path || !strcmp(path, "-")) {
                of->of_path = NULL;
                of->of_fp = stdout;
                return 0;
        }
        of->of_path = path;
        {
                struct stat st;
                if (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
                        if (!(of->of_fp = fopen(path, "w"))) {
                                snprintf(errstr, errstr_size,
                                         "cannot open %s: %s", path,
                                         strerror(errno));
                                return -1;
                        }
                        of->of_direct = 1;
                        return 0;
                }
        }
        if (asprintf(&of->of_tmp, "%s.tmp-%d", path, (int)getpid()) < 0) {
                of->of_tmp = NULL;
                snprintf(errstr, errstr_size, "out of memory");
                return -1;
        }
        if (!(of->of_fp = fopen(of->of_tmp, "w"))) {
                snprintf(errstr, errstr_size, "cannot create %s: %s",
                         of->of_tmp, strerror(errno));
                free(of->of_tmp);
                of->of_tmp = NULL;
                return -1;
        }
        return 0;
}

/* Closes; keep: rename to the final name, else remove. 0 or -1 (errstr). */
static int outfile_close(outfile_t *of, int keep, char *errstr,
                         size_t errstr_size) {
        int ret = 0;
        if (!of->of_fp)
                return 0;
        if (of->of_direct) {
                if (fclose(of->of_fp) && keep) {
                        snprintf(errstr, errstr_size, "writing %s: %s",
                                 of->of_path, strerror(errno));
                        ret = -1;
                }
                of->of_fp = NULL;
                return ret;
        }
        if (!of->of_tmp) {
                if (fflush(of->of_fp) || ferror(of->of_fp)) {
                        snprintf(errstr, errstr_size,
                                 "writing standard output: %s",
                                 strerror(errno));
                        ret = -1;
                }
                of->of_fp = NULL;
                return ret;
        }
        if ((fflush(of->of_fp) || ferror(of->of_fp)) && keep) {
                snprintf(errstr, errstr_size, "writing %s: %s", of->of_tmp,
                         strerror(errno));
                ret = -1;
        }
        fclose(of->of_fp);
        of->of_fp = NULL;
        if (keep && !ret && rename(of->of_tmp, of->of_path)) {
                snprintf(errstr, errstr_size, "renaming %s to %s: %s",
                         of->of_tmp, of->of_path, strerror(errno));
                ret = -1;
        }
        if (!keep || ret)
                unlink(of->of_tmp);
        free(of->of_tmp);
        of->of_tmp = NULL;
        return ret;
}

typedef struct {
        const collect_opts_t *cl_opts;
        const kb_conf_t *cl_conf;
        kb_serde_t *cl_serde;
        rd_kafka_t *cl_rk;
        const char *cl_rtopic, *cl_btopic;
        int32_t cl_rpart, cl_bpart;
        kb_bf_collect_t *cl_co; /* once items_total is known */
        int64_t cl_total;       /* 0: not known yet */
        json_t *cl_event;       /* latest batch event, or NULL */
        int64_t cl_event_rev;
        int64_t cl_start_ts;   /* results read from this timestamp */
        int64_t cl_rstart;     /* ... this offset (the first read) */
        int64_t cl_rpos;       /* next results offset, -1: unknown */
        int64_t cl_rend_event; /* results end offset after the event */
        int cl_beof;           /* batches partition at its end */
        int64_t cl_bpos;
        int64_t cl_read; /* results messages read */
        int64_t cl_mine; /* ... of this batch */
        int64_t cl_dups, cl_out_of_range, cl_foreign, cl_undecodable;
        int64_t cl_events_read;
        int64_t cl_seeks;
        outfile_t cl_out, cl_err;
        int cl_split; /* errors go to cl_err */
        int64_t cl_written_ok, cl_written_err;
} collect_t;

static int write_line(collect_t *cl, outfile_t *of, const json_t *result,
                      char *errstr, size_t errstr_size) {
        json_t *line = kb_bf_output_line(cl->cl_opts->co_format, result, NULL);
        int r;
        if (!line) {
                snprintf(errstr, errstr_size, "a result is not an object");
                return -1;
        }
        r = json_dumpf(line, of->of_fp, JSON_COMPACT);
        json_decref(line);
        if (r || fputc('\n', of->of_fp) == EOF) {
                snprintf(errstr, errstr_size, "writing %s: %s",
                         of->of_path ? of->of_path : "standard output",
                         strerror(errno));
                return -1;
        }
        return 0;
}

static int ensure_collector(collect_t *cl, int64_t total, char *errstr,
                            size_t errstr_size) {
        if (cl->cl_co)
                return 0;
        if (!(cl->cl_co = kb_bf_collect_new(total))) {
                snprintf(errstr, errstr_size,
                         "batch %s has items_total %lld (1-%d expected)",
                         cl->cl_opts->co_id, (long long)total, KB_BF_LINES_MAX);
                return -1;
        }
        cl->cl_total = total;
        return 0;
}

/* The offsets of results/batches at timestamp ts: the first message at or
 * after ts, else the end offset as it was before the look-up (a concrete
 * offset: a logical "end" would skip what arrives before the fetch). */
static int offsets_at(collect_t *cl, int64_t ts, int64_t *roff, int64_t *boff,
                      char *errstr, size_t errstr_size) {
        rd_kafka_topic_partition_list_t *l;
        rd_kafka_resp_err_t err;
        int64_t lo, rend, bend;
        int i;
        if ((err = rd_kafka_query_watermark_offsets(cl->cl_rk, cl->cl_rtopic,
                                                    cl->cl_rpart, &lo, &rend,
                                                    30000)) ||
            (err = rd_kafka_query_watermark_offsets(cl->cl_rk, cl->cl_btopic,
                                                    cl->cl_bpart, &lo, &bend,
                                                    30000))) {
                snprintf(errstr, errstr_size, "end offsets: %s",
                         rd_kafka_err2str(err));
                return -1;
        }
        l = rd_kafka_topic_partition_list_new(2);
        rd_kafka_topic_partition_list_add(l, cl->cl_rtopic, cl->cl_rpart)
                ->offset = ts;
        rd_kafka_topic_partition_list_add(l, cl->cl_btopic, cl->cl_bpart)
                ->offset = ts;
        err = rd_kafka_offsets_for_times(cl->cl_rk, l, 30000);
        if (err) {
                snprintf(errstr, errstr_size, "offsets by time: %s",
                         rd_kafka_err2str(err));
                rd_kafka_topic_partition_list_destroy(l);
                return -1;
        }
        for (i = 0; i < l->cnt; i++) {
                if (l->elems[i].err) {
                        snprintf(errstr, errstr_size,
                                 "offsets by time of %s[%d]: %s",
                                 l->elems[i].topic, (int)l->elems[i].partition,
                                 rd_kafka_err2str(l->elems[i].err));
                        rd_kafka_topic_partition_list_destroy(l);
                        return -1;
                }
        }
        *roff = l->elems[0].offset >= 0 ? l->elems[0].offset : rend;
        *boff = l->elems[1].offset >= 0 ? l->elems[1].offset : bend;
        rd_kafka_topic_partition_list_destroy(l);
        return 0;
}

/* A result message of this batch's key. */
static int on_result(collect_t *cl, const rd_kafka_message_t *m, char *errstr,
                     size_t errstr_size) {
        json_t *r = NULL;
        const char *bid;
        char err[512];
        kb_serde_res_t sr;
        sr = kb_serde_decode(cl->cl_serde, cl->cl_rtopic, KB_MSG_ITEM_RESULT,
                             m->payload, m->len, &r, err, sizeof(err));
        if (sr == KB_SERDE_RETRY) {
                snprintf(errstr, errstr_size,
                         "cannot decode a result of %s[%d]@%lld: %s",
                         cl->cl_rtopic, (int)m->partition, (long long)m->offset,
                         err);
                return -1;
        }
        if (sr != KB_SERDE_OK || !json_is_object(r)) {
                cl->cl_undecodable++;
                kb_log(KB_LOG_WARN, "collect",
                       "skipping an undecodable result at %s[%d]@%lld: %s",
                       cl->cl_rtopic, (int)m->partition, (long long)m->offset,
                       sr == KB_SERDE_OK ? "not an object" : err);
                json_decref(r);
                return 0;
        }
        bid = json_string_value(json_object_get(r, "batch_id"));
        if (!bid || strcmp(bid, cl->cl_opts->co_id)) {
                cl->cl_foreign++;
                json_decref(r);
                return 0;
        }
        cl->cl_mine++;
        if (!cl->cl_co) {
                json_t *t = json_object_get(r, "items_total");
                if (!json_is_integer(t) ||
                    ensure_collector(cl, json_integer_value(t), errstr,
                                     errstr_size)) {
                        cl->cl_out_of_range++;
                        json_decref(r);
                        return 0;
                }
        }
        switch (kb_bf_collect_offer(cl->cl_co, r)) {
        case KB_BF_KEEP_FINAL:
                if (write_line(cl, &cl->cl_out, r, errstr, errstr_size)) {
                        json_decref(r);
                        return -1;
                }
                cl->cl_written_ok++;
                break;
        case KB_BF_KEEP_PENDING:
                break;
        case KB_BF_DUPLICATE:
                cl->cl_dups++;
                break;
        case KB_BF_OUT_OF_RANGE:
                cl->cl_out_of_range++;
                break;
        }
        json_decref(r);
        return 0;
}

/* A batch event message of this batch's key. */
static int on_event(collect_t *cl, const rd_kafka_message_t *m, char *errstr,
                    size_t errstr_size) {
        json_t *ev = NULL;
        const char *bid;
        char err[512];
        int64_t rev, first, lo, hi;
        rd_kafka_resp_err_t e;
        if (kb_serde_decode(cl->cl_serde, cl->cl_btopic, KB_MSG_BATCH_EVENT,
                            m->payload, m->len, &ev, err,
                            sizeof(err)) != KB_SERDE_OK ||
            !json_is_object(ev)) {
                kb_log(KB_LOG_WARN, "collect",
                       "skipping an undecodable batch event at %s[%d]@%lld",
                       cl->cl_btopic, (int)m->partition, (long long)m->offset);
                json_decref(ev);
                return 0;
        }
        bid = json_string_value(json_object_get(ev, "batch_id"));
        rev = json_integer_value(json_object_get(ev, "revision"));
        if (!bid || strcmp(bid, cl->cl_opts->co_id) ||
            (cl->cl_event && rev <= cl->cl_event_rev)) {
                json_decref(ev);
                return 0;
        }
        json_decref(cl->cl_event);
        cl->cl_event = ev;
        cl->cl_event_rev = rev;
        if (ensure_collector(
                    cl, json_integer_value(json_object_get(ev, "items_total")),
                    errstr, errstr_size))
                return -1;
        /* Every result the aggregator counted is below the end offset of
         * the results partition now. */
        e = rd_kafka_query_watermark_offsets(cl->cl_rk, cl->cl_rtopic,
                                             cl->cl_rpart, &lo, &hi, 30000);
        if (e) {
                snprintf(errstr, errstr_size, "offsets of %s[%d]: %s",
                         cl->cl_rtopic, (int)cl->cl_rpart, rd_kafka_err2str(e));
                return -1;
        }
        cl->cl_rend_event = hi;
        /* Results older than where we started: read them too. */
        first = json_integer_value(json_object_get(ev, "first_result_at"));
        if (first > 0 &&
            first - cl->cl_opts->co_lookback_ms < cl->cl_start_ts) {
                int64_t roff, boff;
                rd_kafka_topic_partition_list_t *l;
                rd_kafka_error_t *se;
                cl->cl_start_ts = first - cl->cl_opts->co_lookback_ms;
                if (offsets_at(cl, cl->cl_start_ts, &roff, &boff, errstr,
                               errstr_size))
                        return -1;
                if (roff >= 0 && roff < cl->cl_rstart) {
                        l = rd_kafka_topic_partition_list_new(1);
                        rd_kafka_topic_partition_list_add(l, cl->cl_rtopic,
                                                          cl->cl_rpart)
                                ->offset = roff;
                        se = rd_kafka_seek_partitions(cl->cl_rk, l, 30000);
                        rd_kafka_topic_partition_list_destroy(l);
                        if (se) {
                                snprintf(errstr, errstr_size,
                                         "seeking %s[%d]: %s", cl->cl_rtopic,
                                         (int)cl->cl_rpart,
                                         rd_kafka_error_string(se));
                                rd_kafka_error_destroy(se);
                                return -1;
                        }
                        if (cl->cl_opts->co_verbose)
                                fprintf(stderr,
                                        "kbatch collect: the batch's first "
                                        "result is older than the start: "
                                        "reading %s[%d] from offset %lld\n",
                                        cl->cl_rtopic, (int)cl->cl_rpart,
                                        (long long)roff);
                        cl->cl_rpos = roff;
                        cl->cl_rstart = roff;
                        cl->cl_seeks++;
                }
        }
        return 0;
}

static void show_progress(collect_t *cl, kb_cmd_progress_t *pg, int64_t t0) {
        int64_t seen = cl->cl_co ? kb_bf_collect_seen(cl->cl_co) : 0;
        if (!pg->pg_on)
                return;
        if (!cl->cl_total) {
                kb_cmd_progress_show(pg, 0,
                              "collect %s: waiting for the first result "
                              "(%llds)",
                              cl->cl_opts->co_id,
                              (long long)((kb_now_ms() - t0) / 1000));
        } else {
                char prefix[KB_BATCH_ID_MAX + 16];
                snprintf(prefix, sizeof(prefix), "collect %s: ",
                         cl->cl_opts->co_id);
                kb_cmd_progress_bar(pg, 0, prefix, seen, cl->cl_total,
                                    cl->cl_event ? "results, batch complete"
                                                 : "results");
        }
}

/* Reads until the batch is complete (1), or there is nothing more to read
 * now (--no-wait: 0), or -1 (errstr; timeout, interrupted). */
static int collect_read(collect_t *cl, kb_cmd_progress_t *pg, char *errstr,
                        size_t errstr_size) {
        const collect_opts_t *co = cl->cl_opts;
        int64_t t0 = kb_now_ms(),
                deadline = co->co_timeout_ms ? t0 + co->co_timeout_ms : 0;
        int64_t rend0 = -1, bend0 = -1, lo;
        size_t idlen = strlen(co->co_id);
        rd_kafka_resp_err_t e;

        if (co->co_no_wait) {
                /* What is there now. */
                if ((e = rd_kafka_query_watermark_offsets(
                             cl->cl_rk, cl->cl_rtopic, cl->cl_rpart, &lo,
                             &rend0, 30000)) ||
                    (e = rd_kafka_query_watermark_offsets(
                             cl->cl_rk, cl->cl_btopic, cl->cl_bpart, &lo,
                             &bend0, 30000))) {
                        snprintf(errstr, errstr_size, "end offsets: %s",
                                 rd_kafka_err2str(e));
                        return -1;
                }
        }
        for (;;) {
                rd_kafka_message_t *m;
                /* Every item has a result (and the batch event, if it is
                 * already there, was read: for the summary's status). */
                if (cl->cl_co &&
                    kb_bf_collect_seen(cl->cl_co) >= cl->cl_total &&
                    (cl->cl_beof || cl->cl_event))
                        return 1;
                if (cl->cl_event && cl->cl_beof && cl->cl_rpos >= 0 &&
                    cl->cl_rpos >= cl->cl_rend_event)
                        return 1;
                if (co->co_no_wait && cl->cl_rpos >= rend0 &&
                    cl->cl_bpos >= bend0)
                        return 0;
                if (interrupted) {
                        snprintf(errstr, errstr_size, "interrupted");
                        return -1;
                }
                if (deadline && kb_now_ms() > deadline) {
                        kb_cmd_progress_clear(pg);
                        snprintf(errstr, errstr_size,
                                 "timed out after %llds waiting for batch "
                                 "%s (%lld of %lld results)",
                                 (long long)(co->co_timeout_ms / 1000),
                                 co->co_id,
                                 (long long)(cl->cl_co ? kb_bf_collect_seen(
                                                                 cl->cl_co)
                                                       : 0),
                                 (long long)cl->cl_total);
                        return -1;
                }
                show_progress(cl, pg, t0);
                if (!(m = rd_kafka_consumer_poll(cl->cl_rk, 100)))
                        continue;
                if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                        if (m->partition == cl->cl_rpart &&
                            !strcmp(rd_kafka_topic_name(m->rkt), cl->cl_rtopic))
                                cl->cl_rpos = m->offset;
                        else {
                                cl->cl_beof = 1;
                                cl->cl_bpos = m->offset;
                        }
                } else if (m->err) {
                        if (m->err != RD_KAFKA_RESP_ERR__TRANSPORT &&
                            m->err != RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) {
                                snprintf(errstr, errstr_size, "reading: %s",
                                         rd_kafka_message_errstr(m));
                                rd_kafka_message_destroy(m);
                                return -1;
                        }
                } else if (!strcmp(rd_kafka_topic_name(m->rkt),
                                   cl->cl_rtopic)) {
                        cl->cl_read++;
                        cl->cl_rpos = m->offset + 1;
                        if (m->key_len == idlen &&
                            !memcmp(m->key, co->co_id, idlen) &&
                            on_result(cl, m, errstr, errstr_size)) {
                                rd_kafka_message_destroy(m);
                                return -1;
                        }
                } else {
                        cl->cl_events_read++;
                        cl->cl_beof = 0;
                        cl->cl_bpos = m->offset + 1;
                        if (m->key_len == idlen &&
                            !memcmp(m->key, co->co_id, idlen) &&
                            on_event(cl, m, errstr, errstr_size)) {
                                rd_kafka_message_destroy(m);
                                return -1;
                        }
                }
                rd_kafka_message_destroy(m);
        }
}

/* Sets up the reader and the start offsets; then reads. Returns the exit
 * code. */
/* Where the batch's results start: its first_result_at from the
 * aggregator's state (when it knows the batch: the collector is sized by
 * its items_total) minus --lookback, else now minus --lookback; the
 * offsets of that time in the batch's partitions of results and batches
 * are assigned. 0, or -1 with errstr. */
static int collect_start(collect_t *cl, char *errstr, size_t errstr_size) {
        const collect_opts_t *co = cl->cl_opts;
        const kb_conf_t *conf = cl->cl_conf;
        rd_kafka_topic_partition_list_t *l;
        rd_kafka_resp_err_t err;
        kb_bstate_t *bs = NULL;
        int64_t roff, boff, first = 0;
        int32_t rcnt, bcnt;
        int st;

        if (!(cl->cl_serde = kb_serde_new(conf, NULL, errstr, errstr_size)) ||
            !(cl->cl_rk = kb_kafka_reader_new(conf, "collect", "read_committed",
                                              errstr, errstr_size)) ||
            kb_bstate_partition(cl->cl_rk, conf, cl->cl_rtopic, co->co_id, 0,
                                &rcnt, &cl->cl_rpart, errstr, errstr_size) ||
            kb_bstate_partition(cl->cl_rk, conf, cl->cl_btopic, co->co_id, 0,
                                &bcnt, &cl->cl_bpart, errstr, errstr_size))
                return -1;
        if ((st = kb_bstate_read(conf, co->co_id, &bs, errstr, errstr_size)) <
            0)
                return -1;
        if (st > 0) {
                int bad;
                first = bs->bs_first_result_at;
                bad = ensure_collector(cl, bs->bs_items_total, errstr,
                                       errstr_size);
                kb_bstate_destroy(bs);
                if (bad)
                        return -1;
        }
        cl->cl_start_ts =
                (first > 0 ? first : kb_wall_ms()) - co->co_lookback_ms;
        if (offsets_at(cl, cl->cl_start_ts, &roff, &boff, errstr, errstr_size))
                return -1;
        if (co->co_verbose)
                fprintf(stderr,
                        "kbatch collect: batch %s: %s; reading %s[%d] from "
                        "offset %lld and %s[%d] from offset %lld (time "
                        "%lld)\n",
                        co->co_id,
                        st > 0 ? "known to the aggregator"
                               : "not known to the aggregator yet",
                        cl->cl_rtopic, (int)cl->cl_rpart, (long long)roff,
                        cl->cl_btopic, (int)cl->cl_bpart, (long long)boff,
                        (long long)cl->cl_start_ts);
        cl->cl_rstart = roff;
        l = rd_kafka_topic_partition_list_new(2);
        rd_kafka_topic_partition_list_add(l, cl->cl_rtopic, cl->cl_rpart)
                ->offset = roff;
        rd_kafka_topic_partition_list_add(l, cl->cl_btopic, cl->cl_bpart)
                ->offset = boff;
        err = rd_kafka_assign(cl->cl_rk, l);
        rd_kafka_topic_partition_list_destroy(l);
        if (err) {
                snprintf(errstr, errstr_size, "assign: %s",
                         rd_kafka_err2str(err));
                return -1;
        }
        return 0;
}

/* The output streams: the caller's (kb_cmd_collect_to), else -o and
 * --errors (written to temporary files, renamed at the end). 0, or -1 with
 * errstr. */
static int collect_outputs(collect_t *cl, char *errstr, size_t errstr_size) {
        const collect_opts_t *co = cl->cl_opts;
        if (co->co_fp_out) {
                /* Streams of the caller: written as they are. */
                cl->cl_out.of_fp = co->co_fp_out;
                cl->cl_err.of_fp = co->co_fp_err;
                cl->cl_split = 1;
                return 0;
        }
        if (outfile_open(&cl->cl_out, co->co_out, errstr, errstr_size))
                return -1;
        cl->cl_split = co->co_errors != NULL;
        if (cl->cl_split &&
            outfile_open(&cl->cl_err, co->co_errors, errstr, errstr_size))
                return -1;
        return 0;
}

/* Writes the items that did not succeed (to --errors when split). 0, or -1
 * with errstr. */
static int collect_pending(collect_t *cl, char *errstr, size_t errstr_size) {
        int64_t pos = 0;
        json_t *r;
        if (!cl->cl_co)
                return 0;
        while ((r = kb_bf_collect_next_pending(cl->cl_co, &pos))) {
                if (write_line(cl, cl->cl_split ? &cl->cl_err : &cl->cl_out, r,
                               errstr, errstr_size))
                        return -1;
                cl->cl_written_err++;
        }
        return 0;
}

/* The summary on stderr of a complete batch (unless quiet). */
static void collect_summary(const collect_t *cl, int64_t seen) {
        const collect_opts_t *co = cl->cl_opts;
        const char *status =
                cl->cl_event ? json_string_value(
                                       json_object_get(cl->cl_event, "status"))
                             : NULL;
        const char *out = co->co_out && strcmp(co->co_out, "-")
                                  ? co->co_out
                                  : "standard output";
        if (co->co_quiet)
                return;
        fprintf(stderr,
                "kbatch collect: batch %s%s%s%s: %lld succeeded -> %s, %lld "
                "not -> %s\n",
                co->co_id, status ? " (" : "", status ? status : "",
                status ? ")" : "", (long long)cl->cl_written_ok, out,
                (long long)cl->cl_written_err,
                co->co_errors ? co->co_errors : out);
        if (seen < cl->cl_total)
                fprintf(stderr,
                        "kbatch collect: %lld of %lld items have no result "
                        "on %s (ended by the aggregator without one, or past "
                        "the topic's retention)\n",
                        (long long)(cl->cl_total - seen),
                        (long long)cl->cl_total, cl->cl_rtopic);
}

/* After the outputs are complete: st is what collect_read returned (1
 * complete, 0 not). Returns the exit code of collect_run. */
static int collect_report(const collect_t *cl, int st) {
        const collect_opts_t *co = cl->cl_opts;
        int64_t seen = cl->cl_co ? kb_bf_collect_seen(cl->cl_co) : 0;
        if (co->co_verbose)
                fprintf(stderr,
                        "kbatch collect: read %lld messages from %s[%d] "
                        "starting at offset %lld (%lld of batch %s: %lld "
                        "kept, %lld duplicates, %lld out of range); %lld "
                        "from %s[%d]; messages_read=%lld\n",
                        (long long)cl->cl_read, cl->cl_rtopic,
                        (int)cl->cl_rpart, (long long)cl->cl_rstart,
                        (long long)cl->cl_mine, co->co_id, (long long)seen,
                        (long long)cl->cl_dups, (long long)cl->cl_out_of_range,
                        (long long)cl->cl_events_read, cl->cl_btopic,
                        (int)cl->cl_bpart, (long long)cl->cl_read);
        if (st == 0 && co->co_fp_out)
                return 2; /* not complete (kb_cmd_collect_to) */
        if (st == 0) {
                if (!cl->cl_total)
                        fprintf(stderr,
                                "kbatch collect: batch %s is not known: no "
                                "state, no event and no result yet\n",
                                co->co_id);
                else
                        fprintf(stderr,
                                "kbatch collect: batch %s is not complete: "
                                "%lld of %lld results so far%s\n",
                                co->co_id, (long long)seen,
                                (long long)cl->cl_total,
                                seen ? " (written)" : "");
                return 1;
        }
        collect_summary(cl, seen);
        return 0;
}

static int collect_run(collect_t *cl, kb_cmd_progress_t *pg) {
        const collect_opts_t *co = cl->cl_opts;
        const kb_conf_t *conf = cl->cl_conf;
        char errstr[1024];
        int st, kept = 0;

        cl->cl_rtopic = conf->topics_name[KB_TOPIC_RESULTS];
        cl->cl_btopic = conf->topics_name[KB_TOPIC_BATCHES];
        cl->cl_rpos = -1;
        cl->cl_bpos = -1;
        cl->cl_rstart = -1;
        if (collect_start(cl, errstr, sizeof(errstr)) ||
            collect_outputs(cl, errstr, sizeof(errstr)))
                goto fail;
        st = collect_read(cl, pg, errstr, sizeof(errstr));
        kb_cmd_progress_clear(pg);
        if (st < 0 || collect_pending(cl, errstr, sizeof(errstr)))
                goto fail;
        kept = 1;
        if (outfile_close(&cl->cl_out, 1, errstr, sizeof(errstr)) ||
            outfile_close(&cl->cl_err, 1, errstr, sizeof(errstr)))
                goto fail;
        return collect_report(cl, st);
fail:
        kb_cmd_progress_clear(pg);
        if (co->co_errbuf)
                snprintf(co->co_errbuf, co->co_errbuf_size, "%s", errstr);
        else
                fprintf(stderr, "kbatch collect: %s\n", errstr);
        if (!kept) {
                /* Partial output files are removed (not renamed). */
                outfile_close(&cl->cl_out, 0, errstr, sizeof(errstr));
                outfile_close(&cl->cl_err, 0, errstr, sizeof(errstr));
        }
        return 1;
}

/* Frees what collect_run set up. */
static void collect_free(collect_t *cl) {
        if (cl->cl_rk) {
                rd_kafka_consumer_close(cl->cl_rk);
                rd_kafka_destroy(cl->cl_rk);
        }
        kb_bf_collect_destroy(cl->cl_co);
        json_decref(cl->cl_event);
        kb_serde_destroy(cl->cl_serde);
}

int kb_cmd_collect_to(const kb_conf_t *conf, const char *batch_id, int fmt, FILE *ok, FILE *errs, char *errstr,
                      size_t errstr_size) {
        collect_opts_t co;
        collect_t cl;
        kb_cmd_progress_t pg;
        int rc;
        memset(&co, 0, sizeof(co));
        memset(&cl, 0, sizeof(cl));
        memset(&pg, 0, sizeof(pg));
        co.co_id = batch_id;
        co.co_format = (kb_bf_out_t)fmt;
        co.co_no_wait = 1;
        co.co_quiet = 1;
        co.co_lookback_ms = LOOKBACK_DEFAULT_MS;
        co.co_fp_out = ok;
        co.co_fp_err = errs;
        co.co_errbuf = errstr;
        co.co_errbuf_size = errstr_size;
        cl.cl_opts = &co;
        cl.cl_conf = conf;
        rc = collect_run(&cl, &pg);
        collect_free(&cl);
        return rc == 0 ? 1 : rc == 2 ? 0 : -1;
}

int kb_cmd_collect(int argc, char **argv) {
        enum { O_ERRORS = 256, O_FORMAT, O_NO_WAIT, O_TIMEOUT, O_LOOKBACK };
        static const struct option opts[] = {{"config", 1, NULL, 'c'},
                                             {"output", 1, NULL, 'o'},
                                             {"errors", 1, NULL, O_ERRORS},
                                             {"format", 1, NULL, O_FORMAT},
                                             {"no-wait", 0, NULL, O_NO_WAIT},
                                             {"timeout", 1, NULL, O_TIMEOUT},
                                             {"lookback", 1, NULL, O_LOOKBACK},
                                             {"verbose", 0, NULL, 'v'},
                                             {"quiet", 0, NULL, 'q'},
                                             {"help", 0, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
        collect_opts_t co;
        collect_t cl;
        kb_cmd_progress_t pg;
        kb_conf_t *conf;
        struct sigaction sa;
        int c, f, rc;

        memset(&co, 0, sizeof(co));
        co.co_lookback_ms = LOOKBACK_DEFAULT_MS;
        opterr = 0;
        optind = 1;
        while ((c = getopt_long(argc, argv, "c:o:vqh", opts, NULL)) != -1) {
                switch (c) {
                case 'c':
                        co.co_conf = optarg;
                        break;
                case 'o':
                        co.co_out = optarg;
                        break;
                case O_ERRORS:
                        co.co_errors = optarg;
                        break;
                case O_FORMAT:
                        if ((f = kb_bf_out_parse(optarg)) < 0) {
                                fprintf(stderr,
                                        "kbatch collect: --format must be "
                                        "openai, anthropic or native, not "
                                        "'%.100s'\n",
                                        optarg);
                                return 2;
                        }
                        co.co_format = (kb_bf_out_t)f;
                        break;
                case O_NO_WAIT:
                        co.co_no_wait = 1;
                        break;
                case O_TIMEOUT:
                case O_LOOKBACK:
                        if (kb_bf_duration_parse(optarg) <= 0) {
                                fprintf(stderr,
                                        "kbatch collect: --%s '%.100s' is "
                                        "not a duration (90s, 30m, 24h)\n",
                                        c == O_TIMEOUT ? "timeout" : "lookback",
                                        optarg);
                                return 2;
                        }
                        if (c == O_TIMEOUT)
                                co.co_timeout_ms = kb_bf_duration_parse(optarg);
                        else
                                co.co_lookback_ms =
                                        kb_bf_duration_parse(optarg);
                        break;
                case 'v':
                        co.co_verbose = 1;
                        break;
                case 'q':
                        co.co_quiet = 1;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                default:
                        return kb_cmd_usage_error("collect", "bad option '%s'",
                                                  argv[optind - 1]);
                }
        }
        if (kb_cmd_batch_id_arg("collect", argc, argv, optind, &co.co_id))
                return 2;
        if (co.co_errors && co.co_out && !strcmp(co.co_errors, co.co_out) &&
            strcmp(co.co_out, "-")) {
                fprintf(stderr, "kbatch collect: --errors and -o name the "
                                "same file (leave --errors out to write "
                                "everything there)\n");
                return 2;
        }
        if (!(conf = kb_cmd_conf_load(co.co_conf)))
                return 2;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = on_signal;
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        memset(&pg, 0, sizeof(pg));
        kb_cmd_progress_init(&pg, co.co_quiet, 200);
        memset(&cl, 0, sizeof(cl));
        cl.cl_opts = &co;
        cl.cl_conf = conf;
        rc = collect_run(&cl, &pg);
        collect_free(&cl);
        kb_conf_destroy(conf);
        return rc;
}
