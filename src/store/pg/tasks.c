/* store/pg/tasks: inserting tasks, answering a known idempotency key and waking the
 * workers. The rest of tasks is written once, in store/tasks.c.
 *
 * Inserts that arrive while others are being written are written together: one
 * statement and one commit for all that waited (a group commit made by the server, as
 * PostgreSQL makes one of concurrent commits). Each request still gets its own answer
 * only once its row is committed. A lone insert is written at once, by its own thread,
 * with the single-row statement, so an idle server adds no wait (#17: at 32 concurrent
 * creates the statement triggers, the round trip and the commit of each row were most
 * of the cost; in a batch the statement triggers run once). */
#include "store/pg/pg_int.h"
#include "core/batcher.h"
#include "core/err.h"

#include <stdlib.h>
#include <string.h>

/* Batches written at the same time: one being committed while the next forms. */
#define INSERT_WRITERS 2
#define INSERT_BATCH_MAX 64 /* rows a statement; the rest wait for the next */

/* One waiting insert, on its caller's stack. */
struct pg_insert {
    struct batch_item base;
    struct task *t;          /* the caller's */
    struct task *existing;   /* its key's task when the key was known (caller frees) */
    int rc;
};

static struct pg_insert *insert_of(struct batch_item *it)
{
    return (struct pg_insert *)it;
}

static const struct pg_query task_insert = {
    "inserting a task",
    "INSERT INTO tasks (id, problem_id, status, priority, "
    "backend_type, mode, parameters, metadata, callback_url, idempotency_key, "
    "max_steps, timeout_seconds, created_at, updated_at, max_retries) VALUES ($1, "
    "$2, 'pending', $3, $4, $5, $6::jsonb, $7::jsonb, $8, $9, $10, $11, te_ts($12), "
    "te_ts($12), $13) ON CONFLICT (idempotency_key) DO NOTHING RETURNING seq"};

/* The same, for many rows: a column per array, in arrival order. A key met twice in one
 * batch inserts once (DO NOTHING sees the statement's own row); the other is then
 * answered as a known key. */
static const struct pg_query tasks_insert = {
    "inserting tasks",
    "INSERT INTO tasks (id, problem_id, status, priority, "
    "backend_type, mode, parameters, metadata, callback_url, idempotency_key, "
    "max_steps, timeout_seconds, created_at, updated_at, max_retries) SELECT u.id, "
    "u.problem_id, 'pending', u.priority, u.backend_type, u.mode, u.parameters::jsonb, "
    "u.metadata::jsonb, u.callback_url, u.idempotency_key, u.max_steps, u.timeout_seconds, "
    "te_ts(u.created_at), te_ts(u.created_at), u.max_retries FROM unnest($1::uuid[], "
    "$2::text[], $3::int[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], "
    "$9::text[], $10::int[], $11::int[], $12::bigint[], $13::int[]) WITH ORDINALITY AS "
    "u(id, problem_id, priority, backend_type, mode, parameters, metadata, callback_url, "
    "idempotency_key, max_steps, timeout_seconds, created_at, max_retries, n) ORDER BY u.n "
    "ON CONFLICT (idempotency_key) DO NOTHING RETURNING id::text"};

#define INSERT_COLS 13

/* A task's values as the text parameters of task_insert (and the elements of
 * tasks_insert's arrays), in its column order. */
struct insert_vals {
    struct num n[5];
    char *params, *meta;    /* owned: insert_vals_free */
    const char *v[INSERT_COLS];
};

static int insert_vals_make(struct insert_vals *iv, const struct task *t)
{
    bool ok = true;

    iv->params = pg_json_text(t->parameters, &ok);
    iv->meta = pg_json_text(t->metadata, &ok);
    const char *v[INSERT_COLS] = {t->id, t->problem_id, num(&iv->n[0], t->priority),
                                  t->backend_type, t->mode, iv->params, iv->meta,
                                  t->callback_url, t->idempotency_key,
                                  num(&iv->n[1], t->max_steps),
                                  num(&iv->n[2], t->timeout_seconds),
                                  num(&iv->n[3], t->created_at), num(&iv->n[4], t->max_retries)};
    memcpy(iv->v, v, sizeof(v));
    return ok ? 0 : ERR_NOMEM;
}

