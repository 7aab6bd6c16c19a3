/* Unit tests for worker/offsets.c: the out-of-order completion tracker. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "offsets.h"

#define META_BUF (KB_OFFSETS_META_MAX + 1)
#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

/* ---- helpers ---- */

static kb_offsets_t *new_ot(size_t window) {
        kb_offsets_t *ot = kb_offsets_new(window);
        cr_assert_not_null(ot);
        return ot;
}

static int64_t low_of(const kb_offsets_t *ot) {
        int64_t off;
        char meta[META_BUF];
        cr_assert_neq(kb_offsets_committable(ot, &off, meta, sizeof(meta)), -1);
        return off;
}

static void meta_of(const kb_offsets_t *ot, int64_t *off, char *meta) {
        cr_assert_neq(kb_offsets_committable(ot, off, meta, META_BUF), -1);
}

/* Asserts that the metadata decodes to exactly the offsets (relative to the
 * committable offset) listed in want[]. */
static void assert_meta_bits(const char *meta, const int *want, size_t nwant) {
        uint8_t *bits;
        size_t nbits;
        cr_assert_eq(kb_offsets_meta_decode(meta, strlen(meta), &bits, &nbits),
                     0, "decode \"%s\"", meta);
        size_t max = 0;
        for (size_t i = 0; i < nwant; i++)
                if ((size_t)want[i] + 1 > max)
                        max = (size_t)want[i] + 1;
        cr_assert_eq(nbits, (max + 7) / 8 * 8, "meta \"%s\": %zu bits", meta,
                     nbits);
        for (size_t i = 0; i < nbits; i++) {
                int set = (bits[i / 8] >> (i % 8)) & 1, exp = 0;
                for (size_t j = 0; j < nwant; j++)
                        exp |= (size_t)want[j] == i;
                cr_assert_eq(set, exp, "meta \"%s\" bit %zu", meta, i);
        }
        free(bits);
}

/* xorshift64*: a fixed, portable sequence. */
static uint64_t rng_state;
static uint64_t rng(void) {
        rng_state ^= rng_state >> 12;
        rng_state ^= rng_state << 25;
        rng_state ^= rng_state >> 27;
        return rng_state * 2685821657736338717ULL;
}

/* A naive reference encoder: bit by bit, standard alphabet, no padding. */
static void ref_encode(const uint8_t *bytes, size_t n, char *out) {
        static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                "abcdefghijklmnopqrstuvwxyz0123456789+/";
        while (n > 0 && bytes[n - 1] == 0)
                n--;
        if (n == 0) {
                out[0] = '\0';
                return;
        }
        strcpy(out, "kb1:");
        char *o = out + 4;
        size_t nb = n * 8;
        for (size_t i = 0; i < nb; i += 6) {
                int v = 0;
                for (size_t k = 0; k < 6; k++) {
                        size_t b = i + k; /* MSB-first within each byte */
                        int bit = b < nb ? (bytes[b / 8] >> (7 - b % 8)) & 1 : 0;
                        v = (v << 1) | bit;
                }
                *o++ = a[v];
        }
        *o = '\0';
}

/* ---- construction, strings ---- */

Test(offsets, destroy_null_is_noop) {
        kb_offsets_destroy(NULL);
}

Test(offsets, window_clamp) {
        static const struct {
                size_t asked, want;
        } cases[] = {
            {0, KB_OFFSETS_WINDOW_DEFAULT},
            {1, 1},
            {100, 100},
            {16384, 16384},
            {KB_OFFSETS_WINDOW_MAX, KB_OFFSETS_WINDOW_MAX},
            {KB_OFFSETS_WINDOW_MAX + 1, KB_OFFSETS_WINDOW_MAX},
            {SIZE_MAX, KB_OFFSETS_WINDOW_MAX},
        };
        cr_assert_eq(KB_OFFSETS_WINDOW_MAX, 23976);
        for (size_t i = 0; i < NELEM(cases); i++) {
                kb_offsets_t *ot = new_ot(cases[i].asked);
                int64_t base = 1000, w = (int64_t)cases[i].want;
                cr_assert_eq(kb_offsets_window_full(ot), 0, "case %zu", i);
                cr_assert_eq(kb_offsets_track(ot, base), KB_OFFSETS_OK);
                cr_assert_eq(kb_offsets_track(ot, base + w), KB_OFFSETS_FULL,
                             "case %zu", i);
                if (w > 1)
                        cr_assert_eq(kb_offsets_track(ot, base + w - 1),
                                     KB_OFFSETS_OK, "case %zu", i);
                cr_assert_eq(kb_offsets_window_full(ot), 1, "case %zu", i);
                kb_offsets_destroy(ot);
        }
}

Test(offsets, res_str) {
        static const struct {
                kb_offsets_res_t res;
                const char *str;
        } cases[] = {
            {KB_OFFSETS_OK, "ok"},       {KB_OFFSETS_SKIP, "skip"},
            {KB_OFFSETS_STALE, "stale"}, {KB_OFFSETS_FULL, "full"},
            {KB_OFFSETS_DUP, "dup"},
        };
        for (size_t i = 0; i < NELEM(cases); i++)
                cr_assert_str_eq(kb_offsets_res_str(cases[i].res),
                                 cases[i].str);
}

Test(offsets, committable_before_anything) {
        kb_offsets_t *ot = new_ot(0);
        int64_t off = 42;
        char meta[META_BUF] = "x";
        cr_assert_eq(kb_offsets_committable(ot, &off, meta, sizeof(meta)), 0);
        cr_assert_eq(off, -1);
        cr_assert_str_eq(meta, "");
        cr_assert_eq(kb_offsets_pending(ot), 0);
        cr_assert_eq(kb_offsets_mark_done(ot, 0), -1);
        kb_offsets_destroy(ot);
}

Test(offsets, committable_small_buffer) {
        kb_offsets_t *ot = new_ot(0);
        int64_t off = 0;
        char meta[100];
        kb_offsets_track(ot, 5);
        cr_assert_eq(kb_offsets_committable(ot, &off, meta, sizeof(meta)), -1);
        cr_assert_eq(off, -1);
        cr_assert_str_eq(meta, "");
        kb_offsets_destroy(ot);
}

/* ---- completion ---- */

Test(offsets, in_order_completion) {
        kb_offsets_t *ot = new_ot(0);
        char meta[META_BUF];
        int64_t off;
        for (int64_t o = 0; o < 100; o++)
                cr_assert_eq(kb_offsets_track(ot, o), KB_OFFSETS_OK);
        cr_assert_eq(kb_offsets_pending(ot), 100);
        cr_assert_eq(low_of(ot), 0);
        for (int64_t o = 0; o < 100; o++) {
                cr_assert_eq(kb_offsets_mark_done(ot, o), 0);
                meta_of(ot, &off, meta);
                cr_assert_eq(off, o + 1);
                cr_assert_str_eq(meta, "");
                cr_assert_eq(kb_offsets_pending(ot), (size_t)(99 - o));
        }
        kb_offsets_destroy(ot);
}

Test(offsets, out_of_order_completion) {
        static const struct {
                int n;      /* offsets tracked */
                int nmarks;
                int order[8];
                int low[8]; /* committable offset after each mark */
        } cases[] = {
            {5, 5, {2, 1, 4, 0, 3}, {0, 0, 0, 3, 5}},
            {5, 5, {4, 3, 2, 1, 0}, {0, 0, 0, 0, 5}},
            {5, 5, {0, 2, 1, 4, 3}, {1, 1, 3, 3, 5}},
            {8, 8, {7, 0, 6, 1, 5, 2, 4, 3}, {0, 1, 1, 2, 2, 3, 3, 8}},
            {3, 4, {1, 1, 0, 2}, {0, 0, 2, 3}}, /* marking twice */
        };
        for (size_t c = 0; c < NELEM(cases); c++) {
                kb_offsets_t *ot = new_ot(0);
                int64_t base = 7000;
                for (int i = 0; i < cases[c].n; i++)
                        kb_offsets_track(ot, base + i);
                for (int i = 0; i < cases[c].nmarks; i++) {
                        cr_assert_eq(
                            kb_offsets_mark_done(ot, base + cases[c].order[i]),
                            0);
                        cr_assert_eq(low_of(ot), base + cases[c].low[i],
                                     "case %zu step %d", c, i);
                }
                cr_assert_eq(kb_offsets_pending(ot), 0, "case %zu", c);
                kb_offsets_destroy(ot);
        }
}

