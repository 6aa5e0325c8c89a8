/* worker: internal workers (see worker.h for the DESIGN and locking rules). */
#include "worker.h"
#include "clock.h"
#include "err.h"
#include "exec.h"
#include "log.h"
#include "proto.h"
#include "server.h"
#include "store.h"
#include "uuidgen.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <wordexp.h>

extern char **environ;

#define FLUSH_EVERY 128       /* events */
#define FLUSH_MS 50
#define LEASE_CHECK_MS 1000

enum slot_state { SLOT_EMPTY, SLOT_ACTIVE, SLOT_RETIRING, SLOT_EXITED };

struct slot {
    struct worker_manager *wm;
    char name[192];
    enum slot_state state;     /* guarded by wm->lock */
    bool has_thread;           /* a pthread to join; guarded by wm->lock */
    pthread_t thread;
    char task_id[TASK_ID_LEN + 1]; /* running task, "" when idle; guarded by wm->lock */
    atomic_int stop;           /* enum exec_stop asked for the current run */
};

struct worker_manager {
    struct server *srv;
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
};

/* ---- one run ---- */

struct run_ctx {
    struct slot *slot;
    struct store *store;
    const struct task *task;
    json_t *logs;              /* pending log objects */
    json_t *msgs;              /* pending message objects */
    int64_t *log_ts, *msg_ts;  /* arrival times, parallel to the arrays */
    size_t ts_cap;
    int64_t last_flush, last_lease_check;
    json_t *result;            /* the executor's result line, if any */
};

static void flush(struct run_ctx *r)
{
    size_t nl = json_array_size(r->logs), nm = json_array_size(r->msgs);
    struct log_entry *le = nl ? calloc(nl, sizeof(*le)) : NULL;
    struct msg_entry *me = nm ? calloc(nm, sizeof(*me)) : NULL;

    r->last_flush = clock_mono_ms();
    if ((nl && !le) || (nm && !me))
        goto out;
    for (size_t i = 0; i < nl; i++) {
        json_t *o = json_array_get(r->logs, i);
        le[i].ts = r->log_ts[i];
        le[i].level = proto_level_parse(json_string_value(json_object_get(o, "level")));
        le[i].message = json_string_value(json_object_get(o, "message"));
        le[i].context = json_object_get(o, "context");
    }
    for (size_t i = 0; i < nm; i++) {
        me[i].ts = r->msg_ts[i];
        me[i].msg = json_array_get(r->msgs, i);
    }
    if (nl && r->store->ops->logs_append(r->store, r->task->id, le, nl) < 0)
        log_error("task %s: %zu log lines could not be stored", r->task->id, nl);
    if (nm && r->store->ops->messages_append(r->store, r->task->id, me, nm) < 0)
        log_error("task %s: %zu messages could not be stored", r->task->id, nm);
out:
    free(le);
    free(me);
    json_array_clear(r->logs);
    json_array_clear(r->msgs);
}

static bool grow_ts(struct run_ctx *r, size_t need)
{
    if (need <= r->ts_cap)
        return true;
    size_t cap = r->ts_cap ? r->ts_cap * 2 : 64;
    int64_t *a = realloc(r->log_ts, cap * sizeof(*a));
    if (!a)
        return false;
    r->log_ts = a;
    a = realloc(r->msg_ts, cap * sizeof(*a));
    if (!a)
        return false;
    r->msg_ts = a;
    r->ts_cap = cap;
    return true;
}

static void add_log(struct run_ctx *r, json_t *obj)
{
    size_t n = json_array_size(r->logs);

    if (!grow_ts(r, n + 1) || json_array_append_new(r->logs, obj)) {
        json_decref(obj);
        return;
    }
    r->log_ts[n] = clock_now_us();
}

