/* serde: see serde.h.
 *
 * Avro work is split between avro-c and this file:
 * - avro-c parses every schema (ours and the writers' from the registry),
 *   reads the binary encoding into a generic value of the writer schema
 *   (avro_value_read) and writes a generic value of our schema
 *   (avro_value_write).
 * - this file resolves a writer value against our reader schema while
 *   converting it to the JSON form, and fills the generic value from the
 *   JSON form. avro-c's own resolver (avro_resolved_reader_new) cannot be
 *   used: it does not implement default values, so a writer schema lacking
 *   an optional field would be refused ("Reader field x doesn't appear in
 *   writer").
 * For both directions our schemas are also parsed into a small tree
 * (sd_node_t) that keeps what avro-c does not expose: field defaults and
 * the "kbatch.json_text" flag. */
#include "serde.h"

#include <avro.h>
#include <errno.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "registry.h"

/* ---- the schemas, compiled in from schemas/ ---------------------------- */

/* .incbin is resolved relative to the directory the compiler runs in: the
 * repository root (the Makefile lists the .avsc files as prerequisites of
 * serde.o). Each text is NUL-terminated. */
#define KB_INCBIN(sym, file)                                                   \
        __asm__(".section .rodata\n"                                           \
                ".global " #sym "\n"                                           \
                ".type " #sym ", @object\n"                                    \
                ".balign 16\n" #sym ":\n"                                      \
                ".incbin \"" file "\"\n"                                       \
                ".byte 0\n"                                                    \
                ".previous\n");                                                \
        extern const char sym[]

KB_INCBIN(kb_avsc_batch_item, "schemas/BatchItem.avsc");
KB_INCBIN(kb_avsc_item_result, "schemas/ItemResult.avsc");
KB_INCBIN(kb_avsc_batch_event, "schemas/BatchEvent.avsc");
KB_INCBIN(kb_avsc_control, "schemas/ControlCommand.avsc");
KB_INCBIN(kb_avsc_batch_state, "schemas/BatchState.avsc");

static const char *const sd_avsc[KB_MSG__CNT] = {
        kb_avsc_batch_item, kb_avsc_item_result, kb_avsc_batch_event,
        kb_avsc_control,    kb_avsc_batch_state,
};
static const char *const sd_names[KB_MSG__CNT] = {
        "kbatch.v1.BatchItem",  "kbatch.v1.ItemResult",
        "kbatch.v1.BatchEvent", "kbatch.v1.ControlCommand",
        "kbatch.v1.BatchState",
};

const char *kb_serde_schema_text(kb_msg_t type) {
        return (unsigned)type < KB_MSG__CNT ? sd_avsc[type] : NULL;
}

const char *kb_serde_schema_name(kb_msg_t type) {
        return (unsigned)type < KB_MSG__CNT ? sd_names[type] : NULL;
}

static const char *res_names[] = {"ok", "retry", "undecodable", "invalid"};

const char *kb_serde_res_str(kb_serde_res_t r) {
        if ((unsigned)r >= sizeof(res_names) / sizeof(*res_names))
                return "unknown";
        return res_names[r];
}

/* ---- our schemas as a tree ------------------------------------------- */

typedef enum {
        N_NULL = 0,
        N_BOOLEAN,
        N_INT,
        N_LONG,
        N_FLOAT,
        N_DOUBLE,
        N_BYTES,
        N_STRING,
        N_RECORD,
        N_ENUM,
        N_ARRAY,
        N_MAP,
        N_UNION,
        N_FIXED,
} node_kind_t;

typedef struct sd_node_s sd_node_t;

typedef struct sd_field_s {
        const char *fd_name; /* borrowed from the schema's json_t */
        sd_node_t *fd_type;
        json_t *fd_default; /* borrowed, or NULL: no default */
        int fd_json_text;   /* "kbatch.json_text": true */
} sd_field_t;

struct sd_node_s {
        node_kind_t nd_kind;
        char *nd_name;         /* full name of a named type */
        sd_field_t *nd_fields; /* record */
        size_t nd_field_cnt;
        sd_node_t **nd_branches; /* union */
        size_t nd_branch_cnt;
        sd_node_t *nd_items;      /* array items, map values */
        json_t *nd_symbols;       /* enum: borrowed array of strings */
        int64_t nd_size;          /* fixed */
        sd_node_t *nd_next_alloc; /* every node of a tree, for freeing */
        sd_node_t *nd_next_named;
};

typedef struct sd_tree_s {
        json_t *tr_json; /* the parsed .avsc, owns what nodes borrow */
        sd_node_t *tr_root;
        sd_node_t *tr_all;
        sd_node_t *tr_named;
} sd_tree_t;

static const char *const prim_names[] = {"null",  "boolean", "int",   "long",
                                         "float", "double",  "bytes", "string"};

static sd_node_t *node_alloc(sd_tree_t *tr, node_kind_t k) {
        sd_node_t *n = calloc(1, sizeof(*n));
        if (!n)
                return NULL;
        n->nd_kind = k;
        n->nd_next_alloc = tr->tr_all;
        tr->tr_all = n;
        return n;
}

static void tree_free(sd_tree_t *tr) {
        sd_node_t *n, *next;
        for (n = tr->tr_all; n; n = next) {
                next = n->nd_next_alloc;
                free(n->nd_name);
                free(n->nd_fields);
                free(n->nd_branches);
                free(n);
        }
        json_decref(tr->tr_json);
        memset(tr, 0, sizeof(*tr));
}

static char *full_name(const char *name, const char *ns) {
        char *s;
        if (strchr(name, '.') || !ns || !*ns)
                return strdup(name);
        if (asprintf(&s, "%s.%s", ns, name) < 0)
                return NULL;
        return s;
}

static sd_node_t *parse_node(sd_tree_t *tr, json_t *j, const char *ns,
                             char *err, size_t errsz);

static sd_node_t *parse_named_ref(sd_tree_t *tr, const char *name,
                                  const char *ns) {
        char *fn = full_name(name, ns);
        sd_node_t *n;
        for (n = tr->tr_named; fn && n; n = n->nd_next_named)
                if (!strcmp(n->nd_name, fn) || !strcmp(n->nd_name, name))
                        break;
        free(fn);
        return n;
}

