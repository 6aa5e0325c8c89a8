/* store: the storage interface. One vtable (struct store_ops), one folder per
 * backend (store/sqlite/, store/pg/: a file per concern and a private header), and the
 * store_* wrappers everyone calls (store.c). What the backends share is written once
 * above them: most operations, one file per concern over store/db.h (a statement
 * table in both dialects, the C once); store/rows.c turns rows into the API's values
 * (through a cursor whose next() says row, done or error) and store/rules.[ch] holds
 * the business rules (the failure texts the store writes, supported_problems globs).
 *
 * DESIGN
 * The queue rules live in the SQL of each backend so that they hold across
 * threads and processes: a claim picks and leases one pending task in one
 * transaction; finishing a task changes it only while the caller still holds its
 * lease and it is still running, so a reaped, cancelled or re-leased task is never
 * overwritten. A claim's started_at is never before the task's created_at: callers
 * take "now" on different threads and servers. Every function is safe to call from any thread at the same time.
 * Reads that feed the API return jansson values built in the API's shapes.
 *
 * ERRORS (every operation, unless its contract says more): 0 on success, else a
 * negative code from core/err.h, logged where it happened: ERR_STORE (the database
 * refused or failed), ERR_UNAVAILABLE (PostgreSQL unreachable; the API answers 503),
 * ERR_NOMEM. A read that fails part way fails whole: it never returns a short list,
 * and a failed read is never reported as ERR_NOTFOUND. On error the out-parameters are
 * unchanged (or reset to empty, where a contract says so) and the caller owns nothing
 * new. Values returned through json_t ** are new references the caller json_decref's;
 * struct task ** the caller frees with task_free. */
#ifndef TASKEXEC_STORE_H
#define TASKEXEC_STORE_H

#include "model/experiment.h"
#include "model/llm_call.h"
#include "model/task.h"
#include "core/buf.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct store;

struct task_filter {
    int status;              /* -1: any */
    const char *problem_id;  /* NULL: any */
    const char *worker_id;   /* NULL: any */
    int64_t since, until;    /* created_at bounds in us; 0: none */
    bool oldest_first;       /* default newest first */
    int64_t limit, offset;
    int64_t after_seq;       /* keyset paging: only tasks queued after this one; 0: none */
    bool no_total;           /* skip counting (total stays 0) */
    const char *experiment_id; /* NULL: any; else that experiment's current slot tasks */
};

struct task_page {
    struct task **items;     /* owned; free with store_task_page_reset */
    size_t n;
    int64_t total;           /* matching rows, ignoring limit/offset */
};

struct claim_req {
    const char *worker_id;
    const char *backend_type;
    const char *const *patterns; /* supported_problems globs; n_patterns 0: any problem */
    size_t n_patterns;
    const char *lease_token;
    int64_t now;
};

struct task_stats {
    int64_t counts[TASK_N_STATUS];
    int64_t total;
    double avg_wait_seconds;     /* created -> started, over started tasks; <0: none */
    double avg_run_seconds;      /* started -> completed, over finished tasks; <0: none */
};

struct log_entry {
    int64_t ts;
    int level;                   /* enum proto_level */
    const char *message;         /* borrowed */
    json_t *context;             /* borrowed object */
};

struct msg_entry {
    int64_t ts;
    json_t *msg;                 /* borrowed: {"role","content","step","session_id","metadata"} */
};

struct task_end {
    enum task_status status;     /* completed, failed, timeout or cancelled */
    json_t *result;              /* borrowed; NULL: none */
    const char *error;           /* NULL when completed */
    int64_t now;
    enum task_error_class error_class; /* failed: whose failure; NONE otherwise */
    /* retry_at (failed only): not an end but a retry: the task goes back to pending with
     * its attempt recorded in attempts, attempt + 1, and is claimed no sooner than this
     * (us), preferably by another worker (the one it failed on waits as long again).
     * 0: the end is final. The caller decides (service/queue.c); the store applies it. */
    int64_t retry_at;
    const struct log_entry *logs; /* stored with the end; may be NULL */
    size_t n_logs;
    /* claim_next (optional): once the end is recorded, the same worker's next task is
     * claimed in the same transaction (one commit a task instead of two); *next is the
     * claimed task (caller frees) or stays NULL when none is waiting. */
    const struct claim_req *claim_next;
    struct task **next;
};

