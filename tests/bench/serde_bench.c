/*
 * serde_bench - the cost of kbatch's value formats, per item, and a small
 * encode/decode tool for the interop tests.
 *
 *   serde_bench [N]
 *       Micro-benchmark (make bench): N items (default 200000) through what
 *       the items pipeline does per item, in each format: decode a
 *       BatchItem, encode its ItemResult. Avro runs against
 *       <this binary's directory>/fake_registry, started here (the schema ids
 *       are cached after the first item, as in a worker). Prints ns per item
 *       and the value sizes.
 *
 *   serde_bench encode TYPE TOPIC   JSON lines in -> base64 wire values out
 *   serde_bench decode TYPE TOPIC   base64 wire values in -> JSON lines out
 *       TYPE: batch_item, item_result, batch_event, control, batch_state.
 *       The configuration comes from the environment (KBATCH_SERDE_FORMAT,
 *       KBATCH_SERDE_SCHEMA_REGISTRY_URL, ...; no file). A line that fails
 *       prints "ERROR <result>: <message>".
 */
#include <jansson.h>
#include <libgen.h>
#include <limits.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "codec.h"
#include "conf.h"
#include "log.h"
#include "serde.h"

static const char *type_names[KB_MSG__CNT] = {
        "batch_item", "item_result", "batch_event", "control", "batch_state"};

