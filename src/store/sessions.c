/* store/sessions: interactive sessions (step in flight, last answer), written once for
 * both backends (store/db.h). PostgreSQL's statements also notify every server's
 * listener (pg_notify) of a step or an answer; SQLite's need not (one process). */
#include "store/db.h"
#include "core/err.h"

enum { S_READY, S_GET, S_STEP, S_NEXT, S_ANSWER, S_END, S_IDLE, S_N };

static const struct db_stmt session_q[S_N] = {
    [S_READY] = {"marking a session ready",
                 "INSERT INTO sessions (task_id, state, task_description, instructions, "
                 "actions, max_steps, last_activity_at) VALUES (?1, 'ready', ?2, ?3, ?4, ?5, "
                 "?6) ON CONFLICT (task_id) DO UPDATE SET state = 'ready', task_description "
                 "= ?2, instructions = ?3, actions = ?4, max_steps = ?5, step = 0, answered "
                 "= 0, action = NULL, observation = NULL, done = 0, reward = NULL, results = "
                 "NULL, last_activity_at = ?6",
                 "INSERT INTO sessions (task_id, state, task_description, instructions, "
                 "actions, max_steps, last_activity_at) VALUES ($1, 'ready', $2, $3, $4::jsonb, "
                 "$5, $6) ON CONFLICT (task_id) DO UPDATE SET state = 'ready', "
                 "task_description = $2, instructions = $3, actions = $4::jsonb, max_steps = "
                 "$5, step = 0, answered = 0, action = NULL, observation = NULL, done = false, "
                 "reward = NULL, results = NULL, last_activity_at = $6"},
    [S_GET] = {"reading a session",
               "SELECT state, task_description, instructions, actions, max_steps, step, "
               "answered, action, observation, done, reward, results, last_activity_at FROM "
               "sessions WHERE task_id = ?1",
               "SELECT state, task_description, instructions, actions::text, max_steps, step, "
               "answered, action, observation, done, reward, results::text, last_activity_at "
               "FROM sessions WHERE task_id = $1"},
    /* PostgreSQL commits a step without waiting for the disk: the step becomes durable
     * with its answer's commit (WAL is flushed in order), and a step lost to a database
     * crash before that is one the environment never saw — the trainer's request fails
     * and it sends it again. This saves a flush on every step. set_config(..., true) in
     * the statement itself sets it for the statement's own transaction (checked at its
     * commit), so the step is one round trip, not BEGIN, SET LOCAL, UPDATE and COMMIT. */
    [S_STEP] = {"taking a step",
                "UPDATE sessions SET step = step + 1, action = ?2, last_activity_at = ?3 "
                "WHERE task_id = ?1 AND state = 'ready' AND step = answered AND step < "
                "max_steps AND EXISTS (SELECT 1 FROM tasks WHERE id = ?1 AND status = "
                "'running') RETURNING step",
                "WITH a AS (SELECT set_config('synchronous_commit', 'off', true)), s AS "
                "(UPDATE sessions SET step = step + 1, action = $2, last_activity_at = $3 "
                "WHERE task_id = $1 AND state = 'ready' AND step = answered AND step < "
                "max_steps AND EXISTS (SELECT 1 FROM tasks WHERE id = $1 AND status = "
                "'running') RETURNING step) SELECT s.step, pg_notify('taskexec_session', "
                "'a:' || $1::text) FROM s, a"},
    [S_NEXT] = DB_SQL("reading the next action",
                      "SELECT step, action FROM sessions WHERE task_id = $1 AND step > $2 AND "
                      "step > answered"),
    [S_ANSWER] = {"storing an observation",
                  "UPDATE sessions SET answered = ?2, observation = ?3, done = ?4, reward = ?5, "
                  "results = ?6, state = CASE WHEN ?4 THEN 'done' ELSE state END, "
                  "last_activity_at = ?7 WHERE task_id = ?1 AND step = ?2",
                  "WITH u AS (UPDATE sessions SET answered = $2, observation = $3, done = $4, "
                  "reward = $5, results = $6::jsonb, state = CASE WHEN $4 THEN 'done' ELSE "
                  "state END, last_activity_at = $7 WHERE task_id = $1 AND step = $2 RETURNING "
                  "1) SELECT pg_notify('taskexec_session', 'o:' || $1::text) FROM u"},
    [S_END] = {"ending a session", "UPDATE sessions SET state = 'done' WHERE task_id = ?1",
               "WITH u AS (UPDATE sessions SET state = 'done' WHERE task_id = $1 RETURNING 1) "
               "SELECT pg_notify('taskexec_session', 'o:' || $1::text) FROM u"},
    [S_IDLE] = DB_SQL("finding idle sessions",
                      "SELECT s.task_id FROM sessions s JOIN tasks t ON t.id = s.task_id WHERE "
                      "t.status = 'running' AND s.state <> 'done' AND s.last_activity_at < $1 "
                      "LIMIT $2"),
};

