/* store/sqlite/sessions: interactive sessions (step in flight, last answer). */
#include "store/sqlite/sqlite_int.h"
#include "core/err.h"
#include "core/log.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- interactive sessions ---- */

static int sq_write1(struct store *st, const char *what, const char *sql,
                     void (*bind)(sqlite3_stmt *s, void *ud), void *ud, int *changes)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = sq_writer_begin(ss);
    sqlite3_stmt *s = NULL;
    int rc = 0;

    if (!c)
        return ERR_STORE;
    if (sqlite3_prepare_v2(c->db, sql, -1, &s, NULL) != SQLITE_OK)
        return sq_writer_end(ss, sq_fail_db(c->db, what));
    bind(s, ud);
    if (sqlite3_step(s) != SQLITE_DONE)
        rc = sq_fail_db(c->db, what);
    if (changes)
        *changes = sqlite3_changes(c->db);
    sqlite3_finalize(s);
    return sq_writer_end(ss, rc);
}

struct sess_args {
    const char *task_id, *text1, *text2, *text3;
    json_t *json1;
    int64_t i1, i2, now;
    double real;
    bool has_real;
};

static void bind_ready(sqlite3_stmt *s, void *ud)
{
    struct sess_args *a = ud;
    char *actions = json_dumps(a->json1, JSON_COMPACT);

    sq_bind_text(s, 1, a->task_id);
    sq_bind_text(s, 2, a->text1);
    sq_bind_text(s, 3, a->text2);
    sqlite3_bind_text(s, 4, actions ? actions : "{}", -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 5, a->i1);
    sqlite3_bind_int64(s, 6, a->now);
    free(actions);
}

int sq_session_ready(struct store *st, const char *task_id, json_t *ready, int max_steps,
                     int64_t now)
{
    struct sess_args a = {.task_id = task_id,
                          .text1 = json_string_value(json_object_get(ready, "task_description")),
                          .text2 = json_string_value(json_object_get(ready, "instructions")),
                          .json1 = json_object_get(ready, "actions"), .i1 = max_steps, .now = now};

    return sq_write1(st, "marking a session ready",
                     "INSERT INTO sessions (task_id, state, task_description, instructions, "
                     "actions, max_steps, last_activity_at) VALUES (?1, 'ready', ?2, ?3, ?4, ?5, "
                     "?6) ON CONFLICT (task_id) DO UPDATE SET state = 'ready', task_description "
                     "= ?2, instructions = ?3, actions = ?4, max_steps = ?5, step = 0, answered "
                     "= 0, action = NULL, observation = NULL, done = 0, reward = NULL, results = "
                     "NULL, last_activity_at = ?6", bind_ready, &a, NULL);
}

int sq_session_get(struct store *st, const char *task_id, json_t **out)
{
    struct rd r = sq_rd_get(st);
    sqlite3_stmt *s = NULL;
    int rc = 0;

    if (sqlite3_prepare_v2(r.c->db, "SELECT state, task_description, instructions, actions, "
                                    "max_steps, step, answered, action, observation, done, "
                                    "reward, results, last_activity_at FROM sessions WHERE "
                                    "task_id = ?1", -1, &s, NULL) != SQLITE_OK) {
        rc = sq_fail_db(r.c->db, "reading a session");
    } else {
        sq_bind_text(s, 1, task_id);
        if (sqlite3_step(s) != SQLITE_ROW) {
            rc = ERR_NOTFOUND;
        } else {
            json_t *reward = sqlite3_column_type(s, 10) == SQLITE_NULL
                                 ? json_null()
                                 : json_real(sqlite3_column_double(s, 10));
            *out = json_pack("{s:o, s:o, s:o, s:o, s:I, s:I, s:I, s:o, s:o, s:b, s:o, s:o, s:I}",
                             "state", sq_col_str(s, 0), "task_description", sq_col_str(s, 1),
                             "instructions", sq_col_str(s, 2), "actions", sq_col_json_or_null(s, 3),
                             "max_steps", (json_int_t)sqlite3_column_int64(s, 4), "step",
                             (json_int_t)sqlite3_column_int64(s, 5), "answered",
                             (json_int_t)sqlite3_column_int64(s, 6), "action", sq_col_str(s, 7),
                             "observation", sq_col_str(s, 8), "done", sqlite3_column_int(s, 9),
                             "reward", reward, "results", sq_col_json_or_null(s, 11),
                             "last_activity_us", (json_int_t)sqlite3_column_int64(s, 12));
            rc = *out ? 0 : ERR_NOMEM;
        }
    }
    sqlite3_finalize(s);
    sq_rd_put(&r);
    return rc;
}

int sq_session_step(struct store *st, const char *task_id, const char *action, int64_t now,
                    int *step)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = sq_writer_begin(ss);
    sqlite3_stmt *s = NULL;
    int rc = ERR_CONFLICT;

    if (!c)
        return ERR_STORE;
    if (sqlite3_prepare_v2(c->db, "UPDATE sessions SET step = step + 1, action = ?2, "
                                  "last_activity_at = ?3 WHERE task_id = ?1 AND state = 'ready' "
                                  "AND step = answered AND step < max_steps AND EXISTS (SELECT "
                                  "1 FROM tasks WHERE id = ?1 AND status = 'running') "
                                  "RETURNING step",
                           -1, &s, NULL) != SQLITE_OK)
        return sq_writer_end(ss, sq_fail_db(c->db, "taking a step"));
    sq_bind_text(s, 1, task_id);
    sq_bind_text(s, 2, action);
    sqlite3_bind_int64(s, 3, now);
    switch (sqlite3_step(s)) {
    case SQLITE_ROW:
        *step = sqlite3_column_int(s, 0);
        rc = sqlite3_step(s) == SQLITE_DONE ? 0 : sq_fail_db(c->db, "taking a step");
        break;
    case SQLITE_DONE:
        break;
    default:
        rc = sq_fail_db(c->db, "taking a step");
    }
    sqlite3_finalize(s);
    return sq_writer_end(ss, rc);
}

