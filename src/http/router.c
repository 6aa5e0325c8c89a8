/* router: one table of routes, matched segment by segment (see router.h). */
#include "http/router.h"
#include "http/openenv.h"

#include <stdio.h>
#include <string.h>

static const struct route routes[] = {
    {"GET", "/health", api_health, ACCESS_OPEN},
    {"GET", "/ready", api_ready, ACCESS_OPEN},
    {"GET", "/metrics", api_metrics, ACCESS_OPEN},
    {"GET", "/openapi.json", api_openapi, ACCESS_READ},
    {"GET", "/docs", api_docs, ACCESS_OPEN},
    {"GET", "/", api_dashboard, ACCESS_OPEN},
    {"GET", "/api/v1/events", api_events, ACCESS_READ},
    {"POST", "/api/v1/sessions", api_session_create, ACCESS_WRITE},
    {"GET", "/api/v1/sessions/{id}", api_session_get, ACCESS_READ},
    {"POST", "/api/v1/sessions/{id}/step", api_session_step, ACCESS_WRITE},
    {"POST", "/api/v1/sessions/{id}/close", api_session_close, ACCESS_WRITE},
    {"POST", "/llm/v1/chat/completions", api_llm_chat, ACCESS_TASK_KEY},
    {"GET", "/llm/v1/models", api_llm_models, ACCESS_TASK_KEY},
    {"GET", "/openenv/ws", api_openenv_ws, ACCESS_WRITE},
    {"GET", "/openenv/health", api_openenv_health, ACCESS_READ},
    {"GET", "/openenv/metadata", api_openenv_metadata, ACCESS_READ},
    {"GET", "/openenv/schema", api_openenv_schema, ACCESS_READ},
    {"POST", "/api/v1/experiments", api_experiment_create, ACCESS_WRITE},
    {"GET", "/api/v1/experiments", api_experiment_list, ACCESS_READ},
    {"GET", "/api/v1/experiments/{id}", api_experiment_get, ACCESS_READ},
    {"GET", "/api/v1/experiments/{id}/scoreboard", api_experiment_scoreboard, ACCESS_READ},
    {"GET", "/api/v1/experiments/{id}/tasks", api_experiment_tasks, ACCESS_READ},
    {"POST", "/api/v1/experiments/{id}/cancel", api_experiment_cancel, ACCESS_WRITE},
    {"POST", "/api/v1/experiments/{id}/rerun", api_experiment_rerun, ACCESS_WRITE},
    {"POST", "/api/v1/tasks", api_task_create, ACCESS_WRITE},
    {"GET", "/api/v1/tasks", api_task_list, ACCESS_READ},
    {"GET", "/api/v1/tasks/stats", api_task_stats, ACCESS_READ},
    {"GET", "/api/v1/tasks/timeseries", api_task_timeseries, ACCESS_READ},
    {"GET", "/api/v1/tasks/{id}", api_task_get, ACCESS_READ},
    {"POST", "/api/v1/tasks/{id}/cancel", api_task_cancel, ACCESS_WRITE},
    {"PUT", "/api/v1/tasks/{id}/cancel", api_task_cancel, ACCESS_WRITE},
    {"GET", "/api/v1/tasks/{id}/logs", api_task_logs, ACCESS_READ},
    {"GET", "/api/v1/tasks/{id}/events", api_task_events, ACCESS_READ},
    {"GET", "/api/v1/tasks/{id}/conversations", api_task_conversations, ACCESS_READ},
    {"GET", "/api/v1/tasks/{id}/llm-calls", api_task_llm_calls, ACCESS_READ},
    {"GET", "/api/v1/problems", api_problems, ACCESS_READ},
    {"GET", "/api/v1/export", api_export, ACCESS_READ},
    {"GET", "/api/v1/llm-conversations", api_conv_list, ACCESS_READ},
    {"GET", "/api/v1/llm-conversations/stats/summary", api_conv_stats, ACCESS_READ},
    {"GET", "/api/v1/llm-conversations/task/{task_id}/conversations", api_conv_for_task, ACCESS_READ},
    {"GET", "/api/v1/llm-conversations/{id}", api_conv_get, ACCESS_READ},
    {"GET", "/api/v1/llm-conversations/{id}/messages", api_conv_messages, ACCESS_READ},
    {"GET", "/api/v1/workers", api_worker_list, ACCESS_READ},
    {"GET", "/api/v1/workers/internal/status", api_internal_status, ACCESS_READ},
    {"POST", "/api/v1/workers/internal/scale", api_internal_scale, ACCESS_ADMIN},
    {"POST", "/api/v1/workers/internal/stop", api_internal_stop, ACCESS_ADMIN},
    {"POST", "/api/v1/workers/internal/start", api_internal_start, ACCESS_ADMIN},
    {"POST", "/api/v1/workers/register", api_worker_register, ACCESS_JOIN},
    {"GET", "/api/v1/workers/{id}", api_worker_get, ACCESS_READ},
    {"GET", "/api/v1/workers/{id}/stats", api_worker_stats, ACCESS_READ},
    {"POST", "/api/v1/workers/{id}/heartbeat", api_worker_heartbeat, ACCESS_WORKER},
    {"POST", "/api/v1/workers/{id}/claim", api_worker_claim, ACCESS_WORKER},
    {"POST", "/api/v1/workers/{id}/tasks/{task_id}/logs", api_worker_task_logs, ACCESS_WORKER},
    {"POST", "/api/v1/workers/{id}/tasks/{task_id}/conversations", api_worker_task_conversations, ACCESS_WORKER},
    {"POST", "/api/v1/workers/{id}/tasks/{task_id}/complete", api_worker_task_complete, ACCESS_WORKER},
    {"POST", "/api/v1/workers/{id}/tasks/{task_id}/fail", api_worker_task_fail, ACCESS_WORKER},
    {"POST", "/api/v1/workers/{id}/tasks/{task_id}/session/ready", api_worker_session_ready, ACCESS_WORKER},
    {"GET", "/api/v1/workers/{id}/tasks/{task_id}/session/next", api_worker_session_next, ACCESS_WORKER},
    {"POST", "/api/v1/workers/{id}/tasks/{task_id}/session/answer", api_worker_session_answer, ACCESS_WORKER},
    {"POST", "/api/v1/workers/{id}/tasks/{task_id}/session/end", api_worker_session_end, ACCESS_WORKER},
};

