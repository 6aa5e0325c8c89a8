/* batcher: requests made at the same time by several threads, done together.
 *
 * DESIGN
 * A group commit made by the caller (issue 17): each thread hands in its request and
 * waits; whichever thread finds requests waiting and a free place (at most max_busy
 * batches at once) takes all that wait, up to max_items that may go together, and does
 * them in one go (one statement, one commit) while the next batch forms; then every
 * thread of the batch returns. A request made alone is done at once by its own thread,
 * so an idle caller adds no wait. Each waiter has its own condition variable and is
 * woken only when its request is done, or when it is the oldest waiting and a place
 * came free (waking all at every batch's end cost six futex calls a request).
 *
 * Callers that ask again as soon as they are answered (internal workers: an end, then
 * the next task's end) would otherwise split: the first back finds no batch running and
 * goes alone, the rest wait behind it, and so on. With linger_us, a batch about to begin
 * with none running waits, at most that long after the last batch ended, until as many
 * wait as were then in flight (that batch's requests and those waiting behind it). */
#ifndef TASKEXEC_BATCHER_H
#define TASKEXEC_BATCHER_H

#include <pthread.h>
#include <stdbool.h>
#include <time.h>

/* A request, embedded first in the caller's own struct, on the caller's stack. */
struct batch_item {
    struct batch_item *next;   /* the rest of its batch while the batch is being done */
    pthread_cond_t wake;
    bool done;
};

struct batcher {
    pthread_mutex_t lock;
    struct batch_item *head, **tail; /* waiting, oldest first */
    int busy;                  /* batches being done now */
    int max_busy, max_items;
    /* How many must wait before a batch starts while another is being done (set after
     * init; 1 there): more makes fewer, larger batches, each waiting at most one
     * batch's time. */
    int min_beside;
    /* Microseconds a batch about to begin alone may wait for the requests of the last
     * (set after init; 0 there: never waits). */
    int linger_us;
    int in_flight;             /* the last batch's requests and those waiting at its end */
    struct timespec last_end;  /* when it ended, CLOCK_MONOTONIC */
    /* Whether item may be done in the batch that first begins (NULL: any may). Those
     * that may not wait, in their order, for a batch of their own. */
    bool (*joins)(const struct batch_item *first, const struct batch_item *item);
    /* Does a batch: items linked through next, oldest first, at least one. Each item's
     * result is the callee's to set in the caller's struct. */
    void (*run)(void *ctx, struct batch_item *batch);
    void *ctx;
};

void batcher_init(struct batcher *b, int max_busy, int max_items,
                  bool (*joins)(const struct batch_item *, const struct batch_item *),
                  void (*run)(void *ctx, struct batch_item *batch), void *ctx);
/* batcher_destroy: with nothing waiting. */
void batcher_destroy(struct batcher *b);
/* batcher_do: queues item and returns once a batch holding it was run, by this thread
 * or another. */
void batcher_do(struct batcher *b, struct batch_item *item);

#endif
