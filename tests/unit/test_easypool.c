/* easypool: easy handles reused across model calls, reset in between. */
#include <criterion/criterion.h>

#include "easypool.h"

Test(easypool, reuses_reset_handles) {
        kb_easypool_t *ep = kb_easypool_new(2);
        CURL *a, *b, *c;
        char *priv = (char *)"set";
        cr_assert(ep);
        a = kb_easypool_get(ep);
        cr_assert(a);
        curl_easy_setopt(a, CURLOPT_PRIVATE, priv);
        kb_easypool_put(ep, a);
        b = kb_easypool_get(ep);
        cr_expect_eq(b, a, "the idle handle is given out again");
        priv = NULL;
        curl_easy_getinfo(b, CURLINFO_PRIVATE, &priv);
        cr_expect_null(priv, "options are reset");
        c = kb_easypool_get(ep);
        cr_expect(c && c != b, "a new one when none is idle");
        kb_easypool_put(ep, b);
        kb_easypool_put(ep, c);
        kb_easypool_put(ep, curl_easy_init()); /* over max_idle: cleaned up */
        kb_easypool_put(ep, NULL);
        kb_easypool_destroy(ep);
        kb_easypool_destroy(NULL);
}

Test(easypool, without_a_pool) {
        CURL *e = kb_easypool_get(NULL);
        cr_assert(e);
        kb_easypool_put(NULL, e);
}
