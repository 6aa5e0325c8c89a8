/* store/sqlite/db: the SQLite backend's connections (one writer, a pool of readers),
 * transactions, the statement cache, value binding and column reading, open and
 * close, and the ops table (store_sqlite_ops). See sqlite_int.h for the DESIGN. */
#include "store/sqlite/sqlite_int.h"
#include "core/err.h"
#include "core/log.h"
#include "core/clock.h"

#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int sq_fail_db(sqlite3 *db, const char *what)
{
    log_error("sqlite: %s: %s", what, sqlite3_errmsg(db));
    return ERR_STORE;
}

int sq_exec_sql(sqlite3 *db, const char *sql)
{
    char *msg = NULL;

    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        log_error("sqlite: %s", msg ? msg : sqlite3_errmsg(db));
        sqlite3_free(msg);
        return ERR_STORE;
    }
    return 0;
}

static void bind_text(sqlite3_stmt *s, int i, const char *v)
{
    if (v)
        sqlite3_bind_text(s, i, v, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(s, i);
}

/* Binds a JSON value as compact text (NULL stays NULL). ERR_NOMEM if it cannot dump. */
static int bind_json(sqlite3_stmt *s, int i, const json_t *v)
{
    char *text;

    if (!v) {
        sqlite3_bind_null(s, i);
        return 0;
    }
    text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!text)
        return ERR_NOMEM;
    sqlite3_bind_text(s, i, text, -1, free);
    return 0;
}

/* Binds v as JSON text, or the literal "{}" when v is NULL. */
static int bind_object(sqlite3_stmt *s, int i, const json_t *v)
{
    if (!v) {
        sqlite3_bind_text(s, i, "{}", 2, SQLITE_STATIC);
        return 0;
    }
    return bind_json(s, i, v);
}

/* ---- the cursor and its rows ---- */

static const struct store_row_ops row_ops;

static sqlite3_stmt *stmt_of(const struct store_row *r)
{
    return r->impl;
}

static bool col_is_null(const struct store_row *r, int col)
{
    return sqlite3_column_type(stmt_of(r), col) == SQLITE_NULL;
}

static const char *col_text(const struct store_row *r, int col)
{
    return (const char *)sqlite3_column_text(stmt_of(r), col);
}

static int64_t col_i64(const struct store_row *r, int col)
{
    return sqlite3_column_int64(stmt_of(r), col);
}

static double col_f64(const struct store_row *r, int col)
{
    return sqlite3_column_double(stmt_of(r), col);
}

static bool col_bool(const struct store_row *r, int col)
{
    return sqlite3_column_int(stmt_of(r), col) != 0;
}

static const struct store_row_ops row_ops = {
    .is_null = col_is_null,
    .text = col_text,
    .i64 = col_i64,
    .f64 = col_f64,
    .boolean = col_bool,
};

static int cursor_next(struct store_cursor *base)
{
    return sq_next((struct sq_cursor *)base);
}

static void cursor_init(struct sq_cursor *cur, struct conn *c, const char *what)
{
    memset(cur, 0, sizeof(*cur));
    cur->base.row.ops = &row_ops;
    cur->base.next = cursor_next;
    cur->c = c;
    cur->what = what;
}

/* The one way statements are prepared. */
static int prepare(struct sq_cursor *cur, const char *sql, unsigned flags)
{
    if (sqlite3_prepare_v3(cur->c->db, sql, -1, flags, &cur->s, NULL) != SQLITE_OK) {
        cur->s = NULL;
        cur->rc = sq_fail_db(cur->c->db, cur->what);
        return cur->rc;
    }
    cur->base.row.impl = cur->s;
    return 0;
}

/* A cursor on the statement of table entry key (a struct sq_query or db_stmt),
 * prepared on c once, on first use. */
