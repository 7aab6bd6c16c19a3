/* publish: the line splitter of the HTTP API's uploads and the file
 * validation shared with `kbatch submit`. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"
#include "publish.h"

typedef struct {
        char lines[16][64];
        int too_long[16];
        int64_t lineno[16];
        int n;
} seen_t;

static int collect(void *opaque, char *s, size_t len, int64_t lineno,
                   int too_long) {
        seen_t *sn = opaque;
        cr_assert_lt(sn->n, 16);
        cr_assert_eq(strlen(s), len);
        snprintf(sn->lines[sn->n], 64, "%s", s);
        sn->too_long[sn->n] = too_long;
        sn->lineno[sn->n++] = lineno;
        return 0;
}

/* Lines split across pieces, a long line cut, no newline at the end. */
Test(publish, lines_in_pieces) {
        seen_t sn;
        kb_pub_lines_t *ls;
        const char *text = "ab\ncdef\n\n0123456789abc\nlast";
        size_t i;
        memset(&sn, 0, sizeof(sn));
        cr_assert((ls = kb_pub_lines_new(8, collect, &sn)));
        for (i = 0; text[i]; i++) /* one byte at a time */
                cr_assert_eq(kb_pub_lines_feed(ls, text + i, 1), 0);
        cr_assert_eq(kb_pub_lines_end(ls), 0);
        cr_assert_eq(sn.n, 5);
        cr_expect_str_eq(sn.lines[0], "ab");
        cr_expect_str_eq(sn.lines[1], "cdef");
        cr_expect_str_eq(sn.lines[2], "");
        cr_expect_str_eq(sn.lines[3], "01234567");
        cr_expect(sn.too_long[3]);
        cr_expect_not(sn.too_long[1]);
        cr_expect_str_eq(sn.lines[4], "last");
        cr_expect_eq(sn.lineno[4], 5);
        kb_pub_lines_destroy(ls);
}

#define LINE(ID)                                                               \
        "{\"custom_id\":\"" ID "\",\"method\":\"POST\",\"url\":"              \
        "\"/v1/chat/completions\",\"body\":{\"model\":\"m\"}}"

Test(publish, check_like_submit) {
        char err[512], buf[512];
        kb_conf_t *conf = kb_conf_load(NULL, NULL, err, sizeof(err));
        kb_pub_check_t *ck;
        cr_assert(conf, "%s", err);
        cr_assert((ck = kb_pub_check_new(conf, KB_BF_AUTO, "batch_x", NULL,
                                         NULL, 0)));
        snprintf(buf, sizeof(buf), "\xef\xbb\xbf" LINE("a") "\r\n");
        cr_expect_eq(kb_pub_check_line(ck, buf, strlen(buf), 1, err,
                                       sizeof(err)),
                     KB_PUB_LINE_OK, "%s", err);
        snprintf(buf, sizeof(buf), "  \t\n");
        cr_expect_eq(kb_pub_check_line(ck, buf, strlen(buf), 2, err,
                                       sizeof(err)),
                     KB_PUB_LINE_BLANK);
        snprintf(buf, sizeof(buf), LINE("a"));
        cr_expect_eq(kb_pub_check_line(ck, buf, strlen(buf), 3, err,
                                       sizeof(err)),
                     KB_PUB_LINE_BAD);
        cr_expect(strstr(err, "duplicate custom_id \"a\" (first on line 1)"),
                  "%s", err);
        snprintf(buf, sizeof(buf), "{\"custom_id\":\"b\"}");
        cr_expect_eq(kb_pub_check_line(ck, buf, strlen(buf), 4, err,
                                       sizeof(err)),
                     KB_PUB_LINE_BAD);
        cr_expect_eq(kb_pub_check_items(ck), 3);
        cr_expect_eq(kb_pub_check_bad(ck), 2);
        kb_pub_check_destroy(ck);
        kb_conf_destroy(conf);
}

/* An item over worker.max_item_bytes is refused with that setting's name
 * (told by the codec's size rule, not by its message text); one that fits
 * is accepted. */
Test(publish, check_refuses_items_over_max_item_bytes) {
        char err[512], buf[2048], pad[1025];
        kb_conf_t *conf = kb_conf_load(NULL, NULL, err, sizeof(err));
        kb_pub_check_t *ck;
        cr_assert(conf, "%s", err);
        conf->worker_max_item_bytes = 1000;
        cr_assert((ck = kb_pub_check_new(conf, KB_BF_AUTO, "batch_x", NULL,
                                         NULL, 0)));
        memset(pad, 'x', 1024);
        pad[1024] = '\0';
        snprintf(buf, sizeof(buf),
                 "{\"custom_id\":\"big\",\"method\":\"POST\",\"url\":"
                 "\"/v1/chat/completions\",\"body\":{\"model\":\"m\","
                 "\"pad\":\"%s\"}}",
                 pad);
        cr_expect_eq(kb_pub_check_line(ck, buf, strlen(buf), 1, err,
                                       sizeof(err)),
                     KB_PUB_LINE_BAD);
        cr_expect(strstr(err, "bytes, over worker.max_item_bytes (1000)"), "%s",
                  err);
        snprintf(buf, sizeof(buf), LINE("small"));
        cr_expect_eq(kb_pub_check_line(ck, buf, strlen(buf), 2, err,
                                       sizeof(err)),
                     KB_PUB_LINE_OK, "%s", err);
        cr_expect(kb_codec_item_too_large(1001, 1000));
        cr_expect_not(kb_codec_item_too_large(1000, 1000));
        cr_expect_not(kb_codec_item_too_large(5000000, 0));
        kb_pub_check_destroy(ck);
        kb_conf_destroy(conf);
}
