/* apikeys: see apikeys.h. */
#include "apikeys.h"

#include <ctype.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "log.h"
#include "loop.h"

#define DIGEST_LEN 32

typedef struct {
        char ak_tenant[KB_APIKEYS_TENANT_MAX + 1];
        unsigned char ak_digest[DIGEST_LEN];
} apikey_t;

struct kb_apikeys_s {
        pthread_mutex_t ks_lock;
        char *ks_path; /* NULL: parsed text only */
        apikey_t *ks_keys;
        size_t ks_cnt;
        struct stat ks_st; /* of the file last loaded */
        int64_t ks_checked; /* kb_now_ms() of the last stat */
};

static int digest(const void *s, size_t len, unsigned char *out) {
        unsigned int n = 0;
        return EVP_Digest(s, len, out, &n, EVP_sha256(), NULL) &&
                               n == DIGEST_LEN
                       ? 0
                       : -1;
}

static int hexval(int c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        c = tolower(c);
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        return -1;
}

kb_apikeys_t *kb_apikeys_new_empty(void) {
        kb_apikeys_t *ks = calloc(1, sizeof(*ks));
        if (ks)
                pthread_mutex_init(&ks->ks_lock, NULL);
        return ks;
}

void kb_apikeys_destroy(kb_apikeys_t *ks) {
        if (!ks)
                return;
        pthread_mutex_destroy(&ks->ks_lock);
        free(ks->ks_keys);
        free(ks->ks_path);
        free(ks);
}

/* One line (s, len, without its newline) into *k. 1 when it held an
 * entry, 0 when blank or a comment, -1 with msg. */
static int parse_line(const char *s, size_t len, apikey_t *k, char *msg,
                      size_t msg_size) {
        size_t i = 0, t0, tl, k0, kl;
        while (i < len && isspace((unsigned char)s[i]))
                i++;
        if (i == len || s[i] == '#')
                return 0;
        t0 = i;
        while (i < len && !isspace((unsigned char)s[i]))
                i++;
        tl = i - t0;
        while (i < len && isspace((unsigned char)s[i]))
                i++;
        k0 = i;
        while (i < len && !isspace((unsigned char)s[i]))
                i++;
        kl = i - k0;
        while (i < len && isspace((unsigned char)s[i]))
                i++;
        if (!kl) {
                snprintf(msg, msg_size, "expected \"TENANT KEY\"");
                return -1;
        }
        if (i < len && s[i] != '#') {
                snprintf(msg, msg_size,
                         "unexpected text after the key (\"TENANT KEY\")");
                return -1;
        }
        if (tl > KB_APIKEYS_TENANT_MAX) {
                snprintf(msg, msg_size, "the tenant is longer than %d",
                         KB_APIKEYS_TENANT_MAX);
                return -1;
        }
        for (i = t0; i < t0 + tl; i++)
                if (!isalnum((unsigned char)s[i]) && !strchr("._-", s[i])) {
                        snprintf(msg, msg_size,
                                 "the tenant may only hold letters, digits, "
                                 "'.', '_' and '-'");
                        return -1;
                }
        memcpy(k->ak_tenant, s + t0, tl);
        k->ak_tenant[tl] = '\0';
        if (kl > 7 && !strncmp(s + k0, "sha256:", 7)) {
                if (kl != 7 + 2 * DIGEST_LEN) {
                        snprintf(msg, msg_size,
                                 "sha256: must be followed by 64 hex digits");
                        return -1;
                }
                for (i = 0; i < DIGEST_LEN; i++) {
                        int hi = hexval(s[k0 + 7 + 2 * i]),
                            lo = hexval(s[k0 + 8 + 2 * i]);
                        if (hi < 0 || lo < 0) {
                                snprintf(msg, msg_size,
                                         "sha256: must be followed by 64 "
                                         "hex digits");
                                return -1;
                        }
                        k->ak_digest[i] = (unsigned char)(hi << 4 | lo);
                }
                return 1;
        }
        if (kl < 8 || kl > 512) {
                snprintf(msg, msg_size,
                         "a key must be 8-512 characters (or sha256:HEX)");
                return -1;
        }
        if (digest(s + k0, kl, k->ak_digest)) {
                snprintf(msg, msg_size, "cannot hash the key");
                return -1;
        }
        return 1;
}

int kb_apikeys_parse(kb_apikeys_t *ks, const char *name, const char *text,
                     char *errstr, size_t errstr_size) {
        apikey_t *keys = NULL, k;
        size_t cnt = 0, cap = 0, lineno = 0;
        const char *p = text;
        char msg[256];

        while (*p) {
                const char *nl = strchr(p, '\n');
                size_t len = nl ? (size_t)(nl - p) : strlen(p);
                int r;
                lineno++;
                memset(&k, 0, sizeof(k));
                if ((r = parse_line(p, len, &k, msg, sizeof(msg))) < 0) {
                        snprintf(errstr, errstr_size, "%s:%zu: %s", name,
                                 lineno, msg);
                        free(keys);
                        return -1;
                }
                if (r > 0) {
                        if (cnt == cap) {
                                apikey_t *nk;
                                cap = cap ? cap * 2 : 16;
                                if (!(nk = realloc(keys, cap * sizeof(*nk)))) {
                                        snprintf(errstr, errstr_size,
                                                 "out of memory");
                                        free(keys);
                                        return -1;
                                }
                                keys = nk;
                        }
                        keys[cnt++] = k;
                }
                p += len + (nl ? 1 : 0);
        }
        pthread_mutex_lock(&ks->ks_lock);
        free(ks->ks_keys);
        ks->ks_keys = keys;
        ks->ks_cnt = cnt;
        pthread_mutex_unlock(&ks->ks_lock);
        return 0;
}

