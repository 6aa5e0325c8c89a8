/* clock: wall-clock microseconds, monotonic milliseconds, RFC 3339 text. */
#ifndef TASKEXEC_CLOCK_H
#define TASKEXEC_CLOCK_H

#include <stddef.h>
#include <stdint.h>

/* clock_now_us: microseconds since the Unix epoch (UTC). */
int64_t clock_now_us(void);
/* clock_mono_ms: milliseconds of a monotonic clock, for intervals only. */
int64_t clock_mono_ms(void);
struct timespec;
/* clock_deadline: the CLOCK_REALTIME time ms milliseconds from now, for
 * pthread_cond_timedwait. */
void clock_deadline(struct timespec *out, int64_t ms);
/* clock_format: writes us as "YYYY-MM-DDTHH:MM:SS.ffffffZ" into out (at least 32 bytes). */
void clock_format(int64_t us, char *out, size_t size);
/* clock_parse: RFC 3339 text (Z or +hh:mm offset, optional fraction) or a date
 * "YYYY-MM-DD" to microseconds. ERR_INVALID if it is not one. */
int clock_parse(const char *text, int64_t *out) __attribute__((warn_unused_result));

#endif
