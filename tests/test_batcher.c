/* Unit tests: core/batcher, requests made at the same time done together. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdbool.h>
#include <string.h>
#include <unistd.h>

#include "core/batcher.h"

struct seen;

/* A request: its key (which requests may go together) and name. */
struct req {
    struct batch_item base;
    char key, name;
    int batch;                 /* the batch that did it, from 1 */
    struct seen *s;
};

/* What the test sees: every batch run, in order, as the names of its requests; a batch
 * holding the request named `held` waits until the test lets it go. */
struct seen {
    struct batcher b;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    char batches[16][16];
    int beside[16];            /* batches running when each began, itself included */
    int n_batches, running;
    char held;
    bool go;
};

static bool same_key(const struct batch_item *first, const struct batch_item *item)
{
    return ((const struct req *)first)->key == ((const struct req *)item)->key;
}

static void run(void *ctx, struct batch_item *batch)
{
    struct seen *s = ctx;
    bool hold = false;
    int k = 0;

    pthread_mutex_lock(&s->lock);
    int me = s->n_batches++;
    for (struct batch_item *it = batch; it; it = it->next) {
        struct req *r = (struct req *)it;

        s->batches[me][k++] = r->name;
        r->batch = me + 1;
        hold = hold || r->name == s->held;
    }
    s->beside[me] = ++s->running;
    pthread_cond_broadcast(&s->cond);
    while (hold && !s->go)
        pthread_cond_wait(&s->cond, &s->lock);
    s->running--;
    pthread_mutex_unlock(&s->lock);
}

static void seen_init(struct seen *s, int max_busy, int max_items, bool keyed)
{
    memset(s, 0, sizeof(*s));
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    batcher_init(&s->b, max_busy, max_items, keyed ? same_key : NULL, run, s);
}

static void *submit(void *arg)
{
    struct req *r = arg;

    batcher_do(&r->s->b, &r->base);
    return NULL;
}

/* Starts r's request on thread th; returns once it waits in the queue or runs. */
static void start(struct seen *s, struct req *r, pthread_t *th, int queued_after)
{
    r->s = s;
    pthread_create(th, NULL, submit, r);
    for (;;) {
        int n = 0;

        pthread_mutex_lock(&s->b.lock);
        for (struct batch_item *it = s->b.head; it; it = it->next)
            n++;
        pthread_mutex_unlock(&s->b.lock);
        if (n >= queued_after)
            return;
        usleep(1000);
    }
}

static void wait_batches(struct seen *s, int n)
{
    pthread_mutex_lock(&s->lock);
    while (s->n_batches < n)
        pthread_cond_wait(&s->cond, &s->lock);
    pthread_mutex_unlock(&s->lock);
}