Test(offsets, gaps) {
        /* Offsets tracked with holes between them (compaction, transaction
         * markers): the holes count as done. */
        static const struct {
                int tracked[6];
                int ntracked;
                int marks[6];
                int nmarks;
                int low;     /* committable offset after the marks */
                int pending; /* after the marks */
        } cases[] = {
            {{10, 12, 15}, 3, {0}, 0, 10, 3},
            {{10, 12, 15}, 3, {10}, 1, 12, 2},
            {{10, 12, 15}, 3, {10, 15}, 2, 12, 1},
            {{10, 12, 15}, 3, {10, 15, 12}, 3, 16, 0},
            {{10, 12, 15}, 3, {12, 15, 10}, 3, 16, 0},
            {{0, 5}, 2, {0}, 1, 5, 1},
            {{0, 100, 101}, 3, {0, 101}, 2, 100, 1},
            {{3, 4, 1000}, 3, {4, 3}, 2, 1000, 1},
        };
        for (size_t c = 0; c < NELEM(cases); c++) {
                kb_offsets_t *ot = new_ot(0);
                for (int i = 0; i < cases[c].ntracked; i++)
                        cr_assert_eq(kb_offsets_track(ot, cases[c].tracked[i]),
                                     KB_OFFSETS_OK, "case %zu", c);
                for (int i = 0; i < cases[c].nmarks; i++)
                        cr_assert_eq(kb_offsets_mark_done(ot, cases[c].marks[i]),
                                     0, "case %zu", c);
                cr_assert_eq(low_of(ot), cases[c].low, "case %zu", c);
                cr_assert_eq(kb_offsets_pending(ot), (size_t)cases[c].pending,
                             "case %zu", c);
                kb_offsets_destroy(ot);
        }
}

Test(offsets, gap_marks_done_in_metadata) {
        kb_offsets_t *ot = new_ot(0);
        char meta[META_BUF];
        int64_t off;
        kb_offsets_track(ot, 10);
        kb_offsets_track(ot, 12);
        kb_offsets_track(ot, 15);
        kb_offsets_mark_done(ot, 10);
        kb_offsets_mark_done(ot, 15);
        meta_of(ot, &off, meta);
        cr_assert_eq(off, 12);
        /* 13, 14 gaps and 15 done: bits 1..3 = 0x0e */
        cr_assert_str_eq(meta, "kb1:Dg");
        static const int want[] = {1, 2, 3};
        assert_meta_bits(meta, want, NELEM(want));
        kb_offsets_destroy(ot);
}

Test(offsets, committable_metadata_contents) {
        kb_offsets_t *ot = new_ot(0);
        char meta[META_BUF];
        int64_t off;
        for (int64_t o = 100; o < 140; o++)
                kb_offsets_track(ot, o);
        static const int done[] = {1, 3, 8, 9, 17, 39};
        for (size_t i = 0; i < NELEM(done); i++)
                cr_assert_eq(kb_offsets_mark_done(ot, 100 + done[i]), 0);
        meta_of(ot, &off, meta);
        cr_assert_eq(off, 100);
        assert_meta_bits(meta, done, NELEM(done));

        /* The bitmap is relative to the committable offset. */
        kb_offsets_mark_done(ot, 100);
        meta_of(ot, &off, meta);
        cr_assert_eq(off, 102);
        static const int shifted[] = {1, 6, 7, 15, 37};
        assert_meta_bits(meta, shifted, NELEM(shifted));

        /* Done above low only at the far end: one set bit, trimmed bytes. */
        for (int64_t o = 102; o < 139; o++)
                kb_offsets_mark_done(ot, o == 120 ? 121 : o);
        meta_of(ot, &off, meta);
        cr_assert_eq(off, 120);
        static const int last[] = {1,  2,  3,  4,  5,  6,  7,  8,  9, 10,
                                   11, 12, 13, 14, 15, 16, 17, 18, 19};
        assert_meta_bits(meta, last, NELEM(last));
        kb_offsets_mark_done(ot, 120);
        meta_of(ot, &off, meta);
        cr_assert_eq(off, 140);
        cr_assert_str_eq(meta, "");
        kb_offsets_destroy(ot);
}

/* ---- encode / decode ---- */

Test(offsets, meta_encode_vectors) {
        static const struct {
                uint8_t bytes[4];
                size_t nbits;
                const char *want;
        } cases[] = {
            {{0}, 0, ""},
            {{0x00}, 8, ""},
            {{0x00, 0x00}, 16, ""},
            {{0x01}, 8, "kb1:AQ"},
            {{0x02}, 8, "kb1:Ag"},
            {{0xff, 0x00, 0x00}, 24, "kb1:/w"},
            {{0x01, 0x02, 0x03}, 24, "kb1:AQID"},
            {{0x01, 0x02, 0x03, 0x04}, 32, "kb1:AQIDBA"},
            {{0xfb, 0xef, 0xbe}, 24, "kb1:++++"},
            {{0xff, 0xff, 0xff}, 24, "kb1:////"},
            {{0xff}, 3, "kb1:Bw"},          /* bits past nbits ignored */
            {{0x00, 0xf0}, 12, ""},         /* ditto, then trimmed */
            {{0x00, 0x0f}, 12, "kb1:AA8"},
        };
        for (size_t i = 0; i < NELEM(cases); i++) {
                char out[64], ref[64];
                int n = kb_offsets_meta_encode(cases[i].bytes, cases[i].nbits,
                                               out, sizeof(out));
                cr_assert_eq(n, (int)strlen(cases[i].want), "case %zu", i);
                cr_assert_str_eq(out, cases[i].want, "case %zu", i);
                /* The reference encoder agrees (for whole bytes). */
                if (cases[i].nbits % 8 == 0) {
                        ref_encode(cases[i].bytes, cases[i].nbits / 8, ref);
                        cr_assert_str_eq(out, ref, "case %zu", i);
                }
        }
}

Test(offsets, meta_encode_out_size) {
        static const uint8_t b[] = {0x01, 0x02, 0x03}; /* "kb1:AQID" */
        char out[16];
        cr_assert_eq(kb_offsets_meta_encode(b, 24, out, 8), -1);
        cr_assert_eq(kb_offsets_meta_encode(b, 24, out, 9), 8);
        cr_assert_str_eq(out, "kb1:AQID");
        cr_assert_eq(kb_offsets_meta_encode(b, 0, out, 0), -1);
        cr_assert_eq(kb_offsets_meta_encode(b, 0, out, 1), 0);
}

/* Decodes from an exactly sized heap copy (no NUL), so that the sanitizers
 * and valgrind catch a read past len. */
static int decode_exact(const char *s, size_t len, uint8_t **bits,
                        size_t *nbits) {
        char *copy = malloc(len ? len : 1);
        cr_assert_not_null(copy);
        memcpy(copy, s, len);
        int rc = kb_offsets_meta_decode(copy, len, bits, nbits);
        free(copy);
        return rc;
}

