/* b64: base64 (RFC 4648 §4 alphabet) over OpenSSL's EVP_EncodeBlock and
 * EVP_DecodeBlock, padded or unpadded, decoded strictly: only the
 * alphabet, padding exactly as the mode says, and the canonical form (the
 * unused low bits of a short final group are zero, RFC 4648 §3.5), so that
 * each byte string has one encoding. */
#ifndef KB_B64_H
#define KB_B64_H

#include <stddef.h>

typedef enum {
        KB_B64_PAD = 0, /* "Zg==": the length a multiple of 4 */
        KB_B64_NOPAD,   /* "Zg": no '=' at all */
} kb_b64_pad_t;

/* Characters of the encoding of len bytes (without the NUL). */
size_t kb_b64_encoded_len(size_t len, kb_b64_pad_t pad);

/* Writes the encoding of in[0..len) and a NUL to out, which has room for
 * kb_b64_encoded_len(len, pad) + 1 bytes. Returns the characters written. */
size_t kb_b64_encode(const void *in, size_t len, char *out, kb_b64_pad_t pad);

/* Decodes s[0..len) (no NUL needed) into out[0..out_size). Returns the
 * bytes written, or -1 when s is not a strict encoding in that mode or the
 * result does not fit. */
long kb_b64_decode(const char *s, size_t len, kb_b64_pad_t pad, void *out,
                   size_t out_size);

#endif
