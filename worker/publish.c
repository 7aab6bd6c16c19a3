/* publish: see publish.h. */
#include "publish.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "loop.h"

void kb_pub_strip_bom(char *s, size_t *len) {
        if (*len >= 3 && !memcmp(s, "\xef\xbb\xbf", 3)) {
                memmove(s, s + 3, *len - 2);
                *len -= 3;
        }
}

int kb_pub_trim_line(char *s, size_t *len) {
        size_t i;
        while (*len > 0 && (s[*len - 1] == '\n' || s[*len - 1] == '\r'))
                s[--*len] = '\0';
        for (i = 0; i < *len; i++)
                if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
                        return 0;
        return 1;
}

kb_kv_t *kb_pub_route_ops(const kb_conf_t *conf, size_t *cnt) {
        size_t i, j, n = 0;
        kb_kv_t *ops;
        for (i = 0; i < conf->route_cnt; i++)
                n += conf->routes[i].operation_cnt;
        *cnt = 0;
        if (!n || !(ops = calloc(n, sizeof(*ops))))
                return NULL;
        for (i = 0; i < conf->route_cnt; i++)
                for (j = 0; j < conf->routes[i].operation_cnt; j++)
                        ops[(*cnt)++] = conf->routes[i].operations[j];
        return ops;
}

/* ---- validation ---- */

struct kb_pub_check_s {
        const kb_conf_t *ck_conf;
        kb_bf_format_t ck_format;
        char *ck_batch_id;
        const json_t *ck_metadata;
        char *ck_callback_url; /* the batch's, or NULL */
        int64_t ck_deadline;
        kb_kv_t *ck_ops;
        size_t ck_op_cnt;
        kb_bf_ids_t *ck_ids;
        int64_t ck_items;
        int64_t ck_bad;
        char *ck_line_callback; /* the one callback_url of native lines */
        int64_t ck_callback_line;
};

kb_pub_check_t *kb_pub_check_new(const kb_conf_t *conf, kb_bf_format_t format,
                                 const char *batch_id, const json_t *metadata,
                                 const char *callback_url, int64_t deadline) {
        kb_pub_check_t *ck = calloc(1, sizeof(*ck));
        if (!ck)
                return NULL;
        ck->ck_conf = conf;
        ck->ck_format = format;
        ck->ck_metadata = metadata;
        ck->ck_deadline = deadline;
        ck->ck_ops = kb_pub_route_ops(conf, &ck->ck_op_cnt);
        if (!(ck->ck_batch_id = strdup(batch_id)) ||
            (callback_url && !(ck->ck_callback_url = strdup(callback_url))) ||
            !(ck->ck_ids = kb_bf_ids_new())) {
                kb_pub_check_destroy(ck);
                return NULL;
        }
        return ck;
}

void kb_pub_check_destroy(kb_pub_check_t *ck) {
        if (!ck)
                return;
        kb_bf_ids_destroy(ck->ck_ids);
        free(ck->ck_ops);
        free(ck->ck_batch_id);
        free(ck->ck_callback_url);
        free(ck->ck_line_callback);
        free(ck);
}

static kb_pub_line_res_t bad(kb_pub_check_t *ck, char *errstr,
                             size_t errstr_size, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));
static kb_pub_line_res_t bad(kb_pub_check_t *ck, char *errstr,
                             size_t errstr_size, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(errstr, errstr_size, fmt, ap);
        va_end(ap);
        ck->ck_bad++;
        return KB_PUB_LINE_BAD;
}

