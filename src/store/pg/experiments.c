/* store/pg/experiments: experiments and their tasks (one INSERT ... unnest for all of an
 * experiment's tasks, so 10,000 are one statement), counts, the scoreboard's sums,
 * cancel and reruns. */
#include "store/pg/pg_int.h"
#include "store/rules.h"
#include "core/err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What a task's result says: solved (result.solved, else result.success), its reward
 * (result.reward, else 1 when solved), steps (result.metrics.steps_taken). */
#define PG_SOLVED                                                                          \
    "(CASE WHEN jsonb_typeof(t.result->'solved') = 'boolean' THEN (t.result->>'solved')::"   \
    "boolean WHEN jsonb_typeof(t.result->'success') = 'boolean' THEN (t.result->>'success')" \
    "::boolean ELSE false END)"
#define PG_ENDED "t.status IN ('completed', 'failed', 'timeout', 'cancelled')"

/* An experiment not ended yet whose current tasks have all ended (x: its row). */
#define ENDED_NOW(x)                                                                       \
    x ".ended_at IS NULL AND EXISTS (SELECT 1 FROM tasks t WHERE t.experiment_id = " x      \
    ".id AND t.slot_current) AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.experiment_id = " \
    x ".id AND t.slot_current AND t.status IN ('pending', 'running'))"

enum {
    X_INSERT,
    X_TASKS,
    X_GET,
    X_COUNTS,
    X_LIST_COUNT,
    X_LIST,
    X_BOARD,
    X_CANCEL,
    X_CANCEL_TASKS,
    X_SLOTS_FAILED,
    X_SLOTS_UNSOLVED,
    X_RETIRE,
    X_REOPEN,
    X_END,
    X_N
};

#define EXP_COLS                                                                           \
    "e.id, e.name, e.spec::text, e.metadata::text, e.callback_url, te_us(e.created_at), "   \
    "te_us(e.cancelled_at), (SELECT te_us(max(completed_at)) FROM tasks t WHERE "           \
    "t.experiment_id = e.id AND t.slot_current)"

