/* log: leveled, thread-safe lines on stderr. */
#ifndef TASKEXEC_LOG_H
#define TASKEXEC_LOG_H

#include <stdbool.h>

enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARNING, LOG_ERROR };

/* log_set_level: lines below level are dropped. Call before threads start. */
void log_set_level(enum log_level level);
/* log_set_json: one JSON object a line ({"ts","level","msg",...}) instead of text.
 * Call before threads start. */
void log_set_json(bool json);
/* log_parse_level: "debug|info|warning|error" (also "warn") to a level; -1 if unknown. */
int log_parse_level(const char *name);

void log_msg(enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARNING, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

/* log_task: a line about one task; JSON output carries it as "task_id". */
void log_task(enum log_level level, const char *task_id, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* log_request: one line per HTTP request: id, method, path, route template, status, time. */
void log_request(const char *request_id, const char *method, const char *path,
                 const char *route, int status, double ms);

/* fatal: log and exit(1); only for start-up failures, never for a request. */
void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#endif
