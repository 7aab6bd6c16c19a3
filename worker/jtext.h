/* jtext: JSON as text, without a jansson tree, for the items pipeline's
 * hot path (issue 20): checking and compacting a model response that the
 * ItemResult embeds as it is, reading its `usage` on the way, and writing
 * JSON values into a growing buffer.
 *
 * kb_jtext_check accepts exactly what json_loadb(buf, len, 0, ...) of
 * jansson 2.14 accepts (an object or array at the top, strict UTF-8, no
 * \u0000, no lone surrogate escapes, integers within int64, reals that do
 * not overflow a double, at most JSON_PARSER_MAX_DEPTH levels), so that a
 * response is "JSON" or "not JSON" as before; tests/unit/test_jtext.c
 * compares the two on a table and on random inputs. The compact copy keeps
 * every token as written (string escapes and number spellings are not
 * normalised as a jansson round trip would: the same values). */
#ifndef KB_JTEXT_H
#define KB_JTEXT_H

#include <stddef.h>
#include <stdint.h>

/* The top-level "usage" object's token counts (OpenAI chat/completions/
 * embeddings: prompt_tokens/completion_tokens; responses and Anthropic:
 * input_tokens/output_tokens). A key counts when its (last) value is an
 * integer; a later "usage" key replaces an earlier one, as in jansson. */
typedef struct kb_jtext_usage_s {
        int ju_usage;  /* "usage" is an object */
        int ju_has_prompt, ju_has_completion, ju_has_input, ju_has_output,
            ju_has_total;
        int64_t ju_prompt, ju_completion, ju_input, ju_output, ju_total;
} kb_jtext_usage_t;

/* Checks that in[0..len) is a JSON text jansson would load (see above).
 * out: NULL, or at least len bytes (may be in itself: the compact copy
 * never overtakes the reading) that get the text without insignificant
 * whitespace (not NUL-terminated). out_lenp: NULL, or the length of that
 * compact text (also when out is NULL: len when there is no whitespace to
 * drop). usage: NULL, or
 * filled (zeroed first). Returns 1 when valid, 0 when not (out and usage
 * are then unspecified). */
int kb_jtext_check(const char *in, size_t len, char *out, size_t *out_lenp,
                   kb_jtext_usage_t *usage);

/* A member of a top-level object, as written in the text. */
enum {
        KB_JTEXT_OBJECT = 1,
        KB_JTEXT_ARRAY,
        KB_JTEXT_STRING,
        KB_JTEXT_INTEGER, /* within int64: jm_int */
        KB_JTEXT_REAL,
        KB_JTEXT_LITERAL, /* true, false, null */
};

typedef struct kb_jtext_member_s {
        const char *jm_key;  /* between the quotes, escapes as written */
        size_t jm_key_len;
        int jm_key_esc;      /* the key has escapes */
        const char *jm_val;  /* the value's text (strings with quotes) */
        size_t jm_val_len;
        int jm_type;         /* KB_JTEXT_* */
        int jm_str_esc;      /* a string with escapes */
        int64_t jm_int;
} kb_jtext_member_t;

#define KB_JTEXT_NO_DUPLICATES 1 /* as jansson's JSON_REJECT_DUPLICATES */

/* Checks in[0..len) as kb_jtext_check does and lists the members of the
 * object at its top into mem[0..max). flags: KB_JTEXT_NO_DUPLICATES (keys
 * are compared as written: a key with escapes makes the answer -1). The
 * member pointers point into in. Returns the number of members, or -1 when
 * the text is not JSON, not an object, has duplicate keys, more than max
 * members, or cannot be decided here (then ask jansson, which also says
 * why). */
int kb_jtext_members(const char *in, size_t len, int flags,
                     kb_jtext_member_t *mem, size_t max);

/* A growing output buffer. An allocation failure is sticky: every later
 * put does nothing and kb_jtext_buf_take returns NULL. */
typedef struct kb_jtext_buf_s {
        char *jb_buf;
        size_t jb_len, jb_cap;
        int jb_oom;
} kb_jtext_buf_t;

/* Starts an empty buffer with room for hint bytes (allocates nothing when
 * hint is 0). */
void kb_jtext_buf_init(kb_jtext_buf_t *b, size_t hint);
/* Frees the buffer's memory (a buffer taken is empty already). */
void kb_jtext_buf_clear(kb_jtext_buf_t *b);
/* The text so far, NUL-terminated, malloc'ed (caller frees), its length in
 * *lenp; the buffer is empty afterwards. NULL after an allocation failure. */
char *kb_jtext_buf_take(kb_jtext_buf_t *b, size_t *lenp);

void kb_jtext_put_raw(kb_jtext_buf_t *b, const char *s, size_t len);
/* Literal text (a C string): punctuation, keys already quoted, null. */
void kb_jtext_put_lit(kb_jtext_buf_t *b, const char *s);
/* s (UTF-8, NUL-terminated) as a JSON string, escaped the way jansson's
 * json_dumps does without flags: \" \\ \b \f \n \r \t, other control
 * characters as \u00XX, everything else as it is; a byte that is not
 * part of valid UTF-8 (a message cut in the middle of a character) becomes
 * U+FFFD, where jansson would refuse the string. NULL writes null. */
void kb_jtext_put_str(kb_jtext_buf_t *b, const char *s);
void kb_jtext_put_int(kb_jtext_buf_t *b, int64_t v);

#endif
