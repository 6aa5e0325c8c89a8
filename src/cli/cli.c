/* cli: the client subcommands (see cli.h). */
#include "cli/cli.h"
#include "cli/cli_int.h"
#include "worker/client.h"
#include "core/crypto.h"
#include "core/err.h"
#include "model/task.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

int cli_usage(const char *msg)
{
    if (msg)
        fprintf(stderr, "taskexec: %s\n", msg);
    fprintf(stderr,
            "usage:\n"
            "  taskexec submit --problem-id ID [--param a.b=VALUE]... [--parameters JSON]\n"
            "                  [--agent-config JSON] [--max-steps N] [--timeout-minutes N]\n"
            "                  [--priority N] [--backend-type T] [--wait]\n"
            "  taskexec submit --file runs.jsonl      (one request body a line)\n"
            "  taskexec status ID\n"
            "  taskexec list [--status S] [--problem-id ID] [--limit N]\n"
            "  taskexec logs ID [--level L] [--follow]\n"
            "  taskexec cancel ID\n"
            "  taskexec export --output FILE [--format json|jsonl] [--status S]\n"
            "                  [--problem-id ID] [--since T] [--until T]\n"
            "                  [--skip-logs] [--skip-conversations]\n"
            "  taskexec session open --problem-id ID [--max-steps N] [--timeout-minutes N]\n"
            "                  [--backend-type T]     (waits until the environment is ready)\n"
            "  taskexec session step ID --action 'exec_shell(\"kubectl get pods\")'\n"
            "  taskexec session show ID | close ID\n"
            "  taskexec session play --problem-id ID [...]   (actions from stdin, one a line)\n"
            "  taskexec experiment run spec.json [--wait]  (then the scoreboard)\n"
            "  taskexec experiment list | show ID | scoreboard ID [--csv] | cancel ID\n"
            "  taskexec experiment rerun ID [--only failed|unsolved]\n"
            "every command: --api URL (default $TASKEXEC_API, then http://127.0.0.1:8000), "
            "--json;\n  a server with API tokens gets $TASKEXEC_TOKEN\n");
    return EXIT_USAGE;
}

static int parse(int argc, char **argv, struct opts *o)
{
    static const struct { const char *flag; size_t off; } values[] = {
#define V(f, m) {f, offsetof(struct opts, m)}
        V("--api", api), V("--problem-id", problem_id), V("--parameters", parameters),
        V("--file", file), V("--agent-config", agent_config), V("--backend-type", backend_type),
        V("--priority", priority), V("--max-steps", max_steps),
        V("--timeout-minutes", timeout_minutes), V("--status", status), V("--level", level),
        V("--limit", limit), V("--output", output), V("--format", format), V("--since", since),
        V("--until", until), V("--action", action), V("--only", only),
#undef V
    };

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool done = false;

        if (!strcmp(a, "--json") || !strcmp(a, "--csv")) {
            *(a[2] == 'j' ? &o->json : &o->csv) = true;
            continue;
        }
        if (!strcmp(a, "--wait") || !strcmp(a, "--follow") || !strcmp(a, "--skip-logs") ||
            !strcmp(a, "--skip-conversations")) {
            *(a[2] == 'w' ? &o->wait : a[2] == 'f' ? &o->follow
                                      : a[7] == 'l' ? &o->skip_logs : &o->skip_conversations) = true;
            continue;
        }
        if (!strcmp(a, "--param")) {
            if (i + 1 >= argc || o->n_params == 64 || !strchr(argv[i + 1], '='))
                return cli_usage("--param needs KEY=VALUE (e.g. agent_config.model=gpt-4o)");
            o->params[o->n_params++] = argv[++i];
            continue;
        }
        for (size_t k = 0; k < sizeof(values) / sizeof(values[0]) && !done; k++) {
            if (strcmp(a, values[k].flag))
                continue;
            if (i + 1 >= argc) {
                fprintf(stderr, "taskexec: %s needs a value\n", a);
                return EXIT_USAGE;
            }
            *(const char **)(void *)((char *)o + values[k].off) = argv[++i];
            done = true;
        }
        if (done)
            continue;
        if (a[0] == '-' || o->positional) {
            fprintf(stderr, "taskexec: unexpected argument '%s'\n", a);
            return cli_usage(NULL);
        }
        o->positional = a;
    }
    if (!o->api)
        o->api = getenv("TASKEXEC_API") ? getenv("TASKEXEC_API") : "http://127.0.0.1:8000";
    return EXIT_OK;
}

