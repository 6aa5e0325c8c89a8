/* store/sqlite/experiments: experiments and their tasks (all inserted in one write
 * transaction), counts, the scoreboard's sums, cancel and reruns. */
#include "store/sqlite/sqlite_int.h"
#include "store/rules.h"
#include "core/err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What a task's result says (see the PostgreSQL backend for the same rule). */
#define SQ_SOLVED                                                                          \
    "(CASE WHEN json_type(t.result, '$.solved') IN ('true', 'false') THEN json_extract("    \
    "t.result, '$.solved') WHEN json_type(t.result, '$.success') IN ('true', 'false') THEN "   \
    "json_extract(t.result, '$.success') ELSE 0 END)"
#define SQ_ENDED "t.status IN ('completed', 'failed', 'timeout', 'cancelled')"

#define EXP_COLS                                                                           \
    "e.id, e.name, e.spec, e.metadata, e.callback_url, e.created_at, e.cancelled_at, "      \
    "(SELECT max(completed_at) FROM tasks t WHERE t.experiment_id = e.id AND "               \
    "t.slot_current)"

/* An experiment not ended yet whose current tasks have all ended (x: its row). */
#define ENDED_NOW(x)                                                                       \
    x ".ended_at IS NULL AND EXISTS (SELECT 1 FROM tasks t WHERE t.experiment_id = " x      \
    ".id AND t.slot_current) AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.experiment_id = " \
    x ".id AND t.slot_current AND t.status IN ('pending', 'running'))"

enum {
    X_INSERT,
    X_GET,
    X_COUNTS,
    X_LIST_COUNT,
    X_LIST,
    X_BOARD,
    X_CANCEL,
    X_RUNNING,
    X_CANCEL_TASKS,
    X_SLOTS_FAILED,
    X_SLOTS_UNSOLVED,
    X_RETIRE,
    X_REOPEN,
    X_END_EVENTS,
    X_END,
    X_N
};