static void worker_note(struct run_ctx *r, int level, const char *text)
{
    json_t *o = json_pack("{s:s, s:s, s:{s:s, s:s}}", "level", proto_level_name(level),
                          "message", text, "context", "source", "worker", "worker_id",
                          r->slot->name);
    if (o)
        add_log(r, o);
}

static void on_event(void *ctx, struct proto_event *ev)
{
    struct run_ctx *r = ctx;
    size_t n;

    switch (ev->kind) {
    case PROTO_LOG:
        add_log(r, ev->obj);
        break;
    case PROTO_MESSAGE:
        n = json_array_size(r->msgs);
        if (!grow_ts(r, n + 1) || json_array_append_new(r->msgs, ev->obj)) {
            json_decref(ev->obj);
            break;
        }
        r->msg_ts[n] = clock_now_us();
        break;
    case PROTO_RESULT:
        if (r->result)
            worker_note(r, LEVEL_WARNING, "the executor sent a second result; the last one counts");
        json_decref(r->result);
        r->result = ev->obj;
        break;
    case PROTO_READY:
    case PROTO_OBSERVATION: {
        /* Session lines outside a session: keep them, as text, rather than lose them. */
        char *text = json_dumps(ev->obj, JSON_COMPACT);
        json_t *o = json_pack("{s:s, s:s, s:{s:s}}", "level", "warning", "message",
                              text ? text : "", "context", "note", "session line in a batch task");
        free(text);
        json_decref(ev->obj);
        if (o)
            add_log(r, o);
        break;
    }
    }
    ev->obj = NULL;
    if (json_array_size(r->logs) + json_array_size(r->msgs) >= FLUSH_EVERY)
        flush(r);
}

static enum exec_stop should_stop(void *ctx)
{
    struct run_ctx *r = ctx;
    int64_t now = clock_mono_ms();
    int asked = atomic_load(&r->slot->stop);
    enum task_status status;
    int rc;

    if (now - r->last_flush >= FLUSH_MS)
        flush(r);
    if (asked != EXEC_STOP_NONE)
        return (enum exec_stop)asked;
    if (now - r->last_lease_check < LEASE_CHECK_MS)
        return EXEC_STOP_NONE;
    r->last_lease_check = now;
    /* Another server, the reaper or a cancel may have ended the task. */
    rc = r->store->ops->task_lease_status(r->store, r->task->id, r->task->lease_token, &status);
    if (rc == ERR_FORBIDDEN || (rc == 0 && status != TASK_RUNNING))
        return rc == 0 && status == TASK_CANCELLED ? EXEC_STOP_CANCEL : EXEC_STOP_LEASE_LOST;
    return EXEC_STOP_NONE;
}

/* Environment of the child: ours, minus the names we set, plus the task's. */
static char **child_env(const struct task *t, const char *worker)
{
    char buf[6][512];
    const char *keys[] = {"TASK_ID=", "PROBLEM_ID=", "MAX_STEPS=", "WORKER_ID=",
                          "BACKEND_NAME=", "KUBE_CONTEXT=", "AIOPSLAB_CLUSTER="};
    size_t n = 0, k = 0;
    char **env;

    while (environ[n])
        n++;
    env = calloc(n + 8, sizeof(*env));
    if (!env)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        bool ours = false;
        for (size_t j = 0; j < sizeof(keys) / sizeof(keys[0]); j++)
            if (!strncmp(environ[i], keys[j], strlen(keys[j])))
                ours = true;
        if (!ours && !(env[k++] = strdup(environ[i])))
            goto fail;
    }
    snprintf(buf[0], sizeof(buf[0]), "TASK_ID=%s", t->id);
    snprintf(buf[1], sizeof(buf[1]), "PROBLEM_ID=%s", t->problem_id);
    snprintf(buf[2], sizeof(buf[2]), "MAX_STEPS=%d", t->max_steps);
    snprintf(buf[3], sizeof(buf[3]), "WORKER_ID=%s", worker);
    snprintf(buf[4], sizeof(buf[4]), "BACKEND_NAME=%s", worker);
    snprintf(buf[5], sizeof(buf[5]), "KUBE_CONTEXT=kind-%s", worker);
    for (int i = 0; i < 6; i++)
        if (!(env[k++] = strdup(buf[i])))
            goto fail;
    snprintf(buf[0], sizeof(buf[0]), "AIOPSLAB_CLUSTER=%s", worker);
    if (!(env[k++] = strdup(buf[0])))
        goto fail;
    return env;
