/* ssrf: see ssrf.h. */
#include "ssrf.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

const char *kb_ssrf_class_str(kb_ssrf_class_t cls) {
        static const char *const names[KB_SSRF__CNT] = {
                "public",   "loopback",    "private",   "link-local",
                "cgnat",    "unspecified", "multicast", "broadcast",
                "reserved", "metadata"};
        if ((unsigned)cls >= KB_SSRF__CNT)
                return "unknown";
        return names[cls];
}

/* addr within net/len (host byte order). */
static int in4(uint32_t addr, uint32_t net, int len) {
        uint32_t mask = len ? 0xffffffffu << (32 - len) : 0;
        return (addr & mask) == (net & mask);
}

#define V4(a, b, c, d)                                                         \
        (((uint32_t)(a) << 24) | ((uint32_t)(b) << 16) |                       \
         ((uint32_t)(c) << 8) | (uint32_t)(d))

kb_ssrf_class_t kb_ssrf_classify_v4(uint32_t a) {
        /* Metadata endpoints first: they sit inside link-local, CGNAT and
         * 192.0.0/24. */
        if (a == V4(169, 254, 169, 254) || a == V4(169, 254, 170, 2) ||
            a == V4(169, 254, 170, 23) || a == V4(100, 100, 100, 200) ||
            a == V4(192, 0, 0, 192))
                return KB_SSRF_METADATA;
        if (a == V4(255, 255, 255, 255))
                return KB_SSRF_BROADCAST;
        if (in4(a, V4(0, 0, 0, 0), 8))
                return KB_SSRF_UNSPECIFIED;
        if (in4(a, V4(127, 0, 0, 0), 8))
                return KB_SSRF_LOOPBACK;
        if (in4(a, V4(10, 0, 0, 0), 8) || in4(a, V4(172, 16, 0, 0), 12) ||
            in4(a, V4(192, 168, 0, 0), 16) || in4(a, V4(198, 18, 0, 0), 15))
                return KB_SSRF_PRIVATE;
        if (in4(a, V4(169, 254, 0, 0), 16))
                return KB_SSRF_LINK_LOCAL;
        if (in4(a, V4(100, 64, 0, 0), 10))
                return KB_SSRF_CGNAT;
        if (in4(a, V4(224, 0, 0, 0), 4))
                return KB_SSRF_MULTICAST;
        if (in4(a, V4(240, 0, 0, 0), 4) || in4(a, V4(192, 0, 0, 0), 24) ||
            in4(a, V4(192, 0, 2, 0), 24) || in4(a, V4(198, 51, 100, 0), 24) ||
            in4(a, V4(203, 0, 113, 0), 24))
                return KB_SSRF_RESERVED;
        return KB_SSRF_PUBLIC;
}

