/* llm_call: see llm_call.h. */
#include "model/llm_call.h"
#include "core/crypto.h"
#include "core/err.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEY_CONTEXT "taskexec-llm-gateway:"

static void mac(const char *task_id, const char *lease_token, char out[CRYPTO_HEX_SHA256])
{
    char data[sizeof(KEY_CONTEXT) + TASK_ID_LEN];
    int n = snprintf(data, sizeof(data), KEY_CONTEXT "%s", task_id);

    crypto_hmac_sha256_hex(lease_token, data, (size_t)n, out);
}

void llm_task_key(const char *task_id, const char *lease_token, char out[LLM_KEY_SIZE])
{
    char hex[CRYPTO_HEX_SHA256];

    mac(task_id, lease_token, hex);
    snprintf(out, LLM_KEY_SIZE, LLM_KEY_PREFIX "%.36s-%.40s", task_id, hex);
}

int llm_key_task(const char *key, char task_id[TASK_ID_LEN + 1])
{
    size_t p = strlen(LLM_KEY_PREFIX);

    if (!key || strlen(key) != LLM_KEY_LEN || strncmp(key, LLM_KEY_PREFIX, p) ||
        key[p + TASK_ID_LEN] != '-')
        return ERR_INVALID;
    for (size_t i = p + TASK_ID_LEN + 1; i < LLM_KEY_LEN; i++)
        if (!strchr("0123456789abcdef", key[i]))
            return ERR_INVALID;
    /* The task id as a canonical UUID, so a made-up key never reaches the database. */
    for (size_t i = 0; i < TASK_ID_LEN; i++) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;

        if (dash ? key[p + i] != '-' : !strchr("0123456789abcdefABCDEF", key[p + i]) ||
                                           !key[p + i])
            return ERR_INVALID;
    }
    memcpy(task_id, key + p, TASK_ID_LEN);
    task_id[TASK_ID_LEN] = '\0';
    return 0;
}

bool llm_key_matches(const char *key, const char *task_id, const char *lease_token)
{
    char want[LLM_KEY_SIZE];

    if (!lease_token || !*lease_token)
        return false;
    llm_task_key(task_id, lease_token, want);
    return crypto_equal(key, want);
}

bool llm_gateway_applies(const char *default_upstream, const json_t *parameters)
{
    const json_t *ac = json_object_get(parameters, "agent_config");

    return (default_upstream && *default_upstream) ||
           json_is_string(json_object_get(ac, "base_url"));
}

/* The text of an error body in any of the shapes seen: OpenAI's and vLLM's nested
 * {"error": {"message"}}, vLLM's older flat {"message"}, and its {"error": "Unauthorized"}. */
static const char *error_text(const json_t *body)
{
    const json_t *e = json_object_get(body, "error");

    if (json_is_string(e))
        return json_string_value(e);
    if (json_is_object(e) && json_is_string(json_object_get(e, "message")))
        return json_string_value(json_object_get(e, "message"));
    if (json_is_string(json_object_get(body, "message")) && !json_object_get(body, "choices"))
        return json_string_value(json_object_get(body, "message"));
    return NULL;
}

static int64_t count_of(const json_t *usage, const char *key)
{
    const json_t *v = json_object_get(usage, key);

    return json_is_integer(v) ? (int64_t)json_integer_value(v) : -1;
}

void llm_call_summarize(struct llm_call_rec *rec)
{
    const json_t *r = rec->response;
    const json_t *c0 = json_array_get(json_object_get(r, "choices"), 0);
    const json_t *usage = json_object_get(r, "usage");

    rec->model = json_string_value(json_object_get(r, "model"));
    if (!rec->model)
        rec->model = json_string_value(json_object_get(rec->request, "model"));
    rec->finish_reason = json_string_value(json_object_get(c0, "finish_reason"));
    rec->prompt_tokens = count_of(usage, "prompt_tokens");
    rec->completion_tokens = count_of(usage, "completion_tokens");
    if (!rec->error && r)
        rec->error = error_text(r);
}

/* Completion token ids of a choice: vLLM's token_ids, else the "token_id:N" tokens of its
 * logprobs. NULL when it has neither (or a token is not in that form). New reference. */
static json_t *token_ids(const json_t *choice)
{
    const json_t *ids = json_object_get(choice, "token_ids"), *e;
    const json_t *content = json_object_get(json_object_get(choice, "logprobs"), "content");
    json_t *out;
    size_t i;

    if (json_is_array(ids))
        return json_deep_copy(ids);
    if (!json_is_array(content) || json_array_size(content) == 0 || !(out = json_array()))
        return NULL;
    json_array_foreach(content, i, e) {
        const char *tok = json_string_value(json_object_get(e, "token"));
        char *end;
        long long id;

        if (!tok || strncmp(tok, "token_id:", 9))
            break;
        id = strtoll(tok + 9, &end, 10);
        if (end == tok + 9 || *end || json_array_append_new(out, json_integer(id)))
            break;
    }
    if (i < json_array_size(content)) {
        json_decref(out);
        return NULL;
    }
    return out;
}

/* The sampled tokens' logprobs of a choice, in order; NULL when it has none. */
static json_t *logprobs(const json_t *choice)
{
    const json_t *content = json_object_get(json_object_get(choice, "logprobs"), "content"), *e;
    json_t *out;
    size_t i;

    if (!json_is_array(content) || !(out = json_array()))
        return NULL;
    json_array_foreach(content, i, e)
        json_array_append_new(out, json_is_number(json_object_get(e, "logprob"))
                                       ? json_real(json_number_value(json_object_get(e, "logprob")))
                                       : json_null());
    return out;
}

/* Token ids and logprobs out of the response (kept in "token_ids" etc. when asked for). */
static void strip_tokens(json_t *response)
{
    json_t *c;
    size_t i;

    json_object_del(response, "prompt_token_ids");
    json_object_del(response, "prompt_logprobs");
    json_array_foreach(json_object_get(response, "choices"), i, c) {
        json_object_del(c, "token_ids");
        if (json_is_object(json_object_get(c, "logprobs")))
            json_object_set_new(c, "logprobs", json_null());
    }
}

int llm_call_present(json_t *row, bool tokens)
{
    json_t *response = json_object_get(row, "response");
    const json_t *c0 = json_array_get(json_object_get(response, "choices"), 0);
    json_t *usage = json_object_get(response, "usage"), *prompt;
    int rc = 0;

    rc |= json_object_set(row, "message", json_object_get(c0, "message") ?: json_null());
    rc |= json_object_set(row, "usage", json_is_object(usage) ? usage : json_null());
    if (tokens) {
        prompt = json_object_get(response, "prompt_token_ids");
        rc |= json_object_set_new(row, "token_ids", token_ids(c0) ?: json_null());
        rc |= json_object_set_new(row, "prompt_token_ids",
                                  json_is_array(prompt) ? json_deep_copy(prompt) : json_null());
        rc |= json_object_set_new(row, "logprobs", logprobs(c0) ?: json_null());
    } else if (json_is_object(response)) {
        /* The row is ours to change, but "message" shares the choice: copy before cutting. */
        json_t *copy = json_deep_copy(response);

        if (!copy)
            return ERR_NOMEM;
        strip_tokens(copy);
        rc |= json_object_set_new(row, "response", copy);
    }
    return rc ? ERR_NOMEM : 0;
}
