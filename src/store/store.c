/* store: backend selection and helpers shared by every backend (see store.h). */
#include "store/store.h"
#include "core/err.h"
#include "core/log.h"

#include <stdlib.h>
#include <string.h>

int store_open(const char *url, struct store **out)
{
    if (!strncmp(url, "sqlite://", 9))
        return store_sqlite_ops.open(url + 9, out);
    if (!strncmp(url, "postgresql://", 13) || !strncmp(url, "postgres://", 11) ||
        !strncmp(url, "postgresql+asyncpg://", 21))
        return store_pg_ops.open(url, out);
    log_error("DATABASE_URL must start with sqlite:// or postgresql://");
    return ERR_INVALID;
}

const char *store_name(const struct store *st)
{
    return st->ops->name;
}

bool store_groups_inserts(const struct store *st)
{
    return st->ops->groups_inserts;
}

void store_unlisten(struct store *st)
{
    if (st && st->ops->listen)
        st->ops->listen(st, NULL, NULL);
}

bool store_exports_text(const struct store *st)
{
    return st->ops->export_extras != NULL;
}

void store_close(struct store *st)
{
    if (st)
        st->ops->close(st);
}

void store_task_page_reset(struct task_page *p)
{
    for (size_t i = 0; i < p->n; i++)
        task_free(p->items[i]);
    free(p->items);
    memset(p, 0, sizeof(*p));
}

int store_ping(struct store *st)
{
    return st->ops->ping(st);
}

int store_listen(struct store *st, void (*on_task)(void *ctx), void *ctx)
{
    return st->ops->listen ? st->ops->listen(st, on_task, ctx) : ERR_UNSUPPORTED;
}

void store_listen_sessions(struct store *st, void (*on_session)(void *ctx, const char *payload),
                           void *ctx)
{
    if (st->ops->listen_sessions)
        st->ops->listen_sessions(st, on_session, ctx);
}

int store_task_insert(struct store *st, struct task *t, struct task **existing)
{
    return st->ops->task_insert(st, t, existing);
}

int store_task_get(struct store *st, const char *id, struct task **out)
{
    return st->ops->task_get(st, id, out);
}

int store_task_list(struct store *st, const struct task_filter *f, struct task_page *out)
{
    return st->ops->task_list(st, f, out);
}

int store_task_cancel(struct store *st, const char *id, int64_t now, struct task **out)
{
    return st->ops->task_cancel(st, id, now, out);
}

int store_task_claim(struct store *st, const struct claim_req *req, struct task **out)
{
    return st->ops->task_claim(st, req, out);
}

int store_task_finish(struct store *st, const char *id, const char *lease_token,
                      const struct task_end *end)
{
    return st->ops->task_finish(st, id, lease_token, end);
}

int store_task_lease_status(struct store *st, const char *id, const char *lease_token,
                            enum task_status *status)
{
    return st->ops->task_lease_status(st, id, lease_token, status);
}

int store_task_stats(struct store *st, bool with_averages, struct task_stats *out)
{
    return st->ops->task_stats(st, with_averages, out);
}

int store_logs_append(struct store *st, const char *task_id, const struct log_entry *e,
                      size_t n)
{
    return st->ops->logs_append(st, task_id, e, n);
}

int store_logs_list(struct store *st, const char *task_id, int min_level, int64_t limit,
                    int64_t offset, json_t **logs, int64_t *total)
{
    return st->ops->logs_list(st, task_id, min_level, limit, offset, logs, total);
}

int store_messages_append(struct store *st, const char *task_id, const struct msg_entry *e,
                          size_t n)
{
    return st->ops->messages_append(st, task_id, e, n);
}

int store_conversations_list(struct store *st, const char *task_id, const char *model_name,
                             int64_t limit, int64_t offset, json_t **items, int64_t *total)
{
    return st->ops->conversations_list(st, task_id, model_name, limit, offset, items, total);
}

int store_conversation_get(struct store *st, const char *id, bool with_messages, json_t **out)
{
    return st->ops->conversation_get(st, id, with_messages, out);
}

int store_task_conversations(struct store *st, const char *task_id, json_t **out)
{
    return st->ops->task_conversations(st, task_id, out);
}

int store_export_extras(struct store *st, const char *task_id, bool logs, bool convs,
                        struct buf *out)
{
    return st->ops->export_extras ? st->ops->export_extras(st, task_id, logs, convs,
        out) : ERR_UNSUPPORTED;
}

int store_conversation_stats(struct store *st, json_t **out)
{
    return st->ops->conversation_stats(st, out);
}

int store_worker_register(struct store *st, const struct worker_reg *reg)
{
    return st->ops->worker_register(st, reg);
}

int store_worker_token(struct store *st, const char *id, char **token_hash)
{
    return st->ops->worker_token(st, id, token_hash);
}

int store_worker_heartbeat(struct store *st, const char *const *ids, size_t n, int64_t now)
{
    return st->ops->worker_heartbeat(st, ids, n, now);
}

