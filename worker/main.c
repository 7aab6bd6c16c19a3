/* kbatch: one binary, the service and its command line (SPEC §9). */
#include <curl/curl.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <string.h>

#include "cmd.h"

static const struct {
        const char *name;
        int (*fn)(int argc, char **argv);
        const char *help;
} commands[] = {
    {"worker", kb_cmd_worker, "run the worker (roles from worker.roles)"},
    {"topics", kb_cmd_topics, "create the topics (topics create)"},
    {"replay", kb_cmd_replay, "re-drive dead-lettered items"},
    {"check-config", kb_cmd_check_config,
     "validate and print the effective configuration"},
    {"submit", kb_cmd_submit,
     "publish a batch from an OpenAI/Anthropic/native JSONL file"},
    {"collect", kb_cmd_collect,
     "wait for a batch and write its results (OpenAI Batch output)"},
    {"status", kb_cmd_status, "status and counts of a batch"},
    {"cancel", kb_cmd_cancel, "publish a cancel command for a batch"},
};

static void usage(FILE *out) {
        size_t i;
        fprintf(out, "usage: kbatch [--version] [--help] COMMAND [ARGS]\n\n"
                     "Kafka-native batch inference.\n\ncommands:\n");
        for (i = 0; i < sizeof(commands) / sizeof(*commands); i++)
                fprintf(out, "  %-14s %s\n", commands[i].name,
                        commands[i].help);
        fprintf(out, "\n'kbatch COMMAND --help' for a command's options.\n"
                     "Exit codes: 0 success, 1 runtime failure, 2 usage or "
                     "configuration error.\n");
}

int main(int argc, char **argv) {
        size_t i;
        int rc;
        if (argc < 2) {
                fprintf(stderr, "kbatch: missing command (see kbatch --help)\n");
                return 2;
        }
        if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V")) {
                /* A header of another version than the library loaded
                 * (a build that missed build/rdkafka) shows. */
                if (rd_kafka_version() != RD_KAFKA_VERSION)
                        printf("kbatch %s (%s; librdkafka %s, built with "
                               "headers %d.%d.%d, %s)\n",
                               KB_VERSION, KB_GITREV, rd_kafka_version_str(),
                               RD_KAFKA_VERSION >> 24,
                               (RD_KAFKA_VERSION >> 16) & 0xff,
                               (RD_KAFKA_VERSION >> 8) & 0xff, curl_version());
                else
                        printf("kbatch %s (%s; librdkafka %s, %s)\n",
                               KB_VERSION, KB_GITREV, rd_kafka_version_str(),
                               curl_version());
                return 0;
        }
        if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
            !strcmp(argv[1], "help")) {
                usage(stdout);
                return 0;
        }
        for (i = 0; i < sizeof(commands) / sizeof(*commands); i++) {
                if (!strcmp(argv[1], commands[i].name)) {
                        curl_global_init(CURL_GLOBAL_DEFAULT);
                        rc = commands[i].fn(argc - 1, argv + 1);
                        curl_global_cleanup();
                        return rc;
                }
        }
        if (argv[1][0] == '-')
                fprintf(stderr, "kbatch: unknown option '%s' (see kbatch "
                                "--help)\n",
                        argv[1]);
        else
                fprintf(stderr, "kbatch: unknown command '%s' (see kbatch "
                                "--help)\n",
                        argv[1]);
        return 2;
}
