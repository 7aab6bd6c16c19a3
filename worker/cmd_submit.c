/* kbatch submit FILE.jsonl|- [options]: publishes a batch (SPEC §9).
 *
 * Two passes. The first reads and validates the whole file (every line an
 * OpenAI Batch, Anthropic Message Batches or native BatchItem line, unique
 * custom_ids, at most 1,000,000 requests, each item a valid BatchItem under
 * worker.max_item_bytes) and reports every bad line as FILE:LINE: message;
 * any bad line and nothing is published (exit 2). Standard input (or
 * anything that is not a regular file) is spooled to a temporary file on the
 * way, for the second pass, which publishes item i keyed
 * "<batch_id>:<i>" to the items topic with the idempotent producer, waits
 * for every acknowledgement and prints the batch id on stdout.
 *
 * Batch ids: --batch-id, or derived from --idempotency-key (the same key,
 * the same id), or generated (sortable by time). With an id that is not
 * generated, the batch-state topic is looked up first: a batch that the
 * aggregator already knows is not published again (the same submission run
 * twice), unless --force; one with another items_total is an error. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
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
#include "publish.h"
#include "serde.h"

static void usage(FILE *out) {
        fprintf(out,
                "usage: kbatch submit FILE.jsonl|- [-c FILE] [--batch-id ID | "
                "--idempotency-key K]\n"
                "                     [--metadata KEY=VALUE]... "
                "[--callback-url "
                "URL]\n"
                "                     [--deadline TIME | --completion-window "
                "D]\n"
                "                     [--format auto|openai|anthropic|native] "
                "[--dry-run] [--force] [-q]\n"
                "  Publishes the requests of FILE (- for standard input) as "
                "one "
                "batch and\n"
                "  prints its batch id on stdout. Lines: OpenAI Batch input "
                "(custom_id,\n"
                "  method, url, body), Anthropic Message Batches (custom_id, "
                "params) or\n"
                "  native BatchItems (item_id, model, input, ...). The whole "
                "file is\n"
                "  validated first; every bad line is reported as FILE:LINE: "
                "message and\n"
                "  nothing is published (exit 2).\n"
                "  -c, --config FILE          configuration (default: "
                "$KBATCH_CONFIG,\n"
                "                             else ./worker.conf, else "
                "built-in)\n"
                "  --batch-id ID              the batch id (1-%d of "
                "[A-Za-z0-9._:-]);\n"
                "                             default: a new one, sortable by "
                "time\n"
                "  --idempotency-key K        derive the batch id from K: "
                "running the same\n"
                "                             submission again does not "
                "publish "
                "it twice\n"
                "  --metadata KEY=VALUE       batch metadata (up to %d), "
                "echoed "
                "on results\n"
                "                             and the batch event\n"
                "  --callback-url URL         webhook for the batch's "
                "completion\n"
                "  --deadline TIME            items not started by then end "
                "`expired`: a\n"
                "                             duration from now (24h, 90m), "
                "epoch ms or\n"
                "                             RFC 3339 (2026-11-22T10:00:00Z)\n"
                "  --completion-window D      the same as --deadline D "
                "(OpenAI's "
                "name)\n"
                "  --format F                 require every line in format F "
                "(default:\n"
                "                             auto, each line as it comes)\n"
                "  --priority high|normal     high: publish to the priority "
                "lane\n"
                "                             (topics.items_priority), served "
                "first\n"
                "  --dry-run                  validate only; connect to "
                "nothing\n"
                "  --force                    publish even when the batch id "
                "is "
                "known\n"
                "  -q, --quiet                no progress and no summary on "
                "stderr\n"
                "Exit codes: 0 published (or already known), 1 runtime "
                "failure, "
                "2 bad\n"
                "usage, configuration or input file.\n",
                KB_BATCH_ID_MAX, KB_METADATA_MAX);
}

typedef struct {
        const char *so_path; /* "-": stdin */
        const char *so_name; /* for messages: path or "<stdin>" */
        const char *so_conf;
        const char *so_batch_id;
        const char *so_key;
        json_t *so_metadata; /* owned */
        const char *so_callback_url;
        int64_t so_deadline; /* epoch ms, 0: none */
        kb_bf_format_t so_format;
        int so_dry_run;
        int so_force;
        int so_priority; /* --priority high: the priority lane */
        int so_quiet;
} submit_opts_t;