struct worker_reg {
    const char *id;
    const char *backend_type;
    json_t *capabilities;        /* borrowed object */
    const char *token_hash;      /* NULL for internal workers */
    const char *name_prefix;     /* internal workers: the server's WORKER_NAME_PREFIX; else NULL */
    int64_t now;
};

struct webhook_job {
    char task_id[TASK_ID_LEN + 1];   /* the task's id, or the experiment's */
    bool experiment;                 /* an experiment's end, not a task's */
    char *url;                   /* owned: free() */
    int attempts;                /* made so far */
};

struct reap_result {
    int workers_offline;
    int tasks_failed;
    int tasks_timed_out;
    int tasks_retried;
};

struct store_ops {
    const char *name;              /* "sqlite" or "postgresql" */
    /* groups_inserts: task_insert calls made at the same time are written together (one
     * statement, one commit), so callers gain by making them from many threads. */
    bool groups_inserts;
    /* open: url without the sqlite:// prefix for SQLite (a path, or ":memory:"), the
     * whole URL for PostgreSQL; creates or upgrades the schema. */
    int (*open)(const char *url, struct store **out);
    /* close: frees st and everything it holds (stops the listener first). */
    void (*close)(struct store *st);
    /* ping: one trivial query; 0 when the database answers. */
    int (*ping)(struct store *st);
    /* listen (optional, NULL when the backend has no notifications): calls on_task
     * from a thread of the store whenever any server queues a task; listen(st, NULL,
     * NULL) stops it, after which on_task is never called again. */
    int (*listen)(struct store *st, void (*on_task)(void *ctx), void *ctx);
    /* listen_sessions (optional): on_session(ctx, payload) for every notify() of any
     * server, and (ctx, NULL) after a reconnection (something may have been missed).
     * Set before listen; stopped with it. */
    void (*listen_sessions)(struct store *st, void (*on_session)(void *ctx, const char *payload),
                            void *ctx);

    /* task_insert: stores t as pending (t stays the caller's). When t has an
     * idempotency_key that is already stored, nothing is inserted and *existing is that
     * task (caller frees); else *existing is NULL. */
    int (*task_insert)(struct store *st, struct task *t, struct task **existing);
    /* task_get: the task (caller frees); ERR_NOTFOUND for an unknown id. */
    int (*task_get)(struct store *st, const char *id, struct task **out);
    /* task_list: a page of tasks in queue order (newest first unless oldest_first) and,
     * unless no_total, how many match; *out is reset first and on error (free with
     * store_task_page_reset). */
    int (*task_list)(struct store *st, const struct task_filter *f, struct task_page *out);
    /* task_cancel: a pending or running task becomes cancelled (error "cancelled by
     * request[ while running]"); *out is the task after it (caller frees). ERR_CONFLICT
     * with *out the task when it had ended already; ERR_NOTFOUND for an unknown id. */
    int (*task_cancel)(struct store *st, const char *id, int64_t now, struct task **out);
    /* task_claim: picks the next pending task of req->backend_type whose problem one
     * of req->patterns matches (any, with none), by priority then queue order, leases
     * it to req->worker_id with req->lease_token and marks the worker busy, atomically;
     * *out the running task (caller frees). ERR_NOTFOUND when none is waiting. */
    int (*task_claim)(struct store *st, const struct claim_req *req, struct task **out);
    /* task_finish: ends a running task whose lease the caller holds (ERR_CONFLICT
     * otherwise, ERR_NOTFOUND for no such task). end->logs are stored in the same
     * transaction, even when the end is refused, so a run's last lines cost no commit
     * of their own. */
    int (*task_finish)(struct store *st, const char *id, const char *lease_token,
                       const struct task_end *end);
    /* task_lease_status: *status of the task; ERR_FORBIDDEN when lease_token is not
     * its lease (status still set), ERR_NOTFOUND for an unknown id. */
    int (*task_lease_status)(struct store *st, const char *id, const char *lease_token,
                             enum task_status *status);
    /* task_stats: counts per state (kept by triggers: cheap); with_averages adds the mean
     * queue wait and run time, which read every started task. */
    int (*task_stats)(struct store *st, bool with_averages, struct task_stats *out);

