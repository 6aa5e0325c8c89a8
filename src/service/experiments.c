/* experiments: see experiments.h. */
#include "service/experiments.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/err.h"
#include "core/log.h"
#include "core/uuidgen.h"
#include "service/metrics.h"
#include "service/webhook.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The tasks of every slot of s, for experiment e (n of them; caller frees each and the
 * array). NULL without memory. */
static struct task **slot_tasks(const struct queue *q, const struct experiment_spec *s,
                                const struct experiment *e, size_t n)
{
    struct task **tasks = calloc(n ? n : 1, sizeof(*tasks));

    for (size_t i = 0; tasks && i < n; i++) {
        tasks[i] = experiment_slot_task(s, e->id, (int64_t)i, &q->defaults);
        if (!tasks[i]) {
            for (size_t j = 0; j < i; j++)
                task_free(tasks[j]);
            free(tasks);
            return NULL;
        }
        uuidgen(tasks[i]->id);
        tasks[i]->created_at = tasks[i]->updated_at = e->created_at;
    }
    return tasks;
}

static void free_tasks(struct task **tasks, size_t n)
{
    for (size_t i = 0; tasks && i < n; i++)
        task_free(tasks[i]);
    free(tasks);
}

/* The experiment row of a validated spec (caller frees); NULL without memory. */
static struct experiment *experiment_of(const struct experiment_spec *s)
{
    struct experiment *e = experiment_new();

    if (!e)
        return NULL;
    uuidgen(e->id);
    e->name = strdup(s->name);
    e->spec = experiment_spec_to_json(s);
    e->metadata = json_incref(s->metadata);
    e->callback_url = s->callback_url ? strdup(s->callback_url) : NULL;
    e->created_at = clock_now_us();
    e->task_count = experiment_task_count(s);
    e->counts[TASK_PENDING] = e->task_count;
    if (!e->name || !e->spec || (s->callback_url && !e->callback_url)) {
        experiment_free(e);
        return NULL;
    }
    return e;
}

int experiments_create(struct queue *q, json_t *body, int max_tasks, struct experiment **out,
                       json_t **errors)
{
    struct experiment_spec s;
    struct experiment *e = NULL;
    struct task **tasks = NULL;
    size_t n = 0;
    int rc = experiment_spec_parse(body, q->problems, max_tasks, &q->defaults, &s, errors);

    if (rc < 0)
        return rc;
    if (s.callback_url && !webhook_host_allowed(s.callback_url, q->webhook_allowed_hosts)) {
        experiment_spec_reset(&s);
        *errors = json_pack("[{s:s, s:s}]", "field", "callback_url", "message",
                            "names a host that WEBHOOK_ALLOWED_HOSTS does not allow");
        return ERR_INVALID;
    }
    rc = ERR_NOMEM;
    n = (size_t)experiment_task_count(&s);
    if (!(e = experiment_of(&s)) || !(tasks = slot_tasks(q, &s, e, n)))
        goto out;
    rc = store_experiment_create(q->store, e, tasks, n);
    if (rc < 0)
        goto out;
    for (size_t i = 0; i < n; i++)
        metrics_task_created(q->metrics);
    if (q->wake_workers)
        q->wake_workers(q->workers);
    log_info("experiment %s (%s): %zu tasks queued", e->id, e->name, n);
    *out = e;
    e = NULL;
out:
    free_tasks(tasks, n);
    experiment_free(e);
    experiment_spec_reset(&s);
    return rc;
}

int experiments_cancel(struct queue *q, const char *id, struct experiment **out)
{
    json_t *running = NULL, *v;
    size_t i;
    int rc = store_experiment_cancel(q->store, id, clock_now_us(), &running);

    if (rc < 0)
        return rc;
    /* The runs of this process stop now; another server's see it at their lease check. */
    json_array_foreach(running, i, v)
        if (q->stop_run)
            q->stop_run(q->workers, json_string_value(v));
    json_decref(running);
    return store_experiment_get(q->store, id, out);
}