/* The server's error, as its detail; never a raw dump. */
int cli_server_error(const char *what, long status, json_t *reply)
{
    const char *detail = json_string_value(json_object_get(reply, "detail"));

    fprintf(stderr, "taskexec: %s: %s (HTTP %ld)\n", what, detail ? detail : "the server failed",
            status);
    return status >= 500 || status == 0 ? EXIT_SERVER : EXIT_USAGE;
}

int cli_call(struct client *c, const char *method, const char *path, json_t *body,
                long *status, json_t **reply)
{
    if (client_call(c, method, path, body, status, reply) < 0) {
        fprintf(stderr, "taskexec: cannot reach %s: %s\n", c->base, c->error);
        return EXIT_SERVER;
    }
    return EXIT_OK;
}

void cli_print_json(json_t *v)
{
    char *t = json_dumps(v, JSON_INDENT(2) | JSON_ENCODE_ANY | JSON_REAL_PRECISION(10));

    if (t)
        puts(t);
    free(t);
}

/* --param a.b=value: value is JSON when it parses as JSON, else a string. */
static int set_param(json_t *body, const char *spec)
{
    const char *eq = strchr(spec, '=');
    char *path = strndup(spec, (size_t)(eq - spec)), *key, *dot;
    json_t *node = body, *v = json_loads(eq + 1, JSON_DECODE_ANY, NULL);

    if (!v)
        v = json_string(eq + 1);
    for (key = path; (dot = strchr(key, '.')); key = dot + 1) {
        json_t *next;
        *dot = '\0';
        next = json_object_get(node, key);
        if (!json_is_object(next)) {
            next = json_object();
            json_object_set_new(node, key, next);
        }
        node = next;
    }
    json_object_set_new(node, key, v);
    free(path);
    return 0;
}

const char *cli_str(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "-";
}

static int wait_for(struct client *c, const char *id, bool json)
{
    char path[128], last[32] = "";
    bool tty = isatty(STDERR_FILENO);
    int delay_ms = 200;

    snprintf(path, sizeof(path), "/api/v1/tasks/%s", id);
    for (;;) {
        json_t *t = NULL;
        long status;
        int rc = cli_call(c, "GET", path, NULL, &status, &t);
        const char *st;

        if (rc)
            return rc;
        if (status != 200) {
            rc = cli_server_error("status", status, t);
            json_decref(t);
            return rc;
        }
        st = cli_str(t, "status");
        if (strcmp(st, last)) {
            fprintf(stderr, tty ? "\r\033[K%s %s (%s)" : "%s %s (%s)\n", id, st,
                    cli_str(t, "worker_id"));
            snprintf(last, sizeof(last), "%s", st);
        }
        if (task_status_parse(st) >= TASK_COMPLETED) {
            if (tty)
                fputc('\n', stderr);
            if (json)
                cli_print_json(t);
            else if (strcmp(st, "completed"))
                fprintf(stderr, "taskexec: task %s ended %s: %s\n", id, st, cli_str(t, "error"));
            rc = strcmp(st, "completed") ? EXIT_TASK : EXIT_OK;
            json_decref(t);
            return rc;
        }
        json_decref(t);
        usleep((useconds_t)delay_ms * 1000);
        delay_ms = delay_ms < 2000 ? delay_ms * 2 : 2000;
    }
}

/* Submits body with key as its idempotency key, unless the line names its own. */
static int submit_one(struct client *c, json_t *body, const char *key, long *status,
                      json_t **reply)
{
    if (!json_object_get(body, "idempotency_key"))
        json_object_set_new(body, "idempotency_key", json_string(key));
    return cli_call(c, "POST", "/api/v1/tasks", body, status, reply);
}

/* A progress bar on a terminal; total 0 (unknown, e.g. a pipe): the count alone. */
void cli_progress(const char *what, long done, long total)
{
    if (!isatty(STDERR_FILENO))
        return;
    if (!total) {
        fprintf(stderr, "\r%s %ld", what, done);
        return;
    }
    int width = 30, filled = (int)(width * done / total);
    fprintf(stderr, "\r%s [%.*s%*s] %ld/%ld", what, filled,
            "##############################", width - filled, "", done, total);
}

/* What a file of request bodies came to. */
struct file_counts {
    long created, existing, failed;
};