static uint32_t v4_at(const uint8_t *p) {
        return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
               ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

/* addr within the first len bits (a multiple of 8 here) of prefix. */
static int in6(const uint8_t *a, const uint8_t *prefix, int len) {
        int full = len / 8, rest = len % 8;
        if (memcmp(a, prefix, (size_t)full) != 0)
                return 0;
        if (rest) {
                uint8_t mask = (uint8_t)(0xff << (8 - rest));
                return (a[full] & mask) == (prefix[full] & mask);
        }
        return 1;
}

kb_ssrf_class_t kb_ssrf_classify_v6(const uint8_t a[16]) {
        static const uint8_t zero[16] = {0};
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0,    0,
                                           0, 0, 0, 0, 0xff, 0xff};
        static const uint8_t siit[12] = {0, 0, 0,    0,    0, 0,
                                         0, 0, 0xff, 0xff, 0, 0};
        static const uint8_t nat64[12] = {0x00, 0x64, 0xff, 0x9b};
        static const uint8_t nat64_local[6] = {0x00, 0x64, 0xff,
                                               0x9b, 0x00, 0x01};
        static const uint8_t aws_md[16] = {0xfd, 0x00, 0x0e, 0xc2, 0, 0,
                                           0,    0,    0,    0,    0, 0,
                                           0,    0,    0x02, 0x54};
        static const uint8_t aws_pod[16] = {0xfd, 0x00, 0x0e, 0xc2, 0, 0,
                                            0,    0,    0,    0,    0, 0,
                                            0,    0,    0x00, 0x23};
        static const uint8_t teredo[4] = {0x20, 0x01, 0x00, 0x00};
        static const uint8_t doc[4] = {0x20, 0x01, 0x0d, 0xb8};
        static const uint8_t discard[8] = {0x01, 0x00};
        static const uint8_t sixtofour[2] = {0x20, 0x02};

        if (!memcmp(a, zero, 16))
                return KB_SSRF_UNSPECIFIED;
        if (!memcmp(a, zero, 15) && a[15] == 1)
                return KB_SSRF_LOOPBACK;
        /* Embedded IPv4: judged by the IPv4 address. */
        if (!memcmp(a, mapped, 12) || !memcmp(a, siit, 12) ||
            !memcmp(a, nat64, 12))
                return kb_ssrf_classify_v4(v4_at(a + 12));
        if (in6(a, sixtofour, 16))
                return kb_ssrf_classify_v4(v4_at(a + 2));
        if (!memcmp(a, aws_md, 16) || !memcmp(a, aws_pod, 16))
                return KB_SSRF_METADATA;
        if (!memcmp(a, zero, 12))
                return KB_SSRF_RESERVED; /* ::a.b.c.d, deprecated */
        if (a[0] == 0xff)
                return KB_SSRF_MULTICAST;
        if (a[0] == 0xfe && (a[1] & 0xc0) == 0x80)
                return KB_SSRF_LINK_LOCAL;
        if ((a[0] & 0xfe) == 0xfc || (a[0] == 0xfe && (a[1] & 0xc0) == 0xc0) ||
            in6(a, nat64_local, 48))
                return KB_SSRF_PRIVATE;
        if (in6(a, teredo, 32) || in6(a, doc, 32) || in6(a, discard, 64))
                return KB_SSRF_RESERVED;
        return KB_SSRF_PUBLIC;
}

kb_ssrf_class_t kb_ssrf_classify(const struct sockaddr *sa) {
        if (!sa)
                return KB_SSRF_RESERVED;
        if (sa->sa_family == AF_INET) {
                const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
                return kb_ssrf_classify_v4(ntohl(s4->sin_addr.s_addr));
        }
        if (sa->sa_family == AF_INET6) {
                const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
                return kb_ssrf_classify_v6(s6->sin6_addr.s6_addr);
        }
        return KB_SSRF_RESERVED;
}

int kb_ssrf_allowed(kb_ssrf_class_t cls, int allow_private) {
        switch (cls) {
        case KB_SSRF_PUBLIC:
                return 1;
        case KB_SSRF_LOOPBACK:
        case KB_SSRF_PRIVATE:
        case KB_SSRF_LINK_LOCAL:
        case KB_SSRF_CGNAT:
                return allow_private != 0;
        default:
                return 0;
        }
}

/* ---- URLs ----------------------------------------------------------- */

void kb_ssrf_url_clear(kb_ssrf_url_t *u) {
        if (!u)
                return;
        free(u->su_url);
        free(u->su_host);
        memset(u, 0, sizeof(*u));
}

static kb_ssrf_url_err_t url_fail(kb_ssrf_url_t *u, CURLU *h,
                                  kb_ssrf_url_err_t err, char *errstr,
                                  size_t errstr_size, const char *why) {
        snprintf(errstr, errstr_size, "%s", why);
        if (h)
                curl_url_cleanup(h);
        kb_ssrf_url_clear(u);
        return err;
}

static int host_chars_ok(const char *h) {
        const char *p;
        if (!*h)
                return 0;
        for (p = h; *p; p++) {
                unsigned char c = (unsigned char)*p;
                if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                      (c >= '0' && c <= '9') || c == '.' || c == '-' ||
                      c == '_'))
                        return 0;
        }
        return 1;
}

