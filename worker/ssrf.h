/* ssrf: the guard on webhook URLs and the addresses they resolve to
 * (SPEC §8, docs/webhooks.md "What is refused").
 *
 * A callback_url comes from whoever publishes items, so the notifier must
 * not let it reach what only the worker's network can reach: loopback,
 * private networks, link-local and cloud metadata endpoints. Three checks,
 * all pure (no I/O; curl_url() only parses):
 *   1. the URL: http or https only, no user info, no control characters or
 *      whitespace, a host made of [A-Za-z0-9.-_] or an IP literal;
 *   2. every address the host resolves to is classified; one forbidden
 *      address refuses the URL (the notifier resolves once, then pins the
 *      request to exactly the checked addresses with CURLOPT_RESOLVE);
 *   3. the address libcurl actually connects to is classified again (the
 *      notifier's CURLOPT_OPENSOCKETFUNCTION), a belt to the pinning's
 *      braces.
 *
 * Classes: loopback, private, link-local and CGNAT are allowed only with
 * notifier.allow_private (the tests' receiver, in-cluster receivers);
 * unspecified, multicast, broadcast, reserved and cloud metadata addresses
 * are refused always (no webhook receiver lives there). IPv6 addresses that
 * embed an IPv4 one (v4-mapped ::ffff:0:0/96, SIIT ::ffff:0:0:0/96, NAT64
 * 64:ff9b::/96, 6to4 2002::/16) are classified by the embedded address. */
#ifndef KB_SSRF_H
#define KB_SSRF_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct addrinfo;

typedef enum {
        KB_SSRF_PUBLIC = 0,  /* globally routable: allowed */
        KB_SSRF_LOOPBACK,    /* 127/8, ::1 */
        KB_SSRF_PRIVATE,     /* 10/8, 172.16/12, 192.168/16, 198.18/15,
                              * fc00::/7, fec0::/10, 64:ff9b:1::/48 */
        KB_SSRF_LINK_LOCAL,  /* 169.254/16, fe80::/10 */
        KB_SSRF_CGNAT,       /* 100.64/10 */
        KB_SSRF_UNSPECIFIED, /* 0/8, :: */
        KB_SSRF_MULTICAST,   /* 224/4, ff00::/8 */
        KB_SSRF_BROADCAST,   /* 255.255.255.255 */
        KB_SSRF_RESERVED,    /* 240/4, 192.0.0/24, documentation nets,
                              * ::/96 (v4-compatible), 100::/64,
                              * 2001::/32 (Teredo), 2001:db8::/32 */
        KB_SSRF_METADATA,    /* cloud metadata: 169.254.169.254,
                              * 169.254.170.2, 169.254.170.23,
                              * 100.100.100.200, 192.0.0.192,
                              * fd00:ec2::254, fd00:ec2::23 */
        KB_SSRF__CNT
} kb_ssrf_class_t;

/* "public", "loopback", "private", "link-local", "cgnat", "unspecified",
 * "multicast", "broadcast", "reserved", "metadata" (static strings). */
const char *kb_ssrf_class_str(kb_ssrf_class_t cls);

/* Classifies an IPv4 address given in host byte order. */
kb_ssrf_class_t kb_ssrf_classify_v4(uint32_t addr);

/* Classifies an IPv6 address (16 bytes, network order). */
kb_ssrf_class_t kb_ssrf_classify_v6(const uint8_t addr[16]);

/* Classifies an AF_INET or AF_INET6 socket address; any other family is
 * KB_SSRF_RESERVED. sa is borrowed for the call. */
kb_ssrf_class_t kb_ssrf_classify(const struct sockaddr *sa);

/* 1 when a webhook may go to an address of this class: public always;
 * loopback, private, link-local and CGNAT when allow_private; never the
 * others. */
int kb_ssrf_allowed(kb_ssrf_class_t cls, int allow_private);

typedef enum {
        KB_SSRF_URL_OK = 0,
        KB_SSRF_URL_MALFORMED, /* empty, too long, or libcurl cannot
                                * parse it */
        KB_SSRF_URL_CONTROL,   /* a control character, whitespace or DEL */
        KB_SSRF_URL_SCHEME,    /* not http or https */
        KB_SSRF_URL_USERINFO,  /* user, password or login options */
        KB_SSRF_URL_HOST,      /* missing host, or one with characters
                                * outside [A-Za-z0-9.-_] (use punycode),
                                * or an IPv6 zone id */
} kb_ssrf_url_err_t;

/* A URL that passed kb_ssrf_url_parse. Fields prefixed su_. */
typedef struct kb_ssrf_url_s {
        char *su_url;        /* owned: the normalized URL to request */
        char *su_host;       /* owned: the host, IPv6 without brackets */
        char su_origin[300]; /* "scheme://host:port" for logs (no path or
                              * query: those may carry tokens) */
        int su_port;         /* explicit, or 80/443 */
        int su_https;
        int su_literal; /* the host is an IP literal (su_addr) */
        struct sockaddr_storage su_addr;
} kb_ssrf_url_t;

/* Longest callback_url accepted. */
#define KB_SSRF_URL_MAX 4096

/* Parses and checks a callback URL (borrowed). On KB_SSRF_URL_OK fills *u
 * (free its strings with kb_ssrf_url_clear); otherwise *u is zeroed and
 * errstr says why (never repeating the URL, which may carry secrets). The
 * address class of a literal host is not checked here: see
 * kb_ssrf_check_addrs. */
kb_ssrf_url_err_t kb_ssrf_url_parse(const char *url, kb_ssrf_url_t *u,
                                    char *errstr, size_t errstr_size);

/* Frees what kb_ssrf_url_parse put in *u and zeroes it; NULL-safe. */
void kb_ssrf_url_clear(kb_ssrf_url_t *u);

/* Checks the addresses a host resolved to (a getaddrinfo list, borrowed;
 * entries of other families are ignored). Returns 0 when there is at least
 * one address and every one is allowed; then, when resolve is not NULL,
 * writes the CURLOPT_RESOLVE entry "host:port:addr[,addr...]" (IPv6 in
 * brackets, duplicates dropped, at most 32 addresses) into resolve
 * (resolve_size bytes). Returns -1 (refused: never retry) with errstr naming
 * the first forbidden address and its class ("resolves to 127.0.0.1
 * (loopback)"); -2 when there is no usable address or the entry does not
 * fit resolve_size (errstr says which). */
int kb_ssrf_check_addrs(const char *host, int port, const struct addrinfo *ai,
                        int allow_private, char *resolve, size_t resolve_size,
                        char *errstr, size_t errstr_size);

#endif
