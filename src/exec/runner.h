/* runner: runs one task through the configured executor, the same code for
 * internal workers (writing to the store) and external workers (writing over HTTP).
 *
 * DESIGN
 * The runner owns the child (through exec), batches what it prints into log lines
 * and conversation messages, and hands each batch to a sink every 50 ms or 128
 * events. A batch the sink cannot take (database or API down) is kept and offered
 * again, up to a bound, so a short outage loses nothing. Each tick it asks the sink
 * whether to stop (cancelled, lease lost, shutdown). At the end it decides the
 * task's final state from the executor's result and exit. */
#ifndef TASKEXEC_RUNNER_H
#define TASKEXEC_RUNNER_H

#include "exec/exec.h"
#include "store/store.h"
#include "model/task.h"

#include <jansson.h>

struct runner_sink {
    void *ctx;
    /* Store a batch; < 0 keeps it for the next try. */
    int (*logs)(void *ctx, const char *task_id, const struct log_entry *e, size_t n);
    int (*messages)(void *ctx, const char *task_id, const struct msg_entry *e, size_t n);
    /* Why to stop now, or EXEC_STOP_NONE; called at least ten times a second. */
    enum exec_stop (*check)(void *ctx);
    /* Interactive sessions (all NULL: this sink hosts none, and such a task fails). */
    int (*session_ready)(void *ctx, const char *task_id, json_t *ready, int max_steps);
    /* The action of the step after `after`, if one is in flight (*step 0 when none;
     * *action malloc'd). */
    int (*session_next)(void *ctx, const char *task_id, int after, int *step, char **action);
    /* answer: {"observation","done","reward","results"} for step, stored with the step's
     * messages (msgs) in one go. */
    int (*session_answer)(void *ctx, const char *task_id, int step, json_t *answer,
                          const struct msg_entry *msgs, size_t n_msgs);
    void (*session_end)(void *ctx, const char *task_id);
    int wake_fd;                  /* readable when a step may have arrived; -1: poll only */
};

struct executor;

struct runner {
    const struct executor *executor; /* from the table (exec/executor.h) */
    char *const *command;         /* argv of the command executor */
    const char *python;           /* aiopslab: the interpreter */
    const char *script;           /* aiopslab: the runner script (runner_write_aiopslab) */
    const char *pythonpath;       /* aiopslab: prepended to PYTHONPATH, or NULL */
    const char *kubeconfig;       /* the worker's cluster, or NULL */
    const char *self_exe;         /* this binary, for "simulated" */
    const char *work_dir;         /* each task runs in work_dir/<task id> */
    const char *worker_id;
    int grace_seconds;
    size_t max_output;
    const char *llm_url;          /* the LLM gateway for this task (OPENAI_BASE_URL), or NULL */
    const char *llm_key;          /* its key for this task's attempt (OPENAI_API_KEY) */
    const char *llm_hide;         /* variables (comma-separated) kept from the executor: the
                                     upstreams' real keys (NULL: none) */
    bool keep_final_logs;         /* leave the last log lines in the result, for the caller
                                     to store with the task's end in one transaction */
};

struct runner_result {
    enum task_status status;      /* completed, failed, timeout or cancelled */
    json_t *result;               /* the executor's result (owned), NULL when none */
    char error[512];              /* why, when not completed; "" otherwise */
    const char *cause;            /* success, failure, crash, timeout or cancel (static) */
    enum task_error_class error_class; /* when failed: whose failure (see runner.c) */
    double seconds;
    struct log_entry *logs;       /* with keep_final_logs: lines not stored yet (owned) */
    size_t n_logs;
    json_t *log_objs;             /* what logs[] point into (owned) */
};

struct config;

/* runner_init: a runner from the settings every worker shares; the worker-specific
 * parts are given (borrowed: they must outlive the runner). */
void runner_init(struct runner *rn, const struct config *cfg, const char *worker_id,
                 char *const *command, const char *self_exe, const char *script,
                 const char *pythonpath, const char *kubeconfig);

/* runner_run: runs t to its end and fills out (caller calls runner_result_reset).
 * Blocks the calling thread for the child's whole life. */
void runner_run(const struct runner *rn, const struct runner_sink *sink, const struct task *t,
                struct runner_result *out);
/* runner_mkdirs: mkdir -p. ERR_IO when a component cannot be made. */
int runner_mkdirs(const char *path) __attribute__((warn_unused_result));

/* runner_write_aiopslab: writes the aiopslab runner script built into this binary to
 * dir/aiopslab_runner.py and puts that path in path. ERR_IO when it cannot. */
int runner_write_aiopslab(const char *dir, char *path, size_t size)
    __attribute__((warn_unused_result));

/* runner_result_reset: frees what the result owns. */
void runner_result_reset(struct runner_result *r);
/* runner_python_env: this process's environment with pythonpath (NULL: none) ahead of
 * its PYTHONPATH, for the aiopslab runner's helper calls. Caller frees with
 * runner_env_free; NULL without memory. */
char **runner_python_env(const char *pythonpath);
void runner_env_free(char **env);

#endif
