"""`taskexec worker`: an external worker process against a real server, on both backends."""
import os
import time

import pytest

from conftest import fast


def wait_worker(s, wid, status="idle", timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = s.get(f"/api/v1/workers/{wid}")
        if r.status_code == 200 and r.json()["status"] == status:
            return r.json()
        time.sleep(0.05)
    raise AssertionError(f"worker {wid} never became {status}")


def test_external_worker_runs_tasks(make_server, make_worker):
    s = make_server(NUM_INTERNAL_WORKERS=0)
    w = make_worker(s, "ext-001-kind", "--backend-type", "remote")
    wait_worker(s, "ext-001-kind")
    ids = [s.submit(backend_type="remote", parameters=fast(steps=3),
                    agent_config={"model": "m"})["id"] for _ in range(4)]
    for i in ids:
        t = s.wait_status(i, ("completed", "failed"))
        assert t["status"] == "completed", t
        assert t["worker_id"] == "ext-001-kind"
        assert t["result"]["metrics"]["steps_taken"] == 3
        conv = s.get(f"/api/v1/tasks/{i}/conversations").json()["conversations"]
        assert [m["role"] for m in conv[0]["messages"]][:2] == ["system", "user"]
        assert len(conv[0]["messages"]) == 8 and conv[0]["total_tokens"] > 0
        assert conv[0]["messages"][2]["metadata"]["model"] == "simulated-gpt"
        logs = s.get(f"/api/v1/tasks/{i}/logs").json()["logs"]
        assert any("step 3/3" in e["message"] for e in logs)
    info = s.get("/api/v1/workers/ext-001-kind").json()
    assert info["tasks_completed"] == 4 and info["backend_type"] == "remote"
    assert w.stop() == 0
    assert s.get("/api/v1/workers/ext-001-kind").json()["status"] in ("idle", "offline")


def test_external_worker_failure_and_timeout_outcomes(make_server, make_worker):
    s = make_server(NUM_INTERNAL_WORKERS=0)
    make_worker(s, "ext-1")
    crash = s.submit(parameters=fast(steps=2, outcome="crash"))
    hang = s.submit(parameters={"timeout": 2, **fast(steps=1, outcome="hang")})
    t = s.wait_status(crash["id"], ("failed", "completed"), timeout=20)
    assert t["status"] == "failed" and "status 70" in t["error"]
    t = s.wait_status(hang["id"], ("timeout", "failed", "completed"), timeout=30)
    assert t["status"] == "timeout" and "timed out after 2 s" in t["error"]


def test_cancel_reaches_the_external_worker(make_server, make_worker):
    s = make_server(NUM_INTERNAL_WORKERS=0)
    make_worker(s, "ext-1")
    t = s.submit(parameters=fast(steps=1, outcome="hang"))
    s.wait_status(t["id"], "running")
    assert s.post(f"/api/v1/tasks/{t['id']}/cancel").status_code == 200
    wait_worker(s, "ext-1", "idle", timeout=10)
    assert s.task(t["id"])["status"] == "cancelled"
    after = s.submit(parameters=fast(steps=1))
    assert s.wait_status(after["id"], ("completed", "failed"))["status"] == "completed"


def test_external_worker_survives_an_api_restart(make_server, make_worker):
    s = make_server(NUM_INTERNAL_WORKERS=0)
    w = make_worker(s, "ext-1")
    t = s.submit(parameters={"simulate": {"steps": 12, "step_seconds": 0.25}}, max_steps=12)
    s.wait_status(t["id"], "running")
    s.stop()
    time.sleep(1.5)          # the run goes on while the API is down
    s.start()
    done = s.wait_status(t["id"], ("completed", "failed"), timeout=30)
    assert done["status"] == "completed", done
    logs = s.get(f"/api/v1/tasks/{t['id']}/logs").json()["logs"]
    steps = [e for e in logs if e["message"].startswith("step ")]
    assert len(steps) == 12, "log lines made while the API was down were kept and sent"
    conv = s.get(f"/api/v1/tasks/{t['id']}/conversations").json()["conversations"][0]
    assert conv["total_messages"] == 2 + 2 * 12
    assert w.proc.poll() is None


def test_killed_external_worker_task_is_reaped(make_server, make_worker):
    s = make_server(NUM_INTERNAL_WORKERS=0, HEARTBEAT_TIMEOUT_SECONDS=2)
    w = make_worker(s, "ext-1", HEARTBEAT_TIMEOUT_SECONDS=2)
    t = s.submit(parameters=fast(steps=1, outcome="hang"))
    s.wait_status(t["id"], "running")
    w.proc.kill()
    w.proc.wait()
    done = s.wait_status(t["id"], "failed", timeout=15)
    assert "ext-1" in done["error"] and "heartbeat" in done["error"]


def test_sigterm_stops_the_run_and_reports_why(make_server, make_worker):
    s = make_server(NUM_INTERNAL_WORKERS=0)
    w = make_worker(s, "ext-1")
    t = s.submit(parameters=fast(steps=1, outcome="hang"))
    s.wait_status(t["id"], "running")
    time.sleep(0.3)
    assert w.stop() == 0
    done = s.task(t["id"])
    assert done["status"] == "failed" and "worker shut down" in done["error"]


def test_worker_needs_an_id(make_server, make_worker):
    s = make_server(NUM_INTERNAL_WORKERS=0)
    w = make_worker(s, "bad id")
    assert w.proc.wait(timeout=10) == 2
