/* webhook: see webhook.h. */
#include "service/webhook.h"
#include "core/netguard.h"
#include "core/names.h"
#include "service/scoreboard.h"
#include "core/thread.h"
#include "core/clock.h"
#include "core/crypto.h"
#include "core/err.h"
#include "core/log.h"
#include "store/store.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define BATCH 16
#define POLL_MS 250
#define LEASE_US (120 * 1000000LL)

struct webhook_sender {
    struct store *store;       /* borrowed */
    struct webhook_settings set;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    bool stop;                 /* guarded by lock */
};

bool webhook_host_allowed(const char *url, const char *allowed)
{
    const char *host;
    size_t n;

    if (!allowed || !*allowed)
        return true;
    host = strstr(url, "://");
    if (!host)
        return false;
    host += 3;
    if (*host == '[') {
        host++;
        n = strcspn(host, "]");
    } else {
        n = strcspn(host, ":/?#");
    }
    return names_has(allowed, host, n, true);
}

static size_t discard(char *p, size_t size, size_t n, void *ud)
{
    (void)p;
    (void)ud;
    return size * n;
}

/* One POST. Returns the HTTP status, or 0 with the reason in why (*refused: the address
 * guard stopped it, which no retry will change). */
static long post(CURL *h, const struct webhook_settings *cfg, const struct webhook_job *job,
                 const char *body, char *why, size_t size, bool *refused)
{
    struct curl_slist *hdr = NULL;
    char line[200], sig[CRYPTO_HEX_SHA256];
    long status = 0;
    struct netguard guard;
    CURLcode cc;

    curl_easy_reset(h);
    hdr = curl_slist_append(hdr, "Content-Type: application/json");
    hdr = curl_slist_append(hdr, "User-Agent: taskexec");
    hdr = curl_slist_append(hdr, job->experiment ? "X-Taskexec-Event: experiment.finished"
                                                 : "X-Taskexec-Event: task.finished");
    snprintf(line, sizeof(line), "X-Taskexec-Delivery: %.36s-%d", job->task_id, job->attempts + 1);
    hdr = curl_slist_append(hdr, line);
    if (cfg->secret && *cfg->secret) {
        crypto_hmac_sha256_hex(cfg->secret, body, strlen(body), sig);
        snprintf(line, sizeof(line), "X-Taskexec-Signature: sha256=%.64s", sig);
        hdr = curl_slist_append(hdr, line);
    }
    curl_easy_setopt(h, CURLOPT_URL, job->url);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, (long)cfg->timeout_seconds);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard);
    /* The allowed-hosts rule must not be sidestepped by a redirect. */
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    netguard_apply(&guard, h, job->url, cfg->outbound_allow_hosts);
    cc = curl_easy_perform(h);
    if (cc == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    else /* the guard's refusal is the reason, recorded on the delivery */
        snprintf(why, size, "%s", guard.refused[0] ? guard.refused : curl_easy_strerror(cc));
    *refused = cc != CURLE_OK && netguard_all_refused(&guard);
    curl_slist_free_all(hdr);
    return status;
}