static volatile sig_atomic_t interrupted;

/* What a step returns to go on (else it returns the exit code). */
#define GO_ON (-1)

static void on_signal(int sig) {
        (void)sig;
        interrupted = 1;
}

/* ---- pass 1: validation ---- */

typedef struct {
        const submit_opts_t *sv_opts;
        const kb_conf_t *sv_conf;
        const char *sv_batch_id;
        kb_pub_check_t *sv_check; /* owned */
        int64_t sv_items;         /* requests read */
        int64_t sv_bad;           /* bad lines */
        const char *sv_callback;  /* the one callback_url of native lines
                                   * (borrowed from sv_check) */
} validate_t;

/* The batch-level fields for publishing. */
static void batch_of(const submit_opts_t *so, const char *batch_id,
                     int64_t total, int64_t now, kb_bf_batch_t *b) {
        memset(b, 0, sizeof(*b));
        b->bb_batch_id = batch_id;
        b->bb_items_total = total;
        b->bb_callback_url = so->so_callback_url;
        b->bb_deadline = so->so_deadline;
        b->bb_metadata = so->so_metadata;
        b->bb_submitted_at = now;
}

/* Pass 1 over in; copies every line to spool when not NULL. Returns 0, or
 * -1 on an I/O error (reported). */
static int validate(validate_t *sv, FILE *in, FILE *spool,
                    kb_cmd_progress_t *pg) {
        char *s = NULL, err[1280];
        size_t cap = 0;
        ssize_t len;
        int64_t lineno = 0;
        int ret = 0;

        sv->sv_check = kb_pub_check_new(
                sv->sv_conf, sv->sv_opts->so_format, sv->sv_batch_id,
                sv->sv_opts->so_metadata, sv->sv_opts->so_callback_url,
                sv->sv_opts->so_deadline);
        if (!sv->sv_check) {
                fprintf(stderr, "kbatch submit: out of memory\n");
                return -1;
        }
        errno = 0;
        while (!interrupted && (len = getline(&s, &cap, in)) >= 0) {
                lineno++;
                if (spool && fwrite(s, 1, (size_t)len, spool) != (size_t)len) {
                        fprintf(stderr,
                                "kbatch submit: cannot spool the input: %s\n",
                                strerror(errno));
                        ret = -1;
                        break;
                }
                if (kb_pub_check_line(sv->sv_check, s, (size_t)len, lineno,
                                      err, sizeof(err)) == KB_PUB_LINE_BAD)
                        fprintf(stderr, "%s:%lld: %s\n", sv->sv_opts->so_name,
                                (long long)lineno, err);
                kb_cmd_progress_show(pg, 0, "submit: validating %s: %lld lines",
                              sv->sv_opts->so_name, (long long)lineno);
        }
        sv->sv_items = kb_pub_check_items(sv->sv_check);
        sv->sv_bad = kb_pub_check_bad(sv->sv_check);
        sv->sv_callback = kb_pub_check_callback(sv->sv_check);
        if (!ret && ferror(in)) {
                fprintf(stderr, "kbatch submit: reading %s: %s\n",
                        sv->sv_opts->so_name, strerror(errno));
                ret = -1;
        }
        if (!ret && spool && fflush(spool)) {
                fprintf(stderr, "kbatch submit: cannot spool the input: %s\n",
                        strerror(errno));
                ret = -1;
        }
        kb_cmd_progress_clear(pg);
        free(s);
        return ret;
}

/* ---- pass 2: publishing ---- */

