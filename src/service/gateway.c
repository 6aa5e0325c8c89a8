/* gateway: see gateway.h. */
#include "service/gateway.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/err.h"
#include "core/log.h"
#include "core/names.h"
#include "core/netguard.h"
#include "core/uuidgen.h"
#include "service/metrics.h"
#include "model/llm.h"
#include "model/llm_call.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define ANSWER_MAX (64u << 20)   /* a whole answer larger than this is refused (502) */
#define PROBE_MS 500             /* how often a silent stream's agent is checked */
#define STORE_TRIES 4

/* One call, from gateway_call until its record is written (or dropped). Owned by the
 * gateway thread while it runs, then by the recorder. */
struct call {
    struct call *next_all;       /* on g->all (under g->lock) until it ends */
    struct call *next;           /* on the incoming, active or record list */
    struct gateway *g;
    CURL *easy;
    struct curl_slist *headers;
    char *url, *body;            /* owned */
    size_t len;
    json_t *request;             /* a reference of ours; NULL for GET */
    char task_id[TASK_ID_LEN + 1];
    char request_id[48];
    int attempt;
    char *upstream;              /* the base URL (owned) */
    bool record, stream_req;
    int64_t started_us, first_byte_us, ended_us;
    /* the answer */
    long status;
    char content_type[128];
    char retry_after[32];
    bool decided, streaming, cut, fold_broken;
    size_t streamed;             /* bytes of a stream so far */
    int64_t probed_ms;
    struct buf whole;            /* a whole answer, kept for the record */
    struct llm_stream folded;    /* a streamed answer, folded for the record */
    char curl_error[CURL_ERROR_SIZE];
    struct netguard guard;       /* no link-local or metadata upstream */
    char error[400];             /* why the call failed, when it did */
    struct gateway_sink sink;
    void *ctx;
};

struct gateway {
    struct store *st;
    struct metrics *m;
    struct gateway_settings s;   /* strings copied (owned) */
    CURLM *multi;
    pthread_mutex_t lock;        /* guards all, incoming, closing */
    struct call *all, *incoming;
    bool closing;
    pthread_t thread;
    struct call *active;         /* the gateway thread's own */
    pthread_mutex_t rlock;       /* guards the record queue and rstop */
    pthread_cond_t rcond;
    struct call *rhead, *rtail;
    bool rstop;
    pthread_t rthread;
    bool started, closed, curl_inited;
};

static void call_free(struct call *c)
{
    if (!c)
        return;
    if (c->easy)
        curl_easy_cleanup(c->easy);
    curl_slist_free_all(c->headers);
    free(c->url);
    free(c->body);
    free(c->upstream);
    json_decref(c->request);
    buf_reset(&c->whole);
    llm_stream_reset(&c->folded);
    free(c);
}

/* ---- the upstream of a task ---- */

/* Whether name is one of the comma-separated names of list. */
static bool listed(const char *list, const char *name)
{
    return names_has(list, name, strlen(name), false);
}

/* base as a clean base URL (malloc'd into *out): http or https, a host, an optional port
 * and path, without a trailing slash; no credentials, query or fragment, which would let
 * a task point the gateway's requests (and the answers it hands back) at any path.
 * ERR_INVALID with why. */
static int clean_base(const char *base, char **out, char *why, size_t size)
{
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *port = NULL, *path = NULL, *bad = NULL;
    int rc = u ? 0 : ERR_NOMEM;
    size_t n;

    if (rc == 0 && (curl_url_set(u, CURLUPART_URL, base, 0) != CURLUE_OK ||
                    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
                    curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
                    (strcmp(scheme, "http") && strcmp(scheme, "https")))) {
        snprintf(why, size, "the upstream %.200s is not an http:// or https:// URL", base);
        rc = ERR_INVALID;
    }
    if (rc == 0 && (curl_url_get(u, CURLUPART_USER, &bad, 0) == CURLUE_OK ||
                    curl_url_get(u, CURLUPART_QUERY, &bad, 0) == CURLUE_OK ||
                    curl_url_get(u, CURLUPART_FRAGMENT, &bad, 0) == CURLUE_OK)) {
        snprintf(why, size, "the upstream URL may not carry credentials, a query or a "
                            "fragment (the key goes in the variable api_key_env names)");
        rc = ERR_INVALID;
    }
    if (rc == 0) {
        curl_url_get(u, CURLUPART_PORT, &port, 0);
        curl_url_get(u, CURLUPART_PATH, &path, 0);
        n = path ? strlen(path) : 0;
        while (n && path[n - 1] == '/')
            n--;
        *out = malloc(strlen(scheme) + strlen(host) + (port ? strlen(port) : 0) + n + 8);
        if (*out)
            sprintf(*out, "%s://%s%s%s%.*s", scheme, host, port ? ":" : "", port ? port : "",
                    (int)n, path ? path : "");
        else
            rc = ERR_NOMEM;
    }
    curl_free(scheme), curl_free(host), curl_free(port), curl_free(path), curl_free(bad);
    curl_url_cleanup(u);
    return rc;
}

