/* store/rules: the business rules both backends apply, written once.
 *
 * The failure texts a task gets when the store ends it are SQL expressions over the
 * task's row (each backend splices them into its own statements, with its own
 * parameter syntax where one is needed), and supported_problems globs are
 * translated here, in C, to the one regular expression both backends match with. */
#ifndef TASKEXEC_STORE_RULES_H
#define TASKEXEC_STORE_RULES_H

#include <stddef.h>

/* The error of a task cancelled by request (the status read is the old one). */
#define RULE_ERR_CANCELLED                                                                 \
    "COALESCE(error, CASE status WHEN 'running' THEN 'cancelled by request while running' " \
    "ELSE 'cancelled by request' END)"
/* A running task of an external worker that registered again. */
#define RULE_ERR_REREGISTERED                                                              \
    "'worker ' || worker_id || ' registered again while running this task; the run was lost'"
/* A running task of a worker silent for longer than timeout_us (a parameter). */
#define RULE_ERR_SILENT(timeout_us)                                                        \
    "'worker ' || worker_id || ' stopped sending heartbeats (silent for more than ' || (" \
    timeout_us " / 1000000) || ' s); the run was lost'"
/* A running task past its deadline that its worker did not stop. */
#define RULE_ERR_DEADLINE                                                                  \
    "'timed out after ' || timeout_seconds || ' s; its worker did not stop it in time'"
/* A running task of an internal worker when the server starts again. */
#define RULE_ERR_RESTARTED                                                                 \
    "'the server restarted while internal worker ' || worker_id || ' was running this "   \
    "task; the run was lost'"

/* rules_globs_regex: supported_problems globs (* any run, ? any one character, [...]
 * and [!...] or [^...] a class) as one anchored POSIX extended regular expression
 * matching a problem id that any of them matches, every other character literal. Both
 * backends match with it (PostgreSQL's ~, SQLite's REGEXP function of db.c). *out is
 * malloc'd (caller frees), or NULL when n is 0 (any problem). ERR_NOMEM. */
int rules_globs_regex(const char *const *globs, size_t n,
                      char **out) __attribute__((warn_unused_result));

#endif
