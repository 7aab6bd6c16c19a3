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

/* The process: its loop and the roles it runs (each NULL when not run). */
typedef struct {
        kb_conf_t *wk_conf;
        kb_loop_t *wk_loop;
        kb_admin_t *wk_admin;
        kb_items_t *wk_items;
        kb_aggregator_t *wk_agg;
        kb_notifier_t *wk_nt;
        kb_api_t *wk_api;
} worker_t;

/* -c FILE and no operand. -1 to go on (*path set), else the exit code. */
static int worker_args(int argc, char **argv, const char **path) {
        static const struct option opts[] = {{"config", 1, NULL, 'c'},
                                             {"help", 0, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
        int c;
        opterr = 0;
        optind = 1;
        while ((c = getopt_long(argc, argv, "+c:h", opts, NULL)) != -1) {
                switch (c) {
                case 'c':
                        *path = optarg;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                default:
                        return kb_cmd_usage_error("worker", "bad option '%s'",
                                                  argv[optind - 1]);
                }
        }
        if (optind < argc) {
                fprintf(stderr, "kbatch worker: unexpected argument '%s'\n",
                        argv[optind]);
                return 2;
        }
        return -1;
}

/* The loop, the admin server and the roles of worker.roles. 0, or the exit
 * code (1 runtime, 2 configuration) after the error is logged. */
static int worker_start(worker_t *wk) {
        const kb_conf_t *conf = wk->wk_conf;
        char errstr[1024];
        int flag = 0;

        if (!(wk->wk_loop = kb_loop_new(errstr, sizeof(errstr)))) {
                kb_log(KB_LOG_ERROR, "worker", "%s", errstr);
                return 1;
        }
        kb_loop_signals(wk->wk_loop);
        /* First, so that /healthz and /metrics answer while the roles
         * connect (/readyz says "starting"). */
        if (conf->admin_listen[0] &&
            !(wk->wk_admin = kb_admin_new(conf->admin_listen, errstr,
                                          sizeof(errstr)))) {
                kb_log(KB_LOG_ERROR, "worker", "%s", errstr);
                return 1;
        }
        if ((conf->worker_roles & KB_ROLE_ITEMS) &&
            !(wk->wk_items = kb_items_new(conf, wk->wk_loop, &flag, errstr,
                                          sizeof(errstr)))) {
                /* The configuration (client settings, route keys), or a
                 * cluster that cannot be reached (flag: runtime). */
                kb_log(KB_LOG_ERROR, "worker", "items: %s", errstr);
                return flag ? 1 : 2;
        }
        if ((conf->worker_roles & KB_ROLE_AGGREGATOR) &&
            !(wk->wk_agg = kb_aggregator_new(conf, wk->wk_loop, errstr,
                                             sizeof(errstr)))) {
                kb_log(KB_LOG_ERROR, "worker", "aggregator: %s", errstr);
                return 1;
        }
        if ((conf->worker_roles & KB_ROLE_NOTIFIER) &&
            !(wk->wk_nt = kb_notifier_new(conf, wk->wk_loop, errstr,
                                          sizeof(errstr)))) {
                /* Configuration: the secret file, client settings. */
                kb_log(KB_LOG_ERROR, "worker", "notifier: %s", errstr);
                return 2;
        }
        flag = 0;
        if ((conf->worker_roles & KB_ROLE_API) &&
            !(wk->wk_api = kb_api_new(conf, &flag, errstr, sizeof(errstr)))) {
                /* flag: a configuration error. */
                kb_log(KB_LOG_ERROR, "worker", "api: %s", errstr);
                return flag ? 2 : 1;
        }
        return 0;
}

/* Serves the roles until a stop is requested or one fails. Returns 1 when
 * the loop itself failed, else 0. */
static int worker_serve(worker_t *wk) {
        int64_t next_ready = 0;
        while (!kb_loop_stop_requested) {
                int wait = 1000, w;
                int64_t now = kb_now_ms();
                kb_admin_heartbeat(wk->wk_admin, now);
                if (wk->wk_admin && now >= next_ready) {
                        publish_ready(wk->wk_admin, wk->wk_items, wk->wk_agg,
                                      wk->wk_nt, wk->wk_api);
                        next_ready = now + 250;
                }
                if (wk->wk_items) {
                        w = kb_items_serve(wk->wk_items, now);
                        if (w < wait)
                                wait = w;
                        if (kb_items_fatal(wk->wk_items))
                                break;
                }
                if (wk->wk_agg) {
                        w = kb_aggregator_serve(wk->wk_agg, now);
                        if (w < wait)
                                wait = w;
                        if (kb_aggregator_fatal(wk->wk_agg))
                                break;
                }
                if (wk->wk_nt) {
                        w = kb_notifier_serve(wk->wk_nt, now);
                        if (w < wait)
                                wait = w;
                        if (kb_notifier_fatal(wk->wk_nt))
                                break;
                }
                if (wk->wk_api && kb_api_fatal(wk->wk_api))
                        break;
                if (kb_loop_drive(wk->wk_loop, wait) != 0)
                        return 1;
        }
        return 0;
}

/* Graceful stop: the API first (no new requests while the other roles
 * drain), then each role drains. Returns rc, or 1 when a role had failed. */
static int worker_stop(worker_t *wk, int rc) {
        const kb_conf_t *conf = wk->wk_conf;
        kb_admin_set_ready(wk->wk_admin, 0, "shutting down");
        if (wk->wk_api && kb_api_fatal(wk->wk_api))
                rc = 1;
        kb_api_destroy(wk->wk_api);
        wk->wk_api = NULL;
        if (wk->wk_items) {
                if (kb_items_fatal(wk->wk_items))
                        rc = 1;
                kb_items_shutdown(wk->wk_items, conf->worker_shutdown_drain_ms);
        }
        if (wk->wk_agg) {
                if (kb_aggregator_fatal(wk->wk_agg))
                        rc = 1;
                kb_aggregator_shutdown(wk->wk_agg);
        }
        if (wk->wk_nt) {
                if (kb_notifier_fatal(wk->wk_nt))
                        rc = 1;
                kb_notifier_shutdown(wk->wk_nt, conf->worker_shutdown_drain_ms);
        }
        kb_log(KB_LOG_INFO, "worker", "exiting with %d", rc);
        return rc;
}

int kb_cmd_worker(int argc, char **argv) {
        const char *path = NULL;
        worker_t wk;
        int rc;

        if ((rc = worker_args(argc, argv, &path)) >= 0)
                return rc;
        memset(&wk, 0, sizeof(wk));
        if (!(wk.wk_conf = kb_cmd_conf_load(path)))
                return 2;
        kb_log(KB_LOG_INFO, "worker", "kbatch %s starting as %s", KB_VERSION,
               kb_conf_instance_id(wk.wk_conf));
        if ((rc = worker_start(&wk)) == 0)
                rc = worker_stop(&wk, worker_serve(&wk));
        kb_api_destroy(wk.wk_api);
        kb_notifier_destroy(wk.wk_nt);
        kb_aggregator_destroy(wk.wk_agg);
        kb_items_destroy(wk.wk_items);
        kb_admin_destroy(wk.wk_admin);
        kb_loop_destroy(wk.wk_loop);
        kb_conf_destroy(wk.wk_conf);
        return rc;
}
