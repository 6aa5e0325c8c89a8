/* api: the request context handlers see, reply helpers, and the handlers. */
#ifndef TASKEXEC_API_H
#define TASKEXEC_API_H

#include "core/buf.h"
#include "http/server.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

struct MHD_Connection;

#define API_MAX_PARAMS 4

/* A body produced piece by piece (chunked), for answers too large to build in memory. */
struct api_stream {
    void *ctx;
    /* Fills up to max bytes; returns how many (> 0), 0 at the end, < 0 on an error
     * (the connection is then closed, so the client sees the answer is cut), or
     * API_STREAM_WAIT after calling http_stream_suspend: nothing now, and whoever has
     * more later calls http_stream_resume. */
    long (*read)(void *ctx, char *out, size_t max);
    void (*free)(void *ctx);
    void *conn;                      /* the HTTP connection, set by http.c when sending */
};
#define API_STREAM_WAIT (-2)

/* An answer that switches protocols (a WebSocket handshake): http.c sends 101 with
 * Upgrade: websocket and this Sec-WebSocket-Accept, then hands the raw socket over. */
struct api_upgrade {
    char accept[32];
    void *ctx;
    /* The 101 is out: from here sock and urh (MHD's handle, closed through it) are the
     * callee's, and so is ctx. extra_in: bytes already read past the request. */
    void (*start)(void *ctx, int sock, const char *extra_in, size_t extra_n, void *urh);
    /* The 101 was never sent: ctx is to be freed. */
    void (*discard)(void *ctx);
    bool started;
};

/* One HTTP request, owned by http.c and freed when MHD completes it. */
struct request {
    struct server *srv;
    struct MHD_Connection *conn;
    const char *method;              /* borrowed from MHD */
    char path[1024];                 /* normalized: aliases mapped to /api/v1 */
    char request_id[48];
    struct buf body;                 /* capped at MAX_BODY_BYTES */
    bool body_too_big;
    const char *params[API_MAX_PARAMS]; /* path captures, borrowed from path_copy */
    size_t n_params;
    char path_copy[1024];            /* path split for captures */
    int64_t started_us;              /* for the latency histogram */
    /* the answer */
    int status;
    json_t *reply;                   /* owned; NULL: no body (204) */
    char *reply_raw;                 /* owned; a non-JSON body, sent instead of reply */
    size_t reply_raw_len;            /* its length when it may hold a NUL; 0: strlen */
    const char *content_type;        /* of reply_raw or stream */
    char own_content_type[128];      /* storage for a content_type made at run time */
    char retry_after[32];            /* a Retry-After to send, or "" */
    bool www_authenticate;           /* a 401 that asks for a Bearer token */
    struct api_stream *stream;       /* owned; a streamed body, sent instead of reply */
    struct api_upgrade *upgrade;     /* owned; a protocol switch, sent instead of reply */
    bool deferred;                   /* answered later, from another thread (http_request_defer) */
    const char *route;               /* route template, for logs and metrics */
};

typedef int (*api_handler)(struct request *req);

