/* events: see events.h. */
#include "http/events.h"
#include "core/thread.h"
#include "http/api.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/err.h"
#include "http/http.h"
#include "core/log.h"
#include "http/server.h"
#include "store/store.h"
#include "model/task.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define EVENTS_POLL_MS 200
#define PING_MS 15000
#define PRUNE_MS (10 * 60 * 1000)
#define GAP_WAIT_MS 1000
#define BATCH 1000            /* rows per table per poll */
#define CATCH_UP_MAX 10000    /* rows a reconnecting client is caught up with, at most */

enum { T_TASK = 1, T_LOG = 2, T_WORKER = 4, T_EXPERIMENT = 8, T_ALL = 15 };

/* One listener. Owned by its HTTP response (freed by client_free when MHD is done with
 * it); on the bus's list while alive. */
struct sse_client {
    struct event_bus *bus;
    struct sse_client *next, *prev;
    struct api_stream *stream;   /* borrowed: the stream that owns this client */
    pthread_mutex_t lock;        /* guards out, pos, suspended, dropped, closing */
    struct buf out;              /* frames not yet handed to MHD; capped: overflow drops */
    size_t pos;
    bool suspended, dropped, closing;
    /* pump-only (under the bus lock) */
    unsigned types;
    char task_id[TASK_ID_LEN + 1]; /* "" for every task */
    bool attached;               /* caught up; receives live frames */
    int64_t from_event, from_log; /* where the client's stream starts (Last-Event-ID) */
};

struct event_bus {
    struct server *srv;
    pthread_mutex_t lock;        /* guards clients, cursors, stop */
    pthread_cond_t wake;
    pthread_t thread;
    bool stop;
    struct sse_client *clients;
    size_t n_clients;
    bool closing;                /* shutting down: no new clients */
    bool primed;
    struct events_cursor ev, log;
    int64_t last_ping_ms, last_prune_ms;
};

/* ---- frames ---- */

static unsigned kind_type(const char *kind)
{
    return !strcmp(kind, "task")         ? T_TASK
           : !strcmp(kind, "worker")     ? T_WORKER
           : !strcmp(kind, "experiment") ? T_EXPERIMENT
                                         : T_LOG;
}

/* The data object of one journal row or log line (row: as the store returns it). */
static json_t *frame_data(const char *kind, json_t *row)
{
    char ts[40];
    json_t *o;

    clock_format(json_integer_value(json_object_get(row, "ts_us")), ts, sizeof(ts));
    if (!strcmp(kind, "log"))
        return json_pack("{s:O, s:s, s:O, s:O, s:O}", "task_id", json_object_get(row, "task_id"),
                         "timestamp", ts, "level", json_object_get(row, "level"), "message",
                         json_object_get(row, "message"), "context",
                         json_object_get(row, "context"));
    if (!strcmp(kind, "experiment")) /* an experiment ended: its status, completed or cancelled */
        return json_pack("{s:O, s:O, s:s}", "experiment_id",
                         json_object_get(row, "experiment_id"), "status",
                         json_object_get(row, "status"), "timestamp", ts);
    if (!strcmp(kind, "worker"))
        return json_pack("{s:O, s:O, s:O, s:s}", "worker_id", json_object_get(row, "worker_id"),
                         "status", json_object_get(row, "status"), "current_task_id",
                         json_object_get(row, "task_id"), "timestamp", ts);
    o = json_pack("{s:O, s:O, s:O, s:O, s:s}", "task_id", json_object_get(row, "task_id"),
                  "status", json_object_get(row, "status"), "problem_id",
                  json_object_get(row, "problem_id"), "worker_id",
                  json_object_get(row, "worker_id"), "timestamp", ts);
    return o;
}

/* Appends one frame to b; ev/log are the cursor after this event. */
static int frame(struct buf *b, int64_t ev, int64_t log, const char *kind, json_t *data)
{
    char *text = json_dumps(data, JSON_COMPACT);
    int rc;

    if (!text)
        return ERR_NOMEM;
    rc = buf_appendf(b, "id: %" PRId64 "-%" PRId64 "\nevent: %s\ndata: %s\n\n", ev, log, kind,
                     text);
    free(text);
    return rc;
}

static bool wants(const struct sse_client *c, unsigned type, json_t *row)
{
    const char *task = json_string_value(json_object_get(row, "task_id"));

    if (!(c->types & type))
        return false;
    if (c->task_id[0])
        return (type == T_TASK || type == T_LOG) && task && !strcmp(task, c->task_id);
    return true;
}

/* ---- delivery ---- */

