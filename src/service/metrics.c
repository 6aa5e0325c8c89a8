/* metrics: see metrics.h. */
#include "service/metrics.h"
#include "core/clock.h"
#include "core/err.h"
#include "core/version.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SERIES 512   /* route x method x status combinations kept; more go to "other" */

static const double http_buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                      0.1,    0.25,  0.5,    1,     2.5,  5,     10};
static const double task_buckets[] = {0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800,
                                      3600, 7200};
static const double claim_buckets[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                       0.01,   0.025,   0.05,   0.1,   0.5,    1};
#define NB(a) (sizeof(a) / sizeof(a[0]))

struct hist {
    const double *bounds;
    size_t n;
    uint64_t counts[16];     /* per bucket (not cumulative), then +Inf at [n] */
    double sum;
    uint64_t total;
};

struct http_series {
    char route[96];
    char method[8];
    int status;
    uint64_t count;
    struct hist latency;
};

struct metrics {
    pthread_mutex_t lock;    /* guards everything below */
    int64_t started_us;
    uint64_t created;
    uint64_t finished[TASK_N_STATUS];
    uint64_t retries[3];              /* by enum task_error_class */
    uint64_t llm[METRICS_LLM_N];      /* gateway calls by enum metrics_llm */
    struct hist wait, run, claim;
    uint64_t exits[5];
    struct http_series http[MAX_SERIES];
    size_t n_http;
    bool db_ok;
    int64_t db_read_us;      /* when the gauges were last read; 0: never */
    struct task_stats tasks;
    int64_t workers[3];
};

static const char *const exit_causes[5] = {"success", "failure", "crash", "timeout", "cancel"};
static const char *const llm_outcomes[METRICS_LLM_LOST] = {"answered", "unreachable", "timeout",
                                                           "cut"};

static void hist_init(struct hist *h, const double *bounds, size_t n)
{
    memset(h, 0, sizeof(*h));
    h->bounds = bounds;
    h->n = n;
}

static void hist_observe(struct hist *h, double v)
{
    size_t i = 0;

    while (i < h->n && v > h->bounds[i])
        i++;
    h->counts[i]++;
    h->sum += v;
    h->total++;
}

int metrics_new(struct metrics **out)
{
    struct metrics *m = calloc(1, sizeof(*m));

    if (!m)
        return ERR_NOMEM;
    pthread_mutex_init(&m->lock, NULL);
    m->started_us = clock_now_us();
    hist_init(&m->wait, task_buckets, NB(task_buckets));
    hist_init(&m->run, task_buckets, NB(task_buckets));
    hist_init(&m->claim, claim_buckets, NB(claim_buckets));
    *out = m;
    return 0;
}

void metrics_free(struct metrics *m)
{
    if (!m)
        return;
    pthread_mutex_destroy(&m->lock);
    free(m);
}

void metrics_http(struct metrics *m, const char *route, const char *method, int status,
                  double seconds)
{
    struct http_series *s = NULL;

    if (!m)
        return;
    pthread_mutex_lock(&m->lock);
    for (size_t i = 0; i < m->n_http && !s; i++)
        if (m->http[i].status == status && !strcmp(m->http[i].route, route) &&
            !strcmp(m->http[i].method, method))
            s = &m->http[i];
    if (!s) {
        size_t i = m->n_http < MAX_SERIES ? m->n_http++ : MAX_SERIES - 1;
        s = &m->http[i];
        if (s->count == 0) {
            snprintf(s->route, sizeof(s->route), "%s", i == MAX_SERIES - 1 ? "other" : route);
            snprintf(s->method, sizeof(s->method), "%s", method);
            s->status = status;
            hist_init(&s->latency, http_buckets, NB(http_buckets));
        }
    }
    s->count++;
    hist_observe(&s->latency, seconds);
    pthread_mutex_unlock(&m->lock);
}

void metrics_task_retried(struct metrics *m, enum task_error_class c)
{
    if (!m || (unsigned)c >= 3)
        return;
    pthread_mutex_lock(&m->lock);
    m->retries[c]++;
    pthread_mutex_unlock(&m->lock);
}

void metrics_llm(struct metrics *m, enum metrics_llm what)
{
    if (!m || (unsigned)what >= METRICS_LLM_N)
        return;
    pthread_mutex_lock(&m->lock);
    m->llm[what]++;
    pthread_mutex_unlock(&m->lock);
}

void metrics_task_created(struct metrics *m)
{
    if (!m)
        return;
    pthread_mutex_lock(&m->lock);
    m->created++;
    pthread_mutex_unlock(&m->lock);
}