int experiments_rerun(struct queue *q, const char *id, bool unsolved, int64_t *created)
{
    struct experiment *e = NULL;
    struct experiment_spec s = {0};
    json_t *slots = NULL, *slot;
    struct task **tasks = NULL;
    size_t n = 0, i;
    int rc = store_experiment_get(q->store, id, &e);

    if (rc < 0)
        return rc;
    if (e->cancelled_at) {
        rc = ERR_CONFLICT;
        goto out;
    }
    if ((rc = experiment_spec_from_json(e->spec, &s)) < 0 ||
        (rc = store_experiment_slots(q->store, id, unsolved, &slots)) < 0)
        goto out;
    n = json_array_size(slots);
    rc = ERR_NOMEM;
    if (!(tasks = calloc(n ? n : 1, sizeof(*tasks))))
        goto out;
    json_array_foreach(slots, i, slot) {
        tasks[i] = experiment_task_for(
            &s, id, json_string_value(json_object_get(slot, "problem_id")),
            (int)json_integer_value(json_object_get(slot, "agent_config_index")),
            (int)json_integer_value(json_object_get(slot, "attempt")), &q->defaults);
        if (!tasks[i])
            goto out;
        uuidgen(tasks[i]->id);
        tasks[i]->created_at = tasks[i]->updated_at = clock_now_us();
    }
    rc = n ? store_experiment_add_tasks(q->store, id, tasks, n) : 0;
    if (rc == 0) {
        *created = (int64_t)n;
        if (n && q->wake_workers)
            q->wake_workers(q->workers);
    }
out:
    free_tasks(tasks, n);
    json_decref(slots);
    experiment_spec_reset(&s);
    experiment_free(e);
    return rc;
}

/* sum / n as JSON, null when n is 0. */
static json_t *mean(double sum, int64_t n)
{
    return n ? json_real(sum / (double)n) : json_null();
}

/* A scoreboard line from the database's sums for one group. */
static json_t *board_line(const char *problem_id, int config_index, json_t *config,
                          int64_t attempts, int64_t ended, int64_t solved, double reward,
                          double steps, double tokens, double duration, json_t *pass_at_k)
{
    return json_pack("{s:s, s:i, s:O, s:I, s:I, s:I, s:o, s:o, s:o, s:o, s:o, s:o}",
                     "problem_id", problem_id, "agent_config_index", config_index,
                     "agent_config", config ? config : json_null(), "attempts",
                     (json_int_t)attempts, "ended", (json_int_t)ended, "solved",
                     (json_int_t)solved, "pass_at_1", mean((double)solved, ended), "pass_at_k",
                     pass_at_k, "mean_reward", mean(reward, ended), "mean_steps",
                     mean(steps, ended), "mean_tokens", mean(tokens, ended),
                     "mean_duration_seconds", mean(duration, ended));
}

static double num(const json_t *o, const char *k)
{
    return json_number_value(json_object_get(o, k));
}

static int64_t count(const json_t *o, const char *k)
{
    return (int64_t)json_integer_value(json_object_get(o, k));
}

/* Per agent config, the totals over its rows (pass_at_k: the mean of the rows'). */
static json_t *board_totals(const json_t *sums, const json_t *configs)
{
    json_t *totals = json_array();

    for (size_t c = 0; totals && c < json_array_size(configs); c++) {
        int64_t attempts = 0, ended = 0, solved = 0, rows = 0, rows_passed = 0;
        double reward = 0, steps = 0, tokens = 0, duration = 0;
        size_t i;
        json_t *g;

        json_array_foreach(sums, i, g) {
            if (count(g, "agent_config_index") != (int64_t)c)
                continue;
            attempts += count(g, "attempts");
            ended += count(g, "ended");
            solved += count(g, "solved");
            reward += num(g, "reward_sum");
            steps += num(g, "steps_sum");
            tokens += num(g, "tokens_sum");
            duration += num(g, "duration_sum");
            rows++;
            rows_passed += count(g, "solved") > 0;
        }
        json_array_append_new(totals, board_line("*", (int)c, json_array_get(configs, c),
                                                 attempts, ended, solved, reward, steps,
                                                 tokens, duration,
                                                 mean((double)rows_passed, rows)));
    }
    return totals;
}

int experiments_scoreboard(struct queue *q, const char *id, json_t **out)
{
    return experiments_board(q->store, id, out);
}