typedef struct {
        int64_t dr_ok;
        int64_t dr_failed;
        char dr_err[256];
} submit_dr_t;

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
        submit_dr_t *dr = opaque;
        (void)rk;
        if (!m->err) {
                dr->dr_ok++;
                return;
        }
        if (!dr->dr_failed++)
                snprintf(dr->dr_err, sizeof(dr->dr_err), "%s",
                         rd_kafka_err2str(m->err));
}

/* 0 when the items topic exists, -1 with errstr. */
static int check_topic(rd_kafka_t *rk, const char *topic, const kb_conf_t *conf,
                       char *errstr, size_t errstr_size) {
        rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 0, rkt, &md, 30000);
        int ret = 0;
        rd_kafka_topic_destroy(rkt);
        if (err) {
                snprintf(errstr, errstr_size, "cannot reach Kafka at %s: %s",
                         conf->kafka_bootstrap_servers, rd_kafka_err2str(err));
                ret = -1;
        } else if (md->topic_cnt < 1 || md->topics[0].err) {
                snprintf(errstr, errstr_size,
                         "topic %s does not exist (kbatch topics create)",
                         topic);
                ret = -1;
        }
        if (md)
                rd_kafka_metadata_destroy(md);
        return ret;
}

/* The same submission again (an id that is not generated): a batch the
 * aggregator knows is not published again unless --force. GO_ON, or the
 * exit code (reported; 1 when the batch-state topic cannot be read). */
static int already_known(const submit_opts_t *so, const kb_conf_t *conf,
                         const validate_t *sv) {
        kb_bstate_t *bs = NULL;
        char errstr[1024];
        int r;
        if (!so->so_batch_id && !so->so_key)
                return GO_ON;
        if ((r = kb_bstate_read(conf, sv->sv_batch_id, &bs, errstr,
                                sizeof(errstr))) < 0) {
                fprintf(stderr, "kbatch submit: %s\n", errstr);
                return 1;
        }
        if (r == 0)
                return GO_ON;
        r = GO_ON;
        if (bs->bs_items_total != sv->sv_items) {
                fprintf(stderr,
                        "kbatch submit: batch %s already exists with %lld "
                        "items, %s has %lld%s\n",
                        sv->sv_batch_id, (long long)bs->bs_items_total,
                        so->so_name, (long long)sv->sv_items,
                        so->so_key ? " (the idempotency key was used for "
                                     "another submission)"
                                   : "");
                r = 2;
        } else if (!so->so_force) {
                if (!so->so_quiet)
                        fprintf(stderr,
                                "kbatch submit: batch %s is already known "
                                "(%s, %lld of %lld items done): nothing "
                                "published (--force publishes it again)\n",
                                sv->sv_batch_id,
                                kb_batch_status_str(kb_bstate_status(bs)),
                                (long long)bs->bs_done,
                                (long long)bs->bs_items_total);
                printf("%s\n", sv->sv_batch_id);
                r = 0;
        }
        kb_bstate_destroy(bs);
        return r;
}

/* Produces every line of in (rewound); *n: the items produced. 0, or -1
 * with errstr. */
static int publish_lines(const submit_opts_t *so, const validate_t *sv,
                         rd_kafka_t *rk, kb_pub_t *pb, FILE *in,
                         const submit_dr_t *dr, kb_cmd_progress_t *pg,
                         int64_t *n, char *errstr, size_t errstr_size) {
        char *s = NULL;
        size_t cap = 0;
        ssize_t len;
        int first_line, ret = -1;

        errno = 0;
        for (first_line = 1; !interrupted && (len = getline(&s, &cap, in)) >= 0;
             first_line = 0) {
                if (kb_pub_line(pb, s, (size_t)len, first_line, &interrupted,
                                errstr, errstr_size))
                        goto out;
                *n = kb_pub_count(pb);
                rd_kafka_poll(rk, 0);
                kb_cmd_progress_bar(pg, 0, "submit: ", dr->dr_ok, sv->sv_items,
                                    "published");
        }
        if (ferror(in)) {
                snprintf(errstr, errstr_size, "reading %s: %s", so->so_name,
                         strerror(errno));
                goto out;
        }
        if (!interrupted && *n != sv->sv_items) {
                snprintf(errstr, errstr_size,
                         "%s has %lld requests now, %lld when validated (the "
                         "file changed while submitting)",
                         so->so_name, (long long)*n, (long long)sv->sv_items);
                goto out;
        }
        ret = 0;
out:
        free(s);
        return ret;
}

