/* loop: see loop.h. */
#include "loop.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

#define KB_LOOP_MAX_FDS 16
#define KB_LOOP_EVENTS  256
/* libcurl looks for a connection to reuse by walking every connection to
 * the host (ConnectionExists): with thousands of HTTP/1.1 transfers in
 * flight to one model API that walk was a third of the loop's CPU. So
 * transfers are spread over several multi handles ("shards"), each with
 * its own connection cache, a new one opened when all have this many. */
#define KB_LOOP_SHARD_XFERS 256
#define KB_LOOP_MAX_SHARDS  64
/* epoll data: a socket is (shard << 32 | fd); a wake-up pipe its index with
 * this bit set */
#define KB_LOOP_PIPE_TAG (1ULL << 63)

typedef struct kb_shard_s {
        kb_loop_t *sh_loop;
        CURLM *sh_multi;
        int sh_idx;
        int sh_running;        /* transfers in this multi handle */
        int64_t sh_timer_at;   /* libcurl's timeout (mono ms), -1: none */
} kb_shard_t;

struct kb_loop_s {
        int lp_epfd;
        int lp_rfds[KB_LOOP_MAX_FDS]; /* read ends we poll and drain */
        int lp_wfds[KB_LOOP_MAX_FDS]; /* their write ends */
        int lp_nfds;
        int lp_running;               /* transfers in all shards */
        kb_shard_t lp_shards[KB_LOOP_MAX_SHARDS];
        int lp_nshards;
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

/* CURLMOPT_SOCKETFUNCTION: libcurl tells which sockets to watch, for what. */
static int socket_cb(CURL *easy, curl_socket_t fd, int what, void *arg,
                     void *sockp) {
        kb_shard_t *sh = arg;
        int epfd = sh->sh_loop->lp_epfd;
        struct epoll_event ev;
        (void)easy;
        (void)sockp;
        if (what == CURL_POLL_REMOVE) {
                /* ENOENT/EBADF: already gone with its close() */
                epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
                return 0;
        }
        memset(&ev, 0, sizeof(ev));
        ev.events = (what & CURL_POLL_IN ? EPOLLIN : 0) |
                    (what & CURL_POLL_OUT ? EPOLLOUT : 0);
        ev.data.u64 = (uint64_t)sh->sh_idx << 32 | (uint32_t)fd;
        if (epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev) != 0 &&
            (errno != ENOENT || epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0)) {
                kb_log(KB_LOG_ERROR, "loop", "epoll_ctl(%d): %s", (int)fd,
                       strerror(errno));
                return -1;
        }
        return 0;
}

/* CURLMOPT_TIMERFUNCTION: when libcurl wants to be called without a socket
 * event (-1: never). Called back from kb_loop_drive, not from here. */
static int timer_cb(CURLM *multi, long timeout_ms, void *arg) {
        kb_shard_t *sh = arg;
        (void)multi;
        sh->sh_timer_at = timeout_ms < 0 ? -1 : kb_now_ms() + timeout_ms;
        return 0;
}

/* Opens shard number lp_nshards; 0 or -1. */
static int shard_open(kb_loop_t *lp) {
        kb_shard_t *sh = &lp->lp_shards[lp->lp_nshards];
        CURLM *m;
        if (lp->lp_nshards >= KB_LOOP_MAX_SHARDS || !(m = curl_multi_init()))
                return -1;
        memset(sh, 0, sizeof(*sh));
        sh->sh_loop = lp;
        sh->sh_multi = m;
        sh->sh_idx = lp->lp_nshards;
        sh->sh_timer_at = -1;
        /* Reuse connections; HTTP/2 multiplexing when the server offers it. */
        curl_multi_setopt(m, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
        /* Idle connections kept for reuse: more than a shard ever has in
         * flight (over it, every finished transfer would close one, found
         * by a scan of them all, and the next call would connect anew). */
        curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, 4L * KB_LOOP_SHARD_XFERS);
        /* Only the sockets with events are visited (curl_multi_poll and
         * curl_multi_perform walk every transfer at every wake-up). */
        curl_multi_setopt(m, CURLMOPT_SOCKETFUNCTION, socket_cb);
        curl_multi_setopt(m, CURLMOPT_SOCKETDATA, sh);
        curl_multi_setopt(m, CURLMOPT_TIMERFUNCTION, timer_cb);
        curl_multi_setopt(m, CURLMOPT_TIMERDATA, sh);
        lp->lp_nshards++;
        return 0;
}

