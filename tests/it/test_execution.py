"""Running tasks for real: executor processes, outcomes, cancel, timeout, order, scaling,
exactly-once claiming, restart recovery and the reaper (SQLite)."""
import os
import signal
import stat
import sys
import textwrap
import threading
import time

import pytest
import requests

from conftest import fast


def test_lifecycle_pending_running_completed(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=1)
    t = s.submit(parameters={"simulate": {"steps": 10, "step_seconds": 0.1}}, max_steps=10)
    assert t["status"] == "pending"
    running = s.wait_status(t["id"], "running", timeout=10)
    assert running["worker_id"] == "worker-001-kind" and running["started_at"]
    # logs are visible while the task runs
    deadline = time.time() + 10
    while time.time() < deadline:
        logs = s.get(f"/api/v1/tasks/{t['id']}/logs").json()["logs"]
        if any("step" in e["message"] for e in logs) and s.task(t["id"])["status"] == "running":
            break
        time.sleep(0.05)
    else:
        pytest.fail("no step logs while running")
    done = s.wait_status(t["id"], "completed", timeout=20)
    assert done["result"]["success"] is True
    assert done["result"]["metrics"]["steps_taken"] == 10
    assert done["result"]["metrics"]["duration_seconds"] > 0.5
    assert done["error"] is None
    assert done["created_at"] <= done["started_at"] <= done["completed_at"]
    w = s.get("/api/v1/workers/worker-001-kind").json()
    assert w["tasks_completed"] == 1 and w["status"] == "idle"


def test_failure_outcome_keeps_result_and_reason(server):
    t = server.submit(parameters=fast(outcome="failure"))
    done = server.wait_status(t["id"], ("completed", "failed"))
    assert done["status"] == "failed"
    assert done["result"]["success"] is False
    assert "wrong" in done["error"]
    assert len(server.get(f"/api/v1/tasks/{t['id']}/conversations").json()
               ["conversations"][0]["messages"]) > 2


def test_crash_outcome_fails_with_exit_status_and_stderr_kept(server):
    t = server.submit(parameters=fast(steps=4, outcome="crash"))
    done = server.wait_status(t["id"], ("completed", "failed"))
    assert done["status"] == "failed"
    assert "status 70" in done["error"] and "without sending a result" in done["error"]
    logs = server.get(f"/api/v1/tasks/{t['id']}/logs").json()["logs"]
    stderr = [e for e in logs if e["context"].get("stream") == "stderr"]
    assert any("simulated crash" in e["message"] for e in stderr)
    assert all(e["level"] == "warning" for e in stderr)


def test_hang_times_out_and_is_stopped(server):
    t = server.submit(parameters={"timeout": 2, **fast(steps=1, outcome="hang")})
    done = server.wait_status(t["id"], ("timeout", "failed", "completed"), timeout=20)
    assert done["status"] == "timeout"
    assert "timed out after 2 s" in done["error"]
    assert done["completed_at"]
    w = server.get(f"/api/v1/workers/{done['worker_id']}").json()
    assert w["status"] == "idle" and w["current_task_id"] is None


def test_cancel_pending_task(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=0)
    t = s.submit()
    r = s.post(f"/api/v1/tasks/{t['id']}/cancel")
    assert r.status_code == 200
    assert r.json() == {"message": "Task cancelled successfully", "task_id": t["id"],
                        "status": "cancelled"}
    assert s.task(t["id"])["status"] == "cancelled"
    r = s.put(f"/api/v1/tasks/{t['id']}/cancel")
    assert r.status_code == 409 and r.json()["type"] == "conflict"
    # a cancelled task is never picked up
    s.post("/api/v1/workers/internal/scale", json={"num_workers": 1})
    time.sleep(0.5)
    assert s.task(t["id"])["status"] == "cancelled"
    assert s.post("/api/v1/tasks/00000000-0000-0000-0000-000000000000/cancel").status_code == 404


