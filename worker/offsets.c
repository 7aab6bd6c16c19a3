/* offsets: the per-partition tracker of out-of-order completion.
 *
 * The done bits of the window [low, next) live in a ring of 64-bit words
 * (offset o at bit o & ot_mask); the ring holds at least the window bound, so
 * no two offsets of the window share a bit. Bits outside the window are
 * garbage: every offset entering the window (tracked or gap) has its bit
 * written. Metadata read back at reset is kept apart (ot_skip) until the
 * window has moved past it. */
#include "offsets.h"

#include <stdlib.h>
#include <string.h>

#include "b64.h"

#define META_PREFIX     "kb1:"
#define META_PREFIX_LEN 4
#define META2_PREFIX    "kb2:"
/* The first ring a wide tracker allocates (bits); it doubles as needed. */
#define RING_START_BITS 32768
/* The largest bitmap whose encoding fits: 4 + ceil(4n/3) <= META_MAX. */
#define META_BYTES_MAX (((KB_OFFSETS_META_MAX - META_PREFIX_LEN) * 3) / 4)

_Static_assert(KB_OFFSETS_WINDOW_MAX == META_BYTES_MAX * 8,
               "KB_OFFSETS_WINDOW_MAX out of step with KB_OFFSETS_META_MAX");
_Static_assert(KB_OFFSETS_WINDOW_DEFAULT <= KB_OFFSETS_WINDOW_MAX,
               "default window above the maximum");

struct kb_offsets_s {
        size_t    ot_window;  /* bound on next - low */
        uint64_t *ot_ring;    /* done bits */
        uint64_t  ot_mask;    /* ring size in bits - 1 (a power of two) */
        uint64_t  ot_ring_max; /* the ring's size bound (bits), >= window */
        int       ot_started; /* low/next are meaningful */
        int64_t   ot_low;     /* lowest offset not done (or next) */
        int64_t   ot_next;    /* one past the highest offset in the window */
        int64_t   ot_blocked; /* the offset last answered FULL, or -1 */
        size_t    ot_pending; /* tracked (OK) and not done */

        /* Done bits from the committed metadata: bit i is ot_skip_base + i;
         * ot_skip_end is one past the highest set bit. NULL when none. */
        uint8_t  *ot_skip;
        int64_t   ot_skip_base;
        int64_t   ot_skip_end;

        /* The last committed position, for the change check. */
        int64_t   ot_last_off;
        int       ot_last_valid; /* 0: meta too long to keep, never equal */
        char      ot_last_meta[KB_OFFSETS_META_MAX + 1];
};

const char *kb_offsets_res_str(kb_offsets_res_t res) {
        switch (res) {
        case KB_OFFSETS_OK: return "ok";
        case KB_OFFSETS_SKIP: return "skip";
        case KB_OFFSETS_STALE: return "stale";
        case KB_OFFSETS_FULL: return "full";
        case KB_OFFSETS_DUP: return "dup";
        }
        return "unknown";
}

/* Byte i of a bitmap of nbits bits, the bits past nbits cleared. */
static uint8_t bm_byte(const uint8_t *bits, size_t nbits, size_t i) {
        if (i == nbits / 8 && nbits % 8)
                return (uint8_t)(bits[i] & ((1u << (nbits % 8)) - 1));
        return bits[i];
}

/* Decodes n chars of canonical unpadded base64 (b64.h) into *out
 * (malloc'd, NULL when empty) of *out_n bytes. Returns 0, or -1 (nothing
 * allocated). */
static int b64_get(const char *p, size_t n, uint8_t **out, size_t *out_n) {
        *out   = NULL;
        *out_n = 0;
        if (n % 4 == 1) /* one char carries 6 bits: not a whole byte */
                return -1;
        size_t on = n / 4 * 3 + (n % 4 ? n % 4 - 1 : 0);
        if (on == 0)
                return 0;
        uint8_t *b = malloc(on);
        if (!b)
                return -1;
        if (kb_b64_decode(p, n, KB_B64_NOPAD, b, on) != (long)on) {
                free(b);
                return -1;
        }
        *out   = b;
        *out_n = on;
        return 0;
}

