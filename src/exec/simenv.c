/* simenv: the simulated executor's interactive mode — a small deterministic incident a
 * trainer can step through (see simenv.h). */
#include "exec/simenv.h"

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NS "test-hotel-reservation"

static const char *const services[] = {"frontend", "geo", "profile", "rate", "reservation"};
#define N_SERVICES (sizeof(services) / sizeof(services[0]))

struct env {
    const char *task_id, *problem_id, *type;
    const char *faulty;           /* the service with the injected fault */
    int max_steps, steps;
};

void simenv_emit(json_t *o)
{
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;

    if (text) {
        fputs(text, stdout);
        fputc('\n', stdout);
        fflush(stdout);
    }
    free(text);
    json_decref(o);
}

uint64_t simenv_hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */

    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h ? h : 1;
}

const char *simenv_task_type(const char *problem_id)
{
    static const char *const types[] = {"detection", "localization", "analysis", "mitigation"};

    for (size_t i = 0; i < 4; i++)
        if (strstr(problem_id, types[i]))
            return types[i];
    return "detection";
}

/* The first argument of an API call such as get_logs("ns", "svc"): the n-th quoted
 * string, copied into out ("" when absent). */
static void quoted_arg(const char *call, int n, char *out, size_t size)
{
    const char *p = call;

    out[0] = '\0';
    for (int i = 0; i <= n; i++) {
        const char *q = strpbrk(p, "\"'"), *end;
        if (!q)
            return;
        end = strchr(q + 1, *q);
        if (!end)
            return;
        if (i == n) {
            size_t len = (size_t)(end - q - 1) < size - 1 ? (size_t)(end - q - 1) : size - 1;
            memcpy(out, q + 1, len);
            out[len] = '\0';
            return;
        }
        p = end + 1;
    }
}

static void pods(const struct env *e, char *out, size_t size)
{
    size_t n = (size_t)snprintf(out, size, "NAME                            READY   STATUS             RESTARTS\n");

    for (size_t i = 0; i < N_SERVICES && n < size; i++) {
        bool bad = !strcmp(services[i], e->faulty);
        char pod[64];
        snprintf(pod, sizeof(pod), "%s-5b8f7c9d6-q4w7n", services[i]);
        n += (size_t)snprintf(out + n, size - n, "%-32s%s     %-18s %d\n", pod,
                              bad ? "0/1" : "1/1", bad ? "CrashLoopBackOff" : "Running", bad ? 7 : 0);
    }
}

static void shell(const struct env *e, const char *cmd, char *out, size_t size)
{
    char svc[64] = "";

    if (strstr(cmd, "get pods")) {
        pods(e, out, size);
    } else if (strstr(cmd, "describe")) {
        for (size_t i = 0; i < N_SERVICES; i++)
            if (strstr(cmd, services[i]))
                snprintf(svc, sizeof(svc), "%s", services[i]);
        if (!svc[0])
            snprintf(out, size, "error: the server doesn't have a resource type in \"%s\"", cmd);
        else if (!strcmp(svc, e->faulty))
            snprintf(out, size, "Name: %s\nNamespace: " NS "\nPort: 8083/TCP  TargetPort: 9999/TCP"
                                "\nEndpoints: <none>\nEvents: Back-off restarting failed container",
                     svc);
        else
            snprintf(out, size, "Name: %s\nNamespace: " NS "\nPort: 8083/TCP  TargetPort: 8083/TCP"
                                "\nEndpoints: 10.244.0.12:8083", svc);
    } else if (strstr(cmd, "get svc") || strstr(cmd, "get services")) {
        size_t n = (size_t)snprintf(out, size, "NAME          TYPE        PORT(S)\n");
        for (size_t i = 0; i < N_SERVICES && n < size; i++)
            n += (size_t)snprintf(out + n, size - n, "%-12s  ClusterIP   8083/TCP\n", services[i]);
    } else {
        snprintf(out, size, "(no output)");
    }
}

/* An action in AIOpsLab's form is one fenced block ("```" and a newline, the call, a
 * newline and "```"): its call is copied into buf. Without any fence the action is taken
 * as it is (for trying the environment by hand). Returns NULL, with AIOpsLab's complaint
 * in out, when the fences are not exactly one block. */
