/* api_llm: the LLM gateway's routes, POST /llm/v1/chat/completions and GET
 * /llm/v1/models (CONTRACT.md "LLM gateway"; the engine is service/gateway.h).
 *
 * DESIGN
 * The agent's key names its task; the task must be running and the key must be its
 * attempt's (model/llm_call.h), else 401. The request is parked (no HTTP thread held)
 * until the gateway thread has an answer: a whole one is set as the reply and the
 * connection resumed; a stream becomes the reply's body, read through a pipe the gateway
 * thread fills and the connection's read callback drains, parking it when empty (the
 * same pattern as the event streams). The pipe is shared by the two threads and freed
 * by whichever lets go last. Errors we make are in OpenAI's shape
 * ({"error": {"message", "type", "param", "code"}}, with our "detail" and
 * "request_id"), so every OpenAI client reads them. */
#include "http/api.h"
#include "core/buf.h"
#include "core/err.h"
#include "core/log.h"
#include "http/http.h"
#include "model/llm_call.h"
#include "service/gateway.h"
#include "store/store.h"

#include <errno.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#define PIPE_MAX (16u << 20) /* streamed bytes the agent has not read yet; more cuts it */

struct pipe {
    pthread_mutex_t lock;        /* guards everything below */
    int refs;                    /* the gateway's, and the HTTP side's (request or stream) */
    struct request *req;         /* parked, until its answer is set; then NULL */
    void *conn;                  /* the connection, to park and wake a stream */
    struct buf out;              /* streamed bytes not yet read */
    size_t pos;
    bool suspended, done, ok, gone;
};