/* Submits line n of a --file (without its newline); 0, or EXIT_SERVER when the server
 * could not be reached (the run stops there). */
static int submit_line(struct client *c, const struct opts *o, const char *line, long n,
                       struct file_counts *k)
{
    char key[CRYPTO_HEX_SHA256 + 8];
    json_t *body = json_loads(line, JSON_REJECT_DUPLICATES, NULL), *reply = NULL;
    long status = 0;
    int rc = 0;

    if (!json_is_object(body)) {
        fprintf(stderr, "\ntaskexec: %s line %ld is not a JSON object\n", o->file, n);
        json_decref(body);
        k->failed++;
        return 0;
    }
    /* A rerun of the same file creates nothing new. */
    crypto_sha256_hex(line, key + 5);
    memcpy(key, "line-", 5);
    if (submit_one(c, body, key, &status, &reply)) {
        rc = EXIT_SERVER;
    } else if (status == 201) {
        k->created++;
    } else if (status == 200) {
        k->existing++;
    } else {
        k->failed++;
        fprintf(stderr, "\ntaskexec: line %ld: %s\n", n,
                json_string_value(json_object_get(reply, "detail")) ?: "refused");
    }
    if (!rc && o->json && reply)
        printf("%s\n", cli_str(reply, "id"));
    json_decref(reply);
    json_decref(body);
    return rc;
}

/* The lines of f when it can be read twice (a file, not a pipe), for the progress bar;
 * 0 otherwise. f is left at its start. */
static long count_lines(FILE *f)
{
    long total = 0;
    int ch;

    if (fseek(f, 0, SEEK_SET) != 0)
        return 0;
    while ((ch = getc(f)) != EOF)
        total += ch == '\n';
    if (fseek(f, 0, SEEK_SET) != 0)
        return 0;
    return total;
}

static int submit_file(struct client *c, const struct opts *o)
{
    FILE *f = strcmp(o->file, "-") ? fopen(o->file, "r") : stdin;
    struct file_counts k = {0};
    char *line = NULL;
    size_t cap = 0;
    long total, n = 0;
    int rc = EXIT_OK;

    if (!f) {
        fprintf(stderr, "taskexec: cannot read %s: %s\n", o->file, strerror(errno));
        return EXIT_USAGE;
    }
    total = count_lines(f);
    while (!rc && getline(&line, &cap, f) > 0) {
        line[strcspn(line, "\r\n")] = '\0';
        n++;
        if (*line)
            rc = submit_line(c, o, line, n, &k);
        cli_progress("submitting", n, total);
    }
    if (isatty(STDERR_FILENO))
        fputc('\n', stderr);
    fprintf(stderr, "created %ld, already there %ld, refused %ld\n", k.created, k.existing,
            k.failed);
    free(line);
    if (f != stdin)
        fclose(f);
    return rc ? rc : k.failed ? EXIT_USAGE : EXIT_OK;
}

/* Says that the option of body field key (agent_config: --agent-config) must be what;
 * -1. */
static int bad_option(const char *key, const char *what)
{
    char msg[128];

    snprintf(msg, sizeof(msg), "--%s must be %s", key, what);
    for (char *p = msg; *p; p++)
        if (*p == '_')
            *p = '-';
    cli_usage(msg);
    return -1;
}

/* Request-body fields from options. Each adds key from its option's text when the
 * option was given; -1, after the usage text, when the text is not of the right kind. */
static int put_object(json_t *body, const char *key, const char *text)
{
    json_t *v;

    if (!text)
        return 0;
    v = json_loads(text, 0, NULL);
    if (!json_is_object(v)) {
        json_decref(v);
        return bad_option(key, "a JSON object");
    }
    json_object_set_new(body, key, v);
    return 0;
}

static int put_integer(json_t *body, const char *key, const char *text)
{
    char *end;
    long long v;

    if (!text)
        return 0;
    errno = 0;
    v = strtoll(text, &end, 10);
    if (errno || end == text || *end)
        return bad_option(key, "a whole number");
    json_object_set_new(body, key, json_integer(v));
    return 0;
}

/* --max-steps, --timeout-minutes and --backend-type, shared by tasks and sessions. */
static int put_run_limits(json_t *body, const struct opts *o)
{
    if (put_integer(body, "max_steps", o->max_steps) < 0 ||
        put_integer(body, "timeout_minutes", o->timeout_minutes) < 0)
        return -1;
    if (o->backend_type)
        json_object_set_new(body, "backend_type", json_string(o->backend_type));
    return 0;
}

