/* store/webhooks: a delivery's result, written once for both backends (store/db.h).
 * Leasing the due deliveries stays in each backend (sqlite/webhooks.c, pg/webhooks.c):
 * PostgreSQL leases with SKIP LOCKED, each statement committing alone; SQLite leases
 * tasks' and experiments' deliveries in one write transaction. */
#include "store/db.h"

static const struct db_stmt result_task = {
    "webhooks",
    "UPDATE tasks SET webhook_state = ?2, webhook_attempts = ?3, webhook_next_at "
    "= ?4, webhook_error = ?5 WHERE id = ?1",
    "UPDATE tasks SET webhook_state = $2, webhook_attempts = $3, webhook_next_at "
    "= te_ts($4), webhook_error = $5 WHERE id = $1"};

static const struct db_stmt result_experiment = {
    "webhooks",
    "UPDATE experiments SET webhook_state = ?2, webhook_attempts = ?3, "
    "webhook_next_at = ?4, webhook_error = ?5 WHERE id = ?1 AND "
    "ended_at IS NOT NULL AND webhook_state = 'pending'",
    "UPDATE experiments SET webhook_state = $2, webhook_attempts = $3, "
    "webhook_next_at = te_ts($4), webhook_error = $5 WHERE id = $1 AND "
    "ended_at IS NOT NULL AND webhook_state = 'pending'"};

int db_webhook_result(struct store *st, const struct webhook_job *job, const char *state,
                      int attempts, int64_t next_at, const char *error)
{
    const struct db_arg args[5] = {DB_T(job->task_id), DB_T(state), DB_I(attempts),
                                   DB_I(next_at), DB_T(error)};

    return db_write(st, job->experiment ? &result_experiment : &result_task, args, 5,
                    NULL);
}
