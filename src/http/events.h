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

#include <jansson.h>
#include <stddef.h>
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

/* ---- the pump's ordering rule, on plain data (for the pump and its unit test) ---- */

/* A cursor over one id-ordered table, with the wait for ids committed out of order. */
struct events_cursor {
    int64_t at;                  /* the last id stepped over */
    int64_t gap_since_ms;        /* 0: no gap being waited for */
};

/* One poll's rows: arrays of {"id","ts_us",...} in id order (logs NULL: not read). */
struct events_batch {
    json_t *events, *logs;       /* borrowed */
    size_t n_ev, n_log;          /* the first rows of each that go out now */
};

/* events_batch_accept: how many rows of each table go out now, and the cursors moved
 * past them. A row waits behind a missing id until that id has been missing for a second
 * (GAP_WAIT_MS); and when a table filled the whole poll (batch_max rows: it is behind),
 * the other table's rows later than its last accepted row wait for the next poll, so a
 * task's end never overtakes its own last log lines. */
void events_batch_accept(struct events_batch *bt, struct events_cursor *ev,
                         struct events_cursor *log, size_t batch_max, int64_t now_ms);
/* events_batch_walk: the accepted rows merged by time (an event before a log line of the
 * same time), each passed to emit with its type, kind and the cursors after it. */
void events_batch_walk(const struct events_batch *bt, int64_t ev0, int64_t log0,
                       void (*emit)(void *ud, unsigned type, const char *kind, json_t *row,
                                    int64_t ev, int64_t log),
                       void *ud);

/* The routes (api_events, api_task_events) are declared with the other handlers in api.h. */

#endif
