/* proto: the executor's JSON-lines protocol (CONTRACT.md "Executors"), one line at a time. */
#ifndef TASKEXEC_PROTO_H
#define TASKEXEC_PROTO_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum proto_kind {
    PROTO_LOG,          /* obj: {"level","message","context"} */
    PROTO_MESSAGE,      /* obj: {"session_id"?, "step"?, "role", "content", "metadata"} */
    PROTO_RESULT,       /* obj: the result line without "type" */
    PROTO_READY,        /* obj: the ready line without "type" (sessions) */
    PROTO_OBSERVATION,  /* obj: the observation line without "type" (sessions) */
};

/* Log levels, ordered so that a filter is a minimum. */
enum proto_level { LEVEL_DEBUG = 0, LEVEL_INFO, LEVEL_WARNING, LEVEL_ERROR, LEVEL_CRITICAL };
#define PROTO_N_LEVELS 5

struct proto_event {
    enum proto_kind kind;
    int level;      /* PROTO_LOG only */
    json_t *obj;    /* owned: json_decref when done */
};

enum proto_stream { PROTO_STDOUT, PROTO_STDERR };

/* proto_parse_line: turns one line (without its newline; need not be NUL-terminated,
 * may hold any bytes) into an event. Anything that is not a well-formed protocol
 * line becomes a PROTO_LOG keeping the text (invalid UTF-8 replaced by U+FFFD) with
 * context {"stream": "stdout"|"stderr"}. Returns 0, or ERR_NOMEM. */
int proto_parse_line(const char *line, size_t len, enum proto_stream stream,
                     struct proto_event *ev) __attribute__((warn_unused_result));

/* proto_event_from_json: validates one posted object as a protocol line of type
 * ("log" or "message"); its "type" may be missing. ERR_INVALID if malformed;
 * on success ev->obj is a new reference (caller json_decref's). */
int proto_event_from_json(json_t *in, const char *type, struct proto_event *ev)
    __attribute__((warn_unused_result));

/* proto_message_tokens: the tokens of a message from its metadata's "usage":
 * total_tokens, else the sum of prompt/completion (or input/output) tokens; -1: none. */
int64_t proto_message_tokens(json_t *metadata);

/* proto_level_name / proto_level_parse: "debug".."critical"; parse gives -1 when unknown
 * (also for NULL) and accepts "warn", "fatal" and any case. */
const char *proto_level_name(int level);
int proto_level_parse(const char *name);

/* proto_utf8_copy: a NUL-terminated copy of len bytes with invalid UTF-8 (and NUL
 * bytes) replaced by U+FFFD. Caller frees. NULL when out of memory. */
char *proto_utf8_copy(const char *s, size_t len);

#endif