void metrics_task_finished(struct metrics *m, enum task_status status, double wait, double run)
{
    if (!m || (unsigned)status >= TASK_N_STATUS)
        return;
    pthread_mutex_lock(&m->lock);
    m->finished[status]++;
    if (wait >= 0)
        hist_observe(&m->wait, wait);
    if (run >= 0)
        hist_observe(&m->run, run);
    pthread_mutex_unlock(&m->lock);
}

void metrics_claim(struct metrics *m, double seconds)
{
    if (!m)
        return;
    pthread_mutex_lock(&m->lock);
    hist_observe(&m->claim, seconds);
    pthread_mutex_unlock(&m->lock);
}

void metrics_exec_exit(struct metrics *m, const char *cause)
{
    if (!m || !cause)
        return;
    pthread_mutex_lock(&m->lock);
    for (size_t i = 0; i < 5; i++)
        if (!strcmp(exit_causes[i], cause))
            m->exits[i]++;
    pthread_mutex_unlock(&m->lock);
}

void metrics_set_queue(struct metrics *m, bool ok, const struct task_stats *tasks,
                       const int64_t workers[3])
{
    if (!m)
        return;
    pthread_mutex_lock(&m->lock);
    m->db_ok = ok;
    if (ok) {
        m->tasks = *tasks;
        memcpy(m->workers, workers, sizeof(m->workers));
        m->db_read_us = clock_now_us();
    }
    pthread_mutex_unlock(&m->lock);
}

static int hist_render(struct buf *b, const char *name, const char *labels,
                       const struct hist *h)
{
    uint64_t cum = 0;
    int rc = 0;

    for (size_t i = 0; rc == 0 && i <= h->n; i++) {
        cum += h->counts[i];
        if (i < h->n)
            rc = buf_appendf(b, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels,
                             *labels ? "," : "", h->bounds[i], (unsigned long long)cum);
        else
            rc = buf_appendf(b, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels,
                             *labels ? "," : "", (unsigned long long)cum);
    }
    if (rc == 0)
        rc = buf_appendf(b, "%s_sum%s%s%s %.6f\n%s_count%s%s%s %llu\n", name, *labels ? "{" : "",
                         labels, *labels ? "}" : "", h->sum, name, *labels ? "{" : "", labels,
                         *labels ? "}" : "", (unsigned long long)h->total);
    return rc;
}

/* A histogram without labels, with its HELP and TYPE lines; nothing once rc < 0.
 * Returns the new rc. */
static int hist_family(struct buf *b, int rc, const char *name, const char *help,
                       const struct hist *h)
{
    if (rc == 0)
        rc = buf_appendf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    if (rc == 0)
        rc = hist_render(b, name, "", h);
    return rc;
}

#define OUT(...)                                                                           \
    do {                                                                                   \
        if (rc == 0)                                                                       \
            rc = buf_appendf(out, __VA_ARGS__);                                            \
    } while (0)

/* The families of this server and of the database's gauges. The render_* functions
 * run with m->lock held, append to out while rc is 0, and return rc. */
static int render_gauges(const struct metrics *m, struct buf *out, int rc)
{
    static const char *const wnames[3] = {"idle", "busy", "offline"};
    int64_t now = clock_now_us();

    OUT("# HELP taskexec_up Whether this taskexec server is serving.\n"
        "# TYPE taskexec_up gauge\ntaskexec_up 1\n");
    OUT("# HELP taskexec_build_info The version of this build.\n"
        "# TYPE taskexec_build_info gauge\ntaskexec_build_info{version=\"%s\"} 1\n",
        TASKEXEC_VERSION);
    OUT("# HELP taskexec_start_time_seconds When this server started (Unix time).\n"
        "# TYPE taskexec_start_time_seconds gauge\ntaskexec_start_time_seconds %.3f\n",
        (double)m->started_us / 1e6);
    OUT("# HELP taskexec_database_up Whether the last read of the queue gauges succeeded.\n"
        "# TYPE taskexec_database_up gauge\ntaskexec_database_up %d\n", m->db_ok ? 1 : 0);
    OUT("# HELP taskexec_queue_gauges_age_seconds How old the queue gauges below are.\n"
        "# TYPE taskexec_queue_gauges_age_seconds gauge\ntaskexec_queue_gauges_age_seconds "
        "%.3f\n", m->db_read_us ? (double)(now - m->db_read_us) / 1e6 : -1.0);
    OUT("# HELP taskexec_tasks Tasks in the database by state (all servers).\n"
        "# TYPE taskexec_tasks gauge\n");
    for (int i = 0; i < TASK_N_STATUS; i++)
        OUT("taskexec_tasks{state=\"%s\"} %lld\n", task_status_name((enum task_status)i),
            (long long)m->tasks.counts[i]);
    OUT("# HELP taskexec_workers Workers in the database by status (all servers).\n"
        "# TYPE taskexec_workers gauge\n");
    for (int i = 0; i < 3; i++)
        OUT("taskexec_workers{status=\"%s\"} %lld\n", wnames[i], (long long)m->workers[i]);
    return rc;
}

