/* worker: internal workers (see worker.h for the DESIGN and locking rules). */
#include "worker/worker.h"
#include "model/llm_call.h"
#include "service/session.h"
#include "model/catalog.h"
#include "core/clock.h"
#include "core/config.h"
#include "core/err.h"
#include "exec/exec.h"
#include "exec/executor.h"
#include "core/log.h"
#include "service/metrics.h"
#include "model/proto.h"
#include "exec/provision.h"
#include "exec/runner.h"
#include "service/queue.h"
#include "service/experiments.h"
#include "store/store.h"
#include "core/uuidgen.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <wordexp.h>

#define LEASE_CHECK_MS 1000

enum slot_state { SLOT_EMPTY, SLOT_ACTIVE, SLOT_RETIRING, SLOT_EXITED };

struct slot {
    struct worker_manager *wm;
    char name[192];
    enum slot_state state;     /* guarded by wm->lock */
    bool has_thread;           /* a pthread to join; guarded by wm->lock */
    pthread_t thread;
    char task_id[TASK_ID_LEN + 1]; /* running task, "" when idle; guarded by wm->lock */
    bool ready;                /* provisioned (or nothing to provision); guarded by wm->lock */
    char kubeconfig[PATH_MAX]; /* its cluster's kubeconfig, "" when none; worker thread only */
    char pythonpath[PATH_MAX]; /* AIOPSLAB_DIR with {worker} expanded; read-only */
    atomic_int stop;           /* enum exec_stop asked for the current run */
    json_t *meta;              /* the worker row's metadata as last set; worker thread only */
    struct cluster_care care;  /* its cluster between runs; worker thread only */
};

struct worker_manager {
    struct worker_deps d;       /* what it uses; read-only */
    pthread_mutex_t lock;
    pthread_cond_t wake;       /* new task (signal) or state change (broadcast) */
    unsigned long generation;  /* bumped by every notify */
    struct slot *slots;
    int n_slots;
    int last_count;            /* what start() restores */
    bool running;              /* workers started and not stopped */
    bool shutdown;
    bool has_housekeeper;
    pthread_t housekeeper;
    pthread_cond_t hk_wake;    /* wakes the housekeeper at shutdown */
    char **patterns;           /* WORKER_SUPPORTED_PROBLEMS split; read-only */
    size_t n_patterns;
    json_t *capabilities;      /* registered with each worker row; read-only */
    wordexp_t command;         /* EXECUTOR_COMMAND split like a shell would, no $( ) */
    bool has_command;
    json_t *clean_namespaces;  /* what a run may leave on a cluster; read-only */
};

/* ---- one run ---- */

/* The store as the runner's sink, with the slot's stop flag and a lease check. */
struct store_sink {
    struct slot *slot;
    struct store *store;
    const struct task *task;
    int64_t last_lease_check;
};

static int sink_logs(void *ctx, const char *task_id, const struct log_entry *e, size_t n)
{
    struct store_sink *s = ctx;

    return store_logs_append(s->store, task_id, e, n);
}

static int sink_messages(void *ctx, const char *task_id, const struct msg_entry *e, size_t n)
{
    struct store_sink *s = ctx;

    return store_messages_append(s->store, task_id, e, n);
}

static enum exec_stop sink_check(void *ctx)
{
    struct store_sink *s = ctx;
    int asked = atomic_load(&s->slot->stop);
    int64_t now = clock_mono_ms();
    enum task_status status;
    int rc;

    if (asked != EXEC_STOP_NONE)
        return (enum exec_stop)asked;
    if (now - s->last_lease_check < LEASE_CHECK_MS)
        return EXEC_STOP_NONE;
    s->last_lease_check = now;
    /* Another server, the reaper or a cancel may have ended the task. */
    rc = store_task_lease_status(s->store, s->task->id, s->task->lease_token, &status);
    if (rc == ERR_FORBIDDEN || (rc == 0 && status != TASK_RUNNING))
        return rc == 0 && status == TASK_CANCELLED ? EXEC_STOP_CANCEL : EXEC_STOP_LEASE_LOST;
    return EXEC_STOP_NONE;
}

static int sink_session_ready(void *ctx, const char *task_id, json_t *ready, int max_steps)
{
    struct store_sink *s = ctx;

    return store_session_ready(s->store, task_id, ready, max_steps, clock_now_us());
}