static const struct pg_query exp_q[X_N] = {
    [X_INSERT] = {"creating an experiment",
                  "INSERT INTO experiments (id, name, spec, metadata, callback_url, created_at) "
                  "VALUES ($1, $2, $3::jsonb, $4::jsonb, $5, te_ts($6))"},
    /* The tasks of one call share the template's fields; what differs per slot comes in
     * arrays. One statement, so the statement triggers count and journal them once. */
    [X_TASKS] = {"queueing an experiment's tasks",
                 "INSERT INTO tasks (id, problem_id, status, priority, "
                 "backend_type, mode, parameters, metadata, max_steps, timeout_seconds, "
                 "max_retries, experiment_id, slot, created_at, updated_at) SELECT u.id::uuid, "
                 "u.problem_id, 'pending', $2, $3, 'batch', u.parameters::jsonb, $4::jsonb, $5, "
                 "$6, $7, $1, u.slot::jsonb, te_ts($8), te_ts($8) FROM unnest($9::text[], "
                 "$10::text[], $11::text[], $12::text[]) AS u(id, problem_id, parameters, slot)"},
    [X_GET] = {"loading an experiment", "SELECT " EXP_COLS " FROM experiments e WHERE e.id = $1"},
    [X_COUNTS] = {"counting an experiment's tasks",
                  "SELECT status, count(*) FROM tasks WHERE experiment_id = $1 AND slot_current "
                  "GROUP BY status"},
    [X_LIST_COUNT] = {"listing experiments", "SELECT count(*) FROM experiments"},
    [X_LIST] = {"listing experiments",
                "SELECT " EXP_COLS ", count(t.id) FILTER (WHERE t.status = 'pending'), "
                "count(t.id) FILTER (WHERE t.status = 'running'), count(t.id) FILTER (WHERE "
                "t.status = 'completed'), count(t.id) FILTER (WHERE t.status = 'failed'), "
                "count(t.id) FILTER (WHERE t.status = 'timeout'), count(t.id) FILTER (WHERE "
                "t.status = 'cancelled') FROM experiments e LEFT JOIN tasks t ON "
                "t.experiment_id = e.id AND t.slot_current GROUP BY e.id ORDER BY max(e.seq) "
                "DESC LIMIT $1 OFFSET $2"},
    [X_BOARD] = {"the scoreboard",
                 "WITH x AS (SELECT t.problem_id, (t.slot->>'agent_config_index')::int AS ci, "
                 PG_ENDED " AS ended, " PG_SOLVED " AS solved, CASE WHEN jsonb_typeof("
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
                  "UPDATE experiments SET cancelled_at = COALESCE(cancelled_at, te_ts($2)) WHERE "
                  "id = $1 RETURNING id"},
    [X_CANCEL_TASKS] = {"cancelling an experiment's tasks",
                        "WITH c AS (SELECT seq, status AS was FROM tasks WHERE experiment_id = "
                        "$1 AND slot_current AND status IN ('pending', 'running') FOR UPDATE) "
                        "UPDATE tasks SET status = 'cancelled', completed_at = te_ts($2), "
                        "updated_at = te_ts($2), error = " RULE_ERR_CANCELLED " FROM c WHERE "
                        "tasks.seq = c.seq RETURNING tasks.id, c.was"},
    [X_SLOTS_FAILED] = {"an experiment's failed slots",
                        "SELECT t.slot::text FROM tasks t WHERE t.experiment_id = $1 AND "
                        "t.slot_current AND t.status IN ('failed', 'timeout') ORDER BY t.seq"},
    [X_SLOTS_UNSOLVED] = {"an experiment's unsolved slots",
                          "SELECT t.slot::text FROM tasks t WHERE t.experiment_id = $1 AND "
                          "t.slot_current AND " PG_ENDED " AND NOT " PG_SOLVED " ORDER BY t.seq"},
    [X_RETIRE] = {"replacing an experiment's slots",
                  "UPDATE tasks SET slot_current = false WHERE experiment_id = $1 AND "
                  "slot_current AND slot = ANY($2::jsonb[]) AND status IN ('completed', "
                  "'failed', 'timeout', 'cancelled') RETURNING slot::text"},
    [X_REOPEN] = {"reopening an experiment",
                  "UPDATE experiments SET ended_at = NULL, webhook_state = NULL WHERE id = $1"},
    /* One statement: a server that meets a row another is ending waits, then sees it
     * ended and leaves it. */
    [X_END] = {"ending experiments",
               "WITH e AS (UPDATE experiments x SET ended_at = te_ts($1), webhook_state = CASE "
               "WHEN x.callback_url IS NOT NULL THEN 'pending' END, webhook_next_at = te_ts($1), "
               "webhook_attempts = 0 WHERE " ENDED_NOW("x") " RETURNING x.id, x.cancelled_at) "
               "INSERT INTO task_events (ts, kind, experiment_id, status) SELECT $1, "
               "'experiment', id, CASE WHEN cancelled_at IS NULL THEN 'completed' ELSE "
               "'cancelled' END FROM e"},
};

/* The per-slot arrays of an experiment's tasks, as array literals. */
struct slot_arrays {
    struct buf id, problem, params, slot;
};

static void slot_arrays_reset(struct slot_arrays *a)
{
    buf_reset(&a->id);
    buf_reset(&a->problem);
    buf_reset(&a->params);
    buf_reset(&a->slot);
}

static int slot_arrays_build(struct slot_arrays *a, struct task *const *tasks, size_t n)
{
    struct buf *const all[4] = {&a->id, &a->problem, &a->params, &a->slot};
    int rc = pg_arrays_open(all, 4);

    for (size_t i = 0; rc == 0 && i < n; i++) {
        bool ok = true;
        char *params = pg_json_text(tasks[i]->parameters, &ok);
        char *slot = pg_json_text(tasks[i]->slot, &ok);

        if (!ok || !params || !slot || pg_array_add(&a->id, tasks[i]->id, false) < 0 ||
            pg_array_add(&a->problem, tasks[i]->problem_id, false) < 0 ||
            pg_array_add(&a->params, params, false) < 0 || pg_array_add(&a->slot, slot, false) < 0)
            rc = ERR_NOMEM;
        free(params);
        free(slot);
    }
    return rc == 0 ? pg_arrays_close(all, 4) : rc;
}

