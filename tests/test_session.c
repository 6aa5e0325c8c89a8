/* Unit tests: the session hub (service/session.c) over a fresh store on each backend
 * (SQLite always, PostgreSQL when TASKEXEC_TEST_PG_URL is set, see tests/testdb.h): parking a
 * step, answering each parked step exactly once (by an answer at hand, by the hub's thread
 * from the store, at its deadline, when the session ends, at shutdown), and handing a step
 * to the runner hosting it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/err.h"
#include "core/uuidgen.h"
#include "service/queue.h"
#include "service/session.h"
#include "store/store.h"
#include "testdb.h"

struct fx {
    struct testdb db;
    struct store *st;
    struct queue q;
    struct session_hub *hub;
    char id[37];                  /* a running session, ready for its first step */
};

/* A waiter that records what it was told; the hub calls it with its lock held, maybe
 * from its thread, so the record has a lock of its own. */
struct rec {
    pthread_mutex_t lock;
    int parked, answered;
    enum session_outcome how;
    int step;
    char observation[64];
    enum task_status ended;
};

static void rec_park(void *ctx)
{
    struct rec *r = ctx;

    pthread_mutex_lock(&r->lock);
    r->parked++;
    pthread_mutex_unlock(&r->lock);
}

static void rec_answer(void *ctx, enum session_outcome how, int step, json_t *answer,
                       const struct task *ended)
{
    struct rec *r = ctx;
    const char *obs = json_string_value(json_object_get(answer, "observation"));

    pthread_mutex_lock(&r->lock);
    r->answered++;
    r->how = how;
    r->step = step;
    snprintf(r->observation, sizeof(r->observation), "%s", obs ? obs : "");
    r->ended = ended ? ended->status : TASK_PENDING;
    pthread_mutex_unlock(&r->lock);
}

static int answered(struct rec *r)
{
    int n;

    pthread_mutex_lock(&r->lock);
    n = r->answered;
    pthread_mutex_unlock(&r->lock);
    return n;
}

/* Waits up to ms for the hub's thread to answer r. */
static int wait_answered(struct rec *r, int ms)
{
    for (int waited = 0; answered(r) == 0 && waited < ms; waited += 20)
        usleep(20 * 1000);
    return answered(r);
}

static void rec_init(struct rec *r, struct session_waiter *w)
{
    memset(r, 0, sizeof(*r));
    pthread_mutex_init(&r->lock, NULL);
    *w = (struct session_waiter){.ctx = r, .park = rec_park, .answer = rec_answer};
}

/* An interactive task, claimed and with its environment ready. */
static void running_session(struct store *st, char out[37])
{
    struct task *t = task_new(), *existing = NULL, *claimed = NULL;
    char lease[37];
    struct claim_req req = {.worker_id = "w1", .backend_type = "default", .lease_token = lease,
                            .now = clock_now_us()};
    json_t *ready = json_pack("{s:s, s:s, s:[s]}", "task_description", "find the fault",
                              "instructions", "one call a turn", "actions", "exec_shell");

    uuidgen(t->id);
    t->problem_id = strdup("p");
    t->backend_type = strdup("default");
    t->mode = strdup("interactive");
    t->parameters = json_object();
    t->metadata = json_object();
    t->max_steps = 5;
    t->timeout_seconds = 60;
    t->created_at = t->updated_at = clock_now_us();
    assert_int_equal(store_task_insert(st, t, &existing), 0);
    assert_null(existing);
    uuidgen(lease);
    assert_int_equal(store_task_claim(st, &req, &claimed), 0);
    assert_string_equal(claimed->id, t->id);
    assert_int_equal(store_session_ready(st, t->id, ready, 5, clock_now_us()), 0);
    strcpy(out, t->id);
    json_decref(ready);
    task_free(claimed);
    task_free(t);
}

static int setup(void **state, bool pg)
{
    struct fx *f = calloc(1, sizeof(*f));

    *state = f;
    if (!f || testdb_fresh(&f->db, pg) < 0 || store_open(f->db.url, &f->st) < 0)
        return -1;
    f->q = (struct queue){.store = f->st, .defaults = {.max_steps = 5, .timeout_minutes = 1}};
    if (session_hub_new(f->st, &f->q, 10, &f->hub) < 0)
        return -1;
    running_session(f->st, f->id);
    return 0;
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

    session_hub_stop(f->hub);
    store_close(f->st);
    rc = testdb_remove(&f->db);
    free(f);
    return rc;
}

static void store_answer(struct fx *f, int step, const char *observation)
{
    json_t *a = json_pack("{s:s, s:b, s:f, s:{}}", "observation", observation, "done", 0,
                          "reward", 0.5, "results");

    assert_int_equal(store_session_answer(f->st, f->id, step, a, NULL, 0, clock_now_us()), 0);
    json_decref(a);
}

