/* router: the static route table and path matching. */
#ifndef TASKEXEC_ROUTER_H
#define TASKEXEC_ROUTER_H

#include "http/api.h"

#include <stdbool.h>
#include <stddef.h>

/* Who may call a route (CONTRACT.md "Deployment and access control"; http.c enforces it
 * before the handler runs, except where the handler checks a token of its own). */
enum route_access {
    ACCESS_OPEN,      /* anyone: health, readiness, metrics, the dashboard's page */
    ACCESS_READ,      /* an API token of role read or above (no tokens configured: anyone) */
    ACCESS_WRITE,     /* role write or above: submit, cancel, sessions, experiments */
    ACCESS_ADMIN,     /* role admin: worker control */
    ACCESS_JOIN,      /* WORKER_JOIN_TOKEN when it is set, else anyone (registration) */
    ACCESS_WORKER,    /* the worker's own token, checked by the handler */
    ACCESS_TASK_KEY,  /* a running task's key, checked by the handler (the LLM gateway) */
};

struct route {
    const char *method;
    const char *pattern;   /* "/api/v1/tasks/{id}": {name} captures one segment */
    api_handler handler;
    enum route_access access;
};

enum router_result { ROUTER_FOUND, ROUTER_NO_PATH, ROUTER_NO_METHOD };

/* router_match: finds the route for method and path. On ROUTER_FOUND, *route is
 * set and the captures are pointers into scratch (a copy of path the caller
 * provides, at least strlen(path)+1 bytes), in order. */
enum router_result router_match(const char *method, const char *path, char *scratch,
                                const struct route **route, const char **params,
                                size_t *n_params);

/* router_normalize: maps the unprefixed aliases (/tasks..., /workers...) onto
 * /api/v1 and drops a trailing slash; writes into out. */
void router_normalize(const char *path, char *out, size_t size);

/* router_raw_path_has_nul: whether the path of a raw request target (as sent, before
 * percent-decoding; the query string after '?' is not looked at) encodes a NUL ("%00").
 * The decoded path would be cut there and match another route, so such a request is
 * refused (400) before routing. */
bool router_raw_path_has_nul(const char *raw);

/* router_table: the routes, for the OpenAPI document and tests. */
const struct route *router_table(size_t *n);

#endif
