/* store/experiments: experiments (created with their tasks, read as a row and its
 * counts, listed, the scoreboard's sums, failed or unsolved slots, cancelled, rerun,
 * ended when their tasks all have), written once for both backends (store/db.h). How
 * an experiment's tasks go in is each backend's insert_tasks (sqlite/experiments.c,
 * pg/experiments.c): PostgreSQL queues all the tasks of a call with one INSERT ...
 * unnest(), SQLite one row at a time inside its write transaction. */
#include "store/db.h"
#include "store/rules.h"
#include "core/err.h"

#include <stdlib.h>

/* What a task's result says: solved (result.solved, else result.success), its reward
 * (result.reward, else 1 when solved), steps (result.metrics.steps_taken). */
#define SQ_SOLVED                                                                          \
    "(CASE WHEN json_type(t.result, '$.solved') IN ('true', 'false') THEN json_extract("    \
    "t.result, '$.solved') WHEN json_type(t.result, '$.success') IN ('true', 'false') THEN "   \
    "json_extract(t.result, '$.success') ELSE 0 END)"
#define PG_SOLVED                                                                          \
    "(CASE WHEN jsonb_typeof(t.result->'solved') = 'boolean' THEN (t.result->>'solved')::"   \
    "boolean WHEN jsonb_typeof(t.result->'success') = 'boolean' THEN (t.result->>'success')" \
    "::boolean ELSE false END)"
#define ENDED "t.status IN ('completed', 'failed', 'timeout', 'cancelled')"

#define EXP_COLS_SQ                                                                        \
    "e.id, e.name, e.spec, e.metadata, e.callback_url, e.created_at, e.cancelled_at, "      \
    "(SELECT max(completed_at) FROM tasks t WHERE t.experiment_id = e.id AND "               \
    "t.slot_current)"
#define EXP_COLS_PG                                                                        \
    "e.id, e.name, e.spec::text, e.metadata::text, e.callback_url, te_us(e.created_at), "   \
    "te_us(e.cancelled_at), (SELECT te_us(max(completed_at)) FROM tasks t WHERE "           \
    "t.experiment_id = e.id AND t.slot_current)"

/* An experiment not ended yet whose current tasks have all ended (x: its row). */
#define ENDED_NOW(x)                                                                       \
    x ".ended_at IS NULL AND EXISTS (SELECT 1 FROM tasks t WHERE t.experiment_id = " x      \
    ".id AND t.slot_current) AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.experiment_id = " \
    x ".id AND t.slot_current AND t.status IN ('pending', 'running'))"

enum {
    X_INSERT, X_REOPEN, X_GET, X_COUNTS, X_LIST_COUNT, X_LIST, X_BOARD, X_CANCEL, X_RUNNING,
    X_CANCEL_TASKS, X_SLOTS_FAILED, X_SLOTS_UNSOLVED, X_END_EVENTS, X_END, X_N
};

