/* metrics: counters, gauges and histograms, rendered in the Prometheus text format.
 *
 * DESIGN
 * Counters and histograms are this process's own (Prometheus sums them across
 * servers). Gauges about the queue (tasks by state, workers by status) come from the
 * database, which every server shares; the housekeeper refreshes them about once a
 * second, so a scrape never waits on the database and never fails because of it
 * (taskexec_database_up goes to 0 instead). Every function is thread-safe and accepts
 * a NULL struct metrics (then it does nothing). */
#ifndef TASKEXEC_METRICS_H
#define TASKEXEC_METRICS_H

#include "core/buf.h"
#include "store/store.h"
#include "model/task.h"

#include <stdbool.h>
#include <stdint.h>

struct metrics;

int metrics_new(struct metrics **out) __attribute__((warn_unused_result));
void metrics_free(struct metrics *m);

void metrics_http(struct metrics *m, const char *route, const char *method, int status,
                  double seconds);
void metrics_task_created(struct metrics *m);
/* What became of a call through the LLM gateway. */
enum metrics_llm {
    METRICS_LLM_ANSWERED,       /* the upstream's answer (any status) reached the agent */
    METRICS_LLM_UNREACHABLE,    /* 502/503: the upstream could not be reached (or shutdown) */
    METRICS_LLM_TIMEOUT,        /* 504, or a stream cut by LLM_TIMEOUT_SECONDS */
    METRICS_LLM_CUT,            /* the agent went away mid-stream */
    METRICS_LLM_LOST,           /* its record could not be written */
    METRICS_LLM_N
};
void metrics_llm(struct metrics *m, enum metrics_llm what);
/* metrics_task_retried: a failed attempt went back to the queue (class: whose failure). */
void metrics_task_retried(struct metrics *m, enum task_error_class c);
/* metrics_task_finished: a task this process ended; wait and run are in seconds
 * (negative: unknown). */
void metrics_task_finished(struct metrics *m, enum task_status status, double wait,
                           double run);
void metrics_claim(struct metrics *m, double seconds);
/* metrics_exec_exit: how an executor ended: success, failure, crash, timeout, cancel. */
void metrics_exec_exit(struct metrics *m, const char *cause);
/* metrics_set_queue: the shared gauges, as read from the database (ok false: the read
 * failed; the last values stay and taskexec_database_up is 0). */
void metrics_set_queue(struct metrics *m, bool ok, const struct task_stats *tasks,
                       const int64_t workers[3]);
/* metrics_render: the whole exposition into out. ERR_NOMEM/ERR_TOOBIG. */
int metrics_render(struct metrics *m, struct buf *out) __attribute__((warn_unused_result));

#endif
