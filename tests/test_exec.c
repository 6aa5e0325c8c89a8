/* Unit tests: executor child processes (pipes, lines, stop, timeout, groups, limits). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/err.h"
#include "exec/exec.h"

extern char **environ;

struct sink {
    json_t *events;           /* [{"kind", "obj"}] */
    enum exec_stop stop_now;
    int64_t stop_after_ms;    /* mono time, 0: never */
};

static void on_event(void *ctx, struct proto_event *ev)
{
    struct sink *s = ctx;

    json_array_append_new(s->events, json_pack("{s:i, s:o}", "kind", ev->kind, "obj", ev->obj));
}

static enum exec_stop should_stop(void *ctx)
{
    struct sink *s = ctx;

    if (s->stop_after_ms && clock_mono_ms() >= s->stop_after_ms)
        return s->stop_now;
    return EXEC_STOP_NONE;
}

static int run(const char *script, const char *input, int64_t timeout_ms, size_t max_output,
               struct sink *s, struct exec_outcome *o)
{
    char buf[512];
    char *argv[] = {"/bin/sh", "-c", buf, NULL};

    snprintf(buf, sizeof(buf), "%s", script);
    struct exec_spec spec = {.argv = argv, .envp = environ, .input = input,
                             .input_len = input ? strlen(input) : 0, .grace_ms = 300,
                             .max_output = max_output ? max_output : 1 << 24};
    struct exec_hooks hooks = {.ctx = s, .on_event = on_event, .should_stop = should_stop};
    if (timeout_ms)
        spec.deadline_ms = clock_mono_ms() + timeout_ms;
    s->events = json_array();
    return exec_run(&spec, &hooks, o);
}

static const char *msg(struct sink *s, size_t i)
{
    return json_string_value(
        json_object_get(json_object_get(json_array_get(s->events, i), "obj"), "message"));
}

static int kind(struct sink *s, size_t i)
{
    return (int)json_integer_value(json_object_get(json_array_get(s->events, i), "kind"));
}

static void captures_lines_and_result(void **state)
{
    struct sink s = {0};
    struct exec_outcome o;

    (void)state;
    assert_int_equal(run("read line; echo \"got $line\"; echo oops >&2; "
                         "echo '{\"type\":\"result\",\"success\":true}'; printf tail; exit 3",
                         "hello\n", 0, 0, &s, &o),
                     0);
    assert_true(o.started);
    assert_true(o.exited);
    assert_int_equal(o.exit_code, 3);
    assert_int_equal(json_array_size(s.events), 4);
    /* stdout and stderr interleave by arrival; check by content */
    int seen_got = 0, seen_err = 0, seen_result = 0, seen_tail = 0;
    for (size_t i = 0; i < 4; i++) {
        if (kind(&s, i) == PROTO_RESULT)
            seen_result++;
        else if (!strcmp(msg(&s, i), "got hello"))
            seen_got++;
        else if (!strcmp(msg(&s, i), "oops"))
            seen_err++;
        else if (!strcmp(msg(&s, i), "tail"))
            seen_tail++;
    }
    assert_int_equal(seen_got + seen_err + seen_result + seen_tail, 4);
    json_decref(s.events);
}

static void timeout_sends_term_then_kill(void **state)
{
    struct sink s = {0};
    struct exec_outcome o;
    int64_t t0 = clock_mono_ms();

    (void)state;
    assert_int_equal(run("trap '' TERM; echo started; while :; do sleep 0.05; done", NULL, 300,
                         0, &s, &o),
                     0);
    assert_int_equal(o.stopped, EXEC_STOP_TIMEOUT);
    assert_false(o.exited);
    assert_int_equal(o.signal, SIGKILL);
    assert_true(clock_mono_ms() - t0 < 5000);
    assert_string_equal(msg(&s, 0), "started");
    json_decref(s.events);
}

static void stop_request_ends_child(void **state)
{
    struct sink s = {.stop_now = EXEC_STOP_CANCEL, .stop_after_ms = clock_mono_ms() + 200};
    struct exec_outcome o;

    (void)state;
    assert_int_equal(run("sleep 30", NULL, 0, 0, &s, &o), 0);
    assert_int_equal(o.stopped, EXEC_STOP_CANCEL);
    assert_int_equal(o.signal, SIGTERM);
    assert_true(o.seconds < 5);
    json_decref(s.events);
}

