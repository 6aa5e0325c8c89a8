/* scoreboard: see scoreboard.h. The database sums per (problem, agent config); this
 * divides, adds the totals per agent config, and formats. */
#include "service/scoreboard.h"
#include "core/buf.h"
#include "core/err.h"
#include "model/experiment.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

int scoreboard_compute(struct store *st, const char *id, json_t **out)
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

json_t *scoreboard_report(struct store *st, const char *id)
{
    struct experiment *e = NULL;
    json_t *o = NULL, *board = NULL;

    if (store_experiment_get(st, id, &e) == 0 && scoreboard_compute(st, id, &board) == 0 &&
        (o = experiment_to_json(e)))
        json_object_set_new(o, "scoreboard", board);
    else
        json_decref(board);
    experiment_free(e);
    return o;
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

char *scoreboard_csv(const json_t *board)
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
