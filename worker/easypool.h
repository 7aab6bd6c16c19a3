/* easypool: libcurl easy handles kept for the next model call instead of
 * a curl_easy_init/curl_easy_cleanup per item (~13k instructions per item
 * at 0 ms, issue 20). A handle comes back reset to libcurl's defaults
 * (curl_easy_reset keeps its buffers, drops every option). At most max_idle
 * handles wait; more are cleaned up. Not thread-safe (the loop's thread). */
#ifndef KB_EASYPOOL_H
#define KB_EASYPOOL_H

#include <curl/curl.h>
#include <stddef.h>

typedef struct kb_easypool_s kb_easypool_t;

/* NULL on allocation failure. */
kb_easypool_t *kb_easypool_new(size_t max_idle);
/* Cleans up the idle handles (the ones given out are the caller's). NULL
 * is a no-op. */
void kb_easypool_destroy(kb_easypool_t *ep);

/* A handle with default options, an idle one when there is one; caller
 * owns it (kb_easypool_put or curl_easy_cleanup). NULL when libcurl cannot
 * allocate one. ep NULL: curl_easy_init. */
CURL *kb_easypool_get(kb_easypool_t *ep);
/* Takes the handle back (must not be in a multi handle); NULL is a no-op.
 * ep NULL: curl_easy_cleanup. */
void kb_easypool_put(kb_easypool_t *ep, CURL *e);

#endif