static sd_node_t *parse_node(sd_tree_t *tr, json_t *j, const char *ns,
                             char *err, size_t errsz) {
        size_t i;
        sd_node_t *n;
        const char *type;
        if (json_is_string(j)) {
                const char *s = json_string_value(j);
                for (i = 0; i < sizeof(prim_names) / sizeof(*prim_names); i++)
                        if (!strcmp(s, prim_names[i]))
                                return node_alloc(tr, (node_kind_t)i);
                if ((n = parse_named_ref(tr, s, ns)))
                        return n;
                snprintf(err, errsz, "unknown type '%s'", s);
                return NULL;
        }
        if (json_is_array(j)) {
                if (!(n = node_alloc(tr, N_UNION)) ||
                    !(n->nd_branches = calloc(json_array_size(j) + 1,
                                              sizeof(*n->nd_branches))))
                        return NULL;
                for (i = 0; i < json_array_size(j); i++)
                        if (!(n->nd_branches[i] =
                                      parse_node(tr, json_array_get(j, i), ns,
                                                 err, errsz)))
                                return NULL;
                n->nd_branch_cnt = json_array_size(j);
                return n;
        }
        if (!json_is_object(j)) {
                snprintf(err, errsz,
                         "a type must be a string, array or object");
                return NULL;
        }
        if (!json_is_string(json_object_get(j, "type")))
                return parse_node(tr, json_object_get(j, "type"), ns, err,
                                  errsz);
        type = json_string_value(json_object_get(j, "type"));
        if (!strcmp(type, "record") || !strcmp(type, "error") ||
            !strcmp(type, "enum") || !strcmp(type, "fixed")) {
                const char *name =
                        json_string_value(json_object_get(j, "name"));
                const char *nns =
                        json_string_value(json_object_get(j, "namespace"));
                json_t *fields;
                if (!name) {
                        snprintf(err, errsz, "a %s without a name", type);
                        return NULL;
                }
                if (nns)
                        ns = nns;
                if (!(n = node_alloc(tr, !strcmp(type, "enum") ? N_ENUM
                                         : !strcmp(type, "fixed")
                                                 ? N_FIXED
                                                 : N_RECORD)) ||
                    !(n->nd_name = full_name(name, ns)))
                        return NULL;
                if (strchr(n->nd_name, '.')) /* names inside: its space */
                        ns = NULL;
                n->nd_next_named = tr->tr_named;
                tr->tr_named = n;
                if (n->nd_kind == N_ENUM) {
                        n->nd_symbols = json_object_get(j, "symbols");
                        return n;
                }
                if (n->nd_kind == N_FIXED) {
                        n->nd_size =
                                json_integer_value(json_object_get(j, "size"));
                        return n;
                }
                {
                        /* the record's own namespace for its fields */
                        char *rns = strdup(n->nd_name);
                        char *dot = rns ? strrchr(rns, '.') : NULL;
                        fields = json_object_get(j, "fields");
                        if (!rns)
                                return NULL;
                        if (dot)
                                *dot = '\0';
                        if (!json_is_array(fields) ||
                            !(n->nd_fields = calloc(json_array_size(fields) + 1,
                                                    sizeof(*n->nd_fields)))) {
                                free(rns);
                                snprintf(err, errsz, "record %s: bad fields",
                                         n->nd_name);
                                return NULL;
                        }
                        for (i = 0; i < json_array_size(fields); i++) {
                                json_t *f = json_array_get(fields, i);
                                sd_field_t *fd = &n->nd_fields[i];
                                fd->fd_name = json_string_value(
                                        json_object_get(f, "name"));
                                fd->fd_default = json_object_get(f, "default");
                                fd->fd_json_text = json_is_true(
                                        json_object_get(f, "kbatch.json_text"));
                                if (!fd->fd_name ||
                                    !(fd->fd_type = parse_node(
                                              tr, json_object_get(f, "type"),
                                              dot ? rns : NULL, err, errsz))) {
                                        free(rns);
                                        return NULL;
                                }
                        }
                        n->nd_field_cnt = json_array_size(fields);
                        free(rns);
                        return n;
                }
        }
        if (!strcmp(type, "array") || !strcmp(type, "map")) {
                if (!(n = node_alloc(tr, type[0] == 'a' ? N_ARRAY : N_MAP)) ||
                    !(n->nd_items = parse_node(
                              tr,
                              json_object_get(j, type[0] == 'a' ? "items"
                                                                : "values"),
                              ns, err, errsz)))
                        return NULL;
                return n;
        }
        /* {"type": "long", "logicalType": ...} and the like */
        return parse_node(tr, json_object_get(j, "type"), ns, err, errsz);
}

static int tree_parse(sd_tree_t *tr, const char *text, char *err,
                      size_t errsz) {
        json_error_t jerr;
        memset(tr, 0, sizeof(*tr));
        if (!(tr->tr_json = json_loads(text, 0, &jerr))) {
                snprintf(err, errsz, "not JSON: %s", jerr.text);
                return -1;
        }
        err[0] = '\0';
        if (!(tr->tr_root = parse_node(tr, tr->tr_json, NULL, err, errsz))) {
                if (!err[0])
                        snprintf(err, errsz, "out of memory");
                return -1;
        }
        return 0;
}

/* ---- state ------------------------------------------------------------- */

/* Our schema of one message type: the reader schema, and the writer schema
 * of what we produce. */
typedef struct sd_own_s {
        sd_tree_t ow_tree;
        avro_schema_t ow_schema;
        avro_value_iface_t *ow_iface;
        avro_value_t ow_value; /* reused for every encode */
} sd_own_t;

/* A writer schema fetched by id. */
typedef struct sd_writer_s {
        struct sd_writer_s *wr_next;
        int32_t wr_id;
        avro_schema_t wr_schema;
        avro_value_iface_t *wr_iface;
        avro_value_t wr_value; /* reused for every decode */
        char *wr_bad;          /* the schema does not parse: why */
} sd_writer_t;

/* A topic we produce to: its subject's schema id. */
typedef struct sd_topic_s {
        struct sd_topic_s *tp_next;
        char *tp_name;
        kb_msg_t tp_type;
        int32_t tp_id;
        int tp_known;
        int64_t tp_logged_at; /* mono ms of the last complaint */
} sd_topic_t;

struct kb_serde_s {
        const kb_conf_t *sd_conf;
        kb_format_t sd_format[KB_TOPIC__CNT];
        kb_format_t sd_default;
        kb_registry_t *sd_rg; /* NULL: no avro topic */
        sd_own_t sd_own[KB_MSG__CNT];
        sd_writer_t *sd_writers;
        sd_writer_t *sd_last_writer; /* hot path: the last one used */
        sd_topic_t *sd_topics;
        avro_reader_t sd_reader;
        avro_writer_t sd_writer;
        /* a subject the registry refused, for kb_serde_healthy */
        pthread_mutex_t sd_lock;
        char sd_why[512];
};

static kb_format_t parse_format(const char *s, kb_format_t dflt) {
        if (!s || !*s)
                return dflt;
        return !strcmp(s, "avro") ? KB_FORMAT_AVRO : KB_FORMAT_JSON;
}

kb_serde_t *kb_serde_new(const kb_conf_t *conf, kb_loop_t *loop, char *errstr,
                         size_t errstr_size) {
        kb_serde_t *sd = calloc(1, sizeof(*sd));
        const char *ovr[KB_TOPIC__CNT] = {NULL};
        int any_avro = 0;
        char err[256];
        size_t i;

        if (!sd) {
                snprintf(errstr, errstr_size, "out of memory");
                return NULL;
        }
        pthread_mutex_init(&sd->sd_lock, NULL);
        sd->sd_conf = conf;
        sd->sd_default = parse_format(conf->serde_format, KB_FORMAT_JSON);
        ovr[KB_TOPIC_ITEMS] = conf->serde_items_format;
        ovr[KB_TOPIC_RESULTS] = conf->serde_results_format;
        ovr[KB_TOPIC_BATCHES] = conf->serde_batches_format;
        ovr[KB_TOPIC_CONTROL] = conf->serde_control_format;
        ovr[KB_TOPIC_BATCH_STATE] = conf->serde_batch_state_format;
        for (i = 0; i < KB_TOPIC__CNT; i++)
                sd->sd_format[i] = parse_format(ovr[i], sd->sd_default);
        /* DLQs hold copies of what they dead-letter. */
        sd->sd_format[KB_TOPIC_ITEMS_DLQ] = sd->sd_format[KB_TOPIC_ITEMS];
        sd->sd_format[KB_TOPIC_ITEMS_PRIORITY] = sd->sd_format[KB_TOPIC_ITEMS];
        sd->sd_format[KB_TOPIC_BATCHES_DLQ] = sd->sd_format[KB_TOPIC_BATCHES];
        for (i = 0; i < KB_TOPIC__CNT; i++)
                any_avro |= sd->sd_format[i] == KB_FORMAT_AVRO;

        for (i = 0; i < KB_MSG__CNT; i++) {
                sd_own_t *ow = &sd->sd_own[i];
                if (tree_parse(&ow->ow_tree, sd_avsc[i], err, sizeof(err))) {
                        snprintf(errstr, errstr_size, "schema %s: %s",
                                 sd_names[i], err);
                        goto fail;
                }
                if (avro_schema_from_json_length(sd_avsc[i], strlen(sd_avsc[i]),
                                                 &ow->ow_schema) ||
                    !(ow->ow_iface =
                              avro_generic_class_from_schema(ow->ow_schema)) ||
                    avro_generic_value_new(ow->ow_iface, &ow->ow_value)) {
                        snprintf(errstr, errstr_size, "schema %s: %s",
                                 sd_names[i], avro_strerror());
                        goto fail;
                }
        }
        if (!(sd->sd_reader = avro_reader_memory("", 0)) ||
            !(sd->sd_writer = avro_writer_memory("", 0))) {
                snprintf(errstr, errstr_size, "out of memory");
                goto fail;
        }
        if (any_avro) {
                kb_registry_conf_t rc;
                const char *pw = NULL;
                memset(&rc, 0, sizeof(rc));
                if (conf->serde_schema_registry_password_env &&
                    *conf->serde_schema_registry_password_env)
                        pw = getenv(conf->serde_schema_registry_password_env);
                rc.rc_urls = conf->serde_schema_registry_url;
                rc.rc_user = conf->serde_schema_registry_user;
                rc.rc_password = pw;
                rc.rc_bearer_env = conf->serde_schema_registry_bearer_token_env;
                rc.rc_bearer_file =
                        conf->serde_schema_registry_bearer_token_file;
                rc.rc_ca_file = conf->serde_schema_registry_ca_file;
                rc.rc_cert_file = conf->serde_schema_registry_cert_file;
                rc.rc_key_file = conf->serde_schema_registry_key_file;
                rc.rc_tls_verify = conf->serde_schema_registry_tls_verify;
                rc.rc_timeout_ms = conf->serde_schema_registry_timeout_ms;
                if (!(sd->sd_rg =
                              kb_registry_new(&rc, loop, errstr, errstr_size)))
                        goto fail;
        }
        return sd;
fail:
        kb_serde_destroy(sd);
        return NULL;
}