int kb_offsets_meta_encode(const uint8_t *bits, size_t nbits, char *out,
                           size_t out_size) {
        size_t n = (nbits + 7) / 8;
        while (n > 0 && bm_byte(bits, nbits, n - 1) == 0)
                n--; /* trailing zero bytes are trimmed */
        if (n == 0) {
                if (out_size < 1)
                        return -1;
                out[0] = '\0';
                return 0;
        }
        size_t len = META_PREFIX_LEN + (4 * n + 2) / 3;
        if (len > (size_t)INT32_MAX || len + 1 > out_size)
                return -1;

        /* The whole groups of three bytes before the last byte as they
         * are, then the last one to three with the bits past nbits
         * cleared: unpadded base64 of 3k bytes concatenates. */
        size_t head = (n - 1) / 3 * 3, k;
        uint8_t tail[3];
        char *o = out + META_PREFIX_LEN;
        memcpy(out, META_PREFIX, META_PREFIX_LEN);
        for (k = head; k < n; k++)
                tail[k - head] = bm_byte(bits, nbits, k);
        o += kb_b64_encode(bits, head, o, KB_B64_NOPAD);
        kb_b64_encode(tail, n - head, o, KB_B64_NOPAD);
        return (int)len;
}

/* kb2: run lengths (LEB128) alternating not done, done, not done, ...
 * from the committed offset; the first run may be 0. Fills a bitmap. */
static int meta2_decode(const uint8_t *runs, size_t n, uint8_t **bits,
                        size_t *nbits) {
        uint64_t total = 0, v = 0;
        unsigned sh = 0;
        size_t i, nruns = 0;
        /* First pass: validate and size. */
        for (i = 0; i < n; i++) {
                if (sh > 28)
                        return -1;
                v |= (uint64_t)(runs[i] & 0x7f) << sh;
                sh += 7;
                if (runs[i] & 0x80)
                        continue;
                if ((v == 0 && nruns > 0) || (total += v) > KB_OFFSETS_WINDOW_LIMIT)
                        return -1; /* only the first run may be empty */
                nruns++;
                v  = 0;
                sh = 0;
        }
        if (sh || nruns % 2) /* a cut varint, or no done run last */
                return -1;
        if (total == 0)
                return 0;
        size_t nbytes = (size_t)((total + 7) / 8);
        uint8_t *b = calloc(nbytes, 1);
        if (!b)
                return -1;
        uint64_t pos = 0;
        int done = 0;
        for (i = 0; i < n; i++) {
                v |= (uint64_t)(runs[i] & 0x7f) << sh;
                sh += 7;
                if (runs[i] & 0x80)
                        continue;
                if (done)
                        for (uint64_t k = pos; k < pos + v; k++)
                                b[k >> 3] |= (uint8_t)(1u << (k & 7));
                pos += v;
                done = !done;
                v  = 0;
                sh = 0;
        }
        *bits  = b;
        *nbits = nbytes * 8;
        return 0;
}

int kb_offsets_meta_decode(const char *meta, size_t len, uint8_t **bits,
                           size_t *nbits) {
        *bits  = NULL;
        *nbits = 0;
        if (len == 0)
                return 0;
        if (!meta || len > KB_OFFSETS_META_MAX || len < META_PREFIX_LEN)
                return -1;
        int v2 = !memcmp(meta, META2_PREFIX, META_PREFIX_LEN);
        if (!v2 && memcmp(meta, META_PREFIX, META_PREFIX_LEN) != 0)
                return -1;
        uint8_t *b;
        size_t nb;
        if (b64_get(meta + META_PREFIX_LEN,
                    len - META_PREFIX_LEN, &b, &nb) == -1)
                return -1;
        if (!v2) {
                *bits  = b;
                *nbits = nb * 8;
                return 0;
        }
        int r = nb ? meta2_decode(b, nb, bits, nbits) : -1;
        free(b);
        return r;
}