static const char *unfence(const char *action, char *buf, size_t bsize, char *out, size_t size)
{
    const char *open = strstr(action, "```"), *body, *close;
    size_t n;

    if (!open)
        return action;
    body = open + 3;
    body += strspn(body, " \t\r");
    close = *body == '\n' ? strstr(body + 1, "\n```") : NULL;
    if (!close || strstr(close + 4, "```")) {
        snprintf(out, size, "Error parsing response: Format validation failure. Only have one "
                            "pair of three ticks in your block: ```\nexec_shell(\"ls\")\n```");
        return NULL;
    }
    body++;
    n = (size_t)(close - body);
    snprintf(buf, bsize, "%.*s", (int)(n < bsize - 1 ? n : bsize - 1), body);
    return buf;
}

/* submit(answer): graded as AIOpsLab grades the task type (a0 is lower-cased here). */
static void submit(const struct env *e, char *a0, char *out, size_t size, double *reward,
                   json_t *results)
{
    bool right;
    char want[64];

    if (!strcmp(e->type, "detection"))
        snprintf(want, sizeof(want), "yes");
    else
        snprintf(want, sizeof(want), "%s", e->faulty);
    for (char *p = a0; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    right = strstr(a0, want) != NULL;
    *reward = right ? 1.0 : 0.0;
    snprintf(out, size, "Submission received.");
    json_object_set_new(results, !strcmp(e->type, "detection") ? "Detection Accuracy"
                                                               : "Localization Accuracy",
                        json_string(right ? "Correct" : "Incorrect"));
    json_object_set_new(results, "submission", json_string(a0));
}

/* One action to its observation; done and reward are set when the episode ends. */
static void step(struct env *e, const char *fenced, char *out, size_t size, bool *done,
                 double *reward, json_t *results)
{
    char a0[512], a1[128], call[2048];
    const char *action = unfence(fenced, call, sizeof(call), out, size);
    const char *open;

    *done = false;
    if (!action)
        return;
    action += strspn(action, " \t\r\n");
    open = strchr(action, '(');
    size_t name_len = open ? (size_t)(open - action) : strlen(action);
    char name[32];

    while (name_len && isspace((unsigned char)action[name_len - 1]))
        name_len--;
    snprintf(name, sizeof(name), "%.*s", (int)(name_len < sizeof(name) - 1 ? name_len : sizeof(name) - 1), action);
    quoted_arg(action, 0, a0, sizeof(a0));
    quoted_arg(action, 1, a1, sizeof(a1));
    if (!open || !strchr(open, ')')) {
        snprintf(out, size, "Error: could not parse \"%s\"; an action is a call such as "
                            "exec_shell(\"kubectl get pods -n " NS "\")", action);
    } else if (!strcmp(name, "exec_shell")) {
        shell(e, a0, out, size);
    } else if (!strcmp(name, "get_logs")) {
        if (!strcmp(a1, e->faulty))
            snprintf(out, size, "2025-09-12T10:00:03Z INFO starting %s on :9999\n"
                                "2025-09-12T10:00:04Z FATAL listen tcp :9999: bind: address "
                                "mismatch with service target port 8083", a1);
        else if (a1[0])
            snprintf(out, size, "2025-09-12T10:00:04Z ERROR rpc to %s: code = Unavailable desc "
                                "= connection refused", e->faulty);
        else
            snprintf(out, size, "Error: get_logs(namespace, service) needs a service name");
    } else if (!strcmp(name, "get_metrics")) {
        size_t n = (size_t)snprintf(out, size, "service       cpu_m   error_rate\n");
        for (size_t i = 0; i < N_SERVICES && n < size; i++) {
            bool bad = !strcmp(services[i], e->faulty);
            n += (size_t)snprintf(out + n, size - n, "%-12s  %5d   %.2f\n", services[i],
                                  bad ? 1 : 120 + 10 * (int)i, bad ? 1.0 : 0.02);
        }
    } else if (!strcmp(name, "get_traces")) {
        snprintf(out, size, "37%% of frontend -> %s calls fail with Unavailable", e->faulty);
    } else if (!strcmp(name, "submit")) {
        submit(e, a0, out, size, reward, results);
        *done = true;
    } else {
        snprintf(out, size, "Error: unknown action %s; the actions are exec_shell, get_logs, "
                            "get_metrics, get_traces and submit", name);
    }
}

/* The environment of task: its problem, kind of task, step budget and fault. */
static void env_init(struct env *e, json_t *task)
{
    json_t *params = json_object_get(task, "parameters");
    json_int_t seed = json_integer_value(json_object_get(json_object_get(params, "simulate"),
                                                        "seed"));

    e->task_id = json_string_value(json_object_get(task, "id"));
    e->problem_id = json_string_value(json_object_get(task, "problem_id"));
    if (!e->problem_id)
        e->problem_id = "unknown";
    e->type = simenv_task_type(e->problem_id);
    e->max_steps = (int)json_integer_value(json_object_get(params, "max_steps"));
    if (e->max_steps <= 0)
        e->max_steps = 30;
    /* The fault is a function of the problem id (and parameters.simulate.seed): the same
     * problem is the same incident every time. */
    e->faulty = services[1 + (simenv_hash(e->problem_id) + (uint64_t)seed) % (N_SERVICES - 1)];
}

/* The ready line: what the agent is asked and the actions it has. */
static void announce(const struct env *e)
{
    char desc[512];

    simenv_emit(json_pack("{s:s, s:s, s:s}", "type", "log", "level", "info", "message",
                          "simulated environment: deploying the hotel reservation application"));
    snprintf(desc, sizeof(desc), "Problem %s (%s): the hotel reservation service in namespace "
             NS " is misbehaving. %s", e->problem_id, e->type,
             !strcmp(e->type, "detection") ? "Is there an anomaly? Submit \"Yes\" or \"No\"."
                                           : "Which service is faulty? Submit its name.");
    simenv_emit(json_pack("{s:s, s:s, s:s, s:{s:s, s:s, s:s, s:s, s:s}}", "type", "ready",
                   "task_description", desc, "instructions",
                   "You are an SRE agent. Answer each observation with exactly one API call, "
                   "in one markdown code block:\n```\nexec_shell(\"kubectl get pods -n " NS
                   "\")\n```",
                   "actions", "exec_shell", "exec_shell(command): run a shell command (kubectl)",
                   "get_logs", "get_logs(namespace, service): recent logs of a service",
                   "get_metrics", "get_metrics(namespace, duration): CPU and error rates",
                   "get_traces", "get_traces(namespace, duration): failing calls",
                   "submit", "submit(answer): end the episode with your answer"));
}

/* Answers one input line (an action, else a warning) with its observation; sets *done,
 * *reward and results when the episode ends. */
static void answer_line(struct env *e, const char *line, bool *done, double *reward,
                        json_t *results)
{
    json_t *msg = json_loads(line, 0, NULL);
    const char *type = json_string_value(json_object_get(msg, "type"));
    const char *action = json_string_value(json_object_get(msg, "action"));
    json_int_t n = json_integer_value(json_object_get(msg, "step"));
    char out[4096];

    if (!type || strcmp(type, "action") || !action) {
        simenv_emit(json_pack("{s:s, s:s, s:s}", "type", "log", "level", "warning", "message",
                              "simulated environment: ignored a line that is not an action"));
        json_decref(msg);
        return;
    }
    e->steps++;
    step(e, action, out, sizeof(out), done, reward, results);
    if (!*done && e->steps >= e->max_steps) {
        *done = true;
        *reward = 0;
        json_object_set_new(results, "Detection Accuracy", json_string("Incorrect"));
        snprintf(out + strlen(out), sizeof(out) - strlen(out),
                 "\n(max_steps reached: the episode ends without a submission)");
    }
    json_object_set_new(results, "steps", json_integer(e->steps));
    simenv_emit(*done ? json_pack("{s:s, s:I, s:s, s:b, s:f, s:O}", "type", "observation",
                                  "step", n, "content", out, "done", 1, "reward", *reward,
                                  "results", results)
                      : json_pack("{s:s, s:I, s:s, s:b}", "type", "observation", "step", n,
                                  "content", out, "done", 0));
    json_decref(msg);
}

int simenv_run(json_t *task)
{
    struct env e = {0};
    char line[1 << 16];
    double reward = 0;
    bool done = false;
    json_t *results = json_object();

    env_init(&e, task);
    announce(&e);
    while (!done && fgets(line, sizeof(line), stdin))
        answer_line(&e, line, &done, &reward, results);
    if (!done) {
        /* stdin closed before the end: the session was closed or abandoned. */
        simenv_emit(json_pack("{s:s, s:s, s:s}", "type", "log", "level", "info", "message",
                              "simulated environment: the session was closed; cleaning up"));
        json_decref(results);
        return 0;
    }
    simenv_emit(json_pack("{s:s, s:b, s:f, s:O, s:s, s:{s:i}}", "type", "result", "success", 1,
                          "reward", reward, "results", results, "output",
                          reward > 0 ? "The fault was found" : "The fault was not found",
                          "metrics", "steps_taken", e.steps));
    json_decref(results);
    return 0;
}
