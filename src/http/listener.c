/* listener: see listener.h. */
#include "http/listener.h"
#include "core/err.h"
#include "core/log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct listener {
    int fd;                    /* -1 once stopped */
    int port;
    pthread_t thread;
    bool started;
    int (*add)(void *ctx, int fd, const struct sockaddr *addr, socklen_t len);
    void *ctx;
    pthread_mutex_t lock;      /* guards open, limit and stopping */
    pthread_cond_t room;       /* a connection was released, or stopping */
    int open, limit;
    bool stopping;
};

int listener_open(const char *host, int port, struct listener **out)
{
    struct sockaddr_storage ss = {0};
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    socklen_t len;
    struct listener *l;
    int one = 1;

    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        len = sizeof(*a4);
    } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        len = sizeof(*a6);
    } else {
        log_error("HOST must be an IPv4 or IPv6 address, not '%s'", host);
        return ERR_INVALID;
    }
    if (!(l = calloc(1, sizeof(*l))))
        return ERR_NOMEM;
    pthread_mutex_init(&l->lock, NULL);
    pthread_cond_init(&l->room, NULL);
    l->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l->fd < 0 || setsockopt(l->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        (ss.ss_family == AF_INET6 &&
         setsockopt(l->fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0) ||
        bind(l->fd, (struct sockaddr *)&ss, len) < 0 || listen(l->fd, SOMAXCONN) < 0 ||
        getsockname(l->fd, (struct sockaddr *)&ss, &len) < 0) {
        log_error("cannot listen on %s:%d: %s", host, port, strerror(errno));
        if (l->fd >= 0)
            close(l->fd);
        l->fd = -1;
        listener_free(l);
        return ERR_IO;
    }
    l->port = ntohs(ss.ss_family == AF_INET ? a4->sin_port : a6->sin6_port);
    *out = l;
    return 0;
}

int listener_port(const struct listener *l)
{
    return l->port;
}

/* Waits until fewer than the limit are held; false once stopping. */
static bool wait_room(struct listener *l)
{
    bool go;

    pthread_mutex_lock(&l->lock);
    while (!l->stopping && l->open >= l->limit)
        pthread_cond_wait(&l->room, &l->lock);
    go = !l->stopping;
    pthread_mutex_unlock(&l->lock);
    return go;
}

static void count(struct listener *l, int d)
{
    pthread_mutex_lock(&l->lock);
    l->open += d;
    pthread_cond_signal(&l->room);
    pthread_mutex_unlock(&l->lock);
}

static void *accept_main(void *arg)
{
    struct listener *l = arg;

    while (wait_room(l)) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        int fd = accept4(l->fd, (struct sockaddr *)&ss, &len, SOCK_CLOEXEC);

        if (fd >= 0) {
            count(l, 1);
            if (l->add(l->ctx, fd, (struct sockaddr *)&ss, len) < 0)
                count(l, -1);
        } else if (errno == EINVAL || errno == EBADF) {
            return NULL; /* shut down by listener_stop */
        } else if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
            /* Out of descriptors or memory: the connection waits in the backlog until
             * some are given back; try again shortly rather than spin. */
            log_warn("accepting a connection: %s", strerror(errno));
            usleep(100 * 1000);
        } /* else: the client went away first (ECONNABORTED), a signal: the next */
    }
    return NULL;
}

int listener_start(struct listener *l, int limit,
                   int (*add)(void *ctx, int fd, const struct sockaddr *addr, socklen_t len),
                   void *ctx)
{
    l->add = add;
    l->ctx = ctx;
    l->limit = limit;
    if (pthread_create(&l->thread, NULL, accept_main, l) != 0) {
        log_error("cannot start the thread accepting connections");
        return ERR_IO;
    }
    pthread_setname_np(l->thread, "accept");
    l->started = true;
    return 0;
}

void listener_released(struct listener *l)
{
    count(l, -1);
}

void listener_stop(struct listener *l)
{
    if (l->fd < 0)
        return;
    pthread_mutex_lock(&l->lock);
    l->stopping = true;
    pthread_cond_signal(&l->room);
    pthread_mutex_unlock(&l->lock);
    /* On Linux a shut-down listening socket fails a blocked accept() with EINVAL. */
    shutdown(l->fd, SHUT_RDWR);
    if (l->started)
        pthread_join(l->thread, NULL);
    l->started = false;
    close(l->fd);
    l->fd = -1;
}

void listener_free(struct listener *l)
{
    if (!l)
        return;
    listener_stop(l);
    pthread_mutex_destroy(&l->lock);
    pthread_cond_destroy(&l->room);
    free(l);
}