/* ---- the ring of done bits ---- */

static inline int ring_get(const kb_offsets_t *ot, int64_t o) {
        uint64_t p = (uint64_t)o & ot->ot_mask;
        return (int)((ot->ot_ring[p >> 6] >> (p & 63)) & 1);
}

static inline void ring_put(kb_offsets_t *ot, int64_t o, int v) {
        uint64_t p = (uint64_t)o & ot->ot_mask;
        uint64_t m = 1ULL << (p & 63);
        if (v)
                ot->ot_ring[p >> 6] |= m;
        else
                ot->ot_ring[p >> 6] &= ~m;
}

/* Sets the bits of [from, to); to - from <= the ring size. */
static void ring_fill(kb_offsets_t *ot, int64_t from, int64_t to) {
        while (from < to) {
                uint64_t p = (uint64_t)from & ot->ot_mask;
                unsigned b = (unsigned)(p & 63);
                uint64_t n = 64 - b;
                if ((uint64_t)(to - from) < n)
                        n = (uint64_t)(to - from);
                uint64_t m = (n == 64 ? ~0ULL : (1ULL << n) - 1) << b;
                ot->ot_ring[p >> 6] |= m;
                from += (int64_t)n;
        }
}

/* Moves low past done offsets, a word at a time. */
static void advance(kb_offsets_t *ot) {
        while (ot->ot_low < ot->ot_next) {
                uint64_t p = (uint64_t)ot->ot_low & ot->ot_mask;
                unsigned b = (unsigned)(p & 63);
                uint64_t w = ~ot->ot_ring[p >> 6] >> b; /* 1 = not done */
                if (w) {
                        ot->ot_low += __builtin_ctzll(w);
                        break;
                }
                ot->ot_low += 64 - b;
        }
        /* Bits past next are garbage; everything below next was done. */
        if (ot->ot_low > ot->ot_next)
                ot->ot_low = ot->ot_next;
}

static void skip_clear(kb_offsets_t *ot) {
        free(ot->ot_skip);
        ot->ot_skip      = NULL;
        ot->ot_skip_base = 0;
        ot->ot_skip_end  = 0;
}

static int skip_has(const kb_offsets_t *ot, int64_t o) {
        if (!ot->ot_skip || o < ot->ot_skip_base || o >= ot->ot_skip_end)
                return 0;
        uint64_t i = (uint64_t)(o - ot->ot_skip_base);
        return (ot->ot_skip[i >> 3] >> (i & 7)) & 1;
}

static void set_last(kb_offsets_t *ot, int64_t off, const char *meta,
                     size_t len) {
        ot->ot_last_off = off;
        if (len > KB_OFFSETS_META_MAX || (len && memchr(meta, '\0', len))) {
                ot->ot_last_valid   = 0;
                ot->ot_last_meta[0] = '\0';
                return;
        }
        ot->ot_last_valid = 1;
        if (len)
                memcpy(ot->ot_last_meta, meta, len);
        ot->ot_last_meta[len] = '\0';
}

/* ---- the tracker ---- */

static kb_offsets_t *offsets_new(size_t max_window, size_t limit) {
        if (max_window == 0)
                max_window = KB_OFFSETS_WINDOW_DEFAULT;
        if (max_window > limit)
                max_window = limit;

        size_t ring_bits = 64, ring_max;
        while (ring_bits < max_window)
                ring_bits <<= 1;
        ring_max = ring_bits;
        if (ring_bits > RING_START_BITS && limit > KB_OFFSETS_WINDOW_MAX)
                ring_bits = RING_START_BITS; /* wide: grows as needed */

        kb_offsets_t *ot = calloc(1, sizeof(*ot));
        if (!ot)
                return NULL;
        ot->ot_ring = calloc(ring_bits / 64, sizeof(*ot->ot_ring));
        if (!ot->ot_ring) {
                free(ot);
                return NULL;
        }
        ot->ot_window     = max_window;
        ot->ot_mask       = ring_bits - 1;
        ot->ot_ring_max   = ring_max;
        ot->ot_last_off   = -1;
        ot->ot_last_valid = 1;
        ot->ot_blocked    = -1;
        return ot;
}