kb_pub_line_res_t kb_pub_check_line(kb_pub_check_t *ck, char *s, size_t len,
                                    int64_t lineno, char *errstr,
                                    size_t errstr_size) {
        kb_bf_line_t l;
        kb_bf_batch_t b;
        kb_item_t it;
        char err[1024];
        int64_t first, n;
        json_t *o;
        char *dump;
        size_t dlen, max_bytes = (size_t)ck->ck_conf->worker_max_item_bytes;
        kb_pub_line_res_t res = KB_PUB_LINE_OK;

        if (lineno == 1)
                kb_pub_strip_bom(s, &len);
        if (kb_pub_trim_line(s, &len))
                return KB_PUB_LINE_BLANK;
        n = ++ck->ck_items;
        if (n > KB_BF_LINES_MAX + 1)
                return KB_PUB_LINE_OVER;
        if (n > KB_BF_LINES_MAX)
                return bad(ck, errstr, errstr_size,
                           "more than %d requests in one batch",
                           KB_BF_LINES_MAX);
        if (kb_bf_line_parse(s, len, ck->ck_format, ck->ck_ops, ck->ck_op_cnt,
                             &l, err, sizeof(err)))
                return bad(ck, errstr, errstr_size, "%s", err);
        if ((first = kb_bf_ids_add(ck->ck_ids, l.bl_custom_id, lineno)) != 0) {
                if (first < 0)
                        res = bad(ck, errstr, errstr_size, "out of memory");
                else
                        res = bad(ck, errstr, errstr_size,
                                  "duplicate custom_id \"%.256s\" (first on "
                                  "line %lld)",
                                  l.bl_custom_id, (long long)first);
                kb_bf_line_clear(&l);
                return res;
        }
        if (!ck->ck_callback_url && l.bl_callback_url) {
                if (!ck->ck_line_callback) {
                        ck->ck_line_callback = strdup(l.bl_callback_url);
                        ck->ck_callback_line = lineno;
                } else if (strcmp(ck->ck_line_callback, l.bl_callback_url)) {
                        kb_bf_line_clear(&l);
                        return bad(ck, errstr, errstr_size,
                                   "'callback_url' differs from line %lld's "
                                   "(a batch has one callback_url)",
                                   (long long)ck->ck_callback_line);
                }
        }
        /* The item as it will be published (the largest items_total, for
         * its size): every BatchItem rule of SPEC §2, and the size limit
         * the workers apply. */
        memset(&b, 0, sizeof(b));
        b.bb_batch_id = ck->ck_batch_id;
        b.bb_items_total = KB_ITEMS_TOTAL_MAX;
        b.bb_callback_url = ck->ck_callback_url;
        b.bb_deadline = ck->ck_deadline;
        b.bb_metadata = ck->ck_metadata;
        b.bb_submitted_at = kb_wall_ms();
        o = kb_bf_item_json(&l, n - 1, &b);
        dump = o ? json_dumps(o, JSON_COMPACT) : NULL;
        dlen = dump ? strlen(dump) : 0;
        if (!dump)
                res = bad(ck, errstr, errstr_size, "out of memory");
        else if (kb_codec_item_too_large(dlen, max_bytes))
                /* First, as in the decoders: the decisive reason. */
                res = bad(ck, errstr, errstr_size,
                          "the item is %zu bytes, over worker.max_item_bytes "
                          "(%d)",
                          dlen, ck->ck_conf->worker_max_item_bytes);
        else {
                if (kb_codec_item_from_json(o, dlen, max_bytes, &it, err,
                                            sizeof(err)) != KB_CODEC_OK)
                        res = bad(ck, errstr, errstr_size, "%s", err);
                kb_item_clear(&it);
        }
        free(dump);
        json_decref(o);
        kb_bf_line_clear(&l);
        return res;
}

int64_t kb_pub_check_items(const kb_pub_check_t *ck) {
        return ck->ck_items;
}

int64_t kb_pub_check_bad(const kb_pub_check_t *ck) {
        return ck->ck_bad;
}

const char *kb_pub_check_callback(const kb_pub_check_t *ck) {
        return ck->ck_line_callback;
}

/* ---- publishing ---- */

struct kb_pub_s {
        rd_kafka_t *pb_rk;
        kb_serde_t *pb_sd;
        const char *pb_topic;
        kb_bf_format_t pb_format;
        kb_bf_batch_t pb_batch;
        kb_kv_t *pb_ops;
        size_t pb_op_cnt;
        void *pb_opaque;
        int64_t pb_n;
};

kb_pub_t *kb_pub_new(rd_kafka_t *rk, kb_serde_t *sd, const kb_conf_t *conf,
                     kb_bf_format_t format, const kb_bf_batch_t *b,
                     void *msg_opaque) {
        kb_pub_t *pb = calloc(1, sizeof(*pb));
        if (!pb)
                return NULL;
        pb->pb_rk = rk;
        pb->pb_sd = sd;
        pb->pb_topic = conf->topics_name[KB_TOPIC_ITEMS];
        pb->pb_format = format;
        pb->pb_batch = *b;
        pb->pb_ops = kb_pub_route_ops(conf, &pb->pb_op_cnt);
        pb->pb_opaque = msg_opaque;
        return pb;
}

void kb_pub_destroy(kb_pub_t *pb) {
        if (!pb)
                return;
        free(pb->pb_ops);
        free(pb);
}

