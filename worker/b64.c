/* b64: see b64.h. The whole groups of three bytes go through OpenSSL in one
 * call; a short final group goes through a small local buffer, so neither
 * the caller's output nor its input needs room for padding it does not
 * have. */
#include "b64.h"

#include <openssl/evp.h>
#include <string.h>

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* The 6-bit value of c, -1 when c is not in the alphabet. */
static int b64_val(unsigned char c) {
        const char *p = c ? memchr(b64_alphabet, c, 64) : NULL;
        return p ? (int)(p - b64_alphabet) : -1;
}

size_t kb_b64_encoded_len(size_t len, kb_b64_pad_t pad) {
        if (pad == KB_B64_PAD)
                return (len + 2) / 3 * 4;
        return len / 3 * 4 + (len % 3 ? len % 3 + 1 : 0);
}

size_t kb_b64_encode(const void *in, size_t len, char *out, kb_b64_pad_t pad) {
        const unsigned char *b = in;
        size_t whole = len / 3 * 3, o = 0;
        if (whole)
                o = (size_t)EVP_EncodeBlock((unsigned char *)out, b,
                                            (int)whole);
        if (len > whole) {
                unsigned char tail[5];
                size_t keep = pad == KB_B64_PAD ? 4 : len - whole + 1;
                EVP_EncodeBlock(tail, b + whole, (int)(len - whole));
                memcpy(out + o, tail, keep);
                o += keep;
        }
        out[o] = '\0';
        return o;
}

long kb_b64_decode(const char *s, size_t len, kb_b64_pad_t pad, void *out,
                   size_t out_size) {
        unsigned char *b = out;
        size_t whole, rest, n, i;
        int last;
        if (pad == KB_B64_PAD) {
                if (len % 4)
                        return -1;
                /* At most two '=', and only at the end. */
                if (len && s[len - 1] == '=')
                        len -= (len >= 2 && s[len - 2] == '=') ? 2 : 1;
        }
        rest = len % 4;
        whole = len - rest;
        if (rest == 1) /* one char carries 6 bits: not a whole byte */
                return -1;
        n = whole / 4 * 3 + (rest ? rest - 1 : 0);
        if (n > out_size)
                return -1;
        for (i = 0; i < len; i++)
                if (b64_val((unsigned char)s[i]) < 0)
                        return -1;
        /* Canonical: the bits of the last char past the final byte are 0. */
        if (rest) {
                last = b64_val((unsigned char)s[len - 1]);
                if (last & (rest == 2 ? 0x0f : 0x03))
                        return -1;
        }
        if (whole && EVP_DecodeBlock(b, (const unsigned char *)s,
                                     (int)whole) != (int)(whole / 4 * 3))
                return -1;
        if (rest) {
                unsigned char in4[4] = {'=', '=', '=', '='}, tail[3];
                memcpy(in4, s + whole, rest);
                if (EVP_DecodeBlock(tail, in4, 4) != 3)
                        return -1;
                memcpy(b + whole / 4 * 3, tail, rest - 1);
        }
        return (long)n;
}
