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
 * idempotent). */
#ifndef TASKEXEC_SESSION_H
#define TASKEXEC_SESSION_H

#include <jansson.h>
#include <stdbool.h>

struct server;
struct request;
struct session_hub;

int session_hub_start(struct server *srv, struct session_hub **out)
    __attribute__((warn_unused_result));
/* session_hub_close_waits: answers every parked step with 503 (before HTTP stops). */
void session_hub_close_waits(struct session_hub *h);
/* session_hub_stop: stops the thread and frees; NULL-safe. */
void session_hub_stop(struct session_hub *h);

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

int api_session_create(struct request *req);
int api_session_get(struct request *req);
int api_session_step(struct request *req);
int api_session_close(struct request *req);

#endif
