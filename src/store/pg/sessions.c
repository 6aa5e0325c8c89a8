/* store/pg/sessions: interactive sessions (step in flight, last answer), with
 * notifications to every server's listener. */
#include "store/pg/pg_int.h"
#include "core/err.h"
#include "core/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int pg_session_ready(struct store *st, const char *task_id, json_t *ready, int max_steps,
                     int64_t now)
{
    char *actions = json_dumps(json_object_get(ready, "actions") ? json_object_get(ready, "actions")
                                                                 : json_object(),
                               JSON_COMPACT | JSON_ENCODE_ANY);
    char ms[16], ts[24];
    const char *v[6] = {task_id, json_string_value(json_object_get(ready, "task_description")),
                        json_string_value(json_object_get(ready, "instructions")),
                        actions ? actions : "{}", ms, ts};
    int rc;

    snprintf(ms, sizeof(ms), "%d", max_steps);
    snprintf(ts, sizeof(ts), "%lld", (long long)now);
    rc = pg_exec_params(st, "INSERT INTO sessions (task_id, state, task_description, "
                            "instructions, actions, max_steps, last_activity_at) VALUES ($1, "
                            "'ready', $2, $3, $4::jsonb, $5, $6) ON CONFLICT (task_id) DO UPDATE "
                            "SET state = 'ready', task_description = $2, instructions = $3, "
                            "actions = $4::jsonb, max_steps = $5, step = 0, answered = 0, action "
                            "= NULL, observation = NULL, done = false, reward = NULL, results = "
                            "NULL, last_activity_at = $6", 6, v, NULL);
    free(actions);
    return rc;
}

int pg_session_get(struct store *st, const char *task_id, json_t **out)
{
    struct pgconn *pc = pg_conn_get(P(st));
    const char *v[1] = {task_id};
    int rc;
    PGresult *r = pg_run_sql(pc, "SELECT state, task_description, instructions, actions::text, "
                              "max_steps, step, answered, action, observation, done, reward, "
                              "results::text, last_activity_at FROM sessions WHERE task_id = $1",
                          1, v, &rc);

    if (r && rc == 0 && PQntuples(r) == 0)
        rc = ERR_NOTFOUND;
    if (r && rc == 0) {
        json_t *reward = PQgetisnull(r, 0, 10) ? json_null()
                                               : json_real(strtod(PQgetvalue(r, 0, 10), NULL));
        *out = json_pack("{s:o, s:o, s:o, s:o, s:I, s:I, s:I, s:o, s:o, s:b, s:o, s:o, s:I}",
                         "state", pg_get_str(r, 0, 0), "task_description", pg_get_str(r, 0, 1),
                         "instructions", pg_get_str(r, 0, 2), "actions", pg_get_json_or_null(r, 0, 3),
                         "max_steps", (json_int_t)pg_get_i64(r, 0, 4), "step",
                         (json_int_t)pg_get_i64(r, 0, 5), "answered", (json_int_t)pg_get_i64(r, 0, 6),
                         "action", pg_get_str(r, 0, 7), "observation", pg_get_str(r, 0, 8), "done",
                         PQgetvalue(r, 0, 9)[0] == 't', "reward", reward, "results",
                         pg_get_json_or_null(r, 0, 11), "last_activity_us",
                         (json_int_t)pg_get_i64(r, 0, 12));
        rc = *out ? 0 : ERR_NOMEM;
    }
    PQclear(r);
    pg_conn_put(P(st), pc);
    return rc;
}

int pg_session_step(struct store *st, const char *task_id, const char *action, int64_t now,
                    int *step)
{
    struct pgconn *pc = pg_conn_get(P(st));
    char ts[24];
    const char *v[3] = {task_id, action, ts};
    int rc;
    PGresult *r;

    snprintf(ts, sizeof(ts), "%lld", (long long)now);
    /* Committed without waiting for the disk: the step becomes durable with its answer's
     * commit (WAL is flushed in order), and a step lost to a database crash before that
     * is one the environment never saw — the trainer's request fails and it sends it
     * again. This saves a flush on every step. The notification goes out with the
     * commit. */
    PQclear(pg_run_sql(pc, "BEGIN", 0, NULL, &rc));
    if (rc == 0)
        PQclear(pg_run_sql(pc, "SET LOCAL synchronous_commit = off", 0, NULL, &rc));
    r = rc < 0 ? NULL : pg_run_sql(pc, "WITH s AS (UPDATE sessions SET step = step + 1, action = $2, "
                    "last_activity_at = $3 WHERE task_id = $1 AND state = 'ready' AND step = "
                    "answered AND step < max_steps AND EXISTS (SELECT 1 FROM tasks WHERE id = "
                    "$1 AND status = 'running') RETURNING step) SELECT step, "
                    "pg_notify('taskexec_session', 'a:' || $1::text) FROM s", 3, v, &rc);
    if (r && rc == 0) {
        if (PQntuples(r) == 0)
            rc = ERR_CONFLICT;
        else
            *step = (int)pg_get_i64(r, 0, 0);
    }
    PQclear(r);
    {
        int rc2;
        PQclear(pg_run_sql(pc, rc == 0 || rc == ERR_CONFLICT ? "COMMIT" : "ROLLBACK", 0, NULL,
                        &rc2));
        if (rc == 0 && rc2 < 0)
            rc = rc2;
    }
    pg_conn_put(P(st), pc);
    return rc;
}

