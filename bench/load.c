/* load: the HTTP side of the lifecycle benchmark (bench/run.sh drives it).
 *
 *   load throughput URL N CONCURRENCY   submit N tasks from CONCURRENCY threads, wait
 *                                       until all have completed; print the rates
 *   load latency URL N                  submit N tasks one at a time (problem_id
 *                                       "latency"), 20 ms apart, for submit-to-start
 */
#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct shared {
    const char *url;
    long total;
    atomic_long next;
    atomic_long failed;
};

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static size_t sink(char *p, size_t s, size_t n, void *ud)
{
    (void)p;
    (void)ud;
    return s * n;
}

static size_t keep(char *p, size_t s, size_t n, void *ud)
{
    char *buf = ud;
    size_t have = strlen(buf), add = s * n;

    if (have + add < 65535) {
        memcpy(buf + have, p, add);
        buf[have + add] = '\0';
    }
    return s * n;
}

static CURL *poster(const char *url, const char *body, struct curl_slist *hdr)
{
    CURL *h = curl_easy_init();

    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, sink);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    return h;
}

static void *submitter(void *arg)
{
    struct shared *sh = arg;
    char url[512];
    struct curl_slist *hdr = curl_slist_append(NULL, "Content-Type: application/json");
    CURL *h;

    snprintf(url, sizeof(url), "%s/api/v1/tasks", sh->url);
    h = poster(url, "{\"problem_id\":\"bench\"}", hdr);
    while (atomic_fetch_add(&sh->next, 1) < sh->total) {
        long code = 0;
        if (curl_easy_perform(h) != CURLE_OK ||
            (curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code), code != 201))
            atomic_fetch_add(&sh->failed, 1);
    }
    curl_easy_cleanup(h);
    curl_slist_free_all(hdr);
    return NULL;
}

static long completed(const char *base)
{
    char url[512], body[65536] = "";
    CURL *h = curl_easy_init();
    json_t *o;
    long n = -1;

    /* Without the averages: those read the whole table, the counts only their counters. */
    snprintf(url, sizeof(url), "%s/api/v1/tasks/stats?include_averages=false", base);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, keep);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, body);
    if (curl_easy_perform(h) == CURLE_OK && (o = json_loads(body, 0, NULL))) {
        n = (long)(json_integer_value(json_object_get(o, "completed")) +
                   json_integer_value(json_object_get(o, "failed")));
        json_decref(o);
    }
    curl_easy_cleanup(h);
    return n;
}

static int throughput(const char *url, long n, int c)
{
    struct shared sh = {.url = url, .total = n};
    pthread_t th[256];
    long base = completed(url);
    double t0, t_sub, t_done;

    if (c > 256)
        c = 256;
    t0 = now_s();
    for (int i = 0; i < c; i++)
        pthread_create(&th[i], NULL, submitter, &sh);
    for (int i = 0; i < c; i++)
        pthread_join(th[i], NULL);
    t_sub = now_s();
    /* Every 20 ms (at most 20 ms late over runs of seconds): polled every 2 ms, the
     * stats requests took a tenth of the machine from what they measure. */
    while (completed(url) < base + n - atomic_load(&sh.failed))
        usleep(20000);
    t_done = now_s();
    printf("tasks %ld failed_submits %ld submit_per_s %.0f lifecycle_per_s %.0f seconds %.2f\n",
           n, atomic_load(&sh.failed), (double)n / (t_sub - t0), (double)n / (t_done - t0),
           t_done - t0);
    return atomic_load(&sh.failed) ? 1 : 0;
}

static int latency(const char *base, long n)
{
    char url[512];
    struct curl_slist *hdr = curl_slist_append(NULL, "Content-Type: application/json");
    CURL *h;
    long bad = 0;

    snprintf(url, sizeof(url), "%s/api/v1/tasks", base);
    h = poster(url, "{\"problem_id\":\"latency\"}", hdr);
    for (long i = 0; i < n; i++) {
        long code = 0;
        if (curl_easy_perform(h) != CURLE_OK ||
            (curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code), code != 201))
            bad++;
        usleep(20000); /* the worker is idle again before the next one */
    }
    curl_easy_cleanup(h);
    curl_slist_free_all(hdr);
    printf("latency_tasks %ld failed_submits %ld\n", n, bad);
    return bad ? 1 : 0;
}

int main(int argc, char **argv)
{
    int rc = 2;

    curl_global_init(CURL_GLOBAL_DEFAULT);
    if (argc == 5 && !strcmp(argv[1], "throughput"))
        rc = throughput(argv[2], atol(argv[3]), atoi(argv[4]));
    else if (argc == 4 && !strcmp(argv[1], "latency"))
        rc = latency(argv[2], atol(argv[3]));
    else
        fprintf(stderr, "usage: load throughput URL N CONCURRENCY | load latency URL N\n");
    curl_global_cleanup();
    return rc;
}
