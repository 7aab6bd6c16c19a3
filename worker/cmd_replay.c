/* kbatch replay [--batch ID] [--code CODE] [--since TIME] [--limit N]
 *               [--dry-run] [--group G] [-c FILE]
 *
 * Re-drives dead-lettered items: reads the items DLQ up to its end as of
 * the start, and publishes every message that passes the filters back to the
 * items topic, with its original key and bytes and its original headers
 * less kbatch's error and attempt headers (so it starts with fresh
 * attempts), plus kbatch-replayed-from.
 *
 * Progress is committed in group `kbatch-replay` (--group) with the same
 * out-of-order tracker as the workers: offsets replayed are done (in the
 * commit's done-above map), offsets the filters passed over are not, so a
 * re-run sends nothing twice and a later run with other filters still sees
 * what this one skipped. A run reads at most the tracker's window (about
 * 16,000 messages) past the first message it skipped in each partition. */
#include <getopt.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cmd.h"
#include "conf.h"
#include "kafka.h"
#include "log.h"
#include "loop.h"
#include "offsets.h"

typedef struct {
        const char *rp_batch;
        const char *rp_code;
        int64_t rp_since; /* epoch ms, 0: none */
        long rp_limit;    /* 0: none */
        int rp_dry;
        const char *rp_group;
} replay_opts_t;

static void usage(FILE *out) {
        fprintf(out,
                "usage: kbatch replay [-c FILE] [--batch ID] [--code CODE] "
                "[--since TIME]\n"
                "                     [--limit N] [--dry-run] [--group G]\n"
                "  Re-drives dead-lettered items to the items topic with "
                "fresh attempts.\n"
                "  --batch ID     only items of this batch\n"
                "  --code CODE    only this error code (kbatch-error-code or "
                "the last\n"
                "                 error before max_attempts_exceeded)\n"
                "  --since TIME   only dead letters since TIME: epoch ms, "
                "RFC 3339\n"
                "                 (2026-11-22T10:00:00Z) or an age (90s, 30m, "
                "6h, 2d)\n"
                "  --limit N      at most N items\n"
                "  --dry-run      print what would be replayed; publish and "
                "commit nothing\n"
                "  --group G      progress group (default kbatch-replay)\n");
}

/* TIME: epoch ms, RFC 3339 UTC, or an age before now. -1 when bad. */
static int64_t parse_since(const char *s) {
        char *end;
        long long v = strtoll(s, &end, 10);
        struct tm tm;
        if (end != s && *end == '\0' && v > 0)
                return v;
        if (end != s && v >= 0 && end[0] && !end[1]) {
                int64_t unit = end[0] == 's'   ? 1000
                               : end[0] == 'm' ? 60000
                               : end[0] == 'h' ? 3600000
                               : end[0] == 'd' ? 86400000
                                               : 0;
                if (unit)
                        return kb_wall_ms() - v * unit;
        }
        memset(&tm, 0, sizeof(tm));
        end = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
        if (end && (*end == 'Z' || *end == '\0'))
                return (int64_t)timegm(&tm) * 1000;
        return -1;
}

/* Headers for the re-driven copy: the original ones without kbatch's. */
static rd_kafka_headers_t *replay_headers(const rd_kafka_message_t *m) {
        rd_kafka_headers_t *orig = NULL, *h = rd_kafka_headers_new(4);
        size_t i;
        const char *name;
        const void *val;
        size_t len;
        char from[256];
        if (rd_kafka_message_headers(m, &orig) == RD_KAFKA_RESP_ERR_NO_ERROR)
                for (i = 0; !rd_kafka_header_get_all(orig, i, &name, &val,
                                                     &len);
                     i++)
                        if (strncmp(name, "kbatch-", 7))
                                rd_kafka_header_add(h, name, -1, val,
                                                    (ssize_t)len);
        snprintf(from, sizeof(from), "%s/%d/%lld", rd_kafka_topic_name(m->rkt),
                 (int)m->partition, (long long)m->offset);
        rd_kafka_header_add(h, "kbatch-replayed-from", -1, from, -1);
        return h;
}

