/* Unit tests of worker/log.c: JSON lines parsed back with jansson, level
 * filtering, escaping, truncation, the text format, the librdkafka callback,
 * whole lines under concurrency. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <criterion/criterion.h>
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <regex.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

static FILE *out;

static void setup(void) {
        out = tmpfile();
        cr_assert(out);
        kb_log_init(KB_LOG_DEBUG, KB_LOG_FMT_JSON, out);
        kb_log_set_instance(NULL);
}

static void teardown(void) {
        kb_log_init(KB_LOG_INFO, KB_LOG_FMT_JSON, NULL);
        kb_log_set_instance(NULL);
        if (out)
                fclose(out);
        out = NULL;
}

TestSuite(log, .init = setup, .fini = teardown);

/* Everything written so far; caller frees. Rewinds for the next test step. */
static char *drain(void) {
        char *buf;
        long len;
        fflush(out);
        fseek(out, 0, SEEK_END);
        len = ftell(out);
        rewind(out);
        buf = calloc(1, (size_t)len + 1);
        cr_assert_eq(fread(buf, 1, (size_t)len, out), (size_t)len);
        /* start over */
        cr_assert_eq(ftruncate(fileno(out), 0), 0);
        rewind(out);
        return buf;
}

static size_t count_lines(const char *s) {
        size_t n = 0;
        for (; *s; s++)
                n += *s == '\n';
        return n;
}

/* The one line written, parsed; caller decrefs. */
static json_t *one_json(void) {
        char *s = drain();
        json_error_t je;
        json_t *j;
        cr_assert_eq(count_lines(s), 1, "want one line, got: '%s'", s);
        cr_assert_eq(s[strlen(s) - 1], '\n');
        j = json_loads(s, JSON_REJECT_DUPLICATES, &je);
        cr_assert(j, "not JSON (%s): %s", je.text, s);
        cr_assert(json_is_object(j));
        free(s);
        return j;
}

static const char *jstr(json_t *j, const char *k) {
        return json_string_value(json_object_get(j, k));
}

Test(log, json_line) {
        json_t *j;
        regex_t re;
        kb_log(KB_LOG_INFO, "worker", "hello %d %s", 42, "world");
        j = one_json();
        cr_expect_str_eq(jstr(j, "level"), "info");
        cr_expect_str_eq(jstr(j, "facility"), "worker");
        cr_expect_str_eq(jstr(j, "msg"), "hello 42 world");
        cr_assert(jstr(j, "ts"));
        cr_assert_eq(regcomp(&re,
                             "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:"
                             "[0-9]{2}\\.[0-9]{3}Z$",
                             REG_EXTENDED | REG_NOSUB),
                     0);
        cr_expect_eq(regexec(&re, jstr(j, "ts"), 0, NULL, 0), 0, "ts '%s'",
                     jstr(j, "ts"));
        regfree(&re);
        cr_expect_eq(json_object_size(j), 4);
        json_decref(j);
}

Test(log, json_fields) {
        const char *kv[] = { "batch_id", "b-1",  "item_id", "i \"1\"\n",
                             "skipped",  NULL,   "attempt", "3",
                             "msg",      "clash", NULL };
        json_t *j;
        kb_logkv(KB_LOG_WARN, "items", kv, "retrying");
        j = one_json();
        cr_expect_str_eq(jstr(j, "level"), "warn");
        cr_expect_str_eq(jstr(j, "msg"), "retrying");
        cr_expect_str_eq(jstr(j, "batch_id"), "b-1");
        cr_expect_str_eq(jstr(j, "item_id"), "i \"1\"\n");
        cr_expect_str_eq(jstr(j, "attempt"), "3");
        cr_expect_null(json_object_get(j, "skipped"));
        cr_expect_str_eq(jstr(j, "_msg"), "clash");
        cr_expect_eq(json_object_size(j), 8);
        json_decref(j);
}

