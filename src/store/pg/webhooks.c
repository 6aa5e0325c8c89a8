/* store/pg/webhooks: due deliveries (leased, SKIP LOCKED) and their results. */
#include "store/pg/pg_int.h"
#include "core/err.h"
#include "core/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int pg_webhooks_due(struct store *st, int64_t now, int64_t lease_us, size_t max,
                    struct webhook_job *jobs, size_t *n)
{
    struct pgconn *pc = pg_conn_get(P(st));
    struct num a, b, c;
    const char *v[3] = {num(&a, now), num(&b, lease_us), num(&c, (int64_t)max)};
    int rc;
    PGresult *r;

    *n = 0;
    /* Leasing a delivery pushes its next attempt out, so no other server takes it. */
    r = pg_run_sql(pc, "UPDATE tasks SET webhook_next_at = te_ts($1::bigint + $2::bigint) WHERE seq "
                    "IN (SELECT seq FROM tasks WHERE webhook_state = 'pending' AND "
                    "webhook_next_at <= te_ts($1) ORDER BY webhook_next_at LIMIT $3 FOR UPDATE "
                    "SKIP LOCKED) RETURNING id, callback_url, webhook_attempts", 3, v, &rc);
    for (int i = 0; r && i < PQntuples(r) && *n < max; i++) {
        struct webhook_job *j = &jobs[*n];
        snprintf(j->task_id, sizeof(j->task_id), "%s", PQgetvalue(r, i, 0));
        j->url = strdup(PQgetvalue(r, i, 1));
        j->attempts = (int)pg_get_i64(r, i, 2);
        if (j->url)
            (*n)++;
    }
    PQclear(r);
    pg_conn_put(P(st), pc);
    return rc;
}

int pg_webhook_result(struct store *st, const char *task_id, const char *state,
                      int attempts, int64_t next_at, const char *error)
{
    struct num a, b;
    const char *v[5] = {task_id, state, num(&a, attempts), num(&b, next_at), error};

    return pg_simple(st, "UPDATE tasks SET webhook_state = $2, webhook_attempts = $3, "
                      "webhook_next_at = te_ts($4), webhook_error = $5 WHERE id = $1", 5, v,
                  NULL);
}
