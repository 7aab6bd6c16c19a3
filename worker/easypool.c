/* easypool: see easypool.h. */
#include "easypool.h"

#include <stdlib.h>

struct kb_easypool_s {
        CURL **ep_idle;
        size_t ep_cnt, ep_max;
};

kb_easypool_t *kb_easypool_new(size_t max_idle) {
        kb_easypool_t *ep = calloc(1, sizeof(*ep));
        if (!ep)
                return NULL;
        ep->ep_max = max_idle;
        if (max_idle && !(ep->ep_idle = calloc(max_idle, sizeof(CURL *)))) {
                free(ep);
                return NULL;
        }
        return ep;
}

void kb_easypool_destroy(kb_easypool_t *ep) {
        if (!ep)
                return;
        while (ep->ep_cnt)
                curl_easy_cleanup(ep->ep_idle[--ep->ep_cnt]);
        free(ep->ep_idle);
        free(ep);
}

CURL *kb_easypool_get(kb_easypool_t *ep) {
        if (ep && ep->ep_cnt)
                return ep->ep_idle[--ep->ep_cnt];
        return curl_easy_init();
}

void kb_easypool_put(kb_easypool_t *ep, CURL *e) {
        if (!e)
                return;
        if (!ep || ep->ep_cnt >= ep->ep_max) {
                curl_easy_cleanup(e);
                return;
        }
        curl_easy_reset(e);
        ep->ep_idle[ep->ep_cnt++] = e;
}