static int do_submit(struct client *c, const struct opts *o)
{
    json_t *body, *reply = NULL;
    long status = 0;
    int rc;

    if (o->file)
        return submit_file(c, o);
    if (!o->problem_id)
        return cli_usage("submit needs --problem-id (or --file)");
    body = json_pack("{s:s}", "problem_id", o->problem_id);
    if (put_object(body, "parameters", o->parameters) < 0 ||
        put_object(body, "agent_config", o->agent_config) < 0 ||
        put_integer(body, "priority", o->priority) < 0 || put_run_limits(body, o) < 0) {
        json_decref(body);
        return EXIT_USAGE;
    }
    for (int i = 0; i < o->n_params; i++)
        set_param(body, o->params[i]);
    rc = cli_call(c, "POST", "/api/v1/tasks", body, &status, &reply);
    json_decref(body);
    if (rc == EXIT_OK && status != 201 && status != 200)
        rc = cli_server_error("submit", status, reply);
    if (rc == EXIT_OK) {
        char id[TASK_ID_LEN + 1];
        snprintf(id, sizeof(id), "%s", cli_str(reply, "id"));
        if (o->wait) {
            rc = wait_for(c, id, o->json);
        } else if (o->json) {
            cli_print_json(reply);
        } else {
            printf("%s\n", id);
        }
    }
    json_decref(reply);
    return rc;
}

int cli_get(struct client *c, const char *path, const char *what, json_t **out)
{
    long status = 0;
    int rc = cli_call(c, "GET", path, NULL, &status, out);

    if (rc == EXIT_OK && status != 200) {
        rc = cli_server_error(what, status, *out);
        json_decref(*out);
        *out = NULL;
    }
    return rc;
}

static int do_status(struct client *c, const struct opts *o)
{
    char path[200];
    json_t *t = NULL, *a;
    size_t i;
    int rc;

    if (!o->positional)
        return cli_usage("status needs a task id");
    snprintf(path, sizeof(path), "/api/v1/tasks/%s", o->positional);
    rc = cli_get(c, path, "status", &t);
    if (rc)
        return rc;
    if (o->json) {
        cli_print_json(t);
    } else {
        printf("id         %s\nproblem    %s\nstatus     %s\nworker     %s\ncreated    %s\n"
               "started    %s\ncompleted  %s\n", cli_str(t, "id"), cli_str(t, "problem_id"),
               cli_str(t, "status"), cli_str(t, "worker_id"), cli_str(t, "created_at"), cli_str(t, "started_at"),
               cli_str(t, "completed_at"));
        printf("attempt    %lld of %lld\n",
               (long long)json_integer_value(json_object_get(t, "attempt")),
               (long long)json_integer_value(json_object_get(t, "max_retries")) + 1);
        if (json_is_string(json_object_get(t, "error")))
            printf("error      %s%s%s%s\n", cli_str(t, "error"),
                   json_is_string(json_object_get(t, "error_class")) ? " (" : "",
                   json_is_string(json_object_get(t, "error_class")) ? cli_str(t, "error_class")
                                                                     : "",
                   json_is_string(json_object_get(t, "error_class")) ? ")" : "");
        json_array_foreach(json_object_get(t, "attempts"), i, a)
            printf("earlier    attempt %lld on %s: %s (%s)\n",
                   (long long)json_integer_value(json_object_get(a, "attempt")),
                   cli_str(a, "worker_id"), cli_str(a, "error"), cli_str(a, "error_class"));
    }
    json_decref(t);
    return EXIT_OK;
}

