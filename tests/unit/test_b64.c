/* Unit tests for worker/b64.c: RFC 4648's test vectors in both modes, the
 * padding edge cases (0, 1, 2 '=' and where they may stand), strictness and
 * the canonical form, and round trips of every length up to 64. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>

#include "b64.h"

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

static const struct {
        const char *raw, *pad, *nopad;
} vectors[] = {
    {"", "", ""},
    {"f", "Zg==", "Zg"},
    {"fo", "Zm8=", "Zm8"},
    {"foo", "Zm9v", "Zm9v"},
    {"foob", "Zm9vYg==", "Zm9vYg"},
    {"fooba", "Zm9vYmE=", "Zm9vYmE"},
    {"foobar", "Zm9vYmFy", "Zm9vYmFy"},
};

Test(b64, rfc4648_vectors_encode) {
        for (size_t i = 0; i < NELEM(vectors); i++) {
                size_t n = strlen(vectors[i].raw);
                char out[16];
                memset(out, 'x', sizeof(out));
                cr_assert_eq(kb_b64_encode(vectors[i].raw, n, out, KB_B64_PAD),
                             strlen(vectors[i].pad));
                cr_assert_str_eq(out, vectors[i].pad);
                cr_assert_eq(kb_b64_encoded_len(n, KB_B64_PAD),
                             strlen(vectors[i].pad));
                memset(out, 'x', sizeof(out));
                cr_assert_eq(
                    kb_b64_encode(vectors[i].raw, n, out, KB_B64_NOPAD),
                    strlen(vectors[i].nopad));
                cr_assert_str_eq(out, vectors[i].nopad);
                cr_assert_eq(kb_b64_encoded_len(n, KB_B64_NOPAD),
                             strlen(vectors[i].nopad));
        }
}

Test(b64, rfc4648_vectors_decode) {
        for (size_t i = 0; i < NELEM(vectors); i++) {
                size_t n = strlen(vectors[i].raw);
                char out[8];
                cr_assert_eq(kb_b64_decode(vectors[i].pad,
                                           strlen(vectors[i].pad), KB_B64_PAD,
                                           out, sizeof(out)),
                             (long)n, "\"%s\"", vectors[i].pad);
                cr_assert_arr_eq(out, vectors[i].raw, n);
                cr_assert_eq(kb_b64_decode(vectors[i].nopad,
                                           strlen(vectors[i].nopad),
                                           KB_B64_NOPAD, out, sizeof(out)),
                             (long)n, "\"%s\"", vectors[i].nopad);
                cr_assert_arr_eq(out, vectors[i].raw, n);
        }
}

/* The encoder writes exactly the encoded length and a NUL, no padding room
 * past it (an unpadded 1-byte tail is 2 chars, not 4). */
Test(b64, encode_writes_no_further) {
        char out[8];
        memset(out, '#', sizeof(out));
        cr_assert_eq(kb_b64_encode("f", 1, out, KB_B64_NOPAD), 2);
        cr_assert_eq(out[2], '\0');
        cr_assert_eq(out[3], '#');
        memset(out, '#', sizeof(out));
        cr_assert_eq(kb_b64_encode("fo", 2, out, KB_B64_NOPAD), 3);
        cr_assert_eq(out[3], '\0');
        cr_assert_eq(out[4], '#');
}

Test(b64, padding_edge_cases_rejected) {
        static const struct {
                const char *s;
                kb_b64_pad_t pad;
        } bad[] = {
            {"Zg", KB_B64_PAD},        /* padding missing */
            {"Zm8", KB_B64_PAD},       /* ditto */
            {"Zg=", KB_B64_PAD},       /* padding short */
            {"Zg===", KB_B64_PAD},     /* padding too long */
            {"Z===", KB_B64_PAD},      /* three '=' */
            {"====", KB_B64_PAD},      /* only padding */
            {"Z=g=", KB_B64_PAD},      /* '=' inside */
            {"=Zg=", KB_B64_PAD},      /* '=' first */
            {"Zg==Zg==", KB_B64_PAD},  /* padding in the middle */
            {"Zg==", KB_B64_NOPAD},    /* padding where none is allowed */
            {"Zm8=", KB_B64_NOPAD},
            {"Z", KB_B64_NOPAD},       /* one char: 6 bits, no byte */
            {"Zm9vY", KB_B64_NOPAD},   /* ditto after a group */
            {"Zh==", KB_B64_PAD},      /* not canonical: low bits set */
            {"Zh", KB_B64_NOPAD},
            {"Zm9=", KB_B64_PAD},
            {"Zm9", KB_B64_NOPAD},
            {"Zm 8", KB_B64_NOPAD},    /* whitespace */
            {"Zm8\n", KB_B64_NOPAD},
            {" Zm8", KB_B64_NOPAD},
            {"Zm-_", KB_B64_NOPAD},    /* the URL alphabet */
        };
        for (size_t i = 0; i < NELEM(bad); i++) {
                char out[16];
                cr_assert_eq(kb_b64_decode(bad[i].s, strlen(bad[i].s),
                                           bad[i].pad, out, sizeof(out)),
                             -1, "case %zu \"%s\"", i, bad[i].s);
        }
        /* A NUL inside the given length is not the end. */
        {
                char out[16];
                cr_assert_eq(kb_b64_decode("Zg\0A", 4, KB_B64_NOPAD, out,
                                           sizeof(out)),
                             -1);
        }
}

Test(b64, decode_out_size_is_checked) {
        char out[6];
        cr_assert_eq(kb_b64_decode("Zm9vYmFy", 8, KB_B64_PAD, out, 5), -1);
        cr_assert_eq(kb_b64_decode("Zm9vYmFy", 8, KB_B64_PAD, out, 6), 6);
        cr_assert_eq(kb_b64_decode("Zm9vYg", 6, KB_B64_NOPAD, out, 3), -1);
        cr_assert_eq(kb_b64_decode("Zm9vYg", 6, KB_B64_NOPAD, out, 4), 4);
}

Test(b64, round_trip_every_length) {
        uint8_t in[64], back[64];
        char enc[100];
        for (size_t i = 0; i < sizeof(in); i++)
                in[i] = (uint8_t)(i * 97 + 13);
        for (size_t n = 0; n <= sizeof(in); n++) {
                for (int m = 0; m < 2; m++) {
                        kb_b64_pad_t pad = m ? KB_B64_NOPAD : KB_B64_PAD;
                        size_t el = kb_b64_encode(in, n, enc, pad);
                        cr_assert_eq(el, kb_b64_encoded_len(n, pad));
                        cr_assert_eq(strlen(enc), el);
                        cr_assert_eq(kb_b64_decode(enc, el, pad, back, n),
                                     (long)n, "n %zu pad %d", n, m);
                        cr_assert_arr_eq(back, in, n);
                }
        }
}