/* Waits for every acknowledgement (message.timeout.ms bounds each) and
 * reports the outcome. Returns the exit code. */
static int publish_finish(const submit_opts_t *so, const validate_t *sv,
                          rd_kafka_t *rk, const char *topic,
                          const submit_dr_t *dr, kb_cmd_progress_t *pg) {
        int64_t flush_until = kb_now_ms() + 600000;
        while (rd_kafka_outq_len(rk) > 0 && !interrupted &&
               kb_now_ms() < flush_until) {
                rd_kafka_flush(rk, 100);
                kb_cmd_progress_bar(pg, 0, "submit: ", dr->dr_ok, sv->sv_items,
                                    "published");
        }
        rd_kafka_poll(rk, 0);
        kb_cmd_progress_bar(pg, 1, "submit: ", dr->dr_ok, sv->sv_items,
                            "published");
        kb_cmd_progress_clear(pg);
        if (interrupted || dr->dr_ok != sv->sv_items) {
                fprintf(stderr,
                        "kbatch submit: %s: %lld of %lld items of batch %s "
                        "published%s%s; `kbatch submit --batch-id %s --force "
                        "%s` publishes the batch again\n",
                        interrupted ? "interrupted"
                                    : "not every item was "
                                      "acknowledged",
                        (long long)dr->dr_ok, (long long)sv->sv_items,
                        sv->sv_batch_id, dr->dr_failed ? ": " : "",
                        dr->dr_failed ? dr->dr_err : "", sv->sv_batch_id,
                        so->so_name);
                return 1;
        }
        printf("%s\n", sv->sv_batch_id);
        fflush(stdout);
        if (!so->so_quiet)
                fprintf(stderr,
                        "kbatch submit: batch %s: %lld items "
                        "published to %s\n",
                        sv->sv_batch_id, (long long)sv->sv_items, topic);
        return 0;
}

/* Publishes every request of in (rewound). Returns the exit code. */
static int publish(const submit_opts_t *so, const kb_conf_t *conf,
                   validate_t *sv, FILE *in, kb_cmd_progress_t *pg) {
        const char *topic = conf->topics_name[so->so_priority
                                                  ? KB_TOPIC_ITEMS_PRIORITY
                                                  : KB_TOPIC_ITEMS];
        rd_kafka_conf_t *kc;
        rd_kafka_t *rk = NULL;
        kb_serde_t *sd = NULL;
        submit_dr_t dr;
        kb_bf_batch_t b;
        kb_pub_t *pb = NULL;
        char errstr[1024];
        int64_t n = 0;
        int rc = 1;

        memset(&dr, 0, sizeof(dr));
        if (!(kc = kb_kafka_conf_new(conf, "submit", errstr, sizeof(errstr))))
                goto fail;
        rd_kafka_conf_set_dr_msg_cb(kc, dr_cb);
        rd_kafka_conf_set_opaque(kc, &dr);
        if (!(rk = kb_kafka_producer_new(conf, kc, errstr, sizeof(errstr))) ||
            check_topic(rk, topic, conf, errstr, sizeof(errstr)) ||
            !(sd = kb_serde_new(conf, NULL, errstr, sizeof(errstr))))
                goto fail;
        if ((rc = already_known(so, conf, sv)) != GO_ON)
                goto out;
        batch_of(so, sv->sv_batch_id, sv->sv_items, kb_wall_ms(), &b);
        if (!b.bb_callback_url && sv->sv_callback)
                b.bb_callback_url = sv->sv_callback;
        if (!(pb = kb_pub_new(rk, sd, conf, so->so_format, &b, NULL))) {
                snprintf(errstr, sizeof(errstr), "out of memory");
                goto fail;
        }
        if (publish_lines(so, sv, rk, pb, in, &dr, pg, &n, errstr,
                          sizeof(errstr)) < 0)
                goto fail;
        rc = publish_finish(so, sv, rk, topic, &dr, pg);
        goto out;
fail:
        kb_cmd_progress_clear(pg);
        fprintf(stderr, "kbatch submit: %s%s\n", errstr,
                n > 0 ? " (some items were published: run the same command "
                        "with --batch-id and --force to publish the batch "
                        "again)"
                      : "");
        rc = 1;
out:
        kb_pub_destroy(pb);
        kb_serde_destroy(sd);
        if (rk) {
                if (rc != 0)
                        rd_kafka_purge(rk, RD_KAFKA_PURGE_F_QUEUE);
                rd_kafka_flush(rk, rc == 0 ? 10000 : 1000);
                rd_kafka_destroy(rk);
        }
        return rc;
}