Test(log, instance) {
        json_t *j;
        kb_log_set_instance("host-12");
        kb_log(KB_LOG_ERROR, "worker", "x");
        j = one_json();
        cr_expect_str_eq(jstr(j, "instance"), "host-12");
        cr_expect_str_eq(jstr(j, "level"), "error");
        json_decref(j);
        kb_log_set_instance(NULL);
        kb_log(KB_LOG_ERROR, "worker", "x");
        j = one_json();
        cr_expect_null(json_object_get(j, "instance"));
        json_decref(j);
}

Test(log, level_filter) {
        kb_log_level_t cur, lvl;
        for (cur = KB_LOG_DEBUG; cur <= KB_LOG_OFF; cur++) {
                char *s;
                size_t want = 0;
                kb_log_init(cur, KB_LOG_FMT_JSON, out);
                for (lvl = KB_LOG_DEBUG; lvl <= KB_LOG_ERROR; lvl++) {
                        kb_log(lvl, "t", "%s", kb_log_level_str(lvl));
                        want += lvl >= cur;
                }
                s = drain();
                cr_expect_eq(count_lines(s), want, "level %s: %zu lines: %s",
                             kb_log_level_str(cur), count_lines(s), s);
                if (cur == KB_LOG_WARN) {
                        cr_expect_null(strstr(s, "\"info\""));
                        cr_expect(strstr(s, "\"warn\""));
                        cr_expect(strstr(s, "\"error\""));
                }
                free(s);
        }
}

static int evaluated;
static int side_effect(void) {
        return ++evaluated;
}

/* A disabled level formats nothing: the arguments are not evaluated. */
Test(log, disabled_not_evaluated) {
        char *s;
        kb_log_init(KB_LOG_INFO, KB_LOG_FMT_JSON, out);
        kb_log(KB_LOG_DEBUG, "t", "%d", side_effect());
        cr_expect_eq(evaluated, 0);
        kb_log(KB_LOG_INFO, "t", "%d", side_effect());
        cr_expect_eq(evaluated, 1);
        /* kb_log_write() checks too, and never logs at "off" */
        kb_log_write(KB_LOG_DEBUG, "t", NULL, "direct");
        kb_log_write(KB_LOG_OFF, "t", NULL, "off");
        s = drain();
        cr_expect_eq(count_lines(s), 1, "%s", s);
        free(s);
}

typedef struct {
        const char *name;
        const char *in;
        const char *want; /* msg decoded from the JSON line */
} esc_case_t;

static const esc_case_t esc_cases[] = {
        { "plain", "hello", "hello" },
        { "quotes", "say \"hi\"", "say \"hi\"" },
        { "backslash", "a\\b", "a\\b" },
        { "newline", "line1\nline2\r\n", "line1\nline2\r\n" },
        { "tab", "a\tb", "a\tb" },
        { "control", "a\x01\x1f\x7f" "b", "a\x01\x1f\x7f" "b" },
        { "utf-8", "h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9d\x84\x9e",
          "h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9d\x84\x9e" },
        { "invalid byte", "a\xff" "b", "a\xef\xbf\xbd" "b" },
        { "truncated sequence", "a\xc3", "a\xef\xbf\xbd" },
        { "overlong", "\xc0\xaf", "\xef\xbf\xbd\xef\xbf\xbd" },
        { "surrogate", "\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd" },
        { "beyond U+10FFFF", "\xf4\x90\x80\x80",
          "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd" },
        { "json-looking", "\",\"level\":\"error", "\",\"level\":\"error" },
};

Test(log, json_escaping) {
        size_t i;
        for (i = 0; i < sizeof(esc_cases) / sizeof(*esc_cases); i++) {
                const esc_case_t *ec = &esc_cases[i];
                const char *kv[] = { "field", ec->in, NULL };
                char *s = NULL;
                json_t *j;
                json_error_t je;
                kb_logkv(KB_LOG_INFO, "fac\"ility", kv, "%s", ec->in);
                s = drain();
                cr_expect_eq(count_lines(s), 1, "[%s] lines: '%s'", ec->name,
                             s);
                j = json_loads(s, JSON_REJECT_DUPLICATES, &je);
                cr_expect(j, "[%s] not JSON (%s): %s", ec->name, je.text, s);
                if (j) {
                        cr_expect_str_eq(jstr(j, "msg"), ec->want, "[%s]",
                                         ec->name);
                        cr_expect_str_eq(jstr(j, "field"), ec->want, "[%s]",
                                         ec->name);
                        cr_expect_str_eq(jstr(j, "facility"), "fac\"ility");
                        cr_expect_str_eq(jstr(j, "level"), "info", "[%s]",
                                         ec->name);
                }
                json_decref(j);
                free(s);
        }
}