int store_worker_set_status(struct store *st, const char *id, const char *status,
                            json_t *metadata)
{
    return st->ops->worker_set_status(st, id, status, metadata);
}

int store_worker_list(struct store *st, const char *status, const char *backend_type,
                      json_t **out)
{
    return st->ops->worker_list(st, status, backend_type, out);
}

int store_worker_get(struct store *st, const char *id, json_t **out)
{
    return st->ops->worker_get(st, id, out);
}

int store_worker_counts(struct store *st, int64_t counts[3])
{
    return st->ops->worker_counts(st, counts);
}

int store_reap(struct store *st, int64_t now, int64_t heartbeat_timeout_us,
               int64_t retry_base_us, struct reap_result *out)
{
    return st->ops->reap(st, now, heartbeat_timeout_us, retry_base_us, out);
}

int store_recover(struct store *st, const char *name_prefix, int64_t now,
                  int64_t retry_base_us, int *n_failed)
{
    return st->ops->recover(st, name_prefix, now, retry_base_us, n_failed);
}

int store_experiment_create(struct store *st, const struct experiment *e,
                            struct task *const *tasks, size_t n)
{
    return st->ops->experiment_create(st, e, tasks, n);
}

int store_experiment_get(struct store *st, const char *id, struct experiment **out)
{
    return st->ops->experiment_get(st, id, out);
}

int store_experiment_list(struct store *st, int64_t limit, int64_t offset, json_t **items,
                          int64_t *total)
{
    return st->ops->experiment_list(st, limit, offset, items, total);
}

int store_experiment_scoreboard(struct store *st, const char *id, json_t **rows)
{
    return st->ops->experiment_scoreboard(st, id, rows);
}

int store_experiment_cancel(struct store *st, const char *id, int64_t now, json_t **running)
{
    return st->ops->experiment_cancel(st, id, now, running);
}

int store_experiment_slots(struct store *st, const char *id, bool unsolved, json_t **slots)
{
    return st->ops->experiment_slots(st, id, unsolved, slots);
}

int store_experiment_add_tasks(struct store *st, const char *id, struct task *const *tasks,
                               size_t n, size_t *added)
{
    return st->ops->experiment_add_tasks(st, id, tasks, n, added);
}

int store_webhooks_due(struct store *st, int64_t now, int64_t lease_us, size_t max,
                       struct webhook_job *jobs, size_t *n)
{
    return st->ops->webhooks_due(st, now, lease_us, max, jobs, n);
}

int store_experiments_end(struct store *st, int64_t now, int *n)
{
    return st->ops->experiments_end(st, now, n);
}

int store_webhook_result(struct store *st, const struct webhook_job *job, const char *state,
                         int attempts,
                         int64_t next_at, const char *error)
{
    return st->ops->webhook_result(st, job, state, attempts, next_at, error);
}

int store_events_head(struct store *st, int64_t *event_id, int64_t *log_id)
{
    return st->ops->events_head(st, event_id, log_id);
}

int store_events_after(struct store *st, int64_t after, int limit, json_t **out)
{
    return st->ops->events_after(st, after, limit, out);
}

int store_logs_after(struct store *st, int64_t after, int limit, json_t **out)
{
    return st->ops->logs_after(st, after, limit, out);
}

int store_events_prune(struct store *st, int64_t before)
{
    return st->ops->events_prune(st, before);
}

int store_task_timeseries(struct store *st, int64_t since, int64_t bucket_us, json_t **out)
{
    return st->ops->task_timeseries(st, since, bucket_us, out);
}

int store_session_ready(struct store *st, const char *task_id, json_t *ready, int max_steps,
                        int64_t now)
{
    return st->ops->session_ready(st, task_id, ready, max_steps, now);
}

int store_session_get(struct store *st, const char *task_id, json_t **out)
{
    return st->ops->session_get(st, task_id, out);
}

int store_session_step(struct store *st, const char *task_id, const char *action, int64_t now,
                       int *step)
{
    return st->ops->session_step(st, task_id, action, now, step);
}

int store_session_next(struct store *st, const char *task_id, int after, int *step,
                       char **action)
{
    return st->ops->session_next(st, task_id, after, step, action);
}

int store_session_answer(struct store *st, const char *task_id, int step, json_t *answer,
                         const struct msg_entry *msgs, size_t n_msgs, int64_t now)
{
    return st->ops->session_answer(st, task_id, step, answer, msgs, n_msgs, now);
}

int store_session_end(struct store *st, const char *task_id)
{
    return st->ops->session_end(st, task_id);
}

int store_session_idle(struct store *st, int64_t before, char (*ids)[37], size_t max, size_t *n)
{
    return st->ops->session_idle(st, before, ids, max, n);
}

int store_llm_call_insert(struct store *st, const struct llm_call_rec *rec)
{
    return st->ops->llm_call_insert(st, rec);
}

int store_llm_calls(struct store *st, const char *task_id, json_t **out)
{
    return st->ops->llm_calls(st, task_id, out);
}
