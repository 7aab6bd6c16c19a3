/* A libmicrohttpd server on 127.0.0.1 (a thread per connection, any free
 * port) for the unit tests that make real transfers. Header-only: included
 * by test_loop.c and test_http_req.c. */
#ifndef KB_TEST_HTTPD_H
#define KB_TEST_HTTPD_H

#include <criterion/criterion.h>
#include <microhttpd.h>
#include <stdio.h>

/* Starts the server with handler h; base gets "http://127.0.0.1:<port>". */
static inline struct MHD_Daemon *test_httpd_start(MHD_AccessHandlerCallback h,
                                                  char *base, size_t size) {
        const union MHD_DaemonInfo *di;
        struct MHD_Daemon *d = MHD_start_daemon(
            MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                MHD_USE_ERROR_LOG,
            0, NULL, NULL, h, NULL, MHD_OPTION_CONNECTION_LIMIT, 2000u,
            MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u, MHD_OPTION_END);
        cr_assert(d);
        di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
        snprintf(base, size, "http://127.0.0.1:%u", di->port);
        return d;
}

#endif
