/* llm: see llm.h. */
#include "model/llm.h"
#include "core/err.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

void llm_stream_init(struct llm_stream *s)
{
    memset(s, 0, sizeof(*s));
}

void llm_stream_reset(struct llm_stream *s)
{
    free(s->pending);
    json_decref(s->response);
    json_decref(s->error);
    llm_stream_init(s);
}

/* Appends the string value v to o[key] (a missing or null o[key] becomes v). */
static int concat(json_t *o, const char *key, const json_t *v)
{
    const char *add = json_string_value(v), *have = json_string_value(json_object_get(o, key));
    size_t a, h;
    char *joined;
    int rc;

    if (!add)
        return 0;
    if (!have)
        return json_object_set_new(o, key, json_string(add)) ? ERR_NOMEM : 0;
    a = json_string_length(v);
    h = json_string_length(json_object_get(o, key));
    joined = malloc(h + a + 1);
    if (!joined)
        return ERR_NOMEM;
    memcpy(joined, have, h);
    memcpy(joined + h, add, a + 1);
    rc = json_object_set_new(o, key, json_stringn(joined, h + a)) ? ERR_NOMEM : 0;
    free(joined);
    return rc;
}

/* Extends the array o[key] with the items of the array v (o[key] made when missing). */
static int extend(json_t *o, const char *key, const json_t *v)
{
    json_t *have = json_object_get(o, key);

    if (!json_is_array(v))
        return 0;
    if (!json_is_array(have)) {
        have = json_array();
        if (!have || json_object_set_new(o, key, have))
            return ERR_NOMEM;
    }
    return json_array_extend(have, (json_t *)(uintptr_t)v) ? ERR_NOMEM : 0;
}

/* The element of array arr whose "index" is idx, appended as {"index": idx} when none. */
static json_t *by_index(json_t *arr, json_int_t idx)
{
    size_t i;
    json_t *e;

    json_array_foreach(arr, i, e)
        if (json_integer_value(json_object_get(e, "index")) == idx)
            return e;
    e = json_pack("{s:I}", "index", idx);
    if (!e || json_array_append_new(arr, e))
        return NULL;
    return e;
}

/* A tool call fragment folded into the message's tool_calls (merged by its "index"):
 * id and type are taken once, function.name and function.arguments concatenated. */
static int fold_tool_call(json_t *calls, const json_t *frag)
{
    json_t *call = by_index(calls, json_integer_value(json_object_get(frag, "index")));
    json_t *fn = json_object_get(frag, "function"), *have;
    int rc = 0;

    if (!call)
        return ERR_NOMEM;
    for (const char *const *k = (const char *const[]){"id", "type", NULL}; *k && rc == 0; k++)
        if (json_is_string(json_object_get(frag, *k)) && !json_object_get(call, *k))
            rc = json_object_set(call, *k, json_object_get(frag, *k)) ? ERR_NOMEM : 0;
    if (rc == 0 && json_is_object(fn)) {
        have = json_object_get(call, "function");
        if (!have && json_object_set_new(call, "function", have = json_object()))
            return ERR_NOMEM;
        rc = concat(have, "name", json_object_get(fn, "name"));
        if (rc == 0)
            rc = concat(have, "arguments", json_object_get(fn, "arguments"));
    }
    return rc;
}

static int fold_delta(json_t *message, const json_t *delta)
{
    const char *key;
    json_t *v, *calls;
    size_t i;
    int rc = 0;

    json_object_foreach((json_t *)(uintptr_t)delta, key, v) {
        if (rc < 0)
            break;
        if (!strcmp(key, "role")) {
            if (json_is_string(v) && !json_is_string(json_object_get(message, "role")))
                rc = json_object_set(message, "role", v) ? ERR_NOMEM : 0;
        } else if (!strcmp(key, "tool_calls") && json_is_array(v)) {
            calls = json_object_get(message, "tool_calls");
            if (!json_is_array(calls) &&
                json_object_set_new(message, "tool_calls", calls = json_array()))
                return ERR_NOMEM;
            for (i = 0; rc == 0 && i < json_array_size(v); i++)
                rc = fold_tool_call(calls, json_array_get(v, i));
        } else if (json_is_string(v)) {
            rc = concat(message, key, v);
        } else if (!json_is_null(v)) {
            rc = json_object_set(message, key, v) ? ERR_NOMEM : 0;
        }
    }
    return rc;
}

/* One choice of a chunk folded into the response's choice of the same index. */
static int fold_choice(json_t *choices, const json_t *c)
{
    json_t *choice = by_index(choices, json_integer_value(json_object_get(c, "index")));
    json_t *message, *lp = json_object_get(c, "logprobs"), *have;
    int rc = 0;

    if (!choice)
        return ERR_NOMEM;
    message = json_object_get(choice, "message");
    if (!message && json_object_set_new(choice, "message", message = json_object()))
        return ERR_NOMEM;
    if (json_is_object(json_object_get(c, "delta")))
        rc = fold_delta(message, json_object_get(c, "delta"));
    if (rc == 0 && json_is_object(lp)) {
        have = json_object_get(choice, "logprobs");
        if (!json_is_object(have) && json_object_set_new(choice, "logprobs", have = json_object()))
            return ERR_NOMEM;
        rc = extend(have, "content", json_object_get(lp, "content"));
        if (rc == 0)
            rc = extend(have, "refusal", json_object_get(lp, "refusal"));
    }
    if (rc == 0)
        rc = extend(choice, "token_ids", json_object_get(c, "token_ids"));
    for (const char *const *k = (const char *const[]){"finish_reason", "stop_reason", NULL};
         *k && rc == 0; k++)
        if (json_object_get(c, *k) && !json_is_null(json_object_get(c, *k)))
            rc = json_object_set(choice, *k, json_object_get(c, *k)) ? ERR_NOMEM : 0;
    return rc;
}

