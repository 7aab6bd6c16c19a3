/* jtext: JSON as text without a tree (see jtext.h). */
#include "jtext.h"

#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h> /* JSON_PARSER_MAX_DEPTH */

/* ---- checking ----------------------------------------------------------- */

enum {
        T_ERR = 0,
        T_OBJ = KB_JTEXT_OBJECT,
        T_ARR = KB_JTEXT_ARRAY,
        T_STR = KB_JTEXT_STRING,
        T_INT = KB_JTEXT_INTEGER,
        T_REAL = KB_JTEXT_REAL,
        T_LIT = KB_JTEXT_LITERAL,
};

#define KEYS_MAX 256 /* keys compared at once for duplicates */

typedef struct scan_s {
        const unsigned char *sc_p, *sc_end;
        char *sc_out; /* NULL: no copy */
        size_t sc_olen;
        int sc_depth;
        kb_jtext_usage_t *sc_usage;
        int sc_last_esc;   /* the last string had escapes */
        /* KB_JTEXT_NO_DUPLICATES: the keys of the objects being read */
        int sc_nodups, sc_unsure;
        const unsigned char *sc_kp[KEYS_MAX];
        size_t sc_kl[KEYS_MAX];
        int sc_nk;
        /* kb_jtext_members: the top-level object's members */
        kb_jtext_member_t *sc_mem;
        size_t sc_mem_max, sc_mem_cnt;
} scan_t;

/* The bytes a string may hold as they are: printable ASCII but the quote
 * and the backslash (a table: the innermost loop of every scan). */
static const unsigned char plain_tab[256] = {
    [0x20 ... 0x21] = 1, /* 0x22 is " */
    [0x23 ... 0x5b] = 1, /* 0x5c is \ */
    [0x5d ... 0x7f] = 1,
};

static inline int plain(unsigned c) {
        return plain_tab[c & 0xff];
}

static void emit(scan_t *s, const unsigned char *from, size_t n) {
        if (s->sc_out)
                memmove(s->sc_out + s->sc_olen, from, n);
        s->sc_olen += n;
}

static void ws(scan_t *s) {
        while (s->sc_p < s->sc_end && (*s->sc_p == ' ' || *s->sc_p == '\n' ||
                                       *s->sc_p == '\r' || *s->sc_p == '\t'))
                s->sc_p++;
}

static int hex4(const unsigned char *p, int32_t *v) {
        int i;
        *v = 0;
        for (i = 0; i < 4; i++) {
                int c = p[i], d;
                if (c >= '0' && c <= '9')
                        d = c - '0';
                else if (c >= 'a' && c <= 'f')
                        d = c - 'a' + 10;
                else if (c >= 'A' && c <= 'F')
                        d = c - 'A' + 10;
                else
                        return 0;
                *v = *v * 16 + d;
        }
        return 1;
}

/* One UTF-8 sequence at p (p < end, *p >= 0x80): its length, 0 if invalid
 * (overlong, surrogate, over U+10FFFF, truncated), as jansson's utf.c. */
