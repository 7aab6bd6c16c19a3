/* libFuzzer target: the SSRF guard's URL checks (kb_ssrf_url_parse) and
 * address checks (kb_ssrf_classify_*, kb_ssrf_check_addrs).
 *
 * The whole input is a callback_url (it comes from whoever publishes
 * items). Checks, for an accepted URL:
 * - the normalized URL holds no control character, whitespace or DEL, starts
 *   with http:// or https://, has no user info, and parses again to the
 *   same host, port and scheme (what we check is what libcurl requests);
 * - the host is [A-Za-z0-9.-_] or an IPv6 literal; the port is 1-65535;
 * - an IP literal host gets the same verdict as the same address resolved.
 * And, with the input's first bytes as addresses: every IPv6 form that
 * embeds an IPv4 address is classified as that IPv4 address, and
 * kb_ssrf_check_addrs accepts a list only when every address is allowed. */
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ssrf.h"
#include "fuzz_check.h"

static void check_url(const char *url) {
        kb_ssrf_url_t u, u2;
        char err[256];
        kb_ssrf_url_err_t r = kb_ssrf_url_parse(url, &u, err, sizeof(err));
        const char *p, *auth;
        size_t alen;

        CHECK(r >= KB_SSRF_URL_OK && r <= KB_SSRF_URL_HOST);
        if (r != KB_SSRF_URL_OK) {
                CHECK(!u.su_url && !u.su_host);
                CHECK(err[0]);
                return;
        }
        CHECK(u.su_url && u.su_host && u.su_host[0]);
        for (p = u.su_url; *p; p++)
                CHECK((unsigned char)*p > 0x20 && (unsigned char)*p != 0x7f);
        CHECK(!strncasecmp(u.su_url, u.su_https ? "https://" : "http://",
                           u.su_https ? 8 : 7));
        auth = strstr(u.su_url, "://") + 3;
        alen = strcspn(auth, "/?#");
        CHECK(!memchr(auth, '@', alen));
        CHECK(u.su_port >= 1 && u.su_port <= 65535);
        if (u.su_addr.ss_family == AF_INET6) {
                CHECK(u.su_literal);
        } else {
                for (p = u.su_host; *p; p++)
                        CHECK((*p >= 'a' && *p <= 'z') ||
                              (*p >= 'A' && *p <= 'Z') ||
                              (*p >= '0' && *p <= '9') || *p == '.' ||
                              *p == '-' || *p == '_');
        }
        /* the origin for logs carries no path or query */
        CHECK(!strchr(u.su_origin + 8, '/') && !strchr(u.su_origin, '?'));

        /* stable: the normalized URL is accepted as the same target */
        CHECK(kb_ssrf_url_parse(u.su_url, &u2, err, sizeof(err)) ==
              KB_SSRF_URL_OK);
        CHECK(!strcmp(u.su_host, u2.su_host));
        CHECK(u.su_port == u2.su_port && u.su_https == u2.su_https);
        CHECK(u.su_literal == u2.su_literal);

        if (u.su_literal) {
                /* the literal is judged like the same address resolved */
                struct addrinfo ai;
                char resolve[512];
                int allow, rc;
                memset(&ai, 0, sizeof(ai));
                ai.ai_family = u.su_addr.ss_family;
                ai.ai_addr = (struct sockaddr *)&u.su_addr;
                ai.ai_addrlen = u.su_addr.ss_family == AF_INET6
                                    ? sizeof(struct sockaddr_in6)
                                    : sizeof(struct sockaddr_in);
                for (allow = 0; allow <= 1; allow++) {
                        kb_ssrf_class_t cls =
                            kb_ssrf_classify((struct sockaddr *)&u.su_addr);
                        rc = kb_ssrf_check_addrs(u.su_host, u.su_port, &ai,
                                                 allow, resolve,
                                                 sizeof(resolve), err,
                                                 sizeof(err));
                        CHECK(rc == (kb_ssrf_allowed(cls, allow) ? 0 : -1) ||
                              rc == -2);
                }
        }
        kb_ssrf_url_clear(&u2);
        kb_ssrf_url_clear(&u);
}

