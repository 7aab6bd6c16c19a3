/* apikeys: the keys file of the HTTP API (parsing, lookups by literal key
 * and by sha256 digest, errors with their line, re-reading on change). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "apikeys.h"


Test(apikeys, literal_and_digest) {
        kb_apikeys_t *ks = kb_apikeys_new_empty();
        char err[256], tenant[KB_APIKEYS_TENANT_MAX + 1];
        FILE *p = popen("printf %s key-other-123456 | sha256sum", "r");
        char hex[65] = "", text[512];
        cr_assert(p && fscanf(p, "%64s", hex) == 1);
        pclose(p);
        snprintf(text, sizeof(text),
                 "# tenants\n\nacme  key-acme-123456   # trailing comment\n"
                 "other sha256:%s\n",
                 hex);
        cr_assert_eq(kb_apikeys_parse(ks, "keys", text, err, sizeof(err)), 0,
                     "%s", err);
        cr_expect_eq(kb_apikeys_count(ks), 2);
        cr_expect(kb_apikeys_lookup(ks, "key-acme-123456", 15, tenant));
        cr_expect_str_eq(tenant, "acme");
        cr_expect(kb_apikeys_lookup(ks, "key-other-123456", 16, tenant));
        cr_expect_str_eq(tenant, "other");
        /* a prefix, a longer key, the digest itself, nothing */
        cr_expect_not(kb_apikeys_lookup(ks, "key-acme-12345", 14, tenant));
        cr_expect_not(kb_apikeys_lookup(ks, "key-acme-1234567", 16, tenant));
        cr_expect_not(kb_apikeys_lookup(ks, hex, 64, tenant));
        cr_expect_not(kb_apikeys_lookup(ks, "", 0, tenant));
        kb_apikeys_destroy(ks);
}

Test(apikeys, errors_name_the_line) {
        static const struct {
                const char *text, *err;
        } cases[] = {
                {"acme\n", "keys:1: expected \"TENANT KEY\""},
                {"ok key-123456789\nacme short\n",
                 "keys:2: a key must be 8-512 characters"},
                {"a/b key-123456789\n", "keys:1: the tenant may only hold"},
                {"acme sha256:abcd\n", "keys:1: sha256: must be followed"},
                {"acme key-123456789 extra\n",
                 "keys:1: unexpected text after the key"},
        };
        size_t i;
        for (i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
                kb_apikeys_t *ks = kb_apikeys_new_empty();
                char err[256] = "";
                cr_expect_eq(kb_apikeys_parse(ks, "keys", cases[i].text, err,
                                              sizeof(err)),
                             -1, "%s", cases[i].text);
                cr_expect(strstr(err, cases[i].err), "'%s' lacks '%s'", err,
                          cases[i].err);
                cr_expect_eq(kb_apikeys_count(ks), 0);
                kb_apikeys_destroy(ks);
        }
}

Test(apikeys, reread_on_change) {
        char path[] = "/tmp/kbatch-test-keys-XXXXXX", err[256],
             tenant[KB_APIKEYS_TENANT_MAX + 1];
        int fd = mkstemp(path);
        kb_apikeys_t *ks;
        FILE *f;
        cr_assert(fd >= 0);
        cr_assert_eq(write(fd, "a key-aaaaaaaa\n", 15), 15);
        close(fd);
        cr_assert((ks = kb_apikeys_new(path, err, sizeof(err))), "%s", err);
        cr_expect(kb_apikeys_lookup(ks, "key-aaaaaaaa", 12, tenant));
        sleep(1); /* a new mtime, and past the once-a-second check */
        f = fopen(path, "w");
        fputs("b key-bbbbbbbbbb\n", f);
        fclose(f);
        usleep(1100 * 1000);
        cr_expect_not(kb_apikeys_lookup(ks, "key-aaaaaaaa", 12, tenant));
        cr_expect(kb_apikeys_lookup(ks, "key-bbbbbbbbbb", 14, tenant));
        cr_expect_str_eq(tenant, "b");
        /* a bad file keeps the last good keys */
        usleep(1100 * 1000);
        f = fopen(path, "w");
        fputs("broken\n", f);
        fclose(f);
        usleep(1100 * 1000);
        cr_expect(kb_apikeys_lookup(ks, "key-bbbbbbbbbb", 14, tenant));
        kb_apikeys_destroy(ks);
        unlink(path);
        cr_expect_null(kb_apikeys_new(path, err, sizeof(err)));
        cr_expect(strstr(err, path), "%s", err);
}