/* What this server counted and timed. */
static int render_counters(const struct metrics *m, struct buf *out, int rc)
{
    OUT("# HELP taskexec_tasks_created_total Tasks created through this server.\n"
        "# TYPE taskexec_tasks_created_total counter\ntaskexec_tasks_created_total %llu\n",
        (unsigned long long)m->created);
    OUT("# HELP taskexec_tasks_finished_total Tasks this server ended, by final state.\n"
        "# TYPE taskexec_tasks_finished_total counter\n");
    for (int i = TASK_COMPLETED; i < TASK_N_STATUS; i++)
        OUT("taskexec_tasks_finished_total{state=\"%s\"} %llu\n",
            task_status_name((enum task_status)i), (unsigned long long)m->finished[i]);
    OUT("# HELP taskexec_task_retries_total Failed attempts this server put back in the "
        "queue, by failure class.\n# TYPE taskexec_task_retries_total counter\n");
    for (int i = TASK_CLASS_INFRASTRUCTURE; i <= TASK_CLASS_AGENT; i++)
        OUT("taskexec_task_retries_total{class=\"%s\"} %llu\n",
            task_error_class_name((enum task_error_class)i), (unsigned long long)m->retries[i]);
    OUT("# HELP taskexec_llm_calls_total Model calls through this server's LLM gateway, by "
        "outcome (answered: the upstream's answer, any status, reached the agent).\n"
        "# TYPE taskexec_llm_calls_total counter\n");
    for (int i = 0; i < METRICS_LLM_LOST; i++)
        OUT("taskexec_llm_calls_total{outcome=\"%s\"} %llu\n", llm_outcomes[i],
            (unsigned long long)m->llm[i]);
    OUT("# HELP taskexec_llm_records_lost_total Gateway calls whose record the database "
        "refused after retries.\n# TYPE taskexec_llm_records_lost_total counter\n"
        "taskexec_llm_records_lost_total %llu\n", (unsigned long long)m->llm[METRICS_LLM_LOST]);
    OUT("# HELP taskexec_executor_exits_total How executors run here ended.\n"
        "# TYPE taskexec_executor_exits_total counter\n");
    for (int i = 0; i < 5; i++)
        OUT("taskexec_executor_exits_total{cause=\"%s\"} %llu\n", exit_causes[i],
            (unsigned long long)m->exits[i]);
    rc = hist_family(out, rc, "taskexec_task_queue_wait_seconds",
                     "Time from creation to start of tasks ended here.", &m->wait);
    rc = hist_family(out, rc, "taskexec_task_run_seconds",
                     "Time from start to end of tasks ended here.", &m->run);
    rc = hist_family(out, rc, "taskexec_claim_seconds",
                     "How long a claim took (internal workers and the claim route).", &m->claim);
    return rc;
}

static int render_http(const struct metrics *m, struct buf *out, int rc)
{
    char labels[160];

    OUT("# HELP taskexec_http_requests_total HTTP requests by route template, method and "
        "status.\n# TYPE taskexec_http_requests_total counter\n");
    for (size_t i = 0; i < m->n_http; i++)
        OUT("taskexec_http_requests_total{route=\"%s\",method=\"%s\",status=\"%d\"} %llu\n",
            m->http[i].route, m->http[i].method, m->http[i].status,
            (unsigned long long)m->http[i].count);
    OUT("# HELP taskexec_http_request_duration_seconds HTTP request latency.\n"
        "# TYPE taskexec_http_request_duration_seconds histogram\n");
    for (size_t i = 0; rc == 0 && i < m->n_http; i++) {
        snprintf(labels, sizeof(labels), "route=\"%s\",method=\"%s\",status=\"%d\"",
                 m->http[i].route, m->http[i].method, m->http[i].status);
        rc = hist_render(out, "taskexec_http_request_duration_seconds", labels,
                         &m->http[i].latency);
    }
    return rc;
}

int metrics_render(struct metrics *m, struct buf *out)
{
    int rc;

    pthread_mutex_lock(&m->lock);
    rc = render_http(m, out, render_counters(m, out, render_gauges(m, out, 0)));
    pthread_mutex_unlock(&m->lock);
    return rc;
}
