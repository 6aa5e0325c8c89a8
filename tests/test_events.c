/* Unit tests: the event pump's ordering rule (http/events.c) on plain rows: the two
 * tables merged by time; a table that filled a whole poll holds back the other's later
 * rows, so a task's end never overtakes its own last log lines; a missing id is waited
 * for a second. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "http/events.h"

/* Rows {"id","ts_us","kind"} from "id:ts" pairs. */
static json_t *rows(const char *kind, const int64_t (*pairs)[2], size_t n)
{
    json_t *a = json_array();

    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_pack("{s:I, s:I, s:s}", "id", (json_int_t)pairs[i][0],
                                           "ts_us", (json_int_t)pairs[i][1], "kind", kind));
    return a;
}

struct trail {
    char text[512];  /* "task@10 log@20 ..." in emit order */
    int64_t ev, log; /* the cursors passed with the last row */
};

static void record(void *ud, unsigned type, const char *kind, json_t *row, int64_t ev,
                   int64_t log)
{
    struct trail *t = ud;
    size_t n = strlen(t->text);

    (void)type;
    snprintf(t->text + n, sizeof(t->text) - n, "%s%s@%lld", n ? " " : "", kind,
             (long long)json_integer_value(json_object_get(row, "ts_us")));
    t->ev = ev;
    t->log = log;
}

static void merged_by_time_events_first_on_a_tie(void **state)
{
    const int64_t ev[][2] = {{1, 10}, {2, 30}, {3, 40}};
    const int64_t lg[][2] = {{1, 20}, {2, 40}, {3, 50}};
    struct events_batch bt = {rows("task", ev, 3), rows("log", lg, 3), 0, 0};
    struct events_cursor ce = {0, 0}, cl = {0, 0};
    struct trail t = {""};

    (void)state;
    events_batch_accept(&bt, &ce, &cl, 1000, 0);
    assert_int_equal(bt.n_ev, 3);
    assert_int_equal(bt.n_log, 3);
    assert_int_equal(ce.at, 3);
    assert_int_equal(cl.at, 3);
    events_batch_walk(&bt, 0, 0, record, &t);
    assert_string_equal(t.text, "task@10 log@20 task@30 task@40 log@40 log@50");
    assert_int_equal(t.ev, 3);
    assert_int_equal(t.log, 3);
    json_decref(bt.events);
    json_decref(bt.logs);
}

/* The logs filled the poll (more are waiting in the table): the task's end, later than
 * the last log line read, waits for the next poll. */
static void full_log_poll_holds_back_later_events(void **state)
{
    const int64_t lg[][2] = {{11, 100}, {12, 200}, {13, 300}};
    const int64_t ev[][2] = {{5, 150}, {6, 400}};
    struct events_batch bt = {rows("task", ev, 2), rows("log", lg, 3), 0, 0};
    struct events_cursor ce = {4, 0}, cl = {10, 0};
    struct trail t = {""};

    (void)state;
    events_batch_accept(&bt, &ce, &cl, 3, 0);
    assert_int_equal(bt.n_log, 3);
    assert_int_equal(bt.n_ev, 1);     /* 400 > 300: held back */
    assert_int_equal(ce.at, 5);       /* the cursor stops before the held row */
    assert_int_equal(cl.at, 13);
    events_batch_walk(&bt, 4, 10, record, &t);
    assert_string_equal(t.text, "log@100 task@150 log@200 log@300");
    json_decref(bt.events);
    json_decref(bt.logs);
}

static void full_event_poll_holds_back_later_logs(void **state)
{
    const int64_t ev[][2] = {{1, 10}, {2, 20}};
    const int64_t lg[][2] = {{1, 15}, {2, 25}, {3, 5}};
    struct events_batch bt = {rows("worker", ev, 2), rows("log", lg, 3), 0, 0};
    struct events_cursor ce = {0, 0}, cl = {0, 0};

    (void)state;
    /* Both tables full (batch 2 events; 3 logs is above it, so only events are "full"). */
    events_batch_accept(&bt, &ce, &cl, 2, 0);
    assert_int_equal(bt.n_ev, 2);
    assert_int_equal(bt.n_log, 1);    /* 25 > 20: held back, and so is every row after it */
    assert_int_equal(cl.at, 1);
    json_decref(bt.events);
    json_decref(bt.logs);
}

static void nothing_held_back_when_neither_table_is_behind(void **state)
{
    const int64_t ev[][2] = {{1, 500}};
    const int64_t lg[][2] = {{1, 100}, {2, 200}};
    struct events_batch bt = {rows("task", ev, 1), rows("log", lg, 2), 0, 0};
    struct events_cursor ce = {0, 0}, cl = {0, 0};

    (void)state;
    events_batch_accept(&bt, &ce, &cl, 1000, 0);
    assert_int_equal(bt.n_ev, 1);
    assert_int_equal(bt.n_log, 2);
    json_decref(bt.events);
    json_decref(bt.logs);
}

/* Id 3 is missing (committed out of order, or rolled back): rows after it wait a
 * second, then the cursor steps over it. */
static void a_missing_id_is_waited_for_a_second(void **state)
{
    const int64_t ev[][2] = {{1, 10}, {2, 20}, {4, 40}};
    const int64_t later[][2] = {{4, 40}};
    struct events_batch bt = {rows("task", ev, 3), NULL, 0, 0};
    struct events_cursor ce = {0, 0}, cl = {0, 0};

    (void)state;
    events_batch_accept(&bt, &ce, &cl, 1000, 5000);
    assert_int_equal(bt.n_ev, 2);
    assert_int_equal(bt.n_log, 0);
    assert_int_equal(ce.at, 2);
    assert_int_equal(ce.gap_since_ms, 5000);
    json_decref(bt.events);
    bt = (struct events_batch){rows("task", later, 1), NULL, 0, 0};
    events_batch_accept(&bt, &ce, &cl, 1000, 5999);
    assert_int_equal(bt.n_ev, 0);
    events_batch_accept(&bt, &ce, &cl, 1000, 6000);
    assert_int_equal(bt.n_ev, 1);
    assert_int_equal(ce.at, 4);
    assert_int_equal(ce.gap_since_ms, 0);
    json_decref(bt.events);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(merged_by_time_events_first_on_a_tie),
        cmocka_unit_test(full_log_poll_holds_back_later_events),
        cmocka_unit_test(full_event_poll_holds_back_later_logs),
        cmocka_unit_test(nothing_held_back_when_neither_table_is_behind),
        cmocka_unit_test(a_missing_id_is_waited_for_a_second),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
