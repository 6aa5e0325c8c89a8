/* thread: the start and stop of a module's background thread, written once.
 *
 * DESIGN
 * A threaded module (the event pump, the session hub, the webhook sender) owns a
 * mutex, a condition variable its thread sleeps on, and a stop flag guarded by that
 * mutex; the thread loops until it sees the flag. These two functions are the life
 * cycle around that loop, so each module writes only its loop. */
#ifndef TASKEXEC_THREAD_H
#define TASKEXEC_THREAD_H

#include <pthread.h>
#include <stdbool.h>

/* thread_start: initialises lock and wake, then starts fn(arg) as *thread. Returns 0,
 * or ERR_IO with lock and wake destroyed again (fn never ran). */
int thread_start(pthread_mutex_t *lock, pthread_cond_t *wake, pthread_t *thread,
                 void *(*fn)(void *), void *arg) __attribute__((warn_unused_result));

/* thread_stop: sets *stop under lock, wakes the thread, joins it (thread NULL: none was
 * started) and destroys lock and wake. The caller frees what holds them. */
void thread_stop(pthread_mutex_t *lock, pthread_cond_t *wake, bool *stop, pthread_t *thread);

#endif