static int do_list(struct client *c, const struct opts *o)
{
    char path[600], *esc_s = NULL, *esc_p = NULL;
    CURL *h = curl_easy_init();
    json_t *r = NULL, *t;
    size_t i;
    int rc;

    if (o->status)
        esc_s = curl_easy_escape(h, o->status, 0);
    if (o->problem_id)
        esc_p = curl_easy_escape(h, o->problem_id, 0);
    snprintf(path, sizeof(path), "/api/v1/tasks?limit=%s%s%s%s%s", o->limit ? o->limit : "50",
             esc_s ? "&status=" : "", esc_s ? esc_s : "", esc_p ? "&problem_id=" : "",
             esc_p ? esc_p : "");
    curl_free(esc_s);
    curl_free(esc_p);
    curl_easy_cleanup(h);
    rc = cli_get(c, path, "list", &r);
    if (rc)
        return rc;
    if (o->json) {
        cli_print_json(r);
    } else {
        printf("%-36s  %-9s  %-40s  %-18s  %s\n", "ID", "STATUS", "PROBLEM", "WORKER", "CREATED");
        json_array_foreach(json_object_get(r, "tasks"), i, t)
            printf("%-36s  %-9s  %-40.40s  %-18.18s  %.19s\n", cli_str(t, "id"), cli_str(t, "status"),
                   cli_str(t, "problem_id"), cli_str(t, "worker_id"), cli_str(t, "created_at"));
        printf("(%lld of %lld)\n", (long long)json_array_size(json_object_get(r, "tasks")),
               (long long)json_integer_value(json_object_get(r, "total")));
    }
    json_decref(r);
    return EXIT_OK;
}

static int do_logs(struct client *c, const struct opts *o)
{
    long long offset = 0;
    int delay = 200;

    if (!o->positional)
        return cli_usage("logs needs a task id");
    for (;;) {
        char path[300];
        json_t *r = NULL, *e, *t = NULL;
        size_t i;
        int rc;

        snprintf(path, sizeof(path), "/api/v1/tasks/%s/logs?limit=10000&offset=%lld%s%s",
                 o->positional, offset, o->level ? "&level=" : "", o->level ? o->level : "");
        rc = cli_get(c, path, "logs", &r);
        if (rc)
            return rc;
        json_array_foreach(json_object_get(r, "logs"), i, e) {
            if (o->json) {
                char *line = json_dumps(e, JSON_COMPACT);
                puts(line ? line : "{}");
                free(line);
            } else {
                printf("%.23s  %-8s %s\n", cli_str(e, "timestamp"), cli_str(e, "level"),
                       cli_str(e, "message"));
            }
        }
        offset += (long long)json_array_size(json_object_get(r, "logs"));
        fflush(stdout);
        if (!o->follow || json_array_size(json_object_get(r, "logs")) == 10000) {
            json_decref(r);
            if (!o->follow)
                return EXIT_OK;
            continue;
        }
        json_decref(r);
        /* --follow: until the task has ended and its last lines are out */
        snprintf(path, sizeof(path), "/api/v1/tasks/%s", o->positional);
        rc = cli_get(c, path, "logs", &t);
        if (rc)
            return rc;
        bool ended = task_status_parse(cli_str(t, "status")) >= TASK_COMPLETED;
        json_decref(t);
        if (ended && delay < 0)
            return EXIT_OK;
        if (ended)
            delay = -1; /* one more read picks up the last lines */
        else
            usleep(500 * 1000);
    }
}

static int do_cancel(struct client *c, const struct opts *o)
{
    char path[200];
    json_t *r = NULL;
    long status = 0;
    int rc;

    if (!o->positional)
        return cli_usage("cancel needs a task id");
    snprintf(path, sizeof(path), "/api/v1/tasks/%s/cancel", o->positional);
    rc = cli_call(c, "POST", path, NULL, &status, &r);
    if (rc == EXIT_OK && status != 200)
        rc = cli_server_error("cancel", status, r);
    else if (rc == EXIT_OK)
        o->json ? cli_print_json(r) : (void)printf("%s cancelled\n", o->positional);
    json_decref(r);
    return rc;
}

struct download {
    FILE *f;
    long long bytes;
    int64_t last_shown;
};

/* The size of the file at path, for the closing line. */
static long long d_bytes_of(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0 ? (long long)st.st_size : 0;
}

static size_t on_bytes(char *p, size_t size, size_t n, void *ud)
{
    struct download *d = ud;
    size_t w = fwrite(p, size, n, d->f);
    struct timespec ts;

    d->bytes += (long long)(w * size);
    clock_gettime(CLOCK_MONOTONIC, &ts);
    if (d->f != stdout && isatty(STDERR_FILENO) && ts.tv_sec != d->last_shown) {
        d->last_shown = ts.tv_sec;
        fprintf(stderr, "\rexporting: %.1f MB", (double)d->bytes / 1e6);
    }
    return w * size;
}