fail:
    for (size_t i = 0; i < k; i++)
        free(env[i]);
    free(env);
    return NULL;
}

static void free_env(char **env)
{
    for (size_t i = 0; env && env[i]; i++)
        free(env[i]);
    free(env);
}

/* Decides how the task ends from the executor's outcome. *error is static or buf. */
static enum task_status verdict(struct run_ctx *r, const struct exec_outcome *o, char *buf,
                                size_t size, const char **error)
{
    json_t *success = r->result ? json_object_get(r->result, "success") : NULL;
    json_t *err = r->result ? json_object_get(r->result, "error") : NULL;
    char how[300];

    exec_describe(o, how, sizeof(how));
    *error = buf;
    switch (o->stopped) {
    case EXEC_STOP_TIMEOUT:
        snprintf(buf, size, "timed out after %d s; the executor was stopped",
                 r->task->timeout_seconds);
        return TASK_TIMEOUT;
    case EXEC_STOP_SHUTDOWN:
        snprintf(buf, size, "the server shut down while the task was running; "
                 "the executor was stopped");
        return TASK_FAILED;
    case EXEC_STOP_CANCEL:
        snprintf(buf, size, "cancelled by request while running");
        return TASK_CANCELLED;
    case EXEC_STOP_LEASE_LOST:
        snprintf(buf, size, "the task was ended elsewhere while running");
        return TASK_FAILED;
    case EXEC_STOP_NONE:
        break;
    }
    if (!o->started) {
        snprintf(buf, size, "%s", o->error);
        return TASK_FAILED;
    }
    if (!r->result) {
        snprintf(buf, size, "the executor %s without sending a result", how);
        return TASK_FAILED;
    }
    if (!o->exited || o->exit_code != 0) {
        snprintf(buf, size, "the executor %s", how);
        return TASK_FAILED;
    }
    if (!json_is_true(success)) {
        if (json_is_string(err))
            snprintf(buf, size, "%s", json_string_value(err));
        else
            snprintf(buf, size, "the executor reported failure (success: false)");
        return TASK_FAILED;
    }
    *error = NULL;
    return TASK_COMPLETED;
}

static void add_duration(json_t *result, double seconds)
{
    json_t *m = json_object_get(result, "metrics");

    if (!json_is_object(m)) {
        if (m)
            return; /* the executor's own shape wins */
        m = json_object();
        if (!m || json_object_set_new(result, "metrics", m))
            return;
    }
    if (!json_object_get(m, "duration_seconds"))
        json_object_set_new(m, "duration_seconds", json_real(seconds));
}

static int make_dir(const char *path)
{
    char tmp[PATH_MAX];

    snprintf(tmp, sizeof(tmp), "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            if (mkdir(tmp, 0755) < 0 && errno != EEXIST)
                return ERR_IO;
            *p = '/';
        }
    }
    return mkdir(tmp, 0755) < 0 && errno != EEXIST ? ERR_IO : 0;
}