static int open_keyed(struct sq_cursor *cur, struct conn *c, const void *key, const char *what,
                      const char *sql)
{
    int rc;

    cursor_init(cur, c, what);
    cur->cached = true;
    for (int i = 0; i < c->n_cached; i++) {
        if (c->cache[i].key == key) {
            cur->s = c->cache[i].s;
            cur->base.row.impl = cur->s;
            return 0;
        }
    }
    rc = prepare(cur, sql, SQLITE_PREPARE_PERSISTENT);
    if (rc == 0 && c->n_cached < SQ_CACHE) {
        c->cache[c->n_cached].key = key;
        c->cache[c->n_cached].s = cur->s;
        c->n_cached++;
    } else if (rc == 0) {
        cur->cached = false; /* a full cache: this one is finalized after use */
    }
    return rc;
}

int sq_open_q(struct sq_cursor *cur, struct conn *c, const struct sq_query *q)
{
    return open_keyed(cur, c, q, q->what, q->sql);
}

int sq_open_sql(struct sq_cursor *cur, struct conn *c, const char *what, const char *sql)
{
    cursor_init(cur, c, what);
    return prepare(cur, sql, 0);
}

int sq_next(struct sq_cursor *cur)
{
    int step;

    if (cur->rc < 0)
        return cur->rc;
    step = sqlite3_step(cur->s);
    if (step == SQLITE_ROW)
        return STORE_ROW;
    if (step == SQLITE_DONE)
        return STORE_DONE;
    cur->rc = sq_fail_db(cur->c->db, cur->what);
    return cur->rc;
}

int sq_exec(struct sq_cursor *cur)
{
    int rc;

    while ((rc = sq_next(cur)) == STORE_ROW)
        ;
    return rc;
}

int sq_end(struct sq_cursor *cur, int rc)
{
    if (cur->s && cur->cached) {
        sqlite3_reset(cur->s);
        sqlite3_clear_bindings(cur->s);
    } else if (cur->s) {
        sqlite3_finalize(cur->s);
    }
    cur->s = NULL;
    return rc < 0 ? rc : cur->rc;
}

/* Binds a at parameter k (from 1). */
static int bind_one(sqlite3_stmt *s, int k, const struct db_arg *a)
{
    switch (a->kind) {
    case DB_INT:
        sqlite3_bind_int64(s, k, a->i);
        return 0;
    case DB_REAL:
        sqlite3_bind_double(s, k, a->r);
        return 0;
    case DB_JSON:
        return bind_json(s, k, a->json);
    case DB_OBJECT:
        return bind_object(s, k, a->json);
    case DB_TEXT:
        bind_text(s, k, a->text);
        return 0;
    }
    return 0;
}

/* The parameter args[i] binds to: ?i+1, or in SQL written for both dialects (whose
 * parameters SQLite knows by the names $1..$n, numbered as they first appear) the one
 * named $i+1, or 0 when the SQL does not use it. */
static int param_of(sqlite3_stmt *s, bool named, int i)
{
    char name[16];

    if (!named)
        return i + 1;
    snprintf(name, sizeof(name), "$%d", i + 1);
    return sqlite3_bind_parameter_index(s, name);
}

int sq_bind(sqlite3_stmt *s, const struct db_arg *args, int n)
{
    const char *first = sqlite3_bind_parameter_name(s, 1);
    bool named = first && first[0] == '$';
    int rc = 0;

    for (int i = 0; rc == 0 && i < n; i++) {
        int k = param_of(s, named, i);

        if (k > 0)
            rc = bind_one(s, k, &args[i]);
    }
    return rc;
}

/* Opens a cursor on q and binds args to it; the cursor is to be ended either way. */
static int open_bound(struct sq_cursor *cur, struct conn *c, const struct sq_query *q,
                      const struct db_arg *args, int n)
{
    int rc = sq_open_q(cur, c, q);

    return rc == 0 ? sq_bind(cur->s, args, n) : rc;
}

/* Binds args to the cursor just opened (unless opening failed, rc), hands it to take
 * and ends it. */
