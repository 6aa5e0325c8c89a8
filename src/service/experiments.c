/* experiments: see experiments.h. */
#include "service/experiments.h"
#include "service/scoreboard.h"
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
    size_t added = 0;
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
    rc = n ? store_experiment_add_tasks(q->store, id, tasks, n, &added) : 0;
    if (rc == 0) {
        *created = (int64_t)added;
        if (added && q->wake_workers)
            q->wake_workers(q->workers);
    }
out:
    free_tasks(tasks, n);
    json_decref(slots);
    experiment_spec_reset(&s);
    experiment_free(e);
    return rc;
}

int experiments_scoreboard(struct queue *q, const char *id, json_t **out)
{
    return scoreboard_compute(q->store, id, out);
}

int experiments_end(struct queue *q)
{
    int n = 0, rc = store_experiments_end(q->store, clock_now_us(), &n);

    if (rc == 0 && n)
        log_info("%d experiments ended", n);
    return rc;
}