Test(offsets, meta_decode_valid) {
        static const struct {
                const char *meta;
                uint8_t bytes[4];
                size_t nbytes;
        } cases[] = {
            {"", {0}, 0},
            {"kb1:", {0}, 0},
            {"kb1:AQ", {0x01}, 1},
            {"kb1:AQID", {0x01, 0x02, 0x03}, 3},
            {"kb1:AQIDBA", {0x01, 0x02, 0x03, 0x04}, 4},
            {"kb1:AQI", {0x01, 0x02}, 2},
            {"kb1:++++", {0xfb, 0xef, 0xbe}, 3},
            {"kb1:////", {0xff, 0xff, 0xff}, 3},
            {"kb1:AAAA", {0, 0, 0}, 3}, /* not canonical, but harmless */
        };
        for (size_t i = 0; i < NELEM(cases); i++) {
                uint8_t *bits = (uint8_t *)1;
                size_t nbits = 99;
                cr_assert_eq(decode_exact(cases[i].meta, strlen(cases[i].meta),
                                          &bits, &nbits),
                             0, "case %zu", i);
                cr_assert_eq(nbits, cases[i].nbytes * 8, "case %zu", i);
                if (cases[i].nbytes == 0)
                        cr_assert_null(bits, "case %zu", i);
                else
                        cr_assert_arr_eq(bits, cases[i].bytes, cases[i].nbytes,
                                         "case %zu", i);
                free(bits);
        }
}

Test(offsets, meta_decode_malformed) {
        static const struct {
                const char *meta;
                size_t len; /* 0: strlen */
        } cases[] = {
            {"kb2:AQ", 0},    {"KB1:AQ", 0},       {"kb1", 0},
            {"kb", 0},        {"k", 0},            {"kb1:A", 0},
            {"kb1:AQ==", 0},  {"kb1:AQ=", 0},      {"kb1:A=", 0},
            {"kb1:AR", 0},    {"kb1:AQJ", 0},      {"kb1:A Q", 0},
            {"kb1:AQ\n", 0},  {"kb1:-_", 0},       {"kb1:AQ\0A", 8},
            {" kb1:AQ", 0},   {"{\"foreign\":1}", 0}, {"kb1:AQIDB", 0},
            {"\xff\xfe\x80", 0}, {"kb1:\xc3\xa9", 0},
        };
        for (size_t i = 0; i < NELEM(cases); i++) {
                size_t len = cases[i].len ? cases[i].len : strlen(cases[i].meta);
                uint8_t *bits = (uint8_t *)1;
                size_t nbits = 99;
                cr_assert_eq(decode_exact(cases[i].meta, len, &bits, &nbits), -1,
                             "case %zu \"%s\"", i, cases[i].meta);
                cr_assert_null(bits, "case %zu", i);
                cr_assert_eq(nbits, 0, "case %zu", i);
        }
}

Test(offsets, meta_decode_length_limit) {
        char buf[KB_OFFSETS_META_MAX + 2];
        uint8_t *bits;
        size_t nbits;
        memcpy(buf, "kb1:", 4);
        memset(buf + 4, 'A', sizeof(buf) - 4);
        /* 4000 bytes: 3996 chars = 2997 bytes, accepted. */
        cr_assert_eq(decode_exact(buf, KB_OFFSETS_META_MAX, &bits, &nbits), 0);
        cr_assert_eq(nbits, 2997 * 8);
        free(bits);
        /* 4004 bytes, a well-formed length for base64, but too long. */
        char big[KB_OFFSETS_META_MAX + 4];
        memcpy(big, "kb1:", 4);
        memset(big + 4, 'A', sizeof(big) - 4);
        cr_assert_eq(decode_exact(big, sizeof(big), &bits, &nbits), -1);
        cr_assert_null(bits);
}

Test(offsets, meta_decode_prefixes_of_valid) {
        /* Every truncation of a valid string, from a buffer of exactly that
         * length: ok or -1, never a read past len. */
        static const char s[] = "kb1:AQIDBA";
        static const int want[] = {0, -1, -1, -1, 0, -1, 0, 0, 0, -1, 0};
        for (size_t len = 0; len < sizeof(s); len++) {
                uint8_t *bits;
                size_t nbits;
                cr_assert_eq(decode_exact(s, len, &bits, &nbits), want[len],
                             "len %zu", len);
                free(bits);
        }
}

Test(offsets, meta_decode_arbitrary_bytes) {
        /* Fuzz-ish: random buffers; when one decodes, encoding its bits and
         * decoding again gives the same bits (trailing zero bytes aside). */
        static const char alpha[] = "kb1:AQgw/+=\0\xff ABCDEFabcxyz0189";
        rng_state = 0x5eed;
        for (int iter = 0; iter < 20000; iter++) {
                char buf[48];
                size_t len = rng() % sizeof(buf);
                int prefixed = rng() % 4 != 0 && len >= 4;
                for (size_t i = 0; i < len; i++)
                        buf[i] = (rng() % 5 == 0)
                                     ? (char)rng()
                                     : alpha[rng() % (sizeof(alpha) - 1)];
                if (prefixed)
                        memcpy(buf, "kb1:", 4);
                uint8_t *bits;
                size_t nbits;
                int rc = decode_exact(buf, len, &bits, &nbits);
                cr_assert(rc == 0 || rc == -1);
                if (rc == -1) {
                        cr_assert_null(bits);
                        continue;
                }
                char enc[META_BUF];
                cr_assert_geq(kb_offsets_meta_encode(bits, nbits, enc,
                                                     sizeof(enc)),
                              0);
                uint8_t *bits2;
                size_t nbits2;
                cr_assert_eq(kb_offsets_meta_decode(enc, strlen(enc), &bits2,
                                                    &nbits2),
                             0);
                cr_assert_leq(nbits2, nbits);
                for (size_t i = 0; i < nbits / 8; i++)
                        cr_assert_eq(i < nbits2 / 8 ? bits2[i] : 0, bits[i]);
                free(bits);
                free(bits2);
        }
}

/* ---- metadata round trip, reset ---- */

Test(offsets, metadata_round_trip) {
        static const struct {
                uint64_t seed;
                size_t window;
                int n;        /* offsets tracked */
                int pct_done; /* chance an offset (not the first) is done */
                int pct_gap;  /* chance an offset is a gap */
        } cases[] = {
            {1, 0, 100, 50, 0},    {2, 0, 1000, 10, 5},
            {3, 0, 16384, 90, 10}, {4, SIZE_MAX, 23976, 50, 0},
            {5, 64, 64, 100, 0},   {6, 0, 3, 0, 50},
            {7, 0, 5000, 1, 30},
        };
        for (size_t c = 0; c < NELEM(cases); c++) {
                rng_state = cases[c].seed * 0x9e3779b97f4a7c15ULL;
                int64_t base = 1000000 + (int64_t)cases[c].seed;
                int n = cases[c].n;
                uint8_t *done = calloc((size_t)n, 1);
                cr_assert_not_null(done);
                kb_offsets_t *a = new_ot(cases[c].window);
                for (int i = 0; i < n; i++) {
                        if (i > 0 && i < n - 1 &&
                            (int)(rng() % 100) < cases[c].pct_gap) {
                                done[i] = 1; /* never tracked */
                                continue;
                        }
                        cr_assert_eq(kb_offsets_track(a, base + i),
                                     KB_OFFSETS_OK, "case %zu", c);
                }
                for (int i = 1; i < n; i++)
                        if (!done[i] && (int)(rng() % 100) < cases[c].pct_done) {
                                done[i] = 1;
                                kb_offsets_mark_done(a, base + i);
                        }
                int64_t off;
                char meta[META_BUF];
                cr_assert_eq(kb_offsets_committable(a, &off, meta, sizeof(meta)),
                             1);
                cr_assert_eq(off, base, "case %zu", c);
                cr_assert_leq(strlen(meta), KB_OFFSETS_META_MAX);

                kb_offsets_t *b = new_ot(cases[c].window);
                cr_assert_eq(kb_offsets_reset(b, off, meta, strlen(meta)), 0);
                /* Stable: nothing changed, the same metadata comes out. */
                int64_t off2;
                char meta2[META_BUF];
                cr_assert_eq(
                    kb_offsets_committable(b, &off2, meta2, sizeof(meta2)), 0,
                    "case %zu", c);
                cr_assert_eq(off2, off);
                cr_assert_str_eq(meta2, meta);
                for (int i = 0; i < n; i++)
                        cr_assert_eq(kb_offsets_track(b, base + i),
                                     done[i] ? KB_OFFSETS_SKIP : KB_OFFSETS_OK,
                                     "case %zu offset +%d", c, i);
                cr_assert_eq(low_of(b), base);
                size_t pend = 0;
                for (int i = 0; i < n; i++)
                        pend += !done[i];
                cr_assert_eq(kb_offsets_pending(b), pend);
                cr_assert_eq(kb_offsets_pending(a), pend);
                kb_offsets_destroy(a);
                kb_offsets_destroy(b);
                free(done);
        }
}

