/* libFuzzer target: the offset-commit metadata decoder
 * (kb_offsets_meta_decode) and, driven by the same bytes, the tracker that
 * reads it back (kb_offsets_reset/track/mark_done/committable).
 *
 * Input: byte 0 chooses the mode.
 * - mode 0 (even): the rest is commit metadata, as read back from Kafka
 *   (any bytes: a foreign consumer, an older kbatch, corruption). Checks:
 *   decode never reads past len and re-encodes to the same bitmap; reset
 *   with it never fails worse than "ignored".
 * - mode 1 (odd): the rest is a program of tracker operations, checked
 *   against a reference model. The invariant is the delivery guarantee of
 *   SPEC §5: the committed offset never passes an unfinished offset, and an
 *   offset the metadata says is done was really done; a "restart" (reset
 *   from the last committable position) skips exactly the done offsets. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "offsets.h"
#include "fuzz_check.h"

static void meta_mode(const uint8_t *data, size_t size) {
        uint8_t *bits = NULL, *bits2 = NULL;
        size_t nbits = 0, nbits2 = 0, i, n1, n2;
        char out[KB_OFFSETS_META_MAX + 1];
        kb_offsets_t *ot;
        int r;

        /* An exact-size heap copy: ASan sees any read past len. */
        char *m = malloc(size ? size : 1);
        if (!m)
                return;
        memcpy(m, data, size);
        r = kb_offsets_meta_decode(m, size, &bits, &nbits);
        CHECK(r == 0 || r == -1);
        if (r == -1) {
                CHECK(bits == NULL);
        } else {
                CHECK(nbits % 8 == 0);
                CHECK((bits == NULL) == (nbits == 0));
                CHECK(size <= KB_OFFSETS_META_MAX);
                /* re-encode: same bits (trailing zero bytes trimmed) */
                if (nbits <= (size_t)KB_OFFSETS_WINDOW_MAX) {
                        CHECK(kb_offsets_meta_encode(bits, nbits, out,
                                                     sizeof(out)) >= 0);
                        CHECK(kb_offsets_meta_decode(out, strlen(out), &bits2,
                                                     &nbits2) == 0);
                        n1 = nbits / 8;
                        while (n1 && bits[n1 - 1] == 0)
                                n1--;
                        n2 = nbits2 / 8;
                        while (n2 && bits2[n2 - 1] == 0)
                                n2--;
                        CHECK(n1 == n2);
                        CHECK(n1 == 0 || memcmp(bits, bits2, n1) == 0);
                        /* canonical input without trailing zero bytes
                         * re-encodes to itself */
                        if (n1 > 0 && n1 == nbits / 8 &&
                            !memcmp(m, "kb1:", 4))
                                CHECK(strlen(out) == size &&
                                      memcmp(out, m, size) == 0);
                        free(bits2);
                }
        }
        /* the tracker takes the same bytes from a committed offset */
        ot = kb_offsets_new(0);
        if (ot) {
                int64_t off;
                r = kb_offsets_reset(ot, 1000, m, size);
                CHECK(r == 0 || r == -1);
                for (i = 0; i < 64; i++) {
                        kb_offsets_res_t tr = kb_offsets_track(ot, 1000 + i);
                        int done = r == 0 && i < nbits &&
                                   ((bits[i / 8] >> (i % 8)) & 1);
                        CHECK(tr == (done ? KB_OFFSETS_SKIP : KB_OFFSETS_OK));
                }
                CHECK(kb_offsets_committable(ot, &off, out, sizeof(out)) >= 0);
                CHECK(off >= 1000);
                kb_offsets_destroy(ot);
        }
        free(bits);
        free(m);
}

/* ---- mode 1: the tracker against a model ---- */

#define SPAN 16384 /* offsets [base, base + SPAN) */

typedef struct {
        uint8_t st[SPAN]; /* 0 unseen, 1 in flight, 2 done */
} model_t;

/* The committed position must not pass an in-flight offset, and the
 * metadata must not name one as done. */
static void check_committable(kb_offsets_t *ot, const model_t *md,
                              int64_t base, int64_t next, int64_t *offp,
                              char *meta) {
        int64_t off, o;
        uint8_t *bits = NULL;
        size_t nbits = 0;
        CHECK(kb_offsets_committable(ot, &off, meta, KB_OFFSETS_META_MAX + 1) >=
              0);
        *offp = off;
        if (off < 0)
                return;
        CHECK(strlen(meta) <= KB_OFFSETS_META_MAX);
        CHECK(kb_offsets_meta_decode(meta, strlen(meta), &bits, &nbits) == 0);
        for (o = base; o < next; o++) {
                if (md->st[o - base] != 1)
                        continue;
                CHECK(o >= off); /* never committed past unfinished work */
                if ((uint64_t)(o - off) < nbits)
                        CHECK(!((bits[(o - off) / 8] >> ((o - off) % 8)) & 1));
        }
        free(bits);
}

