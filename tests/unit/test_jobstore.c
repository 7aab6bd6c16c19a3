/* jobstore: records, tombstones, route checks (the Kafka side is covered
 * by tests/e2e/test_async.py). */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "jobstore.h"

Test(jobstore, record_apply_get_tombstone) {
        kb_jobstore_t *js = kb_jobstore_new_local();
        size_t len;
        char *v = kb_jobstore_record("job-7", "genvr", 1700000000123LL, &len);
        int64_t at = 0;
        cr_assert(js && v);
        cr_expect(kb_jobstore_ready(js));
        kb_jobstore_apply(js, "b1:3", 4, v, len);
        cr_expect_eq(kb_jobstore_size(js), 1);
        cr_expect_str_eq(kb_jobstore_get(js, "b1:3", "genvr", &at), "job-7");
        cr_expect_eq(at, 1700000000123LL);
        /* Another route (the config changed): not resumed there. */
        cr_expect_null(kb_jobstore_get(js, "b1:3", "other", &at));
        cr_expect_null(kb_jobstore_get(js, "b1:4", "genvr", &at));
        /* A later record of the same key replaces it; a tombstone drops
         * it. */
        free(v);
        v = kb_jobstore_record("job-8", "genvr", 5, &len);
        kb_jobstore_apply(js, "b1:3", 4, v, len);
        cr_expect_str_eq(kb_jobstore_get(js, "b1:3", "genvr", &at), "job-8");
        kb_jobstore_apply(js, "b1:3", 4, NULL, 0);
        cr_expect_null(kb_jobstore_get(js, "b1:3", "genvr", &at));
        cr_expect_eq(kb_jobstore_size(js), 0);
        /* Garbage and keys without a value are ignored. */
        kb_jobstore_apply(js, "b1:5", 4, "not json", 8);
        kb_jobstore_apply(js, "b1:6", 4, "{\"route\":\"genvr\"}", 17);
        kb_jobstore_apply(js, NULL, 0, v, len);
        cr_expect_eq(kb_jobstore_size(js), 0);
        free(v);
        kb_jobstore_destroy(js);
        kb_jobstore_destroy(NULL);
}