kb_offsets_t *kb_offsets_new(size_t max_window) {
        return offsets_new(max_window, KB_OFFSETS_WINDOW_MAX);
}

kb_offsets_t *kb_offsets_new_wide(size_t max_window) {
        return offsets_new(max_window, KB_OFFSETS_WINDOW_LIMIT);
}

int64_t kb_offsets_next(const kb_offsets_t *ot) {
        return ot->ot_started ? ot->ot_next : -1;
}

/* Makes the ring hold [low, upto): doubles it (copying the window's bits)
 * up to its bound. Returns 0, or -1 when out of memory. */
static int ring_reserve(kb_offsets_t *ot, int64_t upto) {
        uint64_t need = (uint64_t)(upto - ot->ot_low), bits = ot->ot_mask + 1;
        if (need <= bits)
                return 0;
        while (bits < need && bits < ot->ot_ring_max)
                bits <<= 1;
        uint64_t *r = calloc(bits / 64, sizeof(*r));
        if (!r)
                return -1;
        for (int64_t o = ot->ot_low; o < ot->ot_next; o++) {
                uint64_t p = (uint64_t)o & (bits - 1);
                if (ring_get(ot, o))
                        r[p >> 6] |= 1ULL << (p & 63);
        }
        free(ot->ot_ring);
        ot->ot_ring = r;
        ot->ot_mask = bits - 1;
        return 0;
}

void kb_offsets_destroy(kb_offsets_t *ot) {
        if (!ot)
                return;
        free(ot->ot_skip);
        free(ot->ot_ring);
        free(ot);
}

int kb_offsets_reset(kb_offsets_t *ot, int64_t committed, const char *meta,
                     size_t meta_len) {
        skip_clear(ot);
        ot->ot_pending = 0;
        ot->ot_blocked = -1;
        if (!meta)
                meta_len = 0;
        if (committed < 0) {
                ot->ot_started = 0;
                ot->ot_low = ot->ot_next = 0;
                set_last(ot, -1, "", 0);
                return 0;
        }
        ot->ot_started = 1;
        ot->ot_low = ot->ot_next = committed;
        set_last(ot, committed, meta, meta_len);

        uint8_t *bits;
        size_t nbits;
        if (kb_offsets_meta_decode(meta, meta_len, &bits, &nbits) == -1)
                return -1;
        /* The last set bit bounds the skip set (trailing zeros are moot). */
        size_t nbytes = nbits / 8;
        while (nbytes > 0 && bits[nbytes - 1] == 0)
                nbytes--;
        if (nbytes == 0 || (uint64_t)(INT64_MAX - committed) < nbits) {
                free(bits);
                return 0;
        }
        ot->ot_skip      = bits;
        ot->ot_skip_base = committed;
        /* One past the highest set bit of the last non-zero byte. */
        ot->ot_skip_end = committed + (int64_t)(8 * (nbytes - 1)) +
                          (32 - __builtin_clz((uint32_t)bits[nbytes - 1]));
        return 0;
}

