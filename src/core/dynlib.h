/* dynlib: a shared library opened at its first use instead of at start.
 *
 * DESIGN
 * The server links libpq and libcurl by dlopen, not by the executable's DT_NEEDED
 * entries: a server on SQLite whose agents call no model and that sends no webhook never
 * maps them, nor what they pull in (OpenSSL's libcrypto and libssl, Kerberos, LDAP,
 * SASL, libssh2, nghttp2, …), which was 3.3 of its 11.9 MB of idle resident memory
 * (issue 17). A stub module per library (store/pg/libpq_lazy.c, core/curl_lazy.c)
 * defines each function the project calls with the library's own declaration, and
 * forwards it through the pointer this module resolved. The stubs are not exported by
 * the executable (it is not linked -rdynamic), so the library's calls to itself never
 * land in them. */
#ifndef TASKEXEC_DYNLIB_H
#define TASKEXEC_DYNLIB_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

struct dynlib {
    const char *soname;       /* the file dlopen looks for, e.g. "libpq.so.5" */
    const char *package;      /* the Debian package that has it, for the error */
    const char *const *names; /* the functions, in the order of fns */
    void **fns;               /* filled in by the load; the stub module owns the array */
    size_t n;
    pthread_mutex_t lock;
    int state;                /* 0 not tried, 1 loaded, -1 failed (atomic) */
    char err[256];            /* why the load failed */
};

#define DYNLIB_INIT(so, pkg, names_, fns_, n_) \
    {(so), (pkg), (names_), (fns_), (n_), PTHREAD_MUTEX_INITIALIZER, 0, ""}

/* DYNLIB_DEFINE: a stub module's table, from LIST, an X-macro naming each function f it
 * forwards: an index I_f each, their names and pointers, and the struct dynlib var. */
#define DYNLIB_INDEX(f) I_##f,
#define DYNLIB_NAME(f) #f,
#define DYNLIB_DEFINE(var, so, pkg, LIST)                                                 \
    enum { LIST(DYNLIB_INDEX) var##_n };                                                  \
    static const char *const var##_names[var##_n] = {LIST(DYNLIB_NAME)};                  \
    static void *var##_fns[var##_n];                                                      \
    static struct dynlib var = DYNLIB_INIT(so, pkg, var##_names, var##_fns, var##_n)

/* dynlib_load: opens the library and resolves every function, once; later calls return
 * the first one's answer. 0, or ERR_NOTFOUND with l->err saying what is missing (logged
 * once, as an error). The library stays open until exit. Thread-safe. */
int dynlib_load(struct dynlib *l);

/* dynlib_loaded: whether a load has succeeded (it never tries one). */
bool dynlib_loaded(struct dynlib *l);

/* dynlib_try: function i, loading the library if no call has yet; NULL when it cannot be
 * loaded. For the stubs of the functions that make a library's objects (a handle, a
 * connection), which return NULL then, as they do when out of memory. */
void *dynlib_try(struct dynlib *l, size_t i);

/* dynlib_fn: function i, for the stubs of the functions that take such an object: one
 * exists, so the library is loaded. (Called all the same with it missing, it ends the
 * process with l->err on stderr.) */
void *dynlib_fn(struct dynlib *l, size_t i);

#endif
