/* cmd: the entry points of the `kbatch` subcommands (SPEC §9).
 *
 * main() dispatches on the command name and calls kb_cmd_<name>(argc, argv)
 * with argv[0] the command's name ("check-config"). Each returns the
 * process exit code: 0 success, 1 runtime failure, 2 usage or configuration
 * error, after printing one clear line on stderr. */
#ifndef KB_CMD_H
#define KB_CMD_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* kbatch worker [-c FILE]: runs the roles named in worker.roles. */
int kb_cmd_worker(int argc, char **argv);

/* kbatch topics create [-c FILE] [--partitions N] [--replication R]. */
int kb_cmd_topics(int argc, char **argv);

/* kbatch replay [--batch ID] [--code CODE] [--since TIME] [--limit N]
 * [--dry-run]: re-drives dead-lettered items (see cmd_replay.c). */
int kb_cmd_replay(int argc, char **argv);

/* kbatch check-config [-c FILE] [-q]: loads and validates the
 * configuration (the file chosen by kb_conf_default_path()) and prints the
 * effective configuration, secrets redacted, to stdout. */
int kb_cmd_check_config(int argc, char **argv);

/* kbatch status BATCH_ID [-c FILE] [--json]: the batch's status, counts,
 * usage and timestamps from the batch-state topic (read_committed). Exit 1
 * when the batch is unknown (no state, or retired). */
int kb_cmd_status(int argc, char **argv);

/* kbatch cancel BATCH_ID [-c FILE] [--reason TEXT]: publishes a
 * ControlCommand {batch_id, action "cancel", requested_at, reason} keyed by
 * batch_id to the control topic and waits for its acknowledgement. */
int kb_cmd_cancel(int argc, char **argv);

/* The cancel ControlCommand {batch_id, action "cancel", requested_at,
 * reason} that `kbatch cancel` publishes (keyed by batch_id to the control
 * topic), as JSON text: caller frees; NULL on out of memory. reason may be
 * NULL. */
char *kb_cmd_cancel_payload(const char *id, const char *reason);

/* kbatch submit FILE.jsonl|- [-c FILE] [--batch-id ID | --idempotency-key K]
 * [--metadata K=V]... [--callback-url URL] [--deadline T |
 * --completion-window D] [--format F] [--dry-run] [--force] [-q]: validates
 * the whole file (OpenAI Batch, Anthropic Message Batches or native lines),
 * publishes it as one batch and prints the batch id (see cmd_submit.c). */
int kb_cmd_submit(int argc, char **argv);

/* kbatch collect BATCH_ID [-c FILE] [-o OUT] [--errors FILE] [--format F]
 * [--no-wait] [--timeout D] [--lookback D] [-v] [-q]: waits for the batch
 * and writes one output line per item (see cmd_collect.c). */
int kb_cmd_collect(int argc, char **argv);

/* What `kbatch collect --no-wait` writes, into streams of the caller: the
 * output line (fmt: a kb_bf_out_t) of every successful item of batch_id to
 * ok, those of the other items to errs. Returns 1 when the batch is
 * complete, 0 when not (what there is was written), -1 with errstr. */
struct kb_conf_s;
int kb_cmd_collect_to(const struct kb_conf_s *conf, const char *batch_id,
                      int fmt, FILE *ok, FILE *errs, char *errstr,
                      size_t errstr_size);

/* Shared by the commands: loads the configuration (-c FILE or the default
 * path), and sets up logging from it. On failure prints the one
 * "FILE:LINE: message" line on stderr and returns NULL (exit code 2).
 * Caller frees with kb_conf_destroy(). */
struct kb_conf_s *kb_cmd_conf_load(const char *given_path);

/* A usage error of `kbatch <cmd>`: prints "kbatch <cmd>: <message> (see
 * kbatch <cmd> --help)" as one line on stderr and returns 2 (the exit
 * code). */
int kb_cmd_usage_error(const char *cmd, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));

/* The one BATCH_ID operand of `kbatch <cmd> BATCH_ID [options]`, after
 * getopt: argv[optind] must be the only operand left and a valid batch id
 * (kb_codec_batch_id_valid). Returns 0 with *idp = argv[optind] (borrowed
 * from argv), or 2 (the exit code) after one line on stderr: "kbatch <cmd>:
 * missing BATCH_ID", "unexpected argument", "... is not a batch id". */
int kb_cmd_batch_id_arg(const char *cmd, int argc, char **argv, int optind,
                        const char **idp);

/* ---- progress on stderr ---------------------------------------------- */

/* One progress line on stderr, redrawn in place, only when stderr is a
 * terminal and not quiet. Embedded by value; nothing to free. */
typedef struct kb_cmd_progress_s {
        int pg_on;           /* shown at all */
        int pg_interval_ms;  /* least time between two redraws */
        int64_t pg_last;     /* last redraw, kb_now_ms() */
        int pg_shown;        /* a line is on the terminal */
} kb_cmd_progress_t;

void kb_cmd_progress_init(kb_cmd_progress_t *pg, int quiet, int interval_ms);

/* Redraws the line (printf format), unless the last redraw was less than
 * pg_interval_ms ago and not force. */
void kb_cmd_progress_show(kb_cmd_progress_t *pg, int force, const char *fmt,
                          ...) __attribute__((format(printf, 3, 4)));

/* "<prefix>[#########.....................]  30% 300/1000 <suffix>". */
void kb_cmd_progress_bar(kb_cmd_progress_t *pg, int force, const char *prefix,
                         int64_t done, int64_t total, const char *suffix);

/* Erases the line (before other output on stderr). */
void kb_cmd_progress_clear(kb_cmd_progress_t *pg);

#endif
