/* store/pg/tasks: inserting a task, answering a known idempotency key and waking the
 * workers in one statement. The rest of tasks is written once, in store/tasks.c. */
#include "store/pg/pg_int.h"
#include "core/err.h"

#include <stdlib.h>

static const struct pg_query task_insert = {
    "inserting a task",
    "INSERT INTO tasks (id, problem_id, status, priority, "
    "backend_type, mode, parameters, metadata, callback_url, idempotency_key, "
    "max_steps, timeout_seconds, created_at, updated_at, max_retries) VALUES ($1, "
    "$2, 'pending', $3, $4, $5, $6::jsonb, $7::jsonb, $8, $9, $10, $11, te_ts($12), "
    "te_ts($12), $13) ON CONFLICT (idempotency_key) DO NOTHING RETURNING seq"};

int pg_task_insert(struct store *st, struct task *t, struct task **existing)
{
    struct pgconn *pc = pg_conn_get(P(st));
    struct num n1, n2, n3, n4, n5;
    bool ok = true;
    char *params = pg_json_text(t->parameters, &ok), *meta = pg_json_text(t->metadata, &ok);
    const char *v[13] = {t->id, t->problem_id, num(&n1, t->priority), t->backend_type, t->mode,
                         params, meta, t->callback_url, t->idempotency_key,
                         num(&n2, t->max_steps), num(&n3, t->timeout_seconds),
                         num(&n4, t->created_at), num(&n5, t->max_retries)};
    struct pg_cursor cur;
    int rc = ERR_NOMEM;

    *existing = NULL;
    if (ok) {
        rc = pg_open_q(&cur, pc, &task_insert, 13, v);
        if (rc == 0 && PQntuples(cur.r) == 0 && t->idempotency_key)
            rc = db_load_task(&pc->base, true, t->idempotency_key, existing); /* a known key */
        else if (rc == 0)
            pg_tasks_queued(P(st)); /* committed: other servers' workers may claim it */
        rc = pg_end(&cur, rc);
    }
    free(params);
    free(meta);
    pg_conn_put(P(st), pc);
    return rc;
}
