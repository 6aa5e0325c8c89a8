/* http: libmicrohttpd glue: capped body reading, dispatch through the router,
 * JSON replies with X-Request-ID. */
#ifndef TASKEXEC_HTTP_H
#define TASKEXEC_HTTP_H

struct server;
struct request;
struct http;

/* http_start: listens on cfg host:port with a thread pool of HTTP_THREADS.
 * Caller stops with http_stop. ERR_IO when it cannot listen (logged). */
int http_start(struct server *srv, struct http **out) __attribute__((warn_unused_result));
/* http_port: the port actually bound (useful with PORT=0). */
int http_port(const struct http *h);
/* http_quiesce: stops accepting new connections; in-flight requests finish. */
void http_quiesce(struct http *h);
/* http_stop: closes every connection and frees; NULL-safe. */
void http_stop(struct http *h);
/* A streamed answer with nothing to send parks its connection (from inside its read
 * callback, which then returns API_STREAM_WAIT) and is woken from any thread when there
 * is more; conn is api_stream.conn. The caller orders the two under its own lock. */
void http_stream_suspend(void *conn);
/* A handler that answers later (a long poll) calls http_request_defer(req) and returns;
 * the connection is parked, holding no thread. Whoever answers sets the reply (api_reply
 * and friends) and calls http_request_resume(req) exactly once; the two calls are ordered
 * by the caller's own lock. */
void http_request_defer(struct request *req);
void http_request_resume(struct request *req);
void http_stream_resume(void *conn);

#endif