static int sink_session_next(void *ctx, const char *task_id, int after, int *step, char **action)
{
    struct store_sink *s = ctx;

    if (session_hub_take_action(s->slot->wm->d.sessions, task_id, after, step, action))
        return 0; /* sent through this server: no need to read it back */
    return store_session_next(s->store, task_id, after, step, action);
}

static int sink_session_answer(void *ctx, const char *task_id, int step, json_t *answer,
                               const struct msg_entry *msgs, size_t n_msgs)
{
    struct store_sink *s = ctx;
    int rc = store_session_answer(s->store, task_id, step, answer, msgs, n_msgs,
                                           clock_now_us());

    if (rc == 0)
        session_hub_answered(s->slot->wm->d.sessions, task_id, step, answer);
    return rc;
}

static void sink_session_end(void *ctx, const char *task_id)
{
    struct store_sink *s = ctx;

    if (store_session_end(s->store, task_id) < 0)
        log_warn("task %s: could not mark its session ended", task_id);
    session_hub_answered(s->slot->wm->d.sessions, task_id, 0, NULL); /* waits see the end */
}

/* Records the end, retrying while the database is unreachable; the lease guard
 * makes a late or repeated attempt harmless. */
static void record_end(struct slot *slot, const struct task *t, const struct runner_result *res,
                       const struct claim_req *claim_next, struct task **next)
{
    struct worker_manager *wm = slot->wm;
    struct store *st = wm->d.store;
    int rc, wait_ms = 100;

    for (;;) {
        bool may_chain;
        struct claim_req cn = claim_next ? *claim_next : (struct claim_req){0};
        struct task_end end = {.status = res->status, .result = res->result,
                               .error = res->status == TASK_COMPLETED ? NULL : res->error,
                               .now = clock_now_us(), .error_class = res->error_class,
                               .logs = res->logs,
                               .n_logs = res->n_logs, .next = next};

        /* Chain only while the slot stays: a leaving slot claims nothing more. */
        pthread_mutex_lock(&wm->lock);
        may_chain = claim_next && slot->state == SLOT_ACTIVE && !wm->shutdown &&
                    atomic_load(&slot->stop) == EXEC_STOP_NONE;
        pthread_mutex_unlock(&wm->lock);
        cn.now = end.now;
        end.claim_next = may_chain ? &cn : NULL;
        rc = queue_finish(wm->d.queue, t, &end);
        if (rc != ERR_UNAVAILABLE && rc != ERR_STORE)
            break;
        if (atomic_load(&slot->stop) == EXEC_STOP_SHUTDOWN) {
            log_error("%s: task %s: its end could not be recorded before shutdown; the next "
                      "start fails it", slot->name, t->id);
            return;
        }
        usleep((useconds_t)wait_ms * 1000);
        wait_ms = wait_ms < 5000 ? wait_ms * 2 : 5000;
    }
    if (rc == ERR_CONFLICT) {
        /* Already ended (cancelled, reaped): its end stands; free the worker row. */
        log_task(LOG_INFO, t->id, "%s: task %s was already ended elsewhere", slot->name, t->id);
        if (store_worker_set_status(st, slot->name, WORKER_IDLE, NULL) < 0)
            log_warn("%s: could not mark itself idle", slot->name);
    } else if (rc < 0) {
        log_error("%s: task %s: recording its end failed: %s", slot->name, t->id, err_str(rc));
    } else {
        log_task(LOG_INFO, t->id, "%s: task %s %s", slot->name, t->id,
                 task_status_name(res->status));
    }
    metrics_exec_exit(wm->d.metrics, res->cause);
}

/* Runs t and records its end; with claim_next, *next is the task claimed in the same
 * transaction as that end (or NULL). */
static void run_task(struct slot *slot, struct task *t, const struct claim_req *claim_next,
                     struct task **next)
{
    struct worker_manager *wm = slot->wm;
    const struct worker_deps *d = &wm->d;
    struct store_sink ss = {.slot = slot, .store = d->store, .task = t,
                            .last_lease_check = clock_mono_ms()};
    struct runner_sink sink = {.ctx = &ss, .logs = sink_logs, .messages = sink_messages,
                               .check = sink_check, .session_ready = sink_session_ready,
                               .session_next = sink_session_next,
                               .session_answer = sink_session_answer,
                               .session_end = sink_session_end, .wake_fd = -1};
    bool interactive = task_mode_of(t) == TASK_INTERACTIVE;
    struct runner rn;
    struct runner_result res;
    char llm_key[LLM_KEY_SIZE];
    const char *gateway;

