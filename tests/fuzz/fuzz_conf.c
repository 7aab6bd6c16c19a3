/* libFuzzer target: the configuration parser (kb_conf_load on a file).
 *
 * worker.conf is written by operators, not attackers, but a parser that
 * crashes, leaks or reads out of bounds on a typo is a bug all the same,
 * and kbatch check-config promises "file:line: message" for every error.
 * Checks: NULL comes with an error kind and a message; a loaded config has
 * every field a worker relies on, and prints (kb_conf_print) without
 * trouble. Inputs naming other files (@include, plugin libraries) are
 * skipped: they would fuzz the file system, not the parser. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "conf.h"
#include "fuzz_check.h"

static char path[256];
static FILE *devnull;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
        extern char **environ;
        char **e;
        char dir[] = "/tmp/kb-fuzz-conf-XXXXXX";
        (void)argc;
        (void)argv;
        /* the environment overrides the file: start from none */
        for (;;) {
                char name[256];
                size_t n;
                for (e = environ; *e; e++)
                        if (!strncmp(*e, "KBATCH_", 7))
                                break;
                if (!*e)
                        break;
                n = strcspn(*e, "=");
                if (n >= sizeof(name))
                        n = sizeof(name) - 1;
                memcpy(name, *e, n);
                name[n] = '\0';
                unsetenv(name);
        }
        if (!mkdtemp(dir))
                abort();
        snprintf(path, sizeof(path), "%s/worker.conf", dir);
        devnull = fopen("/dev/null", "w");
        return 0;
}

/* Whether d (n bytes) contains needle (lower case), ignoring case. */
static int has_ci(const uint8_t *d, size_t n, const char *needle) {
        static char low[65536];
        size_t i;
        for (i = 0; i < n && i < sizeof(low); i++)
                low[i] = (char)((d[i] >= 'A' && d[i] <= 'Z') ? d[i] + 32 : d[i]);
        return memmem(low, i, needle, strlen(needle)) != NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        FILE *fp;
        kb_conf_t *c;
        kb_conf_err_t ek = KB_CONF_OK;
        char err[1024];
        size_t i;

        if (size > 65536 || has_ci(data, size, "include") ||
            has_ci(data, size, "plugin"))
                return 0;
        if (!(fp = fopen(path, "wb")))
                return 0;
        if (size && fwrite(data, 1, size, fp) != size) {
                fclose(fp);
                return 0;
        }
        fclose(fp);
        err[0] = '\0';
        c = kb_conf_load(path, &ek, err, sizeof(err));
        if (!c) {
                CHECK(ek != KB_CONF_OK);
                CHECK(err[0]);
                return 0;
        }
        CHECK(c->kafka_bootstrap_servers && c->kafka_group_id);
        for (i = 0; i < KB_TOPIC__CNT; i++)
                CHECK(c->topics_name[i] && c->topics_name[i][0]);
        CHECK(c->route_cnt >= 1 && c->routes);
        for (i = 0; i < c->route_cnt; i++)
                CHECK(c->routes[i].model && c->routes[i].base_url);
        CHECK(c->worker_max_inflight >= 1);
        CHECK(c->retry_delay_cnt >= 1 && c->retry_delays_ms);
        CHECK(kb_conf_instance_id(c) && kb_conf_instance_id(c)[0]);
        if (devnull)
                kb_conf_print(c, devnull);
        kb_conf_destroy(c);
        return 0;
}
