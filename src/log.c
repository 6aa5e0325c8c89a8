/* log: leveled lines on stderr, one write(2) per line so threads never interleave. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

/* The only process-wide setting outside the server context: written once at
 * start-up before any thread exists, read-only afterwards. */
static enum log_level min_level = LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warning", "error"};

void log_set_level(enum log_level level)
{
    min_level = level;
}

int log_parse_level(const char *name)
{
    if (strcasecmp(name, "warn") == 0)
        return LOG_WARNING;
    for (int i = 0; i <= LOG_ERROR; i++)
        if (strcasecmp(name, level_names[i]) == 0)
            return i;
    return -1;
}

static void vlog(enum log_level level, const char *fmt, va_list ap)
{
    char line[2048];
    struct timespec ts;
    struct tm tm;
    size_t n;
    int w;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
    w = snprintf(line + n, sizeof(line) - n, ".%03ldZ %-7s ", ts.tv_nsec / 1000000L,
                 level_names[level]);
    if (w > 0)
        n += (size_t)w;
    w = vsnprintf(line + n, sizeof(line) - n - 1, fmt, ap);
    if (w > 0)
        n += (size_t)w < sizeof(line) - n - 1 ? (size_t)w : sizeof(line) - n - 2;
    line[n++] = '\n';
    /* One write keeps concurrent lines whole; a short write to stderr is not worth retrying. */
    if (write(STDERR_FILENO, line, n) < 0)
        return;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    va_list ap;

    if (level < min_level)
        return;
    va_start(ap, fmt);
    vlog(level, fmt, ap);
    va_end(ap);
}

void fatal(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vlog(LOG_ERROR, fmt, ap);
    va_end(ap);
    exit(1);
}