    /* A session's steps wake the runner through this eventfd (the hub writes it). */
    if (interactive) {
        sink.wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (sink.wake_fd >= 0)
            session_hub_attach(d->sessions, t->id, sink.wake_fd);
    }
    runner_init(&rn, d->cfg, slot->name, wm->has_command ? wm->command.we_wordv : NULL,
                d->self_exe, d->aiopslab_script, slot->pythonpath, slot->kubeconfig);
    rn.keep_final_logs = true; /* stored with the task's end, in one transaction */
    gateway = d->llm_url ? atomic_load(d->llm_url) : NULL;
    if (gateway && t->lease_token &&
        llm_gateway_applies(d->cfg->llm_upstream_url, t->parameters)) {
        llm_task_key(t->id, t->lease_token, llm_key);
        rn.llm_url = gateway;
        rn.llm_key = llm_key;
        rn.llm_hide = d->llm_hide;
    } else {
        rn.llm_hide = d->cfg->llm_key_envs; /* kept for the gateway, whoever runs */
    }
    log_task(LOG_INFO, t->id, "%s: running task %s (%s)", slot->name, t->id, t->problem_id);
    runner_run(&rn, &sink, t, &res);
    if (sink.wake_fd >= 0) {
        session_hub_detach(d->sessions, t->id);
        close(sink.wake_fd);
    }
    record_end(slot, t, &res, claim_next, next);
    runner_result_reset(&res);
}

/* ---- threads ---- */

/* Sleeps up to ms unless the slot is told to leave. With wm->lock held. */
static void wait_locked(struct worker_manager *wm, int64_t ms)
{
    struct timespec until;

    clock_deadline(&until, ms);
    pthread_cond_timedwait(&wm->wake, &wm->lock, &until);
}

/* Waits ms unless the slot is told to leave; returns true when it must leave. */
static bool pause_or_leave(struct slot *slot, int64_t ms)
{
    struct worker_manager *wm = slot->wm;
    bool leave;

    pthread_mutex_lock(&wm->lock);
    if (slot->state == SLOT_ACTIVE && !wm->shutdown)
        wait_locked(wm, ms);
    leave = slot->state != SLOT_ACTIVE || wm->shutdown;
    pthread_mutex_unlock(&wm->lock);
    return leave;
}

/* BACKEND_PROVISION=kind: the worker's cluster must answer before it claims anything,
 * so a broken cluster never eats a task. Failures show on the worker's row; it tries
 * again every PROVISION_RETRY_SECONDS. Returns true when ready. */
static bool provision(struct slot *slot)
{
    const struct worker_deps *d = &slot->wm->d;
    struct store *st = d->store;
    char dir[PATH_MAX - 256], error[600];
    struct provision_spec spec = {.cluster = slot->name, .kubeconfig = slot->kubeconfig,
                                  .kind_config = d->cfg->kind_config,
                                  .create_timeout_seconds = d->cfg->kind_create_timeout_seconds};
    json_t *meta;
    int rc;

    snprintf(dir, sizeof(dir), "%.3000s/kube", d->cfg->work_dir);
    if (runner_mkdirs(dir) < 0)
        log_warn("%s: cannot create %s", slot->name, dir);
    snprintf(slot->kubeconfig, sizeof(slot->kubeconfig), "%s/%s.yaml", dir, slot->name);
    meta = json_pack("{s:s, s:s}", "provision", "in progress", "cluster", slot->name);
    if (store_worker_set_status(st, slot->name, WORKER_OFFLINE, meta) < 0)
        log_warn("%s: could not record provisioning", slot->name);
    json_decref(meta);
    rc = provision_kind(&spec, error, sizeof(error));
    if (rc < 0) {
        char now[40];
        clock_format(clock_now_us(), now, sizeof(now));
        log_error("%s: its cluster is not usable: %s; retrying in %d s", slot->name, error,
                  d->cfg->provision_retry_seconds);
        meta = json_pack("{s:s, s:s, s:s, s:s}", "provision", "failed", "cluster", slot->name,
                         "provision_error", error, "provision_failed_at", now);
        slot->kubeconfig[0] = '\0';
    } else {
        meta = json_pack("{s:s, s:s, s:s, s:s}", "provision", "ready", "cluster", slot->name,
                         "kube_context", "", "kubeconfig", slot->kubeconfig);
        json_object_set_new(meta, "kube_context", json_sprintf("kind-%s", slot->name));
    }
    if (store_worker_set_status(st, slot->name, rc < 0 ? WORKER_OFFLINE : WORKER_IDLE,
                                   meta) < 0)
        log_warn("%s: could not record its provisioning state", slot->name);
    json_decref(slot->meta);
    slot->meta = meta; /* the slot keeps it: later states add to it */
    return rc == 0;
}