static void step_of_no_running_session_is_refused(void **state)
{
    struct fx *f = *state;
    struct session_waiter w;
    struct rec r;
    char other[37];
    int step = -1;
    bool parked = true;

    rec_init(&r, &w);
    uuidgen(other);
    assert_int_equal(session_hub_step(f->hub, other, "a", 30, &w, &step, &parked),
                     ERR_CONFLICT);
    assert_int_equal(r.parked, 0);
    assert_int_equal(r.answered, 0);
    assert_int_equal(step, -1); /* outputs untouched on error */
}

static void step_without_wait_is_not_parked(void **state)
{
    struct fx *f = *state;
    struct session_waiter w;
    struct rec r;
    int step = 0;
    bool parked = true;

    rec_init(&r, &w);
    assert_int_equal(session_hub_step(f->hub, f->id, "a", 0, &w, &step, &parked), 0);
    assert_int_equal(step, 1);
    assert_false(parked);
    assert_int_equal(r.parked, 0);
    /* A second step while the first is in flight is refused, never interleaved. */
    assert_int_equal(session_hub_step(f->hub, f->id, "b", 0, &w, &step, &parked),
                     ERR_CONFLICT);
}

static void answer_at_hand_answers_its_step_once(void **state)
{
    struct fx *f = *state;
    struct session_waiter w;
    struct rec r;
    int step = 0;
    bool parked = false;
    json_t *other = json_pack("{s:s}", "observation", "not mine");
    json_t *mine = json_pack("{s:s, s:b, s:f, s:{}}", "observation", "pods are fine", "done", 0,
                             "reward", 1.0, "results");

    rec_init(&r, &w);
    assert_int_equal(session_hub_step(f->hub, f->id, "a", 30, &w, &step, &parked), 0);
    assert_true(parked);
    assert_int_equal(step, 1);
    assert_int_equal(r.parked, 1);
    assert_int_equal(r.answered, 0);
    session_hub_answered(f->hub, f->id, 2, other); /* another step: not this wait's */
    assert_int_equal(r.answered, 0);
    session_hub_answered(f->hub, f->id, 1, mine);
    assert_int_equal(r.answered, 1);
    assert_int_equal(r.how, SESSION_ANSWERED);
    assert_int_equal(r.step, 1);
    assert_string_equal(r.observation, "pods are fine");
    session_hub_answered(f->hub, f->id, 1, mine); /* nobody waits any more */
    assert_int_equal(r.answered, 1);
    json_decref(other);
    json_decref(mine);
}

static void host_is_woken_and_handed_the_step(void **state)
{
    struct fx *f = *state;
    struct session_waiter w;
    struct rec r;
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC), step = 0, got = 0;
    bool parked = false;
    uint64_t count = 0;
    char *action = NULL;

    assert_true(fd >= 0);
    rec_init(&r, &w);
    session_hub_attach(f->hub, f->id, fd);
    assert_false(session_hub_take_action(f->hub, f->id, 0, &got, &action));
    assert_int_equal(session_hub_step(f->hub, f->id, "get_logs()", 0, &w, &step, &parked), 0);
    assert_int_equal(read(fd, &count, sizeof(count)), (ssize_t)sizeof(count));
    assert_int_equal(count, 1);
    assert_false(session_hub_take_action(f->hub, f->id, 1, &got, &action)); /* not after 1 */
    assert_true(session_hub_take_action(f->hub, f->id, 0, &got, &action));
    assert_int_equal(got, 1);
    assert_string_equal(action, "get_logs()");
    free(action);
    action = NULL;
    assert_false(session_hub_take_action(f->hub, f->id, 0, &got, &action)); /* handed once */
    session_hub_detach(f->hub, f->id);
    close(fd);
}

static void notifications_wake_the_host(void **state)
{
    struct fx *f = *state;
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    char payload[64];
    uint64_t count = 0;

    assert_true(fd >= 0);
    session_hub_attach(f->hub, f->id, fd);
    snprintf(payload, sizeof(payload), "o:%s", f->id); /* an answer: not the host's business */
    session_hub_on_notify(f->hub, payload);
    assert_true(read(fd, &count, sizeof(count)) < 0);
    session_hub_on_notify(f->hub, "a:someone-else");
    assert_true(read(fd, &count, sizeof(count)) < 0);
    snprintf(payload, sizeof(payload), "a:%s", f->id);
    session_hub_on_notify(f->hub, payload);
    assert_int_equal(read(fd, &count, sizeof(count)), (ssize_t)sizeof(count));
    session_hub_on_notify(f->hub, NULL); /* after a reconnection: everyone looks again */
    assert_int_equal(read(fd, &count, sizeof(count)), (ssize_t)sizeof(count));
    session_hub_detach(f->hub, f->id);
    close(fd);
}