Test(offsets, skip_set_kept_until_tracked) {
        kb_offsets_t *ot = new_ot(0);
        int64_t off;
        char meta[META_BUF];
        /* 0x22: bits 1 and 5: offsets 101 and 105 done */
        cr_assert_eq(kb_offsets_reset(ot, 100, "kb1:Ig", 6), 0);
        meta_of(ot, &off, meta);
        cr_assert_eq(off, 100);
        cr_assert_str_eq(meta, "kb1:Ig");
        cr_assert_eq(kb_offsets_track(ot, 100), KB_OFFSETS_OK);
        cr_assert_eq(kb_offsets_track(ot, 101), KB_OFFSETS_SKIP);
        cr_assert_eq(kb_offsets_track(ot, 102), KB_OFFSETS_OK);
        meta_of(ot, &off, meta);
        cr_assert_str_eq(meta, "kb1:Ig"); /* 101 from the ring, 105 not yet */
        cr_assert_eq(kb_offsets_mark_done(ot, 100), 0);
        meta_of(ot, &off, meta);
        cr_assert_eq(off, 102);
        static const int want[] = {3};
        assert_meta_bits(meta, want, NELEM(want));
        /* 104 jumps over 103 (a gap); 105 still answered SKIP. */
        cr_assert_eq(kb_offsets_track(ot, 104), KB_OFFSETS_OK);
        cr_assert_eq(kb_offsets_track(ot, 105), KB_OFFSETS_SKIP);
        cr_assert_eq(kb_offsets_track(ot, 106), KB_OFFSETS_OK);
        cr_assert_eq(kb_offsets_pending(ot), 3);
        kb_offsets_destroy(ot);
}

Test(offsets, skip_set_jumped_over) {
        kb_offsets_t *ot = new_ot(0);
        /* 101 and 105 done; the next message is 110 (compaction). */
        cr_assert_eq(kb_offsets_reset(ot, 100, "kb1:Ig", 6), 0);
        cr_assert_eq(kb_offsets_track(ot, 110), KB_OFFSETS_OK);
        cr_assert_eq(low_of(ot), 110);
        cr_assert_eq(kb_offsets_track(ot, 105), KB_OFFSETS_STALE);
        int64_t off;
        char meta[META_BUF];
        meta_of(ot, &off, meta);
        cr_assert_str_eq(meta, "");
        kb_offsets_destroy(ot);
}

Test(offsets, malformed_metadata_ignored) {
        static const char *const bad[] = {
            "garbage", "kb1:A", "kb1:AQ==", "kb2:AQ", "kb1:!!!!",
            "{\"pc\":\"v1\"}", "kb1:AR",
        };
        for (size_t i = 0; i < NELEM(bad); i++) {
                kb_offsets_t *ot = new_ot(0);
                cr_assert_eq(kb_offsets_reset(ot, 100, bad[i], strlen(bad[i])),
                             -1, "case %zu", i);
                cr_assert_eq(low_of(ot), 100, "case %zu", i);
                for (int64_t o = 100; o < 120; o++)
                        cr_assert_eq(kb_offsets_track(ot, o), KB_OFFSETS_OK,
                                     "case %zu offset %ld", i, (long)o);
                /* Our own metadata replaces the foreign one. */
                int64_t off;
                char meta[META_BUF];
                cr_assert_eq(
                    kb_offsets_committable(ot, &off, meta, sizeof(meta)), 1);
                cr_assert_str_eq(meta, "");
                kb_offsets_destroy(ot);
        }
}

Test(offsets, empty_or_absent_metadata) {
        static const struct {
                const char *meta;
                size_t len;
        } cases[] = {{NULL, 0}, {"", 0}, {NULL, 5}, {"kb1:", 4}};
        for (size_t i = 0; i < NELEM(cases); i++) {
                kb_offsets_t *ot = new_ot(0);
                cr_assert_eq(
                    kb_offsets_reset(ot, 7, cases[i].meta, cases[i].len), 0,
                    "case %zu", i);
                for (int64_t o = 7; o < 12; o++)
                        cr_assert_eq(kb_offsets_track(ot, o), KB_OFFSETS_OK);
                kb_offsets_destroy(ot);
        }
}

Test(offsets, reset_mid_life) {
        kb_offsets_t *ot = new_ot(0);
        int64_t off;
        char meta[META_BUF];
        for (int64_t o = 0; o < 10; o++)
                kb_offsets_track(ot, o);
        kb_offsets_mark_done(ot, 0);
        kb_offsets_mark_done(ot, 5);
        cr_assert_eq(kb_offsets_pending(ot), 8);

        /* Reassigned at 50 with 51, 52 done (0x06 = "Bg"). */
        cr_assert_eq(kb_offsets_reset(ot, 50, "kb1:Bg", 6), 0);
        cr_assert_eq(kb_offsets_pending(ot), 0);
        cr_assert_eq(kb_offsets_window_full(ot), 0);
        cr_assert_eq(kb_offsets_committable(ot, &off, meta, sizeof(meta)), 0);
        cr_assert_eq(off, 50);
        cr_assert_str_eq(meta, "kb1:Bg");
        cr_assert_eq(kb_offsets_track(ot, 5), KB_OFFSETS_STALE);
        cr_assert_eq(kb_offsets_mark_done(ot, 5), -1);
        cr_assert_eq(kb_offsets_track(ot, 50), KB_OFFSETS_OK);
        cr_assert_eq(kb_offsets_track(ot, 51), KB_OFFSETS_SKIP);
        cr_assert_eq(kb_offsets_track(ot, 52), KB_OFFSETS_SKIP);
        cr_assert_eq(kb_offsets_track(ot, 53), KB_OFFSETS_OK);
        cr_assert_eq(kb_offsets_pending(ot), 2);
        kb_offsets_mark_done(ot, 50);
        cr_assert_eq(kb_offsets_committable(ot, &off, meta, sizeof(meta)), 1);
        cr_assert_eq(off, 53);
        cr_assert_str_eq(meta, "");

        /* Back to an earlier position (a seek back): offsets are new again. */
        cr_assert_eq(kb_offsets_reset(ot, 3, NULL, 0), 0);
        cr_assert_eq(kb_offsets_track(ot, 3), KB_OFFSETS_OK);
        cr_assert_eq(kb_offsets_track(ot, 4), KB_OFFSETS_OK);
        cr_assert_eq(low_of(ot), 3);

        /* No committed offset: the first tracked one starts the window. */
        cr_assert_eq(kb_offsets_reset(ot, -1001, "kb1:Bg", 6), 0);
        cr_assert_eq(kb_offsets_committable(ot, &off, meta, sizeof(meta)), 0);
        cr_assert_eq(off, -1);
        cr_assert_eq(kb_offsets_track(ot, 77), KB_OFFSETS_OK);
        cr_assert_eq(kb_offsets_track(ot, 78), KB_OFFSETS_OK);
        cr_assert_eq(low_of(ot), 77);
        kb_offsets_destroy(ot);
}

/* ---- the 4 KiB bound ---- */