/* Records the cluster's state on the worker row: offline (ready false, so no heartbeat
 * revives it) with the reason, or idle again. */
static void cluster_state(struct slot *slot, const char *state, const char *why)
{
    struct worker_manager *wm = slot->wm;
    struct store *st = wm->d.store;
    bool usable = !strcmp(state, "clean");

    if (!slot->meta)
        slot->meta = json_object();
    json_object_set_new(slot->meta, "cluster_check", json_string(state));
    json_object_set_new(slot->meta, "cluster_runs", json_integer(slot->care.runs));
    if (why)
        json_object_set_new(slot->meta, "cluster_error", json_string(why));
    else
        json_object_del(slot->meta, "cluster_error");
    pthread_mutex_lock(&wm->lock);
    slot->ready = usable;
    pthread_mutex_unlock(&wm->lock);
    if (store_worker_set_status(st, slot->name, usable ? WORKER_IDLE : WORKER_OFFLINE,
                                   slot->meta) < 0)
        log_warn("%s: could not record its cluster's state", slot->name);
}

static void on_repairing(void *ctx, const char *why)
{
    cluster_state(ctx, "repairing", why);
}

/* After a run: the cluster must be clean and ready before the worker claims again.
 * Returns false when the worker is told to leave meanwhile. */
static bool cluster_after_run(struct slot *slot)
{
    struct worker_manager *wm = slot->wm;
    char error[600];
    bool counted = false;

    for (;;) {
        int rc = provision_after_run(&slot->care, !counted, error, sizeof(error));

        counted = true;
        if (rc == 0)
            break;
        log_error("%s: %s; it claims nothing until it is fixed (next check in %d s)",
                  slot->name, error, wm->d.cfg->provision_retry_seconds);
        cluster_state(slot, "failed", error);
        if (pause_or_leave(slot, (int64_t)wm->d.cfg->provision_retry_seconds * 1000))
            return false;
    }
    /* One more write a run (runs of these workers take minutes): the row says the
     * cluster was checked, and how many runs it has had. */
    cluster_state(slot, "clean", NULL);
    return true;
}

/* The slot's cluster as provision_after_run looks after it. */
static void care_init(struct slot *slot, bool need_cluster)
{
    const struct worker_deps *d = &slot->wm->d;

    slot->care = (struct cluster_care){
        .spec = {.cluster = slot->name, .kubeconfig = slot->kubeconfig,
                 .kind_config = d->cfg->kind_config,
                 .create_timeout_seconds = d->cfg->kind_create_timeout_seconds},
        .can_recreate = need_cluster, .recycle_after = d->cfg->cluster_recycle_after_runs,
        .namespaces = slot->wm->clean_namespaces, .repairing = on_repairing, .ctx = slot};
}

/* True while the slot may claim; *gen is the notify generation seen. */
static bool may_claim(struct slot *slot, unsigned long *gen)
{
    struct worker_manager *wm = slot->wm;
    bool yes;

    pthread_mutex_lock(&wm->lock);
    yes = slot->state == SLOT_ACTIVE && !wm->shutdown;
    *gen = wm->generation;
    pthread_mutex_unlock(&wm->lock);
    return yes;
}

/* Runs t and every task claimed with the end of the one before (frees each). With
 * check, claims nothing with an end and checks the cluster after each run. Returns
 * ERR_NOTFOUND when no next task came, 1 when the slot must leave (its cluster check
 * was cut short). */
