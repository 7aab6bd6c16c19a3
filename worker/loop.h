/* loop: the one thread's event loop (DESIGN.md "One process, one loop").
 *
 * It owns libcurl's multi handles, driven by curl_multi_socket_action(): the
 * loop sleeps in epoll_wait() on the sockets libcurl asks for, libcurl's
 * next timeout, and the read ends of pipes that librdkafka writes to when a
 * queue becomes non-empty (rd_kafka_queue_io_event_enable) and that the
 * signal handlers write to. Each wake-up costs in proportion to the sockets
 * with events, not to the transfers in flight. Finished transfers are
 * handed to their owner through the kb_xfer_t found with CURLOPT_PRIVATE. */
#ifndef KB_LOOP_H
#define KB_LOOP_H

#include <curl/curl.h>
#include <signal.h>
#include <stdint.h>

typedef struct kb_xfer_s kb_xfer_t;
struct kb_xfer_s {
        /* Called once when the transfer finished (the easy handle is already
         * removed from the multi handle; the owner cleans it up). */
        void (*xf_done)(kb_xfer_t *xf, CURLcode cc);
        int xf_shard; /* the loop's: 1 + the multi handle holding it, 0 when
                       * none (zero it before the first kb_loop_add) */
};

typedef struct kb_loop_s kb_loop_t;

/* Monotonic and wall clocks in ms. */
int64_t kb_now_ms(void);
int64_t kb_wall_ms(void);
double kb_wall_ms_frac(void);

kb_loop_t *kb_loop_new(char *errstr, size_t errstr_size);
void kb_loop_destroy(kb_loop_t *loop); /* NULL is a no-op */

/* A new wake-up pipe; returns the write end (for librdkafka), or -1 with
 * errno set (EMFILE when the loop's table of 16 pipes is full). The
 * loop polls and drains the read end. */
int kb_loop_wake_pipe(kb_loop_t *loop);

/* Adds an easy handle whose CURLOPT_PRIVATE is a kb_xfer_t * (-1 without
 * one). Transfers are spread over several libcurl multi handles, each with
 * its own connection cache (a new one per 256 transfers in flight). */
int kb_loop_add(kb_loop_t *loop, CURL *easy);
/* Removes an unfinished transfer (xf_done is not called); a no-op for one
 * not added or already finished. */
void kb_loop_remove(kb_loop_t *loop, CURL *easy);
int kb_loop_transfers(const kb_loop_t *loop);

/* Waits up to wait_ms for any event, drives libcurl and calls xf_done for
 * every finished transfer. Returns 0, or -1 on a libcurl failure. */
int kb_loop_drive(kb_loop_t *loop, int wait_ms);

/* Installs SIGTERM/SIGINT handlers that set kb_loop_stop_requested and wake
 * the loop; SIGPIPE is ignored. */
void kb_loop_signals(kb_loop_t *loop);
extern volatile sig_atomic_t kb_loop_stop_requested;

#endif