static int bind_take(struct sq_cursor *cur, int rc, const struct db_arg *args, int n,
                     rows_take_fn take, void *ctx)
{
    if (rc == 0)
        rc = sq_bind(cur->s, args, n);
    if (rc == 0)
        rc = take(&cur->base, ctx);
    return sq_end(cur, rc);
}

int sq_take(struct conn *c, const struct sq_query *q, const struct db_arg *args, int n,
            rows_take_fn take, void *ctx)
{
    struct sq_cursor cur;

    return bind_take(&cur, sq_open_q(&cur, c, q), args, n, take, ctx);
}

/* Steps a cursor just opened and bound (unless that failed, rc) to its end, adding
 * the rows it changed to *changes (may be NULL), and ends it. */
static int run_opened(struct sq_cursor *cur, int rc, int *changes)
{
    if (rc == 0)
        rc = sq_exec(cur);
    if (rc == 0 && changes)
        *changes += sqlite3_changes(cur->c->db);
    return sq_end(cur, rc);
}

int sq_run(struct conn *c, const struct sq_query *q, const struct db_arg *args, int n,
           int *changes)
{
    struct sq_cursor cur;

    return run_opened(&cur, open_bound(&cur, c, q, args, n), changes);
}

int sq_one_i64(struct conn *c, const struct sq_query *q, const struct db_arg *args, int n,
               int64_t *out)
{
    struct rows_ints x = {.n = 1};
    int rc = sq_take(c, q, args, n, rows_take_ints, &x);

    if (rc == 0)
        *out = x.v[0];
    return rc;
}

/* ---- struct db_ops: what the code above both backends calls (store/db.h) ---- */

/* Opens a cursor on q's SQLite text and binds args; the cursor is ended either way. */
static int open_stmt(struct sq_cursor *cur, struct db_conn *dc, const struct db_stmt *q,
                     const struct db_arg *args, int n)
{
    int rc = open_keyed(cur, sq_conn(dc), q, q->what, q->sqlite);

    return rc == 0 ? sq_bind(cur->s, args, n) : rc;
}

static int db_take_sq(struct db_conn *dc, const struct db_stmt *q, const struct db_arg *args,
                      int n, rows_take_fn take, void *ctx)
{
    struct sq_cursor cur;
    int rc;

    if (!q->sqlite)
        return 0; /* not a statement of this dialect */
    rc = open_stmt(&cur, dc, q, args, n);
    if (rc == 0)
        rc = take(&cur.base, ctx);
    return sq_end(&cur, rc);
}

static int db_take_once_sq(struct db_conn *dc, const struct db_stmt *q,
                           const struct db_arg *args, int n, rows_take_fn take, void *ctx)
{
    struct sq_cursor cur;

    return bind_take(&cur, sq_open_sql(&cur, sq_conn(dc), q->what, q->sqlite), args, n, take,
                     ctx);
}

static int db_run_sq(struct db_conn *dc, const struct db_stmt *q, const struct db_arg *args,
                     int n, int *changes)
{
    struct sq_cursor cur;

    if (!q->sqlite)
        return 0; /* not a statement of this dialect */
    return run_opened(&cur, open_stmt(&cur, dc, q, args, n), changes);
}

static int db_on_read_sq(struct store *st, db_body_fn body, void *ctx)
{
    struct rd r = sq_rd_get(st);
    int rc = body(&r.c->base, ctx);

    sq_rd_put(&r);
    return rc;
}

/* The context of write_stmt. */
struct write_stmt {
    const struct db_stmt *q;
    const struct db_arg *args;
    int n;
    int *changes;
};

static int write_stmt(struct db_conn *dc, void *ctx)
{
    struct write_stmt *w = ctx;

    return db_run_sq(dc, w->q, w->args, w->n, w->changes);
}

static int db_write_sq(struct store *st, const struct db_stmt *q, const struct db_arg *args,
                       int n, int *changes)
{
    struct write_stmt w = {q, args, n, changes};

    if (changes)
        *changes = 0;
    return sq_in_write(st, write_stmt, &w);
}

