/* server: `taskexec serve`, wiring the modules together and shutting down in order. */
#include "http/server.h"
#include "model/access.h"
#include "model/catalog.h"
#include "core/clock.h"
#include "core/err.h"
#include "exec/exec.h"
#include "exec/executor.h"
#include "exec/runner.h"
#include "http/events.h"
#include "service/gateway.h"
#include "service/session.h"
#include "http/http.h"
#include "http/ws.h"
#include "core/log.h"
#include "service/metrics.h"
#include "core/version.h"
#include "core/workpool.h"
#include "service/webhook.h"
#include "worker/worker.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SHUTDOWN_LIMIT_SECONDS 30
/* Creates that may wait together for the store (api_task_create): more inserts share a
 * statement and a commit; threads start only as creates come. */
#define SUBMIT_THREADS 64

static int check_config(const struct config *cfg)
{
    /* LOG_LEVEL, LOG_FORMAT, EXECUTOR, PROBLEM_VALIDATION and BACKEND_PROVISION are
     * checked by the settings table; what is left relates settings to each other. */
    log_set_level((enum log_level)log_parse_level(cfg->log_level));
    log_set_json(!strcmp(cfg->log_format, "json"));
    if (cfg->num_internal_workers > cfg->max_internal_workers) {
        log_error("NUM_INTERNAL_WORKERS (%d) is above MAX_INTERNAL_WORKERS (%d)",
                  cfg->num_internal_workers, cfg->max_internal_workers);
        return ERR_INVALID;
    }
    if (!task_valid_name(cfg->worker_backend_type, 64)) {
        log_error("WORKER_BACKEND_TYPE must be 1 to 64 characters from [A-Za-z0-9_.:-]");
        return ERR_INVALID;
    }
    return 0;
}

/* The API tokens (model/access.h); a bad token or tokens file stops the start, naming
 * the setting or the line. */
static int load_access(struct server *srv)
{
    char why[400] = "";

    if (srv->cfg.worker_join_token && !access_token_valid(srv->cfg.worker_join_token)) {
        log_error("WORKER_JOIN_TOKEN: a token must be %d to %d printable characters without "
                  "spaces", ACCESS_TOKEN_MIN, ACCESS_TOKEN_MAX);
        return ERR_INVALID;
    }
    if (access_load(srv->cfg.api_token, srv->cfg.api_tokens_file, &srv->access, why,
                    sizeof(why)) < 0) {
        log_error("%s", why[0] ? why : "cannot load the API tokens");
        return ERR_INVALID;
    }
    if (access_enabled(srv->access))
        log_info("API tokens required (every route but /health, /ready and /metrics)");
    else
        log_info("no API tokens: every route is open (set API_TOKEN or API_TOKENS_FILE)");
    if (access_enabled(srv->access) && !srv->cfg.worker_join_token)
        log_warn("API tokens are set but WORKER_JOIN_TOKEN is not: anyone who reaches this "
                 "server can register a worker (and take over a worker's id)");
    return 0;
}

/* After the first signal: a second one, or a shutdown that takes longer than its
 * limit, ends the process at once. Tasks left running are recovered at the next start. */
struct watch {
    sigset_t *set;
    int limit_seconds;
};

static void *watchdog(void *arg)
{
    struct watch *w = arg;
    sigset_t *set = w->set;
    struct timespec limit = {.tv_sec = w->limit_seconds};
    int sig;

    do {
        sig = sigtimedwait(set, NULL, &limit); /* a cancellation point: main cancels us */
    } while (sig < 0 && errno == EINTR);
    log_warn("%s: forcing exit", sig > 0 ? "second signal" : "shutdown took too long");
    _exit(1);
    return NULL;
}

/* The problem catalog: what AIOpsLab's registry lists (with each problem's application
 * and namespace) when the aiopslab executor can import it, else PROBLEMS_FILE or the
 * built-in table. */
