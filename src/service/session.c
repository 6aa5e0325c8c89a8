/* session: see session.h. */
#include "service/session.h"
#include "core/thread.h"
#include "core/clock.h"
#include "core/err.h"
#include "core/log.h"
#include "model/proto.h"
#include "service/queue.h"
#include "store/store.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define POLL_MS 200           /* every wait is re-checked this often, notification or not */
#define IDLE_CHECK_MS 5000
#define MAX_ACTION_BYTES 65536
#define IDLE_BATCH 64

/* A parked step request. Owned by the hub's list until answered. */
struct wait {
    struct wait *next;
    struct session_waiter waiter; /* answered exactly once, by whoever unlinks us */
    char task_id[TASK_ID_LEN + 1];
    int step;
    int64_t deadline_ms;
    bool check;                   /* an answer may be there: look now */
};

/* A session hosted by a runner of this process. */
struct host {
    struct host *next;
    char task_id[TASK_ID_LEN + 1];
    int wake_fd;
    int step;                     /* a step taken through this server, handed over directly */
    char *action;                 /* owned; NULL when none */
};

struct session_hub {
    struct store *store;          /* borrowed */
    struct queue *queue;          /* borrowed: closing a session is a cancel */
    int idle_minutes;             /* SESSION_IDLE_MINUTES */
    pthread_mutex_t lock;         /* guards everything below */
    pthread_cond_t wake;
    pthread_t thread;
    bool started;                 /* thread runs; set before it exists, read at stop */
    bool stop, closing, kick;
    struct wait *waits;
    struct host *hosts;
    int64_t last_idle_check;
};

/* ---- answers ---- */

/* The answer to step `step` from the row, or NULL when it is not there yet. */
static json_t *answer_of(json_t *row, int step)
{
    if (!row || json_integer_value(json_object_get(row, "answered")) < step)
        return NULL;
    return json_pack("{s:i, s:O, s:O, s:O, s:O}", "step", step, "observation",
                     json_object_get(row, "observation"), "done", json_object_get(row, "done"),
                     "reward", json_object_get(row, "reward"), "results",
                     json_object_get(row, "results"));
}

static void finish(struct session_hub *h, struct wait *w, enum session_outcome how,
                   json_t *answer, const struct task *ended);

/* ---- notifications ---- */

static void wake_host(struct session_hub *h, const char *task_id)
{
    uint64_t one = 1;

    for (struct host *x = h->hosts; x; x = x->next)
        if (!strcmp(x->task_id, task_id) && write(x->wake_fd, &one, sizeof(one)) < 0) {
            /* an eventfd only fails when its counter is full: it is awake anyway */
        }
}

static void mark_waits(struct session_hub *h, const char *task_id)
{
    for (struct wait *w = h->waits; w; w = w->next)
        if (!task_id || !strcmp(w->task_id, task_id))
            w->check = true;
    h->kick = true;
    pthread_cond_signal(&h->wake);
}

void session_hub_on_notify(void *hub, const char *payload)
{
    struct session_hub *h = hub;

    pthread_mutex_lock(&h->lock);
    if (!payload) {
        for (struct host *x = h->hosts; x; x = x->next)
            wake_host(h, x->task_id);
        mark_waits(h, NULL);
    } else if (strlen(payload) > 2 && payload[1] == ':') {
        if (payload[0] == 'a')
            wake_host(h, payload + 2);
        else
            mark_waits(h, payload + 2);
    }
    pthread_mutex_unlock(&h->lock);
}

void session_hub_attach(struct session_hub *h, const char *task_id, int wake_fd)
{
    struct host *x = calloc(1, sizeof(*x));

    if (!x)
        return; /* the runner still polls */
    snprintf(x->task_id, sizeof(x->task_id), "%s", task_id);
    x->wake_fd = wake_fd;
    pthread_mutex_lock(&h->lock);
    x->next = h->hosts;
    h->hosts = x;
    pthread_mutex_unlock(&h->lock);
}

void session_hub_detach(struct session_hub *h, const char *task_id)
{
    pthread_mutex_lock(&h->lock);
    for (struct host **p = &h->hosts; *p; p = &(*p)->next) {
        if (!strcmp((*p)->task_id, task_id)) {
            struct host *x = *p;
            *p = x->next;
            free(x->action);
            free(x);
            break;
        }
    }
    pthread_mutex_unlock(&h->lock);
}

void session_hub_answered(struct session_hub *h, const char *task_id, int step, json_t *answer)
{
    pthread_mutex_lock(&h->lock);
    if (answer) {
        /* The answer is at hand: reply to this server's waits for it without reading it back. */
        for (struct wait *w = h->waits, *next; w; w = next) {
            next = w->next;
            if (w->step == step && !strcmp(w->task_id, task_id)) {
                json_t *a = json_pack("{s:i, s:O?, s:O?, s:O?, s:O?}", "step", step,
                                      "observation", json_object_get(answer, "observation"),
                                      "done", json_object_get(answer, "done"), "reward",
                                      json_object_get(answer, "reward"), "results",
                                      json_object_get(answer, "results"));
                finish(h, w, SESSION_ANSWERED, a, NULL);
                json_decref(a);
            }
        }
    }
    mark_waits(h, task_id);
    pthread_mutex_unlock(&h->lock);
}

