/* libFuzzer target: Avro decoding in the Confluent wire format
 * (kb_serde_item_decode, kb_serde_decode), every message type.
 *
 * A fake schema registry (build/fake_registry, started once here) holds
 * kbatch's own schemas and a few evolved writer schemas (extra fields of
 * every Avro type, missing optional fields, promotions, and incompatible
 * ones), so decoding exercises schema resolution too. After the first
 * input every schema is cached: no network per input.
 *
 * Input: byte 0 picks the message type (low 3 bits) and whether the schema
 * id of the value is kept (bit 3 set) or mapped onto a registered id (so
 * that most inputs reach the Avro decoder); the rest is the value.
 * Checks: the result is one of the documented ones, never RETRY (the
 * registry is up); a decoded value re-encodes with kbatch's schema and
 * decodes again to the same JSON (for BatchItem: through the items
 * pipeline's decoder, whose invariants are those of fuzz_item_json). */
#include <jansson.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
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
#include "registry.h"
#include "serde.h"
#include "fuzz_check.h"

static const char *topics[KB_MSG__CNT] = {
    "kbatch.items", "kbatch.results", "kbatch.batches", "kbatch.control",
    "kbatch.batch-state"};

/* Writer schemas other producers might use for BatchItem. */
static const char *evolved[] = {
    /* extra fields of every type, in the middle and at the end */
    "{\"type\":\"record\",\"name\":\"BatchItem\",\"namespace\":\"kbatch.v1\","
    "\"fields\":["
    "{\"name\":\"batch_id\",\"type\":\"string\"},"
    "{\"name\":\"x_rec\",\"type\":{\"type\":\"record\",\"name\":\"X\","
    "\"fields\":[{\"name\":\"a\",\"type\":[\"null\",\"double\",\"bytes\"]},"
    "{\"name\":\"b\",\"type\":{\"type\":\"fixed\",\"name\":\"F\",\"size\":3}},"
    "{\"name\":\"c\",\"type\":{\"type\":\"enum\",\"name\":\"E\",\"symbols\":"
    "[\"P\",\"Q\"]}},{\"name\":\"d\",\"type\":\"float\"},"
    "{\"name\":\"e\",\"type\":\"boolean\"}]}},"
    "{\"name\":\"item_id\",\"type\":\"string\"},"
    "{\"name\":\"item_index\",\"type\":\"int\"},"
    "{\"name\":\"items_total\",\"type\":\"long\"},"
    "{\"name\":\"model\",\"type\":\"string\"},"
    "{\"name\":\"x_arr\",\"type\":{\"type\":\"array\",\"items\":{\"type\":"
    "\"map\",\"values\":[\"null\",\"X\"]}}},"
    "{\"name\":\"input\",\"type\":[\"string\",\"null\"]},"
    "{\"name\":\"metadata\",\"type\":[\"null\",{\"type\":\"map\","
    "\"values\":\"string\"}],\"default\":null},"
    "{\"name\":\"deadline\",\"type\":[\"null\",\"int\",\"long\"],"
    "\"default\":null},"
    "{\"name\":\"x_end\",\"type\":[\"null\",\"string\",\"long\"]}]}",
    /* only the required fields */
    "{\"type\":\"record\",\"name\":\"BatchItem\",\"namespace\":\"kbatch.v1\","
    "\"fields\":["
    "{\"name\":\"batch_id\",\"type\":\"string\"},"
    "{\"name\":\"item_id\",\"type\":\"string\"},"
    "{\"name\":\"item_index\",\"type\":\"int\"},"
    "{\"name\":\"items_total\",\"type\":\"int\"},"
    "{\"name\":\"model\",\"type\":\"string\"},"
    "{\"name\":\"input\",\"type\":\"string\"}]}",
    /* promotions, another name */
    "{\"type\":\"record\",\"name\":\"Item\",\"namespace\":\"acme\","
    "\"fields\":["
    "{\"name\":\"model\",\"type\":\"string\"},"
    "{\"name\":\"batch_id\",\"type\":\"string\"},"
    "{\"name\":\"item_id\",\"type\":\"string\"},"
    "{\"name\":\"item_index\",\"type\":\"int\"},"
    "{\"name\":\"items_total\",\"type\":\"int\"},"
    "{\"name\":\"input\",\"type\":\"string\"},"
    "{\"name\":\"deadline\",\"type\":\"int\"},"
    "{\"name\":\"submitted_at\",\"type\":\"float\"},"
    "{\"name\":\"operation\",\"type\":\"string\"}]}",
    /* incompatible: a required field missing, a type that cannot be read */
    "{\"type\":\"record\",\"name\":\"BatchItem\",\"namespace\":\"kbatch.v1\","
    "\"fields\":[{\"name\":\"batch_id\",\"type\":\"string\"},"
    "{\"name\":\"item_index\",\"type\":\"string\"}]}",
    /* not a record at all */
    "{\"type\":\"array\",\"items\":\"string\"}",
    "\"string\"",
};

