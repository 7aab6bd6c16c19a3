/* The webhook SSRF guard: address classes, what allow_private opens, URL
 * checks and the CURLOPT_RESOLVE pinning entry. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>

#include "ssrf.h"

/* Classifies a numeric address through a real sockaddr. */
static kb_ssrf_class_t classify(const char *txt) {
        struct addrinfo hints, *ai = NULL;
        kb_ssrf_class_t cls;
        memset(&hints, 0, sizeof(hints));
        hints.ai_flags = AI_NUMERICHOST;
        hints.ai_socktype = SOCK_STREAM;
        cr_assert_eq(getaddrinfo(txt, NULL, &hints, &ai), 0, "%s", txt);
        cls = kb_ssrf_classify(ai->ai_addr);
        freeaddrinfo(ai);
        return cls;
}

static const struct {
        const char *addr;
        kb_ssrf_class_t cls;
} addrs[] = {
        /* IPv4 */
        {"8.8.8.8", KB_SSRF_PUBLIC},
        {"1.1.1.1", KB_SSRF_PUBLIC},
        {"93.184.216.34", KB_SSRF_PUBLIC},
        {"0.0.0.0", KB_SSRF_UNSPECIFIED},
        {"0.1.2.3", KB_SSRF_UNSPECIFIED},
        {"10.0.0.1", KB_SSRF_PRIVATE},
        {"10.255.255.255", KB_SSRF_PRIVATE},
        {"11.0.0.1", KB_SSRF_PUBLIC},
        {"100.64.0.1", KB_SSRF_CGNAT},
        {"100.127.255.254", KB_SSRF_CGNAT},
        {"100.128.0.1", KB_SSRF_PUBLIC},
        {"100.63.255.255", KB_SSRF_PUBLIC},
        {"127.0.0.1", KB_SSRF_LOOPBACK},
        {"127.255.0.9", KB_SSRF_LOOPBACK},
        {"169.254.0.1", KB_SSRF_LINK_LOCAL},
        {"169.254.169.254", KB_SSRF_METADATA},
        {"169.254.170.2", KB_SSRF_METADATA},
        {"100.100.100.200", KB_SSRF_METADATA},
        {"192.0.0.192", KB_SSRF_METADATA},
        {"172.16.0.1", KB_SSRF_PRIVATE},
        {"172.31.255.255", KB_SSRF_PRIVATE},
        {"172.32.0.1", KB_SSRF_PUBLIC},
        {"172.15.255.255", KB_SSRF_PUBLIC},
        {"192.0.0.1", KB_SSRF_RESERVED},
        {"192.0.2.10", KB_SSRF_RESERVED},
        {"192.168.1.1", KB_SSRF_PRIVATE},
        {"198.18.0.1", KB_SSRF_PRIVATE},
        {"198.19.255.255", KB_SSRF_PRIVATE},
        {"198.20.0.1", KB_SSRF_PUBLIC},
        {"224.0.0.1", KB_SSRF_MULTICAST},
        {"239.255.255.250", KB_SSRF_MULTICAST},
        {"240.0.0.1", KB_SSRF_RESERVED},
        {"255.255.255.254", KB_SSRF_RESERVED},
        {"255.255.255.255", KB_SSRF_BROADCAST},
        /* IPv6 */
        {"2606:4700:4700::1111", KB_SSRF_PUBLIC},
        {"::", KB_SSRF_UNSPECIFIED},
        {"::1", KB_SSRF_LOOPBACK},
        {"fc00::1", KB_SSRF_PRIVATE},
        {"fd12:3456::1", KB_SSRF_PRIVATE},
        {"fe80::1", KB_SSRF_LINK_LOCAL},
        {"febf::1", KB_SSRF_LINK_LOCAL},
        {"fec0::1", KB_SSRF_PRIVATE},
        {"ff02::1", KB_SSRF_MULTICAST},
        {"ff05::1:3", KB_SSRF_MULTICAST},
        {"fd00:ec2::254", KB_SSRF_METADATA},
        {"fd00:ec2::23", KB_SSRF_METADATA},
        /* v4-mapped and v4-embedding prefixes: the embedded address decides */
        {"::ffff:127.0.0.1", KB_SSRF_LOOPBACK},
        {"::ffff:10.1.2.3", KB_SSRF_PRIVATE},
        {"::ffff:169.254.169.254", KB_SSRF_METADATA},
        {"::ffff:8.8.8.8", KB_SSRF_PUBLIC},
        {"::ffff:0:127.0.0.1", KB_SSRF_LOOPBACK},
        {"64:ff9b::127.0.0.1", KB_SSRF_LOOPBACK},
        {"64:ff9b::a9fe:a9fe", KB_SSRF_METADATA},
        {"64:ff9b::8.8.8.8", KB_SSRF_PUBLIC},
        {"64:ff9b:1::1", KB_SSRF_PRIVATE},
        {"2002:7f00:1::", KB_SSRF_LOOPBACK},
        {"2002:c0a8:101::1", KB_SSRF_PRIVATE},
        {"2002:0808:0808::1", KB_SSRF_PUBLIC},
        {"::127.0.0.1", KB_SSRF_RESERVED},
        {"2001:db8::1", KB_SSRF_RESERVED},
        {"2001:0:4136:e378::1", KB_SSRF_RESERVED},
        {"100::1", KB_SSRF_RESERVED},
};

