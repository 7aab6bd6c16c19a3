/* kbatch worker [-c FILE]: runs the roles named in worker.roles. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "conf.h"
#include "items.h"
#include "log.h"
#include "loop.h"

static void usage(FILE *out) {
        fprintf(out,
                "usage: kbatch worker [-c FILE]\n"
                "  Runs the roles named in worker.roles (items, aggregator,\n"
                "  notifier) until SIGTERM/SIGINT, then drains and exits 0.\n"
                "  -c, --config FILE   configuration (default: $KBATCH_CONFIG,\n"
                "                      else ./worker.conf, else built-in)\n");
}

int kb_cmd_worker(int argc, char **argv) {
        static const struct option opts[] = {{"config", 1, NULL, 'c'},
                                             {"help", 0, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
        const char *path = NULL;
        char errstr[1024];
        kb_conf_t *conf;
        kb_loop_t *loop = NULL;
        kb_items_t *items = NULL;
        int c, rc = 0;

        opterr = 0;
        optind = 1;
        while ((c = getopt_long(argc, argv, "+c:h", opts, NULL)) != -1) {
                switch (c) {
                case 'c':
                        path = optarg;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                default:
                        fprintf(stderr, "kbatch worker: bad option '%s' (see "
                                        "kbatch worker --help)\n",
                                argv[optind - 1]);
                        return 2;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "kbatch worker: unexpected argument '%s'\n",
                        argv[optind]);
                return 2;
        }
        if (!(conf = kb_cmd_conf_load(path)))
                return 2;
        kb_log(KB_LOG_INFO, "worker", "kbatch %s starting as %s", KB_VERSION,
               kb_conf_instance_id(conf));

        if (!(loop = kb_loop_new(errstr, sizeof(errstr)))) {
                kb_log(KB_LOG_ERROR, "worker", "%s", errstr);
                rc = 1;
                goto out;
        }
        kb_loop_signals(loop);
        if ((conf->worker_roles & KB_ROLE_ITEMS) &&
            !(items = kb_items_new(conf, loop, errstr, sizeof(errstr)))) {
                /* Nothing has connected yet: what fails here is the
                 * configuration (client settings, route keys). */
                kb_log(KB_LOG_ERROR, "worker", "items: %s", errstr);
                rc = 2;
                goto out;
        }

        while (!kb_loop_stop_requested) {
                int wait = 1000, w;
                int64_t now = kb_now_ms();
                if (items) {
                        w = kb_items_serve(items, now);
                        if (w < wait)
                                wait = w;
                        if (kb_items_fatal(items))
                                break;
                }
                if (kb_loop_drive(loop, wait) != 0) {
                        rc = 1;
                        break;
                }
        }
        if (items) {
                if (kb_items_fatal(items))
                        rc = 1;
                kb_items_shutdown(items, conf->worker_shutdown_drain_ms);
        }
        kb_log(KB_LOG_INFO, "worker", "exiting with %d", rc);
out:
        kb_items_destroy(items);
        kb_loop_destroy(loop);
        kb_conf_destroy(conf);
        return rc;
}
