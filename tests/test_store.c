/* Unit tests: the store's queue rules and reads, on both backends: SQLite on a
 * temporary database file, and PostgreSQL when TASKEXEC_TEST_PG_URL names a database
 * (tests/it/test_store_unit.py runs this against a throwaway cluster); each case then
 * starts on an empty schema. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/err.h"
#include "model/proto.h"
#include "store/db.h"
#include "store/store.h"
#include "core/uuidgen.h"
#include "testdb.h"

struct fx {
    struct testdb db;
    struct store *st;
};

static int setup(void **state, bool pg)
{
    struct fx *f = calloc(1, sizeof(*f));

    *state = f;
    if (!f || testdb_fresh(&f->db, pg) < 0)
        return -1;
    return store_open(f->db.url, &f->st) < 0 ? -1 : 0;
}

static int setup_sqlite(void **state)
{
    return setup(state, false);
}

static int setup_pg(void **state)
{
    return setup(state, true);
}

static int teardown(void **state)
{
    struct fx *f = *state;
    int rc;

    store_close(f->st);
    rc = testdb_remove(&f->db);
    free(f);
    return rc;
}

/* Inserts a pending task; returns its id in out. */
static void add(struct store *st, const char *problem, int priority, const char *backend,
                const char *key, char out[37])
{
    struct task *t = task_new(), *existing = NULL;

    uuidgen(t->id);
    t->problem_id = strdup(problem);
    t->priority = priority;
    t->backend_type = strdup(backend);
    t->mode = strdup("batch");
    t->parameters = json_object();
    t->metadata = json_object();
    t->idempotency_key = key ? strdup(key) : NULL;
    t->max_steps = 5;
    t->timeout_seconds = 60;
    t->created_at = t->updated_at = clock_now_us();
    assert_int_equal(store_task_insert(st, t, &existing), 0);
    if (existing) {
        strcpy(out, existing->id);
        task_free(existing);
    } else {
        strcpy(out, t->id);
    }
    task_free(t);
}

static int claim(struct store *st, const char *worker, const char *backend,
                 const char *const *patterns, size_t n, struct task **out)
{
    char lease[37];
    struct claim_req req = {.worker_id = worker, .backend_type = backend, .patterns = patterns,
                            .n_patterns = n, .lease_token = lease, .now = clock_now_us()};

    uuidgen(lease);
    return store_task_claim(st, &req, out);
}

static int finish(struct store *st, const char *id, const char *lease, enum task_status status,
                  json_t *result, const char *error)
{
    struct task_end end = {.status = status, .result = result, .error = error,
                           .now = clock_now_us()};
    return store_task_finish(st, id, lease, &end);
}

static void register_worker(struct store *st, const char *id, const char *prefix)
{
    struct worker_reg reg = {.id = id, .backend_type = "default", .name_prefix = prefix,
                             .now = clock_now_us()};
    assert_int_equal(store_worker_register(st, &reg), 0);
}

static void claims_by_priority_then_fifo(void **state)
{
    struct fx *f = *state;
    char a[37], b[37], c[37], d[37];
    struct task *t = NULL;

    register_worker(f->st, "w1", "");
    add(f->st, "p", 0, "default", NULL, a);
    add(f->st, "p", 5, "default", NULL, b);
    add(f->st, "p", 0, "default", NULL, c);
    add(f->st, "p", 5, "default", NULL, d);
    const char *want[] = {b, d, a, c};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(claim(f->st, "w1", "default", NULL, 0, &t), 0);
        assert_string_equal(t->id, want[i]);
        assert_int_equal(t->status, TASK_RUNNING);
        assert_string_equal(t->worker_id, "w1");
        assert_non_null(t->lease_token);
        assert_true(t->deadline_at > t->started_at);
        task_free(t);
    }
    assert_int_equal(claim(f->st, "w1", "default", NULL, 0, &t), ERR_NOTFOUND);
}