/* The upstream's base URL and key of a task (*key NULL: none is sent). The server's
 * default key goes only to the server's default upstream; a task that names its own
 * base_url gets a key only from a variable it names and LLM_KEY_ENVS allows, so no task
 * can have the operator's key sent where it chooses. ERR_INVALID with why. */
static int upstream_of(const struct gateway *g, const json_t *params, char **url, char **key,
                       char *why, size_t size)
{
    const json_t *ac = json_object_get(params, "agent_config");
    const char *base = json_string_value(json_object_get(ac, "base_url"));
    const char *env = json_string_value(json_object_get(ac, "api_key_env"));
    const char *value;
    int rc;

    if (!base && g->s.upstream_url && *g->s.upstream_url) {
        base = g->s.upstream_url;
        if (!env)
            env = g->s.key_env; /* the default upstream with its own key */
        else if (strcmp(env, g->s.key_env) && !listed(g->s.key_envs, env))
            goto not_allowed;
    } else if (env && !listed(g->s.key_envs, env)) {
        goto not_allowed;
    }
    if (!base) {
        snprintf(why, size, "no upstream for this task: set LLM_UPSTREAM_URL on the server or "
                            "agent_config.base_url on the task");
        return ERR_INVALID;
    }
    rc = clean_base(base, url, why, size);
    if (rc < 0)
        return rc;
    value = env ? getenv(env) : NULL;
    *key = value && *value ? strdup(value) : NULL;
    if (value && *value && !*key) {
        free(*url);
        return ERR_NOMEM;
    }
    return 0;
not_allowed:
    snprintf(why, size, "agent_config.api_key_env names %.100s, which the server does not "
                        "allow for this upstream (LLM_KEY_ENVS lists the variables a task may "
                        "name)", env);
    return ERR_INVALID;
}

/* ---- curl callbacks (gateway thread) ---- */

/* The head is in: whether the answer is passed on as a stream. */
static void decide(struct call *c)
{
    char *ct = NULL;

    c->decided = true;
    curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &c->status);
    curl_easy_getinfo(c->easy, CURLINFO_CONTENT_TYPE, &ct);
    snprintf(c->content_type, sizeof(c->content_type), "%s", ct ? ct : "application/json");
    c->streaming = c->stream_req && c->status == 200 &&
                   !strncasecmp(c->content_type, "text/event-stream", 17);
    if (c->streaming)
        c->sink.stream_start(c->ctx, (int)c->status, c->content_type);
}

static size_t on_body(char *p, size_t size, size_t nmemb, void *ud)
{
    struct call *c = ud;
    size_t n = size * nmemb;

    if (!c->decided)
        decide(c);
    if (!c->streaming) {
        if (buf_append(&c->whole, p, n) == 0)
            return n;
        snprintf(c->error, sizeof(c->error), "the upstream's answer is larger than %u bytes",
                 ANSWER_MAX);
        return 0;
    }
    c->streamed += n;
    if (!c->fold_broken && (c->streamed > ANSWER_MAX || llm_stream_feed(&c->folded, p, n) < 0)) {
        c->fold_broken = true; /* passed on still; the record keeps what was folded */
        snprintf(c->error, sizeof(c->error), "the stream passed %u bytes or had an event "
                                             "too large to fold: the record keeps its start",
                 ANSWER_MAX);
    }
    if (!c->first_byte_us)
        c->first_byte_us = clock_now_us();
    if (!c->sink.stream_data(c->ctx, p, n)) {
        c->cut = true;
        return 0;
    }
    return n;
}