Test(ssrf, address_classes_table) {
        size_t i;
        for (i = 0; i < sizeof(addrs) / sizeof(*addrs); i++) {
                kb_ssrf_class_t got = classify(addrs[i].addr);
                cr_expect_eq(got, addrs[i].cls, "%s: got %s, want %s",
                             addrs[i].addr, kb_ssrf_class_str(got),
                             kb_ssrf_class_str(addrs[i].cls));
        }
}

Test(ssrf, every_forbidden_class_refused_by_default) {
        int c;
        for (c = 0; c < KB_SSRF__CNT; c++)
                cr_expect_eq(kb_ssrf_allowed((kb_ssrf_class_t)c, 0),
                             c == KB_SSRF_PUBLIC, "%s",
                             kb_ssrf_class_str((kb_ssrf_class_t)c));
}

Test(ssrf, allow_private_opens_only_private_kinds) {
        static const struct {
                kb_ssrf_class_t cls;
                int allowed;
        } c[] = {
                {KB_SSRF_PUBLIC, 1},    {KB_SSRF_LOOPBACK, 1},
                {KB_SSRF_PRIVATE, 1},   {KB_SSRF_LINK_LOCAL, 1},
                {KB_SSRF_CGNAT, 1},     {KB_SSRF_UNSPECIFIED, 0},
                {KB_SSRF_MULTICAST, 0}, {KB_SSRF_BROADCAST, 0},
                {KB_SSRF_RESERVED, 0},  {KB_SSRF_METADATA, 0},
        };
        size_t i;
        cr_assert_eq(sizeof(c) / sizeof(*c), KB_SSRF__CNT);
        for (i = 0; i < sizeof(c) / sizeof(*c); i++)
                cr_expect_eq(kb_ssrf_allowed(c[i].cls, 1), c[i].allowed, "%s",
                             kb_ssrf_class_str(c[i].cls));
}

Test(ssrf, class_names) {
        cr_expect_str_eq(kb_ssrf_class_str(KB_SSRF_METADATA), "metadata");
        cr_expect_str_eq(kb_ssrf_class_str(KB_SSRF_LINK_LOCAL), "link-local");
        cr_expect_str_eq(kb_ssrf_class_str(KB_SSRF__CNT), "unknown");
}

Test(ssrf, unknown_family_is_refused) {
        struct sockaddr sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_family = AF_UNIX;
        cr_expect_eq(kb_ssrf_classify(&sa), KB_SSRF_RESERVED);
        cr_expect_eq(kb_ssrf_classify(NULL), KB_SSRF_RESERVED);
}

