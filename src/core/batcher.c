/* batcher: see batcher.h. */
#include "core/batcher.h"

#include <stddef.h>
#include <stdint.h>

void batcher_init(struct batcher *b, int max_busy, int max_items,
                  bool (*joins)(const struct batch_item *, const struct batch_item *),
                  void (*run)(void *ctx, struct batch_item *batch), void *ctx)
{
    pthread_mutex_init(&b->lock, NULL);
    b->head = NULL;
    b->tail = &b->head;
    b->busy = 0;
    b->max_busy = max_busy;
    b->max_items = max_items;
    b->min_beside = 1;
    b->linger_us = 0;
    b->in_flight = 0;
    b->joins = joins;
    b->run = run;
    b->ctx = ctx;
}

void batcher_destroy(struct batcher *b)
{
    pthread_mutex_destroy(&b->lock);
}

/* Detaches the oldest waiting item and up to max_items - 1 later ones that may join
 * it, in their order; the others keep theirs. With b's lock. */
static struct batch_item *take_batch(struct batcher *b)
{
    struct batch_item *first = b->head, **out = &first->next, **in = &b->head;
    int n = 1;

    b->head = first->next;
    *out = NULL;
    for (struct batch_item *it = b->head, *next; it; it = next) {
        next = it->next;
        if (n < b->max_items && (!b->joins || b->joins(first, it))) {
            *in = next;        /* out of the queue ... */
            it->next = NULL;
            *out = it;         /* ... into the batch */
            out = &it->next;
            n++;
        } else {
            in = &it->next;
        }
    }
    b->tail = in;
    return first;
}

/* Whether enough items wait to start a batch beside one being done. With b's lock. */
static bool enough(const struct batcher *b)
{
    int n = 0;

    for (const struct batch_item *it = b->head; it && n < b->min_beside; it = it->next)
        n++;
    return n >= b->min_beside;
}

static int64_t ns_of(const struct timespec *t)
{
    return (int64_t)t->tv_sec * 1000000000 + t->tv_nsec;
}

/* Whether a batch about to begin with none running waits for more: fewer wait than were
 * in flight when the last batch ended (or than a batch holds), less than linger_us ago;
 * *until the deadline. With b's lock. */
static bool lingers(const struct batcher *b, struct timespec *until)
{
    struct timespec now;
    int64_t end;
    int n = 0, want = b->in_flight < b->max_items ? b->in_flight : b->max_items;

    if (!b->linger_us || want < 2)
        return false;
    for (const struct batch_item *it = b->head; it && n < want; it = it->next)
        n++;
    if (n >= want)
        return false;
    clock_gettime(CLOCK_MONOTONIC, &now);
    end = ns_of(&b->last_end) + (int64_t)b->linger_us * 1000;
    if (ns_of(&now) >= end)
        return false;
    until->tv_sec = (time_t)(end / 1000000000);
    until->tv_nsec = (long)(end % 1000000000);
    return true;
}

void batcher_do(struct batcher *b, struct batch_item *me)
{
    pthread_condattr_t attr;
    struct timespec until;

    me->next = NULL;
    me->done = false;
    /* a monotonic clock for the linger: a wall clock set back would stretch it */
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&me->wake, &attr);
    pthread_condattr_destroy(&attr);
    pthread_mutex_lock(&b->lock);
    *b->tail = me;
    b->tail = &me->next;
    while (!me->done) {
        if (!b->head || b->busy >= b->max_busy || (b->busy > 0 && !enough(b))) {
            pthread_cond_wait(&me->wake, &b->lock);
            continue;
        }
        if (b->busy == 0 && lingers(b, &until)) {
            pthread_cond_timedwait(&me->wake, &b->lock, &until);
            continue;
        }
        struct batch_item *batch = take_batch(b);

        b->busy++;
        if (b->head && b->busy < b->max_busy)
            pthread_cond_signal(&b->head->wake); /* more than a batch waits */
        pthread_mutex_unlock(&b->lock);
        b->run(b->ctx, batch);
        pthread_mutex_lock(&b->lock);
        b->busy--;
        b->in_flight = 0;
        for (struct batch_item *it = b->head; it; it = it->next)
            b->in_flight++;
        clock_gettime(CLOCK_MONOTONIC, &b->last_end);
        for (struct batch_item *it = batch, *next; it; it = next) {
            next = it->next; /* its owner may return as soon as we let go of the lock */
            b->in_flight++;
            it->done = true;
            if (it != me)
                pthread_cond_signal(&it->wake);
        }
        if (b->head && b->head != me)
            pthread_cond_signal(&b->head->wake); /* the next batch's runner */
    }
    pthread_mutex_unlock(&b->lock);
    pthread_cond_destroy(&me->wake);
}