static size_t on_header(char *p, size_t size, size_t nmemb, void *ud)
{
    struct call *c = ud;
    size_t n = size * nmemb;

    if (n > 12 && !strncasecmp(p, "retry-after:", 12)) {
        size_t k = n - 12;
        const char *v = p + 12;

        while (k && (*v == ' ' || *v == '\t')) {
            v++;
            k--;
        }
        while (k && (v[k - 1] == '\r' || v[k - 1] == '\n' || v[k - 1] == ' '))
            k--;
        snprintf(c->retry_after, sizeof(c->retry_after), "%.*s", (int)k, v);
    }
    return n;
}

/* The easy handle of c, set up to send its request. */
static int prepare(struct call *c, const char *key, const char *method, const char *request_id)
{
    char line[600];

    c->easy = curl_easy_init();
    if (!c->easy)
        return ERR_NOMEM;
    c->headers = curl_slist_append(c->headers, "Content-Type: application/json");
    c->headers = curl_slist_append(c->headers, "Expect:"); /* no 100-continue round trip */
    snprintf(line, sizeof(line), "X-Request-Id: %s", request_id);
    c->headers = curl_slist_append(c->headers, line);
    if (key) {
        snprintf(line, sizeof(line), "Authorization: Bearer %.560s", key);
        c->headers = curl_slist_append(c->headers, line);
        memset(line, 0, sizeof(line)); /* the real key lives no longer than it must */
    }
    if (!c->headers)
        return ERR_NOMEM;
    curl_easy_setopt(c->easy, CURLOPT_URL, c->url);
    curl_easy_setopt(c->easy, CURLOPT_HTTPHEADER, c->headers);
    if (!strcmp(method, "POST")) {
        curl_easy_setopt(c->easy, CURLOPT_POSTFIELDS, c->body);
        curl_easy_setopt(c->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)c->len);
    }
    curl_easy_setopt(c->easy, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c->easy, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(c->easy, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c->easy, CURLOPT_HEADERDATA, c);
    curl_easy_setopt(c->easy, CURLOPT_PRIVATE, c);
    curl_easy_setopt(c->easy, CURLOPT_ERRORBUFFER, c->curl_error);
    curl_easy_setopt(c->easy, CURLOPT_TIMEOUT, (long)c->g->s.timeout_seconds);
    curl_easy_setopt(c->easy, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(c->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c->easy, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c->easy, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c->easy, CURLOPT_USERAGENT, "taskexec-llm-gateway");
    netguard_apply(&c->guard, c->easy, c->url, c->g->s.allow_hosts);
    return 0;
}

/* ---- the end of a call ---- */

/* An error answer of ours, in the OpenAI shape every client reads (malloc'd). */
static char *our_error(int status, const char *type, const char *message,
                       const char *request_id, size_t *len)
{
    json_t *o = json_pack("{s:{s:s, s:s, s:n, s:i}, s:s, s:s}", "error", "message", message,
                          "type", type, "param", "code", status, "detail", message,
                          "request_id", request_id);
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;

    json_decref(o);
    *len = text ? strlen(text) : 0;
    return text;
}

/* A failed transfer that answered nothing yet: our status and why. */
static int failure_status(struct call *c, CURLcode res, bool closing, const char **type)
{
    if (c->cut) { /* nobody reads this answer; 499 as nginx records it */
        snprintf(c->error, sizeof(c->error), "the agent went away before the end");
        *type = "client_closed_request";
        return 499;
    }
    if (closing) {
        snprintf(c->error, sizeof(c->error), "the server shut down during the call");
        *type = "unavailable";
        return 503;
    }
    if (res == CURLE_OPERATION_TIMEDOUT) {
        snprintf(c->error, sizeof(c->error), "the upstream %.200s did not answer within %d s",
                 c->upstream, c->g->s.timeout_seconds);
        *type = "upstream_timeout";
        return 504;
    }
    if (!c->error[0] && c->guard.refused[0])
        snprintf(c->error, sizeof(c->error), "the upstream %.150s: %.200s", c->upstream,
                 c->guard.refused);
    if (!c->error[0])
        snprintf(c->error, sizeof(c->error), "the upstream %.150s could not be reached: %.150s",
                 c->upstream, c->curl_error[0] ? c->curl_error : curl_easy_strerror(res));
    *type = "upstream_unreachable";
    return 502;
}

static void record_queue(struct gateway *g, struct call *c);

/* Answers the agent, gives the sink back and hands the call to the recorder (or frees
 * it). res: the transfer's outcome; closing: the gateway is shutting down. */
static void end_call(struct call *c, CURLcode res, bool closing)
{
    struct gateway *g = c->g;
    const char *type = NULL;
    char *body;
    size_t len;
    int status;

    if (!c->decided && res == CURLE_OK)
        decide(c);
    c->ended_us = clock_now_us();
    /* Off the task's count before the agent hears the end, so its next call is not
     * refused as one too many. */
    pthread_mutex_lock(&g->lock);
    for (struct call **p = &g->all; *p; p = &(*p)->next_all)
        if (*p == c) {
            *p = c->next_all;
            break;
        }
    pthread_mutex_unlock(&g->lock);
    if (c->streaming) {
        if (res != CURLE_OK && !c->cut && !c->error[0])
            failure_status(c, res, closing, &type);
        if (c->cut)
            snprintf(c->error, sizeof(c->error), "the agent went away before the end");
        c->sink.finish(c->ctx, res == CURLE_OK && !c->cut, (int)c->status, NULL, NULL, 0, NULL);
    } else {
        if (res == CURLE_OK) {
            status = (int)c->status;
            len = c->whole.len;
            body = malloc(len + 1);
            if (body) {
                memcpy(body, c->whole.data ? c->whole.data : "", len);
                body[len] = '\0';
            }
        } else {
            status = failure_status(c, res, closing, &type);
            c->status = status;
            snprintf(c->content_type, sizeof(c->content_type), "application/json");
            body = our_error(status, type, c->error, c->request_id, &len);
        }
        if (!c->first_byte_us)
            c->first_byte_us = c->ended_us;
        c->sink.finish(c->ctx, body != NULL, status, body ? c->content_type : NULL, body, len,
                       c->retry_after[0] ? c->retry_after : NULL);
    }
    c->sink.release(c->ctx);
    metrics_llm(g->m, c->cut                                ? METRICS_LLM_CUT
                      : res == CURLE_OK                     ? METRICS_LLM_ANSWERED
                      : res == CURLE_OPERATION_TIMEDOUT     ? METRICS_LLM_TIMEOUT
                                                            : METRICS_LLM_UNREACHABLE);
    if (c->record)
        record_queue(g, c);
    else
        call_free(c);
}

/* ---- the gateway thread ---- */

/* Moves the calls handed in onto the multi handle; true when the gateway is closing. */
static bool take_incoming(struct gateway *g)
{
    struct call *in, *next;
    bool closing;

    pthread_mutex_lock(&g->lock);
    in = g->incoming;
    g->incoming = NULL;
    closing = g->closing;
    pthread_mutex_unlock(&g->lock);
    for (; in; in = next) {
        next = in->next;
        if (curl_multi_add_handle(g->multi, in->easy) != CURLM_OK) {
            snprintf(in->error, sizeof(in->error), "the gateway could not start the call");
            end_call(in, CURLE_FAILED_INIT, false);
            continue;
        }
        in->next = g->active;
        g->active = in;
    }
    return closing;
}

static void unlink_active(struct gateway *g, struct call *c)
{
    for (struct call **p = &g->active; *p; p = &(*p)->next)
        if (*p == c) {
            *p = c->next;
            return;
        }
}

/* Finished transfers ended; silent streams whose agent left cut. */
static void reap(struct gateway *g)
{
    struct CURLMsg *msg;
    int left;
    int64_t now = clock_mono_ms();

    while ((msg = curl_multi_info_read(g->multi, &left))) {
        struct call *c = NULL;

        if (msg->msg != CURLMSG_DONE)
            continue;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&c);
        curl_multi_remove_handle(g->multi, c->easy);
        unlink_active(g, c);
        end_call(c, msg->data.result, false);
    }
    for (struct call *c = g->active, *next; c; c = next) {
        next = c->next;
        if (now - c->probed_ms < PROBE_MS)
            continue;
        c->probed_ms = now;
        if (c->sink.stream_data(c->ctx, NULL, 0))
            continue;
        c->cut = true;
        curl_multi_remove_handle(g->multi, c->easy);
        unlink_active(g, c);
        end_call(c, CURLE_WRITE_ERROR, false);
    }
}