Test(ssrf, urls_table) {
        static const struct {
                const char *url;
                kb_ssrf_url_err_t want;
                const char *host;
                int port, https, literal;
        } c[] = {
                {"https://hooks.example.com/kbatch?x=1", KB_SSRF_URL_OK,
                 "hooks.example.com", 443, 1, 0},
                {"http://hooks.example.com:8080/a", KB_SSRF_URL_OK,
                 "hooks.example.com", 8080, 0, 0},
                {"HTTPS://Hooks.Example.com/", KB_SSRF_URL_OK, NULL, 443, 1, 0},
                {"http://127.0.0.1:9000/hook", KB_SSRF_URL_OK, "127.0.0.1",
                 9000, 0, 1},
                {"http://[::1]:9000/hook", KB_SSRF_URL_OK, "::1", 9000, 0, 1},
                {"http://my_host.internal/x", KB_SSRF_URL_OK,
                 "my_host.internal", 80, 0, 0},
                /* odd IPv4 spellings are normalized: the literal is checked */
                {"http://0x7f.1/", KB_SSRF_URL_OK, "127.0.0.1", 80, 0, 1},
                {"http://2130706433:81/", KB_SSRF_URL_OK, "127.0.0.1", 81, 0,
                 1},
                {"http://[::ffff:127.0.0.1]/", KB_SSRF_URL_OK,
                 "::ffff:127.0.0.1", 80, 0, 1},
                /* refused */
                {"", KB_SSRF_URL_MALFORMED, NULL, 0, 0, 0},
                {"ftp://example.com/", KB_SSRF_URL_SCHEME, NULL, 0, 0, 0},
                {"file:///etc/passwd", KB_SSRF_URL_SCHEME, NULL, 0, 0, 0},
                {"gopher://example.com/", KB_SSRF_URL_SCHEME, NULL, 0, 0, 0},
                {"example.com/hook", KB_SSRF_URL_SCHEME, NULL, 0, 0, 0},
                {"//example.com/hook", KB_SSRF_URL_SCHEME, NULL, 0, 0, 0},
                {"http://user:pw@example.com/", KB_SSRF_URL_USERINFO, NULL, 0,
                 0, 0},
                {"http://user@example.com/", KB_SSRF_URL_USERINFO, NULL, 0, 0,
                 0},
                {"http://:pw@example.com/", KB_SSRF_URL_USERINFO, NULL, 0, 0,
                 0},
                {"http://example.com@127.0.0.1/", KB_SSRF_URL_USERINFO, NULL, 0,
                 0, 0},
                {"http://example.com/a b", KB_SSRF_URL_CONTROL, NULL, 0, 0, 0},
                {"http://example.com/\r\nX-Evil: 1", KB_SSRF_URL_CONTROL, NULL,
                 0, 0, 0},
                {"http://exam\tple.com/", KB_SSRF_URL_CONTROL, NULL, 0, 0, 0},
                {"http://example.com/\x7f", KB_SSRF_URL_CONTROL, NULL, 0, 0, 0},
                {"http://ex\x01"
                 "ample.com/",
                 KB_SSRF_URL_CONTROL, NULL, 0, 0, 0},
                {"http://", KB_SSRF_URL_MALFORMED, NULL, 0, 0, 0},
                {"http://:80/", KB_SSRF_URL_MALFORMED, NULL, 0, 0, 0},
                {"http://[fe80::1%25eth0]/", KB_SSRF_URL_HOST, NULL, 0, 0, 0},
                {"http://ex\xc3\xa4mple.com/", KB_SSRF_URL_HOST, NULL, 0, 0, 0},
                {"http://example.com:99999/", KB_SSRF_URL_MALFORMED, NULL, 0, 0,
                 0},
        };
        size_t i;
        for (i = 0; i < sizeof(c) / sizeof(*c); i++) {
                kb_ssrf_url_t u;
                char err[256] = "";
                kb_ssrf_url_err_t r =
                        kb_ssrf_url_parse(c[i].url, &u, err, sizeof(err));
                cr_expect_eq(r, c[i].want, "case %zu (%s): got %d (%s)", i,
                             c[i].url, r, err);
                if (r == KB_SSRF_URL_OK && c[i].want == KB_SSRF_URL_OK) {
                        if (c[i].host)
                                cr_expect_str_eq(u.su_host, c[i].host,
                                                 "case %zu", i);
                        cr_expect_eq(u.su_port, c[i].port, "case %zu", i);
                        cr_expect_eq(u.su_https, c[i].https, "case %zu", i);
                        cr_expect_eq(u.su_literal, c[i].literal, "case %zu", i);
                        cr_expect(u.su_url && !strncmp(u.su_url, "http", 4),
                                  "case %zu", i);
                } else {
                        cr_expect_null(u.su_url, "case %zu", i);
                        cr_expect(err[0], "case %zu: no reason", i);
                        /* The reason never repeats the URL (it may carry a
                         * token). */
                        cr_expect_null(strstr(err, "example.com"), "case %zu",
                                       i);
                }
                kb_ssrf_url_clear(&u);
        }
}

