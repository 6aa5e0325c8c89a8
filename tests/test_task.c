/* Unit tests: task request validation (CONTRACT.md "Tasks"), table-driven. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "core/err.h"
#include "model/task.h"

static const struct task_defaults defs = {.max_steps = 30, .timeout_minutes = 30};

struct bad_case {
    const char *body;
    const char *field;   /* the field the first error must name */
};

static const struct bad_case bad[] = {
    {"[]", "body"},
    {"{}", "problem_id"},
    {"{\"problem_id\": \"\"}", "problem_id"},
    {"{\"problem_id\": 5}", "problem_id"},
    {"{\"problem_id\": \"has space\"}", "problem_id"},
    {"{\"problem_id\": \"a/b\"}", "problem_id"},
    {"{\"problem_id\": \"ok\", \"max_steps\": 0}", "max_steps"},
    {"{\"problem_id\": \"ok\", \"max_steps\": 1001}", "max_steps"},
    {"{\"problem_id\": \"ok\", \"max_steps\": 2.5}", "max_steps"},
    {"{\"problem_id\": \"ok\", \"max_steps\": \"3\"}", "max_steps"},
    {"{\"problem_id\": \"ok\", \"max_steps\": true}", "max_steps"},
    {"{\"problem_id\": \"ok\", \"timeout_minutes\": 0}", "timeout_minutes"},
    {"{\"problem_id\": \"ok\", \"timeout_minutes\": 1441}", "timeout_minutes"},
    {"{\"problem_id\": \"ok\", \"parameters\": {\"timeout\": 0}}", "timeout"},
    {"{\"problem_id\": \"ok\", \"parameters\": {\"timeout\": 86401}}", "timeout"},
    {"{\"problem_id\": \"ok\", \"timeout_minutes\": 5, \"parameters\": {\"timeout\": 60}}",
     "timeout"},
    {"{\"problem_id\": \"ok\", \"agent_config\": []}", "agent_config"},
    {"{\"problem_id\": \"ok\", \"max_retries\": 11}", "max_retries"},
    {"{\"problem_id\": \"ok\", \"max_retries\": -1}", "max_retries"},
    {"{\"problem_id\": \"ok\", \"parameters\": {\"max_retries\": \"2\"}}", "max_retries"},
    {"{\"problem_id\": \"ok\", \"metadata\": \"x\"}", "metadata"},
    {"{\"problem_id\": \"ok\", \"callback_url\": \"ftp://x\"}", "callback_url"},
    {"{\"problem_id\": \"ok\", \"callback_url\": \"http://\"}", "callback_url"},
    {"{\"problem_id\": \"ok\", \"callback_url\": \"http://a b\"}", "callback_url"},
    {"{\"problem_id\": \"ok\", \"priority\": 1000001}", "priority"},
    {"{\"problem_id\": \"ok\", \"priority\": \"high\"}", "priority"},
    {"{\"problem_id\": \"ok\", \"backend_type\": \"\"}", "backend_type"},
    {"{\"problem_id\": \"ok\", \"backend_type\": \"a b\"}", "backend_type"},
    {"{\"problem_id\": \"ok\", \"parameters\": []}", "parameters"},
    {"{\"problem_id\": \"ok\", \"max_steps\": 3, \"parameters\": {\"max_steps\": 4}}",
     "max_steps"},
    {"{\"problem_id\": \"ok\", \"idempotency_key\": \"\"}", "idempotency_key"},
    {"{\"problem_id\": \"ok\", \"mode\": \"turbo\"}", "mode"},
};

static void rejects_bad_requests(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        json_t *body = json_loads(bad[i].body, JSON_DECODE_ANY, NULL), *errors = NULL;
        struct task *t = NULL;

        assert_non_null(body);
        assert_int_equal(task_request_parse(body, NULL, &defs, &t, &errors), ERR_INVALID);
        assert_null(t);
        assert_non_null(errors);
        const char *field = json_string_value(json_object_get(json_array_get(errors, 0), "field"));
        if (strcmp(field, bad[i].field) != 0)
            fail_msg("case %zu (%s): first error names %s, want %s", i, bad[i].body, field,
                     bad[i].field);
        json_decref(errors);
        json_decref(body);
    }
}

static struct task *parse_ok(const char *text, const char *key)
{
    json_t *body = json_loads(text, 0, NULL), *errors = NULL;
    struct task *t = NULL;

    assert_non_null(body);
    assert_int_equal(task_request_parse(body, key, &defs, &t, &errors), 0);
    assert_null(errors);
    json_decref(body);
    return t;
}

static void fills_defaults(void **state)
{
    struct task *t = parse_ok("{\"problem_id\": \"misconfig_app_hotel_res-detection-1\"}", NULL);

    (void)state;
    assert_string_equal(t->problem_id, "misconfig_app_hotel_res-detection-1");
    assert_int_equal(t->status, TASK_PENDING);
    assert_int_equal(t->max_steps, 30);
    assert_int_equal(t->timeout_seconds, 1800);
    assert_int_equal(t->priority, 0);
    assert_string_equal(t->backend_type, "default");
    assert_string_equal(t->mode, "batch");
    assert_null(t->idempotency_key);
    assert_int_equal(json_integer_value(json_object_get(t->parameters, "max_steps")), 30);
    assert_int_equal(json_integer_value(json_object_get(t->parameters, "timeout_minutes")), 30);
    assert_true(json_is_object(json_object_get(t->parameters, "agent_config")));
    task_free(t);
}