static void run_child(struct run_ctx *r, struct exec_outcome *o)
{
    struct worker_manager *wm = r->slot->wm;
    struct server *srv = wm->srv;
    const struct task *t = r->task;
    char *sim_argv[] = {srv->self_exe, "simulate", NULL};
    char *const *argv = sim_argv;
    char dir[PATH_MAX], *line = NULL;
    char **env = NULL;
    json_t *tj = NULL;
    int64_t left_ms;

    memset(o, 0, sizeof(*o));
    if (wm->has_command)
        argv = wm->command.we_wordv;
    snprintf(dir, sizeof(dir), "%s/%s", srv->cfg.work_dir, t->id);
    tj = task_to_json(t);
    line = tj ? json_dumps(tj, JSON_COMPACT) : NULL;
    env = child_env(t, r->slot->name);
    if (!line || !env) {
        snprintf(o->error, sizeof(o->error), "out of memory preparing the executor");
        goto out;
    }
    if (make_dir(dir) < 0) {
        snprintf(o->error, sizeof(o->error), "could not create the working directory %.150s: %s",
                 dir, strerror(errno));
        goto out;
    }
    left_ms = (t->deadline_at - clock_now_us()) / 1000;
    struct exec_spec spec = {
        .argv = argv,
        .envp = env,
        .cwd = dir,
        .deadline_ms = clock_mono_ms() + (left_ms > 0 ? left_ms : 0),
        .grace_ms = srv->cfg.exec_grace_seconds * 1000,
        .max_output = (size_t)srv->cfg.max_output_bytes,
    };
    struct exec_hooks hooks = {.ctx = r, .on_event = on_event, .should_stop = should_stop};
    size_t len = strlen(line);
    line[len] = '\n'; /* replaces the NUL: the task goes as one line */
    spec.input = line;
    spec.input_len = len + 1;
    if (exec_run(&spec, &hooks, o) < 0)
        log_warn("%s: task %s: %s", r->slot->name, t->id, o->error);
    rmdir(dir); /* only if the executor left nothing behind */
out:
    json_decref(tj);
    free(line);
    free_env(env);
}

static void run_task(struct slot *slot, struct task *t)
{
    struct worker_manager *wm = slot->wm;
    struct store *st = wm->srv->store;
    struct run_ctx r = {.slot = slot, .store = st, .task = t};
    struct exec_outcome o;
    enum task_status status;
    const char *error;
    char errbuf[512], note[700];
    int rc;

    r.logs = json_array();
    r.msgs = json_array();
    r.last_flush = r.last_lease_check = clock_mono_ms();
    log_info("%s: running task %s (%s)", slot->name, t->id, t->problem_id);
    snprintf(note, sizeof(note), "worker %s started the task (executor %s)", slot->name,
             wm->srv->cfg.executor);
    worker_note(&r, LEVEL_INFO, note);
    if (!strcmp(wm->srv->cfg.executor, "noop")) {
        memset(&o, 0, sizeof(o));
        o.started = o.exited = true;
        r.result = json_pack("{s:b, s:n, s:{s:i}}", "success", 1, "output", "metrics",
                             "steps_taken", 0);
    } else {
        run_child(&r, &o);
    }
    status = verdict(&r, &o, errbuf, sizeof(errbuf), &error);
    if (r.result)
        add_duration(r.result, o.seconds);
    if (status == TASK_COMPLETED)
        snprintf(note, sizeof(note), "task completed in %.3f s", o.seconds);
    else
        snprintf(note, sizeof(note), "task ended %s: %s", task_status_name(status), error);
    worker_note(&r, status == TASK_COMPLETED ? LEVEL_INFO : LEVEL_ERROR, note);
    flush(&r);
    rc = st->ops->task_finish(st, t->id, t->lease_token, status, r.result, error,
                              clock_now_us());
    if (rc == ERR_CONFLICT) {
        /* Already ended (cancelled, reaped): its end stands; free the worker row. */
        log_info("%s: task %s was already ended elsewhere", slot->name, t->id);
        if (st->ops->worker_set_status(st, slot->name, WORKER_IDLE) < 0)
            log_warn("%s: could not mark itself idle", slot->name);
    } else if (rc < 0) {
        log_error("%s: task %s: recording its end failed: %s", slot->name, t->id, err_str(rc));
    } else {
        log_info("%s: task %s %s", slot->name, t->id, task_status_name(status));
    }
    json_decref(r.result);
    json_decref(r.logs);
    json_decref(r.msgs);
    free(r.log_ts);
    free(r.msg_ts);
}

