/* registry: the Schema Registry REST client against the fake registry:
 * caches, failover, auth, timeouts, TLS, asynchronous mode. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "loop.h"
#include "registry.h"

#include "fake_registry.h"

static fake_reg_t reg;

static const char *schema_a =
        "{\"type\":\"record\",\"name\":\"A\",\"fields\":[{\"name\":\"x\","
        "\"type\":\"int\"}]}";
static const char *schema_b =
        "{\"type\":\"record\",\"name\":\"B\",\"fields\":[{\"name\":\"y\","
        "\"type\":\"string\"}]}";

static kb_registry_t *client(const char *urls, kb_loop_t *loop,
                             const kb_registry_conf_t *base) {
        kb_registry_conf_t rc;
        char err[256];
        kb_registry_t *rg;
        if (base)
                rc = *base;
        else {
                memset(&rc, 0, sizeof(rc));
                rc.rc_tls_verify = 1;
                rc.rc_timeout_ms = 2000;
        }
        rc.rc_urls = urls;
        rg = kb_registry_new(&rc, loop, err, sizeof(err));
        cr_assert(rg, "%s", err);
        return rg;
}

TestSuite(registry, .fini = NULL, .timeout = 30);

static void stop_reg(void) {
        fake_reg_stop(&reg);
}

Test(registry, bad_url_lists) {
        kb_registry_conf_t rc;
        char err[256];
        memset(&rc, 0, sizeof(rc));
        rc.rc_urls = " , ";
        cr_assert_null(kb_registry_new(&rc, NULL, err, sizeof(err)));
        cr_assert(strstr(err, "no schema registry URL"), "%s", err);
        rc.rc_urls = "http://a,http://b,http://c,http://d,http://e,http://f,"
                     "http://g,http://h,http://i";
        cr_assert_null(kb_registry_new(&rc, NULL, err, sizeof(err)));
        kb_registry_destroy(NULL);
}

/* Register, look up, fetch by id; each answer is cached. */
Test(registry, register_lookup_fetch_cached, .fini = stop_reg) {
        kb_registry_t *rg;
        int32_t ida = -1, idb = -1, id2 = -1;
        const char *text;
        char err[512];
        uint64_t n;

        fake_reg_start(&reg, 0, NULL);
        rg = client(reg.fr_url, NULL, NULL);
        /* look-up before registration: not found */
        cr_assert_eq(kb_registry_subject_id(rg, "t-value", schema_a, 0, &ida,
                                            err, sizeof(err)),
                     KB_REG_NOT_FOUND);
        cr_assert(strstr(err, "subject 't-value': schema not registered"), "%s",
                  err);
        cr_assert(strstr(err, "40401"), "%s", err);
        cr_assert_eq(kb_registry_subject_id(rg, "t-value", schema_a, 1, &ida,
                                            err, sizeof(err)),
                     KB_REG_OK, "%s", err);
        cr_assert_eq(kb_registry_subject_id(rg, "u-value", schema_b, 1, &idb,
                                            err, sizeof(err)),
                     KB_REG_OK, "%s", err);
        cr_assert_neq(ida, idb);
        n = kb_registry_requests(rg);
        cr_assert_eq(kb_registry_subject_id(rg, "t-value", schema_a, 1, &id2,
                                            err, sizeof(err)),
                     KB_REG_OK);
        cr_assert_eq(id2, ida);
        /* learned by id from the registration: no request */
        cr_assert_eq(kb_registry_schema_by_id(rg, ida, &text, err, sizeof(err)),
                     KB_REG_OK);
        cr_assert_str_eq(text, schema_a);
        cr_assert_eq(kb_registry_requests(rg), n, "served from the caches");
        kb_registry_destroy(rg);

        /* a fresh client fetches by id, once */
        rg = client(reg.fr_url, NULL, NULL);
        cr_assert_eq(kb_registry_schema_by_id(rg, idb, &text, err, sizeof(err)),
                     KB_REG_OK, "%s", err);
        cr_assert_str_eq(text, schema_b);
        cr_assert_eq(kb_registry_schema_by_id(rg, idb, &text, err, sizeof(err)),
                     KB_REG_OK);
        cr_assert_eq(kb_registry_requests(rg), 1);
        /* look-up only, now registered */
        cr_assert_eq(kb_registry_subject_id(rg, "u-value", schema_b, 0, &id2,
                                            err, sizeof(err)),
                     KB_REG_OK, "%s", err);
        cr_assert_eq(id2, idb);
        /* unknown id: NOT_FOUND with the registry's words, cached */
        cr_assert_eq(kb_registry_schema_by_id(rg, 777, &text, err, sizeof(err)),
                     KB_REG_NOT_FOUND);
        cr_assert(strstr(err, "schema id 777 not found in the schema "
                              "registry (HTTP 404, error 40403"),
                  "%s", err);
        n = kb_registry_requests(rg);
        cr_assert_eq(kb_registry_schema_by_id(rg, 777, &text, err, sizeof(err)),
                     KB_REG_NOT_FOUND);
        cr_assert_eq(kb_registry_requests(rg), n);
        cr_assert(kb_registry_healthy(rg, err, sizeof(err)));
        kb_registry_destroy(rg);
}