static int llm_fail(struct request *req, int status, const char *type, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int llm_fail(struct request *req, int status, const char *type, const char *fmt, ...)
{
    char message[600];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(message, sizeof(message), fmt, ap);
    va_end(ap);
    return api_reply(req, status,
                     json_pack("{s:{s:s, s:s, s:n, s:i}, s:s, s:s}", "error", "message", message,
                               "type", type, "param", "code", status, "detail", message,
                               "request_id", req->request_id));
}

static void pipe_unref(struct pipe *p)
{
    bool last;

    pthread_mutex_lock(&p->lock);
    last = --p->refs == 0;
    pthread_mutex_unlock(&p->lock);
    if (!last)
        return;
    buf_reset(&p->out);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

/* ---- the HTTP side of a stream ---- */

static long pipe_read(void *ctx, char *dst, size_t max)
{
    struct pipe *p = ctx;
    long n;

    pthread_mutex_lock(&p->lock);
    if (p->pos < p->out.len) {
        n = (long)(p->out.len - p->pos < max ? p->out.len - p->pos : max);
        memcpy(dst, p->out.data + p->pos, (size_t)n);
        p->pos += (size_t)n;
        if (p->pos == p->out.len) {
            buf_consume(&p->out, p->out.len);
            p->pos = 0;
        }
    } else if (p->done) {
        n = p->ok ? 0 : -1; /* a broken stream is cut off, so the agent sees it */
    } else {
        /* Parked under the lock, so data cannot slip in between the check and this. */
        p->suspended = true;
        http_stream_suspend(p->conn);
        n = API_STREAM_WAIT;
    }
    pthread_mutex_unlock(&p->lock);
    return n;
}

/* MHD is done with the stream: the agent has it all, or went away. */
static void pipe_stream_free(void *ctx)
{
    struct pipe *p = ctx;

    pthread_mutex_lock(&p->lock);
    p->gone = true;
    pthread_mutex_unlock(&p->lock);
    pipe_unref(p);
}

static void wake(struct pipe *p)
{
    if (p->suspended) {
        p->suspended = false;
        http_stream_resume(p->conn);
    }
}

/* ---- the sink (gateway thread) ---- */

static void sink_stream_start(void *ctx, int status, const char *content_type)
{
    struct pipe *p = ctx;
    struct request *req;
    struct api_stream *st = calloc(1, sizeof(*st));

    (void)content_type; /* an event stream is sent as one, whatever its parameters */
    pthread_mutex_lock(&p->lock);
    req = p->req;
    p->req = NULL;
    if (st) {
        *st = (struct api_stream){.ctx = p, .read = pipe_read, .free = pipe_stream_free};
        req->stream = st;
        req->status = status;
        req->content_type = "text/event-stream";
        /* The request's hold on the pipe passes to the stream. */
    } else {
        p->gone = true;
        p->refs--;
        llm_fail(req, 500, "server_error", "out of memory starting the stream");
    }
    http_request_resume(req);
    pthread_mutex_unlock(&p->lock);
}

/* Whether the agent closed its connection while it is parked (called with the lock
 * held). MHD does not watch a suspended connection, so we look: a peek that reads the
 * end of the stream, or fails for any reason but "nothing yet", means it is gone. Only
 * while parked: then MHD neither reads nor closes the socket. */
static bool parked_and_gone(const struct pipe *p)
{
    const union MHD_ConnectionInfo *ci;
    char byte;
    ssize_t r;

    if (!p->suspended && !p->req)
        return false;
    ci = MHD_get_connection_info(p->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci)
        return false;
    r = recv(ci->connect_fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    return r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

static bool sink_stream_data(void *ctx, const char *bytes, size_t n)
{
    struct pipe *p = ctx;
    bool alive;

    pthread_mutex_lock(&p->lock);
    if (!n && !p->gone && parked_and_gone(p))
        p->gone = true;
    if (!p->gone && n && buf_append(&p->out, bytes, n) < 0) {
        log_warn("llm gateway: an agent read none of %u bytes of its stream; cut", PIPE_MAX);
        p->gone = true;
        p->done = true;
        p->ok = false;
    }
    alive = !p->gone;
    if (n)
        wake(p);
    pthread_mutex_unlock(&p->lock);
    return alive;
}

static void sink_finish(void *ctx, bool ok, int status, const char *content_type, char *body,
                        size_t len, const char *retry_after)
{
    struct pipe *p = ctx;
    struct request *req;
    bool drop = false;

    pthread_mutex_lock(&p->lock);
    req = p->req;
    if (req) { /* a whole answer to the parked request */
        p->req = NULL;
        drop = true;
        if (body) {
            snprintf(req->own_content_type, sizeof(req->own_content_type), "%s",
                     content_type ? content_type : "application/json");
            req->status = status;
            req->content_type = req->own_content_type;
            req->reply_raw = body;
            req->reply_raw_len = len; /* an upstream's body may hold a NUL */
            if (retry_after)
                snprintf(req->retry_after, sizeof(req->retry_after), "%s", retry_after);
        } else {
            llm_fail(req, 500, "server_error", "out of memory answering");
        }
        http_request_resume(req);
    } else {
        free(body);
        p->done = true;
        p->ok = ok;
        wake(p);
    }
    if (drop)
        p->refs--; /* the request's hold: it no longer points at the pipe */
    pthread_mutex_unlock(&p->lock);
    (void)ok;
}

static void sink_release(void *ctx)
{
    pipe_unref(ctx);
}

static const struct gateway_sink sink = {.stream_start = sink_stream_start,
                                         .stream_data = sink_stream_data,
                                         .finish = sink_finish,
                                         .release = sink_release};

/* ---- the routes ---- */

/* The task whose key the request carries, running and holding that attempt (caller frees);
 * otherwise it has answered 401 (or 503) and returns < 0. */
static int task_of_key(struct request *req, struct task **out)
{
    const char *h = api_header(req, "Authorization");
    char id[TASK_ID_LEN + 1];
    struct task *t = NULL;
    int rc;

    if (!h || strncasecmp(h, "Bearer ", 7)) {
        llm_fail(req, 401, "invalid_api_key",
                 "no key: send Authorization: Bearer with the key taskexec gave the task "
                 "(its OPENAI_API_KEY)");
        return ERR_FORBIDDEN;
    }
    h += 7;
    while (*h == ' ')
        h++;
    if (llm_key_task(h, id) < 0) {
        llm_fail(req, 401, "invalid_api_key", "the key is not a taskexec task key");
        return ERR_FORBIDDEN;
    }
    rc = store_task_get(req->srv->store, id, &t);
    if (rc < 0 && rc != ERR_NOTFOUND) {
        llm_fail(req, 503, "unavailable", "the database is unavailable; try again");
        return rc;
    }
    if (rc == ERR_NOTFOUND || t->status != TASK_RUNNING ||
        !llm_key_matches(h, t->id, t->lease_token)) {
        llm_fail(req, 401, "invalid_api_key",
                 "the key's task is not running (its attempt ended) or the key is wrong");
        task_free(t);
        return ERR_FORBIDDEN;
    }
    *out = t;
    return 0;
}

/* Hands the request to the gateway and parks it; or answers why it cannot. */
static int forward(struct request *req, const struct gateway_req *rq)
{
    struct pipe *p = calloc(1, sizeof(*p));
    char why[400] = "";
    int rc;

    if (!p)
        return llm_fail(req, 500, "server_error", "out of memory");
    pthread_mutex_init(&p->lock, NULL);
    buf_init(&p->out, PIPE_MAX);
    p->refs = 2;
    p->req = req;
    p->conn = req->conn;
    /* Under the pipe's lock, so the answer cannot be set before the request is parked. */
    pthread_mutex_lock(&p->lock);
    rc = gateway_call(req->srv->gateway, rq, &sink, p, why, sizeof(why));
    if (rc == 0)
        http_request_defer(req);
    pthread_mutex_unlock(&p->lock);
    if (rc == 0)
        return 0;
    buf_reset(&p->out);
    pthread_mutex_destroy(&p->lock);
    free(p);
    switch (rc) {
    case ERR_INVALID: return llm_fail(req, 502, "upstream_not_configured", "%s", why);
    case ERR_TOOBIG:
        snprintf(req->retry_after, sizeof(req->retry_after), "1");
        return llm_fail(req, 429, "rate_limit_exceeded", "%s", why);
    case ERR_UNAVAILABLE: return llm_fail(req, 503, "unavailable", "%s", why);
    default: return llm_fail(req, 500, "server_error", "%s", err_str(rc));
    }
}

int api_llm_chat(struct request *req)
{
    struct task *t = NULL;
    json_t *body;
    json_error_t jerr;
    int rc;

    if (task_of_key(req, &t) < 0)
        return 0;
    body = json_loadb(req->body.data ? req->body.data : "", req->body.len, JSON_REJECT_DUPLICATES,
                      &jerr);
    if (!json_is_object(body)) {
        llm_fail(req, 400, "invalid_request_error", "the body must be a JSON object%s%s",
                 body ? "" : ": ", body ? "" : jerr.text);
    } else {
        rc = forward(req, &(struct gateway_req){
                              .path = "chat/completions", .method = "POST",
                              .body = req->body.data, .len = req->body.len, .request = body,
                              .task = t, .request_id = req->request_id,
                              .started_us = req->started_us, .record = true});
        (void)rc;
    }
    json_decref(body);
    task_free(t);
    return 0;
}

int api_llm_models(struct request *req)
{
    struct task *t = NULL;

    if (task_of_key(req, &t) < 0)
        return 0;
    forward(req, &(struct gateway_req){.path = "models", .method = "GET", .task = t,
                                       .request_id = req->request_id,
                                       .started_us = req->started_us});
    task_free(t);
    return 0;
}
