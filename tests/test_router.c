/* Unit tests: route matching, captures, 405 versus 404, the unprefixed aliases. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>
#include <strings.h>
#include <jansson.h>

#include "http/router.h"

struct rcase {
    const char *method, *path;
    enum router_result want;
    const char *pattern;   /* when found */
    const char *param0;    /* first capture, or NULL */
};

static const struct rcase cases[] = {
    {"GET", "/health", ROUTER_FOUND, "/health", NULL},
    {"POST", "/health", ROUTER_NO_METHOD, NULL, NULL},
    {"GET", "/api/v1/tasks", ROUTER_FOUND, "/api/v1/tasks", NULL},
    {"POST", "/api/v1/tasks", ROUTER_FOUND, "/api/v1/tasks", NULL},
    {"DELETE", "/api/v1/tasks", ROUTER_NO_METHOD, NULL, NULL},
    {"GET", "/api/v1/tasks/stats", ROUTER_FOUND, "/api/v1/tasks/stats", NULL},
    {"GET", "/api/v1/tasks/abc", ROUTER_FOUND, "/api/v1/tasks/{id}", "abc"},
    {"HEAD", "/api/v1/tasks/abc", ROUTER_FOUND, "/api/v1/tasks/{id}", "abc"},
    {"PUT", "/api/v1/tasks/abc/cancel", ROUTER_FOUND, "/api/v1/tasks/{id}/cancel", "abc"},
    {"POST", "/api/v1/tasks/abc/cancel", ROUTER_FOUND, "/api/v1/tasks/{id}/cancel", "abc"},
    {"GET", "/api/v1/tasks/abc/cancel", ROUTER_NO_METHOD, NULL, NULL},
    {"GET", "/api/v1/tasks/abc/logs", ROUTER_FOUND, "/api/v1/tasks/{id}/logs", "abc"},
    {"GET", "/api/v1/tasks/abc/logs/more", ROUTER_NO_PATH, NULL, NULL},
    {"GET", "/api/v1/tasks//logs", ROUTER_NO_PATH, NULL, NULL},
    {"GET", "/api/v1/llm-conversations/stats/summary", ROUTER_FOUND,
     "/api/v1/llm-conversations/stats/summary", NULL},
    {"GET", "/api/v1/llm-conversations/task/t1/conversations", ROUTER_FOUND,
     "/api/v1/llm-conversations/task/{task_id}/conversations", "t1"},
    {"GET", "/api/v1/llm-conversations/c1/messages", ROUTER_FOUND,
     "/api/v1/llm-conversations/{id}/messages", "c1"},
    {"GET", "/api/v1/workers/internal/status", ROUTER_FOUND, "/api/v1/workers/internal/status",
     NULL},
    {"POST", "/api/v1/workers/internal/scale", ROUTER_FOUND, "/api/v1/workers/internal/scale",
     NULL},
    {"GET", "/api/v1/workers/worker-001-kind", ROUTER_FOUND, "/api/v1/workers/{id}",
     "worker-001-kind"},
    {"GET", "/", ROUTER_FOUND, "/", NULL},
    {"POST", "/", ROUTER_NO_METHOD, NULL, NULL},
    {"GET", "/api/v1/events", ROUTER_FOUND, "/api/v1/events", NULL},
    {"GET", "/api/v1/tasks/abc/events", ROUTER_FOUND, "/api/v1/tasks/{id}/events", "abc"},
    {"GET", "/api/v1/tasks/timeseries", ROUTER_FOUND, "/api/v1/tasks/timeseries", NULL},
    {"GET", "/api/v2/tasks", ROUTER_NO_PATH, NULL, NULL},
};

static void matches_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char scratch[256];
        const char *params[API_MAX_PARAMS] = {0};
        const struct route *r = NULL;
        size_t n = 0;
        enum router_result got = router_match(cases[i].method, cases[i].path, scratch, &r,
                                              params, &n);
        if (got != cases[i].want)
            fail_msg("%s %s: got %d, want %d", cases[i].method, cases[i].path, got,
                     cases[i].want);
        if (got != ROUTER_FOUND)
            continue;
        assert_string_equal(r->pattern, cases[i].pattern);
        if (cases[i].param0) {
            assert_int_equal(n, 1);
            assert_string_equal(params[0], cases[i].param0);
        } else {
            assert_int_equal(n, 0);
        }
    }
}

static void normalizes_aliases(void **state)
{
    char out[128];

    (void)state;
    router_normalize("/tasks", out, sizeof(out));
    assert_string_equal(out, "/api/v1/tasks");
    router_normalize("/tasks/abc/logs", out, sizeof(out));
    assert_string_equal(out, "/api/v1/tasks/abc/logs");
    router_normalize("/workers/", out, sizeof(out));
    assert_string_equal(out, "/api/v1/workers");
    router_normalize("/tasksx", out, sizeof(out));
    assert_string_equal(out, "/tasksx");
    router_normalize("/health", out, sizeof(out));
    assert_string_equal(out, "/health");
}

static void every_route_has_a_handler(void **state)
{
    size_t n;
    const struct route *r = router_table(&n);

    (void)state;
    assert_true(n > 20);
    for (size_t i = 0; i < n; i++) {
        assert_non_null(r[i].handler);
        assert_true(r[i].pattern[0] == '/');
    }
}

extern const char openapi_json[];

/* The OpenAPI document and the route table describe the same routes. */
static void openapi_matches_the_routes(void **state)
{
    json_t *doc = json_loads(openapi_json, 0, NULL), *paths, *ops, *op;
    size_t n;
    const struct route *r = router_table(&n);
    const char *path, *method;
    char lower[8];

    (void)state;
    assert_non_null(doc);
    paths = json_object_get(doc, "paths");
    for (size_t i = 0; i < n; i++) {
        size_t k;
        for (k = 0; r[i].method[k] && k < sizeof(lower) - 1; k++)
            lower[k] = (char)(r[i].method[k] | 0x20);
        lower[k] = '\0';
        if (!json_object_get(json_object_get(paths, r[i].pattern), lower))
            fail_msg("%s %s is routed but not in openapi.json", r[i].method, r[i].pattern);
    }
    json_object_foreach(paths, path, ops) {
        json_object_foreach(ops, method, op) {
            bool found = false;
            for (size_t i = 0; i < n && !found; i++)
                found = !strcmp(r[i].pattern, path) && !strcasecmp(r[i].method, method);
            if (!found)
                fail_msg("%s %s is in openapi.json but not routed", method, path);
            assert_non_null(json_object_get(op, "responses"));
        }
    }
    json_decref(doc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(matches_table),
        cmocka_unit_test(normalizes_aliases),
        cmocka_unit_test(every_route_has_a_handler),
        cmocka_unit_test(openapi_matches_the_routes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
