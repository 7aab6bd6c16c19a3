/* jtext: the tree-less JSON check, compaction, usage scan and string
 * writer, each compared with jansson (what they replace on the hot path):
 * on a table of edge cases and on random inputs. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "jtext.h"

/* jansson's verdict: what call_done used (json_loadb, flags 0). */
static int jansson_ok(const char *s, size_t len) {
        json_t *j = json_loadb(s, len, 0, NULL);
        json_decref(j);
        return j != NULL;
}

/* Checks one input against jansson: same verdict; when valid, the compact
 * copy loads to an equal value and has no whitespace outside strings; and
 * the usage read equals kb_codec_usage_from_output's. */
static void against_jansson(const char *s, size_t len, const char *what) {
        char *out = malloc(len + 1);
        size_t olen = (size_t)-1;
        kb_jtext_usage_t u;
        int ok = kb_jtext_check(s, len, out, &olen, &u);
        int want = jansson_ok(s, len);
        cr_assert_eq(ok, want, "%s: jtext says %d, jansson %d: %.*s", what, ok,
                     want, (int)(len > 200 ? 200 : len), s);
        if (ok) {
                json_t *a = json_loadb(s, len, 0, NULL),
                       *b = json_loadb(out, olen, 0, NULL);
                kb_result_t r;
                int found;
                cr_assert(olen <= len);
                cr_assert(b, "%s: the compact copy does not load: %.*s", what,
                          (int)olen, out);
                cr_assert(json_equal(a, b), "%s: compact copy differs", what);
                memset(&r, 0, sizeof(r));
                found = kb_codec_usage_from_output(a, &r);
                {
                        kb_result_t r2;
                        memset(&r2, 0, sizeof(r2));
                        cr_assert_eq(kb_codec_usage_from_jtext(&u, &r2), found,
                                     "%s: usage found", what);
                        cr_assert_eq(r2.input_tokens, r.input_tokens, "%s", what);
                        cr_assert_eq(r2.output_tokens, r.output_tokens, "%s",
                                     what);
                        cr_assert_eq(r2.total_tokens, r.total_tokens, "%s",
                                     what);
                }
                json_decref(a);
                json_decref(b);
        }
        free(out);
}

static const char *table[] = {
    /* valid */
    "{}", "[]", " \t\r\n{ } \n", "[1,-1,0,-0,1.5,-0.0,1e5,1E+5,1e-5,2.5E-3]",
    "{\"a\":{\"b\":[true,false,null,\"x\"]}}",
    "[9223372036854775807,-9223372036854775808]",
    "[\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u0041\\u00e9\\uD834\\uDD1E\"]",
    "[\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"]", "[1e-400]", "[1.7976931348623157e308]",
    "{\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7}}",
    "{\"usage\":{\"input_tokens\":5,\"output_tokens\":6}}",
    "{\"usage\":{\"prompt_tokens\":8,\"total_tokens\":8}}",
    "{\"usage\":null}", "{\"usage\":[1]}", "{\"usage\":{}}",
    "{\"usage\":{\"prompt_tokens\":1.0,\"completion_tokens\":\"2\"}}",
    "{\"usage\":{\"prompt_tokens\":1},\"usage\":{\"completion_tokens\":2}}",
    "{\"usage\":{\"prompt_tokens\":1,\"prompt_tokens\":2}}",
    "{\"usage\":{\"prompt_tokens\":1,\"prompt_tokens\":null}}",
    "{\"us\\u0061ge\":{\"prompt\\u005ftokens\":4}}",
    "{\"x\":{\"usage\":{\"prompt_tokens\":9}}}", "[{\"usage\":{\"prompt_tokens\":9}}]",
    "{\"usage\":{\"prompt_tokens\":-5,\"total_tokens\":9223372036854775807}}",
    "{\"usage\":{\"prompt_tokens\":3,\"input_tokens\":4,\"completion_tokens\":5,"
    "\"output_tokens\":6}}",
    "{\"usage\":{\"input_tokens\":4,\"prompt_tokens\":3}}",
    "{\"id\":\"c1\",\"choices\":[{\"message\":{\"role\":\"assistant\","
    "\"content\":\"hi\"}}],\"usage\":{\"prompt_tokens\":20,"
    "\"completion_tokens\":10,\"total_tokens\":30}}",
    /* invalid */
    "", " ", "1", "\"x\"", "null", "true", "{", "}", "[", "[1,]", "[,1]",
    "{\"a\"}", "{\"a\":}", "{\"a\":1,}", "{a:1}", "{'a':1}", "[1 2]", "{} {}",
    "{}x", "[01]", "[-]", "[-01]", "[1.]", "[.5]", "[1e]", "[1e+]", "[+1]",
    "[0x10]", "[NaN]", "[Infinity]", "[tru]", "[truex]", "[nul]",
    "[9223372036854775808]", "[-9223372036854775809]",
    "[99999999999999999999999]", "[1e400]", "[-1e400]", "[\"\\u0000\"]",
    "{\"\\u0000\":1}", "[\"\\uD834\"]", "[\"\\uDD1E\"]", "[\"\\uD834\\u0041\"]",
    "[\"\\uD834x\"]", "[\"\\u12\"]", "[\"\\u12G4\"]", "[\"\\x\"]", "[\"\\\"]",
    "[\"a\tb\"]", "[\"a\nb\"]", "[\"\x01\"]", "[\"\xc3\"]", "[\"\xc0\x80\"]",
    "[\"\xe0\x80\x80\"]", "[\"\xed\xa0\x80\"]", "[\"\xf4\x90\x80\x80\"]",
    "[\"\xf5\x80\x80\x80\"]", "[\"\x80\"]", "[\"\xe2\x82\"]", "[\"abc", "[\"",
    "{\"a\":1", "[1,", "\xef\xbb\xbf{}", "[//]", "[/*x*/1]",
};