/* A step was taken: hand it to its host if it is here, so the host need not read it back
 * (another server's host hears of it from the store's notification, sent with the step's
 * commit). */
static void wake_local_host(struct session_hub *h, const char *task_id, int step,
                            const char *action)
{
    pthread_mutex_lock(&h->lock);
    for (struct host *x = h->hosts; x; x = x->next) {
        if (!strcmp(x->task_id, task_id) && step > x->step) {
            char *copy = strdup(action);
            if (copy) {
                free(x->action);
                x->action = copy;
                x->step = step;
            }
        }
    }
    wake_host(h, task_id);
    pthread_mutex_unlock(&h->lock);
}

bool session_hub_take_action(struct session_hub *h, const char *task_id, int after, int *step,
                             char **action)
{
    bool found = false;

    pthread_mutex_lock(&h->lock);
    for (struct host *x = h->hosts; x && !found; x = x->next) {
        if (!strcmp(x->task_id, task_id) && x->action && x->step > after) {
            *step = x->step;
            *action = x->action;  /* ownership moves to the caller */
            x->action = NULL;
            found = true;
        }
    }
    pthread_mutex_unlock(&h->lock);
    return found;
}

/* ---- the hub's thread: answers parked steps ---- */

/* Unlinks w (hub lock held) and answers it; answer and ended stay the caller's. */
static void finish(struct session_hub *h, struct wait *w, enum session_outcome how,
                   json_t *answer, const struct task *ended)
{
    for (struct wait **p = &h->waits; *p; p = &(*p)->next) {
        if (*p == w) {
            *p = w->next;
            break;
        }
    }
    w->waiter.answer(w->waiter.ctx, how, w->step, answer, ended);
    free(w);
}

/* A parked wait to look at, copied out so the store is read without the hub's lock (a
 * wait may be answered and freed meanwhile; it is found again by task and step). */
struct look {
    char task_id[TASK_ID_LEN + 1];
    int step;
    json_t *answer;               /* owned: the answer, when it is there */
    struct task *ended;           /* owned: the task, when it has ended */
};

/* What the store says of one wait: answered, ended, or nothing yet. No lock held. */
static void look_up(struct store *st, struct look *l)
{
    json_t *row = NULL;
    struct task *t = NULL;

    if (store_session_get(st, l->task_id, &row) == 0)
        l->answer = answer_of(row, l->step);
    json_decref(row);
    if (!l->answer && store_task_get(st, l->task_id, &t) == 0 &&
        task_status_terminal(t->status))
        l->ended = t;
    else
        task_free(t);
}

/* Applies what was looked up to the waits still parked for it, and expires the others
 * past their deadline. Hub lock held. */
static void apply_looks(struct session_hub *h, struct look *looks, size_t n, int64_t now)
{
    for (size_t i = 0; i < n; i++) {
        for (struct wait *w = h->waits, *next; w; w = next) {
            next = w->next;
            if (w->step != looks[i].step || strcmp(w->task_id, looks[i].task_id))
                continue;
            if (looks[i].answer)
                finish(h, w, SESSION_ANSWERED, looks[i].answer, NULL);
            else if (looks[i].ended)
                finish(h, w, SESSION_ENDED, NULL, looks[i].ended);
            else if (now >= w->deadline_ms)
                finish(h, w, SESSION_WORKING, NULL, NULL);
        }
        json_decref(looks[i].answer);
        task_free(looks[i].ended);
    }
}

/* Whether w is due for a look: flagged, all on a poll round, or past its deadline. */
static bool due(const struct wait *w, bool poll_all, int64_t now)
{
    return w->check || poll_all || now >= w->deadline_ms;
}

/* The waits due for a look (see due), their flags cleared; NULL with *n 0 when none (or
 * no memory: the next round looks again). Hub lock held; the caller frees the array. */
static struct look *due_looks(struct session_hub *h, bool poll_all, int64_t now, size_t *n)
{
    size_t cap = 0, k = 0;
    struct look *looks;

    for (struct wait *w = h->waits; w; w = w->next)
        cap += due(w, poll_all, now);
    *n = 0;
    if (!cap || !(looks = calloc(cap, sizeof(*looks))))
        return NULL;
    for (struct wait *w = h->waits; w && k < cap; w = w->next) {
        if (due(w, poll_all, now)) {
            w->check = false;
            snprintf(looks[k].task_id, sizeof(looks[k].task_id), "%s", w->task_id);
            looks[k++].step = w->step;
        }
    }
    *n = k;
    return looks;
}

