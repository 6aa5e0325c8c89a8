/* store/pg/experiments: the db_ops insert_tasks of PostgreSQL: one INSERT ... unnest()
 * for all the tasks of a call, so 10,000 are one statement, and a rerun's slots retired
 * in one statement too. The rest of experiments is written once, in
 * store/experiments.c. */
#include "store/pg/pg_int.h"
#include "core/err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The tasks of one call share the template's fields; what differs per slot comes in
 * arrays. One statement, so the statement triggers count and journal them once. */
static const struct pg_query tasks_q = {
    "queueing an experiment's tasks",
    "INSERT INTO tasks (id, problem_id, status, priority, "
    "backend_type, mode, parameters, metadata, max_steps, timeout_seconds, "
    "max_retries, experiment_id, slot, created_at, updated_at) SELECT u.id::uuid, "
    "u.problem_id, 'pending', $2, $3, 'batch', u.parameters::jsonb, $4::jsonb, $5, "
    "$6, $7, $1, u.slot::jsonb, te_ts($8), te_ts($8) FROM unnest($9::text[], "
    "$10::text[], $11::text[], $12::text[]) AS u(id, problem_id, parameters, slot)"};

static const struct pg_query retire_q = {
    "replacing an experiment's slots",
    "UPDATE tasks SET slot_current = false WHERE experiment_id = $1 AND "
    "slot_current AND slot = ANY($2::jsonb[]) AND status IN ('completed', "
    "'failed', 'timeout', 'cancelled') RETURNING slot::text"};

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
        PQclear(pg_run(pc, &tasks_q, 12, v, &rc));
        pc->queued = pc->queued || rc == 0; /* announced at COMMIT (pg_in_tx) */
    }
    if (ok)
        slot_arrays_reset(&a);
    free(meta);
    return rc;
}

/* Retires the current tasks of the slots of tasks[0..n) that have ended (another
 * rerun's pending task is kept), and picks the tasks of those slots: *chosen (caller
 * frees, on error too) holds *m of them. */
static int retire_slots(struct pgconn *pc, const char *id, struct task *const *tasks, size_t n,
                        struct task ***chosen, size_t *m)
{
    struct rows_array retired = {rows_json_column, false, NULL};
    struct buf slots;
    int rc = pg_arrays_open((struct buf *const[]){&slots}, 1);

    for (size_t i = 0; rc == 0 && i < n; i++) {
        bool ok = true;
        char *s = pg_json_text(tasks[i]->slot, &ok);
        rc = ok && s ? pg_array_add(&slots, s, false) : ERR_NOMEM;
        free(s);
    }
    if (rc == 0)
        rc = pg_arrays_close((struct buf *const[]){&slots}, 1);
    if (rc == 0) {
        const char *v[2] = {id, slots.data};
        rc = pg_take(pc, &retire_q, 2, v, rows_take_array, &retired);
    }
    buf_reset(&slots);
    if (rc == 0 && !(*chosen = calloc(n ? n : 1, sizeof(**chosen))))
        rc = ERR_NOMEM;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        size_t k;
        json_t *slot;

        json_array_foreach(retired.v, k, slot)
            if (json_equal(slot, tasks[i]->slot)) {
                (*chosen)[(*m)++] = tasks[i];
                break;
            }
    }
    json_decref(retired.v);
    return rc;
}

int pg_insert_tasks(struct db_conn *dc, const char *id, struct task *const *tasks, size_t n,
                    bool retire, size_t *added)
{
    struct pgconn *pc = pg_conn(dc);
    struct task **chosen = NULL;
    size_t m = 0;
    int rc = 0;

    if (!retire) {
        rc = n ? insert_tasks(pc, id, tasks, n) : 0;
        *added = rc == 0 ? n : 0;
        return rc;
    }
    rc = retire_slots(pc, id, tasks, n, &chosen, &m);
    if (rc == 0 && m)
        rc = insert_tasks(pc, id, chosen, m);
    *added = rc == 0 ? m : 0;
    free(chosen);
    return rc;
}