/* A child that forks and exits: the grandchild holds stdout, but the whole group goes. */
static void grandchildren_do_not_outlive(void **state)
{
    struct sink s = {0};
    struct exec_outcome o;
    char path[64], stat[256];
    FILE *f;
    int pid;

    (void)state;
    assert_int_equal(run("sleep 30 & echo $!; exit 0", NULL, 10000, 0, &s, &o), 0);
    assert_true(o.exited);
    assert_true(o.seconds < 5);
    pid = atoi(msg(&s, 0));
    assert_true(pid > 0);
    usleep(100 * 1000);
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    f = fopen(path, "r");
    if (f) {
        /* gone, or at most a zombie waiting for init to reap it */
        assert_non_null(fgets(stat, sizeof(stat), f));
        fclose(f);
        assert_non_null(strstr(stat, ") Z"));
    }
    json_decref(s.events);
}

static void output_budget_drops_the_rest(void **state)
{
    struct sink s = {0};
    struct exec_outcome o;

    (void)state;
    assert_int_equal(run("i=0; while [ $i -lt 200 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxx; "
                         "i=$((i+1)); done", NULL, 0, 1000, &s, &o),
                     0);
    assert_true(o.dropped_bytes > 0);
    assert_true(json_array_size(s.events) < 60);
    int noted = 0;
    for (size_t i = 0; i < json_array_size(s.events); i++)
        noted += strstr(msg(&s, i), "passed the limit") != NULL;
    assert_int_equal(noted, 1);
    json_decref(s.events);
}

static void result_is_taken_past_the_budget(void **state)
{
    struct sink s = {0};
    struct exec_outcome o;
    size_t n;

    (void)state;
    assert_int_equal(run("i=0; while [ $i -lt 100 ]; do echo xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; "
                         "i=$((i+1)); done; echo '{\"type\":\"result\",\"success\":true}'; "
                         "echo after", NULL, 0, 500, &s, &o),
                     0);
    n = json_array_size(s.events);
    assert_int_equal(kind(&s, n - 1), PROTO_RESULT);
    for (size_t i = 0; i + 1 < n; i++)
        assert_string_not_equal(msg(&s, i), "after");
    json_decref(s.events);
}

static void long_lines_are_split(void **state)
{
    struct sink s = {0};
    struct exec_outcome o;

    (void)state;
    assert_int_equal(run("head -c 2500000 /dev/zero | tr '\\0' 'a'; echo", NULL, 0, 0, &s, &o),
                     0);
    assert_int_equal(json_array_size(s.events), 3);
    assert_int_equal(strlen(msg(&s, 0)), 1024 * 1024);
    assert_int_equal(strlen(msg(&s, 1)), 1024 * 1024);
    assert_int_equal(strlen(msg(&s, 2)), 2500000 - 2 * 1024 * 1024);
    json_decref(s.events);
}

static void spawn_failure_is_reported(void **state)
{
    char *argv[] = {"/nonexistent/executor", NULL};
    struct sink s = {.events = json_array()};
    struct exec_spec spec = {.argv = argv, .envp = environ, .max_output = 1000};
    struct exec_hooks hooks = {.ctx = &s, .on_event = on_event, .should_stop = should_stop};
    struct exec_outcome o;
    char how[300];

    (void)state;
    assert_int_equal(exec_run(&spec, &hooks, &o), ERR_IO);
    assert_false(o.started);
    assert_non_null(strstr(o.error, "No such file"));
    exec_describe(&o, how, sizeof(how));
    assert_non_null(strstr(how, "/nonexistent/executor"));
    json_decref(s.events);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(captures_lines_and_result),
        cmocka_unit_test(timeout_sends_term_then_kill),
        cmocka_unit_test(stop_request_ends_child),
        cmocka_unit_test(grandchildren_do_not_outlive),
        cmocka_unit_test(output_budget_drops_the_rest),
        cmocka_unit_test(result_is_taken_past_the_budget),
        cmocka_unit_test(long_lines_are_split),
        cmocka_unit_test(spawn_failure_is_reported),
    };
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
