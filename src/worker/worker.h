/* worker: the internal worker manager: threads that claim tasks and run executors.
 *
 * DESIGN
 * Slots worker-001..MAX_INTERNAL_WORKERS each hold at most one thread. A thread
 * registers its worker row, then loops: claim one task (the store leases it), run
 * it through the executor, record the end, claim again; with nothing to claim it
 * sleeps on a condition variable that task creation signals, or for the poll
 * interval. Scaling down marks slots retiring: an idle thread leaves at once, a
 * busy one after its task. Stopping marks every slot retiring and returns at
 * once: no thread claims again. A housekeeper thread sends heartbeats for live
 * workers and runs the reaper.
 * Locking: wm->lock guards the slots' state, names and current task; it is never
 * held across a store call or a child process. */
#ifndef TASKEXEC_WORKER_H
#define TASKEXEC_WORKER_H

#include <jansson.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

struct config;
struct store;
struct queue;
struct metrics;
struct session_hub;
struct worker_manager;

/* What the manager uses; every pointer is borrowed and must outlive it. */
struct worker_deps {
    const struct config *cfg;        /* read-only once serving */
    struct store *store;
    struct queue *queue;             /* records ends and counts claims */
    struct metrics *metrics;         /* executor exits, the queue gauges */
    struct session_hub *sessions;    /* sessions hosted here */
    json_t *problems;                /* the catalog; read-only */
    const char *self_exe;            /* this binary, for the simulated executor */
    const char *aiopslab_script;     /* the aiopslab runner written out; "" if unused */
    _Atomic(const char *) *llm_url;  /* this server's LLM gateway; *llm_url is NULL until it
                                        is known (with PORT=0, once HTTP listens) */
    const char *llm_hide;            /* the upstreams' key variables, kept from executors */
};

/* worker_manager_new: prepared, with no threads; deps is copied. Caller frees with
 * worker_manager_free. */
int worker_manager_new(const struct worker_deps *deps, struct worker_manager **out)
    __attribute__((warn_unused_result));
/* worker_manager_shutdown: stops every thread (running tasks are stopped and failed
 * with the reason) and waits for them; the manager stays valid (a late request that
 * cancels or scales finds nothing to do) until worker_manager_free. */
void worker_manager_shutdown(struct worker_manager *wm);
/* worker_manager_free: stops every thread (running tasks are stopped and failed
 * with the reason) and frees; NULL-safe. */
void worker_manager_free(struct worker_manager *wm);

/* worker_manager_housekeeping: starts the heartbeat/reaper thread. */
int worker_manager_housekeeping(struct worker_manager *wm) __attribute__((warn_unused_result));
/* worker_manager_scale: makes n workers active; *previous gets the count before.
 * ERR_INVALID when n is out of range. */
int worker_manager_scale(struct worker_manager *wm, int n, int *previous)
    __attribute__((warn_unused_result));
/* worker_manager_stop: no worker claims again; *stopped gets how many were active. */
void worker_manager_stop(struct worker_manager *wm, int *stopped);
/* worker_manager_start: restarts the last configured count (or NUM_INTERNAL_WORKERS). */
int worker_manager_start(struct worker_manager *wm, int *count)
    __attribute__((warn_unused_result));
/* worker_manager_notify: a task was queued; wakes one idle worker. */
void worker_manager_notify(struct worker_manager *wm);
/* worker_manager_cancel: stops the run of task_id if an internal worker has it. */
bool worker_manager_cancel(struct worker_manager *wm, const char *task_id);
/* worker_expand: pattern with "{worker}" replaced by worker, into out. */
void worker_expand(const char *pattern, const char *worker, char *out, size_t size);

/* worker_manager_status: {"running","num_workers","workers":[{"id","status","current_task"}]}
 * as a new reference. */
json_t *worker_manager_status(struct worker_manager *wm);

#endif
