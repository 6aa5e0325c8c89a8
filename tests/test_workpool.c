/* Unit tests: core/workpool, jobs that wait run on threads started as jobs come. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdbool.h>
#include <string.h>

#include "core/err.h"
#include "core/workpool.h"

/* Jobs that each wait until `open` is set: how many ran at once, and how many ended. */
struct gate {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool open;
    int running, most, ended;
    pthread_t threads[64];
    int n_threads;
};

static void gated(void *arg)
{
    struct gate *g = arg;
    pthread_t self = pthread_self();
    bool known = false;

    pthread_mutex_lock(&g->lock);
    for (int i = 0; i < g->n_threads; i++)
        known = known || pthread_equal(g->threads[i], self);
    if (!known)
        g->threads[g->n_threads++] = self;
    if (++g->running > g->most)
        g->most = g->running;
    pthread_cond_broadcast(&g->cond);
    while (!g->open)
        pthread_cond_wait(&g->cond, &g->lock);
    g->running--;
    g->ended++;
    pthread_cond_broadcast(&g->cond);
    pthread_mutex_unlock(&g->lock);
}

static void wait_running(struct gate *g, int n)
{
    pthread_mutex_lock(&g->lock);
    while (g->running < n)
        pthread_cond_wait(&g->cond, &g->lock);
    pthread_mutex_unlock(&g->lock);
}

static void open_gate(struct gate *g)
{
    pthread_mutex_lock(&g->lock);
    g->open = true;
    pthread_cond_broadcast(&g->cond);
    pthread_mutex_unlock(&g->lock);
}

static void waiting_jobs_run_together_up_to_the_limit(void **state)
{
    struct gate g = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER};
    struct workpool *p = workpool_new(4, "test");

    (void)state;
    assert_non_null(p);
    for (int i = 0; i < 10; i++)
        assert_int_equal(workpool_run(p, gated, &g), 0);
    wait_running(&g, 4); /* four threads, each holding one waiting job */
    pthread_mutex_lock(&g.lock);
    assert_int_equal(g.most, 4);
    assert_int_equal(g.ended, 0);
    pthread_mutex_unlock(&g.lock);
    open_gate(&g);
    workpool_free(p); /* the six still queued run before it returns */
    assert_int_equal(g.ended, 10);
    assert_int_equal(g.most, 4);
    assert_int_equal(g.n_threads, 4);
}

struct order {
    pthread_mutex_t lock;
    int seen[6], n;
};

struct order_job {
    struct order *o;
    int k;
};

static void record(void *arg)
{
    struct order_job *j = arg;

    pthread_mutex_lock(&j->o->lock);
    j->o->seen[j->o->n++] = j->k;
    pthread_mutex_unlock(&j->o->lock);
}

static void jobs_run_in_the_order_they_came(void **state)
{
    struct order o = {PTHREAD_MUTEX_INITIALIZER};
    struct order_job jobs[6];
    struct workpool *p = workpool_new(1, "test");

    (void)state;
    for (int i = 0; i < 6; i++) {
        jobs[i] = (struct order_job){&o, i};
        assert_int_equal(workpool_run(p, record, &jobs[i]), 0);
    }
    workpool_free(p);
    assert_int_equal(o.n, 6);
    for (int i = 0; i < 6; i++)
        assert_int_equal(o.seen[i], i);
}

static void a_drained_pool_runs_what_it_had_and_refuses_more(void **state)
{
    struct gate g = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, .open = true};
    struct workpool *p = workpool_new(2, "test");

    (void)state;
    assert_int_equal(workpool_run(p, gated, &g), 0);
    workpool_drain(p);
    assert_int_equal(g.ended, 1);
    assert_int_equal(workpool_run(p, gated, &g), ERR_UNAVAILABLE);
    assert_int_equal(g.ended, 1);
    workpool_free(p);
    workpool_free(NULL);
    workpool_drain(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(waiting_jobs_run_together_up_to_the_limit),
        cmocka_unit_test(jobs_run_in_the_order_they_came),
        cmocka_unit_test(a_drained_pool_runs_what_it_had_and_refuses_more),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
