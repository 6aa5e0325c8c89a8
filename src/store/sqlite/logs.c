/* store/sqlite/logs: inserting a task's log lines, one prepared INSERT a line, inside
 * the caller's write transaction; none for a task that does not exist (as on
 * PostgreSQL: the end of an unknown task is then "not found", not a store error). The
 * rest of logs is written once, in store/logs.c. */
#include "store/sqlite/sqlite_int.h"

static const struct sq_query log_insert = {
    "inserting a log line",
    "INSERT INTO task_logs (task_id, ts, level, message, context, attempt) SELECT "
    "?1, ?2, ?3, ?4, ?5, attempt FROM tasks WHERE id = ?1"};

int sq_insert_logs(struct db_conn *dc, const char *task_id, const struct log_entry *e,
                   size_t n)
{
    struct conn *c = sq_conn(dc);
    int rc = 0;

    /* The statement stays prepared on c, so a line costs a bind and a step. */
    for (size_t i = 0; rc == 0 && i < n; i++) {
        const struct db_arg args[5] = {DB_T(task_id), DB_I(e[i].ts), DB_I(e[i].level),
                                       DB_T(e[i].message), DB_O(e[i].context)};
        rc = sq_run(c, &log_insert, args, 5, NULL);
    }
    return rc;
}