static json_t *load_problems(const struct config *cfg, const char *script)
{
    char pp[PATH_MAX], *out = NULL, **env;
    char *argv[] = {cfg->aiopslab_python, (char *)(uintptr_t)script, "--list-problems", NULL};
    json_t *listed = NULL, *catalog = NULL;
    int code = -1;

    if (!script[0] || cfg->problems_file)
        return catalog_load(cfg->problems_file);
    if (cfg->aiopslab_dir) {
        char first[160];
        snprintf(first, sizeof(first), "%sworker-001-kind", cfg->worker_name_prefix);
        worker_expand(cfg->aiopslab_dir, first, pp, sizeof(pp));
    }
    env = runner_python_env(cfg->aiopslab_dir ? pp : NULL);
    if (env)
        code = exec_capture(argv, env, 120, &out);
    runner_env_free(env);
    if (code == 0 && out)
        listed = json_loads(out, JSON_DECODE_ANY, NULL);
    if (json_is_array(json_object_get(listed, "problems")))
        catalog = catalog_from_list(json_object_get(listed, "problems"));
    else
        log_warn("the aiopslab runner could not list AIOpsLab's problems (%s); using the "
                 "built-in list", out && *out ? out : "no output");
    json_decref(listed);
    free(out);
    return catalog ? catalog : catalog_load(NULL);
}

static void wake_workers(void *ctx)
{
    worker_manager_notify(ctx);
}

static bool stop_run(void *ctx, const char *task_id)
{
    return worker_manager_cancel(ctx, task_id);
}

/* Finds this program, writes the aiopslab runner if the executor needs it, loads the
 * catalog, opens the store and fails what the previous process left running.
 * Returns 0, or -1 after logging why; what it made is freed by teardown. */
static int open_store(struct server *srv)
{
    ssize_t n = readlink("/proc/self/exe", srv->self_exe, sizeof(srv->self_exe) - 1);
    int rc, n_failed = 0;

    if (n <= 0) {
        log_error("cannot find this program's path in /proc/self/exe");
        return -1;
    }
    srv->self_exe[n] = '\0';
    if (executor_find(srv->cfg.executor)->start == EXECUTOR_START_RUNNER &&
        runner_write_aiopslab(srv->cfg.work_dir, srv->aiopslab_script,
                              sizeof(srv->aiopslab_script)) < 0) {
        log_error("cannot write the aiopslab runner into WORK_DIR %s", srv->cfg.work_dir);
        return -1;
    }
    if (metrics_new(&srv->metrics) < 0)
        return -1;
    srv->problems = load_problems(&srv->cfg, srv->aiopslab_script);
    if (!srv->problems)
        return -1;
    rc = store_open(srv->cfg.database_url, &srv->store);
    if (rc < 0) {
        log_error("cannot open the database %s: %s", srv->cfg.database_url, err_str(rc));
        return -1;
    }
    rc = store_recover(srv->store, srv->cfg.worker_name_prefix, clock_now_us(),
                       (int64_t)srv->cfg.retry_base_seconds * 1000000, &n_failed);
    if (rc < 0)
        return -1;
    if (n_failed)
        log_warn("recovery: %d tasks left running by the previous process ended failed",
                 n_failed);
    return 0;
}

/* The queue, the session hub and the worker manager, wired to each other, with the
 * housekeeper, the hub's sweeper and the store's notifications started. Returns 0 or
 * -1. */