/* Reads and parses the file. 0, or -1 with errstr. */
static int load(kb_apikeys_t *ks, char *errstr, size_t errstr_size) {
        FILE *f = fopen(ks->ks_path, "r");
        struct stat st;
        char *text = NULL;
        size_t n;
        int ret = -1;
        if (!f) {
                snprintf(errstr, errstr_size, "api.keys_file %s: %s",
                         ks->ks_path, strerror(errno));
                return -1;
        }
        if (fstat(fileno(f), &st) || st.st_size > 16 * 1024 * 1024 ||
            !(text = malloc((size_t)st.st_size + 1))) {
                snprintf(errstr, errstr_size, "api.keys_file %s: %s",
                         ks->ks_path,
                         errno ? strerror(errno) : "too large (16 MiB)");
                fclose(f);
                return -1;
        }
        n = fread(text, 1, (size_t)st.st_size, f);
        text[n] = '\0';
        if (ferror(f))
                snprintf(errstr, errstr_size, "api.keys_file %s: %s",
                         ks->ks_path, strerror(errno));
        else if (strlen(text) != n)
                snprintf(errstr, errstr_size, "%s: holds a NUL byte",
                         ks->ks_path);
        else if (!kb_apikeys_parse(ks, ks->ks_path, text, errstr,
                                   errstr_size)) {
                ks->ks_st = st;
                ret = 0;
        }
        free(text);
        fclose(f);
        return ret;
}

kb_apikeys_t *kb_apikeys_new(const char *path, char *errstr,
                             size_t errstr_size) {
        kb_apikeys_t *ks = kb_apikeys_new_empty();
        if (!ks || !(ks->ks_path = strdup(path))) {
                kb_apikeys_destroy(ks);
                snprintf(errstr, errstr_size, "out of memory");
                return NULL;
        }
        if (load(ks, errstr, errstr_size)) {
                kb_apikeys_destroy(ks);
                return NULL;
        }
        ks->ks_checked = kb_now_ms();
        return ks;
}

/* Re-reads the file when it changed (at most one stat a second). */
static void maybe_reload(kb_apikeys_t *ks) {
        struct stat st;
        int64_t now = kb_now_ms();
        char err[512];
        int changed;
        if (!ks->ks_path)
                return;
        pthread_mutex_lock(&ks->ks_lock);
        if (now - ks->ks_checked < 1000) {
                pthread_mutex_unlock(&ks->ks_lock);
                return;
        }
        ks->ks_checked = now;
        changed = stat(ks->ks_path, &st) == 0 &&
                  (st.st_mtim.tv_sec != ks->ks_st.st_mtim.tv_sec ||
                   st.st_mtim.tv_nsec != ks->ks_st.st_mtim.tv_nsec ||
                   st.st_size != ks->ks_st.st_size ||
                   st.st_ino != ks->ks_st.st_ino);
        pthread_mutex_unlock(&ks->ks_lock);
        if (!changed)
                return;
        if (load(ks, err, sizeof(err)))
                kb_log(KB_LOG_ERROR, "api",
                       "keys file not re-read, keeping the previous keys: %s",
                       err);
        else
                kb_log(KB_LOG_INFO, "api", "keys file %s re-read: %zu keys",
                       ks->ks_path, kb_apikeys_count(ks));
}

int kb_apikeys_lookup(kb_apikeys_t *ks, const char *key, size_t len,
                      char *tenant) {
        unsigned char d[DIGEST_LEN];
        size_t i;
        int found = 0;
        maybe_reload(ks);
        if (!len || digest(key, len, d))
                return 0;
        pthread_mutex_lock(&ks->ks_lock);
        /* Every entry is compared, in constant time each. */
        for (i = 0; i < ks->ks_cnt; i++)
                if (!CRYPTO_memcmp(d, ks->ks_keys[i].ak_digest, DIGEST_LEN) &&
                    !found) {
                        found = 1;
                        memcpy(tenant, ks->ks_keys[i].ak_tenant,
                               sizeof(ks->ks_keys[i].ak_tenant));
                }
        pthread_mutex_unlock(&ks->ks_lock);
        return found;
}

size_t kb_apikeys_count(kb_apikeys_t *ks) {
        size_t n;
        pthread_mutex_lock(&ks->ks_lock);
        n = ks->ks_cnt;
        pthread_mutex_unlock(&ks->ks_lock);
        return n;
}