static void *gateway_main(void *arg)
{
    struct gateway *g = arg;
    int running;

    for (;;) {
        bool closing = take_incoming(g);

        if (closing) {
            while (g->active) {
                struct call *c = g->active;

                g->active = c->next;
                curl_multi_remove_handle(g->multi, c->easy);
                end_call(c, CURLE_ABORTED_BY_CALLBACK, true);
            }
            return NULL;
        }
        curl_multi_perform(g->multi, &running);
        reap(g);
        curl_multi_poll(g->multi, NULL, 0, g->active ? PROBE_MS : 1000, NULL);
    }
}

/* ---- the recorder thread ---- */

static void record_queue(struct gateway *g, struct call *c)
{
    c->next = NULL;
    pthread_mutex_lock(&g->rlock);
    if (g->rtail)
        g->rtail->next = c;
    else
        g->rhead = c;
    g->rtail = c;
    pthread_cond_signal(&g->rcond);
    pthread_mutex_unlock(&g->rlock);
}

/* An answer that is not JSON, kept as a string: as it is when it is UTF-8, else (a
 * proxy's Latin-1 page, or a cut inside a character) with every byte above 0x7f as '?'. */
static json_t *text_of(const char *p, size_t n)
{
    json_t *v = json_stringn(p, n);
    char *copy;

    if (v || !(copy = malloc(n + 1)))
        return v;
    for (size_t i = 0; i < n; i++)
        copy[i] = (unsigned char)p[i] < 0x80 && p[i] ? p[i] : '?';
    v = json_stringn(copy, n);
    free(copy);
    return v;
}