kb_ssrf_url_err_t kb_ssrf_url_parse(const char *url, kb_ssrf_url_t *u,
                                    char *errstr, size_t errstr_size) {
        CURLU *h = NULL;
        CURLUcode uc;
        char *part = NULL;
        size_t i, len;

        memset(u, 0, sizeof(*u));
        if (!url || !*url)
                return url_fail(u, NULL, KB_SSRF_URL_MALFORMED, errstr,
                                errstr_size, "empty URL");
        len = strlen(url);
        if (len > KB_SSRF_URL_MAX)
                return url_fail(u, NULL, KB_SSRF_URL_MALFORMED, errstr,
                                errstr_size, "URL longer than 4096 bytes");
        for (i = 0; i < len; i++) {
                unsigned char c = (unsigned char)url[i];
                if (c <= 0x20 || c == 0x7f)
                        return url_fail(u, NULL, KB_SSRF_URL_CONTROL, errstr,
                                        errstr_size,
                                        "URL contains a control character "
                                        "or whitespace");
        }
        /* The scheme is checked on the raw text too: libcurl would guess
         * one for a URL without it. */
        if (strncasecmp(url, "http://", 7) && strncasecmp(url, "https://", 8))
                return url_fail(u, NULL, KB_SSRF_URL_SCHEME, errstr,
                                errstr_size,
                                "only http and https URLs are allowed");
        if (!(h = curl_url()))
                return url_fail(u, NULL, KB_SSRF_URL_MALFORMED, errstr,
                                errstr_size, "out of memory");
        uc = curl_url_set(h, CURLUPART_URL, url, 0);
        if (uc != CURLUE_OK) {
                char why[160];
                snprintf(why, sizeof(why), "malformed URL: %s",
                         curl_url_strerror(uc));
                return url_fail(u, h, KB_SSRF_URL_MALFORMED, errstr,
                                errstr_size, why);
        }
        if (curl_url_get(h, CURLUPART_SCHEME, &part, 0) != CURLUE_OK ||
            (strcasecmp(part, "http") && strcasecmp(part, "https"))) {
                curl_free(part);
                return url_fail(u, h, KB_SSRF_URL_SCHEME, errstr, errstr_size,
                                "only http and https URLs are allowed");
        }
        u->su_https = !strcasecmp(part, "https");
        curl_free(part);
        part = NULL;
        if (curl_url_get(h, CURLUPART_USER, &part, 0) == CURLUE_OK ||
            curl_url_get(h, CURLUPART_PASSWORD, &part, 0) == CURLUE_OK ||
            curl_url_get(h, CURLUPART_OPTIONS, &part, 0) == CURLUE_OK) {
                curl_free(part);
                return url_fail(u, h, KB_SSRF_URL_USERINFO, errstr, errstr_size,
                                "URL carries credentials (user info)");
        }
        /* Belt and braces: an '@' before the path means user info to some
         * parser, even if libcurl disagrees. */
        {
                const char *auth = strstr(url, "://") + 3;
                size_t alen = strcspn(auth, "/?#");
                if (memchr(auth, '@', alen))
                        return url_fail(u, h, KB_SSRF_URL_USERINFO, errstr,
                                        errstr_size,
                                        "URL carries credentials (user "
                                        "info)");
        }
        if (curl_url_get(h, CURLUPART_ZONEID, &part, 0) == CURLUE_OK) {
                curl_free(part);
                return url_fail(u, h, KB_SSRF_URL_HOST, errstr, errstr_size,
                                "URL has an IPv6 zone id");
        }
        if (curl_url_get(h, CURLUPART_HOST, &part, 0) != CURLUE_OK || !*part) {
                curl_free(part);
                return url_fail(u, h, KB_SSRF_URL_HOST, errstr, errstr_size,
                                "URL has no host");
        }
        {
                size_t hl = strlen(part);
                if (part[0] == '[' && hl > 2 && part[hl - 1] == ']') {
                        struct sockaddr_in6 *s6 =
                                (struct sockaddr_in6 *)&u->su_addr;
                        u->su_host = strndup(part + 1, hl - 2);
                        if (!u->su_host || inet_pton(AF_INET6, u->su_host,
                                                     &s6->sin6_addr) != 1) {
                                curl_free(part);
                                return url_fail(u, h, KB_SSRF_URL_HOST, errstr,
                                                errstr_size,
                                                "URL has a bad IPv6 host");
                        }
                        s6->sin6_family = AF_INET6;
                        u->su_literal = 1;
                } else {
                        struct sockaddr_in *s4 =
                                (struct sockaddr_in *)&u->su_addr;
                        if (!host_chars_ok(part)) {
                                curl_free(part);
                                return url_fail(
                                        u, h, KB_SSRF_URL_HOST, errstr,
                                        errstr_size,
                                        "URL host has characters outside "
                                        "[A-Za-z0-9.-_] (use its punycode "
                                        "form)");
                        }
                        u->su_host = strdup(part);
                        if (u->su_host && inet_pton(AF_INET, u->su_host,
                                                    &s4->sin_addr) == 1) {
                                s4->sin_family = AF_INET;
                                u->su_literal = 1;
                        }
                }
        }
        curl_free(part);
        part = NULL;
        if (curl_url_get(h, CURLUPART_PORT, &part, CURLU_DEFAULT_PORT) !=
            CURLUE_OK) {
                curl_free(part);
                return url_fail(u, h, KB_SSRF_URL_MALFORMED, errstr,
                                errstr_size, "URL has no port");
        }
        u->su_port = atoi(part);
        curl_free(part);
        part = NULL;
        if (u->su_port <= 0 || u->su_port > 65535)
                return url_fail(u, h, KB_SSRF_URL_MALFORMED, errstr,
                                errstr_size, "URL has a bad port");
        if (curl_url_get(h, CURLUPART_URL, &part, 0) != CURLUE_OK) {
                curl_free(part);
                return url_fail(u, h, KB_SSRF_URL_MALFORMED, errstr,
                                errstr_size, "URL cannot be normalized");
        }
        u->su_url = strdup(part);
        curl_free(part);
        curl_url_cleanup(h);
        if (!u->su_url || !u->su_host)
                return url_fail(u, NULL, KB_SSRF_URL_MALFORMED, errstr,
                                errstr_size, "out of memory");
        snprintf(u->su_origin, sizeof(u->su_origin), "%s://%s%.256s%s:%d",
                 u->su_https ? "https" : "http",
                 u->su_addr.ss_family == AF_INET6 ? "[" : "", u->su_host,
                 u->su_addr.ss_family == AF_INET6 ? "]" : "", u->su_port);
        return KB_SSRF_URL_OK;
}