void kb_serde_destroy(kb_serde_t *sd) {
        size_t i;
        sd_writer_t *wr, *wn;
        sd_topic_t *tp, *tn;
        if (!sd)
                return;
        for (i = 0; i < KB_MSG__CNT; i++) {
                sd_own_t *ow = &sd->sd_own[i];
                if (ow->ow_iface) {
                        if (ow->ow_value.iface)
                                avro_value_decref(&ow->ow_value);
                        avro_value_iface_decref(ow->ow_iface);
                }
                if (ow->ow_schema)
                        avro_schema_decref(ow->ow_schema);
                tree_free(&ow->ow_tree);
        }
        for (wr = sd->sd_writers; wr; wr = wn) {
                wn = wr->wr_next;
                if (wr->wr_value.iface)
                        avro_value_decref(&wr->wr_value);
                if (wr->wr_iface)
                        avro_value_iface_decref(wr->wr_iface);
                if (wr->wr_schema)
                        avro_schema_decref(wr->wr_schema);
                free(wr->wr_bad);
                free(wr);
        }
        for (tp = sd->sd_topics; tp; tp = tn) {
                tn = tp->tp_next;
                free(tp->tp_name);
                free(tp);
        }
        if (sd->sd_reader)
                avro_reader_free(sd->sd_reader);
        if (sd->sd_writer)
                avro_writer_free(sd->sd_writer);
        kb_registry_destroy(sd->sd_rg);
        pthread_mutex_destroy(&sd->sd_lock);
        free(sd);
}

kb_format_t kb_serde_format(const kb_serde_t *sd, const char *topic) {
        const kb_conf_t *c = sd->sd_conf;
        size_t i, n;
        for (i = 0; i < KB_TOPIC__CNT; i++)
                if (c->topics_name[i] && !strcmp(topic, c->topics_name[i]))
                        return sd->sd_format[i];
        n = c->topics_name[KB_TOPIC_ITEMS]
                    ? strlen(c->topics_name[KB_TOPIC_ITEMS])
                    : 0;
        if (n && !strncmp(topic, c->topics_name[KB_TOPIC_ITEMS], n) &&
            !strncmp(topic + n, ".retry.", 7))
                return sd->sd_format[KB_TOPIC_ITEMS];
        return sd->sd_default;
}

uint64_t kb_serde_generation(const kb_serde_t *sd) {
        return sd->sd_rg ? kb_registry_generation(sd->sd_rg) : 0;
}

struct kb_registry_s *kb_serde_registry(kb_serde_t *sd) {
        return sd->sd_rg;
}

int kb_serde_healthy(kb_serde_t *sd, char *why, size_t why_size) {
        int ok = 1;
        if (!sd->sd_rg)
                return 1;
        if (!kb_registry_healthy(sd->sd_rg, why, why_size))
                return 0;
        pthread_mutex_lock(&sd->sd_lock);
        if (sd->sd_why[0]) {
                ok = 0;
                if (why && why_size)
                        snprintf(why, why_size, "%s", sd->sd_why);
        }
        pthread_mutex_unlock(&sd->sd_lock);
        return ok;
}

static void set_why(kb_serde_t *sd, const char *why) {
        pthread_mutex_lock(&sd->sd_lock);
        snprintf(sd->sd_why, sizeof(sd->sd_why), "%s", why ? why : "");
        pthread_mutex_unlock(&sd->sd_lock);
}

/* ---- base64 (bytes fields in the JSON form) --------------------------- */

static json_t *b64_json(const void *buf, size_t len) {
        size_t olen = 4 * ((len + 2) / 3);
        char *s = malloc(olen + 1);
        json_t *j;
        if (!s)
                return NULL;
        EVP_EncodeBlock((unsigned char *)s, buf, (int)len);
        j = json_stringn(s, olen);
        free(s);
        return j;
}

/* Decodes a base64 string; *outp malloc'ed. -1 when not base64. */
static int b64_decode(const char *s, size_t len, void **outp, size_t *olenp) {
        unsigned char *out;
        int n, pad = 0;
        if (len % 4)
                return -1;
        if (!(out = malloc(len / 4 * 3 + 1)))
                return -1;
        n = len ? EVP_DecodeBlock(out, (const unsigned char *)s, (int)len) : 0;
        if (n < 0) {
                free(out);
                return -1;
        }
        if (len && s[len - 1] == '=')
                pad++;
        if (len > 1 && s[len - 2] == '=')
                pad++;
        *outp = out;
        *olenp = (size_t)n - (size_t)pad;
        return 0;
}

/* ---- Avro (writer value) -> JSON, resolving against a reader node ----- */

#define RERR(...)                                                              \
        do {                                                                   \
                snprintf(err, errsz, __VA_ARGS__);                             \
                return NULL;                                                   \
        } while (0)

static const char *avro_type_str(avro_type_t t) {
        switch (t) {
        case AVRO_STRING:
                return "string";
        case AVRO_BYTES:
                return "bytes";
        case AVRO_INT32:
                return "int";
        case AVRO_INT64:
                return "long";
        case AVRO_FLOAT:
                return "float";
        case AVRO_DOUBLE:
                return "double";
        case AVRO_BOOLEAN:
                return "boolean";
        case AVRO_NULL:
                return "null";
        case AVRO_RECORD:
                return "record";
        case AVRO_ENUM:
                return "enum";
        case AVRO_FIXED:
                return "fixed";
        case AVRO_MAP:
                return "map";
        case AVRO_ARRAY:
                return "array";
        case AVRO_UNION:
                return "union";
        default:
                return "?";
        }
}

/* Can a writer value of type t be read as reader node r? exact: same type
 * only; otherwise with Avro's promotions too. */
