/* simulate: a deterministic stand-in for an AIOpsLab run (see simulate.h).
 *
 * parameters.simulate: steps (default min(max_steps, 5)), step_seconds (0.05),
 * (parameters.agent_config.simulate, when given, overrides it key by key)
 * outcome (success | failure | crash | hang | infra_failure | infra_flaky), seed (default:
 * a hash of problem_id). infra_failure: the cluster fails before the agent's first step,
 * said as error_class infrastructure in the result line; infra_flaky: so on the task's
 * first attempt, a success after.
 * It emits what a real run emits: phase logs, the system prompt and task message,
 * an assistant action and a tool observation per step, and a result. */
#include "exec/simulate.h"
#include "exec/simenv.h"
#include "model/task.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct sim {
    const char *task_id;
    const char *problem_id;
    char session[64];
    uint64_t rng;
    int in_tokens, out_tokens;
};

static uint64_t next(struct sim *s)
{
    /* xorshift64*: small, fast, and the same sequence for the same seed everywhere. */
    s->rng ^= s->rng >> 12;
    s->rng ^= s->rng << 25;
    s->rng ^= s->rng >> 27;
    return s->rng * 2685821657736338717ULL;
}

static void log_line(const char *level, const char *message, json_t *context)
{
    simenv_emit(json_pack("{s:s, s:s, s:s, s:o}", "type", "log", "level", level, "message", message,
                       "context", context ? context : json_object()));
}

static void message(struct sim *s, int step, const char *role, const char *content, bool llm)
{
    json_t *o = json_pack("{s:s, s:s, s:i, s:s, s:s}", "type", "message", "session_id",
                          s->session, "step", step, "role", role, "content", content);

    if (o && llm) {
        int in = 200 + (int)(next(s) % 800), out = 20 + (int)(next(s) % 120);
        s->in_tokens += in;
        s->out_tokens += out;
        json_object_set_new(o, "model", json_string("simulated-gpt"));
        json_object_set_new(o, "usage", json_pack("{s:i, s:i, s:i}", "prompt_tokens", in,
                                                  "completion_tokens", out, "total_tokens",
                                                  in + out));
    }
    simenv_emit(o);
}

static void pause_seconds(double sec)
{
    struct timespec ts;

    if (sec <= 0)
        return;
    ts.tv_sec = (time_t)sec;
    ts.tv_nsec = (long)((sec - (double)ts.tv_sec) * 1e9);
    while (nanosleep(&ts, &ts) < 0)
        ;
}

static const char *const actions[] = {
    "exec_shell(\"kubectl get pods -n test-hotel-reservation\")",
    "get_logs(\"test-hotel-reservation\", \"frontend\")",
    "get_metrics(\"test-hotel-reservation\", 5)",
    "exec_shell(\"kubectl describe svc geo -n test-hotel-reservation\")",
    "get_traces(\"test-hotel-reservation\", 5)",
};

static const char *const observations[] = {
    "NAME                       READY   STATUS             RESTARTS\n"
    "frontend-7d9c6b5f4-x2k8p   1/1     Running            0\n"
    "geo-5b8f7c9d6-q4w7n        0/1     CrashLoopBackOff   7",
    "2025-09-12T10:00:04Z ERROR rpc error: code = Unavailable desc = connection refused",
    "Metrics saved to ./metrics_output: cpu and memory of geo are near zero",
    "Port: 8083/TCP  TargetPort: 9999/TCP  Endpoints: <none>",
    "Traces saved to ./trace_output: 37% of frontend -> geo calls fail",
};

/* The run's settings from the task line; outcome points into task. */
struct plan {
    json_t *task;
    int max_steps, steps;
    double step_seconds;
    const char *outcome;
};

/* Reads the task line from stdin. Returns it (caller decrefs), or NULL after
 * saying why on stderr. */
static json_t *read_task(void)
{
    char line[1 << 16];
    json_t *task;

    if (!fgets(line, sizeof(line), stdin)) {
        fprintf(stderr, "simulate: no task on stdin\n");
        return NULL;
    }
    task = json_loads(line, 0, NULL);
    if (!json_is_object(task)) {
        fprintf(stderr, "simulate: the task line is not a JSON object\n");
        json_decref(task);
        return NULL;
    }
    return task;
}