/* The n tasks of experiment id in one statement, inside the caller's transaction. */
static int insert_tasks(struct pgconn *pc, const char *id, struct task *const *tasks, size_t n)
{
    const struct task *t0 = tasks[0];
    struct slot_arrays a;
    struct num pr, ms, to, mr, at;
    bool ok = true;
    char *meta = pg_json_text(t0->metadata, &ok);
    int rc = ok ? slot_arrays_build(&a, tasks, n) : ERR_NOMEM;

    if (rc == 0) {
        const char *v[12] = {id, num(&pr, t0->priority), t0->backend_type, meta,
                             num(&ms, t0->max_steps), num(&to, t0->timeout_seconds),
                             num(&mr, t0->max_retries), num(&at, t0->created_at), a.id.data,
                             a.problem.data, a.params.data, a.slot.data};
        PQclear(pg_run(pc, &exp_q[X_TASKS], 12, v, &rc));
    }
    if (ok)
        slot_arrays_reset(&a);
    free(meta);
    return rc;
}

struct create {
    const struct experiment *e;
    struct task *const *tasks;
    size_t n;
    size_t added;
};

static int create_body(struct pgconn *pc, void *ctx)
{
    struct create *x = ctx;
    const struct experiment *e = x->e;
    bool ok = true;
    char *spec = pg_json_text(e->spec, &ok), *meta = pg_json_text(e->metadata, &ok);
    struct num at;
    const char *v[6] = {e->id, e->name, spec, meta, e->callback_url, num(&at, e->created_at)};
    int rc = ERR_NOMEM;

    if (ok) {
        PQclear(pg_run(pc, &exp_q[X_INSERT], 6, v, &rc));
        if (rc == 0 && x->n)
            rc = insert_tasks(pc, e->id, x->tasks, x->n);
    }
    free(spec);
    free(meta);
    return rc;
}

int pg_experiment_create(struct store *st, const struct experiment *e, struct task *const *tasks,
                         size_t n)
{
    struct create x = {e, tasks, n, 0};
    int rc = pg_in_tx(st, create_body, &x);

    if (rc == 0 && n)
        pg_tasks_queued(P(st)); /* committed: other servers' workers may claim them */
    return rc;
}

struct get {
    const char *id;
    struct experiment *e;
};

static int get_body(struct pgconn *pc, void *ctx)
{
    struct get *x = ctx;
    const char *v[1] = {x->id};
    int rc = pg_take(pc, &exp_q[X_GET], 1, v, rows_take_experiment, &x->e);

    if (rc == 0)
        rc = pg_take(pc, &exp_q[X_COUNTS], 1, v, rows_take_experiment_counts, x->e);
    return rc;
}

int pg_experiment_get(struct store *st, const char *id, struct experiment **out)
{
    struct get x = {id, NULL};
    int rc = pg_in_tx(st, get_body, &x); /* one snapshot for the row and its counts */

    if (rc < 0) {
        experiment_free(x.e);
        return rc;
    }
    *out = x.e;
    return 0;
}

int pg_experiment_list(struct store *st, int64_t limit, int64_t offset, json_t **items,
                       int64_t *total)
{
    struct num l, o;
    const char *v[2] = {num(&l, limit), num(&o, offset)};
    struct rows_ints count = {.n = 1};
    json_t *arr = NULL;
    int rc = pg_read_with(st, &exp_q[X_LIST_COUNT], 0, NULL, rows_take_ints, &count);

    if (rc == 0)
        rc = pg_read(st, &exp_q[X_LIST], 2, v, rows_experiment_json, &arr);
    if (rc < 0)
        return rc;
    *items = arr;
    *total = count.v[0];
    return 0;
}

