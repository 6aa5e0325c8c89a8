/* store/sqlite/tasks: inserting a task (its idempotency key looked up first, inside
 * the write transaction). The rest of tasks is written once, in store/tasks.c. */
#include "store/sqlite/sqlite_int.h"
#include "core/err.h"

static const struct sq_query task_insert = {
    "inserting a task",
    "INSERT INTO tasks (" TASK_INSERT_COLS ", max_retries, experiment_id, slot) "
    "VALUES (?1,?2,'pending',?3,?4,?5,?6,?7,?8,?9,NULL,NULL,NULL,NULL,?10,?11,?12,"
    "?12,NULL,NULL,NULL,?13,?14,?15)"};

int sq_insert_task(struct conn *c, const struct task *t)
{
    const struct db_arg args[15] = {
        DB_T(t->id), DB_T(t->problem_id), DB_I(t->priority), DB_T(t->backend_type),
        DB_T(t->mode), DB_J(t->parameters), DB_J(t->metadata), DB_T(t->callback_url),
        DB_T(t->idempotency_key), DB_I(t->max_steps), DB_I(t->timeout_seconds),
        DB_I(t->created_at), DB_I(t->max_retries), DB_T(t->experiment_id), DB_J(t->slot)};

    return sq_run(c, &task_insert, args, 15, NULL);
}

/* The context of insert's body. */
struct insert {
    struct task *t;
    struct task **existing;
};

static int insert(struct db_conn *dc, void *ctx)
{
    struct conn *c = sq_conn(dc);
    struct insert *x = ctx;
    int rc;

    if (x->t->idempotency_key) {
        rc = db_load_task(&c->base, true, x->t->idempotency_key, x->existing);
        if (rc != ERR_NOTFOUND)
            return rc; /* a known key (0), or the error */
    }
    return sq_insert_task(c, x->t);
}

int sq_task_insert(struct store *st, struct task *t, struct task **existing)
{
    struct insert x = {t, existing};
    int rc;

    *existing = NULL;
    rc = sq_in_write(st, insert, &x);
    if (rc < 0) {
        task_free(*existing); /* read, but the transaction failed */
        *existing = NULL;
    }
    return rc;
}