static int run_chain(struct slot *slot, struct task *t, const struct claim_req *req, bool check)
{
    struct worker_manager *wm = slot->wm;
    char next_lease[TASK_ID_LEN + 1];

    while (t) {
        /* The next task is claimed in the transaction that records this one's end
         * (record_end leaves it out once the slot is told to leave). */
        struct claim_req next_req = *req;
        struct task *next = NULL;

        pthread_mutex_lock(&wm->lock);
        snprintf(slot->task_id, sizeof(slot->task_id), "%s", t->id);
        atomic_store(&slot->stop, wm->shutdown ? EXEC_STOP_SHUTDOWN : EXEC_STOP_NONE);
        pthread_mutex_unlock(&wm->lock);
        uuidgen(next_lease);
        next_req.lease_token = next_lease;
        run_task(slot, t, check ? NULL : &next_req, &next);
        pthread_mutex_lock(&wm->lock);
        slot->task_id[0] = '\0';
        pthread_mutex_unlock(&wm->lock);
        task_free(t);
        t = next; /* t keeps its own copy of its lease */
        if (check && !cluster_after_run(slot)) {
            task_free(t);
            return 1;
        }
    }
    return ERR_NOTFOUND;
}

/* The slot's thread is done: its row goes offline and the manager hears of it. */
static void slot_exit(struct slot *slot)
{
    struct worker_manager *wm = slot->wm;

    if (store_worker_set_status(wm->d.store, slot->name, WORKER_OFFLINE, NULL) < 0)
        log_warn("%s: could not mark itself offline", slot->name);
    json_decref(slot->meta);
    slot->meta = NULL;
    log_info("%s: stopped", slot->name);
    pthread_mutex_lock(&wm->lock);
    slot->ready = false;
    slot->state = SLOT_EXITED;
    pthread_cond_broadcast(&wm->wake);
    pthread_mutex_unlock(&wm->lock);
}

static void *worker_main(void *arg)
{
    struct slot *slot = arg;
    struct worker_manager *wm = slot->wm;
    const struct worker_deps *d = &wm->d;
    bool need_cluster = !strcmp(d->cfg->backend_provision, "kind");
    /* An aiopslab or Kind worker checks its cluster after each run, so it cannot claim
     * its next task in the same transaction. */
    bool check = d->cfg->cluster_check &&
                 (need_cluster || executor_find(d->cfg->executor)->touches_cluster);
    char lease[TASK_ID_LEN + 1];
    struct claim_req req = {.worker_id = slot->name,
                            .backend_type = d->cfg->worker_backend_type,
                            .patterns = (const char *const *)wm->patterns,
                            .n_patterns = wm->n_patterns,
                            .lease_token = lease};
    unsigned long gen;

    care_init(slot, need_cluster);
    while (need_cluster && !provision(slot)) {
        if (pause_or_leave(slot, (int64_t)d->cfg->provision_retry_seconds * 1000))
            goto out;
    }
    pthread_mutex_lock(&wm->lock);
    slot->ready = true;
    pthread_mutex_unlock(&wm->lock);
    while (may_claim(slot, &gen)) {
        struct task *t = NULL;
        int rc;

        uuidgen(lease);
        rc = queue_claim(d->queue, &req, &t);
        if (rc == 0 && run_chain(slot, t, &req, check) == 1)
            goto out;
        if (rc < 0 && rc != ERR_NOTFOUND)
            log_warn("%s: claim failed: %s", slot->name, err_str(rc));
        pthread_mutex_lock(&wm->lock);
        if (slot->state == SLOT_ACTIVE && !wm->shutdown && gen == wm->generation)
            wait_locked(wm, d->cfg->poll_interval_ms);
        pthread_mutex_unlock(&wm->lock);
    }
out:
    slot_exit(slot);
    return NULL;
}

static int heartbeat_interval_ms(const struct config *cfg)
{
    int ms = cfg->heartbeat_timeout_seconds * 1000 / 3;

    return ms < 200 ? 200 : ms > 10000 ? 10000 : ms;
}

#define GAUGE_INTERVAL_MS 1000

/* The queue gauges of /metrics, read here so that a scrape never waits on the database. */
static void refresh_gauges(struct worker_manager *wm)
{
    struct store *st = wm->d.store;
    struct task_stats ts;
    int64_t w[3];
    bool ok = store_task_stats(st, false, &ts) == 0 && store_worker_counts(st, w) == 0;

    metrics_set_queue(wm->d.metrics, ok, &ts, w);
}

