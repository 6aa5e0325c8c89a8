/* store/db: the wrappers of a backend's struct db_ops and the reads made of them,
 * written once for both backends. See db.h for the DESIGN. */
#include "store/db.h"
#include "core/err.h"

int db_take(struct db_conn *c, const struct db_stmt *q, const struct db_arg *args, int n,
            rows_take_fn take, void *ctx)
{
    return c->ops->take(c, q, args, n, take, ctx);
}

int db_take_once(struct db_conn *c, const struct db_stmt *q, const struct db_arg *args, int n,
                 rows_take_fn take, void *ctx)
{
    return c->ops->take_once(c, q, args, n, take, ctx);
}

int db_run(struct db_conn *c, const struct db_stmt *q, const struct db_arg *args, int n,
           int *changes)
{
    return c->ops->run(c, q, args, n, changes);
}

int db_insert_messages(struct db_conn *c, const char *task_id, const struct msg_entry *e,
                       size_t n)
{
    return c->ops->insert_messages(c, task_id, e, n);
}

int db_insert_logs(struct db_conn *c, const char *task_id, const struct log_entry *e, size_t n)
{
    return c->ops->insert_logs(c, task_id, e, n);
}

int db_insert_tasks(struct db_conn *c, const char *id, struct task *const *tasks, size_t n,
                    bool retire, size_t *added)
{
    return c->ops->insert_tasks(c, id, tasks, n, retire, added);
}

int db_on_read(struct store *st, db_body_fn body, void *ctx)
{
    return st->db->on_read(st, body, ctx);
}

int db_read_tx(struct store *st, db_body_fn body, void *ctx)
{
    return st->db->read_tx(st, body, ctx);
}

int db_in_write(struct store *st, db_body_fn body, void *ctx)
{
    return st->db->in_write(st, body, ctx);
}

int db_on_write(struct store *st, db_body_fn body, void *ctx)
{
    return st->db->on_write(st, body, ctx);
}

int db_write(struct store *st, const struct db_stmt *q, const struct db_arg *args, int n,
             int *changes)
{
    return st->db->write(st, q, args, n, changes);
}

int db_one_i64(struct db_conn *c, const struct db_stmt *q, const struct db_arg *args, int n,
               int64_t *out)
{
    struct rows_ints x = {.n = 1};
    int rc = db_take(c, q, args, n, rows_take_ints, &x);

    if (rc == 0)
        *out = x.v[0];
    return rc;
}

/* The context of take_body: one statement and its consumer. */
struct take_one {
    const struct db_stmt *q;
    const struct db_arg *args;
    int n;
    rows_take_fn take;
    void *ctx;
};

static int take_body(struct db_conn *c, void *ctx)
{
    struct take_one *x = ctx;

    return db_take(c, x->q, x->args, x->n, x->take, x->ctx);
}

int db_read_with(struct store *st, const struct db_stmt *q, const struct db_arg *args, int n,
                 rows_take_fn take, void *ctx)
{
    struct take_one x = {q, args, n, take, ctx};

    return db_on_read(st, take_body, &x);
}

int db_read(struct store *st, const struct db_stmt *q, const struct db_arg *args, int n,
            json_t *(*build)(const struct store_row *r), json_t **out)
{
    struct rows_array a = {.build = build};
    int rc = db_read_with(st, q, args, n, rows_take_array, &a);

    return rows_give(rc, a.v, out);
}

int db_read_one(struct store *st, const struct db_stmt *q, const struct db_arg *args, int n,
                json_t *(*build)(const struct store_row *r), json_t **out)
{
    struct rows_array a = {.build = build, .one = true};
    int rc = db_read_with(st, q, args, n, rows_take_array, &a);

    return rows_give(rc, a.v, out);
}

/* The context of page_body. */
struct page {
    const struct db_stmt *count, *page;
    int n_count, n;
    const struct db_arg *args;
    struct rows_array a;
    int64_t total;
};

static int page_body(struct db_conn *c, void *ctx)
{
    struct page *x = ctx;
    int rc = db_one_i64(c, x->count, x->args, x->n_count, &x->total);

    return rc == 0 ? db_take(c, x->page, x->args, x->n, rows_take_array, &x->a) : rc;
}

int db_read_page(struct store *st, const struct db_stmt *count, int n_count,
                 const struct db_stmt *page, const struct db_arg *args, int n,
                 json_t *(*build)(const struct store_row *r), json_t **items, int64_t *total)
{
    struct page x = {count, page, n_count, n, args, {.build = build}, 0};
    int rc = db_on_read(st, page_body, &x);

    if (rc == 0)
        *total = x.total;
    return rows_give(rc, x.a.v, items);
}