int db_session_ready(struct store *st, const char *task_id, json_t *ready, int max_steps,
                     int64_t now)
{
    json_t *actions = json_object_get(ready, "actions");
    const struct db_arg args[6] = {
        DB_T(task_id), DB_T(json_string_value(json_object_get(ready, "task_description"))),
        DB_T(json_string_value(json_object_get(ready, "instructions"))), DB_O(actions),
        DB_I(max_steps), DB_I(now)};

    return db_write(st, &session_q[S_READY], args, 6, NULL);
}

int db_session_get(struct store *st, const char *task_id, json_t **out)
{
    return db_read_one(st, &session_q[S_GET], &DB_T(task_id), 1, rows_session, out);
}

/* The context of step_body. */
struct step {
    const char *task_id, *action;
    int64_t now;
    int *step;
};

static int step_body(struct db_conn *c, void *ctx)
{
    struct step *x = ctx;
    const struct db_arg args[3] = {DB_T(x->task_id), DB_T(x->action), DB_I(x->now)};
    int rc = db_take(c, &session_q[S_STEP], args, 3, rows_take_int_drain, x->step);

    return rc == ERR_NOTFOUND ? ERR_CONFLICT : rc;
}

int db_session_step(struct store *st, const char *task_id, const char *action, int64_t now,
                    int *step_out)
{
    int n = 0;
    struct step x = {task_id, action, now, &n};
    int rc = db_on_write(st, step_body, &x);

    if (rc == 0)
        *step_out = n;
    return rc;
}

int db_session_next(struct store *st, const char *task_id, int after, int *step,
                    char **action)
{
    struct rows_action a = {0, NULL};
    int rc = db_read_with(st, &session_q[S_NEXT], (struct db_arg[]){DB_T(task_id), DB_I(after)},
                          2, rows_take_action, &a);

    *step = a.step;
    *action = a.action;
    return rc;
}

/* The context of answer_body. */
struct answer {
    const char *task_id;
    int step;
    json_t *answer;
    const struct msg_entry *msgs;
    size_t n_msgs;
    int64_t now;
};

/* The messages, then the answer's row. */
static int answer_body(struct db_conn *c, void *ctx)
{
    struct answer *x = ctx;
    json_t *reward = json_object_get(x->answer, "reward");
    json_t *res = json_object_get(x->answer, "results");
    const struct db_arg args[7] = {
        DB_T(x->task_id), DB_I(x->step),
        DB_T(json_string_value(json_object_get(x->answer, "observation"))),
        DB_I(json_is_true(json_object_get(x->answer, "done"))),
        json_is_number(reward) ? DB_R(json_number_value(reward)) : DB_NULL,
        DB_J(json_is_null(res) ? NULL : res), DB_I(x->now)};
    int rc = x->n_msgs ? db_insert_messages(c, x->task_id, x->msgs, x->n_msgs) : 0;

    return rc == 0 ? db_run(c, &session_q[S_ANSWER], args, 7, NULL) : rc;
}

int db_session_answer(struct store *st, const char *task_id, int step, json_t *answer_v,
                      const struct msg_entry *msgs, size_t n_msgs, int64_t now)
{
    struct answer x = {task_id, step, answer_v, msgs, n_msgs, now};

    /* Without messages the answer is one statement: no transaction around it (on
     * PostgreSQL three round trips fewer). */
    return n_msgs ? db_in_write(st, answer_body, &x) : db_on_write(st, answer_body, &x);
}

int db_session_end(struct store *st, const char *task_id)
{
    return db_write(st, &session_q[S_END], &DB_T(task_id), 1, NULL);
}

int db_session_idle(struct store *st, int64_t before, char (*ids)[37], size_t max, size_t *n)
{
    struct rows_ids x = {ids, max, 0};
    const struct db_arg args[2] = {DB_I(before), DB_I((int64_t)max)};
    int rc = db_read_with(st, &session_q[S_IDLE], args, 2, rows_take_ids, &x);

    *n = x.n;
    return rc;
}