static const struct db_stmt exp_q[X_N] = {
    [X_INSERT] = {"creating an experiment",
                  "INSERT INTO experiments (id, name, spec, metadata, callback_url, created_at) "
                  "VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                  "INSERT INTO experiments (id, name, spec, metadata, callback_url, created_at) "
                  "VALUES ($1, $2, $3::jsonb, $4::jsonb, $5, te_ts($6))"},
    [X_REOPEN] = DB_SQL("reopening an experiment",
                        "UPDATE experiments SET ended_at = NULL, webhook_state = NULL WHERE id = "
                        "$1"),
    [X_GET] = {"loading an experiment",
               "SELECT " EXP_COLS_SQ " FROM experiments e WHERE e.id = ?1",
               "SELECT " EXP_COLS_PG " FROM experiments e WHERE e.id = $1"},
    [X_COUNTS] = DB_SQL("counting an experiment's tasks",
                        "SELECT status, count(*) FROM tasks WHERE experiment_id = $1 AND "
                        "slot_current GROUP BY status"),
    [X_LIST_COUNT] = DB_SQL("listing experiments", "SELECT count(*) FROM experiments"),
    [X_LIST] = {"listing experiments",
                "SELECT " EXP_COLS_SQ ", sum(t.status = 'pending'), sum(t.status = 'running'), "
                "sum(t.status = 'completed'), sum(t.status = 'failed'), sum(t.status = "
                "'timeout'), sum(t.status = 'cancelled') FROM experiments e LEFT JOIN tasks t ON "
                "t.experiment_id = e.id AND t.slot_current GROUP BY e.seq ORDER BY e.seq DESC "
                "LIMIT ?1 OFFSET ?2",
                "SELECT " EXP_COLS_PG ", count(t.id) FILTER (WHERE t.status = 'pending'), "
                "count(t.id) FILTER (WHERE t.status = 'running'), count(t.id) FILTER (WHERE "
                "t.status = 'completed'), count(t.id) FILTER (WHERE t.status = 'failed'), "
                "count(t.id) FILTER (WHERE t.status = 'timeout'), count(t.id) FILTER (WHERE "
                "t.status = 'cancelled') FROM experiments e LEFT JOIN tasks t ON "
                "t.experiment_id = e.id AND t.slot_current GROUP BY e.id ORDER BY max(e.seq) "
                "DESC LIMIT $1 OFFSET $2"},
    [X_BOARD] = {"the scoreboard",
                 "WITH x AS (SELECT t.problem_id, json_extract(t.slot, '$.agent_config_index') "
                 "AS ci, " ENDED " AS ended, " SQ_SOLVED " AS solved, CASE WHEN json_type("
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
                 "problem_id, ci",
                 "WITH x AS (SELECT t.problem_id, (t.slot->>'agent_config_index')::int AS ci, "
                 ENDED " AS ended, " PG_SOLVED " AS solved, CASE WHEN jsonb_typeof("
                 "t.result->'reward') = 'number' THEN (t.result->>'reward')::float8 WHEN "
                 PG_SOLVED " THEN 1 ELSE 0 END AS reward, CASE WHEN jsonb_typeof(t.result->"
                 "'metrics'->'steps_taken') = 'number' THEN (t.result->'metrics'->>"
                 "'steps_taken')::float8 ELSE 0 END AS steps, COALESCE(c.tokens, 0)::float8 AS "
                 "tokens, COALESCE(extract(epoch FROM t.completed_at - t.started_at), 0)::"
                 "float8 AS dur FROM tasks t LEFT JOIN (SELECT task_id, sum(total_tokens) AS "
                 "tokens FROM llm_conversations WHERE task_id IN (SELECT id FROM tasks WHERE "
                 "experiment_id = $1 AND slot_current) GROUP BY task_id) c ON c.task_id = t.id "
                 "WHERE t.experiment_id = $1 AND t.slot_current) "
                 "SELECT problem_id, ci, count(*), count(*) FILTER (WHERE ended), count(*) "
                 "FILTER (WHERE ended AND solved), COALESCE(sum(reward) FILTER (WHERE ended), 0), "
                 "COALESCE(sum(steps) FILTER (WHERE ended), 0), COALESCE(sum(tokens) FILTER "
                 "(WHERE ended), 0), COALESCE(sum(dur) FILTER (WHERE ended), 0) FROM x GROUP BY "
                 "problem_id, ci ORDER BY problem_id, ci"},
    [X_CANCEL] = {"cancelling an experiment",
                  "UPDATE experiments SET cancelled_at = COALESCE(cancelled_at, ?2) WHERE id = ?1 "
                  "RETURNING id",
                  "UPDATE experiments SET cancelled_at = COALESCE(cancelled_at, te_ts($2)) WHERE "
                  "id = $1 RETURNING id"},
    /* SQLite reads the running tasks (id, status) before cancelling them, inside its
     * write transaction; PostgreSQL's UPDATE returns each task with its former status,
     * having locked the rows it changes. */
    [X_RUNNING] = {"cancelling an experiment's tasks",
                   "SELECT id, status FROM tasks WHERE experiment_id = ?1 AND slot_current AND "
                   "status = 'running'",
                   NULL},
    [X_CANCEL_TASKS] = {"cancelling an experiment's tasks",
                        "UPDATE tasks SET status = 'cancelled', completed_at = ?2, updated_at = "
                        "?2, error = " RULE_ERR_CANCELLED " WHERE experiment_id = ?1 AND "
                        "slot_current AND status IN ('pending', 'running')",
                        "WITH c AS (SELECT seq, status AS was FROM tasks WHERE experiment_id = "
                        "$1 AND slot_current AND status IN ('pending', 'running') FOR UPDATE) "
                        "UPDATE tasks SET status = 'cancelled', completed_at = te_ts($2), "
                        "updated_at = te_ts($2), error = " RULE_ERR_CANCELLED " FROM c WHERE "
                        "tasks.seq = c.seq RETURNING tasks.id, c.was"},
    [X_SLOTS_FAILED] = {"an experiment's failed slots",
                        "SELECT t.slot FROM tasks t WHERE t.experiment_id = ?1 AND "
                        "t.slot_current AND t.status IN ('failed', 'timeout') ORDER BY t.seq",
                        "SELECT t.slot::text FROM tasks t WHERE t.experiment_id = $1 AND "
                        "t.slot_current AND t.status IN ('failed', 'timeout') ORDER BY t.seq"},
    [X_SLOTS_UNSOLVED] = {"an experiment's unsolved slots",
                          "SELECT t.slot FROM tasks t WHERE t.experiment_id = ?1 AND "
                          "t.slot_current AND " ENDED " AND NOT " SQ_SOLVED " ORDER BY t.seq",
                          "SELECT t.slot::text FROM tasks t WHERE t.experiment_id = $1 AND "
                          "t.slot_current AND " ENDED " AND NOT " PG_SOLVED " ORDER BY t.seq"},
    /* SQLite: the journal first, while the rows still read as open; then the end, made
     * due. PostgreSQL in one statement: a server that meets a row another is ending
     * waits, then sees it ended and leaves it. */
    [X_END_EVENTS] = {"ending experiments",
                      "INSERT INTO task_events (ts, kind, experiment_id, status) SELECT ?1, "
                      "'experiment', x.id, CASE WHEN x.cancelled_at IS NULL THEN 'completed' "
                      "ELSE 'cancelled' END FROM experiments x WHERE " ENDED_NOW("x"),
                      NULL},
    [X_END] = {"ending experiments",
               "UPDATE experiments SET ended_at = ?1, webhook_state = CASE WHEN callback_url IS "
               "NOT NULL THEN 'pending' END, webhook_next_at = ?1, webhook_attempts = 0 WHERE "
               ENDED_NOW("experiments"),
               "WITH e AS (UPDATE experiments x SET ended_at = te_ts($1), webhook_state = CASE "
               "WHEN x.callback_url IS NOT NULL THEN 'pending' END, webhook_next_at = te_ts($1), "
               "webhook_attempts = 0 WHERE " ENDED_NOW("x") " RETURNING x.id, x.cancelled_at) "
               "INSERT INTO task_events (ts, kind, experiment_id, status) SELECT $1, "
               "'experiment', id, CASE WHEN cancelled_at IS NULL THEN 'completed' ELSE "
               "'cancelled' END FROM e"},
};

