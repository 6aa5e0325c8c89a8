/* webhook: delivers the final task JSON to callback_url when a task ends.
 *
 * DESIGN
 * The queue of deliveries is the database (a trigger marks a task's webhook due when it
 * reaches a terminal state), so deliveries survive restarts and are shared by every
 * server: a sender leases due deliveries (SKIP LOCKED on PostgreSQL), POSTs each, and
 * records the outcome; failures are retried with exponential back-off up to
 * WEBHOOK_MAX_ATTEMPTS. One sender thread per server, never an HTTP thread. With
 * WEBHOOK_SECRET, each POST carries X-Taskexec-Signature: sha256=<hex HMAC of the body>. */
#ifndef TASKEXEC_WEBHOOK_H
#define TASKEXEC_WEBHOOK_H

#include <stdbool.h>

struct store;
struct webhook_sender;

/* The settings a sender uses (WEBHOOK_*); the strings are borrowed and must outlive it. */
struct webhook_settings {
    const char *secret;          /* WEBHOOK_SECRET; NULL or "": deliveries are not signed */
    const char *allowed_hosts;   /* WEBHOOK_ALLOWED_HOSTS; NULL or "": every host */
    const char *outbound_allow_hosts; /* OUTBOUND_ALLOW_HOSTS (core/netguard.h) */
    int max_attempts;            /* WEBHOOK_MAX_ATTEMPTS */
    int retry_base_ms;           /* WEBHOOK_RETRY_BASE_MS */
    int timeout_seconds;         /* WEBHOOK_TIMEOUT_SECONDS */
};

/* webhook_start: starts the sender's thread over store (borrowed; it must outlive the
 * sender). set is copied. Caller stops with webhook_stop. ERR_NOMEM, ERR_IO. */
int webhook_start(struct store *store, const struct webhook_settings *set,
                  struct webhook_sender **out) __attribute__((warn_unused_result));
/* webhook_stop: stops the thread (a delivery under way finishes) and frees; NULL-safe. */
void webhook_stop(struct webhook_sender *w);
/* webhook_host_allowed: whether url's host is in the comma-separated allowed list
 * (NULL or empty: every host). */
bool webhook_host_allowed(const char *url, const char *allowed);

#endif
