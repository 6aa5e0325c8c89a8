/* store/pg/queue: claim (FOR UPDATE SKIP LOCKED), finish, reap and recover. */
#include "store/pg/pg_int.h"
#include "core/err.h"
#include "core/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* supported_problems globs as anchored POSIX regexes for "~ ANY". Caller frees. */
static char *glob_array(const char *const *patterns, size_t n)
{
    size_t cap = 16;
    char *out;

    for (size_t i = 0; i < n; i++)
        cap += strlen(patterns[i]) * 2 + 8;
    out = malloc(cap);
    if (!out)
        return NULL;
    strcpy(out, "{");
    for (size_t i = 0; i < n; i++) {
        char *w = out + strlen(out);
        const char *p = patterns[i];

        if (i)
            *w++ = ',';
        *w++ = '"';
        *w++ = '^';
        for (; *p; p++) {
            if (*p == '*') {
                *w++ = '.';
                *w++ = '*';
            } else if (*p == '?') {
                *w++ = '.';
            } else if (*p == '[' || *p == ']') {
                *w++ = *p;
            } else if (*p == '!' && p > patterns[i] && p[-1] == '[') {
                *w++ = '^';
            } else if (*p == '.') {
                /* "\\." inside an array literal is one backslash in the element */
                *w++ = '\\';
                *w++ = '\\';
                *w++ = '.';
            } else {
                *w++ = *p;
            }
        }
        *w++ = '$';
        *w++ = '"';
        *w = '\0';
    }
    strcat(out, "}");
    return out;
}

int pg_task_claim(struct store *st, const struct claim_req *req, struct task **out)
{
    struct pgconn *pc = pg_conn_get(P(st));
    struct num n;
    char *globs = glob_array(req->patterns, req->n_patterns);
    const char *v[5] = {req->worker_id, req->lease_token, num(&n, req->now), req->backend_type,
                        globs};
    int rc = ERR_NOMEM;
    PGresult *r = NULL;

    if (globs)
        r = pg_run(pc, Q_TASK_CLAIM, 5, v, &rc);
    if (r) {
        if (PQntuples(r) == 0) {
            rc = ERR_NOTFOUND;
        } else {
            *out = pg_row_task(r, 0);
            rc = *out ? 0 : ERR_NOMEM;
        }
    }
    PQclear(r);
    free(globs);
    pg_conn_put(P(st), pc);
    return rc;
}

int pg_task_finish(struct store *st, const char *id, const char *lease_token,
                   const struct task_end *end)
{
    struct pgconn *pc = NULL;
    struct log_arrays a;
    struct num n;
    bool ok = true;
    char *res = pg_json_text(end->result, &ok);
    json_t *success = end->result ? json_object_get(end->result, "success") : NULL;
    int rc = pg_log_arrays_build(&a, end->logs, end->n_logs);
    PGresult *r = NULL;

    if (rc == 0 && ok) {
        const char *v[11] = {id, lease_token, task_status_name(end->status), res, end->error,
                             num(&n, end->now),
                             json_is_boolean(success) ? (json_is_true(success) ? "true" : "false")
                                                      : "null",
                             a.ts.data, a.lv.data, a.msg.data, a.ctx.data};
        pc = pg_conn_get(P(st));
        /* With claim_next: the end and the next claim commit together. */
        if (end->claim_next)
            PQclear(pg_run_sql(pc, "BEGIN", 0, NULL, &rc));
        if (rc == 0)
            r = pg_run(pc, Q_TASK_FINISH, 11, v, &rc);
    } else {
        rc = ERR_NOMEM;
    }
    if (r) {
        if (pg_get_i64(r, 0, 0) == 1)
            rc = 0;
        else
            rc = !strcmp(PQgetvalue(r, 0, 1), "t") ? ERR_CONFLICT : ERR_NOTFOUND;
    }
    PQclear(r);
    if (pc && end->claim_next) {
        struct task *t = NULL;
        int rc2;
        if (rc == 0) {
            struct num cn;
            char *globs = glob_array(end->claim_next->patterns, end->claim_next->n_patterns);
            const char *cv[5] = {end->claim_next->worker_id, end->claim_next->lease_token,
                                 num(&cn, end->claim_next->now), end->claim_next->backend_type,
                                 globs};
            PGresult *cr = globs ? pg_run(pc, Q_TASK_CLAIM, 5, cv, &rc) : NULL;
            if (cr && rc == 0 && PQntuples(cr) > 0 && !(t = pg_row_task(cr, 0)))
                rc = ERR_NOMEM;
            PQclear(cr);
            free(globs);
        }
        /* ERR_CONFLICT/NOTFOUND: the end was refused; still commit (logs are kept). */
        PQclear(pg_run_sql(pc, rc == 0 || rc == ERR_CONFLICT || rc == ERR_NOTFOUND ? "COMMIT"
                                                                                 : "ROLLBACK",
                        0, NULL, &rc2));
        if (rc2 < 0 && rc == 0)
            rc = rc2;
        if (rc == 0 && t)
            *end->next = t;
        else
            task_free(t);
    }
    if (pc)
        pg_conn_put(P(st), pc);
    pg_log_arrays_reset(&a);
    free(res);
    return rc;
}

