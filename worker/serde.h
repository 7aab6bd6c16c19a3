/* serde: the value format of every topic (SPEC §2), json or avro.
 *
 * One interface, two formats, chosen per topic (serde.format and the
 * serde.<topic>_format overrides):
 * - json: one UTF-8 JSON object per message (jansson; codec.c).
 * - avro: the Confluent wire format: magic byte 0, the 4-byte big-endian
 *   schema id, the Avro binary encoding (avro-c). Producing registers (or,
 *   with serde.auto_register = false, looks up) the schema of schemas/ under
 *   the subject "<topic>-value" (TopicNameStrategy). Consuming fetches the
 *   writer schema by id from the registry and resolves it against the
 *   reader schema of schemas/ (Avro schema resolution: writer fields the
 *   reader lacks are skipped; reader fields the writer lacks take their
 *   default; int/long/float promotion; unions either side), so producers can
 *   add or drop optional fields.
 *
 * Between the two formats the JSON object is the common form: an Avro record
 * converts to the JSON object of the json format and back, field for field.
 * Fields marked "kbatch.json_text" in the .avsc (BatchItem.input,
 * ItemResult.output) are strings of JSON text in Avro and inline JSON values
 * in JSON; bytes fields are base64 strings in JSON.
 *
 * The schemas of schemas/ (*.avsc) are compiled into the binary (serde.c
 * includes them with .incbin), so the files are the one source of truth.
 *
 * Registry access goes through kb_registry (asynchronous on the loop when
 * one is given): a schema not in the cache yet, or a registry that is down,
 * gives KB_SERDE_RETRY (KB_CODEC_RETRY for items): decode again later. Only
 * what is the message's fault (wrong magic byte, unknown schema id, an
 * incompatible writer schema, truncated or corrupt Avro) is UNDECODABLE.
 *
 * Not thread-safe (the loop's thread), except kb_serde_healthy(). */
#ifndef KB_SERDE_H
#define KB_SERDE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "codec.h"
#include "conf.h"
#include "loop.h"

typedef enum {
        KB_MSG_BATCH_ITEM = 0, /* schemas/BatchItem.avsc */
        KB_MSG_ITEM_RESULT,    /* schemas/ItemResult.avsc */
        KB_MSG_BATCH_EVENT,    /* schemas/BatchEvent.avsc */
        KB_MSG_CONTROL,        /* schemas/ControlCommand.avsc */
        KB_MSG_BATCH_STATE,    /* schemas/BatchState.avsc */
        KB_MSG__CNT
} kb_msg_t;

typedef enum { KB_FORMAT_JSON = 0, KB_FORMAT_AVRO } kb_format_t;

typedef enum {
        KB_SERDE_OK = 0,
        KB_SERDE_RETRY,       /* registry not answered yet or unavailable:
                               * nothing done, try again later */
        KB_SERDE_UNDECODABLE, /* decode: the value cannot be decoded
                               * (DLQ deserialization_error) */
        KB_SERDE_INVALID,     /* encode: the object does not fit the schema
                               * (a bug, or an ill-typed field) */
} kb_serde_res_t;

const char *kb_serde_res_str(kb_serde_res_t r);

typedef struct kb_serde_s kb_serde_t;

/* The message type's schema (the .avsc text, static) and its full name
 * ("kbatch.v1.BatchItem"). */
const char *kb_serde_schema_text(kb_msg_t type);
const char *kb_serde_schema_name(kb_msg_t type);

/* Creates the serde of a process. conf and loop are borrowed for its life;
 * loop NULL: registry calls block (CLI commands, tests). Parses the
 * compiled-in schemas; creates the registry client when any topic is avro.
 * NULL + errstr on failure (a schema that does not parse is a build bug). */
kb_serde_t *kb_serde_new(const kb_conf_t *conf, kb_loop_t *loop, char *errstr,
                         size_t errstr_size);
void kb_serde_destroy(kb_serde_t *sd); /* NULL is a no-op */

/* The format of a topic: its serde.<name>_format override, else
 * serde.format. Retry tiers (<items>.retry.N) and DLQs follow the topic
 * they copy. Unknown topics: serde.format. */
kb_format_t kb_serde_format(const kb_serde_t *sd, const char *topic);