static void program_mode(const uint8_t *data, size_t size) {
        static model_t md;
        kb_offsets_t *ot;
        size_t window, i = 0;
        int64_t base, next, off, lo, full_at = -1;
        char meta[KB_OFFSETS_META_MAX + 1];

        if (size < 3)
                return;
        if (size > 1024) /* 500 operations are plenty */
                size = 1024;
        /* small windows make FULL reachable */
        window = 64 + (size_t)data[0] * 16;
        base = (int64_t)data[1] * 1000003LL;
        data += 2;
        size -= 2;
        memset(&md, 0, sizeof(md));
        if (!(ot = kb_offsets_new(window)))
                return;
        kb_offsets_reset(ot, base, "", 0);
        next = lo = base;
        while (i < size) {
                uint8_t op = data[i++];
                uint8_t arg = i < size ? data[i++] : 0;
                switch (op % 4) {
                case 0: /* consume the next offset (arg: gap before it) */
                case 1: {
                        /* arg 255: a gap wider than the window (an
                         * aborted transaction read_committed skips) */
                        int64_t o = next + (arg == 255  ? 3 * (int64_t)window
                                            : arg % 4 == 0 ? arg / 4 % 3
                                                           : 0);
                        kb_offsets_res_t r;
                        /* after FULL the consumer seeks back: that offset
                         * comes again first */
                        if (full_at >= 0)
                                o = full_at;
                        if (o - base >= SPAN)
                                break;
                        r = kb_offsets_track(ot, o);
                        if (r == KB_OFFSETS_FULL) {
                                /* only while something below is in flight,
                                 * and the partition stays paused for it */
                                CHECK(kb_offsets_window_full(ot));
                                CHECK(kb_offsets_pending(ot) > 0);
                                full_at = o;
                                break;
                        }
                        full_at = -1;
                        for (int64_t g = next; g < o; g++)
                                md.st[g - base] = 2; /* gap: done */
                        CHECK(r == KB_OFFSETS_OK);
                        md.st[o - base] = 1;
                        next = o + 1;
                        break;
                }
                case 2: { /* finish an in-flight offset */
                        int64_t k, o = -1, span;
                        while (lo < next && md.st[lo - base] != 1)
                                lo++;
                        span = next - lo;
                        for (k = 0; k < span; k++) {
                                int64_t j = lo + ((int64_t)arg * 7 + k) % span;
                                if (md.st[j - base] == 1) {
                                        o = j;
                                        break;
                                }
                        }
                        if (o < 0)
                                break;
                        CHECK(kb_offsets_mark_done(ot, o) == 0);
                        md.st[o - base] = 2;
                        break;
                }
                case 3: { /* commit, then (arg odd) restart from it */
                        int64_t j;
                        check_committable(ot, &md, base, next, &off, meta);
                        kb_offsets_committed(ot, off, meta);
                        if (!(arg & 1) || off < 0)
                                break;
                        /* The new owner reads from the committed offset:
                         * in-flight work was lost and comes again (it is
                         * run again: at-least-once); done work must be
                         * skipped, every single offset of it. */
                        CHECK(kb_offsets_reset(ot, off, meta, strlen(meta)) ==
                              0);
                        full_at = -1;
                        for (j = off; j < next; j++) {
                                kb_offsets_res_t r = kb_offsets_track(ot, j);
                                CHECK(r != KB_OFFSETS_FULL);
                                if (md.st[j - base] == 2)
                                        CHECK(r == KB_OFFSETS_SKIP);
                                else
                                        CHECK(r == KB_OFFSETS_OK);
                        }
                        break;
                }
                }
                /* cheap check after every operation: the committable offset
                 * is at most the lowest in-flight one */
                while (lo < next && md.st[lo - base] != 1)
                        lo++;
                CHECK(kb_offsets_committable(ot, &off, meta, sizeof(meta)) >= 0);
                CHECK(off <= lo);
        }
        check_committable(ot, &md, base, next, &off, meta);
        kb_offsets_destroy(ot);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size < 1)
                return 0;
        if (data[0] & 1)
                program_mode(data + 1, size - 1);
        else
                meta_mode(data + 1, size - 1);
        return 0;
}