/* ---- threads ---- */

static void *worker_main(void *arg)
{
    struct slot *slot = arg;
    struct worker_manager *wm = slot->wm;
    struct server *srv = wm->srv;
    struct store *st = srv->store;
    char lease[TASK_ID_LEN + 1];

    for (;;) {
        struct claim_req req = {.worker_id = slot->name,
                                .backend_type = srv->cfg.worker_backend_type,
                                .patterns = (const char *const *)wm->patterns,
                                .n_patterns = wm->n_patterns,
                                .lease_token = lease};
        struct task *t = NULL;
        unsigned long gen;
        int rc;

        pthread_mutex_lock(&wm->lock);
        if (slot->state != SLOT_ACTIVE || wm->shutdown) {
            pthread_mutex_unlock(&wm->lock);
            break;
        }
        gen = wm->generation;
        pthread_mutex_unlock(&wm->lock);

        uuidgen(lease);
        req.now = clock_now_us();
        rc = st->ops->task_claim(st, &req, &t);
        if (rc == 0) {
            pthread_mutex_lock(&wm->lock);
            snprintf(slot->task_id, sizeof(slot->task_id), "%s", t->id);
            atomic_store(&slot->stop, wm->shutdown ? EXEC_STOP_SHUTDOWN : EXEC_STOP_NONE);
            pthread_mutex_unlock(&wm->lock);
            run_task(slot, t);
            pthread_mutex_lock(&wm->lock);
            slot->task_id[0] = '\0';
            pthread_mutex_unlock(&wm->lock);
            task_free(t);
            continue;
        }
        if (rc != ERR_NOTFOUND)
            log_warn("%s: claim failed: %s", slot->name, err_str(rc));
        pthread_mutex_lock(&wm->lock);
        if (slot->state == SLOT_ACTIVE && !wm->shutdown && gen == wm->generation) {
            struct timespec until;
            int64_t ms = srv->cfg.poll_interval_ms;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_sec += ms / 1000;
            until.tv_nsec += (ms % 1000) * 1000000L;
            if (until.tv_nsec >= 1000000000L) {
                until.tv_sec++;
                until.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&wm->wake, &wm->lock, &until);
        }
        pthread_mutex_unlock(&wm->lock);
    }
    if (st->ops->worker_set_status(st, slot->name, WORKER_OFFLINE) < 0)
        log_warn("%s: could not mark itself offline", slot->name);
    log_info("%s: stopped", slot->name);
    pthread_mutex_lock(&wm->lock);
    slot->state = SLOT_EXITED;
    pthread_cond_broadcast(&wm->wake);
    pthread_mutex_unlock(&wm->lock);
    return NULL;
}

static int housekeeping_interval_ms(const struct config *cfg)
{
    int ms = cfg->heartbeat_timeout_seconds * 1000 / 3;

    return ms < 200 ? 200 : ms > 10000 ? 10000 : ms;
}

