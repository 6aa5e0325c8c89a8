/* Unit tests: folding a streamed chat completion (model/llm.c) with chunks in vLLM's and
 * OpenAI's shapes (docs/notes/llm-gateway-shapes.md): content, reasoning, tool calls by
 * index, logprobs and token ids, usage, n > 1, an error mid-stream, and bytes split
 * anywhere. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "core/err.h"
#include "model/llm.h"

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(a_vllm_stream_folds_into_one_response),
        cmocka_unit_test(bytes_split_anywhere_fold_the_same),
        cmocka_unit_test(choices_interleaved_and_an_error_mid_stream),
        cmocka_unit_test(an_endless_event_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