int pg_experiment_scoreboard(struct store *st, const char *id, json_t **rows)
{
    const char *v[1] = {id};

    return pg_read(st, &exp_q[X_BOARD], 1, v, rows_board_sums, rows);
}

struct cancel {
    const char *id;
    int64_t now;
    json_t *running;
};

static int cancel_body(struct pgconn *pc, void *ctx)
{
    struct cancel *x = ctx;
    struct num at;
    const char *v[2] = {x->id, num(&at, x->now)};
    char *found = NULL;
    int rc = pg_take(pc, &exp_q[X_CANCEL], 2, v, rows_take_text, &found);

    free(found);
    if (rc == 0)
        rc = pg_take(pc, &exp_q[X_CANCEL_TASKS], 2, v, rows_take_running_ids, x->running);
    return rc;
}

int pg_experiment_cancel(struct store *st, const char *id, int64_t now, json_t **running)
{
    struct cancel x = {id, now, json_array()};
    int rc = x.running ? pg_in_tx(st, cancel_body, &x) : ERR_NOMEM;

    if (rc < 0) {
        json_decref(x.running);
        return rc;
    }
    *running = x.running;
    return 0;
}

int pg_experiment_slots(struct store *st, const char *id, bool unsolved, json_t **slots)
{
    const char *v[1] = {id};

    return pg_read(st, &exp_q[unsolved ? X_SLOTS_UNSOLVED : X_SLOTS_FAILED], 1, v,
                   rows_json_column, slots);
}

static int add_body(struct pgconn *pc, void *ctx)
{
    struct create *x = ctx;
    struct rows_array retired = {rows_json_column, false, NULL};
    struct task **chosen = NULL;
    struct buf slots;
    size_t m = 0;
    int rc = 0;

    buf_init(&slots, SIZE_MAX / 2);
    rc = buf_append(&slots, "{", 1);
    for (size_t i = 0; rc == 0 && i < x->n; i++) {
        bool ok = true;
        char *s = pg_json_text(x->tasks[i]->slot, &ok);
        rc = ok && s ? pg_array_add(&slots, s, false) : ERR_NOMEM;
        free(s);
    }
    if (rc == 0)
        rc = buf_append(&slots, "}", 1);
    if (rc == 0) {
        const char *v[2] = {x->e->id, slots.data};
        rc = pg_take(pc, &exp_q[X_RETIRE], 2, v, rows_take_array, &retired);
    }
    buf_reset(&slots);
    /* Only the slots whose current task had ended were retired (another rerun's pending
     * task is kept): only those get a new one. */
    if (rc == 0 && !(chosen = calloc(x->n ? x->n : 1, sizeof(*chosen))))
        rc = ERR_NOMEM;
    for (size_t i = 0; rc == 0 && i < x->n; i++) {
        size_t k;
        json_t *slot;

        json_array_foreach(retired.v, k, slot)
            if (json_equal(slot, x->tasks[i]->slot)) {
                chosen[m++] = x->tasks[i];
                break;
            }
    }
    if (rc == 0 && m)
        rc = insert_tasks(pc, x->e->id, chosen, m);
    x->added = rc == 0 ? m : 0;
    free(chosen);
    json_decref(retired.v);
    if (rc == 0) {
        const char *v[1] = {x->e->id};
        PQclear(pg_run(pc, &exp_q[X_REOPEN], 1, v, &rc));
    }
    return rc;
}

int pg_experiments_end(struct store *st, int64_t now, int *n)
{
    struct num a;
    const char *v[1] = {num(&a, now)};

    *n = 0;
    return pg_write(st, &exp_q[X_END], 1, v, n);
}

int pg_experiment_add_tasks(struct store *st, const char *id, struct task *const *tasks,
                            size_t n, size_t *added)
{
    struct experiment e = {0};
    struct create x = {&e, tasks, n, 0};
    int rc;

    snprintf(e.id, sizeof(e.id), "%s", id);
    rc = n ? pg_in_tx(st, add_body, &x) : 0;
    *added = rc == 0 ? x.added : 0;
    if (*added)
        pg_tasks_queued(P(st));
    return rc;
}