static double now_s(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static kb_conf_t *conf_env(void) {
        char err[512];
        kb_conf_t *c = kb_conf_load(NULL, NULL, err, sizeof(err));
        if (!c) {
                fprintf(stderr, "serde_bench: %s\n", err);
                exit(2);
        }
        return c;
}

static int tool(int argc, char **argv) {
        int enc = !strcmp(argv[1], "encode");
        kb_msg_t type = KB_MSG__CNT;
        kb_conf_t *c;
        kb_serde_t *sd;
        char err[1024], *line = NULL;
        size_t cap = 0;
        ssize_t n;
        int i;

        if (argc != 4)
                return 2;
        for (i = 0; i < KB_MSG__CNT; i++)
                if (!strcmp(argv[2], type_names[i]))
                        type = (kb_msg_t)i;
        if (type == KB_MSG__CNT) {
                fprintf(stderr, "serde_bench: unknown type %s\n", argv[2]);
                return 2;
        }
        c = conf_env();
        if (!(sd = kb_serde_new(c, NULL, err, sizeof(err)))) {
                fprintf(stderr, "serde_bench: %s\n", err);
                return 1;
        }
        while ((n = getline(&line, &cap, stdin)) > 0) {
                kb_serde_res_t r;
                while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
                        line[--n] = '\0';
                if (enc) {
                        json_t *o = json_loads(line, 0, NULL);
                        char *buf = NULL, *b64;
                        size_t len = 0;
                        r = kb_serde_encode(sd, argv[3], type, o, &buf, &len,
                                            err, sizeof(err));
                        json_decref(o);
                        if (r != KB_SERDE_OK) {
                                printf("ERROR %s: %s\n", kb_serde_res_str(r),
                                       err);
                                continue;
                        }
                        b64 = malloc(4 * ((len + 2) / 3) + 1);
                        EVP_EncodeBlock((unsigned char *)b64,
                                        (unsigned char *)buf, (int)len);
                        printf("%s\n", b64);
                        free(b64);
                        free(buf);
                } else {
                        unsigned char *raw = malloc((size_t)n / 4 * 3 + 3);
                        int rl = EVP_DecodeBlock(raw, (unsigned char *)line,
                                                 (int)n);
                        json_t *o = NULL;
                        if (rl >= 0 && n >= 1 && line[n - 1] == '=')
                                rl--;
                        if (rl >= 0 && n >= 2 && line[n - 2] == '=')
                                rl--;
                        r = rl < 0 ? KB_SERDE_UNDECODABLE
                                   : kb_serde_decode(sd, argv[3], type, raw,
                                                     (size_t)rl, &o, err,
                                                     sizeof(err));
                        free(raw);
                        if (r != KB_SERDE_OK) {
                                printf("ERROR %s: %s\n", kb_serde_res_str(r),
                                       rl < 0 ? "not base64" : err);
                                continue;
                        }
                        {
                                char *s = json_dumps(o, JSON_COMPACT |
                                                                JSON_SORT_KEYS);
                                printf("%s\n", s);
                                free(s);
                        }
                        json_decref(o);
                }
                fflush(stdout);
        }
        free(line);
        kb_serde_destroy(sd);
        kb_conf_destroy(c);
        return 0;
}

/* ---- the benchmark ---------------------------------------------------- */

static pid_t reg_pid;

static int registry_start(char *url, size_t size) {
        char exe[PATH_MAX], bin[PATH_MAX + 32], pf[64];
        ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
        int i, port = 0;
        if (n <= 0)
                return -1;
        exe[n] = '\0';
        snprintf(bin, sizeof(bin), "%s/fake_registry", dirname(exe));
        snprintf(pf, sizeof(pf), "/tmp/kb-serde-bench-%d.port", (int)getpid());
        unlink(pf);
        if ((reg_pid = fork()) == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (!freopen("/dev/null", "w", stdout))
                        _exit(127);
                execl(bin, bin, "--port", "0", "--port-file", pf, (char *)NULL);
                _exit(127);
        }
        for (i = 0; i < 500 && port <= 0; i++) {
                FILE *f = fopen(pf, "r");
                struct timespec ts = {0, 10 * 1000 * 1000};
                if (f) {
                        if (fscanf(f, "%d", &port) != 1)
                                port = 0;
                        fclose(f);
                }
                if (port <= 0)
                        nanosleep(&ts, NULL);
        }
        unlink(pf);
        if (port <= 0) {
                fprintf(stderr, "serde_bench: %s did not start\n", bin);
                return -1;
        }
        snprintf(url, size, "http://127.0.0.1:%d", port);
        return 0;
}

static const char *item_text =
        "{\"batch_id\":\"batch-2026-11-22\",\"item_id\":\"req-%d\","
        "\"item_index\":%d,\"items_total\":1000000,\"model\":\"gpt-4o-mini\","
        "\"input\":{\"messages\":[{\"role\":\"system\",\"content\":\"You are a "
        "helpful assistant.\"},{\"role\":\"user\",\"content\":\"Summarize item "
        "%d in one sentence.\"}],\"max_tokens\":64},\"metadata\":{\"team\":"
        "\"search\",\"run\":\"nightly\"},\"submitted_at\":1763800000000}";

static const char *output_text =
        "{\"id\":\"chatcmpl-abc123\",\"object\":\"chat.completion\","
        "\"created\":"
        "1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,"
        "\"message\":{\"role\":\"assistant\",\"content\":\"A one-sentence "
        "summary of the item.\"},\"finish_reason\":\"stop\"}],\"usage\":{"
        "\"prompt_tokens\":31,\"completion_tokens\":9,\"total_tokens\":40}}";

typedef struct run_s {
        double decode_ns, encode_ns;
        double in_bytes, out_bytes;
} run_t;

/* N items: decode the item value, build and encode its result. */
static int run(kb_serde_t *sd, kb_format_t f, char **values, size_t *lens,
               int n, json_t *output, run_t *rt) {
        const char *in_topic =
                f == KB_FORMAT_AVRO ? "bench.avro.items" : "bench.json.items";
        const char *out_topic = f == KB_FORMAT_AVRO ? "bench.avro.results"
                                                    : "bench.json.results";
        double t0, dec = 0, encd = 0, outb = 0, inb = 0;
        char err[512];
        int i;
        for (i = 0; i < n; i++) {
                kb_item_t it;
                kb_result_t res;
                char *buf;
                size_t len;
                kb_codec_res_t cr;
                t0 = now_s();
                cr = kb_serde_item_decode(sd, in_topic, out_topic, values[i],
                                          lens[i], 1 << 20, &it, err,
                                          sizeof(err));
                dec += now_s() - t0;
                if (cr != KB_CODEC_OK) {
                        fprintf(stderr, "serde_bench: decode: %s\n", err);
                        return -1;
                }
                inb += (double)lens[i];
                memset(&res, 0, sizeof(res));
                res.status = KB_STATUS_SUCCEEDED;
                res.http_status = 200;
                res.output = output;
                kb_codec_usage_from_output(output, &res);
                res.attempts = 1;
                res.started_at = 1763800000100 + i;
                res.finished_at = res.started_at + 250;
                res.latency_ms = 250;
                res.worker = "kbatch-7f9c-1";
                if (!it.operation)
                        it.operation = strdup("chat.completions");
                t0 = now_s();
                buf = kb_serde_result_encode(sd, out_topic, &it, &res, &len,
                                             err, sizeof(err));
                encd += now_s() - t0;
                if (!buf) {
                        fprintf(stderr, "serde_bench: encode: %s\n", err);
                        return -1;
                }
                outb += (double)len;
                free(buf);
                kb_item_clear(&it);
        }
        rt->decode_ns = dec * 1e9 / n;
        rt->encode_ns = encd * 1e9 / n;
        rt->in_bytes = inb / n;
        rt->out_bytes = outb / n;
        return 0;
}

static int bench(int n) {
        char url[64], err[512];
        kb_conf_t *c;
        kb_serde_t *sd;
        char **jv, **av;
        size_t *jl, *al;
        json_t *output = json_loads(output_text, 0, NULL);
        run_t rj, ra;
        int i, rc = 1, warm = n < 1000 ? n : 1000;

        if (registry_start(url, sizeof(url)))
                return 1;
        setenv("KBATCH_SERDE_SCHEMA_REGISTRY_URL", url, 1);
        setenv("KBATCH_SERDE_FORMAT", "avro", 1);
        setenv("KBATCH_LOG_LEVEL", "warn", 1);
        c = conf_env();
        kb_log_init(KB_LOG_WARN, KB_LOG_FMT_JSON, stderr);
        if (!(sd = kb_serde_new(c, NULL, err, sizeof(err)))) {
                fprintf(stderr, "serde_bench: %s\n", err);
                goto out;
        }
        jv = calloc((size_t)n, sizeof(*jv));
        av = calloc((size_t)n, sizeof(*av));
        jl = calloc((size_t)n, sizeof(*jl));
        al = calloc((size_t)n, sizeof(*al));
        for (i = 0; i < n; i++) {
                char txt[2048];
                json_t *o;
                snprintf(txt, sizeof(txt), item_text, i, i % 1000000, i);
                jv[i] = strdup(txt);
                jl[i] = strlen(txt);
                o = json_loads(txt, 0, NULL);
                if (kb_serde_encode(sd, "bench.avro.items", KB_MSG_BATCH_ITEM,
                                    o, &av[i], &al[i], err, sizeof(err))) {
                        fprintf(stderr, "serde_bench: %s\n", err);
                        goto out;
                }
                json_decref(o);
        }
        /* json topics: the serde decides by topic name; bench.json.* are
         * unknown topics, so they follow serde.format: switch it */
        {
                kb_serde_t *sdj;
                free(c->serde_format);
                c->serde_format = strdup("json");
                if (!(sdj = kb_serde_new(c, NULL, err, sizeof(err))))
                        goto out;
                run(sdj, KB_FORMAT_JSON, jv, jl, warm, output, &rj);
                if (run(sdj, KB_FORMAT_JSON, jv, jl, n, output, &rj))
                        goto out;
                kb_serde_destroy(sdj);
        }
        run(sd, KB_FORMAT_AVRO, av, al, warm, output, &ra);
        if (run(sd, KB_FORMAT_AVRO, av, al, n, output, &ra))
                goto out;
        printf("serde: %d items, per item (decode BatchItem + encode "
               "ItemResult)\n",
               n);
        printf("  %-6s %12s %12s %12s %10s %10s\n", "format", "decode ns",
               "encode ns", "total ns", "item B", "result B");
        printf("  %-6s %12.0f %12.0f %12.0f %10.0f %10.0f\n", "json",
               rj.decode_ns, rj.encode_ns, rj.decode_ns + rj.encode_ns,
               rj.in_bytes, rj.out_bytes);
        printf("  %-6s %12.0f %12.0f %12.0f %10.0f %10.0f\n", "avro",
               ra.decode_ns, ra.encode_ns, ra.decode_ns + ra.encode_ns,
               ra.in_bytes, ra.out_bytes);
        rc = 0;
out:
        if (reg_pid > 0) {
                kill(reg_pid, SIGTERM);
                waitpid(reg_pid, NULL, 0);
        }
        return rc;
}

int main(int argc, char **argv) {
        if (argc >= 2 &&
            (!strcmp(argv[1], "encode") || !strcmp(argv[1], "decode")))
                return tool(argc, argv);
        return bench(argc >= 2 ? atoi(argv[1]) : 200000);
}
