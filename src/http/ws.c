/* ws: see ws.h. The handshake checks follow RFC 6455 4.2.1; the I/O loop follows
 * wslay's event API (non-blocking callbacks that report WSLAY_ERR_WOULDBLOCK). */
#include "http/ws.h"
#include "http/api.h"
#include "core/clock.h"
#include "core/crypto.h"
#include "core/err.h"
#include "core/log.h"

#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <wslay/wslay.h>

struct ws_hub {
    pthread_mutex_t lock;
    pthread_cond_t gone;        /* signalled as connections end */
    struct ws_conn *conns;      /* open ones, linked through next/prev */
    int n;
    struct ws_limits limits;
    bool closing;
};

struct ws_conn {
    struct ws_hub *hub;
    struct ws_app app;
    void *app_ctx;
    int sock;
    struct MHD_UpgradeResponseHandle *urh;
    char *extra;                /* bytes MHD read past the headers: served first */
    size_t extra_n, extra_off;
    wslay_event_context_ptr ctx;
    int wake_fd;                /* eventfd: ws_wake */
    bool going_away;            /* the hub is closing: 1001 sent */
    int64_t last_rx_ms;         /* when the last frame began (monotonic) */
    struct ws_conn *next, *prev;
};

#define CONN_STACK (256u << 10)  /* a connection's thread: poll, wslay, the app's JSON */

int ws_hub_new(const struct ws_limits *limits, struct ws_hub **out)
{
    struct ws_hub *h = calloc(1, sizeof(*h));

    if (!h)
        return ERR_NOMEM;
    pthread_mutex_init(&h->lock, NULL);
    pthread_cond_init(&h->gone, NULL);
    h->limits = *limits;
    *out = h;
    return 0;
}

int ws_hub_count(struct ws_hub *h)
{
    int n;

    pthread_mutex_lock(&h->lock);
    n = h->n;
    pthread_mutex_unlock(&h->lock);
    return n;
}

void ws_hub_close_all(struct ws_hub *h, int timeout_ms)
{
    struct timespec until;

    if (!h)
        return;
    clock_deadline(&until, timeout_ms);
    pthread_mutex_lock(&h->lock);
    h->closing = true;
    for (struct ws_conn *c = h->conns; c; c = c->next)
        ws_wake(c);
    /* Every connection's thread must be gone before MHD stops and the hub and the store
     * are freed under it; one stuck in a database call is waited for (the shutdown
     * watchdog bounds the whole stop), with a word every timeout_ms. */
    while (h->n > 0)
        if (pthread_cond_timedwait(&h->gone, &h->lock, &until) != 0 && h->n > 0) {
            log_warn("websocket: waiting for %d connections to close", h->n);
            clock_deadline(&until, timeout_ms);
        }
    pthread_mutex_unlock(&h->lock);
}

void ws_hub_free(struct ws_hub *h)
{
    if (!h)
        return;
    pthread_mutex_destroy(&h->lock);
    pthread_cond_destroy(&h->gone);
    free(h);
}

/* ---- the handshake ---- */

/* Whether the comma-separated header value has token (case-insensitive). */
static bool has_token(const char *value, const char *token)
{
    size_t n = strlen(token);

    for (const char *p = value; p && *p;) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        if (!strncasecmp(p, token, n) && (p[n] == '\0' || p[n] == ',' || p[n] == ' ' ||
                                           p[n] == '\t'))
            return true;
        p = strchr(p, ',');
    }
    return false;
}

static const char *header(struct request *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
}