    /* logs_append: n log lines of task_id, in one transaction (e stays the caller's). */
    int (*logs_append)(struct store *st, const char *task_id, const struct log_entry *e,
                       size_t n);
    /* logs_list: a page of task_id's lines at min_level or above, oldest first, as
     * [{"timestamp","level","message","context"}], and *total of them. */
    int (*logs_list)(struct store *st, const char *task_id, int min_level, int64_t limit,
                     int64_t offset, json_t **logs, int64_t *total);
    /* messages_append: n conversation messages of task_id in one transaction; each
     * goes to the conversation of its session_id (the task's id when none), made on its
     * first message, whose counts, tokens and model it updates. */
    int (*messages_append)(struct store *st, const char *task_id, const struct msg_entry *e,
                           size_t n);
    /* conversations_list: a page of conversations (newest first), filtered by task and
     * model when not NULL, without messages, and *total of them. */
    int (*conversations_list)(struct store *st, const char *task_id, const char *model_name,
                              int64_t limit, int64_t offset, json_t **items, int64_t *total);
    /* conversation_get: one conversation, with "messages" when asked; ERR_NOTFOUND. */
    int (*conversation_get)(struct store *st, const char *id, bool with_messages,
                            json_t **out);
    /* task_conversations: every conversation of a task, each with its "messages". */
    int (*task_conversations)(struct store *st, const char *task_id, json_t **out);
    /* export_extras (optional; NULL: the export builds them from logs_list and
     * task_conversations): appends ,"logs":[…] and/or ,"conversations":[…] (each with
     * its "chat") for one task as JSON text, made by the database from the stored JSON
     * without parsing it here. */
    int (*export_extras)(struct store *st, const char *task_id, bool logs, bool convs,
                         struct buf *out);
    /* conversation_stats: {"total_conversations", "conversations_by_model",
     * "avg_messages_per_conversation", "total_tokens_consumed", "success_rate",
     * "successful_conversations"}. */
    int (*conversation_stats)(struct store *st, json_t **out);

    /* worker_register: creates or revives the row. An external worker (token_hash set)
     * registering again fails its running tasks (that run is lost). ERR_CONFLICT when
     * the id belongs to the other kind (internal versus external). */
    int (*worker_register)(struct store *st, const struct worker_reg *reg);
    /* worker_token: the stored token hash of an external worker (caller frees; NULL
     * for an internal one). ERR_NOTFOUND for an unknown id. */
    int (*worker_token)(struct store *st, const char *id, char **token_hash);
    /* worker_heartbeat: the workers' last heartbeat is now; offline ones are idle
     * again. Unknown ids are ignored. */
    int (*worker_heartbeat)(struct store *st, const char *const *ids, size_t n, int64_t now);
    /* worker_set_status: status ("idle", "offline") with no current task; metadata,
     * when not NULL, replaces the row's metadata (provisioning state, errors). */
    int (*worker_set_status)(struct store *st, const char *id, const char *status,
                             json_t *metadata);
    /* worker_list: the workers (filtered by status and backend when not NULL), by id,
     * as API objects ("id", "status", "last_heartbeat", "internal", ...). */
    int (*worker_list)(struct store *st, const char *status, const char *backend_type,
                       json_t **out);
    /* worker_get: one worker as worker_list shows it; ERR_NOTFOUND. */
    int (*worker_get)(struct store *st, const char *id, json_t **out);
    /* worker_counts: workers idle, busy and offline (counts untouched on error). */
    int (*worker_counts)(struct store *st, int64_t counts[3]);

