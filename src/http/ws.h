/* ws: WebSocket connections over libmicrohttpd's connection upgrade, framed by wslay.
 *
 * DESIGN
 * A route that speaks WebSocket calls ws_accept: it checks the handshake (RFC 6455 4.2.1)
 * and sets the request to answer 101 with the computed Sec-WebSocket-Accept. Once MHD
 * has sent that, it hands over the raw, non-blocking socket; each connection then gets a
 * thread of its own that polls the socket and an eventfd, so it keeps answering the
 * client's pings (wslay does that) while the application waits on something slow, e.g.
 * a reset queued behind other tasks. wslay contexts are not thread-safe, so everything
 * that touches one runs on that thread: the application is called there (open, each
 * text message, a tick every WS_TICK_MS or after ws_wake, close) and sends from there;
 * other threads only ws_wake it. No extension is negotiated (permessage-deflate offers
 * are declined by silence), and no subprotocol. Binary messages are refused with close
 * code 1003.
 *
 * A client that sends nothing for idle_ms (not even a ping) is closed; one that stops
 * reading while replies pile up past max_queued bytes is dropped, so neither holds
 * memory or a thread for ever. Each connection's thread has a small stack.
 * The hub counts the connections (at most max; more are answered 503) and, at shutdown,
 * closes them all with 1001 and waits for their threads before MHD stops, since MHD must
 * not stop under an upgraded connection it still owns. */
#ifndef TASKEXEC_WS_H
#define TASKEXEC_WS_H

#include <stddef.h>
#include <stdint.h>

#define WS_TICK_MS 200

/* What the hub allows each connection. */
struct ws_limits {
    int max_conns;             /* open at once; more are answered 503 */
    size_t max_message;        /* a larger message is closed with 1009 */
    int idle_ms;               /* no frame (not even a ping) this long: closed (1000) */
    size_t max_queued;         /* bytes queued for a client that does not read: dropped */
};

struct request;
struct ws_conn;
struct ws_hub;

/* A WebSocket application: called on its connection's thread only. */
struct ws_app {
    /* A connection is open; returns its context (NULL: close at once with 1011). */
    void *(*open)(struct ws_conn *c, void *arg);
    /* One whole text message (UTF-8, checked by wslay; not NUL-terminated). */
    void (*on_text)(void *ctx, const char *text, size_t len);
    /* Every WS_TICK_MS, and soon after ws_wake. */
    void (*on_tick)(void *ctx);
    /* The connection is gone (closed by either side, or the server stops): free ctx. */
    void (*on_close)(void *ctx);
    void *arg;
};

/* ws_hub_new: connections under limits (copied). ERR_NOMEM. */
int ws_hub_new(const struct ws_limits *limits, struct ws_hub **out)
    __attribute__((warn_unused_result));
/* ws_hub_close_all: every connection is closed (1001, going away) and its thread ends;
 * waits for all of them (saying so every timeout_ms). New upgrades are refused from now
 * on. */
void ws_hub_close_all(struct ws_hub *h, int timeout_ms);
/* ws_hub_free: NULL-safe; after ws_hub_close_all. */
void ws_hub_free(struct ws_hub *h);
/* ws_hub_count: connections open now. */
int ws_hub_count(struct ws_hub *h);

/* ws_accept: answers req with 101 and, once upgraded, runs app on the connection; on a
 * request that is not a valid WebSocket handshake replies 400 (426 for another
 * protocol version), and 503 when the hub is full or closing. Returns 0. */
int ws_accept(struct request *req, struct ws_hub *hub, const struct ws_app *app);

/* ws_send_text: queues one text message (copied); from the connection's thread. 0, or
 * -1 when the connection is closing. */
int ws_send_text(struct ws_conn *c, const char *text, size_t len);
/* ws_close: starts the closing handshake with code and reason (under 123 bytes); from
 * the connection's thread. The thread ends once the client answers (or is gone). */
void ws_close(struct ws_conn *c, uint16_t code, const char *reason);
/* ws_wake: asks the connection's thread to tick soon; from any thread. */
void ws_wake(struct ws_conn *c);

#endif
