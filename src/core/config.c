/* config: one table of settings drives defaults, parsing and --help (see config.h). */
#include "core/config.h"
#include "core/err.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* K_PATH: a file or directory, made absolute at load (tasks run in directories of
 * their own, so a relative path would name a different file there); K_PROG: a program,
 * made absolute only when it names a path ("./venv/bin/python", not "python3"). */
enum kind { K_STR, K_PATH, K_PROG, K_INT, K_BOOL, K_ENUM };

struct param {
    const char *name;       /* environment variable; the flag is --name-in-lower-case */
    enum kind kind;
    size_t offset;          /* into struct config */
    const char *def;        /* default as text; NULL: unset */
    long min, max;          /* for K_INT; for K_ENUM, min 1: matched in any case */
    const char *help;
};

static const char *const log_levels[] = {"debug", "info", "warning", "warn", "error", NULL};
static const char *const log_formats[] = {"text", "json", NULL};
static const char *const executors[] = {"simulated", "command", "aiopslab", "noop", NULL};
static const char *const validations[] = {"lenient", "strict", NULL};
static const char *const provisions[] = {"none", "kind", NULL};

#define S(f) offsetof(struct config, f)
static const struct param params[] = {
    {"DATABASE_URL", K_STR, S(database_url), "sqlite://./data/taskexec.db", 0, 0,
     "sqlite://PATH or postgresql://..."},
    {"HOST", K_STR, S(host), "127.0.0.1", 0, 0, "listen address"},
    {"PORT", K_INT, S(port), "8000", 0, 65535, "listen port (0: any free port)"},
    {"NUM_INTERNAL_WORKERS", K_INT, S(num_internal_workers), "3", 0, 100000,
     "internal workers started with serve"},
    {"AUTO_START_WORKERS", K_BOOL, S(auto_start_workers), "true", 0, 0,
     "start the internal workers at start-up"},
    {"DEFAULT_TIMEOUT_MINUTES", K_INT, S(default_timeout_minutes), "30", 1, 1440,
     "task timeout when the request gives none"},
    {"DEFAULT_MAX_STEPS", K_INT, S(default_max_steps), "30", 1, 1000,
     "max_steps when the request gives none"},
    {"DEFAULT_MAX_RETRIES", K_INT, S(default_max_retries), "2", 0, 10,
     "max_retries when the request gives none (infrastructure failures only)"},
    {"RETRY_BASE_SECONDS", K_INT, S(retry_base_seconds), "30", 0, 86400,
     "back-off before a retry; it doubles with each attempt"},
    {"MAX_EXPERIMENT_TASKS", K_INT, S(max_experiment_tasks), "10000", 1, 1000000,
     "tasks one experiment may create; more is a 422"},
    {"LOG_LEVEL", K_ENUM, S(log_level), "info", 1, 0, "debug, info, warning, error"},
    {"LOG_FORMAT", K_ENUM, S(log_format), "text", 0, 0,
     "text, or json: one JSON object a line"},
    {"EXECUTOR", K_ENUM, S(executor), "simulated", 0, 0, "simulated, command, aiopslab, noop"},
    {"EXECUTOR_COMMAND", K_STR, S(executor_command), NULL, 0, 0,
     "argv of the command executor, split on blanks"},
    {"WORKER_BACKEND_TYPE", K_STR, S(worker_backend_type), "default", 0, 0,
     "backend type of internal workers"},
    {"WORKER_NAME_PREFIX", K_STR, S(worker_name_prefix), "", 0, 0,
     "prefix of internal worker names"},
    {"WORKER_SUPPORTED_PROBLEMS", K_STR, S(worker_supported_problems), NULL, 0, 0,
     "comma-separated problem_id globs internal workers claim (default all)"},
    {"HEARTBEAT_TIMEOUT_SECONDS", K_INT, S(heartbeat_timeout_seconds), "60", 1, 86400,
     "a worker silent this long is offline and its tasks fail"},
    {"MAX_INTERNAL_WORKERS", K_INT, S(max_internal_workers), "64", 1, 999,
     "scaling beyond it is a 422"},
    {"MAX_BODY_BYTES", K_INT, S(max_body_bytes), "1048576", 64, INT_MAX,
     "larger request bodies get 413"},
    {"PROBLEM_VALIDATION", K_ENUM, S(problem_validation), "lenient", 0, 0,
     "lenient or strict (unknown problem_id is a 422)"},
    {"BACKEND_PROVISION", K_ENUM, S(backend_provision), "none", 0, 0, "none or kind"},
    {"API_TOKEN", K_STR, S(api_token), NULL, 0, 0,
     "when set, every route but /health, /ready and /metrics needs 'Authorization: Bearer' "
     "with it (role admin) or a token of API_TOKENS_FILE"},
    {"API_TOKENS_FILE", K_PATH, S(api_tokens_file), NULL, 0, 0,
     "a file of 'token role' lines (roles: read, write, admin)"},
    {"WORKER_JOIN_TOKEN", K_STR, S(worker_join_token), NULL, 0, 0,
     "when set, registering an external worker needs it as 'Authorization: Bearer'"},
    {"OUTBOUND_ALLOW_HOSTS", K_STR, S(outbound_allow_hosts), NULL, 0, 0,
     "hosts (comma-separated) webhooks and LLM upstreams may reach on link-local or cloud "
     "metadata addresses; others are refused"},
    {"WEBHOOK_SECRET", K_STR, S(webhook_secret), NULL, 0, 0, "HMAC key for webhook signatures"},
    {"WEBHOOK_ALLOWED_HOSTS", K_STR, S(webhook_allowed_hosts), NULL, 0, 0,
     "hosts callback_url may name (default any)"},
    {"WEBHOOK_MAX_ATTEMPTS", K_INT, S(webhook_max_attempts), "10", 1, 1000,
     "deliveries of a webhook before it is given up"},
    {"WEBHOOK_RETRY_BASE_MS", K_INT, S(webhook_retry_base_ms), "1000", 10, 3600000,
     "first retry delay; it doubles each time, up to an hour"},
    {"WEBHOOK_TIMEOUT_SECONDS", K_INT, S(webhook_timeout_seconds), "10", 1, 600,
     "how long one delivery may take"},
    {"OPENENV_MAX_CONNECTIONS", K_INT, S(openenv_max_connections), "256", 1, 100000,
     "OpenEnv WebSocket connections at once; more are refused (503)"},
    {"OPENENV_MAX_MESSAGE_BYTES", K_INT, S(openenv_max_message_bytes), "1048576", 1024,
     104857600, "a larger OpenEnv message closes its connection (1009)"},
    {"OPENENV_IDLE_SECONDS", K_INT, S(openenv_idle_seconds), "600", 5, 86400,
     "an OpenEnv connection that sends nothing, not even a ping, this long is closed"},
    {"LLM_UPSTREAM_URL", K_STR, S(llm_upstream_url), NULL, 0, 0,
     "the LLM gateway's upstream (OpenAI-compatible base URL, e.g. http://vllm:8000/v1) for "
     "tasks whose agent_config names none; unset: only such tasks use the gateway"},
    {"LLM_UPSTREAM_KEY_ENV", K_STR, S(llm_upstream_key_env), "OPENAI_API_KEY", 0, 0,
     "the variable of the server's environment holding the upstream's key"},
    {"LLM_KEY_ENVS", K_STR, S(llm_key_envs), NULL, 0, 0,
     "more variables (comma-separated) an agent_config.api_key_env may name"},
    {"LLM_TIMEOUT_SECONDS", K_INT, S(llm_timeout_seconds), "600", 1, 86400,
     "one model call through the gateway, start to end; then 504 (or the stream cut)"},
    {"LLM_MAX_CALLS_PER_TASK", K_INT, S(llm_max_calls_per_task), "8", 1, 10000,
     "model calls of one task in flight at once; more are answered 429"},
    {"SESSION_IDLE_MINUTES", K_INT, S(session_idle_minutes), "10", 1, 10080,
     "idle interactive sessions are closed"},
    {"SSE_CLIENT_BUFFER_KB", K_INT, S(sse_client_buffer_kb), "1024", 256, 1048576,
     "events queued for one live-stream client before it is dropped as too slow"},
    {"EVENT_RETENTION_HOURS", K_INT, S(event_retention_hours), "2", 1, 8760,
     "how long the event journal (live streams, dashboard charts) keeps events"},
    {"HTTP_THREADS", K_INT, S(http_threads), "8", 1, 256,
     "HTTP thread pool size (handlers wait on the database: more threads, more group commit)"},
    {"HTTP_MAX_CONNECTIONS", K_INT, S(http_max_connections), "1000", 1, 100000,
     "open connections at once; more are refused"},
    {"HTTP_TIMEOUT_SECONDS", K_INT, S(http_timeout_seconds), "30", 1, 3600,
     "an idle or slow connection (half a request) is closed after this"},
    {"HTTP_MAX_HEADER_BYTES", K_INT, S(http_max_header_bytes), "65536", 4096, 16777216,
     "memory for one request's line and headers; larger requests are refused"},
    {"POLL_INTERVAL_MS", K_INT, S(poll_interval_ms), "1000", 10, 60000,
     "idle worker's fallback poll interval"},
    {"EXEC_GRACE_SECONDS", K_INT, S(exec_grace_seconds), NULL, 0, 3600,
     "SIGTERM to SIGKILL grace for a stopped executor (default 5; 300 with EXECUTOR=aiopslab, "
     "whose clean-up deletes namespaces)"},
    {"MAX_OUTPUT_BYTES", K_INT, S(max_output_bytes), "67108864", 4096, INT_MAX,
     "executor output kept per task; the rest is dropped and noted"},
    {"AIOPSLAB_PYTHON", K_PROG, S(aiopslab_python), "python3", 0, 0,
     "Python that runs the aiopslab executor (one that can import aiopslab)"},
    {"AIOPSLAB_DIR", K_PATH, S(aiopslab_dir), NULL, 0, 0,
     "AIOpsLab checkout added to PYTHONPATH; {worker} becomes the worker's name"},
    {"KIND_CONFIG", K_PATH, S(kind_config), NULL, 0, 0,
     "config file for `kind create cluster` (BACKEND_PROVISION=kind)"},
    {"KIND_CREATE_TIMEOUT_SECONDS", K_INT, S(kind_create_timeout_seconds), "300", 10, 3600,
     "how long a cluster may take to come up"},
    {"PROVISION_RETRY_SECONDS", K_INT, S(provision_retry_seconds), "30", 1, 3600,
     "a worker whose cluster failed tries again after this"},
    {"CLUSTER_CHECK", K_BOOL, S(cluster_check), "true", 0, 0,
     "after each run on an aiopslab or Kind-provisioned worker, delete what the problem left "
     "and check the nodes before claiming again"},
    {"CLUSTER_RECYCLE_AFTER_RUNS", K_INT, S(cluster_recycle_after_runs), "0", 0, 1000000,
     "recreate a worker's Kind cluster after this many runs (0: never; BACKEND_PROVISION=kind)"},
    {"WORK_DIR", K_PATH, S(work_dir), "./data/work", 0, 0,
     "parent of each task's working directory"},
    {"PROBLEMS_FILE", K_PATH, S(problems_file), NULL, 0, 0,
     "problem ids known to the executor, one a line (default: the built-in AIOpsLab list)"},
};
/* The values each K_ENUM setting allows, by its field (beside the table rather than a
 * column of it, so the table's rows stay short). */
