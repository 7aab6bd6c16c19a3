/* cmd: helpers shared by the command implementations. */
#include "cmd.h"

#include <stdio.h>

#include "conf.h"
#include "log.h"

kb_conf_t *kb_cmd_conf_load(const char *given_path) {
        char errstr[1024];
        kb_conf_t *conf = kb_conf_load(kb_conf_default_path(given_path), NULL,
                                       errstr, sizeof(errstr));
        if (!conf) {
                fprintf(stderr, "%s\n", errstr);
                return NULL;
        }
        kb_log_init((kb_log_level_t)kb_log_level_parse(conf->log_level),
                    (kb_log_format_t)kb_log_format_parse(conf->log_format),
                    NULL);
        kb_log_set_instance(kb_conf_instance_id(conf));
        return conf;
}
