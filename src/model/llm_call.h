/* llm_call: one recorded call of the LLM gateway as a value: the per-task key that
 * admits it, what is summed up from its response, and how it is shown (CONTRACT.md "LLM
 * gateway").
 *
 * DESIGN
 * A running task's executor gets a key made from its task id and an HMAC of that id
 * under the attempt's lease token: any server can check it against the database, the
 * lease token itself never leaves the server, and the key stops working the moment the
 * attempt ends (the lease is cleared or replaced). What is stored of a call is the
 * request body as the agent sent it and the response as the upstream answered (a
 * stream folded into the one response it stands for); the columns beside them (model,
 * finish reason, token counts) are read out of those once, here. Token ids and logprobs
 * are shown flattened for trainers: completion token ids from vLLM's choices[].token_ids,
 * else from logprob tokens written "token_id:N" (vLLM's return_tokens_as_token_ids);
 * logprobs from choices[].logprobs.content[].logprob. */
#ifndef TASKEXEC_LLM_CALL_H
#define TASKEXEC_LLM_CALL_H

#include "model/task.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#define LLM_KEY_PREFIX "txk-"
#define LLM_KEY_MAC 40                          /* hex digits of the HMAC kept */
#define LLM_KEY_LEN (4 + TASK_ID_LEN + 1 + LLM_KEY_MAC)
#define LLM_KEY_SIZE (LLM_KEY_LEN + 1)

/* llm_task_key: the gateway key of task_id's attempt holding lease_token. */
void llm_task_key(const char *task_id, const char *lease_token, char out[LLM_KEY_SIZE]);
/* llm_key_task: the task id a key names, into task_id. ERR_INVALID when key is not
 * shaped like one (it is then not looked up at all). */
int llm_key_task(const char *key, char task_id[TASK_ID_LEN + 1])
    __attribute__((warn_unused_result));
/* llm_key_matches: whether key is the key of (task_id, lease_token), in constant time. */
bool llm_key_matches(const char *key, const char *task_id, const char *lease_token);

/* llm_gateway_applies: whether a task with these parameters gets the gateway: an
 * upstream is named for it, by agent_config.base_url or the server's default_upstream
 * (LLM_UPSTREAM_URL, NULL or "" when unset). */
bool llm_gateway_applies(const char *default_upstream, const json_t *parameters);

/* What a stored call is: the row the store writes. Strings and JSON are borrowed. */
struct llm_call_rec {
    char id[TASK_ID_LEN + 1];
    const char *task_id;
    int attempt;
    int64_t started_at;             /* us */
    double latency_ms;              /* request received to the last byte answered */
    double first_byte_ms;           /* to the first byte of the answer; < 0 when none */
    int status;                     /* the HTTP status the agent got */
    bool stream, cut;               /* cut: the agent went away before the end */
    const char *upstream;           /* the upstream's base URL */
    const char *model;              /* the response's model, else the request's */
    const char *finish_reason;      /* of choice 0; NULL when none */
    int64_t prompt_tokens, completion_tokens; /* -1 when not reported */
    const char *error;              /* why it failed (ours or the upstream's message), or NULL */
    const json_t *request;          /* the request body as sent */
    const json_t *response;         /* the answer (or error body); NULL when there is none */
};

/* llm_call_summarize: fills model, finish_reason, token counts and error of rec from
 * rec->request and rec->response (borrowing strings from them). error is only set when
 * rec->error is NULL and the response carries one. */
void llm_call_summarize(struct llm_call_rec *rec);

/* llm_call_present: turns a stored row (as store_llm_calls gives it, with "request" and
 * "response") into its API shape in place: adds "message", "usage", and with tokens,
 * "token_ids", "prompt_token_ids", "logprobs"; without tokens, the token ids and
 * logprobs are removed from "response" too (they are most of its size). 0 or
 * ERR_NOMEM. */
int llm_call_present(json_t *row, bool tokens) __attribute__((warn_unused_result));

#endif
