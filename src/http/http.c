/* http: libmicrohttpd with an internal thread pool (epoll), see http.h. */
#include "http/http.h"
#include "http/api.h"
#include "http/listener.h"
#include "core/clock.h"
#include "core/crypto.h"
#include "model/access.h"
#include "core/err.h"
#include "core/log.h"
#include "service/metrics.h"
#include "http/router.h"
#include "http/server.h"

#include <errno.h>
#include <microhttpd.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

struct http {
    struct MHD_Daemon *daemon;
    struct listener *listener;
    struct server *srv;
    atomic_ullong next_id;     /* request id counter */
    unsigned long long boot;   /* distinguishes ids across restarts */
    int port;
};

static void stream_free(void *cls)
{
    struct api_stream *st = cls;

    if (st) {
        st->free(st->ctx);
        free(st);
    }
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct api_stream *st = cls;
    long n = st->read(st->ctx, buf, max);

    (void)pos;
    if (n == API_STREAM_WAIT)
        return 0; /* suspended: MHD calls again once resumed */
    if (n < 0)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    return n == 0 ? MHD_CONTENT_READER_END_OF_STREAM : (ssize_t)n;
}

void http_stream_suspend(void *conn)
{
    MHD_suspend_connection(conn);
}

void http_stream_resume(void *conn)
{
    MHD_resume_connection(conn);
}

void http_request_defer(struct request *req)
{
    req->deferred = true;
    MHD_suspend_connection(req->conn);
}

void http_request_resume(struct request *req)
{
    MHD_resume_connection(req->conn); /* MHD calls on_request again: see "deferred" there */
}

static void request_free(struct request *req)
{
    if (!req)
        return;
    if (req->upgrade) {
        if (!req->upgrade->started && req->upgrade->discard)
            req->upgrade->discard(req->upgrade->ctx);
        free(req->upgrade);
    }
    stream_free(req->stream);
    buf_reset(&req->body);
    json_decref(req->reply);
    free(req->reply_raw);
    free(req);
}

/* What on_uri hands on_request for a path with an encoded NUL (no request exists yet). */
static char path_has_nul;

/* Sees the request target before MHD decodes it (a decoded "%00" would cut the path):
 * marks a path with an encoded NUL, for on_request to refuse. */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
    (void)cls;
    (void)conn;
    return router_raw_path_has_nul(uri) ? &path_has_nul : NULL;
}

static void completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    if (*con_cls != &path_has_nul) /* the marker, when on_request never ran */
        request_free(*con_cls);
    *con_cls = NULL;
}

/* The response of a streamed reply (SSE, exports): it reads req->stream and owns it from
 * here on. NULL when out of memory. */
static struct MHD_Response *stream_response(struct request *req)
{
    struct MHD_Response *resp;

    req->stream->conn = req->conn;
    resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 64 * 1024, stream_read,
                                             req->stream, stream_free);
    if (!resp)
        return NULL;
    req->stream = NULL; /* the response owns it now */
    MHD_add_response_header(resp, "Content-Type", req->content_type);
    if (!strcmp(req->content_type, "text/event-stream"))
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
    return resp;
}

/* The response of a whole reply: the raw text or the JSON value req holds. */
static struct MHD_Response *body_response(struct request *req)
{
    struct MHD_Response *resp;
    char *text = NULL;
    size_t len = 0;