const struct route *router_table(size_t *n)
{
    *n = sizeof(routes) / sizeof(routes[0]);
    return routes;
}

/* Matches one pattern. scratch receives path with each '/' turned into a NUL, so
 * the captures are NUL-terminated pointers into it. */
static bool match(const char *pattern, const char *path, char *scratch, const char **params,
                  size_t *n_params)
{
    const char *segs[32], *p = pattern + 1;
    size_t nseg = 0, n = 0;
    char *s;

    if (path[0] != '/')
        return false;
    strcpy(scratch, path);
    s = scratch + 1;
    for (;;) {
        char *slash = strchr(s, '/');

        if (nseg == sizeof(segs) / sizeof(segs[0]))
            return false;
        segs[nseg++] = s;
        if (!slash)
            break;
        *slash = '\0';
        s = slash + 1;
    }
    for (size_t i = 0; i < nseg; i++) {
        const char *pe = strchr(p, '/');
        size_t pl = pe ? (size_t)(pe - p) : strlen(p);

        if (pl > 2 && p[0] == '{') {
            if (!*segs[i] || n == API_MAX_PARAMS)
                return false;
            params[n++] = segs[i];
        } else if (strlen(segs[i]) != pl || strncmp(p, segs[i], pl) != 0) {
            return false;
        }
        if (i + 1 < nseg) {
            if (!pe)
                return false;
            p = pe + 1;
        } else if (pe) {
            return false;
        }
    }
    *n_params = n;
    return true;
}

enum router_result router_match(const char *method, const char *path, char *scratch,
                                const struct route **route, const char **params,
                                size_t *n_params)
{
    bool path_seen = false;

    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        if (!match(routes[i].pattern, path, scratch, params, n_params))
            continue;
        path_seen = true;
        if (!strcmp(routes[i].method, method) ||
            (!strcmp(method, "HEAD") && !strcmp(routes[i].method, "GET"))) {
            *route = &routes[i];
            return ROUTER_FOUND;
        }
    }
    return path_seen ? ROUTER_NO_METHOD : ROUTER_NO_PATH;
}

bool router_raw_path_has_nul(const char *raw)
{
    for (const char *p = raw; *p && *p != '?'; p++)
        if (p[0] == '%' && p[1] == '0' && p[2] == '0')
            return true;
    return false;
}

void router_normalize(const char *path, char *out, size_t size)
{
    size_t n;

    if (!strncmp(path, "/tasks", 6) && (path[6] == '\0' || path[6] == '/'))
        snprintf(out, size, "/api/v1%s", path);
    else if (!strncmp(path, "/workers", 8) && (path[8] == '\0' || path[8] == '/'))
        snprintf(out, size, "/api/v1%s", path);
    else
        snprintf(out, size, "%s", path);
    n = strlen(out);
    if (n > 1 && out[n - 1] == '/')
        out[n - 1] = '\0';
}