static void accepts_top_level_form(void **state)
{
    struct task *t = parse_ok("{\"problem_id\": \"p\", \"agent_config\": {\"model\": \"gpt-4\"},"
                              " \"max_steps\": 12, \"timeout_minutes\": 5, \"priority\": 7,"
                              " \"callback_url\": \"https://h.example/cb\", \"metadata\": "
                              "{\"run\": 3}, \"backend_type\": \"kind\", \"seed\": 9}",
                              NULL);

    (void)state;
    assert_int_equal(t->max_steps, 12);
    assert_int_equal(t->timeout_seconds, 300);
    assert_int_equal(t->priority, 7);
    assert_string_equal(t->callback_url, "https://h.example/cb");
    assert_string_equal(t->backend_type, "kind");
    assert_int_equal(json_integer_value(json_object_get(t->metadata, "run")), 3);
    /* unknown fields are kept in parameters; task fields are not duplicated there */
    assert_int_equal(json_integer_value(json_object_get(t->parameters, "seed")), 9);
    assert_null(json_object_get(t->parameters, "priority"));
    assert_null(json_object_get(t->parameters, "callback_url"));
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(t->parameters, "agent_config"), "model")),
                        "gpt-4");
    task_free(t);
}

static void accepts_parameters_form_with_seconds(void **state)
{
    struct task *t = parse_ok("{\"problem_id\": \"p\", \"parameters\": {\"max_steps\": 3, "
                              "\"timeout\": 90, \"priority\": -2, \"simulate\": {\"steps\": 2}}}",
                              "key-1");

    (void)state;
    assert_int_equal(t->max_steps, 3);
    assert_int_equal(t->timeout_seconds, 90);
    assert_int_equal(t->priority, -2);
    assert_string_equal(t->idempotency_key, "key-1");
    assert_int_equal(json_integer_value(json_object_get(t->parameters, "timeout")), 90);
    assert_true(json_real_value(json_object_get(t->parameters, "timeout_minutes")) == 1.5);
    assert_non_null(json_object_get(t->parameters, "simulate"));
    task_free(t);
}

static void same_value_in_both_places_is_fine(void **state)
{
    struct task *t = parse_ok("{\"problem_id\": \"p\", \"max_steps\": 4, \"parameters\": "
                              "{\"max_steps\": 4}}", NULL);

    (void)state;
    assert_int_equal(t->max_steps, 4);
    task_free(t);
}

static void idempotency_header_and_field_must_agree(void **state)
{
    json_t *body = json_loads("{\"problem_id\": \"p\", \"idempotency_key\": \"a\"}", 0, NULL);
    json_t *errors = NULL;
    struct task *t = NULL;

    (void)state;
    assert_int_equal(task_request_parse(body, "b", &defs, &t, &errors), ERR_INVALID);
    json_decref(errors);
    errors = NULL;
    assert_int_equal(task_request_parse(body, "a", &defs, &t, &errors), 0);
    assert_string_equal(t->idempotency_key, "a");
    task_free(t);
    json_decref(body);
}

static void task_json_has_contract_fields(void **state)
{
    struct task *t = parse_ok("{\"problem_id\": \"p\"}", NULL);
    const char *keys[] = {"id", "problem_id", "status", "priority", "backend_type", "parameters",
                          "metadata", "callback_url", "worker_id", "result", "error",
                          "created_at", "updated_at", "started_at", "completed_at"};
    json_t *o;

    (void)state;
    strcpy(t->id, "550e8400-e29b-41d4-a716-446655440000");
    t->created_at = 1736850600000000; /* 2025-01-14T10:30:00Z */
    t->lease_token = strdup("secret");
    o = task_to_json(t);
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        assert_non_null(json_object_get(o, keys[i]));
    assert_null(json_object_get(o, "lease_token"));
    assert_string_equal(json_string_value(json_object_get(o, "created_at")),
                        "2025-01-14T10:30:00.000000Z");
    assert_true(json_is_null(json_object_get(o, "started_at")));
    json_decref(o);
    task_free(t);
}

static void status_names_round_trip(void **state)
{
    (void)state;
    for (int i = 0; i < TASK_N_STATUS; i++)
        assert_int_equal(task_status_parse(task_status_name((enum task_status)i)), i);
    assert_int_equal(task_status_parse("done"), -1);
    assert_false(task_status_terminal(TASK_RUNNING));
    assert_true(task_status_terminal(TASK_CANCELLED));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(rejects_bad_requests),
        cmocka_unit_test(fills_defaults),
        cmocka_unit_test(accepts_top_level_form),
        cmocka_unit_test(accepts_parameters_form_with_seconds),
        cmocka_unit_test(same_value_in_both_places_is_fine),
        cmocka_unit_test(idempotency_header_and_field_must_agree),
        cmocka_unit_test(task_json_has_contract_fields),
        cmocka_unit_test(status_names_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
