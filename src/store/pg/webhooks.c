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
    H_DUE_EXPERIMENTS,
    H_RESULT_EXPERIMENT,
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
    /* The same for experiments that ended (store_experiments_end made them due). */
    [H_DUE_EXPERIMENTS] = {"webhooks",
                           "UPDATE experiments SET webhook_next_at = te_ts($1::bigint + "
                           "$2::bigint) WHERE seq IN (SELECT seq FROM experiments WHERE "
                           "webhook_state = 'pending' AND webhook_next_at <= te_ts($1) ORDER BY "
                           "webhook_next_at LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING id, "
                           "callback_url, webhook_attempts"},
    [H_RESULT_EXPERIMENT] = {"webhooks",
                             "UPDATE experiments SET webhook_state = $2, webhook_attempts = $3, "
                             "webhook_next_at = te_ts($4), webhook_error = $5 WHERE id = $1 AND "
                             "ended_at IS NOT NULL AND webhook_state = 'pending'"},
};

int pg_webhooks_due(struct store *st, int64_t now, int64_t lease_us, size_t max,
                    struct webhook_job *jobs, size_t *n)
{
    struct num a, b, c;
    const char *v[3] = {num(&a, now), num(&b, lease_us), num(&c, (int64_t)max)};
    struct rows_jobs x = {jobs, max, 0, false}, more = {NULL, 0, 0, true};
    struct num d;
    int rc = pg_read_with(st, &webhook_q[H_DUE], 3, v, rows_take_jobs, &x);

    if (rc == 0 && x.n < max) {
        more = (struct rows_jobs){jobs + x.n, max - x.n, 0, true};
        v[2] = num(&d, (int64_t)more.max);
        rc = pg_read_with(st, &webhook_q[H_DUE_EXPERIMENTS], 3, v, rows_take_jobs, &more);
        if (rc < 0)
            rc = 0; /* the tasks' deliveries are leased already: deliver those */
    }
    *n = x.n + more.n;
    return rc;
}

int pg_webhook_result(struct store *st, const struct webhook_job *job, const char *state,
                      int attempts, int64_t next_at, const char *error)
{
    struct num a, b;
    const char *v[5] = {job->task_id, state, num(&a, attempts), num(&b, next_at), error};

    return pg_write(st, &webhook_q[job->experiment ? H_RESULT_EXPERIMENT : H_RESULT], 5, v,
                    NULL);
}