static void claims_only_matching_backend_and_problems(void **state)
{
    struct fx *f = *state;
    char a[37], b[37], c[37];
    const char *pats[] = {"misconfig_*", "noop-?"};
    struct task *t = NULL;

    register_worker(f->st, "w1", NULL);
    add(f->st, "misconfig_app", 0, "kind", NULL, a);
    add(f->st, "other", 9, "default", NULL, b);
    add(f->st, "noop-1", 0, "default", NULL, c);
    assert_int_equal(claim(f->st, "w1", "gpu", NULL, 0, &t), ERR_NOTFOUND);
    assert_int_equal(claim(f->st, "w1", "default", pats, 2, &t), 0);
    assert_string_equal(t->id, c); /* "other" has a higher priority but does not match */
    task_free(t);
    assert_int_equal(claim(f->st, "w1", "default", pats, 2, &t), ERR_NOTFOUND);
    assert_int_equal(claim(f->st, "w1", "kind", pats, 2, &t), 0);
    assert_string_equal(t->id, a);
    task_free(t);
}

static void finish_needs_the_lease(void **state)
{
    struct fx *f = *state;
    char a[37];
    struct task *t = NULL, *g = NULL;
    json_t *result = json_pack("{s:b}", "success", 1);

    register_worker(f->st, "w1", "");
    add(f->st, "p", 0, "default", NULL, a);
    assert_int_equal(claim(f->st, "w1", "default", NULL, 0, &t), 0);
    assert_int_equal(finish(f->st, a, "forged", TASK_COMPLETED, result, NULL),
                     ERR_CONFLICT);
    assert_int_equal(finish(f->st, a, t->lease_token, TASK_COMPLETED, result, NULL),
                     0);
    /* terminal states never change again */
    assert_int_equal(finish(f->st, a, t->lease_token, TASK_FAILED, NULL, "x"),
                     ERR_CONFLICT);
    assert_int_equal(store_task_get(f->st, a, &g), 0);
    assert_int_equal(g->status, TASK_COMPLETED);
    assert_true(json_is_true(json_object_get(g->result, "success")));
    assert_true(g->completed_at >= g->started_at);
    task_free(g);
    g = NULL;
    json_t *w = NULL;
    assert_int_equal(store_worker_get(f->st, "w1", &w), 0);
    assert_int_equal(json_integer_value(json_object_get(w, "tasks_completed")), 1);
    assert_string_equal(json_string_value(json_object_get(w, "status")), "idle");
    json_decref(w);
    assert_int_equal(finish(f->st, "00000000-0000-0000-0000-000000000000", "x", TASK_FAILED,
                            NULL, "x"),
                     ERR_NOTFOUND);
    task_free(t);
    json_decref(result);
}

static void cancel_pending_running_and_terminal(void **state)
{
    struct fx *f = *state;
    char a[37], b[37];
    struct task *t = NULL, *c = NULL;
    enum task_status s;

    register_worker(f->st, "w1", "");
    add(f->st, "p", 0, "default", NULL, a);
    add(f->st, "p", 0, "default", NULL, b);
    assert_int_equal(claim(f->st, "w1", "default", NULL, 0, &t), 0);
    assert_string_equal(t->id, a);
    assert_int_equal(store_task_cancel(f->st, b, clock_now_us(), &c), 0);
    assert_int_equal(c->status, TASK_CANCELLED);
    task_free(c);
    assert_int_equal(store_task_cancel(f->st, a, clock_now_us(), &c), 0);
    assert_int_equal(c->status, TASK_CANCELLED);
    task_free(c);
    /* the worker sees it lost the task and cannot overwrite the cancel */
    assert_int_equal(store_task_lease_status(f->st, a, t->lease_token, &s), 0);
    assert_int_equal(s, TASK_CANCELLED);
    assert_int_equal(finish(f->st, a, t->lease_token, TASK_COMPLETED, NULL, NULL),
                     ERR_CONFLICT);
    assert_int_equal(store_task_cancel(f->st, a, clock_now_us(), &c), ERR_CONFLICT);
    assert_int_equal(c->status, TASK_CANCELLED);
    task_free(c);
    c = NULL;
    assert_int_equal(store_task_cancel(f->st, "00000000-0000-0000-0000-000000000000",
                                             clock_now_us(), &c),
                     ERR_NOTFOUND);
    /* a cancelled pending task is never claimed */
    assert_int_equal(claim(f->st, "w1", "default", NULL, 0, &c), ERR_NOTFOUND);
    struct task_stats ts;
    struct task_page page;
    struct task_filter only = {.status = TASK_CANCELLED, .limit = 10};
    assert_int_equal(store_task_stats(f->st, false, &ts), 0);
    assert_int_equal(ts.counts[TASK_CANCELLED], 2);
    assert_int_equal(ts.counts[TASK_RUNNING], 0);
    assert_int_equal(ts.total, 2);
    assert_int_equal(store_task_list(f->st, &only, &page), 0);
    assert_int_equal(page.total, 2);
    store_task_page_reset(&page);
    task_free(t);
}