    /* reap: workers silent for longer than heartbeat_timeout_us go offline and their
     * running tasks fail as infrastructure failures: retried (pending again at
     * now + retry_base_us x 2^(attempt-1), see task_end.retry_at) while attempt <=
     * max_retries, else failed; running tasks past their deadline by more than that time
     * out. *out counts what changed (zeroed first). */
    int (*reap)(struct store *st, int64_t now, int64_t heartbeat_timeout_us,
                int64_t retry_base_us, struct reap_result *out);
    /* recover: at start-up, tasks left running by this server's internal workers
     * (name_prefix) fail, retried as reap does, and those workers go offline;
     * *n_failed of them (retried or not). */
    int (*recover)(struct store *st, const char *name_prefix, int64_t now,
                   int64_t retry_base_us, int *n_failed);

    /* experiment_create: e and its n tasks (each with experiment_id and slot) in one
     * transaction; each task becomes its slot's current task. */
    int (*experiment_create)(struct store *st, const struct experiment *e,
                             struct task *const *tasks, size_t n);
    /* experiment_get: *out the experiment with its current tasks counted per state and
     * ended_at (caller frees). ERR_NOTFOUND. */
    int (*experiment_get)(struct store *st, const char *id, struct experiment **out);
    /* experiment_list: a page of experiments as API JSON, newest first; *total of them. */
    int (*experiment_list)(struct store *st, int64_t limit, int64_t offset, json_t **items,
                           int64_t *total);
    /* experiment_scoreboard: per (problem_id, agent_config_index) of the current tasks,
     * ordered so: {"problem_id","agent_config_index","attempts","ended","solved",
     * "reward_sum","steps_sum","tokens_sum","duration_sum"} (sums over ended tasks;
     * solved: result.solved, else result.success; reward: result.reward, else 1 when
     * solved; steps: result.metrics.steps_taken; tokens: the task's conversations'
     * total_tokens). ERR_NOTFOUND. */
    int (*experiment_scoreboard)(struct store *st, const char *id, json_t **rows);
    /* experiment_cancel: marks the experiment cancelled (once) and cancels each of its
     * tasks still pending or running; *running the ids of those that were running (an
     * array of strings). ERR_NOTFOUND. */
    int (*experiment_cancel)(struct store *st, const char *id, int64_t now, json_t **running);
    /* experiment_slots: the slots ({"problem_id","agent_config_index","attempt"}) whose
     * current task ended failed or timeout, or with unsolved any end but a solved one.
     * ERR_NOTFOUND. */
    int (*experiment_slots)(struct store *st, const char *id, bool unsolved, json_t **slots);
    /* experiment_add_tasks: new tasks of the experiment in one transaction, each
     * becoming its slot's current task (the one before stays, no longer current) — but
     * only where that one has ended, so two reruns at once add each slot once; *added:
     * how many were added. */
    int (*experiment_add_tasks)(struct store *st, const char *id, struct task *const *tasks,
                                size_t n, size_t *added);

    /* webhooks_due: up to max deliveries due by now (tasks that ended with a
     * callback_url), leased for lease_us so no other sender takes them meanwhile;
     * *n of them in jobs (each url malloc'd: the caller frees it; *n 0 on error). */
    int (*webhooks_due)(struct store *st, int64_t now, int64_t lease_us, size_t max,
                        struct webhook_job *jobs, size_t *n);
    /* webhook_result: state "delivered", "pending" (try again at next_at) or "failed", of
     * job's task or experiment. */
    int (*webhook_result)(struct store *st, const struct webhook_job *job, const char *state,
                          int attempts, int64_t next_at, const char *error);
    /* experiments_end: each experiment not ended yet whose current tasks have all ended
     * gets ended_at now, its webhook made due (when it has a callback_url) and an
     * "experiment" event in the journal, in one transaction, so one server does it once;
     * *n of them. A rerun opens an experiment again (experiment_add_tasks). */
    int (*experiments_end)(struct store *st, int64_t now, int *n);

