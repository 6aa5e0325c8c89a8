/* executor: the table of executors (EXECUTOR): what each is called, how its child is
 * started, and what a worker must do around its runs. The one place that names them;
 * everyone else asks the table. */
#ifndef TASKEXEC_EXECUTOR_H
#define TASKEXEC_EXECUTOR_H

#include <stdbool.h>

enum executor_start {
    EXECUTOR_START_NONE,     /* no child: the task completes at once (noop) */
    EXECUTOR_START_SELF,     /* this binary's `simulate` subcommand */
    EXECUTOR_START_COMMAND,  /* EXECUTOR_COMMAND, split like a shell would */
    EXECUTOR_START_RUNNER,   /* AIOPSLAB_PYTHON running the aiopslab runner, written into
                              * WORK_DIR at start-up */
};

struct executor {
    const char *name;          /* the EXECUTOR value */
    enum executor_start start;
    bool touches_cluster;      /* its runs use the worker's cluster: with CLUSTER_CHECK it is
                                * checked after each run (so no claim chained to an end) */
};

/* executor_find: the executor called name; NULL when none is (the settings table
 * already refuses other EXECUTOR values). */
const struct executor *executor_find(const char *name);

#endif