Test(offsets, full_at_the_bound) {
        kb_offsets_t *ot = new_ot(0);
        int64_t off, off2;
        char meta[META_BUF], meta2[META_BUF];
        int64_t w = KB_OFFSETS_WINDOW_DEFAULT;
        cr_assert_eq(kb_offsets_track(ot, 0), KB_OFFSETS_OK);
        cr_assert_eq(kb_offsets_track(ot, w - 1), KB_OFFSETS_OK);
        cr_assert_eq(kb_offsets_window_full(ot), 1);
        meta_of(ot, &off, meta);
        cr_assert_eq(kb_offsets_track(ot, w), KB_OFFSETS_FULL);
        cr_assert_eq(kb_offsets_track(ot, w + 100), KB_OFFSETS_FULL);
        /* FULL tracks nothing. */
        cr_assert_eq(kb_offsets_pending(ot), 2);
        meta_of(ot, &off2, meta2);
        cr_assert_eq(off2, off);
        cr_assert_str_eq(meta2, meta);
        cr_assert_eq(kb_offsets_mark_done(ot, w), -1);
        /* The low end catches up: the refused offset is taken (seek back). */
        kb_offsets_mark_done(ot, 0);
        cr_assert_eq(low_of(ot), w - 1);
        cr_assert_eq(kb_offsets_window_full(ot), 0);
        cr_assert_eq(kb_offsets_track(ot, w), KB_OFFSETS_OK);
        cr_assert_eq(kb_offsets_track(ot, 2 * w - 2), KB_OFFSETS_OK);
        cr_assert_eq(kb_offsets_track(ot, 2 * w - 1), KB_OFFSETS_FULL);
        kb_offsets_destroy(ot);
}

/* Issue 15: a gap wider than the window (an aborted upstream transaction of
 * >= 16,384 records, which read_committed skips; an offset reset past
 * retention) stalled the partition forever: track answered FULL while
 * window_full() said 0 because next - low was 0, so the partition was
 * resumed, sought back and refused again. */
Test(offsets, gap_wider_than_the_window) {
        int64_t w = KB_OFFSETS_WINDOW_DEFAULT;
        kb_offsets_t *ot = new_ot(0);
        int64_t off;
        char meta[META_BUF];
        cr_assert_eq(kb_offsets_track(ot, 10), KB_OFFSETS_OK);
        cr_assert_eq(kb_offsets_mark_done(ot, 10), 0);
        /* Nothing in flight: the gap counts as done, the window moves. */
        cr_assert_eq(kb_offsets_track(ot, 10 + 3 * w), KB_OFFSETS_OK);
        cr_assert_eq(kb_offsets_window_full(ot), 0);
        meta_of(ot, &off, meta);
        cr_assert_eq(off, 10 + 3 * w);
        cr_assert_str_eq(meta, "");
        cr_assert_eq(kb_offsets_track(ot, 11), KB_OFFSETS_STALE);
        cr_assert_eq(kb_offsets_mark_done(ot, 10 + 3 * w), 0);
        meta_of(ot, &off, meta);
        cr_assert_eq(off, 10 + 3 * w + 1);
        kb_offsets_destroy(ot);

        /* Something in flight below: FULL, and the window says full until
         * it is done (the caller keeps the partition paused), then the
         * refused offset is taken. */
        ot = new_ot(0);
        cr_assert_eq(kb_offsets_track(ot, 0), KB_OFFSETS_OK);
        cr_assert_eq(kb_offsets_track(ot, 5 * w), KB_OFFSETS_FULL);
        cr_assert_eq(kb_offsets_window_full(ot), 1);
        cr_assert_eq(kb_offsets_track(ot, 5 * w), KB_OFFSETS_FULL);
        cr_assert_eq(kb_offsets_mark_done(ot, 0), 0);
        cr_assert_eq(kb_offsets_window_full(ot), 0);
        cr_assert_eq(kb_offsets_track(ot, 5 * w), KB_OFFSETS_OK);
        cr_assert_eq(kb_offsets_pending(ot), 1);
        meta_of(ot, &off, meta);
        cr_assert_eq(off, 5 * w);
        kb_offsets_destroy(ot);

        /* The same after a reset from committed metadata (skip set). */
        ot = new_ot(8);
        cr_assert_eq(kb_offsets_reset(ot, 0, "kb1:BA", 6), 0);
        cr_assert_eq(kb_offsets_track(ot, 0), KB_OFFSETS_OK);
        cr_assert_eq(kb_offsets_mark_done(ot, 0), 0);
        cr_assert_eq(kb_offsets_track(ot, 1000), KB_OFFSETS_OK);
        kb_offsets_destroy(ot);
}

Test(offsets, worst_case_metadata_fits) {
        static const struct {
                int step;  /* offsets o with (o % step == 0) marked done */
                int phase;
        } cases[] = {{2, 1}, {1, 0}, {3, 2}};
        int64_t w = KB_OFFSETS_WINDOW_MAX;
        for (size_t c = 0; c < NELEM(cases); c++) {
                kb_offsets_t *ot = new_ot(SIZE_MAX);
                for (int64_t o = 0; o < w; o++)
                        cr_assert_eq(kb_offsets_track(ot, o), KB_OFFSETS_OK);
                cr_assert_eq(kb_offsets_track(ot, w), KB_OFFSETS_FULL);
                /* Everything but offset 0 that the pattern picks, and always
                 * the last one so the bitmap has its full length. */
                for (int64_t o = 1; o < w; o++)
                        if (o % cases[c].step == cases[c].phase || o == w - 1)
                                kb_offsets_mark_done(ot, o);
                int64_t off;
                char meta[META_BUF];
                meta_of(ot, &off, meta);
                cr_assert_eq(off, 0);
                cr_assert_eq(strlen(meta), KB_OFFSETS_META_MAX, "case %zu", c);
                uint8_t *bits;
                size_t nbits;
                cr_assert_eq(kb_offsets_meta_decode(meta, strlen(meta), &bits,
                                                    &nbits),
                             0);
                cr_assert_eq(nbits, (size_t)w);
                for (int64_t o = 0; o < w; o++) {
                        int exp = o > 0 && (o % cases[c].step == cases[c].phase ||
                                            o == w - 1);
                        cr_assert_eq((bits[o / 8] >> (o % 8)) & 1, exp,
                                     "case %zu bit %ld", c, (long)o);
                }
                free(bits);
                /* And it reads back. */
                kb_offsets_t *b = new_ot(SIZE_MAX);
                cr_assert_eq(kb_offsets_reset(b, 0, meta, strlen(meta)), 0);
                cr_assert_eq(kb_offsets_track(b, w - 1), KB_OFFSETS_SKIP);
                kb_offsets_destroy(b);
                kb_offsets_destroy(ot);
        }
}

Test(offsets, worst_case_metadata_from_gaps) {
        kb_offsets_t *ot = new_ot(SIZE_MAX);
        int64_t w = KB_OFFSETS_WINDOW_MAX, off;
        char meta[META_BUF];
        kb_offsets_track(ot, 500);
        kb_offsets_track(ot, 500 + w - 1);
        kb_offsets_mark_done(ot, 500 + w - 1);
        meta_of(ot, &off, meta);
        cr_assert_eq(off, 500);
        cr_assert_leq(strlen(meta), KB_OFFSETS_META_MAX);
        cr_assert_eq(strlen(meta), KB_OFFSETS_META_MAX);
        kb_offsets_destroy(ot);
}

/* ---- answers and counts ---- */

Test(offsets, dup_and_stale) {
        kb_offsets_t *ot = new_ot(0);
        cr_assert_eq(kb_offsets_reset(ot, 10, "kb1:EA", 6), 0); /* 14 done */
        kb_offsets_track(ot, 10);
        kb_offsets_track(ot, 11);
        kb_offsets_track(ot, 13); /* 12: gap */
        cr_assert_eq(kb_offsets_track(ot, 14), KB_OFFSETS_SKIP);
        kb_offsets_track(ot, 15);
        kb_offsets_mark_done(ot, 11);
        static const struct {
                int64_t offset;
                kb_offsets_res_t want;
        } cases[] = {
            {9, KB_OFFSETS_STALE},  {0, KB_OFFSETS_STALE},
            {-1, KB_OFFSETS_STALE}, {INT64_MIN, KB_OFFSETS_STALE},
            {10, KB_OFFSETS_DUP},   {11, KB_OFFSETS_STALE},
            {12, KB_OFFSETS_STALE}, {13, KB_OFFSETS_DUP},
            {14, KB_OFFSETS_STALE}, {15, KB_OFFSETS_DUP},
            {INT64_MAX, KB_OFFSETS_STALE},
        };
        for (size_t i = 0; i < NELEM(cases); i++) {
                cr_assert_eq(kb_offsets_track(ot, cases[i].offset),
                             cases[i].want, "case %zu offset %ld", i,
                             (long)cases[i].offset);
                cr_assert_eq(kb_offsets_pending(ot), 3, "case %zu", i);
                cr_assert_eq(low_of(ot), 10);
        }
        kb_offsets_mark_done(ot, 10);
        cr_assert_eq(kb_offsets_track(ot, 10), KB_OFFSETS_STALE);
        cr_assert_eq(low_of(ot), 13);
        kb_offsets_destroy(ot);
}

