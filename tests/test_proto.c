/* Unit tests: the executor's JSON-lines protocol parser. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "model/proto.h"

static struct proto_event parse(const char *line, enum proto_stream s)
{
    struct proto_event ev;

    assert_int_equal(proto_parse_line(line, strlen(line), s, &ev), 0);
    assert_non_null(ev.obj);
    return ev;
}

static const char *str(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static void log_lines(void **state)
{
    struct proto_event ev = parse("{\"type\":\"log\",\"level\":\"WARN\",\"message\":\"disk\","
                                  "\"context\":{\"step\":2}}", PROTO_STDOUT);

    (void)state;
    assert_int_equal(ev.kind, PROTO_LOG);
    assert_int_equal(ev.level, LEVEL_WARNING);
    assert_string_equal(str(ev.obj, "level"), "warning");
    assert_string_equal(str(ev.obj, "message"), "disk");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(ev.obj, "context"),
                                                        "step")), 2);
    json_decref(ev.obj);

    ev = parse("{\"type\":\"log\",\"message\":\"no level\"}", PROTO_STDOUT);
    assert_int_equal(ev.level, LEVEL_INFO);
    assert_true(json_is_object(json_object_get(ev.obj, "context")));
    json_decref(ev.obj);
}

static void message_lines_keep_everything(void **state)
{
    struct proto_event ev = parse(
        "{\"type\":\"message\",\"session_id\":\"s1\",\"step\":3,\"role\":\"assistant\","
        "\"content\":\"exec_shell(\\\"ls\\\")\",\"model\":\"gpt-4o\",\"usage\":{\"total_tokens\":"
        "42},\"tool_calls\":[1]}", PROTO_STDOUT);
    json_t *meta;

    (void)state;
    assert_int_equal(ev.kind, PROTO_MESSAGE);
    assert_string_equal(str(ev.obj, "role"), "assistant");
    assert_string_equal(str(ev.obj, "content"), "exec_shell(\"ls\")");
    assert_string_equal(str(ev.obj, "session_id"), "s1");
    assert_int_equal(json_integer_value(json_object_get(ev.obj, "step")), 3);
    meta = json_object_get(ev.obj, "metadata");
    assert_string_equal(str(meta, "model"), "gpt-4o");
    assert_non_null(json_object_get(meta, "usage"));
    assert_non_null(json_object_get(meta, "tool_calls"));
    assert_null(json_object_get(meta, "type"));
    json_decref(ev.obj);
}

static void result_lines(void **state)
{
    struct proto_event ev = parse("{\"type\":\"result\",\"success\":false,\"output\":null,"
                                  "\"metrics\":{\"steps_taken\":12}}", PROTO_STDOUT);

    (void)state;
    assert_int_equal(ev.kind, PROTO_RESULT);
    assert_true(json_is_false(json_object_get(ev.obj, "success")));
    assert_null(json_object_get(ev.obj, "type"));
    json_decref(ev.obj);
}

/* Anything that is not a well-formed protocol line is kept as a log line. */
static void everything_else_is_kept_as_text(void **state)
{
    const char *lines[] = {
        "plain text",
        "{not json",
        "{\"type\":\"unknown\"}",
        "{\"type\":\"message\",\"role\":\"wizard\",\"content\":\"x\"}",
        "{\"type\":\"message\",\"role\":\"user\",\"step\":\"one\"}",
        "{\"type\":\"result\"}",
        "{\"type\":\"log\",\"message\":3}",
        "{\"type\":\"log\",\"message\":\"a\",\"message\":\"b\"}",
        "[1,2]",
        "",
    };

    (void)state;
    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
        struct proto_event ev = parse(lines[i], PROTO_STDOUT);
        assert_int_equal(ev.kind, PROTO_LOG);
        assert_string_equal(str(ev.obj, "message"), lines[i]);
        assert_string_equal(str(json_object_get(ev.obj, "context"), "stream"), "stdout");
        json_decref(ev.obj);
    }
}

static void stderr_is_never_parsed(void **state)
{
    struct proto_event ev = parse("{\"type\":\"result\",\"success\":true}", PROTO_STDERR);

    (void)state;
    assert_int_equal(ev.kind, PROTO_LOG);
    assert_int_equal(ev.level, LEVEL_WARNING);
    assert_string_equal(str(json_object_get(ev.obj, "context"), "stream"), "stderr");
    json_decref(ev.obj);
}

static void invalid_utf8_is_replaced(void **state)
{
    const char raw[] = "bad \xff\xfe bytes \xe2\x82 and nul";
    struct proto_event ev;

    (void)state;
    assert_int_equal(proto_parse_line(raw, sizeof(raw) - 1, PROTO_STDOUT, &ev), 0);
    assert_int_equal(ev.kind, PROTO_LOG);
    assert_non_null(strstr(str(ev.obj, "message"), "\xef\xbf\xbd"));
    json_decref(ev.obj);

    char with_nul[] = {'a', 0, 'b'};
    char *copy = proto_utf8_copy(with_nul, 3);
    assert_string_equal(copy, "a\xef\xbf\xbd" "b");
    free(copy);
}

static void crlf_is_trimmed(void **state)
{
    struct proto_event ev = parse("{\"type\":\"log\",\"message\":\"m\"}\r", PROTO_STDOUT);

    (void)state;
    assert_int_equal(ev.kind, PROTO_LOG);
    assert_string_equal(str(ev.obj, "message"), "m");
    json_decref(ev.obj);
}

static void level_names(void **state)
{
    (void)state;
    assert_int_equal(proto_level_parse("debug"), LEVEL_DEBUG);
    assert_int_equal(proto_level_parse("Critical"), LEVEL_CRITICAL);
    assert_int_equal(proto_level_parse("fatal"), LEVEL_CRITICAL);
    assert_int_equal(proto_level_parse("loud"), -1);
    assert_string_equal(proto_level_name(LEVEL_ERROR), "error");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(log_lines),
        cmocka_unit_test(message_lines_keep_everything),
        cmocka_unit_test(result_lines),
        cmocka_unit_test(everything_else_is_kept_as_text),
        cmocka_unit_test(stderr_is_never_parsed),
        cmocka_unit_test(invalid_utf8_is_replaced),
        cmocka_unit_test(crlf_is_trimmed),
        cmocka_unit_test(level_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