static void release(struct seen *s)
{
    pthread_mutex_lock(&s->lock);
    s->go = true;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

/* One batch at a time: what waits behind the first is done together, only requests of
 * the same key in one batch, each kind in its order, at most max_items. */
static void waiting_requests_go_together_by_key(void **state)
{
    (void)state;
    struct seen s;
    struct req r[6] = {{.key = 'a', .name = '0'}, {.key = 'b', .name = 'B'},
                       {.key = 'a', .name = '1'}, {.key = 'a', .name = '2'},
                       {.key = 'a', .name = '3'}, {.key = 'b', .name = 'C'}};
    pthread_t th[6];

    seen_init(&s, 1, 2, true);
    s.held = '0';
    start(&s, &r[0], &th[0], 0);
    wait_batches(&s, 1); /* alone: done at once */
    for (int i = 1; i < 6; i++)
        start(&s, &r[i], &th[i], i);
    release(&s);
    for (int i = 0; i < 6; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(s.n_batches, 4);
    assert_string_equal(s.batches[0], "0");
    assert_string_equal(s.batches[1], "BC"); /* the oldest waiting, and its kind */
    assert_string_equal(s.batches[2], "12"); /* two at most */
    assert_string_equal(s.batches[3], "3");
    for (int i = 0; i < 6; i++)
        assert_true(r[i].batch > 0);
    batcher_destroy(&s.b);
}

/* Two places, min_beside 2: r[0] is being done (held), r[1] waits in the queue. */
static void held_with_one_waiting(struct seen *s, struct req *r, pthread_t *th)
{
    seen_init(s, 2, 8, false);
    s->b.min_beside = 2;
    s->held = '0';
    start(s, &r[0], &th[0], 0);
    wait_batches(s, 1);
    start(s, &r[1], &th[1], 1);
}

/* With min_beside 2, a lone request waits beside a batch being done until a second
 * comes; two together start at once beside it. */
static void beside_a_batch_a_lone_request_waits_for_company(void **state)
{
    (void)state;
    struct seen s;
    struct req r[3] = {{.name = '0'}, {.name = '1'}, {.name = '2'}};
    pthread_t th[3];

    held_with_one_waiting(&s, r, th);
    usleep(50 * 1000);
    pthread_mutex_lock(&s.lock);
    assert_int_equal(s.n_batches, 1); /* a place is free, yet '1' waits */
    pthread_mutex_unlock(&s.lock);
    start(&s, &r[2], &th[2], 0);
    wait_batches(&s, 2);
    pthread_mutex_lock(&s.lock);
    assert_string_equal(s.batches[1], "12");
    assert_int_equal(s.beside[1], 2); /* while '0' was still held */
    pthread_mutex_unlock(&s.lock);
    release(&s);
    for (int i = 0; i < 3; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(s.n_batches, 2);
    batcher_destroy(&s.b);
}

/* Without company, the lone request is done when the batch beside it ends. */
static void a_lone_request_is_done_once_the_batch_beside_it_ends(void **state)
{
    (void)state;
    struct seen s;
    struct req r[2] = {{.name = '0'}, {.name = '1'}};
    pthread_t th[2];

    held_with_one_waiting(&s, r, th);
    release(&s);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(s.n_batches, 2);
    assert_string_equal(s.batches[1], "1");
    batcher_destroy(&s.b);
}

/* A batch of one place made of '0' (held) and, waiting behind it, '1' and '2'; then
 * '0' let go: three were in flight when it ended. */
static void three_in_flight(struct seen *s, struct req *r, pthread_t *th, int linger_us)
{
    seen_init(s, 1, 8, false);
    s->b.linger_us = linger_us;
    s->held = '0';
    start(s, &r[0], &th[0], 0);
    wait_batches(s, 1);
    start(s, &r[1], &th[1], 1);
    start(s, &r[2], &th[2], 2);
    release(s);
    pthread_join(th[0], NULL);
}

/* With a linger, the requests that waited behind a batch do not go as soon as it ends:
 * they wait until as many as were in flight are back ('0' asks again as '3'). */
static void after_a_batch_the_next_waits_for_those_in_flight(void **state)
{
    (void)state;
    struct seen s;
    struct req r[4] = {{.name = '0'}, {.name = '1'}, {.name = '2'}, {.name = '3'}};
    pthread_t th[4];

    three_in_flight(&s, r, th, 60 * 1000 * 1000);
    usleep(50 * 1000);
    pthread_mutex_lock(&s.lock);
    assert_int_equal(s.n_batches, 1); /* '1' and '2' wait for a third */
    pthread_mutex_unlock(&s.lock);
    start(&s, &r[3], &th[3], 0);
    for (int i = 1; i < 4; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(s.n_batches, 2);
    assert_string_equal(s.batches[1], "123");
    batcher_destroy(&s.b);
}

/* The wait ends linger_us after the last batch ended, however few came back; and a
 * request made long after a batch goes at once, alone. */
static void the_linger_ends_and_a_late_request_goes_alone(void **state)
{
    (void)state;
    struct seen s;
    struct req r[4] = {{.name = '0'}, {.name = '1'}, {.name = '2'}, {.name = '3'}};
    pthread_t th[4];

    three_in_flight(&s, r, th, 30 * 1000);
    for (int i = 1; i < 3; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(s.n_batches, 2);
    assert_string_equal(s.batches[1], "12");
    usleep(60 * 1000);
    start(&s, &r[3], &th[3], 0);
    pthread_join(th[3], NULL);
    assert_int_equal(s.n_batches, 3);
    assert_string_equal(s.batches[2], "3");
    batcher_destroy(&s.b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(waiting_requests_go_together_by_key),
        cmocka_unit_test(beside_a_batch_a_lone_request_waits_for_company),
        cmocka_unit_test(a_lone_request_is_done_once_the_batch_beside_it_ends),
        cmocka_unit_test(after_a_batch_the_next_waits_for_those_in_flight),
        cmocka_unit_test(the_linger_ends_and_a_late_request_goes_alone),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