Test(offsets, mark_done_window) {
        kb_offsets_t *ot = new_ot(0);
        cr_assert_eq(kb_offsets_mark_done(ot, 0), -1); /* nothing tracked */
        for (int64_t o = 20; o < 25; o++)
                kb_offsets_track(ot, o);
        kb_offsets_mark_done(ot, 20);
        static const struct {
                int64_t offset;
                int want;
                size_t pending; /* after */
        } cases[] = {
            {19, -1, 4}, {20, -1, 4}, {25, -1, 4}, {1000, -1, 4},
            {-5, -1, 4}, {22, 0, 3},  {22, 0, 3},  {24, 0, 2},
            {21, 0, 1},  {23, 0, 0},  {23, -1, 0},
        };
        for (size_t i = 0; i < NELEM(cases); i++) {
                cr_assert_eq(kb_offsets_mark_done(ot, cases[i].offset),
                             cases[i].want, "case %zu", i);
                cr_assert_eq(kb_offsets_pending(ot), cases[i].pending,
                             "case %zu", i);
        }
        cr_assert_eq(low_of(ot), 25);
        kb_offsets_destroy(ot);
}

Test(offsets, pending_counts) {
        kb_offsets_t *ot = new_ot(8);
        cr_assert_eq(kb_offsets_reset(ot, 0, "kb1:BA", 6), 0); /* 2 done */
        static const struct {
                char op; /* t: track, m: mark */
                int64_t offset;
                int want; /* result */
                size_t pending;
        } steps[] = {
            {'t', 0, KB_OFFSETS_OK, 1},    {'t', 1, KB_OFFSETS_OK, 2},
            {'t', 2, KB_OFFSETS_SKIP, 2},  {'t', 5, KB_OFFSETS_OK, 3},
            {'t', 5, KB_OFFSETS_DUP, 3},   {'t', 8, KB_OFFSETS_FULL, 3},
            {'m', 1, 0, 2},                {'m', 1, 0, 2},
            {'m', 3, 0, 2},                {'m', 0, 0, 1},
            {'t', 8, KB_OFFSETS_OK, 2},    {'m', 5, 0, 1},
            {'m', 8, 0, 0},                {'t', 3, KB_OFFSETS_STALE, 0},
        };
        for (size_t i = 0; i < NELEM(steps); i++) {
                int got = steps[i].op == 't'
                              ? (int)kb_offsets_track(ot, steps[i].offset)
                              : kb_offsets_mark_done(ot, steps[i].offset);
                cr_assert_eq(got, steps[i].want, "step %zu", i);
                cr_assert_eq(kb_offsets_pending(ot), steps[i].pending,
                             "step %zu", i);
        }
        cr_assert_eq(low_of(ot), 9);
        kb_offsets_destroy(ot);
}

Test(offsets, change_flag) {
        kb_offsets_t *ot = new_ot(0);
        int64_t off;
        char meta[META_BUF];
        static const struct {
                char op; /* t: track, m: mark, c: committed(what committable
                          * gave), x: committed(offset, "x") */
                int64_t offset;
                int changed; /* committable() after the op */
        } steps[] = {
            {'t', 0, 1},  {'c', 0, 0},  {'t', 1, 0},  {'m', 1, 1},
            {'c', 0, 0},  {'m', 0, 1},  {'c', 0, 0},  {'t', 5, 1},
            {'x', 2, 1},  {'c', 0, 0},  {'m', 5, 1},  {'c', 0, 0},
        };
        cr_assert_eq(kb_offsets_committable(ot, &off, meta, sizeof(meta)), 0);
        for (size_t i = 0; i < NELEM(steps); i++) {
                switch (steps[i].op) {
                case 't': kb_offsets_track(ot, steps[i].offset); break;
                case 'm': kb_offsets_mark_done(ot, steps[i].offset); break;
                case 'c':
                        kb_offsets_committable(ot, &off, meta, sizeof(meta));
                        kb_offsets_committed(ot, off, meta);
                        break;
                case 'x': kb_offsets_committed(ot, steps[i].offset, "x"); break;
                }
                cr_assert_eq(
                    kb_offsets_committable(ot, &off, meta, sizeof(meta)),
                    steps[i].changed, "step %zu", i);
        }
        /* NULL meta is "". */
        kb_offsets_committed(ot, off, NULL);
        cr_assert_eq(off, 6);
        cr_assert_eq(kb_offsets_committable(ot, &off, meta, sizeof(meta)), 0);
        /* The offset alone differing counts. */
        kb_offsets_committed(ot, off - 1, "");
        cr_assert_eq(kb_offsets_committable(ot, &off, meta, sizeof(meta)), 1);
        /* A metadata too long to have come from us never matches. */
        char big[KB_OFFSETS_META_MAX + 10];
        memset(big, 'A', sizeof(big) - 1);
        big[sizeof(big) - 1] = '\0';
        kb_offsets_committed(ot, off, big);
        cr_assert_eq(kb_offsets_committable(ot, &off, meta, sizeof(meta)), 1);
        /* reset() counts as a commit of its position. */
        kb_offsets_reset(ot, 40, "kb1:Ag", 6);
        cr_assert_eq(kb_offsets_committable(ot, &off, meta, sizeof(meta)), 0);
        kb_offsets_reset(ot, 40, "kb1:AgAA", 8); /* not canonical */
        cr_assert_eq(kb_offsets_committable(ot, &off, meta, sizeof(meta)), 1);
        cr_assert_str_eq(meta, "kb1:Ag");
        kb_offsets_destroy(ot);
}

/* ---- against a naive reference model ---- */

enum { R_NONE = 0, R_INFLIGHT, R_DONE };

typedef struct {
        size_t window;
        int started;
        int64_t low, next;
        int64_t blocked; /* the offset last answered FULL, or -1 */
        size_t pending;
        uint8_t *st;   /* per offset, for offsets < next */
        uint8_t *skip; /* per offset: the committed metadata says done */
        int64_t skip_end;
        int64_t cap;
        int64_t last_off;
        char last_meta[META_BUF];
} ref_t;

static void ref_grow(ref_t *r, int64_t o) {
        if (o < r->cap)
                return;
        int64_t ncap = r->cap ? r->cap : 1024;
        while (ncap <= o)
                ncap *= 2;
        r->st = realloc(r->st, (size_t)ncap);
        r->skip = realloc(r->skip, (size_t)ncap);
        cr_assert(r->st && r->skip);
        memset(r->st + r->cap, 0, (size_t)(ncap - r->cap));
        memset(r->skip + r->cap, 0, (size_t)(ncap - r->cap));
        r->cap = ncap;
}

static int ref_track(ref_t *r, int64_t o) {
        if (o < 0)
                return KB_OFFSETS_STALE;
        if (!r->started) {
                r->started = 1;
                r->low = r->next = o;
        }
        if (o < r->low)
                return KB_OFFSETS_STALE;
        if (o < r->next)
                return r->st[o] == R_DONE ? KB_OFFSETS_STALE : KB_OFFSETS_DUP;
        if (o - r->low >= (int64_t)r->window) {
                if (r->low < r->next) {
                        r->blocked = o;
                        return KB_OFFSETS_FULL;
                }
                r->low = r->next = o; /* nothing in flight: a gap, done */
        }
        r->blocked = -1;
        ref_grow(r, o);
        for (int64_t g = r->next; g < o; g++)
                r->st[g] = R_DONE;
        int res;
        if (r->skip[o]) {
                r->st[o] = R_DONE;
                res = KB_OFFSETS_SKIP;
        } else {
                r->st[o] = R_INFLIGHT;
                r->pending++;
                res = KB_OFFSETS_OK;
        }
        r->next = o + 1;
        while (r->low < r->next && r->st[r->low] == R_DONE)
                r->low++;
        return res;
}