/* reply: sets the answer; takes the reference to body (may be NULL). Returns 0. */
int api_reply(struct request *req, int status, json_t *body);
/* api_reply_text: a non-JSON answer; takes body (malloc'd). Returns 0. */
int api_reply_text(struct request *req, int status, const char *content_type, char *body);
/* api_fail: the error shape {"detail","type","request_id"} with status; returns 0. */
int api_fail(struct request *req, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* api_reply_error: maps an err.h code to its status (the one place that does). */
int api_reply_error(struct request *req, int rc, const char *what);
/* api_invalid: 422 with an "errors" list of {"field","message"}; takes errors. */
int api_invalid(struct request *req, json_t *errors);
/* api_invalid_field: 422 for one field. */
int api_invalid_field(struct request *req, const char *field, const char *message);

/* api_query: a query-string value (decoded) or NULL; borrowed from MHD. */
const char *api_query(struct request *req, const char *name);
/* api_header: a request header or NULL; borrowed. */
const char *api_header(struct request *req, const char *name);
/* api_query_int: parses an optional integer argument within [lo, hi]; replies 422
 * and returns ERR_INVALID when malformed. *out keeps def when absent. */
int api_query_int(struct request *req, const char *name, long long lo, long long hi,
                  long long def, long long *out) __attribute__((warn_unused_result));
/* api_query_bool: "true/false/1/0"; same contract as api_query_int. */
int api_query_bool(struct request *req, const char *name, bool def, bool *out)
    __attribute__((warn_unused_result));
/* api_body_json: parses the body (duplicate keys rejected). On a malformed body
 * replies 400 and returns ERR_INVALID. An empty body gives *out = NULL. The
 * caller owns *out. */
int api_body_json(struct request *req, json_t **out) __attribute__((warn_unused_result));
/* api_lookup_error: the reply to a failed lookup of a noun ("task", "worker", ...)
 * by id: 404 "<noun> <id> not found" for ERR_NOTFOUND, else api_reply_error with
 * "the <noun>". Replies nothing when rc >= 0. Returns rc. */
int api_lookup_error(struct request *req, int rc, const char *noun, const char *id);
/* api_submit: what the create routes share: reads the body (required), sets its
 * "mode" when mode is not NULL (the body must then be an object), and submits it with
 * the request's Idempotency-Key. Returns 0 with *out the task (caller frees with
 * task_free) and *created false when the key named an earlier one; otherwise it has
 * replied (400, 422 or the store's error) and returns a negative code. */
int api_submit(struct request *req, const char *mode, struct task **out, bool *created)
    __attribute__((warn_unused_result));
/* api_submit's two halves, for a caller that submits on another thread:
 * api_create_body reads and checks the body (0 with *body the caller's, or it has
 * replied 400/422); api_submit_body submits it (body borrowed; idempotency_key may be
 * NULL) with api_submit's result and replies. Neither reads the connection after
 * api_create_body, so api_submit_body may run while the request is parked. */
int api_create_body(struct request *req, const char *mode, json_t **body)
    __attribute__((warn_unused_result));
int api_submit_body(struct request *req, json_t *body, const char *idempotency_key,
                    struct task **out, bool *created) __attribute__((warn_unused_result));
/* api_valid_uuid: 36 characters of a canonical UUID. */
bool api_valid_uuid(const char *s);

/* Handlers (api_*.c). */
int api_health(struct request *req);
int api_metrics(struct request *req);
int api_export(struct request *req);
int api_openapi(struct request *req);
int api_docs(struct request *req);
int api_dashboard(struct request *req);
int api_task_timeseries(struct request *req);
int api_ready(struct request *req);
int api_task_create(struct request *req);
int api_task_list(struct request *req);
/* api_task_list_of: the task list route's answer, limited to one experiment's tasks when
 * experiment_id is not NULL. */
int api_task_list_of(struct request *req, const char *experiment_id);
int api_experiment_create(struct request *req);
int api_experiment_list(struct request *req);
int api_experiment_get(struct request *req);
int api_experiment_scoreboard(struct request *req);
int api_experiment_tasks(struct request *req);
int api_experiment_cancel(struct request *req);
int api_experiment_rerun(struct request *req);
int api_task_stats(struct request *req);
int api_task_get(struct request *req);
int api_task_cancel(struct request *req);
int api_task_logs(struct request *req);
int api_task_conversations(struct request *req);
int api_problems(struct request *req);
int api_conv_list(struct request *req);
int api_conv_stats(struct request *req);
int api_conv_for_task(struct request *req);
int api_conv_get(struct request *req);
int api_conv_messages(struct request *req);
int api_worker_list(struct request *req);
int api_worker_get(struct request *req);
int api_worker_stats(struct request *req);
int api_internal_status(struct request *req);
int api_internal_scale(struct request *req);
int api_internal_stop(struct request *req);
int api_internal_start(struct request *req);
int api_worker_register(struct request *req);
int api_worker_session_ready(struct request *req);
int api_worker_session_next(struct request *req);
int api_worker_session_answer(struct request *req);
int api_worker_session_end(struct request *req);
int api_worker_heartbeat(struct request *req);
int api_worker_claim(struct request *req);
int api_worker_task_logs(struct request *req);
int api_worker_task_conversations(struct request *req);
int api_worker_task_complete(struct request *req);
int api_worker_task_fail(struct request *req);
/* api_sessions.c */
int api_session_create(struct request *req);
int api_session_get(struct request *req);
int api_session_step(struct request *req);
int api_session_close(struct request *req);
/* api_llm.c: the LLM gateway (OpenAI-compatible) */
int api_llm_chat(struct request *req);
int api_llm_models(struct request *req);
int api_task_llm_calls(struct request *req);
/* events.c: GET /api/v1/events?types=task,log,worker and GET /api/v1/tasks/{id}/events */
int api_events(struct request *req);
int api_task_events(struct request *req);

#endif
