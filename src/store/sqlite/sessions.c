/* store/sqlite/sessions: interactive sessions (step in flight, last answer). */
#include "store/sqlite/sqlite_int.h"
#include "core/err.h"
#include "core/log.h"

#include <stdint.h>
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

static const struct sq_query session_q[S_N] = {
    [S_READY] = {"marking a session ready",
                 "INSERT INTO sessions (task_id, state, task_description, instructions, "
                 "actions, max_steps, last_activity_at) VALUES (?1, 'ready', ?2, ?3, ?4, ?5, "
                 "?6) ON CONFLICT (task_id) DO UPDATE SET state = 'ready', task_description "
                 "= ?2, instructions = ?3, actions = ?4, max_steps = ?5, step = 0, answered "
                 "= 0, action = NULL, observation = NULL, done = 0, reward = NULL, results = "
                 "NULL, last_activity_at = ?6"},
    [S_GET] = {"reading a session",
               "SELECT state, task_description, instructions, actions, max_steps, step, "
               "answered, action, observation, done, reward, results, last_activity_at FROM "
               "sessions WHERE task_id = ?1"},
    [S_STEP] = {"taking a step",
                "UPDATE sessions SET step = step + 1, action = ?2, last_activity_at = ?3 "
                "WHERE task_id = ?1 AND state = 'ready' AND step = answered AND step < "
                "max_steps AND EXISTS (SELECT 1 FROM tasks WHERE id = ?1 AND status = "
                "'running') RETURNING step"},
    [S_NEXT] = {"reading the next action",
                "SELECT step, action FROM sessions WHERE task_id = ?1 AND step > ?2 AND step > "
                "answered"},
    [S_ANSWER] = {"storing an observation",
                  "UPDATE sessions SET answered = ?2, observation = ?3, done = ?4, reward = ?5, "
                  "results = ?6, state = CASE WHEN ?4 THEN 'done' ELSE state END, "
                  "last_activity_at = ?7 WHERE task_id = ?1 AND step = ?2"},
    [S_END] = {"ending a session", "UPDATE sessions SET state = 'done' WHERE task_id = ?1"},
    [S_IDLE] = {"finding idle sessions",
                "SELECT s.task_id FROM sessions s JOIN tasks t ON t.id = s.task_id WHERE "
                "t.status = 'running' AND s.state <> 'done' AND s.last_activity_at < ?2 "
                "LIMIT ?3"},
};

static int ready_row(struct conn *c, const char *task_id, json_t *ready, int max_steps,
                     int64_t now)
{
    char *actions = json_dumps(json_object_get(ready, "actions"), JSON_COMPACT);
    struct sq_cursor cur;
    int rc = sq_open_q(&cur, c, &session_q[S_READY]);

    if (rc == 0) {
        sq_bind_text(cur.s, 1, task_id);
        sq_bind_text(cur.s, 2, json_string_value(json_object_get(ready, "task_description")));
        sq_bind_text(cur.s, 3, json_string_value(json_object_get(ready, "instructions")));
        sq_bind_text(cur.s, 4, actions ? actions : "{}");
        sqlite3_bind_int64(cur.s, 5, max_steps);
        sqlite3_bind_int64(cur.s, 6, now);
        rc = sq_exec(&cur);
    }
    free(actions);
    return sq_end(&cur, rc);
}

int sq_session_ready(struct store *st, const char *task_id, json_t *ready, int max_steps,
                     int64_t now)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = sq_writer_begin(ss);

    if (!c)
        return ERR_STORE;
    return sq_writer_end(ss, ready_row(c, task_id, ready, max_steps, now));
}

int sq_session_get(struct store *st, const char *task_id, json_t **out)
{
    return sq_read_one(st, &session_q[S_GET], &SQ_T(task_id), 1, rows_session, out);
}

