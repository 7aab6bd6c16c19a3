/* libFuzzer target: the API's keys file (kb_apikeys_parse) and the line
 * splitter of uploads (kb_pub_lines_*).
 *
 * The keys file is the operator's, but it is re-read while the server runs:
 * any text must give a set or a "NAME:LINE: message", never a crash.
 * Checks: a parsed set has no more entries than the text has lines; every
 * literal key of the text is found again under its tenant.
 * The splitter gets the same bytes in pieces whose sizes come from the
 * input; check: the lines it hands out, each followed by "\n", give the
 * input back (lines short enough), and their numbers count up from 1. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "apikeys.h"
#include "fuzz_check.h"
#include "publish.h"

typedef struct {
        char *out;
        size_t len;
        int64_t next;
        int cut;
} join_t;

static int on_line(void *opaque, char *s, size_t len, int64_t lineno,
                   int too_long) {
        join_t *j = opaque;
        CHECK(lineno == ++j->next);
        CHECK(strlen(s) <= len);
        if (too_long)
                j->cut = 1;
        memcpy(j->out + j->len, s, len);
        j->len += len;
        j->out[j->len++] = '\n';
        return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        kb_apikeys_t *ks = kb_apikeys_new_empty();
        kb_pub_lines_t *ls;
        char *text = malloc(size + 1), err[512];
        join_t j;
        size_t i, lines = 1, off = 0, step;

        if (!ks || !text) {
                kb_apikeys_destroy(ks);
                free(text);
                return 0;
        }
        memcpy(text, data, size);
        text[size] = '\0';
        for (i = 0; i < size; i++)
                lines += data[i] == '\n';
        if (kb_apikeys_parse(ks, "keys", text, err, sizeof(err)) == 0) {
                char *dup = strdup(text), *save = NULL, *l;
                CHECK(kb_apikeys_count(ks) <= lines);
                /* a well-formed first line: its key is found */
                if (dup && (l = strtok_r(dup, "\n", &save))) {
                        char t[128], k[600], tenant[KB_APIKEYS_TENANT_MAX + 1];
                        if (sscanf(l, " %127s %599s", t, k) == 2 &&
                            t[0] != '#' && strncmp(k, "sha256:", 7) &&
                            k[0] != '#')
                                CHECK(kb_apikeys_lookup(ks, k, strlen(k),
                                                        tenant) &&
                                      !strcmp(tenant, t));
                }
                free(dup);
        } else
                CHECK(!strncmp(err, "keys:", 5) || strstr(err, "memory"));
        kb_apikeys_destroy(ks);

        /* the splitter, in pieces of 1..16 bytes */
        memset(&j, 0, sizeof(j));
        j.out = malloc(size + lines + 1);
        ls = kb_pub_lines_new(64, on_line, &j);
        if (ls && j.out) {
                for (i = 0; off < size; i++) {
                        step = 1 + (size ? data[i % size] % 16 : 0);
                        if (step > size - off)
                                step = size - off;
                        CHECK(kb_pub_lines_feed(ls, text + off, step) == 0);
                        off += step;
                }
                CHECK(kb_pub_lines_end(ls) == 0);
                if (!j.cut && !memchr(data, '\0', size)) {
                        /* the input, with a newline added at the end when
                         * it had none */
                        size_t want = size + (size && data[size - 1] != '\n');
                        CHECK(j.len == want);
                        CHECK(!memcmp(j.out, data, size));
                }
        }
        kb_pub_lines_destroy(ls);
        free(j.out);
        free(text);
        return 0;
}
