/* store/pg/webhooks: due deliveries (leased, SKIP LOCKED) and their results. */
#include "store/pg/pg_int.h"
#include "core/err.h"
#include "core/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
    H_DUE,
    H_RESULT,
    H_N
};

static const struct pg_query webhook_q[H_N] = {
    /* Leasing a delivery pushes its next attempt out, so no other server takes it. */
    [H_DUE] = {"webhooks",
               "UPDATE tasks SET webhook_next_at = te_ts($1::bigint + $2::bigint) WHERE seq IN "
               "(SELECT seq FROM tasks WHERE webhook_state = 'pending' AND webhook_next_at <= "
               "te_ts($1) ORDER BY webhook_next_at LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING "
               "id, callback_url, webhook_attempts"},
    [H_RESULT] = {"webhooks",
                  "UPDATE tasks SET webhook_state = $2, webhook_attempts = $3, webhook_next_at "
                  "= te_ts($4), webhook_error = $5 WHERE id = $1"},
};

/* Reads the leased deliveries into jobs; on error frees what it read and *n is 0. */
static int read_due(struct pg_cursor *cur, size_t max, struct webhook_job *jobs, size_t *n)
{
    size_t k = 0;
    int rc = 0;

    while (k < max && (rc = pg_next(cur)) == STORE_ROW) {
        struct webhook_job *j = &jobs[k];
        snprintf(j->task_id, sizeof(j->task_id), "%s", PQgetvalue(cur->r, cur->base.row.i, 0));
        j->url = rows_dup(&cur->base.row, 1);
        j->attempts = (int)cur->base.row.ops->i64(&cur->base.row, 2);
        if (!j->url) {
            rc = ERR_NOMEM;
            break;
        }
        k++;
    }
    if (k == max)
        rc = 0;
    if (rc < 0) {
        for (size_t i = 0; i < k; i++)
            free(jobs[i].url);
        k = 0;
    }
    *n = k;
    return rc;
}

int pg_webhooks_due(struct store *st, int64_t now, int64_t lease_us, size_t max,
                    struct webhook_job *jobs, size_t *n)
{
    struct pgconn *pc = pg_conn_get(P(st));
    struct num a, b, c;
    const char *v[3] = {num(&a, now), num(&b, lease_us), num(&c, (int64_t)max)};
    struct pg_cursor cur;
    int rc = pg_open_q(&cur, pc, &webhook_q[H_DUE], 3, v);

    *n = 0;
    if (rc == 0)
        rc = read_due(&cur, max, jobs, n);
    rc = pg_end(&cur, rc);
    pg_conn_put(P(st), pc);
    return rc;
}

int pg_webhook_result(struct store *st, const char *task_id, const char *state, int attempts,
                      int64_t next_at, const char *error)
{
    struct num a, b;
    const char *v[5] = {task_id, state, num(&a, attempts), num(&b, next_at), error};

    return pg_write(st, &webhook_q[H_RESULT], 5, v, NULL);
}