int sq_session_next(struct store *st, const char *task_id, int after, int *step,
                    char **action)
{
    struct rd r = sq_rd_get(st);
    sqlite3_stmt *s = NULL;
    int rc = 0;

    *step = 0;
    *action = NULL;
    if (sqlite3_prepare_v2(r.c->db, "SELECT step, action FROM sessions WHERE task_id = ?1 AND "
                                    "step > ?2 AND step > answered", -1, &s,
                           NULL) != SQLITE_OK) {
        rc = sq_fail_db(r.c->db, "reading the next action");
    } else {
        sq_bind_text(s, 1, task_id);
        sqlite3_bind_int(s, 2, after);
        if (sqlite3_step(s) == SQLITE_ROW) {
            const char *text = (const char *)sqlite3_column_text(s, 1);
            *action = strdup(text ? text : "");
            *step = *action ? sqlite3_column_int(s, 0) : 0;
            rc = *action ? 0 : ERR_NOMEM;
        }
    }
    sqlite3_finalize(s);
    sq_rd_put(&r);
    return rc;
}

static void bind_answer(sqlite3_stmt *s, void *ud)
{
    struct sess_args *a = ud;
    char *results = a->json1 && !json_is_null(a->json1) ? json_dumps(a->json1, JSON_COMPACT)
                                                         : NULL;

    sq_bind_text(s, 1, a->task_id);
    sqlite3_bind_int64(s, 2, a->i1);
    sq_bind_text(s, 3, a->text1);
    sqlite3_bind_int64(s, 4, a->i2);
    if (a->has_real)
        sqlite3_bind_double(s, 5, a->real);
    else
        sqlite3_bind_null(s, 5);
    if (results)
        sqlite3_bind_text(s, 6, results, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(s, 6);
    sqlite3_bind_int64(s, 7, a->now);
    free(results);
}

int sq_session_answer(struct store *st, const char *task_id, int step, json_t *answer,
                      const struct msg_entry *msgs, size_t n_msgs, int64_t now)
{
    struct sqlite_store *ss = S(st);
    json_t *reward = json_object_get(answer, "reward");
    struct sess_args a = {.task_id = task_id, .i1 = step,
                          .text1 = json_string_value(json_object_get(answer, "observation")),
                          .i2 = json_is_true(json_object_get(answer, "done")),
                          .has_real = json_is_number(reward), .real = json_number_value(reward),
                          .json1 = json_object_get(answer, "results"), .now = now};
    struct conn *c = sq_writer_begin(ss);
    sqlite3_stmt *s = NULL;
    int rc = 0;

    if (!c)
        return ERR_STORE;
    for (size_t i = 0; rc == 0 && i < n_msgs; i++)
        rc = sq_insert_message(c, task_id, &msgs[i]);
    if (rc == 0 &&
        sqlite3_prepare_v2(c->db, "UPDATE sessions SET answered = ?2, observation = ?3, done = "
                                  "?4, reward = ?5, results = ?6, state = CASE WHEN ?4 THEN "
                                  "'done' ELSE state END, last_activity_at = ?7 WHERE task_id = "
                                  "?1 AND step = ?2", -1, &s, NULL) != SQLITE_OK)
        rc = sq_fail_db(c->db, "storing an observation");
    if (rc == 0) {
        bind_answer(s, &a);
        if (sqlite3_step(s) != SQLITE_DONE)
            rc = sq_fail_db(c->db, "storing an observation");
    }
    sqlite3_finalize(s);
    return sq_writer_end(ss, rc);
}

static void bind_id(sqlite3_stmt *s, void *ud)
{
    sq_bind_text(s, 1, ud);
}

int sq_session_end(struct store *st, const char *task_id)
{
    return sq_write1(st, "ending a session", "UPDATE sessions SET state = 'done' WHERE task_id "
                                             "= ?1", bind_id, (void *)(uintptr_t)task_id, NULL);
}

int sq_session_idle(struct store *st, int64_t before, char (*ids)[37], size_t max,
                    size_t *n)
{
    struct rd r = sq_rd_get(st);
    sqlite3_stmt *s = NULL;
    int rc = 0;

    *n = 0;
    if (sqlite3_prepare_v2(r.c->db, "SELECT s.task_id FROM sessions s JOIN tasks t ON t.id = "
                                    "s.task_id WHERE t.status = 'running' AND s.state <> 'done' "
                                    "AND s.last_activity_at < ?1 LIMIT ?2", -1, &s,
                           NULL) != SQLITE_OK) {
        rc = sq_fail_db(r.c->db, "finding idle sessions");
    } else {
        sqlite3_bind_int64(s, 1, before);
        sqlite3_bind_int64(s, 2, (int64_t)max);
        while (*n < max && sqlite3_step(s) == SQLITE_ROW)
            snprintf(ids[(*n)++], 37, "%s", (const char *)sqlite3_column_text(s, 0));
    }
    sqlite3_finalize(s);
    sq_rd_put(&r);
    return rc;
}
