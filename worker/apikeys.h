/* apikeys: the tenants and keys of the HTTP API (api.keys_file, SPEC §11).
 *
 * The file: one "TENANT KEY" per line, blank lines and "#" comments
 * ignored. TENANT: 1-64 characters of [A-Za-z0-9._-]. KEY: the key itself
 * (8-512 printable characters, no spaces) or "sha256:" + the 64 hex digits
 * of its SHA-256, so the file need not hold the keys. Only digests are kept
 * in memory; a lookup hashes the key and compares every digest in constant
 * time.
 *
 * The set re-reads its file when the file's mtime, size or inode changed
 * (checked at most once a second). A file that became unreadable or bad
 * keeps the last good set (and logs the error). Thread-safe. */
#ifndef KB_APIKEYS_H
#define KB_APIKEYS_H

#include <stddef.h>

#define KB_APIKEYS_TENANT_MAX 64

typedef struct kb_apikeys_s kb_apikeys_t;

/* Loads path. NULL + errstr ("PATH:LINE: message", or the I/O error) when
 * the file cannot be read or has a bad line. */
kb_apikeys_t *kb_apikeys_new(const char *path, char *errstr,
                             size_t errstr_size);
void kb_apikeys_destroy(kb_apikeys_t *ks); /* NULL is a no-op */

/* Parses the text of a keys file (name: for messages) into ks, replacing
 * its entries. Returns 0, or -1 with errstr ("NAME:LINE: message") and ks
 * unchanged. */
int kb_apikeys_parse(kb_apikeys_t *ks, const char *name, const char *text,
                     char *errstr, size_t errstr_size);

/* An empty set, for kb_apikeys_parse (tests). */
kb_apikeys_t *kb_apikeys_new_empty(void);

/* The tenant of key (len bytes): 1 and tenant filled (at least
 * KB_APIKEYS_TENANT_MAX + 1 bytes), 0 when no entry has this key. Re-reads
 * the file first when it changed. */
int kb_apikeys_lookup(kb_apikeys_t *ks, const char *key, size_t len,
                      char *tenant);

/* Entries in the set. */
size_t kb_apikeys_count(kb_apikeys_t *ks);

#endif