static uint32_t be32(const uint8_t *p) {
        return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
               ((uint32_t)p[2] << 8) | p[3];
}

static void check_addrs(const uint8_t *data, size_t size) {
        uint8_t a6[16];
        uint32_t v4;
        kb_ssrf_class_t c4;
        struct sockaddr_in6 s6[16];
        struct sockaddr_in s4[16];
        struct addrinfo ai[16];
        char resolve[4096], err[256];
        size_t n = 0, i;
        int allow, rc, all_ok;

        if (size < 4)
                return;
        v4 = be32(data);
        c4 = kb_ssrf_classify_v4(v4);
        /* ::ffff:a.b.c.d, ::ffff:0:a.b.c.d, 64:ff9b::a.b.c.d, 2002:AABB:CCDD:: */
        memset(a6, 0, 16);
        a6[10] = a6[11] = 0xff;
        memcpy(a6 + 12, data, 4);
        CHECK(kb_ssrf_classify_v6(a6) == c4);
        memset(a6, 0, 16);
        a6[8] = a6[9] = 0xff;
        memcpy(a6 + 12, data, 4);
        CHECK(kb_ssrf_classify_v6(a6) == c4);
        memset(a6, 0, 16);
        a6[1] = 0x64;
        a6[2] = 0xff;
        a6[3] = 0x9b;
        memcpy(a6 + 12, data, 4);
        CHECK(kb_ssrf_classify_v6(a6) == c4);
        memset(a6, 0, 16);
        a6[0] = 0x20;
        a6[1] = 0x02;
        memcpy(a6 + 2, data, 4);
        if (size >= 16)
                memcpy(a6 + 6, data + 6, 10); /* any subnet / interface */
        CHECK(kb_ssrf_classify_v6(a6) == c4);

        /* an address list: a tag byte (bit 0: IPv6), then 4 or 16 bytes */
        memset(ai, 0, sizeof(ai));
        for (i = 0; i < size && n < 16;) {
                int six = data[i] & 1;
                size_t need = six ? 16 : 4;
                if (i + 1 + need > size)
                        break;
                if (six) {
                        memset(&s6[n], 0, sizeof(s6[n]));
                        s6[n].sin6_family = AF_INET6;
                        memcpy(&s6[n].sin6_addr, data + i + 1, 16);
                        ai[n].ai_family = AF_INET6;
                        ai[n].ai_addr = (struct sockaddr *)&s6[n];
                } else {
                        memset(&s4[n], 0, sizeof(s4[n]));
                        s4[n].sin_family = AF_INET;
                        memcpy(&s4[n].sin_addr, data + i + 1, 4);
                        ai[n].ai_family = AF_INET;
                        ai[n].ai_addr = (struct sockaddr *)&s4[n];
                }
                i += 1 + need;
                n++;
        }
        for (i = 0; i < n; i++)
                ai[i].ai_next = i + 1 < n ? &ai[i + 1] : NULL;
        for (allow = 0; allow <= 1; allow++) {
                all_ok = n > 0;
                for (i = 0; i < n; i++)
                        if (!kb_ssrf_allowed(kb_ssrf_classify(ai[i].ai_addr),
                                             allow))
                                all_ok = 0;
                rc = kb_ssrf_check_addrs("h", 443, n ? ai : NULL, allow,
                                         resolve, sizeof(resolve), err,
                                         sizeof(err));
                if (rc == 0)
                        CHECK(all_ok);
                else
                        CHECK(!all_ok || rc == -2);
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        char *s = malloc(size + 1);
        if (!s)
                return 0;
        memcpy(s, data, size);
        s[size] = '\0';
        check_url(s);
        free(s);
        check_addrs(data, size);
        return 0;
}