/* The registry refuses an invalid schema: REJECTED, not unavailable. */
Test(registry, rejected_schema, .fini = stop_reg) {
        kb_registry_t *rg;
        int32_t id;
        char err[512];
        fake_reg_start(&reg, 0, NULL);
        rg = client(reg.fr_url, NULL, NULL);
        cr_assert_eq(kb_registry_subject_id(rg, "t-value", "not json {", 1, &id,
                                            err, sizeof(err)),
                     KB_REG_REJECTED);
        cr_assert(strstr(err, "422"), "%s", err);
        cr_assert(kb_registry_healthy(rg, err, sizeof(err)));
        kb_registry_destroy(rg);
}

/* A subject's refusal (409: its compatibility rule) is asked again after
 * KB_REGISTRY_NEG_TTL_MS, not kept for the process's life: an operator may
 * relax the rule. */
Test(registry, subject_refusal_asked_again, .fini = stop_reg) {
        kb_registry_t *rg;
        int32_t id = -1;
        const char *text;
        char err[512];
        uint64_t n;
        struct timespec ts = {0, 200 * 1000 * 1000};
        int i;
        kb_registry_res_t r = KB_REG_REJECTED;

        fake_reg_start(&reg, 0, NULL);
        fake_reg_register(&reg, "t-value", schema_a);
        fake_reg_post(&reg, "/_fake/config", "{\"fail_status\":409}");
        rg = client(reg.fr_url, NULL, NULL);
        cr_assert_eq(kb_registry_subject_id(rg, "t-value", schema_a, 1, &id,
                                            err, sizeof(err)),
                     KB_REG_REJECTED);
        cr_assert(strstr(err, "the schema registry refused POST "
                              "/subjects/t-value/versions: HTTP 409"),
                  "%s", err);
        cr_assert(kb_registry_healthy(rg, err, sizeof(err)));
        n = kb_registry_requests(rg);
        fake_reg_post(&reg, "/_fake/config", "{\"fail_status\":0}");
        cr_assert_eq(kb_registry_subject_id(rg, "t-value", schema_a, 1, &id,
                                            err, sizeof(err)),
                     KB_REG_REJECTED, "cached for a while");
        cr_assert_eq(kb_registry_requests(rg), n);
        for (i = 0; i < 75 && r != KB_REG_OK; i++) {
                nanosleep(&ts, NULL);
                r = kb_registry_subject_id(rg, "t-value", schema_a, 1, &id, err,
                                           sizeof(err));
        }
        cr_assert_eq(r, KB_REG_OK, "%s", err);
        cr_assert_eq(id, 1);
        cr_assert_eq(kb_registry_requests(rg), n + 1, "asked once more");
        cr_assert_eq(kb_registry_schema_by_id(rg, 1, &text, err, sizeof(err)),
                     KB_REG_OK, "learned from the registration");
        kb_registry_destroy(rg);
}