Test(log, truncation) {
        size_t n = 20000, i;
        char *big = malloc(n + 1), *wide = malloc(n + 1);
        const char *m;
        json_t *j;
        memset(big, 'x', n);
        big[n] = '\0';
        /* 2-byte characters, so the cut can fall inside one */
        for (i = 0; i + 1 < n; i += 2) {
                wide[i] = '\xc3';
                wide[i + 1] = '\xa9';
        }
        wide[n] = '\0';

        kb_log(KB_LOG_INFO, "t", "%s", big);
        j = one_json();
        m = jstr(j, "msg");
        cr_expect_eq(strlen(m), KB_LOG_MSG_MAX + 3);
        cr_expect_str_eq(m + strlen(m) - 4, "x...");
        json_decref(j);

        kb_log(KB_LOG_INFO, "t", "%s", wide + 1); /* odd: starts mid-char */
        j = one_json(); /* jansson rejects invalid UTF-8: it parsed */
        m = jstr(j, "msg");
        cr_expect_leq(strlen(m), KB_LOG_MSG_MAX + 3 + 3);
        cr_expect_str_eq(m + strlen(m) - 5, "\xc3\xa9...");
        json_decref(j);

        /* field values too */
        {
                const char *kv[] = { "body", big, NULL };
                kb_logkv(KB_LOG_INFO, "t", kv, "m");
                j = one_json();
                cr_expect_eq(strlen(jstr(j, "body")), KB_LOG_MSG_MAX + 3);
                json_decref(j);
        }
        free(big);
        free(wide);
}

Test(log, text_format) {
        const char *kv[] = { "model", "gpt 4", "batch_id", "b1", "empty", "",
                             "q", "a\"b", NULL };
        regex_t re;
        char *s;
        kb_log_init(KB_LOG_DEBUG, KB_LOG_FMT_TEXT, out);
        kb_log_set_instance("ignored-in-text");
        kb_logkv(KB_LOG_WARN, "routes", kv, "slow\ndown %d", 3);
        kb_log(KB_LOG_INFO, "worker", "started");
        kb_log(KB_LOG_DEBUG, "worker", "dbg");
        kb_log(KB_LOG_ERROR, "worker", "bad \xff");
        s = drain();
        cr_assert_eq(count_lines(s), 4, "%s", s);
        cr_assert_eq(regcomp(&re,
                             "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:"
                             "[0-9]{2}\\.[0-9]{3}Z WARN  routes: slow\\\\ndown "
                             "3 model=\"gpt 4\" batch_id=b1 empty=\"\" "
                             "q=\"a\\\\\"b\"\n"
                             "[0-9T:.Z-]+ INFO  worker: started\n"
                             "[0-9T:.Z-]+ DEBUG worker: dbg\n"
                             "[0-9T:.Z-]+ ERROR worker: bad \xef\xbf\xbd\n$",
                             REG_EXTENDED | REG_NOSUB),
                     0);
        cr_expect_eq(regexec(&re, s, 0, NULL, 0), 0, "got:\n%s", s);
        cr_expect_null(strstr(s, "ignored-in-text"));
        regfree(&re);
        free(s);
}

typedef struct {
        int syslog;
        const char *level;
} rdk_case_t;

static const rdk_case_t rdk_cases[] = {
        { 0, "error" }, { 1, "error" }, { 2, "error" }, { 3, "error" },
        { 4, "warn" },  { 5, "info" },  { 6, "info" },  { 7, "debug" },
};