kb_offsets_res_t kb_offsets_track(kb_offsets_t *ot, int64_t offset) {
        if (offset < 0 || offset == INT64_MAX)
                return KB_OFFSETS_STALE;
        if (!ot->ot_started) {
                ot->ot_started = 1;
                ot->ot_low = ot->ot_next = offset;
        }
        if (offset < ot->ot_low)
                return KB_OFFSETS_STALE;
        if (offset < ot->ot_next)
                return ring_get(ot, offset) ? KB_OFFSETS_STALE
                                            : KB_OFFSETS_DUP;
        if ((uint64_t)(offset - ot->ot_low) >= ot->ot_window) {
                if (ot->ot_low < ot->ot_next) {
                        /* Something below is still in flight: wait for it
                         * (kb_offsets_window_full() says so until then). */
                        ot->ot_blocked = offset;
                        return KB_OFFSETS_FULL;
                }
                /* Nothing in flight: everything up to offset is a gap (an
                 * aborted transaction's records that read_committed skips,
                 * compaction, an offset reset past retention), so done.
                 * Move the window there instead of waiting for a low end
                 * that can never move (issue 15). */
                ot->ot_low = ot->ot_next = offset;
        }
        if (ring_reserve(ot, offset + 1) == -1) {
                /* No memory to widen: wait as at the bound (retried when
                 * the low end moved). */
                ot->ot_blocked = offset;
                return KB_OFFSETS_FULL;
        }
        ot->ot_blocked = -1;

        ring_fill(ot, ot->ot_next, offset); /* gaps count as done */
        kb_offsets_res_t res =
            skip_has(ot, offset) ? KB_OFFSETS_SKIP : KB_OFFSETS_OK;
        ring_put(ot, offset, res == KB_OFFSETS_SKIP);
        if (res == KB_OFFSETS_OK)
                ot->ot_pending++;
        ot->ot_next = offset + 1;
        if (ot->ot_skip && ot->ot_next >= ot->ot_skip_end)
                skip_clear(ot); /* the ring holds all of it now */
        advance(ot);
        return res;
}

int kb_offsets_mark_done(kb_offsets_t *ot, int64_t offset) {
        if (!ot->ot_started || offset < ot->ot_low || offset >= ot->ot_next)
                return -1;
        if (ring_get(ot, offset))
                return 0;
        ring_put(ot, offset, 1);
        ot->ot_pending--;
        if (offset == ot->ot_low)
                advance(ot);
        return 0;
}

int kb_offsets_window_full(const kb_offsets_t *ot) {
        if (!ot->ot_started)
                return 0;
        if ((uint64_t)(ot->ot_next - ot->ot_low) >= ot->ot_window)
                return 1;
        /* An offset was refused as beyond the bound: full until the low end
         * moved close enough to it, or nothing is in flight any more (then
         * it is taken, the gap below it counted as done). */
        return ot->ot_blocked >= 0 && ot->ot_low < ot->ot_next &&
               (uint64_t)(ot->ot_blocked - ot->ot_low) >= ot->ot_window;
}

size_t kb_offsets_pending(const kb_offsets_t *ot) {
        return ot->ot_pending;
}

/* ORs the low c (<= 64) bits of v into bm at bit position i. */
static void bm_or(uint8_t *bm, size_t i, uint64_t v, unsigned c) {
        while (c > 0) {
                unsigned sh = (unsigned)(i & 7);
                unsigned k  = 8 - sh < c ? 8 - sh : c;
                bm[i >> 3] |= (uint8_t)((v & ((1u << k) - 1)) << sh);
                v >>= k;
                i += k;
                c -= k;
        }
}

/* The first offset in [o, end) whose done bit is not val (end if none):
 * the ring below next, the committed metadata's skip set above. */
static int64_t run_end(const kb_offsets_t *ot, int64_t o, int val,
                       int64_t end) {
        int64_t lim = end < ot->ot_next ? end : ot->ot_next;
        while (o < lim) {
                uint64_t p = (uint64_t)o & ot->ot_mask;
                unsigned b = (unsigned)(p & 63);
                uint64_t w = ot->ot_ring[p >> 6] >> b;
                uint64_t x = val ? ~w : w; /* 1: the bit differs */
                if (b)
                        x &= (1ULL << (64 - b)) - 1;
                if (x) {
                        int64_t r = o + __builtin_ctzll(x);
                        if (r < lim)
                                return r;
                        o = lim;
                        break;
                }
                o += 64 - b;
        }
        if (o < ot->ot_next)
                o = lim;
        for (; o < end; o++)
                if (skip_has(ot, o) != val)
                        return o;
        return end;
}