static int ref_mark(ref_t *r, int64_t o) {
        if (!r->started || o < r->low || o >= r->next)
                return -1;
        if (r->st[o] == R_INFLIGHT) {
                r->st[o] = R_DONE;
                r->pending--;
        }
        while (r->low < r->next && r->st[r->low] == R_DONE)
                r->low++;
        return 0;
}

/* The committable position; bytes (caller frees) is the bitmap. */
static int ref_committable(ref_t *r, int64_t *off, char *meta) {
        if (!r->started) {
                *off = -1;
                meta[0] = '\0';
        } else {
                int64_t end = r->next > r->skip_end ? r->next : r->skip_end;
                size_t n = (size_t)(end - r->low);
                uint8_t *bytes = calloc(n / 8 + 1, 1);
                cr_assert_not_null(bytes);
                for (size_t i = 0; i < n; i++) {
                        int64_t o = r->low + (int64_t)i;
                        int d = o < r->next ? r->st[o] == R_DONE : r->skip[o];
                        if (d)
                                bytes[i / 8] |= (uint8_t)(1u << (i % 8));
                }
                ref_encode(bytes, n / 8 + 1, meta);
                free(bytes);
                *off = r->low;
        }
        return *off != r->last_off || strcmp(meta, r->last_meta) != 0;
}

static void ref_reset(ref_t *r, int64_t committed, const char *meta) {
        r->pending = 0;
        r->blocked = -1;
        memset(r->skip, 0, (size_t)r->cap);
        r->skip_end = 0;
        r->started = 1;
        r->low = r->next = committed;
        r->last_off = committed;
        strcpy(r->last_meta, meta);
        /* Decode the reference way: bit by bit from base64 text. */
        const char *p = meta[0] ? meta + 4 : meta;
        size_t nchars = strlen(p);
        for (size_t c = 0; c < nchars; c++) {
                const char *a = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                "abcdefghijklmnopqrstuvwxyz0123456789+/";
                int v = (int)(strchr(a, p[c]) - a);
                for (int k = 0; k < 6; k++) {
                        size_t b = c * 6 + (size_t)k; /* MSB-first bit */
                        if (!((v >> (5 - k)) & 1))
                                continue;
                        size_t i = (b / 8) * 8 + (7 - b % 8); /* bitmap bit */
                        int64_t o = committed + (int64_t)i;
                        ref_grow(r, o);
                        r->skip[o] = 1;
                        if (o + 1 > r->skip_end)
                                r->skip_end = o + 1;
                }
        }
}

static void compare(kb_offsets_t *ot, ref_t *r, int full_meta, int iter) {
        cr_assert_eq(kb_offsets_pending(ot), r->pending, "iter %d", iter);
        cr_assert_eq(kb_offsets_window_full(ot),
                     r->started && (r->next - r->low >= (int64_t)r->window ||
                                    (r->blocked >= 0 && r->low < r->next &&
                                     r->blocked - r->low >=
                                         (int64_t)r->window)),
                     "iter %d", iter);
        int64_t off, roff;
        char meta[META_BUF], rmeta[META_BUF];
        int ch = kb_offsets_committable(ot, &off, meta, sizeof(meta));
        if (!full_meta) {
                cr_assert_eq(off, r->started ? r->low : -1, "iter %d", iter);
                return;
        }
        int rch = ref_committable(r, &roff, rmeta);
        cr_assert_eq(off, roff, "iter %d", iter);
        cr_assert_str_eq(meta, rmeta, "iter %d", iter);
        cr_assert_eq(ch, rch, "iter %d", iter);
        cr_assert_leq(strlen(meta), KB_OFFSETS_META_MAX, "iter %d", iter);
}

Test(offsets, random_against_reference_model, .timeout = 120) {
        static const struct {
                uint64_t seed;
                size_t window;
                int ops;
                int check_every; /* full metadata comparison period */
        } cases[] = {
            {1, 64, 100000, 1},
            {2, 200, 100000, 1},
            {3, 1, 20000, 1},
            {4, 0, 100000, 97},
            {5, SIZE_MAX, 60000, 251},
        };
        for (size_t c = 0; c < NELEM(cases); c++) {
                rng_state = cases[c].seed * 0x2545f4914f6cdd1dULL;
                kb_offsets_t *ot = new_ot(cases[c].window);
                ref_t r = {0};
                r.blocked = -1;
                r.window = cases[c].window == 0 ? KB_OFFSETS_WINDOW_DEFAULT
                           : cases[c].window > KB_OFFSETS_WINDOW_MAX
                               ? KB_OFFSETS_WINDOW_MAX
                               : cases[c].window;
                r.last_off = -1;
                ref_grow(&r, 0);
                int64_t cursor = 5000; /* the consumer's position */
                int64_t c_off = -1;    /* the last commit */
                char c_meta[META_BUF] = "";
                for (int it = 0; it < cases[c].ops; it++) {
                        uint64_t op = rng() % 1000;
                        int64_t span = r.started ? r.next - r.low : 0;
                        if (op < 450) { /* deliver, sometimes over a gap */
                                int64_t o = cursor;
                                if (rng() % 8 == 0)
                                        o += (int64_t)(rng() % 4);
                                int res = kb_offsets_track(ot, o);
                                cr_assert_eq(res, ref_track(&r, o),
                                             "case %zu iter %d track %ld", c, it,
                                             (long)o);
                                cursor = res == KB_OFFSETS_FULL ? o : o + 1;
                        } else if (op < 880) { /* complete one */
                                int64_t o = (r.started ? r.low : 0) +
                                            (int64_t)(rng() % (uint64_t)(span + 1));
                                if (rng() % 20 == 0)
                                        o += (int64_t)(rng() % 5) - 3;
                                cr_assert_eq(kb_offsets_mark_done(ot, o),
                                             ref_mark(&r, o),
                                             "case %zu iter %d mark %ld", c, it,
                                             (long)o);
                        } else if (op < 940) { /* redelivery of an old one */
                                int64_t o = cursor - 1 -
                                            (int64_t)(rng() % (r.window + 5));
                                cr_assert_eq(kb_offsets_track(ot, o),
                                             ref_track(&r, o),
                                             "case %zu iter %d retrack %ld", c,
                                             it, (long)o);
                        } else if (op < 994) { /* commit */
                                int64_t off;
                                char meta[META_BUF];
                                kb_offsets_committable(ot, &off, meta,
                                                       sizeof(meta));
                                kb_offsets_committed(ot, off, meta);
                                r.last_off = off;
                                strcpy(r.last_meta, meta);
                                c_off = off;
                                strcpy(c_meta, meta);
                        } else if (c_off >= 0) {
                                /* Restart or rebalance: back to the last
                                 * commit, with its metadata. */
                                cr_assert_eq(kb_offsets_reset(ot, c_off, c_meta,
                                                              strlen(c_meta)),
                                             0);
                                ref_reset(&r, c_off, c_meta);
                                cursor = c_off;
                        }
                        compare(ot, &r,
                                it % cases[c].check_every == 0 ||
                                    it == cases[c].ops - 1,
                                it);
                }
                kb_offsets_destroy(ot);
                free(r.st);
                free(r.skip);
        }
}

/* ---- wide trackers (read-ahead) and "kb2:" metadata ---- */