/* Queues text for c and wakes its connection. Called with the bus lock held. */
static void deliver(struct sse_client *c, const char *text, size_t len)
{
    pthread_mutex_lock(&c->lock);
    if (!c->dropped && !c->closing) {
        if (buf_append(&c->out, text, len) < 0) {
            /* It has not read SSE_CLIENT_BUFFER_KB: drop it rather than hold or grow. */
            c->dropped = true;
            log_warn("events: dropped a client that is not reading (buffer full)");
        }
        if (c->suspended) {
            c->suspended = false;
            http_stream_resume(c->stream->conn);
        }
    }
    pthread_mutex_unlock(&c->lock);
}

/* One merged batch: journal rows and log lines, in time order (each list is in id order). */
void events_batch_walk(const struct events_batch *bt, int64_t ev0, int64_t log0,
                       void (*emit)(void *ud, unsigned type, const char *kind, json_t *row,
                                    int64_t ev, int64_t log),
                       void *ud)
{
    size_t i = 0, j = 0;
    int64_t ev = ev0, log = log0;

    while (i < bt->n_ev || j < bt->n_log) {
        json_t *e = i < bt->n_ev ? json_array_get(bt->events, i) : NULL;
        json_t *l = j < bt->n_log ? json_array_get(bt->logs, j) : NULL;
        bool take_ev = e && (!l || json_integer_value(json_object_get(e, "ts_us")) <=
                                       json_integer_value(json_object_get(l, "ts_us")));
        json_t *row = take_ev ? e : l;
        const char *kind = take_ev ? json_string_value(json_object_get(e, "kind")) : "log";

        if (take_ev) {
            ev = json_integer_value(json_object_get(e, "id"));
            i++;
        } else {
            log = json_integer_value(json_object_get(l, "id"));
            j++;
        }
        emit(ud, kind_type(kind), kind, row, ev, log);
    }
}

/* How many rows of arr (id order) the cursor may step over now: contiguous ids, or past
 * a gap that has lasted GAP_WAIT_MS (an id whose insert was rolled back). */
static size_t accept_rows(struct events_cursor *cur, json_t *arr, int64_t now_ms)
{
    size_t n = 0;
    int64_t at = cur->at;

    for (; n < json_array_size(arr); n++) {
        int64_t id = json_integer_value(json_object_get(json_array_get(arr, n), "id"));
        if (id != at + 1) {
            if (!cur->gap_since_ms)
                cur->gap_since_ms = now_ms;
            if (now_ms - cur->gap_since_ms < GAP_WAIT_MS)
                break; /* perhaps committed out of order: wait for it */
        }
        cur->gap_since_ms = 0;
        at = id;
    }
    return n;
}

static int64_t ts_of(json_t *arr, size_t i)
{
    return json_integer_value(json_object_get(json_array_get(arr, i), "ts_us"));
}

/* How many of the first n rows are no later than ts. */
static size_t rows_until(json_t *arr, size_t n, int64_t ts)
{
    size_t k = 0;

    while (k < n && ts_of(arr, k) <= ts)
        k++;
    return k;
}

void events_batch_accept(struct events_batch *bt, struct events_cursor *ev,
                         struct events_cursor *log, size_t batch_max, int64_t now_ms)
{
    bt->n_ev = accept_rows(ev, bt->events, now_ms);
    bt->n_log = bt->logs ? accept_rows(log, bt->logs, now_ms) : 0;
    /* A table with more rows than one batch holds back the other's later rows, so a task's
     * "completed" never overtakes its own last log lines. */
    if (bt->logs && json_array_size(bt->logs) == batch_max && bt->n_log)
        bt->n_ev = rows_until(bt->events, bt->n_ev, ts_of(bt->logs, bt->n_log - 1));
    if (json_array_size(bt->events) == batch_max && bt->n_ev && bt->logs)
        bt->n_log = rows_until(bt->logs, bt->n_log, ts_of(bt->events, bt->n_ev - 1));
    if (bt->n_ev)
        ev->at = json_integer_value(
            json_object_get(json_array_get(bt->events, bt->n_ev - 1), "id"));
    if (bt->n_log)
        log->at = json_integer_value(
            json_object_get(json_array_get(bt->logs, bt->n_log - 1), "id"));
}

struct live_ctx {
    struct event_bus *b;
};

static void emit_live(void *ud, unsigned type, const char *kind, json_t *row, int64_t ev,
                      int64_t log)
{
    struct live_ctx *x = ud;
    struct buf text;
    json_t *data = NULL;

    buf_init(&text, 1u << 24);
    for (struct sse_client *c = x->b->clients; c; c = c->next) {
        if (!c->attached || !wants(c, type, row))
            continue;
        if (!data) {
            data = frame_data(kind, row);
            if (!data || frame(&text, ev, log, kind, data) < 0)
                break;
        }
        deliver(c, text.data, text.len);
    }
    json_decref(data);
    buf_reset(&text);
}

