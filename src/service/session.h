/* session: interactive environment sessions (online RL: the trainer chooses every action).
 *
 * DESIGN
 * A session is a task with mode "interactive", queued and claimed like any other; the
 * runner hosting it keeps the executor's stdin open. The state a step needs (is the
 * environment ready, which step is in flight, the last answer) is one row in the
 * database, so a step can be sent to any server: the API takes the next step number with
 * one conditional UPDATE (a second step while one is in flight is refused, never
 * interleaved), then the hub wakes whoever hosts the session — a runner of this process
 * directly, another server's through NOTIFY (PostgreSQL) — and parks the HTTP request
 * (no thread held) until the answer is stored and announced the same way, or until
 * wait_seconds pass (202). Every wait is also re-checked every POLL_MS against the
 * database, so a lost notification costs latency, never an answer.
 *
 * The hub's thread also answers waits whose deadline passed or whose session ended, and
 * closes sessions idle past SESSION_IDLE_MINUTES (any server may; cancelling is
 * idempotent).
 *
 * The hub knows nothing of HTTP: a parked step is a struct session_waiter (the HTTP
 * layer's request behind two callbacks), answered exactly once with an outcome; the
 * session routes themselves are in http/api_sessions.c. */
#ifndef TASKEXEC_SESSION_H
#define TASKEXEC_SESSION_H

#include "model/task.h"

#include <jansson.h>
#include <stdbool.h>

struct store;
struct queue;
struct session_hub;

/* How a parked step ends. */
enum session_outcome {
    SESSION_ANSWERED,   /* answer: {"step","observation","done","reward","results"} */
    SESSION_ENDED,      /* the session ended before answering; ended says how */
    SESSION_WORKING,    /* wait_seconds passed without an answer */
    SESSION_CLOSING,    /* the server is shutting down */
};

/* Whoever waits for a step's answer. Both callbacks run with the hub's lock held, so they
 * must not call back into the hub. */
struct session_waiter {
    void *ctx;
    /* The step is parked: from now on answer() may come from any thread (called before
     * the host is woken, so before any answer can exist). */
    void (*park)(void *ctx);
    /* Exactly once per parked step. answer and ended are borrowed for the call (answer
     * only with SESSION_ANSWERED, ended only with SESSION_ENDED). */
    void (*answer)(void *ctx, enum session_outcome how, int step, json_t *answer,
                   const struct task *ended);
};

/* session_hub_new: the hub, without its thread yet (so that what it calls can be wired up
 * first). store and queue are borrowed and must outlive it; idle_minutes is
 * SESSION_IDLE_MINUTES. Caller frees with session_hub_stop. ERR_NOMEM. */
int session_hub_new(struct store *store, struct queue *queue, int idle_minutes,
                    struct session_hub **out) __attribute__((warn_unused_result));
/* session_hub_start: starts the thread that answers parked steps and closes idle
 * sessions. ERR_IO. */
int session_hub_start(struct session_hub *h) __attribute__((warn_unused_result));
/* session_hub_close_waits: answers every parked step SESSION_CLOSING (before HTTP stops);
 * later steps are not parked. */
void session_hub_close_waits(struct session_hub *h);
/* session_hub_stop: stops the thread (if started) and frees; NULL-safe. */
void session_hub_stop(struct session_hub *h);

/* session_hub_step: takes the next step of session task_id with action (one conditional
 * update: refused with ERR_CONFLICT unless the session runs, is ready and has nothing in
 * flight, also when there is no such session: the caller tells which) and wakes its host. With
 * wait_seconds > 0 the step is parked on waiter (*parked true: waiter->answer comes
 * later, exactly once); otherwise, or when the server is closing or out of memory,
 * *parked is false and the caller answers "still working" itself. *step gets the step's
 * number. Other codes from the store. */
int session_hub_step(struct session_hub *h, const char *task_id, const char *action,
                     int wait_seconds, const struct session_waiter *waiter, int *step,
                     bool *parked) __attribute__((warn_unused_result));
/* session_hub_close: the client closes the session (cancelled, with a log line, its run
 * stopped): queue_cancel's contract. */
int session_hub_close(struct session_hub *h, const char *task_id)
    __attribute__((warn_unused_result));

/* The runner side: while a session runs here, wake_fd (an eventfd) is written whenever
 * a step for it may have arrived. */
void session_hub_attach(struct session_hub *h, const char *task_id, int wake_fd);
void session_hub_detach(struct session_hub *h, const char *task_id);
/* session_hub_take_action: a step after `after` sent through this server, handed over
 * without a database read (*action malloc'd, the caller frees); false when none. */
bool session_hub_take_action(struct session_hub *h, const char *task_id, int after, int *step,
                             char **action);
/* An answer to step was stored (answer: {"observation","done","reward","results"}, or NULL
 * when the session ended): this server's waits are answered or re-checked (other servers
 * hear of it from the store's notification). */
void session_hub_answered(struct session_hub *h, const char *task_id, int step, json_t *answer);
/* From the store's listener: payload "a:<task id>" (a step was sent) or "o:<task id>" (an
 * answer was stored); NULL after a reconnection (re-check everything). */
void session_hub_on_notify(void *hub, const char *payload);

#endif