int kb_pub_line(kb_pub_t *pb, char *s, size_t len, int first_line,
                volatile sig_atomic_t *stop, char *errstr, size_t errstr_size) {
        kb_bf_line_t l;
        json_t *o;
        char *buf = NULL, key[KB_BATCH_ID_MAX + 32];
        size_t blen = 0;
        kb_serde_res_t sr;
        rd_kafka_resp_err_t err;

        if (first_line)
                kb_pub_strip_bom(s, &len);
        if (kb_pub_trim_line(s, &len))
                return 0;
        if (kb_bf_line_parse(s, len, pb->pb_format, pb->pb_ops, pb->pb_op_cnt,
                             &l, errstr, errstr_size)) {
                /* validated before: the input changed */
                size_t n = strlen(errstr);
                snprintf(errstr + n, errstr_size - n,
                         " (the file changed while submitting)");
                return -1;
        }
        o = kb_bf_item_json(&l, pb->pb_n, &pb->pb_batch);
        kb_bf_line_clear(&l);
        if (!o) {
                snprintf(errstr, errstr_size, "out of memory");
                return -1;
        }
        sr = kb_serde_encode(pb->pb_sd, pb->pb_topic, KB_MSG_BATCH_ITEM, o,
                             &buf, &blen, errstr, errstr_size);
        json_decref(o);
        if (sr != KB_SERDE_OK)
                return -1;
        snprintf(key, sizeof(key), "%s:%lld", pb->pb_batch.bb_batch_id,
                 (long long)pb->pb_n);
        for (;;) {
                err = rd_kafka_producev(
                        pb->pb_rk, RD_KAFKA_V_TOPIC(pb->pb_topic),
                        RD_KAFKA_V_KEY(key, strlen(key)),
                        RD_KAFKA_V_VALUE(buf, blen),
                        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_FREE),
                        RD_KAFKA_V_OPAQUE(pb->pb_opaque), RD_KAFKA_V_END);
                if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL || (stop && *stop))
                        break;
                rd_kafka_poll(pb->pb_rk, 50);
        }
        if (err) {
                free(buf);
                snprintf(errstr, errstr_size, "producing to %s: %s",
                         pb->pb_topic, rd_kafka_err2str(err));
                return -1;
        }
        pb->pb_n++;
        return 0;
}

int64_t kb_pub_count(const kb_pub_t *pb) {
        return pb->pb_n;
}

/* ---- lines of a byte stream ---- */

struct kb_pub_lines_s {
        char *ls_buf;
        size_t ls_len, ls_max;
        int ls_too_long;
        int64_t ls_lineno;
        kb_pub_line_cb_t ls_cb;
        void *ls_opaque;
};

kb_pub_lines_t *kb_pub_lines_new(size_t max_line, kb_pub_line_cb_t cb,
                                 void *opaque) {
        kb_pub_lines_t *ls = calloc(1, sizeof(*ls));
        if (!ls || !(ls->ls_buf = malloc(max_line + 1))) {
                free(ls);
                return NULL;
        }
        ls->ls_max = max_line;
        ls->ls_cb = cb;
        ls->ls_opaque = opaque;
        return ls;
}

void kb_pub_lines_destroy(kb_pub_lines_t *ls) {
        if (!ls)
                return;
        free(ls->ls_buf);
        free(ls);
}

static int lines_emit(kb_pub_lines_t *ls) {
        int r;
        ls->ls_buf[ls->ls_len] = '\0';
        r = ls->ls_cb(ls->ls_opaque, ls->ls_buf, ls->ls_len, ++ls->ls_lineno,
                      ls->ls_too_long);
        ls->ls_len = 0;
        ls->ls_too_long = 0;
        return r;
}

int kb_pub_lines_feed(kb_pub_lines_t *ls, const char *buf, size_t len) {
        while (len > 0) {
                const char *nl = memchr(buf, '\n', len);
                size_t take = nl ? (size_t)(nl - buf) : len, room;
                int r;
                room = ls->ls_max - ls->ls_len;
                if (take > room) {
                        ls->ls_too_long = 1;
                        memcpy(ls->ls_buf + ls->ls_len, buf, room);
                        ls->ls_len += room;
                } else {
                        memcpy(ls->ls_buf + ls->ls_len, buf, take);
                        ls->ls_len += take;
                }
                if (!nl)
                        return 0;
                if ((r = lines_emit(ls)))
                        return r;
                buf = nl + 1;
                len -= take + 1;
        }
        return 0;
}

int kb_pub_lines_end(kb_pub_lines_t *ls) {
        if (!ls->ls_len && !ls->ls_too_long)
                return 0;
        return lines_emit(ls);
}