static const struct sq_query exp_q[X_N] = {
    [X_INSERT] = {"creating an experiment",
                  "INSERT INTO experiments (id, name, spec, metadata, callback_url, created_at) "
                  "VALUES (?1, ?2, ?3, ?4, ?5, ?6)"},
    [X_GET] = {"loading an experiment", "SELECT " EXP_COLS " FROM experiments e WHERE e.id = ?1"},
    [X_COUNTS] = {"counting an experiment's tasks",
                  "SELECT status, count(*) FROM tasks WHERE experiment_id = ?1 AND slot_current "
                  "GROUP BY status"},
    [X_LIST_COUNT] = {"listing experiments", "SELECT count(*) FROM experiments"},
    [X_LIST] = {"listing experiments",
                "SELECT " EXP_COLS ", sum(t.status = 'pending'), sum(t.status = 'running'), "
                "sum(t.status = 'completed'), sum(t.status = 'failed'), sum(t.status = "
                "'timeout'), sum(t.status = 'cancelled') FROM experiments e LEFT JOIN tasks t ON "
                "t.experiment_id = e.id AND t.slot_current GROUP BY e.seq ORDER BY e.seq DESC "
                "LIMIT ?1 OFFSET ?2"},
    [X_BOARD] = {"the scoreboard",
                 "WITH x AS (SELECT t.problem_id, json_extract(t.slot, '$.agent_config_index') "
                 "AS ci, " SQ_ENDED " AS ended, " SQ_SOLVED " AS solved, CASE WHEN json_type("
                 "t.result, '$.reward') IN ('integer', 'real') THEN json_extract(t.result, "
                 "'$.reward') ELSE " SQ_SOLVED " END AS reward, CASE WHEN json_type(t.result, "
                 "'$.metrics.steps_taken') IN ('integer', 'real') THEN json_extract(t.result, "
                 "'$.metrics.steps_taken') ELSE 0 END AS steps, (SELECT COALESCE(sum("
                 "c.total_tokens), 0) FROM llm_conversations c WHERE c.task_id = t.id) AS "
                 "tokens, COALESCE((t.completed_at - t.started_at) / 1e6, 0) AS dur FROM tasks t "
                 "WHERE t.experiment_id = ?1 AND t.slot_current) SELECT problem_id, ci, count(*), "
                 "sum(ended), sum(ended AND solved), total(CASE WHEN ended THEN reward END), "
                 "total(CASE WHEN ended THEN steps END), total(CASE WHEN ended THEN tokens END), "
                 "total(CASE WHEN ended THEN dur END) FROM x GROUP BY problem_id, ci ORDER BY "
                 "problem_id, ci"},
    [X_CANCEL] = {"cancelling an experiment",
                  "UPDATE experiments SET cancelled_at = COALESCE(cancelled_at, ?2) WHERE id = ?1"},
    [X_RUNNING] = {"cancelling an experiment's tasks",
                   "SELECT id, status FROM tasks WHERE experiment_id = ?1 AND slot_current AND "
                   "status = 'running'"},
    [X_CANCEL_TASKS] = {"cancelling an experiment's tasks",
                        "UPDATE tasks SET status = 'cancelled', completed_at = ?2, updated_at = "
                        "?2, error = " RULE_ERR_CANCELLED " WHERE experiment_id = ?1 AND "
                        "slot_current AND status IN ('pending', 'running')"},
    [X_SLOTS_FAILED] = {"an experiment's failed slots",
                        "SELECT t.slot FROM tasks t WHERE t.experiment_id = ?1 AND "
                        "t.slot_current AND t.status IN ('failed', 'timeout') ORDER BY t.seq"},
    [X_SLOTS_UNSOLVED] = {"an experiment's unsolved slots",
                          "SELECT t.slot FROM tasks t WHERE t.experiment_id = ?1 AND "
                          "t.slot_current AND " SQ_ENDED " AND NOT " SQ_SOLVED " ORDER BY t.seq"},
    [X_RETIRE] = {"replacing an experiment's slot",
                  "UPDATE tasks SET slot_current = 0 WHERE experiment_id = ?1 AND slot_current "
                  "AND json(slot) = json(?2) AND status IN ('completed', 'failed', 'timeout', "
                  "'cancelled')"},
    [X_REOPEN] = {"reopening an experiment",
                  "UPDATE experiments SET ended_at = NULL, webhook_state = NULL WHERE id = ?1"},
    /* The journal first, while the rows still read as open; then the end, made due. */
    [X_END_EVENTS] = {"ending experiments",
                      "INSERT INTO task_events (ts, kind, experiment_id, status) SELECT ?1, "
                      "'experiment', x.id, CASE WHEN x.cancelled_at IS NULL THEN 'completed' "
                      "ELSE 'cancelled' END FROM experiments x WHERE " ENDED_NOW("x")},
    [X_END] = {"ending experiments",
               "UPDATE experiments SET ended_at = ?1, webhook_state = CASE WHEN callback_url IS "
               "NOT NULL THEN 'pending' END, webhook_next_at = ?1, webhook_attempts = 0 WHERE "
               ENDED_NOW("experiments")},
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

static int create_body(struct conn *c, void *ctx)
{
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

int sq_experiment_get(struct store *st, const char *id, struct experiment **out)
{
    struct rd r = sq_rd_get(st);
    const struct db_arg a[1] = {DB_T(id)};
    struct experiment *e = NULL;
    int rc = sq_take(r.c, &exp_q[X_GET], a, 1, rows_take_experiment, &e);

    if (rc == 0)
        rc = sq_take(r.c, &exp_q[X_COUNTS], a, 1, rows_take_experiment_counts, e);
    sq_rd_put(&r);
    if (rc < 0) {
        experiment_free(e);
        return rc;
    }
    *out = e;
    return 0;
}

int sq_experiment_list(struct store *st, int64_t limit, int64_t offset, json_t **items,
                       int64_t *total)
{
    const struct db_arg a[2] = {DB_I(limit), DB_I(offset)};
    struct rows_ints count = {.n = 1};
    json_t *arr = NULL;
    int rc = sq_read_with(st, &exp_q[X_LIST_COUNT], NULL, 0, rows_take_ints, &count);

    if (rc == 0)
        rc = sq_read(st, &exp_q[X_LIST], a, 2, rows_experiment_json, &arr);
    if (rc < 0)
        return rc;
    *items = arr;
    *total = count.v[0];
    return 0;
}

int sq_experiment_scoreboard(struct store *st, const char *id, json_t **rows)
{
    const struct db_arg a[1] = {DB_T(id)};

    return sq_read(st, &exp_q[X_BOARD], a, 1, rows_board_sums, rows);
}

struct cancel {
    const char *id;
    int64_t now;
    json_t *running;
};

static int cancel_body(struct conn *c, void *ctx)
{
    struct cancel *x = ctx;
    const struct db_arg a[2] = {DB_T(x->id), DB_I(x->now)};
    int changed = 0;
    int rc = sq_run(c, &exp_q[X_CANCEL], a, 2, &changed);

    if (rc == 0 && !changed)
        rc = ERR_NOTFOUND;
    if (rc == 0)
        rc = sq_take(c, &exp_q[X_RUNNING], a, 1, rows_take_running_ids, x->running);
    if (rc == 0)
        rc = sq_run(c, &exp_q[X_CANCEL_TASKS], a, 2, NULL);
    return rc;
}

int sq_experiment_cancel(struct store *st, const char *id, int64_t now, json_t **running)
{
    struct cancel x = {id, now, json_array()};
    int rc = x.running ? sq_in_write(st, cancel_body, &x) : ERR_NOMEM;

    if (rc < 0) {
        json_decref(x.running);
        return rc;
    }
    *running = x.running;
    return 0;
}

int sq_experiment_slots(struct store *st, const char *id, bool unsolved, json_t **slots)
{
    const struct db_arg a[1] = {DB_T(id)};

    return sq_read(st, &exp_q[unsolved ? X_SLOTS_UNSOLVED : X_SLOTS_FAILED], a, 1,
                   rows_json_column, slots);
}

static int add_body(struct conn *c, void *ctx)
{
    struct create *x = ctx;
    int rc = insert_tasks(c, x, true);

    return rc == 0 ? sq_run(c, &exp_q[X_REOPEN], &DB_T(x->id), 1, NULL) : rc;
}

/* The context of end_body. */
struct end {
    int64_t now;
    int n;
};

static int end_body(struct conn *c, void *ctx)
{
    struct end *x = ctx;
    const struct db_arg a[1] = {DB_I(x->now)};
    int rc = sq_run(c, &exp_q[X_END_EVENTS], a, 1, NULL);

    x->n = 0;
    return rc == 0 ? sq_run(c, &exp_q[X_END], a, 1, &x->n) : rc;
}

int sq_experiments_end(struct store *st, int64_t now, int *n)
{
    struct end x = {now, 0};
    int rc = sq_in_write(st, end_body, &x);

    *n = rc == 0 ? x.n : 0;
    return rc;
}

int sq_experiment_add_tasks(struct store *st, const char *id, struct task *const *tasks,
                            size_t n, size_t *added)
{
    struct create x = {NULL, id, tasks, n, 0};
    int rc = n ? sq_in_write(st, add_body, &x) : 0;

    *added = rc == 0 ? x.added : 0;
    return rc;
}
