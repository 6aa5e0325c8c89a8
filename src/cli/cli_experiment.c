/* cli_experiment: `taskexec experiment run|list|show|scoreboard|cancel|rerun`
 * (CONTRACT.md "Experiments"). Exit codes as the rest of the CLI: run --wait is 0 when
 * every task ended completed, 1 when some did not. */
#include "cli/cli_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static long count_of(json_t *e, const char *state)
{
    return (long)json_integer_value(json_object_get(json_object_get(e, "counts"), state));
}

/* One line: the counts per state, the bar on a terminal. */
static void show_progress(json_t *e)
{
    char what[160];

    snprintf(what, sizeof(what), "pending %ld running %ld completed %ld failed %ld",
             count_of(e, "pending"), count_of(e, "running"), count_of(e, "completed"),
             count_of(e, "failed") + count_of(e, "timeout") + count_of(e, "cancelled"));
    if (isatty(STDERR_FILENO))
        cli_progress(what, (long)json_integer_value(json_object_get(e, "ended")),
                     (long)json_integer_value(json_object_get(e, "task_count")));
    else
        fprintf(stderr, "%s\n", what);
}

static int get_experiment(struct client *c, const char *id, json_t **e)
{
    char path[160];

    snprintf(path, sizeof(path), "/api/v1/experiments/%s", id);
    return cli_get(c, path, "experiment", e);
}

/* A number of the scoreboard, or "-" when null. */
static void cell(char *out, size_t size, json_t *v, bool percent)
{
    if (json_is_null(v) || !v)
        snprintf(out, size, "-");
    else if (percent)
        snprintf(out, size, "%.0f%%", json_number_value(v) * 100);
    else
        snprintf(out, size, "%.2f", json_number_value(v));
}

static void print_board_line(json_t *r)
{
    char p1[16], pk[16], rw[16], st[16], tk[16], du[16];

    cell(p1, sizeof(p1), json_object_get(r, "pass_at_1"), true);
    cell(pk, sizeof(pk), json_object_get(r, "pass_at_k"), true);
    cell(rw, sizeof(rw), json_object_get(r, "mean_reward"), false);
    cell(st, sizeof(st), json_object_get(r, "mean_steps"), false);
    cell(tk, sizeof(tk), json_object_get(r, "mean_tokens"), false);
    cell(du, sizeof(du), json_object_get(r, "mean_duration_seconds"), false);
    printf("%-44.44s %6lld %5lld/%-5lld %6s %6s %7s %7s %9s %9s\n", cli_str(r, "problem_id"),
           (long long)json_integer_value(json_object_get(r, "agent_config_index")),
           (long long)json_integer_value(json_object_get(r, "solved")),
           (long long)json_integer_value(json_object_get(r, "ended")), p1, pk, rw, st, tk, du);
}

static int show_scoreboard(struct client *c, const char *id, const struct opts *o)
{
    char path[200];
    json_t *b = NULL, *r;
    long status = 0;
    size_t i;
    int rc;

    if (o->csv) {
        /* The server's CSV as it is: the same bytes a browser download gets. */
        snprintf(path, sizeof(path), "/api/v1/experiments/%s/scoreboard?format=csv", id);
        rc = cli_download(c, path, stdout, &status);
        if (rc == EXIT_OK && status != 200) {
            fprintf(stderr, "taskexec: scoreboard: the server answered HTTP %ld\n", status);
            rc = status == 404 ? EXIT_USAGE : EXIT_SERVER;
        }
        return rc;
    }
    snprintf(path, sizeof(path), "/api/v1/experiments/%s/scoreboard", id);
    if ((rc = cli_get(c, path, "scoreboard", &b)))
        return rc;
    if (o->json) {
        cli_print_json(b);
    } else {
        printf("%-44s %6s %11s %6s %6s %7s %7s %9s %9s\n", "PROBLEM", "CONFIG", "SOLVED",
               "PASS@1", "PASS@K", "REWARD", "STEPS", "TOKENS", "SECONDS");
        json_array_foreach(json_object_get(b, "rows"), i, r)
            print_board_line(r);
        json_array_foreach(json_object_get(b, "totals"), i, r)
            print_board_line(r);
    }
    json_decref(b);
    return EXIT_OK;
}

/* Polls until every task of the experiment has ended; 0 when all completed. */
static int wait_experiment(struct client *c, const char *id)
{
    int delay_ms = 250;

    for (;;) {
        json_t *e = NULL;
        int rc = get_experiment(c, id, &e);
        bool done;

        if (rc)
            return rc;
        show_progress(e);
        done = strcmp(cli_str(e, "status"), "running") != 0;
        if (done) {
            rc = count_of(e, "completed") == (long)json_integer_value(json_object_get(
                                                  e, "task_count")) ? EXIT_OK : EXIT_TASK;
            if (isatty(STDERR_FILENO))
                fputc('\n', stderr);
            fprintf(stderr, "experiment %s %s\n", id, cli_str(e, "status"));
        }
        json_decref(e);
        if (done)
            return rc;
        usleep((useconds_t)delay_ms * 1000);
        delay_ms = delay_ms < 2000 ? delay_ms * 2 : 2000;
    }
}

