/* store/pg/sessions: interactive sessions (step in flight, last answer), with
 * notifications to every server's listener. */
#include "store/pg/pg_int.h"
#include "core/err.h"
#include "core/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
    S_READY,
    S_GET,
    S_STEP,
    S_NEXT,
    S_ANSWER,
    S_END,
    S_IDLE,
    S_N
};

static const struct pg_query session_q[S_N] = {
    [S_READY] = {"marking a session ready",
                 "INSERT INTO sessions (task_id, state, task_description, instructions, "
                 "actions, max_steps, last_activity_at) VALUES ($1, 'ready', $2, $3, $4::jsonb, "
                 "$5, $6) ON CONFLICT (task_id) DO UPDATE SET state = 'ready', "
                 "task_description = $2, instructions = $3, actions = $4::jsonb, max_steps = "
                 "$5, step = 0, answered = 0, action = NULL, observation = NULL, done = false, "
                 "reward = NULL, results = NULL, last_activity_at = $6"},
    [S_GET] = {"reading a session",
               "SELECT state, task_description, instructions, actions::text, max_steps, step, "
               "answered, action, observation, done, reward, results::text, last_activity_at "
               "FROM sessions WHERE task_id = $1"},
    [S_STEP] = {"taking a step",
                "WITH s AS (UPDATE sessions SET step = step + 1, action = $2, "
                "last_activity_at = $3 WHERE task_id = $1 AND state = 'ready' AND step = "
                "answered AND step < max_steps AND EXISTS (SELECT 1 FROM tasks WHERE id = $1 "
                "AND status = 'running') RETURNING step) SELECT step, "
                "pg_notify('taskexec_session', 'a:' || $1::text) FROM s"},
    [S_NEXT] = {"reading the next action",
                "SELECT step, action FROM sessions WHERE task_id = $1 AND step > $2 AND step > "
                "answered"},
    [S_ANSWER] = {"storing an observation",
                  "WITH u AS (UPDATE sessions SET answered = $2, observation = $3, done = $4, "
                  "reward = $5, results = $6::jsonb, state = CASE WHEN $4 THEN 'done' ELSE "
                  "state END, last_activity_at = $7 WHERE task_id = $1 AND step = $2 RETURNING "
                  "1) SELECT pg_notify('taskexec_session', 'o:' || $1::text) FROM u"},
    [S_END] = {"ending a session",
               "WITH u AS (UPDATE sessions SET state = 'done' WHERE task_id = $1 RETURNING 1) "
               "SELECT pg_notify('taskexec_session', 'o:' || $1::text) FROM u"},
    [S_IDLE] = {"finding idle sessions",
                "SELECT s.task_id FROM sessions s JOIN tasks t ON t.id = s.task_id WHERE "
                "t.status = 'running' AND s.state <> 'done' AND s.last_activity_at < $1 LIMIT "
                "$2"},
};

int pg_session_ready(struct store *st, const char *task_id, json_t *ready, int max_steps,
                     int64_t now)
{
    json_t *actions = json_object_get(ready, "actions");
    char *text = actions ? json_dumps(actions, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    struct num ms, ts;
    const char *v[6] = {task_id, json_string_value(json_object_get(ready, "task_description")),
                        json_string_value(json_object_get(ready, "instructions")),
                        text ? text : "{}", num(&ms, max_steps), num(&ts, now)};
    int rc = pg_write(st, &session_q[S_READY], 6, v, NULL);

    free(text);
    return rc;
}

int pg_session_get(struct store *st, const char *task_id, json_t **out)
{
    const char *v[1] = {task_id};

    return pg_read_one(st, &session_q[S_GET], 1, v, rows_session, out);
}

/* The context of step's body. */
struct step {
    const char *const *v;
    int *step;
};

/* Committed without waiting for the disk: the step becomes durable with its answer's
 * commit (WAL is flushed in order), and a step lost to a database crash before that is
 * one the environment never saw — the trainer's request fails and it sends it again.
 * This saves a flush on every step. The notification goes out with the commit. A step
 * refused (ERR_CONFLICT) changed nothing, so its rollback is harmless. */
static int step(struct pgconn *pc, void *ctx)
{
    struct step *x = ctx;
    int rc;

    PQclear(pg_run_sql(pc, "SET LOCAL synchronous_commit = off", 0, NULL, &rc));
    if (rc == 0)
        rc = pg_take(pc, &session_q[S_STEP], 3, x->v, rows_take_int_drain, x->step);
    return rc == ERR_NOTFOUND ? ERR_CONFLICT : rc;
}

int pg_session_step(struct store *st, const char *task_id, const char *action, int64_t now,
                    int *step_out)
{
    struct num ts;
    const char *v[3] = {task_id, action, num(&ts, now)};
    int n = 0;
    struct step x = {v, &n};
    int rc = pg_in_tx(st, step, &x);

    if (rc == 0)
        *step_out = n;
    return rc;
}

int pg_session_next(struct store *st, const char *task_id, int after, int *step,
                    char **action)
{
    struct num a;
    const char *v[2] = {task_id, num(&a, after)};
    struct rows_action x = {0, NULL};
    int rc = pg_read_with(st, &session_q[S_NEXT], 2, v, rows_take_action, &x);

    *step = x.step;
    *action = x.action;
    return rc;
}

/* The context of answer's body. */
struct answer {
    const char *task_id;
    int step;
    json_t *answer;
    const struct msg_entry *msgs;
    size_t n_msgs;
    int64_t now;
};

/* The answer's row update (and its notification), inside the caller's transaction. */
static int answer_row(struct pgconn *pc, const struct answer *x)
{
    json_t *reward = json_object_get(x->answer, "reward");
    json_t *res = json_object_get(x->answer, "results");
    char rw[40];
    char *results = res && !json_is_null(res) ? json_dumps(res, JSON_COMPACT | JSON_ENCODE_ANY)
                                              : NULL;
    struct num sp, ts;
    const char *v[7] = {x->task_id, num(&sp, x->step),
                        json_string_value(json_object_get(x->answer, "observation")),
                        json_is_true(json_object_get(x->answer, "done")) ? "true" : "false",
                        json_is_number(reward) ? rw : NULL, results, num(&ts, x->now)};
    int rc;

    snprintf(rw, sizeof(rw), "%.17g", json_number_value(reward));
    PQclear(pg_run(pc, &session_q[S_ANSWER], 7, v, &rc));
    free(results);
    return rc;
}

/* The messages, then the answer's row. */
static int answer(struct pgconn *pc, void *ctx)
{
    struct answer *x = ctx;
    int rc = pg_insert_messages(pc, x->task_id, x->msgs, x->n_msgs);

    return rc == 0 ? answer_row(pc, x) : rc;
}

int pg_session_answer(struct store *st, const char *task_id, int step, json_t *answer_v,
                      const struct msg_entry *msgs, size_t n_msgs, int64_t now)
{
    struct answer x = {task_id, step, answer_v, msgs, n_msgs, now};

    return pg_in_tx(st, answer, &x);
}

int pg_session_end(struct store *st, const char *task_id)
{
    const char *v[1] = {task_id};

    return pg_write(st, &session_q[S_END], 1, v, NULL);
}

int pg_session_idle(struct store *st, int64_t before, char (*ids)[37], size_t max, size_t *n)
{
    struct num b, m;
    const char *v[2] = {num(&b, before), num(&m, (int64_t)max)};
    struct rows_ids x = {ids, max, 0};
    int rc = pg_read_with(st, &session_q[S_IDLE], 2, v, rows_take_ids, &x);

    *n = x.n;
    return rc;
}