kb_loop_t *kb_loop_new(char *errstr, size_t errstr_size) {
        kb_loop_t *lp = calloc(1, sizeof(*lp));
        if (!lp) {
                snprintf(errstr, errstr_size, "out of memory");
                return NULL;
        }
        if ((lp->lp_epfd = epoll_create1(EPOLL_CLOEXEC)) < 0) {
                snprintf(errstr, errstr_size, "epoll_create1: %s",
                         strerror(errno));
                free(lp);
                return NULL;
        }
        if (shard_open(lp) != 0) {
                snprintf(errstr, errstr_size, "curl_multi_init failed");
                close(lp->lp_epfd);
                free(lp);
                return NULL;
        }
        return lp;
}

void kb_loop_destroy(kb_loop_t *lp) {
        int i;
        if (!lp)
                return;
        for (i = 0; i < lp->lp_nshards; i++)
                curl_multi_cleanup(lp->lp_shards[i].sh_multi);
        for (i = 0; i < lp->lp_nfds; i++) {
                if (lp->lp_wfds[i] == sig_wfd)
                        sig_wfd = -1;
                close(lp->lp_rfds[i]);
                close(lp->lp_wfds[i]);
        }
        close(lp->lp_epfd);
        free(lp);
}

int kb_loop_wake_pipe(kb_loop_t *lp) {
        int p[2], err;
        struct epoll_event ev;
        if (lp->lp_nfds >= KB_LOOP_MAX_FDS) {
                errno = EMFILE; /* the loop's table is full */
                return -1;
        }
        if (pipe2(p, O_NONBLOCK | O_CLOEXEC) != 0)
                return -1;
        memset(&ev, 0, sizeof(ev));
        ev.events = EPOLLIN;
        ev.data.u64 = KB_LOOP_PIPE_TAG | (uint64_t)lp->lp_nfds;
        if (epoll_ctl(lp->lp_epfd, EPOLL_CTL_ADD, p[0], &ev) != 0) {
                err = errno; /* close() may change it */
                close(p[0]);
                close(p[1]);
                errno = err;
                return -1;
        }
        lp->lp_rfds[lp->lp_nfds] = p[0];
        lp->lp_wfds[lp->lp_nfds] = p[1];
        lp->lp_nfds++;
        return p[1];
}

int kb_loop_add(kb_loop_t *lp, CURL *easy) {
        kb_xfer_t *xf = NULL;
        kb_shard_t *sh = &lp->lp_shards[0];
        int i;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&xf);
        if (!xf)
                return -1;
        for (i = 1; i < lp->lp_nshards; i++)
                if (lp->lp_shards[i].sh_running < sh->sh_running)
                        sh = &lp->lp_shards[i];
        if (sh->sh_running >= KB_LOOP_SHARD_XFERS && shard_open(lp) == 0)
                sh = &lp->lp_shards[lp->lp_nshards - 1];
        if (curl_multi_add_handle(sh->sh_multi, easy) != CURLM_OK)
                return -1;
        xf->xf_shard = sh->sh_idx + 1;
        sh->sh_running++;
        lp->lp_running++;
        return 0;
}

void kb_loop_remove(kb_loop_t *lp, CURL *easy) {
        kb_xfer_t *xf = NULL;
        kb_shard_t *sh;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&xf);
        if (!xf || xf->xf_shard < 1 || xf->xf_shard > lp->lp_nshards)
                return; /* not (or no longer) in a multi handle */
        sh = &lp->lp_shards[xf->xf_shard - 1];
        if (curl_multi_remove_handle(sh->sh_multi, easy) == CURLM_OK) {
                sh->sh_running--;
                lp->lp_running--;
        }
        xf->xf_shard = 0;
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