/* "kb2:" metadata for [low, end), cut after the last done run that fits. */
static void meta2_encode(const kb_offsets_t *ot, int64_t low, int64_t end,
                         char *meta) {
        uint8_t buf[META_BYTES_MAX];
        size_t n = 0, keep = 0;
        int64_t o = low;
        int val = 0;
        while (o < end) {
                int64_t e = run_end(ot, o, val, end);
                uint64_t v = (uint64_t)(e - o);
                uint8_t tmp[10];
                size_t k = 0;
                do {
                        tmp[k++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
                        v >>= 7;
                } while (v);
                if (n + k > sizeof(buf))
                        break;
                memcpy(buf + n, tmp, k);
                n += k;
                if (val)
                        keep = n;
                o   = e;
                val = !val;
        }
        if (!keep) {
                meta[0] = '\0';
                return;
        }
        memcpy(meta, META2_PREFIX, META_PREFIX_LEN);
        kb_b64_encode(buf, keep, meta + META_PREFIX_LEN, KB_B64_NOPAD);
}

int kb_offsets_committable(const kb_offsets_t *ot, int64_t *offset, char *meta,
                           size_t meta_size) {
        if (meta_size < KB_OFFSETS_META_MAX + 1) {
                *offset = -1;
                if (meta_size > 0)
                        meta[0] = '\0';
                return -1;
        }
        if (!ot->ot_started) {
                *offset = -1;
                meta[0] = '\0';
        } else {
                uint8_t bm[META_BYTES_MAX];
                int64_t low = ot->ot_low;
                int64_t end = ot->ot_next;
                if (ot->ot_skip && ot->ot_skip_end > end)
                        end = ot->ot_skip_end;
                if (end - low > KB_OFFSETS_WINDOW_MAX) {
                        /* A wide tracker far ahead: run lengths. */
                        *offset = low;
                        meta2_encode(ot, low, end, meta);
                        goto changed;
                }
                /* Both parts are within KB_OFFSETS_WINDOW_MAX of low: the
                 * ring by the window bound, the skip set by the size of the
                 * metadata it came from (and low >= its base). */
                size_t nbits = (size_t)(end - low);
                if (nbits > KB_OFFSETS_WINDOW_MAX)
                        nbits = KB_OFFSETS_WINDOW_MAX;
                memset(bm, 0, (nbits + 7) / 8);

                size_t nring = (size_t)(ot->ot_next - low);
                if (nring > nbits)
                        nring = nbits;
                for (size_t i = 0; i < nring;) {
                        uint64_t p = (uint64_t)(low + (int64_t)i) & ot->ot_mask;
                        unsigned b = (unsigned)(p & 63);
                        unsigned c = 64 - b;
                        if (nring - i < c)
                                c = (unsigned)(nring - i);
                        bm_or(bm, i, ot->ot_ring[p >> 6] >> b, c);
                        i += c;
                }
                for (size_t i = nring; i < nbits; i++)
                        if (skip_has(ot, low + (int64_t)i))
                                bm[i >> 3] |= (uint8_t)(1u << (i & 7));

                *offset = low;
                if (kb_offsets_meta_encode(bm, nbits, meta, meta_size) == -1)
                        meta[0] = '\0'; /* cannot happen: sized above */
        }
changed:
        return *offset != ot->ot_last_off || !ot->ot_last_valid ||
               strcmp(meta, ot->ot_last_meta) != 0;
}

void kb_offsets_committed(kb_offsets_t *ot, int64_t offset, const char *meta) {
        if (!meta)
                meta = "";
        set_last(ot, offset, meta, strnlen(meta, KB_OFFSETS_META_MAX + 1));
}