static int run(struct client *c, const struct opts *o)
{
    json_error_t jerr;
    json_t *spec, *e = NULL;
    long status = 0;
    char id[64];
    int rc;

    if (!o->positional)
        return cli_usage("experiment run needs a spec file (JSON; - for stdin)");
    spec = strcmp(o->positional, "-") ? json_load_file(o->positional, JSON_REJECT_DUPLICATES, &jerr)
                                      : json_loadf(stdin, JSON_REJECT_DUPLICATES, &jerr);
    if (!spec) {
        fprintf(stderr, "taskexec: %s: %s (line %d)\n", o->positional, jerr.text, jerr.line);
        return EXIT_USAGE;
    }
    rc = cli_call(c, "POST", "/api/v1/experiments", spec, &status, &e);
    json_decref(spec);
    if (rc == EXIT_OK && status != 201)
        rc = cli_server_error("experiment run", status, e);
    if (rc == EXIT_OK) {
        snprintf(id, sizeof(id), "%s", cli_str(e, "id"));
        if (!o->wait) {
            if (o->json)
                cli_print_json(e);
            else
                printf("%s\n", id);
        } else {
            fprintf(stderr, "experiment %s: %lld tasks\n", id,
                    (long long)json_integer_value(json_object_get(e, "task_count")));
            rc = wait_experiment(c, id);
            if (rc == EXIT_OK || rc == EXIT_TASK) {
                int shown = show_scoreboard(c, id, o);
                rc = shown ? shown : rc;
            }
        }
    }
    json_decref(e);
    return rc;
}

static int list(struct client *c, const struct opts *o)
{
    json_t *r = NULL, *e;
    size_t i;
    int rc = cli_get(c, "/api/v1/experiments", "experiments", &r);

    if (rc)
        return rc;
    if (o->json) {
        cli_print_json(r);
    } else {
        printf("%-36s  %-9s  %7s  %5s  %s\n", "ID", "STATUS", "TASKS", "DONE", "NAME");
        json_array_foreach(json_object_get(r, "experiments"), i, e)
            printf("%-36s  %-9s  %7lld  %4.0f%%  %s\n", cli_str(e, "id"), cli_str(e, "status"),
                   (long long)json_integer_value(json_object_get(e, "task_count")),
                   json_number_value(json_object_get(e, "progress")) * 100, cli_str(e, "name"));
    }
    json_decref(r);
    return EXIT_OK;
}

static int post(struct client *c, const char *id, const char *verb, json_t *body,
                const struct opts *o)
{
    char path[200];
    json_t *r = NULL;
    long status = 0;
    int rc;

    snprintf(path, sizeof(path), "/api/v1/experiments/%s/%s", id, verb);
    rc = cli_call(c, "POST", path, body, &status, &r);
    if (rc == EXIT_OK && status != 200)
        rc = cli_server_error(verb, status, r);
    if (rc == EXIT_OK) {
        if (o->json)
            cli_print_json(r);
        else if (!strcmp(verb, "rerun"))
            printf("%lld tasks queued again\n",
                   (long long)json_integer_value(json_object_get(r, "created")));
        else
            show_progress(r);
    }
    json_decref(r);
    return rc;
}

int cli_experiment(struct client *c, const char *sub, const struct opts *o)
{
    json_t *e = NULL, *body;
    int rc;

    if (!sub)
        return cli_usage("experiment needs run, list, show, scoreboard, cancel or rerun");
    if (!strcmp(sub, "run"))
        return run(c, o);
    if (!strcmp(sub, "list"))
        return list(c, o);
    if (!o->positional)
        return cli_usage("this experiment command needs an experiment id");
    if (!strcmp(sub, "show")) {
        if ((rc = get_experiment(c, o->positional, &e)))
            return rc;
        if (o->json)
            cli_print_json(e);
        else {
            printf("%s  %s  %s\n", cli_str(e, "id"), cli_str(e, "status"), cli_str(e, "name"));
            show_progress(e);
        }
        json_decref(e);
        return EXIT_OK;
    }
    if (!strcmp(sub, "scoreboard"))
        return show_scoreboard(c, o->positional, o);
    if (!strcmp(sub, "cancel"))
        return post(c, o->positional, "cancel", NULL, o);
    if (!strcmp(sub, "rerun")) {
        if (o->only && strcmp(o->only, "failed") && strcmp(o->only, "unsolved"))
            return cli_usage("--only must be failed or unsolved");
        body = json_pack("{s:s}", "only", o->only ? o->only : "failed");
        rc = post(c, o->positional, "rerun", body, o);
        json_decref(body);
        return rc;
    }
    return cli_usage("experiment needs run, list, show, scoreboard, cancel or rerun");
}