/* Does the dead letter pass the filters? */
static int matches(const replay_opts_t *o, const rd_kafka_message_t *m,
                   char *batch, size_t batch_size, char *code,
                   size_t code_size) {
        char last[64];
        rd_kafka_timestamp_type_t tt;
        batch[0] = '\0';
        if (!kb_kafka_header(m, "kbatch-error-code", code, code_size))
                code[0] = '\0';
        if (m->payload && m->len) {
                json_t *v = json_loadb(m->payload, m->len, 0, NULL);
                const char *b = json_string_value(json_object_get(v, "batch_id"));
                if (b)
                        snprintf(batch, batch_size, "%s", b);
                json_decref(v);
        }
        if (o->rp_batch && strcmp(batch, o->rp_batch))
                return 0;
        if (o->rp_code && strcmp(code, o->rp_code) &&
            !(kb_kafka_header(m, "kbatch-last-error-code", last, sizeof(last)) &&
              !strcmp(last, o->rp_code)))
                return 0;
        if (o->rp_since && rd_kafka_message_timestamp(m, &tt) < o->rp_since)
                return 0;
        return 1;
}

typedef struct {
        kb_offsets_t *pp_ot;
        int64_t pp_end;  /* high watermark at start */
        int pp_done;     /* read up to pp_end (or window full) */
} rp_part_t;

/* One replayed message awaiting its delivery report. */
typedef struct {
        rp_part_t *pm_part;
        int64_t pm_offset;
} rp_msg_t;

static int dr_ok, dr_failed;

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
        rp_msg_t *pm = m->_private;
        if (m->err)
                dr_failed++;
        else {
                dr_ok++;
                kb_offsets_mark_done(pm->pm_part->pp_ot, pm->pm_offset);
        }
        free(pm);
}

/* One run: the clients, the dead-letter partitions and the counts. */
typedef struct {
        const kb_conf_t *rr_conf;
        const replay_opts_t *rr_o;
        const char *rr_dlq;            /* borrowed from conf */
        const char *rr_items;
        rd_kafka_t *rr_cons;           /* owned */
        rd_kafka_t *rr_prod;           /* owned; NULL on a dry run */
        rp_part_t *rr_parts;           /* owned, rr_np */
        int rr_np;
        int rr_open;                   /* partitions not read to the end */
        long rr_replayed, rr_skipped, rr_already;
        char *rr_err;                  /* the caller's errstr */
        size_t rr_err_size;
} replay_t;

/* The consumer (group o->rp_group, manual commits) and, unless a dry run,
 * the producer. 0, 2 (the consumer: a configuration error) or 1. */
static int replay_clients(replay_t *rr) {
        rd_kafka_conf_t *kc;
        char *errstr = rr->rr_err;
        size_t errstr_size = rr->rr_err_size;

        if (!(kc = kb_kafka_conf_new(rr->rr_conf, "replay", errstr,
                                     errstr_size)))
                return 2;
        if (kb_kafka_conf_set(kc, "group.id", rr->rr_o->rp_group, errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "enable.auto.commit", "false", errstr,
                              errstr_size) ||
            kb_kafka_conf_set(kc, "enable.partition.eof", "true", errstr,
                              errstr_size)) {
                rd_kafka_conf_destroy(kc);
                return 2;
        }
        if (!(rr->rr_cons = rd_kafka_new(RD_KAFKA_CONSUMER, kc, errstr,
                                         errstr_size))) {
                rd_kafka_conf_destroy(kc);
                return 2;
        }
        if (rr->rr_o->rp_dry)
                return 0;
        if (!(kc = kb_kafka_conf_new(rr->rr_conf, "replay", errstr,
                                     errstr_size)))
                return 1;
        rd_kafka_conf_set_dr_msg_cb(kc, dr_cb);
        if (!(rr->rr_prod = kb_kafka_producer_new(rr->rr_conf, kc, errstr,
                                                  errstr_size)))
                return 1;
        return 0;
}

