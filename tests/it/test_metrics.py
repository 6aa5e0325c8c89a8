"""GET /metrics: the Prometheus text format, checked by promtool, after a mixed workload."""
import re
import shutil
import subprocess
import time

import pytest

from conftest import fast


def scrape(s):
    r = s.get("/metrics")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return r.text


def value(text, series):
    m = re.search(r"^" + re.escape(series) + r" (\S+)$", text, re.M)
    assert m, f"{series} not in metrics"
    return float(m.group(1))


def test_metrics_after_a_mixed_workload_pass_promtool(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=3)
    ok = [s.submit(parameters=fast(steps=1))["id"] for _ in range(3)]
    bad = s.submit(parameters=fast(steps=1, outcome="failure"))["id"]
    crash = s.submit(parameters=fast(steps=2, outcome="crash"))["id"]
    hang = s.submit(parameters=fast(steps=1, outcome="hang"))["id"]
    for i in ok + [bad, crash]:
        s.wait_status(i, ("completed", "failed"))
    s.wait_status(hang, "running")
    s.post(f"/api/v1/tasks/{hang}/cancel")
    s.get("/api/v1/nothing")
    s.post("/api/v1/tasks", data="{bad")
    deadline = time.time() + 10
    while time.time() < deadline:
        text = scrape(s)
        # the queue gauges are read about once a second: wait for them to settle
        if value(text, 'taskexec_executor_exits_total{cause="cancel"}') == 1 and \
                value(text, 'taskexec_tasks{state="completed"}') == 3 and \
                value(text, 'taskexec_tasks{state="failed"}') == 2 and \
                value(text, 'taskexec_tasks{state="cancelled"}') == 1 and \
                value(text, 'taskexec_tasks{state="running"}') == 0:
            break
        time.sleep(0.2)
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is installed by install-deps.sh"
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                           text=True)
    assert check.returncode == 0 and check.stdout.strip() == "", check.stdout + check.stderr
    assert value(text, "taskexec_up") == 1 and value(text, "taskexec_database_up") == 1
    assert value(text, 'taskexec_tasks{state="completed"}') == 3
    assert value(text, 'taskexec_tasks{state="failed"}') == 2
    assert value(text, 'taskexec_tasks{state="cancelled"}') == 1
    assert value(text, "taskexec_tasks_created_total") == 6
    assert value(text, 'taskexec_tasks_finished_total{state="completed"}') == 3
    assert value(text, 'taskexec_executor_exits_total{cause="success"}') == 3
    assert value(text, 'taskexec_executor_exits_total{cause="failure"}') == 1
    assert value(text, 'taskexec_executor_exits_total{cause="crash"}') == 1
    assert value(text, "taskexec_task_run_seconds_count") >= 5
    assert value(text, "taskexec_claim_seconds_count") >= 6
    assert value(text, 'taskexec_workers{status="idle"}') + \
        value(text, 'taskexec_workers{status="busy"}') == 3
    assert value(text, 'taskexec_http_requests_total{route="/api/v1/tasks",method="POST",'
                       'status="201"}') == 6
    assert value(text, 'taskexec_http_requests_total{route="/api/v1/tasks",method="POST",'
                       'status="400"}') == 1
    assert value(text, 'taskexec_http_requests_total{route="unmatched",method="GET",'
                       'status="404"}') == 1
    assert 'taskexec_http_request_duration_seconds_bucket{route="/api/v1/tasks/{id}",' in text
    assert 'taskexec_build_info{version="' in text


@pytest.mark.parametrize("backend", ["postgres"])
def test_a_scrape_survives_the_database_going_away(make_server, pg):
    s = make_server(NUM_INTERNAL_WORKERS=1)
    pg.stop("fast")
    try:
        deadline = time.time() + 10
        while time.time() < deadline:
            text = scrape(s)
            if value(text, "taskexec_database_up") == 0:
                break
            time.sleep(0.2)
        assert value(text, "taskexec_database_up") == 0
        assert value(text, "taskexec_up") == 1
    finally:
        pg.start()