static bool wants_logs(const struct event_bus *b)
{
    for (const struct sse_client *c = b->clients; c; c = c->next)
        if (c->types & T_LOG)
            return true;
    return false;
}

/* Brings a client that named a Last-Event-ID up to (to_ev, to_log), where the live stream
 * takes over, from the database. Called by the pump with the bus lock held. */
static void catch_up(struct event_bus *b, struct sse_client *c, int64_t to_ev, int64_t to_log)
{
    struct store *st = b->srv->store;
    struct events_batch bt = {0};
    struct live_ctx x = {b};
    int64_t ev = c->from_event < to_ev ? c->from_event : to_ev;
    int64_t log = (c->types & T_LOG) && c->from_log < to_log ? c->from_log : to_log;
    bool complete = store_events_after(st, ev, CATCH_UP_MAX, &bt.events) == 0 &&
                    store_logs_after(st, log, CATCH_UP_MAX, &bt.logs) == 0;

    if (complete) {
        /* Rows past where the live stream starts are the live stream's. */
        while (bt.n_ev < json_array_size(bt.events) &&
               json_integer_value(json_object_get(json_array_get(bt.events, bt.n_ev), "id")) <=
                   to_ev)
            bt.n_ev++;
        while (bt.n_log < json_array_size(bt.logs) &&
               json_integer_value(json_object_get(json_array_get(bt.logs, bt.n_log), "id")) <=
                   to_log)
            bt.n_log++;
        complete = !(to_ev - ev > CATCH_UP_MAX || to_log - log > CATCH_UP_MAX);
    }
    if (!complete) {
        char text[128];
        int n = snprintf(text, sizeof(text),
                         "id: %" PRId64 "-%" PRId64 "\nevent: reset\ndata: {}\n\n", to_ev,
                         to_log);
        deliver(c, text, (size_t)n);
    } else {
        /* Deliver to this client alone: make it the only listener for the walk. */
        struct sse_client *saved = b->clients, *next = c->next;
        b->clients = c;
        c->next = NULL;
        c->attached = true;
        events_batch_walk(&bt, ev, log, emit_live, &x);
        c->next = next;
        b->clients = saved;
    }
    json_decref(bt.events);
    json_decref(bt.logs);
}

static void ping_all(struct event_bus *b)
{
    static const char ping[] = ": ping\n\n";

    for (struct sse_client *c = b->clients; c; c = c->next)
        deliver(c, ping, sizeof(ping) - 1);
}

/* One poll: new rows after the cursors, fanned out. Bus lock held. Returns whether a
 * table had more rows than one batch (poll again at once). */
static bool pump_once(struct event_bus *b)
{
    struct store *st = b->srv->store;
    struct events_batch bt = {0};
    struct live_ctx x = {b};
    int64_t now = clock_mono_ms(), ev0 = b->ev.at, log0 = b->log.at, head_ev, head_log;
    bool logs = wants_logs(b), more;

    if (!b->primed) {
        if (store_events_head(st, &head_ev, &head_log) < 0)
            return false;
        b->ev = (struct events_cursor){head_ev, 0};
        b->log = (struct events_cursor){head_log, 0};
        b->primed = true;
        ev0 = head_ev;
        log0 = head_log;
    }
    if (store_events_after(st, b->ev.at, BATCH, &bt.events) < 0)
        return false;
    if (logs) {
        if (store_logs_after(st, b->log.at, BATCH, &bt.logs) < 0) {
            json_decref(bt.events);
            return false;
        }
    } else {
        /* Nobody wants log lines: skip them rather than read them. */
        if (store_events_head(st, &head_ev, &head_log) == 0)
            b->log = (struct events_cursor){head_log, 0};
        log0 = b->log.at;
    }
    events_batch_accept(&bt, &b->ev, &b->log, BATCH, now);
    /* Clients that arrived since the last poll: caught up to where this batch starts
     * (Last-Event-ID), or live from here. */
    for (struct sse_client *c = b->clients; c; c = c->next) {
        if (c->attached)
            continue;
        catch_up(b, c, ev0, log0);
        c->attached = true;
    }
    events_batch_walk(&bt, ev0, log0, emit_live, &x);
    more = json_array_size(bt.events) == BATCH || (bt.logs && json_array_size(bt.logs) == BATCH);
    json_decref(bt.events);
    json_decref(bt.logs);
    return more;
}