Test(ssrf, origin_for_logs_has_no_path_or_query) {
        kb_ssrf_url_t u;
        char err[256];
        cr_assert_eq(
                kb_ssrf_url_parse(
                        "https://hooks.slack.example/services/T0/B0/SECRET?t=1",
                        &u, err, sizeof(err)),
                KB_SSRF_URL_OK, "%s", err);
        cr_expect_str_eq(u.su_origin, "https://hooks.slack.example:443");
        kb_ssrf_url_clear(&u);
        cr_assert_eq(kb_ssrf_url_parse("http://[2001:4860::8888]:81/x", &u, err,
                                       sizeof(err)),
                     KB_SSRF_URL_OK, "%s", err);
        cr_expect_str_eq(u.su_origin, "http://[2001:4860::8888]:81");
        kb_ssrf_url_clear(&u);
        kb_ssrf_url_clear(NULL);
}

Test(ssrf, overlong_url_refused) {
        char *url = malloc(KB_SSRF_URL_MAX + 100);
        kb_ssrf_url_t u;
        char err[256];
        strcpy(url, "https://example.com/");
        memset(url + 20, 'a', KB_SSRF_URL_MAX);
        url[KB_SSRF_URL_MAX + 20] = '\0';
        cr_expect_eq(kb_ssrf_url_parse(url, &u, err, sizeof(err)),
                     KB_SSRF_URL_MALFORMED);
        free(url);
}

/* A getaddrinfo list of numeric addresses, as a resolver would return. */
static struct addrinfo *list_of(const char *const *txt) {
        struct addrinfo *head = NULL, **tail = &head;
        for (; *txt; txt++) {
                struct addrinfo hints, *ai;
                memset(&hints, 0, sizeof(hints));
                hints.ai_flags = AI_NUMERICHOST;
                hints.ai_socktype = SOCK_STREAM;
                cr_assert_eq(getaddrinfo(*txt, NULL, &hints, &ai), 0);
                *tail = ai;
                while (*tail)
                        tail = &(*tail)->ai_next;
        }
        return head;
}

Test(ssrf, resolved_addresses_any_forbidden_refuses) {
        static const char *const mixed[] = {"8.8.8.8", "10.0.0.5", NULL};
        static const char *const rebinding[] = {"93.184.216.34",
                                                "::ffff:127.0.0.1", NULL};
        static const char *const meta[] = {"169.254.169.254", NULL};
        struct addrinfo *ai;
        char res[256], err[256];

        ai = list_of(mixed);
        cr_expect_eq(kb_ssrf_check_addrs("h.example", 443, ai, 0, res,
                                         sizeof(res), err, sizeof(err)),
                     -1);
        cr_expect_str_eq(err, "resolves to 10.0.0.5 (private)");
        /* allow_private lets it through, pinned to both */
        cr_expect_eq(kb_ssrf_check_addrs("h.example", 443, ai, 1, res,
                                         sizeof(res), err, sizeof(err)),
                     0, "%s", err);
        cr_expect_str_eq(res, "h.example:443:8.8.8.8,10.0.0.5");
        freeaddrinfo(ai);

        ai = list_of(rebinding);
        cr_expect_eq(kb_ssrf_check_addrs("h.example", 80, ai, 0, res,
                                         sizeof(res), err, sizeof(err)),
                     -1);
        cr_expect_str_eq(err, "resolves to ::ffff:127.0.0.1 (loopback)");
        freeaddrinfo(ai);

        ai = list_of(meta);
        cr_expect_eq(kb_ssrf_check_addrs("h.example", 80, ai, 1, res,
                                         sizeof(res), err, sizeof(err)),
                     -1, "metadata stays refused with allow_private");
        freeaddrinfo(ai);
}

Test(ssrf, resolve_entry_pins_every_checked_address) {
        static const char *const good[] = {"93.184.216.34", "2606:2800::1",
                                           "93.184.216.34", NULL};
        struct addrinfo *ai = list_of(good);
        char res[256], small[16], err[256];
        cr_expect_eq(kb_ssrf_check_addrs("example.com", 8443, ai, 0, res,
                                         sizeof(res), err, sizeof(err)),
                     0, "%s", err);
        cr_expect_str_eq(res, "example.com:8443:93.184.216.34,[2606:2800::1]");
        cr_expect_eq(kb_ssrf_check_addrs("example.com", 8443, ai, 0, NULL, 0,
                                         err, sizeof(err)),
                     0);
        cr_expect_eq(kb_ssrf_check_addrs("example.com", 8443, ai, 0, small,
                                         sizeof(small), err, sizeof(err)),
                     -2);
        freeaddrinfo(ai);
        cr_expect_eq(kb_ssrf_check_addrs("example.com", 80, NULL, 0, res,
                                         sizeof(res), err, sizeof(err)),
                     -2);
        cr_expect_str_eq(err, "resolves to no address");
}