/* The partition count of the dead-letter topic; -1 with errstr. */
static int replay_partitions(replay_t *rr) {
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_topic_t *rkt = rd_kafka_topic_new(rr->rr_cons, rr->rr_dlq,
                                                   NULL);
        int np = -1;
        if (rd_kafka_metadata(rr->rr_cons, 0, rkt, &md, 10000) || !md ||
            md->topic_cnt != 1 || md->topics[0].err)
                snprintf(rr->rr_err, rr->rr_err_size,
                         "cannot read topic %s: %s", rr->rr_dlq,
                         md && md->topic_cnt
                             ? rd_kafka_err2str(md->topics[0].err)
                             : "no metadata");
        else
                np = md->topics[0].partition_cnt;
        if (md)
                rd_kafka_metadata_destroy(md);
        if (rkt)
                rd_kafka_topic_destroy(rkt);
        return np;
}

/* Every partition from the group's committed position (its window of
 * replayed offsets restored from the commit metadata) to the end it has
 * now. 0, or -1 with errstr. */
static int replay_assign(replay_t *rr) {
        rd_kafka_topic_partition_list_t *l;
        int p, ret = -1;

        if ((rr->rr_np = replay_partitions(rr)) < 0) {
                rr->rr_np = 0;
                return -1;
        }
        rr->rr_parts = calloc((size_t)rr->rr_np, sizeof(*rr->rr_parts));
        l = rd_kafka_topic_partition_list_new(rr->rr_np);
        for (p = 0; p < rr->rr_np; p++)
                rd_kafka_topic_partition_list_add(l, rr->rr_dlq, p);
        if (rd_kafka_committed(rr->rr_cons, l, 30000)) {
                snprintf(rr->rr_err, rr->rr_err_size,
                         "cannot read the progress of group %s",
                         rr->rr_o->rp_group);
                goto out;
        }
        for (p = 0; p < rr->rr_np; p++) {
                rd_kafka_topic_partition_t *tp = &l->elems[p];
                rp_part_t *pp = &rr->rr_parts[p];
                int64_t lo = 0, hi = 0;
                pp->pp_ot = kb_offsets_new(0);
                rd_kafka_query_watermark_offsets(rr->rr_cons, rr->rr_dlq, p,
                                                 &lo, &hi, 10000);
                pp->pp_end = hi;
                if (tp->offset >= 0)
                        kb_offsets_reset(pp->pp_ot, tp->offset, tp->metadata,
                                         tp->metadata_size);
                else
                        tp->offset = RD_KAFKA_OFFSET_BEGINNING;
                if ((tp->offset >= 0 ? tp->offset : lo) >= hi)
                        pp->pp_done = 1;
                else
                        rr->rr_open++;
        }
        if (rd_kafka_assign(rr->rr_cons, l)) {
                snprintf(rr->rr_err, rr->rr_err_size, "cannot assign %s",
                         rr->rr_dlq);
                goto out;
        }
        ret = 0;
out:
        rd_kafka_topic_partition_list_destroy(l);
        return ret;
}

static void part_done(replay_t *rr, rp_part_t *pp) {
        if (!pp->pp_done) {
                pp->pp_done = 1;
                rr->rr_open--;
        }
}

/* Re-drives one dead letter to the items topic (its headers kept). 0, or
 * -1 with errstr. */
static int replay_produce(replay_t *rr, rp_part_t *pp,
                          const rd_kafka_message_t *m) {
        rp_msg_t *pm = malloc(sizeof(*pm));
        rd_kafka_headers_t *h = replay_headers(m);
        rd_kafka_resp_err_t err;
        pm->pm_part = pp;
        pm->pm_offset = m->offset;
        err = rd_kafka_producev(rr->rr_prod, RD_KAFKA_V_TOPIC(rr->rr_items),
                                RD_KAFKA_V_KEY(m->key, m->key_len),
                                RD_KAFKA_V_VALUE(m->payload, m->len),
                                RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_OPAQUE(pm),
                                RD_KAFKA_V_END);
        if (err) {
                rd_kafka_headers_destroy(h);
                free(pm);
                snprintf(rr->rr_err, rr->rr_err_size, "publishing to %s: %s",
                         rr->rr_items, rd_kafka_err2str(err));
                return -1;
        }
        return 0;
}