Test(jtext, table_against_jansson) {
        size_t i;
        char what[32];
        for (i = 0; i < sizeof(table) / sizeof(*table); i++) {
                snprintf(what, sizeof(what), "case %zu", i);
                against_jansson(table[i], strlen(table[i]), what);
        }
}

/* A NUL byte inside the buffer (json_loadb has a length). */
Test(jtext, nul_bytes) {
        against_jansson("[\"a\0b\"]", 7, "nul in string");
        against_jansson("[1]\0", 4, "nul after");
        against_jansson("[1,\0 2]", 7, "nul between");
        /* jansson loses a NUL right after a number or a literal */
        against_jansson("[1,2,3\0]", 8, "nul after a number");
        against_jansson("[true\0,null\0]", 14, "nul after literals");
        against_jansson("{\"a\":1\0}", 8, "nul after a member");
        against_jansson("[1\0\0]", 5, "two nuls");
        against_jansson("[\"a\"\0]", 6, "nul after a string");
        against_jansson("[1\0 ]", 5, "nul then space");
}

/* jansson's depth limit: JSON_PARSER_MAX_DEPTH values deep, scalars too. */
Test(jtext, depth_limit) {
        int d;
        for (d = JSON_PARSER_MAX_DEPTH - 2; d <= JSON_PARSER_MAX_DEPTH + 1; d++) {
                size_t n = (size_t)d * 2 + 1, i;
                char *s = malloc(n + 2), what[32];
                /* d arrays around a 1, then d arrays around nothing */
                for (i = 0; i < (size_t)d; i++) {
                        s[i] = '[';
                        s[(size_t)d + 1 + i] = ']';
                }
                s[d] = '1';
                snprintf(what, sizeof(what), "depth %d with a scalar", d);
                against_jansson(s, (size_t)d * 2 + 1, what);
                memmove(s + d, s + d + 1, (size_t)d);
                snprintf(what, sizeof(what), "depth %d empty", d);
                against_jansson(s, (size_t)d * 2, what);
                free(s);
        }
}

/* The compaction can write over its input. */
Test(jtext, compact_in_place) {
        char s[] = " { \"a\" : [ 1 , \"x y\" , { } ] , \"b\" : null } ";
        size_t n;
        cr_assert(kb_jtext_check(s, strlen(s), s, &n, NULL));
        cr_assert_eq(n, strlen("{\"a\":[1,\"x y\",{}],\"b\":null}"));
        cr_assert(!memcmp(s, "{\"a\":[1,\"x y\",{}],\"b\":null}", n));
}

/* ---- random inputs ------------------------------------------------------ */

static unsigned rnd(unsigned *seed) {
        *seed = *seed * 1103515245u + 12345u;
        return (*seed >> 16) & 0x7fff;
}