#define usage_error(...) kb_cmd_usage_error("submit", __VA_ARGS__)

enum {
        O_BATCH_ID = 256,
        O_KEY,
        O_METADATA,
        O_CALLBACK,
        O_DEADLINE,
        O_WINDOW,
        O_FORMAT,
        O_DRY_RUN,
        O_FORCE,
        O_PRIORITY,
};

/* --deadline TIME / --completion-window D (c says which). */
static int parse_deadline(submit_opts_t *so, int c, const char *arg,
                          const char **deadline_arg) {
        if (*deadline_arg)
                return usage_error("give one of --deadline and "
                                   "--completion-window");
        *deadline_arg = arg;
        if (c == O_WINDOW) {
                int64_t d = kb_bf_duration_parse(arg);
                so->so_deadline = d > 0 ? kb_wall_ms() + d : -1;
        } else
                so->so_deadline = kb_bf_time_parse(arg, kb_wall_ms());
        if (so->so_deadline <= 0)
                return usage_error(c == O_WINDOW
                                       ? "--completion-window '%.100s' is "
                                         "not a duration (24h, 90m, 30s)"
                                       : "--deadline '%.100s' is not a "
                                         "duration (24h), epoch ms or RFC "
                                         "3339 time",
                                   arg);
        return GO_ON;
}

/* One option of getopt_long (c, optarg). GO_ON or the exit code. */
static int parse_option(submit_opts_t *so, int c, const char *arg,
                        const char *bad, const char **deadline_arg) {
        char errstr[1024];
        int f;
        switch (c) {
        case 'c':
                so->so_conf = arg;
                break;
        case O_BATCH_ID:
                so->so_batch_id = arg;
                break;
        case O_KEY:
                so->so_key = arg;
                break;
        case O_METADATA:
                if (kb_bf_metadata_add(so->so_metadata, arg, errstr,
                                       sizeof(errstr))) {
                        fprintf(stderr, "kbatch submit: %s\n", errstr);
                        return 2;
                }
                break;
        case O_CALLBACK:
                so->so_callback_url = arg;
                break;
        case O_DEADLINE:
        case O_WINDOW:
                return parse_deadline(so, c, arg, deadline_arg);
        case O_FORMAT:
                if ((f = kb_bf_format_parse(arg)) < 0)
                        return usage_error("--format must be auto, openai, "
                                           "anthropic or native, not "
                                           "'%.100s'",
                                           arg);
                so->so_format = (kb_bf_format_t)f;
                break;
        case O_DRY_RUN:
                so->so_dry_run = 1;
                break;
        case O_FORCE:
                so->so_force = 1;
                break;
        case O_PRIORITY:
                if (strcmp(arg, "high") && strcmp(arg, "normal"))
                        return usage_error("--priority must be high or "
                                           "normal, not '%.100s'",
                                           arg);
                so->so_priority = !strcmp(arg, "high");
                break;
        case 'q':
                so->so_quiet = 1;
                break;
        case 'h':
                usage(stdout);
                return 0;
        default:
                return usage_error("bad option '%s'", bad);
        }
        return GO_ON;
}

