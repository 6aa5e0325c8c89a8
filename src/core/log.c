/* log: leveled lines on stderr, one write(2) per line so threads never interleave. */
#include "core/log.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

/* The only process-wide setting outside the server context: written once at
 * start-up before any thread exists, read-only afterwards. */
static enum log_level min_level = LOG_INFO;
static bool json_lines = false;

static const char *const level_names[] = {"debug", "info", "warning", "error"};

void log_set_level(enum log_level level)
{
    min_level = level;
}

void log_set_json(bool json)
{
    json_lines = json;
}

/* Appends s to line as JSON string content (quotes not included). */
static size_t escape(char *line, size_t n, size_t size, const char *s)
{
    for (; *s && n + 7 < size; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            line[n++] = '\\';
            line[n++] = (char)c;
        } else if (c < 0x20) {
            n += (size_t)snprintf(line + n, size - n, "\\u%04x", c);
        } else {
            line[n++] = (char)c;
        }
    }
    return n;
}

/* One line: text "TIME LEVEL msg", or JSON {"ts","level","msg", fields...}; fields
 * are pairs of key and already-JSON value text. */
static void emit(enum log_level level, const char *msg, const char *const *fields, size_t nf)
{
    char line[4096];
    struct timespec ts;
    struct tm tm;
    size_t n;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    if (!json_lines) {
        n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
        n += (size_t)snprintf(line + n, sizeof(line) - n, ".%03ldZ %-7s %s",
                              ts.tv_nsec / 1000000L, level_names[level], msg);
        if (n > sizeof(line) - 2)
            n = sizeof(line) - 2;
    } else {
        n = (size_t)snprintf(line, sizeof(line), "{\"ts\":\"");
        n += strftime(line + n, sizeof(line) - n, "%Y-%m-%dT%H:%M:%S", &tm);
        n += (size_t)snprintf(line + n, sizeof(line) - n, ".%03ldZ\",\"level\":\"%s\",\"msg\":\"",
                              ts.tv_nsec / 1000000L, level_names[level]);
        n = escape(line, n, sizeof(line) - 300, msg);
        line[n++] = '"';
        for (size_t i = 0; i + 1 < nf && n < sizeof(line) - 200; i += 2)
            n += (size_t)snprintf(line + n, sizeof(line) - n - 2, ",\"%s\":%s", fields[i],
                                  fields[i + 1]);
        if (n > sizeof(line) - 3)
            n = sizeof(line) - 3;
        line[n++] = '}';
    }
    line[n++] = '\n';
    /* One write keeps concurrent lines whole; a short write to stderr is not worth retrying. */
    if (write(STDERR_FILENO, line, n) < 0)
        return;
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
    char msg[3000];

    vsnprintf(msg, sizeof(msg), fmt, ap);
    emit(level, msg, NULL, 0);
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

void log_task(enum log_level level, const char *task_id, const char *fmt, ...)
{
    char msg[3000], quoted[64];
    const char *fields[2] = {"task_id", quoted};
    va_list ap;

    if (level < min_level)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(quoted, sizeof(quoted), "\"%.40s\"", task_id);
    emit(level, msg, fields, 2);
}

void log_request(const char *request_id, const char *method, const char *path,
                 const char *route, int status, double ms)
{
    char msg[1200], rid[80], rt[200], st[16], dur[32], meth[24], pth[1100];
    const char *fields[12] = {"request_id", rid, "method", meth, "path", pth, "route", rt,
                              "status", st, "duration_ms", dur};
    enum log_level level = status >= 500 ? LOG_ERROR : LOG_INFO;
    size_t n;

    if (level < min_level)
        return;
    snprintf(msg, sizeof(msg), "%s %s %d %.1fms %s", method, path, status, ms, request_id);
    n = escape(rid + 1, 0, sizeof(rid) - 2, request_id);
    rid[0] = '"';
    rid[n + 1] = '"';
    rid[n + 2] = '\0';
    n = escape(pth + 1, 0, sizeof(pth) - 2, path);
    pth[0] = '"';
    pth[n + 1] = '"';
    pth[n + 2] = '\0';
    snprintf(meth, sizeof(meth), "\"%.16s\"", method);
    snprintf(rt, sizeof(rt), "\"%.190s\"", route ? route : "unmatched");
    snprintf(st, sizeof(st), "%d", status);
    snprintf(dur, sizeof(dur), "%.3f", ms);
    emit(level, msg, fields, 12);
}

void fatal(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vlog(LOG_ERROR, fmt, ap);
    va_end(ap);
    exit(1);
}