    /* The event journal, written by triggers on tasks and workers. events_head: the newest
     * event id and log line id. events_after / logs_after: up to limit rows after an id, in
     * id order, as JSON objects with "id" and "ts_us" (caller frees). events_prune: drops
     * events older than before (never the newest, so ids keep rising). */
    int (*events_head)(struct store *st, int64_t *event_id, int64_t *log_id);
    int (*events_after)(struct store *st, int64_t after, int limit, json_t **out);
    int (*logs_after)(struct store *st, int64_t after, int limit, json_t **out);
    int (*events_prune)(struct store *st, int64_t before);
    /* task_timeseries: per bucket since `since`, how many tasks were submitted, started,
     * completed, failed (or timed out), cancelled, and the mean queue wait of those started. */
    int (*task_timeseries)(struct store *st, int64_t since, int64_t bucket_us, json_t **out);

    /* Interactive sessions: one row per session task, the step in flight and the last
     * answer. The runner hosting the session writes ready/answer/end; any server's API
     * writes step. A backend shared by several servers (PostgreSQL) tells every server's
     * listener (listen_sessions) of each step ("a:<id>") and answer or end ("o:<id>") in
     * the same transaction. */
    /* session_ready: the environment is up (creates or resets the row). */
    int (*session_ready)(struct store *st, const char *task_id, json_t *ready, int max_steps,
                         int64_t now);
    /* session_get: the row as JSON ("state", "step", "answered", "observation", "done",
     * "reward", "results", "task_description", "instructions", "actions", "max_steps",
     * "last_activity_us"); ERR_NOTFOUND before the environment is ready. */
    int (*session_get)(struct store *st, const char *task_id, json_t **out);
    /* session_step: takes the next step number for action when the session's task is
     * running, it is ready, no step is in flight and max_steps is not reached;
     * ERR_CONFLICT otherwise (also for no such session). */
    int (*session_step)(struct store *st, const char *task_id, const char *action, int64_t now,
                        int *step);
    /* session_next: the action in flight after step `after` (*step 0 when none; *action
     * malloc'd, caller frees). */
    int (*session_next)(struct store *st, const char *task_id, int after, int *step,
                        char **action);
    /* session_answer: the environment's answer to step (answer: {"observation","done",
     * "reward","results"}), stored in one transaction with the step's conversation
     * messages (one commit a step, not two). */
    int (*session_answer)(struct store *st, const char *task_id, int step, json_t *answer,
                          const struct msg_entry *msgs, size_t n_msgs, int64_t now);
    /* session_end: the environment is gone (whatever the reason); no more steps.
     * Nothing for a task without a session. */
    int (*session_end)(struct store *st, const char *task_id);
    /* session_idle: running sessions with no step since `before` (up to max ids into
     * ids, *n of them; 0 on error). */
    int (*session_idle)(struct store *st, int64_t before, char (*ids)[37], size_t max,
                        size_t *n);

    /* The LLM gateway's calls. llm_call_insert: one call, as rec says (its id is the
     * row's; inserting an id twice is ERR_CONFLICT, so a call is never recorded twice).
     * llm_calls: a task's calls in the order they started, each {"id", "task_id",
     * "attempt", "started_at", "latency_ms", "first_byte_ms", "status", "stream", "cut",
     * "upstream", "model", "finish_reason", "prompt_tokens", "completion_tokens",
     * "error", "request", "response"} (caller frees); an empty array for a task with
     * none (or no such task). */
    int (*llm_call_insert)(struct store *st, const struct llm_call_rec *rec);
    int (*llm_calls)(struct store *st, const char *task_id, json_t **out);
};

struct db_ops;

/* Every backend's handle starts with this. */
struct store {
    const struct store_ops *ops;
    const struct db_ops *db;     /* how the code above both backends runs its SQL
                                  * (store/db.h) */
};

/* store_open: picks the backend from the URL scheme ("sqlite://PATH";
 * "postgresql://", "postgres://", "postgresql+asyncpg://") and opens it, creating
 * or upgrading the schema. Caller closes with store_close. ERR_INVALID for an
 * unknown scheme, ERR_STORE when the database cannot be opened (logged). */