static const struct {
    size_t offset;
    const char *const *choices;  /* NULL-terminated */
} enum_choices[] = {
    {S(log_level), log_levels},   {S(log_format), log_formats},
    {S(executor), executors},     {S(problem_validation), validations},
    {S(backend_provision), provisions},
};
#undef S
#define N_PARAMS (sizeof(params) / sizeof(params[0]))

static const char *const *choices_of(const struct param *p)
{
    for (size_t i = 0; i < sizeof(enum_choices) / sizeof(enum_choices[0]); i++)
        if (enum_choices[i].offset == p->offset)
            return enum_choices[i].choices;
    abort(); /* a K_ENUM row without its choices: a broken table */
}

/* Whether value is one of p's choices; prints what is allowed when not. */
static bool valid_choice(const struct param *p, const char *value, const char *source)
{
    const char *const *choices = choices_of(p);
    char list[256] = "";

    for (const char *const *c = choices; *c; c++) {
        if (p->min ? !strcasecmp(value, *c) : !strcmp(value, *c))
            return true;
        snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s",
                 c == choices ? "" : c[1] ? ", " : " or ", *c);
    }
    fprintf(stderr, "taskexec: %s (from %s) must be %s, not '%s'\n", p->name, source, list,
            value);
    return false;
}

static int set_value(struct config *cfg, const struct param *p, const char *value,
                     const char *source)
{
    char *base = (char *)cfg;

    switch (p->kind) {
    case K_ENUM:
        if (!valid_choice(p, value, source))
            return ERR_INVALID;
        __attribute__((fallthrough)); /* kept as text */
    case K_STR:
    case K_PATH:
    case K_PROG: {
        char **slot = (char **)(void *)(base + p->offset);
        char *copy = value ? strdup(value) : NULL;

        if (value && !copy)
            return ERR_NOMEM;
        free(*slot);
        *slot = copy;
        return 0;
    }
    case K_INT: {
        char *end;
        long v;

        errno = 0;
        v = strtol(value, &end, 10);
        if (errno || end == value || *end || v < p->min || v > p->max) {
            fprintf(stderr, "taskexec: %s (from %s) must be an integer from %ld to %ld, not '%s'\n",
                    p->name, source, p->min, p->max, value);
            return ERR_INVALID;
        }
        *(int *)(void *)(base + p->offset) = (int)v;
        return 0;
    }
    case K_BOOL: {
        bool *slot = (bool *)(void *)(base + p->offset);

        if (!strcasecmp(value, "true") || !strcmp(value, "1") || !strcasecmp(value, "yes") ||
            !strcasecmp(value, "on")) {
            *slot = true;
        } else if (!strcasecmp(value, "false") || !strcmp(value, "0") ||
                   !strcasecmp(value, "no") || !strcasecmp(value, "off")) {
            *slot = false;
        } else {
            fprintf(stderr, "taskexec: %s (from %s) must be true or false, not '%s'\n", p->name,
                    source, value);
            return ERR_INVALID;
        }
        return 0;
    }
    }
    return ERR_INVALID;
}