/* ---- resolved addresses -------------------------------------------- */

int kb_ssrf_check_addrs(const char *host, int port, const struct addrinfo *ai,
                        int allow_private, char *resolve, size_t resolve_size,
                        char *errstr, size_t errstr_size) {
        const struct addrinfo *p;
        char seen[32][INET6_ADDRSTRLEN + 2];
        int nseen = 0, n;
        size_t off = 0;

        for (p = ai; p; p = p->ai_next) {
                char txt[INET6_ADDRSTRLEN];
                kb_ssrf_class_t cls;
                if (!p->ai_addr ||
                    (p->ai_family != AF_INET && p->ai_family != AF_INET6))
                        continue;
                cls = kb_ssrf_classify(p->ai_addr);
                if (p->ai_family == AF_INET)
                        inet_ntop(AF_INET,
                                  &((struct sockaddr_in *)p->ai_addr)->sin_addr,
                                  txt, sizeof(txt));
                else
                        inet_ntop(
                                AF_INET6,
                                &((struct sockaddr_in6 *)p->ai_addr)->sin6_addr,
                                txt, sizeof(txt));
                if (!kb_ssrf_allowed(cls, allow_private)) {
                        snprintf(errstr, errstr_size, "resolves to %s (%s)",
                                 txt, kb_ssrf_class_str(cls));
                        return -1;
                }
                {
                        int i, dup = 0;
                        for (i = 0; i < nseen; i++)
                                if (!strcmp(seen[i], txt))
                                        dup = 1;
                        if (dup)
                                continue;
                        if (nseen < 32) /* pin the first 32 */
                                snprintf(seen[nseen++], sizeof(seen[0]), "%s",
                                         txt);
                }
        }
        if (!nseen) {
                snprintf(errstr, errstr_size, "resolves to no address");
                return -2;
        }
        if (!resolve)
                return 0;
        n = snprintf(resolve, resolve_size, "%s:%d:", host, port);
        if (n < 0 || (size_t)n >= resolve_size)
                goto toolong;
        off = (size_t)n;
        for (int i = 0; i < nseen; i++) {
                int v6 = strchr(seen[i], ':') != NULL;
                n = snprintf(resolve + off, resolve_size - off, "%s%s%s%s",
                             i ? "," : "", v6 ? "[" : "", seen[i],
                             v6 ? "]" : "");
                if (n < 0 || (size_t)n >= resolve_size - off)
                        goto toolong;
                off += (size_t)n;
        }
        return 0;
toolong:
        snprintf(errstr, errstr_size, "resolve entry too long");
        return -2;
}