static void closing_answers_parked_steps_and_parks_no_more(void **state)
{
    struct fx *f = *state;
    struct session_waiter w;
    struct rec r;
    int step = 0;
    bool parked = false;

    rec_init(&r, &w);
    assert_int_equal(session_hub_step(f->hub, f->id, "a", 30, &w, &step, &parked), 0);
    assert_true(parked);
    session_hub_close_waits(f->hub);
    assert_int_equal(r.answered, 1);
    assert_int_equal(r.how, SESSION_CLOSING);
    store_answer(f, 1, "late");
    rec_init(&r, &w);
    assert_int_equal(session_hub_step(f->hub, f->id, "b", 30, &w, &step, &parked), 0);
    assert_int_equal(step, 2); /* the step is taken, but nobody is parked on it */
    assert_false(parked);
    assert_int_equal(r.parked, 0);
    assert_int_equal(r.answered, 0);
}

static void thread_reads_a_stored_answer(void **state)
{
    struct fx *f = *state;
    struct session_waiter w;
    struct rec r;
    int step = 0;
    bool parked = false;
    char payload[64];

    assert_int_equal(session_hub_start(f->hub), 0);
    rec_init(&r, &w);
    assert_int_equal(session_hub_step(f->hub, f->id, "a", 30, &w, &step, &parked), 0);
    assert_true(parked);
    store_answer(f, 1, "from the store");
    snprintf(payload, sizeof(payload), "o:%s", f->id);
    session_hub_on_notify(f->hub, payload); /* as another server's answer would arrive */
    assert_int_equal(wait_answered(&r, 5000), 1);
    assert_int_equal(r.how, SESSION_ANSWERED);
    assert_int_equal(r.step, 1);
    assert_string_equal(r.observation, "from the store");
}

static void thread_answers_working_at_the_deadline(void **state)
{
    struct fx *f = *state;
    struct session_waiter w;
    struct rec r;
    int step = 0;
    bool parked = false;
    int64_t start = clock_mono_ms();

    assert_int_equal(session_hub_start(f->hub), 0);
    rec_init(&r, &w);
    assert_int_equal(session_hub_step(f->hub, f->id, "a", 1, &w, &step, &parked), 0);
    assert_true(parked);
    assert_int_equal(wait_answered(&r, 5000), 1);
    assert_true(clock_mono_ms() - start >= 1000);
    assert_int_equal(r.how, SESSION_WORKING);
    assert_int_equal(r.step, 1);
}

static void thread_answers_ended_when_the_session_ends(void **state)
{
    struct fx *f = *state;
    struct session_waiter w;
    struct rec r;
    struct task *t = NULL;
    int step = 0;
    bool parked = false;

    assert_int_equal(session_hub_start(f->hub), 0);
    rec_init(&r, &w);
    assert_int_equal(session_hub_step(f->hub, f->id, "a", 30, &w, &step, &parked), 0);
    assert_true(parked);
    assert_int_equal(session_hub_close(f->hub, f->id), 0);
    assert_int_equal(wait_answered(&r, 5000), 1);
    assert_int_equal(r.how, SESSION_ENDED);
    assert_int_equal(r.ended, TASK_CANCELLED);
    assert_int_equal(store_task_get(f->st, f->id, &t), 0);
    assert_int_equal(t->status, TASK_CANCELLED);
    task_free(t);
    /* Closing again: it has already ended. */
    assert_int_equal(session_hub_close(f->hub, f->id), ERR_CONFLICT);
}

#define SESSION_TESTS(setup)                                                           \
    {                                                                                  \
        cmocka_unit_test_setup_teardown(step_of_no_running_session_is_refused, setup, teardown),\
        cmocka_unit_test_setup_teardown(step_without_wait_is_not_parked, setup, teardown),\
        cmocka_unit_test_setup_teardown(answer_at_hand_answers_its_step_once, setup, teardown),\
        cmocka_unit_test_setup_teardown(host_is_woken_and_handed_the_step, setup, teardown),\
        cmocka_unit_test_setup_teardown(notifications_wake_the_host, setup, teardown),\
        cmocka_unit_test_setup_teardown(closing_answers_parked_steps_and_parks_no_more, setup,\
                                        teardown),\
        cmocka_unit_test_setup_teardown(thread_reads_a_stored_answer, setup, teardown),\
        cmocka_unit_test_setup_teardown(thread_answers_working_at_the_deadline, setup, teardown),\
        cmocka_unit_test_setup_teardown(thread_answers_ended_when_the_session_ends, setup,\
                                        teardown),\
    }

int main(void)
{
    const struct CMUnitTest sqlite_tests[] = SESSION_TESTS(setup_sqlite);
    const struct CMUnitTest pg_tests[] = SESSION_TESTS(setup_pg);
    int failed = cmocka_run_group_tests_name("sqlite", sqlite_tests, NULL, NULL);

    if (testdb_have_pg())
        failed += cmocka_run_group_tests_name("postgresql", pg_tests, NULL, NULL);
    return failed;
}