static void *housekeeper_main(void *arg)
{
    struct worker_manager *wm = arg;
    struct store *st = wm->d.store;
    const struct config *cfg = wm->d.cfg;
    const char **ids = calloc((size_t)wm->n_slots, sizeof(*ids));
    char (*names)[192] = calloc((size_t)wm->n_slots, sizeof(*names));
    int beat_ms = heartbeat_interval_ms(cfg), tick_ms = beat_ms < GAUGE_INTERVAL_MS
                                                          ? beat_ms
                                                          : GAUGE_INTERVAL_MS;
    int64_t next_beat = 0;

    pthread_mutex_lock(&wm->lock);
    while (!wm->shutdown) {
        size_t n = 0;
        int64_t now = clock_mono_ms();
        bool beat = now >= next_beat;

        for (int i = 0; beat && ids && names && i < wm->n_slots; i++) {
            struct slot *s = &wm->slots[i];
            /* A worker still provisioning stays offline: no heartbeat revives it. */
            if ((s->state == SLOT_ACTIVE || s->state == SLOT_RETIRING) && s->ready) {
                memcpy(names[n], s->name, sizeof(names[n]));
                ids[n] = names[n];
                n++;
            }
        }
        pthread_mutex_unlock(&wm->lock);
        if (beat) {
            next_beat = now + beat_ms;
            if (n && store_worker_heartbeat(st, ids, n, clock_now_us()) < 0)
                log_warn("heartbeat: the database did not take it");
            /* An error is passed over, as it always was: the next beat tries again. */
            (void)queue_reap(wm->d.queue, (int64_t)cfg->heartbeat_timeout_seconds * 1000000,
                             NULL);
        }
        /* Every tick (a second at most), so an experiment's end is announced promptly; an
         * error is passed over likewise: the next tick tries again. */
        (void)experiments_end(wm->d.queue);
        refresh_gauges(wm);
        pthread_mutex_lock(&wm->lock);
        if (!wm->shutdown) {
            struct timespec until;
            clock_deadline(&until, tick_ms);
            pthread_cond_timedwait(&wm->hk_wake, &wm->lock, &until);
        }
    }
    pthread_mutex_unlock(&wm->lock);
    free(ids);
    free(names);
    return NULL;
}

void worker_expand(const char *pattern, const char *worker, char *out, size_t size)
{
    const char *hole = strstr(pattern, "{worker}");

    if (!hole)
        snprintf(out, size, "%s", pattern);
    else
        snprintf(out, size, "%.*s%s%s", (int)(hole - pattern), pattern, worker, hole + 8);
}

/* Splits "a*, b-?" into globs; each must be a problem id with * ? [ ] allowed. */
static int parse_patterns(struct worker_manager *wm, const char *list)
{
    json_t *arr = json_array();
    char *copy = list ? strdup(list) : NULL, *p, *next;

    if (!arr || (list && !copy))
        goto fail;
    for (p = copy; p; p = next) {
        char *e;

        next = strchr(p, ',');
        if (next)
            *next++ = '\0';
        while (*p == ' ')
            p++;
        e = p + strlen(p);
        while (e > p && e[-1] == ' ')
            *--e = '\0';
        if (!*p)
            continue;
        for (e = p; *e; e++) {
            if (!strchr("*?[]!", *e) && !task_valid_name((char[]){*e, 0}, 1)) {
                log_error("WORKER_SUPPORTED_PROBLEMS: '%s' is not a problem id pattern", p);
                goto fail;
            }
        }
        if (json_array_append_new(arr, json_string(p)))
            goto fail;
    }
    wm->n_patterns = json_array_size(arr);
    wm->patterns = calloc(wm->n_patterns + 1, sizeof(char *));
    if (!wm->patterns)
        goto fail;
    for (size_t i = 0; i < wm->n_patterns; i++)
        if (!(wm->patterns[i] = strdup(json_string_value(json_array_get(arr, i)))))
            goto fail;
    wm->capabilities = wm->n_patterns ? json_pack("{s:O}", "supported_problems", arr)
                                      : json_object();
    json_decref(arr);
    free(copy);
    return wm->capabilities ? 0 : ERR_NOMEM;
fail:
    json_decref(arr);
    free(copy);
    return ERR_INVALID;
}

