/* store/pg/webhooks: leasing the due deliveries (SKIP LOCKED), each statement committing
 * alone. A delivery's result is written once, in store/webhooks.c. */
#include "store/pg/pg_int.h"
#include "core/err.h"
#include "core/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Leasing a delivery pushes its next attempt out, so no other server takes it. */
static const struct pg_query due_tasks = {
    "webhooks",
    "UPDATE tasks SET webhook_next_at = te_ts($1::bigint + $2::bigint) WHERE seq IN "
    "(SELECT seq FROM tasks WHERE webhook_state = 'pending' AND webhook_next_at <= "
    "te_ts($1) ORDER BY webhook_next_at LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING "
    "id, callback_url, webhook_attempts"};

/* The same for experiments that ended (store_experiments_end made them due). */
static const struct pg_query due_experiments = {
    "webhooks",
    "UPDATE experiments SET webhook_next_at = te_ts($1::bigint + "
    "$2::bigint) WHERE seq IN (SELECT seq FROM experiments WHERE "
    "webhook_state = 'pending' AND webhook_next_at <= te_ts($1) ORDER BY "
    "webhook_next_at LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING id, "
    "callback_url, webhook_attempts"};

int pg_webhooks_due(struct store *st, int64_t now, int64_t lease_us, size_t max,
                    struct webhook_job *jobs, size_t *n)
{
    struct num a, b, c;
    const char *v[3] = {num(&a, now), num(&b, lease_us), num(&c, (int64_t)max)};
    struct rows_jobs x = {jobs, max, 0, false}, more = {NULL, 0, 0, true};
    struct num d;
    int rc = pg_read_with(st, &due_tasks, 3, v, rows_take_jobs, &x);

    if (rc == 0 && x.n < max) {
        more = (struct rows_jobs){jobs + x.n, max - x.n, 0, true};
        v[2] = num(&d, (int64_t)more.max);
        rc = pg_read_with(st, &due_experiments, 3, v, rows_take_jobs, &more);
        if (rc < 0)
            rc = 0; /* the tasks' deliveries are leased already: deliver those */
    }
    *n = x.n + more.n;
    return rc;
}