/* A Sec-WebSocket-Key is the base64 of 16 bytes: 22 characters and "==". */
static bool valid_key(const char *key)
{
    size_t n = key ? strlen(key) : 0;

    if (n != 24 || strcmp(key + 22, "=="))
        return false;
    for (size_t i = 0; i < 22; i++)
        if (!strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", key[i]))
            return false;
    return true;
}

static void conn_start(void *ctx, int sock, const char *extra, size_t extra_n, void *urh);
static void conn_discard(void *ctx);

int ws_accept(struct request *req, struct ws_hub *hub, const struct ws_app *app)
{
    const char *upgrade = header(req, "Upgrade"), *connection = header(req, "Connection");
    const char *version = header(req, "Sec-WebSocket-Version"), *key;
    struct api_upgrade *u;
    struct ws_conn *c;

    if (strcmp(req->method, "GET") || !upgrade || !has_token(upgrade, "websocket") ||
        !connection || !has_token(connection, "upgrade"))
        return api_fail(req, 400, "this route speaks WebSocket only: send a GET with "
                                  "Upgrade: websocket and Connection: Upgrade");
    if (!version || strcmp(version, "13"))
        return api_fail(req, 426, "only WebSocket version 13 is spoken "
                                  "(Sec-WebSocket-Version: 13)");
    key = header(req, "Sec-WebSocket-Key");
    if (!valid_key(key))
        return api_fail(req, 400, "Sec-WebSocket-Key must be the base64 of 16 bytes");
    pthread_mutex_lock(&hub->lock);
    if (hub->closing || hub->n >= hub->limits.max_conns) {
        bool closing = hub->closing;
        pthread_mutex_unlock(&hub->lock);
        return api_fail(req, 503, closing ? "the server is shutting down"
                                          : "too many WebSocket connections; try again later");
    }
    hub->n++; /* reserved now, so the limit holds while the upgrade is under way */
    pthread_mutex_unlock(&hub->lock);
    u = calloc(1, sizeof(*u));
    c = calloc(1, sizeof(*c));
    if (!u || !c) {
        free(u);
        free(c);
        pthread_mutex_lock(&hub->lock);
        hub->n--;
        pthread_mutex_unlock(&hub->lock);
        return api_reply_error(req, ERR_NOMEM, "the connection");
    }
    c->hub = hub;
    c->app = *app;
    c->sock = -1;
    c->wake_fd = -1;
    crypto_ws_accept(key, u->accept);
    u->ctx = c;
    u->start = conn_start;
    u->discard = conn_discard;
    req->upgrade = u;
    req->status = 101;
    return 0;
}

/* ---- the connection ---- */

static ssize_t on_recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
                       void *ud)
{
    struct ws_conn *c = ud;
    ssize_t r;

    (void)flags;
    if (c->extra_off < c->extra_n) {
        size_t n = c->extra_n - c->extra_off < len ? c->extra_n - c->extra_off : len;
        memcpy(buf, c->extra + c->extra_off, n);
        c->extra_off += n;
        return (ssize_t)n;
    }
    while ((r = recv(c->sock, buf, len, 0)) < 0 && errno == EINTR)
        ;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    if (r <= 0) { /* the peer is gone (0: it closed without a close frame) */
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return r;
}

static ssize_t on_send(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                       void *ud)
{
    struct ws_conn *c = ud;
    ssize_t r;

    while ((r = send(c->sock, data, len, MSG_NOSIGNAL | ((flags & WSLAY_MSG_MORE) ? MSG_MORE
                                                                                 : 0))) < 0 &&
           errno == EINTR)
        ;
    if (r < 0) {
        wslay_event_set_error(ctx, errno == EAGAIN || errno == EWOULDBLOCK
                                       ? WSLAY_ERR_WOULDBLOCK : WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return r;
}

static void on_frame_start(wslay_event_context_ptr ctx,
                           const struct wslay_event_on_frame_recv_start_arg *arg, void *ud)
{
    struct ws_conn *c = ud;

    (void)ctx;
    (void)arg;
    c->last_rx_ms = clock_mono_ms(); /* any frame, pings included, keeps it open */
}

static void on_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg,
                   void *ud)
{
    struct ws_conn *c = ud;

    (void)ctx;
    if (arg->opcode == WSLAY_TEXT_FRAME) {
        if (c->app_ctx)
            c->app.on_text(c->app_ctx, (const char *)arg->msg, arg->msg_length);
    } else if (arg->opcode == WSLAY_BINARY_FRAME) {
        ws_close(c, WSLAY_CODE_UNSUPPORTED_DATA, "binary messages are not accepted; send JSON "
                                                 "as text");
    }
    /* ping, pong and close are wslay's: it answers pings and close frames itself */
}

int ws_send_text(struct ws_conn *c, const char *text, size_t len)
{
    struct wslay_event_msg m = {WSLAY_TEXT_FRAME, (const uint8_t *)text, len};

    return wslay_event_queue_msg(c->ctx, &m) == 0 ? 0 : -1;
}

void ws_close(struct ws_conn *c, uint16_t code, const char *reason)
{
    (void)wslay_event_queue_close(c->ctx, code, (const uint8_t *)reason,
                                  reason ? strlen(reason) : 0);
}

void ws_wake(struct ws_conn *c)
{
    uint64_t one = 1;

    if (c->wake_fd >= 0 && write(c->wake_fd, &one, sizeof(one)) < 0) {
        /* the counter is saturated: a wake is pending anyway */
    }
}

static void hub_add(struct ws_conn *c)
{
    struct ws_hub *h = c->hub;

    pthread_mutex_lock(&h->lock);
    c->next = h->conns;
    if (h->conns)
        h->conns->prev = c;
    h->conns = c;
    pthread_mutex_unlock(&h->lock);
}

/* Takes c off the hub's list, so nothing wakes it any more (its eventfd may close). */
static void hub_unlink(struct ws_conn *c)
{
    struct ws_hub *h = c->hub;

    pthread_mutex_lock(&h->lock);
    if (c->prev)
        c->prev->next = c->next;
    else if (h->conns == c)
        h->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    pthread_mutex_unlock(&h->lock);
}

/* A connection's place is free again; the last thing a connection does. */
static void hub_done(struct ws_hub *h)
{
    pthread_mutex_lock(&h->lock);
    h->n--;
    pthread_cond_broadcast(&h->gone);
    pthread_mutex_unlock(&h->lock);
}

static bool hub_closing(struct ws_hub *h)
{
    bool closing;

    pthread_mutex_lock(&h->lock);
    closing = h->closing;
    pthread_mutex_unlock(&h->lock);
    return closing;
}

/* One round: wait for the socket or a wake (at most a tick), read, tick, write. False
 * when the connection is over. */
static bool conn_round(struct ws_conn *c)
{
    struct pollfd p[2] = {{.fd = c->sock, .events = POLLIN},
                          {.fd = c->wake_fd, .events = POLLIN}};
    uint64_t n;

    if (wslay_event_want_write(c->ctx))
        p[0].events |= POLLOUT;
    /* Bytes MHD read already are waiting in extra: do not sleep on the socket. */
    if (poll(p, 2, c->extra_off < c->extra_n ? 0 : WS_TICK_MS) < 0 && errno != EINTR)
        return false;
    if (p[1].revents & POLLIN)
        (void)!read(c->wake_fd, &n, sizeof(n));
    if (((p[0].revents & (POLLIN | POLLHUP | POLLERR)) || c->extra_off < c->extra_n) &&
        wslay_event_recv(c->ctx) != 0)
        return false;
    if (!c->going_away && hub_closing(c->hub)) {
        c->going_away = true;
        ws_close(c, WSLAY_CODE_GOING_AWAY, "the server is shutting down");
    }
    if (!wslay_event_get_close_sent(c->ctx) &&
        clock_mono_ms() - c->last_rx_ms > c->hub->limits.idle_ms)
        ws_close(c, WSLAY_CODE_NORMAL_CLOSURE, "idle: no message or ping for too long");
    if (wslay_event_get_queued_msg_length(c->ctx) > c->hub->limits.max_queued) {
        log_warn("websocket: a client stopped reading (%zu bytes queued); dropped",
                 wslay_event_get_queued_msg_length(c->ctx));
        return false;
    }
    if (c->app_ctx && wslay_event_get_read_enabled(c->ctx))
        c->app.on_tick(c->app_ctx);
    if (wslay_event_want_write(c->ctx) && wslay_event_send(c->ctx) != 0)
        return false;
    return wslay_event_want_read(c->ctx) || wslay_event_want_write(c->ctx);
}

static void *conn_main(void *arg)
{
    struct ws_conn *c = arg;
    struct wslay_event_callbacks cbs = {.recv_callback = on_recv, .send_callback = on_send,
                                        .on_frame_recv_start_callback = on_frame_start,
                                        .on_msg_recv_callback = on_msg};
    struct ws_hub *hub;
    int one = 1;

    /* MHD turns Nagle back on for an upgraded socket; small JSON replies want it off. */
    setsockopt(c->sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (wslay_event_context_server_init(&c->ctx, &cbs, c) == 0) {
        wslay_event_config_set_max_recv_msg_length(c->ctx, c->hub->limits.max_message);
        c->last_rx_ms = clock_mono_ms();
        c->app_ctx = c->app.open(c, c->app.arg);
        if (!c->app_ctx)
            ws_close(c, WSLAY_CODE_INTERNAL_SERVER_ERROR, "out of memory");
        /* Bound the closing handshake: a client that never answers our close frame
         * (or never sends) is dropped after a few seconds of its ticks. */
        for (int after_close = 0; conn_round(c);)
            if (wslay_event_get_close_sent(c->ctx) && ++after_close > 5000 / WS_TICK_MS)
                break;
        if (c->app_ctx)
            c->app.on_close(c->app_ctx);
        wslay_event_context_free(c->ctx);
    }
    /* MHD owns the socket: it closes it (never close() it here). */
    MHD_upgrade_action(c->urh, MHD_UPGRADE_ACTION_CLOSE);
    hub_unlink(c);
    close(c->wake_fd);
    free(c->extra);
    hub = c->hub;
    free(c);
    hub_done(hub);
    return NULL;
}

/* Called by http.c once MHD has sent the 101: the socket is ours until CLOSE. */
static void conn_start(void *ctx, int sock, const char *extra, size_t extra_n, void *urh)
{
    struct ws_conn *c = ctx;
    pthread_attr_t attr;
    pthread_t t;

    c->sock = sock;
    c->urh = urh;
    c->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    c->extra = extra_n ? malloc(extra_n) : NULL;
    if (c->extra) {
        memcpy(c->extra, extra, extra_n);
        c->extra_n = extra_n;
    }
    hub_add(c);
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, CONN_STACK);
    /* The hub waits for the thread's end through its count, so it may be detached. */
    if (c->wake_fd < 0 || (extra_n && !c->extra) ||
        pthread_create(&t, &attr, conn_main, c) != 0) {
        struct ws_hub *hub = c->hub;

        log_error("websocket: cannot start a connection: %s", strerror(errno));
        MHD_upgrade_action(urh, MHD_UPGRADE_ACTION_CLOSE);
        hub_unlink(c);
        if (c->wake_fd >= 0)
            close(c->wake_fd);
        free(c->extra);
        free(c);
        hub_done(hub);
    }
    pthread_attr_destroy(&attr);
}

/* The 101 was never sent (the client left first): give the reserved place back. */
static void conn_discard(void *ctx)
{
    struct ws_conn *c = ctx;

    struct ws_hub *hub = c->hub;

    free(c);
    hub_done(hub);
}
