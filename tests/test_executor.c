/* Unit tests: the executor table agrees with the settings table's EXECUTOR values; the
 * enumerated settings are refused by the table itself; task modes round-trip. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "core/err.h"
#include "exec/executor.h"
#include "model/task.h"

/* Loads the settings with one variable set (the rest from defaults). */
static int load_with(const char *name, const char *value, struct config *cfg)
{
    int rc;

    setenv(name, value, 1);
    rc = config_load(cfg, 0, NULL);
    unsetenv(name);
    return rc;
}

static void every_allowed_executor_is_in_the_table(void **state)
{
    static const char *const names[] = {"simulated", "command", "aiopslab", "noop"};
    struct config cfg;

    (void)state;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        const struct executor *e = executor_find(names[i]);
        assert_non_null(e);
        assert_string_equal(e->name, names[i]);
        assert_int_equal(load_with("EXECUTOR", names[i], &cfg), 0);
        assert_ptr_equal(executor_find(cfg.executor), e);
        config_reset(&cfg);
    }
    assert_int_equal(executor_find("aiopslab")->start, EXECUTOR_START_RUNNER);
    assert_true(executor_find("aiopslab")->touches_cluster);
    assert_int_equal(executor_find("noop")->start, EXECUTOR_START_NONE);
    assert_null(executor_find("magic"));
    assert_null(executor_find(NULL));
}

static void enumerated_settings_are_checked_by_the_table(void **state)
{
    static const struct { const char *name, *value; int rc; } cases[] = {
        {"EXECUTOR", "magic", ERR_INVALID},
        {"EXECUTOR", "Simulated", ERR_INVALID},
        {"LOG_LEVEL", "loud", ERR_INVALID},
        {"LOG_LEVEL", "WARN", 0},
        {"LOG_LEVEL", "Debug", 0},
        {"LOG_FORMAT", "xml", ERR_INVALID},
        {"LOG_FORMAT", "json", 0},
        {"BACKEND_PROVISION", "kind", 0},
        {"BACKEND_PROVISION", "docker", ERR_INVALID},
        {"PROBLEM_VALIDATION", "strict", 0},
        {"PROBLEM_VALIDATION", "STRICT", ERR_INVALID},
    };
    struct config cfg;

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int rc = load_with(cases[i].name, cases[i].value, &cfg);
        if (rc != cases[i].rc)
            fail_msg("%s=%s: %d, expected %d", cases[i].name, cases[i].value, rc, cases[i].rc);
        config_reset(&cfg);
    }
}

static void task_modes_round_trip(void **state)
{
    struct task t = {0};

    (void)state;
    assert_int_equal(task_mode_parse("batch"), TASK_BATCH);
    assert_int_equal(task_mode_parse("interactive"), TASK_INTERACTIVE);
    assert_int_equal(task_mode_parse("Interactive"), -1);
    assert_string_equal(task_mode_name(TASK_INTERACTIVE), "interactive");
    assert_int_equal(task_mode_of(&t), TASK_BATCH); /* unset */
    t.mode = "interactive";
    assert_int_equal(task_mode_of(&t), TASK_INTERACTIVE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_allowed_executor_is_in_the_table),
        cmocka_unit_test(enumerated_settings_are_checked_by_the_table),
        cmocka_unit_test(task_modes_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