/* The options and the FILE operand into *so. GO_ON or the exit code. */
static int parse_args(submit_opts_t *so, int argc, char **argv) {
        static const struct option opts[] = {
                {"config", 1, NULL, 'c'},
                {"batch-id", 1, NULL, O_BATCH_ID},
                {"idempotency-key", 1, NULL, O_KEY},
                {"metadata", 1, NULL, O_METADATA},
                {"callback-url", 1, NULL, O_CALLBACK},
                {"deadline", 1, NULL, O_DEADLINE},
                {"completion-window", 1, NULL, O_WINDOW},
                {"format", 1, NULL, O_FORMAT},
                {"dry-run", 0, NULL, O_DRY_RUN},
                {"force", 0, NULL, O_FORCE},
                {"priority", 1, NULL, O_PRIORITY},
                {"quiet", 0, NULL, 'q'},
                {"help", 0, NULL, 'h'},
                {NULL, 0, NULL, 0}};
        const char *deadline_arg = NULL;
        int c, rc;

        opterr = 0;
        optind = 1;
        while ((c = getopt_long(argc, argv, "c:qh", opts, NULL)) != -1)
                if ((rc = parse_option(so, c, optarg, argv[optind - 1],
                                       &deadline_arg)) != GO_ON)
                        return rc;
        if (optind >= argc)
                return usage_error("missing FILE.jsonl (or - for standard "
                                   "input)");
        if (optind + 1 < argc)
                return usage_error("unexpected argument '%s'",
                                   argv[optind + 1]);
        so->so_path = argv[optind];
        so->so_name = strcmp(so->so_path, "-") ? so->so_path : "<stdin>";
        if (so->so_batch_id && so->so_key)
                return usage_error("give one of --batch-id and "
                                   "--idempotency-key");
        if (so->so_batch_id && !kb_codec_batch_id_valid(so->so_batch_id)) {
                fprintf(stderr,
                        "kbatch submit: --batch-id '%.200s' is not a batch id "
                        "(1-%d characters of [A-Za-z0-9._:-])\n",
                        so->so_batch_id, KB_BATCH_ID_MAX);
                return 2;
        }
        if (so->so_key && !*so->so_key)
                return usage_error("--idempotency-key is empty");
        if (so->so_callback_url && !*so->so_callback_url)
                return usage_error("--callback-url is empty");
        return GO_ON;
}

/* The batch id: --batch-id, else derived from --idempotency-key, else a new
 * one. 0, or -1 (reported). */
static int choose_batch_id(const submit_opts_t *so,
                           char batch_id[KB_BATCH_ID_MAX + 1]) {
        uint8_t rnd[10];
        if (so->so_batch_id) {
                snprintf(batch_id, KB_BATCH_ID_MAX + 1, "%s", so->so_batch_id);
                return 0;
        }
        if (so->so_key) {
                if (kb_bf_batch_id_from_key(so->so_key, batch_id)) {
                        fprintf(stderr, "kbatch submit: cannot hash the "
                                        "idempotency key\n");
                        return -1;
                }
                return 0;
        }
        if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
                fprintf(stderr, "kbatch submit: getrandom: %s\n",
                        strerror(errno));
                return -1;
        }
        kb_bf_batch_id_generate(kb_wall_ms(), rnd, batch_id);
        return 0;
}

/* Opens the input; one that cannot be read twice (a pipe) gets a spool file
 * that pass 1 copies it into. GO_ON or the exit code. */