int sq_session_step(struct store *st, const char *task_id, const char *action, int64_t now,
                    int *step)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = sq_writer_begin(ss);
    struct sq_cursor cur;
    int n = 0, rc;

    if (!c)
        return ERR_STORE;
    rc = sq_open_q(&cur, c, &session_q[S_STEP]);
    if (rc == 0) {
        sq_bind_text(cur.s, 1, task_id);
        sq_bind_text(cur.s, 2, action);
        sqlite3_bind_int64(cur.s, 3, now);
        rc = rows_one(&cur.base);
    }
    if (rc == 0) {
        n = sqlite3_column_int(cur.s, 0);
        rc = sq_exec(&cur);
    }
    rc = sq_end(&cur, rc == ERR_NOTFOUND ? ERR_CONFLICT : rc);
    if (rc == 0)
        *step = n;
    return sq_writer_end(ss, rc);
}

int sq_session_next(struct store *st, const char *task_id, int after, int *step,
                    char **action)
{
    struct rd r = sq_rd_get(st);
    struct sq_cursor cur;
    int rc = sq_open_q(&cur, r.c, &session_q[S_NEXT]);

    *step = 0;
    *action = NULL;
    if (rc == 0) {
        sq_bind_text(cur.s, 1, task_id);
        sqlite3_bind_int(cur.s, 2, after);
        rc = rows_one(&cur.base);
    }
    if (rc == 0) {
        const char *text = (const char *)sqlite3_column_text(cur.s, 1);
        *action = strdup(text ? text : "");
        *step = *action ? sqlite3_column_int(cur.s, 0) : 0;
        rc = *action ? 0 : ERR_NOMEM;
    }
    rc = sq_end(&cur, rc == ERR_NOTFOUND ? 0 : rc); /* no step in flight */
    sq_rd_put(&r);
    return rc;
}

static int answer_row(struct conn *c, const char *task_id, int step, json_t *answer,
                      int64_t now)
{
    json_t *reward = json_object_get(answer, "reward"), *res = json_object_get(answer, "results");
    char *results = res && !json_is_null(res) ? json_dumps(res, JSON_COMPACT) : NULL;
    struct sq_cursor cur;
    int rc = sq_open_q(&cur, c, &session_q[S_ANSWER]);

    if (rc == 0) {
        sq_bind_text(cur.s, 1, task_id);
        sqlite3_bind_int64(cur.s, 2, step);
        sq_bind_text(cur.s, 3, json_string_value(json_object_get(answer, "observation")));
        sqlite3_bind_int64(cur.s, 4, json_is_true(json_object_get(answer, "done")));
        if (json_is_number(reward))
            sqlite3_bind_double(cur.s, 5, json_number_value(reward));
        sq_bind_text(cur.s, 6, results);
        sqlite3_bind_int64(cur.s, 7, now);
        rc = sq_exec(&cur);
    }
    free(results);
    return sq_end(&cur, rc);
}

int sq_session_answer(struct store *st, const char *task_id, int step, json_t *answer,
                      const struct msg_entry *msgs, size_t n_msgs, int64_t now)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = sq_writer_begin(ss);
    int rc = 0;

    if (!c)
        return ERR_STORE;
    rc = sq_insert_messages(c, task_id, msgs, n_msgs);
    if (rc == 0)
        rc = answer_row(c, task_id, step, answer, now);
    return sq_writer_end(ss, rc);
}

int sq_session_end(struct store *st, const char *task_id)
{
    return sq_write(st, &session_q[S_END], &SQ_T(task_id), 1, NULL);
}

int sq_session_idle(struct store *st, int64_t before, char (*ids)[37], size_t max, size_t *n)
{
    struct rd r = sq_rd_get(st);
    struct sq_cursor cur;
    size_t k = 0;
    int rc = sq_open_q(&cur, r.c, &session_q[S_IDLE]);

    if (rc == 0) {
        sqlite3_bind_int64(cur.s, 2, before);
        sqlite3_bind_int64(cur.s, 3, (int64_t)max);
    }
    while (rc == 0 && k < max && (rc = sq_next(&cur)) == STORE_ROW) {
        snprintf(ids[k++], 37, "%s", (const char *)sqlite3_column_text(cur.s, 0));
        rc = 0;
    }
    rc = sq_end(&cur, rc);
    sq_rd_put(&r);
    *n = rc == 0 ? k : 0;
    return rc;
}