/* Several URLs: the dead ones are skipped; the one that answered is asked
 * first next time. */
Test(registry, failover, .fini = stop_reg) {
        kb_registry_t *rg;
        int32_t id;
        const char *text;
        char urls[256], err[512];
        uint64_t n;

        fake_reg_start(&reg, 0, NULL);
        fake_reg_register(&reg, "t-value", schema_a);
        snprintf(urls, sizeof(urls), "http://127.0.0.1:1/, %s/ ", reg.fr_url);
        rg = client(urls, NULL, NULL);
        cr_assert_eq(kb_registry_schema_by_id(rg, 1, &text, err, sizeof(err)),
                     KB_REG_OK, "%s", err);
        cr_assert_eq(kb_registry_requests(rg), 2);
        n = kb_registry_requests(rg);
        cr_assert_eq(kb_registry_subject_id(rg, "t-value", schema_a, 0, &id,
                                            err, sizeof(err)),
                     KB_REG_OK, "%s", err);
        cr_assert_eq(kb_registry_requests(rg), n + 1, "went to the live URL");
        kb_registry_destroy(rg);

        /* a 5xx answer fails over too */
        fake_reg_post(&reg, "/_fake/config", "{\"fail_status\":503}");
        {
                fake_reg_t second;
                fake_reg_start(&second, 0, NULL);
                fake_reg_register(&second, "t-value", schema_a);
                snprintf(urls, sizeof(urls), "%s,%s", reg.fr_url,
                         second.fr_url);
                rg = client(urls, NULL, NULL);
                cr_assert_eq(kb_registry_schema_by_id(rg, 1, &text, err,
                                                      sizeof(err)),
                             KB_REG_OK, "%s", err);
                cr_assert_str_eq(text, schema_a);
                kb_registry_destroy(rg);
                fake_reg_stop(&second);
        }
}

/* A base path (Apicurio serves the API under /apis/ccompat/v7): every
 * request goes below it, on each URL of the list, with or without a final
 * slash. */
Test(registry, base_path, .fini = stop_reg) {
        static const char *const extra[] = {"--base-path", "/apis/ccompat/v7",
                                            NULL};
        kb_registry_t *rg;
        int32_t id = -1, id2 = -1;
        const char *text;
        char urls[256], err[512];

        fake_reg_start(&reg, 0, extra);
        /* nothing answers outside the base path */
        cr_assert_eq(fake_reg_post(&reg, "/subjects/t-value/versions",
                                   "{\"schema\":\"\\\"int\\\"\"}"),
                     404);
        snprintf(urls, sizeof(urls),
                 "http://127.0.0.1:1/apis/ccompat/v7, %s/apis/ccompat/v7/",
                 reg.fr_url);
        rg = client(urls, NULL, NULL);
        cr_assert_eq(kb_registry_subject_id(rg, "t-value", schema_a, 1, &id,
                                            err, sizeof(err)),
                     KB_REG_OK, "%s", err);
        cr_assert_eq(kb_registry_requests(rg), 2, "failed over, then answered");
        kb_registry_destroy(rg);

        rg = client(urls, NULL, NULL);
        cr_assert_eq(kb_registry_schema_by_id(rg, id, &text, err, sizeof(err)),
                     KB_REG_OK, "%s", err);
        cr_assert_str_eq(text, schema_a);
        cr_assert_eq(kb_registry_subject_id(rg, "t-value", schema_a, 0, &id2,
                                            err, sizeof(err)),
                     KB_REG_OK, "%s", err);
        cr_assert_eq(id2, id);
        /* the registry's own 404 (error 40403), not the base path's */
        cr_assert_eq(kb_registry_schema_by_id(rg, 777, &text, err, sizeof(err)),
                     KB_REG_NOT_FOUND);
        cr_assert(strstr(err, "error 40403"), "%s", err);
        kb_registry_destroy(rg);
}

