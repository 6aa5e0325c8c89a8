/* err: the project's negative error codes and their names. */
#ifndef TASKEXEC_ERR_H
#define TASKEXEC_ERR_H

enum err {
    ERR_OK = 0,
    ERR_NOMEM = -1,     /* allocation failed */
    ERR_INVALID = -2,   /* bad input from a caller or a client */
    ERR_NOTFOUND = -3,  /* no such row, route or file */
    ERR_CONFLICT = -4,  /* the state forbids the change (terminal task, lost lease) */
    ERR_STORE = -5,     /* the database failed */
    ERR_IO = -6,        /* a system call failed */
    ERR_TIMEOUT = -7,   /* a wait ran out */
    ERR_FORBIDDEN = -8, /* the caller does not own the thing it touches */
    ERR_TOOBIG = -9,    /* a size limit was passed */
    ERR_UNAVAILABLE = -10, /* a dependency (the database) is down for now */
    ERR_UNSUPPORTED = -11, /* the backend has no such operation */
};

/* err_str: a short English description of code; never NULL. */
const char *err_str(int code);

#endif
