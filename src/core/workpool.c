/* workpool: see workpool.h. */
#include "core/workpool.h"
#include "core/err.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

struct job {
    void (*fn)(void *arg);
    void *arg;
    struct job *next;
};

struct workpool {
    pthread_mutex_t lock;      /* guards everything below */
    pthread_cond_t wake;       /* a job came, or the pool is stopping */
    struct job *head, **tail;  /* queued, oldest first; each owned by the queue */
    pthread_t *threads;        /* max of them; the first n started */
    int max, n;
    int idle;                  /* threads waiting for a job and not yet sent one */
    bool stopping;
    char name[16];             /* pthread names are at most 15 bytes */
};

struct workpool *workpool_new(int max, const char *name)
{
    struct workpool *p = calloc(1, sizeof(*p));

    if (!p || !(p->threads = calloc((size_t)max, sizeof(*p->threads)))) {
        free(p);
        return NULL;
    }
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    p->tail = &p->head;
    p->max = max;
    strncpy(p->name, name, sizeof(p->name) - 1);
    return p;
}

static void *pool_main(void *arg)
{
    struct workpool *p = arg;

    pthread_mutex_lock(&p->lock);
    for (;;) {
        struct job *j = p->head;

        if (!j) {
            if (p->stopping)
                break;
            p->idle++; /* the producer that wakes us takes it back */
            pthread_cond_wait(&p->wake, &p->lock);
            continue;
        }
        p->head = j->next;
        if (!p->head)
            p->tail = &p->head;
        pthread_mutex_unlock(&p->lock);
        j->fn(j->arg);
        free(j);
        pthread_mutex_lock(&p->lock);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

int workpool_run(struct workpool *p, void (*fn)(void *arg), void *arg)
{
    struct job *j = malloc(sizeof(*j));
    int rc = 0;

    if (!j)
        return ERR_NOMEM;
    *j = (struct job){fn, arg, NULL};
    pthread_mutex_lock(&p->lock);
    if (p->stopping) {
        rc = ERR_UNAVAILABLE;
    } else if (p->idle > 0) {
        p->idle--; /* this thread is spoken for: the next job starts another */
        pthread_cond_signal(&p->wake);
    } else if (p->n < p->max) {
        if (pthread_create(&p->threads[p->n], NULL, pool_main, p) == 0)
            pthread_setname_np(p->threads[p->n++], p->name);
        else if (p->n == 0)
            rc = ERR_IO; /* nothing would ever run it */
    }
    if (rc == 0) {
        *p->tail = j;
        p->tail = &j->next;
    }
    pthread_mutex_unlock(&p->lock);
    if (rc < 0)
        free(j);
    return rc;
}

void workpool_drain(struct workpool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->lock);
    p->stopping = true;
    p->idle = 0;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    for (int i = 0; i < p->n; i++)
        pthread_join(p->threads[i], NULL);
    pthread_mutex_lock(&p->lock);
    p->n = 0; /* joined; workpool_run refuses jobs from now on */
    pthread_mutex_unlock(&p->lock);
}

void workpool_free(struct workpool *p)
{
    if (!p)
        return;
    workpool_drain(p);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->wake);
    free(p->threads);
    free(p);
}
