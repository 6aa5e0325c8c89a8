/* Unit tests: folding a streamed chat completion (model/llm.c) with chunks in vLLM's and
 * OpenAI's shapes (docs/notes/llm-gateway-shapes.md): content, reasoning, tool calls by
 * index, logprobs and token ids, usage, n > 1, an error mid-stream, and bytes split
 * anywhere. And a recorded call (model/llm_call.c): the task key, what is read out of a
 * response, and how a call is shown. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "core/err.h"
#include "model/llm.h"
#include "model/llm_call.h"

/* A vLLM stream (return_token_ids, logprobs with return_tokens_as_token_ids, a tool
 * call in fragments, include_usage) as the bytes arrive. */
static const char vllm[] =
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,"
    "\"model\":\"qwen\",\"prompt_token_ids\":[1,2,3],\"choices\":[{\"index\":0,\"delta\":"
    "{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n"
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,"
    "\"model\":\"qwen\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning\":\"Pods \"},"
    "\"logprobs\":{\"content\":[{\"token\":\"token_id:10\",\"logprob\":-0.5,\"bytes\":null,"
    "\"top_logprobs\":[]}]},\"token_ids\":[10],\"finish_reason\":null}]}\n\n"
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,"
    "\"model\":\"qwen\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning\":\"first.\","
    "\"content\":\"Let me look\"},\"logprobs\":{\"content\":[{\"token\":\"token_id:11\","
    "\"logprob\":-0.25,\"bytes\":null,\"top_logprobs\":[]}]},\"token_ids\":[11],"
    "\"finish_reason\":null}]}\n\n"
    ": a comment line, ignored\n\n"
    "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{"
    "\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"exec_shell\","
    "\"arguments\":\"{\\\"command\\\": \"}}]},\"token_ids\":[12],\"finish_reason\":null}]}\r\n\r\n"
    "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{"
    "\"index\":0,\"function\":{\"arguments\":\"\\\"kubectl get pods\\\"}\"}}]},\"token_ids\":"
    "[13],\"finish_reason\":\"tool_calls\",\"stop_reason\":null}]}\n\n"
    "data: {\"id\":\"chatcmpl-1\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,"
    "\"completion_tokens\":4,\"total_tokens\":7}}\n\n"
    "data: [DONE]\n\n";

static json_t *fold_all(const char *bytes, size_t step, struct llm_stream *s)
{
    size_t n = strlen(bytes);

    llm_stream_init(s);
    for (size_t i = 0; i < n; i += step)
        assert_int_equal(llm_stream_feed(s, bytes + i, n - i < step ? n - i : step), 0);
    return llm_stream_result(s);
}

static void a_vllm_stream_folds_into_one_response(void **state)
{
    struct llm_stream s;
    json_t *r = fold_all(vllm, sizeof(vllm), &s), *c, *m, *call;

    (void)state;
    assert_true(s.done);
    assert_int_equal(s.chunks, 6);
    assert_int_equal(s.bad, 0);
    assert_string_equal(json_string_value(json_object_get(r, "object")), "chat.completion");
    assert_string_equal(json_string_value(json_object_get(r, "model")), "qwen");
    assert_int_equal(json_array_size(json_object_get(r, "prompt_token_ids")), 3);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(r, "usage"),
                                                        "total_tokens")), 7);
    c = json_array_get(json_object_get(r, "choices"), 0);
    m = json_object_get(c, "message");
    assert_string_equal(json_string_value(json_object_get(m, "role")), "assistant");
    assert_string_equal(json_string_value(json_object_get(m, "content")), "Let me look");
    assert_string_equal(json_string_value(json_object_get(m, "reasoning")), "Pods first.");
    call = json_array_get(json_object_get(m, "tool_calls"), 0);
    assert_string_equal(json_string_value(json_object_get(call, "id")), "call_1");
    assert_string_equal(json_string_value(json_object_get(json_object_get(call, "function"),
                                                          "name")), "exec_shell");
    assert_string_equal(json_string_value(json_object_get(json_object_get(call, "function"),
                                                          "arguments")),
                        "{\"command\": \"kubectl get pods\"}");
    assert_string_equal(json_string_value(json_object_get(c, "finish_reason")), "tool_calls");
    assert_int_equal(json_array_size(json_object_get(c, "token_ids")), 4);
    assert_int_equal(json_array_size(json_object_get(json_object_get(c, "logprobs"), "content")),
                     2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(json_object_get(
        json_object_get(c, "logprobs"), "content"), 1), "token")), "token_id:11");
    json_decref(r);
    llm_stream_reset(&s);
}

