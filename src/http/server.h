/* server: the one server context. Everything `serve` shares between threads
 * hangs off struct server; there is no other mutable global state. */
#ifndef TASKEXEC_SERVER_H
#define TASKEXEC_SERVER_H

#include "core/config.h"
#include "service/queue.h"
#include "store/store.h"

#include <jansson.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdint.h>

struct worker_manager;
struct http;
struct metrics;
struct webhook_sender;
struct ws_hub;
struct gateway;
struct access;
struct workpool;

struct server {
    struct config cfg;              /* read-only once serving */
    struct store *store;
    struct queue queue;             /* the state changes' rules: submit, cancel, finish */
    struct worker_manager *workers;
    struct http *http;
    struct metrics *metrics;
    struct webhook_sender *webhooks;
    struct event_bus *events;       /* live streams */
    struct session_hub *sessions;   /* interactive sessions: parked steps, hosts */
    struct ws_hub *ws;              /* WebSocket connections (the OpenEnv endpoint) */
    struct gateway *gateway;        /* the LLM gateway's engine */
    struct access *access;          /* API tokens and their roles (none: everyone is admin) */
    struct workpool *submits;       /* creates waiting on a store that groups inserts;
                                     * NULL: they wait in the HTTP thread */
    json_t *problems;               /* catalog array of {"id","task_type","application"}; read-only */
    char self_exe[PATH_MAX];        /* this binary, for the simulated executor */
    char aiopslab_script[PATH_MAX]; /* the aiopslab runner written out at start; "" if unused */
    char llm_url[128];              /* this server's LLM gateway, for its workers' executors */
    _Atomic(const char *) llm_url_ready; /* llm_url once written (PORT=0: after listening) */
    char llm_hide[512];             /* LLM_UPSTREAM_KEY_ENV and LLM_KEY_ENVS, comma-separated */
    int64_t started_at;             /* us */
};

/* server_run: `taskexec serve`: opens the store, recovers, starts workers and
 * HTTP, and serves until SIGTERM/SIGINT (a second one forces exit).
 * Returns the process exit code. */
int server_run(int argc, char **argv);

#endif