static kb_serde_t *sd;
static kb_conf_t *conf;
static int32_t ids[64];
static int id_cnt;
static pid_t reg_pid;

static void stop_registry(void) {
        kb_serde_destroy(sd);
        sd = NULL;
        kb_conf_destroy(conf);
        conf = NULL;
        if (reg_pid > 0) {
                kill(reg_pid, SIGTERM);
                waitpid(reg_pid, NULL, 0);
                reg_pid = 0;
        }
}

/* Starts <dir of this binary>/../fake_registry; returns its port. */
static int start_registry(void) {
        char exe[PATH_MAX], bin[PATH_MAX + 32], pf[128];
        ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
        const char *env = getenv("KB_FUZZ_FAKE_REGISTRY");
        int i, port = 0;
        struct timespec ts = {0, 10 * 1000 * 1000};

        if (n <= 0)
                abort();
        exe[n] = '\0';
        if (env && *env)
                snprintf(bin, sizeof(bin), "%s", env);
        else
                snprintf(bin, sizeof(bin), "%s/../fake_registry", dirname(exe));
        snprintf(pf, sizeof(pf), "/tmp/kb-fuzz-registry-%d.port", (int)getpid());
        unlink(pf);
        reg_pid = fork();
        if (reg_pid < 0)
                abort();
        if (reg_pid == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (!freopen("/dev/null", "w", stdout))
                        _exit(127);
                execl(bin, bin, "--port", "0", "--port-file", pf, (char *)NULL);
                _exit(127);
        }
        for (i = 0; i < 1000 && !port; i++) {
                FILE *fp = fopen(pf, "r");
                if (fp) {
                        if (fscanf(fp, "%d", &port) != 1)
                                port = 0;
                        fclose(fp);
                }
                if (!port)
                        nanosleep(&ts, NULL);
        }
        unlink(pf);
        if (!port) {
                fprintf(stderr, "fuzz_avro: %s did not start\n", bin);
                abort();
        }
        atexit(stop_registry);
        return port;
}

/* Sample values of every type (their JSON form), for the seed corpus. */
static const char *samples[KB_MSG__CNT] = {
    "{\"batch_id\":\"b-1\",\"item_id\":\"req-7\",\"item_index\":7,"
    "\"items_total\":10,\"model\":\"gpt-test\",\"operation\":\"chat."
    "completions\",\"input\":{\"messages\":[{\"role\":\"user\",\"content\":"
    "\"h\\u00e9llo\"}]},\"deadline\":4102444800000,\"callback_url\":"
    "\"https://example.com/hook\",\"metadata\":{\"team\":\"a\"},"
    "\"submitted_at\":1700000000000}",
    "{\"batch_id\":\"b-1\",\"item_id\":\"req-7\",\"item_index\":7,"
    "\"items_total\":10,\"model\":\"gpt-test\",\"operation\":\"chat."
    "completions\",\"status\":\"failed\",\"http_status\":500,\"output\":"
    "{\"x\":[1,2.5,null]},\"error\":{\"code\":\"server_error\",\"message\":"
    "\"boom\"},\"attempts\":3,\"usage\":{\"input_tokens\":1,"
    "\"output_tokens\":2,\"total_tokens\":3},\"started_at\":1,"
    "\"finished_at\":2,\"latency_ms\":1,\"worker\":\"w\",\"callback_url\":"
    "null,\"deadline\":null,\"metadata\":{\"k\":\"v\"}}",
    "{\"event_id\":\"b-1:1\",\"type\":\"batch.completed\",\"revision\":1,"
    "\"batch_id\":\"b-1\",\"status\":\"partial_succeeded\",\"items_total\":3,"
    "\"items_succeeded\":1,\"items_failed\":1,\"items_cancelled\":0,"
    "\"items_expired\":1,\"usage\":{\"input_tokens\":1,\"output_tokens\":2,"
    "\"total_tokens\":3},\"first_result_at\":1,\"completed_at\":2,"
    "\"metadata\":null}",
    "{\"batch_id\":\"b-1\",\"action\":\"cancel\",\"requested_at\":5,"
    "\"reason\":\"because\"}",
    "{\"batch_id\":\"b-1\",\"revision\":2,\"items_total\":4,"
    "\"items_succeeded\":1,\"items_failed\":1,\"items_cancelled\":1,"
    "\"items_expired\":0,\"usage\":null,\"statuses\":\"AQIDBA==\","
    "\"first_result_at\":1,\"completed_at\":null,\"updated_at\":3,"
    "\"callback_url\":\"http://x\",\"metadata\":{}}",
};

