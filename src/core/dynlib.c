/* dynlib: see dynlib.h. */
#include "core/dynlib.h"
#include "core/err.h"
#include "core/log.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

static int load_locked(struct dynlib *l)
{
    void *h = dlopen(l->soname, RTLD_NOW | RTLD_LOCAL);

    if (!h) {
        snprintf(l->err, sizeof(l->err), "%s cannot be loaded (Debian package %s): %s",
                 l->soname, l->package, dlerror());
        return ERR_NOTFOUND;
    }
    for (size_t i = 0; i < l->n; i++) {
        if (!(l->fns[i] = dlsym(h, l->names[i]))) {
            snprintf(l->err, sizeof(l->err), "%s has no %s: a version too old",
                     l->soname, l->names[i]);
            dlclose(h);
            return ERR_NOTFOUND;
        }
    }
    return 0;
}

int dynlib_load(struct dynlib *l)
{
    int state = __atomic_load_n(&l->state, __ATOMIC_ACQUIRE);

    if (state)
        return state > 0 ? 0 : ERR_NOTFOUND;
    pthread_mutex_lock(&l->lock);
    if (!(state = l->state)) {
        state = load_locked(l) == 0 ? 1 : -1;
        __atomic_store_n(&l->state, state, __ATOMIC_RELEASE);
        if (state < 0)
            log_error("%s", l->err);
    }
    pthread_mutex_unlock(&l->lock);
    return state > 0 ? 0 : ERR_NOTFOUND;
}

bool dynlib_loaded(struct dynlib *l)
{
    return __atomic_load_n(&l->state, __ATOMIC_ACQUIRE) > 0;
}

void *dynlib_try(struct dynlib *l, size_t i)
{
    return dynlib_load(l) == 0 ? l->fns[i] : NULL;
}

void *dynlib_fn(struct dynlib *l, size_t i)
{
    if (__atomic_load_n(&l->state, __ATOMIC_ACQUIRE) <= 0 && dynlib_load(l) < 0) {
        fprintf(stderr, "taskexec: %s\n", l->err);
        abort();
    }
    return l->fns[i];
}
