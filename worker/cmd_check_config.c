/* kbatch check-config [-c FILE] [-q]: validates the configuration and prints
 * the effective one (file + KBATCH_* environment + defaults), secrets
 * redacted. The output is itself a valid worker.conf. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "conf.h"

static void usage(FILE *out) {
        fprintf(out,
                "usage: kbatch check-config [-c FILE] [-q]\n"
                "  Validates the configuration and prints the effective one\n"
                "  (file, then KBATCH_<SECTION>_<KEY> environment overrides),\n"
                "  secrets redacted. Exit 0 when valid, 2 with one\n"
                "  'file:line: message' line on stderr when not.\n"
                "  -c, --config FILE   the file (default: $KBATCH_CONFIG, else\n"
                "                      ./worker.conf if it exists, else the\n"
                "                      built-in defaults)\n"
                "  -q, --quiet         validate only, print nothing\n"
                "  -h, --help          this help\n");
}

int kb_cmd_check_config(int argc, char **argv) {
        static const struct option opts[] = { { "config", 1, NULL, 'c' },
                                              { "quiet", 0, NULL, 'q' },
                                              { "help", 0, NULL, 'h' },
                                              { NULL, 0, NULL, 0 } };
        const char *given = NULL, *path;
        char errstr[1024];
        kb_conf_t *conf;
        int c, quiet = 0;

        opterr = 0;
        optind = 1;
        while ((c = getopt_long(argc, argv, "+:c:qh", opts, NULL)) != -1) {
                switch (c) {
                case 'c':
                        given = optarg;
                        break;
                case 'q':
                        quiet = 1;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                case ':':
                        fprintf(stderr,
                                "kbatch check-config: option '%s' needs a "
                                "FILE argument\n",
                                argv[optind - 1]);
                        return 2;
                default:
                        if (optopt)
                                fprintf(stderr,
                                        "kbatch check-config: unknown option "
                                        "'-%c' (see kbatch check-config "
                                        "--help)\n",
                                        optopt);
                        else
                                fprintf(stderr,
                                        "kbatch check-config: unknown option "
                                        "'%s' (see kbatch check-config "
                                        "--help)\n",
                                        argv[optind - 1]);
                        return 2;
                }
        }
        if (optind < argc) {
                fprintf(stderr,
                        "kbatch check-config: unexpected argument '%s' (use "
                        "-c FILE)\n",
                        argv[optind]);
                return 2;
        }

        path = kb_conf_default_path(given);
        if (!(conf = kb_conf_load(path, NULL, errstr, sizeof(errstr)))) {
                fprintf(stderr, "%s\n", errstr);
                return 2;
        }
        if (!quiet) {
                printf("# kbatch effective configuration: %s%s\n"
                       "# (KBATCH_* environment overrides applied, secrets "
                       "shown as \"***\")\n\n",
                       path ? path : "built-in defaults",
                       path ? " + defaults" : "");
                kb_conf_print(conf, stdout);
        }
        kb_conf_destroy(conf);
        if (fflush(stdout) != 0) {
                fprintf(stderr, "kbatch check-config: cannot write output\n");
                return 1;
        }
        return 0;
}
