/* jsonptr: RFC 6901's own examples, arrays, errors. */
#include <criterion/criterion.h>
#include <string.h>

#include "jsonptr.h"

/* RFC 6901 section 5. */
static const char *rfc_doc =
    "{\"foo\": [\"bar\", \"baz\"], \"\": 0, \"a/b\": 1, \"c%d\": 2, "
    "\"e^f\": 3, \"g|h\": 4, \"i\\\\j\": 5, \"k\\\"l\": 6, \" \": 7, "
    "\"m~n\": 8}";

Test(jsonptr, rfc6901_examples) {
        json_t *doc = json_loads(rfc_doc, 0, NULL);
        struct {
                const char *ptr;
                long want; /* integer value; -1: foo; -2: "bar" */
        } c[] = {{"", -3},     {"/foo", -1}, {"/foo/0", -2}, {"/", 0},
                 {"/a~1b", 1}, {"/c%d", 2},  {"/e^f", 3},    {"/g|h", 4},
                 {"/i\\j", 5}, {"/k\"l", 6}, {"/ ", 7},      {"/m~0n", 8}};
        size_t i;
        char err[256];
        cr_assert(doc);
        for (i = 0; i < sizeof(c) / sizeof(*c); i++) {
                json_t *v = kb_jsonptr_get(doc, c[i].ptr);
                cr_expect_eq(kb_jsonptr_check(c[i].ptr, err, sizeof(err)), 0,
                             "%s: %s", c[i].ptr, err);
                cr_assert(v, "%s names nothing", c[i].ptr);
                if (c[i].want == -3)
                        cr_expect_eq(v, doc);
                else if (c[i].want == -1)
                        cr_expect(json_is_array(v) && json_array_size(v) == 2);
                else if (c[i].want == -2)
                        cr_expect_str_eq(json_string_value(v), "bar");
                else
                        cr_expect_eq(json_integer_value(v), c[i].want, "%s",
                                     c[i].ptr);
        }
        json_decref(doc);
}

Test(jsonptr, job_responses) {
        json_t *doc = json_loads(
            "{\"data\": {\"id\": \"job-7\", \"status\": \"COMPLETED\", "
            "\"outputs\": [{\"url\": \"u0\"}, {\"url\": \"u1\"}]}}",
            0, NULL);
        cr_assert(doc);
        cr_expect_str_eq(json_string_value(kb_jsonptr_get(doc, "/data/id")),
                         "job-7");
        cr_expect_str_eq(
            json_string_value(kb_jsonptr_get(doc, "/data/outputs/1/url")),
            "u1");
        /* Not there: a missing key, past the end, "-", leading zeros, a
         * key into a string, an index into an object. */
        cr_expect_null(kb_jsonptr_get(doc, "/data/nope"));
        cr_expect_null(kb_jsonptr_get(doc, "/data/outputs/2"));
        cr_expect_null(kb_jsonptr_get(doc, "/data/outputs/-"));
        cr_expect_null(kb_jsonptr_get(doc, "/data/outputs/01"));
        cr_expect_null(kb_jsonptr_get(doc, "/data/outputs/1x"));
        cr_expect_null(kb_jsonptr_get(doc, "/data/outputs/-1"));
        cr_expect_null(kb_jsonptr_get(doc, "/data/id/x"));
        cr_expect_null(kb_jsonptr_get(doc, "/0"));
        cr_expect_null(kb_jsonptr_get(NULL, "/a"));
        json_decref(doc);
}

Test(jsonptr, invalid_pointers) {
        char err[256], big[2100];
        json_t *doc = json_loads("{\"a~\": 1, \"a\": {\"\": 2}}", 0, NULL);
        cr_expect_eq(kb_jsonptr_check("a/b", err, sizeof(err)), -1);
        cr_expect(strstr(err, "start with '/'"), "%s", err);
        cr_expect_eq(kb_jsonptr_check("/a~2", err, sizeof(err)), -1);
        cr_expect_eq(kb_jsonptr_check("/a~", err, sizeof(err)), -1);
        cr_expect(strstr(err, "'~' must be followed"), "%s", err);
        cr_expect_eq(kb_jsonptr_check(NULL, err, sizeof(err)), -1);
        memset(big, 'x', sizeof(big) - 1);
        big[0] = '/';
        big[sizeof(big) - 1] = '\0';
        cr_expect_eq(kb_jsonptr_check(big, err, sizeof(err)), -1);
        cr_expect_null(kb_jsonptr_get(doc, "/a~"));
        cr_expect_null(kb_jsonptr_get(doc, "a"));
        /* "/a/" is key "" inside "a". */
        cr_expect_eq(json_integer_value(kb_jsonptr_get(doc, "/a/")), 2);
        json_decref(doc);
}