/* One message of the dead-letter topic. 0, or -1 with errstr. */
static int replay_message(replay_t *rr, const rd_kafka_message_t *m) {
        const replay_opts_t *o = rr->rr_o;
        char batch[256], code[64];
        kb_offsets_res_t r;
        rp_part_t *pp;

        if (m->partition < 0 || m->partition >= rr->rr_np)
                return 0;
        pp = &rr->rr_parts[m->partition];
        if (m->err) {
                if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
                        part_done(rr, pp);
                return 0;
        }
        if (pp->pp_done || m->offset >= pp->pp_end) {
                part_done(rr, pp);
                return 0;
        }
        r = kb_offsets_track(pp->pp_ot, m->offset);
        if (r == KB_OFFSETS_SKIP || r == KB_OFFSETS_STALE) {
                rr->rr_already++;
        } else if (r == KB_OFFSETS_FULL) {
                fprintf(stderr,
                        "kbatch replay: %s[%d]: stopping at offset %lld, too "
                        "far past the first skipped dead letter; run again "
                        "after replaying it\n",
                        rr->rr_dlq, m->partition, (long long)m->offset);
                part_done(rr, pp);
        } else if (r == KB_OFFSETS_OK &&
                   matches(o, m, batch, sizeof(batch), code, sizeof(code)) &&
                   (!o->rp_limit || rr->rr_replayed < o->rp_limit)) {
                printf("%s %s[%d]@%lld batch=%s code=%s\n",
                       o->rp_dry ? "would replay" : "replayed", rr->rr_dlq,
                       m->partition, (long long)m->offset,
                       batch[0] ? batch : "-", code[0] ? code : "-");
                if (!o->rp_dry && replay_produce(rr, pp, m) < 0)
                        return -1;
                rr->rr_replayed++;
        } else if (r == KB_OFFSETS_OK)
                rr->rr_skipped++;
        if (m->offset + 1 >= pp->pp_end)
                part_done(rr, pp);
        return 0;
}

/* Reads every partition to the end it had at the start. 0, or -1 with
 * errstr (nothing read for 30 s, a publish failed). */
static int replay_read(replay_t *rr) {
        int64_t idle_since = kb_now_ms();
        while (rr->rr_open > 0 && !kb_loop_stop_requested) {
                rd_kafka_message_t *m =
                    rd_kafka_consumer_poll(rr->rr_cons, 200);
                int r;
                if (rr->rr_prod)
                        rd_kafka_poll(rr->rr_prod, 0);
                if (!m) {
                        if (kb_now_ms() - idle_since > 30000) {
                                snprintf(rr->rr_err, rr->rr_err_size,
                                         "no progress reading %s for 30 s",
                                         rr->rr_dlq);
                                return -1;
                        }
                        continue;
                }
                idle_since = kb_now_ms();
                r = replay_message(rr, m);
                rd_kafka_message_destroy(m);
                if (r < 0)
                        return -1;
        }
        return 0;
}

/* Waits for the acknowledgements and commits the group's progress: what
 * was acknowledged (the window of each partition in the commit metadata).
 * 0, or -1 with errstr (a commit failed, or items were not acknowledged:
 * those are not committed). */
static int replay_commit(replay_t *rr) {
        rd_kafka_topic_partition_list_t *cl;
        char meta[KB_OFFSETS_META_MAX + 1];
        int p, ret = 0;

        rd_kafka_flush(rr->rr_prod, 60000);
        if (dr_failed || rd_kafka_outq_len(rr->rr_prod) > 0)
                snprintf(rr->rr_err, rr->rr_err_size,
                         "%d re-driven items were not acknowledged; "
                         "progress not committed for them",
                         dr_failed + rd_kafka_outq_len(rr->rr_prod));
        cl = rd_kafka_topic_partition_list_new(rr->rr_np);
        for (p = 0; p < rr->rr_np; p++) {
                int64_t off;
                rd_kafka_topic_partition_t *tp;
                if (kb_offsets_committable(rr->rr_parts[p].pp_ot, &off, meta,
                                           sizeof(meta)) < 0 ||
                    off < 0)
                        continue;
                tp = rd_kafka_topic_partition_list_add(cl, rr->rr_dlq, p);
                tp->offset = off;
                if ((tp->metadata_size = strlen(meta)))
                        tp->metadata = strdup(meta);
        }
        if (cl->cnt && rd_kafka_commit(rr->rr_cons, cl, 0)) {
                snprintf(rr->rr_err, rr->rr_err_size,
                         "could not commit the progress of group %s",
                         rr->rr_o->rp_group);
                ret = -1;
        } else if (dr_failed)
                ret = -1;
        rd_kafka_topic_partition_list_destroy(cl);
        return ret;
}