def test_cancel_running_task_stops_its_process(server):
    t = server.submit(parameters=fast(steps=1, outcome="hang"))
    server.wait_status(t["id"], "running")
    time.sleep(0.3)
    t0 = time.time()
    r = server.put(f"/api/v1/tasks/{t['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    # the worker becomes free within a few seconds: the child was stopped
    deadline = time.time() + 5
    while time.time() < deadline:
        w = server.get(f"/api/v1/workers/{server.task(t['id'])['worker_id']}").json()
        if w["status"] == "idle":
            break
        time.sleep(0.05)
    else:
        pytest.fail("worker still busy after cancel")
    assert time.time() - t0 < 5
    done = server.task(t["id"])
    assert done["status"] == "cancelled" and "cancelled" in done["error"]
    assert server.post(f"/api/v1/tasks/{t['id']}/cancel").status_code == 409


def test_priority_then_fifo_order(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=1, AUTO_START_WORKERS="false")
    low1 = s.submit(priority=0, parameters=fast(steps=1))["id"]
    high1 = s.submit(priority=10, parameters=fast(steps=1))["id"]
    low2 = s.submit(priority=0, parameters=fast(steps=1))["id"]
    high2 = s.submit(priority=10, parameters={"priority": 10, **fast(steps=1)})["id"]
    mid = s.submit(priority=5, parameters=fast(steps=1))["id"]
    r = s.post("/api/v1/workers/internal/start")
    assert r.status_code == 200 and r.json()["worker_count"] == 1
    for i in (low1, low2, high1, high2, mid):
        s.wait_status(i, "completed")
    order = sorted((s.task(i)["started_at"], i) for i in (low1, high1, low2, high2, mid))
    assert [i for _, i in order] == [high1, high2, mid, low1, low2]


def test_backend_type_routing(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=1, WORKER_BACKEND_TYPE="kind")
    other = s.submit(backend_type="gpu", parameters=fast(steps=1))
    mine = s.submit(backend_type="kind", parameters=fast(steps=1))
    s.wait_status(mine["id"], "completed")
    time.sleep(0.5)
    assert s.task(other["id"])["status"] == "pending"


def test_exactly_once_with_concurrent_submitters(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=6, EXECUTOR="noop")
    ids, lock = [], threading.Lock()

    def submitter(n):
        sess = requests.Session()
        for _ in range(n):
            r = sess.post(s.api + "/tasks", json={"problem_id": "p"}, timeout=10)
            assert r.status_code == 201
            with lock:
                ids.append(r.json()["id"])

    threads = [threading.Thread(target=submitter, args=(50,)) for _ in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(set(ids)) == 300
    deadline = time.time() + 60
    while time.time() < deadline:
        st = s.get("/api/v1/tasks/stats").json()
        if st["completed"] == 300:
            break
        time.sleep(0.1)
    assert st["completed"] == 300 and st["total"] == 300, st
    workers = s.get("/api/v1/workers").json()["workers"]
    assert sum(w["tasks_completed"] for w in workers) == 300, "each task ran exactly once"
    # every task carries exactly one start note
    for i in ids[:20]:
        logs = s.get(f"/api/v1/tasks/{i}/logs").json()["logs"]
        assert sum("started the task" in e["message"] for e in logs) == 1


def test_scale_stop_start(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=2)
    st = s.get("/api/v1/workers/internal/status").json()
    assert st["running"] is True and st["num_workers"] == 2
    assert [w["id"] for w in st["workers"]] == ["worker-001-kind", "worker-002-kind"]
    r = s.post("/api/v1/workers/internal/scale", params={"num_workers": 4})
    assert r.json() == {"message": "Workers scaled successfully", "previous_count": 2,
                        "new_count": 4}
    assert s.get("/api/v1/workers/internal/status").json()["num_workers"] == 4
    assert s.get("/api/v1/workers").json()["total"] == 4
    # scale down while one worker is busy: it finishes its task first
    busy = s.submit(parameters={"simulate": {"steps": 5, "step_seconds": 0.2}})
    s.wait_status(busy["id"], "running")
    r = s.post("/api/v1/workers/internal/scale", json={"num_workers": 0})
    assert r.json()["previous_count"] == 4 and r.json()["new_count"] == 0
    done = s.wait_status(busy["id"], ("completed", "failed"), timeout=20)
    assert done["status"] == "completed", done
    r = s.post("/api/v1/workers/internal/stop")
    assert r.json() == {"message": "Workers stopped", "stopped_count": 0}
    queued = s.submit(parameters=fast(steps=1))
    time.sleep(0.6)
    assert s.task(queued["id"])["status"] == "pending", "stopped workers claim nothing"
    deadline = time.time() + 10
    while time.time() < deadline:
        ws = s.get("/api/v1/workers").json()["workers"]
        if all(w["status"] == "offline" for w in ws):
            break
        time.sleep(0.05)
    assert all(w["status"] == "offline" for w in ws)
    assert s.get("/ready").json()["workers"] is False
    r = s.post("/api/v1/workers/internal/start")
    assert r.json() == {"message": "Workers started", "worker_count": 4}
    s.wait_status(queued["id"], "completed")
    for bad in ({"num_workers": 65}, {"num_workers": -1}, {"num_workers": "3"}, {}):
        assert s.post("/api/v1/workers/internal/scale", json=bad).status_code == 422, bad
    assert s.post("/api/v1/workers/internal/scale",
                  params={"num_workers": "x"}).status_code == 422


def test_blocking_runs_never_block_the_api(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=3)
    for _ in range(3):
        s.submit(parameters=fast(steps=1, outcome="hang"))
    time.sleep(0.5)
    t0 = time.time()
    for _ in range(20):
        assert s.get("/health").status_code == 200
        assert s.get("/api/v1/tasks").status_code == 200
    assert time.time() - t0 < 5


def test_restart_recovery_after_kill9(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=2)
    hung = [s.submit(parameters=fast(steps=1, outcome="hang"))["id"] for _ in range(2)]
    queued = s.submit(priority=-1, parameters=fast(steps=1))["id"]
    for i in hung:
        s.wait_status(i, "running")
    s.kill9()
    s.start()
    for i in hung:
        t = s.wait_status(i, "failed", timeout=10)
        assert "restarted" in t["error"], t["error"]
    # nothing lost: the queued task runs after the restart
    s.wait_status(queued, "completed", timeout=20)
    running = s.get("/api/v1/tasks", params={"status": "running"}).json()
    assert running["total"] == 0


def test_reaper_fails_tasks_of_a_silent_worker(make_server, db_url):
    """Two servers share one database; one dies, the other's reaper ends its tasks."""
    db = db_url
    a = make_server(db_url=db, WORKER_NAME_PREFIX="a-", NUM_INTERNAL_WORKERS=1,
                    HEARTBEAT_TIMEOUT_SECONDS=2, WORKER_BACKEND_TYPE="a")
    b = make_server(db_url=db, WORKER_NAME_PREFIX="b-", NUM_INTERNAL_WORKERS=1,
                    HEARTBEAT_TIMEOUT_SECONDS=2, WORKER_BACKEND_TYPE="b")
    t = a.submit(backend_type="a", parameters=fast(steps=1, outcome="hang"))
    a.wait_status(t["id"], "running")
    a.kill9()
    done = b.wait_status(t["id"], "failed", timeout=15)
    assert "a-worker-001-kind" in done["error"] and "heartbeat" in done["error"]
    w = b.get("/api/v1/workers/a-worker-001-kind").json()
    assert w["status"] == "offline" and w["tasks_failed"] == 1
    assert b.get("/api/v1/workers/b-worker-001-kind").json()["status"] == "idle"


def test_shutdown_stops_running_tasks_and_records_why(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=1)
    t = s.submit(parameters=fast(steps=1, outcome="hang"))
    s.wait_status(t["id"], "running")
    s.stop()  # asserts a clean exit
    s.start()
    done = s.task(t["id"])
    assert done["status"] == "failed" and "shut down" in done["error"]


def write_script(path, body):
    with open(path, "w") as f:
        f.write("#!/usr/bin/python3\n" + textwrap.dedent(body))
    os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)
    return path


def test_command_executor_protocol_and_environment(make_server, tmpdir_path):
    script = write_script(os.path.join(tmpdir_path, "agent.py"), """
        import json, os, sys
        task = json.loads(sys.stdin.readline())
        assert sys.stdin.read() == ""  # stdin is closed after the task line
        out = lambda o: print(json.dumps(o), flush=True)
        out({"type": "log", "level": "info", "message": "env",
             "context": {k: os.environ.get(k) for k in ("TASK_ID", "PROBLEM_ID", "MAX_STEPS",
                         "WORKER_ID", "BACKEND_NAME", "KUBE_CONTEXT", "AIOPSLAB_CLUSTER")}})
        out({"type": "log", "level": "debug", "message": "cwd", "context": {"cwd": os.getcwd()}})
        out({"type": "message", "session_id": "s-1", "step": 0, "role": "system", "content": "sys"})
        out({"type": "message", "session_id": "s-1", "step": 1, "role": "assistant",
             "content": "act", "model": "m1", "usage": {"total_tokens": 7}, "tool_calls": []})
        print("not json, kept as a log line")
        print(b"\\xff bad utf8".decode("latin-1"))
        out({"type": "result", "success": True, "output": task["parameters"]["agent_config"],
             "metrics": {"steps_taken": 1}})
    """)
    s = make_server(EXECUTOR="command", EXECUTOR_COMMAND=script, NUM_INTERNAL_WORKERS=1)
    t = s.submit(problem_id="my-problem", max_steps=9, agent_config={"model": "x"})
    done = s.wait_status(t["id"], ("completed", "failed"))
    assert done["status"] == "completed", done
    assert done["result"]["output"] == {"model": "x"}
    logs = s.get(f"/api/v1/tasks/{t['id']}/logs").json()["logs"]
    env = next(e for e in logs if e["message"] == "env")["context"]
    assert env == {"TASK_ID": t["id"], "PROBLEM_ID": "my-problem", "MAX_STEPS": "9",
                   "WORKER_ID": "worker-001-kind", "BACKEND_NAME": "worker-001-kind",
                   "KUBE_CONTEXT": "kind-worker-001-kind", "AIOPSLAB_CLUSTER": "worker-001-kind"}
    cwd = next(e for e in logs if e["message"] == "cwd")["context"]["cwd"]
    assert cwd.endswith(t["id"]), "each task runs in a working directory of its own"
    assert any(e["message"] == "not json, kept as a log line" for e in logs)
    assert any("\ufffd" in e["message"] or "ÿ" in e["message"] for e in logs)
    conv = s.get(f"/api/v1/tasks/{t['id']}/conversations").json()["conversations"]
    assert len(conv) == 1 and conv[0]["session_id"] == "s-1"
    msgs = conv[0]["messages"]
    assert [m["content"] for m in msgs] == ["sys", "act"]
    assert msgs[1]["metadata"] == {"model": "m1", "usage": {"total_tokens": 7}, "tool_calls": []}
    assert conv[0]["total_tokens"] == 7


def test_command_executor_missing_program_fails_task(make_server, tmpdir_path):
    s = make_server(EXECUTOR="command", EXECUTOR_COMMAND="/nonexistent/agent --flag",
                    NUM_INTERNAL_WORKERS=1)
    t = s.submit()
    done = s.wait_status(t["id"], ("failed", "completed"))
    assert done["status"] == "failed" and "/nonexistent/agent" in done["error"]


def test_output_volume_is_bounded(make_server, tmpdir_path):
    script = write_script(os.path.join(tmpdir_path, "chatty.py"), """
        import json, sys
        sys.stdin.readline()
        line = "x" * 1000 + "\\n"
        for _ in range(20000):   # 20 MB
            sys.stdout.write(line)
        sys.stdout.write("y" * 3000000)  # 3 MB without a newline
        sys.stdout.write("\\n")
        print(json.dumps({"type": "result", "success": True}), flush=True)
    """)
    s = make_server(EXECUTOR="command", EXECUTOR_COMMAND=script, NUM_INTERNAL_WORKERS=1,
                    MAX_OUTPUT_BYTES=200000)
    t = s.submit()
    done = s.wait_status(t["id"], ("completed", "failed"), timeout=60)
    assert done["status"] == "completed", "a result line is taken past the budget"
    logs = s.get(f"/api/v1/tasks/{t['id']}/logs", params={"limit": 100000}).json()
    assert logs["total"] < 250
    assert any("passed the limit" in e["message"] for e in logs["logs"])


def test_bad_configuration_is_refused_at_start(make_server):
    for settings in ({"EXECUTOR": "magic"}, {"PORT": "99999"}, {"LOG_LEVEL": "loud"},
                     {"EXECUTOR": "command"}, {"NUM_INTERNAL_WORKERS": "70"},
                     {"DATABASE_URL": "mysql://x"}):
        s = make_server(start=False, **settings)
        s.start(wait=False)
        code = s.proc.wait(timeout=20)
        assert code != 0, settings


def test_supported_problems_patterns(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=1,
                    WORKER_SUPPORTED_PROBLEMS="misconfig_*, k8s_target_port-misconfig-?-1")
    other = s.submit(problem_id="auth_miss_mongodb-detection-1", parameters=fast(steps=1))
    mine = s.submit(problem_id="misconfig_app_hotel_res-detection-1", parameters=fast(steps=1))
    s.wait_status(mine["id"], "completed")
    time.sleep(0.5)
    assert s.task(other["id"])["status"] == "pending"
    w = s.get("/api/v1/workers/worker-001-kind").json()
    assert w["capabilities"] == {"supported_problems": ["misconfig_*",
                                                        "k8s_target_port-misconfig-?-1"]}
    bad = make_server(start=False, WORKER_SUPPORTED_PROBLEMS="a b")
    bad.start(wait=False)
    assert bad.proc.wait(timeout=20) != 0