static void *housekeeper_main(void *arg)
{
    struct worker_manager *wm = arg;
    struct store *st = wm->srv->store;
    const struct config *cfg = &wm->srv->cfg;
    const char **ids = calloc((size_t)wm->n_slots, sizeof(*ids));
    char (*names)[192] = calloc((size_t)wm->n_slots, sizeof(*names));

    pthread_mutex_lock(&wm->lock);
    while (!wm->shutdown) {
        struct timespec until;
        struct reap_result rr;
        size_t n = 0;
        int ms = housekeeping_interval_ms(cfg);

        for (int i = 0; ids && names && i < wm->n_slots; i++) {
            struct slot *s = &wm->slots[i];
            if (s->state == SLOT_ACTIVE || s->state == SLOT_RETIRING) {
                memcpy(names[n], s->name, sizeof(names[n]));
                ids[n] = names[n];
                n++;
            }
        }
        pthread_mutex_unlock(&wm->lock);
        if (n && st->ops->worker_heartbeat(st, ids, n, clock_now_us()) < 0)
            log_warn("heartbeat: the database did not take it");
        if (st->ops->reap(st, clock_now_us(), (int64_t)cfg->heartbeat_timeout_seconds * 1000000,
                          &rr) == 0 &&
            (rr.workers_offline || rr.tasks_failed || rr.tasks_timed_out))
            log_warn("reaper: %d workers offline, %d tasks failed, %d tasks timed out",
                     rr.workers_offline, rr.tasks_failed, rr.tasks_timed_out);
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += ms / 1000;
        until.tv_nsec += (long)(ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_mutex_lock(&wm->lock);
        if (!wm->shutdown)
            pthread_cond_timedwait(&wm->hk_wake, &wm->lock, &until);
    }
    pthread_mutex_unlock(&wm->lock);
    free(ids);
    free(names);
    return NULL;
}

/* ---- the manager ---- */

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

int worker_manager_new(struct server *srv, struct worker_manager **out)
{
    struct worker_manager *wm = calloc(1, sizeof(*wm));
    int n = srv->cfg.max_internal_workers;

    if (!wm)
        return ERR_NOMEM;
    wm->slots = calloc((size_t)n, sizeof(*wm->slots));
    if (!wm->slots) {
        free(wm);
        return ERR_NOMEM;
    }
    wm->srv = srv;
    wm->n_slots = n;
    wm->last_count = srv->cfg.num_internal_workers;
    pthread_mutex_init(&wm->lock, NULL);
    pthread_cond_init(&wm->wake, NULL);
    pthread_cond_init(&wm->hk_wake, NULL);
    for (int i = 0; i < n; i++) {
        wm->slots[i].wm = wm;
        snprintf(wm->slots[i].name, sizeof(wm->slots[i].name), "%sworker-%03d-kind",
                 srv->cfg.worker_name_prefix, i + 1);
    }
    if (parse_patterns(wm, srv->cfg.worker_supported_problems) < 0) {
        worker_manager_free(wm);
        return ERR_INVALID;
    }
    if (!strcmp(srv->cfg.executor, "command")) {
        const char *cmd = srv->cfg.executor_command;
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
    struct server *srv = wm->srv;
    struct worker_reg reg = {.backend_type = srv->cfg.worker_backend_type,
                             .capabilities = wm->capabilities,
                             .name_prefix = srv->cfg.worker_name_prefix};

    for (int i = 0; i < n; i++) {
        bool live;

        pthread_mutex_lock(&wm->lock);
        live = wm->slots[i].state == SLOT_ACTIVE || wm->slots[i].state == SLOT_RETIRING;
        pthread_mutex_unlock(&wm->lock);
        if (live)
            continue;
        reg.id = wm->slots[i].name;
        reg.now = clock_now_us();
        if (srv->store->ops->worker_register(srv->store, &reg) < 0) {
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

void worker_manager_free(struct worker_manager *wm)
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
    for (int i = 0; i < wm->n_slots; i++)
        if (wm->slots[i].has_thread)
            pthread_join(wm->slots[i].thread, NULL);
    if (wm->has_housekeeper)
        pthread_join(wm->housekeeper, NULL);
    if (wm->has_command)
        wordfree(&wm->command);
    for (size_t i = 0; wm->patterns && wm->patterns[i]; i++)
        free(wm->patterns[i]);
    free(wm->patterns);
    json_decref(wm->capabilities);
    pthread_mutex_destroy(&wm->lock);
    pthread_cond_destroy(&wm->wake);
    pthread_cond_destroy(&wm->hk_wake);
    free(wm->slots);
    free(wm);
}
