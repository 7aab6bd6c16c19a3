/* Unit tests for the helpers the commands share (worker/cmd.c): the
 * BATCH_ID operand checks and the progress line. */
#include <criterion/criterion.h>
#include <criterion/redirect.h>
#include <stdio.h>
#include <string.h>

#include "cmd.h"

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

static void redirect(void) { cr_redirect_stderr(); }

/* Each case: the operands after the options, the exit code, the one line
 * on stderr. */
static const struct {
        int argc;
        const char *argv[4];
        int rc;
        const char *err;
} id_cases[] = {
    {1, {"status"}, 2,
     "kbatch status: missing BATCH_ID (see kbatch status --help)\n"},
    {3, {"status", "b1", "b2"}, 2, "kbatch status: unexpected argument 'b2'\n"},
    {2, {"status", "bad id"}, 2,
     "kbatch status: 'bad id' is not a batch id (1-128 characters of "
     "[A-Za-z0-9._:-])\n"},
    {2, {"status", ""}, 2,
     "kbatch status: '' is not a batch id (1-128 characters of "
     "[A-Za-z0-9._:-])\n"},
    {2, {"status", "batch_2026-12-03.a:1"}, 0, ""},
};

Test(cmd, batch_id_arg_table, .init = redirect) {
        size_t i;
        for (i = 0; i < NELEM(id_cases); i++) {
                const char *id = "unset";
                char *argv[4];
                int k;
                for (k = 0; k < id_cases[i].argc; k++)
                        argv[k] = (char *)id_cases[i].argv[k];
                cr_expect_eq(kb_cmd_batch_id_arg("status", id_cases[i].argc,
                                                 argv, 1, &id),
                             id_cases[i].rc, "case %zu", i);
                if (id_cases[i].rc == 0)
                        cr_expect_str_eq(id, id_cases[i].argv[1]);
                else
                        cr_expect_null(id, "case %zu", i);
        }
        fflush(stderr);
        {
                char want[2048] = "";
                for (i = 0; i < NELEM(id_cases); i++)
                        strcat(want, id_cases[i].err);
                cr_expect_stderr_eq_str(want);
        }
}

/* A batch id of 128 characters is one, 129 is not. */
Test(cmd, batch_id_arg_length, .init = redirect) {
        char id128[130], *argv[2] = {"cancel", id128};
        const char *id = NULL;
        memset(id128, 'a', 128);
        id128[128] = '\0';
        cr_expect_eq(kb_cmd_batch_id_arg("cancel", 2, argv, 1, &id), 0);
        cr_expect_eq(id, id128);
        id128[128] = 'a';
        id128[129] = '\0';
        cr_expect_eq(kb_cmd_batch_id_arg("cancel", 2, argv, 1, &id), 2);
}

/* stderr is not a terminal under the test runner: no progress is drawn,
 * and clearing draws nothing either. Quiet is off whatever stderr is. */
Test(cmd, progress_only_on_a_terminal, .init = redirect) {
        kb_cmd_progress_t pg;
        kb_cmd_progress_init(&pg, 0, 100);
        cr_expect_eq(pg.pg_on, 0);
        kb_cmd_progress_show(&pg, 1, "validating %d lines", 5);
        kb_cmd_progress_bar(&pg, 1, "submit: ", 3, 10, "published");
        kb_cmd_progress_clear(&pg);
        kb_cmd_progress_init(&pg, 1, 100);
        cr_expect_eq(pg.pg_on, 0);
        fflush(stderr);
        cr_expect_stderr_eq_str("");
}

/* Drawn (as on a terminal): the bar, the throttle, force, and clear. */
Test(cmd, progress_bar_draws_and_throttles, .init = redirect) {
        kb_cmd_progress_t pg;
        kb_cmd_progress_init(&pg, 0, 60000);
        pg.pg_on = 1;
        kb_cmd_progress_bar(&pg, 1, "submit: ", 3, 10, "published");
        kb_cmd_progress_bar(&pg, 0, "submit: ", 4, 10, "published");
        kb_cmd_progress_bar(&pg, 1, "x: ", 0, 0, "none");
        kb_cmd_progress_clear(&pg);
        kb_cmd_progress_clear(&pg);
        fflush(stderr);
        cr_expect_stderr_eq_str(
            "\r\033[Ksubmit: [#########.....................]  30% 3/10 "
            "published"
            "\r\033[Kx: [..............................]   0% 0/0 none"
            "\r\033[K");
}

Test(cmd, usage_error_is_one_line_and_exit_2, .init = redirect) {
        cr_expect_eq(kb_cmd_usage_error("replay", "bad option '%s'", "-x"), 2);
        cr_expect_eq(kb_cmd_usage_error("submit", "--callback-url is empty"),
                     2);
        fflush(stderr);
        cr_expect_stderr_eq_str(
            "kbatch replay: bad option '-x' (see kbatch replay --help)\n"
            "kbatch submit: --callback-url is empty (see kbatch submit "
            "--help)\n");
}