    if (req->reply_raw) {
        text = req->reply_raw;
        len = req->reply_raw_len;
        req->reply_raw = NULL;
    } else if (req->reply) {
        text = json_dumps(req->reply, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(10));
        if (!text)
            req->status = 500;
    }
    if (text && !len)
        len = strlen(text);
    resp = MHD_create_response_from_buffer(len, text ? text : (char *)"",
                                           text ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (!resp) {
        free(text);
        return NULL;
    }
    if (text)
        MHD_add_response_header(resp, "Content-Type",
                                req->content_type ? req->content_type : "application/json");
    if (req->status == 405)
        MHD_add_response_header(resp, "Allow", "GET, POST, PUT");
    return resp;
}

static void upgraded(void *cls, struct MHD_Connection *conn, void *req_cls, const char *extra_in,
                     size_t extra_in_size, MHD_socket sock, struct MHD_UpgradeResponseHandle *urh)
{
    struct api_upgrade *u = cls;

    (void)conn;
    (void)req_cls;
    u->started = true;
    u->start(u->ctx, sock, extra_in, extra_in_size, urh);
}

/* The 101 of a protocol switch: MHD adds Connection: Upgrade; the rest is ours. */
static struct MHD_Response *upgrade_response(struct request *req)
{
    struct MHD_Response *resp = MHD_create_response_for_upgrade(upgraded, req->upgrade);

    if (resp && (MHD_add_response_header(resp, "Upgrade", "websocket") != MHD_YES ||
                 MHD_add_response_header(resp, "Sec-WebSocket-Accept", req->upgrade->accept) !=
                     MHD_YES)) {
        MHD_destroy_response(resp);
        return NULL;
    }
    return resp;
}

static enum MHD_Result send_reply(struct request *req)
{
    struct MHD_Response *resp = req->upgrade  ? upgrade_response(req)
                                : req->stream ? stream_response(req)
                                              : body_response(req);
    enum MHD_Result ret;
    double seconds;

    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, "X-Request-ID", req->request_id);
    if (req->retry_after[0])
        MHD_add_response_header(resp, "Retry-After", req->retry_after);
    if (req->www_authenticate)
        MHD_add_response_header(resp, "WWW-Authenticate", "Bearer");
    ret = MHD_queue_response(req->conn, (unsigned)req->status, resp);
    MHD_destroy_response(resp);
    seconds = (double)(clock_now_us() - req->started_us) / 1e6;
    metrics_http(req->srv->metrics, req->route ? req->route : "unmatched", req->method,
                 req->status, seconds);
    log_request(req->request_id, req->method, req->path, req->route, req->status,
                seconds * 1000.0);
    return ret;
}

/* Whether the caller may call route (CONTRACT.md "Deployment and access control");
 * otherwise it has answered 401 (no usable token) or 403 (too small a role). */
static bool allowed(struct request *req, const struct route *route)
{
    const struct server *srv = req->srv;
    const char *header = api_header(req, "Authorization"), *token = access_bearer(header);
    enum access_role need, have;
    char a[CRYPTO_HEX_SHA256], b[CRYPTO_HEX_SHA256];

    switch (route->access) {
    case ACCESS_OPEN:
    case ACCESS_WORKER:
    case ACCESS_TASK_KEY:
        return true;
    case ACCESS_JOIN:
        if (!srv->cfg.worker_join_token)
            return true;
        if (token) {
            crypto_sha256_hex(token, a);
            crypto_sha256_hex(srv->cfg.worker_join_token, b);
            if (crypto_equal(a, b))
                return true;
        }
        req->www_authenticate = true;
        api_fail(req, 401, "registering a worker needs WORKER_JOIN_TOKEN as "
                           "'Authorization: Bearer …'");
        return false;
    case ACCESS_READ: need = ROLE_READ; break;
    case ACCESS_WRITE: need = ROLE_WRITE; break;
    default: need = ROLE_ADMIN; break;
    }
    if (!access_enabled(srv->access))
        return true;
    have = access_role_of(srv->access, token);
    if (have >= need)
        return true;
    if (have == ROLE_NONE) {
        req->www_authenticate = true;
        api_fail(req, 401, header && !token
                               ? "the Authorization header is not 'Bearer <token>' with a "
                                 "token of printable characters"
                               : header ? "the token is not valid"
                                        : "this server needs an API token: send "
                                          "'Authorization: Bearer <token>'");
    } else {
        api_fail(req, 403, "%s %s needs the %s role; this token has %s", req->method,
                 route->pattern, access_role_name(need), access_role_name(have));
    }
    return false;
}