static int type_matches(avro_type_t t, const sd_node_t *r, int exact) {
        switch (t) {
        case AVRO_NULL:
                return r->nd_kind == N_NULL;
        case AVRO_BOOLEAN:
                return r->nd_kind == N_BOOLEAN;
        case AVRO_INT32:
                return r->nd_kind == N_INT ||
                       (!exact &&
                        (r->nd_kind == N_LONG || r->nd_kind == N_FLOAT ||
                         r->nd_kind == N_DOUBLE));
        case AVRO_INT64:
                return r->nd_kind == N_LONG ||
                       (!exact &&
                        (r->nd_kind == N_FLOAT || r->nd_kind == N_DOUBLE));
        case AVRO_FLOAT:
                return r->nd_kind == N_FLOAT ||
                       (!exact && r->nd_kind == N_DOUBLE);
        case AVRO_DOUBLE:
                return r->nd_kind == N_DOUBLE;
        case AVRO_STRING:
                return r->nd_kind == N_STRING ||
                       (!exact && r->nd_kind == N_BYTES);
        case AVRO_BYTES:
                return r->nd_kind == N_BYTES ||
                       (!exact && r->nd_kind == N_STRING);
        case AVRO_RECORD:
                return r->nd_kind == N_RECORD;
        case AVRO_ENUM:
                return r->nd_kind == N_ENUM;
        case AVRO_FIXED:
                return r->nd_kind == N_FIXED;
        case AVRO_MAP:
                return r->nd_kind == N_MAP;
        case AVRO_ARRAY:
                return r->nd_kind == N_ARRAY;
        default:
                return 0;
        }
}

static json_t *resolve(avro_value_t *w, const sd_node_t *r, int json_text,
                       const char *path, char *err, size_t errsz);

static json_t *resolve_record(avro_value_t *w, const sd_node_t *r,
                              const char *path, char *err, size_t errsz) {
        json_t *o = json_object();
        size_t i;
        char sub[256];
        if (!o)
                RERR("out of memory");
        for (i = 0; i < r->nd_field_cnt; i++) {
                const sd_field_t *fd = &r->nd_fields[i];
                avro_value_t child;
                json_t *v;
                snprintf(sub, sizeof(sub), "%s%s%s", path, *path ? "." : "",
                         fd->fd_name);
                if (avro_value_get_by_name(w, fd->fd_name, &child, NULL) == 0)
                        v = resolve(&child, fd->fd_type, fd->fd_json_text, sub,
                                    err, errsz);
                else if (fd->fd_default)
                        v = json_deep_copy(fd->fd_default);
                else {
                        snprintf(err, errsz,
                                 "field '%s' is missing in the writer schema "
                                 "and has no default",
                                 sub);
                        v = NULL;
                }
                if (!v || json_object_set_new_nocheck(o, fd->fd_name, v)) {
                        json_decref(o);
                        return NULL;
                }
        }
        return o;
}

static json_t *resolve(avro_value_t *w, const sd_node_t *r, int json_text,
                       const char *path, char *err, size_t errsz) {
        avro_type_t t = avro_value_get_type(w);
        size_t i, n = 0;
        const char *name = *path ? path : "(record)";

        if (t == AVRO_UNION) {
                avro_value_t b;
                if (avro_value_get_current_branch(w, &b))
                        RERR("'%s': union without a branch", name);
                return resolve(&b, r, json_text, path, err, errsz);
        }
        if (r->nd_kind == N_UNION) {
                int pass;
                for (pass = 1; pass >= 0; pass--)
                        for (i = 0; i < r->nd_branch_cnt; i++)
                                if (type_matches(t, r->nd_branches[i], pass))
                                        return resolve(w, r->nd_branches[i],
                                                       json_text, path, err,
                                                       errsz);
                RERR("'%s': the writer's %s matches no branch of the reader's "
                     "union",
                     name, avro_type_str(t));
        }
        if (!type_matches(t, r, 0))
                RERR("'%s': the writer's %s cannot be read as the reader's %s",
                     name, avro_type_str(t),
                     r->nd_kind < sizeof(prim_names) / sizeof(*prim_names)
                             ? prim_names[r->nd_kind]
                             : (r->nd_name ? r->nd_name : "type"));
        switch (t) {
        case AVRO_NULL:
                return json_null();
        case AVRO_BOOLEAN: {
                int b = 0;
                avro_value_get_boolean(w, &b);
                return json_boolean(b);
        }
        case AVRO_INT32: {
                int32_t v = 0;
                avro_value_get_int(w, &v);
                if (r->nd_kind == N_FLOAT || r->nd_kind == N_DOUBLE)
                        return json_real(v);
                return json_integer(v);
        }
        case AVRO_INT64: {
                int64_t v = 0;
                avro_value_get_long(w, &v);
                if (r->nd_kind == N_FLOAT || r->nd_kind == N_DOUBLE)
                        return json_real((double)v);
                return json_integer(v);
        }
        case AVRO_FLOAT: {
                float v = 0;
                avro_value_get_float(w, &v);
                return json_real(v);
        }
        case AVRO_DOUBLE: {
                double v = 0;
                avro_value_get_double(w, &v);
                return json_real(v);
        }
        case AVRO_STRING:
        case AVRO_BYTES: {
                const char *s = NULL;
                const void *b = NULL;
                size_t len = 0;
                json_t *j;
                if (t == AVRO_STRING) {
                        avro_value_get_string(w, &s, &len);
                        if (len)
                                len--; /* the size counts the NUL */
                } else {
                        avro_value_get_bytes(w, &b, &len);
                        s = b;
                }
                if (r->nd_kind == N_BYTES)
                        return b64_json(s ? s : "", len);
                if (json_text && len) {
                        /* JSON text: the inline value (when it is not JSON,
                         * the string itself, for validation to judge) */
                        if ((j = json_loadb(s, len,
                                            JSON_DECODE_ANY |
                                                    JSON_REJECT_DUPLICATES,
                                            NULL)))
                                return j;
                }
                if (!(j = json_stringn(s ? s : "", len)))
                        RERR("'%s': string is not valid UTF-8", name);
                return j;
        }
        case AVRO_FIXED: {
                const void *b = NULL;
                size_t len = 0;
                avro_value_get_fixed(w, &b, &len);
                return b64_json(b, len);
        }
        case AVRO_ENUM: {
                int v = 0;
                const char *sym;
                avro_value_get_enum(w, &v);
                sym = avro_schema_enum_get(avro_value_get_schema(w), v);
                if (!sym)
                        RERR("'%s': enum value %d out of range", name, v);
                n = json_array_size(r->nd_symbols);
                for (i = 0; i < n; i++)
                        if (!strcmp(json_string_value(
                                            json_array_get(r->nd_symbols, i)),
                                    sym))
                                return json_string(sym);
                RERR("'%s': enum symbol '%s' unknown to the reader", name, sym);
        }
        case AVRO_ARRAY:
        case AVRO_MAP: {
                json_t *c = t == AVRO_ARRAY ? json_array() : json_object();
                char sub[256];
                if (!c)
                        RERR("out of memory");
                avro_value_get_size(w, &n);
                for (i = 0; i < n; i++) {
                        avro_value_t e;
                        const char *key = NULL;
                        json_t *v;
                        avro_value_get_by_index(w, i, &e, &key);
                        snprintf(sub, sizeof(sub), "%s[%s]", name,
                                 key ? key : "");
                        if (!(v = resolve(&e, r->nd_items, 0, sub, err,
                                          errsz)) ||
                            (t == AVRO_ARRAY ? json_array_append_new(c, v)
                                             : json_object_set_new(
                                                       c, key ? key : "", v))) {
                                json_decref(c);
                                return NULL;
                        }
                }
                return c;
        }
        case AVRO_RECORD:
                return resolve_record(w, r, path, err, errsz);
        default:
                RERR("'%s': unsupported Avro type", name);
        }
}