Test(log, rdkafka_cb) {
        size_t i;
        char *s;
        for (i = 0; i < sizeof(rdk_cases) / sizeof(*rdk_cases); i++) {
                json_t *j;
                kb_log_rdkafka_cb(NULL, rdk_cases[i].syslog, "FETCH",
                                  "broker down");
                j = one_json();
                cr_expect_str_eq(jstr(j, "level"), rdk_cases[i].level,
                                 "syslog %d", rdk_cases[i].syslog);
                cr_expect_str_eq(jstr(j, "facility"), "rdkafka");
                cr_expect_str_eq(jstr(j, "fac"), "FETCH");
                cr_expect_str_eq(jstr(j, "msg"), "broker down");
                cr_expect_null(json_object_get(j, "client"));
                json_decref(j);
        }
        /* filtered by our level like everything else */
        kb_log_init(KB_LOG_WARN, KB_LOG_FMT_JSON, out);
        kb_log_rdkafka_cb(NULL, 6, "CONF", "info line");
        kb_log_rdkafka_cb(NULL, 7, "CONF", "debug line");
        kb_log_rdkafka_cb(NULL, 4, "CONF", "warn line");
        s = drain();
        cr_expect_eq(count_lines(s), 1, "%s", s);
        cr_expect(strstr(s, "warn line"));
        free(s);
}

#define THREADS 8
#define PER_THREAD 300
#define BODY 7000 /* > PIPE_BUF: a pipe may take a line in several writes */

static void *writer(void *arg) {
        char id[16], *body = malloc(BODY + 1);
        const char *kv[] = { "thread", id, NULL };
        int i;
        snprintf(id, sizeof(id), "%d", (int)(intptr_t)arg);
        memset(body, 'a' + (int)(intptr_t)arg, BODY);
        body[BODY] = '\0';
        for (i = 0; i < PER_THREAD; i++)
                kb_logkv(KB_LOG_INFO, "t", kv, "%d %s", i, body);
        free(body);
        return NULL;
}

typedef struct {
        int fd;
        char *buf;
        size_t len, cap;
} reader_t;

static void *reader(void *arg) {
        reader_t *r = arg;
        ssize_t n;
        for (;;) {
                if (r->cap - r->len < 65536) {
                        r->cap = r->cap ? r->cap * 2 : 1 << 20;
                        r->buf = realloc(r->buf, r->cap);
                }
                /* small slow reads: the pipe fills up and writers block
                 * in the middle of their lines */
                n = read(r->fd, r->buf + r->len, 4096);
                if (n <= 0)
                        break;
                r->len += (size_t)n;
                usleep(20);
        }
        r->buf[r->len] = '\0';
        return NULL;
}

/* Lines of concurrent writers never interleave, even on a pipe that takes
 * a line in several writes. */
Test(log, threads_whole_lines) {
        pthread_t th[THREADS], rt;
        reader_t r = { -1, NULL, 0, 0 };
        char *line, *save = NULL;
        size_t n = 0;
        int counts[THREADS] = { 0 }, fds[2];
        FILE *w;
        intptr_t t;
        cr_assert_eq(pipe(fds), 0);
        r.fd = fds[0];
        cr_assert((w = fdopen(fds[1], "w")));
        kb_log_init(KB_LOG_INFO, KB_LOG_FMT_JSON, w);
        cr_assert_eq(pthread_create(&rt, NULL, reader, &r), 0);
        for (t = 0; t < THREADS; t++)
                cr_assert_eq(pthread_create(&th[t], NULL, writer, (void *)t), 0);
        for (t = 0; t < THREADS; t++)
                pthread_join(th[t], NULL);
        kb_log_init(KB_LOG_INFO, KB_LOG_FMT_JSON, out);
        fclose(w);
        pthread_join(rt, NULL);
        close(fds[0]);
        for (line = strtok_r(r.buf, "\n", &save); line;
             line = strtok_r(NULL, "\n", &save)) {
                json_error_t je;
                json_t *j = json_loads(line, 0, &je);
                const char *m;
                int tid;
                cr_assert(j, "line %zu not JSON: %.80s", n, line);
                tid = atoi(jstr(j, "thread"));
                cr_assert(tid >= 0 && tid < THREADS);
                m = strchr(jstr(j, "msg"), ' ');
                cr_assert(m && m[1] == 'a' + tid && strlen(m + 1) == BODY);
                counts[tid]++;
                json_decref(j);
                n++;
        }
        cr_expect_eq(n, THREADS * PER_THREAD);
        for (t = 0; t < THREADS; t++)
                cr_expect_eq(counts[t], PER_THREAD);
        free(r.buf);
}