static void dispatch(struct request *req)
{
    const struct route *route = NULL;
    enum router_result rr;
    int rc;

    rr = router_match(req->method, req->path, req->path_copy, &route, req->params,
                      &req->n_params);
    if (rr == ROUTER_NO_PATH) {
        api_fail(req, 404, "no route for %s", req->path);
        return;
    }
    if (rr == ROUTER_NO_METHOD) {
        api_fail(req, 405, "%s is not allowed on %s", req->method, req->path);
        return;
    }
    req->route = route->pattern;
    if (!allowed(req, route))
        return;
    rc = route->handler(req);
    if (req->deferred)
        return; /* another thread answers it (and may be doing so now) */
    if (rc < 0 && req->status == 0)
        api_reply_error(req, rc, "the request");
    if (req->status == 0)
        api_fail(req, 500, "the handler gave no answer");
}

/* An id the client sent is kept if it is short and printable, else we make one. */
static void set_request_id(struct http *h, struct request *req)
{
    const char *given = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "X-Request-ID");
    size_t n = given ? strlen(given) : 0;
    bool ok = n > 0 && n < sizeof(req->request_id);

    for (size_t i = 0; ok && i < n; i++)
        ok = given[i] > ' ' && given[i] < 0x7f;
    if (ok)
        memcpy(req->request_id, given, n + 1);
    else
        snprintf(req->request_id, sizeof(req->request_id), "req_%llx_%llx", h->boot,
                 (unsigned long long)atomic_fetch_add(&h->next_id, 1));
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    struct http *h = cls;
    struct request *req = *con_cls;

    (void)version;
    if (!req || req == (void *)&path_has_nul) {
        bool nul = req != NULL;
        const struct route *route = NULL;
        const char *cl;

        req = calloc(1, sizeof(*req));
        if (!req)
            return MHD_NO;
        req->srv = h->srv;
        req->conn = conn;
        req->method = method;
        req->started_us = clock_now_us();
        buf_init(&req->body, (size_t)h->srv->cfg.max_body_bytes);
        router_normalize(url, req->path, sizeof(req->path));
        set_request_id(h, req);
        *con_cls = req;
        /* Refuse a declared oversized body before reading any of it. */
        cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > (unsigned long long)h->srv->cfg.max_body_bytes) {
            api_fail(req, 413, "the request body is larger than %d bytes",
                     h->srv->cfg.max_body_bytes);
            return send_reply(req);
        }
        if (strlen(url) >= sizeof(req->path) - 8) {
            api_fail(req, 414, "the request path is too long");
            return send_reply(req);
        }
        if (nul) {
            api_fail(req, 400, "the request path contains a NUL character (%%00)");
            return send_reply(req);
        }
        /* Tokens are checked on the headers, before any body is read for a caller that
         * may not send one (dispatch checks again; the answer is the same). */
        if (router_match(method, req->path, req->path_copy, &route, req->params,
                         &req->n_params) == ROUTER_FOUND &&
            !allowed(req, route))
            return send_reply(req);
        return MHD_YES;
    }
    if (*upload_data_size) {
        if (!req->body_too_big && buf_append(&req->body, upload_data, *upload_data_size) < 0)
            req->body_too_big = true;
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (req->deferred) {
        req->deferred = false; /* resumed: the answer is set */
        return send_reply(req);
    }
    if (req->status)
        return MHD_YES; /* answered already (413 above) */
    if (req->body_too_big)
        api_fail(req, 413, "the request body is larger than %d bytes",
                 h->srv->cfg.max_body_bytes);
    else
        dispatch(req);
    if (req->deferred)
        return MHD_YES; /* parked; answered when resumed */
    return send_reply(req);
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char line[512];

    (void)cls;
    vsnprintf(line, sizeof(line), fmt, ap);
    line[strcspn(line, "\n")] = '\0';
    log_debug("libmicrohttpd: %s", line);
}