/* ---- JSON -> Avro (our schema) ------------------------------------------ */

static int fill(avro_value_t *v, const sd_node_t *n, const json_t *j,
                int json_text, const char *path, char *err, size_t errsz);

#define FERR(...)                                                              \
        do {                                                                   \
                snprintf(err, errsz, __VA_ARGS__);                             \
                return -1;                                                     \
        } while (0)

/* Does JSON value j fit node n (without looking inside containers)? */
static int json_fits(const json_t *j, const sd_node_t *n, int json_text) {
        switch (n->nd_kind) {
        case N_NULL:
                return json_is_null(j);
        case N_BOOLEAN:
                return json_is_boolean(j);
        case N_INT:
                return json_is_integer(j) &&
                       json_integer_value(j) >= INT32_MIN &&
                       json_integer_value(j) <= INT32_MAX;
        case N_LONG:
                return json_is_integer(j);
        case N_FLOAT:
        case N_DOUBLE:
                return json_is_number(j);
        case N_STRING:
                return json_text ? !json_is_null(j) : json_is_string(j);
        case N_BYTES:
        case N_FIXED:
        case N_ENUM:
                return json_is_string(j);
        case N_RECORD:
        case N_MAP:
                return json_is_object(j);
        case N_ARRAY:
                return json_is_array(j);
        default:
                return 0;
        }
}

static int fill(avro_value_t *v, const sd_node_t *n, const json_t *j,
                int json_text, const char *path, char *err, size_t errsz) {
        size_t i;
        const char *name = *path ? path : "(record)";
        int rc = 0;

        if (n->nd_kind == N_UNION) {
                avro_value_t b;
                for (i = 0; i < n->nd_branch_cnt; i++)
                        if (json_fits(j, n->nd_branches[i], json_text))
                                break;
                if (i == n->nd_branch_cnt)
                        FERR("'%s': a JSON %s fits no branch of the union",
                             name,
                             json_is_object(j)    ? "object"
                             : json_is_array(j)   ? "array"
                             : json_is_string(j)  ? "string"
                             : json_is_integer(j) ? "integer"
                             : json_is_real(j)    ? "number"
                             : json_is_boolean(j) ? "boolean"
                                                  : "null");
                if (avro_value_set_branch(v, (int)i, &b))
                        FERR("'%s': %s", name, avro_strerror());
                return fill(&b, n->nd_branches[i], j, json_text, path, err,
                            errsz);
        }
        if (!json_fits(j, n, json_text))
                FERR("'%s' has the wrong JSON type for Avro %s", name,
                     n->nd_kind < sizeof(prim_names) / sizeof(*prim_names)
                             ? prim_names[n->nd_kind]
                             : (n->nd_name ? n->nd_name : "type"));
        switch (n->nd_kind) {
        case N_NULL:
                rc = avro_value_set_null(v);
                break;
        case N_BOOLEAN:
                rc = avro_value_set_boolean(v, json_is_true(j));
                break;
        case N_INT:
                rc = avro_value_set_int(v, (int32_t)json_integer_value(j));
                break;
        case N_LONG:
                rc = avro_value_set_long(v, json_integer_value(j));
                break;
        case N_FLOAT:
                rc = avro_value_set_float(v, (float)json_number_value(j));
                break;
        case N_DOUBLE:
                rc = avro_value_set_double(v, json_number_value(j));
                break;
        case N_STRING:
                if (json_text && !json_is_string(j)) {
                        char *s = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
                        if (!s)
                                FERR("out of memory");
                        rc = avro_value_set_string_len(v, s, strlen(s) + 1);
                        free(s);
                } else
                        rc = avro_value_set_string_len(v, json_string_value(j),
                                                       json_string_length(j) +
                                                               1);
                break;
        case N_BYTES:
        case N_FIXED: {
                void *b;
                size_t len;
                if (b64_decode(json_string_value(j), json_string_length(j), &b,
                               &len))
                        FERR("'%s' is not a base64 string", name);
                if (n->nd_kind == N_FIXED && (int64_t)len != n->nd_size) {
                        free(b);
                        FERR("'%s' must be %lld bytes", name,
                             (long long)n->nd_size);
                }
                rc = n->nd_kind == N_BYTES ? avro_value_set_bytes(v, b, len)
                                           : avro_value_set_fixed(v, b, len);
                free(b);
                break;
        }
        case N_ENUM:
                for (i = 0; i < json_array_size(n->nd_symbols); i++)
                        if (!strcmp(json_string_value(
                                            json_array_get(n->nd_symbols, i)),
                                    json_string_value(j)))
                                break;
                if (i == json_array_size(n->nd_symbols))
                        FERR("'%s': '%s' is not a symbol of %s", name,
                             json_string_value(j), n->nd_name);
                rc = avro_value_set_enum(v, (int)i);
                break;
        case N_ARRAY:
        case N_MAP: {
                char sub[256];
                if (n->nd_kind == N_ARRAY) {
                        const json_t *e;
                        json_array_foreach(j, i, e) {
                                avro_value_t c;
                                snprintf(sub, sizeof(sub), "%s[%zu]", name, i);
                                if (avro_value_append(v, &c, NULL))
                                        FERR("'%s': %s", sub, avro_strerror());
                                if (fill(&c, n->nd_items, e, 0, sub, err,
                                         errsz))
                                        return -1;
                        }
                } else {
                        const char *k;
                        const json_t *e;
                        json_object_foreach((json_t *)j, k, e) {
                                avro_value_t c;
                                snprintf(sub, sizeof(sub), "%s[%s]", name, k);
                                if (avro_value_add(v, k, &c, NULL, NULL))
                                        FERR("'%s': %s", sub, avro_strerror());
                                if (fill(&c, n->nd_items, e, 0, sub, err,
                                         errsz))
                                        return -1;
                        }
                }
                break;
        }
        case N_RECORD: {
                char sub[256];
                for (i = 0; i < n->nd_field_cnt; i++) {
                        const sd_field_t *fd = &n->nd_fields[i];
                        const json_t *fj = json_object_get(j, fd->fd_name);
                        avro_value_t c;
                        snprintf(sub, sizeof(sub), "%s%s%s", path,
                                 *path ? "." : "", fd->fd_name);
                        if (!fj)
                                fj = fd->fd_default;
                        if (!fj)
                                FERR("'%s' is missing (required by %s)", sub,
                                     n->nd_name);
                        if (avro_value_get_by_index(v, i, &c, NULL))
                                FERR("'%s': %s", sub, avro_strerror());
                        if (fill(&c, fd->fd_type, fj, fd->fd_json_text, sub,
                                 err, errsz))
                                return -1;
                }
                break;
        }
        default:
                FERR("'%s': unsupported type", name);
        }
        if (rc)
                FERR("'%s': %s", name, avro_strerror());
        return 0;
}

/* ---- validating the binary encoding before avro-c reads it ---------- */

/* avro-c (1.11) trusts the lengths it reads: a string or bytes length
 * beyond the buffer is malloc'ed and then leaked when the read fails (up to
 * 2 GiB per message), and a negative one writes before the buffer. So every
 * value is first walked here against its writer schema, without
 * allocating: varints well formed, lengths >= 0 and within the bytes left,
 * union and enum indexes in range, block counts bounded, nothing left over.
 * Only then does avro_value_read() see it. The messages say where. */

typedef struct vd_s {
        const unsigned char *vd_base, *vd_p, *vd_end;
        int64_t vd_budget; /* elements of arrays/maps left */
        char *vd_err;
        size_t vd_errsz;
} vd_t;

