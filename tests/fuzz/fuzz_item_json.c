/* libFuzzer target: JSON BatchItem decoding (kb_codec_item_decode) and the
 * ItemResult encoding of whatever was decoded (kb_codec_result_encode).
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        kb_item_t it;
        char err[512];
        size_t max_bytes = 4096; /* small, so that the limit is reached */
        kb_codec_res_t r =
            kb_codec_item_decode(data, size, max_bytes, &it, err, sizeof(err));

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
                CHECK(json_is_object(it.input));
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