int pg_session_next(struct store *st, const char *task_id, int after, int *step,
                    char **action)
{
    struct pgconn *pc = pg_conn_get(P(st));
    char a[16];
    const char *v[2] = {task_id, a};
    int rc;
    PGresult *r;

    *step = 0;
    *action = NULL;
    snprintf(a, sizeof(a), "%d", after);
    r = pg_run_sql(pc, "SELECT step, action FROM sessions WHERE task_id = $1 AND step > $2 AND "
                    "step > answered", 2, v, &rc);
    if (r && rc == 0 && PQntuples(r) > 0) {
        *action = strdup(PQgetvalue(r, 0, 1));
        *step = *action ? (int)pg_get_i64(r, 0, 0) : 0;
        rc = *action ? 0 : ERR_NOMEM;
    }
    PQclear(r);
    pg_conn_put(P(st), pc);
    return rc;
}

int pg_session_answer(struct store *st, const char *task_id, int step, json_t *answer,
                      const struct msg_entry *msgs, size_t n_msgs, int64_t now)
{
    json_t *reward = json_object_get(answer, "reward"), *res = json_object_get(answer, "results");
    char sp[16], rw[40], ts[24];
    char *results = res && !json_is_null(res) ? json_dumps(res, JSON_COMPACT | JSON_ENCODE_ANY)
                                              : NULL;
    const char *v[7] = {task_id, sp, json_string_value(json_object_get(answer, "observation")),
                        json_is_true(json_object_get(answer, "done")) ? "true" : "false",
                        json_is_number(reward) ? rw : NULL, results, ts};
    struct pgconn *pc = pg_conn_get(P(st));
    int rc = 0, rc2;

    snprintf(sp, sizeof(sp), "%d", step);
    snprintf(rw, sizeof(rw), "%.17g", json_number_value(reward));
    snprintf(ts, sizeof(ts), "%lld", (long long)now);
    PQclear(pg_run_sql(pc, "BEGIN", 0, NULL, &rc));
    pg_insert_messages(pc, task_id, msgs, n_msgs, &rc);
    if (rc == 0)
        PQclear(pg_run_sql(pc, "WITH u AS (UPDATE sessions SET answered = $2, observation = $3, "
                            "done = $4, reward = $5, results = $6::jsonb, state = CASE WHEN $4 "
                            "THEN 'done' ELSE state END, last_activity_at = $7 WHERE task_id = "
                            "$1 AND step = $2 RETURNING 1) SELECT pg_notify('taskexec_session', "
                            "'o:' || $1::text) FROM u", 7, v, &rc));
    PQclear(pg_run_sql(pc, rc == 0 ? "COMMIT" : "ROLLBACK", 0, NULL, &rc2));
    if (rc == 0)
        rc = rc2;
    pg_conn_put(P(st), pc);
    free(results);
    return rc;
}

int pg_session_end(struct store *st, const char *task_id)
{
    const char *v[1] = {task_id};

    return pg_exec_params(st, "WITH u AS (UPDATE sessions SET state = 'done' WHERE task_id = "
                              "$1 RETURNING 1) SELECT pg_notify('taskexec_session', 'o:' || "
                              "$1::text) FROM u", 1, v, NULL);
}

int pg_session_idle(struct store *st, int64_t before, char (*ids)[37], size_t max,
                    size_t *n)
{
    struct pgconn *pc = pg_conn_get(P(st));
    char b[24], m[24];
    const char *v[2] = {b, m};
    int rc;
    PGresult *r;

    *n = 0;
    snprintf(b, sizeof(b), "%lld", (long long)before);
    snprintf(m, sizeof(m), "%zu", max);
    r = pg_run_sql(pc, "SELECT s.task_id FROM sessions s JOIN tasks t ON t.id = s.task_id WHERE "
                    "t.status = 'running' AND s.state <> 'done' AND s.last_activity_at < $1 "
                    "LIMIT $2", 2, v, &rc);
    for (int i = 0; r && rc == 0 && i < PQntuples(r) && *n < max; i++)
        snprintf(ids[(*n)++], 37, "%s", PQgetvalue(r, i, 0));
    PQclear(r);
    pg_conn_put(P(st), pc);
    return rc;
}