/* The listener's hand-off: MHD owns fd from here, and closes it if it cannot take it. */
static int add_connection(void *ctx, int fd, const struct sockaddr *addr, socklen_t len)
{
    struct http *h = ctx;

    if (MHD_add_connection(h->daemon, fd, addr, len) == MHD_YES)
        return 0;
    log_warn("a connection was refused: %s", strerror(errno));
    return -1;
}

/* A connection's end makes room for the next (the listener holds at most the limit).
 * libmicrohttpd 0.9.75 tells of every connection it took and then closed, upgraded ones
 * included (daemon.c: MHD_cleanup_connections, and new_connection_process_'s cleanup
 * path); one it drops before taking it (out of memory for its pool) is not told of,
 * and keeps its place in the count. */
static void on_connection(void *cls, struct MHD_Connection *c, void **socket_ctx,
                          enum MHD_ConnectionNotificationCode code)
{
    struct http *h = cls;

    (void)c;
    (void)socket_ctx;
    if (code == MHD_CONNECTION_NOTIFY_CLOSED)
        listener_released(h->listener);
}

int http_start(struct server *srv, struct http **out)
{
    struct http *h = calloc(1, sizeof(*h));
    /* The listening socket is ours (http/listener.h: connections spread evenly over the
     * pool); MHD_USE_ITC wakes a pool thread when one is added. The listener holds the
     * connection limit (a connection beyond it waits in the socket's queue, as it did
     * when MHD listened), so MHD's own, which it divides among its threads, is set
     * where it never refuses one the listener let in: the limit on each thread, and one
     * more, as a thread tells of a closed connection just before it counts it gone. */
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ERROR_LOG |
                     MHD_USE_SUSPEND_RESUME | MHD_ALLOW_UPGRADE | MHD_USE_NO_LISTEN_SOCKET |
                     MHD_USE_ITC;
    int rc;

    if (!h)
        return ERR_NOMEM;
    h->srv = srv;
    h->boot = (unsigned long long)(clock_now_us() / 1000000) & 0xffffff;
    rc = listener_open(srv->cfg.host, srv->cfg.port, &h->listener);
    if (rc < 0) {
        free(h);
        return rc;
    }
    h->port = listener_port(h->listener);
    h->daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, h, MHD_OPTION_THREAD_POOL_SIZE,
        (unsigned)srv->cfg.http_threads, MHD_OPTION_NOTIFY_COMPLETED, completed, NULL,
        MHD_OPTION_URI_LOG_CALLBACK, on_uri, NULL, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)srv->cfg.http_timeout_seconds, MHD_OPTION_CONNECTION_LIMIT,
        ((unsigned)srv->cfg.http_max_connections + 1) * (unsigned)srv->cfg.http_threads,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, h, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)srv->cfg.http_max_header_bytes, MHD_OPTION_EXTERNAL_LOGGER,
        mhd_log, NULL, MHD_OPTION_END);
    if (!h->daemon ||
        listener_start(h->listener, srv->cfg.http_max_connections, add_connection, h) < 0) {
        log_error("cannot start the HTTP server");
        if (h->daemon)
            MHD_stop_daemon(h->daemon);
        listener_free(h->listener);
        free(h);
        return ERR_IO;
    }
    *out = h;
    return 0;
}

int http_port(const struct http *h)
{
    return h->port;
}

void http_quiesce(struct http *h)
{
    if (h)
        listener_stop(h->listener);
}

void http_stop(struct http *h)
{
    if (!h)
        return;
    listener_stop(h->listener);
    if (h->daemon)
        MHD_stop_daemon(h->daemon);
    listener_free(h->listener); /* after MHD: its last connections release theirs */
    free(h);
}
