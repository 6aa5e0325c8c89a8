/* workpool: jobs run by up to a fixed number of threads, started as jobs come.
 *
 * DESIGN
 * For work that waits (on the database) and must not hold the thread that took it in:
 * an HTTP handler parks its request, hands the work here and returns, so the few HTTP
 * threads stay free while many such requests wait together (creates written in one
 * statement, issue 17). A thread is started when a job finds none idle and fewer than
 * max run; started threads stay until the pool is freed, so an idle server that never
 * had such a job has none. Jobs run in the order they came. */
#ifndef TASKEXEC_WORKPOOL_H
#define TASKEXEC_WORKPOOL_H

struct workpool;

/* workpool_new: a pool of at most max threads named name (for ps/top), none started;
 * NULL when out of memory. Free with workpool_free. */
struct workpool *workpool_new(int max, const char *name);
/* workpool_run: queues fn(arg). 0, or ERR_NOMEM / ERR_IO (no job queued and no thread
 * to run it: the caller runs fn itself), ERR_UNAVAILABLE once the pool is being freed. */
int workpool_run(struct workpool *p, void (*fn)(void *arg), void *arg)
    __attribute__((warn_unused_result));
/* workpool_drain: refuses new jobs (ERR_UNAVAILABLE), lets the threads run the jobs
 * still queued and joins them; NULL-safe. workpool_run stays callable until the free. */
void workpool_drain(struct workpool *p);
/* workpool_free: drains p (if not yet) and frees it; NULL-safe. */
void workpool_free(struct workpool *p);

#endif