static void idempotency_key_returns_existing(void **state)
{
    struct fx *f = *state;
    char a[37], b[37];
    struct task_page page;
    struct task_filter filter = {.status = -1, .limit = 10};

    add(f->st, "p", 0, "default", "k1", a);
    add(f->st, "p", 0, "default", "k1", b);
    assert_string_equal(a, b);
    assert_int_equal(store_task_list(f->st, &filter, &page), 0);
    assert_int_equal(page.total, 1);
    store_task_page_reset(&page);
}

static void list_filters_and_pages(void **state)
{
    struct fx *f = *state;
    char ids[5][37];
    struct task_page page;
    struct task_filter filter = {.status = -1, .limit = 2, .offset = 1};

    for (int i = 0; i < 5; i++)
        add(f->st, i % 2 ? "odd" : "even", 0, "default", NULL, ids[i]);
    assert_int_equal(store_task_list(f->st, &filter, &page), 0);
    assert_int_equal(page.total, 5);
    assert_int_equal(page.n, 2);
    assert_string_equal(page.items[0]->id, ids[3]); /* newest first, skipping one */
    store_task_page_reset(&page);
    filter = (struct task_filter){.status = -1, .problem_id = "odd", .limit = 10,
                                  .oldest_first = true};
    assert_int_equal(store_task_list(f->st, &filter, &page), 0);
    assert_int_equal(page.total, 2);
    assert_string_equal(page.items[0]->id, ids[1]);
    store_task_page_reset(&page);
    filter = (struct task_filter){.status = TASK_RUNNING, .limit = 10};
    assert_int_equal(store_task_list(f->st, &filter, &page), 0);
    assert_int_equal(page.total, 0);
    store_task_page_reset(&page);
}

static void logs_and_messages(void **state)
{
    struct fx *f = *state;
    char a[37];
    json_t *ctx = json_object(), *logs = NULL, *convs = NULL;
    struct log_entry le[3] = {{1, LEVEL_DEBUG, "d", ctx}, {2, LEVEL_INFO, "i", ctx},
                              {3, LEVEL_ERROR, "e", ctx}};
    json_t *m1 = json_pack("{s:s, s:s, s:i, s:n, s:{}}", "role", "system", "content", "sys",
                           "step", 0, "session_id", "metadata");
    json_t *m2 = json_pack("{s:s, s:s, s:i, s:n, s:{s:s, s:{s:i, s:i}}}", "role", "assistant",
                           "content", "act", "step", 1, "session_id", "metadata", "model", "m",
                           "usage", "prompt_tokens", 10, "completion_tokens", 5);
    struct msg_entry me[2] = {{10, m1}, {11, m2}};
    int64_t total;

    add(f->st, "p", 0, "default", NULL, a);
    assert_int_equal(store_logs_append(f->st, a, le, 3), 0);
    assert_int_equal(store_logs_list(f->st, a, LEVEL_INFO, 100, 0, &logs, &total), 0);
    assert_int_equal(total, 2);
    assert_int_equal(json_array_size(logs), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(logs, 0), "message")),
                        "i");
    json_decref(logs);
    assert_int_equal(store_logs_list(f->st, a, LEVEL_DEBUG, 1, 0, &logs, &total), 0);
    assert_int_equal(json_array_size(logs), 1);
    assert_int_equal(total, 3);
    json_decref(logs);

    assert_int_equal(store_messages_append(f->st, a, me, 2), 0);
    assert_int_equal(store_task_conversations(f->st, a, &convs), 0);
    assert_int_equal(json_array_size(convs), 1);
    json_t *c = json_array_get(convs, 0);
    assert_string_equal(json_string_value(json_object_get(c, "session_id")), a);
    assert_int_equal(json_integer_value(json_object_get(c, "total_messages")), 2);
    assert_int_equal(json_integer_value(json_object_get(c, "total_tokens")), 15);
    assert_string_equal(json_string_value(json_object_get(c, "model_name")), "m");
    json_t *msgs = json_object_get(c, "messages");
    assert_string_equal(json_string_value(json_object_get(json_array_get(msgs, 0), "role")),
                        "system");
    assert_string_equal(json_string_value(json_object_get(json_array_get(msgs, 1), "content")),
                        "act");
    json_decref(convs);
    json_decref(m1);
    json_decref(m2);
    json_decref(ctx);
}

