/* cmd: the entry points of the `kbatch` subcommands (SPEC §9).
 *
 * main() dispatches on the command name and calls kb_cmd_<name>(argc, argv)
 * with argv[0] the command's name ("check-config"). Each returns the
 * process exit code: 0 success, 1 runtime failure, 2 usage or configuration
 * error, after printing one clear line on stderr. */
#ifndef KB_CMD_H
#define KB_CMD_H

/* kbatch worker [-c FILE]: runs the roles named in worker.roles. */
int kb_cmd_worker(int argc, char **argv);

/* kbatch topics create [-c FILE] [--partitions N] [--replication R]. */
int kb_cmd_topics(int argc, char **argv);

/* kbatch check-config [-c FILE] [-q]: loads and validates the
 * configuration (the file chosen by kb_conf_default_path()) and prints the
 * effective configuration, secrets redacted, to stdout. */
int kb_cmd_check_config(int argc, char **argv);

/* Shared by the commands: loads the configuration (-c FILE or the default
 * path), and sets up logging from it. On failure prints the one
 * "FILE:LINE: message" line on stderr and returns NULL (exit code 2).
 * Caller frees with kb_conf_destroy(). */
struct kb_conf_s *kb_cmd_conf_load(const char *given_path);

#endif