/* ---- recovery ---- */

int pg_reap(struct store *st, int64_t now, int64_t heartbeat_timeout_us,
            struct reap_result *out)
{
    struct pgconn *pc = pg_conn_get(P(st));
    struct num a, b;
    const char *v[2] = {num(&a, now), num(&b, heartbeat_timeout_us)};
    int rc;
    PGresult *r;

    memset(out, 0, sizeof(*out));
    /* One statement: silent workers go offline and their tasks fail together; SKIP
     * LOCKED lets servers reaping at the same moment split the work, never double it. */
    r = pg_run_sql(pc,
                "WITH silent AS (SELECT id FROM workers WHERE status <> 'offline' AND "
                "last_heartbeat < te_ts($1::bigint - $2::bigint) FOR UPDATE SKIP LOCKED), "
                "failed AS (UPDATE tasks SET status = 'failed', completed_at = te_ts($1), "
                "updated_at = te_ts($1), error = 'worker ' || worker_id || ' stopped sending "
                "heartbeats (silent for more than ' || ($2::bigint / 1000000) || ' s); the run was lost' "
                "WHERE status = 'running' AND worker_id IN (SELECT id FROM silent) RETURNING "
                "worker_id), "
                "off AS (UPDATE workers w SET status = 'offline', current_task_id = NULL, "
                "tasks_failed = w.tasks_failed + (SELECT count(*) FROM failed f WHERE f.worker_id "
                "= w.id) WHERE w.id IN (SELECT id FROM silent) RETURNING w.id) "
                "SELECT (SELECT count(*) FROM off), (SELECT count(*) FROM failed)",
                2, v, &rc);
    if (r) {
        out->workers_offline = (int)pg_get_i64(r, 0, 0);
        out->tasks_failed = (int)pg_get_i64(r, 0, 1);
    }
    PQclear(r);
    pg_conn_put(P(st), pc);
    if (rc == 0)
        rc = pg_simple(st,
                    "UPDATE tasks SET status = 'timeout', completed_at = te_ts($1), updated_at = "
                    "te_ts($1), error = 'timed out after ' || timeout_seconds || ' s; its worker "
                    "did not stop it in time' WHERE status = 'running' AND deadline_at < "
                    "te_ts($1::bigint - $2::bigint)",
                    2, v, &out->tasks_timed_out);
    return rc;
}

int pg_recover(struct store *st, const char *name_prefix, int64_t now, int *n_failed)
{
    struct num a;
    const char *v[2] = {name_prefix, num(&a, now)};
    int rc;

    *n_failed = 0;
    rc = pg_simple(st,
                "UPDATE tasks SET status = 'failed', completed_at = te_ts($2), updated_at = "
                "te_ts($2), error = 'the server restarted while internal worker ' || worker_id "
                "|| ' was running this task; the run was lost' WHERE status = 'running' AND "
                "worker_id IN (SELECT id FROM workers WHERE name_prefix = $1)",
                2, v, n_failed);
    if (rc == 0)
        rc = pg_simple(st, "UPDATE workers SET status = 'offline', current_task_id = NULL WHERE "
                        "name_prefix = $1", 1, v, NULL);
    return rc;
}
