/* Starts and stops tests/fakes/fake_registry (built next to the test
 * binaries' directory: <build>/fake_registry) from unit tests. Header-only:
 * included by test_registry.c and test_serde.c. */
#ifndef KB_TEST_FAKE_REGISTRY_H
#define KB_TEST_FAKE_REGISTRY_H

#include <criterion/criterion.h>
#include <curl/curl.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct fake_reg_s {
        pid_t fr_pid;
        int fr_port;
        char fr_url[64];
} fake_reg_t;

/* <dir of this binary>/../fake_registry */
static void fake_reg_binary(char *buf, size_t size) {
        char exe[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
        cr_assert(n > 0);
        exe[n] = '\0';
        snprintf(buf, size, "%s/../fake_registry", dirname(exe));
}

/* Starts a fake registry with extra arguments (NULL-terminated list, may be
 * NULL); port 0: any free port. */
static void fake_reg_start(fake_reg_t *f, int port, const char *const *extra) {
        char bin[PATH_MAX], pf[128], ps[16];
        const char *argv[24];
        int argc = 0, i;
        static int seq;
        struct timespec ts = {0, 10 * 1000 * 1000};

        fake_reg_binary(bin, sizeof(bin));
        snprintf(pf, sizeof(pf), "/tmp/kb-fake-registry-%d-%d.port",
                 (int)getpid(), seq++);
        unlink(pf);
        snprintf(ps, sizeof(ps), "%d", port);
        argv[argc++] = bin;
        argv[argc++] = "--port";
        argv[argc++] = ps;
        argv[argc++] = "--port-file";
        argv[argc++] = pf;
        for (i = 0; extra && extra[i] && argc < 22; i++)
                argv[argc++] = extra[i];
        argv[argc] = NULL;
        f->fr_pid = fork();
        cr_assert(f->fr_pid >= 0);
        if (f->fr_pid == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (!freopen("/dev/null", "w", stdout))
                        _exit(127);
                execv(bin, (char *const *)argv);
                _exit(127);
        }
        for (i = 0; i < 500; i++) {
                FILE *fp = fopen(pf, "r");
                int p = 0;
                if (fp) {
                        if (fscanf(fp, "%d", &p) != 1)
                                p = 0;
                        fclose(fp);
                }
                if (p > 0) {
                        f->fr_port = p;
                        break;
                }
                nanosleep(&ts, NULL);
        }
        unlink(pf);
        cr_assert(f->fr_port > 0, "fake_registry did not start (%s)", bin);
        snprintf(f->fr_url, sizeof(f->fr_url), "http://127.0.0.1:%d",
                 f->fr_port);
}

static void fake_reg_stop(fake_reg_t *f) {
        if (f->fr_pid > 0) {
                kill(f->fr_pid, SIGTERM);
                waitpid(f->fr_pid, NULL, 0);
                f->fr_pid = 0;
        }
}

static size_t fake_reg_sink(char *p, size_t s, size_t n, void *ud) {
        (void)p;
        (void)ud;
        return s * n;
}

/* POSTs a JSON body to the fake (its /_fake/config, or the API). */
static long fake_reg_post(const fake_reg_t *f, const char *path,
                          const char *body) {
        CURL *e = curl_easy_init();
        char url[512];
        long st = 0;
        struct curl_slist *h =
                curl_slist_append(NULL, "Content-Type: application/json");
        snprintf(url, sizeof(url), "%s%s", f->fr_url, path);
        curl_easy_setopt(e, CURLOPT_URL, url);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, fake_reg_sink);
        curl_easy_perform(e);
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &st);
        curl_slist_free_all(h);
        curl_easy_cleanup(e);
        return st;
}

/* Registers a schema text under subject with the fake directly. */
static void fake_reg_register(const fake_reg_t *f, const char *subject,
                              const char *schema) {
        json_t *b = json_pack("{s:s}", "schema", schema);
        char *s = json_dumps(b, JSON_COMPACT);
        char path[256];
        snprintf(path, sizeof(path), "/subjects/%s/versions", subject);
        cr_assert_eq(fake_reg_post(f, path, s), 200);
        free(s);
        json_decref(b);
}

#endif