int llm_fold_chunk(json_t **response, const json_t *chunk)
{
    json_t *r = *response, *choices, *v;
    const char *const first[] = {"id", "created", "model", "prompt_token_ids"};
    size_t i;
    int rc = 0;

    if (!r && !(r = *response = json_pack("{s:s, s:[]}", "object", "chat.completion",
                                           "choices")))
        return ERR_NOMEM;
    for (i = 0; i < sizeof(first) / sizeof(first[0]); i++)
        if ((v = json_object_get(chunk, first[i])) && !json_is_null(v) &&
            !json_object_get(r, first[i]) && json_object_set(r, first[i], v))
            return ERR_NOMEM;
    /* The last fingerprint and usage given win (usage comes last, or on every chunk). */
    for (const char *const *k = (const char *const[]){"system_fingerprint", "usage", NULL}; *k;
         k++)
        if ((v = json_object_get(chunk, *k)) && !json_is_null(v) && json_object_set(r, *k, v))
            return ERR_NOMEM;
    choices = json_object_get(r, "choices");
    for (i = 0; rc == 0 && i < json_array_size(json_object_get(chunk, "choices")); i++)
        rc = fold_choice(choices, json_array_get(json_object_get(chunk, "choices"), i));
    return rc;
}

/* One whole event (its lines, without the blank line that ended it). */
static int event(struct llm_stream *s, char *text)
{
    char *data = NULL, *line, *save = NULL;
    size_t dlen = 0;
    json_t *chunk;
    int rc = 0;

    /* Its data lines, joined with newlines (SSE); other fields and comments are not ours. */
    for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        size_t n = strlen(line);
        char *grown;

        if (n && line[n - 1] == '\r')
            line[--n] = '\0';
        if (strncmp(line, "data:", 5))
            continue;
        line += line[5] == ' ' ? 6 : 5;
        n = strlen(line);
        grown = realloc(data, dlen + n + 2);
        if (!grown) {
            free(data);
            return ERR_NOMEM;
        }
        data = grown;
        if (dlen)
            data[dlen++] = '\n';
        memcpy(data + dlen, line, n + 1);
        dlen += n;
    }
    if (!data)
        return 0;
    if (!strcmp(data, "[DONE]")) {
        s->done = true;
    } else if (!(chunk = json_loadb(data, dlen, 0, NULL)) || !json_is_object(chunk)) {
        json_decref(chunk);
        s->bad++;
    } else {
        if (json_object_get(chunk, "error")) {
            json_decref(s->error);
            s->error = json_incref(json_object_get(chunk, "error"));
        } else {
            rc = llm_fold_chunk(&s->response, chunk);
            s->chunks++;
        }
        json_decref(chunk);
    }
    free(data);
    return rc;
}

/* Where the first event in p[0..n) ends (after its blank line), or 0 when none does. */
static size_t event_end(const char *p, size_t n)
{
    for (size_t i = 1; i < n; i++) {
        if (p[i] != '\n')
            continue;
        if (p[i - 1] == '\n')
            return i + 1;
        if (i >= 2 && p[i - 1] == '\r' && p[i - 2] == '\n')
            return i + 1;
    }
    return 0;
}

int llm_stream_feed(struct llm_stream *s, const char *bytes, size_t n)
{
    size_t end;
    int rc = 0;

    if (s->len + n + 1 > s->cap) {
        size_t cap = s->cap ? s->cap : 4096;
        char *grown;

        while (cap < s->len + n + 1)
            cap *= 2;
        if (cap > LLM_EVENT_MAX * 2)
            return ERR_TOOBIG;
        if (!(grown = realloc(s->pending, cap)))
            return ERR_NOMEM;
        s->pending = grown;
        s->cap = cap;
    }
    memcpy(s->pending + s->len, bytes, n);
    s->len += n;
    s->pending[s->len] = '\0';
    while (rc == 0 && (end = event_end(s->pending, s->len))) {
        char keep = s->pending[end];

        s->pending[end] = '\0';
        rc = event(s, s->pending); /* strtok_r writes into it: this event only */
        s->pending[end] = keep;
        memmove(s->pending, s->pending + end, s->len - end + 1);
        s->len -= end;
    }
    if (rc == 0 && s->len > LLM_EVENT_MAX)
        rc = ERR_TOOBIG;
    return rc;
}

json_t *llm_stream_result(const struct llm_stream *s)
{
    json_t *r = s->response ? json_deep_copy(s->response)
                            : json_pack("{s:s, s:[]}", "object", "chat.completion", "choices");
    json_t *choices = json_object_get(r, "choices");
    size_t n = json_array_size(choices);

    /* Choices in index order (they arrive interleaved when n > 1). */
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0; j--) {
            json_t *a = json_array_get(choices, j - 1), *b = json_array_get(choices, j);
            if (json_integer_value(json_object_get(a, "index")) <=
                json_integer_value(json_object_get(b, "index")))
                break;
            json_incref(a);
            json_array_set(choices, j - 1, b);
            json_array_set_new(choices, j, a);
        }
    return r;
}