static size_t utf8_seq(const unsigned char *p, const unsigned char *end) {
        unsigned u = *p;
        size_t n, i;
        int32_t v;
        if (u >= 0xC2 && u <= 0xDF)
                n = 2, v = u & 0x1F;
        else if (u >= 0xE0 && u <= 0xEF)
                n = 3, v = u & 0x0F;
        else if (u >= 0xF0 && u <= 0xF4)
                n = 4, v = u & 0x07;
        else
                return 0;
        if ((size_t)(end - p) < n)
                return 0;
        for (i = 1; i < n; i++) {
                if ((p[i] & 0xC0) != 0x80)
                        return 0;
                v = (v << 6) | (p[i] & 0x3F);
        }
        if (v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
                return 0;
        if ((n == 3 && v < 0x800) || (n == 4 && v < 0x10000))
                return 0;
        return n;
}

/* A string whose opening quote is at sc_p. *rawp, *rawlen: what is between
 * the quotes, as written; *escp: whether it has escapes. */
static int string(scan_t *s, const unsigned char **rawp, size_t *rawlen,
                  int *escp) {
        const unsigned char *start = s->sc_p, *p = s->sc_p + 1,
                            *end = s->sc_end;
        int esc = 0;
        for (;;) {
                while (p < end && plain(*p))
                        p++;
                if (p >= end)
                        return 0;
                if (*p == '"')
                        break;
                if (*p < 0x20)
                        return 0;
                if (*p == '\\') {
                        int32_t v, v2;
                        esc = 1;
                        if (end - p < 2)
                                return 0;
                        switch (p[1]) {
                        case '"': case '\\': case '/': case 'b': case 'f':
                        case 'n': case 'r': case 't':
                                p += 2;
                                continue;
                        case 'u':
                                break;
                        default:
                                return 0;
                        }
                        if (end - p < 6 || !hex4(p + 2, &v))
                                return 0;
                        p += 6;
                        if (v == 0)
                                return 0; /* no JSON_ALLOW_NUL */
                        if (v >= 0xDC00 && v <= 0xDFFF)
                                return 0; /* a lone low surrogate */
                        if (v >= 0xD800 && v <= 0xDBFF) {
                                if (end - p < 6 || p[0] != '\\' || p[1] != 'u' ||
                                    !hex4(p + 2, &v2) || v2 < 0xDC00 ||
                                    v2 > 0xDFFF)
                                        return 0;
                                p += 6;
                        }
                        continue;
                }
                {
                        size_t n = utf8_seq(p, end);
                        if (!n)
                                return 0;
                        p += n;
                }
        }
        *rawp = start + 1;
        *rawlen = (size_t)(p - start - 1);
        *escp = s->sc_last_esc = esc;
        s->sc_p = p + 1;
        emit(s, start, (size_t)(s->sc_p - start));
        return 1;
}

/* jansson reads one character past a number or a literal and puts it
 * back; a NUL byte put back is lost (its stream takes a NUL for "nothing
 * buffered"), so "[1\0]" loads as [1]. The same here, found by
 * tests/fuzz/fuzz_item_json.c. */
static void skip_lookahead_nul(scan_t *s) {
        if (s->sc_p < s->sc_end && *s->sc_p == '\0')
                s->sc_p++;
}

/* A number at sc_p: T_INT (within int64, *iv) or T_REAL (not overflowing a
 * double), else T_ERR; jansson's grammar and limits. */
static int number(scan_t *s, int64_t *iv) {
        const unsigned char *start = s->sc_p, *p = s->sc_p, *end = s->sc_end;
        const unsigned char *idig;
        int neg = 0, real = 0, expo = 0;
        if (p < end && *p == '-')
                neg = 1, p++;
        idig = p;
        if (p < end && *p == '0') {
                p++;
                if (p < end && *p >= '0' && *p <= '9')
                        return T_ERR;
        } else if (p < end && *p >= '1' && *p <= '9') {
                while (p < end && *p >= '0' && *p <= '9')
                        p++;
        } else
                return T_ERR;
        if (p < end && *p == '.') {
                real = 1;
                p++;
                if (p >= end || *p < '0' || *p > '9')
                        return T_ERR;
                while (p < end && *p >= '0' && *p <= '9')
                        p++;
        }
        if (p < end && (*p == 'e' || *p == 'E')) {
                real = expo = 1;
                p++;
                if (p < end && (*p == '+' || *p == '-'))
                        p++;
                if (p >= end || *p < '0' || *p > '9')
                        return T_ERR;
                while (p < end && *p >= '0' && *p <= '9')
                        p++;
        }
        s->sc_p = p;
        emit(s, start, (size_t)(p - start));
        skip_lookahead_nul(s);
        if (!real) {
                /* strtoll's range: up to INT64_MAX, or its negation - 1. */
                uint64_t v = 0, lim = neg ? (uint64_t)INT64_MAX + 1
                                          : (uint64_t)INT64_MAX;
                const unsigned char *d;
                for (d = idig; d < p; d++) {
                        unsigned dv = (unsigned)(*d - '0');
                        if (v > (lim - dv) / 10)
                                return T_ERR;
                        v = v * 10 + dv;
                }
                *iv = neg ? (int64_t)(0 - v) : (int64_t)v;
                return T_INT;
        }
        /* Only a huge mantissa or an exponent can overflow a double. */
        if (expo || p - start > 300) {
                char small[64], *buf = small, *e;
                size_t n = (size_t)(p - start);
                double d;
                if (n >= sizeof(small) && !(buf = malloc(n + 1)))
                        return T_ERR;
                memcpy(buf, start, n);
                buf[n] = '\0';
                errno = 0;
                d = strtod(buf, &e);
                if (buf != small)
                        free(buf);
                if (errno == ERANGE && isinf(d))
                        return T_ERR;
        }
        return T_REAL;
}

static int value(scan_t *s, int usage, int64_t *iv);

/* Whether the key raw[0..len) (between the quotes, escapes as written)
 * is name (ASCII). */
static int key_is(const unsigned char *raw, size_t len, int esc,
                  const char *name) {
        size_t i = 0, j = 0, nlen = strlen(name);
        if (!esc)
                return len == nlen && !memcmp(raw, name, len);
        while (i < len) {
                int c = raw[i];
                if (j >= nlen)
                        return 0;
                if (c == '\\') {
                        int32_t v;
                        switch (raw[i + 1]) {
                        case 'u':
                                if (!hex4(raw + i + 2, &v))
                                        return 0;
                                c = v;
                                i += 6;
                                break;
                        case '"': c = '"'; i += 2; break;
                        case '\\': c = '\\'; i += 2; break;
                        case '/': c = '/'; i += 2; break;
                        default: return 0; /* \b \f \n \r \t: not in names */
                        }
                } else
                        i++;
                if (c != (unsigned char)name[j++])
                        return 0;
        }
        return j == nlen;
}

static void usage_member(kb_jtext_usage_t *u, const unsigned char *k,
                         size_t klen, int esc, int t, int64_t v) {
        static const char *names[] = {"prompt_tokens", "completion_tokens",
                                      "input_tokens", "output_tokens",
                                      "total_tokens"};
        int *has[] = {&u->ju_has_prompt, &u->ju_has_completion,
                      &u->ju_has_input, &u->ju_has_output, &u->ju_has_total};
        int64_t *val[] = {&u->ju_prompt, &u->ju_completion, &u->ju_input,
                          &u->ju_output, &u->ju_total};
        size_t i;
        for (i = 0; i < sizeof(names) / sizeof(*names); i++)
                if (key_is(k, klen, esc, names[i])) {
                        /* The last value of a repeated key counts. */
                        *has[i] = t == T_INT;
                        *val[i] = t == T_INT ? v : 0;
                        return;
                }
}

/* After a member of an object or array: 1 on a comma (skipped, with the
 * whitespace after it), 2 on the closing character, 0 otherwise. */
static int after_member(scan_t *s, int close) {
        ws(s);
        if (s->sc_p >= s->sc_end)
                return 0;
        if (*s->sc_p == ',') {
                emit(s, s->sc_p++, 1);
                ws(s);
                return 1;
        }
        if (*s->sc_p == close) {
                emit(s, s->sc_p++, 1);
                return 2;
        }
        return 0;
}

static int object_members(scan_t *s, int usage, int top);

/* Records a member of the top-level object; 0 when there are too many. */
static int member_add(scan_t *s, const unsigned char *k, size_t klen,
                      int esc, const unsigned char *v, int t, int64_t iv) {
        kb_jtext_member_t *m;
        if (s->sc_mem_cnt >= s->sc_mem_max) {
                s->sc_unsure = 1;
                return 0;
        }
        m = &s->sc_mem[s->sc_mem_cnt++];
        m->jm_key = (const char *)k;
        m->jm_key_len = klen;
        m->jm_key_esc = esc;
        m->jm_val = (const char *)v;
        m->jm_val_len = (size_t)(s->sc_p - v);
        m->jm_type = t;
        m->jm_str_esc = t == T_STR && s->sc_last_esc;
        m->jm_int = t == T_INT ? iv : 0;
        return 1;
}

/* usage: this object is the top-level "usage" (record its members);
 * top: this is the top-level object (look for "usage"). */
/* KB_JTEXT_NO_DUPLICATES: 0 when the key k is one of this object's
 * earlier keys (from index base on). Keys with escapes, or too many keys,
 * leave the answer to jansson (sc_unsure). */
static int key_new(scan_t *s, int base, const unsigned char *k, size_t klen,
                   int esc) {
        int i;
        if (!s->sc_nodups)
                return 1;
        if (esc || s->sc_nk >= KEYS_MAX) {
                s->sc_unsure = 1;
                return 1;
        }
        for (i = base; i < s->sc_nk; i++)
                if (s->sc_kl[i] == klen && !memcmp(s->sc_kp[i], k, klen))
                        return 0;
        s->sc_kp[s->sc_nk] = k;
        s->sc_kl[s->sc_nk++] = klen;
        return 1;
}

static int object(scan_t *s, int usage, int top) {
        int base = s->sc_nk, r = object_members(s, usage, top);
        s->sc_nk = base; /* this object's keys are done with */
        return r;
}

static int object_members(scan_t *s, int usage, int top) {
        int base = s->sc_nk;
        emit(s, s->sc_p++, 1);
        ws(s);
        if (s->sc_p < s->sc_end && *s->sc_p == '}') {
                emit(s, s->sc_p++, 1);
                return 1;
        }
        for (;;) {
                const unsigned char *k, *v;
                size_t klen;
                int esc, t, is_usage = 0;
                int64_t iv = 0;
                if (s->sc_p >= s->sc_end || *s->sc_p != '"' ||
                    !string(s, &k, &klen, &esc) ||
                    !key_new(s, base, k, klen, esc))
                        return 0;
                ws(s);
                if (s->sc_p >= s->sc_end || *s->sc_p != ':')
                        return 0;
                emit(s, s->sc_p++, 1);
                ws(s);
                if (top && s->sc_usage && key_is(k, klen, esc, "usage")) {
                        /* A repeated "usage" replaces the earlier one. */
                        memset(s->sc_usage, 0, sizeof(*s->sc_usage));
                        is_usage = 1;
                }
                v = s->sc_p;
                t = value(s, is_usage, &iv);
                if (t == T_ERR)
                        return 0;
                if (top && s->sc_mem && !member_add(s, k, klen, esc, v, t, iv))
                        return 0;
                if (is_usage)
                        s->sc_usage->ju_usage = t == T_OBJ;
                if (usage)
                        usage_member(s->sc_usage, k, klen, esc, t, iv);
                if ((t = after_member(s, '}')) != 1)
                        return t == 2;
        }
}

static int array(scan_t *s) {
        int64_t iv;
        emit(s, s->sc_p++, 1);
        ws(s);
        if (s->sc_p < s->sc_end && *s->sc_p == ']') {
                emit(s, s->sc_p++, 1);
                return 1;
        }
        for (;;) {
                int t;
                if (value(s, 0, &iv) == T_ERR)
                        return 0;
                if ((t = after_member(s, ']')) != 1)
                        return t == 2;
        }
}

static int literal(scan_t *s, const char *word) {
        size_t n = strlen(word);
        if ((size_t)(s->sc_end - s->sc_p) < n || memcmp(s->sc_p, word, n))
                return 0;
        emit(s, s->sc_p, n);
        s->sc_p += n;
        skip_lookahead_nul(s);
        return 1;
}

/* A value at sc_p (whitespace skipped): its type, T_ERR when invalid. */
static int value(scan_t *s, int usage, int64_t *iv) {
        int t = T_ERR;
        /* jansson counts every value, scalars too, against the limit. */
        if (++s->sc_depth > JSON_PARSER_MAX_DEPTH)
                return T_ERR;
        if (s->sc_p < s->sc_end) {
                const unsigned char *k;
                size_t kl;
                int esc;
                switch (*s->sc_p) {
                case '{':
                        t = object(s, usage, s->sc_depth == 1) ? T_OBJ : T_ERR;
                        break;
                case '[':
                        t = array(s) ? T_ARR : T_ERR;
                        break;
                case '"':
                        t = string(s, &k, &kl, &esc) ? T_STR : T_ERR;
                        break;
                case 't':
                        t = literal(s, "true") ? T_LIT : T_ERR;
                        break;
                case 'f':
                        t = literal(s, "false") ? T_LIT : T_ERR;
                        break;
                case 'n':
                        t = literal(s, "null") ? T_LIT : T_ERR;
                        break;
                default:
                        t = number(s, iv);
                }
        }
        s->sc_depth--;
        return t;
}

/* The whole text: 1 valid, 0 not. */
static int scan_run(scan_t *s, const char *in, size_t len) {
        int64_t iv;
        s->sc_p = (const unsigned char *)in;
        s->sc_end = s->sc_p + len;
        ws(s);
        /* Without JSON_DECODE_ANY, only an object or an array. */
        if (s->sc_p >= s->sc_end || (*s->sc_p != '{' && *s->sc_p != '['))
                return 0;
        if (value(s, 0, &iv) == T_ERR)
                return 0;
        ws(s);
        return s->sc_p == s->sc_end;
}

/* Zeroes what a scan starts from (the key arrays need no zeroing). */
static void scan_init(scan_t *s) {
        memset(s, 0, offsetof(scan_t, sc_kp));
        s->sc_nk = 0;
        s->sc_mem = NULL;
        s->sc_mem_max = s->sc_mem_cnt = 0;
}

int kb_jtext_check(const char *in, size_t len, char *out, size_t *out_lenp,
                   kb_jtext_usage_t *usage) {
        scan_t s;
        kb_jtext_usage_t dummy;
        scan_init(&s);
        s.sc_out = out;
        s.sc_usage = usage ? usage : &dummy;
        memset(s.sc_usage, 0, sizeof(*s.sc_usage));
        if (!scan_run(&s, in, len))
                return 0;
        if (out_lenp)
                *out_lenp = s.sc_olen;
        return 1;
}

int kb_jtext_members(const char *in, size_t len, int flags,
                     kb_jtext_member_t *mem, size_t max) {
        scan_t s;
        kb_jtext_usage_t dummy;
        size_t i = 0;
        while (i < len && (in[i] == ' ' || in[i] == '\n' || in[i] == '\r' ||
                           in[i] == '\t'))
                i++;
        if (i >= len || in[i] != '{')
                return -1;
        scan_init(&s);
        s.sc_usage = &dummy;
        s.sc_nodups = flags & KB_JTEXT_NO_DUPLICATES;
        s.sc_mem = mem;
        s.sc_mem_max = max;
        if (!scan_run(&s, in, len) || s.sc_unsure)
                return -1;
        return (int)s.sc_mem_cnt;
}

/* ---- writing ------------------------------------------------------------ */

void kb_jtext_buf_init(kb_jtext_buf_t *b, size_t hint) {
        memset(b, 0, sizeof(*b));
        if (hint && (b->jb_buf = malloc(hint)))
                b->jb_cap = hint;
}

void kb_jtext_buf_clear(kb_jtext_buf_t *b) {
        free(b->jb_buf);
        memset(b, 0, sizeof(*b));
}

/* Room for n more bytes and a NUL. */
static int room(kb_jtext_buf_t *b, size_t n) {
        size_t cap;
        char *nb;
        if (b->jb_oom)
                return 0;
        if (b->jb_len + n + 1 <= b->jb_cap)
                return 1;
        cap = b->jb_cap ? b->jb_cap : 256;
        while (cap < b->jb_len + n + 1)
                cap *= 2;
        if (!(nb = realloc(b->jb_buf, cap))) {
                b->jb_oom = 1;
                return 0;
        }
        b->jb_buf = nb;
        b->jb_cap = cap;
        return 1;
}

char *kb_jtext_buf_take(kb_jtext_buf_t *b, size_t *lenp) {
        char *r;
        if (b->jb_oom || !room(b, 0)) {
                kb_jtext_buf_clear(b);
                return NULL;
        }
        b->jb_buf[b->jb_len] = '\0';
        r = b->jb_buf;
        if (lenp)
                *lenp = b->jb_len;
        memset(b, 0, sizeof(*b));
        return r;
}

void kb_jtext_put_raw(kb_jtext_buf_t *b, const char *s, size_t len) {
        if (!room(b, len))
                return;
        memcpy(b->jb_buf + b->jb_len, s, len);
        b->jb_len += len;
}

void kb_jtext_put_lit(kb_jtext_buf_t *b, const char *s) {
        kb_jtext_put_raw(b, s, strlen(s));
}

void kb_jtext_put_str(kb_jtext_buf_t *b, const char *s) {
        static const char hex[] = "0123456789ABCDEF";
        const unsigned char *p, *run;
        if (!s) {
                kb_jtext_put_raw(b, "null", 4);
                return;
        }
        kb_jtext_put_raw(b, "\"", 1);
        for (p = run = (const unsigned char *)s;; p++) {
                unsigned c = *p;
                char esc[6];
                size_t n = 2;
                if (plain(c))
                        continue;
                if (c >= 0x80) {
                        /* The NUL ends a truncated sequence: no overread. */
                        size_t n8 = utf8_seq(p, p + 4);
                        if (n8) {
                                p += n8 - 1;
                                continue;
                        }
                        kb_jtext_put_raw(b, (const char *)run,
                                         (size_t)(p - run));
                        kb_jtext_put_raw(b, "\xEF\xBF\xBD", 3); /* U+FFFD */
                        run = p + 1;
                        continue;
                }
                kb_jtext_put_raw(b, (const char *)run, (size_t)(p - run));
                if (c == '\0')
                        break;
                esc[0] = '\\';
                switch (c) {
                case '"': esc[1] = '"'; break;
                case '\\': esc[1] = '\\'; break;
                case '\b': esc[1] = 'b'; break;
                case '\f': esc[1] = 'f'; break;
                case '\n': esc[1] = 'n'; break;
                case '\r': esc[1] = 'r'; break;
                case '\t': esc[1] = 't'; break;
                default:
                        esc[1] = 'u';
                        esc[2] = '0';
                        esc[3] = '0';
                        esc[4] = hex[c >> 4];
                        esc[5] = hex[c & 15];
                        n = 6;
                }
                kb_jtext_put_raw(b, esc, n);
                run = p + 1;
        }
        kb_jtext_put_raw(b, "\"", 1);
}

void kb_jtext_put_int(kb_jtext_buf_t *b, int64_t v) {
        char tmp[24], *e = tmp + sizeof(tmp), *p = e;
        uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
        do {
                *--p = (char)('0' + u % 10);
                u /= 10;
        } while (u);
        if (v < 0)
                *--p = '-';
        kb_jtext_put_raw(b, p, (size_t)(e - p));
}