/* parameters.simulate with parameters.agent_config.simulate over it: an agent config
 * may carry its own simulated behaviour, so one experiment can compare simulated agents.
 * Borrowed from params (kept there under "_simulate_merged" for the run's life). */
static json_t *plan_settings(json_t *params)
{
    json_t *base = json_object_get(params, "simulate");
    json_t *own = json_object_get(json_object_get(params, "agent_config"), "simulate");
    json_t *merged;

    if (!json_is_object(own))
        return base;
    merged = json_is_object(base) ? json_copy(base) : json_object();
    json_object_update(merged, own);
    json_object_set_new(params, "_simulate_merged", merged);
    return merged;
}

/* Fills s and p from parameters.simulate. Returns 0, or -1 after saying on
 * stderr that the outcome is unknown. */
static int plan_read(struct sim *s, struct plan *p)
{
    json_t *params, *sim_p, *v;

    s->task_id = json_string_value(json_object_get(p->task, "id"));
    s->problem_id = json_string_value(json_object_get(p->task, "problem_id"));
    if (!s->task_id)
        s->task_id = "unknown";
    if (!s->problem_id)
        s->problem_id = "unknown";
    params = json_object_get(p->task, "parameters");
    p->max_steps = (int)json_integer_value(json_object_get(params, "max_steps"));
    if (p->max_steps <= 0)
        p->max_steps = 30;
    p->steps = p->max_steps < 5 ? p->max_steps : 5;
    sim_p = plan_settings(params);
    if (json_is_integer(v = json_object_get(sim_p, "steps")))
        p->steps = (int)json_integer_value(v);
    if (json_is_number(v = json_object_get(sim_p, "step_seconds")))
        p->step_seconds = json_number_value(v);
    if (json_is_string(v = json_object_get(sim_p, "outcome")))
        p->outcome = json_string_value(v);
    if (json_is_integer(v = json_object_get(sim_p, "seed")))
        s->rng = (uint64_t)json_integer_value(v) * 0x9E3779B97F4A7C15ULL + 1;
    else
        s->rng = simenv_hash(s->problem_id);
    if (p->steps > p->max_steps)
        p->steps = p->max_steps;
    if (p->steps < 1)
        p->steps = 1;
    if (strcmp(p->outcome, "success") && strcmp(p->outcome, "failure") &&
        strcmp(p->outcome, "crash") && strcmp(p->outcome, "hang") &&
        strcmp(p->outcome, "infra_failure") && strcmp(p->outcome, "infra_flaky")) {
        fprintf(stderr, "simulate: unknown outcome '%s' (success, failure, crash, hang, "
                        "infra_failure, infra_flaky)\n", p->outcome);
        return -1;
    }
    /* infra_flaky is a failure on the first attempt only (the task line's "attempt"). */
    if (!strcmp(p->outcome, "infra_flaky"))
        p->outcome = json_integer_value(json_object_get(p->task, "attempt")) <= 1
                         ? "infra_failure" : "success";
    snprintf(s->session, sizeof(s->session), "sim-%s", s->task_id);
    return 0;
}

/* The phase logs before the agent starts, the system prompt and the task. */
static void prologue(struct sim *s, const struct plan *p)
{
    char text[512];

    snprintf(text, sizeof(text), "Simulated AIOpsLab run of %s: %d steps", s->problem_id,
             p->steps);
    log_line("info", text, json_pack("{s:s}", "phase", "init"));
    log_line("info", "Deploying the application", json_pack("{s:s}", "phase", "deploy"));
    log_line("info", "Injecting the fault", json_pack("{s:s}", "phase", "inject"));
    message(s, 0, "system",
            "You are an expert DevOps engineer assigned to a Kubernetes service. Use the "
            "available APIs (exec_shell, get_logs, get_metrics, get_traces, submit) and "
            "answer with one API call per turn.",
            false);
    snprintf(text, sizeof(text),
             "Problem %s (%s): the hotel reservation service is misbehaving. Find out "
             "what is wrong. You have %d steps.",
             s->problem_id, simenv_task_type(s->problem_id), p->max_steps);
    message(s, 0, "user", text, false);
}