#define VERR(...)                                                              \
        do {                                                                   \
                snprintf(vd->vd_err, vd->vd_errsz, __VA_ARGS__);               \
                return -1;                                                     \
        } while (0)

static int vd_long(vd_t *vd, int64_t *out, const char *what) {
        uint64_t v = 0;
        int shift = 0;
        size_t at = (size_t)(vd->vd_p - vd->vd_base);
        for (;;) {
                unsigned char b;
                if (vd->vd_p >= vd->vd_end)
                        VERR("truncated: %s at byte %zu is cut off", what, at);
                if (shift >= 64)
                        VERR("corrupt: %s at byte %zu is a varint of more than "
                             "10 bytes",
                             what, at);
                b = *vd->vd_p++;
                v |= (uint64_t)(b & 0x7f) << shift;
                shift += 7;
                if (!(b & 0x80))
                        break;
        }
        *out = (int64_t)(v >> 1) ^ -(int64_t)(v & 1);
        return 0;
}

/* Skips n bytes of a value that started at byte at. */
static int vd_skip(vd_t *vd, int64_t n, const char *what, size_t at) {
        if (n < 0)
                VERR("corrupt: %s at byte %zu has a negative length (%lld)",
                     what, at, (long long)n);
        if (n > vd->vd_end - vd->vd_p)
                VERR("truncated: %s at byte %zu needs %lld bytes, %lld left",
                     what, at, (long long)n,
                     (long long)(vd->vd_end - vd->vd_p));
        vd->vd_p += n;
        return 0;
}

static int vd_value(vd_t *vd, avro_schema_t sc, int depth) {
        int64_t n, i;
        size_t k;
        if (depth > 64)
                VERR("corrupt: values nested more than 64 deep");
        switch (avro_typeof(sc)) {
        case AVRO_NULL:
                return 0;
        case AVRO_BOOLEAN:
                if (vd->vd_p >= vd->vd_end)
                        VERR("truncated: boolean at byte %zu is cut off",
                             (size_t)(vd->vd_p - vd->vd_base));
                if (*vd->vd_p > 1)
                        VERR("corrupt: boolean at byte %zu is %u",
                             (size_t)(vd->vd_p - vd->vd_base), *vd->vd_p);
                vd->vd_p++;
                return 0;
        case AVRO_INT32:
                if (vd_long(vd, &n, "int"))
                        return -1;
                if (n < INT32_MIN || n > INT32_MAX)
                        VERR("corrupt: int before byte %zu is out of range",
                             (size_t)(vd->vd_p - vd->vd_base));
                return 0;
        case AVRO_INT64:
                return vd_long(vd, &n, "long");
        case AVRO_FLOAT:
                return vd_skip(vd, 4, "float",
                               (size_t)(vd->vd_p - vd->vd_base));
        case AVRO_DOUBLE:
                return vd_skip(vd, 8, "double",
                               (size_t)(vd->vd_p - vd->vd_base));
        case AVRO_STRING:
        case AVRO_BYTES: {
                const char *what =
                        avro_typeof(sc) == AVRO_STRING ? "string" : "bytes";
                size_t at = (size_t)(vd->vd_p - vd->vd_base);
                if (vd_long(vd, &n, what))
                        return -1;
                return vd_skip(vd, n, what, at);
        }
        case AVRO_FIXED:
                return vd_skip(vd, avro_schema_fixed_size(sc), "fixed",
                               (size_t)(vd->vd_p - vd->vd_base));
        case AVRO_ENUM:
                if (vd_long(vd, &n, "enum"))
                        return -1;
                if (n < 0 || n >= avro_schema_enum_number_of_symbols(sc))
                        VERR("corrupt: enum index %lld before byte %zu is out "
                             "of range",
                             (long long)n, (size_t)(vd->vd_p - vd->vd_base));
                return 0;
        case AVRO_UNION:
                if (vd_long(vd, &n, "union index"))
                        return -1;
                if (n < 0 || (size_t)n >= avro_schema_union_size(sc))
                        VERR("corrupt: union index %lld before byte %zu is out "
                             "of range",
                             (long long)n, (size_t)(vd->vd_p - vd->vd_base));
                return vd_value(vd, avro_schema_union_branch(sc, (int)n),
                                depth + 1);
        case AVRO_RECORD:
                for (k = 0; k < avro_schema_record_size(sc); k++)
                        if (vd_value(vd,
                                     avro_schema_record_field_get_by_index(
                                             sc, (int)k),
                                     depth + 1))
                                return -1;
                return 0;
        case AVRO_ARRAY:
        case AVRO_MAP: {
                int map = avro_typeof(sc) == AVRO_MAP;
                avro_schema_t el = map ? avro_schema_map_values(sc)
                                       : avro_schema_array_items(sc);
                for (;;) {
                        if (vd_long(vd, &n, "block count"))
                                return -1;
                        if (n == 0)
                                return 0;
                        if (n < 0) {
                                int64_t bytes;
                                if (n == INT64_MIN)
                                        VERR("corrupt: block count");
                                n = -n;
                                if (vd_long(vd, &bytes, "block size"))
                                        return -1;
                                if (bytes < 0 || bytes > vd->vd_end - vd->vd_p)
                                        VERR("truncated: block of %lld bytes "
                                             "at byte %zu",
                                             (long long)bytes,
                                             (size_t)(vd->vd_p - vd->vd_base));
                        }
                        if (n > vd->vd_budget)
                                VERR("corrupt: %lld elements in a block before "
                                     "byte %zu",
                                     (long long)n,
                                     (size_t)(vd->vd_p - vd->vd_base));
                        vd->vd_budget -= n;
                        for (i = 0; i < n; i++) {
                                int64_t kl;
                                size_t at = (size_t)(vd->vd_p - vd->vd_base);
                                if (map && (vd_long(vd, &kl, "map key") ||
                                            vd_skip(vd, kl, "map key", at)))
                                        return -1;
                                if (vd_value(vd, el, depth + 1))
                                        return -1;
                        }
                }
        }
        case AVRO_LINK:
                return vd_value(vd, avro_schema_link_target(sc), depth + 1);
        default:
                VERR("unsupported Avro type in the writer schema");
        }
}

/* 0 when buf holds exactly one value of schema sc. */
static int validate_binary(avro_schema_t sc, const unsigned char *buf,
                           size_t len, char *err, size_t errsz) {
        vd_t vd;
        vd.vd_base = vd.vd_p = buf;
        vd.vd_end = buf + len;
        /* every element but null-ish ones takes a byte: more than the bytes
         * there are (plus slack for empty records) is corrupt */
        vd.vd_budget = (int64_t)len + 4096;
        vd.vd_err = err;
        vd.vd_errsz = errsz;
        if (vd_value(&vd, sc, 0))
                return -1;
        if (vd.vd_p != vd.vd_end) {
                snprintf(err, errsz,
                         "corrupt: %zu bytes left over after the "
                         "record",
                         (size_t)(vd.vd_end - vd.vd_p));
                return -1;
        }
        return 0;
}

/* ---- writers by id ---------------------------------------------------- */