int cli_download(struct client *c, const char *path, FILE *f, long *status)
{
    struct download d = {.f = f};
    char url[4096], auth[600];
    struct curl_slist *hdr = NULL;
    CURL *h = curl_easy_init();
    CURLcode cc;

    if (!h)
        return EXIT_SERVER;
    snprintf(url, sizeof(url), "%s%s", c->base, path);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_bytes);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &d);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    if (c->token) {
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", c->token);
        hdr = curl_slist_append(NULL, auth);
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
    }
    cc = curl_easy_perform(h);
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
    curl_easy_cleanup(h);
    curl_slist_free_all(hdr);
    if (isatty(STDERR_FILENO) && d.last_shown)
        fputc('\n', stderr);
    if (cc != CURLE_OK) {
        fprintf(stderr, "taskexec: cannot reach %s: %s\n", c->base, curl_easy_strerror(cc));
        return EXIT_SERVER;
    }
    return EXIT_OK;
}

static int do_export(struct client *c, const struct opts *o)
{
    char path[2048], tmp[4200];
    long status = 0;
    FILE *f;
    int rc;

    if (!o->output)
        return cli_usage("export needs --output FILE");
    if (o->format && strcmp(o->format, "json") && strcmp(o->format, "jsonl"))
        return cli_usage("--format is json or jsonl");
    snprintf(path, sizeof(path),
             "/api/v1/export?format=%s&include_logs=%s&include_conversations=%s%s%s%s%s%s%s%s%s",
             o->format ? o->format : "json", o->skip_logs ? "false" : "true",
             o->skip_conversations ? "false" : "true", o->status ? "&status=" : "",
             o->status ? o->status : "", o->problem_id ? "&problem_id=" : "",
             o->problem_id ? o->problem_id : "", o->since ? "&since=" : "",
             o->since ? o->since : "", o->until ? "&until=" : "", o->until ? o->until : "");
    /* Written to a temp file and renamed at the end: a cut export never looks whole. */
    snprintf(tmp, sizeof(tmp), "%s.part.%d", o->output, (int)getpid());
    f = fopen(tmp, "w");
    if (!f) {
        fprintf(stderr, "taskexec: cannot write %s: %s\n", tmp, strerror(errno));
        return EXIT_USAGE;
    }
    rc = cli_download(c, path, f, &status);
    if (fclose(f) != 0 && rc == EXIT_OK) {
        fprintf(stderr, "taskexec: cannot write %s: %s\n", tmp, strerror(errno));
        rc = EXIT_USAGE;
    }
    if (rc == EXIT_OK && status != 200) {
        fprintf(stderr, "taskexec: export failed: the server refused it (HTTP %ld)\n", status);
        rc = EXIT_USAGE;
    }
    if (rc == EXIT_OK && rename(tmp, o->output) < 0) {
        fprintf(stderr, "taskexec: cannot rename %s: %s\n", tmp, strerror(errno));
        rc = EXIT_USAGE;
    }
    if (rc != EXIT_OK) {
        unlink(tmp);
        return rc;
    }
    fprintf(stderr, "exported %.1f MB to %s\n", (double)d_bytes_of(o->output) / 1e6, o->output);
    return EXIT_OK;
}

/* ---- sessions ---- */

/* Polls the session until it is no longer starting; *out is its JSON. */
static int session_wait_ready(struct client *c, const char *id, json_t **out)
{
    char path[200];

    snprintf(path, sizeof(path), "/api/v1/sessions/%s", id);
    for (;;) {
        json_t *r = NULL;
        long status = 0;
        const char *st;
        int rc = cli_call(c, "GET", path, NULL, &status, &r);

        if (rc != EXIT_OK || status != 200) {
            rc = rc != EXIT_OK ? rc : cli_server_error("session", status, r);
            json_decref(r);
            return rc;
        }
        st = json_string_value(json_object_get(r, "status"));
        if (st && strcmp(st, "starting")) {
            *out = r;
            return EXIT_OK;
        }
        json_decref(r);
        usleep(100 * 1000);
    }
}

static void print_session(const struct opts *o, json_t *s)
{
    const char *k;
    json_t *v;

    if (o->json) {
        cli_print_json(s);
        return;
    }
    printf("session %s: %s\n", json_string_value(json_object_get(s, "id")),
           json_string_value(json_object_get(s, "status")));
    if (json_is_string(json_object_get(s, "task_description")))
        printf("\n%s\n\n%s\n\nactions:\n",
               json_string_value(json_object_get(s, "task_description")),
               json_string_value(json_object_get(s, "instructions")));
    json_object_foreach(json_object_get(s, "actions"), k, v)
        printf("  %s\n", json_string_value(v) ? json_string_value(v) : k);
    if (json_is_string(json_object_get(s, "error")))
        printf("error: %s\n", json_string_value(json_object_get(s, "error")));
}