/* The context of create_body and add_body. */
struct create {
    const struct experiment *e;     /* NULL for a rerun */
    const char *id;
    struct task *const *tasks;
    size_t n;
    size_t added;
};

static int create_body(struct db_conn *c, void *ctx)
{
    struct create *x = ctx;
    const struct experiment *e = x->e;
    const struct db_arg a[6] = {DB_T(e->id), DB_T(e->name), DB_J(e->spec), DB_O(e->metadata),
                                DB_T(e->callback_url), DB_I(e->created_at)};
    int rc = db_run(c, &exp_q[X_INSERT], a, 6, NULL);

    return rc == 0 ? db_insert_tasks(c, x->id, x->tasks, x->n, false, &x->added) : rc;
}

int db_experiment_create(struct store *st, const struct experiment *e, struct task *const *tasks,
                         size_t n)
{
    struct create x = {e, e->id, tasks, n, 0};

    return db_in_write(st, create_body, &x);
}

/* The slots' new tasks, then the experiment open again. */
static int add_body(struct db_conn *c, void *ctx)
{
    struct create *x = ctx;
    int rc = db_insert_tasks(c, x->id, x->tasks, x->n, true, &x->added);

    return rc == 0 ? db_run(c, &exp_q[X_REOPEN], &DB_T(x->id), 1, NULL) : rc;
}