static void write_seed(const char *dir, const char *name, uint8_t sel,
                       const char *buf, size_t len) {
        char path[4096];
        FILE *fp;
        snprintf(path, sizeof(path), "%s/%s", dir, name);
        if (!(fp = fopen(path, "wb")))
                return;
        fputc(sel, fp);
        fwrite(buf, 1, len, fp);
        fclose(fp);
}

/* KB_FUZZ_WRITE_SEEDS=DIR: writes one encoded value per type and per
 * evolved BatchItem schema (with the selector byte) into DIR. */
static void write_seeds(const char *dir) {
        char err[512], *buf, name[64];
        size_t len, i;
        kb_msg_t t;
        for (t = 0; t < KB_MSG__CNT; t++) {
                json_t *j = json_loads(samples[t], 0, NULL);
                if (j && kb_serde_encode(sd, topics[t], t, j, &buf, &len, err,
                                         sizeof(err)) == KB_SERDE_OK) {
                        snprintf(name, sizeof(name), "seed-%s",
                                 kb_serde_schema_name(t) + 10);
                        write_seed(dir, name, (uint8_t)(t | 8), buf, len);
                        free(buf);
                } else
                        fprintf(stderr, "seed %d: %s\n", (int)t, err);
                json_decref(j);
        }
        for (i = 0; i < 3 && KB_MSG__CNT + i < (size_t)id_cnt; i++) {
                json_t *j = json_loads(samples[0], 0, NULL);
                char *in = json_dumps(json_object_get(j, "input"), JSON_COMPACT);
                json_object_set_new(j, "input", json_string(in));
                free(in);
                json_object_set_new(j, "deadline", json_integer(2000000000));
                json_object_set_new(j, "submitted_at", json_real(1.5));
                json_object_set_new(
                    j, "x_rec",
                    json_pack("{s:f,s:s,s:s,s:f,s:b}", "a", 2.5, "b", "YWJj",
                              "c", "Q", "d", 1.0, "e", 1));
                json_object_set_new(j, "x_arr", json_pack("[{s:n}]", "k"));
                json_object_set_new(j, "x_end", json_integer(9));
                if (kb_serde_encode_with_schema(evolved[i],
                                                ids[KB_MSG__CNT + i], j, &buf,
                                                &len, err, sizeof(err)) ==
                    KB_SERDE_OK) {
                        snprintf(name, sizeof(name), "seed-evolved-%zu", i);
                        write_seed(dir, name, 8, buf, len);
                        free(buf);
                } else
                        fprintf(stderr, "seed evolved %zu: %s\n", i, err);
                json_decref(j);
        }
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
        char url[64], err[512];
        kb_registry_t *rg;
        size_t i;
        kb_msg_t t;
        (void)argc;
        (void)argv;

        kb_log_init(KB_LOG_OFF, KB_LOG_FMT_JSON, NULL);
        snprintf(url, sizeof(url), "http://127.0.0.1:%d", start_registry());
        setenv("KBATCH_SERDE_FORMAT", "avro", 1);
        setenv("KBATCH_SERDE_SCHEMA_REGISTRY_URL", url, 1);
        setenv("KBATCH_SERDE_SCHEMA_REGISTRY_TIMEOUT_MS", "5000", 1);
        setenv("KBATCH_LOG_LEVEL", "off", 1);
        /* destroyed at exit (stop_registry) */
        if (!(conf = kb_conf_load(NULL, NULL, err, sizeof(err))) ||
            !(sd = kb_serde_new(conf, NULL, err, sizeof(err)))) {
                fprintf(stderr, "fuzz_avro: %s\n", err);
                abort();
        }
        /* kbatch's own schemas first: ids 1..5 in kb_msg_t order */
        for (t = 0; t < KB_MSG__CNT; t++) {
                int32_t id = 0;
                rg = kb_serde_registry(sd);
                char subject[128];
                snprintf(subject, sizeof(subject), "%s-value", topics[t]);
                if (kb_registry_subject_id(rg, subject, kb_serde_schema_text(t),
                                           1, &id, err, sizeof(err)) != KB_REG_OK ||
                    kb_serde_prepare(sd, topics[t], t, err, sizeof(err)) !=
                        KB_SERDE_OK) {
                        fprintf(stderr, "fuzz_avro: register: %s\n", err);
                        abort();
                }
                ids[id_cnt++] = id;
        }
        for (i = 0; i < sizeof(evolved) / sizeof(*evolved); i++) {
                int32_t id = 0;
                char subject[64];
                snprintf(subject, sizeof(subject), "evolved-%zu-value", i);
                if (kb_registry_subject_id(kb_serde_registry(sd), subject,
                                           evolved[i], 1, &id, err,
                                           sizeof(err)) != KB_REG_OK) {
                        /* the registry may refuse the non-record ones */
                        continue;
                }
                ids[id_cnt++] = id;
        }
        if (getenv("KB_FUZZ_WRITE_SEEDS"))
                write_seeds(getenv("KB_FUZZ_WRITE_SEEDS"));
        return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        kb_msg_t type;
        int keep_id;
        uint8_t *v;
        size_t len;
        char err[1024], *buf = NULL;
        size_t blen = 0;
        json_t *obj = NULL, *obj2 = NULL;

        if (size < 1)
                return 0;
        type = (kb_msg_t)((data[0] & 7) % KB_MSG__CNT);
        keep_id = (data[0] >> 3) & 1;
        len = size - 1;
        /* exact-size heap copy: ASan sees any read past the end */
        if (!(v = malloc(len ? len : 1)))
                return 0;
        memcpy(v, data + 1, len);
        if (!keep_id && len >= 5 && v[0] == 0) {
                uint32_t raw = ((uint32_t)v[1] << 24) | ((uint32_t)v[2] << 16) |
                               ((uint32_t)v[3] << 8) | v[4];
                int32_t id = ids[raw % (uint32_t)id_cnt];
                v[1] = (uint8_t)(id >> 24);
                v[2] = (uint8_t)(id >> 16);
                v[3] = (uint8_t)(id >> 8);
                v[4] = (uint8_t)id;
        }

        if (type == KB_MSG_BATCH_ITEM) {
                kb_item_t it;
                kb_codec_res_t r = kb_serde_item_decode(
                    sd, topics[type], topics[KB_MSG_ITEM_RESULT], v, len, 4096,
                    &it, err, sizeof(err));
                CHECK(r == KB_CODEC_OK || r == KB_CODEC_UNDECODABLE ||
                      r == KB_CODEC_UNADDRESSABLE || r == KB_CODEC_INVALID ||
                      /* an id never seen, beyond the registry client's
                       * budget of new ids a second: asked later */
                      (keep_id && r == KB_CODEC_RETRY));
                /* random ids never grow the client's cache past its bound
                 * (issue 15) */
                CHECK(kb_registry_ids_cached(kb_serde_registry(sd)) <= 1024);
                if (r == KB_CODEC_OK) {
                        CHECK(it.batch_id && kb_codec_batch_id_valid(it.batch_id));
                        CHECK(it.item_id && it.model && json_is_object(it.input));
                        CHECK(it.items_total >= 1 &&
                              it.items_total <= KB_ITEMS_TOTAL_MAX);
                        CHECK(it.item_index >= 0 &&
                              it.item_index < it.items_total);
                }
                if (r == KB_CODEC_OK || r == KB_CODEC_INVALID) {
                        /* its result must be publishable */
                        kb_result_t res;
                        char *enc;
                        size_t elen = 0;
                        memset(&res, 0, sizeof(res));
                        res.status = r == KB_CODEC_OK ? KB_STATUS_SUCCEEDED
                                                      : KB_STATUS_FAILED;
                        res.error_code = r == KB_CODEC_OK ? NULL : "invalid_item";
                        res.error_message = r == KB_CODEC_OK ? NULL : err;
                        res.latency_ms = -1;
                        res.worker = "fuzz";
                        enc = kb_serde_result_encode(
                            sd, topics[KB_MSG_ITEM_RESULT], &it, &res, &elen,
                            err, sizeof(err));
                        CHECK(enc);
                        free(enc);
                }
                kb_item_clear(&it);
        }

        {
                kb_serde_res_t r = kb_serde_decode(sd, topics[type], type, v,
                                                   len, &obj, err, sizeof(err));
                CHECK(r == KB_SERDE_OK || r == KB_SERDE_UNDECODABLE ||
                      (keep_id && r == KB_SERDE_RETRY));
                CHECK((r == KB_SERDE_OK) == (obj != NULL));
                if (r == KB_SERDE_OK) {
                        /* what was read re-encodes with our schema and reads
                         * back the same */
                        r = kb_serde_encode(sd, topics[type], type, obj, &buf,
                                            &blen, err, sizeof(err));
                        if (r != KB_SERDE_OK) {
                                fprintf(stderr, "re-encode failed: %s\n", err);
                                CHECK(r == KB_SERDE_OK);
                        }
                        CHECK(kb_serde_decode(sd, topics[type], type, buf,
                                              blen, &obj2, err,
                                              sizeof(err)) == KB_SERDE_OK);
                        if (!json_equal(obj, obj2)) {
                                char *a = json_dumps(obj, JSON_COMPACT |
                                                              JSON_SORT_KEYS);
                                char *b = json_dumps(obj2, JSON_COMPACT |
                                                               JSON_SORT_KEYS);
                                fprintf(stderr, "round trip differs:\n%s\n%s\n",
                                        a, b);
                                free(a);
                                free(b);
                                CHECK(0);
                        }
                }
        }
        json_decref(obj);
        json_decref(obj2);
        free(buf);
        free(v);
        return 0;
}