static int session_open(struct client *c, const struct opts *o, json_t **session)
{
    json_t *body, *r = NULL;
    long status = 0;
    int rc;

    if (!o->problem_id)
        return cli_usage("session open needs --problem-id");
    body = json_pack("{s:s}", "problem_id", o->problem_id);
    if (put_run_limits(body, o) < 0) {
        json_decref(body);
        return EXIT_USAGE;
    }
    rc = cli_call(c, "POST", "/api/v1/sessions", body, &status, &r);
    json_decref(body);
    if (rc == EXIT_OK && status != 201 && status != 200)
        rc = cli_server_error("session open", status, r);
    if (rc == EXIT_OK) {
        if (!o->json && isatty(STDERR_FILENO))
            fprintf(stderr, "session %s: waiting for the environment...\n",
                    json_string_value(json_object_get(r, "id")));
        rc = session_wait_ready(c, json_string_value(json_object_get(r, "id")), session);
    }
    json_decref(r);
    return rc;
}

/* One step, following 202s until the answer comes. *answer: the answer's JSON. */
static int session_step(struct client *c, const char *id, const char *action, json_t **answer)
{
    char path[200];
    json_t *body = json_pack("{s:s, s:i}", "action", action, "wait_seconds", 20), *r = NULL;
    long status = 0;
    int rc, step;

    snprintf(path, sizeof(path), "/api/v1/sessions/%s/step", id);
    rc = cli_call(c, "POST", path, body, &status, &r);
    json_decref(body);
    if (rc != EXIT_OK || (status != 200 && status != 202)) {
        rc = rc != EXIT_OK ? rc : cli_server_error("step", status, r);
        json_decref(r);
        return rc;
    }
    step = (int)json_integer_value(json_object_get(r, "step"));
    while (status == 202) { /* still working: wait on the session itself */
        json_t *s = NULL;
        json_decref(r);
        r = NULL;
        usleep(200 * 1000);
        snprintf(path, sizeof(path), "/api/v1/sessions/%s", id);
        rc = cli_call(c, "GET", path, NULL, &status, &s);
        if (rc != EXIT_OK || status != 200) {
            rc = rc != EXIT_OK ? rc : cli_server_error("session", status, s);
            json_decref(s);
            return rc;
        }
        if (json_integer_value(json_object_get(s, "step")) >= step ||
            json_is_true(json_object_get(s, "done"))) {
            r = json_pack("{s:i, s:O, s:O, s:O, s:O}", "step", step, "observation",
                          json_object_get(s, "observation"), "done", json_object_get(s, "done"),
                          "reward", json_object_get(s, "reward"), "results",
                          json_object_get(s, "results"));
            status = 200;
        } else {
            status = 202;
            r = json_object();
        }
        json_decref(s);
    }
    *answer = r;
    return EXIT_OK;
}

static void print_answer(const struct opts *o, json_t *a)
{
    if (o->json) {
        cli_print_json(a);
        return;
    }
    printf("[step %lld]\n%s\n", (long long)json_integer_value(json_object_get(a, "step")),
           json_string_value(json_object_get(a, "observation"))
               ? json_string_value(json_object_get(a, "observation"))
               : "");
    if (json_is_true(json_object_get(a, "done")))
        printf("done: reward %g\n", json_number_value(json_object_get(a, "reward")));
}

/* session play: one action a line from stdin, each answer printed, until the session
 * is done or stdin ends (then the session is closed). Returns the exit code. */
static int play(struct client *c, const struct opts *o, json_t *s)
{
    char line[65536], path[200];
    const char *id = json_string_value(json_object_get(s, "id"));
    bool done = strcmp(json_string_value(json_object_get(s, "status")), "ready") != 0;
    long status = 0;
    json_t *a = NULL;
    int rc = EXIT_OK;

    while (!done) {
        if (isatty(STDIN_FILENO)) {
            fputs("action> ", stdout);
            fflush(stdout);
        }
        if (!fgets(line, sizeof(line), stdin))
            break;
        line[strcspn(line, "\r\n")] = '\0';
        if (!line[0])
            continue;
        rc = session_step(c, id, line, &a);
        if (rc != EXIT_OK)
            break;
        print_answer(o, a);
        done = json_is_true(json_object_get(a, "done"));
        json_decref(a);
        a = NULL;
    }
    if (!done) { /* stdin ended first: give the environment back */
        json_t *r = NULL;
        snprintf(path, sizeof(path), "/api/v1/sessions/%s/close", id);
        if (cli_call(c, "POST", path, NULL, &status, &r) == EXIT_OK && status == 200)
            fprintf(stderr, "session %s closed\n", id);
        json_decref(r);
    }
    return rc;
}

