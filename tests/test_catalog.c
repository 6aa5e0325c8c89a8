/* Unit tests: the problem catalog (built-in table, PROBLEMS_FILE, the runner's listing)
 * and the settings that are paths. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/catalog.h"
#include "core/config.h"

static const char *field(const json_t *catalog, const char *id, const char *key)
{
    return json_string_value(json_object_get(catalog_find(catalog, id), key));
}

static void builtin_table_has_each_application(void **state)
{
    json_t *c = catalog_load(NULL);
    static const char *const rows[][3] = {
        /* each from AIOpsLab's registry: the problem's base task deploys this app */
        {"auth_miss_mongodb-detection-1", "SocialNetwork", "test-social-network"},
        {"revoke_auth_mongodb-mitigation-2", "HotelReservation", "test-hotel-reservation"},
        {"redeploy_without_PV-analysis-1", "HotelReservation", "test-hotel-reservation"},
        {"container_kill-detection", "HotelReservation", "test-hotel-reservation"},
        {"k8s_target_port-misconfig-analysis-3", "SocialNetwork", "test-social-network"},
        {"noop_detection_astronomy_shop-1", "AstronomyShop", "astronomy-shop"},
    };

    (void)state;
    assert_non_null(c);
    assert_int_equal(json_array_size(c), 89);
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        assert_string_equal(field(c, rows[i][0], "application"), rows[i][1]);
        assert_string_equal(field(c, rows[i][0], "namespace"), rows[i][2]);
    }
    assert_string_equal(field(c, "flower_node_stop-detection", "application"), "Flower");
    assert_null(field(c, "flower_node_stop-detection", "namespace"));
    assert_string_equal(field(c, "container_kill-detection", "task_type"), "detection");
    json_decref(c);
}

static void problems_file_fills_in_bare_ids(void **state)
{
    char path[] = "/tmp/taskexec-catalog-XXXXXX";
    int fd = mkstemp(path);
    FILE *f = fdopen(fd, "w");
    json_t *c;

    (void)state;
    fputs("# mine\nauth_miss_mongodb-detection-1\nmy-own-detection-1 MyApp my-ns  # x\n"
          "bare-unknown-1\n\n", f);
    fclose(f);
    c = catalog_load(path);
    unlink(path);
    assert_non_null(c);
    assert_int_equal(json_array_size(c), 3);
    assert_string_equal(field(c, "auth_miss_mongodb-detection-1", "application"),
                        "SocialNetwork");
    assert_string_equal(field(c, "my-own-detection-1", "namespace"), "my-ns");
    assert_null(field(c, "bare-unknown-1", "application"));
    assert_null(catalog_load("/nonexistent/problems.txt"));
    json_decref(c);
}

static void runner_listing_takes_objects_and_strings(void **state)
{
    json_t *items = json_loads("[\"revoke_auth_mongodb-detection-1\", {\"id\": \"x-analysis-1\","
                               " \"application\": \"A\", \"namespace\": \"ns-a\"}, "
                               "{\"id\": \"bad id\"}, 7]", 0, NULL);
    json_t *c = catalog_from_list(items), *ns;
    size_t i;
    json_t *v;
    int hotel = 0, infra = 0;

    (void)state;
    assert_int_equal(json_array_size(c), 2);
    assert_string_equal(field(c, "revoke_auth_mongodb-detection-1", "application"),
                        "HotelReservation");
    assert_string_equal(field(c, "x-analysis-1", "task_type"), "analysis");
    json_array_append_new(items, json_string("misconfig_app_hotel_res-detection-1"));
    json_decref(c);
    c = catalog_from_list(items);
    ns = catalog_namespaces(c);
    json_array_foreach(ns, i, v) {
        hotel += !strcmp(json_string_value(v), "test-hotel-reservation");
        infra += !strcmp(json_string_value(v), "openebs") || !strcmp(json_string_value(v),
                                                                      "observe");
    }
    assert_int_equal(hotel, 1); /* distinct */
    assert_int_equal(infra, 2);
    assert_int_equal(json_array_size(ns), 4);
    json_decref(ns);
    json_decref(c);
    json_decref(items);
}

static void paths_are_absolute_and_grace_follows_the_executor(void **state)
{
    struct config cfg;
    char cwd[4096], want[4200];
    char *argv[] = {"--work-dir", "./data/w", "--aiopslab-python", "venv/bin/python",
                    "--executor", "aiopslab"};

    (void)state;
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    unsetenv("EXEC_GRACE_SECONDS");
    assert_int_equal(config_load(&cfg, 6, argv), 0);
    snprintf(want, sizeof(want), "%s/data/w", cwd);
    assert_string_equal(cfg.work_dir, want);
    snprintf(want, sizeof(want), "%s/venv/bin/python", cwd);
    assert_string_equal(cfg.aiopslab_python, want);
    assert_int_equal(cfg.exec_grace_seconds, 300);
    config_reset(&cfg);
    assert_int_equal(config_load(&cfg, 2, argv), 0);
    assert_string_equal(cfg.aiopslab_python, "python3"); /* a name on PATH stays one */
    assert_int_equal(cfg.exec_grace_seconds, 5);
    config_reset(&cfg);
    char *grace[] = {"--executor", "aiopslab", "--exec-grace-seconds", "0"};
    assert_int_equal(config_load(&cfg, 4, grace), 0);
    assert_int_equal(cfg.exec_grace_seconds, 0);
    config_reset(&cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(builtin_table_has_each_application),
        cmocka_unit_test(problems_file_fills_in_bare_ids),
        cmocka_unit_test(runner_listing_takes_objects_and_strings),
        cmocka_unit_test(paths_are_absolute_and_grace_follows_the_executor),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