/* What the call answered, as JSON: the folded stream (with an error chunk's "error"),
 * the whole body when it is JSON, else its text; NULL when there was none. */
static json_t *response_of(struct call *c)
{
    json_t *r;

    if (c->streaming) {
        r = llm_stream_result(&c->folded);
        if (r && c->folded.error)
            json_object_set(r, "error", c->folded.error);
        return r;
    }
    if (!c->whole.len && !c->error[0])
        return NULL;
    if (c->whole.len == 0) /* our own error: its body is made again, small */
        return json_pack("{s:{s:s, s:i}}", "error", "message", c->error, "code", (int)c->status);
    r = json_loadb(c->whole.data, c->whole.len, 0, NULL);
    return r ? r : text_of(c->whole.data, c->whole.len < 65536 ? c->whole.len : 65536);
}

static void write_record(struct gateway *g, struct call *c)
{
    json_t *response = response_of(c);
    struct llm_call_rec rec = {
        .task_id = c->task_id, .attempt = c->attempt, .started_at = c->started_us,
        .latency_ms = (double)(c->ended_us - c->started_us) / 1000.0,
        .first_byte_ms = c->first_byte_us ? (double)(c->first_byte_us - c->started_us) / 1000.0
                                          : -1,
        .status = (int)c->status, .stream = c->stream_req, .cut = c->cut,
        .upstream = c->upstream, .error = c->error[0] ? c->error : NULL,
        .request = c->request, .response = response};
    int rc = 0;

    uuidgen(rec.id);
    if (c->streaming && !c->cut && !c->folded.done && !rec.error)
        rec.error = "the upstream's stream ended without [DONE]";
    if (!c->streaming && !response && !rec.error)
        rec.error = "the upstream answered with an empty body";
    llm_call_summarize(&rec);
    for (int i = 0; i < STORE_TRIES; i++) {
        rc = store_llm_call_insert(g->st, &rec);
        if (rc == 0 || rc == ERR_CONFLICT || rc == ERR_NOMEM || i == STORE_TRIES - 1)
            break; /* done, or trying again changes nothing */
        struct timespec ts = {0, (long)(100000000L << i)};
        nanosleep(&ts, NULL);
    }
    if (rc < 0 && rc != ERR_CONFLICT)
        metrics_llm(g->m, METRICS_LLM_LOST);
    if (rc < 0 && rc != ERR_CONFLICT)
        log_error("gateway: lost the record of an LLM call of task %s: %s", c->task_id,
                  err_str(rc));
    json_decref(response);
}