/* The run itself; returns the exit code. */
static int replay_run(const kb_conf_t *conf, const replay_opts_t *o,
                      char *errstr, size_t errstr_size) {
        replay_t rr;
        int p, rc;

        memset(&rr, 0, sizeof(rr));
        rr.rr_conf = conf;
        rr.rr_o = o;
        rr.rr_dlq = conf->topics_name[KB_TOPIC_ITEMS_DLQ];
        rr.rr_items = conf->topics_name[KB_TOPIC_ITEMS];
        rr.rr_err = errstr;
        rr.rr_err_size = errstr_size;
        if ((rc = replay_clients(&rr)) == 2)
                return 2;
        if (rc == 0 && replay_assign(&rr) == 0 && replay_read(&rr) == 0 &&
            (!rr.rr_prod || replay_commit(&rr) == 0)) {
                printf("%s %ld dead letters to %s; %ld passed over by the "
                       "filters, %ld replayed before\n",
                       o->rp_dry ? "would replay" : "replayed",
                       rr.rr_replayed, rr.rr_items, rr.rr_skipped,
                       rr.rr_already);
                rc = 0;
        } else {
                fprintf(stderr, "kbatch replay: %s\n", errstr);
                rc = 1;
        }
        if (rr.rr_cons) {
                rd_kafka_consumer_close(rr.rr_cons);
                rd_kafka_destroy(rr.rr_cons);
        }
        if (rr.rr_prod)
                rd_kafka_destroy(rr.rr_prod);
        for (p = 0; rr.rr_parts && p < rr.rr_np; p++)
                kb_offsets_destroy(rr.rr_parts[p].pp_ot);
        free(rr.rr_parts);
        return rc;
}

int kb_cmd_replay(int argc, char **argv) {
        static const struct option opts[] = {
            {"config", 1, NULL, 'c'}, {"batch", 1, NULL, 'b'},
            {"code", 1, NULL, 'k'},   {"since", 1, NULL, 's'},
            {"limit", 1, NULL, 'l'},  {"dry-run", 0, NULL, 'n'},
            {"group", 1, NULL, 'g'},  {"help", 0, NULL, 'h'},
            {NULL, 0, NULL, 0}};
        replay_opts_t o = {NULL, NULL, 0, 0, 0, "kbatch-replay"};
        const char *path = NULL;
        char errstr[1024];
        int c, rc = 1;

        opterr = 0;
        optind = 1;
        while ((c = getopt_long(argc, argv, "+c:h", opts, NULL)) != -1) {
                char *end;
                switch (c) {
                case 'c':
                        path = optarg;
                        break;
                case 'b':
                        o.rp_batch = optarg;
                        break;
                case 'k':
                        o.rp_code = optarg;
                        break;
                case 's':
                        if ((o.rp_since = parse_since(optarg)) < 0) {
                                fprintf(stderr,
                                        "kbatch replay: --since: cannot read "
                                        "'%s' (epoch ms, RFC 3339 or an age "
                                        "like 6h)\n",
                                        optarg);
                                return 2;
                        }
                        break;
                case 'l':
                        o.rp_limit = strtol(optarg, &end, 10);
                        if (!*optarg || *end || o.rp_limit < 1) {
                                fprintf(stderr, "kbatch replay: --limit must "
                                                "be a positive integer\n");
                                return 2;
                        }
                        break;
                case 'n':
                        o.rp_dry = 1;
                        break;
                case 'g':
                        o.rp_group = optarg;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                default:
                        return kb_cmd_usage_error("replay", "bad option '%s'",
                                                  argv[optind - 1]);
                }
        }
        if (optind < argc) {
                fprintf(stderr, "kbatch replay: unexpected argument '%s'\n",
                        argv[optind]);
                return 2;
        }
        kb_conf_t *conf = kb_cmd_conf_load(path);
        if (!conf)
                return 2;
        rc = replay_run(conf, &o, errstr, sizeof(errstr));
        kb_conf_destroy(conf);
        return rc;
}