static int do_session(struct client *c, const char *sub, const struct opts *o)
{
    char path[200];
    json_t *s = NULL, *a = NULL;
    long status = 0;
    int rc;

    if (!sub)
        return cli_usage("session needs open, step, show, close or play");
    if (!strcmp(sub, "open") || !strcmp(sub, "play")) {
        rc = session_open(c, o, &s);
        if (rc == EXIT_OK)
            print_session(o, s);
        if (rc == EXIT_OK && !strcmp(sub, "play"))
            rc = play(c, o, s);
        json_decref(s);
        return rc;
    }
    if (!o->positional)
        return cli_usage("this session command needs a session id");
    if (!strcmp(sub, "show")) {
        snprintf(path, sizeof(path), "/api/v1/sessions/%s", o->positional);
        rc = cli_call(c, "GET", path, NULL, &status, &s);
        if (rc == EXIT_OK && status != 200)
            rc = cli_server_error("session", status, s);
        else if (rc == EXIT_OK)
            print_session(o, s);
        json_decref(s);
        return rc;
    }
    if (!strcmp(sub, "step")) {
        if (!o->action)
            return cli_usage("session step needs --action");
        rc = session_step(c, o->positional, o->action, &a);
        if (rc == EXIT_OK)
            print_answer(o, a);
        json_decref(a);
        return rc;
    }
    if (!strcmp(sub, "close")) {
        snprintf(path, sizeof(path), "/api/v1/sessions/%s/close", o->positional);
        rc = cli_call(c, "POST", path, NULL, &status, &s);
        if (rc == EXIT_OK && status != 200)
            rc = cli_server_error("close", status, s);
        else if (rc == EXIT_OK)
            o->json ? cli_print_json(s)
                    : (void)printf("session %s: %s\n", o->positional,
                                   json_string_value(json_object_get(s, "status")));
        json_decref(s);
        return rc;
    }
    return cli_usage("session needs open, step, show, close or play");
}

int cli_main(int argc, char **argv)
{
    struct opts o = {0};
    struct client c;
    const char *cmd = argv[0], *sub;
    int rc;

    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        cli_usage(NULL);
        return EXIT_OK;
    }
    /* `session SUB ...`, `experiment SUB ...`: the sub-command is not an argument */
    sub = (!strcmp(cmd, "session") || !strcmp(cmd, "experiment")) && argc > 1 ? argv[1] : NULL;
    rc = sub ? parse(argc - 1, argv + 1, &o) : parse(argc, argv, &o);
    if (rc)
        return rc;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    if (client_init(&c, o.api) < 0 ||
        /* a server with API tokens (API_TOKEN) takes ours from the environment */
        client_set_token(&c, getenv("TASKEXEC_TOKEN") && *getenv("TASKEXEC_TOKEN")
                                  ? getenv("TASKEXEC_TOKEN")
                                  : NULL) < 0) {
        client_reset(&c);
        curl_global_cleanup();
        return EXIT_SERVER;
    }
    if (!strcmp(cmd, "submit"))
        rc = do_submit(&c, &o);
    else if (!strcmp(cmd, "status"))
        rc = do_status(&c, &o);
    else if (!strcmp(cmd, "list"))
        rc = do_list(&c, &o);
    else if (!strcmp(cmd, "logs"))
        rc = do_logs(&c, &o);
    else if (!strcmp(cmd, "cancel"))
        rc = do_cancel(&c, &o);
    else if (!strcmp(cmd, "export"))
        rc = do_export(&c, &o);
    else if (!strcmp(cmd, "session"))
        rc = do_session(&c, sub, &o);
    else if (!strcmp(cmd, "experiment"))
        rc = cli_experiment(&c, sub, &o);
    else
        rc = cli_usage("unknown command");
    client_reset(&c);
    curl_global_cleanup();
    return rc;
}