static void bytes_split_anywhere_fold_the_same(void **state)
{
    struct llm_stream whole, split;
    json_t *a = fold_all(vllm, sizeof(vllm), &whole);

    (void)state;
    for (size_t step = 1; step < 40; step += 7) {
        json_t *b = fold_all(vllm, step, &split);
        assert_true(json_equal(a, b));
        assert_true(split.done);
        json_decref(b);
        llm_stream_reset(&split);
    }
    json_decref(a);
    llm_stream_reset(&whole);
}

static void choices_interleaved_and_an_error_mid_stream(void **state)
{
    static const char text[] =
        "data: {\"id\":\"x\",\"choices\":[{\"index\":1,\"delta\":{\"content\":\"b\"}}]}\n\n"
        "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n"
        "data: {\"id\":\"x\",\"choices\":[{\"index\":1,\"delta\":{\"content\":\"B\"}}]}\n\n"
        "data: not json\n\n"
        "data: {\"error\":{\"message\":\"engine dead\",\"type\":\"InternalServerError\","
        "\"code\":500}}\n\n";
    struct llm_stream s;
    json_t *r = fold_all(text, 5, &s), *choices = json_object_get(r, "choices");

    (void)state;
    assert_false(s.done);
    assert_int_equal(s.bad, 1);
    assert_string_equal(json_string_value(json_object_get(s.error, "message")), "engine dead");
    assert_int_equal(json_integer_value(json_object_get(json_array_get(choices, 0), "index")),
                     0);
    assert_string_equal(json_string_value(json_object_get(json_object_get(
                            json_array_get(choices, 1), "message"), "content")), "bB");
    json_decref(r);
    llm_stream_reset(&s);
}

static void an_endless_event_is_refused(void **state)
{
    struct llm_stream s;
    char block[4096];
    int rc = 0;

    (void)state;
    memset(block, 'x', sizeof(block));
    llm_stream_init(&s);
    assert_int_equal(llm_stream_feed(&s, "data: ", 6), 0);
    for (size_t sent = 0; rc == 0 && sent <= LLM_EVENT_MAX + sizeof(block); sent += sizeof(block))
        rc = llm_stream_feed(&s, block, sizeof(block));
    assert_int_equal(rc, ERR_TOOBIG);
    llm_stream_reset(&s);
}

static const char task_id[] = "0b7c6a52-4f7e-4d4c-9a55-5f1f3b0e2a10";

static void a_key_admits_its_attempt_only(void **state)
{
    char key[LLM_KEY_SIZE], id[TASK_ID_LEN + 1], bad[LLM_KEY_SIZE + 8];

    (void)state;
    llm_task_key(task_id, "lease-1", key);
    assert_int_equal(strlen(key), LLM_KEY_LEN);
    assert_int_equal(llm_key_task(key, id), 0);
    assert_string_equal(id, task_id);
    assert_true(llm_key_matches(key, task_id, "lease-1"));
    assert_false(llm_key_matches(key, task_id, "lease-2")); /* a retried attempt */
    assert_false(llm_key_matches(key, task_id, NULL));
    assert_false(llm_key_matches(key, task_id, ""));
    assert_null(strstr(key, "lease-1")); /* the lease itself never leaves the server */
    /* Malformed keys are refused before any lookup. */
    const char *const shapes[] = {"", "txk-", "sk-abc", "txk-0b7c6a52", NULL};
    for (const char *const *k = shapes; *k; k++)
        assert_int_equal(llm_key_task(*k, id), ERR_INVALID);
    memcpy(bad, key, sizeof(key));
    bad[LLM_KEY_LEN - 1] = 'Z';                       /* not hex */
    assert_int_equal(llm_key_task(bad, id), ERR_INVALID);
    memcpy(bad, key, sizeof(key));
    bad[4 + 8] = 'x';                                 /* the UUID's first dash */
    assert_int_equal(llm_key_task(bad, id), ERR_INVALID);
    memcpy(bad, key, sizeof(key));
    bad[4 + 3] = 'g';                                 /* not a UUID digit */
    assert_int_equal(llm_key_task(bad, id), ERR_INVALID);
    memcpy(bad, key, sizeof(key));
    memcpy(bad + LLM_KEY_LEN, "00", 3);                 /* too long */
    assert_int_equal(llm_key_task(bad, id), ERR_INVALID);
}