static const struct db_ops sq_db_ops = {
    .take = db_take_sq,
    .take_once = db_take_once_sq,
    .run = db_run_sq,
    .insert_messages = sq_insert_messages,
    .insert_logs = sq_insert_logs,
    .insert_tasks = sq_insert_tasks,
    .on_read = db_on_read_sq,
    .read_tx = db_on_read_sq,
    .in_write = sq_in_write,
    .on_write = sq_in_write,
    .write = db_write_sq,
};

/* regexp(pattern, text): SQLite's REGEXP operator, for the claim's supported_problems
 * (the regular expression of store/rules.c). The compiled pattern is kept with the
 * statement while the pattern argument stays the same. */
static void regex_free(void *p)
{
    regfree(p);
    free(p);
}

static void regexp_fn(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    regex_t *re = sqlite3_get_auxdata(ctx, 0);
    const char *text = (const char *)sqlite3_value_text(argv[1]);

    (void)argc;
    if (!re) {
        const char *pattern = (const char *)sqlite3_value_text(argv[0]);
        re = malloc(sizeof(*re));
        if (!re || !pattern || regcomp(re, pattern, REG_EXTENDED | REG_NOSUB) != 0) {
            free(re);
            sqlite3_result_error(ctx, "regexp: bad pattern", -1);
            return;
        }
        sqlite3_set_auxdata(ctx, 0, re, regex_free);
        re = sqlite3_get_auxdata(ctx, 0);
        if (!re) {
            sqlite3_result_error_nomem(ctx);
            return;
        }
    }
    sqlite3_result_int(ctx, text && regexec(re, text, 0, NULL, 0) == 0);
}

static int conn_open(struct conn *c, const char *path)
{
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;

    memset(c, 0, sizeof(*c));
    c->base.ops = &sq_db_ops;
    if (sqlite3_open_v2(path, &c->db, flags, NULL) != SQLITE_OK) {
        int rc = sq_fail_db(c->db, path);
        sqlite3_close(c->db);
        c->db = NULL;
        return rc;
    }
    sqlite3_busy_timeout(c->db, 10000);
    if (sqlite3_create_function_v2(c->db, "regexp", 2, SQLITE_UTF8 | SQLITE_DETERMINISTIC,
                                   NULL, regexp_fn, NULL, NULL, NULL) != SQLITE_OK)
        return sq_fail_db(c->db, "adding regexp()");
    /* synchronous=FULL: a committed task survives a power cut, not just a crash. */
    return sq_exec_sql(c->db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; "
                           "PRAGMA foreign_keys=ON; PRAGMA temp_store=MEMORY;");
}

static void conn_close(struct conn *c)
{
    for (int i = 0; i < c->n_cached; i++)
        sqlite3_finalize(c->cache[i].s);
    sqlite3_close(c->db);
    memset(c, 0, sizeof(*c));
}

/* A rollback's own failure is logged; the caller's error is what is returned. */
static void rollback(sqlite3 *db)
{
    if (sq_exec_sql(db, "ROLLBACK") < 0)
        log_warn("sqlite: the rollback failed too");
}

int sq_in_write(struct store *st, db_body_fn body, void *ctx)
{
    struct sqlite_store *s = S(st);
    sqlite3 *db = s->writer.db;
    int rc;

    pthread_mutex_lock(&s->wlock);
    rc = sq_exec_sql(db, "BEGIN IMMEDIATE");
    if (rc == 0)
        rc = body(&s->writer.base, ctx);
    if (rc >= 0 && sq_exec_sql(db, "COMMIT") < 0) {
        rollback(db);
        rc = ERR_STORE;
    } else if (rc < 0 && !sqlite3_get_autocommit(db)) {
        rollback(db); /* a failed BEGIN left no transaction to roll back */
    }
    pthread_mutex_unlock(&s->wlock);
    return rc;
}

static struct conn *reader_get(struct sqlite_store *s)
{
    struct conn *c = NULL;

