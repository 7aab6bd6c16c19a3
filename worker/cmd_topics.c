/* kbatch topics create [--partitions N] [--replication R] [-c FILE]
 * kbatch topics describe [-c FILE] [--json] */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "conf.h"
#include "kafka.h"
#include "log.h"

#include <jansson.h>

static void usage(FILE *out) {
        fprintf(out,
                "usage: kbatch topics create [-c FILE] [--partitions N] "
                "[--replication R]\n"
                "       kbatch topics describe [-c FILE] [--json]\n"
                "  create:   creates every kbatch topic (items, retry tiers, "
                "DLQs,\n"
                "            results, batches, control, batch-state), "
                "idempotently.\n"
                "  describe: partitions, end offsets, and for each topic's "
                "consumer\n"
                "            group the committed offset, lag and the offsets "
                "done above it.\n");
}

static void print_describe(const json_t *d) {
        size_t i, j;
        json_t *t, *p;
        printf("%-34s %5s  %-22s %8s\n", "TOPIC", "PARTS", "GROUP", "LAG");
        json_array_foreach(json_object_get(d, "topics"), i, t) {
                const char *name =
                    json_string_value(json_object_get(t, "name"));
                const json_t *err = json_object_get(t, "error");
                const json_t *g = json_object_get(t, "group");
                const json_t *lag = json_object_get(t, "lag");
                char lagbuf[32] = "-";
                if (err) {
                        printf("%-34s %s\n", name, json_string_value(err));
                        continue;
                }
                if (lag)
                        snprintf(lagbuf, sizeof(lagbuf), "%lld",
                                 (long long)json_integer_value(lag));
                printf("%-34s %5lld  %-22s %8s\n", name,
                       (long long)json_integer_value(
                           json_object_get(t, "partitions")),
                       g ? json_string_value(g) : "-", lagbuf);
                if (!g)
                        continue;
                json_array_foreach(json_object_get(t, "partition_offsets"), j,
                                   p) {
                        const json_t *c = json_object_get(p, "committed");
                        char cbuf[32] = "-";
                        if (c && !json_is_null(c))
                                snprintf(cbuf, sizeof(cbuf), "%lld",
                                         (long long)json_integer_value(c));
                        printf("  [%lld] end %lld, committed %s, lag %lld, "
                               "done above %lld\n",
                               (long long)json_integer_value(
                                   json_object_get(p, "partition")),
                               (long long)json_integer_value(
                                   json_object_get(p, "end_offset")),
                               cbuf,
                               (long long)json_integer_value(
                                   json_object_get(p, "lag")),
                               (long long)json_integer_value(
                                   json_object_get(p, "done_above")));
                }
        }
}

static int cmd_describe(int argc, char **argv) {
        static const struct option opts[] = {{"config", 1, NULL, 'c'},
                                             {"json", 0, NULL, 'j'},
                                             {"help", 0, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
        const char *path = NULL;
        int as_json = 0, c;
        char errstr[1024];
        kb_conf_t *conf;
        json_t *d;
        opterr = 0;
        optind = 1;
        while ((c = getopt_long(argc, argv, "+c:h", opts, NULL)) != -1) {
                switch (c) {
                case 'c':
                        path = optarg;
                        break;
                case 'j':
                        as_json = 1;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                default:
                        fprintf(stderr, "kbatch topics describe: bad option "
                                        "'%s'\n",
                                argv[optind - 1]);
                        return 2;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "kbatch topics describe: unexpected argument "
                                "'%s'\n",
                        argv[optind]);
                return 2;
        }
        if (!(conf = kb_cmd_conf_load(path)))
                return 2;
        d = kb_kafka_topics_describe(conf, errstr, sizeof(errstr));
        kb_conf_destroy(conf);
        if (!d) {
                fprintf(stderr, "kbatch topics describe: %s\n", errstr);
                return 1;
        }
        if (as_json) {
                json_dumpf(d, stdout, JSON_INDENT(2));
                printf("\n");
        } else
                print_describe(d);
        json_decref(d);
        return 0;
}

static int parse_int(const char *s, int min, int max, int *out) {
        char *end;
        long v = strtol(s, &end, 10);
        if (!*s || *end || v < min || v > max)
                return -1;
        *out = (int)v;
        return 0;
}

int kb_cmd_topics(int argc, char **argv) {
        static const struct option opts[] = {{"config", 1, NULL, 'c'},
                                             {"partitions", 1, NULL, 'p'},
                                             {"replication", 1, NULL, 'r'},
                                             {"help", 0, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
        const char *path = NULL;
        int partitions = -1, replication = 0, c;
        char errstr[1024];
        kb_conf_t *conf;

        if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
                if (argc < 2) {
                        fprintf(stderr, "kbatch topics: missing subcommand "
                                        "(create)\n");
                        return 2;
                }
                usage(stdout);
                return 0;
        }
        if (!strcmp(argv[1], "describe"))
                return cmd_describe(argc - 1, argv + 1);
        if (strcmp(argv[1], "create")) {
                fprintf(stderr, "kbatch topics: unknown subcommand '%s'\n",
                        argv[1]);
                return 2;
        }
        argc--;
        argv++;
        opterr = 0;
        optind = 1;
        while ((c = getopt_long(argc, argv, "+c:h", opts, NULL)) != -1) {
                switch (c) {
                case 'c':
                        path = optarg;
                        break;
                case 'p':
                        if (parse_int(optarg, 1, 10000, &partitions)) {
                                fprintf(stderr, "kbatch topics create: "
                                                "--partitions must be 1..10000\n");
                                return 2;
                        }
                        break;
                case 'r':
                        if (parse_int(optarg, 1, 100, &replication)) {
                                fprintf(stderr, "kbatch topics create: "
                                                "--replication must be 1..100\n");
                                return 2;
                        }
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                default:
                        fprintf(stderr, "kbatch topics create: bad option "
                                        "'%s'\n",
                                argv[optind - 1]);
                        return 2;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "kbatch topics create: unexpected argument "
                                "'%s'\n",
                        argv[optind]);
                return 2;
        }
        if (!(conf = kb_cmd_conf_load(path)))
                return 2;
        if (kb_kafka_topics_create(conf, partitions, replication, stdout,
                                   errstr, sizeof(errstr)) != 0) {
                fprintf(stderr, "kbatch topics create: %s\n", errstr);
                kb_conf_destroy(conf);
                return 1;
        }
        kb_conf_destroy(conf);
        return 0;
}