/* The writer schema of id: OK (in *wrp), RETRY or UNDECODABLE. */
static kb_serde_res_t writer_get(kb_serde_t *sd, int32_t id, sd_writer_t **wrp,
                                 char *errstr, size_t errstr_size) {
        sd_writer_t *wr = sd->sd_last_writer;
        const char *text = NULL;
        kb_registry_res_t r;

        if (!wr || wr->wr_id != id)
                for (wr = sd->sd_writers; wr; wr = wr->wr_next)
                        if (wr->wr_id == id)
                                break;
        if (wr) {
                if (wr->wr_bad) {
                        snprintf(errstr, errstr_size, "%s", wr->wr_bad);
                        return KB_SERDE_UNDECODABLE;
                }
                sd->sd_last_writer = wr;
                *wrp = wr;
                return KB_SERDE_OK;
        }
        r = kb_registry_schema_by_id(sd->sd_rg, id, &text, errstr, errstr_size);
        switch (r) {
        case KB_REG_OK:
                break;
        case KB_REG_NOT_FOUND:
                /* errstr: "schema id N not found in the schema registry
                 * (...)" */
                return KB_SERDE_UNDECODABLE;
        case KB_REG_REJECTED:
                return KB_SERDE_UNDECODABLE;
        default:
                return KB_SERDE_RETRY;
        }
        if (!(wr = calloc(1, sizeof(*wr)))) {
                snprintf(errstr, errstr_size, "out of memory");
                return KB_SERDE_RETRY;
        }
        wr->wr_id = id;
        if (avro_schema_from_json_length(text, strlen(text), &wr->wr_schema) ||
            !(wr->wr_iface = avro_generic_class_from_schema(wr->wr_schema)) ||
            avro_generic_value_new(wr->wr_iface, &wr->wr_value)) {
                char buf[400];
                snprintf(buf, sizeof(buf),
                         "schema id %d is not a valid Avro schema: %.300s",
                         (int)id, avro_strerror());
                wr->wr_bad = strdup(buf);
                memset(&wr->wr_value, 0, sizeof(wr->wr_value));
                snprintf(errstr, errstr_size, "%s", buf);
                wr->wr_next = sd->sd_writers;
                sd->sd_writers = wr;
                return KB_SERDE_UNDECODABLE;
        }
        wr->wr_next = sd->sd_writers;
        sd->sd_writers = wr;
        sd->sd_last_writer = wr;
        *wrp = wr;
        return KB_SERDE_OK;
}

/* ---- subject ids of the topics we produce to ------------------------- */

static kb_serde_res_t topic_id(kb_serde_t *sd, const char *topic, kb_msg_t type,
                               int32_t *idp, char *errstr, size_t errstr_size) {
        sd_topic_t *tp;
        char subject[300];
        kb_registry_res_t r;

        for (tp = sd->sd_topics; tp; tp = tp->tp_next)
                if (tp->tp_type == type && !strcmp(tp->tp_name, topic))
                        break;
        if (tp && tp->tp_known) {
                *idp = tp->tp_id;
                return KB_SERDE_OK;
        }
        if (!tp) {
                if (!(tp = calloc(1, sizeof(*tp))) ||
                    !(tp->tp_name = strdup(topic))) {
                        free(tp);
                        snprintf(errstr, errstr_size, "out of memory");
                        return KB_SERDE_RETRY;
                }
                tp->tp_type = type;
                tp->tp_next = sd->sd_topics;
                sd->sd_topics = tp;
        }
        /* TopicNameStrategy */
        snprintf(subject, sizeof(subject), "%s-value", topic);
        r = kb_registry_subject_id(sd->sd_rg, subject, sd_avsc[type],
                                   sd->sd_conf->serde_auto_register, &tp->tp_id,
                                   errstr, errstr_size);
        if (r == KB_REG_OK) {
                tp->tp_known = 1;
                *idp = tp->tp_id;
                set_why(sd, NULL);
                kb_log(KB_LOG_INFO, "serde",
                       "%s: schema %s has id %d under "
                       "subject %s",
                       topic, sd_names[type], (int)tp->tp_id, subject);
                return KB_SERDE_OK;
        }
        if (r == KB_REG_NOT_FOUND || r == KB_REG_REJECTED) {
                /* Not the message's fault: the operator must register the
                 * schema (auto_register = false) or fix the subject's
                 * compatibility. Messages wait; /readyz says why. */
                int64_t now = kb_now_ms();
                char why[600];
                snprintf(why, sizeof(why), "cannot publish %s to %s: %s",
                         sd_names[type], topic, errstr);
                set_why(sd, why);
                if (now - tp->tp_logged_at >= 10000) {
                        tp->tp_logged_at = now;
                        kb_log(KB_LOG_ERROR, "serde", "%s", why);
                }
        }
        return KB_SERDE_RETRY;
}

kb_serde_res_t kb_serde_prepare(kb_serde_t *sd, const char *topic,
                                kb_msg_t type, char *errstr,
                                size_t errstr_size) {
        int32_t id;
        if (kb_serde_format(sd, topic) != KB_FORMAT_AVRO)
                return KB_SERDE_OK;
        return topic_id(sd, topic, type, &id, errstr, errstr_size);
}

/* ---- encode / decode ------------------------------------------------- */

/* Writes value v (filled) in the wire format with id; *bufp malloc'ed. */
static kb_serde_res_t wire_write(avro_writer_t wt, avro_value_t *v, int32_t id,
                                 char **bufp, size_t *lenp, char *errstr,
                                 size_t errstr_size) {
        size_t size;
        char *buf;
        if (avro_value_sizeof(v, &size) || !(buf = malloc(size + 5))) {
                snprintf(errstr, errstr_size, "cannot size the Avro value: %s",
                         avro_strerror());
                return KB_SERDE_INVALID;
        }
        buf[0] = 0;
        buf[1] = (char)((uint32_t)id >> 24);
        buf[2] = (char)((uint32_t)id >> 16);
        buf[3] = (char)((uint32_t)id >> 8);
        buf[4] = (char)(uint32_t)id;
        avro_writer_memory_set_dest(wt, buf + 5, (int64_t)size);
        if (avro_value_write(wt, v)) {
                snprintf(errstr, errstr_size, "cannot write the Avro value: %s",
                         avro_strerror());
                free(buf);
                return KB_SERDE_INVALID;
        }
        *bufp = buf;
        *lenp = size + 5;
        return KB_SERDE_OK;
}

kb_serde_res_t kb_serde_encode_with_schema(const char *schema, int32_t id,
                                           const json_t *obj, char **bufp,
                                           size_t *lenp, char *errstr,
                                           size_t errstr_size) {
        sd_tree_t tr;
        avro_schema_t as = NULL;
        avro_value_iface_t *iface = NULL;
        avro_value_t v;
        avro_writer_t wt = NULL;
        kb_serde_res_t r = KB_SERDE_INVALID;
        char err[256];

        memset(&v, 0, sizeof(v));
        *bufp = NULL;
        *lenp = 0;
        if (tree_parse(&tr, schema, err, sizeof(err))) {
                snprintf(errstr, errstr_size, "schema: %s", err);
                tree_free(&tr);
                return KB_SERDE_INVALID;
        }
        if (avro_schema_from_json_length(schema, strlen(schema), &as) ||
            !(iface = avro_generic_class_from_schema(as)) ||
            avro_generic_value_new(iface, &v) ||
            !(wt = avro_writer_memory("", 0))) {
                snprintf(errstr, errstr_size, "schema: %s", avro_strerror());
                goto out;
        }
        if (fill(&v, tr.tr_root, obj, 0, "", errstr, errstr_size))
                goto out;
        r = wire_write(wt, &v, id, bufp, lenp, errstr, errstr_size);
out:
        if (wt)
                avro_writer_free(wt);
        if (v.iface)
                avro_value_decref(&v);
        if (iface)
                avro_value_iface_decref(iface);
        if (as)
                avro_schema_decref(as);
        tree_free(&tr);
        return r;
}

