/* llm: OpenAI-compatible chat completions as values, for the LLM gateway (CONTRACT.md
 * "LLM gateway"; not wired to a route yet).
 *
 * DESIGN
 * A streamed call (stream: true) answers with Server-Sent Events, one chat.completion.chunk
 * per event and "data: [DONE]" last. What is stored of it is the one response a
 * non-streamed call would have returned, folded from the chunks by the rules the
 * openai-python client applies (lib/streaming/_deltas.py accumulate_delta, read at v1.98.0
 * and v3.3.1): per choice index, strings of the delta are concatenated (content,
 * reasoning — vLLM's name since 2025 — reasoning_content, refusal), tool calls are merged
 * by their own "index" with their arguments concatenated, logprobs.content and vLLM's
 * token_ids are extended, finish_reason is the last one given; prompt_token_ids come with
 * the first chunk, usage with the last (the "choices": [] chunk of include_usage, or the
 * last of vLLM's continuous_usage_stats). A chunk {"error": …} (an upstream failing
 * mid-stream) is kept beside the partial response. Bytes arrive split anywhere: the
 * stream keeps what is not yet a whole event. The shapes are summarised, with sources, in
 * docs/notes/llm-gateway-shapes.md. */
#ifndef TASKEXEC_LLM_H
#define TASKEXEC_LLM_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#define LLM_EVENT_MAX (8u << 20) /* one SSE event larger than this is an error */

struct llm_stream {
    char *pending;        /* bytes not yet a whole event (owned) */
    size_t len, cap;
    json_t *response;     /* folded so far (owned): a chat.completion */
    json_t *error;        /* the error chunk's "error", if one came (owned) */
    bool done;            /* "data: [DONE]" came */
    size_t chunks;        /* chunks folded */
    size_t bad;           /* events that were not JSON objects (skipped) */
};

/* llm_stream_init: an empty stream; llm_stream_reset frees what it holds. */
void llm_stream_init(struct llm_stream *s);
void llm_stream_reset(struct llm_stream *s);

/* llm_stream_feed: n more bytes of the event stream, folded event by event. 0, ERR_NOMEM,
 * or ERR_TOOBIG when one event passes LLM_EVENT_MAX (the stream is then unusable). */
int llm_stream_feed(struct llm_stream *s, const char *bytes, size_t n)
    __attribute__((warn_unused_result));

/* llm_stream_result: the response folded so far (a new reference), "object":
 * "chat.completion" and choices ordered by index; NULL without memory. */
json_t *llm_stream_result(const struct llm_stream *s);

/* llm_fold_chunk: folds one chunk (a parsed chat.completion.chunk) into response (made
 * when *response is NULL). 0 or ERR_NOMEM. Exposed for tests and for callers that parse
 * events themselves. */
int llm_fold_chunk(json_t **response, const json_t *chunk) __attribute__((warn_unused_result));

#endif