static void reaper_fails_tasks_of_silent_workers(void **state)
{
    struct fx *f = *state;
    char a[37];
    struct task *t = NULL, *g = NULL;
    struct reap_result rr;
    int64_t now = clock_now_us();

    register_worker(f->st, "ghost", NULL);
    add(f->st, "p", 0, "default", NULL, a);
    assert_int_equal(claim(f->st, "ghost", "default", NULL, 0, &t), 0);
    /* alive: nothing happens */
    assert_int_equal(store_reap(f->st, now, 60 * 1000000LL, 0, &rr), 0);
    assert_int_equal(rr.tasks_failed, 0);
    /* 2 minutes later, silent for more than 60 s */
    assert_int_equal(store_reap(f->st, now + 120 * 1000000LL, 60 * 1000000LL, 0, &rr), 0);
    assert_int_equal(rr.tasks_failed, 1);
    assert_int_equal(rr.workers_offline, 1);
    assert_int_equal(store_task_get(f->st, a, &g), 0);
    assert_int_equal(g->status, TASK_FAILED);
    assert_non_null(strstr(g->error, "ghost"));
    task_free(g);
    task_free(t);
}

static void recover_fails_tasks_of_own_prefix_only(void **state)
{
    struct fx *f = *state;
    char a[37], b[37];
    struct task *t = NULL, *g = NULL;
    int n = 0;

    register_worker(f->st, "a-worker-001-kind", "a-");
    register_worker(f->st, "b-worker-001-kind", "b-");
    add(f->st, "p", 0, "default", NULL, a);
    add(f->st, "p", 0, "default", NULL, b);
    assert_int_equal(claim(f->st, "a-worker-001-kind", "default", NULL, 0, &t), 0);
    task_free(t);
    assert_int_equal(claim(f->st, "b-worker-001-kind", "default", NULL, 0, &t), 0);
    task_free(t);
    assert_int_equal(store_recover(f->st, "a-", clock_now_us(), 0, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(store_task_get(f->st, a, &g), 0);
    assert_int_equal(g->status, TASK_FAILED);
    assert_non_null(strstr(g->error, "restarted"));
    task_free(g);
    assert_int_equal(store_task_get(f->st, b, &g), 0);
    assert_int_equal(g->status, TASK_RUNNING);
    task_free(g);
}

struct claimer {
    struct store *st;
    char name[16];
    int claimed;
    char (*seen)[37];
};

static void *claim_loop(void *arg)
{
    struct claimer *c = arg;
    struct task *t = NULL;

    while (claim(c->st, c->name, "default", NULL, 0, &t) == 0) {
        strcpy(c->seen[c->claimed++], t->id);
        task_free(t);
        t = NULL;
    }
    return NULL;
}

static int cmp(const void *a, const void *b)
{
    return strcmp(a, b);
}

/* Several threads claim at once: every task is handed out exactly once. */
static void concurrent_claims_are_exclusive(void **state)
{
    struct fx *f = *state;
    enum { N = 300, T = 4 };
    struct claimer cl[T];
    pthread_t th[T];
    char id[37], (*all)[37] = calloc(N, 37);
    int total = 0;

    for (int i = 0; i < N; i++)
        add(f->st, "p", i % 3, "default", NULL, id);
    for (int i = 0; i < T; i++) {
        cl[i] = (struct claimer){.st = f->st, .seen = calloc(N, 37)};
        snprintf(cl[i].name, sizeof(cl[i].name), "w%d", i);
        register_worker(f->st, cl[i].name, "");
        pthread_create(&th[i], NULL, claim_loop, &cl[i]);
    }
    for (int i = 0; i < T; i++) {
        pthread_join(th[i], NULL);
        memcpy(all[total], cl[i].seen, (size_t)cl[i].claimed * 37);
        total += cl[i].claimed;
        free(cl[i].seen);
    }
    assert_int_equal(total, N);
    /* the counts kept by triggers agree with what happened */
    struct task_stats ts;
    assert_int_equal(store_task_stats(f->st, true, &ts), 0);
    assert_int_equal(ts.total, N);
    assert_int_equal(ts.counts[TASK_RUNNING], N);
    assert_int_equal(ts.counts[TASK_PENDING], 0);
    qsort(all, N, 37, cmp);
    for (int i = 1; i < N; i++)
        assert_string_not_equal(all[i - 1], all[i]);
    free(all);
}

/* One worker's end with its next claim, on a thread of its own. */
struct ender {
    struct store *st;
    char worker[16], id[37], lease[37], next_lease[37];
    int delay_ms, rc;
    struct task *next;
};

static void *end_one(void *arg)
{
    struct ender *e = arg;
    struct log_entry logs[2] = {{.ts = clock_now_us(), .level = LEVEL_INFO, .message = e->worker},
                                {.ts = clock_now_us(), .level = LEVEL_INFO, .message = "second"}};
    struct claim_req cn = {.worker_id = e->worker, .backend_type = "default",
                           .lease_token = e->next_lease, .now = clock_now_us()};
    struct task_end end = {.status = TASK_COMPLETED, .now = cn.now, .logs = logs, .n_logs = 2,
                           .claim_next = &cn, .next = &e->next};

    usleep((useconds_t)e->delay_ms * 1000);
    cn.now = end.now = clock_now_us();
    e->rc = store_task_finish(e->st, e->id, e->lease, &end);
    return NULL;
}

/* Eight workers end a task each at about the same moment, each claiming its next: on
 * PostgreSQL, with each statement made slow, the ends that wait are written together
 * (#17). Every end gets the answer it would have had alone (a forged lease a conflict,
 * an unknown task not found), each claim goes to one worker, logs and counts are kept. */
static void concurrent_chained_ends_each_get_their_own_answer(void **state)
{
    struct fx *f = *state;
    enum { W = 8, MORE = 5 };
    struct ender e[W];
    pthread_t th[W];
    char id[37];
    int claimed = 0;

    for (int i = 0; i < W; i++) {
        struct task *t = NULL;

        e[i] = (struct ender){.st = f->st, .delay_ms = 10 * i};
        snprintf(e[i].worker, sizeof(e[i].worker), "w%d", i);
        register_worker(f->st, e[i].worker, "");
        add(f->st, "first", 1, "default", NULL, id);
        assert_int_equal(claim(f->st, e[i].worker, "default", NULL, 0, &t), 0);
        strcpy(e[i].id, t->id);
        strcpy(e[i].lease, t->lease_token);
        uuidgen(e[i].next_lease);
        task_free(t);
    }
    strcpy(e[6].lease, "forged");
    strcpy(e[7].id, "00000000-0000-0000-0000-000000000000");
    for (int i = 0; i < MORE; i++)
        add(f->st, "more", 0, "default", NULL, id);
    if (f->db.pg)
        assert_int_equal(testdb_sql(&f->db, "CREATE FUNCTION te_test_slow() RETURNS trigger "
                                            "LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.2); "
                                            "RETURN NULL; END $$; CREATE TRIGGER te_test_slow "
                                            "AFTER UPDATE ON tasks FOR EACH STATEMENT EXECUTE "
                                            "FUNCTION te_test_slow()"),
                         0);
    for (int i = 0; i < W; i++)
        pthread_create(&th[i], NULL, end_one, &e[i]);
    for (int i = 0; i < W; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < W; i++) {
        assert_int_equal(e[i].rc, i == 6 ? ERR_CONFLICT : i == 7 ? ERR_NOTFOUND : 0);
        if (!e[i].next)
            continue;
        claimed++;
        assert_true(i < 6);
        assert_string_equal(e[i].next->problem_id, "more");
        assert_string_equal(e[i].next->worker_id, e[i].worker);
        assert_string_equal(e[i].next->lease_token, e[i].next_lease);
        assert_int_equal(e[i].next->status, TASK_RUNNING);
        for (int j = 0; j < i; j++)
            assert_true(!e[j].next || strcmp(e[j].next->id, e[i].next->id) != 0);
    }
    assert_int_equal(claimed, MORE);
    for (int i = 0; i < 7; i++) { /* a refused end keeps its logs too */
        json_t *logs = NULL;
        int64_t total = 0;

        assert_int_equal(store_logs_list(f->st, e[i].id, LEVEL_DEBUG, 10, 0, &logs, &total), 0);
        assert_int_equal(total, 2);
        assert_string_equal(json_string_value(json_object_get(json_array_get(logs, 0),
                                                              "message")),
                            e[i].worker);
        json_decref(logs);
    }
    struct task_stats ts;
    assert_int_equal(store_task_stats(f->st, false, &ts), 0);
    assert_int_equal(ts.counts[TASK_COMPLETED], 6);
    assert_int_equal(ts.counts[TASK_RUNNING], MORE + 2); /* and the two refused ends' */
    assert_int_equal(ts.counts[TASK_PENDING], 0);
    for (int i = 0; i < W; i++) {
        json_t *w = NULL;

        assert_int_equal(store_worker_get(f->st, e[i].worker, &w), 0);
        assert_int_equal(json_integer_value(json_object_get(w, "tasks_completed")), i < 6);
        assert_string_equal(json_string_value(json_object_get(w, "status")),
                            e[i].next || i >= 6 ? "busy" : "idle");
        json_decref(w);
        task_free(e[i].next);
    }
    if (f->db.pg) /* fewer commits than ends: some were written together */
        assert_int_equal(testdb_sql(&f->db, "DO $$ BEGIN IF (SELECT count(DISTINCT xmin::text) "
                                            "FROM tasks WHERE status = 'completed') >= 6 THEN "
                                            "RAISE 'not grouped'; END IF; END $$"),
                         0);
}

/* A read that fails part way is an error, never a short list or "not found": the
 * tables go away behind the store's back once its statements are prepared. */
static void failed_reads_are_errors(void **state)
{
    struct fx *f = *state;
    char a[37];
    json_t *ctx = json_object(), *out = NULL;
    struct log_entry le[1] = {{1, LEVEL_INFO, "i", ctx}};
    struct task *t = NULL;
    int64_t total = -1, counts[3];

    register_worker(f->st, "w1", NULL);
    add(f->st, "p", 0, "default", NULL, a);
    assert_int_equal(store_logs_append(f->st, a, le, 1), 0);
    assert_int_equal(store_logs_list(f->st, a, LEVEL_DEBUG, 10, 0, &out, &total), 0);
    json_decref(out);
    out = NULL;
    assert_int_equal(store_worker_get(f->st, "w1", &out), 0);
    json_decref(out);
    out = NULL;
    assert_int_equal(testdb_sql(&f->db, "ALTER TABLE task_logs RENAME TO task_logs_gone; "
                                "ALTER TABLE workers RENAME TO workers_gone; "
                                "ALTER TABLE tasks RENAME TO tasks_gone"), 0);
    assert_true(store_logs_list(f->st, a, LEVEL_DEBUG, 10, 0, &out, &total) < 0);
    assert_null(out);
    assert_true(store_worker_get(f->st, "w1", &out) < 0);
    assert_true(store_worker_list(f->st, NULL, NULL, &out) < 0);
    assert_null(out);
    assert_true(store_worker_counts(f->st, counts) < 0);
    assert_true(store_task_get(f->st, a, &t) < 0);
    assert_int_not_equal(store_task_get(f->st, a, &t), ERR_NOTFOUND);
    assert_null(t);
    json_decref(ctx);
}

/* supported_problems globs: * and ? and classes match as in a shell; every other
 * character (a dot, a plus) is itself. */
/* A statement written once for both dialects ($1..$n) binds each argument to its
 * number, though SQLite numbers such parameters as they first appear ($2 here); a
 * statement a dialect does without (NULL text) is not run there. */
static void one_statement_text_serves_both_dialects(void **state)
{
    static const struct db_stmt between = DB_SQL(
        "counting", "SELECT count(*) FROM tasks WHERE priority < $2 AND priority > $1");
    static const struct db_stmt none = {"nothing", NULL, NULL};
    struct fx *f = *state;
    const struct db_arg args[2] = {DB_I(2), DB_I(8)};
    struct rows_ints x = {.n = 1, .v = {-1}};
    char a[37];

    add(f->st, "p", 1, "default", NULL, a);
    add(f->st, "p", 5, "default", NULL, a);
    add(f->st, "p", 9, "default", NULL, a);
    assert_int_equal(db_read_with(f->st, &between, args, 2, rows_take_ints, &x), 0);
    assert_int_equal(x.v[0], 1);
    x.v[0] = -1;
    assert_int_equal(db_read_with(f->st, &none, args, 2, rows_take_ints, &x), 0);
    assert_int_equal(x.v[0], -1);
}

static void claim_globs_are_literal_but_for_wildcards(void **state)
{
    struct fx *f = *state;
    char a[37], b[37], c[37];
    const char *pats[] = {"a.b+*", "k[0-9]", "n[!x]"};
    struct task *t = NULL;

    register_worker(f->st, "w1", NULL);
    add(f->st, "aXb+1", 9, "default", NULL, a);  /* the dot is no wildcard */
    add(f->st, "a.b+1", 0, "default", NULL, b);
    add(f->st, "kx", 8, "default", NULL, c);
    add(f->st, "nx", 7, "default", NULL, c);
    add(f->st, "k7", 0, "default", NULL, c);
    assert_int_equal(claim(f->st, "w1", "default", pats, 3, &t), 0);
    assert_string_equal(t->problem_id, "a.b+1");
    task_free(t);
    assert_int_equal(claim(f->st, "w1", "default", pats, 3, &t), 0);
    assert_string_equal(t->problem_id, "k7");
    task_free(t);
    assert_int_equal(claim(f->st, "w1", "default", pats, 3, &t), ERR_NOTFOUND);
}

#define STORE_TESTS(setup)                                                                 \
    {                                                                                      \
        cmocka_unit_test_setup_teardown(claims_by_priority_then_fifo, setup, teardown),    \
        cmocka_unit_test_setup_teardown(claims_only_matching_backend_and_problems, setup,  \
                                        teardown),                                         \
        cmocka_unit_test_setup_teardown(claim_globs_are_literal_but_for_wildcards, setup,  \
                                        teardown),                                         \
        cmocka_unit_test_setup_teardown(finish_needs_the_lease, setup, teardown),          \
        cmocka_unit_test_setup_teardown(cancel_pending_running_and_terminal, setup,        \
                                        teardown),                                         \
        cmocka_unit_test_setup_teardown(idempotency_key_returns_existing, setup, teardown), \
        cmocka_unit_test_setup_teardown(list_filters_and_pages, setup, teardown),          \
        cmocka_unit_test_setup_teardown(logs_and_messages, setup, teardown),               \
        cmocka_unit_test_setup_teardown(reaper_fails_tasks_of_silent_workers, setup,       \
                                        teardown),                                         \
        cmocka_unit_test_setup_teardown(recover_fails_tasks_of_own_prefix_only, setup,     \
                                        teardown),                                         \
        cmocka_unit_test_setup_teardown(concurrent_claims_are_exclusive, setup, teardown), \
        cmocka_unit_test_setup_teardown(concurrent_chained_ends_each_get_their_own_answer,  \
                                        setup, teardown),                                  \
        cmocka_unit_test_setup_teardown(failed_reads_are_errors, setup, teardown),         \
        cmocka_unit_test_setup_teardown(one_statement_text_serves_both_dialects, setup,    \
                                        teardown),                                         \
    }

int main(void)
{
    const struct CMUnitTest sqlite_tests[] = STORE_TESTS(setup_sqlite);
    const struct CMUnitTest pg_tests[] = STORE_TESTS(setup_pg);
    int failed = cmocka_run_group_tests_name("sqlite", sqlite_tests, NULL, NULL);

    if (getenv("TASKEXEC_TEST_PG_URL") && *getenv("TASKEXEC_TEST_PG_URL"))
        failed += cmocka_run_group_tests_name("postgresql", pg_tests, NULL, NULL);
    return failed;
}