static const struct param *find_env(const char *name, size_t len)
{
    for (size_t i = 0; i < N_PARAMS; i++)
        if (strlen(params[i].name) == len && !strncmp(params[i].name, name, len))
            return &params[i];
    return NULL;
}

/* Matches "--database-url" against DATABASE_URL, case-insensitively. */
static const struct param *find_flag(const char *flag, size_t len)
{
    for (size_t i = 0; i < N_PARAMS; i++) {
        const char *n = params[i].name;
        size_t j;

        if (strlen(n) != len)
            continue;
        for (j = 0; j < len; j++) {
            char c = flag[j] == '-' ? '_' : (char)toupper((unsigned char)flag[j]);
            if (c != n[j])
                break;
        }
        if (j == len)
            return &params[i];
    }
    return NULL;
}

static char *trim(char *s)
{
    char *e;

    while (isspace((unsigned char)*s))
        s++;
    e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

/* Reads KEY=VALUE lines; '#' comments, optional "export ", quotes stripped.
 * Keys that are not settings are ignored (a .env is often shared with other tools). */
static int load_dotenv(struct config *cfg, const char *path)
{
    FILE *f = fopen(path, "r");
    char line[4096];
    int rc = 0;

    if (!f)
        return 0;
    while (rc == 0 && fgets(line, sizeof(line), f)) {
        char *s = trim(line), *eq, *val;
        const struct param *p;
        size_t vl;

        if (*s == '#' || *s == '\0')
            continue;
        if (!strncmp(s, "export ", 7))
            s = trim(s + 7);
        eq = strchr(s, '=');
        if (!eq)
            continue;
        *eq = '\0';
        s = trim(s);
        val = trim(eq + 1);
        vl = strlen(val);
        if (vl >= 2 && (val[0] == '"' || val[0] == '\'') && val[vl - 1] == val[0]) {
            val[vl - 1] = '\0';
            val++;
        }
        p = find_env(s, strlen(s));
        if (p)
            rc = set_value(cfg, p, val, path);
    }
    fclose(f);
    return rc;
}

/* Makes *slot absolute against the working directory at start-up. */
static int absolutize(char **slot)
{
    char cwd[PATH_MAX], *abs;

    if (!*slot || !**slot || **slot == '/')
        return 0;
    if (!getcwd(cwd, sizeof(cwd)))
        return ERR_IO;
    if (asprintf(&abs, "%s/%s", cwd, !strncmp(*slot, "./", 2) ? *slot + 2 : *slot) < 0)
        return ERR_NOMEM;
    free(*slot);
    *slot = abs;
    return 0;
}

/* Settings whose value depends on others, and paths made absolute once. */
static int finish(struct config *cfg)
{
    char *base = (char *)cfg;

    if (cfg->exec_grace_seconds < 0)
        cfg->exec_grace_seconds = cfg->executor && !strcmp(cfg->executor, "aiopslab") ? 300 : 5;
    for (size_t i = 0; i < N_PARAMS; i++) {
        char **slot = (char **)(void *)(base + params[i].offset);
        int rc = 0;

        if (params[i].kind == K_PATH || (params[i].kind == K_PROG && *slot && strchr(*slot, '/')))
            rc = absolutize(slot);
        if (rc < 0) {
            fprintf(stderr, "taskexec: cannot make %s absolute: %s\n", params[i].name,
                    err_str(rc));
            return rc;
        }
    }
    return 0;
}

int config_load(struct config *cfg, int argc, char **argv)
{
    int rc;

    memset(cfg, 0, sizeof(*cfg));
    cfg->exec_grace_seconds = -1; /* unset: finish() picks the executor's default */
    for (size_t i = 0; i < N_PARAMS; i++) {
        if (!params[i].def)
            continue;
        rc = set_value(cfg, &params[i], params[i].def, "default");
        if (rc < 0)
            return rc;
    }
    rc = load_dotenv(cfg, ".env");
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < N_PARAMS; i++) {
        const char *v = getenv(params[i].name);
        if (v) {
            rc = set_value(cfg, &params[i], v, "environment");
            if (rc < 0)
                return rc;
        }
    }
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *val, *eq;
        const struct param *p;

        if (strncmp(a, "--", 2) != 0) {
            fprintf(stderr, "taskexec: unexpected argument '%s'\n", a);
            return ERR_INVALID;
        }
        a += 2;
        eq = strchr(a, '=');
        p = find_flag(a, eq ? (size_t)(eq - a) : strlen(a));
        if (!p) {
            fprintf(stderr, "taskexec: unknown option '%s' (see --help)\n", argv[i]);
            return ERR_INVALID;
        }
        if (eq) {
            val = eq + 1;
        } else if (p->kind == K_BOOL && (i + 1 >= argc || !strncmp(argv[i + 1], "--", 2))) {
            val = "true";
        } else if (i + 1 < argc) {
            val = argv[++i];
        } else {
            fprintf(stderr, "taskexec: option '%s' needs a value\n", argv[i]);
            return ERR_INVALID;
        }
        rc = set_value(cfg, p, val, "command line");
        if (rc < 0)
            return rc;
    }
    return finish(cfg);
}

void config_reset(struct config *cfg)
{
    char *base = (char *)cfg;

    for (size_t i = 0; i < N_PARAMS; i++) {
        if (params[i].kind != K_INT && params[i].kind != K_BOOL) {
            char **slot = (char **)(void *)(base + params[i].offset);
            free(*slot);
            *slot = NULL;
        }
    }
}

void config_print_help(void)
{
    printf("Settings (environment variable, or --flag-in-lower-case VALUE; flags win):\n");
    for (size_t i = 0; i < N_PARAMS; i++)
        printf("  %-26s %-30s %s\n", params[i].name, params[i].def ? params[i].def : "(unset)",
               params[i].help);
}