/* Starts what encoding to topic needs (avro: registering or looking up its
 * schema id) so that the first message does not wait. Returns the same as
 * an encode would about the registry: OK, RETRY (under way) or INVALID. */
kb_serde_res_t kb_serde_prepare(kb_serde_t *sd, const char *topic,
                                kb_msg_t type, char *errstr,
                                size_t errstr_size);

/* Encodes obj (borrowed; the JSON form of type) for topic. On OK *bufp is a
 * malloc'ed buffer of *lenp bytes (caller frees; JSON text is also
 * NUL-terminated). RETRY: the subject's schema id is not known yet (see
 * kb_serde_prepare). INVALID: errstr names the offending field. */
kb_serde_res_t kb_serde_encode(kb_serde_t *sd, const char *topic, kb_msg_t type,
                               const json_t *obj, char **bufp, size_t *lenp,
                               char *errstr, size_t errstr_size);

/* Decodes a value of topic into its JSON form. On OK *objp is a new
 * reference (caller decrefs). RETRY: the writer schema is not available yet.
 * UNDECODABLE: errstr says precisely why (bad JSON, wrong magic byte,
 * unknown schema id, truncated or corrupt Avro, incompatible schema). */
kb_serde_res_t kb_serde_decode(kb_serde_t *sd, const char *topic, kb_msg_t type,
                               const void *buf, size_t len, json_t **objp,
                               char *errstr, size_t errstr_size);

/* BatchItem decoding for the items pipeline: kb_codec_item_decode for a
 * json topic; for an avro topic the wire format is decoded and the record
 * validated by the same rules (kb_codec_item_from_json). Returns
 * KB_CODEC_RETRY (nothing decoded, *item is empty) while the writer schema
 * is not available, or while the schema id of result_topic (where this
 * item's result will go; NULL: none) is not known yet, so that a started
 * item can always publish its result. Other results as
 * kb_codec_item_decode; wire-format errors are KB_CODEC_UNDECODABLE. */
kb_codec_res_t kb_serde_item_decode(kb_serde_t *sd, const char *topic,
                                    const char *result_topic, const void *buf,
                                    size_t len, size_t max_bytes,
                                    kb_item_t *item, char *errstr,
                                    size_t errstr_size);

/* ItemResult encoding for topic (kb_codec_result_encode's object in the
 * topic's format). Returns a malloc'ed buffer (caller frees) of *lenp
 * bytes, or NULL with errstr: allocation failure, or (avro) the schema id
 * is not known (cannot happen after kb_serde_item_decode returned
 * something other than RETRY for this result topic). */
char *kb_serde_result_encode(kb_serde_t *sd, const char *topic,
                             const kb_item_t *item, const kb_result_t *res,
                             size_t *lenp, char *errstr, size_t errstr_size);

/* BatchEvent encoding (for the aggregator): event is the JSON form of a
 * BatchEvent (SPEC §2 field names), borrowed. Same as kb_serde_encode with
 * KB_MSG_BATCH_EVENT. */
kb_serde_res_t kb_serde_batch_event_encode(kb_serde_t *sd, const char *topic,
                                           const json_t *event, char **bufp,
                                           size_t *lenp, char *errstr,
                                           size_t errstr_size);

/* Encodes obj in the Confluent wire format with any Avro schema (JSON
 * text, borrowed) and schema id, by the same rules as kb_serde_encode. For
 * tests and tools (e.g. writing with an evolved schema). *bufp malloc'ed. */
kb_serde_res_t kb_serde_encode_with_schema(const char *schema, int32_t id,
                                           const json_t *obj, char **bufp,
                                           size_t *lenp, char *errstr,
                                           size_t errstr_size);

/* Changes when a registry answer arrived: parked messages retry then. */
uint64_t kb_serde_generation(const kb_serde_t *sd);

/* Readiness (any thread): 1, or 0 with why (the registry is unavailable and
 * the reason). Always 1 when no topic is avro. */
int kb_serde_healthy(kb_serde_t *sd, char *why, size_t why_size);

/* The registry client (NULL when no topic is avro); borrowed. */
struct kb_registry_s *kb_serde_registry(kb_serde_t *sd);

#endif
