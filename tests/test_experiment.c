/* Unit tests: experiment specs (model/experiment.c): validation naming the field, glob
 * expansion over the catalog, the task cap, and the slots' tasks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "core/err.h"
#include "model/experiment.h"

static const struct task_defaults defs = {.max_steps = 30, .timeout_minutes = 30,
                                          .max_retries = 2};

static json_t *catalog(void)
{
    return json_pack("[{s:s}, {s:s}, {s:s}, {s:s}]", "id", "misconfig_app_hotel_res-detection-1",
                     "id", "misconfig_app_hotel_res-localization-1", "id",
                     "k8s_target_port-misconfig-detection-1", "id", "noop_detection_hotel-1");
}

/* The first error's field of body, or "" when it parsed. */
static void expect_field(const char *body_text, int max_tasks, const char *field)
{
    json_t *cat = catalog(), *body = json_loads(body_text, 0, NULL), *errors = NULL;
    struct experiment_spec s;
    int rc = experiment_spec_parse(body, cat, max_tasks, &defs, &s, &errors);

    assert_int_equal(rc, ERR_INVALID);
    assert_string_equal(json_string_value(json_object_get(json_array_get(errors, 0), "field")),
                        field);
    json_decref(errors);
    json_decref(body);
    json_decref(cat);
}

static void bad_specs_name_their_field(void **state)
{
    (void)state;
    expect_field("[]", 100, "body");
    expect_field("{\"problems\": [\"misconfig_*\"]}", 100, "name");
    expect_field("{\"name\": \"x\"}", 100, "problems");
    expect_field("{\"name\": \"x\", \"problems\": []}", 100, "problems");
    expect_field("{\"name\": \"x\", \"problems\": [\"nothing_*\"]}", 100, "problems");
    expect_field("{\"name\": \"x\", \"problems\": [\"misconfig_*\"], \"attempts\": 0}", 100,
                 "attempts");
    expect_field("{\"name\": \"x\", \"problems\": [\"misconfig_*\"], \"attempts\": 101}", 100,
                 "attempts");
    expect_field("{\"name\": \"x\", \"problems\": [\"misconfig_*\"], \"agent_configs\": []}",
                 100, "agent_configs");
    expect_field("{\"name\": \"x\", \"problems\": [\"misconfig_*\"], \"agent_configs\": [1]}",
                 100, "agent_configs");
    expect_field("{\"name\": \"x\", \"problems\": [\"misconfig_*\"], \"max_steps\": 0}", 100,
                 "max_steps");
    expect_field("{\"name\": \"x\", \"problems\": [\"misconfig_*\"], \"max_retries\": 11}", 100,
                 "max_retries");
    expect_field("{\"name\": \"x\", \"problems\": [\"misconfig_*\"], \"callback_url\": \"x\"}",
                 100, "callback_url");
    /* 2 problems x 2 configs x 3 attempts = 12 > 10 */
    expect_field("{\"name\": \"x\", \"problems\": [\"misconfig_*\"], \"agent_configs\": [{}, {}],"
                 " \"attempts\": 3}", 10, "problems");
}

static void globs_expand_once_in_catalog_order_and_slots_become_tasks(void **state)
{
    json_t *cat = catalog(), *errors = NULL;
    json_t *body = json_loads("{\"name\": \"sweep\", \"problems\": [\"*detection*\", "
                              "\"misconfig_app_hotel_res-detection-1\"], \"agent_configs\": "
                              "[{\"model\": \"a\", \"custom\": 1}, {\"model\": \"b\"}], "
                              "\"attempts\": 2, \"max_steps\": 7, \"max_retries\": 0, "
                              "\"parameters\": {\"simulate\": {\"steps\": 2}}}", 0, NULL);
    struct experiment_spec s;
    struct task *t;

    (void)state;
    assert_int_equal(experiment_spec_parse(body, cat, 100, &defs, &s, &errors), 0);
    assert_int_equal(json_array_size(s.problems), 3);
    assert_string_equal(json_string_value(json_array_get(s.problems, 0)),
                        "misconfig_app_hotel_res-detection-1");
    assert_string_equal(json_string_value(json_array_get(s.problems, 2)),
                        "noop_detection_hotel-1");
    assert_int_equal(experiment_task_count(&s), 12);
    /* slot 7: problem 1, config 1, attempt 2 */
    t = experiment_slot_task(&s, "11111111-1111-1111-1111-111111111111", 7, &defs);
    assert_non_null(t);
    assert_string_equal(t->problem_id, "k8s_target_port-misconfig-detection-1");
    assert_string_equal(t->experiment_id, "11111111-1111-1111-1111-111111111111");
    assert_int_equal(json_integer_value(json_object_get(t->slot, "agent_config_index")), 1);
    assert_int_equal(json_integer_value(json_object_get(t->slot, "attempt")), 2);
    assert_int_equal(t->max_steps, 7);
    assert_int_equal(t->max_retries, 0);
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(t->parameters, "agent_config"), "model")), "b");
    assert_non_null(json_object_get(json_object_get(t->parameters, "simulate"), "steps"));
    task_free(t);
    /* unknown fields in a config are kept as given */
    t = experiment_slot_task(&s, "11111111-1111-1111-1111-111111111111", 0, &defs);
    assert_int_equal(json_integer_value(json_object_get(
                         json_object_get(t->parameters, "agent_config"), "custom")), 1);
    task_free(t);
    assert_null(experiment_slot_task(&s, "x", 12, &defs));
    experiment_spec_reset(&s);
    json_decref(body);
    json_decref(cat);
}

static void stored_spec_round_trips(void **state)
{
    json_t *cat = catalog(), *errors = NULL, *stored;
    json_t *body = json_loads("{\"name\": \"n\", \"problems\": [\"noop_*\"]}", 0, NULL);
    struct experiment_spec s, back;
    struct task *t;

    (void)state;
    assert_int_equal(experiment_spec_parse(body, cat, 100, &defs, &s, &errors), 0);
    stored = experiment_spec_to_json(&s);
    assert_int_equal(experiment_spec_from_json(stored, &back), 0);
    assert_int_equal(experiment_task_count(&back), 1);
    t = experiment_task_for(&back, "e", "noop_detection_hotel-1", 0, 2, &defs);
    assert_non_null(t);
    assert_int_equal(t->max_retries, 2);
    task_free(t);
    assert_null(experiment_task_for(&back, "e", "noop_detection_hotel-1", 1, 1, &defs));
    experiment_spec_reset(&s);
    experiment_spec_reset(&back);
    json_decref(stored);
    json_decref(body);
    json_decref(cat);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bad_specs_name_their_field),
        cmocka_unit_test(globs_expand_once_in_catalog_order_and_slots_become_tasks),
        cmocka_unit_test(stored_spec_round_trips),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
