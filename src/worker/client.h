/* client: a small JSON-over-HTTP client on libcurl, for external workers and the CLI. */
#ifndef TASKEXEC_CLIENT_H
#define TASKEXEC_CLIENT_H

#include <jansson.h>

struct client {
    char *base;        /* "http://host:port", no trailing slash; owned */
    char *token;       /* Bearer token or NULL; owned */
    long timeout_ms;
    void *curl;        /* CURL *, one per client: use a client from one thread at a time */
    char error[256];   /* the last network error, in words */
};

/* client_init: a client for base_url. ERR_NOMEM, or ERR_IO if libcurl fails. */
int client_init(struct client *c, const char *base_url) __attribute__((warn_unused_result));
void client_reset(struct client *c);
/* client_set_token: replaces the Bearer token (copied). */
int client_set_token(struct client *c, const char *token) __attribute__((warn_unused_result));
/* client_call: sends method path with body (borrowed; NULL: no body). On an HTTP
 * answer returns 0 with *status and *reply (parsed JSON, NULL if the body was empty
 * or not JSON; caller json_decref's). ERR_IO when no answer came (c->error says why). */
int client_call(struct client *c, const char *method, const char *path, const json_t *body,
                long *status, json_t **reply) __attribute__((warn_unused_result));

#endif