kb_serde_res_t kb_serde_encode(kb_serde_t *sd, const char *topic, kb_msg_t type,
                               const json_t *obj, char **bufp, size_t *lenp,
                               char *errstr, size_t errstr_size) {
        sd_own_t *ow;
        int32_t id;
        char *buf;
        kb_serde_res_t r;

        *bufp = NULL;
        *lenp = 0;
        if ((unsigned)type >= KB_MSG__CNT || !json_is_object(obj)) {
                snprintf(errstr, errstr_size, "not a JSON object");
                return KB_SERDE_INVALID;
        }
        if (kb_serde_format(sd, topic) == KB_FORMAT_JSON) {
                if (!(buf = json_dumps(obj, JSON_COMPACT))) {
                        snprintf(errstr, errstr_size, "out of memory");
                        return KB_SERDE_INVALID;
                }
                *bufp = buf;
                *lenp = strlen(buf);
                return KB_SERDE_OK;
        }
        if ((r = topic_id(sd, topic, type, &id, errstr, errstr_size)))
                return r;
        ow = &sd->sd_own[type];
        avro_value_reset(&ow->ow_value);
        if (fill(&ow->ow_value, ow->ow_tree.tr_root, obj, 0, "", errstr,
                 errstr_size))
                return KB_SERDE_INVALID;
        return wire_write(sd->sd_writer, &ow->ow_value, id, bufp, lenp, errstr,
                          errstr_size);
}

/* Decodes the Confluent wire format into the JSON form of type. */
static kb_serde_res_t avro_decode(kb_serde_t *sd, kb_msg_t type,
                                  const unsigned char *b, size_t len,
                                  json_t **objp, char *errstr,
                                  size_t errstr_size) {
        sd_writer_t *wr;
        int32_t id;
        kb_serde_res_t r;
        json_t *o;
        char err[400];

        if (len == 0) {
                snprintf(errstr, errstr_size, "empty value");
                return KB_SERDE_UNDECODABLE;
        }
        if (b[0] != 0) {
                snprintf(errstr, errstr_size,
                         "wrong magic byte 0x%02x: the Confluent wire format "
                         "starts with 0x00%s",
                         b[0],
                         b[0] == '{' ? " (the value looks like JSON: is the "
                                       "topic's serde format right?)"
                                     : "");
                return KB_SERDE_UNDECODABLE;
        }
        if (len < 5) {
                snprintf(errstr, errstr_size,
                         "value of %zu bytes is too short for the Confluent "
                         "wire format (magic byte and 4-byte schema id)",
                         len);
                return KB_SERDE_UNDECODABLE;
        }
        id = (int32_t)(((uint32_t)b[1] << 24) | ((uint32_t)b[2] << 16) |
                       ((uint32_t)b[3] << 8) | (uint32_t)b[4]);
        if ((r = writer_get(sd, id, &wr, errstr, errstr_size)))
                return r;
        if (validate_binary(wr->wr_schema, b + 5, len - 5, err, sizeof(err))) {
                snprintf(errstr, errstr_size,
                         "Avro value truncated or corrupt (schema id %d, %zu "
                         "bytes after the header): %s",
                         (int)id, len - 5, err);
                return KB_SERDE_UNDECODABLE;
        }
        avro_reader_memory_set_source(sd->sd_reader, (const char *)b + 5,
                                      (int64_t)(len - 5));
        avro_value_reset(&wr->wr_value);
        if (avro_value_read(sd->sd_reader, &wr->wr_value)) {
                snprintf(errstr, errstr_size,
                         "Avro value truncated or corrupt (schema id %d, %zu "
                         "bytes after the header): %.300s",
                         (int)id, len - 5, avro_strerror());
                return KB_SERDE_UNDECODABLE;
        }
        if (!(o = resolve(&wr->wr_value, sd->sd_own[type].ow_tree.tr_root, 0,
                          "", err, sizeof(err)))) {
                snprintf(errstr, errstr_size,
                         "schema id %d cannot be read as %s: %s", (int)id,
                         sd_names[type], err);
                return KB_SERDE_UNDECODABLE;
        }
        *objp = o;
        return KB_SERDE_OK;
}

kb_serde_res_t kb_serde_decode(kb_serde_t *sd, const char *topic, kb_msg_t type,
                               const void *buf, size_t len, json_t **objp,
                               char *errstr, size_t errstr_size) {
        *objp = NULL;
        if ((unsigned)type >= KB_MSG__CNT) {
                snprintf(errstr, errstr_size, "unknown message type");
                return KB_SERDE_UNDECODABLE;
        }
        if (kb_serde_format(sd, topic) == KB_FORMAT_JSON) {
                json_error_t jerr;
                json_t *o;
                if (!buf || !len) {
                        snprintf(errstr, errstr_size, "empty value");
                        return KB_SERDE_UNDECODABLE;
                }
                if (!(o = json_loadb(buf, len, JSON_REJECT_DUPLICATES,
                                     &jerr))) {
                        snprintf(errstr, errstr_size,
                                 "value is not valid JSON: %s (at byte %d)",
                                 jerr.text, jerr.position);
                        return KB_SERDE_UNDECODABLE;
                }
                if (!json_is_object(o)) {
                        json_decref(o);
                        snprintf(errstr, errstr_size,
                                 "value is not a JSON object");
                        return KB_SERDE_UNDECODABLE;
                }
                *objp = o;
                return KB_SERDE_OK;
        }
        return avro_decode(sd, type, buf, len, objp, errstr, errstr_size);
}

kb_codec_res_t kb_serde_item_decode(kb_serde_t *sd, const char *topic,
                                    const char *result_topic, const void *buf,
                                    size_t len, size_t max_bytes,
                                    kb_item_t *item, char *errstr,
                                    size_t errstr_size) {
        json_t *o = NULL;
        kb_serde_res_t r;
        kb_codec_res_t cr;

        memset(item, 0, sizeof(*item));
        item->item_index = -1;
        errstr[0] = '\0';
        if (result_topic &&
            kb_serde_prepare(sd, result_topic, KB_MSG_ITEM_RESULT, errstr,
                             errstr_size) != KB_SERDE_OK)
                return KB_CODEC_RETRY;
        if (kb_serde_format(sd, topic) == KB_FORMAT_JSON)
                return kb_codec_item_decode(buf, len, max_bytes, item, errstr,
                                            errstr_size);
        r = avro_decode(sd, KB_MSG_BATCH_ITEM, buf, len, &o, errstr,
                        errstr_size);
        if (r == KB_SERDE_RETRY)
                return KB_CODEC_RETRY;
        if (r != KB_SERDE_OK)
                return KB_CODEC_UNDECODABLE;
        cr = kb_codec_item_from_json(o, len, max_bytes, item, errstr,
                                     errstr_size);
        json_decref(o);
        return cr;
}

char *kb_serde_result_encode(kb_serde_t *sd, const char *topic,
                             const kb_item_t *item, const kb_result_t *res,
                             size_t *lenp, char *errstr, size_t errstr_size) {
        json_t *o;
        char *buf = NULL;
        kb_serde_res_t r;

        if (kb_serde_format(sd, topic) == KB_FORMAT_JSON) {
                if (!(buf = kb_codec_result_encode(item, res, lenp)))
                        snprintf(errstr, errstr_size, "out of memory");
                return buf;
        }
        if (!(o = kb_codec_result_json(item, res))) {
                snprintf(errstr, errstr_size, "out of memory");
                return NULL;
        }
        r = kb_serde_encode(sd, topic, KB_MSG_ITEM_RESULT, o, &buf, lenp,
                            errstr, errstr_size);
        json_decref(o);
        return r == KB_SERDE_OK ? buf : NULL;
}

kb_serde_res_t kb_serde_batch_event_encode(kb_serde_t *sd, const char *topic,
                                           const json_t *event, char **bufp,
                                           size_t *lenp, char *errstr,
                                           size_t errstr_size) {
        return kb_serde_encode(sd, topic, KB_MSG_BATCH_EVENT, event, bufp, lenp,
                               errstr, errstr_size);
}