static int open_input(const submit_opts_t *so, FILE **in, FILE **spool) {
        struct stat st;
        if (!strcmp(so->so_path, "-"))
                *in = stdin;
        else if (!(*in = fopen(so->so_path, "r"))) {
                fprintf(stderr, "kbatch submit: cannot open %s: %s\n",
                        so->so_path, strerror(errno));
                return 2;
        }
        if (fstat(fileno(*in), &st) || !S_ISREG(st.st_mode)) {
                if (!(*spool = tmpfile())) {
                        fprintf(stderr,
                                "kbatch submit: cannot create a temporary "
                                "file: %s\n",
                                strerror(errno));
                        return 1;
                }
        }
        return GO_ON;
}

/* What pass 1 found decides: GO_ON to publish, else the exit code (bad
 * lines, no requests, interrupted; 0 for a dry run, with the batch id). */
static int validated(const submit_opts_t *so, const validate_t *sv,
                     const char *batch_id) {
        if (interrupted) {
                fprintf(stderr, "kbatch submit: interrupted; nothing "
                                "published\n");
                return 1;
        }
        if (sv->sv_bad) {
                fprintf(stderr,
                        "kbatch submit: %lld bad line%s in %s; nothing "
                        "published\n",
                        (long long)sv->sv_bad, sv->sv_bad == 1 ? "" : "s",
                        so->so_name);
                return 2;
        }
        if (!sv->sv_items) {
                fprintf(stderr,
                        "kbatch submit: %s has no requests; nothing "
                        "published\n",
                        so->so_name);
                return 2;
        }
        if (so->so_dry_run) {
                printf("%s\n", batch_id);
                if (!so->so_quiet)
                        fprintf(stderr,
                                "kbatch submit: %s: %lld valid request%s "
                                "(dry run: nothing published)\n",
                                so->so_name, (long long)sv->sv_items,
                                sv->sv_items == 1 ? "" : "s");
                return 0;
        }
        return GO_ON;
}

/* Pass 2 reads the spool when there is one, else the input again. 0, or
 * -1 (reported). */
static int rewind_input(const submit_opts_t *so, FILE **in, FILE **spool) {
        if (*spool) {
                if (*in != stdin)
                        fclose(*in);
                *in = *spool;
                *spool = NULL;
        }
        if (fseeko(*in, 0, SEEK_SET)) {
                fprintf(stderr, "kbatch submit: cannot re-read %s: %s\n",
                        so->so_name, strerror(errno));
                return -1;
        }
        return 0;
}

int kb_cmd_submit(int argc, char **argv) {
        submit_opts_t so;
        validate_t sv;
        kb_cmd_progress_t pg;
        kb_conf_t *conf = NULL;
        FILE *in = NULL, *spool = NULL;
        char batch_id[KB_BATCH_ID_MAX + 1];
        struct sigaction sa;
        int rc;

        memset(&so, 0, sizeof(so));
        memset(&sv, 0, sizeof(sv));
        if (!(so.so_metadata = json_object()))
                return 1;
        if ((rc = parse_args(&so, argc, argv)) != GO_ON)
                goto out;
        rc = 2;
        if (!(conf = kb_cmd_conf_load(so.so_conf)))
                goto out;
        rc = 1;
        if (choose_batch_id(&so, batch_id) < 0)
                goto out;

        /* Pass 1. */
        if ((rc = open_input(&so, &in, &spool)) != GO_ON)
                goto out;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = on_signal;
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        kb_cmd_progress_init(&pg, so.so_quiet, 100);
        sv.sv_opts = &so;
        sv.sv_conf = conf;
        sv.sv_batch_id = batch_id;
        if (validate(&sv, in, spool, &pg)) {
                rc = 1;
                goto out;
        }
        if ((rc = validated(&so, &sv, batch_id)) != GO_ON)
                goto out;

        /* Pass 2. */
        rc = 1;
        if (rewind_input(&so, &in, &spool) < 0)
                goto out;
        rc = publish(&so, conf, &sv, in, &pg);
out:
        if (in && in != stdin)
                fclose(in);
        if (spool)
                fclose(spool);
        kb_pub_check_destroy(sv.sv_check);
        json_decref(so.so_metadata);
        kb_conf_destroy(conf);
        return rc;
}