/* Every URL down: UNAVAILABLE, unhealthy with the reason; asked again only
 * after the backoff; healthy again once it answers. */
Test(registry, all_down_then_back, .fini = stop_reg) {
        kb_registry_t *rg;
        const char *text;
        char err[512], why[600];
        int port, i;
        kb_registry_res_t r = KB_REG_UNAVAILABLE;

        fake_reg_start(&reg, 0, NULL);
        port = reg.fr_port;
        fake_reg_stop(&reg);
        rg = client(reg.fr_url, NULL, NULL);
        cr_assert(kb_registry_healthy(rg, why, sizeof(why)), "no request yet");
        cr_assert_eq(kb_registry_schema_by_id(rg, 1, &text, err, sizeof(err)),
                     KB_REG_UNAVAILABLE);
        cr_assert(
                strstr(err, "schema registry unavailable: GET /schemas/ids/1"),
                "%s", err);
        cr_assert_eq(kb_registry_requests(rg), 1);
        cr_assert_eq(kb_registry_schema_by_id(rg, 1, &text, err, sizeof(err)),
                     KB_REG_UNAVAILABLE);
        cr_assert_eq(kb_registry_requests(rg), 1, "backoff: not asked again");
        cr_assert_not(kb_registry_healthy(rg, why, sizeof(why)));
        cr_assert(strstr(why, "schema registry unavailable for"), "%s", why);
        cr_assert(strstr(why, reg.fr_url), "%s", why);

        fake_reg_start(&reg, port, NULL);
        fake_reg_register(&reg, "t-value", schema_a);
        for (i = 0; i < 100 && r != KB_REG_OK; i++) {
                struct timespec ts = {0, 50 * 1000 * 1000};
                nanosleep(&ts, NULL);
                r = kb_registry_schema_by_id(rg, 1, &text, err, sizeof(err));
        }
        cr_assert_eq(r, KB_REG_OK, "%s", err);
        cr_assert(kb_registry_healthy(rg, why, sizeof(why)));
        kb_registry_destroy(rg);
}

/* A slow registry is unavailable after the timeout, not a hang. */
Test(registry, slow_registry_times_out, .fini = stop_reg) {
        kb_registry_conf_t rc;
        kb_registry_t *rg;
        const char *text;
        char err[512];
        int64_t t0;
        const char *args[] = {"--delay-ms", "3000", NULL};

        fake_reg_start(&reg, 0, args);
        memset(&rc, 0, sizeof(rc));
        rc.rc_timeout_ms = 300;
        rg = client(reg.fr_url, NULL, &rc);
        t0 = kb_now_ms();
        cr_assert_eq(kb_registry_schema_by_id(rg, 1, &text, err, sizeof(err)),
                     KB_REG_UNAVAILABLE);
        cr_assert_lt(kb_now_ms() - t0, 2500);
        cr_assert(strstr(err, "imed out") || strstr(err, "imeout"), "%s", err);
        kb_registry_destroy(rg);
}

typedef struct auth_case_s {
        const char *name;
        const char *server[3];
        const char *user, *password, *bearer_env, *bearer_file_text;
        int userinfo; /* credentials in the URL */
        kb_registry_res_t want;
} auth_case_t;

