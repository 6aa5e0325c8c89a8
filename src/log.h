/* log: leveled, thread-safe lines on stderr. */
#ifndef TASKEXEC_LOG_H
#define TASKEXEC_LOG_H

enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARNING, LOG_ERROR };

/* log_set_level: lines below level are dropped. Call before threads start. */
void log_set_level(enum log_level level);
/* log_parse_level: "debug|info|warning|error" (also "warn") to a level; -1 if unknown. */
int log_parse_level(const char *name);

void log_msg(enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARNING, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

/* fatal: log and exit(1); only for start-up failures, never for a request. */
void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#endif