int store_open(const char *url, struct store **out) __attribute__((warn_unused_result));
/* The operations, one wrapper each: everyone outside src/store/ calls these, never
 * st->ops directly. Contracts are on the operations above. The optional ones
 * (listen, listen_sessions, export_extras) answer ERR_UNSUPPORTED (or do nothing)
 * when the backend has none. */
int store_ping(struct store *st) __attribute__((warn_unused_result));
int store_listen(struct store *st, void (*on_task)(void *ctx),
                 void *ctx) __attribute__((warn_unused_result));
void store_listen_sessions(struct store *st, void (*on_session)(void *ctx, const char *payload),
                           void *ctx);
int store_task_insert(struct store *st, struct task *t,
                      struct task **existing) __attribute__((warn_unused_result));
int store_task_get(struct store *st, const char *id,
                   struct task **out) __attribute__((warn_unused_result));
int store_task_list(struct store *st, const struct task_filter *f,
                    struct task_page *out) __attribute__((warn_unused_result));
int store_task_cancel(struct store *st, const char *id, int64_t now,
                      struct task **out) __attribute__((warn_unused_result));
int store_task_claim(struct store *st, const struct claim_req *req,
                     struct task **out) __attribute__((warn_unused_result));
int store_task_finish(struct store *st, const char *id, const char *lease_token,
                      const struct task_end *end) __attribute__((warn_unused_result));
int store_task_lease_status(struct store *st, const char *id, const char *lease_token,
                            enum task_status *status) __attribute__((warn_unused_result));
int store_task_stats(struct store *st, bool with_averages,
                     struct task_stats *out) __attribute__((warn_unused_result));
int store_logs_append(struct store *st, const char *task_id, const struct log_entry *e,
                      size_t n) __attribute__((warn_unused_result));
int store_logs_list(struct store *st, const char *task_id, int min_level, int64_t limit,
                    int64_t offset, json_t **logs,
                    int64_t *total) __attribute__((warn_unused_result));
int store_messages_append(struct store *st, const char *task_id, const struct msg_entry *e,
                          size_t n) __attribute__((warn_unused_result));
int store_conversations_list(struct store *st, const char *task_id, const char *model_name,
                             int64_t limit, int64_t offset, json_t **items,
                             int64_t *total) __attribute__((warn_unused_result));
int store_conversation_get(struct store *st, const char *id, bool with_messages,
                           json_t **out) __attribute__((warn_unused_result));
int store_task_conversations(struct store *st, const char *task_id,
                             json_t **out) __attribute__((warn_unused_result));
int store_export_extras(struct store *st, const char *task_id, bool logs, bool convs,
                        struct buf *out) __attribute__((warn_unused_result));
int store_conversation_stats(struct store *st,
                             json_t **out) __attribute__((warn_unused_result));
int store_worker_register(struct store *st,
                          const struct worker_reg *reg) __attribute__((warn_unused_result));
int store_worker_token(struct store *st, const char *id,
                       char **token_hash) __attribute__((warn_unused_result));
int store_worker_heartbeat(struct store *st, const char *const *ids, size_t n,
                           int64_t now) __attribute__((warn_unused_result));
int store_worker_set_status(struct store *st, const char *id, const char *status,
                            json_t *metadata) __attribute__((warn_unused_result));
int store_worker_list(struct store *st, const char *status, const char *backend_type,
                      json_t **out) __attribute__((warn_unused_result));
int store_worker_get(struct store *st, const char *id,
                     json_t **out) __attribute__((warn_unused_result));
int store_worker_counts(struct store *st,
                        int64_t counts[3]) __attribute__((warn_unused_result));
int store_reap(struct store *st, int64_t now, int64_t heartbeat_timeout_us,
               int64_t retry_base_us,
               struct reap_result *out) __attribute__((warn_unused_result));
int store_experiment_create(struct store *st, const struct experiment *e,
                            struct task *const *tasks,
                            size_t n) __attribute__((warn_unused_result));
int store_experiment_get(struct store *st, const char *id,
                         struct experiment **out) __attribute__((warn_unused_result));
