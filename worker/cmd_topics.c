/* kbatch topics create [--partitions N] [--replication R] [-c FILE] */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "conf.h"
#include "kafka.h"
#include "log.h"

static void usage(FILE *out) {
        fprintf(out,
                "usage: kbatch topics create [-c FILE] [--partitions N] "
                "[--replication R]\n"
                "  Creates every kbatch topic (items, retry tiers, DLQs, "
                "results,\n"
                "  batches, control, batch-state) idempotently.\n");
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