/* One action and observation a step; outcome crash exits half way, hang never
 * returns. */
static void agent_steps(struct sim *s, const struct plan *p)
{
    char text[512];

    for (int step = 1; step <= p->steps; step++) {
        size_t k = (size_t)(next(s) % (sizeof(actions) / sizeof(actions[0])));

        pause_seconds(p->step_seconds);
        if (step == p->steps)
            message(s, step, "assistant", "submit(\"Yes\")", true);
        else
            message(s, step, "assistant", actions[k], true);
        message(s, step, "tool", step == p->steps ? "Submission received." : observations[k],
                false);
        snprintf(text, sizeof(text), "step %d/%d", step, p->steps);
        log_line("info", text, json_pack("{s:s, s:i}", "phase", "step", "step", step));
        if (!strcmp(p->outcome, "crash") && step * 2 >= p->steps) {
            fprintf(stderr, "Traceback (most recent call last):\n"
                            "RuntimeError: simulated crash of the agent\n");
            fflush(stderr);
            json_decref(p->task);
            _exit(70);
        }
    }
    if (!strcmp(p->outcome, "hang")) {
        log_line("warning", "the environment stopped answering", NULL);
        for (;;)
            pause();
    }
}

/* The closing phases and the result line. */
static void epilogue(struct sim *s, const struct plan *p)
{
    int ok = !strcmp(p->outcome, "success");
    json_t *results, *r;

    log_line("info", "Evaluating the submission", json_pack("{s:s}", "phase", "eval"));
    log_line("info", "Cleaning up the environment", json_pack("{s:s}", "phase", "cleanup"));
    results = json_pack("{s:i, s:i, s:i}", "steps", p->steps, "in_tokens", s->in_tokens,
                        "out_tokens", s->out_tokens);
    if (!strcmp(simenv_task_type(s->problem_id), "detection")) {
        json_object_set_new(results, "Detection Accuracy",
                            json_string(ok ? "Correct" : "Incorrect"));
        json_object_set_new(results, "TTD", json_real(p->steps * p->step_seconds));
    } else {
        json_object_set_new(results, "success", json_boolean(ok));
    }
    r = json_pack("{s:s, s:b, s:s, s:s, s:{s:i, s:i, s:i}, s:o}", "type", "result",
                  "success", ok, "output", ok ? "The fault was found" : "Wrong answer",
                  "session_id", s->session, "metrics", "steps_taken", p->steps, "in_tokens",
                  s->in_tokens, "out_tokens", s->out_tokens, "results", results);
    if (!ok)
        json_object_set_new(r, "error", json_string("the agent's submission was wrong"));
    simenv_emit(r);
}

/* The cluster breaks while the application deploys: no agent step ran, and the result
 * line says the failure is the infrastructure's. */
static void cluster_failure(struct sim *s)
{
    log_line("info", "Deploying the application", json_pack("{s:s}", "phase", "deploy"));
    log_line("error", "simulated infrastructure failure: the cluster's API server stopped "
                      "answering", json_pack("{s:s}", "phase", "deploy"));
    simenv_emit(json_pack("{s:s, s:b, s:s, s:s, s:s}", "type", "result", "success", 0,
                          "session_id", s->session, "error",
                          "the cluster's API server stopped answering while deploying",
                          "error_class", "infrastructure"));
}

int simulate_main(void)
{
    struct plan p = {.step_seconds = 0.05, .outcome = "success"};
    struct sim s = {0};
    json_t *v;
    int code = 2;

    p.task = read_task();
    if (!p.task)
        return 2;
    v = json_object_get(p.task, "mode");
    if (json_is_string(v) && task_mode_parse(json_string_value(v)) == TASK_INTERACTIVE) {
        code = simenv_run(p.task);
        goto out;
    }
    if (plan_read(&s, &p) < 0)
        goto out;
    if (!strcmp(p.outcome, "infra_failure")) {
        cluster_failure(&s);
    } else {
        prologue(&s, &p);
        agent_steps(&s, &p);
        epilogue(&s, &p);
    }
    code = 0;
out:
    json_decref(p.task);
    return code;
}