/* The error text of each error body shape seen (docs/notes/llm-gateway-shapes.md §3). */
static void errors_are_read_in_every_shape(void **state)
{
    const char *const bodies[][2] = {
        {"{\"error\":{\"message\":\"nested\",\"type\":\"BadRequestError\",\"code\":400}}",
         "nested"},
        {"{\"object\":\"error\",\"message\":\"flat\",\"type\":\"NotFoundError\",\"code\":404}",
         "flat"},
        {"{\"error\":\"Unauthorized\"}", "Unauthorized"},
        {"{\"choices\":[{\"message\":{\"content\":\"hi\"},\"finish_reason\":\"length\"}],"
         "\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7},\"model\":\"m1\"}",
         NULL},
    };

    (void)state;
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        json_t *req = json_pack("{s:s}", "model", "asked"), *resp = json_loads(bodies[i][0], 0, NULL);
        struct llm_call_rec rec = {.request = req, .response = resp};

        llm_call_summarize(&rec);
        if (bodies[i][1]) {
            assert_string_equal(rec.error, bodies[i][1]);
            assert_string_equal(rec.model, "asked");
            assert_int_equal(rec.prompt_tokens, -1);
        } else {
            assert_null(rec.error);
            assert_string_equal(rec.model, "m1");
            assert_string_equal(rec.finish_reason, "length");
            assert_int_equal(rec.prompt_tokens, 5);
            assert_int_equal(rec.completion_tokens, 7);
        }
        json_decref(req);
        json_decref(resp);
    }
}

static json_t *row_with(const char *response)
{
    return json_pack("{s:s, s:o}", "id", "c1", "response", json_loads(response, 0, NULL));
}

static void token_ids_come_from_vllm_or_from_token_strings(void **state)
{
    json_t *row;

    (void)state;
    /* vLLM's return_token_ids wins; logprobs are flattened in order. */
    row = row_with("{\"prompt_token_ids\":[1,2],\"choices\":[{\"message\":{\"content\":\"a\"},"
                   "\"token_ids\":[7,8],\"logprobs\":{\"content\":[{\"token\":\"a\","
                   "\"logprob\":-0.5},{\"token\":\"b\",\"logprob\":-1}]}}]}");
    assert_int_equal(llm_call_present(row, true), 0);
    assert_int_equal(json_integer_value(json_array_get(json_object_get(row, "token_ids"), 1)), 8);
    assert_int_equal(json_array_size(json_object_get(row, "prompt_token_ids")), 2);
    assert_true(json_real_value(json_array_get(json_object_get(row, "logprobs"), 1)) == -1.0);
    assert_string_equal(json_string_value(json_object_get(json_object_get(row, "message"),
                                                          "content")), "a");
    json_decref(row);
    /* return_tokens_as_token_ids: ids read from "token_id:N". */
    row = row_with("{\"choices\":[{\"logprobs\":{\"content\":[{\"token\":\"token_id:42\","
                   "\"logprob\":-0.1},{\"token\":\"token_id:7\",\"logprob\":-0.2}]}}]}");
    assert_int_equal(llm_call_present(row, true), 0);
    assert_int_equal(json_integer_value(json_array_get(json_object_get(row, "token_ids"), 0)), 42);
    assert_true(json_is_null(json_object_get(row, "prompt_token_ids")));
    json_decref(row);
    /* Text tokens (OpenAI): no ids rather than wrong ones. */
    row = row_with("{\"choices\":[{\"logprobs\":{\"content\":[{\"token\":\"token_id:1\","
                   "\"logprob\":-0.1},{\"token\":\"Hi\",\"logprob\":-0.2}]}}]}");
    assert_int_equal(llm_call_present(row, true), 0);
    assert_true(json_is_null(json_object_get(row, "token_ids")));
    assert_int_equal(json_array_size(json_object_get(row, "logprobs")), 2);
    json_decref(row);
    /* Without tokens they are left out, from the response too; the message stays. */
    row = row_with("{\"prompt_token_ids\":[1],\"choices\":[{\"message\":{\"content\":\"a\"},"
                   "\"token_ids\":[7],\"logprobs\":{\"content\":[]}}]}");
    assert_int_equal(llm_call_present(row, false), 0);
    assert_null(json_object_get(row, "token_ids"));
    assert_null(json_object_get(json_object_get(row, "response"), "prompt_token_ids"));
    assert_null(json_object_get(json_array_get(json_object_get(json_object_get(row, "response"),
                                                               "choices"), 0), "token_ids"));
    assert_string_equal(json_string_value(json_object_get(json_object_get(row, "message"),
                                                          "content")), "a");
    json_decref(row);
    /* A call with no response (refused before any answer). */
    row = json_pack("{s:s, s:n}", "id", "c2", "response");
    assert_int_equal(llm_call_present(row, true), 0);
    assert_true(json_is_null(json_object_get(row, "message")));
    assert_true(json_is_null(json_object_get(row, "token_ids")));
    json_decref(row);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(a_vllm_stream_folds_into_one_response),
        cmocka_unit_test(bytes_split_anywhere_fold_the_same),
        cmocka_unit_test(choices_interleaved_and_an_error_mid_stream),
        cmocka_unit_test(an_endless_event_is_refused),
        cmocka_unit_test(a_key_admits_its_attempt_only),
        cmocka_unit_test(errors_are_read_in_every_shape),
        cmocka_unit_test(token_ids_come_from_vllm_or_from_token_strings),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