static const auth_case_t auth_cases[] = {
        {"basic_ok",
         {"--user", "alice:s3cret", NULL},
         "alice",
         "s3cret",
         NULL,
         NULL,
         0,
         KB_REG_OK},
        {"basic_wrong",
         {"--user", "alice:s3cret", NULL},
         "alice",
         "nope",
         NULL,
         NULL,
         0,
         KB_REG_UNAVAILABLE},
        {"basic_missing",
         {"--user", "alice:s3cret", NULL},
         NULL,
         NULL,
         NULL,
         NULL,
         0,
         KB_REG_UNAVAILABLE},
        {"basic_in_url",
         {"--user", "alice:s3cret", NULL},
         NULL,
         NULL,
         NULL,
         NULL,
         1,
         KB_REG_OK},
        {"bearer_env",
         {"--token", "tok-123", NULL},
         NULL,
         NULL,
         "KB_TEST_REG_TOKEN",
         NULL,
         0,
         KB_REG_OK},
        {"bearer_file",
         {"--token", "tok-123", NULL},
         NULL,
         NULL,
         NULL,
         "tok-123\n",
         0,
         KB_REG_OK},
        {"bearer_missing",
         {"--token", "tok-123", NULL},
         NULL,
         NULL,
         NULL,
         NULL,
         0,
         KB_REG_UNAVAILABLE},
};

/* Credentials the registry refuses are the operator's problem: the answer
 * is UNAVAILABLE (items wait), with "401" in the reason. */
Test(registry, auth, .fini = stop_reg) {
        size_t i;
        setenv("KB_TEST_REG_TOKEN", "tok-123", 1);
        for (i = 0; i < sizeof(auth_cases) / sizeof(*auth_cases); i++) {
                const auth_case_t *ac = &auth_cases[i];
                kb_registry_conf_t rc;
                kb_registry_t *rg;
                char url[128], tf[64], err[512];
                int32_t id;

                fake_reg_start(&reg, 0, ac->server);
                memset(&rc, 0, sizeof(rc));
                rc.rc_user = ac->user;
                rc.rc_password = ac->password;
                rc.rc_bearer_env = ac->bearer_env;
                if (ac->bearer_file_text) {
                        FILE *f;
                        snprintf(tf, sizeof(tf), "/tmp/kb-test-token-%d",
                                 (int)getpid());
                        f = fopen(tf, "w");
                        fputs(ac->bearer_file_text, f);
                        fclose(f);
                        rc.rc_bearer_file = tf;
                }
                if (ac->userinfo)
                        snprintf(url, sizeof(url),
                                 "http://alice:s3cret@127.0.0.1:%d",
                                 reg.fr_port);
                else
                        snprintf(url, sizeof(url), "%s", reg.fr_url);
                rg = client(url, NULL, &rc);
                cr_assert_eq(kb_registry_subject_id(rg, "t-value", schema_a, 1,
                                                    &id, err, sizeof(err)),
                             ac->want, "%s: %s", ac->name, err);
                if (ac->want != KB_REG_OK)
                        cr_assert(strstr(err, "401"), "%s: %s", ac->name, err);
                kb_registry_destroy(rg);
                if (ac->bearer_file_text)
                        unlink(tf);
                fake_reg_stop(&reg);
        }
}

/* HTTPS with our own CA; without it (verification on) the registry is
 * unavailable; with verification off it works. Skipped when the openssl
 * command or TLS in libmicrohttpd is missing. */