static void *pump_main(void *arg)
{
    struct event_bus *b = arg;

    pthread_mutex_lock(&b->lock);
    while (!b->stop) {
        struct timespec until;

        if (clock_mono_ms() - b->last_prune_ms >= PRUNE_MS) {
            b->last_prune_ms = clock_mono_ms();
            pthread_mutex_unlock(&b->lock);
            events_prune(b);
            pthread_mutex_lock(&b->lock);
        }

        if (b->n_clients > 0) {
            if (pump_once(b) && !b->stop)
                continue; /* behind: read on without waiting */
            if (clock_mono_ms() - b->last_ping_ms >= PING_MS) {
                ping_all(b);
                b->last_ping_ms = clock_mono_ms();
            }
        } else {
            b->primed = false; /* nobody listening: read nothing, start from the head later */
        }
        clock_deadline(&until, EVENTS_POLL_MS);
        pthread_cond_timedwait(&b->wake, &b->lock, &until);
    }
    pthread_mutex_unlock(&b->lock);
    return NULL;
}

/* ---- the HTTP side ---- */

static long client_read(void *ctx, char *dst, size_t max)
{
    struct sse_client *c = ctx;
    long n;

    pthread_mutex_lock(&c->lock);
    if (c->dropped) {
        pthread_mutex_unlock(&c->lock);
        return -1;
    }
    if (c->pos == c->out.len) {
        buf_consume(&c->out, c->out.len);
        c->pos = 0;
        if (c->closing) {
            pthread_mutex_unlock(&c->lock);
            return 0;
        }
        /* Parked under the lock, so a deliver() cannot slip between check and suspend. */
        c->suspended = true;
        http_stream_suspend(c->stream->conn);
        pthread_mutex_unlock(&c->lock);
        return API_STREAM_WAIT;
    }
    n = (long)(c->out.len - c->pos < max ? c->out.len - c->pos : max);
    memcpy(dst, c->out.data + c->pos, (size_t)n);
    c->pos += (size_t)n;
    pthread_mutex_unlock(&c->lock);
    return n;
}

