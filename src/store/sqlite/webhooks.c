/* store/sqlite/webhooks: due deliveries (leased) and their results. */
#include "store/sqlite/sqlite_int.h"
#include "core/err.h"
#include "core/log.h"

#include <stdio.h>
#include <stdlib.h>

enum {
    H_DUE,
    H_RESULT,
    H_N
};

static const struct sq_query webhook_q[H_N] = {
    /* Leasing a delivery pushes its next attempt out, so no other sender takes it. */
    [H_DUE] = {"webhooks",
               "UPDATE tasks SET webhook_next_at = ?1 + ?2 WHERE seq IN (SELECT seq FROM tasks "
               "WHERE webhook_state = 'pending' AND webhook_next_at <= ?1 ORDER BY "
               "webhook_next_at LIMIT ?3) RETURNING id, callback_url, webhook_attempts"},
    [H_RESULT] = {"webhooks",
                  "UPDATE tasks SET webhook_state = ?2, webhook_attempts = ?3, webhook_next_at "
                  "= ?4, webhook_error = ?5 WHERE id = ?1"},
};

/* Reads the leased deliveries into jobs; on error frees what it read and *n is 0. */
static int read_due(struct sq_cursor *cur, size_t max, struct webhook_job *jobs, size_t *n)
{
    size_t k = 0;
    int rc = 0;

    while (k < max && (rc = sq_next(cur)) == STORE_ROW) {
        struct webhook_job *j = &jobs[k];
        snprintf(j->task_id, sizeof(j->task_id), "%s", sqlite3_column_text(cur->s, 0));
        j->url = rows_dup(&cur->base.row, 1);
        j->attempts = sqlite3_column_int(cur->s, 2);
        if (!j->url) {
            rc = ERR_NOMEM;
            break;
        }
        k++;
    }
    if (k == max)
        rc = 0; /* the LIMIT keeps the rows to max: the rest were not leased */
    if (rc < 0) {
        for (size_t i = 0; i < k; i++)
            free(jobs[i].url);
        k = 0;
    }
    *n = k;
    return rc;
}

int sq_webhooks_due(struct store *st, int64_t now, int64_t lease_us, size_t max,
                    struct webhook_job *jobs, size_t *n)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = sq_writer_begin(ss);
    struct sq_cursor cur;
    int rc;

    *n = 0;
    if (!c)
        return ERR_STORE;
    rc = sq_open_q(&cur, c, &webhook_q[H_DUE]);
    if (rc == 0) {
        sqlite3_bind_int64(cur.s, 1, now);
        sqlite3_bind_int64(cur.s, 2, lease_us);
        sqlite3_bind_int64(cur.s, 3, (int64_t)max);
        rc = read_due(&cur, max, jobs, n);
    }
    rc = sq_writer_end(ss, sq_end(&cur, rc));
    if (rc < 0) {
        for (size_t i = 0; i < *n; i++)
            free(jobs[i].url);
        *n = 0;
    }
    return rc;
}

int sq_webhook_result(struct store *st, const char *task_id, const char *state, int attempts,
                      int64_t next_at, const char *error)
{
    const struct sq_arg args[5] = {SQ_T(task_id), SQ_T(state), SQ_I(attempts), SQ_I(next_at),
                                   SQ_T(error)};

    return sq_write(st, &webhook_q[H_RESULT], args, 5, NULL);
}
