/* kbatch worker [-c FILE]: runs the roles named in worker.roles. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "aggregator.h"
#include "api.h"
#include "cmd.h"
#include "conf.h"
#include "items.h"
#include "log.h"
#include "loop.h"
#include "notifier.h"

static void usage(FILE *out) {
        fprintf(out,
                "usage: kbatch worker [-c FILE]\n"
                "  Runs the roles named in worker.roles (items, aggregator,\n"
                "  notifier, api) until SIGTERM/SIGINT, then drains and exits 0.\n"
                "  -c, --config FILE   configuration (default: $KBATCH_CONFIG,\n"
                "                      else ./worker.conf, else built-in)\n");
}

/* Readiness for /readyz: every role this process runs is ready. */
static void publish_ready(kb_admin_t *ad, kb_items_t *items,
                          kb_aggregator_t *agg, kb_notifier_t *nt,
                          kb_api_t *api) {
        char why[512] = "";
        int ok = 1;
        if (items && !kb_items_readiness(items, why, sizeof(why)))
                ok = 0;
        else if (agg && !kb_aggregator_ready(agg)) {
                ok = 0;
                snprintf(why, sizeof(why), "aggregator: transactions not "
                                           "initialized or no assignment yet");
        } else if (nt && !kb_notifier_ready(nt)) {
                ok = 0;
                snprintf(why, sizeof(why), "notifier: no assignment yet");
        } else if (api && !kb_api_ready(api)) {
                ok = 0;
                snprintf(why, sizeof(why), "api: reading files and batch "
                                           "records");
        }
        kb_admin_set_ready(ad, ok, why);
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
        kb_aggregator_t *agg = NULL;
        kb_notifier_t *nt = NULL;
        kb_admin_t *admin = NULL;
        kb_api_t *api = NULL;
        int64_t next_ready = 0;
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
        /* First, so that /healthz and /metrics answer while the roles
         * connect (/readyz says "starting"). */
        if (conf->admin_listen[0] &&
            !(admin = kb_admin_new(conf->admin_listen, errstr,
                                   sizeof(errstr)))) {
                kb_log(KB_LOG_ERROR, "worker", "%s", errstr);
                rc = 1;
                goto out;
        }
        if (conf->worker_roles & KB_ROLE_ITEMS) {
                int runtime = 0;
                if (!(items = kb_items_new(conf, loop, &runtime, errstr,
                                           sizeof(errstr)))) {
                        /* The configuration (client settings, route keys),
                         * or a cluster that cannot be reached (runtime). */
                        kb_log(KB_LOG_ERROR, "worker", "items: %s", errstr);
                        rc = runtime ? 1 : 2;
                        goto out;
                }
        }
        if ((conf->worker_roles & KB_ROLE_AGGREGATOR) &&
            !(agg = kb_aggregator_new(conf, loop, errstr, sizeof(errstr)))) {
                kb_log(KB_LOG_ERROR, "worker", "aggregator: %s", errstr);
                rc = 1;
                goto out;
        }
        if ((conf->worker_roles & KB_ROLE_NOTIFIER) &&
            !(nt = kb_notifier_new(conf, loop, errstr, sizeof(errstr)))) {
                /* Configuration: the secret file, client settings. */
                kb_log(KB_LOG_ERROR, "worker", "notifier: %s", errstr);
                rc = 2;
                goto out;
        }
        if (conf->worker_roles & KB_ROLE_API) {
                int is_config = 0;
                if (!(api = kb_api_new(conf, &is_config, errstr,
                                       sizeof(errstr)))) {
                        kb_log(KB_LOG_ERROR, "worker", "api: %s", errstr);
                        rc = is_config ? 2 : 1;
                        goto out;
                }
        }

        while (!kb_loop_stop_requested) {
                int wait = 1000, w;
                int64_t now = kb_now_ms();
                kb_admin_heartbeat(admin, now);
                if (admin && now >= next_ready) {
                        publish_ready(admin, items, agg, nt, api);
                        next_ready = now + 250;
                }
                if (items) {
                        w = kb_items_serve(items, now);
                        if (w < wait)
                                wait = w;
                        if (kb_items_fatal(items))
                                break;
                }
                if (agg) {
                        w = kb_aggregator_serve(agg, now);
                        if (w < wait)
                                wait = w;
                        if (kb_aggregator_fatal(agg))
                                break;
                }
                if (nt) {
                        w = kb_notifier_serve(nt, now);
                        if (w < wait)
                                wait = w;
                        if (kb_notifier_fatal(nt))
                                break;
                }
                if (api && kb_api_fatal(api))
                        break;
                if (kb_loop_drive(loop, wait) != 0) {
                        rc = 1;
                        break;
                }
        }
        kb_admin_set_ready(admin, 0, "shutting down");
        if (api && kb_api_fatal(api))
                rc = 1;
        /* First: no new requests while the other roles drain. */
        kb_api_destroy(api);
        api = NULL;
        if (items) {
                if (kb_items_fatal(items))
                        rc = 1;
                kb_items_shutdown(items, conf->worker_shutdown_drain_ms);
        }
        if (agg) {
                if (kb_aggregator_fatal(agg))
                        rc = 1;
                kb_aggregator_shutdown(agg);
        }
        if (nt) {
                if (kb_notifier_fatal(nt))
                        rc = 1;
                kb_notifier_shutdown(nt, conf->worker_shutdown_drain_ms);
        }
        kb_log(KB_LOG_INFO, "worker", "exiting with %d", rc);
out:
        kb_api_destroy(api);
        kb_notifier_destroy(nt);
        kb_aggregator_destroy(agg);
        kb_items_destroy(items);
        kb_admin_destroy(admin);
        kb_loop_destroy(loop);
        kb_conf_destroy(conf);
        return rc;
}