static void *recorder_main(void *arg)
{
    struct gateway *g = arg;
    struct call *c;

    pthread_mutex_lock(&g->rlock);
    for (;;) {
        while (!g->rhead && !g->rstop)
            pthread_cond_wait(&g->rcond, &g->rlock);
        if (!g->rhead)
            break;
        c = g->rhead;
        g->rhead = c->next;
        if (!g->rhead)
            g->rtail = NULL;
        pthread_mutex_unlock(&g->rlock);
        write_record(g, c);
        call_free(c);
        pthread_mutex_lock(&g->rlock);
    }
    pthread_mutex_unlock(&g->rlock);
    return NULL;
}

/* libcurl and the two threads, at the first call: a server whose agents never call a
 * model does not carry them (libcurl's TLS set-up alone is 2.4 MB of resident memory).
 * Called with g->lock held. libcurl 7.84 and later initialise thread-safely (Debian 12's
 * says "threadsafe"), as the webhook sender also relies on. */
static int start(struct gateway *g)
{
    if (g->started)
        return 0;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return ERR_NOMEM;
    g->curl_inited = true;
    if (!(g->multi = curl_multi_init()))
        return ERR_NOMEM;
    if (pthread_create(&g->rthread, NULL, recorder_main, g) != 0)
        return ERR_IO;
    if (pthread_create(&g->thread, NULL, gateway_main, g) != 0) {
        pthread_mutex_lock(&g->rlock);
        g->rstop = true;
        pthread_cond_signal(&g->rcond);
        pthread_mutex_unlock(&g->rlock);
        pthread_join(g->rthread, NULL);
        g->rstop = false;
        return ERR_IO;
    }
    g->started = true;
    return 0;
}

/* ---- the interface ---- */

/* The running calls of task_id; called with g->lock held. */
static int running_of(const struct gateway *g, const char *task_id)
{
    int n = 0;

    for (const struct call *c = g->all; c; c = c->next_all)
        n += !strcmp(c->task_id, task_id);
    return n;
}

/* A call made from rq (not yet handed in); ERR_INVALID with why. */
static int call_new(struct gateway *g, const struct gateway_req *rq, struct call **out,
                    char *why, size_t size)
{
    struct call *c = calloc(1, sizeof(*c));
    char *base = NULL, *key = NULL;
    int rc;

    if (!c)
        return ERR_NOMEM;
    c->g = g;
    buf_init(&c->whole, ANSWER_MAX);
    llm_stream_init(&c->folded);
    rc = upstream_of(g, rq->task->parameters, &base, &key, why, size);
    if (rc < 0) {
        call_free(c);
        return rc;
    }
    c->upstream = base;
    c->url = malloc(strlen(base) + strlen(rq->path) + 2);
    c->body = rq->body ? malloc(rq->len + 1) : NULL;
    if (!c->url || (rq->body && !c->body)) {
        rc = ERR_NOMEM;
    } else {
        sprintf(c->url, "%s/%s", base, rq->path);
        if (c->body)
            memcpy(c->body, rq->body, rq->len);
        c->len = rq->len;
        rc = prepare(c, key, rq->method, rq->request_id);
    }
    if (key) {
        memset(key, 0, strlen(key));
        free(key);
    }
    if (rc < 0) {
        call_free(c);
        return rc;
    }
    *out = c;
    return 0;
}

