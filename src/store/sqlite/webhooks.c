/* store/sqlite/webhooks: leasing the due deliveries, of tasks and of experiments, in one
 * write transaction. A delivery's result is written once, in store/webhooks.c. */
#include "store/sqlite/sqlite_int.h"
#include "core/err.h"
#include "core/log.h"

#include <stdio.h>
#include <stdlib.h>

/* Leasing a delivery pushes its next attempt out, so no other sender takes it. */
static const struct sq_query due_tasks = {
    "webhooks",
    "UPDATE tasks SET webhook_next_at = ?1 + ?2 WHERE seq IN (SELECT seq FROM tasks "
    "WHERE webhook_state = 'pending' AND webhook_next_at <= ?1 ORDER BY "
    "webhook_next_at LIMIT ?3) RETURNING id, callback_url, webhook_attempts"};

/* The same for experiments that ended (store_experiments_end made them due). */
static const struct sq_query due_experiments = {
    "webhooks",
    "UPDATE experiments SET webhook_next_at = ?1 + ?2 WHERE seq IN (SELECT "
    "seq FROM experiments WHERE webhook_state = 'pending' AND "
    "webhook_next_at <= ?1 ORDER BY webhook_next_at LIMIT ?3) RETURNING "
    "id, callback_url, webhook_attempts"};

/* The context of due's body. */
struct due {
    int64_t now, lease_us;
    struct rows_jobs jobs;
};

static int due(struct db_conn *dc, void *ctx)
{
    struct conn *c = sq_conn(dc);
    struct due *x = ctx;
    const struct db_arg args[3] = {DB_I(x->now), DB_I(x->lease_us), DB_I((int64_t)x->jobs.max)};

    int rc = sq_take(c, &due_tasks, args, 3, rows_take_jobs, &x->jobs);
    struct rows_jobs more = {x->jobs.jobs + x->jobs.n, x->jobs.max - x->jobs.n, 0, true};

    if (rc < 0 || more.max == 0)
        return rc;
    const struct db_arg rest[3] = {DB_I(x->now), DB_I(x->lease_us), DB_I((int64_t)more.max)};
    rc = sq_take(c, &due_experiments, rest, 3, rows_take_jobs, &more);
    x->jobs.n += more.n;
    return rc;
}

int sq_webhooks_due(struct store *st, int64_t now, int64_t lease_us, size_t max,
                    struct webhook_job *jobs, size_t *n)
{
    struct due x = {now, lease_us, {jobs, max, 0, false}};
    int rc = sq_in_write(st, due, &x);

    if (rc < 0) {
        for (size_t i = 0; i < x.jobs.n; i++)
            free(jobs[i].url); /* read, but the lease did not commit */
        x.jobs.n = 0;
    }
    *n = x.jobs.n;
    return rc;
}