static void deliver(struct webhook_sender *w, CURL *h, struct webhook_job *job)
{
    struct store *st = w->store;
    const struct webhook_settings *cfg = &w->set;
    struct task *t = NULL;
    json_t *o = NULL;
    char *body = NULL, why[300] = "";
    int attempts = job->attempts + 1;
    long status = 0;
    int64_t delay;
    bool refused = false;

    if (!webhook_host_allowed(job->url, cfg->allowed_hosts)) {
        if (store_webhook_result(st, job, "failed", job->attempts, clock_now_us(),
                                    "callback_url's host is not in WEBHOOK_ALLOWED_HOSTS") < 0)
            log_warn("webhook %s: could not record the refusal", job->task_id);
        return;
    }
    /* A task's end sends the task; an experiment's, the experiment and its scoreboard. */
    if (job->experiment)
        o = scoreboard_report(st, job->task_id);
    else if (store_task_get(st, job->task_id, &t) == 0)
        o = task_to_json(t);
    if (!o || !(body = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(10)))) {
        task_free(t);
        json_decref(o);
        return; /* the lease runs out and the delivery comes back */
    }
    status = post(h, cfg, job, body, why, sizeof(why), &refused);
    if (refused) {
        log_warn("webhook %s: %s (%s); not retried", job->task_id, why, job->url);
        if (store_webhook_result(st, job, "failed", attempts, clock_now_us(), why) < 0)
            log_warn("webhook %s: could not record the refusal", job->task_id);
    } else if (status >= 200 && status < 300) {
        if (store_webhook_result(st, job, "delivered", attempts, clock_now_us(),
                                    NULL) < 0)
            log_warn("webhook %s: delivered, but the database did not record it", job->task_id);
        else
            log_info("webhook %s: delivered to %s (attempt %d)", job->task_id, job->url,
                     attempts);
    } else {
        if (status)
            snprintf(why, sizeof(why), "HTTP %ld", status);
        delay = (int64_t)cfg->retry_base_ms * 1000 << (attempts - 1 < 20 ? attempts - 1 : 20);
        if (delay > 3600 * 1000000LL || delay <= 0)
            delay = 3600 * 1000000LL;
        bool last = attempts >= cfg->max_attempts;
        log_warn("webhook %s: attempt %d to %s failed (%s)%s", job->task_id, attempts, job->url,
                 why, last ? "; giving up" : "");
        if (store_webhook_result(st, job, last ? "failed" : "pending", attempts,
                                    clock_now_us() + delay, why) < 0)
            log_warn("webhook %s: could not record the attempt", job->task_id);
    }
    free(body);
    json_decref(o);
    task_free(t);
}

static void *sender_main(void *arg)
{
    struct webhook_sender *w = arg;
    struct store *st = w->store;
    CURL *h = NULL;
    bool failed = false;

    pthread_mutex_lock(&w->lock);
    while (!w->stop) {
        struct webhook_job jobs[BATCH];
        struct timespec until;
        size_t n = 0;

        pthread_mutex_unlock(&w->lock);
        if (!failed && store_webhooks_due(st, clock_now_us(), LEASE_US, BATCH, jobs, &n) == 0) {
            /* libcurl (and the TLS library under it) costs megabytes of resident memory once
             * initialised, so it is set up on the first delivery, not at start; libcurl's
             * global init is thread-safe since 7.84 (Debian 12 ships 7.88). */
            if (n > 0 && !h && (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK ||
                                !(h = curl_easy_init()))) {
                log_error("webhooks: cannot initialise libcurl; deliveries stay queued");
                failed = true;
            }
            for (size_t i = 0; i < n; i++) {
                if (h)
                    deliver(w, h, &jobs[i]);
                free(jobs[i].url);
            }
        }
        pthread_mutex_lock(&w->lock);
        if (n == BATCH || w->stop)
            continue; /* more may be due right now */
        clock_deadline(&until, POLL_MS);
        pthread_cond_timedwait(&w->wake, &w->lock, &until);
    }
    pthread_mutex_unlock(&w->lock);
    if (h) {
        curl_easy_cleanup(h);
        curl_global_cleanup();
    }
    return NULL;
}

int webhook_start(struct store *store, const struct webhook_settings *set,
                  struct webhook_sender **out)
{
    struct webhook_sender *w = calloc(1, sizeof(*w));

    if (!w)
        return ERR_NOMEM;
    w->store = store;
    w->set = *set;
    if (thread_start(&w->lock, &w->wake, &w->thread, sender_main, w) < 0) {
        free(w);
        return ERR_IO;
    }
    *out = w;
    return 0;
}

void webhook_stop(struct webhook_sender *w)
{
    if (!w)
        return;
    thread_stop(&w->lock, &w->wake, &w->stop, &w->thread);
    free(w);
}
