/* listener: the server's listening socket, and a thread that accepts on it and hands
 * each connection on.
 *
 * DESIGN
 * libmicrohttpd's thread pool accepts by race: every pool thread waits on the listening
 * socket and whichever wakes first takes the connection, so on a busy machine a few
 * threads take most connections and others none (32 connections over 8 threads: 0, 0,
 * and up to 7 on one, measured by the threads' CPU time). A request then waits behind
 * the others of its thread, each blocked on the database: that was the tail of GET at
 * 32 connections (#17). Connections accepted here and given to MHD_add_connection() are
 * spread by their descriptor over the pool (libmicrohttpd 0.9.75, src/microhttpd/
 * daemon.c, MHD_add_connection: worker (i + socket) % pool size), so as many
 * connections as threads times k land k to a thread. */
#ifndef TASKEXEC_LISTENER_H
#define TASKEXEC_LISTENER_H

#include <sys/socket.h>

struct listener;

/* listener_open: a socket listening on host (an IPv4 or IPv6 address) and port (0: a
 * free one), SO_REUSEADDR. 0; ERR_INVALID (host is not an address) or ERR_IO (logged).
 * Free with listener_free. */
int listener_open(const char *host, int port, struct listener **out)
    __attribute__((warn_unused_result));
/* listener_port: the port bound. */
int listener_port(const struct listener *l);
/* listener_start: a thread accepting connections, each given to add(ctx, fd, addr,
 * len), which owns fd from then on and returns 0, or -1 when it could not take it (fd
 * closed). At most limit connections are held at once: beyond, the next waits in the
 * listening socket's queue (unanswered, not refused) until listener_released. 0 or
 * ERR_IO. */
int listener_start(struct listener *l, int limit,
                   int (*add)(void *ctx, int fd, const struct sockaddr *addr, socklen_t len),
                   void *ctx) __attribute__((warn_unused_result));
/* listener_released: a connection given to add was closed; any thread. */
void listener_released(struct listener *l);
/* listener_stop: stops accepting (connections not yet accepted are refused), joins the
 * thread and closes the socket; idempotent. listener_released stays callable. */
void listener_stop(struct listener *l);
/* listener_free: stops l and frees it; NULL-safe. */
void listener_free(struct listener *l);

#endif
