/* cli_int.h: what the CLI's command files share: the options, the exit codes, and
 * the helpers to call the server and print its answers (all in cli.c). */
#ifndef TASKEXEC_CLI_INT_H
#define TASKEXEC_CLI_INT_H

#include "worker/client.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>

enum { EXIT_OK = 0, EXIT_TASK = 1, EXIT_USAGE = 2, EXIT_SERVER = 3 };

struct opts {
    const char *api;
    bool json;
    const char *positional;    /* the task id of status/logs/cancel */
    /* submit */
    const char *problem_id, *parameters, *file, *agent_config, *backend_type;
    const char *params[64];    /* --param a.b=value */
    int n_params;
    const char *priority, *max_steps, *timeout_minutes;
    bool wait;
    /* list, logs, export */
    const char *status, *level, *limit, *output, *format, *since, *until;
    /* session */
    const char *action;
    bool follow, skip_logs, skip_conversations;
    /* experiment */
    const char *only;
    bool csv;
};

/* cli_usage: prints msg (may be NULL) and the usage text; EXIT_USAGE. */
int cli_usage(const char *msg);
/* cli_server_error: the server's error detail on stderr; EXIT_SERVER or EXIT_USAGE. */
int cli_server_error(const char *what, long status, json_t *reply);
/* cli_call: one request (body may be NULL); EXIT_SERVER when the server cannot be
 * reached, else EXIT_OK with *status and *reply (caller json_decref's). */
int cli_call(struct client *c, const char *method, const char *path, json_t *body,
             long *status, json_t **reply);
/* cli_get: a GET that must answer 200; *out the reply (caller json_decref's). */
int cli_get(struct client *c, const char *path, const char *what, json_t **out);
void cli_print_json(json_t *v);
/* cli_str: o's string k, or "-". */
const char *cli_str(json_t *o, const char *k);
/* cli_progress: a progress bar on a terminal's stderr (total 0: a count). */
void cli_progress(const char *what, long done, long total);

/* cli_download: GETs path and writes the body as it comes to f (a progress line on a
 * terminal when f is not stdout); *status the HTTP status. EXIT_SERVER when the server
 * cannot be reached. */
int cli_download(struct client *c, const char *path, FILE *f, long *status);

/* cli_experiment.c: `taskexec experiment SUB ...`. */
int cli_experiment(struct client *c, const char *sub, const struct opts *o);

#endif
