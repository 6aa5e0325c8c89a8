/* store/sqlite/experiments: creating an experiment and rerunning its slots: the
 * experiment's row and its tasks, one row at a time, in one write transaction. The
 * rest of experiments is written once, in store/experiments.c. */
#include "store/sqlite/sqlite_int.h"
#include "core/err.h"

enum {
    X_INSERT,
    X_RETIRE,
    X_REOPEN,
    X_N
};

static const struct sq_query exp_q[X_N] = {
    [X_INSERT] = {"creating an experiment",
                  "INSERT INTO experiments (id, name, spec, metadata, callback_url, created_at) "
                  "VALUES (?1, ?2, ?3, ?4, ?5, ?6)"},
    [X_RETIRE] = {"replacing an experiment's slot",
                  "UPDATE tasks SET slot_current = 0 WHERE experiment_id = ?1 AND slot_current "
                  "AND json(slot) = json(?2) AND status IN ('completed', 'failed', 'timeout', "
                  "'cancelled')"},
    [X_REOPEN] = {"reopening an experiment",
                  "UPDATE experiments SET ended_at = NULL, webhook_state = NULL WHERE id = ?1"},
};

struct create {
    const struct experiment *e;
    const char *id;
    struct task *const *tasks;
    size_t n;
    size_t added;
};

/* The tasks of x, each replacing its slot's current task when retire, on c. */
static int insert_tasks(struct conn *c, struct create *x, bool retire)
{
    int rc = 0;

    for (size_t i = 0; rc == 0 && i < x->n; i++) {
        int retired = 0;

        if (retire) {
            const struct db_arg a[2] = {DB_T(x->id), DB_J(x->tasks[i]->slot)};
            rc = sq_run(c, &exp_q[X_RETIRE], a, 2, &retired);
            if (rc == 0 && !retired)
                continue; /* its current task has not ended (another rerun's): kept */
        }
        if (rc == 0)
            rc = sq_insert_task(c, x->tasks[i]);
        x->added += rc == 0;
    }
    return rc;
}

static int create_body(struct db_conn *dc, void *ctx)
{
    struct conn *c = sq_conn(dc);
    struct create *x = ctx;
    const struct experiment *e = x->e;
    const struct db_arg a[6] = {DB_T(e->id), DB_T(e->name), DB_J(e->spec), DB_O(e->metadata),
                                DB_T(e->callback_url), DB_I(e->created_at)};
    int rc = sq_run(c, &exp_q[X_INSERT], a, 6, NULL);

    return rc == 0 ? insert_tasks(c, x, false) : rc;
}

int sq_experiment_create(struct store *st, const struct experiment *e, struct task *const *tasks,
                         size_t n)
{
    struct create x = {e, e->id, tasks, n, 0};

    return sq_in_write(st, create_body, &x);
}

static int add_body(struct db_conn *dc, void *ctx)
{
    struct conn *c = sq_conn(dc);
    struct create *x = ctx;
    int rc = insert_tasks(c, x, true);

    return rc == 0 ? sq_run(c, &exp_q[X_REOPEN], &DB_T(x->id), 1, NULL) : rc;
}

int sq_experiment_add_tasks(struct store *st, const char *id, struct task *const *tasks,
                            size_t n, size_t *added)
{
    struct create x = {NULL, id, tasks, n, 0};
    int rc = n ? sq_in_write(st, add_body, &x) : 0;

    *added = rc == 0 ? x.added : 0;
    return rc;
}
