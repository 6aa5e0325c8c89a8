/* Unit tests: OpenEnv's message mapping (http/openenv_proto.c): requests and the error
 * each malformed one gets (codes and shapes of OpenEnv's server, see the header), the
 * observations we send, and seeded draws. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "http/openenv_proto.h"

static const char *code_of(json_t *error)
{
    return json_string_value(json_object_get(json_object_get(error, "data"), "code"));
}

/* The code the text gets, or its type's name when it is a valid request. */
static const char *parse_result(const char *text)
{
    static const char *const names[] = {"reset", "step", "state", "close"};
    static char code[64];
    json_t *msg = NULL, *data = NULL, *error = NULL;
    int type = openenv_parse(text, strlen(text), &msg, &data, &error);

    if (type >= 0) {
        json_decref(msg);
        return names[type];
    }
    assert_string_equal(json_string_value(json_object_get(error, "type")), "error");
    snprintf(code, sizeof(code), "%s", code_of(error));
    json_decref(error);
    return code;
}

static void requests_and_their_errors(void **state)
{
    (void)state;
    assert_string_equal(parse_result("{\"type\": \"reset\", \"data\": {}}"), "reset");
    assert_string_equal(parse_result("{\"type\": \"reset\"}"), "reset");
    assert_string_equal(parse_result("{\"type\": \"step\", \"data\": {\"action\": \"x\"}}"),
                        "step");
    assert_string_equal(parse_result("{\"type\": \"state\"}"), "state");
    assert_string_equal(parse_result("{\"type\": \"close\"}"), "close");
    assert_string_equal(parse_result("{\"type\": \"reset\""), "INVALID_JSON");
    assert_string_equal(parse_result(""), "INVALID_JSON");
    assert_string_equal(parse_result("{\"type\": \"a\", \"type\": \"b\"}"), "INVALID_JSON");
    assert_string_equal(parse_result("{\"type\": \"teleport\"}"), "UNKNOWN_TYPE");
    assert_string_equal(parse_result("{\"data\": {}}"), "UNKNOWN_TYPE");
    assert_string_equal(parse_result("[1]"), "VALIDATION_ERROR");
    assert_string_equal(parse_result("{\"type\": \"state\", \"data\": {}}"), "VALIDATION_ERROR");
    assert_string_equal(parse_result("{\"type\": \"close\", \"x\": 1}"), "VALIDATION_ERROR");
    assert_string_equal(parse_result("{\"type\": \"reset\", \"data\": 5}"), "VALIDATION_ERROR");
    assert_string_equal(parse_result("{\"type\": \"step\", \"extra\": 1}"), "VALIDATION_ERROR");
}

static const char *action_result(const char *data_text)
{
    static char out[64];
    json_t *data = json_loads(data_text, 0, NULL), *error = NULL;
    const char *a = openenv_action(data, 10, &error);

    snprintf(out, sizeof(out), "%s", a ? a : code_of(error));
    if (error) {
        json_t *errs = json_object_get(json_object_get(error, "data"), "errors");
        assert_true(json_array_size(errs) == 1);
        assert_non_null(json_object_get(json_array_get(errs, 0), "loc"));
    }
    json_decref(error);
    json_decref(data);
    return out;
}

static void step_actions(void **state)
{
    (void)state;
    assert_string_equal(action_result("{\"action\": \"go\"}"), "go");
    assert_string_equal(action_result("{\"action\": \"go\", \"metadata\": {}}"), "go");
    assert_string_equal(action_result("{}"), "VALIDATION_ERROR");
    assert_string_equal(action_result("{\"action\": \"\"}"), "VALIDATION_ERROR");
    assert_string_equal(action_result("{\"action\": 5}"), "VALIDATION_ERROR");
    assert_string_equal(action_result("{\"action\": \"01234567890\"}"), "VALIDATION_ERROR");
    assert_string_equal(action_result("{\"action\": \"go\", \"why\": 1}"), "VALIDATION_ERROR");
    assert_string_equal(action_result("null"), "VALIDATION_ERROR");
}

static void observations_leave_reward_and_done_outside(void **state)
{
    json_t *row = json_pack("{s:s, s:s, s:{s:s}}", "task_description", "Find the fault.",
                            "instructions", "Answer in a code block.", "actions", "submit",
                            "submit(answer)");
    json_t *r = openenv_reset_observation(row, "p-1", "s-1"), *d = json_object_get(r, "data");
    json_t *obs = json_object_get(d, "observation"), *answer, *step;

    (void)state;
    assert_string_equal(json_string_value(json_object_get(r, "type")), "observation");
    assert_string_equal(json_string_value(json_object_get(obs, "text")),
                        "Answer in a code block.\n\nFind the fault.");
    assert_string_equal(json_string_value(json_object_get(obs, "problem_id")), "p-1");
    assert_true(json_is_null(json_object_get(d, "reward")));
    assert_true(json_is_false(json_object_get(d, "done")));
    assert_null(json_object_get(obs, "reward"));
    answer = json_pack("{s:s, s:b, s:f, s:{s:s}}", "observation", "Submission received.",
                       "done", 1, "reward", 1.0, "results", "Detection Accuracy", "Correct");
    step = openenv_step_observation(answer, 3);
    d = json_object_get(step, "data");
    obs = json_object_get(d, "observation");
    assert_int_equal(json_integer_value(json_object_get(obs, "step")), 3);
    assert_non_null(json_object_get(obs, "results"));
    assert_true(json_is_true(json_object_get(d, "done")));
    assert_true(json_real_value(json_object_get(d, "reward")) == 1.0);
    assert_null(json_object_get(obs, "done"));
    json_decref(step);
    json_object_set_new(answer, "done", json_false());
    step = openenv_step_observation(answer, 1);
    assert_null(json_object_get(json_object_get(json_object_get(step, "data"), "observation"),
                                "results"));
    json_decref(step);
    json_decref(answer);
    json_decref(r);
    json_decref(row);
}

static void seeds_draw_the_same_problem(void **state)
{
    json_t *cat = json_pack("[{s:s}, {s:s}, {s:s}]", "id", "a-1", "id", "b-1", "id", "b-2");

    (void)state;
    assert_string_equal(openenv_draw(cat, NULL, 0), "a-1");
    assert_string_equal(openenv_draw(cat, NULL, 4), "b-1");
    assert_string_equal(openenv_draw(cat, "b-*", 4), "b-1");
    assert_string_equal(openenv_draw(cat, "b-*", 5), "b-2");
    assert_string_equal(openenv_draw(cat, "b-*", 5), openenv_draw(cat, "b-*", 5));
    assert_null(openenv_draw(cat, "c-*", 1));
    json_decref(cat);
}

static void a_cut_character_is_dropped(void **state)
{
    char a[] = "caf\xc3\xa9", b[] = "caf\xc3", c[] = "\xe2\x82", d[] = "plain";

    (void)state;
    openenv_utf8_trim(a);
    openenv_utf8_trim(b);
    openenv_utf8_trim(c);
    openenv_utf8_trim(d);
    assert_string_equal(a, "caf\xc3\xa9");   /* whole: kept */
    assert_string_equal(b, "caf");
    assert_string_equal(c, "");
    assert_string_equal(d, "plain");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(requests_and_their_errors),
        cmocka_unit_test(step_actions),
        cmocka_unit_test(observations_leave_reward_and_done_outside),
        cmocka_unit_test(seeds_draw_the_same_problem),
        cmocka_unit_test(a_cut_character_is_dropped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