int store_experiment_list(struct store *st, int64_t limit, int64_t offset, json_t **items,
                          int64_t *total) __attribute__((warn_unused_result));
int store_experiment_scoreboard(struct store *st, const char *id,
                                json_t **rows) __attribute__((warn_unused_result));
int store_experiment_cancel(struct store *st, const char *id, int64_t now,
                            json_t **running) __attribute__((warn_unused_result));
int store_experiment_slots(struct store *st, const char *id, bool unsolved,
                           json_t **slots) __attribute__((warn_unused_result));
int store_experiment_add_tasks(struct store *st, const char *id, struct task *const *tasks,
                               size_t n, size_t *added) __attribute__((warn_unused_result));
int store_recover(struct store *st, const char *name_prefix, int64_t now,
                  int64_t retry_base_us, int *n_failed) __attribute__((warn_unused_result));
int store_webhooks_due(struct store *st, int64_t now, int64_t lease_us, size_t max,
                       struct webhook_job *jobs, size_t *n) __attribute__((warn_unused_result));
int store_webhook_result(struct store *st, const struct webhook_job *job, const char *state,
                         int attempts, int64_t next_at,
                         const char *error) __attribute__((warn_unused_result));
int store_experiments_end(struct store *st, int64_t now, int *n) __attribute__((warn_unused_result));
int store_events_head(struct store *st, int64_t *event_id,
                      int64_t *log_id) __attribute__((warn_unused_result));
int store_events_after(struct store *st, int64_t after, int limit,
                       json_t **out) __attribute__((warn_unused_result));
int store_logs_after(struct store *st, int64_t after, int limit,
                     json_t **out) __attribute__((warn_unused_result));
int store_events_prune(struct store *st, int64_t before) __attribute__((warn_unused_result));
int store_task_timeseries(struct store *st, int64_t since, int64_t bucket_us,
                          json_t **out) __attribute__((warn_unused_result));
int store_session_ready(struct store *st, const char *task_id, json_t *ready, int max_steps,
                        int64_t now) __attribute__((warn_unused_result));
int store_session_get(struct store *st, const char *task_id,
                      json_t **out) __attribute__((warn_unused_result));
int store_session_step(struct store *st, const char *task_id, const char *action, int64_t now,
                       int *step) __attribute__((warn_unused_result));
int store_session_next(struct store *st, const char *task_id, int after, int *step,
                       char **action) __attribute__((warn_unused_result));
int store_session_answer(struct store *st, const char *task_id, int step, json_t *answer,
                         const struct msg_entry *msgs, size_t n_msgs,
                         int64_t now) __attribute__((warn_unused_result));
int store_session_end(struct store *st,
                      const char *task_id) __attribute__((warn_unused_result));
int store_session_idle(struct store *st, int64_t before, char (*ids)[37], size_t max,
                       size_t *n) __attribute__((warn_unused_result));

int store_llm_call_insert(struct store *st,
                          const struct llm_call_rec *rec) __attribute__((warn_unused_result));
int store_llm_calls(struct store *st, const char *task_id,
                    json_t **out) __attribute__((warn_unused_result));

/* store_name: "sqlite" or "postgresql". */
const char *store_name(const struct store *st);
/* store_groups_inserts: see store_ops.groups_inserts. */
bool store_groups_inserts(const struct store *st);
/* store_unlisten: stops listen (NULL-safe; nothing when the backend has no listen). */
void store_unlisten(struct store *st);
/* store_exports_text: whether store_export_extras is there. */
bool store_exports_text(const struct store *st);
/* store_close: closes and frees st (NULL-safe). */
void store_close(struct store *st);
/* store_task_page_reset: frees a page's tasks and empties it. */
void store_task_page_reset(struct task_page *p);

/* Status names of workers. */
#define WORKER_IDLE "idle"
#define WORKER_BUSY "busy"
#define WORKER_OFFLINE "offline"

extern const struct store_ops store_sqlite_ops;
extern const struct store_ops store_pg_ops;

#endif