/* A FILE without a descriptor (open_memstream) works too. */
Test(log, memstream) {
        char *buf = NULL;
        size_t len = 0;
        FILE *mem = open_memstream(&buf, &len);
        json_t *j;
        json_error_t je;
        kb_log_init(KB_LOG_INFO, KB_LOG_FMT_JSON, mem);
        kb_log(KB_LOG_INFO, "t", "in memory");
        kb_log_init(KB_LOG_INFO, KB_LOG_FMT_JSON, out);
        fclose(mem);
        cr_assert_eq(count_lines(buf), 1, "%s", buf);
        j = json_loads(buf, 0, &je);
        cr_assert(j, "%s", buf);
        cr_expect_str_eq(jstr(j, "msg"), "in memory");
        json_decref(j);
        free(buf);
}

Test(log, errno_preserved) {
        errno = EAGAIN;
        kb_log(KB_LOG_INFO, "t", "x");
        cr_expect_eq(errno, EAGAIN);
        free(drain());
}

Test(log, parse) {
        static const struct {
                const char *s;
                int level;
        } levels[] = { { "debug", KB_LOG_DEBUG }, { "info", KB_LOG_INFO },
                       { "warn", KB_LOG_WARN },   { "warning", KB_LOG_WARN },
                       { "ERROR", KB_LOG_ERROR }, { "off", KB_LOG_OFF },
                       { "loud", -1 },            { "", -1 },
                       { NULL, -1 } };
        size_t i;
        for (i = 0; i < sizeof(levels) / sizeof(*levels); i++)
                cr_expect_eq(kb_log_level_parse(levels[i].s), levels[i].level,
                             "%s", levels[i].s ? levels[i].s : "NULL");
        for (i = KB_LOG_DEBUG; i <= KB_LOG_OFF; i++)
                cr_expect_eq(kb_log_level_parse(kb_log_level_str(i)), (int)i);
        cr_expect_eq(kb_log_format_parse("json"), KB_LOG_FMT_JSON);
        cr_expect_eq(kb_log_format_parse("text"), KB_LOG_FMT_TEXT);
        cr_expect_eq(kb_log_format_parse("yaml"), -1);
        cr_expect_eq(kb_log_format_parse(NULL), -1);
}

/* Issue 15: credentials in URLs never reach a log, an error or /readyz. */
Test(log, url_redact_table) {
        static const struct {
                const char *in, *out;
        } cases[] = {
            {"https://user:pass@host:8081/x", "https://user:***@host:8081/x"},
            {"http://u:p%40ss@h", "http://u:***@h"},
            {"https://token@host/p", "https://***@host/p"},
            {"https://host:8081/apis/ccompat/v7", "https://host:8081/apis/ccompat/v7"},
            {"https://host/a@b", "https://host/a@b"},
            {"https://host?x=a@b", "https://host?x=a@b"},
            {"https://u:p@h/x@y", "https://u:***@h/x@y"},
            {"no-scheme:pass@host", "no-scheme:pass@host"},
            {"", ""},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
                char out[256];
                kb_url_redact(cases[i].in, strlen(cases[i].in), out,
                              sizeof(out));
                cr_expect_str_eq(out, cases[i].out, "case %zu", i);
        }
        /* cut to the buffer, still terminated */
        {
                char out[8];
                kb_url_redact("https://u:secret@h", 18, out, sizeof(out));
                cr_expect_eq(strlen(out), 7);
                cr_expect_null(strstr(out, "secret"));
        }
}
