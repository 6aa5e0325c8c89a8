/* gateway: the LLM gateway's engine: forwards an agent's OpenAI-compatible call to its
 * task's upstream and records it (CONTRACT.md "LLM gateway").
 *
 * DESIGN
 * One thread drives every upstream transfer through a libcurl multi handle, so a call
 * waiting on a model holds no HTTP thread: the HTTP layer parks the agent's connection
 * and is told, on the gateway thread, through a sink: a streamed answer (the request
 * asked for stream: true and the upstream answered 200 with text/event-stream) starts,
 * then comes chunk by chunk as the upstream sends it and ends; any other answer (a JSON
 * reply, an upstream error, our own 502 or 504) comes whole at the end. The request
 * body is forwarded as the agent sent it; only the key is ours to replace. A streamed
 * answer is folded as it passes (model/llm.h) into the one response it stands for.
 * When a call ends its record goes to a second thread that writes it to the store, so a
 * slow commit delays no answer; records are written in the order calls end and a
 * record the store refuses is tried again a few times (then logged and counted).
 * libcurl and both threads start with the first call, so a server whose agents never
 * call a model pays nothing for them.
 * Lock order: gateway lock, then nothing (sinks are called without it). */
#ifndef TASKEXEC_GATEWAY_H
#define TASKEXEC_GATEWAY_H

#include "model/task.h"
#include "store/store.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct gateway;
struct metrics;

struct gateway_settings {
    const char *upstream_url;   /* LLM_UPSTREAM_URL, or NULL */
    const char *key_env;        /* LLM_UPSTREAM_KEY_ENV: the variable holding its key */
    const char *key_envs;       /* LLM_KEY_ENVS: more variables agent_config may name */
    int timeout_seconds;        /* LLM_TIMEOUT_SECONDS: a whole call */
    int max_per_task;           /* LLM_MAX_CALLS_PER_TASK: calls of one task at once */
    const char *allow_hosts;    /* OUTBOUND_ALLOW_HOSTS (core/netguard.h) */
};

/* How the agent is answered, called on the gateway thread (never with its lock). */
struct gateway_sink {
    /* A streamed answer begins with status and content type. */
    void (*stream_start)(void *ctx, int status, const char *content_type);
    /* More of a streamed answer. false: the agent is gone (the call is cut). n == 0 only
     * asks whether the agent is still there; it is asked of every call in flight, twice
     * a second, streamed or not. */
    bool (*stream_data)(void *ctx, const char *bytes, size_t n);
    /* The end. For a streamed answer, ok says whether it ended whole (else the agent's
     * stream is to be broken off) and the rest is unused. Otherwise the whole answer:
     * status, content type and body (the callee takes body, malloc'd; NUL-terminated),
     * and retry_after (the upstream's Retry-After, or NULL). */
    void (*finish)(void *ctx, bool ok, int status, const char *content_type, char *body,
                   size_t len, const char *retry_after);
    /* The gateway is done with ctx (after finish). */
    void (*release)(void *ctx);
};

/* One call to forward. Everything is borrowed for the call of gateway_call only. */
struct gateway_req {
    const char *path;           /* "chat/completions" or "models" (after the base URL) */
    const char *method;         /* "POST" or "GET" */
    const char *body;           /* the request as received; NULL for GET */
    size_t len;
    const json_t *request;      /* body parsed (a JSON object), or NULL for GET */
    const struct task *task;    /* the calling task's attempt */
    const char *request_id;     /* sent upstream as X-Request-Id */
    int64_t started_us;         /* when the request arrived */
    bool record;                /* store the call (model calls; not the model list) */
};

/* gateway_new: the engine, with nothing started: libcurl and its two threads start at
 * the first call. Caller frees with gateway_free. */
int gateway_new(struct store *st, struct metrics *m, const struct gateway_settings *s,
                struct gateway **out) __attribute__((warn_unused_result));
/* gateway_call: starts rq; the answer reaches sink with ctx, then release(ctx). On
 * failure the sink is never called and why says what is wrong (for the agent):
 * ERR_INVALID (the task's agent_config names no usable upstream: why), ERR_TOOBIG (the
 * task has LLM_MAX_CALLS_PER_TASK calls running), ERR_UNAVAILABLE (shutting down),
 * ERR_NOMEM. */
int gateway_call(struct gateway *g, const struct gateway_req *rq, const struct gateway_sink *sink,
                 void *ctx, char *why, size_t why_size) __attribute__((warn_unused_result));
/* gateway_task_calls: the recorded calls of a task as the API shows them (with token
 * ids and logprobs when tokens; model/llm_call.h), in the order they started (caller
 * frees). */
int gateway_task_calls(struct store *st, const char *task_id, bool tokens, json_t **out)
    __attribute__((warn_unused_result));
/* gateway_close: ends every call in flight (answered 503, or a stream broken off; each
 * recorded with that reason), refuses new ones, and writes the records still queued. The HTTP
 * layer can then stop. NULL-safe. */
void gateway_close(struct gateway *g);
/* gateway_free: closes (if not yet) and frees; NULL-safe. */
void gateway_free(struct gateway *g);

#endif