/* Hands the shard's finished transfers to their owners. */
static void finish_done(kb_loop_t *lp, kb_shard_t *sh) {
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(sh->sh_multi, &left))) {
                kb_xfer_t *xf = NULL;
                CURL *easy;
                CURLcode cc;
                if (m->msg != CURLMSG_DONE)
                        continue;
                easy = m->easy_handle;
                cc = m->data.result;
                curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&xf);
                curl_multi_remove_handle(sh->sh_multi, easy);
                sh->sh_running--;
                lp->lp_running--;
                if (xf) {
                        xf->xf_shard = 0;
                        if (xf->xf_done)
                                xf->xf_done(xf, cc);
                }
        }
}

static int socket_action(kb_shard_t *sh, curl_socket_t fd, int mask) {
        int still = 0;
        CURLMcode mc = curl_multi_socket_action(sh->sh_multi, fd, mask, &still);
        /* BAD_SOCKET: an event for a socket an earlier call of this turn
         * already closed; nothing to do */
        if (mc != CURLM_OK && mc != CURLM_BAD_SOCKET) {
                kb_log(KB_LOG_ERROR, "loop", "curl_multi_socket_action: %s",
                       curl_multi_strerror(mc));
                return -1;
        }
        return 0;
}

int kb_loop_drive(kb_loop_t *lp, int wait_ms) {
        struct epoll_event evs[KB_LOOP_EVENTS];
        int i, n, rc = 0;
        int64_t now = kb_now_ms();

        if (wait_ms < 0)
                wait_ms = 0;
        for (i = 0; i < lp->lp_nshards; i++) {
                int64_t at = lp->lp_shards[i].sh_timer_at;
                if (at >= 0 && at - now < wait_ms)
                        wait_ms = at > now ? (int)(at - now) : 0;
        }
        n = epoll_wait(lp->lp_epfd, evs, KB_LOOP_EVENTS, wait_ms);
        if (n < 0) {
                if (errno != EINTR) {
                        kb_log(KB_LOG_ERROR, "loop", "epoll_wait: %s",
                               strerror(errno));
                        return -1;
                }
                n = 0;
        }
        for (i = 0; i < n; i++) {
                uint64_t tag = evs[i].data.u64;
                int mask = 0, idx;
                if (tag & KB_LOOP_PIPE_TAG) {
                        char buf[256];
                        int k = (int)(tag & ~KB_LOOP_PIPE_TAG);
                        while (read(lp->lp_rfds[k], buf, sizeof(buf)) > 0)
                                ;
                        continue;
                }
                idx = (int)(tag >> 32);
                if (idx >= lp->lp_nshards)
                        continue;
                if (evs[i].events & EPOLLIN)
                        mask |= CURL_CSELECT_IN;
                if (evs[i].events & EPOLLOUT)
                        mask |= CURL_CSELECT_OUT;
                if (evs[i].events & (EPOLLERR | EPOLLHUP))
                        mask |= CURL_CSELECT_ERR;
                if (socket_action(&lp->lp_shards[idx],
                                  (curl_socket_t)(uint32_t)tag, mask) != 0)
                        rc = -1;
        }
        /* libcurl's own timeouts (connect, transfer, a new transfer's
         * start: adding a handle sets a timeout of 0) */
        now = kb_now_ms();
        for (i = 0; i < lp->lp_nshards; i++) {
                kb_shard_t *sh = &lp->lp_shards[i];
                if (sh->sh_timer_at >= 0 && now >= sh->sh_timer_at) {
                        sh->sh_timer_at = -1;
                        if (socket_action(sh, CURL_SOCKET_TIMEOUT, 0) != 0)
                                rc = -1;
                }
        }
        for (i = 0; i < lp->lp_nshards; i++)
                finish_done(lp, &lp->lp_shards[i]);
        return rc;
}
