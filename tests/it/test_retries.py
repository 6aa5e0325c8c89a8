"""Retries of infrastructure failures (CONTRACT.md), on both backends: a flaky cluster
succeeds on attempt 2 with its first attempt listed; a hard infrastructure failure uses
its retries and ends failed; an agent's failure is never retried; a worker killed
mid-run has its task retried on another worker; logs say their attempt."""
import time

import pytest

from conftest import fast


def test_flaky_infrastructure_succeeds_on_the_second_attempt(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=1, DEFAULT_MAX_RETRIES=2, RETRY_BASE_SECONDS=1)
    t = s.submit(parameters=fast(outcome="infra_flaky"))
    assert t["attempt"] == 1 and t["max_retries"] == 2 and t["attempts"] == []
    done = s.wait_status(t["id"], ("completed", "failed"), timeout=60)
    assert done["status"] == "completed", done
    assert done["attempt"] == 2 and done["error_class"] is None and done["error"] is None
    [first] = done["attempts"]
    assert first["attempt"] == 1 and first["error_class"] == "infrastructure"
    assert first["worker_id"] == "worker-001-kind" and "API server" in first["error"]
    assert first["started_at"] and first["ended_at"]
    logs = s.get(f"/api/v1/tasks/{t['id']}/logs").json()["logs"]
    assert {e["attempt"] for e in logs} == {1, 2}
    assert any(e["attempt"] == 1 and "stopped answering" in e["message"] for e in logs)
    metrics = s.get("/metrics").text
    assert 'taskexec_task_retries_total{class="infrastructure"} 1' in metrics


def test_hard_infrastructure_failure_uses_its_retries_then_fails(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=1, RETRY_BASE_SECONDS=0)
    t = s.submit(parameters=fast(outcome="infra_failure"), max_retries=2)
    done = s.wait_status(t["id"], ("completed", "failed"), timeout=60)
    assert done["status"] == "failed" and done["error_class"] == "infrastructure"
    assert done["attempt"] == 3 and [a["attempt"] for a in done["attempts"]] == [1, 2]
    assert "API server" in done["error"]


def test_an_agent_failure_is_never_retried(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=1, DEFAULT_MAX_RETRIES=3, RETRY_BASE_SECONDS=0)
    for outcome in ("failure", "crash"):
        t = s.submit(parameters=fast(steps=4, outcome=outcome))
        done = s.wait_status(t["id"], ("completed", "failed"), timeout=30)
        assert done["status"] == "failed" and done["error_class"] == "agent", done
        assert done["attempt"] == 1 and done["attempts"] == []


def test_executor_dying_before_the_first_step_is_infrastructure(make_server, tmpdir_path):
    script = f"{tmpdir_path}/die.sh"
    with open(script, "w") as f:
        f.write("#!/bin/sh\necho 'kubectl: connection refused' >&2\nexit 1\n")
    import os
    os.chmod(script, 0o755)
    s = make_server(NUM_INTERNAL_WORKERS=1, EXECUTOR="command", EXECUTOR_COMMAND=script,
                    RETRY_BASE_SECONDS=0)
    t = s.submit(max_retries=1)
    done = s.wait_status(t["id"], ("completed", "failed"), timeout=30)
    assert done["status"] == "failed" and done["error_class"] == "infrastructure"
    assert done["attempt"] == 2 and len(done["attempts"]) == 1


def test_a_worker_killed_mid_run_has_its_task_retried_elsewhere(make_server, make_worker):
    s = make_server(NUM_INTERNAL_WORKERS=0, HEARTBEAT_TIMEOUT_SECONDS=2, RETRY_BASE_SECONDS=0)
    w = make_worker(s, "ext-1", HEARTBEAT_TIMEOUT_SECONDS=2)
    t = s.submit(parameters=fast(steps=30, step_seconds=0.2), max_retries=1, max_steps=30)
    s.wait_status(t["id"], "running")
    w.proc.kill()
    w.proc.wait()
    # back to pending once the reaper notices; then another worker takes it
    deadline = time.time() + 20
    while s.task(t["id"])["attempt"] != 2:
        assert time.time() < deadline, s.task(t["id"])
        time.sleep(0.2)
    make_worker(s, "ext-2", HEARTBEAT_TIMEOUT_SECONDS=2)
    done = s.wait_status(t["id"], ("completed", "failed"), timeout=60)
    assert done["status"] == "completed" and done["worker_id"] == "ext-2", done
    [lost] = done["attempts"]
    assert lost["worker_id"] == "ext-1" and lost["error_class"] == "infrastructure"
    assert "heartbeat" in lost["error"]


@pytest.mark.parametrize("value", [-1, 11, "2"])
def test_max_retries_out_of_range_is_422(make_server, value):
    s = make_server(NUM_INTERNAL_WORKERS=0)
    r = s.post("/api/v1/tasks", json={"problem_id": "p", "max_retries": value})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "max_retries"
    assert s.get("/api/v1/tasks").json()["total"] == 0


def test_an_external_workers_infrastructure_failure_is_retried_and_said_so(make_server):
    from test_worker_api import auth, register
    s = make_server(NUM_INTERNAL_WORKERS=0, RETRY_BASE_SECONDS=30)
    token = register(s)
    t = s.submit(backend_type="ext", max_retries=1)
    assert s.post("/api/v1/workers/ext-001-kind/claim", headers=auth(token)).status_code == 200
    base = f"/api/v1/workers/ext-001-kind/tasks/{t['id']}/fail"
    bad = s.post(base, json={"error": "x", "error_class": "cosmic"}, headers=auth(token))
    assert bad.status_code == 422 and "error_class" in bad.text
    r = s.post(base, json={"error": "kind cluster is gone", "error_class": "infrastructure"},
               headers=auth(token))
    assert r.status_code == 200 and r.json()["status"] == "pending" and r.json()["retry_at"]
    back = s.task(t["id"])
    assert back["status"] == "pending" and back["attempt"] == 2
    assert back["attempts"][0]["error"] == "kind cluster is gone"
    # its worker waits out the back-off before it may take it again (30 s here)
    assert s.post("/api/v1/workers/ext-001-kind/claim", headers=auth(token)).status_code == 204