static const char *atoms[] = {
    "{", "}", "[", "]", ",", ":", " ", "\n", "\"a\"", "\"usage\"",
    "\"prompt_tokens\"", "\"total_tokens\"", "\"\\u00e9\"", "\"\\uD834\\uDD1E\"",
    "\"\\uD834\"", "\"\xc3\xa9\"", "\"\xc3\"", "0", "-1", "12", "1.5", "1e3",
    "01", "1e999", "9223372036854775808", "true", "false", "null", "nul",
    "\"\\n\"", "\"\\q\"", "\x7f", "\"\\u0000\"",
};

/* Random sequences of JSON tokens (mostly invalid) and valid documents
 * with one byte changed. */
Test(jtext, random_against_jansson) {
        unsigned seed = 20;
        char buf[512], what[48];
        int i;
        for (i = 0; i < 20000; i++) {
                size_t len = 0;
                int n = 1 + (int)(rnd(&seed) % 24), k;
                buf[len++] = rnd(&seed) % 2 ? '{' : '[';
                for (k = 0; k < n; k++) {
                        const char *a = atoms[rnd(&seed) % (sizeof(atoms) /
                                                             sizeof(*atoms))];
                        size_t al = strlen(a);
                        if (len + al + 2 >= sizeof(buf))
                                break;
                        memcpy(buf + len, a, al);
                        len += al;
                }
                snprintf(what, sizeof(what), "random %d", i);
                against_jansson(buf, len, what);
        }
        for (i = 0; i < 20000; i++) {
                const char *base = table[rnd(&seed) % 28]; /* the valid ones */
                size_t len = strlen(base);
                memcpy(buf, base, len);
                if (len)
                        buf[rnd(&seed) % len] = (char)(rnd(&seed) & 0xff);
                snprintf(what, sizeof(what), "mutated %d", i);
                against_jansson(buf, len, what);
        }
}

/* ---- writing ------------------------------------------------------------ */

static void str_against_jansson(const char *s) {
        kb_jtext_buf_t b;
        json_t *j = json_string(s);
        char *want, *got;
        size_t len;
        cr_assert(j, "not UTF-8?");
        want = json_dumps(j, JSON_ENCODE_ANY | JSON_COMPACT);
        kb_jtext_buf_init(&b, 0);
        kb_jtext_put_str(&b, s);
        got = kb_jtext_buf_take(&b, &len);
        cr_assert_str_eq(got, want);
        cr_assert_eq(len, strlen(want));
        free(got);
        free(want);
        json_decref(j);
}

Test(jtext, put_str_like_jansson) {
        static const char *s[] = {
            "", "plain", "q\"uote", "back\\slash", "sl/ash", "\b\f\n\r\t",
            "\x01\x02\x1f\x7f", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80",
            "end\\", "\"", "<script>&'",
        };
        size_t i;
        unsigned seed = 7;
        char buf[64];
        for (i = 0; i < sizeof(s) / sizeof(*s); i++)
                str_against_jansson(s[i]);
        /* random ASCII, control characters included */
        for (i = 0; i < 5000; i++) {
                size_t n = rnd(&seed) % (sizeof(buf) - 1), k;
                for (k = 0; k < n; k++)
                        buf[k] = (char)(1 + rnd(&seed) % 127);
                buf[n] = '\0';
                str_against_jansson(buf);
        }
}

Test(jtext, put_null_int_and_growth) {
        kb_jtext_buf_t b;
        char *s;
        size_t len, i;
        int64_t v[] = {0, -1, 42, INT64_MAX, INT64_MIN};
        kb_jtext_buf_init(&b, 4);
        kb_jtext_put_str(&b, NULL);
        for (i = 0; i < sizeof(v) / sizeof(*v); i++) {
                kb_jtext_put_lit(&b, ",");
                kb_jtext_put_int(&b, v[i]);
        }
        for (i = 0; i < 100; i++)
                kb_jtext_put_lit(&b, "0123456789");
        s = kb_jtext_buf_take(&b, &len);
        cr_assert(!strncmp(s,
                           "null,0,-1,42,9223372036854775807,"
                           "-9223372036854775808"
                           "01234567890123456789",
                           strlen("null,0,-1,42,9223372036854775807,"
                                  "-9223372036854775808"
                                  "01234567890123456789")));
        cr_assert_eq(len, strlen(s));
        cr_assert_eq(b.jb_buf, NULL);
        free(s);
}