/* Frees a client that is on no list (its stream is freed by its owner). */
static void client_destroy(struct sse_client *c)
{
    buf_reset(&c->out);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

static void client_free(void *ctx)
{
    struct sse_client *c = ctx;
    struct event_bus *b = c->bus;

    pthread_mutex_lock(&b->lock);
    if (c->prev)
        c->prev->next = c->next;
    else
        b->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    b->n_clients--;
    pthread_mutex_unlock(&b->lock);
    client_destroy(c);
}

/* Parses "<event>-<log>" ids; false when malformed. */
static bool parse_event_id(const char *s, int64_t *ev, int64_t *log)
{
    char *end;
    long long a, l;

    if (!s || !*s)
        return false;
    a = strtoll(s, &end, 10);
    if (*end != '-' || a < 0)
        return false;
    l = strtoll(end + 1, &end, 10);
    if (*end || l < 0)
        return false;
    *ev = a;
    *log = l;
    return true;
}

static int parse_types(const char *s, unsigned *out)
{
    unsigned t = 0;
    const char *p = s;

    if (!s) {
        *out = T_ALL;
        return 0;
    }
    while (*p) {
        size_t n = strcspn(p, ",");
        if (n == 4 && !strncmp(p, "task", 4))
            t |= T_TASK;
        else if (n == 3 && !strncmp(p, "log", 3))
            t |= T_LOG;
        else if (n == 6 && !strncmp(p, "worker", 6))
            t |= T_WORKER;
        else if (n == 10 && !strncmp(p, "experiment", 10))
            t |= T_EXPERIMENT;
        else
            return -1;
        p += n;
        if (*p == ',')
            p++;
    }
    *out = t ? t : T_ALL;
    return 0;
}

/* A new client of bus b, with its stream and its first bytes, not yet on the bus; NULL
 * when out of memory. The stream owns the client once the request has it
 * (client_free); before that, discard it with client_discard. */
static struct sse_client *client_new(struct event_bus *b, size_t buffer, const char *task_id,
                                     unsigned types, int64_t ev, int64_t log)
{
    struct sse_client *c = calloc(1, sizeof(*c));
    struct api_stream *s = calloc(1, sizeof(*s));

    if (!c || !s) {
        free(c);
        free(s);
        return NULL;
    }
    c->bus = b;
    c->stream = s;
    c->types = types;
    c->from_event = ev;
    c->from_log = log;
    if (task_id)
        snprintf(c->task_id, sizeof(c->task_id), "%s", task_id);
    pthread_mutex_init(&c->lock, NULL);
    buf_init(&c->out, buffer);
    s->ctx = c;
    s->read = client_read;
    s->free = client_free;
    /* The first bytes: the reconnection delay, and a comment so proxies flush headers. */
    if (buf_appendf(&c->out, "retry: 2000\n: connected\n\n") < 0) {
        client_destroy(c);
        free(s);
        return NULL;
    }
    return c;
}

static void client_discard(struct sse_client *c)
{
    struct api_stream *s = c->stream;

    client_destroy(c);
    free(s);
}

/* Puts c on the bus and wakes the pump; false when the bus is closing (c untouched). */
static bool client_attach(struct event_bus *b, struct sse_client *c)
{
    pthread_mutex_lock(&b->lock);
    if (b->closing) {
        pthread_mutex_unlock(&b->lock);
        return false;
    }
    c->next = b->clients;
    if (b->clients)
        b->clients->prev = c;
    b->clients = c;
    b->n_clients++;
    pthread_cond_signal(&b->wake);
    pthread_mutex_unlock(&b->lock);
    return true;
}

static int open_stream(struct request *req, const char *task_id, unsigned types)
{
    struct event_bus *b = req->srv->events;
    const char *last = api_header(req, "Last-Event-ID");
    struct sse_client *c;
    int64_t ev = -1, log = -1;

    if (!last)
        last = api_query(req, "last_event_id"); /* for clients that cannot set headers */
    if (last && !parse_event_id(last, &ev, &log))
        return api_invalid_field(req, "Last-Event-ID", "must be an event id as sent, "
                                                       "<number>-<number>");
    /* Without one, the stream starts exactly here: whatever happens after this answer
     * begins is sent, however late the pump picks the client up. */
    if (!last && store_events_head(req->srv->store, &ev, &log) < 0)
        return api_fail(req, 503, "The database is unavailable");
    c = client_new(b, (size_t)req->srv->cfg.sse_client_buffer_kb * 1024, task_id, types, ev,
                   log);
    if (!c)
        return api_reply_error(req, ERR_NOMEM, "the event stream");
    if (!client_attach(b, c)) {
        client_discard(c);
        return api_fail(req, 503, "The server is shutting down");
    }
    req->stream = c->stream;
    req->status = 200;
    req->content_type = "text/event-stream";
    return 0;
}

int api_events(struct request *req)
{
    unsigned types;

    if (parse_types(api_query(req, "types"), &types) < 0)
        return api_invalid_field(req, "types", "must be a comma-separated list of task, log, "
                                               "worker, experiment");
    return open_stream(req, NULL, types);
}

int api_task_events(struct request *req)
{
    const char *id = req->params[0];
    struct task *t = NULL;
    int rc;

    if (!api_valid_uuid(id))
        return api_fail(req, 404, "Task %s not found", id);
    rc = store_task_get(req->srv->store, id, &t);
    if (rc < 0)
        return rc == ERR_NOTFOUND ? api_fail(req, 404, "Task %s not found", id)
                                  : api_reply_error(req, rc, "the task");
    task_free(t);
    return open_stream(req, id, T_TASK | T_LOG);
}

/* ---- life cycle ---- */

int events_start(struct server *srv, struct event_bus **out)
{
    struct event_bus *b = calloc(1, sizeof(*b));

    if (!b)
        return ERR_NOMEM;
    b->srv = srv;
    b->last_ping_ms = clock_mono_ms();
    if (thread_start(&b->lock, &b->wake, &b->thread, pump_main, b) < 0) {
        free(b);
        return ERR_IO;
    }
    *out = b;
    return 0;
}

void events_close_streams(struct event_bus *b)
{
    if (!b)
        return;
    pthread_mutex_lock(&b->lock);
    b->closing = true;
    for (struct sse_client *c = b->clients; c; c = c->next) {
        pthread_mutex_lock(&c->lock);
        c->closing = true;
        if (c->suspended) {
            c->suspended = false;
            http_stream_resume(c->stream->conn);
        }
        pthread_mutex_unlock(&c->lock);
    }
    pthread_mutex_unlock(&b->lock);
}

void events_stop(struct event_bus *b)
{
    if (!b)
        return;
    thread_stop(&b->lock, &b->wake, &b->stop, &b->thread);
    free(b);
}

void events_prune(struct event_bus *b)
{
    struct store *st = b->srv->store;
    int64_t keep = (int64_t)b->srv->cfg.event_retention_hours * 3600 * 1000000;

    if (store_events_prune(st, clock_now_us() - keep) < 0)
        log_warn("events: could not prune the event journal");
}