int worker_manager_new(const struct worker_deps *d, struct worker_manager **out)
{
    struct worker_manager *wm = calloc(1, sizeof(*wm));
    int n = d->cfg->max_internal_workers;

    if (!wm)
        return ERR_NOMEM;
    wm->slots = calloc((size_t)n, sizeof(*wm->slots));
    if (!wm->slots) {
        free(wm);
        return ERR_NOMEM;
    }
    wm->d = *d;
    wm->n_slots = n;
    wm->last_count = d->cfg->num_internal_workers;
    pthread_mutex_init(&wm->lock, NULL);
    pthread_cond_init(&wm->wake, NULL);
    pthread_cond_init(&wm->hk_wake, NULL);
    for (int i = 0; i < n; i++) {
        wm->slots[i].wm = wm;
        snprintf(wm->slots[i].name, sizeof(wm->slots[i].name), "%sworker-%03d-kind",
                 d->cfg->worker_name_prefix, i + 1);
        if (d->cfg->aiopslab_dir)
            worker_expand(d->cfg->aiopslab_dir, wm->slots[i].name, wm->slots[i].pythonpath,
                          sizeof(wm->slots[i].pythonpath));
    }
    wm->clean_namespaces = catalog_namespaces(d->problems);
    if (!wm->clean_namespaces || parse_patterns(wm, d->cfg->worker_supported_problems) < 0) {
        worker_manager_free(wm);
        return ERR_INVALID;
    }
    if (executor_find(d->cfg->executor)->start == EXECUTOR_START_COMMAND) {
        const char *cmd = d->cfg->executor_command;
        if (!cmd || wordexp(cmd, &wm->command, WRDE_NOCMD) != 0 || wm->command.we_wordc == 0) {
            log_error("EXECUTOR=command needs EXECUTOR_COMMAND, a command line without $(...)");
            if (cmd)
                wordfree(&wm->command);
            worker_manager_free(wm);
            return ERR_INVALID;
        }
        wm->has_command = true;
    }
    *out = wm;
    return 0;
}

int worker_manager_housekeeping(struct worker_manager *wm)
{
    if (pthread_create(&wm->housekeeper, NULL, housekeeper_main, wm) != 0)
        return ERR_IO;
    wm->has_housekeeper = true;
    return 0;
}

static int count_active(struct worker_manager *wm)
{
    int n = 0;

    for (int i = 0; i < wm->n_slots; i++)
        n += wm->slots[i].state == SLOT_ACTIVE;
    return n;
}

/* With wm->lock held. */
static int scale_locked(struct worker_manager *wm, int n)
{
    for (int i = 0; i < wm->n_slots; i++) {
        struct slot *s = &wm->slots[i];

        if (i >= n) {
            if (s->state == SLOT_ACTIVE)
                s->state = SLOT_RETIRING;
            continue;
        }
        if (s->state == SLOT_ACTIVE)
            continue;
        if (s->state == SLOT_RETIRING) {
            s->state = SLOT_ACTIVE; /* still running: it simply stays */
            continue;
        }
        if (s->has_thread) {
            /* SLOT_EXITED: the thread has left its loop and takes no lock again. */
            pthread_join(s->thread, NULL);
            s->has_thread = false;
        }
        s->state = SLOT_ACTIVE;
        if (pthread_create(&s->thread, NULL, worker_main, s) != 0) {
            s->state = SLOT_EMPTY;
            log_error("could not start thread for %s", s->name);
            return ERR_IO;
        }
        s->has_thread = true;
    }
    pthread_cond_broadcast(&wm->wake);
    return 0;
}

/* Registers (or revives) the rows of slots [0, n) that have no live thread, so the
 * worker list is right as soon as scaling returns. Runs without wm->lock. */
static int register_slots(struct worker_manager *wm, int n)
{
    const struct worker_deps *d = &wm->d;
    struct worker_reg reg = {.backend_type = d->cfg->worker_backend_type,
                             .capabilities = wm->capabilities,
                             .name_prefix = d->cfg->worker_name_prefix};

    for (int i = 0; i < n; i++) {
        bool live;

        pthread_mutex_lock(&wm->lock);
        live = wm->slots[i].state == SLOT_ACTIVE || wm->slots[i].state == SLOT_RETIRING;
        pthread_mutex_unlock(&wm->lock);
        if (live)
            continue;
        reg.id = wm->slots[i].name;
        reg.now = clock_now_us();
        if (store_worker_register(d->store, &reg) < 0) {
            log_error("%s: could not register in the database", reg.id);
            return ERR_STORE;
        }
    }
    return 0;
}