/* b64 (unpadded, canonical) of n raw bytes, for hand-made kb2 metadata. */
static void kb2_of(const uint8_t *raw, size_t n, char *out) {
        static const char a[] =
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        char *o = out + 4;
        memcpy(out, "kb2:", 4);
        for (size_t i = 0; i < n; i += 3) {
                uint32_t v = (uint32_t)raw[i] << 16;
                if (i + 1 < n)
                        v |= (uint32_t)raw[i + 1] << 8;
                if (i + 2 < n)
                        v |= raw[i + 2];
                *o++ = a[v >> 18 & 63];
                *o++ = a[v >> 12 & 63];
                if (i + 1 < n)
                        *o++ = a[v >> 6 & 63];
                if (i + 2 < n)
                        *o++ = a[v & 63];
        }
        *o = '\0';
}

Test(offsets, wide_tracker_runs_far_ahead_and_commits_run_lengths) {
        kb_offsets_t *ot = kb_offsets_new_wide(1000000);
        char meta[META_BUF];
        int64_t off;
        cr_assert_not_null(ot);
        for (int64_t o = 0; o < 200000; o++)
                cr_assert_eq(kb_offsets_track(ot, o), KB_OFFSETS_OK);
        cr_assert_not(kb_offsets_window_full(ot));
        cr_assert_eq(kb_offsets_next(ot), 200000);
        for (int64_t o = 0; o < 200000; o++)
                if (o != 10 && o != 150000)
                        cr_assert_eq(kb_offsets_mark_done(ot, o), 0);
        meta_of(ot, &off, meta);
        cr_assert_eq(off, 10);
        cr_assert_eq(strncmp(meta, "kb2:", 4), 0, "meta %s", meta);
        cr_assert_lt(strlen(meta), 40, "meta %s", meta);

        /* A restart from it skips exactly the done offsets. */
        kb_offsets_t *ot2 = kb_offsets_new_wide(1000000);
        cr_assert_eq(kb_offsets_reset(ot2, off, meta, strlen(meta)), 0);
        for (int64_t o = 10; o < 200000; o++)
                cr_assert_eq(kb_offsets_track(ot2, o),
                             o == 10 || o == 150000 ? KB_OFFSETS_OK
                                                    : KB_OFFSETS_SKIP,
                             "offset %lld", (long long)o);
        kb_offsets_destroy(ot2);

        /* A narrow tracker reads it too (its skip set is not bounded by
         * its window) and commits it back unchanged. */
        ot2 = new_ot(0);
        cr_assert_eq(kb_offsets_reset(ot2, off, meta, strlen(meta)), 0);
        char meta2[META_BUF];
        int64_t off2;
        meta_of(ot2, &off2, meta2);
        cr_assert_eq(off2, off);
        cr_assert_str_eq(meta2, meta);
        kb_offsets_destroy(ot2);
        kb_offsets_destroy(ot);
}

Test(offsets, wide_ring_grows_past_its_first_size) {
        kb_offsets_t *ot = kb_offsets_new_wide(1000000);
        cr_assert_eq(kb_offsets_track(ot, 0), KB_OFFSETS_OK);
        cr_assert_eq(kb_offsets_track(ot, 500000), KB_OFFSETS_OK);
        cr_assert_eq(kb_offsets_track(ot, 900000), KB_OFFSETS_OK);
        /* 0 and 500,000 in flight: beyond the bound is refused. */
        cr_assert_eq(kb_offsets_track(ot, 1000000), KB_OFFSETS_FULL);
        cr_assert_eq(kb_offsets_mark_done(ot, 0), 0);
        cr_assert_eq(low_of(ot), 500000);
        cr_assert_eq(kb_offsets_mark_done(ot, 500000), 0);
        cr_assert_eq(low_of(ot), 900000);
        cr_assert_eq(kb_offsets_pending(ot), 1);
        kb_offsets_destroy(ot);
        /* The bound: clamped to KB_OFFSETS_WINDOW_LIMIT. */
        ot = kb_offsets_new_wide(SIZE_MAX);
        cr_assert_eq(kb_offsets_track(ot, 0), KB_OFFSETS_OK);
        cr_assert_eq(kb_offsets_track(ot, KB_OFFSETS_WINDOW_LIMIT - 1),
                     KB_OFFSETS_OK);
        cr_assert_eq(kb_offsets_track(ot, KB_OFFSETS_WINDOW_LIMIT),
                     KB_OFFSETS_FULL);
        kb_offsets_destroy(ot);
}

Test(offsets, kb2_is_cut_after_the_last_run_that_fits) {
        /* Every other offset done over 100,000: ~100,000 runs, far more
         * than 4 KB holds. */
        kb_offsets_t *ot = kb_offsets_new_wide(200000);
        char meta[META_BUF];
        int64_t off;
        uint8_t *bits;
        size_t nbits, ndone = 0;
        for (int64_t o = 0; o < 100000; o++)
                kb_offsets_track(ot, o);
        for (int64_t o = 1; o < 100000; o += 2)
                kb_offsets_mark_done(ot, o);
        meta_of(ot, &off, meta);
        cr_assert_eq(off, 0);
        cr_assert_eq(strncmp(meta, "kb2:", 4), 0);
        cr_assert_leq(strlen(meta), KB_OFFSETS_META_MAX);
        cr_assert_eq(kb_offsets_meta_decode(meta, strlen(meta), &bits, &nbits), 0);
        /* A prefix of the truth: only odd offsets, all of them up to the
         * cut, and the cut after a done run. */
        for (size_t i = 0; i < nbits; i++) {
                int set = (bits[i / 8] >> (i % 8)) & 1;
                if (set)
                        ndone++;
                if (i < 2 * ndone)
                        cr_assert_eq(set, (int)(i % 2), "bit %zu", i);
                else
                        cr_assert_eq(set, 0, "bit %zu", i);
        }
        cr_assert_gt(ndone, 1000);
        free(bits);
        kb_offsets_destroy(ot);
}

Test(offsets, kb2_decoding_refuses_what_it_cannot_mean) {
        char meta[64];
        uint8_t *bits;
        size_t nbits;
        /* 3 not done, 2 done: offsets 3 and 4. */
        const uint8_t ok[] = {3, 2};
        kb2_of(ok, sizeof(ok), meta);
        cr_assert_eq(kb_offsets_meta_decode(meta, strlen(meta), &bits, &nbits), 0);
        cr_assert_eq(nbits, 8);
        cr_assert_eq(bits[0], 0x18);
        free(bits);
        /* A first run of 0: done from the committed offset (a skip set
         * read back from an older position). */
        const uint8_t first0[] = {0, 2};
        kb2_of(first0, sizeof(first0), meta);
        cr_assert_eq(kb_offsets_meta_decode(meta, strlen(meta), &bits, &nbits), 0);
        cr_assert_eq(bits[0], 0x03);
        free(bits);
        /* A multi-byte run: 200 not done, 1 done. */
        const uint8_t leb[] = {0xc8, 0x01, 1};
        kb2_of(leb, sizeof(leb), meta);
        cr_assert_eq(kb_offsets_meta_decode(meta, strlen(meta), &bits, &nbits), 0);
        cr_assert_eq(nbits, 208);
        cr_assert_eq(bits[25], 0x01);
        free(bits);
        const uint8_t *bad[] = {
            (const uint8_t[]){3},          /* ends on a not-done run */
            (const uint8_t[]){3, 0},       /* an empty run after the first */
            (const uint8_t[]){3, 0x80},    /* a cut varint */
            (const uint8_t[]){0xff, 0xff, 0xff, 0xff, 0x7f, 1}, /* too long */
            (const uint8_t[]){0x80, 0x80, 0x80, 0x10, 1}, /* past the limit */
        };
        const size_t badn[] = {1, 2, 2, 6, 5};
        for (size_t i = 0; i < NELEM(bad); i++) {
                kb2_of(bad[i], badn[i], meta);
                cr_assert_eq(kb_offsets_meta_decode(meta, strlen(meta), &bits,
                                                    &nbits),
                             -1, "case %zu: %s", i, meta);
                cr_assert_null(bits);
        }
        cr_assert_eq(kb_offsets_meta_decode("kb2:", 4, &bits, &nbits), -1);
        cr_assert_eq(kb_offsets_meta_decode("kb3:AQ", 6, &bits, &nbits), -1);
}
