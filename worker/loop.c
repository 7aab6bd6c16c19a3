/* loop: see loop.h. */
#include "loop.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

#define KB_LOOP_MAX_FDS 16

struct kb_loop_s {
        CURLM *lp_multi;
        int lp_rfds[KB_LOOP_MAX_FDS]; /* read ends we poll and drain */
        int lp_wfds[KB_LOOP_MAX_FDS]; /* their write ends */
        int lp_nfds;
        int lp_running;               /* transfers in the multi handle */
};

volatile sig_atomic_t kb_loop_stop_requested = 0;
static int sig_wfd = -1;

int64_t kb_now_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t kb_wall_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

double kb_wall_ms_frac(void) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

kb_loop_t *kb_loop_new(char *errstr, size_t errstr_size) {
        kb_loop_t *lp = calloc(1, sizeof(*lp));
        if (!lp) {
                snprintf(errstr, errstr_size, "out of memory");
                return NULL;
        }
        if (!(lp->lp_multi = curl_multi_init())) {
                snprintf(errstr, errstr_size, "curl_multi_init failed");
                free(lp);
                return NULL;
        }
        /* Reuse connections; HTTP/2 multiplexing when the server offers it. */
        curl_multi_setopt(lp->lp_multi, CURLMOPT_PIPELINING,
                          CURLPIPE_MULTIPLEX);
        curl_multi_setopt(lp->lp_multi, CURLMOPT_MAXCONNECTS, 4096L);
        return lp;
}

void kb_loop_destroy(kb_loop_t *lp) {
        int i;
        if (!lp)
                return;
        curl_multi_cleanup(lp->lp_multi);
        for (i = 0; i < lp->lp_nfds; i++) {
                if (lp->lp_wfds[i] == sig_wfd)
                        sig_wfd = -1;
                close(lp->lp_rfds[i]);
                close(lp->lp_wfds[i]);
        }
        free(lp);
}

CURLM *kb_loop_multi(kb_loop_t *lp) { return lp->lp_multi; }

int kb_loop_wake_pipe(kb_loop_t *lp) {
        int p[2];
        if (lp->lp_nfds >= KB_LOOP_MAX_FDS)
                return -1;
        if (pipe2(p, O_NONBLOCK | O_CLOEXEC) != 0)
                return -1;
        lp->lp_rfds[lp->lp_nfds] = p[0];
        lp->lp_wfds[lp->lp_nfds] = p[1];
        lp->lp_nfds++;
        return p[1];
}

int kb_loop_add(kb_loop_t *lp, CURL *easy) {
        if (curl_multi_add_handle(lp->lp_multi, easy) != CURLM_OK)
                return -1;
        lp->lp_running++;
        return 0;
}

void kb_loop_remove(kb_loop_t *lp, CURL *easy) {
        if (curl_multi_remove_handle(lp->lp_multi, easy) == CURLM_OK)
                lp->lp_running--;
}

int kb_loop_transfers(const kb_loop_t *lp) { return lp->lp_running; }

static void sig_handler(int sig) {
        int saved = errno;
        kb_loop_stop_requested = 1;
        if (sig_wfd >= 0) {
                ssize_t r = write(sig_wfd, "s", 1);
                (void)r;
        }
        errno = saved;
}

void kb_loop_signals(kb_loop_t *lp) {
        struct sigaction sa;
        if (sig_wfd < 0)
                sig_wfd = kb_loop_wake_pipe(lp);
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = sig_handler;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
        signal(SIGPIPE, SIG_IGN);
}

int kb_loop_drive(kb_loop_t *lp, int wait_ms) {
        struct curl_waitfd wfds[KB_LOOP_MAX_FDS];
        int i, numfds = 0, still = 0;
        CURLMcode mc;
        CURLMsg *m;
        int left;

        for (i = 0; i < lp->lp_nfds; i++) {
                wfds[i].fd = lp->lp_rfds[i];
                wfds[i].events = CURL_WAIT_POLLIN;
                wfds[i].revents = 0;
        }
        if (wait_ms < 0)
                wait_ms = 0;
        mc = curl_multi_poll(lp->lp_multi, wfds, (unsigned)lp->lp_nfds,
                             wait_ms, &numfds);
        if (mc != CURLM_OK) {
                kb_log(KB_LOG_ERROR, "loop", "curl_multi_poll: %s",
                       curl_multi_strerror(mc));
                return -1;
        }
        for (i = 0; i < lp->lp_nfds; i++) {
                if (wfds[i].revents) {
                        char buf[256];
                        while (read(lp->lp_rfds[i], buf, sizeof(buf)) > 0)
                                ;
                }
        }
        mc = curl_multi_perform(lp->lp_multi, &still);
        if (mc != CURLM_OK) {
                kb_log(KB_LOG_ERROR, "loop", "curl_multi_perform: %s",
                       curl_multi_strerror(mc));
                return -1;
        }
        while ((m = curl_multi_info_read(lp->lp_multi, &left))) {
                kb_xfer_t *xf = NULL;
                CURL *easy;
                CURLcode cc;
                if (m->msg != CURLMSG_DONE)
                        continue;
                easy = m->easy_handle;
                cc = m->data.result;
                curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&xf);
                curl_multi_remove_handle(lp->lp_multi, easy);
                lp->lp_running--;
                if (xf && xf->xf_done)
                        xf->xf_done(xf, cc);
        }
        return 0;
}