static int start_core(struct server *srv)
{
    struct worker_deps wd;
    int rc;

    srv->queue = (struct queue){
        .store = srv->store, .metrics = srv->metrics,
        .defaults = {.max_steps = srv->cfg.default_max_steps,
                     .timeout_minutes = srv->cfg.default_timeout_minutes,
                     .max_retries = srv->cfg.default_max_retries},
        .retry_base_us = (int64_t)srv->cfg.retry_base_seconds * 1000000,
        .webhook_allowed_hosts = srv->cfg.webhook_allowed_hosts,
        .strict_problems = !strcmp(srv->cfg.problem_validation, "strict"),
        .problems = srv->problems};
    if (session_hub_new(srv->store, &srv->queue, srv->cfg.session_idle_minutes,
                        &srv->sessions) < 0)
        return -1;
    wd = (struct worker_deps){.cfg = &srv->cfg, .store = srv->store, .queue = &srv->queue,
                              .metrics = srv->metrics, .sessions = srv->sessions,
                              .problems = srv->problems, .self_exe = srv->self_exe,
                              .aiopslab_script = srv->aiopslab_script,
                              .llm_url = &srv->llm_url_ready, .llm_hide = srv->llm_hide};
    if (worker_manager_new(&wd, &srv->workers) < 0)
        return -1;
    /* Submitting wakes a worker; cancelling stops the run if one of ours has it. */
    srv->queue.wake_workers = wake_workers;
    srv->queue.stop_run = stop_run;
    srv->queue.workers = srv->workers;
    if (worker_manager_housekeeping(srv->workers) < 0 || session_hub_start(srv->sessions) < 0)
        return -1;
    /* Steps and answers of sessions hosted or awaited elsewhere arrive as notifications. */
    store_listen_sessions(srv->store, session_hub_on_notify, srv->sessions);
    /* Tasks queued by other servers wake our idle workers at once. */
    rc = store_listen(srv->store, wake_workers, srv->workers);
    if (rc < 0 && rc != ERR_UNSUPPORTED)
        log_warn("cannot listen for new tasks; idle workers poll every %d ms",
                 srv->cfg.poll_interval_ms);
    return 0;
}

/* Where this server's executors reach its LLM gateway: its own address (a wildcard
 * address is reached on loopback). */
static void gateway_url(struct server *srv, int port)
{
    const char *h = srv->cfg.host;

    if (!strcmp(h, "0.0.0.0"))
        h = "127.0.0.1";
    else if (!strcmp(h, "::"))
        h = "::1";
    snprintf(srv->llm_url, sizeof(srv->llm_url), strchr(h, ':') ? "http://[%s]:%d/llm/v1"
                                                                : "http://%s:%d/llm/v1",
             h, port);
    atomic_store(&srv->llm_url_ready, srv->llm_url);
}

/* The workers (if started at once), webhooks, the event pump and HTTP. Returns 0 or
 * -1. */
static int start_serving(struct server *srv)
{
    struct webhook_settings ws = {.secret = srv->cfg.webhook_secret,
                                  .allowed_hosts = srv->cfg.webhook_allowed_hosts,
                                  .outbound_allow_hosts = srv->cfg.outbound_allow_hosts,
                                  .max_attempts = srv->cfg.webhook_max_attempts,
                                  .retry_base_ms = srv->cfg.webhook_retry_base_ms,
                                  .timeout_seconds = srv->cfg.webhook_timeout_seconds};
    int prev;

    snprintf(srv->llm_hide, sizeof(srv->llm_hide), "%s,%s", srv->cfg.llm_upstream_key_env,
             srv->cfg.llm_key_envs ? srv->cfg.llm_key_envs : "");
    if (srv->cfg.port) /* else known once HTTP listens: tasks started before run without it */
        gateway_url(srv, srv->cfg.port);
    /* Workers before HTTP: once the API answers, they run. */
    if (srv->cfg.auto_start_workers && srv->cfg.num_internal_workers > 0 &&
        worker_manager_scale(srv->workers, srv->cfg.num_internal_workers, &prev) < 0)
        return -1;
    if (webhook_start(srv->store, &ws, &srv->webhooks) < 0)
        return -1;
    if (events_start(srv, &srv->events) < 0)
        return -1;
    if (ws_hub_new(&(struct ws_limits){
                       .max_conns = srv->cfg.openenv_max_connections,
                       .max_message = (size_t)srv->cfg.openenv_max_message_bytes,
                       .idle_ms = srv->cfg.openenv_idle_seconds * 1000,
                       .max_queued = (size_t)srv->cfg.openenv_max_message_bytes * 4 + (1u << 20)},
                   &srv->ws) < 0)
        return -1;
    if (gateway_new(srv->store, srv->metrics,
                    &(struct gateway_settings){
                        .upstream_url = srv->cfg.llm_upstream_url,
                        .key_env = srv->cfg.llm_upstream_key_env,
                        .key_envs = srv->cfg.llm_key_envs,
                        .timeout_seconds = srv->cfg.llm_timeout_seconds,
                        .max_per_task = srv->cfg.llm_max_calls_per_task,
                        .allow_hosts = srv->cfg.outbound_allow_hosts},
                    &srv->gateway) < 0)
        return -1;
    if (store_groups_inserts(srv->store) && !(srv->submits = workpool_new(SUBMIT_THREADS, "submit"))) {
        log_error("out of memory starting the creates' thread pool");
        return -1;
    }
    if (http_start(srv, &srv->http) < 0)
        return -1;
    if (!srv->cfg.port)
        gateway_url(srv, http_port(srv->http));
    log_info("taskexec %s listening on http://%s:%d (database %s, executor %s, %d workers)",
             TASKEXEC_VERSION, srv->cfg.host, http_port(srv->http), store_name(srv->store),
             srv->cfg.executor, srv->cfg.auto_start_workers ? srv->cfg.num_internal_workers : 0);
    return 0;
}