int worker_manager_scale(struct worker_manager *wm, int n, int *previous)
{
    int rc;

    if (n < 0 || n > wm->n_slots)
        return ERR_INVALID;
    rc = register_slots(wm, n);
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&wm->lock);
    if (wm->shutdown) { /* no new thread once shutdown has joined them */
        pthread_mutex_unlock(&wm->lock);
        return ERR_UNAVAILABLE;
    }
    *previous = count_active(wm);
    rc = scale_locked(wm, n);
    if (rc == 0) {
        wm->running = n > 0;
        if (n > 0)
            wm->last_count = n;
    }
    pthread_mutex_unlock(&wm->lock);
    return rc;
}

void worker_manager_stop(struct worker_manager *wm, int *stopped)
{
    pthread_mutex_lock(&wm->lock);
    *stopped = count_active(wm);
    scale_locked(wm, 0);
    wm->running = false;
    pthread_mutex_unlock(&wm->lock);
}

int worker_manager_start(struct worker_manager *wm, int *count)
{
    int prev;

    *count = wm->last_count;
    return worker_manager_scale(wm, wm->last_count, &prev);
}

void worker_manager_notify(struct worker_manager *wm)
{
    pthread_mutex_lock(&wm->lock);
    wm->generation++;
    pthread_cond_signal(&wm->wake);
    pthread_mutex_unlock(&wm->lock);
}

bool worker_manager_cancel(struct worker_manager *wm, const char *task_id)
{
    bool found = false;

    pthread_mutex_lock(&wm->lock);
    for (int i = 0; i < wm->n_slots; i++) {
        if (!strcmp(wm->slots[i].task_id, task_id)) {
            atomic_store(&wm->slots[i].stop, EXEC_STOP_CANCEL);
            found = true;
        }
    }
    pthread_mutex_unlock(&wm->lock);
    return found;
}

json_t *worker_manager_status(struct worker_manager *wm)
{
    json_t *list = json_array(), *o;

    pthread_mutex_lock(&wm->lock);
    for (int i = 0; list && i < wm->n_slots; i++) {
        struct slot *s = &wm->slots[i];
        const char *status;

        if (s->state != SLOT_ACTIVE && s->state != SLOT_RETIRING)
            continue;
        status = s->task_id[0] ? WORKER_BUSY : WORKER_IDLE;
        if (s->state == SLOT_RETIRING)
            status = "stopping";
        json_array_append_new(list, json_pack("{s:s, s:s, s:o}", "id", s->name, "status", status,
                                              "current_task", s->task_id[0]
                                                                  ? json_string(s->task_id)
                                                                  : json_null()));
    }
    o = json_pack("{s:b, s:i, s:o}", "running", wm->running, "num_workers", count_active(wm),
                  "workers", list ? list : json_array());
    pthread_mutex_unlock(&wm->lock);
    return o;
}

void worker_manager_shutdown(struct worker_manager *wm)
{
    if (!wm)
        return;
    pthread_mutex_lock(&wm->lock);
    wm->shutdown = true;
    for (int i = 0; i < wm->n_slots; i++) {
        if (wm->slots[i].state == SLOT_ACTIVE)
            wm->slots[i].state = SLOT_RETIRING;
        if (wm->slots[i].task_id[0])
            atomic_store(&wm->slots[i].stop, EXEC_STOP_SHUTDOWN);
    }
    pthread_cond_broadcast(&wm->wake);
    pthread_cond_broadcast(&wm->hk_wake);
    pthread_mutex_unlock(&wm->lock);
    for (int i = 0; i < wm->n_slots; i++) {
        if (wm->slots[i].has_thread)
            pthread_join(wm->slots[i].thread, NULL);
        wm->slots[i].has_thread = false;
    }
    if (wm->has_housekeeper)
        pthread_join(wm->housekeeper, NULL);
    wm->has_housekeeper = false;
}

void worker_manager_free(struct worker_manager *wm)
{
    if (!wm)
        return;
    worker_manager_shutdown(wm);
    if (wm->has_command)
        wordfree(&wm->command);
    for (size_t i = 0; wm->patterns && wm->patterns[i]; i++)
        free(wm->patterns[i]);
    free(wm->patterns);
    json_decref(wm->capabilities);
    json_decref(wm->clean_namespaces);
    pthread_mutex_destroy(&wm->lock);
    pthread_cond_destroy(&wm->wake);
    pthread_cond_destroy(&wm->hk_wake);
    free(wm->slots);
    free(wm);
}
