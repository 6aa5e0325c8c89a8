/* buf: a growable byte buffer with a hard size cap, always NUL-terminated. */
#ifndef TASKEXEC_BUF_H
#define TASKEXEC_BUF_H

#include <stddef.h>

struct buf {
    char *data;   /* NUL-terminated when non-NULL; owned by the buf */
    size_t len;   /* bytes used, not counting the NUL */
    size_t cap;   /* bytes allocated */
    size_t max;   /* len never exceeds this */
};

/* buf_init: an empty buffer that may hold up to max bytes. Allocates nothing. */
void buf_init(struct buf *b, size_t max);
/* buf_reset: frees the storage; the buffer is empty and reusable. */
void buf_reset(struct buf *b);
/* buf_append: adds n bytes. ERR_TOOBIG past max or ERR_NOMEM; then b is unchanged. */
int buf_append(struct buf *b, const void *p, size_t n) __attribute__((warn_unused_result));
/* buf_appendf: printf-style append, same errors as buf_append. */
int buf_appendf(struct buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), warn_unused_result));
/* buf_consume: drops the first n bytes (n <= len). */
void buf_consume(struct buf *b, size_t n);
/* buf_steal: hands the data to the caller (free() it) and leaves b empty. */
char *buf_steal(struct buf *b);

#endif