int db_experiment_add_tasks(struct store *st, const char *id, struct task *const *tasks,
                            size_t n, size_t *added)
{
    struct create x = {NULL, id, tasks, n, 0};
    int rc = n ? db_in_write(st, add_body, &x) : 0;

    *added = rc == 0 ? x.added : 0;
    return rc;
}

/* The context of get_body. */
struct get {
    const char *id;
    struct experiment *e;
};

static int get_body(struct db_conn *c, void *ctx)
{
    struct get *x = ctx;
    int rc = db_take(c, &exp_q[X_GET], &DB_T(x->id), 1, rows_take_experiment, &x->e);

    if (rc == 0)
        rc = db_take(c, &exp_q[X_COUNTS], &DB_T(x->id), 1, rows_take_experiment_counts, x->e);
    return rc;
}

int db_experiment_get(struct store *st, const char *id, struct experiment **out)
{
    struct get x = {id, NULL};
    int rc = db_read_tx(st, get_body, &x); /* the row and its counts on one connection */

    if (rc < 0) {
        experiment_free(x.e);
        return rc;
    }
    *out = x.e;
    return 0;
}

int db_experiment_list(struct store *st, int64_t limit, int64_t offset, json_t **items,
                       int64_t *total)
{
    const struct db_arg a[2] = {DB_I(limit), DB_I(offset)};

    return db_read_page(st, &exp_q[X_LIST_COUNT], 0, &exp_q[X_LIST], a, 2, rows_experiment_json,
                        items, total);
}

int db_experiment_scoreboard(struct store *st, const char *id, json_t **rows)
{
    return db_read(st, &exp_q[X_BOARD], &DB_T(id), 1, rows_board_sums, rows);
}

/* The context of cancel_body. */
struct cancel {
    const char *id;
    int64_t now;
    json_t *running;
};

static int cancel_body(struct db_conn *c, void *ctx)
{
    struct cancel *x = ctx;
    const struct db_arg a[2] = {DB_T(x->id), DB_I(x->now)};
    char *found = NULL;
    int rc = db_take(c, &exp_q[X_CANCEL], a, 2, rows_take_text, &found);

    free(found);
    if (rc == 0)
        rc = db_take(c, &exp_q[X_RUNNING], a, 1, rows_take_running_ids, x->running);
    if (rc == 0)
        rc = db_take(c, &exp_q[X_CANCEL_TASKS], a, 2, rows_take_running_ids, x->running);
    return rc;
}

int db_experiment_cancel(struct store *st, const char *id, int64_t now, json_t **running)
{
    struct cancel x = {id, now, json_array()};
    int rc = x.running ? db_in_write(st, cancel_body, &x) : ERR_NOMEM;

    if (rc < 0) {
        json_decref(x.running);
        return rc;
    }
    *running = x.running;
    return 0;
}

int db_experiment_slots(struct store *st, const char *id, bool unsolved, json_t **slots)
{
    return db_read(st, &exp_q[unsolved ? X_SLOTS_UNSOLVED : X_SLOTS_FAILED], &DB_T(id), 1,
                   rows_json_column, slots);
}

/* The context of end_body. */
struct end {
    int64_t now;
    int n;
};

static int end_body(struct db_conn *c, void *ctx)
{
    struct end *x = ctx;
    int rc = db_run(c, &exp_q[X_END_EVENTS], &DB_I(x->now), 1, NULL);

    x->n = 0;
    return rc == 0 ? db_run(c, &exp_q[X_END], &DB_I(x->now), 1, &x->n) : rc;
}

/* On PostgreSQL the end is one statement, committed alone; SQLite's two share its write
 * transaction (what on_write is there). */
int db_experiments_end(struct store *st, int64_t now, int *n)
{
    struct end x = {now, 0};
    int rc = db_on_write(st, end_body, &x);

    *n = rc == 0 ? x.n : 0;
    return rc;
}