    pthread_mutex_lock(&s->rlock);
    while (!c) {
        for (int i = 0; i < N_READERS && !c; i++)
            if (!s->readers[i].busy)
                c = &s->readers[i];
        if (!c)
            pthread_cond_wait(&s->rcond, &s->rlock);
    }
    c->busy = true;
    pthread_mutex_unlock(&s->rlock);
    return c;
}

static void reader_put(struct sqlite_store *s, struct conn *c)
{
    pthread_mutex_lock(&s->rlock);
    c->busy = false;
    pthread_cond_signal(&s->rcond);
    pthread_mutex_unlock(&s->rlock);
}

static void ensure_parent_dir(const char *path)
{
    char *dir = strdup(path), *slash;

    if (!dir)
        return;
    slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = '\0';
        for (char *p = dir + 1; *p; p++) {
            if (*p == '/') {
                *p = '\0';
                mkdir(dir, 0755);
                *p = '/';
            }
        }
        mkdir(dir, 0755);
    }
    free(dir);
}

static void sq_close(struct store *st);

static int sq_open(const char *path, struct store **out)
{
    struct sqlite_store *s = calloc(1, sizeof(*s));
    int rc = ERR_NOMEM;

    if (!s)
        return ERR_NOMEM;
    s->base.ops = &store_sqlite_ops;
    s->base.db = &sq_db_ops;
    pthread_mutex_init(&s->wlock, NULL);
    pthread_mutex_init(&s->rlock, NULL);
    pthread_cond_init(&s->rcond, NULL);
    s->path = strdup(path);
    if (!s->path)
        goto fail;
    if (strcmp(path, ":memory:") != 0)
        ensure_parent_dir(path);
    rc = conn_open(&s->writer, path);
    if (rc < 0)
        goto fail;
    rc = sq_migrate(&s->writer);
    if (rc < 0)
        goto fail;
    for (int i = 0; i < N_READERS; i++) {
        /* An in-memory database is private to its connection: read through the writer. */
        if (!strcmp(path, ":memory:"))
            break;
        rc = conn_open(&s->readers[i], path);
        if (rc < 0)
            goto fail;
    }
    *out = &s->base;
    return 0;
fail:
    sq_close(&s->base);
    return rc < 0 ? rc : ERR_STORE;
}

static void sq_close(struct store *st)
{
    struct sqlite_store *s = S(st);

    for (int i = 0; i < N_READERS; i++)
        conn_close(&s->readers[i]);
    conn_close(&s->writer);
    pthread_mutex_destroy(&s->wlock);
    pthread_mutex_destroy(&s->rlock);
    pthread_cond_destroy(&s->rcond);
    free(s->path);
    free(s);
}

struct rd sq_rd_get(struct store *st)
{
    struct sqlite_store *s = S(st);
    struct rd r = {.s = s};

    if (s->readers[0].db) {
        r.c = reader_get(s);
    } else {
        pthread_mutex_lock(&s->wlock);
        r.c = &s->writer;
        r.is_writer = true;
    }
    return r;
}

void sq_rd_put(struct rd *r)
{
    if (r->is_writer)
        pthread_mutex_unlock(&r->s->wlock);
    else
        reader_put(r->s, r->c);
}

static int sq_ping(struct store *st)
{
    struct rd r = sq_rd_get(st);
    int rc = sq_exec_sql(r.c->db, "SELECT 1");

    sq_rd_put(&r);
    return rc;
}

const struct store_ops store_sqlite_ops = {
    .name = "sqlite",
    .open = sq_open,
    .close = sq_close,
    .ping = sq_ping,
    .task_insert = sq_task_insert,
    .task_claim = sq_task_claim,
    .task_finish = sq_task_finish,
    .reap = sq_reap,
    .recover = sq_recover,
    .webhooks_due = sq_webhooks_due,
    .messages_append = db_messages_append,
    .session_answer = db_session_answer,
    DB_STORE_OPS,
};
