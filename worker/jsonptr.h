/* jsonptr: JSON Pointer (RFC 6901) evaluation, for async job routes (SPEC
 * §12: id_pointer, status_pointer, output_pointer).
 *
 * The string form only ("" is the whole document, "/a/b/0"), with the
 * escapes ~0 for '~' and ~1 for '/'. An array index is "0" or digits
 * without a leading zero; "-" (one past the end) names no value. */
#ifndef KB_JSONPTR_H
#define KB_JSONPTR_H

#include <jansson.h>
#include <stddef.h>

/* 0 when ptr is a valid pointer; -1 with the reason in errstr. */
int kb_jsonptr_check(const char *ptr, char *errstr, size_t errstr_size);

/* The value ptr names in doc (borrowed from doc), or NULL when there is
 * none (or ptr is not valid: check it with kb_jsonptr_check first). */
json_t *kb_jsonptr_get(json_t *doc, const char *ptr);

#endif
