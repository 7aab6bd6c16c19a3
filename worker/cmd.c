/* cmd: helpers shared by the command implementations. */
#include "cmd.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "codec.h"
#include "conf.h"
#include "log.h"
#include "loop.h"

kb_conf_t *kb_cmd_conf_load(const char *given_path) {
        char errstr[1024];
        kb_conf_t *conf = kb_conf_load(kb_conf_default_path(given_path), NULL,
                                       errstr, sizeof(errstr));
        if (!conf) {
                fprintf(stderr, "%s\n", errstr);
                return NULL;
        }
        kb_log_init((kb_log_level_t)kb_log_level_parse(conf->log_level),
                    (kb_log_format_t)kb_log_format_parse(conf->log_format),
                    NULL);
        kb_log_set_instance(kb_conf_instance_id(conf));
        return conf;
}

int kb_cmd_usage_error(const char *cmd, const char *fmt, ...) {
        va_list ap;
        fprintf(stderr, "kbatch %s: ", cmd);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fprintf(stderr, " (see kbatch %s --help)\n", cmd);
        return 2;
}

int kb_cmd_batch_id_arg(const char *cmd, int argc, char **argv, int optind,
                        const char **idp) {
        *idp = NULL;
        if (optind >= argc)
                return kb_cmd_usage_error(cmd, "missing BATCH_ID");
        if (optind + 1 < argc) {
                fprintf(stderr, "kbatch %s: unexpected argument '%s'\n", cmd,
                        argv[optind + 1]);
                return 2;
        }
        if (!kb_codec_batch_id_valid(argv[optind])) {
                fprintf(stderr,
                        "kbatch %s: '%.200s' is not a batch id (1-%d "
                        "characters of [A-Za-z0-9._:-])\n",
                        cmd, argv[optind], KB_BATCH_ID_MAX);
                return 2;
        }
        *idp = argv[optind];
        return 0;
}

/* ---- progress on stderr ---- */

void kb_cmd_progress_init(kb_cmd_progress_t *pg, int quiet, int interval_ms) {
        memset(pg, 0, sizeof(*pg));
        pg->pg_on = !quiet && isatty(STDERR_FILENO);
        pg->pg_interval_ms = interval_ms;
}

void kb_cmd_progress_show(kb_cmd_progress_t *pg, int force, const char *fmt,
                          ...) {
        va_list ap;
        int64_t now;
        if (!pg->pg_on)
                return;
        now = kb_now_ms();
        if (!force && now - pg->pg_last < pg->pg_interval_ms)
                return;
        pg->pg_last = now;
        pg->pg_shown = 1;
        fputs("\r\033[K", stderr);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fflush(stderr);
}

void kb_cmd_progress_bar(kb_cmd_progress_t *pg, int force, const char *prefix,
                         int64_t done, int64_t total, const char *suffix) {
        char bar[31];
        int i, n = total > 0 ? (int)(done * 30 / total) : 0;
        if (!pg->pg_on)
                return;
        for (i = 0; i < 30; i++)
                bar[i] = i < n ? '#' : '.';
        bar[30] = '\0';
        kb_cmd_progress_show(pg, force, "%s[%s] %3d%% %lld/%lld %s", prefix,
                             bar, total > 0 ? (int)(done * 100 / total) : 0,
                             (long long)done, (long long)total, suffix);
}

void kb_cmd_progress_clear(kb_cmd_progress_t *pg) {
        if (pg->pg_on && pg->pg_shown) {
                fputs("\r\033[K", stderr);
                fflush(stderr);
        }
        pg->pg_shown = 0;
}
