/* events: live streams (Server-Sent Events) of task state changes, log lines and worker
 * changes.
 *
 * DESIGN
 * The source of events is the database, not this process: triggers write every task and
 * worker transition into the task_events journal and log lines are rows of task_logs, so
 * a server streams what every server (and every external worker) did. One pump thread
 * per server reads both tables after its cursors every EVENTS_POLL_MS (only while someone
 * is listening; a primary-key range read) and fans the frames out to the clients. Event
 * ids are "<journal id>-<log id>", so a client reconnecting with Last-Event-ID, to this
 * server or another, is caught up from the database; beyond what one catch-up reads it
 * gets an `event: reset` (reload your state). Each client has a bounded buffer
 * (SSE_CLIENT_BUFFER_KB): a client that does not read is dropped, never waited for, and
 * a waiting connection is parked (suspended), holding no HTTP thread.
 *
 * PostgreSQL may commit ids out of order; the pump does not step over a missing id until
 * it has been missing for a second (a rolled-back insert), so nothing is skipped. */
#ifndef TASKEXEC_EVENTS_H
#define TASKEXEC_EVENTS_H

#include <stdint.h>

struct server;
struct request;
struct event_bus;

int events_start(struct server *srv, struct event_bus **out) __attribute__((warn_unused_result));
/* events_close_streams: ends every stream cleanly (before the HTTP server stops). */
void events_close_streams(struct event_bus *b);
/* events_stop: stops the pump and frees; call after the HTTP server has stopped. NULL-safe. */
void events_stop(struct event_bus *b);
/* events_prune: drops journal entries older than EVENT_RETENTION_HOURS (housekeeping). */
void events_prune(struct event_bus *b);

/* GET /api/v1/events?types=task,log,worker and GET /api/v1/tasks/{id}/events */
int api_events(struct request *req);
int api_task_events(struct request *req);

#endif
