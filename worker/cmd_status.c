/* kbatch status BATCH_ID [-c FILE] [--json]: a batch's status from the
 * batch-state topic (read by kb_bstate_read, bstate.c). */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bstate.h"
#include "cmd.h"
#include "codec.h"
#include "conf.h"

static void usage(FILE *out) {
        fprintf(out,
                "usage: kbatch status BATCH_ID [-c FILE] [--json]\n"
                "  Prints a batch's status, item counts, token usage and\n"
                "  timestamps from the aggregator's state (kbatch.batch-state).\n"
                "  Exit 0 when the batch is known, 1 when it is unknown (no\n"
                "  result aggregated yet, or its state was retired).\n"
                "  -c, --config FILE   configuration (default: $KBATCH_CONFIG,\n"
                "                      else ./worker.conf, else built-in)\n"
                "  --json              one JSON object on stdout\n");
}

static void print_json(const kb_bstate_t *bs) {
        json_t *o = kb_bstate_json(bs);
        char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (s)
                printf("%s\n", s);
        free(s);
}

/* "2026-11-22T11:00:00.123Z", or "-" for 0. */
static const char *iso(int64_t ms, char *buf, size_t size) {
        time_t t = (time_t)(ms / 1000);
        struct tm tm;
        char b[32];
        if (ms <= 0 || !gmtime_r(&t, &tm))
                return "-";
        strftime(b, sizeof(b), "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(buf, size, "%s.%03dZ", b, (int)(ms % 1000));
        return buf;
}

static void print_text(const kb_bstate_t *bs) {
        char b1[40];
        printf("batch %s: %s\n", bs->bs_batch_id,
               kb_batch_status_str(kb_bstate_status(bs)));
        printf("  items        %lld total, %lld done: %lld succeeded, %lld "
               "failed, %lld cancelled, %lld expired\n",
               (long long)bs->bs_items_total, (long long)bs->bs_done,
               (long long)bs->bs_succeeded, (long long)bs->bs_failed,
               (long long)bs->bs_cancelled, (long long)bs->bs_expired);
        if (bs->bs_invalid)
                printf("  invalid      %lld inconsistent items counted as "
                       "failed (invalid_item)\n",
                       (long long)bs->bs_invalid);
        printf("  usage        %lld input + %lld output = %lld tokens\n",
               (long long)bs->bs_input_tokens, (long long)bs->bs_output_tokens,
               (long long)bs->bs_total_tokens);
        printf("  first result %s\n", iso(bs->bs_first_result_at, b1, sizeof(b1)));
        printf("  last result  %s\n", iso(bs->bs_last_result_at, b1, sizeof(b1)));
        printf("  completed    %s\n", iso(bs->bs_completed_at, b1, sizeof(b1)));
        if (bs->bs_revision > 1)
                printf("  updated      %s (revision %lld)\n",
                       iso(bs->bs_updated_at, b1, sizeof(b1)),
                       (long long)bs->bs_revision);
        if (bs->bs_deadline)
                printf("  deadline     %s\n", iso(bs->bs_deadline, b1, sizeof(b1)));
}

int kb_cmd_status(int argc, char **argv) {
        static const struct option opts[] = {{"config", 1, NULL, 'c'},
                                             {"json", 0, NULL, 'j'},
                                             {"help", 0, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
        const char *path = NULL, *id = NULL;
        int c, json = 0, r;
        kb_conf_t *conf;
        kb_bstate_t *bs = NULL;
        char errstr[1024];

        opterr = 0;
        optind = 1;
        while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
                switch (c) {
                case 'c':
                        path = optarg;
                        break;
                case 'j':
                        json = 1;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                default:
                        return kb_cmd_usage_error("status", "bad option '%s'",
                                                  argv[optind - 1]);
                }
        }
        if (kb_cmd_batch_id_arg("status", argc, argv, optind, &id))
                return 2;
        if (!(conf = kb_cmd_conf_load(path)))
                return 2;
        r = kb_bstate_read(conf, id, &bs, errstr, sizeof(errstr));
        kb_conf_destroy(conf);
        if (r < 0) {
                fprintf(stderr, "kbatch status: %s\n", errstr);
                return 1;
        }
        if (r == 0) {
                fprintf(stderr, "kbatch status: unknown batch '%s'\n", id);
                return 1;
        }
        if (json)
                print_json(bs);
        else
                print_text(bs);
        kb_bstate_destroy(bs);
        return 0;
}
