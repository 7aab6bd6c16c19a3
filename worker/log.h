/* log: one JSON object per line on stderr (or human text), level-filtered.
 *
 * JSON: {"ts":"2026-11-22T11:00:00.123Z","level":"info","facility":"worker",
 *        "msg":"...","instance":"...",<fields>}   ("instance" when set)
 * text: 2026-11-22T11:00:00.123Z INFO  worker: msg key=value key="a b"
 * Everything is escaped (control characters, quotes; invalid UTF-8 becomes
 * U+FFFD), so a record is always exactly one line. The message and each
 * field value are truncated at KB_LOG_MSG_MAX bytes ("..." appended).
 *
 * kb_log() checks the level before formatting anything. Item-level events
 * pass structured fields (batch_id, item_id, attempt, ...) through kb_logkv().
 * Never pass secrets (API keys, webhook secrets, SASL passwords) to it. */
#ifndef KB_LOG_H
#define KB_LOG_H

#include <stdarg.h>
#include <stdio.h>

typedef enum {
        KB_LOG_DEBUG = 0,
        KB_LOG_INFO  = 1,
        KB_LOG_WARN  = 2,
        KB_LOG_ERROR = 3,
        KB_LOG_OFF   = 4,
} kb_log_level_t;

typedef enum { KB_LOG_FMT_JSON = 0, KB_LOG_FMT_TEXT = 1 } kb_log_format_t;

#define KB_LOG_MSG_MAX 8192

/* Sets level and format; out is borrowed (stderr when NULL). Thread-safe to
 * call kb_log from any thread afterwards (one write(2) per line, under a
 * lock, so lines never interleave; a FILE without a descriptor, e.g. from
 * open_memstream(), gets one fwrite() + fflush() instead). Before any call
 * the level is info, the format json and the output stderr. */
void kb_log_init(kb_log_level_t level, kb_log_format_t format, FILE *out);

/* Adds "instance":"<id>" to every JSON line (NULL or "" removes it). The
 * string is copied. Call at start-up, before other threads log. */
void kb_log_set_instance(const char *id);

/* Parses "debug|info|warn|error|off" / "json|text" (case-insensitive;
 * "warning" is accepted for warn); -1 when unknown. */
int kb_log_level_parse(const char *s);
int kb_log_format_parse(const char *s);
const char *kb_log_level_str(kb_log_level_t level);

extern kb_log_level_t kb_log_level_cur;
#define kb_log_enabled(lvl) ((lvl) >= kb_log_level_cur)

/* kv: NULL, or a NULL-terminated array of key, value, key, value, ...
 * strings (values JSON-escaped by the logger; a NULL value is skipped; a key
 * that clashes with ts, level, facility, msg or instance gets a "_" prefix).
 * Borrowed for the call. Formats and writes one line if level is enabled. */
void kb_log_write(kb_log_level_t level, const char *facility,
                  const char *const *kv, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void kb_log_vwrite(kb_log_level_t level, const char *facility,
                   const char *const *kv, const char *fmt, va_list ap);

#define kb_log(lvl, fac, ...)                                                  \
        do {                                                                   \
                if (kb_log_enabled(lvl))                                       \
                        kb_log_write(lvl, fac, NULL, __VA_ARGS__);             \
        } while (0)

#define kb_logkv(lvl, fac, kv, ...)                                            \
        do {                                                                   \
                if (kb_log_enabled(lvl))                                       \
                        kb_log_write(lvl, fac, kv, __VA_ARGS__);               \
        } while (0)

/* librdkafka log callback (set with rd_kafka_conf_set_log_cb): maps syslog
 * levels onto ours (0-3 error, 4 warn, 5-6 info, 7 debug), facility
 * "rdkafka", fields "fac" (librdkafka's facility) and "client"
 * (rd_kafka_name(rk), when rk is not NULL). Declared with void * to keep
 * this header free of rdkafka.h. */
void kb_log_rdkafka_cb(const void *rk, int level, const char *fac,
                       const char *buf);

/* Writes url (len bytes) to out (NUL-terminated, cut to out_size) with
 * the credentials of its userinfo replaced by three stars: the password of
 * "https://user:pass@host/x" (user kept), or the whole userinfo of
 * "https://token@host". Every URL that may reach a log,
 * an error message, a metric or a health reason goes through it. */
void kb_url_redact(const char *url, size_t len, char *out, size_t out_size);

#endif