Test(registry, tls, .fini = stop_reg) {
        char dir[64], cmd[1024], crt[128], key[128], url[128], err[512];
        const char *args[5];
        kb_registry_conf_t rc;
        kb_registry_t *rg;
        int32_t id;

        snprintf(dir, sizeof(dir), "/tmp/kb-test-tls-%d", (int)getpid());
        snprintf(crt, sizeof(crt), "%s/crt.pem", dir);
        snprintf(key, sizeof(key), "%s/key.pem", dir);
        snprintf(cmd, sizeof(cmd),
                 "mkdir -p %s && openssl req -x509 -newkey rsa:2048 -nodes "
                 "-keyout %s -out %s -days 2 -subj /CN=localhost "
                 "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 "
                 ">/dev/null 2>&1",
                 dir, key, crt);
        if (system(cmd) != 0)
                cr_skip_test("openssl cannot make a certificate");
        args[0] = "--tls-cert";
        args[1] = crt;
        args[2] = "--tls-key";
        args[3] = key;
        args[4] = NULL;
        fake_reg_start(&reg, 0, args);
        snprintf(url, sizeof(url), "https://127.0.0.1:%d", reg.fr_port);

        memset(&rc, 0, sizeof(rc));
        rc.rc_tls_verify = 1;
        rc.rc_timeout_ms = 3000;
        rg = client(url, NULL, &rc);
        cr_assert_eq(kb_registry_subject_id(rg, "t-value", schema_a, 1, &id,
                                            err, sizeof(err)),
                     KB_REG_UNAVAILABLE, "an unknown CA is refused");
        kb_registry_destroy(rg);

        rc.rc_ca_file = crt;
        rg = client(url, NULL, &rc);
        cr_assert_eq(kb_registry_subject_id(rg, "t-value", schema_a, 1, &id,
                                            err, sizeof(err)),
                     KB_REG_OK, "%s", err);
        kb_registry_destroy(rg);

        rc.rc_ca_file = NULL;
        rc.rc_tls_verify = 0;
        rg = client(url, NULL, &rc);
        cr_assert_eq(kb_registry_subject_id(rg, "t-value", schema_a, 1, &id,
                                            err, sizeof(err)),
                     KB_REG_OK, "%s", err);
        kb_registry_destroy(rg);
        snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
        if (system(cmd) != 0)
                cr_log_warn("could not remove %s", dir);
}

/* Asynchronous mode: PENDING at once, the answer after the loop ran; the
 * generation moves; one request however often it is asked meanwhile. */
Test(registry, async, .fini = stop_reg) {
        kb_loop_t *loop;
        kb_registry_t *rg;
        const char *text;
        char err[512];
        uint64_t gen;
        int i;
        kb_registry_res_t r = KB_REG_PENDING;
        const char *args[] = {"--delay-ms", "100", NULL};

        fake_reg_start(&reg, 0, args);
        fake_reg_register(&reg, "t-value", schema_a);
        loop = kb_loop_new(err, sizeof(err));
        cr_assert(loop);
        rg = client(reg.fr_url, loop, NULL);
        gen = kb_registry_generation(rg);
        cr_assert_eq(kb_registry_schema_by_id(rg, 1, &text, err, sizeof(err)),
                     KB_REG_PENDING);
        cr_assert(strstr(err, "waiting for the schema registry"), "%s", err);
        for (i = 0; i < 300 && r == KB_REG_PENDING; i++) {
                kb_loop_drive(loop, 10);
                r = kb_registry_schema_by_id(rg, 1, &text, err, sizeof(err));
        }
        cr_assert_eq(r, KB_REG_OK, "%s", err);
        cr_assert_str_eq(text, schema_a);
        cr_assert_eq(kb_registry_requests(rg), 1);
        cr_assert_gt(kb_registry_generation(rg), gen);
        /* destroyed with a request in flight: removed from the loop */
        cr_assert_eq(kb_registry_schema_by_id(rg, 2, &text, err, sizeof(err)),
                     KB_REG_PENDING);
        cr_assert_eq(kb_loop_transfers(loop), 1);
        kb_registry_destroy(rg);
        cr_assert_eq(kb_loop_transfers(loop), 0);
        kb_loop_destroy(loop);
}

/* Issue 15: an entry per distinct schema id was kept forever and searched
 * linearly, and every new id sent a request: random ids in bad Avro
 * payloads grew memory, CPU and registry traffic without bound. Now the
 * by-id entries are bounded, indexed, and new ids are asked at most 20 a
 * second (then PENDING: the item waits and asks again). */
