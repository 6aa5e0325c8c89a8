/* store/pg/experiments: creating an experiment and rerunning its slots: one INSERT ...
 * unnest() for all the tasks of a call, so 10,000 are one statement. The rest of
 * experiments is written once, in store/experiments.c. */
#include "store/pg/pg_int.h"
#include "core/err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
    X_INSERT,
    X_TASKS,
    X_RETIRE,
    X_REOPEN,
    X_N
};

static const struct pg_query exp_q[X_N] = {
    [X_INSERT] = {"creating an experiment",
                  "INSERT INTO experiments (id, name, spec, metadata, callback_url, created_at) "
                  "VALUES ($1, $2, $3::jsonb, $4::jsonb, $5, te_ts($6))"},
    /* The tasks of one call share the template's fields; what differs per slot comes in
     * arrays. One statement, so the statement triggers count and journal them once. */
    [X_TASKS] = {"queueing an experiment's tasks",
                 "WITH ins AS (INSERT INTO tasks (id, problem_id, status, priority, "
                 "backend_type, mode, parameters, metadata, max_steps, timeout_seconds, "
                 "max_retries, experiment_id, slot, created_at, updated_at) SELECT u.id::uuid, "
                 "u.problem_id, 'pending', $2, $3, 'batch', u.parameters::jsonb, $4::jsonb, $5, "
                 "$6, $7, $1, u.slot::jsonb, te_ts($8), te_ts($8) FROM unnest($9::text[], "
                 "$10::text[], $11::text[], $12::text[]) AS u(id, problem_id, parameters, slot) "
                 "RETURNING backend_type) SELECT pg_notify('taskexec_task', min(backend_type)) "
                 "FROM ins"},
    [X_RETIRE] = {"replacing an experiment's slots",
                  "UPDATE tasks SET slot_current = false WHERE experiment_id = $1 AND "
                  "slot_current AND slot = ANY($2::jsonb[]) AND status IN ('completed', "
                  "'failed', 'timeout', 'cancelled') RETURNING slot::text"},
    [X_REOPEN] = {"reopening an experiment",
                  "UPDATE experiments SET ended_at = NULL, webhook_state = NULL WHERE id = $1"},
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

static int create_body(struct db_conn *dc, void *ctx)
{
    struct pgconn *pc = pg_conn(dc);
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

    return pg_in_tx(st, create_body, &x);
}

static int add_body(struct db_conn *dc, void *ctx)
{
    struct pgconn *pc = pg_conn(dc);
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

int pg_experiment_add_tasks(struct store *st, const char *id, struct task *const *tasks,
                            size_t n, size_t *added)
{
    struct experiment e = {0};
    struct create x = {&e, tasks, n, 0};
    int rc;

    snprintf(e.id, sizeof(e.id), "%s", id);
    rc = n ? pg_in_tx(st, add_body, &x) : 0;
    *added = rc == 0 ? x.added : 0;
    return rc;
}