int experiments_board(struct store *st, const char *id, json_t **out)
{
    struct experiment *e = NULL;
    json_t *sums = NULL, *rows = json_array(), *configs, *g;
    size_t i;
    int rc = store_experiment_get(st, id, &e);

    if (rc == 0)
        rc = store_experiment_scoreboard(st, id, &sums);
    if (rc < 0 || !rows) {
        json_decref(rows);
        experiment_free(e);
        return rc < 0 ? rc : ERR_NOMEM;
    }
    configs = json_object_get(e->spec, "agent_configs");
    json_array_foreach(sums, i, g) {
        int ci = (int)count(g, "agent_config_index");
        json_array_append_new(
            rows, board_line(json_string_value(json_object_get(g, "problem_id")), ci,
                             json_array_get(configs, (size_t)ci), count(g, "attempts"),
                             count(g, "ended"), count(g, "solved"), num(g, "reward_sum"),
                             num(g, "steps_sum"), num(g, "tokens_sum"), num(g, "duration_sum"),
                             json_integer(count(g, "solved") > 0)));
    }
    *out = json_pack("{s:s, s:o, s:o}", "experiment_id", id, "rows", rows, "totals",
                     board_totals(sums, configs));
    json_decref(sums);
    experiment_free(e);
    return *out ? 0 : ERR_NOMEM;
}

json_t *experiments_report(struct store *st, const char *id)
{
    struct experiment *e = NULL;
    json_t *o = NULL, *board = NULL;

    if (store_experiment_get(st, id, &e) == 0 && experiments_board(st, id, &board) == 0 &&
        (o = experiment_to_json(e)))
        json_object_set_new(o, "scoreboard", board);
    else
        json_decref(board);
    experiment_free(e);
    return o;
}

int experiments_end(struct queue *q)
{
    int n = 0, rc = store_experiments_end(q->store, clock_now_us(), &n);

    if (rc == 0 && n)
        log_info("%d experiments ended", n);
    return rc;
}

/* One CSV field: numbers as they are, null empty, text quoted when it must be. 0, or
 * the buffer's error. */
static int csv_field(struct buf *b, const json_t *v, bool last)
{
    char *text = NULL;
    const char *s = NULL;
    int rc = 0;

    if (json_is_string(v))
        s = json_string_value(v);
    else if (json_is_object(v) || json_is_array(v))
        s = text = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS);
    if (json_is_integer(v)) {
        rc = buf_appendf(b, "%lld", (long long)json_integer_value(v));
    } else if (json_is_real(v)) {
        rc = buf_appendf(b, "%.6g", json_real_value(v));
    } else if (s && strpbrk(s, ",\"\r\n")) {
        rc = buf_append(b, "\"", 1);
        for (const char *p = s; rc == 0 && *p; p++)
            rc = *p == '"' ? buf_append(b, "\"\"", 2) : buf_append(b, p, 1);
        if (rc == 0)
            rc = buf_append(b, "\"", 1);
    } else if (s) {
        rc = buf_appendf(b, "%s", s);
    }
    if (rc == 0)
        rc = buf_append(b, last ? "\n" : ",", 1);
    free(text);
    return rc;
}

static const char *const csv_columns[] = {
    "problem_id", "agent_config_index", "agent_config", "attempts", "ended", "solved",
    "pass_at_1", "pass_at_k", "mean_reward", "mean_steps", "mean_tokens",
    "mean_duration_seconds",
};
#define N_CSV_COLUMNS (sizeof(csv_columns) / sizeof(csv_columns[0]))
#define CSV_MAX ((size_t)256 << 20)

char *experiments_scoreboard_csv(const json_t *board)
{
    static const char *const parts[] = {"rows", "totals"};
    struct buf b;
    size_t i;
    json_t *line;
    int rc = 0;

    buf_init(&b, CSV_MAX);
    for (size_t c = 0; rc == 0 && c < N_CSV_COLUMNS; c++)
        rc = buf_appendf(&b, "%s%s", csv_columns[c], c + 1 < N_CSV_COLUMNS ? "," : "\n");
    for (int p = 0; p < 2; p++)
        json_array_foreach(json_object_get(board, parts[p]), i, line)
            for (size_t c = 0; rc == 0 && c < N_CSV_COLUMNS; c++)
                rc = csv_field(&b, json_object_get(line, csv_columns[c]),
                               c + 1 == N_CSV_COLUMNS);
    if (rc < 0) {
        buf_reset(&b);
        return NULL;
    }
    return buf_steal(&b);
}
