/* jsonptr: see jsonptr.h. */
#include "jsonptr.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Decodes the reference token at *p (up to the next '/' or the end) into
 * tok (at most tok_size - 1 bytes); advances *p past it. Returns the
 * token's length, or -1 on a bad escape or a token too long. */
static long next_token(const char **p, char *tok, size_t tok_size) {
        const char *s = *p;
        size_t n = 0;
        for (; *s && *s != '/'; s++) {
                char c = *s;
                if (c == '~') {
                        if (s[1] == '0')
                                c = '~';
                        else if (s[1] == '1')
                                c = '/';
                        else
                                return -1;
                        s++;
                }
                if (n + 1 >= tok_size)
                        return -1;
                tok[n++] = c;
        }
        tok[n] = '\0';
        *p = s;
        return (long)n;
}

int kb_jsonptr_check(const char *ptr, char *errstr, size_t errstr_size) {
        char tok[1024];
        const char *p = ptr;
        if (!ptr) {
                snprintf(errstr, errstr_size, "missing JSON Pointer");
                return -1;
        }
        if (*p && *p != '/') {
                snprintf(errstr, errstr_size,
                         "'%.200s' is not a JSON Pointer (RFC 6901): it must "
                         "be empty or start with '/'",
                         ptr);
                return -1;
        }
        while (*p == '/') {
                p++;
                if (next_token(&p, tok, sizeof(tok)) < 0) {
                        snprintf(errstr, errstr_size,
                                 "'%.200s' is not a JSON Pointer (RFC 6901): "
                                 "'~' must be followed by 0 or 1, and a "
                                 "token is at most %zu bytes",
                                 ptr, sizeof(tok) - 1);
                        return -1;
                }
        }
        return 0;
}

/* The array index a token names, or -1 ("-", leading zeros, non-digits,
 * out of range). */
static long array_index(const char *tok, size_t len) {
        char *end;
        long v;
        if (len == 0 || (tok[0] == '0' && len > 1) || tok[0] < '0' ||
            tok[0] > '9')
                return -1;
        v = strtol(tok, &end, 10);
        return *end || v < 0 ? -1 : v;
}

json_t *kb_jsonptr_get(json_t *doc, const char *ptr) {
        char tok[1024];
        const char *p = ptr;
        json_t *cur = doc;
        if (!ptr || (*p && *p != '/'))
                return NULL;
        while (cur && *p == '/') {
                long len, i;
                p++;
                if ((len = next_token(&p, tok, sizeof(tok))) < 0)
                        return NULL;
                if (json_is_object(cur))
                        cur = json_object_getn(cur, tok, (size_t)len);
                else if (json_is_array(cur))
                        cur = (i = array_index(tok, (size_t)len)) < 0
                                  ? NULL
                                  : json_array_get(cur, (size_t)i);
                else
                        cur = NULL;
        }
        return cur;
}
