/* store/sqlite/experiments: the db_ops insert_tasks of SQLite: an experiment's tasks
 * one row at a time, inside the write transaction, each first retiring its slot's
 * ended task on a rerun. The rest of experiments is written once, in
 * store/experiments.c. */
#include "store/sqlite/sqlite_int.h"
#include "core/err.h"

static const struct sq_query retire_q = {
    "replacing an experiment's slot",
    "UPDATE tasks SET slot_current = 0 WHERE experiment_id = ?1 AND slot_current "
    "AND json(slot) = json(?2) AND status IN ('completed', 'failed', 'timeout', "
    "'cancelled')"};

int sq_insert_tasks(struct db_conn *dc, const char *id, struct task *const *tasks, size_t n,
                    bool retire, size_t *added)
{
    struct conn *c = sq_conn(dc);
    int rc = 0;

    *added = 0;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        int retired = 0;

        if (retire) {
            const struct db_arg a[2] = {DB_T(id), DB_J(tasks[i]->slot)};
            rc = sq_run(c, &retire_q, a, 2, &retired);
            if (rc == 0 && !retired)
                continue; /* its current task has not ended (another rerun's): kept */
        }
        if (rc == 0)
            rc = sq_insert_task(c, tasks[i]);
        *added += rc == 0;
    }
    return rc;
}