static void insert_vals_free(struct insert_vals *iv)
{
    free(iv->params);
    free(iv->meta);
}

/* The single-row statement for w, on pc. */
static void insert_one(struct pg_store *s, struct pgconn *pc, struct pg_insert *w)
{
    struct insert_vals iv;
    struct pg_cursor cur;

    w->rc = insert_vals_make(&iv, w->t);
    if (w->rc == 0) {
        w->rc = pg_open_q(&cur, pc, &task_insert, INSERT_COLS, iv.v);
        if (w->rc == 0 && PQntuples(cur.r) == 0 && w->t->idempotency_key)
            w->rc = db_load_task(&pc->base, true, w->t->idempotency_key, &w->existing);
        else if (w->rc == 0)
            pg_tasks_queued(s); /* committed: other servers' workers may claim it */
        w->rc = pg_end(&cur, w->rc);
    }
    insert_vals_free(&iv);
}

/* The array literals of a batch's columns, in tasks_insert's parameter order. */
static int batch_arrays(struct buf *a, struct pg_insert *batch)
{
    struct buf *all[INSERT_COLS];
    int rc;

    for (int i = 0; i < INSERT_COLS; i++)
        all[i] = &a[i];
    rc = pg_arrays_open(all, INSERT_COLS);
    for (struct batch_item *it = &batch->base; rc == 0 && it; it = it->next) {
        struct insert_vals iv;

        rc = insert_vals_make(&iv, insert_of(it)->t);
        for (int i = 0; rc == 0 && i < INSERT_COLS; i++)
            rc = pg_array_add(&a[i], iv.v[i] ? iv.v[i] : "", !iv.v[i]);
        insert_vals_free(&iv);
    }
    return rc == 0 ? pg_arrays_close(all, INSERT_COLS) : rc;
}

/* Whether id is among the rows r returned. */
static bool returned(PGresult *r, const char *id)
{
    for (int i = 0; i < PQntuples(r); i++)
        if (strcmp(PQgetvalue(r, i, 0), id) == 0)
            return true;
    return false;
}

/* Several inserts in one statement on pc. When the statement fails for a reason other
 * than the connection (a row the database refuses), each is tried alone, so one bad
 * row fails only its own request. */
static void insert_many(struct pg_store *s, struct pgconn *pc, struct pg_insert *batch)
{
    struct buf a[INSERT_COLS] = {0};
    const char *v[INSERT_COLS];
    PGresult *r = NULL;
    int rc = batch_arrays(a, batch);

    for (int i = 0; i < INSERT_COLS; i++)
        v[i] = a[i].data;
    if (rc == 0)
        r = pg_run(pc, &tasks_insert, INSERT_COLS, v, &rc);
    for (int i = 0; i < INSERT_COLS; i++)
        buf_reset(&a[i]);
    if (rc == ERR_STORE) {
        for (struct batch_item *it = &batch->base; it; it = it->next)
            insert_one(s, pc, insert_of(it));
        return;
    }
    for (struct batch_item *it = &batch->base; it; it = it->next) {
        struct pg_insert *w = insert_of(it);

        w->rc = rc;
        if (rc == 0 && !returned(r, w->t->id))
            w->rc = w->t->idempotency_key ? db_load_task(&pc->base, true, w->t->idempotency_key,
                                                         &w->existing)
                                          : ERR_STORE; /* only a key can conflict */
    }
    if (rc == 0 && PQntuples(r) > 0)
        pg_tasks_queued(s);
    PQclear(r);
}

/* The batcher's run: a lone insert by the single-row statement, several by one. */
static void insert_batch(void *ctx, struct batch_item *batch)
{
    struct pg_store *s = ctx;
    struct pgconn *pc = pg_conn_get(s);

    if (!batch->next)
        insert_one(s, pc, insert_of(batch));
    else
        insert_many(s, pc, insert_of(batch));
    pg_conn_put(s, pc);
}

void pg_inserts_init(struct pg_store *s)
{
    batcher_init(&s->inserts, INSERT_WRITERS, INSERT_BATCH_MAX, NULL, insert_batch, s);
}

int pg_task_insert(struct store *st, struct task *t, struct task **existing)
{
    struct pg_insert me = {.t = t};

    batcher_do(&P(st)->inserts, &me.base);
    *existing = me.existing;
    return me.rc;
}