Test(registry, random_ids_are_bounded, .fini = stop_reg) {
        kb_registry_t *rg;
        const char *text;
        char err[512];
        int32_t id;
        int notfound = 0, pending = 0;
        uint64_t n0;

        fake_reg_start(&reg, 0, NULL);
        rg = client(reg.fr_url, NULL, NULL);
        cr_assert_eq(kb_registry_subject_id(rg, "t-value", schema_a, 1, &id,
                                            err, sizeof(err)),
                     KB_REG_OK, "%s", err);
        n0 = kb_registry_requests(rg);
        for (int i = 0; i < 3000; i++) {
                kb_registry_res_t r = kb_registry_schema_by_id(
                    rg, 100000 + i, &text, err, sizeof(err));
                if (r == KB_REG_NOT_FOUND)
                        notfound++;
                else if (r == KB_REG_PENDING)
                        pending++;
                else
                        cr_assert_fail("id %d: %s", 100000 + i, err);
        }
        /* a burst of 20 was asked, the rest must wait */
        cr_expect_leq(notfound, 25, "%d asked", notfound);
        cr_expect_eq(notfound + pending, 3000);
        cr_expect_leq(kb_registry_requests(rg) - n0, 25);
        cr_expect(strstr(err, "new ids a second"), "%s", err);
        cr_expect_leq(kb_registry_ids_cached(rg), 26);
        /* what we registered is still answered from the cache */
        n0 = kb_registry_requests(rg);
        cr_expect_eq(kb_registry_schema_by_id(rg, id, &text, err, sizeof(err)),
                     KB_REG_OK, "%s", err);
        cr_expect_str_eq(text, schema_a);
        cr_expect_eq(kb_registry_requests(rg), n0);
        kb_registry_destroy(rg);
}

/* The bound itself: more ids than the bound over time, memory stays (a
 * small bound and a high rate, to keep the test short). */
Test(registry, id_cache_is_bounded, .fini = stop_reg) {
        kb_registry_t *rg;
        kb_registry_conf_t rc;
        const char *text;
        char err[512];
        memset(&rc, 0, sizeof(rc));
        rc.rc_tls_verify = 1;
        rc.rc_timeout_ms = 2000;
        rc.rc_ids_max = 50;
        rc.rc_new_ids_per_s = 100000;
        fake_reg_start(&reg, 0, NULL);
        rg = client(reg.fr_url, NULL, &rc);
        for (int i = 0; i < 300; i++) {
                kb_registry_res_t r;
                while ((r = kb_registry_schema_by_id(rg, 500000 + i, &text, err,
                                                     sizeof(err))) ==
                       KB_REG_PENDING)
                        usleep(20 * 1000);
                cr_assert_eq(r, KB_REG_NOT_FOUND, "%s", err);
        }
        cr_expect_eq(kb_registry_ids_cached(rg), 50);
        /* the newest are kept: answered without a request */
        {
                uint64_t n = kb_registry_requests(rg);
                cr_expect_eq(kb_registry_schema_by_id(rg, 500299, &text, err,
                                                      sizeof(err)),
                             KB_REG_NOT_FOUND);
                cr_expect_eq(kb_registry_requests(rg), n);
        }
        kb_registry_destroy(rg);
}

/* Issue 15: a registry URL of the documented form https://user:pass@host
 * appeared verbatim in WARN logs and in the /readyz reason. */
Test(registry, credentials_never_in_errors_or_health) {
        kb_registry_t *rg;
        const char *text;
        char err[512], why[512];
        rg = client("http://alice:s3cret-pw@127.0.0.1:1,"
                    "http://tok3n-abc@127.0.0.1:2", NULL, NULL);
        cr_assert_eq(kb_registry_schema_by_id(rg, 1, &text, err, sizeof(err)),
                     KB_REG_UNAVAILABLE);
        cr_expect(strstr(err, "alice:***@127.0.0.1:1"), "%s", err);
        cr_expect(strstr(err, "***@127.0.0.1:2"), "%s", err);
        cr_expect_null(strstr(err, "s3cret"), "%s", err);
        cr_expect_null(strstr(err, "tok3n"), "%s", err);
        cr_assert_eq(kb_registry_healthy(rg, why, sizeof(why)), 0);
        cr_expect_null(strstr(why, "s3cret"), "%s", why);
        cr_expect_null(strstr(why, "tok3n"), "%s", why);
        kb_registry_destroy(rg);
}
