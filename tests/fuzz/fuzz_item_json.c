/* libFuzzer target: JSON BatchItem decoding (kb_codec_item_decode) and the
 * ItemResult encoding of whatever was decoded (kb_codec_result_encode).
 *
 * Differential since issue 20 (the tree-less path of worker/jtext.c):
 * - kb_jtext_check accepts exactly what json_loadb(..., 0) accepts;
 * - kb_codec_item_decode gives the same outcome, error text and fields as
 *   kb_codec_item_decode_tree (json_loadb(JSON_REJECT_DUPLICATES) +
 *   kb_codec_item_from_json, what it did before), and
 *   the same request body (as JSON) and max_*tokens cap;
 *
 * Checks beyond "no crash, no leak, no UB":
 * - the result is one of the four outcomes, and OK only with every required
 *   field filled and inside the SPEC §2 limits, and an item_id that is safe
 *   in an HTTP header;
 * - UNDECODABLE leaves the item empty;
 * - the encoded ItemResult (for any item but an UNDECODABLE one) is a JSON
 *   object that parses back, whatever bytes the item carried. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "fuzz_check.h"

static int same_str(const char *a, const char *b) {
        return (!a && !b) || (a && b && !strcmp(a, b));
}

static void against_ref(const uint8_t *data, size_t size, size_t max_bytes,
                        kb_item_t *it, kb_codec_res_t r, const char *err) {
        kb_item_t ref;
        char rerr[512];
        kb_codec_res_t rr = kb_codec_item_decode_tree(data, size, max_bytes,
                                                      &ref, rerr, sizeof(rerr));
        CHECK(r == rr);
        CHECK(!strcmp(err, rerr));
        if (r != KB_CODEC_UNDECODABLE) {
                CHECK(same_str(it->batch_id, ref.batch_id));
                CHECK(same_str(it->item_id, ref.item_id));
                CHECK(same_str(it->model, ref.model));
                CHECK(same_str(it->operation, ref.operation));
                CHECK(same_str(it->callback_url, ref.callback_url));
                CHECK(it->item_index == ref.item_index);
                CHECK(it->items_total == ref.items_total);
                CHECK(it->deadline == ref.deadline);
                CHECK(it->submitted_at == ref.submitted_at);
                CHECK((!it->metadata && !ref.metadata) ||
                      json_equal(it->metadata, ref.metadata));
        }
        if (r == KB_CODEC_OK) {
                int64_t c1, c2;
                char *b1 = kb_codec_request_body(it, &c1),
                     *b2 = kb_codec_request_body(&ref, &c2);
                json_t *j1 = b1 ? json_loads(b1, 0, NULL) : NULL,
                       *j2 = b2 ? json_loads(b2, 0, NULL) : NULL;
                CHECK(j1 && j2 && json_equal(j1, j2));
                CHECK(c1 == c2);
                json_decref(j1);
                json_decref(j2);
                free(b1);
                free(b2);
        }
        kb_item_clear(&ref);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        kb_item_t it;
        char err[512];
        size_t max_bytes = 4096; /* small, so that the limit is reached */
        kb_codec_res_t r;
        {
                json_t *j = size ? json_loadb((const char *)data, size, 0, NULL)
                                 : NULL;
                CHECK(kb_jtext_check((const char *)data, size, NULL, NULL,
                                     NULL) == (j != NULL));
                json_decref(j);
        }
        r = kb_codec_item_decode(data, size, max_bytes, &it, err, sizeof(err));
        against_ref(data, size, max_bytes, &it, r, err);

        CHECK(r == KB_CODEC_OK || r == KB_CODEC_UNDECODABLE ||
              r == KB_CODEC_UNADDRESSABLE || r == KB_CODEC_INVALID);
        CHECK(r == KB_CODEC_OK ? err[0] == '\0' : err[0] != '\0');
        if (r == KB_CODEC_UNDECODABLE) {
                CHECK(!it.batch_id && !it.item_id && !it.input && !it.model);
                return 0;
        }
        if (r == KB_CODEC_OK) {
                CHECK(size <= max_bytes);
                CHECK(it.batch_id && kb_codec_batch_id_valid(it.batch_id));
                CHECK(it.item_id && it.item_id[0]);
                /* it goes into request headers: no CR, LF or other
                 * control character (header injection) */
                for (const char *p = it.item_id; *p; p++)
                        CHECK((unsigned char)*p >= 0x20 && *p != 0x7f);
                CHECK(it.model && it.model[0]);
                CHECK(it.items_total >= 1 &&
                      it.items_total <= KB_ITEMS_TOTAL_MAX);
                CHECK(it.item_index >= 0 && it.item_index < it.items_total);
                CHECK(json_is_object(it.input) || it.input_text);
                CHECK(!it.metadata ||
                      json_object_size(it.metadata) <= KB_METADATA_MAX);
        }
        /* Whatever the outcome, no string over its bound is kept: it
         * would reach the result, the batch state and the event (issue
         * 15: a huge callback_url made the state larger than a message). */
        CHECK(kb_codec_str_within(it.item_id, KB_ITEM_ID_MAX));
        CHECK(kb_codec_str_within(it.model, KB_MODEL_MAX));
        CHECK(kb_codec_str_within(it.operation, KB_OPERATION_MAX));
        CHECK(kb_codec_str_within(it.callback_url, KB_CALLBACK_URL_MAX));
        if (r != KB_CODEC_UNADDRESSABLE) {
                /* addressable: a result is published for it */
                kb_result_t res;
                size_t len = 0;
                char *enc;
                json_t *back;
                memset(&res, 0, sizeof(res));
                res.status = r == KB_CODEC_OK ? KB_STATUS_SUCCEEDED
                                              : KB_STATUS_FAILED;
                res.error_code = r == KB_CODEC_OK ? NULL : "invalid_item";
                res.error_message = r == KB_CODEC_OK ? NULL : err;
                res.latency_ms = -1;
                res.worker = "fuzz";
                enc = kb_codec_result_encode(&it, &res, &len);
                CHECK(enc);
                back = json_loadb(enc, len, 0, NULL);
                CHECK(json_is_object(back));
                json_decref(back);
                free(enc);
        }
        kb_item_clear(&it);
        return 0;
}
