/* thread: see thread.h. */
#include "core/thread.h"
#include "core/err.h"

int thread_start(pthread_mutex_t *lock, pthread_cond_t *wake, pthread_t *thread,
                 void *(*fn)(void *), void *arg)
{
    pthread_mutex_init(lock, NULL);
    pthread_cond_init(wake, NULL);
    if (pthread_create(thread, NULL, fn, arg) != 0) {
        pthread_mutex_destroy(lock);
        pthread_cond_destroy(wake);
        return ERR_IO;
    }
    return 0;
}

void thread_stop(pthread_mutex_t *lock, pthread_cond_t *wake, bool *stop, pthread_t *thread)
{
    pthread_mutex_lock(lock);
    *stop = true;
    pthread_cond_signal(wake);
    pthread_mutex_unlock(lock);
    if (thread)
        pthread_join(*thread, NULL);
    pthread_mutex_destroy(lock);
    pthread_cond_destroy(wake);
}