/* Stops and frees whatever was started, in the order that keeps each step safe. */
static void teardown(struct server *srv)
{
    store_unlisten(srv->store);
    /* Workers first: they stop their children and record why; then HTTP; then webhooks
     * (the endings just recorded are delivered by the next start); then the store. The
     * manager is freed after HTTP: a request still in flight may cancel or scale. */
    worker_manager_shutdown(srv->workers);
    events_close_streams(srv->events); /* live streams end cleanly; parked ones wake */
    session_hub_close_waits(srv->sessions); /* parked steps are answered 503 */
    /* WebSocket connections close (1001) before MHD stops: it must not stop under them. */
    ws_hub_close_all(srv->ws, 10000);
    gateway_close(srv->gateway); /* calls in flight are answered (503) and recorded */
    workpool_drain(srv->submits); /* parked creates are written and answered */
    http_stop(srv->http);
    workpool_free(srv->submits);
    gateway_free(srv->gateway);
    ws_hub_free(srv->ws);
    worker_manager_free(srv->workers);
    events_stop(srv->events);
    session_hub_stop(srv->sessions);
    webhook_stop(srv->webhooks);
    store_close(srv->store);
    metrics_free(srv->metrics);
    json_decref(srv->problems);
    access_free(srv->access);
    config_reset(&srv->cfg);
}

int server_run(int argc, char **argv)
{
    struct server srv;
    sigset_t set;
    struct watch watch = {.set = &set};
    pthread_t dog;
    int sig = 0, code = 1;
    bool has_dog = false;

    memset(&srv, 0, sizeof(srv));
    srv.started_at = clock_now_us();
    if (config_load(&srv.cfg, argc, argv) < 0 || check_config(&srv.cfg) < 0 ||
        load_access(&srv) < 0) {
        config_reset(&srv.cfg);
        return 2;
    }
    /* Signals go to the main thread only: block them before any thread exists. */
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (open_store(&srv) < 0 || start_core(&srv) < 0 || start_serving(&srv) < 0)
        goto out;
    while (sigwait(&set, &sig) != 0)
        ;
    log_info("signal %d: shutting down (a second signal forces it)", sig);
    /* Executors get their grace to clean up (AIOpsLab deletes namespaces) before the
     * limit: their children die with us. */
    watch.limit_seconds = SHUTDOWN_LIMIT_SECONDS + srv.cfg.exec_grace_seconds;
    has_dog = pthread_create(&dog, NULL, watchdog, &watch) == 0;
    http_quiesce(srv.http);
    code = 0;
out:
    teardown(&srv);
    if (has_dog) {
        pthread_cancel(dog);
        pthread_join(dog, NULL);
    }
    if (code == 0)
        log_info("stopped");
    return code;
}