static void close_idle(struct session_hub *h)
{
    char ids[IDLE_BATCH][37];
    size_t n = 0;
    int64_t idle_us = (int64_t)h->idle_minutes * 60 * 1000000;
    char msg[200];

    if (store_session_idle(h->store, clock_now_us() - idle_us, ids, IDLE_BATCH, &n) < 0)
        return;
    snprintf(msg, sizeof(msg), "session closed: no step for %d minutes (SESSION_IDLE_MINUTES)",
             h->idle_minutes);
    for (size_t i = 0; i < n; i++)
        if (queue_cancel(h->queue, ids[i], LEVEL_WARNING, msg, NULL) == 0)
            log_info("session %s closed: idle", ids[i]);
}

static void *hub_main(void *arg)
{
    struct session_hub *h = arg;

    pthread_mutex_lock(&h->lock);
    while (!h->stop) {
        struct timespec until;
        int64_t now = clock_mono_ms();
        bool poll_all = !h->kick;
        size_t n = 0;
        struct look *looks;

        h->kick = false;
        /* The store is read without the lock: steps and answers of every session on this
         * server take it, and a round may look at many waits. */
        if ((looks = due_looks(h, poll_all, now, &n))) {
            pthread_mutex_unlock(&h->lock);
            for (size_t i = 0; i < n; i++)
                look_up(h->store, &looks[i]);
            pthread_mutex_lock(&h->lock);
            apply_looks(h, looks, n, now);
            free(looks);
        }
        if (now - h->last_idle_check >= IDLE_CHECK_MS) {
            h->last_idle_check = now;
            pthread_mutex_unlock(&h->lock);
            close_idle(h);
            pthread_mutex_lock(&h->lock);
        }
        if (h->kick)
            continue;
        clock_deadline(&until, POLL_MS);
        pthread_cond_timedwait(&h->wake, &h->lock, &until);
    }
    pthread_mutex_unlock(&h->lock);
    return NULL;
}

int session_hub_new(struct store *store, struct queue *queue, int idle_minutes,
                    struct session_hub **out)
{
    struct session_hub *h = calloc(1, sizeof(*h));

    if (!h)
        return ERR_NOMEM;
    h->store = store;
    h->queue = queue;
    h->idle_minutes = idle_minutes;
    pthread_mutex_init(&h->lock, NULL);
    pthread_cond_init(&h->wake, NULL);
    *out = h;
    return 0;
}

int session_hub_start(struct session_hub *h)
{
    h->last_idle_check = clock_mono_ms();
    if (pthread_create(&h->thread, NULL, hub_main, h) != 0)
        return ERR_IO;
    h->started = true;
    return 0;
}

void session_hub_close_waits(struct session_hub *h)
{
    if (!h)
        return;
    pthread_mutex_lock(&h->lock);
    h->closing = true;
    while (h->waits)
        finish(h, h->waits, SESSION_CLOSING, NULL, NULL);
    pthread_mutex_unlock(&h->lock);
}

void session_hub_stop(struct session_hub *h)
{
    if (!h)
        return;
    thread_stop(&h->lock, &h->wake, &h->stop, h->started ? &h->thread : NULL);
    while (h->hosts) {
        struct host *x = h->hosts;
        h->hosts = x->next;
        free(x->action);
        free(x);
    }
    free(h);
}

/* ---- steps and closing ---- */

int session_hub_step(struct session_hub *h, const char *task_id, const char *action,
                     int wait_seconds, const struct session_waiter *waiter, int *step,
                     bool *parked)
{
    char id[TASK_ID_LEN + 1];
    struct wait *w;
    int n = 0, rc;

    /* The happy path is one statement: it takes the step only for a running session that
     * is ready with nothing in flight; anything else is looked at only when refused. */
    rc = store_session_step(h->store, task_id, action, clock_now_us(), &n);
    if (rc < 0)
        return rc;
    *step = n;
    *parked = false;
    snprintf(id, sizeof(id), "%s", task_id);
    w = wait_seconds > 0 ? calloc(1, sizeof(*w)) : NULL;
    if (w) {
        snprintf(w->task_id, sizeof(w->task_id), "%s", id);
        w->waiter = *waiter;
        w->step = n;
        w->deadline_ms = clock_mono_ms() + (int64_t)wait_seconds * 1000;
        /* Parked before its host is woken, so no answer can come before anyone waits. */
        pthread_mutex_lock(&h->lock);
        if (h->closing) {
            free(w);
        } else {
            w->next = h->waits;
            h->waits = w;
            waiter->park(waiter->ctx); /* under the lock: finish() cannot answer before */
            *parked = true;
        }
        pthread_mutex_unlock(&h->lock);
    }
    /* From here a parked waiter belongs to the hub: only locals are used. */
    wake_local_host(h, id, n, action);
    return 0;
}

int session_hub_close(struct session_hub *h, const char *task_id)
{
    /* The host stops the child and cleans up; another server's host sees the cancelled
     * state at its next lease check. */
    return queue_cancel(h->queue, task_id, LEVEL_INFO, "session closed by the client", NULL);
}