int gateway_call(struct gateway *g, const struct gateway_req *rq, const struct gateway_sink *sink,
                 void *ctx, char *why, size_t why_size)
{
    struct call *c = NULL;
    int rc = call_new(g, rq, &c, why, why_size);

    if (rc < 0)
        return rc;
    memcpy(c->task_id, rq->task->id, sizeof(c->task_id));
    snprintf(c->request_id, sizeof(c->request_id), "%s", rq->request_id);
    c->attempt = rq->task->attempt;
    c->request = json_incref((json_t *)(uintptr_t)rq->request);
    c->stream_req = json_is_true(json_object_get(rq->request, "stream"));
    c->record = rq->record;
    c->started_us = rq->started_us;
    c->probed_ms = clock_mono_ms();
    c->sink = *sink;
    c->ctx = ctx;
    pthread_mutex_lock(&g->lock);
    if (g->closing) {
        rc = ERR_UNAVAILABLE;
        snprintf(why, why_size, "the server is shutting down");
    } else if ((rc = start(g)) < 0) {
        snprintf(why, why_size, "the gateway could not start (%s)", err_str(rc));
    } else if (running_of(g, c->task_id) >= g->s.max_per_task) {
        rc = ERR_TOOBIG;
        snprintf(why, why_size, "this task has %d model calls in flight, the most "
                                "LLM_MAX_CALLS_PER_TASK allows", g->s.max_per_task);
    } else {
        c->next_all = g->all;
        g->all = c;
        c->next = g->incoming;
        g->incoming = c;
    }
    pthread_mutex_unlock(&g->lock);
    if (rc < 0) {
        call_free(c);
        return rc;
    }
    curl_multi_wakeup(g->multi);
    return 0;
}

int gateway_task_calls(struct store *st, const char *task_id, bool tokens, json_t **out)
{
    json_t *calls = NULL, *c;
    size_t i;
    int rc = store_llm_calls(st, task_id, &calls);

    json_array_foreach(calls, i, c) {
        if (rc < 0)
            break;
        rc = llm_call_present(c, tokens);
    }
    if (rc < 0) {
        json_decref(calls);
        return rc;
    }
    *out = calls;
    return 0;
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

int gateway_new(struct store *st, struct metrics *m, const struct gateway_settings *s,
                struct gateway **out)
{
    struct gateway *g = calloc(1, sizeof(*g));

    if (!g)
        return ERR_NOMEM;
    g->st = st;
    g->m = m;
    g->s = *s;
    g->s.upstream_url = dup_or_null(s->upstream_url);
    g->s.key_env = strdup(s->key_env ? s->key_env : "OPENAI_API_KEY");
    g->s.key_envs = dup_or_null(s->key_envs);
    g->s.allow_hosts = dup_or_null(s->allow_hosts);
    pthread_mutex_init(&g->lock, NULL);
    pthread_mutex_init(&g->rlock, NULL);
    pthread_cond_init(&g->rcond, NULL);
    if (!g->s.key_env) {
        gateway_free(g);
        return ERR_NOMEM;
    }
    *out = g;
    return 0;
}

void gateway_close(struct gateway *g)
{
    bool started;

    if (!g || g->closed)
        return;
    g->closed = true;
    pthread_mutex_lock(&g->lock);
    g->closing = true;
    started = g->started;
    pthread_mutex_unlock(&g->lock);
    if (!started)
        return;
    curl_multi_wakeup(g->multi);
    pthread_join(g->thread, NULL);
    pthread_mutex_lock(&g->rlock);
    g->rstop = true;
    pthread_cond_signal(&g->rcond);
    pthread_mutex_unlock(&g->rlock);
    pthread_join(g->rthread, NULL);
}

void gateway_free(struct gateway *g)
{
    if (!g)
        return;
    gateway_close(g);
    if (g->multi)
        curl_multi_cleanup(g->multi);
    if (g->curl_inited)
        curl_global_cleanup();
    free((char *)(uintptr_t)g->s.upstream_url);
    free((char *)(uintptr_t)g->s.key_env);
    free((char *)(uintptr_t)g->s.key_envs);
    free((char *)(uintptr_t)g->s.allow_hosts);
    pthread_mutex_destroy(&g->lock);
    pthread_mutex_destroy(&g->rlock);
    pthread_cond_destroy(&g->rcond);
    free(g);
}
